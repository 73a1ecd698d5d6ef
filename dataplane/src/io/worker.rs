//! Pinned poll-mode workers and the pool the agent drives. Each worker owns a
//! UMEM, its AF_XDP sockets (one per interface queue it serves), its flow table
//! and counters; per batch it receives, runs `process_batch` on the snapshot it
//! loaded once for the batch, and queues each frame on the tx ring of the
//! interface its verdict names (same UMEM: no copy). Commands (add/remove an
//! interface queue, accounting) arrive over a channel checked between batches.
//!
//! Queues and workers: queue q of every interface belongs to worker q % N, and
//! every interface must have at least N queues (so each worker can transmit on
//! every interface from its own UMEM). Each flow has one owning worker; a frame
//! the pipeline hands off (`Verdict::Handoff`) goes to its owner over an SPSC
//! ring (`handoff`), so both directions of a NAT flow meet on one worker
//! wherever they land. It owns no packet logic: verdicts come from the pipeline.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use hashbrown::HashMap;
use hdrhistogram::Histogram;
use shared::{Counters, DropReason, Snapshot};

use super::afxdp::{
    FrameAccount, FramePool, RingSizes, UmemRegion, XskSocket, XskStats, MAX_RX_FRAME,
};
use super::handoff::{self, HandoffRx, HandoffTx};
use super::netif;
use super::steering::{InterfaceRole, Steering, SteeringParams, XdpMode, QUEUES_PER_INTERFACE};
use super::IoError;
use crate::flow::FlowTable;
use crate::frag::FragConfig;
use crate::frame::{Frame, Verdict};
use crate::pipeline::{process_batch, BATCH};
use crate::report::{new_slot, LatencySummary, ReportSlot, WorkerReport, XskDrops};
use crate::state::WorkerState;

/// Most frames taken from one rx ring per batch.
pub const RX_BATCH: usize = BATCH;
/// `RX_BATCH` as the ring calls take it.
// Cannot truncate: RX_BATCH is a batch, 64 frames.
#[allow(clippy::cast_possible_truncation)]
const RX_BATCH_U32: u32 = RX_BATCH as u32;
/// Largest `--workers`.
pub const MAX_WORKERS: usize = QUEUES_PER_INTERFACE as usize;
/// With `IoOptions::idle_sleep`, a worker sleeps after this long without traffic.
pub const IDLE_AFTER_NS: u64 = 50_000;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a busy queue (socket release still pending in the kernel) is retried.
const BUSY_RETRY: Duration = Duration::from_secs(3);
/// Ethernet header + one VLAN tag on top of the MTU.
const L2_OVERHEAD: u32 = 18;
/// The largest MTU a UMEM chunk can receive.
// Cannot truncate: MAX_RX_FRAME is 1792.
#[allow(clippy::cast_possible_truncation)]
const MAX_MTU: u32 = MAX_RX_FRAME as u32 - L2_OVERHEAD;

const UPLINK_RINGS: RingSizes = RingSizes {
    rx: 2048,
    tx: 2048,
    fill: 2048,
    comp: 2048,
};
const UPLINK_FILL: u32 = 2048;
const POD_RINGS: RingSizes = RingSizes {
    rx: 2048,
    tx: 2048,
    fill: 2048,
    comp: 2048,
};
/// A pod socket's initial fill target; it grows with the socket's traffic
/// (up to the ring, see `adapt_fill`) and shrinks back when the pod is quiet, so
/// many idle pods do not hold the UMEM while a busy one can ride out a stall.
const POD_FILL: u32 = 256;

/// What the agent configures.
#[derive(Clone)]
pub struct PoolConfig {
    /// Number of workers (`--workers`), 1..=MAX_WORKERS.
    pub workers: usize,
    /// Flow table capacity per worker.
    pub flow_capacity: usize,
    /// Fragment table limits per worker (`--frag-memory`, `--frag-datagrams`,
    /// `--frag-timeout`).
    pub frag: FragConfig,
    /// The published tables.
    pub tables: Arc<ArcSwap<Snapshot>>,
}

/// Tuning that has sensible defaults.
#[derive(Clone, Debug)]
pub struct IoOptions {
    /// Pin worker i to core (i + 1) mod cores (or to `cores[i % len]`).
    pub pin: bool,
    /// Explicit cores to pin workers to (empty: automatic).
    pub cores: Vec<usize>,
    /// Sleep this long between polls once a worker has seen no traffic for
    /// `IDLE_AFTER` (None: pure busy-polling, the default). Under load a worker
    /// never sleeps; this only gives an idle core back to the rest of the node.
    pub idle_sleep: Option<Duration>,
    /// UMEM frames per worker (2 KiB each).
    pub umem_frames: u32,
    /// How often a worker publishes its report.
    pub report_interval: Duration,
    /// Attach the steering program only in this mode (None: driver mode,
    /// falling back to generic).
    pub xdp_mode: Option<XdpMode>,
}

impl Default for IoOptions {
    fn default() -> Self {
        IoOptions {
            pin: true,
            cores: Vec::new(),
            idle_sleep: None,
            umem_frames: 16384,
            report_interval: Duration::from_millis(10),
            xdp_mode: None,
        }
    }
}

/// An interface the pool is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedInterface {
    pub name: String,
    pub ifindex: u32,
    pub role: InterfaceRole,
    pub mode: XdpMode,
    pub queues: u32,
}

/// One socket of a worker, for diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    pub ifindex: u32,
    pub queue: u32,
    pub in_fill_rx: u32,
    pub in_tx_comp: u32,
    pub kernel: XskStats,
}

/// A worker's frame accounting and sockets.
#[derive(Clone, Debug)]
pub struct WorkerAccount {
    pub worker: usize,
    pub frames: FrameAccount,
    pub sockets: Vec<SocketInfo>,
    pub counters: Counters,
}

/// A socket a worker is asked to open.
#[derive(Clone)]
struct QueueSpec {
    name: String,
    ifindex: u32,
    queue: u32,
    role: InterfaceRole,
    /// XSKMAP index.
    slot: u32,
}

enum Cmd {
    AddQueue {
        spec: QueueSpec,
        reply: Sender<Result<(), IoError>>,
    },
    RemoveInterface {
        ifindex: u32,
        reply: Sender<()>,
    },
    Account {
        reply: Sender<WorkerAccount>,
    },
    Stop,
}

struct WorkerHandle {
    cmd: Sender<Cmd>,
    thread: Option<JoinHandle<()>>,
    report: ReportSlot,
}

/// The workers and the steering program. Use it from threads in the network
/// namespace it was started in. Dropping it stops everything and detaches XDP.
pub struct WorkerPool {
    steering: Arc<Steering>,
    workers: Vec<WorkerHandle>,
    interfaces: BTreeMap<u32, AttachedInterface>,
    stopped: bool,
}

impl WorkerPool {
    /// Loads the steering program and starts `cfg.workers` workers (no
    /// interface is attached yet).
    pub fn start(cfg: PoolConfig) -> Result<WorkerPool, IoError> {
        Self::start_with(cfg, IoOptions::default())
    }

    pub fn start_with(cfg: PoolConfig, opts: IoOptions) -> Result<WorkerPool, IoError> {
        if cfg.workers == 0 || cfg.workers > MAX_WORKERS {
            return Err(IoError::BadWorkerCount {
                workers: cfg.workers,
                max: MAX_WORKERS,
            });
        }
        if cfg.workers > 1 {
            tracing::info!(
                workers = cfg.workers,
                "flows are owned per worker (by client IP, or by masquerade port); a frame \
                 that lands on another worker's queue is handed to the owner"
            );
        }
        let mut steering = Steering::load()?;
        steering.set_mode(opts.xdp_mode);
        let steering = Arc::new(steering);
        let cores = if !opts.pin {
            Vec::new()
        } else if opts.cores.is_empty() {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            opts.cores
                .iter()
                .map(|&id| core_affinity::CoreId { id })
                .collect()
        };
        let mut pool = WorkerPool {
            steering,
            workers: Vec::new(),
            interfaces: BTreeMap::new(),
            stopped: false,
        };
        let mut mesh = handoff_mesh(cfg.workers).into_iter();
        for id in 0..cfg.workers {
            let core = match cores.len() {
                0 => None,
                1 => Some(cores[0]),
                n if !opts.cores.is_empty() => Some(cores[id % n]),
                n => Some(cores[(id + 1) % n]),
            };
            let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
            let report = new_slot(id);
            let (ready_tx, ready_rx) = bounded(1);
            let ctx = WorkerCtx {
                id,
                core,
                opts: opts.clone(),
                flow_capacity: cfg.flow_capacity,
                frag: cfg.frag,
                tables: cfg.tables.clone(),
                steering: pool.steering.clone(),
                cmds: cmd_rx,
                report: report.clone(),
                workers: cfg.workers,
            };
            let rings = mesh.next().unwrap_or_default();
            let thread = std::thread::Builder::new()
                .name(format!("np-worker-{id}"))
                .spawn(move || worker_main(ctx, rings, ready_tx))
                .map_err(IoError::Spawn)?;
            pool.workers.push(WorkerHandle {
                cmd: cmd_tx,
                thread: Some(thread),
                report,
            });
            match ready_rx.recv_timeout(Duration::from_secs(30)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(IoError::WorkerGone(id)),
            }
        }
        Ok(pool)
    }

    /// The steering program (maps, statistics).
    pub fn steering(&self) -> &Arc<Steering> {
        &self.steering
    }

    /// Replaces the steering parameters (see `Steering::set_params`).
    pub fn set_steering(&self, p: &SteeringParams) -> Result<(), IoError> {
        self.steering.set_params(p).map_err(IoError::from)
    }

    /// One report slot per worker.
    pub fn reports(&self) -> Vec<ReportSlot> {
        self.workers.iter().map(|w| w.report.clone()).collect()
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The attached interfaces.
    pub fn interfaces(&self) -> Vec<AttachedInterface> {
        self.interfaces.values().cloned().collect()
    }

    /// Attaches the steering program to `name` and opens an AF_XDP socket on
    /// each of its queues (queue q on worker q % N). Returns the XDP mode
    /// ("native" or "generic"). On error nothing stays attached.
    pub fn add_interface(
        &mut self,
        name: &str,
        ifindex: u32,
        role: InterfaceRole,
    ) -> Result<String, IoError> {
        if self.stopped {
            return Err(IoError::Stopped);
        }
        let actual = netif::ifindex(name)?;
        if ifindex != 0 && actual != ifindex {
            return Err(IoError::IfindexMismatch {
                name: name.to_string(),
                given: ifindex,
                actual,
            });
        }
        let ifindex = actual;
        let mtu = netif::mtu(name)?;
        let max = MAX_MTU;
        if mtu > max {
            return Err(IoError::MtuTooLarge {
                name: name.to_string(),
                mtu,
                max,
            });
        }
        let queues = netif::rx_queue_count(name);
        if queues > QUEUES_PER_INTERFACE {
            return Err(IoError::TooManyQueues {
                name: name.to_string(),
                queues,
                max: QUEUES_PER_INTERFACE,
            });
        }
        // At most MAX_WORKERS (`start_with`); saturated, it fails the check below.
        let n = u32::try_from(self.workers.len()).unwrap_or(u32::MAX);
        if n > 1 && queues < n {
            return Err(IoError::TooFewQueues {
                name: name.to_string(),
                queues,
                workers: n,
            });
        }
        let att = self.steering.attach(ifindex, role)?;
        let mut result = Ok(());
        for q in 0..queues {
            let w = (q % n) as usize;
            let spec = QueueSpec {
                name: name.to_string(),
                ifindex,
                queue: q,
                role,
                slot: att.slot_base + q,
            };
            result = self.add_queue_retrying(w, &spec);
            if result.is_err() {
                break;
            }
        }
        if let Err(e) = result {
            self.steering.detach(ifindex);
            self.remove_sockets(ifindex);
            return Err(e);
        }
        self.interfaces.insert(
            ifindex,
            AttachedInterface {
                name: name.to_string(),
                ifindex,
                role,
                mode: att.mode,
                queues,
            },
        );
        Ok(att.mode.name().to_string())
    }

    /// Asks worker `w` for a socket on (ifindex, queue). A queue whose previous
    /// socket was just closed stays busy until the kernel's deferred release has
    /// run, so EBUSY is retried here (the worker itself never waits).
    fn add_queue_retrying(&self, w: usize, spec: &QueueSpec) -> Result<(), IoError> {
        let deadline = std::time::Instant::now() + BUSY_RETRY;
        loop {
            let (tx, rx) = bounded(1);
            let cmd = Cmd::AddQueue {
                spec: spec.clone(),
                reply: tx,
            };
            self.workers[w]
                .cmd
                .send(cmd)
                .map_err(|_| IoError::WorkerGone(w))?;
            let r = match rx.recv_timeout(COMMAND_TIMEOUT) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => Err(IoError::Timeout(w, COMMAND_TIMEOUT)),
                Err(RecvTimeoutError::Disconnected) => Err(IoError::WorkerGone(w)),
            };
            match r {
                Err(e) if e.is_busy() && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                r => return r,
            }
        }
    }

    /// Detaches from `ifindex` and closes its sockets (the interface may already
    /// be gone). False if it was not attached.
    pub fn remove_interface(&mut self, ifindex: u32) -> bool {
        if self.interfaces.remove(&ifindex).is_none() {
            return false;
        }
        // First stop steering (traffic goes to the kernel), then close sockets.
        self.steering.detach(ifindex);
        self.remove_sockets(ifindex);
        true
    }

    fn remove_sockets(&self, ifindex: u32) {
        let mut pending = Vec::new();
        for w in &self.workers {
            let (tx, rx) = bounded(1);
            if w.cmd
                .send(Cmd::RemoveInterface { ifindex, reply: tx })
                .is_ok()
            {
                pending.push(rx);
            }
        }
        for rx in pending {
            let _ = rx.recv_timeout(COMMAND_TIMEOUT);
        }
    }

    /// Each worker's frame accounting (answered between batches).
    pub fn accounts(&self) -> Result<Vec<WorkerAccount>, IoError> {
        let mut out = Vec::new();
        for (i, w) in self.workers.iter().enumerate() {
            let (tx, rx) = bounded(1);
            w.cmd
                .send(Cmd::Account { reply: tx })
                .map_err(|_| IoError::WorkerGone(i))?;
            out.push(rx.recv_timeout(COMMAND_TIMEOUT).map_err(|e| match e {
                RecvTimeoutError::Timeout => IoError::Timeout(i, COMMAND_TIMEOUT),
                RecvTimeoutError::Disconnected => IoError::WorkerGone(i),
            })?);
        }
        Ok(out)
    }

    /// Detaches XDP from every interface, stops and joins the workers (their
    /// sockets close), and leaves the interfaces as they were.
    pub fn stop(mut self) {
        self.stop_in_place();
    }

    /// As `stop`, for a pool behind a shared reference; idempotent.
    pub fn stop_in_place(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.steering.detach_all();
        self.interfaces.clear();
        for w in &self.workers {
            let _ = w.cmd.send(Cmd::Stop);
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                if t.join().is_err() {
                    tracing::error!("a worker panicked");
                }
            }
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.stop_in_place();
    }
}

struct WorkerCtx {
    id: usize,
    core: Option<core_affinity::CoreId>,
    opts: IoOptions,
    flow_capacity: usize,
    frag: FragConfig,
    tables: Arc<ArcSwap<Snapshot>>,
    steering: Arc<Steering>,
    cmds: Receiver<Cmd>,
    report: ReportSlot,
    /// Number of workers in the pool (flow ownership).
    workers: usize,
}

/// One socket of the worker with what the worker needs to know about it.
struct Sock {
    xsk: XskSocket,
    slot: u32,
    label: String,
    /// The fill target it started with (adaptive fill shrinks back to it).
    base_fill: u32,
    /// Frames received since the last once-a-second check.
    rx_window: u32,
    /// Consecutive seconds with less traffic than the fill target.
    quiet_secs: u8,
}

/// Everything of a worker except the UMEM memory (borrowed by the frames).
struct Io {
    pool: FramePool,
    socks: Vec<Option<Sock>>,
    /// Live socket ids, in polling order.
    active: Vec<u16>,
    /// The socket to transmit on, per ifindex.
    tx_of: HashMap<u32, u16>,
}

impl Io {
    fn add_queue(
        &mut self,
        region: &UmemRegion,
        steering: &Steering,
        q: &QueueSpec,
    ) -> Result<(), IoError> {
        let (ifindex, queue, slot) = (q.ifindex, q.queue, q.slot);
        if self.active.iter().any(|&s| {
            self.sock(s)
                .is_some_and(|k| k.xsk.ifindex == ifindex && k.xsk.queue == queue)
        }) {
            return Ok(());
        }
        let shared = self
            .active
            .first()
            .and_then(|&s| self.sock(s))
            .map(|k| k.xsk.fd());
        let id = match self.socks.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.socks.push(None);
                self.socks.len() - 1
            }
        };
        let id16 = u16::try_from(id).map_err(|_| super::afxdp::XskError::TooManySockets)?;
        let (sizes, fill) = match q.role {
            InterfaceRole::Uplink => (UPLINK_RINGS, UPLINK_FILL),
            InterfaceRole::Pod => (POD_RINGS, POD_FILL),
        };
        let mut xsk = XskSocket::create(region, shared, id16, ifindex, queue, sizes, fill)?;
        xsk.refill(&mut self.pool);
        if let Err(e) = steering.set_socket(slot, xsk.fd()) {
            drop(xsk);
            self.pool.reclaim_socket(id16);
            return Err(e.into());
        }
        let base_fill = xsk.fill_target;
        self.socks[id] = Some(Sock {
            xsk,
            slot,
            label: format!("{}/{queue}", q.name),
            base_fill,
            rx_window: 0,
            quiet_secs: 0,
        });
        self.active.push(id16);
        self.tx_of.entry(ifindex).or_insert(id16);
        Ok(())
    }

    fn remove_interface(&mut self, steering: &Steering, ifindex: u32) {
        let ids: Vec<u16> = self
            .active
            .iter()
            .copied()
            .filter(|&s| self.sock(s).is_some_and(|k| k.xsk.ifindex == ifindex))
            .collect();
        for id in ids {
            if let Some(s) = self.socks.get_mut(usize::from(id)).and_then(Option::take) {
                steering.clear_socket(s.slot);
                // Closing the socket first: the kernel no longer writes to its frames.
                drop(s);
                self.pool.reclaim_socket(id);
            }
            self.active.retain(|&a| a != id);
        }
        self.tx_of.remove(&ifindex);
    }

    #[inline]
    fn sock(&self, id: u16) -> Option<&Sock> {
        self.socks.get(usize::from(id)).and_then(Option::as_ref)
    }

    #[inline]
    fn sock_mut(&mut self, id: u16) -> Option<&mut Sock> {
        self.socks.get_mut(usize::from(id)).and_then(Option::as_mut)
    }

    fn account(&self) -> (FrameAccount, Vec<SocketInfo>) {
        let mut per = Vec::new();
        let mut info = Vec::new();
        for &id in &self.active {
            if let Some(s) = self.sock(id) {
                per.push((id, s.xsk.in_fill_rx, s.xsk.in_tx_comp));
                info.push(SocketInfo {
                    ifindex: s.xsk.ifindex,
                    queue: s.xsk.queue,
                    in_fill_rx: s.xsk.in_fill_rx,
                    in_tx_comp: s.xsk.in_tx_comp,
                    kernel: s.xsk.stats(),
                });
            }
        }
        (self.pool.account(&per), info)
    }

    /// The cheap conservation check (counters only).
    fn conserved(&self, total: u32) -> bool {
        let mut n = self.pool.free_count() as u64;
        for &id in &self.active {
            if let Some(s) = self.sock(id) {
                n += u64::from(s.xsk.in_fill_rx) + u64::from(s.xsk.in_tx_comp);
            }
        }
        n == u64::from(total)
    }
}

/// CLOCK_MONOTONIC in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

fn worker_main(ctx: WorkerCtx, handoff: Handoff, ready: Sender<Result<(), IoError>>) {
    let pinned = ctx
        .core
        .filter(|c| core_affinity::set_for_current(*c))
        .map(|c| c.id);
    if ctx.opts.idle_sleep.is_some() {
        // An idle worker sleeps in short naps; the default 50 µs timer slack
        // would let each nap run twice as long, and a packet arriving meanwhile
        // wait that much longer.
        // SAFETY: PR_SET_TIMERSLACK takes a plain integer and only affects
        // this thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong) };
    }
    let region = match UmemRegion::new(ctx.opts.umem_frames) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    let hist = match Histogram::<u64>::new_with_bounds(1, 100_000_000, 2) {
        Ok(h) => h,
        Err(e) => {
            let _ = ready.send(Err(IoError::Histogram(e.to_string())));
            return;
        }
    };
    let io = Io {
        pool: FramePool::new(region.frames()),
        socks: Vec::new(),
        active: Vec::new(),
        tx_of: HashMap::new(),
    };
    let mut state = WorkerState::with(FlowTable::new(ctx.flow_capacity), ctx.frag);
    // Both at most MAX_WORKERS (`WorkerPool::start_with`).
    let (Ok(me), Ok(workers)) = (u16::try_from(ctx.id), u16::try_from(ctx.workers)) else {
        let _ = ready.send(Err(IoError::BadWorkerCount {
            workers: ctx.workers,
            max: MAX_WORKERS,
        }));
        return;
    };
    state.flows.set_ownership(me, workers);
    let _ = ready.send(Ok(()));
    run(&ctx, &region, io, state, hist, pinned, handoff);
}

/// The frames of one batch in the worker's hands: each frame's chunk, where its
/// bytes were as received (a handoff copies those), and the pipeline's verdicts.
struct Batch<'r> {
    frames: Vec<Frame<'r>>,
    bases: [u64; RX_BATCH],
    origs: [(usize, usize); RX_BATCH],
    verdicts: [Verdict; RX_BATCH],
}

impl<'r> Batch<'r> {
    fn new() -> Self {
        Batch {
            frames: Vec::with_capacity(RX_BATCH),
            bases: [0; RX_BATCH],
            origs: [(0, 0); RX_BATCH],
            verdicts: [Verdict::Pass; RX_BATCH],
        }
    }

    fn len(&self) -> usize {
        self.frames.len()
    }

    fn push(&mut self, base: u64, frame: Frame<'r>) {
        let k = self.frames.len();
        self.bases[k] = base;
        self.origs[k] = (frame.offset(), frame.len());
        self.frames.push(frame);
    }

    /// Stages 2–7 over the batch, then stage 8 (tx, handoff, or free), and the
    /// batch is empty again.
    fn run(&mut self, w: &mut Poller, region: &UmemRegion, snap: &Snapshot, now: u64) {
        let nb = self.frames.len();
        process_batch(
            &mut self.frames,
            &mut self.verdicts[..nb],
            snap,
            &mut w.state,
            &mut w.counters,
            now,
        );
        dispatch(
            &mut w.io,
            &mut w.counters,
            &self.frames,
            &self.verdicts[..nb],
            &self.bases[..nb],
            &self.origs[..nb],
            &mut w.handoff.tx,
        );
        self.frames.clear();
        if !w.state.frags.extra().is_empty() {
            send_extra(w, region);
        }
    }
}

/// Transmits the frames the pipeline emitted beyond its batch (fragments
/// released or cut): each copied from the pipeline's arena into a chunk of
/// this worker's UMEM and queued on the socket of its interface.
#[cold]
fn send_extra(w: &mut Poller, region: &UmemRegion) {
    let Poller {
        io,
        state,
        counters,
        ..
    } = w;
    state.frags.drain_extra(|ifindex, bytes| {
        let reason = match io.tx_of.get(&ifindex).copied() {
            None => Some(DropReason::NoRoute),
            Some(tid) => match io.pool.alloc() {
                None => Some(DropReason::TxFull),
                Some(base) => {
                    let Io { pool, socks, .. } = &mut *io;
                    // SAFETY: `alloc` just took this chunk off the free list: it
                    // is in our hands only, distinct from every chunk in use.
                    let buf = unsafe { region.chunk(base) };
                    let fits = EXTRA_HEADROOM + bytes.len() <= buf.len();
                    if fits {
                        buf[EXTRA_HEADROOM..EXTRA_HEADROOM + bytes.len()].copy_from_slice(bytes);
                    }
                    let ok = fits
                        && socks
                            .get_mut(usize::from(tid))
                            .and_then(Option::as_mut)
                            .is_some_and(|t| {
                                t.xsk.queue_tx(pool, base, EXTRA_HEADROOM, bytes.len())
                            });
                    if ok {
                        None
                    } else {
                        pool.recycle(base);
                        Some(DropReason::TxFull)
                    }
                }
            },
        };
        match reason {
            None => {
                counters.tx_packets += 1;
                counters.tx_bytes += bytes.len() as u64;
            }
            Some(r) => counters.drop(r),
        }
    });
}

/// Where an extra frame starts in its chunk.
const EXTRA_HEADROOM: usize = 256;

/// What the poll loop owns besides the UMEM region its frames borrow.
struct Poller {
    io: Io,
    state: WorkerState,
    counters: Counters,
    handoff: Handoff,
}

/// Receives up to a batch from every socket and runs each batch; returns how
/// many frames came in.
fn poll_sockets<'r>(
    w: &mut Poller,
    region: &'r UmemRegion,
    batch: &mut Batch<'r>,
    snap: &Snapshot,
    now: u64,
    reserve: usize,
) -> usize {
    let mut received = 0;
    for ai in 0..w.io.active.len() {
        let sid = w.io.active[ai];
        let Io { pool, socks, .. } = &mut w.io;
        let Some(s) = socks.get_mut(usize::from(sid)).and_then(Option::as_mut) else {
            continue;
        };
        s.xsk.reap_completions(pool);
        adapt_fill(s, pool.free_count(), reserve);
        s.xsk.refill(pool);
        let ifindex = s.xsk.ifindex;
        s.xsk.receive(pool, RX_BATCH_U32, |base, off, len| {
            // SAFETY: the chunk was just received: it is in our hands only
            // (not in any ring), and each rx descriptor names a distinct chunk.
            let buf = unsafe { region.chunk(base) };
            batch.push(base, Frame::new(buf, off, len, ifindex));
        });
        let nb = batch.len();
        if nb == 0 {
            continue;
        }
        s.rx_window = s
            .rx_window
            .saturating_add(u32::try_from(nb).unwrap_or(u32::MAX));
        received += nb;
        batch.run(w, region, snap, now);
    }
    received
}

/// Takes the frames other workers handed over (their flows are ours) into
/// chunks of this worker's UMEM and runs them; returns how many came in.
fn poll_handoffs<'r>(
    w: &mut Poller,
    region: &'r UmemRegion,
    batch: &mut Batch<'r>,
    snap: &Snapshot,
    now: u64,
) -> usize {
    let mut received = 0;
    for src in 0..w.handoff.rx.len() {
        while batch.len() < RX_BATCH {
            let Some(base) = w.io.pool.alloc() else {
                break; // no free chunk now: they wait in the ring
            };
            // SAFETY: `alloc` just took this chunk off the free list: it is
            // in our hands only, and distinct from every other chunk in use.
            let buf = unsafe { region.chunk(base) };
            match w.handoff.rx[src].recv(&mut buf[HANDOFF_HEADROOM..]) {
                None => {
                    w.io.pool.recycle(base);
                    break;
                }
                Some((_, 0)) => {
                    w.io.pool.recycle(base);
                    w.counters.drop(DropReason::Malformed);
                }
                Some((ifindex, len)) => {
                    batch.push(
                        base,
                        Frame::new(buf, HANDOFF_HEADROOM, len, ifindex).handed_in(),
                    );
                }
            }
        }
        let nb = batch.len();
        if nb == 0 {
            continue;
        }
        received += nb;
        w.counters.handed_in += nb as u64;
        batch.run(w, region, snap, now);
    }
    received
}

/// The poll loop. Returns when told to stop or when the pool is gone.
fn run(
    ctx: &WorkerCtx,
    region: &UmemRegion,
    io: Io,
    state: WorkerState,
    mut hist: Histogram<u64>,
    core: Option<usize>,
    handoff: Handoff,
) {
    let mut w = Poller {
        io,
        state,
        counters: Counters::default(),
        handoff,
    };
    let mut batch = Batch::new();
    let mut generation = ctx.tables.load().generation;
    let report_every = u64::try_from(ctx.opts.report_interval.as_nanos()).unwrap_or(u64::MAX);
    let mut last_report = 0u64;
    let mut last_xsk = 0u64;
    // Frames the adaptive fill targets leave free for bursts elsewhere.
    let reserve = (region.frames() / 8) as usize;
    let mut xsk = XskDrops::default();
    let mut idle_since = monotonic_ns();
    let total = region.frames();

    'outer: loop {
        // Commands, between batches.
        loop {
            match ctx.cmds.try_recv() {
                Ok(Cmd::Stop) | Err(TryRecvError::Disconnected) => break 'outer,
                Ok(cmd) => handle(ctx, region, &mut w.io, &w.counters, cmd),
                Err(TryRecvError::Empty) => break,
            }
        }
        let snap = ctx.tables.load();
        let now = monotonic_ns();
        let received = poll_sockets(&mut w, region, &mut batch, &snap, now, reserve)
            + poll_handoffs(&mut w, region, &mut batch, &snap, now);
        // One publish per tx ring, then kick while the kernel has unsent frames.
        for ai in 0..w.io.active.len() {
            let sid = w.io.active[ai];
            if let Some(s) = w.io.sock_mut(sid) {
                s.xsk.flush_tx();
            }
        }
        generation = snap.generation;
        drop(snap);
        let end = monotonic_ns();
        if received > 0 {
            hist.saturating_record(end.saturating_sub(now).max(1));
            idle_since = end;
        } else if let Some(d) = ctx.opts.idle_sleep {
            if end.saturating_sub(idle_since) > IDLE_AFTER_NS {
                std::thread::sleep(d);
            }
        } else {
            std::hint::spin_loop();
        }
        if end.saturating_sub(last_report) >= report_every {
            last_report = end;
            debug_assert!(w.io.conserved(total), "UMEM frame accounting broken");
            if end.saturating_sub(last_xsk) >= 1_000_000_000 {
                last_xsk = end;
                xsk = xsk_drops(&w.io);
                shrink_idle_fills(&mut w.io);
            }
            publish(
                ctx,
                &w.io,
                &w.counters,
                &w.state.flows,
                &hist,
                generation,
                core,
                end,
                &xsk,
            );
        }
    }
    let end = monotonic_ns();
    let xsk = xsk_drops(&w.io);
    publish(
        ctx,
        &w.io,
        &w.counters,
        &w.state.flows,
        &hist,
        generation,
        core,
        end,
        &xsk,
    );
    // Close every socket before the UMEM region is unmapped (it outlives `io`).
    for id in w.io.active.clone() {
        if let Some(s) = w.io.socks.get_mut(usize::from(id)).and_then(Option::take) {
            ctx.steering.clear_socket(s.slot);
        }
    }
}

/// Where handed-over frames start in a chunk (room for VXLAN encapsulation).
const HANDOFF_HEADROOM: usize = 256;

/// This worker's ends of the handoff rings, indexed by the other worker's id
/// (`None` at its own index).
#[derive(Default)]
pub(crate) struct Handoff {
    tx: Vec<Option<HandoffTx>>,
    rx: Vec<HandoffRx>,
}

/// Rings between every ordered pair of `n` workers; element i is worker i's.
fn handoff_mesh(n: usize) -> Vec<Handoff> {
    let mut mesh: Vec<Handoff> = (0..n)
        .map(|_| Handoff {
            tx: (0..n).map(|_| None).collect(),
            rx: Vec::new(),
        })
        .collect();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (tx, rx) = handoff::channel(handoff::RING_BYTES);
                mesh[from].tx[to] = Some(tx);
                mesh[to].rx.push(rx);
            }
        }
    }
    mesh
}

/// Acts on a processed batch's verdicts: transmit on the destination
/// interface's socket (same UMEM, no copy), hand to the flow's owner (one
/// copy into the ring), or free the frame. The pipeline counted each verdict;
/// this counts what became of a forwarded frame (transmitted, or dropped here)
/// and a handoff that found the ring full.
#[allow(clippy::too_many_arguments)]
fn dispatch(
    io: &mut Io,
    counters: &mut Counters,
    frames: &[Frame<'_>],
    verdicts: &[Verdict],
    bases: &[u64],
    origs: &[(usize, usize)],
    handoff_tx: &mut [Option<HandoffTx>],
) {
    for k in 0..verdicts.len() {
        let base = bases[k];
        let out = match verdicts[k] {
            Verdict::Tx { ifindex } => ifindex,
            Verdict::Handoff { worker } => {
                // The frame as received: the pipeline has not changed its bytes.
                let (off, len) = origs[k];
                let data = frames[k].buffer().get(off..off + len).unwrap_or(&[]);
                let sent = handoff_tx
                    .get_mut(usize::from(worker))
                    .and_then(Option::as_mut)
                    .is_some_and(|t| t.send(frames[k].ifindex, data));
                if !sent {
                    counters.drop(DropReason::HandoffFull);
                }
                io.pool.recycle(base);
                continue;
            }
            Verdict::Pass | Verdict::Drop(_) | Verdict::Held => {
                io.pool.recycle(base);
                continue;
            }
        };
        let (off, len) = (frames[k].offset(), frames[k].len());
        let reason = match io.tx_of.get(&out).copied() {
            // The kernel drops an empty descriptor without completing
            // it, which would leak the frame.
            _ if len == 0 => Some(DropReason::Malformed),
            None => Some(DropReason::NoRoute),
            Some(tid) => {
                let Io { pool, socks, .. } = &mut *io;
                match socks.get_mut(usize::from(tid)).and_then(Option::as_mut) {
                    Some(t) => {
                        if t.xsk.queue_tx(pool, base, off, len) {
                            None
                        } else {
                            Some(DropReason::TxFull)
                        }
                    }
                    None => Some(DropReason::NoRoute),
                }
            }
        };
        match reason {
            None => {
                counters.tx_packets += 1;
                counters.tx_bytes += len as u64;
            }
            Some(r) => {
                counters.drop(r);
                io.pool.recycle(base);
            }
        }
    }
}

fn handle(ctx: &WorkerCtx, region: &UmemRegion, io: &mut Io, counters: &Counters, cmd: Cmd) {
    match cmd {
        Cmd::AddQueue { spec, reply } => {
            let r = io.add_queue(region, &ctx.steering, &spec);
            let _ = reply.send(r);
        }
        Cmd::RemoveInterface { ifindex, reply } => {
            io.remove_interface(&ctx.steering, ifindex);
            let _ = reply.send(());
        }
        Cmd::Account { reply } => {
            let (frames, sockets) = io.account();
            let _ = reply.send(WorkerAccount {
                worker: ctx.id,
                frames,
                sockets,
                counters: counters.clone(),
            });
        }
        Cmd::Stop => {}
    }
}

#[allow(clippy::too_many_arguments)]
fn publish(
    ctx: &WorkerCtx,
    io: &Io,
    counters: &Counters,
    flows: &FlowTable,
    hist: &Histogram<u64>,
    generation: u64,
    core: Option<usize>,
    now: u64,
    xsk: &XskDrops,
) {
    let queues = io
        .active
        .iter()
        .filter_map(|&id| io.sock(id))
        .map(|s| s.label.clone())
        .collect();
    let batch_latency = if hist.is_empty() {
        LatencySummary::default()
    } else {
        LatencySummary {
            samples: hist.len(),
            p50_ns: hist.value_at_quantile(0.5),
            p99_ns: hist.value_at_quantile(0.99),
            p999_ns: hist.value_at_quantile(0.999),
            max_ns: hist.max(),
        }
    };
    ctx.report.store(Arc::new(WorkerReport {
        id: ctx.id,
        core,
        queues,
        counters: counters.clone(),
        generation,
        flow_entries: flows.len() as u64,
        flow_capacity: flows.capacity() as u64,
        batch_latency,
        xsk: xsk.clone(),
        updated_ns: now,
    }));
}

/// Adaptive fill: a socket whose fill ring the kernel nearly emptied since the
/// last refill (a burst, or this worker was off its core) gets twice the fill
/// target, up to the ring, while the UMEM keeps `reserve` frames free.
#[inline]
fn adapt_fill(s: &mut Sock, free: usize, reserve: usize) {
    let t = s.xsk.fill_target;
    if t < s.xsk.fill_capacity() && s.xsk.fill_level() < t / 4 && free > reserve + t as usize {
        s.xsk.fill_target = (t * 2).min(s.xsk.fill_capacity());
    }
}

/// Seconds a socket must stay quiet before its fill target shrinks.
const FILL_SHRINK_AFTER_S: u8 = 10;

/// Once a second: a socket that has received less than its fill target per
/// second for `FILL_SHRINK_AFTER_S` seconds goes back towards its initial
/// target (frames above the target are used up by traffic, not taken back).
fn shrink_idle_fills(io: &mut Io) {
    for i in 0..io.active.len() {
        let id = io.active[i];
        if let Some(s) = io.sock_mut(id) {
            let t = s.xsk.fill_target;
            if s.rx_window < t {
                s.quiet_secs = s.quiet_secs.saturating_add(1);
            } else {
                s.quiet_secs = 0;
            }
            if t > s.base_fill && s.quiet_secs >= FILL_SHRINK_AFTER_S {
                s.xsk.fill_target = (t / 2).max(s.base_fill);
                s.quiet_secs = 0;
            }
            s.rx_window = 0;
        }
    }
}

/// The kernel's drop counters of every socket the worker has now.
fn xsk_drops(io: &Io) -> XskDrops {
    let mut d = XskDrops::default();
    for &id in &io.active {
        if let Some(s) = io.sock(id) {
            let k = s.xsk.stats();
            d.rx_dropped += k.rx_dropped;
            d.rx_ring_full += k.rx_ring_full;
            d.fill_ring_empty += k.rx_fill_ring_empty_descs;
            d.tx_invalid += k.tx_invalid_descs;
        }
    }
    d
}
