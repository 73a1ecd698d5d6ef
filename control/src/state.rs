//! What the agent's parts share: the published tables, each worker's report
//! slot, and the status of each source of Kubernetes objects. Sources and the
//! publisher write it; the status endpoint reads it. Never touched per packet.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use dataplane::report::ReportSlot;
use prometheus_client::metrics::histogram::Histogram;
use shared::Snapshot;

/// One source of Kubernetes objects (a manifest directory, an API server watch).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SourceStatus {
    /// e.g. "manifests:/etc/nodeplane/manifests" or "apiserver:services".
    pub name: String,
    /// Objects currently held from this source.
    pub objects: usize,
    /// Wall-clock time of the last complete sync (RFC 3339), if any.
    pub last_sync: Option<String>,
    /// The last error, cleared by the next good sync.
    pub last_error: Option<String>,
    /// Errors since start.
    pub errors: u64,
    /// The API server's last refusal of this identity (HTTP 403: a
    /// permission the ClusterRole lacks), while recent (`forbidden_at`).
    pub forbidden: Option<String>,
    #[serde(skip)]
    pub forbidden_at: Option<SystemTime>,
}

/// A published generation.
#[derive(Clone, Debug, Default)]
pub struct PublishInfo {
    pub generation: u64,
    pub at: Option<SystemTime>,
    /// Time to reduce + build the snapshot, in microseconds.
    pub build_us: u64,
    /// Object change seen → every worker on the new generation, in microseconds
    /// (filled in once the workers report it).
    pub programming_latency_us: Option<u64>,
}

/// An interface the dataplane is attached to.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    /// "uplink" or "pod".
    pub role: String,
    /// XDP attach mode ("native"/"generic") or an error text.
    pub xdp_mode: String,
    pub queues: u32,
}

/// Shared agent state. Cheap to clone (all behind `Arc`).
#[derive(Clone)]
pub struct AgentState {
    pub node_name: String,
    /// The tables the workers run on.
    pub tables: Arc<ArcSwap<Snapshot>>,
    /// One report slot per worker (set once at start).
    pub workers: Arc<Mutex<Vec<ReportSlot>>>,
    pub sources: Arc<Mutex<Vec<SourceStatus>>>,
    pub interfaces: Arc<Mutex<Vec<InterfaceStatus>>>,
    pub last_publish: Arc<Mutex<PublishInfo>>,
    /// Set once the first full sync of every source has been published.
    pub first_sync: Arc<AtomicBool>,
    /// When a change was seen that is not yet on every worker (for /healthz).
    pub pending_since: Arc<Mutex<Option<Instant>>>,
    /// Wall-clock time the agent started.
    pub started: SystemTime,
    /// The XDP steering program's decision counters by name (refreshed by the
    /// agent every 100 ms; empty when no program is loaded).
    pub steering: Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
    /// Network programming duration as kube-proxy measures it: from an
    /// EndpointSlice's `endpoints.kubernetes.io/last-change-trigger-time` (the
    /// change in the API) to every worker on tables that include it, in
    /// seconds, with kube-proxy's buckets (`Histogram` is shared, not copied,
    /// by `clone`).
    pub programming_duration: Histogram,
}

/// kube-proxy's buckets for `network_programming_duration_seconds`: 0.25 and
/// 0.5 s, 1–59 s by 1, 60–115 s by 5, 120–300 s by 30.
pub fn programming_buckets() -> impl Iterator<Item = f64> {
    [0.25, 0.5]
        .into_iter()
        .chain((1..60).map(f64::from))
        .chain((0..12).map(|i| f64::from(60 + 5 * i)))
        .chain((0..7).map(|i| f64::from(120 + 30 * i)))
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AgentState {
    pub fn new(node_name: &str) -> Self {
        AgentState {
            node_name: node_name.to_string(),
            tables: Arc::new(ArcSwap::from_pointee(Snapshot::empty())),
            workers: Arc::default(),
            sources: Arc::default(),
            interfaces: Arc::default(),
            last_publish: Arc::default(),
            first_sync: Arc::new(AtomicBool::new(false)),
            pending_since: Arc::default(),
            started: SystemTime::now(),
            steering: Arc::default(),
            programming_duration: Histogram::new(programming_buckets()),
        }
    }

    pub fn first_sync_done(&self) -> bool {
        self.first_sync.load(Ordering::Acquire)
    }

    /// Records a source's status, replacing the entry with the same name.
    pub fn set_source(&self, s: SourceStatus) {
        let mut v = lock(&self.sources);
        match v.iter_mut().find(|x| x.name == s.name) {
            Some(x) => *x = s,
            None => v.push(s),
        }
    }

    /// The lowest generation any worker reports (what every worker is on).
    pub fn min_worker_generation(&self) -> Option<u64> {
        lock(&self.workers)
            .iter()
            .map(|w| w.load().generation)
            .min()
    }
}
