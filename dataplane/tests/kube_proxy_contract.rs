//! The pipeline against kube-proxy's contract (docs/design.md §4 items 2–10) and the
//! flannel-compatible overlay (§5), as tables a reader can check line by line:
//! source, ingress, destination, protocol, port → what comes out (which backend,
//! DROP with which reason, REJECT, masqueraded or not). Every transmitted frame's
//! IPv4 and L4 checksums (inner and outer) are verified by etherparse.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use dataplane::Verdict;
use shared::snapshot::{ServiceSpec, Snapshot};
use shared::{DropReason, L4Proto, Mac};
use support::*;

const WEB: &str = "198.18.96.10";
const DNS: &str = "198.18.96.11";
const EMPTY: &str = "198.18.96.12";
const EXT_IP: &str = "198.18.150.1";
const LB_IP: &str = "198.18.151.1";

fn web() -> ServiceSpec {
    let mut s = svc(
        "web",
        WEB,
        L4Proto::Tcp,
        80,
        vec![
            ep(A1, 8080, "node-a"),
            ep(B1, 8080, "node-b"),
            ep(K1, 8080, "node-k"),
        ],
    );
    s.ports[0].node_port = Some(30080);
    s.external_ips = vec![ip(EXT_IP)];
    s
}

fn dns() -> ServiceSpec {
    svc(
        "dns",
        DNS,
        L4Proto::Udp,
        53,
        vec![
            ep(A1, 5353, "node-a"),
            ep(B1, 5353, "node-b"),
            ep(K1, 5353, "node-k"),
        ],
    )
}

fn empty() -> Vec<ServiceSpec> {
    vec![
        svc("empty-tcp", EMPTY, L4Proto::Tcp, 80, vec![]),
        svc("empty-udp", EMPTY, L4Proto::Udp, 53, vec![]),
    ]
}

fn with_nodeport(mut s: ServiceSpec, np: u16) -> ServiceSpec {
    s.ports[0].node_port = Some(np);
    s
}

fn base() -> Vec<ServiceSpec> {
    let mut v = vec![web(), dns()];
    v.extend(empty());
    v
}

/// What reached a pod or a node: the inner frame if it was encapsulated.
fn delivered(out: &Out) -> (Verdict, Seen) {
    let s = seen(&out.bytes);
    if out.verdict == tx(UPLINK) && s.proto == 17 && s.dport == VXLAN_PORT {
        let (_, _, inner) = unwrap_vxlan(&out.bytes);
        return (out.verdict, seen(&inner));
    }
    (out.verdict, s)
}

fn backend(out: &Out) -> (Ipv4Addr, u16) {
    let (_, s) = delivered(out);
    (s.dst, s.dport)
}

// ---------------------------------------------------------------- §4 item 2

/// (name, ingress, src, src MAC, dst, dport, allowed backends or None = not a frontend)
type FrontendRow = (
    &'static str,
    u32,
    Ipv4Addr,
    Mac,
    Ipv4Addr,
    u16,
    Option<BTreeSet<(Ipv4Addr, u16)>>,
);

#[test]
fn frontends_clusterip_externalip_lb_nodeport() {
    let mut lb = svc(
        "lb",
        "198.18.96.16",
        L4Proto::Tcp,
        443,
        vec![ep(A1, 8443, "node-a")],
    );
    lb.load_balancer_ips = vec![ip(LB_IP)];
    let mut specs = base();
    specs.push(with_nodeport(lb, 30443));
    let s = snap(world(specs), 1);
    let backends_web: BTreeSet<(Ipv4Addr, u16)> = [(A1, 8080), (B1, 8080), (K1, 8080)].into();
    let rows: Vec<FrontendRow> = vec![
        (
            "pod → ClusterIP",
            A2_IF,
            A2,
            A2_MAC,
            ip(WEB),
            80,
            Some(backends_web.clone()),
        ),
        (
            "client → externalIP",
            UPLINK,
            EXT,
            MAC_EXT,
            ip(EXT_IP),
            80,
            Some(backends_web.clone()),
        ),
        (
            "client → LB ingress IP",
            UPLINK,
            EXT,
            MAC_EXT,
            ip(LB_IP),
            443,
            Some([(A1, 8443)].into()),
        ),
        (
            "client → NodePort on node IP",
            UPLINK,
            EXT,
            MAC_EXT,
            NODE_A,
            30080,
            Some(backends_web.clone()),
        ),
        (
            "client → NodePort on loopback",
            UPLINK,
            EXT,
            MAC_EXT,
            ip("127.0.0.1"),
            30080,
            None,
        ),
        (
            "client → NodePort on a non-node IP",
            UPLINK,
            EXT,
            MAC_EXT,
            ip("198.18.0.99"),
            30080,
            None,
        ),
    ];
    for (name, ingress, src, smac, dst, dport, want) in rows {
        let mut w = Worker::default();
        let out = w.run(
            &s,
            ingress,
            &frame(smac, UPLINK_MAC, src, dst, syn(40000, dport), 64),
        );
        match want {
            Some(set) => {
                assert!(
                    matches!(out.verdict, Verdict::Tx { .. }),
                    "{name}: {:?}",
                    out.verdict
                );
                let b = backend(&out);
                assert!(set.contains(&b), "{name}: went to {b:?}");
            }
            None => {
                if let Verdict::Tx { .. } = out.verdict {
                    let (_, seen) = delivered(&out);
                    assert_eq!(
                        (seen.dst, seen.dport),
                        (dst, dport),
                        "{name}: must not be DNATed"
                    );
                }
                assert_eq!(w.counters.flows_created, 0, "{name}: no NAT flow");
            }
        }
    }
}

/// The node's own processes (through the host interface nph1, to which the
/// node routes Service addresses): to a ClusterIP, and to a LoadBalancer IP of
/// an eTP=Local Service (kube-proxy: the node's traffic takes the cluster-wide
/// set, masqueraded); always masqueraded to the overlay address so replies
/// come back through nodeplane, restored, and sent to the kernel's end.
#[test]
fn the_nodes_own_connections_to_services() {
    const HOST_IF: u32 = 30;
    let kernel_mac: Mac = [2, 0xee, 0, 0, 0, 1];
    let np_mac: Mac = [2, 0xee, 0, 0, 0, 2];
    let mut local = svc(
        "l",
        "198.18.96.21",
        L4Proto::Tcp,
        80,
        vec![ep(B1, 8080, "node-b")],
    );
    local.external_local = true;
    local.load_balancer_ips = vec![ip(LB_IP)];
    let mut spec = world(vec![web(), local]);
    spec.node.host_if = Some(shared::snapshot::PodHop {
        mac: kernel_mac,
        host_mac: np_mac,
        host_ifindex: HOST_IF,
    });
    let s = snap(spec, 1);
    let mut backends = BTreeSet::new();
    for (i, (dst, dport)) in (0..30)
        .map(|_| (ip(WEB), 80))
        .chain([(ip(LB_IP), 80)])
        .enumerate()
    {
        let mut w = Worker::default();
        let sport = 40000 + u16::try_from(i).unwrap();
        let out = w.run(
            &s,
            HOST_IF,
            &frame(kernel_mac, np_mac, NODE_A, dst, syn(sport, dport), 64),
        );
        assert!(
            matches!(out.verdict, Verdict::Tx { .. }),
            "{:?}",
            out.verdict
        );
        let (_, d) = delivered(&out);
        assert_eq!(d.src, OVERLAY_A, "masqueraded");
        backends.insert(d.dst);
        let reply = if d.dst == A1 {
            (
                A1_IF,
                frame(
                    A1_MAC,
                    A1_HOST_MAC,
                    A1,
                    OVERLAY_A,
                    tcp(8080, d.sport, SYN | ACK),
                    64,
                ),
            )
        } else {
            let (vtep, node, mac) = if d.dst == B1 {
                (VTEP_B, NODE_B, MAC_B)
            } else {
                (VTEP_K, NODE_K, MAC_K)
            };
            let inner = frame(
                vtep,
                VTEP_A,
                d.dst,
                OVERLAY_A,
                tcp(8080, d.sport, SYN | ACK),
                64,
            );
            (UPLINK, vxlan(node, mac, 1, 0x08, &inner))
        };
        let out = w.run(&s, reply.0, &reply.1);
        assert_eq!(
            out.verdict,
            tx(HOST_IF),
            "the reply goes to the kernel's end"
        );
        let r = seen(&out.bytes);
        assert_eq!(
            (r.src, r.sport, r.dst, r.dport),
            (dst, dport, NODE_A, sport)
        );
        assert_eq!((r.smac, r.dmac), (np_mac, kernel_mac));
    }
    assert!(
        backends.contains(&A1) && backends.contains(&B1) && backends.contains(&K1),
        "{backends:?}"
    );
    // Only those replies go to the host interface: a VXLAN frame from another
    // node to node-a's own or overlay address (no flow of the node's) does not.
    for to in [NODE_A, OVERLAY_A] {
        let inner = frame(VTEP_B, VTEP_A, B1, to, syn(41000, 22), 64);
        let out = Worker::default().run(&s, UPLINK, &vxlan(NODE_B, MAC_B, 1, 0x08, &inner));
        assert_eq!(out.verdict, Verdict::Pass, "to {to}");
    }
}

/// An endpoint on the node's own address (the `kubernetes` Service on a
/// control-plane node) is the kernel's: the connection, from a pod or from the
/// node itself, goes out of the host interface masqueraded to its link
/// address, and the kernel's reply, arriving back on it, is restored to the
/// client. An endpoint on another node's address is reached from the node's
/// underlay address.
#[test]
fn endpoints_on_node_addresses_are_reached_through_the_host_interface() {
    const HOST_IF: u32 = 30;
    let kernel_mac: Mac = [2, 0xee, 0, 0, 0, 1];
    let np_mac: Mac = [2, 0xee, 0, 0, 0, 2];
    let link = dataplane::pipeline::HOST_LINK_ADDR;
    let api = "198.18.96.1";
    let mut spec = world(vec![
        svc(
            "kubernetes",
            api,
            L4Proto::Tcp,
            443,
            vec![ep(NODE_A, 6443, "node-a")],
        ),
        svc(
            "remote-api",
            "198.18.96.2",
            L4Proto::Tcp,
            443,
            vec![ep(NODE_B, 6443, "node-b")],
        ),
    ]);
    spec.node.host_if = Some(shared::snapshot::PodHop {
        mac: kernel_mac,
        host_mac: np_mac,
        host_ifindex: HOST_IF,
    });
    let s = snap(spec, 1);
    // (client ingress, client MAC, our MAC on that side, client, where the
    // restored reply leaves)
    for (ingress, cmac, ourmac, client, back) in [
        (A2_IF, A2_MAC, A2_HOST_MAC, A2, A2_IF),
        (HOST_IF, kernel_mac, np_mac, NODE_A, HOST_IF),
    ] {
        let mut w = Worker::default();
        let out = w.run(
            &s,
            ingress,
            &frame(cmac, ourmac, client, ip(api), syn(40000, 443), 64),
        );
        assert_eq!(out.verdict, tx(HOST_IF), "from {client}: to the kernel");
        let d = seen(&out.bytes);
        assert_eq!(
            (d.src, d.dst, d.dport),
            (link, NODE_A, 6443),
            "from {client}"
        );
        assert_eq!((d.smac, d.dmac), (np_mac, kernel_mac));
        // The kernel answers the link address, out of nph0.
        let out = w.run(
            &s,
            HOST_IF,
            &frame(
                kernel_mac,
                np_mac,
                NODE_A,
                link,
                tcp(6443, d.sport, SYN | ACK),
                64,
            ),
        );
        assert_eq!(out.verdict, tx(back), "reply to {client}");
        let r = seen(&out.bytes);
        assert_eq!(
            (r.src, r.sport, r.dst, r.dport),
            (ip(api), 443, client, 40000)
        );
    }
    // The node to an endpoint on node-b's address: from node-a's address,
    // over the uplink, and the reply (to a masquerade port) restored.
    let mut w = Worker::default();
    let out = w.run(
        &s,
        HOST_IF,
        &frame(
            kernel_mac,
            np_mac,
            NODE_A,
            ip("198.18.96.2"),
            syn(40001, 443),
            64,
        ),
    );
    assert_eq!(out.verdict, tx(UPLINK));
    let d = seen(&out.bytes);
    assert_eq!((d.src, d.dst, d.dport), (NODE_A, NODE_B, 6443));
    let out = w.run(
        &s,
        UPLINK,
        &frame(
            MAC_B,
            UPLINK_MAC,
            NODE_B,
            NODE_A,
            tcp(6443, d.sport, SYN | ACK),
            64,
        ),
    );
    assert_eq!(out.verdict, tx(HOST_IF));
    let r = seen(&out.bytes);
    assert_eq!(
        (r.src, r.sport, r.dst, r.dport),
        (ip("198.18.96.2"), 443, NODE_A, 40001)
    );
    // A pod forging the kernel's reply to the link address is dropped; a
    // frame arriving with the link address as its source never reaches the
    // kernel.
    let mut w = Worker::default();
    let out = w.run(
        &s,
        A2_IF,
        &frame(A2_MAC, A2_HOST_MAC, A2, ip(api), syn(40002, 443), 64),
    );
    let d = seen(&out.bytes);
    let forged = frame(
        A1_MAC,
        A1_HOST_MAC,
        NODE_A,
        link,
        tcp(6443, d.sport, SYN | ACK),
        64,
    );
    assert_eq!(
        w.run(&s, A1_IF, &forged).verdict,
        Verdict::Drop(shared::DropReason::HostLinkSpoofed)
    );
    let inner = frame(VTEP_B, VTEP_A, link, NODE_A, syn(40003, 22), 64);
    let out = w.run(&s, UPLINK, &vxlan(NODE_B, MAC_B, 1, 0x08, &inner));
    assert_eq!(
        out.verdict,
        Verdict::Pass,
        "a frame from the link address stays out"
    );
    // With two workers the kernel's reply reaches the flow's worker (its
    // masquerade port names it), whichever that is. (A client's worker is
    // chosen by its address: a1 and a2 between them cover both.)
    for me in 0..2 {
        let mut w = Worker::owning(me, 2);
        let mut done = 0;
        for (ifx, cmac, ourmac, client) in [
            (A1_IF, A1_MAC, A1_HOST_MAC, A1),
            (A2_IF, A2_MAC, A2_HOST_MAC, A2),
        ] {
            for sport in 41000..41016 {
                let out = w.run(
                    &s,
                    ifx,
                    &frame(cmac, ourmac, client, ip(api), syn(sport, 443), 64),
                );
                if !matches!(out.verdict, Verdict::Tx { .. }) {
                    continue; // another worker's client
                }
                let d = seen(&out.bytes);
                let reply = frame(
                    kernel_mac,
                    np_mac,
                    NODE_A,
                    link,
                    tcp(6443, d.sport, SYN | ACK),
                    64,
                );
                // Arriving at the other worker (its queue), it is handed here.
                let out = Worker::owning(1 - me, 2).run(&s, HOST_IF, &reply);
                assert_eq!(
                    out.verdict,
                    Verdict::Handoff { worker: me },
                    "worker {me}'s flow"
                );
                let out = w.run_handed_in(&s, HOST_IF, &reply);
                assert_eq!(
                    out.verdict,
                    tx(ifx),
                    "worker {me}: the reply is handled here"
                );
                done += 1;
            }
        }
        assert!(done > 0, "worker {me} owned some of the connections");
    }
}

/// kube-proxy's nodePortAddresses: NodePorts answer only on the node IPs
/// inside the CIDRs; another node IP is still the node's (its traffic is
/// passed to the host, never sent away), it just has no NodePorts.
#[test]
fn nodeport_addresses_narrow_where_nodeports_answer() {
    let second = ip("198.18.0.3");
    let mut spec = world(base());
    spec.node.node_ips = vec![NODE_A, second];
    spec.node.nodeport_cidrs = vec!["198.18.0.2/32".parse().unwrap()];
    let s = snap(spec, 1);
    let mut w = Worker::default();
    let out = w.run(
        &s,
        UPLINK,
        &frame(MAC_EXT, UPLINK_MAC, EXT, NODE_A, syn(40000, 30080), 64),
    );
    assert!(
        matches!(out.verdict, Verdict::Tx { .. }),
        "{:?}",
        out.verdict
    );
    assert_eq!(backend(&out).1, 8080, "NodePort on the listed address");
    let out = w.run(
        &s,
        UPLINK,
        &frame(MAC_EXT, UPLINK_MAC, EXT, second, syn(40001, 30080), 64),
    );
    assert_eq!(out.verdict, Verdict::Pass, "the other node IP: the host's");
    assert_eq!(w.counters.flows_created, 1);
    // Without the setting, every node IP answers.
    let mut spec = world(base());
    spec.node.node_ips = vec![NODE_A, second];
    let s = snap(spec, 1);
    let out = Worker::default().run(
        &s,
        UPLINK,
        &frame(MAC_EXT, UPLINK_MAC, EXT, second, syn(40001, 30080), 64),
    );
    assert_eq!(backend(&out).1, 8080);
}

/// A ClusterIP on a port or protocol none of its Service's ports has is
/// rejected, as kube-proxy's `cluster-ips` set does (kube-proxy's REJECT;
/// nodeplane answers TCP with a RST, the rest with ICMP port unreachable, as
/// for a Service without endpoints); no flow is created.
#[test]
fn clusterip_on_a_wrong_port_or_protocol_is_rejected() {
    let s = snap(world(base()), 1);
    let mut w = Worker::default();
    let out = w.run(
        &s,
        A2_IF,
        &frame(A2_MAC, A2_HOST_MAC, A2, ip(WEB), syn(40000, 81), 64),
    );
    assert_eq!(out.verdict, tx(A2_IF), "TCP to a port the Service lacks");
    let r = seen(&out.bytes);
    assert_eq!((r.src, r.sport, r.dst, r.dport), (ip(WEB), 81, A2, 40000));
    assert_eq!(r.tcp_flags, RST | ACK);
    // The Service's port 80 is TCP: UDP to it gets port unreachable.
    let out = w.run(
        &s,
        A2_IF,
        &frame(A2_MAC, A2_HOST_MAC, A2, ip(WEB), udp(40001, 80), 64),
    );
    assert_eq!(out.verdict, tx(A2_IF), "UDP to a TCP-only port");
    let r = seen(&out.bytes);
    assert_eq!((r.src, r.dst, r.icmp), (ip(WEB), A2, Some((3, 3))));
    assert_eq!(&r.payload[20..24], &[0x9c, 0x41, 0, 80], "quoted UDP ports");
    assert_eq!(w.counters.rejected, 2);
    assert_eq!(w.counters.flows_created, 0);
    // The Service's own port still works.
    let out = w.run(
        &s,
        A2_IF,
        &frame(A2_MAC, A2_HOST_MAC, A2, ip(WEB), syn(40002, 80), 64),
    );
    assert!(matches!(out.verdict, Verdict::Tx { .. }));
    assert_eq!(backend(&out).1, 8080);
}

// ---------------------------------------------------------------- §4 item 3

#[test]
fn endpoint_conditions_and_topology_hints() {
    let mut not_ready = ep(A1, 8080, "node-a");
    not_ready.ready = false;
    let mut terminating_serving = ep(A2, 8080, "node-a");
    terminating_serving.ready = false;
    terminating_serving.terminating = true;
    let mut terminating_not_serving = ep(B1, 8080, "node-b");
    terminating_not_serving.ready = false;
    terminating_not_serving.serving = false;
    terminating_not_serving.terminating = true;
    let hinted = |a, zone: &str| {
        let mut e = ep(a, 8080, "n");
        e.hint_zones = Some(vec![zone.to_string()]);
        e
    };
    // (name, endpoints, the only backends that may be chosen)
    let rows: Vec<(
        &str,
        Vec<shared::snapshot::EndpointSpec>,
        BTreeSet<Ipv4Addr>,
    )> = vec![
        (
            "not-ready skipped",
            vec![not_ready.clone(), ep(B1, 8080, "node-b")],
            [B1].into(),
        ),
        (
            "serving+terminating fallback when none ready",
            vec![
                not_ready.clone(),
                terminating_serving.clone(),
                terminating_not_serving.clone(),
            ],
            [A2].into(),
        ),
        (
            "hints narrow to this zone",
            vec![
                hinted(A1, "zone-a"),
                hinted(B1, "zone-b"),
                hinted(K1, "zone-b"),
            ],
            [A1].into(),
        ),
        (
            "one endpoint without hints: hints ignored",
            vec![
                hinted(A1, "zone-a"),
                hinted(B1, "zone-b"),
                ep(K1, 8080, "node-k"),
            ],
            [A1, B1, K1].into(),
        ),
        (
            "no hint for this zone: hints ignored",
            vec![hinted(B1, "zone-b"), hinted(K1, "zone-c")],
            [B1, K1].into(),
        ),
    ];
    for (name, eps, allowed) in rows {
        let s = snap(world(vec![svc("s", WEB, L4Proto::Tcp, 80, eps)]), 1);
        let mut w = Worker::default();
        let mut used = BTreeSet::new();
        for port in 0..200u16 {
            let out = w.run(
                &s,
                A2_IF,
                &frame(A2_MAC, A2_HOST_MAC, A2, ip(WEB), syn(20000 + port, 80), 64),
            );
            let (b, _) = backend(&out);
            assert!(allowed.contains(&b), "{name}: chose {b}");
            used.insert(b);
        }
        assert_eq!(used, allowed, "{name}: every allowed backend gets flows");
    }
}

// ---------------------------------------------------------------- §4 item 4

#[test]
fn maglev_spreads_and_established_flows_keep_their_backend() {
    let s1 = snap(world(base()), 1);
    let mut w = Worker::default();
    let mut count: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
    let mut chosen = Vec::new();
    for port in 0..3000u16 {
        let out = w.run(
            &s1,
            A2_IF,
            &frame(A2_MAC, A2_HOST_MAC, A2, ip(WEB), syn(10000 + port, 80), 64),
        );
        let b = backend(&out);
        assert_eq!(b.1, 8080, "targetPort");
        *count.entry(b.0).or_default() += 1;
        chosen.push(b.0);
    }
    assert_eq!(count.len(), 3);
    for (b, n) in &count {
        assert!(
            (700..=1300).contains(n),
            "backend {b} got {n} of 3000 flows"
        );
    }
    // A backend is added: established flows keep theirs.
    let mut more = base();
    more[0].ports[0].endpoints.push(ep(B2, 8080, "node-b"));
    let s2 = snap(world(more), 2);
    for (i, port) in (0..3000u16).enumerate() {
        let out = w.run(
            &s2,
            A2_IF,
            &frame(
                A2_MAC,
                A2_HOST_MAC,
                A2,
                ip(WEB),
                tcp(10000 + port, 80, ACK),
                64,
            ),
        );
        assert_eq!(
            backend(&out).0,
            chosen[i],
            "flow {i} moved when a backend was added"
        );
    }
    // Backend K1 is removed: only its flows move, to live backends.
    let mut fewer = base();
    fewer[0].ports[0].endpoints.retain(|e| e.ip != K1);
    let s3 = snap(world(fewer), 3);
    let flushed_before = w.counters.flows_flushed;
    for (i, port) in (0..3000u16).enumerate() {
        let out = w.run(
            &s3,
            A2_IF,
            &frame(
                A2_MAC,
                A2_HOST_MAC,
                A2,
                ip(WEB),
                tcp(10000 + port, 80, ACK),
                64,
            ),
        );
        let b = backend(&out).0;
        if chosen[i] == K1 {
            assert!(
                b == A1 || b == B1,
                "flow {i} of a removed backend went to {b}"
            );
        } else {
            assert_eq!(b, chosen[i], "flow {i} moved though its backend stayed");
        }
    }
    assert_eq!(
        w.counters.flows_flushed - flushed_before,
        u64::from(count[&K1])
    );
    assert_eq!(
        w.counters.flow_evictions, 0,
        "the table was big enough: nothing evicted"
    );
}

// ---------------------------------------------------------------- §4 item 5

/// `--masquerade-mode remote-only` (nodeplane's earlier rule): external
/// traffic is masqueraded toward a backend on another node only.
#[test]
fn remote_only_masquerades_nodeport_to_remote_and_hairpin_but_not_to_local() {
    let remote_only = with_nodeport(
        svc(
            "r",
            "198.18.96.20",
            L4Proto::Tcp,
            80,
            vec![ep(B1, 8080, "node-b")],
        ),
        30090,
    );
    let local_only = with_nodeport(
        svc(
            "l",
            "198.18.96.21",
            L4Proto::Tcp,
            80,
            vec![ep(A1, 8080, "node-a")],
        ),
        30091,
    );
    let mut spec = world(vec![remote_only, local_only]);
    spec.masquerade.mode = MasqueradeMode::RemoteOnly;
    let s = snap(spec, 1);
    let mut w = Worker::default();

    // client → NodePort → remote backend: SNAT to node-a's overlay IP, encapsulated to node-b.
    let out = w.run(
        &s,
        UPLINK,
        &frame(MAC_EXT, UPLINK_MAC, EXT, NODE_A, syn(40000, 30090), 64),
    );
    assert_eq!(out.verdict, tx(UPLINK));
    let (outer, _, inner) = unwrap_vxlan(&out.bytes);
    assert_eq!((outer.src, outer.dst), (NODE_A, NODE_B));
    let inner = seen(&inner);
    assert_eq!(
        (inner.src, inner.dst, inner.dport),
        (OVERLAY_A, B1, 8080),
        "masqueraded"
    );
    assert_eq!(w.counters.masqueraded, 1);
    // node-b's reply comes back over the overlay; the client sees the NodePort.
    let reply = frame(
        VTEP_B,
        VTEP_A,
        B1,
        OVERLAY_A,
        tcp(8080, inner.sport, SYN | ACK),
        64,
    );
    let out = w.run(&s, UPLINK, &vxlan(NODE_B, MAC_B, 1, 0x08, &reply));
    assert_eq!(out.verdict, tx(UPLINK));
    let r = seen(&out.bytes);
    assert_eq!(
        (r.src, r.sport, r.dst, r.dport),
        (NODE_A, 30090, EXT, 40000)
    );
    assert_eq!((r.smac, r.dmac), (UPLINK_MAC, MAC_EXT));

    // client → NodePort → local backend: the client IP is kept.
    let out = w.run(
        &s,
        UPLINK,
        &frame(MAC_EXT, UPLINK_MAC, EXT, NODE_A, syn(40001, 30091), 64),
    );
    assert_eq!(out.verdict, tx(A1_IF));
    let d = seen(&out.bytes);
    assert_eq!((d.src, d.sport, d.dst, d.dport), (EXT, 40001, A1, 8080));
    assert_eq!((d.smac, d.dmac), (A1_HOST_MAC, A1_MAC));
    assert_eq!(w.counters.masqueraded, 1, "no SNAT to a local backend");

    // hairpin: a1 → ClusterIP → a1 itself is masqueraded, and the reply restored.
    let out = w.run(
        &s,
        A1_IF,
        &frame(
            A1_MAC,
            A1_HOST_MAC,
            A1,
            ip("198.18.96.21"),
            syn(33000, 80),
            64,
        ),
    );
    assert_eq!(out.verdict, tx(A1_IF));
    let d = seen(&out.bytes);
    assert_eq!(
        (d.src, d.dst, d.dport),
        (OVERLAY_A, A1, 8080),
        "hairpin masqueraded"
    );
    let out = w.run(
        &s,
        A1_IF,
        &frame(
            A1_MAC,
            A1_HOST_MAC,
            A1,
            OVERLAY_A,
            tcp(8080, d.sport, SYN | ACK),
            64,
        ),
    );
    assert_eq!(out.verdict, tx(A1_IF));
    let r = seen(&out.bytes);
    assert_eq!(
        (r.src, r.sport, r.dst, r.dport),
        (ip("198.18.96.21"), 80, A1, 33000)
    );
}

/// Masquerade as kube-proxy decides it (the default): NodePort traffic of an
/// eTP=Cluster Service is masqueraded toward every backend, local ones too,
/// whoever the client; a ClusterIP reached from outside the cluster (per the
/// local-traffic detector) is masqueraded, from a pod it is not, unless
/// masqueradeAll; an eTP=Local Service masquerades nothing (pods take the
/// cluster-wide set, outsiders the local one). Every masqueraded flow's reply
/// is restored.
#[test]
fn masquerade_decisions_are_kube_proxys() {
    let mut cluster = svc(
        "c",
        "198.18.96.20",
        L4Proto::Tcp,
        80,
        vec![ep(A1, 8080, "node-a")],
    );
    cluster.ports[0].node_port = Some(30090);
    let mut local = svc(
        "l",
        "198.18.96.21",
        L4Proto::Tcp,
        80,
        vec![ep(A1, 8080, "node-a"), ep(B1, 8080, "node-b")],
    );
    local.ports[0].node_port = Some(30091);
    local.external_local = true;
    let remote = svc(
        "r",
        "198.18.96.22",
        L4Proto::Tcp,
        80,
        vec![ep(B1, 8080, "node-b")],
    );
    let services = vec![cluster, local, remote];
    // (name, masqueradeAll, ingress, src, src MAC, dst, dport, masqueraded)
    type Row = (&'static str, bool, u32, Ipv4Addr, Mac, Ipv4Addr, u16, bool);
    let rows: [Row; 9] = [
        (
            "client → NodePort (eTP=Cluster) → local backend",
            false,
            UPLINK,
            EXT,
            MAC_EXT,
            NODE_A,
            30090,
            true,
        ),
        (
            "pod → NodePort (eTP=Cluster) → local backend",
            false,
            A2_IF,
            A2,
            A2_MAC,
            NODE_A,
            30090,
            true,
        ),
        (
            "client → ClusterIP from outside the cluster",
            false,
            UPLINK,
            EXT,
            MAC_EXT,
            ip("198.18.96.20"),
            80,
            true,
        ),
        (
            "pod → ClusterIP",
            false,
            A2_IF,
            A2,
            A2_MAC,
            ip("198.18.96.20"),
            80,
            false,
        ),
        (
            "pod → ClusterIP with masqueradeAll",
            true,
            A2_IF,
            A2,
            A2_MAC,
            ip("198.18.96.20"),
            80,
            true,
        ),
        (
            "pod → ClusterIP → remote backend",
            false,
            A2_IF,
            A2,
            A2_MAC,
            ip("198.18.96.22"),
            80,
            false,
        ),
        (
            "pod → ClusterIP → remote backend, masqueradeAll",
            true,
            A2_IF,
            A2,
            A2_MAC,
            ip("198.18.96.22"),
            80,
            true,
        ),
        (
            "client → NodePort (eTP=Local) → local backend",
            false,
            UPLINK,
            EXT,
            MAC_EXT,
            NODE_A,
            30091,
            false,
        ),
        (
            "pod → NodePort (eTP=Local): cluster-wide set",
            false,
            A2_IF,
            A2,
            A2_MAC,
            NODE_A,
            30091,
            false,
        ),
    ];
    for (name, all, ingress, src, smac, dst, dport, masq) in rows {
        let mut spec = world(services.clone());
        spec.masquerade.all = all;
        let s = snap(spec, 1);
        let mut w = Worker::default();
        let dmac = if ingress == UPLINK {
            UPLINK_MAC
        } else {
            A2_HOST_MAC
        };
        let out = w.run(
            &s,
            ingress,
            &frame(smac, dmac, src, dst, syn(40000, dport), 64),
        );
        assert!(
            matches!(out.verdict, Verdict::Tx { .. }),
            "{name}: {:?}",
            out.verdict
        );
        let (_, d) = delivered(&out);
        assert_eq!(d.dport, 8080, "{name}: DNATed");
        let want_src = if masq { OVERLAY_A } else { src };
        assert_eq!(d.src, want_src, "{name}: source the backend sees");
        assert_eq!(w.counters.masqueraded, u64::from(masq), "{name}");
        // The backend's reply, from wherever it is, is restored.
        let reply = if d.dst == B1 {
            let inner = frame(VTEP_B, VTEP_A, B1, d.src, tcp(8080, d.sport, SYN | ACK), 64);
            vxlan(NODE_B, MAC_B, 1, 0x08, &inner)
        } else {
            frame(
                A1_MAC,
                A1_HOST_MAC,
                A1,
                d.src,
                tcp(8080, d.sport, SYN | ACK),
                64,
            )
        };
        let rin = if d.dst == B1 { UPLINK } else { A1_IF };
        let out = w.run(&s, rin, &reply);
        assert!(
            matches!(out.verdict, Verdict::Tx { .. }),
            "{name}: reply {:?}",
            out.verdict
        );
        let (_, r) = delivered(&out);
        assert_eq!(
            (r.src, r.sport, r.dst, r.dport),
            (dst, dport, src, 40000),
            "{name}: reply"
        );
    }
    // pod → eTP=Local NodePort goes to the cluster-wide set: both backends
    // serve it over enough client ports (the local policy would give only a1).
    let s = snap(world(services.clone()), 1);
    let mut seen_backends = BTreeSet::new();
    for port in 41000..41040 {
        let mut w = Worker::default();
        let out = w.run(
            &s,
            A2_IF,
            &frame(A2_MAC, A2_HOST_MAC, A2, NODE_A, syn(port, 30091), 64),
        );
        seen_backends.insert(backend(&out).0);
    }
    assert_eq!(seen_backends, BTreeSet::from([A1, B1]));
    // Without a detector (no pod CIDRs known, as kube-proxy without
    // --cluster-cidr) an outside client of a ClusterIP keeps its address.
    let mut spec = world(services);
    spec.masquerade.local = LocalTraffic::None;
    let s = snap(spec, 1);
    let mut w = Worker::default();
    let out = w.run(
        &s,
        UPLINK,
        &frame(
            MAC_EXT,
            UPLINK_MAC,
            EXT,
            ip("198.18.96.20"),
            syn(40000, 80),
            64,
        ),
    );
    assert_eq!(backend(&out), (A1, 8080));
    assert_eq!(delivered(&out).1.src, EXT);
    assert_eq!(w.counters.masqueraded, 0);
}

/// detectLocalMode by interface (InterfaceNamePrefix, BridgeInterface): the
/// frame's ingress interface decides whether it is the cluster's.
#[test]
fn local_traffic_by_interface() {
    let mut c = svc(
        "c",
        "198.18.96.20",
        L4Proto::Tcp,
        80,
        vec![ep(B1, 8080, "node-b")],
    );
    c.ports[0].node_port = None;
    let mut spec = world(vec![c]);
    // Only a1's interface matches the prefix.
    spec.masquerade.local = LocalTraffic::Interfaces(vec![A1_IF]);
    let s = snap(spec, 1);
    let mut w = Worker::default();
    let out = w.run(
        &s,
        A1_IF,
        &frame(
            A1_MAC,
            A1_HOST_MAC,
            A1,
            ip("198.18.96.20"),
            syn(40000, 80),
            64,
        ),
    );
    assert_eq!(delivered(&out).1.src, A1, "a1's interface is local");
    let out = w.run(
        &s,
        A2_IF,
        &frame(
            A2_MAC,
            A2_HOST_MAC,
            A2,
            ip("198.18.96.20"),
            syn(40000, 80),
            64,
        ),
    );
    assert_eq!(delivered(&out).1.src, OVERLAY_A, "a2's is not: masqueraded");
    assert_eq!(w.counters.masqueraded, 1);
}

/// An on-link client the node has never resolved (no neighbour entry yet):
/// replies to its NodePort connection go back to the MAC it came from, for both
/// a local and a remote backend, instead of being dropped for want of ARP.
#[test]
fn nodeport_replies_reach_an_unresolved_on_link_client() {
    let stranger = ip("198.18.200.77");
    let stranger_mac: Mac = [2, 0, 0, 0, 0, 0x77];
    let services = vec![
        with_nodeport(
            svc(
                "r",
                "198.18.96.20",
                L4Proto::Tcp,
                80,
                vec![ep(B1, 8080, "node-b")],
            ),
            30090,
        ),
        with_nodeport(
            svc(
                "l",
                "198.18.96.21",
                L4Proto::Tcp,
                80,
                vec![ep(A1, 8080, "node-a")],
            ),
            30091,
        ),
    ];
    // Local backend, masqueraded (kube-proxy's rule) or not (remote-only): the
    // SYN-ACK from a1 goes straight back to the client's MAC.
    for (mode, masq) in [
        (MasqueradeMode::KubeProxy, true),
        (MasqueradeMode::RemoteOnly, false),
    ] {
        let mut spec = world(services.clone());
        spec.masquerade.mode = mode;
        let s = snap(spec, 1);
        assert!(s.neighbor(u32::from(stranger)).is_none());
        let mut w = Worker::default();
        let out = w.run(
            &s,
            UPLINK,
            &frame(
                stranger_mac,
                UPLINK_MAC,
                stranger,
                NODE_A,
                syn(41000, 30091),
                64,
            ),
        );
        assert_eq!(out.verdict, tx(A1_IF));
        let d = seen(&out.bytes);
        assert_eq!(
            d.src == stranger,
            !masq,
            "{mode:?}: client IP kept or masqueraded"
        );
        let out = w.run(
            &s,
            A1_IF,
            &frame(
                A1_MAC,
                A1_HOST_MAC,
                A1,
                d.src,
                tcp(8080, d.sport, SYN | ACK),
                64,
            ),
        );
        assert_eq!(out.verdict, tx(UPLINK), "{mode:?}");
        let r = seen(&out.bytes);
        assert_eq!(
            (r.src, r.sport, r.dst, r.dport),
            (NODE_A, 30091, stranger, 41000)
        );
        assert_eq!((r.smac, r.dmac), (UPLINK_MAC, stranger_mac));
    }
    let s = snap(world(services), 1);
    let mut w = Worker::default();

    // Remote backend: masqueraded over the overlay, reply back to the client's MAC.
    let out = w.run(
        &s,
        UPLINK,
        &frame(
            stranger_mac,
            UPLINK_MAC,
            stranger,
            NODE_A,
            syn(41001, 30090),
            64,
        ),
    );
    assert_eq!(out.verdict, tx(UPLINK));
    let (_, _, inner) = unwrap_vxlan(&out.bytes);
    let inner = seen(&inner);
    let reply = frame(
        VTEP_B,
        VTEP_A,
        B1,
        OVERLAY_A,
        tcp(8080, inner.sport, SYN | ACK),
        64,
    );
    let out = w.run(&s, UPLINK, &vxlan(NODE_B, MAC_B, 1, 0x08, &reply));
    assert_eq!(out.verdict, tx(UPLINK));
    let r = seen(&out.bytes);
    assert_eq!(
        (r.src, r.sport, r.dst, r.dport),
        (NODE_A, 30090, stranger, 41001)
    );
    assert_eq!(r.dmac, stranger_mac);

    // A pod talking to the same unresolved address off-cluster still needs the
    // kernel's neighbour (or the gateway): the learned MAC is per flow only.
    assert_eq!(w.counters.dropped(DropReason::NoNeighbor), 0);
}

// ---------------------------------------------------------------- §4 item 6

#[test]
fn traffic_policy_local() {
    let mut etp = with_nodeport(
        svc(
            "etp",
            "198.18.96.13",
            L4Proto::Tcp,
            80,
            vec![ep(A2, 8080, "node-a"), ep(B2, 8080, "node-b")],
        ),
        30081,
    );
    etp.external_local = true;
    let mut etp_none = with_nodeport(
        svc(
            "etp-none",
            "198.18.96.14",
            L4Proto::Tcp,
            80,
            vec![ep(B2, 8080, "node-b")],
        ),
        30082,
    );
    etp_none.external_local = true;
    let mut itp = svc(
        "itp",
        "198.18.96.15",
        L4Proto::Tcp,
        80,
        vec![ep(B2, 8080, "node-b")],
    );
    itp.internal_local = true;
    let mut itp_ok = svc(
        "itp-ok",
        "198.18.96.18",
        L4Proto::Tcp,
        80,
        vec![ep(A2, 8080, "node-a"), ep(B2, 8080, "node-b")],
    );
    itp_ok.internal_local = true;
    let s = snap(world(vec![etp, etp_none, itp, itp_ok]), 1);
    let mut w = Worker::default();
    for port in 0..100u16 {
        let out = w.run(
            &s,
            UPLINK,
            &frame(
                MAC_EXT,
                UPLINK_MAC,
                EXT,
                NODE_A,
                syn(41000 + port, 30081),
                64,
            ),
        );
        assert_eq!(out.verdict, tx(A2_IF), "eTP=Local: local endpoint only");
        let d = seen(&out.bytes);
        assert_eq!((d.src, d.dst), (EXT, A2), "eTP=Local keeps the client IP");
        let out = w.run(
            &s,
            A1_IF,
            &frame(
                A1_MAC,
                A1_HOST_MAC,
                A1,
                ip("198.18.96.18"),
                syn(42000 + port, 80),
                64,
            ),
        );
        assert_eq!(out.verdict, tx(A2_IF), "iTP=Local: local endpoint only");
    }
    assert_eq!(w.counters.masqueraded, 0);
    // (name, ingress, src, dst, dport, expected drop)
    let rows = [
        (
            "eTP=Local, no local endpoint",
            UPLINK,
            EXT,
            NODE_A,
            30082u16,
            DropReason::NoLocalEndpoint,
        ),
        (
            "iTP=Local, no local endpoint",
            A1_IF,
            A1,
            ip("198.18.96.15"),
            80,
            DropReason::NoLocalEndpoint,
        ),
    ];
    for (name, ingress, src, dst, dport, reason) in rows {
        let out = w.run(
            &s,
            ingress,
            &frame(MAC_EXT, UPLINK_MAC, src, dst, syn(43000, dport), 64),
        );
        assert_eq!(out.verdict, Verdict::Drop(reason), "{name}");
    }
    // A pod on this node reaching an eTP=Local NodePort uses every endpoint.
    let out = w.run(
        &s,
        A1_IF,
        &frame(A1_MAC, A1_HOST_MAC, A1, NODE_A, syn(44000, 30082), 64),
    );
    assert_eq!(backend(&out), (B2, 8080));
}

/// eTP=Local whose only local endpoint is serving and terminating, while
/// another node has a ready one: kube-proxy's local set falls back to the
/// terminating local endpoint (its `CategorizeEndpoints`), so external
/// traffic keeps being served on this node; the cluster-wide set (a pod's
/// ClusterIP traffic) uses only the ready remote endpoint.
#[test]
fn etp_local_falls_back_to_a_terminating_local_endpoint() {
    let mut terminating = ep(A1, 8080, "node-a");
    terminating.ready = false;
    terminating.serving = true;
    terminating.terminating = true;
    let mut s = svc(
        "t",
        "198.18.96.30",
        L4Proto::Tcp,
        80,
        vec![terminating.clone(), ep(B1, 8080, "node-b")],
    );
    s.ports[0].node_port = Some(30095);
    s.external_local = true;
    let tables = snap(world(vec![s.clone()]), 1);
    for port in 42000..42020 {
        let mut w = Worker::default();
        let out = w.run(
            &tables,
            UPLINK,
            &frame(MAC_EXT, UPLINK_MAC, EXT, NODE_A, syn(port, 30095), 64),
        );
        assert_eq!(backend(&out), (A1, 8080), "external → eTP=Local NodePort");
        assert_eq!(delivered(&out).1.src, EXT, "eTP=Local keeps the client IP");
        let out = w.run(
            &tables,
            A2_IF,
            &frame(
                A2_MAC,
                A2_HOST_MAC,
                A2,
                ip("198.18.96.30"),
                syn(port, 80),
                64,
            ),
        );
        assert_eq!(
            backend(&out),
            (B1, 8080),
            "pod → ClusterIP: ready endpoints only"
        );
    }
    // Not serving any more: nothing local is left, external traffic is dropped.
    let mut gone = terminating;
    gone.serving = false;
    s.ports[0].endpoints = vec![gone, ep(B1, 8080, "node-b")];
    let tables = snap(world(vec![s]), 2);
    let mut w = Worker::default();
    let out = w.run(
        &tables,
        UPLINK,
        &frame(MAC_EXT, UPLINK_MAC, EXT, NODE_A, syn(42100, 30095), 64),
    );
    assert_eq!(out.verdict, Verdict::Drop(DropReason::NoLocalEndpoint));
}

// ---------------------------------------------------------------- §4 item 7

#[test]
fn no_endpoints_rejects_and_unallocated_ip_drops() {
    let s = snap(world(base()), 1);
    let mut w = Worker::default();
    // TCP SYN → RST+ACK from the ClusterIP, back to the client.
    let out = w.run(
        &s,
        A1_IF,
        &frame(A1_MAC, A1_HOST_MAC, A1, ip(EMPTY), syn(45000, 80), 64),
    );
    assert_eq!(out.verdict, tx(A1_IF));
    let r = seen(&out.bytes);
    assert_eq!((r.src, r.sport, r.dst, r.dport), (ip(EMPTY), 80, A1, 45000));
    assert_eq!(r.tcp_flags, RST | ACK);
    assert_eq!(
        r.ack,
        1000 + 17 + 1,
        "acks the SYN and its 17 payload bytes"
    );
    assert_eq!((r.smac, r.dmac), (A1_HOST_MAC, A1_MAC));
    // A mid-stream ACK gets a bare RST with seq = its ack.
    let out = w.run(
        &s,
        A1_IF,
        &frame(A1_MAC, A1_HOST_MAC, A1, ip(EMPTY), tcp(45001, 80, ACK), 64),
    );
    let r = seen(&out.bytes);
    assert_eq!((r.tcp_flags, r.seq), (RST, 7000));
    // UDP → ICMP port unreachable quoting the original header.
    let out = w.run(
        &s,
        A1_IF,
        &frame(A1_MAC, A1_HOST_MAC, A1, ip(EMPTY), udp(45002, 53), 64),
    );
    assert_eq!(out.verdict, tx(A1_IF));
    let r = seen(&out.bytes);
    assert_eq!(
        (r.src, r.dst, r.proto, r.icmp),
        (ip(EMPTY), A1, 1, Some((3, 3)))
    );
    let quoted = &r.payload;
    assert_eq!(&quoted[12..16], &A1.octets(), "quoted source");
    assert_eq!(&quoted[16..20], &ip(EMPTY).octets(), "quoted destination");
    assert_eq!(&quoted[20..24], &[0xaf, 0xca, 0, 53], "quoted UDP ports");
    assert_eq!(w.counters.rejected, 3);
    // From a remote pod through the overlay: the RST goes back encapsulated.
    let inner = frame(VTEP_B, VTEP_A, B1, ip(EMPTY), syn(45003, 80), 64);
    let out = w.run(&s, UPLINK, &vxlan(NODE_B, MAC_B, 1, 0x08, &inner));
    assert_eq!(out.verdict, tx(UPLINK));
    let (outer, _, inner) = unwrap_vxlan(&out.bytes);
    assert_eq!(outer.dst, NODE_B);
    let r = seen(&inner);
    assert_eq!((r.src, r.dst, r.tcp_flags), (ip(EMPTY), B1, RST | ACK));
    // Unallocated IPs in the service CIDR are dropped, TCP, UDP and ICMP alike.
    for l4 in [syn(1, 80), udp(1, 53), L4::IcmpEcho { id: 1, seq: 1 }] {
        let out = w.run(
            &s,
            A1_IF,
            &frame(A1_MAC, A1_HOST_MAC, A1, ip("198.18.96.99"), l4, 64),
        );
        assert_eq!(out.verdict, Verdict::Drop(DropReason::UnallocatedServiceIp));
    }
    assert_eq!(w.counters.dropped(DropReason::UnallocatedServiceIp), 3);
}

// ---------------------------------------------------------------- §4 item 8

#[test]
fn client_ip_affinity() {
    let mut aff = svc(
        "aff",
        "198.18.96.17",
        L4Proto::Tcp,
        80,
        vec![
            ep(A1, 8080, "node-a"),
            ep(B1, 8080, "node-b"),
            ep(K1, 8080, "node-k"),
        ],
    );
    aff.affinity_timeout_secs = Some(60);
    let plain = svc(
        "plain",
        "198.18.96.19",
        L4Proto::Tcp,
        80,
        vec![
            ep(A1, 8080, "node-a"),
            ep(B1, 8080, "node-b"),
            ep(K1, 8080, "node-k"),
        ],
    );
    let s = snap(world(vec![aff, plain]), 1);
    let mut w = Worker::default();
    let mut with_affinity = BTreeSet::new();
    let mut without = BTreeSet::new();
    for port in 0..64u16 {
        let out = w.run(
            &s,
            A2_IF,
            &frame(
                A2_MAC,
                A2_HOST_MAC,
                A2,
                ip("198.18.96.17"),
                syn(50000 + port, 80),
                64,
            ),
        );
        with_affinity.insert(backend(&out));
        let out = w.run(
            &s,
            A2_IF,
            &frame(
                A2_MAC,
                A2_HOST_MAC,
                A2,
                ip("198.18.96.19"),
                syn(50000 + port, 80),
                64,
            ),
        );
        without.insert(backend(&out));
    }
    assert_eq!(
        with_affinity.len(),
        1,
        "one backend per client with ClientIP affinity"
    );
    assert!(
        without.len() > 1,
        "without affinity a client's flows spread"
    );
    let sp = s
        .service_ports
        .iter()
        .find(|p| p.name.service == "aff")
        .unwrap();
    let b = *with_affinity.iter().next().unwrap();
    assert_eq!(
        w.state
            .flows
            .affinity
            .get(u32::from(A2), sp.stable_id, w.now),
        Some((u32::from(b.0), b.1))
    );
    assert_eq!(
        w.state
            .flows
            .affinity
            .get(u32::from(A2), sp.stable_id, w.now + 61 * NS),
        None,
        "expires"
    );
    // Another client has its own affinity.
    assert_eq!(
        w.state
            .flows
            .affinity
            .get(u32::from(A1), sp.stable_id, w.now),
        None
    );
}

// ---------------------------------------------------------------- §4 item 9

#[test]
fn load_balancer_source_ranges() {
    let mut lb = with_nodeport(
        svc(
            "lb",
            "198.18.96.16",
            L4Proto::Tcp,
            443,
            vec![ep(A1, 8443, "node-a")],
        ),
        30443,
    );
    lb.load_balancer_ips = vec![ip(LB_IP)];
    lb.source_ranges = vec!["198.18.200.0/28".parse().unwrap()];
    let s = snap(world(vec![lb]), 1);
    let outside = ip("198.18.200.99");
    // (name, src, dst, dport, allowed)
    let rows = [
        ("inside the range → LB IP", EXT, ip(LB_IP), 443u16, true),
        ("outside the range → LB IP", outside, ip(LB_IP), 443, false),
        (
            "outside the range → NodePort (ranges do not apply)",
            outside,
            NODE_A,
            30443,
            true,
        ),
        (
            "outside the range → ClusterIP (ranges do not apply)",
            outside,
            ip("198.18.96.16"),
            443,
            true,
        ),
    ];
    for (name, src, dst, dport, allowed) in rows {
        let mut w = Worker::default();
        let out = w.run(
            &s,
            UPLINK,
            &frame(MAC_EXT, UPLINK_MAC, src, dst, syn(46000, dport), 64),
        );
        if allowed {
            assert_eq!(out.verdict, tx(A1_IF), "{name}");
        } else {
            assert_eq!(
                out.verdict,
                Verdict::Drop(DropReason::SourceRangeDenied),
                "{name}"
            );
        }
    }
}

// ---------------------------------------------------------------- §4 item 10

#[test]
fn udp_flows_flushed_when_their_backend_goes() {
    let s1 = snap(world(base()), 1);
    let mut w = Worker::default();
    let dgram = frame(A2_MAC, A2_HOST_MAC, A2, ip(DNS), udp(47000, 53), 64);
    let first = backend(&w.run(&s1, A2_IF, &dgram));
    assert_eq!(
        backend(&w.run(&s1, A2_IF, &dgram)),
        first,
        "same flow, same backend"
    );
    let mut gone = base();
    gone[1].ports[0].endpoints.retain(|e| e.ip != first.0);
    let s2 = snap(world(gone), 2);
    let next = backend(&w.run(&s2, A2_IF, &dgram));
    assert_ne!(next.0, first.0, "the next datagram reaches a live backend");
    assert_eq!(w.counters.flows_flushed, 1);
    // Every backend gone → the next datagram is rejected.
    let mut none = base();
    none[1].ports[0].endpoints.clear();
    let s3 = snap(world(none), 3);
    let out = w.run(&s3, A2_IF, &dgram);
    assert_eq!(seen(&out.bytes).icmp, Some((3, 3)));
    assert_eq!(w.counters.flows_flushed, 2);
}

// ---------------------------------------------------------------- overlay (§5)

#[test]
fn overlay_decap_and_encap_are_flannel_compatible() {
    let s = snap(world(base()), 1);
    let mut w = Worker::default();
    // VXLAN from node-b → local pod: decapsulated, TTL decremented, pod MACs.
    let inner = frame(VTEP_B, VTEP_A, B1, A1, udp(5000, 6000), 64);
    let out = w.run(&s, UPLINK, &vxlan(NODE_B, MAC_B, 1, 0x08, &inner));
    assert_eq!(out.verdict, tx(A1_IF));
    let d = seen(&out.bytes);
    assert_eq!(
        (d.src, d.dst, d.ttl, d.smac, d.dmac),
        (B1, A1, 63, A1_HOST_MAC, A1_MAC)
    );
    assert_eq!(d.payload, b"nodeplane-payload");
    assert_eq!(w.counters.decapsulated, 1);
    // pod → pods on node-b and on the kernel node: encapsulated as flannel expects.
    for (dst, node, node_mac, vtep) in [(B1, NODE_B, MAC_B, VTEP_B), (K1, NODE_K, MAC_K, VTEP_K)] {
        let f = frame(A1_MAC, A1_HOST_MAC, A1, dst, udp(5001, 6001), 64);
        let out = w.run(&s, A1_IF, &f);
        assert_eq!(out.verdict, tx(UPLINK));
        let (outer, vx, inner) = unwrap_vxlan(&out.bytes);
        assert_eq!(
            (outer.src, outer.dst, outer.dport, outer.ttl),
            (NODE_A, node, 8472, 64)
        );
        assert_eq!((outer.smac, outer.dmac), (UPLINK_MAC, node_mac));
        assert!(
            (32768..=60999).contains(&outer.sport),
            "outer source port {}",
            outer.sport
        );
        assert_eq!(vx, [0x08, 0, 0, 0, 0, 0, 1, 0], "flags 0x08, VNI 1");
        let i = seen(&inner);
        assert_eq!(
            (i.smac, i.dmac, i.src, i.dst, i.ttl),
            (VTEP_A, vtep, A1, dst, 63)
        );
        // The same flow always gets the same outer source port; another flow may differ.
        let again = w.run(&s, A1_IF, &f);
        assert_eq!(unwrap_vxlan(&again.bytes).0.sport, outer.sport);
    }
    let ports: BTreeSet<u16> = (0..50u16)
        .map(|p| {
            let out = w.run(
                &s,
                A1_IF,
                &frame(A1_MAC, A1_HOST_MAC, A1, B1, udp(7000 + p, 6001), 64),
            );
            unwrap_vxlan(&out.bytes).0.sport
        })
        .collect();
    assert!(
        ports.len() > 40,
        "outer source ports spread with the inner flow"
    );
    // Pod to pod on the same node.
    let out = w.run(
        &s,
        A1_IF,
        &frame(A1_MAC, A1_HOST_MAC, A1, A2, tcp(1, 2, ACK), 64),
    );
    assert_eq!(out.verdict, tx(A2_IF));
    assert_eq!(seen(&out.bytes).dmac, A2_MAC);
}

#[test]
fn replies_are_reverse_nated_to_the_clusterip() {
    let s = snap(world(base()), 1);
    let mut w = Worker::default();
    for port in 0..60u16 {
        let cport = 48000 + port;
        let out = w.run(
            &s,
            A2_IF,
            &frame(A2_MAC, A2_HOST_MAC, A2, ip(WEB), syn(cport, 80), 64),
        );
        let (b, bport) = backend(&out);
        // The backend answers from wherever it lives.
        let reply = match b {
            x if x == A1 => w.run(
                &s,
                A1_IF,
                &frame(
                    A1_MAC,
                    A1_HOST_MAC,
                    A1,
                    A2,
                    tcp(bport, cport, SYN | ACK),
                    64,
                ),
            ),
            x if x == B1 => w.run(
                &s,
                UPLINK,
                &vxlan(
                    NODE_B,
                    MAC_B,
                    1,
                    0x08,
                    &frame(VTEP_B, VTEP_A, B1, A2, tcp(bport, cport, SYN | ACK), 64),
                ),
            ),
            _ => w.run(
                &s,
                UPLINK,
                &vxlan(
                    NODE_K,
                    MAC_K,
                    1,
                    0x08,
                    &frame(VTEP_K, VTEP_A, K1, A2, tcp(bport, cport, SYN | ACK), 64),
                ),
            ),
        };
        assert_eq!(reply.verdict, tx(A2_IF));
        let r = seen(&reply.bytes);
        assert_eq!(
            (r.src, r.sport, r.dst, r.dport),
            (ip(WEB), 80, A2, cport),
            "client sees the ClusterIP"
        );
    }
}

#[test]
fn pod_traffic_leaving_the_cluster_is_masqueraded() {
    let s = snap(world(vec![]), 1);
    let mut w = Worker::default();
    let out = w.run(
        &s,
        A1_IF,
        &frame(A1_MAC, A1_HOST_MAC, A1, EXT, syn(35000, 443), 64),
    );
    assert_eq!(out.verdict, tx(UPLINK));
    let o = seen(&out.bytes);
    assert_eq!(
        (o.src, o.dst, o.dport, o.smac, o.dmac),
        (NODE_A, EXT, 443, UPLINK_MAC, MAC_EXT)
    );
    assert!(
        (61000..=65535).contains(&o.sport),
        "masquerade port {}",
        o.sport
    );
    let back = w.run(
        &s,
        UPLINK,
        &frame(
            MAC_EXT,
            UPLINK_MAC,
            EXT,
            NODE_A,
            tcp(443, o.sport, SYN | ACK),
            64,
        ),
    );
    assert_eq!(back.verdict, tx(A1_IF));
    let b = seen(&back.bytes);
    assert_eq!((b.src, b.sport, b.dst, b.dport), (EXT, 443, A1, 35000));
    // ICMP echo is masqueraded by identifier.
    let out = w.run(
        &s,
        A1_IF,
        &frame(
            A1_MAC,
            A1_HOST_MAC,
            A1,
            EXT,
            L4::IcmpEcho { id: 77, seq: 1 },
            64,
        ),
    );
    assert_eq!(out.verdict, tx(UPLINK));
    assert_eq!(seen(&out.bytes).src, NODE_A);
}

// ---------------------------------------------------------------- bad input

fn set_ihl(mut f: Vec<u8>, ihl: u8) -> Vec<u8> {
    f[14] = 0x40 | ihl;
    f
}

#[test]
fn malformed_frames_are_counted_drops() {
    let s = snap(world(base()), 1);
    let good_inner = frame(VTEP_B, VTEP_A, B1, A1, udp(1, 2), 64);
    let mut arp = frame(A1_MAC, A1_HOST_MAC, A1, A2, udp(1, 2), 64);
    arp[12] = 0x08;
    arp[13] = 0x06;
    // (name, ingress, frame, expected reason)
    let rows: Vec<(&str, u32, Vec<u8>, DropReason)> = vec![
        (
            "VXLAN flags 0x0c",
            UPLINK,
            vxlan(NODE_B, MAC_B, 1, 0x0c, &good_inner),
            DropReason::VxlanBadFlags,
        ),
        (
            "unknown VNI",
            UPLINK,
            vxlan(NODE_B, MAC_B, 2, 0x08, &good_inner),
            DropReason::VxlanUnknownVni,
        ),
        (
            "tiny inner frame",
            UPLINK,
            vxlan(NODE_B, MAC_B, 1, 0x08, &good_inner[..20]),
            DropReason::VxlanShortInner,
        ),
        (
            "inner IHL 4",
            UPLINK,
            vxlan(NODE_B, MAC_B, 1, 0x08, &set_ihl(good_inner.clone(), 4)),
            DropReason::Malformed,
        ),
        (
            "bad IHL",
            A1_IF,
            set_ihl(frame(A1_MAC, A1_HOST_MAC, A1, A2, udp(1, 2), 64), 3),
            DropReason::Malformed,
        ),
        (
            "IHL past the end",
            A1_IF,
            set_ihl(frame(A1_MAC, A1_HOST_MAC, A1, A2, udp(1, 2), 64), 15),
            DropReason::Malformed,
        ),
        ("ARP", A1_IF, arp, DropReason::UnsupportedEtherType),
        ("runt", A1_IF, vec![0u8; 10], DropReason::Malformed),
    ];
    for (name, ingress, bytes, reason) in rows {
        let mut w = Worker::default();
        let out = w.run(&s, ingress, &bytes);
        assert_eq!(out.verdict, Verdict::Drop(reason), "{name}");
        assert_eq!(w.counters.dropped(reason), 1, "{name} counted");
    }
    // Truncated at every offset: always a counted drop, never a panic or a transmit.
    let full = vxlan(
        NODE_B,
        MAC_B,
        1,
        0x08,
        &frame(VTEP_B, VTEP_A, B1, ip(WEB), syn(1, 80), 64),
    );
    let mut w = Worker::default();
    for cut in 0..full.len() {
        let out = w.run(&s, UPLINK, &full[..cut]);
        assert!(
            matches!(out.verdict, Verdict::Drop(_)),
            "cut at {cut}: {:?}",
            out.verdict
        );
    }
    assert_eq!(w.counters.total_drops(), full.len() as u64);
    assert_eq!(w.counters.rx_packets, full.len() as u64);
}

#[test]
fn batches_give_one_verdict_per_frame_and_consistent_counters() {
    use dataplane::{process_batch, Frame, WorkerState};
    let s: Snapshot = snap(world(base()), 1);
    let frames_bytes: Vec<Vec<u8>> = (0..150u16)
        .map(|i| match i % 3 {
            0 => frame(A2_MAC, A2_HOST_MAC, A2, ip(WEB), syn(1000 + i, 80), 64),
            1 => vxlan(
                NODE_B,
                MAC_B,
                1,
                0x08,
                &frame(VTEP_B, VTEP_A, B1, A1, udp(i, 9), 64),
            ),
            _ => vec![0u8; usize::from(i % 40)],
        })
        .collect();
    let mut bufs: Vec<Vec<u8>> = frames_bytes
        .iter()
        .map(|b| {
            let mut v = vec![0u8; BUF];
            v[HEADROOM..HEADROOM + b.len()].copy_from_slice(b);
            v
        })
        .collect();
    let mut frames: Vec<Frame<'_>> = bufs
        .iter_mut()
        .zip(&frames_bytes)
        .map(|(buf, b)| {
            Frame::new(
                buf,
                HEADROOM,
                b.len(),
                if b.len() > 60 && b[23] == 6 {
                    A2_IF
                } else {
                    UPLINK
                },
            )
        })
        .collect();
    let mut verdicts = vec![Verdict::Pass; frames.len()];
    let mut state = WorkerState::new(1024);
    let mut c = shared::Counters::default();
    process_batch(&mut frames, &mut verdicts, &s, &mut state, &mut c, 1);
    assert_eq!(c.rx_packets, 150);
    assert_eq!(
        c.rx_packets,
        c.forwarded + c.handed_off + c.total_drops() + c.passed + c.fragments_held
    );
    for (i, v) in verdicts.iter().enumerate() {
        match i % 3 {
            0 | 1 => assert!(matches!(v, Verdict::Tx { .. }), "frame {i}: {v:?}"),
            _ => assert!(matches!(v, Verdict::Drop(_)), "frame {i}: {v:?}"),
        }
    }
}

// ------------------------------------------------- conntrack: tuple clashes

/// A client port whose new flow to `svc:port` Maglev sends to `want`.
fn port_to(s: &Snapshot, svc: &str, sport_from: u16, proto: L4Proto, want: (Ipv4Addr, u16)) -> u16 {
    for sport in sport_from..sport_from + 2000 {
        let mut w = Worker::default();
        let l4 = match proto {
            L4Proto::Tcp => syn(sport, 80),
            _ => udp(sport, 53),
        };
        let out = w.run(s, A2_IF, &frame(A2_MAC, A2_HOST_MAC, A2, ip(svc), l4, 64));
        if backend(&out) == want {
            return sport;
        }
    }
    panic!("no client port maps to {want:?}");
}

fn from_a2(s: &Snapshot, w: &mut Worker, dst: Ipv4Addr, l4: L4) -> Out {
    w.run(s, A2_IF, &frame(A2_MAC, A2_HOST_MAC, A2, dst, l4, 64))
}

fn from_a1(s: &Snapshot, w: &mut Worker, l4: L4) -> Out {
    w.run(s, A1_IF, &frame(A1_MAC, A1_HOST_MAC, A1, A2, l4, 64))
}

/// A client reuses one source port for a Service connection and a direct one
/// to the same backend (Linux hands out a port again for another destination).
/// The two reply tuples are the same; as Linux conntrack does, the flow that
/// comes second gets another source port, so every reply reaches the right
/// socket with the right source. A Service flow that is over (TIME_WAIT) just
/// gives its tuple up.
#[test]
fn flows_whose_reply_tuples_clash_get_another_source_port() {
    let s = snap(world(base()), 1);
    let a1 = (A1, 8080);

    // 1. The Service connection closed (TIME_WAIT), then a direct one on its port.
    let p = port_to(&s, WEB, 40000, L4Proto::Tcp, a1);
    let mut w = Worker::default();
    assert_eq!(backend(&from_a2(&s, &mut w, ip(WEB), syn(p, 80))), a1);
    from_a1(&s, &mut w, tcp(8080, p, SYN | ACK));
    from_a2(&s, &mut w, ip(WEB), tcp(p, 80, ACK));
    from_a2(&s, &mut w, ip(WEB), tcp(p, 80, FIN | ACK));
    from_a1(&s, &mut w, tcp(8080, p, FIN | ACK));
    from_a2(&s, &mut w, ip(WEB), tcp(p, 80, ACK));
    let out = from_a2(&s, &mut w, A1, syn(p, 8080));
    assert_eq!(out.verdict, tx(A1_IF));
    let d = seen(&out.bytes);
    assert_eq!(
        (d.src, d.sport, d.dst, d.dport),
        (A2, p, A1, 8080),
        "the port is free again"
    );
    assert_eq!(w.counters.tuple_clashes, 0);
    assert_eq!(
        w.counters.tuple_reuses, 1,
        "the closed flow gave its tuple up"
    );
    let r = seen(&from_a1(&s, &mut w, tcp(8080, p, SYN | ACK)).bytes);
    assert_eq!(
        (r.src, r.sport, r.dst, r.dport),
        (A1, 8080, A2, p),
        "the direct reply is not translated to the ClusterIP"
    );

    // 1b. Both sides sent FIN but the last ACK has not passed (LAST_ACK): the
    // Service connection is not over, so the direct one gets another port
    // and the last ACK still reaches a1 from the port a1 knows.
    let mut w = Worker::default();
    from_a2(&s, &mut w, ip(WEB), syn(p, 80));
    from_a1(&s, &mut w, tcp(8080, p, SYN | ACK));
    from_a2(&s, &mut w, ip(WEB), tcp(p, 80, ACK));
    from_a2(&s, &mut w, ip(WEB), tcp(p, 80, FIN | ACK));
    from_a1(&s, &mut w, tcp(8080, p, FIN | ACK));
    let d = seen(&from_a2(&s, &mut w, A1, syn(p, 8080)).bytes);
    assert_ne!(
        d.sport, p,
        "remapped while the old connection's last ACK is due"
    );
    let last = seen(&from_a2(&s, &mut w, ip(WEB), tcp(p, 80, ACK)).bytes);
    assert_eq!(
        (last.src, last.sport, last.dst, last.dport),
        (A2, p, A1, 8080)
    );

    // 2. The Service connection is open: the direct one gets another port.
    let q = port_to(&s, WEB, p + 1, L4Proto::Tcp, a1);
    let mut w = Worker::default();
    from_a2(&s, &mut w, ip(WEB), syn(q, 80));
    from_a1(&s, &mut w, tcp(8080, q, SYN | ACK));
    from_a2(&s, &mut w, ip(WEB), tcp(q, 80, ACK));
    let out = from_a2(&s, &mut w, A1, syn(q, 8080));
    assert_eq!(out.verdict, tx(A1_IF));
    let d = seen(&out.bytes);
    assert_eq!((d.src, d.dst, d.dport), (A2, A1, 8080));
    assert_ne!(d.sport, q, "the direct flow's source port is remapped");
    let q2 = d.sport;
    assert_eq!(w.counters.tuple_clashes, 1);
    let r = seen(&from_a1(&s, &mut w, tcp(8080, q2, SYN | ACK)).bytes);
    assert_eq!(
        (r.src, r.sport, r.dst, r.dport),
        (A1, 8080, A2, q),
        "direct reply"
    );
    let r = seen(&from_a1(&s, &mut w, tcp(8080, q, ACK)).bytes);
    assert_eq!(
        (r.src, r.sport, r.dst, r.dport),
        (ip(WEB), 80, A2, q),
        "Service reply"
    );
    let d = seen(&from_a2(&s, &mut w, A1, tcp(q, 8080, ACK)).bytes);
    assert_eq!(
        d.sport, q2,
        "later packets of the direct flow keep its port"
    );

    // 3. The other way round: a direct connection is open, then a Service
    // connection from the same port picks that backend.
    let mut w = Worker::default();
    from_a2(&s, &mut w, A1, syn(q, 8080));
    from_a1(&s, &mut w, tcp(8080, q, SYN | ACK));
    let out = from_a2(&s, &mut w, ip(WEB), syn(q, 80));
    let (_, d) = delivered(&out);
    assert_eq!((d.src, d.dst, d.dport), (A2, A1, 8080));
    assert_ne!(d.sport, q, "the Service flow's source port is remapped");
    let r = seen(&from_a1(&s, &mut w, tcp(8080, d.sport, SYN | ACK)).bytes);
    assert_eq!((r.src, r.sport, r.dst, r.dport), (ip(WEB), 80, A2, q));
    let r = seen(&from_a1(&s, &mut w, tcp(8080, q, ACK)).bytes);
    assert_eq!((r.src, r.sport, r.dst, r.dport), (A1, 8080, A2, q));

    // 4. UDP: one socket asks the DNS Service and a DNS pod directly.
    let u = port_to(&s, DNS, 41000, L4Proto::Udp, (A1, 5353));
    let mut w = Worker::default();
    from_a2(&s, &mut w, ip(DNS), udp(u, 53));
    let d = seen(&from_a2(&s, &mut w, A1, udp(u, 5353)).bytes);
    assert_ne!(d.sport, u);
    let r = seen(&from_a1(&s, &mut w, udp(5353, d.sport)).bytes);
    assert_eq!((r.src, r.sport, r.dst, r.dport), (A1, 5353, A2, u));
    let r = seen(&from_a1(&s, &mut w, udp(5353, u)).bytes);
    assert_eq!((r.src, r.sport, r.dst, r.dport), (ip(DNS), 53, A2, u));

    // 5. Two Services with the same backend, one client port.
    let mut specs = base();
    specs.push(svc(
        "web2",
        "198.18.96.20",
        L4Proto::Tcp,
        80,
        vec![ep(A1, 8080, "node-a")],
    ));
    let s = snap(world(specs), 1);
    let q = port_to(&s, WEB, 42000, L4Proto::Tcp, a1);
    let mut w = Worker::default();
    from_a2(&s, &mut w, ip(WEB), syn(q, 80));
    let (_, d) = delivered(&from_a2(&s, &mut w, ip("198.18.96.20"), syn(q, 80)));
    assert_ne!(d.sport, q);
    let r = seen(&from_a1(&s, &mut w, tcp(8080, d.sport, SYN | ACK)).bytes);
    assert_eq!((r.src, r.sport, r.dport), (ip("198.18.96.20"), 80, q));
    let r = seen(&from_a1(&s, &mut w, tcp(8080, q, SYN | ACK)).bytes);
    assert_eq!((r.src, r.sport, r.dport), (ip(WEB), 80, q));
}
