//! The I/O adapter around the pipeline: the XDP steering program (`steering`),
//! AF_XDP sockets and UMEM accounting (`afxdp`), pinned poll-mode workers and the
//! pool the agent drives (`worker`), and interface facts (`netif`). The pipeline
//! itself never sees any of this; it gets `Frame`s and returns `Verdict`s.
//!
//! Workers and queues: queue q of every interface belongs to worker q mod N;
//! every flow has one owning worker, and frames that land on another worker are
//! handed to the owner (`handoff`, see `docs/architecture.md`). The pipeline
//! never sees any of this, and this module never decides what a packet means.

pub mod afxdp;
pub mod handoff;
pub mod netif;
pub mod steering;
pub mod worker;

pub use afxdp::{FrameAccount, XskError};
pub use netif::{Interface, NetifError};
pub use steering::{
    InterfaceRole, Steering, SteeringError, SteeringParams, SteeringStats, XdpMode,
};
pub use worker::{AttachedInterface, IoOptions, PoolConfig, SocketInfo, WorkerAccount, WorkerPool};

use std::time::Duration;

/// Errors of the I/O adapter.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error(transparent)]
    Steering(#[from] SteeringError),
    #[error(transparent)]
    Xsk(#[from] XskError),
    #[error(transparent)]
    Netif(#[from] NetifError),
    #[error("--workers {workers}: must be between 1 and {max}")]
    BadWorkerCount { workers: usize, max: usize },
    #[error("interface '{name}' has ifindex {actual}, not {given}")]
    IfindexMismatch {
        name: String,
        given: u32,
        actual: u32,
    },
    #[error("interface '{name}': MTU {mtu} does not fit an AF_XDP frame (max {max})")]
    MtuTooLarge { name: String, mtu: u32, max: u32 },
    #[error("interface '{name}' has {queues} rx queues; at most {max} are supported (ethtool -L)")]
    TooManyQueues { name: String, queues: u32, max: u32 },
    #[error(
        "interface '{name}' has {queues} rx queue(s) but {workers} workers need at least \
         {workers} (give it more queues, or run one worker)"
    )]
    TooFewQueues {
        name: String,
        queues: u32,
        workers: u32,
    },
    #[error("worker {0} is not running")]
    WorkerGone(usize),
    #[error("worker {0} did not answer within {1:?}")]
    Timeout(usize, Duration),
    #[error("starting a worker thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("latency histogram: {0}")]
    Histogram(String),
    #[error("the worker pool is stopped")]
    Stopped,
}

impl IoError {
    /// The queue is still bound (a socket closed moments ago is released by the
    /// kernel asynchronously); retrying shortly succeeds.
    pub fn is_busy(&self) -> bool {
        matches!(self, IoError::Xsk(XskError::Os { source, .. }) if source.raw_os_error() == Some(libc::EBUSY))
    }
}
