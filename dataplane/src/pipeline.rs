//! (being written) the pipeline
use crate::flow::FlowTable;
use crate::frame::{Frame, Verdict};
use shared::{Counters, Snapshot};

/// Runs every stage over a batch; `verdicts[i]` is set for `frames[i]`.
pub fn process_batch(
    frames: &mut [Frame<'_>],
    verdicts: &mut [Verdict],
    snap: &Snapshot,
    flows: &mut FlowTable,
    counters: &mut Counters,
    now_ns: u64,
) {
    let _ = (frames, verdicts, snap, flows, counters, now_ns);
}
