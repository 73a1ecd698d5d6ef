//! nodeplane-shared: what the dataplane and the control plane both use.
//!
//! Owns: packet views (`wire`), addressing helpers (`net`), the immutable table
//! snapshot the control thread publishes (`snapshot`), Maglev tables (`maglev`),
//! huge-page memory for large tables (`mem`), drop reasons and per-worker
//! counters (`counters`), the cluster DNS name table (`dns`). It does no I/O and holds no
//! threads; nothing here may allocate on a per-packet path.

#![deny(clippy::cast_possible_truncation)]

pub mod counters;
pub mod dns;
pub mod maglev;
pub mod mem;
pub mod net;
pub mod snapshot;
pub mod wire;

pub use counters::{Counters, DropReason};
pub use net::{Ipv4Cidr, L4Proto, Mac};
pub use snapshot::Snapshot;
