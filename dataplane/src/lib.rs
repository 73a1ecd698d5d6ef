//! nodeplane-dataplane: the data path.
//!
//! - `pipeline`: the per-packet stages as pure functions over a batch, an
//!   immutable `Snapshot` and the worker's `FlowTable` (no I/O, no locks).
//! - `flow`: the per-worker connection-tracking and NAT table.
//! - `frag`: the per-worker table of IP fragments (and its arena of frames the
//!   pipeline emits beyond its batch).
//! - `state`: the pipeline's per-worker state: the flow table, the fragment
//!   table, the ICMP rate limiter.
//! - `frame`: the frame handle the pipeline works on and the verdicts it returns.
//! - `report`: what a worker publishes for the status endpoint.
//! - `io`: the thin I/O adapter around the pipeline (the XDP steering program,
//!   AF_XDP sockets, worker handoff rings, pinned poll-mode threads, interface
//!   facts).
//!
//! Nothing here knows Kubernetes, HTTP or configuration files.

#![deny(clippy::cast_possible_truncation)]

pub mod flow;
pub mod frag;
pub mod frame;
pub mod io;
pub mod pipeline;
pub mod report;
pub mod state;

pub use frame::{Frame, Verdict};
pub use pipeline::process_batch;
pub use state::WorkerState;
