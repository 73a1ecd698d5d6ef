//! Stage 2, classify + decap: a frame's Ethernet, IPv4 and L4 headers checked
//! through the `shared::wire` views and reduced to a `Parsed` (flow key, TCP
//! flags, ICMP type); VXLAN to this node's port and VNI (flags exactly 0x08)
//! stripped by moving the frame's start, and the inner frame classified the
//! same way. Reads the snapshot's overlay settings and own addresses only; it
//! may not touch the flow table. Every failure is a `DropReason`.

use shared::counters::{Counters, DropReason};
use shared::snapshot::Snapshot;
use shared::wire::ethernet::ETHERTYPE_IPV4;
use shared::wire::ipv4::{PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use shared::wire::l4::{ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, UDP_HEADER_LEN};
use shared::wire::{
    EthernetHeader, IcmpHeader, Ipv4Header, SctpHeader, TcpHeader, UdpHeader, VxlanPacket,
    VxlanRepr, ETH_HLEN, IPV4_HLEN, UDP_HLEN, VXLAN_HLEN,
};

use super::{icmp, Parsed, FRAG_FIRST, FRAG_LATER};
use crate::flow::FlowKey;
use crate::frame::Frame;

/// Classifies a frame into `p`, decapsulating VXLAN addressed to this node.
/// (`p` is the batch's slot for the frame: written in place, never returned
/// by value, so the record is not copied through the stack per frame.)
#[inline(always)]
pub(super) fn frame(
    f: &mut Frame<'_>,
    snap: &Snapshot,
    c: &mut Counters,
    p: &mut Parsed,
) -> Result<(), DropReason> {
    l3(f, p)?;
    let overlay = snap.overlay();
    if p.key.proto != PROTO_UDP || p.key.dport != overlay.port || !snap.is_own_ip(p.key.dst) {
        return Ok(());
    }
    let vx = p.l4() + UDP_HLEN;
    let d = f.data();
    let Ok(view) = VxlanPacket::new_checked(&d[vx.min(d.len())..]) else {
        return Err(DropReason::MalformedL4);
    };
    match VxlanRepr::parse(&view) {
        Err(_) => return Err(DropReason::VxlanBadFlags),
        Ok(r) if r.vni != overlay.vni => return Err(DropReason::VxlanUnknownVni),
        Ok(_) => {}
    }
    let inner = vx + VXLAN_HLEN;
    if f.len() < inner + ETH_HLEN + IPV4_HLEN {
        return Err(DropReason::VxlanShortInner);
    }
    f.pull(inner);
    c.decapsulated += 1;
    l3(f, p)?;
    p.decapped = true;
    Ok(())
}

/// Ethernet + IPv4 + L4 checks on `f.data()` into `p`; trims Ethernet padding.
#[inline(always)]
pub(super) fn l3(f: &mut Frame<'_>, p: &mut Parsed) -> Result<(), DropReason> {
    let d = f.data();
    let Some(eth) = EthernetHeader::new_checked(d) else {
        return Err(DropReason::Malformed);
    };
    if eth.ethertype() != ETHERTYPE_IPV4 {
        return Err(DropReason::UnsupportedEtherType);
    }
    let packet = &d[ETH_HLEN..];
    let Ok(ip) = Ipv4Header::new_checked(packet) else {
        return Err(DropReason::Malformed);
    };
    let ihl = ip.header_len();
    let total = usize::from(ip.total_len());
    // Field by field: the batch's record starts as `Parsed::default()`, and
    // this resets what an outer header's pass may have set; the prefetch pass
    // sets `hash`, `probe` and `frontend`. (Assigning a whole `Parsed` here
    // costs ~24 instructions per header: callgrind, docs/performance.md.)
    p.ihl = ip.ihl_bytes();
    p.key = FlowKey {
        src: ip.src(),
        dst: ip.dst(),
        sport: 0,
        dport: 0,
        proto: ip.protocol(),
    };
    p.tcp_flags = 0;
    p.icmp_type = 0;
    p.err = 0;
    p.frag = 0;
    p.ip_id = 0;
    // The L4 segment as the IPv4 total length gives it.
    let seg = packet.get(ihl..total).unwrap_or_default();
    if ip.is_fragment() {
        fragment(&ip, p, seg)?;
    } else {
        l4(p, seg)?;
    }
    // Drop Ethernet padding so rewrites and encapsulation see the IP length.
    let want = ETH_HLEN + total;
    if f.len() > want {
        f.set_len(want);
    }
    Ok(())
}

/// The L4 header of an unfragmented packet: ports, TCP flags, ICMP type (and
/// for an ICMP error, the flow it is about).
#[inline(always)]
fn l4(p: &mut Parsed, seg: &[u8]) -> Result<(), DropReason> {
    match p.key.proto {
        PROTO_TCP => {
            let Ok(t) = TcpHeader::new_checked(seg) else {
                return Err(DropReason::MalformedL4);
            };
            p.key.sport = t.src_port();
            p.key.dport = t.dst_port();
            p.tcp_flags = t.flags();
        }
        PROTO_UDP => {
            let Ok(u) = UdpHeader::new_checked(seg) else {
                return Err(DropReason::MalformedL4);
            };
            p.key.sport = u.src_port();
            p.key.dport = u.dst_port();
        }
        PROTO_SCTP => {
            let Ok(s) = SctpHeader::new_checked(seg) else {
                return Err(DropReason::MalformedL4);
            };
            p.key.sport = s.src_port();
            p.key.dport = s.dst_port();
        }
        PROTO_ICMP => {
            let Ok(m) = IcmpHeader::new_checked(seg) else {
                return Err(DropReason::MalformedL4);
            };
            p.icmp_type = m.msg_type();
            // Echo: the identifier plays the port, on the side that makes
            // request and reply mirror images of each other.
            match p.icmp_type {
                ICMP_ECHO_REQUEST => p.key.sport = m.echo_ident(),
                ICMP_ECHO_REPLY => p.key.dport = m.echo_ident(),
                t if icmp::is_error(t) => icmp::classify_error(p, &seg[8..])?,
                _ => {}
            }
        }
        _ => {}
    }
    Ok(())
}

/// An IPv4 fragment. The first (offset 0) carries the L4 header, and only its
/// ports are read (a UDP length covers the whole datagram, not this fragment);
/// a first fragment too short to hold the header is dropped (RFC 1858). The
/// others have no ports: the fragment table gives them their datagram's fate.
#[cold]
fn fragment(ip: &Ipv4Header<&[u8; 20]>, p: &mut Parsed, seg: &[u8]) -> Result<(), DropReason> {
    p.ip_id = ip.ident();
    if ip.frag_offset() == 0 {
        p.frag = FRAG_FIRST;
        match p.key.proto {
            PROTO_TCP => {
                let Ok(t) = TcpHeader::new_checked(seg) else {
                    return Err(DropReason::MalformedL4);
                };
                p.key.sport = t.src_port();
                p.key.dport = t.dst_port();
                p.tcp_flags = t.flags();
            }
            PROTO_UDP | PROTO_SCTP => {
                // Both start with the two ports; a UDP length or an SCTP
                // CRC covers the whole datagram, not this fragment.
                let Some(u) = seg.first_chunk::<UDP_HEADER_LEN>() else {
                    return Err(DropReason::MalformedL4);
                };
                p.key.sport = u16::from_be_bytes([u[0], u[1]]);
                p.key.dport = u16::from_be_bytes([u[2], u[3]]);
            }
            PROTO_ICMP => {
                let Ok(m) = IcmpHeader::new_checked(seg) else {
                    return Err(DropReason::MalformedL4);
                };
                p.icmp_type = m.msg_type();
                match p.icmp_type {
                    ICMP_ECHO_REQUEST => p.key.sport = m.echo_ident(),
                    ICMP_ECHO_REPLY => p.key.dport = m.echo_ident(),
                    _ => {}
                }
            }
            _ => {}
        }
    } else {
        p.frag = FRAG_LATER;
    }
    Ok(())
}
