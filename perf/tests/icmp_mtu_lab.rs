//! Root lab tests of ICMP errors, path MTU and IPv4 fragments through Service
//! NAT and the overlay (issue 14), against real stacks, each case run twice:
//! through nodeplane (agents on node-a and node-b) and through the kernel
//! reference path (every node a kernel node with the nftables rules kube-proxy
//! would write for the same manifests, `perf::kernel_path`), so a difference is
//! nodeplane's. The cases, all from pod a2 on node-a:
//! - 4,000-byte UDP datagrams (fragmented by a2's kernel, and the echoes by the
//!   backend's) through a ClusterIP to a backend on node-b and on the kernel node;
//! - a connected UDP socket gets ECONNREFUSED from a ClusterIP whose backend's
//!   port is closed (the backend's port unreachable, translated back);
//! - a TCP bulk transfer through a ClusterIP to a backend behind a 1,300-byte
//!   MTU hop completes, and a2's kernel learned the path MTU for the ClusterIP;
//! - a traceroute-style probe (UDP, TTL 1 and 2) through a ClusterIP to a
//!   backend on node-b gets time exceeded at each hop (nodeplane: from node-a,
//!   then node-b; kube-proxy: from the ClusterIP, which Linux's NAT writes).
//!
//! Through nodeplane only, what the XDP program must steer to the node's own IP
//! by memory or by the quoted packet: 4,000-byte datagrams from the external
//! client to a UDP NodePort, and a port unreachable from the external client
//! about a pod's masqueraded flow.
//!
//! Each test has its own lab prefix and removes the lab on drop; every wait is
//! bounded.

#[path = "../../control/tests/lab_support/mod.rs"]
mod lab_support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use lab_support::{eventually, in_netns, repo, Lab};

const BIG_B: Ipv4Addr = Ipv4Addr::new(198, 18, 96, 20);
const BIG_K: Ipv4Addr = Ipv4Addr::new(198, 18, 96, 21);
const CLOSED_B: Ipv4Addr = Ipv4Addr::new(198, 18, 96, 22);
const BULK_K: Ipv4Addr = Ipv4Addr::new(198, 18, 96, 23);
const BIG_NP: Ipv4Addr = Ipv4Addr::new(198, 18, 96, 24);
const BIG_NODEPORT: u16 = 30553;

/// One Service of these tests, next to configs/demo's, with its one backend.
struct TestService {
    name: &'static str,
    ip: Ipv4Addr,
    port_name: &'static str,
    proto: &'static str,
    port: u16,
    target: u16,
    node_port: Option<u16>,
    pod: &'static str,
    node: &'static str,
}

const SERVICES: [TestService; 5] = [
    TestService {
        name: "big-b",
        ip: BIG_B,
        port_name: "dns",
        proto: "UDP",
        port: 53,
        target: 5353,
        node_port: None,
        pod: "b1",
        node: "node-b",
    },
    TestService {
        name: "big-k",
        ip: BIG_K,
        port_name: "dns",
        proto: "UDP",
        port: 53,
        target: 5353,
        node_port: None,
        pod: "k1",
        node: "node-k",
    },
    TestService {
        name: "closed-b",
        ip: CLOSED_B,
        port_name: "discard",
        proto: "UDP",
        port: 9,
        target: 9999,
        node_port: None,
        pod: "b1",
        node: "node-b",
    },
    TestService {
        name: "bulk-k",
        ip: BULK_K,
        port_name: "http",
        proto: "TCP",
        port: 80,
        target: 8080,
        node_port: None,
        pod: "k1",
        node: "node-k",
    },
    TestService {
        name: "big-np",
        ip: BIG_NP,
        port_name: "dns",
        proto: "UDP",
        port: 53,
        target: 5353,
        node_port: Some(BIG_NODEPORT),
        pod: "b1",
        node: "node-b",
    },
];

impl TestService {
    /// The Service and its EndpointSlice (`ip`: the backend pod's address).
    fn manifests(&self, ip: Ipv4Addr) -> String {
        let TestService {
            name,
            ip: cluster_ip,
            port_name,
            proto,
            port,
            target,
            node_port,
            pod,
            node,
        } = self;
        let (kind, np) = match node_port {
            Some(n) => ("NodePort", format!(", nodePort: {n}")),
            None => ("ClusterIP", String::new()),
        };
        format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  type: {kind}
  clusterIP: {cluster_ip}
  clusterIPs: [{cluster_ip}]
  ports: [{{name: {port_name}, protocol: {proto}, port: {port}, targetPort: {target}{np}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: {port_name}, protocol: {proto}, port: {target}}}]
endpoints:
  - addresses: ["{ip}"]
    conditions: {{ready: true, serving: true, terminating: false}}
    nodeName: {node}
    targetRef: {{kind: Pod, namespace: default, name: {pod}}}
"#
        )
    }
}

/// configs/demo plus this test's Services, in the lab's directory.
fn write_manifests(lab: &Lab) -> PathBuf {
    let dir = PathBuf::from(lab.var("NP_LAB_DIR")).join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(repo().join("configs/demo")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let docs: Vec<String> = SERVICES
        .iter()
        .map(|svc| svc.manifests(lab.ip(svc.pod)))
        .collect();
    std::fs::write(dir.join("icmp-services.yaml"), docs.join("---")).unwrap();
    dir
}

/// The dataplane under test.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Dataplane {
    Nodeplane,
    Kernel,
}

/// A lab for `path` serving the test's manifests; `None` when not root.
fn lab_for(path: Dataplane, tag: &str) -> Option<Lab> {
    let mut lab = match path {
        Dataplane::Nodeplane => Lab::up(tag)?,
        Dataplane::Kernel => Lab::up_kernel(tag)?,
    };
    let dir = write_manifests(&lab);
    match path {
        Dataplane::Nodeplane => {
            lab.start_agent_with_manifests("a", &dir);
            lab.start_agent_with_manifests("b", &dir);
        }
        Dataplane::Kernel => {
            for (node, name) in [("a", "node-a"), ("b", "node-b"), ("k", "node-k")] {
                let spec = perf::kernel_path::spec_for(&dir, name).unwrap();
                perf::kernel_path::apply(&lab.ns(node), "nftables", &spec).unwrap();
            }
        }
    }
    Some(lab)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The IPv4 addresses of namespace `ns`.
fn addresses(ns: &str) -> BTreeSet<Ipv4Addr> {
    run(Command::new("ip").args(["-n", ns, "-4", "-o", "addr", "show"]))
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == "inet")?;
            w.get(i + 1)?.split('/').next()?.parse().ok()
        })
        .collect()
}

/// A per-worker counter of `node`, summed over its workers (nodeplane only).
fn counter(lab: &Lab, path: Dataplane, node: &str, name: &str) -> Option<u64> {
    (path == Dataplane::Nodeplane).then(|| lab.counter(node, name))
}

/// Waits (≤ 2 s: workers publish their counters every ~10 ms) until `node`'s
/// counter `name` has grown by at least `by` since `before`; panics with
/// `what` and the figures otherwise. Nodeplane only (`before` is `None` else).
fn grew(lab: &Lab, node: &str, name: &str, before: Option<u64>, by: u64, what: &str) {
    let Some(b) = before else { return };
    let r = eventually(2, || {
        let now = lab.counter(node, name);
        if now >= b + by {
            Ok(now)
        } else {
            Err(format!("{name} on node-{node}: {b} -> {now}, want +{by}"))
        }
    });
    if let Err(e) = r {
        panic!("{what}: {e}");
    }
}

// ---- the cases ----

/// One 4,000-byte datagram from `ns` to `dst` and its echo: the answer, which
/// must come from `dst`.
fn big_roundtrip(ns: &str, dst: SocketAddr, seed: u8) -> Result<(Vec<u8>, Vec<u8>), String> {
    let payload: Vec<u8> = (0..4000u32)
        .map(|j| b'a' + ((j + u32::from(seed)) % 26) as u8)
        .collect();
    let p = payload.clone();
    let answer = in_netns(ns, move || -> Result<Vec<u8>, String> {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.send_to(&p, dst).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 9000];
        let (n, from) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        if from != dst {
            return Err(format!("answer from {from}, not {dst}"));
        }
        buf.truncate(n);
        Ok(buf)
    })
    .map_err(|e| e.to_string())??;
    Ok((payload, answer))
}

/// 4,000-byte datagrams to backends on node-b and on the kernel node, and
/// their 4,000-byte echoes, all fragmented on the way.
fn big_udp(lab: &Lab, path: Dataplane) {
    let before = counter(lab, path, "a", "fragments_translated");
    for (svc, pod) in [(BIG_B, "b1"), (BIG_K, "k1")] {
        for i in 0..5u8 {
            let dst = SocketAddr::from((svc, 53));
            let (payload, answer) = eventually(5, || big_roundtrip(&lab.ns("a2"), dst, i))
                .unwrap_or_else(|e| panic!("{path:?}: 4,000-byte UDP to {svc} ({pod}): {e}"));
            assert!(
                answer.starts_with(format!("{pod} ").as_bytes()),
                "{path:?}: answered by {pod}"
            );
            assert!(
                answer.ends_with(&payload),
                "{path:?}: the whole datagram came back ({} bytes)",
                answer.len()
            );
        }
    }
    // 10 datagrams out and 10 back, each with 2 later fragments (1,450 MTU).
    grew(
        lab,
        "a",
        "fragments_translated",
        before,
        40,
        "node-a translated the later fragments",
    );
}

/// The XDP program's decision counter `name` on `node` (`redirect_*`).
fn steered(lab: &Lab, node: &str, name: &str) -> u64 {
    lab.status(node)["steering"][name].as_u64().unwrap_or(0)
}

/// Nodeplane only: what reaches the node's own IP and needs the XDP
/// program's memory or a look into the quoted packet. 4,000-byte datagrams
/// from the external client to a UDP NodePort (backend on node-b): the first
/// fragment is steered for its port, the later ones because the first was
/// (`redirect_fragment`). And an ICMP error to the node about a masqueraded
/// flow: a2's connected UDP socket to a closed port of the external client
/// gets ECONNREFUSED through the masquerade (`redirect_icmp_error`).
fn to_the_node(lab: &Lab) {
    let frag_before = steered(lab, "a", "redirect_fragment");
    let dst = SocketAddr::from((lab.ip("a"), BIG_NODEPORT));
    for i in 0..3u8 {
        let (payload, answer) = eventually(5, || big_roundtrip(&lab.ns("x"), dst, i))
            .unwrap_or_else(|e| panic!("4,000-byte UDP to NodePort {dst}: {e}"));
        assert!(answer.starts_with(b"b1 "), "answered by b1");
        assert!(answer.ends_with(&payload), "the whole datagram came back");
    }
    let r = eventually(2, || {
        let n = steered(lab, "a", "redirect_fragment");
        (n >= frag_before + 6)
            .then_some(n)
            .ok_or(format!("{frag_before} -> {n}"))
    });
    r.unwrap_or_else(|e| panic!("later fragments to the NodePort steered: {e}"));

    let err_before = steered(lab, "a", "redirect_icmp_error");
    let closed = SocketAddr::from((lab.ip("x"), 9));
    eventually(5, || refused_by(&lab.ns("a2"), closed))
        .unwrap_or_else(|e| panic!("ECONNREFUSED through the masquerade from {closed}: {e}"));
    let r = eventually(2, || {
        let n = steered(lab, "a", "redirect_icmp_error");
        (n > err_before)
            .then_some(n)
            .ok_or(format!("{err_before} -> {n}"))
    });
    r.unwrap_or_else(|e| panic!("the port unreachable to node-a steered: {e}"));
}

/// A datagram from a connected UDP socket in `ns` to `dst`: Ok when the
/// socket then reports ECONNREFUSED (an ICMP port unreachable reached it).
fn refused_by(ns: &str, dst: SocketAddr) -> Result<(), String> {
    in_netns(ns, move || -> Result<(), String> {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.connect(dst).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(|e| e.to_string())?;
        s.send(b"anyone?").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        match s.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .map_err(|e| e.to_string())?
}

/// A connected UDP socket learns that the backend's port is closed.
fn refused(lab: &Lab, path: Dataplane) {
    let before = counter(lab, path, "a", "icmp_errors_translated");
    let dst = SocketAddr::from((CLOSED_B, 9));
    let got = eventually(5, || refused_by(&lab.ns("a2"), dst));
    got.unwrap_or_else(|e| panic!("{path:?}: ECONNREFUSED from {dst}: got {e}"));
    grew(
        lab,
        "a",
        "icmp_errors_translated",
        before,
        1,
        "node-a translated the port unreachable",
    );
}

/// The route node-k has to k1, with `mtu 1300` on it: the 1,300-byte hop.
fn narrow_hop_to_k1(lab: &Lab) {
    let ns = lab.ns("k");
    let k1 = lab.ip("k1").to_string();
    let route = run(Command::new("ip").args(["-n", &ns, "-4", "route", "show", &k1]));
    let route = route.lines().next().expect("node-k has a route to k1");
    let mut args = vec!["-n", &ns, "route", "change"];
    args.extend(route.split_whitespace());
    args.extend(["mtu", "1300"]);
    run(Command::new("ip").args(&args));
}

/// 2,000 lines of 200 bytes echoed through a ClusterIP to k1 behind the
/// 1,300-byte hop: only completes if a2's TCP learns the path MTU from the
/// fragmentation-needed error node-k sends, translated back to the ClusterIP.
fn pmtu_bulk(lab: &Lab, path: Dataplane) {
    narrow_hop_to_k1(lab);
    let before = counter(lab, path, "a", "icmp_errors_translated");
    let dst = SocketAddr::from((BULK_K, 80));
    const LINES: usize = 2000;
    let lines = in_netns(&lab.ns("a2"), move || -> Result<usize, String> {
        let s = TcpStream::connect_timeout(&dst, Duration::from_secs(3))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut w = s.try_clone().map_err(|e| e.to_string())?;
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            let line = "x".repeat(199);
            for _ in 0..LINES {
                writeln!(w, "{line}")?;
            }
            w.flush()
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut r = BufReader::new(s);
        let mut n = 0;
        let mut buf = String::new();
        while n < LINES && Instant::now() < deadline {
            buf.clear();
            match r.read_line(&mut buf) {
                Ok(0) => break,
                Ok(_) if buf.ends_with(&format!("{}\n", "x".repeat(199))) => n += 1,
                Ok(_) => return Err(format!("bad line {buf:?}")),
                Err(e) => return Err(format!("after {n} lines: {e}")),
            }
        }
        writer
            .join()
            .map_err(|_| "writer panicked".to_string())?
            .map_err(|e| format!("write: {e}"))?;
        Ok(n)
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("{path:?}: bulk TCP through {dst}: {e}"));
    assert_eq!(lines, LINES, "{path:?}: every line echoed");
    let cached =
        run(Command::new("ip").args(["-n", &lab.ns("a2"), "route", "get", &BULK_K.to_string()]));
    assert!(
        cached.contains("mtu 1300"),
        "{path:?}: a2 learned the path MTU to the ClusterIP: {cached}"
    );
    grew(
        lab,
        "a",
        "icmp_errors_translated",
        before,
        1,
        "node-a translated fragmentation needed",
    );
}

/// tests/lab/ttlprobe.py from a2: the JSON it prints.
fn ttl_probe(lab: &Lab, dst: Ipv4Addr, port: u16, ttl: u8) -> serde_json::Value {
    let out = run(Command::new("ip").args([
        "netns",
        "exec",
        &lab.ns("a2"),
        "python3",
        &repo().join("tests/lab/ttlprobe.py").display().to_string(),
        &dst.to_string(),
        &port.to_string(),
        &ttl.to_string(),
    ]));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out}: {e}"))
}

/// TTL 1 and 2 through a ClusterIP to a backend on node-b: each hop answers
/// with time exceeded, and the client's socket gets it. Who it comes from is
/// where the paths differ, and both are checked: nodeplane answers from the
/// node whose hop it is (node-a, then node-b across the overlay), so the probe
/// shows the path; Linux's NAT (kube-proxy) rewrites the source of an error
/// related to a DNAT flow to the Service address, so every hop shows the
/// ClusterIP.
fn traceroute(lab: &Lab, path: Dataplane) {
    let before_a = counter(lab, path, "a", "icmp_errors_sent");
    let before_b = counter(lab, path, "b", "icmp_errors_sent");
    for (ttl, node) in [(1u8, "a"), (2, "b")] {
        let hop = eventually(5, || {
            let v = ttl_probe(lab, BIG_B, 53, ttl);
            if v["type"] == 11 {
                Ok(v)
            } else {
                Err(v.to_string())
            }
        })
        .unwrap_or_else(|e| panic!("{path:?}: TTL {ttl}: no time exceeded: {e}"));
        let from: Ipv4Addr = hop["offender"].as_str().unwrap().parse().unwrap();
        match path {
            Dataplane::Nodeplane => {
                let node_addrs = addresses(&lab.ns(node));
                assert!(
                    node_addrs.contains(&from),
                    "TTL {ttl} expires at node-{node} ({node_addrs:?}), not {from}"
                );
            }
            Dataplane::Kernel => assert_eq!(from, BIG_B, "TTL {ttl}: kube-proxy's NAT"),
        }
    }
    grew(
        lab,
        "a",
        "icmp_errors_sent",
        before_a,
        1,
        "node-a sent time exceeded",
    );
    grew(
        lab,
        "b",
        "icmp_errors_sent",
        before_b,
        1,
        "node-b sent time exceeded",
    );
}

fn all_cases(path: Dataplane, tag: &str) {
    let Some(lab) = lab_for(path, tag) else {
        return;
    };
    big_udp(&lab, path);
    refused(&lab, path);
    traceroute(&lab, path);
    pmtu_bulk(&lab, path);
    if path == Dataplane::Nodeplane {
        to_the_node(&lab);
        let drops = lab.drops("a");
        for r in ["fragment_timeout", "fragment_overlap", "fragment_no_room"] {
            assert_eq!(drops.get(r).copied().unwrap_or(0), 0, "{r}: {drops:?}");
        }
    }
}

#[test]
fn lab_icmp_mtu_and_fragments_through_nodeplane() {
    all_cases(Dataplane::Nodeplane, "im");
}

#[test]
fn lab_icmp_mtu_and_fragments_through_the_kernel_path() {
    all_cases(Dataplane::Kernel, "ik");
}
