//! nodeplane-control: everything off the per-packet path. Nothing in this crate
//! runs per packet or touches a frame.
//!
//! - `store`: the Kubernetes objects seen so far, per source.
//! - `reducer`: objects + node-local facts → `TableSpec` (one reducer for every source).
//! - `manifests`: the manifest-directory source (the embedded default).
//! - `apiserver`: the kube-rs watcher source.
//! - `publish`: builds snapshots and swaps them in with a generation number.
//! - `state`: what the agent's parts share (published tables, worker reports, source status).
//! - `status`: the HTTP status endpoint (`/healthz`, `/livez`, `/readyz`, `/status`, `/metrics`)
//!   and the `nodeplane status` printer.
//! - `cni` / `podstate`: the CNI plugin and the pod registrations it leaves for the agent.
//! - `config` / `agent`: the `nodeplane run` settings and the wiring of all parts.

pub mod agent;
pub mod apiserver;
pub mod cleanup;
pub mod cni;
pub mod config;
pub mod endpoints;
pub mod hostif;
pub mod manifests;
pub mod podstate;
pub mod publish;
pub mod reducer;
pub mod serviceenv;
pub mod state;
pub mod status;
pub mod store;
