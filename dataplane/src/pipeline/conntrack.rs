//! Stage 3, conntrack + ownership: the batch's flow-table sets and entries
//! prefetched in two passes, then per frame the flow-table lookup. A hit
//! carries its rewrite (stages 6–7 follow at once); a hit whose Service backend
//! left the tables is flushed; a miss whose flow another worker owns is handed
//! to that worker untouched (a first fragment's datagram follows it there).
//! Reads the snapshot, reads and updates the flow
//! table; it may not create flows (stage 5 does).

use shared::counters::DropReason;
use shared::snapshot::Snapshot;

use super::nat::is_off_cluster;
use super::{rewrite_and_route_as, service, Ctx, Parsed};
use crate::flow::{client_owner, generation_low, port_owner, NO_SLOT};
use crate::frame::{Frame, Verdict};

/// The prefetch passes over the live frames of a batch: every frame's seeded
/// hash and the tags of its set, then, the tags having arrived, the matching
/// entry (remembered in `Parsed::probe`); a frame no tag matched (most likely
/// a new flow) also has its frontend looked up and the service stage's data
/// prefetched (`service::prefetch`).
#[inline(always)]
pub(super) fn prefetch(cx: &Ctx<'_>, parsed: &mut [Parsed], live: &[bool]) {
    for (p, _) in parsed.iter_mut().zip(live).filter(|(_, l)| **l) {
        let h = cx.flows.hash(&p.key);
        p.hash = h;
        cx.flows.prefetch(h);
    }
    for (p, _) in parsed.iter_mut().zip(live).filter(|(_, l)| **l) {
        p.probe = cx.flows.probe(p.hash);
        if p.probe == NO_SLOT {
            service::prefetch(p, cx.snap);
        }
    }
}

/// The conntrack fast path: a verdict for a flow-table hit (or a frame another
/// worker owns), `None` when the frame starts a new flow here. Inlined into the
/// batch loop: this is the path nearly every packet takes. `RARE` false: the
/// frame is neither a fragment nor an ICMP error (`rewrite_and_route_as`).
#[inline(always)]
pub(super) fn lookup<const RARE: bool>(
    cx: &mut Ctx<'_>,
    f: &mut Frame<'_>,
    p: &Parsed,
) -> Option<Verdict> {
    let key = p.key;
    if let Some(hit) = cx.flows.lookup_probed(&key, p.hash, p.probe, cx.now) {
        let mut live = true;
        if hit.checked_gen != generation_low(cx.snap.generation) {
            match hit.meta.backend {
                Some((ip, port)) if !cx.snap.backend_alive(ip, port, key.proto) => {
                    // The backend left the Service: flush the flow so the next
                    // packet reaches a live backend or is rejected (kube-proxy
                    // flushes UDP conntrack entries of a removed endpoint).
                    cx.flows.remove(hit.slot);
                    cx.c.flows_flushed += 1;
                    live = false;
                }
                _ => cx.flows.set_checked(&hit, cx.snap.generation),
            }
        }
        if live {
            // An ICMP error is related to the flow; it does not advance it.
            if !RARE || p.err == 0 {
                cx.flows.on_packet(&hit, p.tcp(), cx.now);
            }
            cx.c.flow_hits += 1;
            let back_to = if hit.is_reply {
                if key.dst == u32::from(super::HOST_LINK_ADDR) && !from_host_if(cx, f) {
                    // Only the kernel answers the host link address, through
                    // nph1: a "reply" to it from anywhere else is forged.
                    return Some(Verdict::Drop(DropReason::HostLinkSpoofed));
                }
                hit.meta.client_mac
            } else {
                None
            };
            return Some(rewrite_and_route_as::<RARE>(
                cx,
                f,
                p,
                &hit.rewrite,
                hit.deltas,
                back_to,
            ));
        }
        if hit.is_reply {
            // A reply from a backend that is gone: nothing to translate it to.
            return Some(Verdict::Drop(DropReason::NoRoute));
        }
    } else if let Some(worker) = foreign_owner(cx, f, p) {
        if RARE && p.is_first_fragment() {
            super::fragment::handed(cx, p, worker);
        }
        return Some(Verdict::Handoff { worker });
    }
    None
}

/// Did the frame arrive on the host interface (nph1)?
#[cold]
fn from_host_if(cx: &Ctx<'_>, f: &Frame<'_>) -> bool {
    cx.snap
        .node()
        .host_if
        .is_some_and(|h| h.host_ifindex == f.ifindex)
}

/// With several workers: the worker that owns this frame's flow when it is not
/// this one (see `FlowTable::set_ownership`). Decided on a flow-table miss,
/// from the tables alone, so every worker decides the same:
/// - a new flow to a frontend, pod traffic to be masqueraded off-cluster, or
///   a local pod's direct flow to a Service endpoint (tracked, see
///   `reaches_endpoint_directly`): the client's (source's) worker;
/// - a frame to one of this node's own addresses (a reply to a masqueraded
///   flow): the worker its destination port (ICMP: echo identifier) names;
/// - a frame from a Service endpoint, usable or not (a reply to a DNAT flow or
///   to a tracked direct flow): the client's (destination's) worker.
///
/// Anything else is routed without flow state and stays here. A handed-in
/// frame is never handed on.
#[inline(always)]
fn foreign_owner(cx: &Ctx<'_>, f: &Frame<'_>, p: &Parsed) -> Option<u16> {
    let (me, n) = cx.flows.ownership();
    if n <= 1 || f.is_handed_in() {
        return None;
    }
    owner_if_other(cx, p, me, n)
}

/// `foreign_owner` with several workers: the owner per the rules above, when
/// it is not `me`.
fn owner_if_other(cx: &Ctx<'_>, p: &Parsed, me: u16, n: u16) -> Option<u16> {
    let snap = cx.snap;
    let key = p.key;
    let l4 = p.has_ports();
    let own = snap.node();
    let owner = if l4 && snap.frontend(key.dst, key.proto, key.dport).is_some() {
        client_owner(key.src, n)
    } else if snap.is_own_ip(key.dst)
        || own.overlay_ip().is_some_and(|o| u32::from(o) == key.dst)
        || key.dst == u32::from(super::HOST_LINK_ADDR)
    {
        // (A reply to the host link address: its masquerade port names
        // the owner, as on the node's own addresses.)
        port_owner(key.dport, n)
    } else if l4 && snap.is_endpoint(key.src, key.sport, key.proto) {
        client_owner(key.dst, n)
    } else if reaches_endpoint_directly(snap, p)
        || (!p.decapped && is_off_cluster(snap, key.dst) && snap.local_pod_hop(key.src).is_some())
    {
        client_owner(key.src, n)
    } else {
        return None;
    };
    (owner != me).then_some(owner)
}

/// A local pod's TCP or UDP to a Service endpoint's address and port, not
/// through the Service. Its reply tuple is the one a Service flow to that
/// backend from the same client port has, so it is tracked (on the client's
/// worker) like one. Any endpoint, usable or not: the flow must keep its
/// worker while its destination turns unready.
#[inline]
pub(super) fn reaches_endpoint_directly(snap: &Snapshot, p: &Parsed) -> bool {
    let key = p.key;
    !p.decapped
        && p.has_ports()
        && snap.is_endpoint(key.dst, key.dport, key.proto)
        && snap.local_pod_hop(key.src).is_some()
}
