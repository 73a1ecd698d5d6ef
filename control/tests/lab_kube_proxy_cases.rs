//! kube-proxy's own packet-flow cases with real sockets (root lab): the base
//! and masqueradeAll settings of TestInternalExternalMasquerade in
//! k8s.io/kubernetes v1.34.4 `pkg/proxy/nftables/proxier_test.go`, every one of
//! its 27 rows, with the Go test's overrides, as the in-memory replay
//! (`dataplane/tests/kube_proxy_cases.rs`) runs them. Three
//! LoadBalancer Services (eTP=Cluster, eTP=Local, iTP=Local), each with an
//! endpoint on this node (pod a1) and one on another (b1 on node-b); clients a
//! pod of node-a (a2), node-a itself, and the external client x. Each row's
//! connections must reach exactly its endpoints, and the backend must see the
//! client's address or node-a's (masqueraded) as kube-proxy's row says.
//! The lab builds and removes its own namespaces; every connection is bounded.

mod lab_support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;

use lab_support::*;

/// Where a row's connections go.
#[derive(Clone, Copy)]
enum To {
    ClusterIp,
    NodePort,
    Lb,
}

/// A row: the Go test's name, client, destination, Service (1..=3),
/// expected endpoints ("all": a1 and b1; "local": a1), masquerade.
type Row = (&'static str, &'static str, To, usize, &'static str, bool);

#[rustfmt::skip]
const BASE: [Row; 27] = [
    ("pod to ClusterIP", "pod", To::ClusterIp, 1, "all", false),
    ("pod to NodePort", "pod", To::NodePort, 1, "all", true),
    ("pod to LB", "pod", To::Lb, 1, "all", true),
    ("node to ClusterIP", "node", To::ClusterIp, 1, "all", true),
    ("node to NodePort", "node", To::NodePort, 1, "all", true),
    ("node to LB", "node", To::Lb, 1, "all", true),
    ("external to ClusterIP", "external", To::ClusterIp, 1, "all", true),
    ("external to NodePort", "external", To::NodePort, 1, "all", true),
    ("external to LB", "external", To::Lb, 1, "all", true),
    ("pod to ClusterIP with eTP:Local", "pod", To::ClusterIp, 2, "all", false),
    ("pod to NodePort with eTP:Local", "pod", To::NodePort, 2, "all", false),
    ("pod to LB with eTP:Local", "pod", To::Lb, 2, "all", false),
    ("node to ClusterIP with eTP:Local", "node", To::ClusterIp, 2, "all", true),
    // The Go row sends to svc1's NodePort (3001), as here.
    ("node to NodePort with eTP:Local", "node", To::NodePort, 1, "all", true),
    ("node to LB with eTP:Local", "node", To::Lb, 2, "all", true),
    ("external to ClusterIP with eTP:Local", "external", To::ClusterIp, 2, "all", true),
    ("external to NodePort with eTP:Local", "external", To::NodePort, 2, "local", false),
    ("external to LB with eTP:Local", "external", To::Lb, 2, "local", false),
    ("pod to ClusterIP with iTP:Local", "pod", To::ClusterIp, 3, "local", false),
    ("pod to NodePort with iTP:Local", "pod", To::NodePort, 3, "all", true),
    ("pod to LB with iTP:Local", "pod", To::Lb, 3, "all", true),
    ("node to ClusterIP with iTP:Local", "node", To::ClusterIp, 3, "local", true),
    ("node to NodePort with iTP:Local", "node", To::NodePort, 3, "all", true),
    ("node to LB with iTP:Local", "node", To::Lb, 3, "all", true),
    ("external to ClusterIP with iTP:Local", "external", To::ClusterIp, 3, "local", true),
    ("external to NodePort with iTP:Local", "external", To::NodePort, 3, "all", true),
    ("external to LB with iTP:Local", "external", To::Lb, 3, "all", true),
];

/// Service n's ClusterIP, NodePort and LoadBalancer IP (the Go test's
/// 172.30.0.4n, 300n and its LB IPs, remapped as the in-memory replay does).
fn frontends(n: usize) -> (Ipv4Addr, u16, Ipv4Addr) {
    let n8 = u8::try_from(n).unwrap();
    (
        Ipv4Addr::new(198, 18, 96, 40 + n8),
        30100 + u16::from(n8),
        Ipv4Addr::new(198, 18, 151, n8),
    )
}

/// The three Services and their EndpointSlices (a1 on node-a, b1 on node-b).
fn manifests(lab: &Lab) -> String {
    let (a1, b1) = (lab.ip("a1"), lab.ip("b1"));
    let mut out = String::new();
    for (n, etp, itp) in [
        (1, "Cluster", "Cluster"),
        (2, "Local", "Cluster"),
        (3, "Cluster", "Local"),
    ] {
        let (cip, np, lb) = frontends(n);
        let hc = if etp == "Local" {
            format!("  healthCheckNodePort: {}\n", 30200 + n)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{n}, namespace: ns{n}}}\n\
             spec:\n  type: LoadBalancer\n  clusterIP: {cip}\n  clusterIPs: [{cip}]\n\
             \x20 externalTrafficPolicy: {etp}\n  internalTrafficPolicy: {itp}\n{hc}\
             \x20 ports: [{{name: p80, protocol: TCP, port: 80, targetPort: 8080, nodePort: {np}}}]\n\
             status: {{loadBalancer: {{ingress: [{{ip: {lb}}}]}}}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: svc{n}-1, namespace: ns{n}, labels: {{kubernetes.io/service-name: svc{n}}}}}\n\
             addressType: IPv4\nports: [{{name: p80, protocol: TCP, port: 8080}}]\n\
             endpoints:\n\
             \x20 - {{addresses: [\"{a1}\"], conditions: {{ready: true, serving: true, terminating: false}}, nodeName: node-a}}\n\
             \x20 - {{addresses: [\"{b1}\"], conditions: {{ready: true, serving: true, terminating: false}}, nodeName: node-b}}\n"
        ));
    }
    out
}

fn pod_and_client(answer: &str) -> (String, String) {
    let mut w = answer.split_whitespace();
    let pod = w.next().unwrap_or_default().to_string();
    let client = w.next().unwrap_or_default().to_string();
    (pod, client)
}

/// Agent arguments for `node` reading `dir`, plus `extra`.
fn agent_args(lab: &Lab, node: &str, dir: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut args = lab.agent_args_from(node, "--manifests", &dir.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs every row (16 connections each) under `masquerade_all`'s overrides;
/// the rows that differ from kube-proxy.
fn replay(lab: &Lab, masquerade_all: bool) -> Vec<String> {
    let node_a = lab.ip("a");
    let (a1, b1) = ("a1".to_string(), "b1".to_string());
    let mut wrong = Vec::new();
    for (name, client, to, svc, want, masq) in BASE {
        // The Go test's masqueradeAll overrides: every pod to ClusterIP row
        // is masqueraded.
        let masq = masq || (masquerade_all && name.starts_with("pod to ClusterIP"));
        let (cip, np, lb) = frontends(svc);
        let dst = match to {
            To::ClusterIp => SocketAddr::from((cip, 80)),
            To::NodePort => SocketAddr::from((node_a, np)),
            To::Lb => SocketAddr::from((lb, 80)),
        };
        let (ns, src) = match client {
            "pod" => (lab.ns("a2"), lab.ip("a2")),
            "node" => (lab.ns("a"), node_a),
            _ => (lab.ns("x"), lab.ip("x")),
        };
        let want: BTreeSet<String> = if want == "all" {
            [a1.clone(), b1.clone()].into()
        } else {
            [a1.clone()].into()
        };
        let seen_as = if masq {
            "198.19.1.0".to_string()
        } else {
            src.to_string()
        };
        let mut reached = BTreeSet::new();
        let mut problem = None;
        for i in 0..16 {
            match eventually(5, || tcp_line(&ns, dst, &format!("{i}"))) {
                Ok(answer) => {
                    let (pod, from) = pod_and_client(&answer);
                    if from.split(':').next() != Some(seen_as.as_str()) {
                        problem = Some(format!("the backend saw {from}, want {seen_as}"));
                    }
                    reached.insert(pod);
                }
                Err(e) => {
                    problem = Some(e);
                    break;
                }
            }
        }
        if problem.is_none() && reached != want {
            problem = Some(format!("reached {reached:?}, want {want:?}"));
        }
        if let Some(p) = problem {
            wrong.push(format!("{name} ({client} → {dst}): {p}"));
        }
    }
    wrong
}

#[test]
fn lab_kube_proxy_internal_external_masquerade() {
    let Some(mut lab) = Lab::up("c") else { return };
    let dir = PathBuf::from(lab.var("NP_LAB_DIR")).join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(repo().join("configs/demo")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(dir.join("cases.yaml"), manifests(&lab)).unwrap();
    let node_a = lab.ip("a");
    // The external client reaches the ClusterIPs and LB IPs through node-a
    // (as a router in front of the cluster would send them).
    for net in ["198.18.96.0/20", "198.18.151.0/24"] {
        let out = Command::new("ip")
            .args(["-n", &lab.ns("x"), "route", "replace", net, "via"])
            .arg(node_a.to_string())
            .output()
            .expect("ip route");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    lab.start_agent_args("b", &agent_args(&lab, "b", &dir, &[]));
    for (setting, extra) in [
        ("base", &[][..]),
        ("masqueradeAll", &["--masquerade-all"][..]),
    ] {
        lab.start_agent_args("a", &agent_args(&lab, "a", &dir, extra));
        let wrong = replay(&lab, !extra.is_empty());
        assert!(
            wrong.is_empty(),
            "{setting}: {} of {} rows differ from kube-proxy:\n{}\n{}",
            wrong.len(),
            BASE.len(),
            wrong.join("\n"),
            lab.agent_log("a")
        );
        assert!(lab.stop_agent("a"), "{}", lab.agent_log("a"));
    }
}
