//! Connection tracking and NAT state, one table per worker: what a flow is
//! (`key`), how its TCP state and timeouts advance (`tcp`), the set-associative
//! table that holds both directions of every flow (`table`), which worker owns a
//! flow (`owner`) and ClientIP affinity (`affinity`). Owned by one worker, never
//! shared: no locks, no atomics. This module never reads packet bytes or the
//! snapshot; the pipeline's conntrack and nat stages call it.

mod affinity;
mod key;
mod owner;
mod table;
mod tcp;

pub use affinity::AffinityTable;
pub use key::{ChecksumDeltas, FlowKey, Rewrite};
pub use owner::{client_owner, port_owner};
pub use table::{generation_low, FlowMeta, FlowStats, FlowTable, Hit, InsertError, NO_SLOT, WAYS};
pub use tcp::{tcp_flags, FlowState, Timeouts};
