//! Packet views. The per-packet path reads and rewrites headers through
//! fixed-size views written in smoltcp's shape (`ethernet`, `ipv4`, `l4` for
//! TCP/UDP/ICMP, `vxlan`): private field offsets, `new_checked` validating once,
//! accessors that cannot panic. Whole packets the dataplane builds from scratch
//! (TCP RSTs, ICMP errors) are emitted with smoltcp's `wire` representations,
//! re-exported here. `checksum` holds the RFC 1624 incremental update helpers.
//! No I/O and no allocation here.

pub mod checksum;
pub mod ethernet;
pub mod ipv4;
pub mod l4;
pub mod vxlan;

pub use ethernet::EthernetHeader;
pub use ipv4::Ipv4Header;
pub use l4::{IcmpHeader, SctpHeader, TcpHeader, UdpHeader};
pub use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet, IpAddress,
    IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    UdpPacket,
};
pub use vxlan::{VxlanPacket, VxlanRepr};

/// Ethernet header length.
pub const ETH_HLEN: usize = ethernet::HEADER_LEN;
/// IPv4 header length without options.
pub const IPV4_HLEN: usize = ipv4::HEADER_LEN;
/// UDP header length.
pub const UDP_HLEN: usize = l4::UDP_HEADER_LEN;
/// VXLAN header length.
pub const VXLAN_HLEN: usize = 8;
/// Outer headers a VXLAN encapsulation adds: Ethernet + IPv4 + UDP + VXLAN.
pub const VXLAN_OVERHEAD: usize = ETH_HLEN + IPV4_HLEN + UDP_HLEN + VXLAN_HLEN;
