//! Root tests of the traffic tools: `nodeplane-perf gen` (AF_XDP) sends probes
//! through a veth pair between two namespaces of its own, `nodeplane-perf sink`
//! receives them: every probe arrives, in order, with a latency. Plain UDP, and
//! VXLAN decapsulated by a kernel `vxlan` device configured as flannel does (so
//! the generator's VXLAN frames are what a flannel node accepts). Namespaces are
//! prefixed per run and removed on drop; every run is bounded.

use std::process::{Command, Stdio};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Pair {
    a: String,
    b: String,
}

impl Pair {
    /// ns a (198.18.251.1) ⇄ ns b (198.18.251.2) over a veth pair.
    fn new(tag: &str) -> Pair {
        let p = format!("pg{tag}{}", std::process::id() % 100000);
        let pair = Pair {
            a: format!("{p}a"),
            b: format!("{p}b"),
        };
        sh(&["ip", "netns", "add", &pair.a]);
        sh(&["ip", "netns", "add", &pair.b]);
        let (x, y) = (format!("{p}x"), format!("{p}y"));
        sh(&["ip", "link", "add", &x, "type", "veth", "peer", "name", &y]);
        sh(&["ip", "link", "set", &x, "netns", &pair.a, "name", "eth0"]);
        sh(&["ip", "link", "set", &y, "netns", &pair.b, "name", "eth0"]);
        for (ns, ip) in [(&pair.a, "198.18.251.1/24"), (&pair.b, "198.18.251.2/24")] {
            sh(&["ip", "-n", ns, "addr", "add", ip, "dev", "eth0"]);
            sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    fn mac(&self, ns: &str, dev: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "cat"])
            .arg(format!("/sys/class/net/{dev}/address"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn perf_bin() -> &'static str {
    env!("CARGO_BIN_EXE_nodeplane-perf")
}

/// Runs the sink in `ns` and the generator in `gen_ns`; returns both reports.
fn run(
    pair: &Pair,
    sink_args: &[&str],
    gen_args: &[String],
) -> (serde_json::Value, serde_json::Value) {
    let mut sink = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.b,
            perf_bin(),
            "sink",
            "--json",
            "--seconds",
            "15",
            "--idle",
            "1",
            "--announce",
        ])
        .args(sink_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sink");
    // Wait for "ready" on stderr (bounded by the sink's own --seconds).
    {
        use std::io::BufRead;
        let mut err = std::io::BufReader::new(sink.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "sink did not start: {line}");
    }
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.a,
            perf_bin(),
            "gen",
            "--json",
            "--seconds",
            "10",
        ])
        .args(gen_args)
        .output()
        .expect("gen");
    assert!(
        out.status.success(),
        "gen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g: serde_json::Value = serde_json::from_slice(&out.stdout).expect("gen JSON");
    let s = sink.wait_with_output().expect("sink ends");
    assert!(s.status.success(), "sink failed");
    let s: serde_json::Value = serde_json::from_slice(&s.stdout).expect("sink JSON");
    (g, s)
}

#[test]
fn udp_probes_all_arrive_in_order_with_latency() {
    if !is_root() {
        eprintln!("skipping: needs root (namespaces, AF_XDP)");
        return;
    }
    let pair = Pair::new("u");
    let dst_mac = pair.mac(&pair.b, "eth0");
    let args: Vec<String> = [
        "--iface",
        "eth0",
        "--dst-mac",
        &dst_mac,
        "--src",
        "198.18.251.1",
        "--dst",
        "198.18.251.2",
        "--dport",
        "5353",
        "--flows",
        "32",
        "--rate",
        "50000",
        "--packets",
        "20000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (g, s) = run(&pair, &["--port", "5353", "--expect", "20000"], &args);
    assert_eq!(g["sent"], 20000, "{g}");
    let rate = g["offered_pps"].as_f64().unwrap();
    assert!((40_000.0..60_000.0).contains(&rate), "rate held: {g}");
    assert_eq!(s["received"], 20000, "{s}");
    assert_eq!(s["lost"], 0);
    assert_eq!(s["reordered"], 0);
    assert_eq!(s["duplicates"], 0);
    assert_eq!(s["latency_samples"], 20000);
    assert!(s["latency_us_p50"].as_f64().unwrap() > 0.0);
}

#[test]
fn vxlan_frames_are_decapsulated_by_a_flannel_style_vxlan_device() {
    if !is_root() {
        eprintln!("skipping: needs root (namespaces, AF_XDP)");
        return;
    }
    let pair = Pair::new("v");
    // ns b is a flannel node: flannel.1 (VNI 1, port 8472) with a pod address.
    sh(&[
        "ip",
        "-n",
        &pair.b,
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "dstport",
        "8472",
        "local",
        "198.18.251.2",
        "dev",
        "eth0",
        "nolearning",
    ]);
    sh(&[
        "ip",
        "-n",
        &pair.b,
        "addr",
        "add",
        "198.19.9.1/32",
        "dev",
        "flannel.1",
    ]);
    sh(&["ip", "-n", &pair.b, "link", "set", "flannel.1", "up"]);
    // Route back to the "remote pod" so nothing complains (replies are not sent).
    sh(&[
        "ip",
        "-n",
        &pair.b,
        "route",
        "add",
        "198.19.8.0/24",
        "dev",
        "flannel.1",
    ]);
    let vtep = pair.mac(&pair.b, "flannel.1");
    let dst_mac = pair.mac(&pair.b, "eth0");
    let args: Vec<String> = [
        "--iface",
        "eth0",
        "--kind",
        "vxlan",
        "--dst-mac",
        &dst_mac,
        "--outer-src",
        "198.18.251.1",
        "--outer-dst",
        "198.18.251.2",
        "--inner-src-mac",
        "02:00:00:00:08:01",
        "--inner-dst-mac",
        &vtep,
        "--src",
        "198.19.8.10",
        "--dst",
        "198.19.9.1",
        "--dport",
        "5353",
        "--rate",
        "20000",
        "--packets",
        "5000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // rp_filter would drop inner sources it has no route for on flannel.1.
    sh(&[
        "ip",
        "netns",
        "exec",
        &pair.b,
        "sysctl",
        "-qw",
        "net.ipv4.conf.all.rp_filter=0",
    ]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &pair.b,
        "sysctl",
        "-qw",
        "net.ipv4.conf.flannel/1.rp_filter=0",
    ]);
    let (g, s) = run(&pair, &["--port", "5353", "--expect", "5000"], &args);
    assert_eq!(g["sent"], 5000, "{g}");
    assert_eq!(
        g["frame_bytes"], 114,
        "50 bytes of VXLAN around a 64-byte frame"
    );
    assert_eq!(
        s["received"], 5000,
        "the kernel decapsulated every frame: {s}"
    );
    assert_eq!(s["lost"], 0);
    assert_eq!(s["reordered"], 0);
}
