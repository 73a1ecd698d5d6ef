//! The per-packet pipeline: pure functions over a batch of frames, one immutable
//! `Snapshot`, the worker's `FlowTable` and `now`. No I/O, no locks, no
//! allocation, no logging. Every frame ends with a `Verdict`; a frame that fails
//! a check is dropped with a `DropReason` and counted, nothing else.
//!
//! Stages (design §2), VPP-style over the whole batch:
//! 1. classify: Ethernet/IPv4 checks, L4 ports, and VXLAN decapsulation (port and
//!    VNI from the snapshot, flags exactly 0x08) with a second classify of the inner frame;
//! 2. prefetch the flow-table sets of the whole batch;
//! 3. conntrack fast path (a hit gives the rewrite), else the service stage
//!    (frontend → backend by Maglev or ClientIP affinity → DNAT/SNAT, new flow) or
//!    plain routing (with masquerade for pod traffic leaving the cluster);
//! 4. rewrite with RFC 1624 incremental checksums and TTL decrement, then route:
//!    local pod, remote node (VXLAN encap), host, or off-cluster via the uplink.

use arrayvec::ArrayVec;
use shared::counters::{Counters, DropReason};
use shared::maglev::mix64;
use shared::snapshot::{Frontend, FrontendKind, RemoteHop, Snapshot};
use shared::wire::checksum::{self, Incremental};
use shared::wire::vxlan::{VxlanPacket, VxlanRepr};
use shared::wire::{ETH_HLEN, VXLAN_OVERHEAD};

use crate::flow::{
    client_owner, port_owner, tcp_flags, ChecksumDeltas, FlowKey, FlowMeta, FlowTable, InsertError,
    Rewrite, NO_SLOT,
};
use crate::frame::{Frame, Verdict};

/// Frames processed per stage pass.
pub const BATCH: usize = 64;

const ETHERTYPE_IPV4: u16 = 0x0800;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
/// Default masquerade port range: above Linux's ephemeral range (32768–60999),
/// so the host's own connections never collide with nodeplane's.
pub const DEFAULT_MASQ_PORTS: (u16, u16) = (61000, 65535);
/// Outer UDP source ports for VXLAN, as Linux's vxlan driver picks them.
const VXLAN_SPORT_RANGE: (u16, u16) = (32768, 60999);

/// What classify learned about a frame. Offsets are into `Frame::data()`,
/// whose first byte is the (inner, after decap) Ethernet header.
#[derive(Clone, Copy, Debug, Default)]
struct Parsed {
    /// IPv4 header length in bytes (20–60).
    ihl: u8,
    key: FlowKey,
    /// The flow table's hash of `key`, computed once in the prefetch stage.
    hash: u64,
    /// The slot `FlowTable::probe` found for `hash` (`NO_SLOT`: none).
    probe: u32,
    /// The frontend of a TCP/UDP `key` no tag matched (`probe == NO_SLOT`),
    /// looked up by the prefetch stage; `None` otherwise.
    frontend: Option<Frontend>,
    tcp_flags: u8,
    icmp_type: u8,
    /// Came through the overlay.
    decapped: bool,
}

impl Parsed {
    #[inline]
    fn l4(&self) -> usize {
        ETH_HLEN + usize::from(self.ihl)
    }
    #[inline]
    fn tcp(&self) -> Option<u8> {
        (self.key.proto == PROTO_TCP).then_some(self.tcp_flags)
    }
}

/// Ethernet plus a minimal IPv4 header: what every classified frame holds.
const L3_HLEN: usize = ETH_HLEN + 20;

#[inline(always)]
fn rd32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Big-endian reads and writes at constant offsets of fixed-size header views:
/// once a frame is seen as `&[u8; N]` they need no bounds checks.
#[inline(always)]
fn be16<const N: usize>(h: &[u8; N], o: usize) -> u16 {
    u16::from_be_bytes([h[o], h[o + 1]])
}

#[inline(always)]
fn be32<const N: usize>(h: &[u8; N], o: usize) -> u32 {
    u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]])
}

#[inline(always)]
fn put16<const N: usize>(h: &mut [u8; N], o: usize, v: u16) {
    let b = v.to_be_bytes();
    h[o] = b[0];
    h[o + 1] = b[1];
}

#[inline(always)]
fn put32<const N: usize>(h: &mut [u8; N], o: usize, v: u32) {
    let b = v.to_be_bytes();
    h[o] = b[0];
    h[o + 1] = b[1];
    h[o + 2] = b[2];
    h[o + 3] = b[3];
}

#[inline]
fn wr16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
fn wr32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_be_bytes());
}

/// A stable hash of a flow's 5-tuple: Maglev choice and VXLAN source port.
#[inline]
pub fn flow_hash(k: &FlowKey) -> u64 {
    let a = (u64::from(k.src) << 32) | u64::from(k.dst);
    let b = (u64::from(k.sport) << 24) | (u64::from(k.dport) << 8) | u64::from(k.proto);
    mix64(a ^ mix64(b))
}

/// Runs every stage over a batch; `verdicts[i]` is set for `frames[i]`.
/// Extra frames (beyond `verdicts.len()`) are left untouched.
pub fn process_batch(
    frames: &mut [Frame<'_>],
    verdicts: &mut [Verdict],
    snap: &Snapshot,
    flows: &mut FlowTable,
    counters: &mut Counters,
    now_ns: u64,
) {
    let n = frames.len().min(verdicts.len());
    let mut start = 0;
    while start < n {
        let end = (start + BATCH).min(n);
        run_chunk(
            &mut frames[start..end],
            &mut verdicts[start..end],
            snap,
            flows,
            counters,
            now_ns,
        );
        start = end;
    }
}

fn run_chunk(
    frames: &mut [Frame<'_>],
    verdicts: &mut [Verdict],
    snap: &Snapshot,
    flows: &mut FlowTable,
    c: &mut Counters,
    now: u64,
) {
    let mut parsed = [Parsed::default(); BATCH];
    let mut live = [false; BATCH];
    // Stage 1: classify + decap.
    for i in 0..frames.len() {
        c.rx_packets += 1;
        c.rx_bytes += frames[i].len() as u64;
        match classify(&mut frames[i], snap, c) {
            Ok(p) => {
                parsed[i] = p;
                live[i] = true;
            }
            Err(r) => verdicts[i] = Verdict::Drop(r),
        }
    }
    // Stage 2: prefetch the flow-table sets of the batch, then (their tags
    // having arrived meanwhile) the matching entries.
    for i in 0..frames.len() {
        if live[i] {
            let h = flows.hash(&parsed[i].key);
            parsed[i].hash = h;
            flows.prefetch(h);
        }
    }
    for i in 0..frames.len() {
        if live[i] {
            parsed[i].probe = flows.probe(parsed[i].hash);
            if parsed[i].probe == NO_SLOT {
                prefetch_service(&mut parsed[i], snap);
            }
        }
    }
    // Stage 3: conntrack, service choice, rewrite and route for the whole batch.
    // A new Service flow is only decided here; its reply key's set is
    // prefetched and the flow inserted in stage 4, so the cache misses of the
    // batch's new flows overlap instead of adding up.
    let mut later: ArrayVec<(usize, Step), BATCH> = ArrayVec::new();
    let mut decided = Decided::default();
    let mut barrier = false;
    for i in 0..frames.len() {
        if live[i] {
            let st = first_pass(
                &mut frames[i],
                &parsed[i],
                snap,
                flows,
                c,
                now,
                &decided,
                &mut barrier,
                &mut verdicts[i],
            );
            if let Step::Commit { reply_hash, .. } = st {
                decided.add(parsed[i].hash, reply_hash);
            }
            if !matches!(st, Step::Done) && later.try_push((i, st)).is_err() {
                // Unreachable (a chunk has at most BATCH frames); run it now.
                verdicts[i] = forward(&mut frames[i], &parsed[i], snap, flows, c, now);
            }
        }
    }
    // Stage 4: insert the decided flows (and run the frames that waited for
    // them) in batch order.
    if !later.is_empty() {
        for &(_, reply_hash) in decided.flows() {
            flows.prefetch_for_insert(reply_hash);
        }
        for &(i, st) in &later {
            match st {
                Step::Done => {}
                Step::Commit { flow, reply_hash } => {
                    verdicts[i] = commit(
                        &mut frames[i],
                        &parsed[i],
                        &flow,
                        reply_hash,
                        snap,
                        flows,
                        c,
                        now,
                    );
                }
                Step::Later => {
                    verdicts[i] = forward(&mut frames[i], &parsed[i], snap, flows, c, now);
                }
            }
        }
    }
    for v in &verdicts[..frames.len()] {
        match *v {
            Verdict::Drop(r) => c.drop(r),
            Verdict::Pass => c.passed += 1,
            Verdict::Handoff { .. } => c.handed_off += 1,
            Verdict::Tx { .. } => c.forwarded += 1,
        }
    }
    c.flow_evictions = flows.evictions();
    c.tuple_reuses = flows.tuple_reuses();
}

/// For a frame no flow-table tag matched (most likely a new flow): if it goes
/// to a frontend, hints the CPU to load what the service stage will read, the
/// Service port's Maglev entry for this flow and its backends, so that with
/// thousands of Services those misses overlap across the batch.
#[inline]
fn prefetch_service(p: &mut Parsed, snap: &Snapshot) {
    let key = p.key;
    if key.proto != PROTO_TCP && key.proto != PROTO_UDP {
        return;
    }
    p.frontend = snap.frontend(key.dst, key.proto, key.dport);
    let Some(sp) = p.frontend.and_then(|fe| snap.service_port(fe.service_port)) else {
        return;
    };
    snap.maglev.prefetch(&sp.maglev, flow_hash(&key));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is only a hint; the pointer is the vector's own buffer
    // (dangling but never dereferenced when it is empty).
    unsafe {
        core::arch::x86_64::_mm_prefetch(
            sp.backends.as_ptr().cast::<i8>(),
            core::arch::x86_64::_MM_HINT_T0,
        );
    }
}

/// Ethernet + IPv4 + L4 checks on `f.data()`; trims Ethernet padding.
#[inline(always)]
fn classify_l3(f: &mut Frame<'_>) -> Result<Parsed, DropReason> {
    let d = f.data();
    let Some(eth) = d.first_chunk::<ETH_HLEN>() else {
        return Err(DropReason::Malformed);
    };
    if be16(eth, 12) != ETHERTYPE_IPV4 {
        return Err(DropReason::UnsupportedEtherType);
    }
    let Some(h) = d.first_chunk::<L3_HLEN>() else {
        return Err(DropReason::Malformed);
    };
    let ip = ETH_HLEN;
    if h[ip] >> 4 != 4 {
        return Err(DropReason::Malformed);
    }
    let ihl = h[ip] & 0x0f;
    let ihl_bytes = usize::from(ihl) * 4;
    let total = usize::from(be16(h, ip + 2));
    if ihl_bytes < 20 || total < ihl_bytes || ip + total > d.len() {
        return Err(DropReason::Malformed);
    }
    if be16(h, ip + 6) & 0x3fff != 0 {
        return Err(DropReason::Fragment);
    }
    let proto = h[ip + 9];
    let mut p = Parsed {
        ihl: ihl * 4,
        key: FlowKey {
            src: be32(h, ip + 12),
            dst: be32(h, ip + 16),
            sport: 0,
            dport: 0,
            proto,
        },
        ..Parsed::default()
    };
    // The L4 segment as the IPv4 total length gives it.
    let seg = d.get(ip + ihl_bytes..ip + total).unwrap_or_default();
    match proto {
        PROTO_TCP => {
            let Some(t) = seg.first_chunk::<20>() else {
                return Err(DropReason::MalformedL4);
            };
            let doff = usize::from(t[12] >> 4) * 4;
            if doff < 20 || doff > seg.len() {
                return Err(DropReason::MalformedL4);
            }
            p.key.sport = be16(t, 0);
            p.key.dport = be16(t, 2);
            p.tcp_flags = t[13];
        }
        PROTO_UDP => {
            let Some(u) = seg.first_chunk::<8>() else {
                return Err(DropReason::MalformedL4);
            };
            let ulen = usize::from(be16(u, 4));
            if ulen < 8 || ulen > seg.len() {
                return Err(DropReason::MalformedL4);
            }
            p.key.sport = be16(u, 0);
            p.key.dport = be16(u, 2);
        }
        PROTO_ICMP => {
            let Some(m) = seg.first_chunk::<8>() else {
                return Err(DropReason::MalformedL4);
            };
            p.icmp_type = m[0];
            // Echo: the identifier plays the port, on the side that makes
            // request and reply mirror images of each other.
            match p.icmp_type {
                ICMP_ECHO_REQUEST => p.key.sport = be16(m, 4),
                ICMP_ECHO_REPLY => p.key.dport = be16(m, 4),
                _ => {}
            }
        }
        _ => {}
    }
    // Drop Ethernet padding so rewrites and encapsulation see the IP length.
    let want = ip + total;
    if f.len() > want {
        f.set_len(want);
    }
    Ok(p)
}

/// Stage 1 for one frame: classify, and decapsulate VXLAN addressed to us.
#[inline(always)]
fn classify(f: &mut Frame<'_>, snap: &Snapshot, c: &mut Counters) -> Result<Parsed, DropReason> {
    let p = classify_l3(f)?;
    let overlay = snap.overlay();
    if p.key.proto != PROTO_UDP || p.key.dport != overlay.port || !snap.is_own_ip(p.key.dst) {
        return Ok(p);
    }
    let vx = p.l4() + 8;
    let d = f.data();
    let Ok(view) = VxlanPacket::new_checked(&d[vx.min(d.len())..]) else {
        return Err(DropReason::MalformedL4);
    };
    match VxlanRepr::parse(&view) {
        Err(_) => return Err(DropReason::VxlanBadFlags),
        Ok(r) if r.vni != overlay.vni => return Err(DropReason::VxlanUnknownVni),
        Ok(_) => {}
    }
    let inner = vx + 8;
    if f.len() < inner + ETH_HLEN + 20 {
        return Err(DropReason::VxlanShortInner);
    }
    f.pull(inner);
    c.decapsulated += 1;
    let mut q = classify_l3(f)?;
    q.decapped = true;
    Ok(q)
}

/// What stage 3 left for stage 4 to do with a frame.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Its verdict is set.
    Done,
    /// A new Service flow, decided: insert it (its reply key hashes to
    /// `reply_hash`), then rewrite and route the frame.
    Commit { flow: NewFlow, reply_hash: u64 },
    /// Run the whole pipeline on it in stage 4, in batch order: it shares a key
    /// with a flow decided earlier in the batch (another packet of that flow, or
    /// its reply), or it comes at or after a barrier (a frame that may be
    /// masqueraded while flows are decided but not inserted).
    Later,
}

/// The flows decided in stage 3 of a batch, by (key hash, reply key hash), with
/// a bit filter of those hashes so a frame that matches none (nearly all)
/// skips the comparison.
#[derive(Default)]
struct Decided {
    hashes: ArrayVec<(u64, u64), BATCH>,
    filter: [u64; 16],
}

impl Decided {
    #[inline]
    fn bit(h: u64) -> (usize, u64) {
        // The flow table's set index uses the low bits; take others.
        let b = (h >> 40) as usize & 1023;
        (b >> 6, 1 << (b & 63))
    }

    #[inline]
    fn add(&mut self, key_hash: u64, reply_hash: u64) {
        // At most one per frame of a chunk: never full.
        let _ = self.hashes.try_push((key_hash, reply_hash));
        for h in [key_hash, reply_hash] {
            let (w, m) = Self::bit(h);
            self.filter[w] |= m;
        }
    }

    /// Does a frame whose key hashes to `h` belong to a decided flow (same
    /// key, or its reply)?
    #[inline]
    fn touches(&self, h: u64) -> bool {
        let (w, m) = Self::bit(h);
        self.filter[w] & m != 0 && self.flows().iter().any(|&(k, r)| k == h || r == h)
    }

    fn flows(&self) -> &[(u64, u64)] {
        &self.hashes
    }

    fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

/// A new Service flow as the service stage decided it, before it is inserted.
#[derive(Clone, Copy, Debug)]
struct NewFlow {
    rw: Rewrite,
    meta: FlowMeta,
}

/// What the service stage made of a new flow.
enum Decision {
    /// Dropped or rejected: no flow.
    Done(Verdict),
    Flow(NewFlow),
}

/// Stage 3 for one frame: the whole pipeline for a flow-table hit or a frame
/// that needs no new flow; only the decision for a new Service flow (a
/// masqueraded one, which can only be decided with no flow pending, is
/// inserted at once); `Step::Later` for the frames stage 4 must run in order.
/// `decided` holds the flows decided earlier in the batch.
#[allow(clippy::too_many_arguments)]
#[inline]
fn first_pass(
    f: &mut Frame<'_>,
    p: &Parsed,
    snap: &Snapshot,
    flows: &mut FlowTable,
    c: &mut Counters,
    now: u64,
    decided: &Decided,
    barrier: &mut bool,
    verdict: &mut Verdict,
) -> Step {
    // After a barrier, and for a frame of a flow decided earlier in the batch
    // (another packet of it, or its reply; even a hit, since that flow's
    // insert replaces entries with its keys), everything runs in batch order
    // in stage 4.
    if *barrier || decided.touches(p.hash) {
        return Step::Later;
    }
    // A TCP SYN, FIN or RST of a known flow may open or close it, and whether
    // a pending flow may take that flow's reply tuple depends on it
    // (`FlowTable::insert_prehashed`): in order too.
    if !decided.is_empty()
        && p.tcp()
            .is_some_and(|f| f & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) != 0)
        && flows.contains(&p.key, now)
    {
        *barrier = true;
        return Step::Later;
    }
    if let Some(v) = conntrack(f, p, snap, flows, c, now) {
        *verdict = v;
        return Step::Done;
    }
    let key = p.key;
    let pending = !decided.is_empty();
    if key.proto == PROTO_TCP || key.proto == PROTO_UDP {
        // The prefetch stage looked it up for frames no tag matched.
        let fe = if p.probe == NO_SLOT {
            p.frontend
        } else {
            snap.frontend(key.dst, key.proto, key.dport)
        };
        if let Some(fe) = fe {
            // A flow that may be masqueraded chooses its port against the
            // table: with flows decided but not inserted yet it would not see
            // theirs. It waits for them, and everything after it follows in
            // order.
            if pending && (fe.kind.is_external() || snap.is_backend_ip(key.src)) {
                *barrier = true;
                return Step::Later;
            }
            *verdict = match decide_service(f, p, fe.kind, fe.service_port, snap, flows, c, now) {
                Decision::Done(v) => v,
                Decision::Flow(flow) if !flow.meta.snat => {
                    let reply_hash = flows.hash(&key.rewritten(&flow.rw).reversed());
                    flows.prefetch(reply_hash);
                    flows.prefetch_for_insert(p.hash);
                    return Step::Commit { flow, reply_hash };
                }
                Decision::Flow(flow) => commit_now(f, p, &flow, snap, flows, c, now),
            };
            return Step::Done;
        }
    }
    if pending && (leaves_cluster(snap, p) || reaches_endpoint_directly(snap, p)) {
        // Masqueraded off the cluster, or a tracked direct flow whose reply
        // tuple is checked against the table: the same as above.
        *barrier = true;
        return Step::Later;
    }
    *verdict = new_flow_off_frontend(f, p, snap, flows, c, now);
    Step::Done
}

/// Pod traffic to an address outside the cluster: masqueraded by
/// `new_flow_off_frontend`.
#[inline]
fn leaves_cluster(snap: &Snapshot, p: &Parsed) -> bool {
    let key = p.key;
    !p.decapped
        && !snap.in_service_cidr(key.dst)
        && is_off_cluster(snap, key.dst)
        && snap.local_pod_hop(key.src).is_some()
}

/// Stage 3 and 4 for one frame, in one go.
fn forward(
    f: &mut Frame<'_>,
    p: &Parsed,
    snap: &Snapshot,
    flows: &mut FlowTable,
    c: &mut Counters,
    now: u64,
) -> Verdict {
    match conntrack(f, p, snap, flows, c, now) {
        Some(v) => v,
        None => new_flow(f, p, snap, flows, c, now),
    }
}

/// The conntrack fast path: a verdict for a flow-table hit (or a frame another
/// worker owns), `None` when the frame starts a new flow here. Inlined into the
/// batch loop: this is the path nearly every packet takes.
#[inline(always)]
fn conntrack(
    f: &mut Frame<'_>,
    p: &Parsed,
    snap: &Snapshot,
    flows: &mut FlowTable,
    c: &mut Counters,
    now: u64,
) -> Option<Verdict> {
    let key = p.key;
    if let Some(hit) = flows.lookup_probed(&key, p.hash, p.probe, now) {
        let mut live = true;
        if hit.checked_gen != snap.generation as u32 {
            match hit.meta.backend {
                Some((ip, port)) if !snap.backend_alive(ip, port, key.proto) => {
                    // The backend left the Service: flush the flow so the next
                    // packet reaches a live backend or is rejected (§4 item 10).
                    flows.remove(hit.slot);
                    c.flows_flushed += 1;
                    live = false;
                }
                _ => flows.set_checked(&hit, snap.generation),
            }
        }
        if live {
            flows.on_packet(&hit, p.tcp(), now);
            c.flow_hits += 1;
            let back_to = if hit.is_reply {
                hit.meta.client_mac
            } else {
                None
            };
            return Some(rewrite_and_route_via(
                f,
                p,
                &hit.rewrite,
                hit.deltas,
                snap,
                c,
                back_to,
            ));
        }
        if hit.is_reply {
            // A reply from a backend that is gone: nothing to translate it to.
            return Some(Verdict::Drop(DropReason::NoRoute));
        }
    } else if let Some(worker) = foreign_owner(f, p, snap, flows) {
        return Some(Verdict::Handoff { worker });
    }
    None
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
#[inline]
fn foreign_owner(f: &Frame<'_>, p: &Parsed, snap: &Snapshot, flows: &FlowTable) -> Option<u16> {
    let (me, n) = flows.ownership();
    if n <= 1 || f.is_handed_in() {
        return None;
    }
    let key = p.key;
    let l4 = key.proto == PROTO_TCP || key.proto == PROTO_UDP;
    let own = snap.node();
    let owner = if l4 && snap.frontend(key.dst, key.proto, key.dport).is_some() {
        client_owner(key.src, n)
    } else if snap.is_own_ip(key.dst) || own.overlay_ip().is_some_and(|o| u32::from(o) == key.dst) {
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

fn new_flow(
    f: &mut Frame<'_>,
    p: &Parsed,
    snap: &Snapshot,
    flows: &mut FlowTable,
    c: &mut Counters,
    now: u64,
) -> Verdict {
    let key = p.key;
    let l4_proxied = key.proto == PROTO_TCP || key.proto == PROTO_UDP;
    if l4_proxied {
        if let Some(fe) = snap.frontend(key.dst, key.proto, key.dport) {
            return match decide_service(f, p, fe.kind, fe.service_port, snap, flows, c, now) {
                Decision::Done(v) => v,
                Decision::Flow(flow) => commit_now(f, p, &flow, snap, flows, c, now),
            };
        }
    }
    new_flow_off_frontend(f, p, snap, flows, c, now)
}

/// A new flow to an address that is not a frontend: an unallocated ClusterIP,
/// pod traffic leaving the cluster (masqueraded), or plain routing.
fn new_flow_off_frontend(
    f: &mut Frame<'_>,
    p: &Parsed,
    snap: &Snapshot,
    flows: &mut FlowTable,
    c: &mut Counters,
    now: u64,
) -> Verdict {
    let key = p.key;
    if snap.in_service_cidr(key.dst) {
        return Verdict::Drop(DropReason::UnallocatedServiceIp);
    }
    if leaves_cluster(snap, p) {
        return masquerade_out(f, p, snap, flows, c, now);
    }
    let rw = key.identity();
    if reaches_endpoint_directly(snap, p) {
        // Tracked without translation: its replies look like a Service
        // flow's, so the table must know both (`commit_remapped`).
        let flow = NewFlow {
            rw,
            meta: FlowMeta {
                backend: None,
                snat: false,
                client_mac: None,
            },
        };
        return commit_now(f, p, &flow, snap, flows, c, now);
    }
    rewrite_and_route(f, p, &rw, snap, c)
}

/// A local pod's TCP or UDP to a Service endpoint's address and port, not
/// through the Service. Its reply tuple is the one a Service flow to that
/// backend from the same client port has, so it is tracked (on the client's
/// worker) like one. Any endpoint, usable or not: the flow must keep its
/// worker while its destination turns unready.
#[inline]
fn reaches_endpoint_directly(snap: &Snapshot, p: &Parsed) -> bool {
    let key = p.key;
    !p.decapped
        && (key.proto == PROTO_TCP || key.proto == PROTO_UDP)
        && snap.is_endpoint(key.dst, key.dport, key.proto)
        && snap.local_pod_hop(key.src).is_some()
}

#[inline]
fn is_off_cluster(snap: &Snapshot, ip: u32) -> bool {
    !snap.in_local_pod_cidr(ip) && snap.remote_route(ip).is_none() && !snap.is_own_ip(ip)
}

/// Pod traffic leaving the cluster: SNAT to the node's underlay IP with a port
/// from the masquerade range (the XDP program steers replies to that range here).
fn masquerade_out(
    f: &mut Frame<'_>,
    p: &Parsed,
    snap: &Snapshot,
    flows: &mut FlowTable,
    c: &mut Counters,
    now: u64,
) -> Verdict {
    let key = p.key;
    let masq_icmp = key.proto == PROTO_ICMP && p.icmp_type == ICMP_ECHO_REQUEST;
    if key.proto != PROTO_TCP && key.proto != PROTO_UDP && !masq_icmp {
        return Verdict::Drop(DropReason::UnsupportedProtocol);
    }
    let Some(ip) = snap.node().underlay_ip else {
        return Verdict::Drop(DropReason::NoRoute);
    };
    let mut rw = key.identity();
    rw.src = u32::from(ip);
    let Some(port) = pick_port(flows, &key, &rw, snap, false, now) else {
        return Verdict::Drop(DropReason::NoMasqueradePort);
    };
    rw.sport = port;
    let meta = FlowMeta {
        backend: None,
        snat: true,
        client_mac: None,
    };
    if flows
        .insert(key, rw, meta, p.tcp(), snap.generation, now)
        .is_err()
    {
        return Verdict::Drop(DropReason::FlowTableFull);
    }
    c.flows_created += 1;
    c.masqueraded += 1;
    rewrite_and_route(f, p, &rw, snap, c)
}

/// A source port for SNAT whose reply tuple is free. `keep_first` tries the
/// client's own port first (used for in-cluster masquerade to the overlay IP).
fn pick_port(
    flows: &FlowTable,
    key: &FlowKey,
    rw: &Rewrite,
    snap: &Snapshot,
    keep_first: bool,
    now: u64,
) -> Option<u16> {
    let free = |port: u16| {
        let reply = FlowKey {
            src: rw.dst,
            dst: rw.src,
            sport: rw.dport,
            dport: port,
            proto: key.proto,
        };
        !flows.contains(&reply, now)
    };
    // With several workers the port must name this worker (`port_owner`), so
    // the reply, which carries it, comes back here.
    let (me, n) = flows.ownership();
    let mine = |port: u16| port_owner(port, n) == me;
    if keep_first && mine(key.sport) && free(key.sport) {
        return Some(key.sport);
    }
    let (lo, hi) = match snap.spec.masquerade_ports {
        (0, 0) => DEFAULT_MASQ_PORTS,
        r => r,
    };
    let (lo, hi) = (lo.min(hi), lo.max(hi));
    let span = u64::from(hi - lo) + 1;
    let start = flow_hash(key) % span;
    (0..span.min(128 * u64::from(n)))
        .map(|i| lo + ((start + i) % span) as u16)
        .find(|&port| mine(port) && free(port))
}

/// The service stage (§4 items 3–9) for a new flow to a frontend: drop,
/// reject, or the flow to create (backend, DNAT and SNAT).
#[allow(clippy::too_many_arguments)]
fn decide_service(
    f: &mut Frame<'_>,
    p: &Parsed,
    kind: FrontendKind,
    sp_id: u32,
    snap: &Snapshot,
    flows: &mut FlowTable,
    c: &mut Counters,
    now: u64,
) -> Decision {
    let key = p.key;
    let Some(sp) = snap.service_port(sp_id) else {
        return Decision::Done(Verdict::Drop(DropReason::NoRoute));
    };
    if kind == FrontendKind::LoadBalancer
        && !sp.source_ranges.is_empty()
        && !sp.source_ranges.iter().any(|r| r.contains_u32(key.src))
    {
        return Decision::Done(Verdict::Drop(DropReason::SourceRangeDenied));
    }
    if sp.backends.is_empty() {
        return Decision::Done(reject(f, p, snap, c));
    }
    let from_local_pod = !p.decapped && snap.local_pod_hop(key.src).is_some();
    // eTP=Local applies to traffic from outside; pods on this node reaching an
    // external frontend use the cluster-wide set, as kube-proxy does.
    let local_only = if kind.is_external() {
        sp.external_local && !from_local_pod
    } else {
        sp.internal_local
    };
    let table = if local_only {
        match &sp.maglev_local {
            Some(m) if sp.local_backends > 0 => m,
            _ => return Decision::Done(Verdict::Drop(DropReason::NoLocalEndpoint)),
        }
    } else {
        &sp.maglev
    };
    let mut chosen = None;
    if sp.affinity_timeout_secs.is_some() {
        if let Some((ip, port)) = flows.affinity.get(key.src, sp.stable_id, now) {
            chosen = sp
                .backends
                .iter()
                .find(|b| u32::from(b.ip) == ip && b.port == port && (b.local || !local_only))
                .copied();
        }
    }
    let backend = match chosen {
        Some(b) => b,
        None => match snap
            .maglev
            .lookup(table, flow_hash(&key))
            .and_then(|i| sp.backends.get(usize::from(i)))
        {
            Some(b) => *b,
            None => return Decision::Done(Verdict::Drop(DropReason::NoLocalEndpoint)),
        },
    };
    let bip = u32::from(backend.ip);
    if let Some(t) = sp.affinity_timeout_secs {
        flows
            .affinity
            .set(key.src, sp.stable_id, (bip, backend.port), t, now);
    }
    let mut rw = Rewrite {
        src: key.src,
        sport: key.sport,
        dst: bip,
        dport: backend.port,
    };
    let hairpin = bip == key.src;
    let masq = hairpin || (kind.is_external() && !local_only && !backend.local);
    if masq {
        let node = snap.node();
        let Some(ip) = node.overlay_ip().or(node.underlay_ip) else {
            return Decision::Done(Verdict::Drop(DropReason::NoRoute));
        };
        rw.src = u32::from(ip);
        let Some(port) = pick_port(flows, &key, &rw, snap, true, now) else {
            return Decision::Done(Verdict::Drop(DropReason::NoMasqueradePort));
        };
        rw.sport = port;
        c.masqueraded += 1;
    }
    // A client that reached a frontend over the uplink: remember its MAC for
    // the replies (the kernel may not have it as a neighbour yet).
    let client_mac = (!p.decapped && f.ifindex == snap.node().uplink_ifindex)
        .then(|| {
            let mut m = [0u8; 6];
            m.copy_from_slice(&f.data()[6..12]);
            m
        })
        .filter(|m| m != &[0; 6] && m[0] & 1 == 0);
    let meta = FlowMeta {
        backend: Some((bip, backend.port)),
        snat: masq,
        client_mac,
    };
    Decision::Flow(NewFlow { rw, meta })
}

/// `commit`, hashing the flow's reply key here.
fn commit_now(
    f: &mut Frame<'_>,
    p: &Parsed,
    flow: &NewFlow,
    snap: &Snapshot,
    flows: &mut FlowTable,
    c: &mut Counters,
    now: u64,
) -> Verdict {
    let reply_hash = flows.hash(&p.key.rewritten(&flow.rw).reversed());
    commit(f, p, flow, reply_hash, snap, flows, c, now)
}

/// Inserts a decided flow (`reply_hash`: the hash of its reply key), then
/// rewrites and routes the frame.
#[allow(clippy::too_many_arguments)]
fn commit(
    f: &mut Frame<'_>,
    p: &Parsed,
    flow: &NewFlow,
    reply_hash: u64,
    snap: &Snapshot,
    flows: &mut FlowTable,
    c: &mut Counters,
    now: u64,
) -> Verdict {
    match flows.insert_prehashed(
        p.key,
        p.hash,
        reply_hash,
        flow.rw,
        flow.meta,
        p.tcp(),
        snap.generation,
        now,
    ) {
        Ok(_) => {}
        Err(InsertError::ReplyTaken) => return commit_remapped(f, p, flow, snap, flows, c, now),
        Err(InsertError::Full) => return Verdict::Drop(DropReason::FlowTableFull),
    }
    c.flows_created += 1;
    rewrite_and_route(f, p, &flow.rw, snap, c)
}

/// A new flow whose reply tuple another live flow has (the client used one
/// source port towards two destinations that reach the same backend): like
/// Linux conntrack, it gets a free source port from the masquerade range, so
/// each flow's replies come back to the right client socket.
#[cold]
fn commit_remapped(
    f: &mut Frame<'_>,
    p: &Parsed,
    flow: &NewFlow,
    snap: &Snapshot,
    flows: &mut FlowTable,
    c: &mut Counters,
    now: u64,
) -> Verdict {
    let mut rw = flow.rw;
    let Some(port) = pick_port(flows, &p.key, &rw, snap, false, now) else {
        return Verdict::Drop(DropReason::NoMasqueradePort);
    };
    rw.sport = port;
    let meta = FlowMeta {
        snat: true,
        ..flow.meta
    };
    if flows
        .insert(p.key, rw, meta, p.tcp(), snap.generation, now)
        .is_err()
    {
        return Verdict::Drop(DropReason::FlowTableFull);
    }
    c.flows_created += 1;
    c.tuple_clashes += 1;
    rewrite_and_route(f, p, &rw, snap, c)
}

/// Applies `rw` to the packet (addresses, ports, checksums), decrements TTL and routes.
#[inline]
fn rewrite_and_route(
    f: &mut Frame<'_>,
    p: &Parsed,
    rw: &Rewrite,
    snap: &Snapshot,
    c: &mut Counters,
) -> Verdict {
    let deltas = ChecksumDeltas::between(&p.key, rw);
    rewrite_and_route_via(f, p, rw, deltas, snap, c, None)
}

/// `rewrite_and_route` with the rewrite's checksum changes already summed
/// (`deltas`, from the flow entry), and a MAC to use for an off-cluster
/// destination the snapshot has no neighbour for.
#[inline]
fn rewrite_and_route_via(
    f: &mut Frame<'_>,
    p: &Parsed,
    rw: &Rewrite,
    deltas: ChecksumDeltas,
    snap: &Snapshot,
    c: &mut Counters,
    fallback_mac: Option<[u8; 6]>,
) -> Verdict {
    let key = p.key;
    let l4 = p.l4();
    let d = f.data_mut();
    // Classify saw at least this much; anything shorter is not from it.
    let Some(h) = d.first_chunk_mut::<L3_HLEN>() else {
        return Verdict::Drop(DropReason::Malformed);
    };
    let ip = ETH_HLEN;
    let ttl = h[ip + 8];
    if ttl <= 1 {
        return Verdict::Drop(DropReason::TtlExceeded);
    }
    h[ip + 8] = ttl - 1;
    let ipsum = Incremental::new(be16(h, ip + 10))
        .ttl_decrement()
        .apply(deltas.ip);
    put16(h, ip + 10, ipsum.finish());
    let addr_changed = rw.src != key.src || rw.dst != key.dst;
    if addr_changed {
        put32(h, ip + 12, rw.src);
        put32(h, ip + 16, rw.dst);
    }
    let ports_changed = rw.sport != key.sport || rw.dport != key.dport;
    if addr_changed || ports_changed {
        let seg = d.get_mut(l4..).unwrap_or_default();
        match key.proto {
            PROTO_TCP => {
                if let Some(t) = seg.first_chunk_mut::<20>() {
                    let cs = Incremental::new(be16(t, 16)).apply(deltas.l4);
                    put16(t, 16, cs.finish());
                    put16(t, 0, rw.sport);
                    put16(t, 2, rw.dport);
                }
            }
            PROTO_UDP => {
                if let Some(u) = seg.first_chunk_mut::<8>() {
                    let old = be16(u, 6);
                    // 0: the sender computed no checksum; keep it that way.
                    if old != 0 {
                        let cs = Incremental::new(old).apply(deltas.l4);
                        put16(u, 6, checksum::udp_nonzero(cs.finish()));
                    }
                    put16(u, 0, rw.sport);
                    put16(u, 2, rw.dport);
                }
            }
            PROTO_ICMP if ports_changed => {
                if let Some(m) = seg.first_chunk_mut::<8>() {
                    let new = if p.icmp_type == ICMP_ECHO_REQUEST {
                        rw.sport
                    } else {
                        rw.dport
                    };
                    // From the bytes replaced, whatever message matched the flow.
                    let cs = Incremental::new(be16(m, 2)).word(be16(m, 4), new);
                    put16(m, 2, cs.finish());
                    put16(m, 4, new);
                }
            }
            _ => {}
        }
    }
    let out = key.rewritten(rw);
    route_via(f, &out, snap, c, fallback_mac)
}

/// Stage 4: where the (rewritten) packet goes.
#[inline]
fn route(f: &mut Frame<'_>, out: &FlowKey, snap: &Snapshot, c: &mut Counters) -> Verdict {
    route_via(f, out, snap, c, None)
}

#[inline]
fn route_via(
    f: &mut Frame<'_>,
    out: &FlowKey,
    snap: &Snapshot,
    c: &mut Counters,
    fallback_mac: Option<[u8; 6]>,
) -> Verdict {
    let dst = out.dst;
    if let Some(pod) = snap.local_pod_hop(dst) {
        set_macs(f, &pod.mac, &pod.host_mac);
        return Verdict::Tx {
            ifindex: pod.host_ifindex,
        };
    }
    if let Some(remote) = snap.remote_route(dst) {
        return encap(f, out, remote, snap, c);
    }
    let own = snap.node();
    if snap.is_own_ip(dst) || own.overlay_ip().is_some_and(|o| u32::from(o) == dst) {
        return Verdict::Pass;
    }
    if snap.in_local_pod_cidr(dst) {
        return Verdict::Drop(DropReason::NoRoute);
    }
    // Off-cluster: out of the uplink to the neighbour or the gateway.
    let mac = snap
        .neighbor(dst)
        .or(fallback_mac)
        .or_else(|| snap.spec.gateway.and_then(|g| snap.neighbor(u32::from(g))));
    let Some(mac) = mac else {
        return Verdict::Drop(DropReason::NoNeighbor);
    };
    set_macs(f, &mac, &own.uplink_mac);
    Verdict::Tx {
        ifindex: own.uplink_ifindex,
    }
}

/// Writes the Ethernet destination and source.
#[inline(always)]
fn set_macs(f: &mut Frame<'_>, dst: &[u8; 6], src: &[u8; 6]) {
    if let Some(m) = f.data_mut().first_chunk_mut::<12>() {
        m[..6].copy_from_slice(dst);
        m[6..].copy_from_slice(src);
    }
}

/// VXLAN encapsulation towards a remote node, flannel-compatible.
fn encap(
    f: &mut Frame<'_>,
    out: &FlowKey,
    remote: RemoteHop<'_>,
    snap: &Snapshot,
    c: &mut Counters,
) -> Verdict {
    let own = snap.node();
    let node = remote.node;
    let Some(src_ip) = own.underlay_ip else {
        return Verdict::Drop(DropReason::NoRoute);
    };
    let Some(next_hop) = remote.next_hop else {
        return Verdict::Drop(DropReason::NoNeighbor);
    };
    {
        let d = f.data_mut();
        d[0..6].copy_from_slice(&node.vtep_mac);
        d[6..12].copy_from_slice(&own.vtep_mac);
    }
    let inner_len = f.len();
    let Ok(total) = u16::try_from(inner_len + VXLAN_OVERHEAD - ETH_HLEN) else {
        return Verdict::Drop(DropReason::TooBig);
    };
    if !f.push(VXLAN_OVERHEAD) {
        return Verdict::Drop(DropReason::TooBig);
    }
    let overlay = snap.overlay();
    let (lo, hi) = VXLAN_SPORT_RANGE;
    let sport = lo + (flow_hash(out) % u64::from(hi - lo + 1)) as u16;
    let d = f.data_mut();
    d[0..6].copy_from_slice(&next_hop);
    d[6..12].copy_from_slice(&own.uplink_mac);
    wr16(d, 12, ETHERTYPE_IPV4);
    let ip = ETH_HLEN;
    d[ip] = 0x45;
    d[ip + 1] = 0;
    wr16(d, ip + 2, total);
    wr16(d, ip + 4, 0);
    wr16(d, ip + 6, 0);
    d[ip + 8] = 64;
    d[ip + 9] = PROTO_UDP;
    wr16(d, ip + 10, 0);
    d[ip + 12..ip + 16].copy_from_slice(&src_ip.octets());
    d[ip + 16..ip + 20].copy_from_slice(&node.underlay_ip.octets());
    let cs = checksum::checksum(&d[ip..ip + 20]);
    wr16(d, ip + 10, cs);
    let udp = ip + 20;
    wr16(d, udp, sport);
    wr16(d, udp + 2, overlay.port);
    wr16(d, udp + 4, total - 20);
    wr16(d, udp + 6, 0);
    let mut vx = VxlanPacket::new_unchecked(&mut d[udp + 8..]);
    VxlanRepr { vni: overlay.vni }.emit(&mut vx);
    c.encapsulated += 1;
    Verdict::Tx {
        ifindex: own.uplink_ifindex,
    }
}

/// §4 item 7: a Service with no usable endpoint rejects — TCP RST for TCP,
/// ICMP port unreachable for UDP — answered from the frontend address.
fn reject(f: &mut Frame<'_>, p: &Parsed, snap: &Snapshot, c: &mut Counters) -> Verdict {
    let key = p.key;
    let l4 = p.l4();
    let mut scratch = [0u8; 128];
    let len;
    {
        let d = f.data();
        // Ethernet: back to the sender.
        scratch[0..6].copy_from_slice(&d[6..12]);
        scratch[6..12].copy_from_slice(&d[0..6]);
        wr16(&mut scratch, 12, ETHERTYPE_IPV4);
        let ip = ETH_HLEN;
        let body = ip + 20;
        if key.proto == PROTO_TCP {
            let flags = p.tcp_flags;
            if flags & tcp_flags::RST != 0 {
                return Verdict::Drop(DropReason::NoRoute);
            }
            let seq = rd32(d, l4 + 4);
            let ack = rd32(d, l4 + 8);
            let doff = usize::from(d[l4 + 12] >> 4) * 4;
            let seg_len = d.len().saturating_sub(l4 + doff) as u32
                + u32::from(flags & tcp_flags::SYN != 0)
                + u32::from(flags & tcp_flags::FIN != 0);
            wr16(&mut scratch, body, key.dport);
            wr16(&mut scratch, body + 2, key.sport);
            if flags & tcp_flags::ACK != 0 {
                wr32(&mut scratch, body + 4, ack);
                wr32(&mut scratch, body + 8, 0);
                scratch[body + 13] = tcp_flags::RST;
            } else {
                wr32(&mut scratch, body + 4, 0);
                wr32(&mut scratch, body + 8, seq.wrapping_add(seg_len));
                scratch[body + 13] = tcp_flags::RST | tcp_flags::ACK;
            }
            scratch[body + 12] = 5 << 4;
            len = body + 20;
            let cs = checksum::l4_checksum(
                key.dst.to_be_bytes(),
                key.src.to_be_bytes(),
                PROTO_TCP,
                &scratch[body..len],
            );
            wr16(&mut scratch, body + 16, cs);
            write_ipv4(&mut scratch[ip..body], key.dst, key.src, PROTO_TCP, 40);
        } else {
            // ICMP type 3 code 3 quoting the IP header and 8 bytes of payload.
            let quote = usize::from(p.ihl) + 8;
            scratch[body] = 3;
            scratch[body + 1] = 3;
            scratch[body + 8..body + 8 + quote].copy_from_slice(&d[ip..ip + quote]);
            len = body + 8 + quote;
            let cs = checksum::checksum(&scratch[body..len]);
            wr16(&mut scratch, body + 2, cs);
            let total = (20 + 8 + quote) as u16;
            write_ipv4(&mut scratch[ip..body], key.dst, key.src, PROTO_ICMP, total);
        }
    }
    if !f.set_len(len) {
        return Verdict::Drop(DropReason::TooBig);
    }
    f.data_mut().copy_from_slice(&scratch[..len]);
    c.rejected += 1;
    if p.decapped {
        // Back over the overlay to the client's node.
        let out = FlowKey {
            src: key.dst,
            dst: key.src,
            sport: key.dport,
            dport: key.sport,
            proto: if key.proto == PROTO_TCP {
                PROTO_TCP
            } else {
                PROTO_ICMP
            },
        };
        return route(f, &out, snap, c);
    }
    Verdict::Tx { ifindex: f.ifindex }
}

fn write_ipv4(h: &mut [u8], src: u32, dst: u32, proto: u8, total: u16) {
    h[0] = 0x45;
    h[1] = 0;
    wr16(h, 2, total);
    wr16(h, 4, 0);
    wr16(h, 6, 0x4000);
    h[8] = 64;
    h[9] = proto;
    wr16(h, 10, 0);
    wr32(h, 12, src);
    wr32(h, 16, dst);
    let cs = checksum::checksum(&h[..20]);
    wr16(h, 10, cs);
}
