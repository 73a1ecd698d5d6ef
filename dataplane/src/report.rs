//! What a worker publishes about itself for `/status` and `/metrics`: a copy of
//! its counters and gauges, refreshed every few milliseconds off the per-packet
//! path. The status endpoint only reads these.

use std::sync::Arc;

use arc_swap::ArcSwap;
use shared::Counters;

/// A latency summary of batch processing time, in nanoseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

/// Frames the kernel dropped at this worker's AF_XDP sockets (summed over
/// the sockets it has now; refreshed about once a second). These never reach
/// the pipeline, so they are not in `Counters`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct XskDrops {
    /// No room in the rx ring or no frame in the fill ring.
    pub rx_dropped: u64,
    pub rx_ring_full: u64,
    pub fill_ring_empty: u64,
    pub tx_invalid: u64,
}

/// One worker's published state.
#[derive(Clone, Debug, Default)]
pub struct WorkerReport {
    pub id: usize,
    /// The core it is pinned to, if pinning succeeded.
    pub core: Option<usize>,
    /// "ifname/queue" of every queue it polls.
    pub queues: Vec<String>,
    pub counters: Counters,
    /// The table generation its last batch ran on.
    pub generation: u64,
    pub flow_entries: u64,
    pub flow_capacity: u64,
    pub batch_latency: LatencySummary,
    pub xsk: XskDrops,
    /// Monotonic nanoseconds when this report was written.
    pub updated_ns: u64,
}

/// Where a worker publishes its report; cloned into the status endpoint.
pub type ReportSlot = Arc<ArcSwap<WorkerReport>>;

/// A fresh slot for worker `id`.
pub fn new_slot(id: usize) -> ReportSlot {
    Arc::new(ArcSwap::from_pointee(WorkerReport {
        id,
        ..WorkerReport::default()
    }))
}
