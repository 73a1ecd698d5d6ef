//! Fuzz target: arbitrary bytes, split into up to 64 frames on 0xff 0xfe
//! separators, go through the pipeline on a lab-like snapshot (the uplink,
//! two pods and the host interface in turn). Each frame must
//! end in a verdict, the counters must add up, and transmitted frames must fit
//! their buffer. Run with `cargo fuzz run pipeline` (see fuzz/README.md).
#![no_main]

use dataplane::{process_batch, Frame, Verdict, WorkerState};
use libfuzzer_sys::fuzz_target;
use nodeplane_fuzz::snapshot;
use shared::Counters;

fuzz_target!(|data: &[u8]| {
    let snap = snapshot();
    let mut flows = WorkerState::new(1024);
    let mut counters = Counters::default();
    let pieces: Vec<&[u8]> = data.split(|&b| b == 0xff).take(64).collect();
    let mut bufs: Vec<Vec<u8>> = pieces
        .iter()
        .map(|p| {
            let mut v = vec![0u8; 2048];
            let n = p.len().min(2048 - 128);
            v[128..128 + n].copy_from_slice(&p[..n]);
            v
        })
        .collect();
    let mut frames: Vec<Frame<'_>> = bufs
        .iter_mut()
        .zip(&pieces)
        .enumerate()
        .map(|(i, (b, p))| Frame::new(b, 128, p.len(), [2, 10, 11, 30][i % 4]))
        .collect();
    let sentinel = Verdict::Tx { ifindex: u32::MAX };
    let mut verdicts = vec![sentinel; frames.len()];
    // Twice, so the second pass exercises conntrack hits on the flows the first made.
    for now in [1_000_000_000u64, 2_000_000_000] {
        verdicts.iter_mut().for_each(|v| *v = sentinel);
        process_batch(&mut frames, &mut verdicts, snap, &mut flows, &mut counters, now);
        assert!(!verdicts.contains(&sentinel));
    }
    // One fate per frame; a held fragment's is released, dropped later or still waiting.
    assert_eq!(
        counters.rx_packets,
        counters.forwarded + counters.handed_off + counters.passed + counters.total_drops() + counters.fragments_released + flows.frags.slots_in_use() as u64
    );
});
