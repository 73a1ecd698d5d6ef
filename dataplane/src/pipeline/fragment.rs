//! IPv4 fragments, which cross the stages. A datagram's first fragment (it
//! carries the ports) goes through stages 3–7 like any packet, and the
//! translation it gets is recorded in the worker's fragment table (`frag`);
//! the other fragments (no L4 header) get that translation, addresses only, and
//! are routed the same way; one that arrives before its first fragment waits in
//! the table's arena, and is sent on (an extra frame for the adapter) once the
//! first fragment was translated. A frame too big for the overlay with DF clear
//! is cut here into inner fragments (the receiver's stack reassembles them, as
//! for any fragment a router made; the overlay's receivers need no reassembly).
//! Reads the snapshot; writes the frame, the fragment table and its arena.

use shared::counters::DropReason;
use shared::snapshot::RemoteHop;
use shared::wire::ipv4::{FLAG_MF, FRAG_OFFSET_MASK};
use shared::wire::{Ipv4Header, ETH_HLEN, IPV4_HLEN, VXLAN_OVERHEAD};

use super::{classify, rewrite_and_route_as, route, Ctx, Parsed};
use crate::flow::{ChecksumDeltas, FlowKey, Rewrite};
use crate::frag::{FragDecision, FragError, FragKey, Later, SLOT_BYTES, SLOT_HEADROOM};
use crate::frame::{Frame, Verdict};

/// The datagram `p` belongs to.
fn key(p: &Parsed) -> FragKey {
    FragKey {
        src: p.key.src,
        dst: p.key.dst,
        id: p.ip_id,
        proto: p.key.proto,
    }
}

/// The bytes of its datagram a fragment holds: [start, end).
fn range(f: &Frame<'_>) -> Option<(u32, u32)> {
    let ip = Ipv4Header::new_checked(f.data().get(ETH_HLEN..)?).ok()?;
    let start = u32::from(ip.frag_offset());
    let len = u32::from(ip.total_len()).checked_sub(u32::try_from(ip.header_len()).ok()?)?;
    Some((start, start + len))
}

fn reason(e: FragError) -> DropReason {
    match e {
        FragError::Overlap => DropReason::FragmentOverlap,
        FragError::TooBig => DropReason::FragmentTooBig,
        FragError::Full => DropReason::FragmentNoRoom,
        FragError::Refused => DropReason::FragmentRefused,
    }
}

/// A datagram's first fragment, before stage 3: its range is recorded (a
/// repeat or an overlap is dropped).
#[cold]
pub(super) fn first(cx: &mut Ctx<'_>, f: &Frame<'_>, p: &Parsed) -> Option<Verdict> {
    let (_, end) = range(f)?;
    match cx.state.frags.first(&key(p), end, cx.now) {
        Ok(()) => None,
        Err(e) => Some(Verdict::Drop(reason(e))),
    }
}

/// The translation the first fragment got (stage 6), for the rest.
#[cold]
pub(super) fn decided(cx: &mut Ctx<'_>, p: &Parsed, rw: &Rewrite, ip_delta: u16) {
    cx.state
        .frags
        .decide(&key(p), FragDecision::Forward { rw: *rw, ip_delta }, cx.now);
}

/// The first fragment was not forwarded: the rest is dropped.
#[cold]
pub(super) fn refused(cx: &mut Ctx<'_>, p: &Parsed) {
    cx.state.frags.decide(&key(p), FragDecision::Drop, cx.now);
}

/// The first fragment went to the worker that owns its flow: the later ones
/// follow it there (those that came before it cannot: dropped, counted).
#[cold]
pub(super) fn handed(cx: &mut Ctx<'_>, p: &Parsed, worker: u16) {
    cx.state
        .frags
        .decide(&key(p), FragDecision::Handoff { worker }, cx.now);
}

/// Stages 3–7 for a fragment without the L4 header.
#[cold]
pub(super) fn later(cx: &mut Ctx<'_>, f: &mut Frame<'_>, p: &Parsed) -> Verdict {
    let Some((start, end)) = range(f) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    match cx.state.frags.later(&key(p), start, end, cx.now) {
        Later::Forward { rw, ip_delta } => {
            cx.c.fragments_translated += 1;
            forward(cx, f, p, &rw, ip_delta)
        }
        Later::Wait(w) => {
            match cx
                .state
                .frags
                .hold(w, f.data(), f.ifindex, p.decapped, cx.now)
            {
                Ok(()) => {
                    cx.c.fragments_held += 1;
                    Verdict::Held
                }
                Err(e) => Verdict::Drop(reason(e)),
            }
        }
        Later::Handoff { worker } => Verdict::Handoff { worker },
        Later::Drop(e) => Verdict::Drop(reason(e)),
    }
}

/// A later fragment with its datagram's translation: addresses only (it has
/// no ports), then routed.
fn forward(
    cx: &mut Ctx<'_>,
    f: &mut Frame<'_>,
    p: &Parsed,
    rw: &Rewrite,
    ip_delta: u16,
) -> Verdict {
    let rw = Rewrite {
        src: rw.src,
        dst: rw.dst,
        sport: p.key.sport,
        dport: p.key.dport,
    };
    let deltas = ChecksumDeltas {
        ip: ip_delta,
        l4: 0,
    };
    rewrite_and_route_as::<true>(cx, f, p, &rw, deltas, None)
}

/// After a batch: the fragments that waited for a first fragment translated
/// in it, translated and routed now, queued as extra frames.
#[cold]
pub(super) fn release(cx: &mut Ctx<'_>) {
    for (slot, _) in cx.state.frags.take_released() {
        let mut buf = [0u8; SLOT_BYTES];
        let (len, ifindex, decapped) = {
            let (b, len, ifindex, decapped) = cx.state.frags.slot_mut(slot);
            buf.copy_from_slice(b);
            (len, ifindex, decapped)
        };
        let mut f = Frame::new(&mut buf, SLOT_HEADROOM, len, ifindex);
        let mut p = Parsed::default();
        let verdict = match classify::l3(&mut f, &mut p) {
            Ok(()) => {
                p.decapped = decapped;
                match cx.state.frags.decision(&key(&p), cx.now) {
                    Some(FragDecision::Forward { rw, ip_delta }) => {
                        forward(cx, &mut f, &p, &rw, ip_delta)
                    }
                    _ => Verdict::Drop(DropReason::FragmentRefused),
                }
            }
            Err(r) => Verdict::Drop(r),
        };
        match verdict {
            Verdict::Tx { ifindex } => {
                let (off, len) = (f.offset(), f.len());
                let (b, _, _, _) = cx.state.frags.slot_mut(slot);
                b[off..off + len].copy_from_slice(&buf[off..off + len]);
                if cx.state.frags.emit(slot, off, len, ifindex) {
                    cx.c.fragments_released += 1;
                } else {
                    cx.c.drop(DropReason::TxFull);
                }
            }
            Verdict::Drop(r) => {
                cx.c.drop(r);
                cx.state.frags.free_slot(slot);
            }
            _ => {
                cx.c.drop(DropReason::FragmentRefused);
                cx.state.frags.free_slot(slot);
            }
        }
    }
}

/// Stage 7 for a frame too big for the overlay with DF clear: the inner IP
/// packet cut into fragments of at most `mtu` bytes; the first stays in the
/// frame (and is encapsulated by the caller), the others are written,
/// encapsulated, into the arena as extra frames. `None`: go on with the frame.
#[cold]
pub(super) fn cut(
    cx: &mut Ctx<'_>,
    f: &mut Frame<'_>,
    out: &FlowKey,
    remote: &RemoteHop<'_>,
    mtu: usize,
) -> Option<Verdict> {
    let d = f.data();
    let Ok(ip) = Ipv4Header::new_checked(&d[ETH_HLEN.min(d.len())..]) else {
        return Some(Verdict::Drop(DropReason::Malformed));
    };
    let ihl = ip.header_len();
    let total = usize::from(ip.total_len());
    let orig_off = usize::from(ip.frag_offset());
    let orig_mf = ip.more_frags();
    // The first fragment keeps the header (and options); the others get the
    // fixed 20 bytes. Payload per fragment: a multiple of 8.
    let first_chunk = mtu.saturating_sub(ihl) / 8 * 8;
    let chunk = mtu.saturating_sub(IPV4_HLEN) / 8 * 8;
    let payload = total.saturating_sub(ihl);
    if first_chunk == 0 || chunk == 0 || payload <= first_chunk {
        return Some(Verdict::Drop(DropReason::TooBig));
    }
    let rest = payload - first_chunk;
    let pieces = rest.div_ceil(chunk);
    if cx.state.frags.free_slots() < pieces {
        return Some(Verdict::Drop(DropReason::FragmentNoRoom));
    }
    let snap = cx.snap;
    let own = snap.node();
    let (Some(src_ip), Some(next_hop)) = (own.underlay_ip, remote.next_hop) else {
        return None;
    };
    let eth: [u8; ETH_HLEN] = {
        let mut e = [0u8; ETH_HLEN];
        e.copy_from_slice(&d[..ETH_HLEN]);
        e[..6].copy_from_slice(&remote.node.vtep_mac);
        e[6..12].copy_from_slice(&own.vtep_mac);
        e
    };
    let hdr: [u8; IPV4_HLEN] = {
        let mut h = [0u8; IPV4_HLEN];
        h.copy_from_slice(&d[ETH_HLEN..ETH_HLEN + IPV4_HLEN]);
        h[0] = 0x45;
        h
    };
    let body = &d[ETH_HLEN + ihl..ETH_HLEN + total];
    let sport = route::vxlan_sport(out);
    let mut at = first_chunk;
    while at < payload {
        let n = chunk.min(payload - at);
        let Some(slot) = cx.state.frags.alloc(cx.now) else {
            return Some(Verdict::Drop(DropReason::FragmentNoRoom));
        };
        let (b, _, _, _) = cx.state.frags.slot_mut(slot);
        let inner = SLOT_HEADROOM;
        b[inner..inner + ETH_HLEN].copy_from_slice(&eth);
        let ipo = inner + ETH_HLEN;
        b[ipo..ipo + IPV4_HLEN].copy_from_slice(&hdr);
        let more = at + n < payload || orig_mf;
        let word = u16::try_from((orig_off + at) / 8).unwrap_or(0) & FRAG_OFFSET_MASK
            | if more { FLAG_MF } else { 0 }
            | (u16::from_be_bytes([hdr[6], hdr[7]]) & 0x4000);
        b[ipo + 6..ipo + 8].copy_from_slice(&word.to_be_bytes());
        let tl = u16::try_from(IPV4_HLEN + n).unwrap_or(u16::MAX);
        b[ipo + 2..ipo + 4].copy_from_slice(&tl.to_be_bytes());
        b[ipo + 10..ipo + 12].fill(0);
        let cs = shared::wire::checksum::checksum(&b[ipo..ipo + IPV4_HLEN]);
        b[ipo + 10..ipo + 12].copy_from_slice(&cs.to_be_bytes());
        b[ipo + IPV4_HLEN..ipo + IPV4_HLEN + n].copy_from_slice(&body[at..at + n]);
        let inner_len = ETH_HLEN + IPV4_HLEN + n;
        let start = inner - VXLAN_OVERHEAD;
        if let Some(outer) = b[start..inner].first_chunk_mut::<VXLAN_OVERHEAD>() {
            route::write_outer(
                outer,
                snap,
                &next_hop,
                src_ip,
                remote.node.underlay_ip,
                sport,
                inner_len,
            );
        }
        if !cx
            .state
            .frags
            .emit(slot, start, VXLAN_OVERHEAD + inner_len, own.uplink_ifindex)
        {
            return Some(Verdict::Drop(DropReason::TxFull));
        }
        cx.c.fragments_cut += 1;
        cx.c.encapsulated += 1;
        at += n;
    }
    // The first fragment, in place.
    let d = f.data_mut();
    let ipo = ETH_HLEN;
    let word = u16::from_be_bytes([d[ipo + 6], d[ipo + 7]]) | FLAG_MF;
    d[ipo + 6..ipo + 8].copy_from_slice(&word.to_be_bytes());
    let tl = u16::try_from(ihl + first_chunk).unwrap_or(u16::MAX);
    d[ipo + 2..ipo + 4].copy_from_slice(&tl.to_be_bytes());
    d[ipo + 10..ipo + 12].fill(0);
    let cs = shared::wire::checksum::checksum(&d[ipo..ipo + ihl]);
    d[ipo + 10..ipo + 12].copy_from_slice(&cs.to_be_bytes());
    f.set_len(ETH_HLEN + ihl + first_chunk);
    cx.c.fragments_cut += 1;
    None
}
