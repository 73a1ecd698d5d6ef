//! Stage 6, rewrite: a flow's translation applied in place through the
//! `shared::wire` views: TTL decremented, addresses and ports rewritten, the
//! IPv4 and L4 checksums updated once each from the changes the flow entry
//! holds summed (RFC 1624). Touches only the frame's bytes; it may not look
//! anything up.

use shared::counters::DropReason;
use shared::wire::checksum::{self, Incremental};
use shared::wire::ipv4::{PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use shared::wire::l4::{set_sctp_checksum, ICMP_ECHO_REQUEST};
use shared::wire::{IcmpHeader, Ipv4Header, SctpHeader, TcpHeader, UdpHeader, ETH_HLEN};

use super::Parsed;
use crate::flow::{ChecksumDeltas, FlowKey, Rewrite};
use crate::frame::Frame;

/// Rewrites the frame classify described in `p` to `rw` (whose checksum
/// changes are `deltas`) and returns the tuple it now carries. `RARE` false:
/// `p` is not a fragment (`super::rewrite_and_route_as`).
#[inline(always)]
pub(super) fn apply<const RARE: bool>(
    f: &mut Frame<'_>,
    p: &Parsed,
    rw: &Rewrite,
    deltas: ChecksumDeltas,
) -> Result<FlowKey, DropReason> {
    let key = p.key;
    let d = f.data_mut();
    let rest = d.get_mut(ETH_HLEN..).unwrap_or_default();
    // Classify saw at least this much; anything shorter is not from it.
    let Some(mut ip) = Ipv4Header::new_mut(rest) else {
        return Err(DropReason::Malformed);
    };
    let ttl = ip.ttl();
    if ttl <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    ip.set_ttl(ttl - 1);
    let ipsum = Incremental::new(ip.checksum())
        .ttl_decrement()
        .apply(deltas.ip);
    ip.set_checksum(ipsum.finish());
    let addr_changed = rw.src != key.src || rw.dst != key.dst;
    if addr_changed {
        ip.set_src(rw.src);
        ip.set_dst(rw.dst);
    }
    let ports_changed = rw.sport != key.sport || rw.dport != key.dport;
    if RARE && ports_changed && key.proto == PROTO_SCTP && p.is_first_fragment() {
        // SCTP's CRC32c covers the whole datagram, which a fragment is not.
        return Err(DropReason::SctpFragment);
    }
    // A later fragment has no L4 header: its addresses are all there is.
    if (addr_changed || ports_changed) && !(RARE && p.is_later_fragment()) {
        let seg = rest.get_mut(usize::from(p.ihl)..).unwrap_or_default();
        match key.proto {
            PROTO_TCP => {
                if let Some(mut t) = TcpHeader::new_mut(seg) {
                    let cs = Incremental::new(t.checksum()).apply(deltas.l4);
                    t.set_checksum(cs.finish());
                    t.set_src_port(rw.sport);
                    t.set_dst_port(rw.dport);
                }
            }
            PROTO_UDP => {
                if let Some(mut u) = UdpHeader::new_mut(seg) {
                    let old = u.checksum();
                    // 0: the sender computed no checksum; keep it that way.
                    if old != 0 {
                        let cs = Incremental::new(old).apply(deltas.l4);
                        u.set_checksum(checksum::udp_nonzero(cs.finish()));
                    }
                    u.set_src_port(rw.sport);
                    u.set_dst_port(rw.dport);
                }
            }
            PROTO_SCTP if ports_changed => {
                if let Some(mut h) = SctpHeader::new_mut(seg) {
                    h.set_src_port(rw.sport);
                    h.set_dst_port(rw.dport);
                }
                // No pseudo-header: only a port change touches the CRC, and
                // it is computed again over the packet (classify trimmed the
                // frame to the IPv4 total length).
                set_sctp_checksum(seg);
            }
            PROTO_ICMP if ports_changed => {
                if let Some(mut m) = IcmpHeader::new_mut(seg) {
                    let new = if p.icmp_type == ICMP_ECHO_REQUEST {
                        rw.sport
                    } else {
                        rw.dport
                    };
                    // From the bytes replaced, whatever message matched the flow.
                    let cs = Incremental::new(m.checksum()).word(m.echo_ident(), new);
                    m.set_checksum(cs.finish());
                    m.set_echo_ident(new);
                }
            }
            _ => {}
        }
    }
    Ok(key.rewritten(rw))
}
