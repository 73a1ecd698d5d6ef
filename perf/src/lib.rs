//! nodeplane-perf: measurement tools. `pipeline_bench` is the in-memory pipeline
//! micro-benchmark (no I/O, one core); `gen` is the AF_XDP traffic generator
//! (frames from `traffic`), `sink` the receiver that measures loss, reordering
//! and latency.

pub mod dns_bench;
pub mod gen;
pub mod kernel_path;
pub mod pipeline_bench;
pub mod report;
pub mod sink;
pub mod suite;
pub mod traffic;
