//! Packet views. Ethernet, IPv4, UDP, TCP and ICMP come from smoltcp's `wire`
//! module (re-exported here); VXLAN is written in the same shape. Views are
//! zero-copy: `new_checked` validates lengths once, after which no accessor can
//! panic. `checksum` holds the RFC 1624 incremental update helpers.

pub mod checksum;
pub mod vxlan;

pub use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4Packet, IpProtocol, Ipv4Packet,
    TcpPacket, UdpPacket,
};
pub use vxlan::{VxlanPacket, VxlanRepr};

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// IPv4 header length without options.
pub const IPV4_HLEN: usize = 20;
/// UDP header length.
pub const UDP_HLEN: usize = 8;
/// VXLAN header length.
pub const VXLAN_HLEN: usize = 8;
/// Outer headers a VXLAN encapsulation adds: Ethernet + IPv4 + UDP + VXLAN.
pub const VXLAN_OVERHEAD: usize = ETH_HLEN + IPV4_HLEN + UDP_HLEN + VXLAN_HLEN;
