//! ICMP errors, which cross the stages: classified in stage 2 (the quoted
//! packet's tuple, reversed, is the key of the direction the error travels, so
//! stage 3 finds the flow it is about), translated in stage 6 through that
//! flow's NAT (outer and quoted addresses, quoted ports, quoted IP and L4
//! checksums, ICMP checksum), and crafted by the dataplane itself: port
//! unreachable (stage 4's reject), time exceeded (stage 6, a TTL that would
//! reach 0) and fragmentation needed (stage 7, too big for the overlay with DF
//! set), rate-limited per destination. Every answer goes back the way the frame
//! came. Reads the snapshot; writes only the frame and the rate limiter.
//!
//! Rules for errors nodeplane does not translate: an ICMP error quoting an ICMP
//! error is dropped (`icmp_error_of_error`); one about no tracked flow is routed
//! like any packet when its destination is a pod or this node, and dropped
//! (`icmp_error_no_flow`) when it would leave the cluster or goes to a ClusterIP.

use shared::counters::DropReason;
use shared::wire::checksum::{self, Incremental};
use shared::wire::ipv4::{PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use shared::wire::l4::{
    ICMP_DST_UNREACHABLE, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_PARAM_PROBLEM,
    ICMP_TIME_EXCEEDED,
};
use shared::wire::{
    EthernetAddress, EthernetFrame, EthernetHeader, EthernetProtocol, EthernetRepr, Icmpv4Packet,
    IpProtocol, Ipv4Header, Ipv4Packet, Ipv4Repr, ETH_HLEN, IPV4_HLEN,
};

use super::{nat, rewrite_and_route, route, Ctx, Parsed};
use crate::flow::{ChecksumDeltas, FlowKey, Rewrite};
use crate::frame::{Frame, Verdict};
use crate::state::IcmpKind;

/// ICMP error types nodeplane matches to flows.
#[inline]
pub(super) fn is_error(msg_type: u8) -> bool {
    matches!(
        msg_type,
        ICMP_DST_UNREACHABLE | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM
    )
}

/// Code of destination unreachable for "fragmentation needed and DF set".
const CODE_FRAG_NEEDED: u8 = 4;
/// Code of destination unreachable for "port unreachable".
pub(super) const CODE_PORT_UNREACHABLE: u8 = 3;
/// The largest ICMP error datagram (RFC 1812 4.3.2.3): the quote is cut to fit.
const MAX_ERROR_DATAGRAM: usize = 576;
/// Room for any answer: Ethernet, IPv4, ICMP header and the longest quote.
const SCRATCH: usize = ETH_HLEN + MAX_ERROR_DATAGRAM;

/// Stage 2 for an ICMP error: when the quoted packet is a TCP, UDP or ICMP
/// echo packet sent by the error's destination, the frame's key becomes the
/// quoted tuple reversed and `p.err` the quoted header's length. Anything else
/// stays a plain ICMP frame (routed without state).
#[cold]
pub(super) fn classify_error(p: &mut Parsed, quote: &[u8]) -> Result<(), DropReason> {
    let Ok(q) = Ipv4Header::new_quoted(quote) else {
        return Ok(());
    };
    if q.src() != p.key.dst || q.frag_offset() != 0 {
        return Ok(());
    }
    let l4 = quote.get(q.header_len()..).unwrap_or_default();
    let Some(h) = l4.first_chunk::<8>() else {
        return Ok(());
    };
    let be = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
    let (sport, dport) = match q.protocol() {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => (be(0), be(2)),
        PROTO_ICMP => match h[0] {
            ICMP_ECHO_REQUEST => (be(4), 0),
            ICMP_ECHO_REPLY => (0, be(4)),
            t if is_error(t) => return Err(DropReason::IcmpErrorOfError),
            _ => return Ok(()),
        },
        _ => return Ok(()),
    };
    p.key = FlowKey {
        src: q.dst(),
        dst: q.src(),
        sport: dport,
        dport: sport,
        proto: q.protocol(),
    };
    p.err = q.ihl_bytes();
    Ok(())
}

/// Stage 6 for an ICMP error of a tracked flow whose direction's rewrite is
/// `rw`: the outer destination (and the outer source when the flow's endpoint
/// sent it), the quoted packet (as the other side of the NAT sent it) and
/// every checksum, then routed like the flow's packets.
#[cold]
pub(super) fn translate(
    cx: &mut Ctx<'_>,
    f: &mut Frame<'_>,
    p: &Parsed,
    rw: &Rewrite,
    fallback_mac: Option<[u8; 6]>,
) -> Verdict {
    let k = p.key;
    let out = k.rewritten(rw);
    let l4 = p.l4();
    let q = l4 + 8;
    let qihl = usize::from(p.err);
    let d = f.data_mut();
    if d.len() < q + qihl + 8 {
        return Verdict::Drop(DropReason::MalformedL4);
    }
    // The outer header.
    {
        let Some(mut ip) = Ipv4Header::new_mut(&mut d[ETH_HLEN..]) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if ip.ttl() <= 1 {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        ip.set_ttl(ip.ttl() - 1);
        if ip.src() == k.src {
            ip.set_src(out.src);
        }
        ip.set_dst(out.dst);
    }
    refill_ip_checksum(&mut d[ETH_HLEN..l4]);
    // The quoted packet: the flow's other direction, as its sender wrote it.
    let (orig, now) = (k.reversed(), out.reversed());
    {
        let Some(mut ip) = Ipv4Header::new_mut(&mut d[q..]) else {
            return Verdict::Drop(DropReason::MalformedL4);
        };
        ip.set_src(now.src);
        ip.set_dst(now.dst);
    }
    refill_ip_checksum(&mut d[q..q + qihl]);
    let ql4 = q + qihl;
    let quoted_len = d.len() - ql4;
    let deltas = ChecksumDeltas::between(&orig, &now.identity());
    match k.proto {
        PROTO_TCP | PROTO_UDP => {
            put16(d, ql4, now.sport);
            put16(d, ql4 + 2, now.dport);
            // The quoted L4 checksum, when the quote holds it (UDP: always;
            // TCP: 18 bytes or more), as Linux's NAT does.
            let at = if k.proto == PROTO_UDP { 6 } else { 16 };
            if quoted_len >= at + 2 {
                let old = be16(d, ql4 + at);
                if !(k.proto == PROTO_UDP && old == 0) {
                    let cs = Incremental::new(old).apply(deltas.l4).finish();
                    let cs = if k.proto == PROTO_UDP {
                        checksum::udp_nonzero(cs)
                    } else {
                        cs
                    };
                    put16(d, ql4 + at, cs);
                }
            }
        }
        PROTO_SCTP => {
            // The ports only: the CRC32c covers the whole packet, which a
            // quote is not (the receiver matches it by ports and tag).
            put16(d, ql4, now.sport);
            put16(d, ql4 + 2, now.dport);
        }
        PROTO_ICMP => {
            // The echo identifier plays the port on the side that carries it.
            let id = if d[ql4] == ICMP_ECHO_REQUEST {
                now.sport
            } else {
                now.dport
            };
            let old_id = be16(d, ql4 + 4);
            let cs = Incremental::new(be16(d, ql4 + 2)).word(old_id, id).finish();
            put16(d, ql4 + 2, cs);
            put16(d, ql4 + 4, id);
        }
        _ => {}
    }
    // The ICMP checksum over the whole message.
    put16(d, l4 + 2, 0);
    let cs = checksum::checksum(&d[l4..]);
    put16(d, l4 + 2, cs);
    cx.c.icmp_errors_translated += 1;
    route::route(cx, f, p, &out, fallback_mac)
}

/// Stage 3–7 for an ICMP error about no flow this node tracks.
#[cold]
pub(super) fn untracked(cx: &mut Ctx<'_>, f: &mut Frame<'_>, p: &Parsed) -> Verdict {
    let dst = p.key.dst;
    if cx.snap.in_service_cidr(dst) || nat::is_off_cluster(cx.snap, dst) {
        return Verdict::Drop(DropReason::IcmpErrorNoFlow);
    }
    rewrite_and_route(cx, f, p, &p.key.identity())
}

/// A TTL that would reach 0: ICMP time exceeded from this node to the sender
/// (never about an ICMP error or a later fragment, and rate-limited).
#[cold]
pub(super) fn time_exceeded(cx: &mut Ctx<'_>, f: &mut Frame<'_>, p: &Parsed) -> Verdict {
    if p.err != 0 || p.is_later_fragment() || (p.key.proto == PROTO_ICMP && is_error(p.icmp_type)) {
        return Verdict::Drop(DropReason::TtlExceeded);
    }
    let node = cx.snap.node();
    let Some(from) = node.underlay_ip.or(node.overlay_ip()).map(u32::from) else {
        return Verdict::Drop(DropReason::TtlExceeded);
    };
    if !cx.state.icmp.allow(p.key.src, IcmpKind::Error, cx.now) {
        cx.c.icmp_rate_limited += 1;
        return Verdict::Drop(DropReason::TtlExceeded);
    }
    cx.c.icmp_errors_sent += 1;
    answer(cx, f, p, from, IpProtocol::Icmp, |d, body| {
        emit_error(ICMP_TIME_EXCEEDED, 0, [0; 4], quote(d), body)
    })
}

/// Too big for the overlay with DF set: ICMP fragmentation needed with the
/// MTU that fits (`mtu`, for the IP packet) to the sender, quoting the packet
/// as the sender sent it (the frame was already rewritten to `out`).
#[cold]
pub(super) fn frag_needed(
    cx: &mut Ctx<'_>,
    f: &mut Frame<'_>,
    p: &Parsed,
    out: &FlowKey,
    mtu: u16,
) -> Verdict {
    if p.err != 0 {
        return Verdict::Drop(DropReason::MtuExceeded);
    }
    let node = cx.snap.node();
    let Some(from) = node.underlay_ip.or(node.overlay_ip()).map(u32::from) else {
        return Verdict::Drop(DropReason::MtuExceeded);
    };
    if !cx.state.icmp.allow(p.key.src, IcmpKind::FragNeeded, cx.now) {
        cx.c.icmp_rate_limited += 1;
        return Verdict::Drop(DropReason::MtuExceeded);
    }
    cx.c.icmp_errors_sent += 1;
    let orig = p.key;
    let ports = p.has_ports();
    let out = *out;
    let [hi, lo] = mtu.to_be_bytes();
    let rest = [0, 0, hi, lo];
    answer(cx, f, p, from, IpProtocol::Icmp, move |d, body| {
        let n = emit_error(ICMP_DST_UNREACHABLE, CODE_FRAG_NEEDED, rest, quote(d), body);
        // Undo the translation in the quote (addresses, TTL, ports, checksums).
        let q = &mut body[8..n];
        if let Some(mut ip) = Ipv4Header::new_mut(q) {
            ip.set_src(orig.src);
            ip.set_dst(orig.dst);
            ip.set_ttl(ip.ttl().saturating_add(1));
        }
        let ihl = usize::from(q[0] & 0x0f) * 4;
        if q.len() >= ihl {
            refill_ip_checksum(&mut q[..ihl]);
        }
        if ports && q.len() >= ihl + 4 {
            put16(q, ihl, orig.sport);
            put16(q, ihl + 2, orig.dport);
            let back = ChecksumDeltas::between(&out, &orig.identity());
            let at = if orig.proto == PROTO_UDP { 6 } else { 16 };
            if orig.proto != PROTO_SCTP && q.len() >= ihl + at + 2 {
                let old = be16(q, ihl + at);
                if !(orig.proto == PROTO_UDP && old == 0) {
                    let cs = Incremental::new(old).apply(back.l4).finish();
                    put16(q, ihl + at, cs);
                }
            }
        }
        put16(body, 2, 0);
        let cs = checksum::checksum(&body[..n]);
        put16(body, 2, cs);
        n
    })
}

/// The quote an ICMP error carries: the IP header and as much of the packet
/// as fits a 576-byte error datagram.
fn quote(frame: &[u8]) -> &[u8] {
    let ip = frame.get(ETH_HLEN..).unwrap_or_default();
    &ip[..ip.len().min(MAX_ERROR_DATAGRAM - IPV4_HLEN - 8)]
}

/// An ICMP error message of `msg_type`/`code` with the 4 bytes `rest`
/// (unused, or the next-hop MTU) quoting `quote`, written with smoltcp's
/// `Icmpv4Packet`; returns its length.
pub(super) fn emit_error(
    msg_type: u8,
    code: u8,
    rest: [u8; 4],
    quote: &[u8],
    body: &mut [u8],
) -> usize {
    let len = (8 + quote.len()).min(body.len());
    let mut m = Icmpv4Packet::new_unchecked(&mut body[..len]);
    m.set_msg_type(msg_type.into());
    m.set_msg_code(code);
    m.set_echo_ident(u16::from_be_bytes([rest[0], rest[1]]));
    m.set_echo_seq_no(u16::from_be_bytes([rest[2], rest[3]]));
    let n = len - 8;
    m.data_mut()[..n].copy_from_slice(&quote[..n]);
    m.fill_checksum();
    len
}

/// Replaces the frame with an answer to its sender: IPv4 from `from` with the
/// body `body` writes (given the frame as it is), Ethernet back to where the
/// frame came from; then back the way it came (over the overlay when it was
/// decapsulated, else out of the interface it arrived on).
pub(super) fn answer(
    cx: &mut Ctx<'_>,
    f: &mut Frame<'_>,
    p: &Parsed,
    from: u32,
    proto: IpProtocol,
    body: impl FnOnce(&[u8], &mut [u8]) -> usize,
) -> Verdict {
    let to = p.key.src;
    let mut scratch = [0u8; SCRATCH];
    let len = {
        let d = f.data();
        let Some(eth) = EthernetHeader::new_checked(d) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let body_len = body(d, &mut scratch[ETH_HLEN + IPV4_HLEN..]);
        Ipv4Repr {
            src_addr: from.into(),
            dst_addr: to.into(),
            next_header: proto,
            payload_len: body_len,
            hop_limit: 64,
        }
        .emit(
            &mut Ipv4Packet::new_unchecked(&mut scratch[ETH_HLEN..ETH_HLEN + IPV4_HLEN]),
            &Default::default(),
        );
        EthernetRepr {
            src_addr: EthernetAddress(eth.dst()),
            dst_addr: EthernetAddress(eth.src()),
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut scratch[..ETH_HLEN]));
        ETH_HLEN + IPV4_HLEN + body_len
    };
    if !f.set_len(len) {
        return Verdict::Drop(DropReason::TooBig);
    }
    f.data_mut().copy_from_slice(&scratch[..len]);
    back(cx, f, p, from, proto)
}

/// Sends an answer the dataplane wrote into `f` (from `from` to the sender of
/// `p`) back the way `p` came: over the overlay to the sender's node when `p`
/// was decapsulated, else out of the interface it arrived on.
pub(super) fn back(
    cx: &mut Ctx<'_>,
    f: &mut Frame<'_>,
    p: &Parsed,
    from: u32,
    proto: IpProtocol,
) -> Verdict {
    let to = p.key.src;
    if p.decapped {
        // Back over the overlay to the sender's node.
        let out = FlowKey {
            src: from,
            dst: to,
            sport: 0,
            dport: 0,
            proto: u8::from(proto),
        };
        let back = Parsed {
            key: out,
            ..Parsed::default()
        };
        return route::route(cx, f, &back, &out, None);
    }
    Verdict::Tx { ifindex: f.ifindex }
}

/// Recomputes the checksum of the IPv4 header `h` (options included).
fn refill_ip_checksum(h: &mut [u8]) {
    if h.len() < IPV4_HLEN {
        return;
    }
    h[10] = 0;
    h[11] = 0;
    let cs = checksum::checksum(h);
    h[10..12].copy_from_slice(&cs.to_be_bytes());
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
