//! kube-proxy's own packet-flow cases, replayed through the pipeline: the
//! Services, EndpointSlices and `packetFlowTest` rows of
//! `pkg/proxy/nftables/proxier_test.go` in k8s.io/kubernetes v1.34.4 (fetched
//! from the Go module proxy; `go mod download k8s.io/kubernetes@v1.34.4`), as
//! data: each row keeps the Go test's name, source, protocol, destination, port,
//! expected output and masquerade flag verbatim, and a per-test table remaps
//! the addresses into the lab's ranges (10.0.0.0/8 → 198.19.0.0/16, the Service
//! CIDR 172.30.0.0/16 → 198.18.96.0/20, ...). The Go fake proxier's settings
//! are kept: detectLocalMode ClusterCIDR with the pod CIDR, and
//! nodePortAddresses = the node IP. Endpoints on `test-node` become pods of
//! node-a, the others pods of node-b; the source "a pod" is a2 on node-a; the
//! node itself sends through the host interface.
//!
//! Output semantics as the Go helper's tracer gives them: a list of endpoints
//! (every one reached over 40 client ports, no other), `REJECT`, `DROP`, or ""
//! (not proxied); `masq` whether the backend sees the node's address.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use dataplane::Verdict;
use shared::snapshot::{PodHop, ServicePortSpec, ServiceSpec, Snapshot};
use shared::{L4Proto, Mac};
use support::*;

const HOST_IF: u32 = 30;
const KERNEL_MAC: Mac = [2, 0xee, 0, 0, 0, 1];
const HOST_MAC: Mac = [2, 0xee, 0, 0, 0, 2];

/// One `packetFlowTest`: name, sourceIP, protocol, destIP, destPort, output, masq.
type Flow = (
    &'static str,
    &'static str,
    L4Proto,
    &'static str,
    u16,
    &'static str,
    bool,
);

/// The Go test's addresses → the lab's.
struct Remap(BTreeMap<&'static str, Ipv4Addr>);

impl Remap {
    fn new(pairs: &[(&'static str, &str)]) -> Remap {
        Remap(pairs.iter().map(|(a, b)| (*a, ip(b))).collect())
    }
    fn ip(&self, s: &str) -> Ipv4Addr {
        *self.0.get(s).unwrap_or_else(|| panic!("no remap for {s}"))
    }
    /// "10.180.0.1:80, 10.180.2.1:80" → {(ip, 80), ...}
    fn endpoints(&self, out: &str) -> BTreeSet<(Ipv4Addr, u16)> {
        out.split(", ")
            .map(|e| {
                let (a, p) = e.rsplit_once(':').unwrap();
                (self.ip(a), p.parse().unwrap())
            })
            .collect()
    }
}

/// Where a source's frames enter node-a: its pod interface, the host
/// interface (the node's own addresses, or a LoadBalancer IP it holds), or
/// the uplink.
fn ingress(src: Ipv4Addr, host_srcs: &[Ipv4Addr]) -> (u32, Mac, Mac) {
    match src {
        A1 => (A1_IF, A1_MAC, A1_HOST_MAC),
        A2 => (A2_IF, A2_MAC, A2_HOST_MAC),
        s if host_srcs.contains(&s) => (HOST_IF, KERNEL_MAC, HOST_MAC),
        _ => (UPLINK, MAC_EXT, UPLINK_MAC),
    }
}

fn l4(proto: L4Proto, sport: u16, dport: u16) -> Option<L4> {
    match proto {
        L4Proto::Tcp => Some(syn(sport, dport)),
        L4Proto::Udp => Some(udp(sport, dport)),
        L4Proto::Sctp => None,
    }
}

/// An Ethernet/IPv4 frame carrying TCP, UDP or an SCTP INIT-sized packet
/// (CRC32c filled in).
fn packet(
    smac: Mac,
    dmac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: L4Proto,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    if let Some(l) = l4(proto, sport, dport) {
        return frame(smac, dmac, src, dst, l, 64);
    }
    sctp_frame(smac, dmac, src, dst, sport, dport)
}

/// (src, dst, dport, proto) of what left, the inner frame when encapsulated.
fn delivered(out: &Out) -> (Ipv4Addr, Ipv4Addr, u16, u8) {
    let s = seen(&out.bytes);
    let bytes = if out.verdict == tx(UPLINK) && s.proto == 17 && s.dport == VXLAN_PORT {
        unwrap_vxlan(&out.bytes).2
    } else {
        out.bytes.clone()
    };
    let s = seen(&bytes);
    let dport = if s.proto == 132 {
        let ihl = usize::from(bytes[14] & 0x0f) * 4;
        assert!(
            shared::wire::l4::sctp_checksum_ok(&bytes[14 + ihl..]),
            "SCTP CRC32c"
        );
        u16::from_be_bytes([bytes[14 + ihl + 2], bytes[14 + ihl + 3]])
    } else {
        s.dport
    };
    (s.src, s.dst, dport, s.proto)
}

/// Runs every flow against `snap`; returns the rows that did not behave as
/// kube-proxy's, with what nodeplane did.
fn replay(snap: &Snapshot, map: &Remap, host_srcs: &[Ipv4Addr], flows: &[Flow]) -> Vec<String> {
    let mut wrong = Vec::new();
    for &(name, src, proto, dst, dport, output, masq) in flows {
        let (src, dst) = (map.ip(src), map.ip(dst));
        if src.is_loopback() && !host_srcs.contains(&src) {
            // The loopback program leaves it to the kernel (localhost
            // NodePorts off; dataplane/tests/afxdp.rs): never proxied.
            if !output.is_empty() {
                wrong.push(format!(
                    "{name}: expected {output:?}, nodeplane never sees it"
                ));
            }
            continue;
        }
        let (ifindex, smac, dmac) = ingress(src, host_srcs);
        let mut reached = BTreeSet::new();
        let mut problem = None;
        for sport in 40000..40040 {
            let mut w = Worker::default();
            let out = w.run(
                snap,
                ifindex,
                &packet(smac, dmac, src, dst, proto, sport, dport),
            );
            let got = match out.verdict {
                Verdict::Drop(r) => format!("DROP ({})", r.name()),
                // An answer from the destination itself (a RST, an ICMP error).
                Verdict::Tx { ifindex: back }
                    if back == ifindex
                        && (seen(&out.bytes).src, seen(&out.bytes).dst) == (dst, src) =>
                {
                    let s = seen(&out.bytes);
                    if s.tcp_flags & RST != 0 || s.icmp == Some((3, 3)) {
                        "REJECT".to_string()
                    } else {
                        format!("answered {s:?}")
                    }
                }
                Verdict::Tx { .. } => {
                    let (s, d, p, _) = delivered(&out);
                    if (d, p) == (dst, dport) {
                        String::new()
                    } else {
                        let masqueraded = s != src;
                        if masqueraded != masq {
                            problem = Some(format!("masq {masqueraded}"));
                        }
                        if masqueraded && s != OVERLAY_A {
                            problem = Some(format!("masqueraded to {s}"));
                        }
                        reached.insert((d, p));
                        continue;
                    }
                }
                // Not a frontend: the kernel's.
                Verdict::Pass => String::new(),
                v => format!("{v:?}"),
            };
            let want_plain = match output {
                "DROP" => got.starts_with("DROP"),
                "REJECT" | "" => got == output,
                _ => false,
            };
            if !want_plain {
                problem = Some(got);
            }
        }
        if output != "DROP" && output != "REJECT" && !output.is_empty() {
            let want = map.endpoints(output);
            if reached != want {
                problem.get_or_insert(format!("reached {reached:?}, want {want:?}"));
            }
        }
        if let Some(p) = problem {
            wrong.push(format!(
                "{name}: expected {output:?} masq {masq}, nodeplane: {p}"
            ));
        }
    }
    wrong
}

fn port(
    name: &str,
    proto: L4Proto,
    port: u16,
    node_port: Option<u16>,
    eps: &[(Ipv4Addr, u16, &str)],
) -> ServicePortSpec {
    ServicePortSpec {
        name: name.into(),
        proto,
        port,
        node_port,
        endpoints: eps
            .iter()
            .map(|(a, p, n)| {
                let mut e = ep(*a, *p, "x");
                e.node_name = (!n.is_empty()).then(|| (*n).to_string());
                e
            })
            .collect(),
    }
}

fn service(ns: &str, name: &str, cluster_ip: Ipv4Addr, ports: Vec<ServicePortSpec>) -> ServiceSpec {
    ServiceSpec {
        namespace: ns.into(),
        name: name.into(),
        cluster_ips: vec![cluster_ip],
        ports,
        ..ServiceSpec::default()
    }
}

/// node-a as the Go fake proxier's node: the host interface, the cluster
/// CIDR as the local-traffic detector, NodePorts on the node IP only.
fn tables(services: Vec<ServiceSpec>) -> Snapshot {
    let mut spec = world(services);
    spec.node.name = "test-node".into();
    spec.node.host_if = Some(PodHop {
        mac: KERNEL_MAC,
        host_mac: HOST_MAC,
        host_ifindex: HOST_IF,
    });
    spec.node.nodeport_cidrs = vec!["198.18.0.2/32".parse().unwrap()];
    spec.masquerade.local = LocalTraffic::Cidrs(vec!["198.19.0.0/16".parse().unwrap()]);
    snap(spec, 1)
}

/// TestClusterIPGeneral.
#[test]
fn cluster_ip_general() {
    let m = Remap::new(&[
        ("172.30.0.41", "198.18.96.41"),
        ("172.30.0.42", "198.18.96.42"),
        ("172.30.0.50", "198.18.96.50"),
        ("10.180.0.1", "198.19.1.10"),
        ("10.180.0.2", "198.19.1.11"),
        ("10.180.2.1", "198.19.3.10"),
    ]);
    let (e1, e2) = (m.ip("10.180.0.1"), m.ip("10.180.2.1"));
    let both = |p: u16| [(e1, p, "test-node"), (e2, p, "node2")];
    let tcp = L4Proto::Tcp;
    let s = tables(vec![
        service(
            "ns1",
            "svc1",
            m.ip("172.30.0.41"),
            vec![port("http", tcp, 80, None, &[(e1, 80, "test-node")])],
        ),
        service(
            "ns2",
            "svc2",
            m.ip("172.30.0.42"),
            vec![
                port("http", tcp, 80, None, &both(80)),
                port("https", tcp, 443, None, &both(8443)),
                port("dns-udp", L4Proto::Udp, 53, None, &both(53)),
                port("dns-tcp", tcp, 53, None, &both(5353)),
                port("dns-sctp", L4Proto::Sctp, 53, None, &both(53)),
            ],
        ),
    ]);
    #[rustfmt::skip]
    let flows: &[Flow] = &[
        ("simple clusterIP", "10.180.0.2", tcp, "172.30.0.41", 80, "10.180.0.1:80", false),
        ("hairpin to cluster IP", "10.180.0.1", tcp, "172.30.0.41", 80, "10.180.0.1:80", true),
        ("clusterIP with multiple endpoints", "10.180.0.2", tcp, "172.30.0.42", 80, "10.180.0.1:80, 10.180.2.1:80", false),
        ("clusterIP with TargetPort", "10.180.0.2", tcp, "172.30.0.42", 443, "10.180.0.1:8443, 10.180.2.1:8443", false),
        ("clusterIP with TCP, UDP, and SCTP on same port (TCP)", "10.180.0.2", tcp, "172.30.0.42", 53, "10.180.0.1:5353, 10.180.2.1:5353", false),
        ("clusterIP with TCP, UDP, and SCTP on same port (TCP)", "10.180.0.2", L4Proto::Udp, "172.30.0.42", 53, "10.180.0.1:53, 10.180.2.1:53", false),
        ("clusterIP with TCP, UDP, and SCTP on same port (SCTP)", "10.180.0.2", L4Proto::Sctp, "172.30.0.42", 53, "10.180.0.1:53, 10.180.2.1:53", false),
        ("TCP-only port does not match UDP traffic", "10.180.0.2", L4Proto::Udp, "172.30.0.42", 80, "REJECT", false),
        ("svc1 does not accept svc2's ports", "10.180.0.2", tcp, "172.30.0.41", 443, "REJECT", false),
        ("packet to unallocated cluster ip", "10.180.0.2", tcp, "172.30.0.50", 80, "DROP", false),
    ];
    let wrong = replay(&s, &m, &[NODE_A], flows);
    assert!(
        wrong.is_empty(),
        "{} of {} flows differ from kube-proxy:\n{}",
        wrong.len(),
        flows.len(),
        wrong.join("\n")
    );
}

/// TestLoadBalancer.
#[test]
fn load_balancer() {
    let m = Remap::new(&[
        ("172.30.0.41", "198.18.96.41"),
        ("1.2.3.4", "198.18.151.1"),
        ("5.6.7.8", "198.18.151.2"),
        ("10.180.0.1", "198.19.3.10"),
        ("10.0.0.2", "198.19.1.11"),
        ("203.0.113.2", "198.18.200.10"),
        ("203.0.113.130", "198.18.200.130"),
        ("192.168.0.2", "198.18.0.2"),
    ]);
    let tcp = L4Proto::Tcp;
    let mut svc1 = service(
        "ns1",
        "svc1",
        m.ip("172.30.0.41"),
        vec![port(
            "p80",
            tcp,
            80,
            Some(3001),
            &[(m.ip("10.180.0.1"), 80, "")],
        )],
    );
    svc1.load_balancer_ips = vec![m.ip("1.2.3.4"), m.ip("5.6.7.8")];
    // "192.168.0.0/24", " 203.0.113.0/25"
    svc1.source_ranges = vec![
        "198.18.0.0/24".parse().unwrap(),
        "198.18.200.0/25".parse().unwrap(),
    ];
    let s = tables(vec![svc1]);
    let (ep, ext, blocked, node) = (
        "10.180.0.1:80",
        "203.0.113.2",
        "203.0.113.130",
        "192.168.0.2",
    );
    #[rustfmt::skip]
    let flows: &[Flow] = &[
        ("pod to cluster IP", "10.0.0.2", tcp, "172.30.0.41", 80, ep, false),
        ("external to nodePort", ext, tcp, node, 3001, ep, true),
        ("nodePort bypasses LoadBalancerSourceRanges", blocked, tcp, node, 3001, ep, true),
        ("accepted external to LB1", ext, tcp, "1.2.3.4", 80, ep, true),
        ("accepted external to LB2", ext, tcp, "5.6.7.8", 80, ep, true),
        ("blocked external to LB1", blocked, tcp, "1.2.3.4", 80, "DROP", false),
        ("blocked external to LB2", blocked, tcp, "5.6.7.8", 80, "DROP", false),
        ("pod to LB1 (blocked by LoadBalancerSourceRanges)", "10.0.0.2", tcp, "1.2.3.4", 80, "DROP", false),
        ("pod to LB2 (blocked by LoadBalancerSourceRanges)", "10.0.0.2", tcp, "5.6.7.8", 80, "DROP", false),
        ("node to LB1 (allowed by LoadBalancerSourceRanges)", node, tcp, "1.2.3.4", 80, ep, true),
        ("node to LB2 (allowed by LoadBalancerSourceRanges)", node, tcp, "5.6.7.8", 80, ep, true),
        ("same node to LB1, SNATted to LB1 (implicitly allowed)", "1.2.3.4", tcp, "1.2.3.4", 80, ep, true),
        ("same node to LB2, SNATted to LB2 (implicitly allowed)", "5.6.7.8", tcp, "5.6.7.8", 80, ep, true),
    ];
    let host = [NODE_A, m.ip("1.2.3.4"), m.ip("5.6.7.8")];
    let wrong = replay(&s, &m, &host, flows);
    assert!(
        wrong.is_empty(),
        "{} of {} flows differ from kube-proxy:\n{}",
        wrong.len(),
        flows.len(),
        wrong.join("\n")
    );
}

/// TestNodePorts, its two IPv4 cases (nodePortAddresses unset, i.e. the fake
/// proxier's node IP/32; then 192.168.0.0/24 and 192.168.1.0/24). Its "node to
/// nodePort" row comes in through the host interface, where the loopback
/// program on the node's `lo` hands the node's packets to its own NodePorts
/// (docs/architecture.md, *The node's own traffic to Services*).
#[test]
fn node_ports() {
    let m = Remap::new(&[
        ("172.30.0.41", "198.18.96.41"),
        ("10.180.0.1", "198.19.3.10"),
        ("10.180.2.1", "198.19.1.10"),
        ("10.0.0.2", "198.19.1.11"),
        ("203.0.113.2", "198.18.200.10"),
        ("192.168.0.2", "198.18.0.2"),
        ("192.168.1.2", "198.18.1.2"),
    ]);
    let tcp = L4Proto::Tcp;
    let svc = service(
        "ns1",
        "svc1",
        m.ip("172.30.0.41"),
        vec![port(
            "p80",
            tcp,
            80,
            Some(3001),
            &[
                (m.ip("10.180.0.1"), 80, ""),
                (m.ip("10.180.2.1"), 80, "test-node"),
            ],
        )],
    );
    let out = "10.180.0.1:80, 10.180.2.1:80";
    #[rustfmt::skip]
    let basic: &[Flow] = &[
        ("pod to cluster IP", "10.0.0.2", tcp, "172.30.0.41", 80, out, false),
        ("external to nodePort", "203.0.113.2", tcp, "192.168.0.2", 3001, out, true),
        ("node to nodePort", "192.168.0.2", tcp, "192.168.0.2", 3001, out, true),
    ];
    for (case, cidrs, alt) in [
        (
            "ipv4",
            vec!["198.18.0.2/32"],
            ("secondary nodeIP ignores NodePorts", ""),
        ),
        (
            "ipv4, multiple nodeport-addresses",
            vec!["198.18.0.0/24", "198.18.1.0/24"],
            ("external to nodePort on secondary IP", out),
        ),
    ] {
        let mut spec = world(vec![svc.clone()]);
        spec.node.name = "test-node".into();
        spec.node.host_if = Some(PodHop {
            mac: KERNEL_MAC,
            host_mac: HOST_MAC,
            host_ifindex: HOST_IF,
        });
        spec.node.node_ips = vec![m.ip("192.168.0.2"), m.ip("192.168.1.2")];
        spec.node.nodeport_cidrs = cidrs.iter().map(|c| c.parse().unwrap()).collect();
        spec.masquerade.local = LocalTraffic::Cidrs(vec!["198.19.0.0/16".parse().unwrap()]);
        let s = snap(spec, 1);
        let mut flows = basic.to_vec();
        flows.push((
            alt.0,
            "203.0.113.2",
            tcp,
            "192.168.1.2",
            3001,
            alt.1,
            !alt.1.is_empty(),
        ));
        let wrong = replay(&s, &m, &[NODE_A], &flows);
        assert!(
            wrong.is_empty(),
            "{case}: {} of {} flows differ from kube-proxy:\n{}",
            wrong.len(),
            flows.len(),
            wrong.join("\n")
        );
    }
}

/// TestNodePorts of `pkg/proxy/iptables/proxier_test.go` (same version), its
/// four IPv4 cases: iptables kube-proxy's `localhostNodePorts` (nodeplane's
/// `--localhost-nodeports`) with and without nodePortAddresses. Localhost
/// sources come in through the host interface, as the loopback program
/// hands them over when the setting is on; when it is off the program
/// leaves them to the kernel (dataplane/tests/afxdp.rs), which is what the
/// "is ignored" rows expect, and the pipeline must not proxy them either.
#[test]
fn iptables_node_ports() {
    let m = Remap::new(&[
        ("172.30.0.41", "198.18.96.41"),
        ("10.180.0.1", "198.19.3.10"),
        ("10.180.2.1", "198.19.1.10"),
        ("10.0.0.2", "198.19.1.11"),
        ("203.0.113.2", "198.18.200.10"),
        ("192.168.0.2", "198.18.0.2"),
        ("192.168.1.2", "198.18.1.2"),
        ("127.0.0.1", "127.0.0.1"),
    ]);
    let tcp = L4Proto::Tcp;
    let svc = service(
        "ns1",
        "svc1",
        m.ip("172.30.0.41"),
        vec![port(
            "p80",
            tcp,
            80,
            Some(3001),
            &[
                (m.ip("10.180.0.1"), 80, ""),
                (m.ip("10.180.2.1"), 80, "test-node"),
            ],
        )],
    );
    let out = "10.180.0.1:80, 10.180.2.1:80";
    #[rustfmt::skip]
    let basic: &[Flow] = &[
        ("pod to cluster IP", "10.0.0.2", tcp, "172.30.0.41", 80, out, false),
        ("external to nodePort", "203.0.113.2", tcp, "192.168.0.2", 3001, out, true),
        ("node to nodePort", "192.168.0.2", tcp, "192.168.0.2", 3001, out, true),
    ];
    // (name, localhostNodePorts, nodePortAddresses (IPv4, remapped), allowAltNodeIP)
    let cases: [(&str, bool, &[&str], bool); 4] = [
        ("ipv4, localhost-nodeports enabled", true, &[], true),
        ("ipv4, localhost-nodeports disabled", false, &[], true),
        (
            "ipv4, localhost-nodeports disabled, localhost in nodeport-addresses",
            false,
            &["198.18.0.0/24", "127.0.0.1/32"],
            false,
        ),
        (
            "ipv4, localhost-nodeports enabled, multiple nodeport-addresses",
            false,
            &["198.18.0.0/24", "198.18.1.0/24"],
            true,
        ),
    ];
    for (case, localhost, cidrs, alt) in cases {
        let mut spec = world(vec![svc.clone()]);
        spec.node.name = "test-node".into();
        spec.node.host_if = Some(PodHop {
            mac: KERNEL_MAC,
            host_mac: HOST_MAC,
            host_ifindex: HOST_IF,
        });
        spec.node.node_ips = vec![m.ip("192.168.0.2"), m.ip("192.168.1.2")];
        spec.node.nodeport_cidrs = cidrs.iter().map(|c| c.parse().unwrap()).collect();
        spec.node.localhost_nodeports = localhost;
        spec.masquerade.local = LocalTraffic::Cidrs(vec!["198.19.0.0/16".parse().unwrap()]);
        let s = snap(spec, 1);
        let mut flows = basic.to_vec();
        flows.push(if localhost {
            (
                "localhost to nodePort gets masqueraded",
                "127.0.0.1",
                tcp,
                "127.0.0.1",
                3001,
                out,
                true,
            )
        } else {
            (
                "localhost to nodePort is ignored",
                "127.0.0.1",
                tcp,
                "127.0.0.1",
                3001,
                "",
                false,
            )
        });
        flows.push(if alt {
            (
                "external to nodePort on secondary IP",
                "203.0.113.2",
                tcp,
                "192.168.1.2",
                3001,
                out,
                true,
            )
        } else {
            (
                "secondary nodeIP ignores NodePorts",
                "203.0.113.2",
                tcp,
                "192.168.1.2",
                3001,
                "",
                false,
            )
        });
        // The loopback program hands localhost connections over only with
        // the setting on.
        let host_srcs: &[Ipv4Addr] = if localhost {
            &[NODE_A, Ipv4Addr::LOCALHOST]
        } else {
            &[NODE_A]
        };
        let wrong = replay(&s, &m, host_srcs, &flows);
        if localhost {
            // A localhost connection's reply from the local endpoint comes
            // back to the kernel's end of the host interface, restored.
            let local = m.ip("10.180.2.1");
            let mut w = Worker::default();
            let (sport, fwd) = (40000..40040)
                .map(|p| {
                    let f = packet(
                        KERNEL_MAC,
                        HOST_MAC,
                        Ipv4Addr::LOCALHOST,
                        Ipv4Addr::LOCALHOST,
                        tcp,
                        p,
                        3001,
                    );
                    (p, w.run(&s, HOST_IF, &f))
                })
                .find(|(_, o)| o.verdict == tx(A1_IF))
                .expect("some localhost connection reaches the local endpoint");
            let f = seen(&fwd.bytes);
            assert_eq!((f.src, f.dst, f.dport), (OVERLAY_A, local, 80));
            let reply = frame(
                A1_MAC,
                A1_HOST_MAC,
                local,
                OVERLAY_A,
                support::tcp(80, f.sport, SYN | ACK),
                64,
            );
            let back = w.run(&s, A1_IF, &reply);
            assert_eq!(back.verdict, tx(HOST_IF), "the reply goes to the kernel");
            let b = seen(&back.bytes);
            assert_eq!(
                (b.src, b.sport, b.dst, b.dport),
                (Ipv4Addr::LOCALHOST, 3001, Ipv4Addr::LOCALHOST, sport)
            );
            verify_checksums(&back.bytes);
            // Only the node's own loopback connections: a pod's frame to
            // 127.0.0.1 on a NodePort, or one from the node's address, is dropped.
            for (ifindex, smac, dmac, src) in [
                (A2_IF, A2_MAC, A2_HOST_MAC, A2),
                (HOST_IF, KERNEL_MAC, HOST_MAC, NODE_A),
            ] {
                let out = Worker::default().run(
                    &s,
                    ifindex,
                    &packet(smac, dmac, src, Ipv4Addr::LOCALHOST, tcp, 40000, 3001),
                );
                assert_eq!(
                    out.verdict,
                    Verdict::Drop(shared::counters::DropReason::LoopbackNotFromNode),
                    "{src} → 127.0.0.1:3001"
                );
            }
        }
        assert!(
            wrong.is_empty(),
            "{case}: {} of {} flows differ from kube-proxy:\n{}",
            wrong.len(),
            flows.len(),
            wrong.join("\n")
        );
    }
}

/// TestNoEndpointsReject: a LoadBalancer Service (externalIP, LB IP,
/// NodePort) without endpoints rejects on every frontend, from a pod and from
/// outside.
#[test]
fn no_endpoints_reject() {
    let m = Remap::new(&[
        ("172.30.0.41", "198.18.96.41"),
        ("192.168.99.11", "198.18.152.11"),
        ("1.2.3.4", "198.18.151.1"),
        ("10.0.0.2", "198.19.1.11"),
        ("203.0.113.2", "198.18.200.10"),
        ("192.168.0.2", "198.18.0.2"),
    ]);
    let tcp = L4Proto::Tcp;
    let mut svc = service(
        "ns1",
        "svc1",
        m.ip("172.30.0.41"),
        vec![port("p80", tcp, 80, Some(3001), &[])],
    );
    svc.external_ips = vec![m.ip("192.168.99.11")];
    svc.load_balancer_ips = vec![m.ip("1.2.3.4")];
    let s = tables(vec![svc]);
    let (pod, ext, node) = ("10.0.0.2", "203.0.113.2", "192.168.0.2");
    #[rustfmt::skip]
    let flows: &[Flow] = &[
        ("pod to cluster IP with no endpoints", pod, tcp, "172.30.0.41", 80, "REJECT", false),
        ("external to external IP with no endpoints", ext, tcp, "192.168.99.11", 80, "REJECT", false),
        ("pod to NodePort with no endpoints", pod, tcp, node, 3001, "REJECT", false),
        ("external to NodePort with no endpoints", ext, tcp, node, 3001, "REJECT", false),
        ("pod to LoadBalancer IP with no endpoints", pod, tcp, "1.2.3.4", 80, "REJECT", false),
        ("external to LoadBalancer IP with no endpoints", ext, tcp, "1.2.3.4", 80, "REJECT", false),
    ];
    let wrong = replay(&s, &m, &[NODE_A], flows);
    assert!(
        wrong.is_empty(),
        "{} of {} flows differ from kube-proxy:\n{}",
        wrong.len(),
        flows.len(),
        wrong.join("\n")
    );
}

/// TestHealthCheckNodePort of the iptables proxier tests: an eTP=Local
/// LoadBalancer's healthCheckNodePort on the node IP is the node's (the
/// agent's own health-check listener answers it; kube-proxy's firewall
/// accepts it: "ACCEPT"), before and after the Service is deleted; never
/// proxied. nodePortAddresses 127.0.0.0/8, as the Go test sets it.
#[test]
fn iptables_health_check_node_port() {
    let m = Remap::new(&[
        ("172.30.0.42", "198.18.96.42"),
        ("1.2.3.4", "198.18.200.20"),
        ("192.168.0.2", "198.18.0.2"),
    ]);
    let tcp = L4Proto::Tcp;
    let mut svc = service(
        "ns1",
        "svc1",
        m.ip("172.30.0.42"),
        vec![port("p80", tcp, 80, Some(3001), &[])],
    );
    svc.external_local = true;
    svc.health_check_node_port = Some(30000);
    for (name, services) in [
        ("firewall accepts HealthCheckNodePort", vec![svc.clone()]),
        ("HealthCheckNodePort no longer has any rule", vec![]),
    ] {
        let mut spec = world(services);
        spec.node.name = "test-node".into();
        spec.node.host_if = Some(PodHop {
            mac: KERNEL_MAC,
            host_mac: HOST_MAC,
            host_ifindex: HOST_IF,
        });
        spec.node.nodeport_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
        let s = snap(spec, 1);
        let flows: &[Flow] = &[(name, "1.2.3.4", tcp, "192.168.0.2", 30000, "", false)];
        let wrong = replay(&s, &m, &[NODE_A], flows);
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}

/// The Service of TestExternalTrafficPolicyLocal and ...Cluster: a
/// LoadBalancer with an externalIP, a NodePort, one endpoint elsewhere
/// (10.180.0.1) and one on this node (10.180.2.1).
fn etp_service(m: &Remap, local: bool) -> ServiceSpec {
    let mut svc = service(
        "ns1",
        "svc1",
        m.ip("172.30.0.41"),
        vec![port(
            "p80",
            L4Proto::Tcp,
            80,
            Some(3001),
            &[
                (m.ip("10.180.0.1"), 80, ""),
                (m.ip("10.180.2.1"), 80, "test-node"),
            ],
        )],
    );
    svc.external_ips = vec![m.ip("192.168.99.11")];
    svc.load_balancer_ips = vec![m.ip("1.2.3.4")];
    svc.external_local = local;
    if local {
        svc.health_check_node_port = Some(30000);
    }
    svc
}

fn etp_remap() -> Remap {
    Remap::new(&[
        ("172.30.0.41", "198.18.96.41"),
        ("192.168.99.11", "198.18.150.11"),
        ("1.2.3.4", "198.18.151.1"),
        ("10.180.0.1", "198.19.3.10"),
        ("10.180.2.1", "198.19.1.10"),
        ("10.0.0.2", "198.19.1.11"),
        ("203.0.113.2", "198.18.200.10"),
        ("192.168.0.2", "198.18.0.2"),
    ])
}

/// TestExternalTrafficPolicyLocal.
#[test]
fn external_traffic_policy_local() {
    let m = etp_remap();
    let s = tables(vec![etp_service(&m, true)]);
    let (both, local, tcp) = (
        "10.180.0.1:80, 10.180.2.1:80",
        "10.180.2.1:80",
        L4Proto::Tcp,
    );
    #[rustfmt::skip]
    let flows: &[Flow] = &[
        ("pod to cluster IP hits both endpoints, unmasqueraded", "10.0.0.2", tcp, "172.30.0.41", 80, both, false),
        ("pod to external IP hits both endpoints, unmasqueraded", "10.0.0.2", tcp, "192.168.99.11", 80, both, false),
        ("external to external IP hits only local endpoint, unmasqueraded", "203.0.113.2", tcp, "192.168.99.11", 80, local, false),
        ("pod to LB IP hits only both endpoints, unmasqueraded", "10.0.0.2", tcp, "1.2.3.4", 80, both, false),
        ("external to LB IP hits only local endpoint, unmasqueraded", "203.0.113.2", tcp, "1.2.3.4", 80, local, false),
        ("pod to NodePort hits both endpoints, unmasqueraded", "10.0.0.2", tcp, "192.168.0.2", 3001, both, false),
        ("external to NodePort hits only local endpoint, unmasqueraded", "203.0.113.2", tcp, "192.168.0.2", 3001, local, false),
    ];
    let wrong = replay(&s, &m, &[NODE_A], flows);
    assert!(
        wrong.is_empty(),
        "{} of {} flows differ from kube-proxy:\n{}",
        wrong.len(),
        flows.len(),
        wrong.join("\n")
    );
}

/// TestExternalTrafficPolicyCluster.
#[test]
fn external_traffic_policy_cluster() {
    let m = etp_remap();
    let s = tables(vec![etp_service(&m, false)]);
    let (both, tcp) = ("10.180.0.1:80, 10.180.2.1:80", L4Proto::Tcp);
    #[rustfmt::skip]
    let flows: &[Flow] = &[
        ("pod to cluster IP hits both endpoints, unmasqueraded", "10.0.0.2", tcp, "172.30.0.41", 80, both, false),
        ("pod to external IP hits both endpoints, masqueraded", "10.0.0.2", tcp, "192.168.99.11", 80, both, true),
        ("external to external IP hits both endpoints, masqueraded", "203.0.113.2", tcp, "192.168.99.11", 80, both, true),
        ("pod to LB IP hits both endpoints, masqueraded", "10.0.0.2", tcp, "1.2.3.4", 80, both, true),
        ("external to LB IP hits both endpoints, masqueraded", "203.0.113.2", tcp, "1.2.3.4", 80, both, true),
        ("pod to NodePort hits both endpoints, masqueraded", "10.0.0.2", tcp, "192.168.0.2", 3001, both, true),
        ("external to NodePort hits both endpoints, masqueraded", "203.0.113.2", tcp, "192.168.0.2", 3001, both, true),
    ];
    let wrong = replay(&s, &m, &[NODE_A], flows);
    assert!(
        wrong.is_empty(),
        "{} of {} flows differ from kube-proxy:\n{}",
        wrong.len(),
        flows.len(),
        wrong.join("\n")
    );
}

/// TestInternalExternalMasquerade: three LoadBalancer Services (eTP=Cluster,
/// eTP=Local, iTP=Local), each with an endpoint here and one on "remote", and
/// 27 flows from a pod, the node and an external client, under the Go test's
/// four settings (base; no local-traffic detector; masqueradeAll; both), its
/// overrides applied as it applies them.
///
/// The "node to NodePort" rows come in through the host interface (see
/// `node_ports`). Known difference, asserted as nodeplane does it: without a detector
/// kube-proxy leaves the node's ClusterIP connections unmasqueraded (its
/// conntrack restores their replies in the kernel); nodeplane masquerades
/// every node connection, so the reply comes back through it (3 rows).
#[test]
fn internal_external_masquerade() {
    let m = Remap::new(&[
        ("172.30.0.41", "198.18.96.41"),
        ("172.30.0.42", "198.18.96.42"),
        ("172.30.0.43", "198.18.96.43"),
        ("1.2.3.4", "198.18.151.1"),
        ("5.6.7.8", "198.18.151.2"),
        ("9.10.11.12", "198.18.151.3"),
        ("10.180.0.1", "198.19.1.10"),
        ("10.180.0.2", "198.19.1.12"),
        ("10.180.0.3", "198.19.1.13"),
        ("10.180.1.1", "198.19.3.11"),
        ("10.180.1.2", "198.19.3.12"),
        ("10.180.1.3", "198.19.3.13"),
        ("10.0.0.2", "198.19.1.11"),
        ("203.0.113.2", "198.18.200.10"),
        ("192.168.0.2", "198.18.0.2"),
    ]);
    let tcp = L4Proto::Tcp;
    let svc = |n: &str, cip: &str, np: u16, lb: &str, here: &str, remote: &str| {
        let mut s = service(
            &format!("ns{n}"),
            &format!("svc{n}"),
            m.ip(cip),
            vec![port(
                "p80",
                tcp,
                80,
                Some(np),
                &[(m.ip(here), 80, "test-node"), (m.ip(remote), 80, "remote")],
            )],
        );
        s.load_balancer_ips = vec![m.ip(lb)];
        s
    };
    let svc1 = svc(
        "1",
        "172.30.0.41",
        3001,
        "1.2.3.4",
        "10.180.0.1",
        "10.180.1.1",
    );
    let mut svc2 = svc(
        "2",
        "172.30.0.42",
        3002,
        "5.6.7.8",
        "10.180.0.2",
        "10.180.1.2",
    );
    svc2.external_local = true;
    svc2.health_check_node_port = Some(30002);
    let mut svc3 = svc(
        "3",
        "172.30.0.43",
        3003,
        "9.10.11.12",
        "10.180.0.3",
        "10.180.1.3",
    );
    svc3.internal_local = true;
    let (pod, node, ext) = ("10.0.0.2", "192.168.0.2", "203.0.113.2");
    let (all1, all2, all3) = (
        "10.180.0.1:80, 10.180.1.1:80",
        "10.180.0.2:80, 10.180.1.2:80",
        "10.180.0.3:80, 10.180.1.3:80",
    );
    #[rustfmt::skip]
    let base: Vec<Flow> = vec![
        ("pod to ClusterIP", pod, tcp, "172.30.0.41", 80, all1, false),
        ("pod to NodePort", pod, tcp, node, 3001, all1, true),
        ("pod to LB", pod, tcp, "1.2.3.4", 80, all1, true),
        ("node to ClusterIP", node, tcp, "172.30.0.41", 80, all1, true),
        ("node to NodePort", node, tcp, node, 3001, all1, true),
        ("node to LB", node, tcp, "1.2.3.4", 80, all1, true),
        ("external to ClusterIP", ext, tcp, "172.30.0.41", 80, all1, true),
        ("external to NodePort", ext, tcp, node, 3001, all1, true),
        ("external to LB", ext, tcp, "1.2.3.4", 80, all1, true),
        ("pod to ClusterIP with eTP:Local", pod, tcp, "172.30.0.42", 80, all2, false),
        ("pod to NodePort with eTP:Local", pod, tcp, node, 3002, all2, false),
        ("pod to LB with eTP:Local", pod, tcp, "5.6.7.8", 80, all2, false),
        ("node to ClusterIP with eTP:Local", node, tcp, "172.30.0.42", 80, all2, true),
        ("node to NodePort with eTP:Local", node, tcp, node, 3001, all1, true),
        ("node to LB with eTP:Local", node, tcp, "5.6.7.8", 80, all2, true),
        ("external to ClusterIP with eTP:Local", ext, tcp, "172.30.0.42", 80, all2, true),
        ("external to NodePort with eTP:Local", ext, tcp, node, 3002, "10.180.0.2:80", false),
        ("external to LB with eTP:Local", ext, tcp, "5.6.7.8", 80, "10.180.0.2:80", false),
        ("pod to ClusterIP with iTP:Local", pod, tcp, "172.30.0.43", 80, "10.180.0.3:80", false),
        ("pod to NodePort with iTP:Local", pod, tcp, node, 3003, all3, true),
        ("pod to LB with iTP:Local", pod, tcp, "9.10.11.12", 80, all3, true),
        ("node to ClusterIP with iTP:Local", node, tcp, "172.30.0.43", 80, "10.180.0.3:80", true),
        ("node to NodePort with iTP:Local", node, tcp, node, 3003, all3, true),
        ("node to LB with iTP:Local", node, tcp, "9.10.11.12", 80, all3, true),
        ("external to ClusterIP with iTP:Local", ext, tcp, "172.30.0.43", 80, "10.180.0.3:80", true),
        ("external to NodePort with iTP:Local", ext, tcp, node, 3003, all3, true),
        ("external to LB with iTP:Local", ext, tcp, "9.10.11.12", 80, all3, true),
    ];
    // (name, output override, masq override), as the Go test's overrides.
    type Override = (&'static str, Option<&'static str>, Option<bool>);
    let no_detector: &[Override] = &[
        ("node to ClusterIP", None, Some(false)),
        ("node to ClusterIP with eTP:Local", None, Some(false)),
        ("node to ClusterIP with iTP:Local", None, Some(false)),
        ("external to ClusterIP", None, Some(false)),
        ("external to ClusterIP with eTP:Local", None, Some(false)),
        ("external to ClusterIP with iTP:Local", None, Some(false)),
        (
            "pod to NodePort with eTP:Local",
            Some("10.180.0.2:80"),
            None,
        ),
        ("pod to LB with eTP:Local", Some("10.180.0.2:80"), None),
    ];
    let masq_all: &[Override] = &[
        ("pod to ClusterIP", None, Some(true)),
        ("pod to ClusterIP with eTP:Local", None, Some(true)),
        ("pod to ClusterIP with iTP:Local", None, Some(true)),
    ];
    let both: Vec<Override> = masq_all
        .iter()
        .chain(no_detector.iter().filter(|o| o.1.is_some()))
        .copied()
        .collect();
    // nodeplane masquerades every connection of the node (see above).
    let node_always_masqueraded = [
        "node to ClusterIP",
        "node to ClusterIP with eTP:Local",
        "node to ClusterIP with iTP:Local",
    ];
    let (mut replayed, mut differ) = (0, 0);
    for (case, all, detector, overrides) in [
        ("base", false, true, &[][..]),
        ("no LocalTrafficDetector", false, false, no_detector),
        ("masqueradeAll", true, true, masq_all),
        (
            "masqueradeAll, no LocalTrafficDetector",
            true,
            false,
            &both[..],
        ),
    ] {
        let mut spec = world(vec![svc1.clone(), svc2.clone(), svc3.clone()]);
        spec.node.name = "test-node".into();
        spec.node.host_if = Some(PodHop {
            mac: KERNEL_MAC,
            host_mac: HOST_MAC,
            host_ifindex: HOST_IF,
        });
        spec.node.nodeport_cidrs = vec!["198.18.0.2/32".parse().unwrap()];
        for (i, last) in [(12u32, 12u8), (13, 13)] {
            spec.local_pods.push(shared::snapshot::PodRoute {
                ip: Ipv4Addr::new(198, 19, 1, last),
                mac: [2, 0xa0, 0, 0, last, 1],
                host_ifindex: i,
                host_mac: [2, 0xa0, 0, 0, last, 2],
                name: String::new(),
            });
        }
        spec.masquerade.all = all;
        spec.masquerade.local = if detector {
            LocalTraffic::Cidrs(vec!["198.19.0.0/16".parse().unwrap()])
        } else {
            LocalTraffic::None
        };
        let s = snap(spec, 1);
        let mut flows = base.clone();
        for &(name, output, masq) in overrides {
            let f = flows
                .iter_mut()
                .find(|f| f.0 == name)
                .unwrap_or_else(|| panic!("override {name} matches no flow"));
            if let Some(o) = output {
                assert_ne!(f.5, o, "{name}: the override changes the output");
                f.5 = o;
            }
            if let Some(q) = masq {
                assert_ne!(f.6, q, "{name}: the override changes masq");
                f.6 = q;
            }
        }
        // Where kube-proxy leaves them unmasqueraded (no detector, no
        // masqueradeAll): the known difference.
        for f in flows
            .iter_mut()
            .filter(|f| node_always_masqueraded.contains(&f.0) && !f.6)
        {
            assert!(!detector && !all, "{case}: {}", f.0);
            f.6 = true;
            differ += 1;
        }
        replayed += flows.len();
        let wrong = replay(&s, &m, &[NODE_A], &flows);
        assert!(
            wrong.is_empty(),
            "{case}: {} of {} flows differ from kube-proxy:\n{}",
            wrong.len(),
            flows.len(),
            wrong.join("\n")
        );
    }
    assert_eq!((replayed, differ), (4 * 27, 3));
}

/// One endpoint of the terminating-endpoint tests: address, ready, serving,
/// terminating, on this node.
type Ep = (&'static str, bool, bool, bool, bool);

/// TestTerminatingEndpointsTrafficPolicyLocal, ...Cluster and
/// TestInternalTrafficPolicy: one LoadBalancer Service (172.30.1.1, LB IP
/// 1.2.3.4), its endpoints in various conditions per case. An
/// endpoint on this node is a pod of node-a (198.19.1.2x), one elsewhere a pod
/// of node-b (198.19.3.2x).
fn one_service_case(
    local_policy: bool,
    internal_local: bool,
    case: &str,
    eps: &[Ep],
    flows: &[Flow],
) {
    let mut pairs: Vec<(&'static str, String)> = vec![
        ("172.30.1.1", "198.18.97.1".into()),
        ("1.2.3.4", "198.18.151.1".into()),
        ("10.0.0.2", "198.19.1.11".into()),
        ("203.0.113.2", "198.18.200.10".into()),
    ];
    for &(a, _, _, _, here) in eps {
        let last: u8 = a.rsplit('.').next().unwrap().parse().unwrap();
        let net = if here { "198.19.1" } else { "198.19.3" };
        pairs.push((a, format!("{net}.{}", 20 + last)));
    }
    let pairs_ref: Vec<(&'static str, &str)> =
        pairs.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let m = Remap::new(&pairs_ref);
    let mut svc = service(
        "ns1",
        "svc1",
        m.ip("172.30.1.1"),
        vec![port("", L4Proto::Tcp, 80, Some(3001), &[])],
    );
    svc.load_balancer_ips = vec![m.ip("1.2.3.4")];
    svc.external_local = local_policy;
    svc.internal_local = internal_local;
    for &(a, ready, serving, terminating, here) in eps {
        let mut e = ep(m.ip(a), 80, if here { "test-node" } else { "node-1" });
        (e.ready, e.serving, e.terminating) = (ready, serving, terminating);
        svc.ports[0].endpoints.push(e);
    }
    let mut spec = world(vec![svc]);
    spec.node.name = "test-node".into();
    spec.masquerade.local = LocalTraffic::Cidrs(vec!["198.19.0.0/16".parse().unwrap()]);
    for &(a, _, _, _, here) in eps {
        let ip = m.ip(a);
        if here && !spec.local_pods.iter().any(|p| p.ip == ip) {
            let last = ip.octets()[3];
            spec.local_pods.push(shared::snapshot::PodRoute {
                ip,
                mac: [2, 0xa0, 0, 0, last, 1],
                host_ifindex: u32::from(last),
                host_mac: [2, 0xa0, 0, 0, last, 2],
                name: String::new(),
            });
        }
    }
    let wrong = replay(&snap(spec, 1), &m, &[NODE_A], flows);
    assert!(
        wrong.is_empty(),
        "{case}: {} of {} flows differ from kube-proxy:\n{}",
        wrong.len(),
        flows.len(),
        wrong.join("\n")
    );
}

// In "no usable endpoints on any node" the Go test lists 10.0.1.5 twice, on
// this node and on node-1; here the second is 10.0.1.6 (one address cannot be
// a pod of both nodes in one world). Neither is serving, so neither is used.
#[test]
fn terminating_endpoints_traffic_policy_local() {
    let (pod, ext, tcp) = ("10.0.0.2", "203.0.113.2", L4Proto::Tcp);
    #[rustfmt::skip]
    let cases: &[(&str, &[Ep], &[Flow])] = &[
        ("ready endpoints exist",
         &[("10.0.1.1", true, true, false, true), ("10.0.1.2", true, true, false, true), ("10.0.1.3", false, true, true, true), ("10.0.1.4", false, false, true, true), ("10.0.1.5", true, true, false, false)],
         &[("pod to clusterIP", pod, tcp, "172.30.1.1", 80, "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80", false),
           ("external to LB", ext, tcp, "1.2.3.4", 80, "10.0.1.1:80, 10.0.1.2:80", false)]),
        ("only terminating endpoints exist",
         &[("10.0.1.2", false, true, true, true), ("10.0.1.3", false, true, true, true), ("10.0.1.4", false, false, true, true), ("10.0.1.5", true, true, false, false)],
         &[("pod to clusterIP", pod, tcp, "172.30.1.1", 80, "10.0.1.5:80", false),
           ("external to LB", ext, tcp, "1.2.3.4", 80, "10.0.1.2:80, 10.0.1.3:80", false)]),
        ("terminating endpoints on remote node",
         &[("10.0.1.5", false, true, true, false)],
         &[("pod to clusterIP", pod, tcp, "172.30.1.1", 80, "10.0.1.5:80", false),
           ("external to LB, no locally-usable endpoints", ext, tcp, "1.2.3.4", 80, "DROP", false)]),
        ("no usable endpoints on any node",
         &[("10.0.1.5", false, false, true, true), ("10.0.1.6", false, false, true, false)],
         &[("pod to clusterIP, no usable endpoints", pod, tcp, "172.30.1.1", 80, "REJECT", false),
           ("external to LB, no usable endpoints", ext, tcp, "1.2.3.4", 80, "REJECT", false)]),
        ("endpoints deleted", &[],
         &[("pod to clusterIP after endpoints deleted", pod, tcp, "172.30.1.1", 80, "REJECT", false),
           ("external to LB after endpoints deleted", ext, tcp, "1.2.3.4", 80, "REJECT", false)]),
    ];
    for (case, eps, flows) in cases {
        one_service_case(true, false, case, eps, flows);
    }
}

#[test]
fn terminating_endpoints_traffic_policy_cluster() {
    let (pod, ext, tcp) = ("10.0.0.2", "203.0.113.2", L4Proto::Tcp);
    #[rustfmt::skip]
    let cases: &[(&str, &[Ep], &[Flow])] = &[
        ("ready endpoints exist",
         &[("10.0.1.1", true, true, false, true), ("10.0.1.2", true, true, false, true), ("10.0.1.3", false, true, true, false), ("10.0.1.4", false, false, true, false), ("10.0.1.5", true, true, false, false)],
         &[("pod to clusterIP", pod, tcp, "172.30.1.1", 80, "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80", false),
           ("external to LB", ext, tcp, "1.2.3.4", 80, "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80", true)]),
        ("only terminating endpoints exist",
         &[("10.0.1.2", false, true, true, true), ("10.0.1.3", false, true, true, true), ("10.0.1.4", false, false, true, false), ("10.0.1.5", false, true, true, false)],
         &[("pod to clusterIP", pod, tcp, "172.30.1.1", 80, "10.0.1.2:80, 10.0.1.3:80, 10.0.1.5:80", false),
           ("external to LB", ext, tcp, "1.2.3.4", 80, "10.0.1.2:80, 10.0.1.3:80, 10.0.1.5:80", true)]),
        ("terminating endpoints on remote node",
         &[("10.0.1.5", false, true, true, false)],
         &[("pod to clusterIP", pod, tcp, "172.30.1.1", 80, "10.0.1.5:80", false),
           ("external to LB", ext, tcp, "1.2.3.4", 80, "10.0.1.5:80", true)]),
        ("no usable endpoints on any node",
         &[("10.0.1.5", false, false, true, true), ("10.0.1.6", false, false, true, false)],
         &[("pod to clusterIP", pod, tcp, "172.30.1.1", 80, "REJECT", false),
           ("external to LB", ext, tcp, "1.2.3.4", 80, "REJECT", false)]),
        ("endpoints deleted", &[],
         &[("pod to clusterIP after endpoints deleted", pod, tcp, "172.30.1.1", 80, "REJECT", false),
           ("external to LB after endpoints deleted", ext, tcp, "1.2.3.4", 80, "REJECT", false)]),
    ];
    for (case, eps, flows) in cases {
        one_service_case(false, false, case, eps, flows);
    }
}

/// TestInternalTrafficPolicy. (The Go test runs "endpoints deleted" after each
/// case; here once, with the Local policy: no endpoint at all rejects either way.)
#[test]
fn internal_traffic_policy() {
    let (pod, tcp) = ("10.0.0.2", L4Proto::Tcp);
    let ready = |a: &'static str, here: bool| (a, true, true, false, here);
    #[rustfmt::skip]
    let cases: &[(&str, bool, &[Ep], &[Flow])] = &[
        ("internalTrafficPolicy is cluster", false,
         &[ready("10.0.1.1", true), ready("10.0.1.2", false), ready("10.0.1.3", false)],
         &[("pod to ClusterIP hits all endpoints", pod, tcp, "172.30.1.1", 80, "10.0.1.1:80, 10.0.1.2:80, 10.0.1.3:80", false)]),
        ("internalTrafficPolicy is local and there is one local endpoint", true,
         &[ready("10.0.1.1", true), ready("10.0.1.2", false), ready("10.0.1.3", false)],
         &[("pod to ClusterIP hits only local endpoint", pod, tcp, "172.30.1.1", 80, "10.0.1.1:80", false)]),
        ("internalTrafficPolicy is local and there are multiple local endpoints", true,
         &[ready("10.0.1.1", true), ready("10.0.1.2", true), ready("10.0.1.3", false)],
         &[("pod to ClusterIP hits all local endpoints", pod, tcp, "172.30.1.1", 80, "10.0.1.1:80, 10.0.1.2:80", false)]),
        ("internalTrafficPolicy is local and there are no local endpoints", true,
         &[ready("10.0.1.1", false), ready("10.0.1.2", false), ready("10.0.1.3", false)],
         &[("no endpoints", pod, tcp, "172.30.1.1", 80, "DROP", false)]),
        ("endpoints deleted", true, &[],
         &[("endpoints deleted", pod, tcp, "172.30.1.1", 80, "REJECT", false)]),
    ];
    for (case, itp_local, eps, flows) in cases {
        one_service_case(false, *itp_local, case, eps, flows);
    }
}
