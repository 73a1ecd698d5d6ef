//! nodeplane-perf: measurement tools. `pipeline_bench` is the in-memory pipeline
//! micro-benchmark (no I/O, one core); the traffic generator and sink live in
//! their own modules.

pub mod pipeline_bench;
