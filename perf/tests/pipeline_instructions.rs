//! `nodeplane-perf pipeline --instructions --baseline` end to end: the binary
//! runs itself under callgrind and reports a plausible instruction count per
//! packet, and an in-run baseline. Needs valgrind (installed by scripts/test).

use std::process::Command;

/// `nodeplane-perf pipeline ARGS --json` with callgrind runs of `callgrind`
/// packets; its JSON result (the run must succeed).
fn pipeline(args: &[&str], callgrind: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_nodeplane-perf"))
        .arg("pipeline")
        .args(args)
        .arg("--json")
        .env("NODEPLANE_CALLGRIND_PACKETS", callgrind)
        .output()
        .expect("run nodeplane-perf");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn instruction_count_and_baseline_are_reported() {
    let v = pipeline(
        &[
            "--flows",
            "200",
            "--services",
            "3",
            "--packets",
            "20000",
            "--seconds",
            "30",
            "--core",
            "0",
            "--instructions",
            "--baseline",
        ],
        "8192",
    );
    let ipp = v["instructions_per_packet"]
        .as_f64()
        .expect("instructions_per_packet");
    // A packet through decap, conntrack, rewrite and route is hundreds of
    // instructions (a debug build: thousands), never a handful or millions.
    assert!(
        (100.0..100_000.0).contains(&ipp),
        "{ipp} instructions/packet"
    );
    let base = v["baseline_ns_per_packet"].as_f64().expect("baseline");
    let ratio = v["ratio_to_baseline"].as_f64().expect("ratio");
    assert!(base > 0.0 && ratio > 0.0);
    let ns = v["ns_per_packet"].as_f64().unwrap();
    assert!((ns / base - ratio).abs() < 1e-9);
}

/// With the same seed, the same binary and input, the count repeats: the set
/// layout is the same, and so is every probe.
#[test]
fn instruction_count_repeats_for_one_seed() {
    let count = || {
        pipeline(
            &[
                "--flows",
                "200",
                "--services",
                "3",
                "--packets",
                "2000",
                "--core",
                "0",
                "--seed",
                "7",
                "--instructions",
            ],
            "4096",
        )["instructions_per_packet"]
            .as_f64()
            .expect("instructions_per_packet")
    };
    let (a, b) = (count(), count());
    assert!(a > 100.0, "{a} instructions/packet");
    assert!(
        (a - b).abs() <= a * 0.001,
        "{a} then {b} instructions/packet"
    );
}
