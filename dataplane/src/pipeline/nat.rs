//! Stage 5, nat: source NAT and the creation of flows. Masquerade of pod
//! traffic leaving the cluster, the choice of a masquerade port (free reply
//! tuple, owned by this worker), the insertion of a decided flow into the flow
//! table and, when another live flow already has its reply tuple (Linux
//! conntrack's clash), a remap to a free source port. Writes the flow table;
//! reads the snapshot's node addresses and masquerade range only.

use shared::counters::DropReason;
use shared::snapshot::Snapshot;
use shared::wire::ipv4::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use shared::wire::l4::ICMP_ECHO_REQUEST;

use super::{flow_hash, rewrite_and_route, Ctx, Parsed, DEFAULT_MASQ_PORTS};
use crate::flow::{port_owner, FlowKey, FlowMeta, InsertError, Rewrite};
use crate::frame::{Frame, Verdict};

/// A new flow as stage 4 decided it (or an untranslated tracked one), before
/// it is inserted.
#[derive(Clone, Copy, Debug)]
pub(super) struct NewFlow {
    pub(super) rw: Rewrite,
    pub(super) meta: FlowMeta,
}

impl NewFlow {
    /// A flow tracked with no translation (a local pod straight to a Service
    /// endpoint).
    pub(super) fn untranslated(key: &FlowKey) -> NewFlow {
        NewFlow {
            rw: key.identity(),
            meta: FlowMeta {
                backend: None,
                snat: false,
                client_mac: None,
            },
        }
    }
}

/// Pod traffic to an address outside the cluster: masqueraded by
/// `masquerade_out`.
#[inline]
pub(super) fn leaves_cluster(snap: &Snapshot, p: &Parsed) -> bool {
    let key = p.key;
    !p.decapped
        && !snap.in_service_cidr(key.dst)
        && is_off_cluster(snap, key.dst)
        && snap.local_pod_hop(key.src).is_some()
}

/// Not a pod of this node, not in a remote node's pod CIDR, not the node.
#[inline]
pub(super) fn is_off_cluster(snap: &Snapshot, ip: u32) -> bool {
    !snap.in_local_pod_cidr(ip) && snap.remote_route(ip).is_none() && !snap.is_own_ip(ip)
}

/// Pod traffic leaving the cluster: SNAT to the node's underlay IP with a port
/// from the masquerade range (the XDP program steers replies to that range here).
pub(super) fn masquerade_out(cx: &mut Ctx<'_>, f: &mut Frame<'_>, p: &Parsed) -> Verdict {
    let key = p.key;
    let masq_icmp = key.proto == PROTO_ICMP && p.icmp_type == ICMP_ECHO_REQUEST;
    if key.proto != PROTO_TCP && key.proto != PROTO_UDP && !masq_icmp {
        return Verdict::Drop(DropReason::UnsupportedProtocol);
    }
    let Some(ip) = cx.snap.node().underlay_ip else {
        return Verdict::Drop(DropReason::NoRoute);
    };
    let mut rw = key.identity();
    rw.src = u32::from(ip);
    let Some(port) = pick_port(cx, &key, &rw, false) else {
        return Verdict::Drop(DropReason::NoMasqueradePort);
    };
    rw.sport = port;
    let meta = FlowMeta {
        backend: None,
        snat: true,
        client_mac: None,
    };
    if cx
        .flows
        .insert(key, rw, meta, p.tcp(), cx.snap.generation, cx.now)
        .is_err()
    {
        return Verdict::Drop(DropReason::FlowTableFull);
    }
    cx.c.flows_created += 1;
    cx.c.masqueraded += 1;
    rewrite_and_route(cx, f, p, &rw)
}

/// A source port for SNAT whose reply tuple is free. `keep_first` tries the
/// client's own port first (used for in-cluster masquerade to the overlay IP).
pub(super) fn pick_port(
    cx: &Ctx<'_>,
    key: &FlowKey,
    rw: &Rewrite,
    keep_first: bool,
) -> Option<u16> {
    let free = |port: u16| {
        let reply = FlowKey {
            src: rw.dst,
            dst: rw.src,
            sport: rw.dport,
            dport: port,
            proto: key.proto,
        };
        !cx.flows.contains(&reply, cx.now)
    };
    // With several workers the port must name this worker (`port_owner`), so
    // the reply, which carries it, comes back here.
    let (me, n) = cx.flows.ownership();
    let mine = |port: u16| port_owner(port, n) == me;
    if keep_first && mine(key.sport) && free(key.sport) {
        return Some(key.sport);
    }
    let (lo, hi) = match cx.snap.spec.masquerade_ports {
        (0, 0) => DEFAULT_MASQ_PORTS,
        r => r,
    };
    let (lo, hi) = (lo.min(hi), lo.max(hi));
    let span = u32::from(hi - lo) + 1;
    // Cannot truncate: the remainder is below `span`, a `u32`.
    #[allow(clippy::cast_possible_truncation)]
    let start = (flow_hash(key) % u64::from(span)) as u32;
    (0..span.min(128 * u32::from(n)))
        .filter_map(|i| u16::try_from((start + i) % span).ok())
        .map(|off| lo + off)
        .find(|&port| mine(port) && free(port))
}

/// `commit`, hashing the flow's reply key here.
pub(super) fn commit_now(
    cx: &mut Ctx<'_>,
    f: &mut Frame<'_>,
    p: &Parsed,
    flow: &NewFlow,
) -> Verdict {
    let reply_hash = cx.flows.hash(&p.key.rewritten(&flow.rw).reversed());
    commit(cx, f, p, flow, reply_hash)
}

/// Inserts a decided flow (`reply_hash`: the hash of its reply key), then
/// rewrites and routes the frame.
pub(super) fn commit(
    cx: &mut Ctx<'_>,
    f: &mut Frame<'_>,
    p: &Parsed,
    flow: &NewFlow,
    reply_hash: u64,
) -> Verdict {
    match cx.flows.insert_prehashed(
        p.key,
        p.hash,
        reply_hash,
        flow.rw,
        flow.meta,
        p.tcp(),
        cx.snap.generation,
        cx.now,
    ) {
        Ok(_) => {}
        Err(InsertError::ReplyTaken) => return commit_remapped(cx, f, p, flow),
        Err(InsertError::Full) => return Verdict::Drop(DropReason::FlowTableFull),
    }
    cx.c.flows_created += 1;
    rewrite_and_route(cx, f, p, &flow.rw)
}

/// A new flow whose reply tuple another live flow has (the client used one
/// source port towards two destinations that reach the same backend): like
/// Linux conntrack, it gets a free source port from the masquerade range, so
/// each flow's replies come back to the right client socket.
#[cold]
fn commit_remapped(cx: &mut Ctx<'_>, f: &mut Frame<'_>, p: &Parsed, flow: &NewFlow) -> Verdict {
    let mut rw = flow.rw;
    let Some(port) = pick_port(cx, &p.key, &rw, false) else {
        return Verdict::Drop(DropReason::NoMasqueradePort);
    };
    rw.sport = port;
    let meta = FlowMeta {
        snat: true,
        ..flow.meta
    };
    if cx
        .flows
        .insert(p.key, rw, meta, p.tcp(), cx.snap.generation, cx.now)
        .is_err()
    {
        return Verdict::Drop(DropReason::FlowTableFull);
    }
    cx.c.flows_created += 1;
    cx.c.tuple_clashes += 1;
    rewrite_and_route(cx, f, p, &rw)
}
