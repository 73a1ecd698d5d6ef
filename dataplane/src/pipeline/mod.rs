//! The per-packet pipeline: pure functions over a batch of frames, one immutable
//! `Snapshot`, the worker's `FlowTable` and `now`. No I/O, no locks, no
//! allocation, no logging. Every frame ends with exactly one `Verdict`, counted
//! once here; a frame that fails a check is dropped with a `DropReason`, nothing
//! else. This module owns the batch driver and the staging of new flows; each
//! stage is a module of its own, in path order. It may not touch sockets, rings
//! or anything the control plane owns.
//!
//! The stages, numbered as in `docs/architecture.md`:
//! 1. rx: the I/O adapter fills a batch (`io::worker`).
//! 2. classify + decap (`classify`): Ethernet/IPv4/L4 checks through checked
//!    views, VXLAN addressed to this node stripped and the inner frame classified.
//! 3. conntrack + ownership (`conntrack`): the batch's flow-table sets and
//!    entries prefetched, then per frame a lookup; a hit has its rewrite; a miss
//!    whose flow another worker owns is handed off.
//! 4. service (`service`): a new flow to a frontend gets its backend (ClientIP
//!    affinity or Maglev) or is dropped or rejected.
//! 5. nat (`nat`): source NAT (masquerade ports, reply-tuple clashes) and the
//!    new flow's insertion into the flow table.
//! 6. rewrite (`rewrite`): addresses, ports, checksums (RFC 1624), TTL.
//! 7. route + encap (`route`): local pod, remote node (VXLAN), host, uplink.
//! 8. tx: the adapter queues each frame on the ring its verdict names.
//!
//! Two concerns cross the stages and have modules of their own: ICMP errors
//! (`icmp`: matched to flows through the quoted packet, translated, and the
//! errors the dataplane sends) and IPv4 fragments (`fragment`: a datagram's
//! fragments follow its first fragment's translation; frames too big for the
//! overlay are cut).
//!
//! The driver runs stages 2 and 3's prefetch over the whole batch, then stages
//! 3–7 frame by frame. A new Service flow is only *decided* in that pass; its
//! reply set and the entry it will write are prefetched, and it is inserted
//! (stage 5) after the pass, in batch order, with the frames that had to wait
//! for it (`Step`).

mod classify;
mod conntrack;
mod dns;
mod fragment;
mod icmp;
mod nat;
mod rewrite;
mod route;
mod service;

use arrayvec::ArrayVec;
use shared::counters::{Counters, DropReason};
use shared::maglev::mix64;
use shared::snapshot::{Frontend, Snapshot};
use shared::wire::ipv4::{PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use shared::wire::l4::ICMP_ECHO_REQUEST;

use crate::flow::{tcp_flags, ChecksumDeltas, FlowKey, Rewrite, NO_SLOT};
use crate::frame::{Frame, Verdict};
use crate::state::WorkerState;
use nat::NewFlow;
use service::Decision;

/// Frames processed per stage pass.
pub const BATCH: usize = 64;

/// The host interface's link address (`control::hostif`): the source of the
/// node's connections to an endpoint on its own address, as the kernel sees
/// them on nph0 (its route to it points there).
pub const HOST_LINK_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 42, 1);

/// Default masquerade port range: above Linux's ephemeral range (32768–60999),
/// so the host's own connections never collide with nodeplane's.
pub const DEFAULT_MASQ_PORTS: (u16, u16) = (61000, 65535);

/// What classify learned about a frame. Offsets are into `Frame::data()`,
/// whose first byte is the (inner, after decap) Ethernet header.
#[derive(Clone, Copy, Debug, Default)]
struct Parsed {
    /// IPv4 header length in bytes (20–60).
    ihl: u8,
    key: FlowKey,
    /// The flow table's hash of `key`, computed once in the prefetch pass.
    hash: u64,
    /// The slot `FlowTable::probe` found for `hash` (`NO_SLOT`: none).
    probe: u32,
    /// The frontend of a TCP/UDP `key` no tag matched (`probe == NO_SLOT`),
    /// looked up by the prefetch pass; `None` otherwise.
    frontend: Option<Frontend>,
    tcp_flags: u8,
    icmp_type: u8,
    /// Came through the overlay.
    decapped: bool,
    /// An ICMP error matched to a flow: the quoted IPv4 header's length (its
    /// packet starts 8 bytes into the ICMP message), and `key` is the quoted
    /// tuple reversed. 0 for anything else.
    err: u8,
    /// `FRAG_FIRST` or `FRAG_LATER` for an IPv4 fragment, else 0.
    frag: u8,
    /// The IPv4 identification (read for fragments only).
    ip_id: u16,
}

/// A datagram's first fragment (it holds the L4 header).
const FRAG_FIRST: u8 = 1;
/// A fragment at a non-zero offset (no L4 header).
const FRAG_LATER: u8 = 2;

impl Parsed {
    /// Where the L4 header starts in `Frame::data()`.
    #[inline]
    fn l4(&self) -> usize {
        shared::wire::ETH_HLEN + usize::from(self.ihl)
    }

    /// The TCP flags, for a TCP frame.
    #[inline]
    fn tcp(&self) -> Option<u8> {
        (self.key.proto == PROTO_TCP).then_some(self.tcp_flags)
    }

    /// TCP, UDP or SCTP: a protocol with ports, which Services carry.
    #[inline]
    fn has_ports(&self) -> bool {
        matches!(self.key.proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP)
    }

    /// A fragment or a matched ICMP error: the cases the ordered path
    /// (`forward`) handles.
    #[inline]
    fn is_rare(&self) -> bool {
        self.err | self.frag != 0
    }

    #[inline]
    fn is_first_fragment(&self) -> bool {
        self.frag == FRAG_FIRST
    }

    #[inline]
    fn is_later_fragment(&self) -> bool {
        self.frag == FRAG_LATER
    }
}

/// What every stage of one batch works with: the tables, the worker's flow
/// table and counters, and the time the batch started.
struct Ctx<'a> {
    snap: &'a Snapshot,
    flows: &'a mut crate::flow::FlowTable,
    /// The rest of the worker's state: fragments, ICMP rate limits.
    state: Aux<'a>,
    c: &'a mut Counters,
    now: u64,
}

/// `WorkerState` without its flow table (which `Ctx` holds on its own, the
/// path nearly every packet takes).
struct Aux<'a> {
    frags: &'a mut crate::frag::FragTable,
    icmp: &'a mut crate::state::IcmpLimiter,
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
///
/// Frames the batch emits beyond its own (fragments released or cut) wait in
/// `state.frags` for the adapter (`FragTable::drain_extra`).
pub fn process_batch(
    frames: &mut [Frame<'_>],
    verdicts: &mut [Verdict],
    snap: &Snapshot,
    state: &mut WorkerState,
    counters: &mut Counters,
    now_ns: u64,
) {
    let n = frames.len().min(verdicts.len());
    let mut cx = Ctx {
        snap,
        flows: &mut state.flows,
        state: Aux {
            frags: &mut state.frags,
            icmp: &mut state.icmp,
        },
        c: counters,
        now: now_ns,
    };
    let mut start = 0;
    while start < n {
        let end = (start + BATCH).min(n);
        run_chunk(&mut cx, &mut frames[start..end], &mut verdicts[start..end]);
        start = end;
    }
}

/// The stages over up to `BATCH` frames.
fn run_chunk(cx: &mut Ctx<'_>, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]) {
    let mut parsed = [Parsed::default(); BATCH];
    let mut live = [false; BATCH];
    // A fragment or ICMP error was seen (`Parsed::is_rare`).
    let mut rare = false;
    // Stage 2: classify + decap.
    for i in 0..frames.len() {
        cx.c.rx_packets += 1;
        cx.c.rx_bytes += frames[i].len() as u64;
        match classify::frame(&mut frames[i], cx.snap, cx.c, &mut parsed[i]) {
            Ok(()) => live[i] = true,
            Err(r) => {
                verdicts[i] = Verdict::Drop(r);
                // A first fragment dropped here (too short for its L4
                // header): the rest of its datagram is refused below.
                rare |= parsed[i].frag == FRAG_FIRST;
            }
        }
    }
    // Stage 3, first: the flow-table sets of the batch, then (their tags having
    // arrived meanwhile) the matching entries, prefetched.
    conntrack::prefetch(cx, &mut parsed[..frames.len()], &live);
    // Stages 3–7 for every frame; a new Service flow is only decided here.
    let mut later: ArrayVec<(usize, Step), BATCH> = ArrayVec::new();
    let mut decided = Decided::default();
    let mut barrier = false;
    for i in 0..frames.len() {
        if live[i] {
            let st = first_pass(
                cx,
                &mut frames[i],
                &parsed[i],
                &decided,
                &mut barrier,
                &mut rare,
                &mut verdicts[i],
            );
            if let Step::Commit { reply_hash, .. } = st {
                decided.add(parsed[i].hash, reply_hash);
            }
            if !matches!(st, Step::Done) && later.try_push((i, st)).is_err() {
                // Unreachable (a chunk has at most BATCH frames); run it now.
                verdicts[i] = forward(cx, &mut frames[i], &parsed[i]);
            }
        }
    }
    // Stage 5 for the decided flows (and stages 3–7 for the frames that waited
    // for them), in batch order.
    if !later.is_empty() {
        for &(_, reply_hash) in decided.flows() {
            cx.flows.prefetch_for_insert(reply_hash);
        }
        // A datagram's later fragments run after every first fragment of the
        // batch, so one that arrived before its first fragment does not wait
        // in the fragment table for a decision taken in the same batch.
        let mut after: ArrayVec<usize, BATCH> = ArrayVec::new();
        for &(i, st) in &later {
            match st {
                Step::Done => {}
                Step::Commit { flow, reply_hash } => {
                    verdicts[i] = nat::commit(cx, &mut frames[i], &parsed[i], &flow, reply_hash);
                }
                Step::Later
                    if rare && parsed[i].frag == FRAG_LATER && after.try_push(i).is_ok() => {}
                Step::Later => verdicts[i] = forward(cx, &mut frames[i], &parsed[i]),
            }
        }
        for &i in &after {
            verdicts[i] = forward(cx, &mut frames[i], &parsed[i]);
        }
    }
    for v in &verdicts[..frames.len()] {
        match *v {
            Verdict::Drop(r) => cx.c.drop(r),
            Verdict::Pass => cx.c.passed += 1,
            Verdict::Handoff { .. } => cx.c.handed_off += 1,
            Verdict::Tx { .. } => cx.c.forwarded += 1,
            Verdict::Held => {}
        }
    }
    if rare {
        for (p, v) in parsed.iter().zip(&verdicts[..frames.len()]) {
            if p.frag == FRAG_FIRST && matches!(v, Verdict::Drop(_) | Verdict::Pass) {
                fragment::refused(cx, p);
            }
        }
    }
    if !cx.state.frags.released_is_empty() {
        fragment::release(cx);
    }
    cx.c.flow_evictions = cx.flows.evictions();
    cx.c.tuple_reuses = cx.flows.tuple_reuses();
    cx.c.drops[DropReason::FragmentTimeout as usize] = cx.state.frags.timed_out();
    cx.c.drops[DropReason::FragmentEvicted as usize] = cx.state.frags.evicted();
    cx.c.drops[DropReason::FragmentOtherWorker as usize] = cx.state.frags.other_worker();
}

/// What the first pass left for after it to do with a frame.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Its verdict is set.
    Done,
    /// A new Service flow, decided: insert it (its reply key hashes to
    /// `reply_hash`), then rewrite and route the frame.
    Commit { flow: NewFlow, reply_hash: u64 },
    /// Run stages 3–7 on it after the pass, in batch order: it shares a key with
    /// a flow decided earlier in the batch (another packet of that flow, or its
    /// reply), or it comes at or after a barrier (a frame that may be
    /// masqueraded while flows are decided but not inserted).
    Later,
}

/// The flows decided in the first pass of a batch, by (key hash, reply key
/// hash), with a bit filter of those hashes so a frame that matches none
/// (nearly all) skips the comparison.
#[derive(Default)]
struct Decided {
    hashes: ArrayVec<(u64, u64), BATCH>,
    filter: [u64; 16],
}

impl Decided {
    #[inline]
    fn bit(h: u64) -> (usize, u64) {
        // The flow table's set index uses the low bits; take others.
        let b = ((h >> 40) & 1023) as usize;
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

/// The first pass for one frame: stages 3–7 for a flow-table hit or a frame
/// that needs no new flow; only stage 4's decision for a new Service flow (a
/// masqueraded one, which can only be decided with no flow pending, is
/// inserted at once); `Step::Later` for the frames that must run in order
/// after the pass. `decided` holds the flows decided earlier in the batch.
#[inline]
fn first_pass(
    cx: &mut Ctx<'_>,
    f: &mut Frame<'_>,
    p: &Parsed,
    decided: &Decided,
    barrier: &mut bool,
    rare: &mut bool,
    verdict: &mut Verdict,
) -> Step {
    // After a barrier, and for a frame of a flow decided earlier in the batch
    // (another packet of it, or its reply; even a hit, since that flow's
    // insert replaces entries with its keys), everything runs in batch order.
    // Fragments and ICMP errors take the ordered path (`forward`), so the
    // path nearly every packet takes here tests for them once. A first
    // fragment may start a flow: the frames after it follow in order.
    if p.is_rare() {
        *rare = true;
        if p.frag == FRAG_FIRST {
            *barrier = true;
        }
        return Step::Later;
    }
    if *barrier || decided.touches(p.hash) {
        return Step::Later;
    }
    // A TCP SYN, FIN or RST of a known flow may open or close it, and whether
    // a pending flow may take that flow's reply tuple depends on it
    // (`FlowTable::insert_prehashed`): in order too.
    if !decided.is_empty()
        && p.tcp()
            .is_some_and(|f| f & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) != 0)
        && cx.flows.contains(&p.key, cx.now)
    {
        *barrier = true;
        return Step::Later;
    }
    if let Some(v) = conntrack::lookup::<false>(cx, f, p) {
        *verdict = v;
        return Step::Done;
    }
    let key = p.key;
    let pending = !decided.is_empty();
    if p.has_ports() {
        // The prefetch pass looked it up for frames no tag matched.
        let fe = if p.probe == NO_SLOT {
            p.frontend
        } else {
            cx.snap.frontend(key.dst, key.proto, key.dport)
        };
        if let Some(fe) = fe {
            // A flow that may be masqueraded chooses its port against the
            // table: with flows decided but not inserted yet it would not see
            // theirs. It waits for them, and everything after it follows in
            // order.
            if pending && service::may_masquerade(cx.snap, f, p, fe) {
                *barrier = true;
                return Step::Later;
            }
            *verdict = match service::decide(cx, f, p, fe) {
                Decision::Done(v) => v,
                Decision::Flow(flow) if !flow.meta.snat => {
                    let reply_hash = cx.flows.hash(&key.rewritten(&flow.rw).reversed());
                    cx.flows.prefetch(reply_hash);
                    cx.flows.prefetch_for_insert(p.hash);
                    return Step::Commit { flow, reply_hash };
                }
                Decision::Flow(flow) => nat::commit_now(cx, f, p, &flow),
            };
            return Step::Done;
        }
    }
    if pending
        && (nat::leaves_cluster(cx.snap, p) || conntrack::reaches_endpoint_directly(cx.snap, p))
    {
        // Masqueraded off the cluster, or a tracked direct flow whose reply
        // tuple is checked against the table: the same as above.
        *barrier = true;
        return Step::Later;
    }
    *verdict = new_flow_off_frontend(cx, f, p);
    Step::Done
}

/// Stages 3–7 for one frame, in one go.
fn forward(cx: &mut Ctx<'_>, f: &mut Frame<'_>, p: &Parsed) -> Verdict {
    if p.frag == FRAG_LATER {
        return fragment::later(cx, f, p);
    }
    if p.frag == FRAG_FIRST {
        if let Some(v) = fragment::first(cx, f, p) {
            return v;
        }
    }
    if let Some(v) = conntrack::lookup::<true>(cx, f, p) {
        return v;
    }
    if p.err != 0 {
        return icmp::untracked(cx, f, p);
    }
    if p.has_ports() {
        let key = p.key;
        if let Some(fe) = cx.snap.frontend(key.dst, key.proto, key.dport) {
            return match service::decide(cx, f, p, fe) {
                Decision::Done(v) => v,
                Decision::Flow(flow) => nat::commit_now(cx, f, p, &flow),
            };
        }
    }
    new_flow_off_frontend(cx, f, p)
}

/// A new flow to an address that is not a frontend: an allocated ClusterIP
/// on another port (rejected), an unallocated one (dropped), pod traffic leaving the cluster (masqueraded), a local pod's
/// direct flow to a Service endpoint (tracked), or plain routing.
fn new_flow_off_frontend(cx: &mut Ctx<'_>, f: &mut Frame<'_>, p: &Parsed) -> Verdict {
    let key = p.key;
    if cx.snap.is_cluster_ip(key.dst)
        && (p.has_ports() || (key.proto == PROTO_ICMP && p.icmp_type == ICMP_ECHO_REQUEST))
    {
        // A ClusterIP on a port or protocol none of its Service's ports has:
        // rejected, as kube-proxy does (its `cluster-ips` set). Never an ICMP
        // error about an ICMP error or another protocol's frame: those are
        // dropped as before.
        return service::reject(cx, f, p);
    }
    if cx.snap.in_service_cidr(key.dst) {
        return Verdict::Drop(DropReason::UnallocatedServiceIp);
    }
    if nat::leaves_cluster(cx.snap, p) {
        return nat::masquerade_out(cx, f, p);
    }
    if conntrack::reaches_endpoint_directly(cx.snap, p) {
        // Tracked without translation: its replies look like a Service
        // flow's, so the table must know both (`nat::commit_remapped`).
        return nat::commit_now(cx, f, p, &NewFlow::untranslated(&key));
    }
    rewrite_and_route(cx, f, p, &key.identity())
}

/// Stages 6 and 7 for a rewrite whose checksum changes are not summed yet.
#[inline]
fn rewrite_and_route(cx: &mut Ctx<'_>, f: &mut Frame<'_>, p: &Parsed, rw: &Rewrite) -> Verdict {
    rewrite_and_route_as::<true>(cx, f, p, rw, ChecksumDeltas::between(&p.key, rw), None)
}

/// Stages 6 and 7: `rw` applied with its checksum changes (`deltas`, from the
/// flow entry), then routed; `fallback_mac` is the L2 destination for an
/// off-cluster destination the snapshot has no neighbour for. `RARE` false:
/// the caller has found the frame to be neither a fragment nor an ICMP error
/// (`Parsed::is_rare`), and the tests for those are compiled out (the
/// established path's first pass: they cost it ~5% of its instructions,
/// docs/performance.md); every other caller passes true.
#[inline(always)]
fn rewrite_and_route_as<const RARE: bool>(
    cx: &mut Ctx<'_>,
    f: &mut Frame<'_>,
    p: &Parsed,
    rw: &Rewrite,
    deltas: ChecksumDeltas,
    fallback_mac: Option<[u8; 6]>,
) -> Verdict {
    debug_assert!(RARE || !p.is_rare());
    if RARE && p.err != 0 {
        return icmp::translate(cx, f, p, rw, fallback_mac);
    }
    match rewrite::apply::<RARE>(f, p, rw, deltas) {
        Ok(out) => {
            if RARE && p.frag == FRAG_FIRST {
                fragment::decided(cx, p, rw, deltas.ip);
            }
            route::route(cx, f, p, &out, fallback_mac)
        }
        Err(DropReason::TtlExceeded) => icmp::time_exceeded(cx, f, p),
        Err(r) => Verdict::Drop(r),
    }
}
