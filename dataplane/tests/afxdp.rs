//! The AF_XDP adapter end to end, in network namespaces this test builds: the
//! XDP steering program, AF_XDP sockets sharing one UMEM, the worker running the
//! real pipeline, and the pool's attach/detach. Needs root (prints why and
//! returns otherwise). Every wait is bounded; the namespaces are removed on drop.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use common::{can_run, in_netns, mac_of, sh, Lab};
use dataplane::io::{
    netif, InterfaceRole, IoError, IoOptions, PoolConfig, SteeringParams, WorkerPool,
};
use shared::net::parse_mac;
use shared::snapshot::{NodeInfo, OverlayConfig, PodRoute, RemoteNode, Snapshot, TableSpec};
use shared::{DropReason, Ipv4Cidr, L4Proto, Mac};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const REMOTE_NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const POD_A: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 11);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(198, 19, 3, 5);
const VTEP_A: Mac = [2, 0, 0, 0, 1, 1];
const VTEP_REMOTE: &str = "02:00:00:00:03:01";

fn opts() -> IoOptions {
    IoOptions {
        // Several tests run at once on a 2-core machine: do not spin when idle.
        idle_sleep: Some(Duration::from_micros(50)),
        umem_frames: 4096,
        ..IoOptions::default()
    }
}

fn mac(s: &str) -> Mac {
    parse_mac(s).expect("a MAC")
}

/// ns1 (pod A) —a1/a2— ns2 (node, the dataplane) —b2/b3— ns3 (pod B).
struct PodLab {
    _lab: Lab,
    ns1: String,
    ns2: String,
    ns3: String,
    a2: String,
    b2: String,
    a1_mac: Mac,
    a2_mac: Mac,
    b3_mac: Mac,
    b2_mac: Mac,
    a2_idx: u32,
    b2_idx: u32,
}

impl PodLab {
    fn new(queues: u32) -> PodLab {
        let mut lab = Lab::new();
        let ns1 = lab.netns("p1");
        let ns2 = lab.netns("node");
        let ns3 = lab.netns("p3");
        let (a1, a2, b2, b3) = (
            lab.ifname("a1"),
            lab.ifname("a2"),
            lab.ifname("b2"),
            lab.ifname("b3"),
        );
        lab.veth(&ns1, &a1, &ns2, &a2, queues);
        lab.veth(&ns3, &b3, &ns2, &b2, queues);
        let a2_mac_s = mac_of(&ns2, &a2);
        let b2_mac_s = mac_of(&ns2, &b2);
        lab.pod(&ns1, &a1, &POD_A.to_string(), &a2_mac_s);
        lab.pod(&ns3, &b3, &POD_B.to_string(), &b2_mac_s);
        sh(&[
            "ip",
            "-n",
            &ns2,
            "addr",
            "add",
            &format!("{NODE_IP}/32"),
            "dev",
            "lo",
        ]);
        // The kernel does not forward here: whatever crosses ns2 is the dataplane's doing.
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns2,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=0",
        ]);
        sh(&[
            "ip",
            "-n",
            &ns2,
            "route",
            "add",
            &POD_A.to_string(),
            "dev",
            &a2,
            "scope",
            "link",
        ]);
        sh(&[
            "ip",
            "-n",
            &ns2,
            "route",
            "add",
            &POD_B.to_string(),
            "dev",
            &b2,
            "scope",
            "link",
        ]);
        let (a2_idx, b2_idx) = in_netns(&ns2, || {
            (netif::ifindex(&a2).unwrap(), netif::ifindex(&b2).unwrap())
        });
        PodLab {
            a1_mac: mac(&mac_of(&ns1, &a1)),
            a2_mac: mac(&a2_mac_s),
            b3_mac: mac(&mac_of(&ns3, &b3)),
            b2_mac: mac(&b2_mac_s),
            _lab: lab,
            ns1,
            ns2,
            ns3,
            a2,
            b2,
            a2_idx,
            b2_idx,
        }
    }

    fn spec(&self) -> TableSpec {
        TableSpec {
            node: NodeInfo {
                name: "node-a".into(),
                node_ips: vec![NODE_IP],
                nodeport_cidrs: Vec::new(),
                localhost_nodeports: false,
                host_if: None,
                pod_cidrs: vec![Ipv4Cidr::new(Ipv4Addr::new(198, 19, 1, 0), 24).unwrap()],
                ..NodeInfo::default()
            },
            local_pods: vec![
                PodRoute {
                    ip: POD_A,
                    mac: self.a1_mac,
                    host_ifindex: self.a2_idx,
                    host_mac: self.a2_mac,
                    name: "default/a".into(),
                },
                PodRoute {
                    ip: POD_B,
                    mac: self.b3_mac,
                    host_ifindex: self.b2_idx,
                    host_mac: self.b2_mac,
                    name: "default/b".into(),
                },
            ],
            masquerade_ports: (61000, 65535),
            masquerade: Default::default(),
            ..TableSpec::default()
        }
    }

    fn start(&self, workers: usize) -> WorkerPool {
        let tables = Arc::new(ArcSwap::from_pointee(Snapshot::build(self.spec(), 1)));
        let pool = WorkerPool::start_with(
            PoolConfig {
                workers,
                flow_capacity: 4096,
                frag: dataplane::frag::FragConfig::default(),
                tables,
            },
            opts(),
        )
        .expect("pool starts");
        pool.set_steering(&steering(&[NODE_IP]))
            .expect("steering params");
        pool
    }

    fn ifname_b3(&self) -> String {
        self._lab.ifname("b3")
    }

    fn xdp_shown(&self, ifname: &str) -> bool {
        sh(&["ip", "-n", &self.ns2, "link", "show", ifname]).contains("xdp")
    }
}

fn steering(node_ips: &[Ipv4Addr]) -> SteeringParams {
    SteeringParams {
        node_ips: node_ips.to_vec(),
        nodeport_ips: node_ips.to_vec(),
        vxlan_port: 8472,
        masq_range: (61000, 65535),
        ..SteeringParams::default()
    }
}

/// Sends `n` numbered datagrams from `from` to `to` and returns how many
/// arrived intact (bounded by `deadline`).
fn udp_exchange(from: &UdpSocket, to: &UdpSocket, n: usize, deadline: Duration) -> usize {
    let dst = to.local_addr().unwrap();
    let src = from.local_addr().unwrap();
    to.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let end = Instant::now() + deadline;
    let mut seen = vec![false; n];
    let mut got = 0;
    let mut buf = [0u8; 2048];
    let mut sent = 0;
    while got < n && Instant::now() < end {
        // Send in bursts of 32, then drain.
        let burst = (n - sent).min(32);
        for _ in 0..burst {
            let msg = format!("nodeplane-{sent:06}");
            from.send_to(msg.as_bytes(), dst).unwrap();
            sent += 1;
        }
        while let Ok((len, peer)) = to.recv_from(&mut buf) {
            assert_eq!(peer, src, "no NAT between pods");
            let s = std::str::from_utf8(&buf[..len]).expect("payload intact");
            let i: usize = s.strip_prefix("nodeplane-").unwrap().parse().unwrap();
            if !seen[i] {
                seen[i] = true;
                got += 1;
            }
            if got == n {
                break;
            }
        }
        if sent == n && got < n {
            // Everything sent; wait for stragglers until the deadline.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    got
}

fn bind_udp(ns: &str, ip: Ipv4Addr, port: u16) -> UdpSocket {
    in_netns(ns, || {
        UdpSocket::bind(SocketAddr::from((ip, port))).expect("bind")
    })
}

fn report_counters(pool: &WorkerPool) -> shared::Counters {
    let mut c = shared::Counters::default();
    for r in pool.reports() {
        c.accumulate(&r.load().counters);
    }
    c
}

#[test]
fn pods_talk_through_the_dataplane_and_host_traffic_passes() {
    if !can_run("pods_talk_through_the_dataplane_and_host_traffic_passes") {
        return;
    }
    let l = PodLab::new(1);
    let ns2 = l.ns2.clone();
    in_netns(&ns2, || {
        let mut pool = l.start(1);
        let mode_a = pool
            .add_interface(&l.a2, l.a2_idx, InterfaceRole::Pod)
            .expect("attach a2");
        let mode_b = pool
            .add_interface(&l.b2, 0, InterfaceRole::Pod)
            .expect("attach b2");
        assert!(mode_a == "native" || mode_a == "generic", "{mode_a}");
        assert_eq!(mode_a, "native", "veth supports driver-mode XDP");
        assert_eq!(mode_b, "native");
        assert!(l.xdp_shown(&l.a2) && l.xdp_shown(&l.b2));

        // Pod A → pod B and back, through the AF_XDP sockets and the pipeline.
        let a = bind_udp(&l.ns1, POD_A, 0);
        let b = bind_udp(&l.ns3, POD_B, 5000);
        assert_eq!(udp_exchange(&a, &b, 300, Duration::from_secs(5)), 300);
        assert_eq!(udp_exchange(&b, &a, 300, Duration::from_secs(5)), 300);

        // Traffic to the node itself is not ours: XDP_PASS, answered by the kernel.
        let listener = TcpListener::bind((NODE_IP, 7000)).unwrap();
        let server = std::thread::spawn(move || {
            listener.set_nonblocking(false).unwrap();
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
        });
        let echoed = in_netns(&l.ns1, || {
            let mut c = TcpStream::connect_timeout(
                &SocketAddr::from((NODE_IP, 7000)),
                Duration::from_secs(3),
            )
            .expect("pod reaches the node's own IP while XDP is attached");
            c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            c.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).unwrap();
            buf
        });
        assert_eq!(&echoed, b"ping");
        server.join().unwrap();

        let st = pool.steering().stats();
        assert!(st.get("redirect_pod") >= 600, "{st:?}");
        assert!(
            st.get("pass_to_node") >= 3,
            "TCP to the node passed: {st:?}"
        );
        assert!(st.get("pass_not_ipv4") >= 1, "ARP passed: {st:?}");

        // Reports are published every ~10 ms with the real counters.
        std::thread::sleep(Duration::from_millis(50));
        let c = report_counters(&pool);
        assert!(c.rx_packets >= 600 && c.tx_packets >= 600, "{c:?}");
        assert_eq!(c.total_drops(), 0, "{c:?}");
        let rep = pool.reports()[0].load_full();
        assert_eq!(rep.generation, 1);
        let mut q = rep.queues.clone();
        q.sort();
        assert_eq!(q, vec![format!("{}/0", l.a2), format!("{}/0", l.b2)]);
        assert!(rep.batch_latency.samples > 0 && rep.batch_latency.p50_ns > 0);

        pool.stop();
        assert!(!l.xdp_shown(&l.a2), "XDP detached from a2 after stop");
        assert!(!l.xdp_shown(&l.b2), "XDP detached from b2 after stop");
    });
}

/// The first worker's accounting once completions are reaped and the fill
/// rings hold `want_fill` frames (or after 2 s).
fn settled(pool: &WorkerPool, want_fill: u32) -> dataplane::io::WorkerAccount {
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let acc = pool.accounts().unwrap().remove(0);
        let f = &acc.frames;
        if (f.tx_comp == 0 && f.fill_rx == want_fill) || Instant::now() > end {
            return acc;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn frames_are_accounted_for_and_interfaces_come_and_go() {
    if !can_run("frames_are_accounted_for_and_interfaces_come_and_go") {
        return;
    }
    let l = PodLab::new(1);
    let ns2 = l.ns2.clone();
    in_netns(&ns2, || {
        let mut pool = l.start(1);
        pool.add_interface(&l.a2, l.a2_idx, InterfaceRole::Pod)
            .unwrap();
        pool.add_interface(&l.b2, l.b2_idx, InterfaceRole::Pod)
            .unwrap();
        let a = bind_udp(&l.ns1, POD_A, 0);
        let b = bind_udp(&l.ns3, POD_B, 5001);
        assert_eq!(udp_exchange(&a, &b, 2000, Duration::from_secs(8)), 2000);

        // Once the completions are reaped, every frame is free or in a fill ring.
        let acc = settled(&pool, 2 * 256);
        let f = &acc.frames;
        assert!(f.balanced(), "{f:?}");
        assert_eq!(f.in_hand, 0, "no frame held between batches: {f:?}");
        assert_eq!(f.tx_comp, 0, "{f:?}");
        assert_eq!(f.fill_rx, 2 * 256, "both fill rings topped up: {f:?}");
        assert_eq!(f.free, f.total - 2 * 256, "{f:?}");
        assert!(acc.counters.rx_packets >= 2000 && acc.counters.tx_packets >= 2000);

        // Pod B's interface goes away: its frames come back, forwarding to it is
        // a counted drop, pod A's socket is undisturbed.
        assert!(pool.remove_interface(l.b2_idx));
        assert!(!pool.remove_interface(l.b2_idx));
        assert!(!l.xdp_shown(&l.b2) && l.xdp_shown(&l.a2));
        let acc = settled(&pool, 256);
        assert!(acc.frames.balanced(), "{:?}", acc.frames);
        assert_eq!(acc.frames.fill_rx, 256);
        assert_eq!(acc.frames.free, acc.frames.total - 256);
        let before = acc.counters.dropped(DropReason::NoRoute);
        for i in 0..20u8 {
            a.send_to(&[i], (POD_B, 5001)).unwrap();
        }
        let end = Instant::now() + Duration::from_secs(2);
        let mut dropped = 0;
        while Instant::now() < end {
            let acc = pool.accounts().unwrap().remove(0);
            dropped = acc.counters.dropped(DropReason::NoRoute) - before;
            if dropped >= 20 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            dropped, 20,
            "frames for a detached interface are NoRoute drops"
        );

        // And back.
        pool.add_interface(&l.b2, l.b2_idx, InterfaceRole::Pod)
            .unwrap();
        // Drain anything the kernel delivered to pod B while it was detached.
        b.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut sink = [0u8; 64];
        while b.recv_from(&mut sink).is_ok() {}
        assert_eq!(udp_exchange(&a, &b, 500, Duration::from_secs(5)), 500);
        let acc = settled(&pool, 2 * 256);
        assert!(
            acc.frames.balanced() && acc.frames.in_hand == 0,
            "{:?}",
            acc.frames
        );
        assert_eq!(acc.frames.free, acc.frames.total - 2 * 256);

        // The first socket (the one that registered the UMEM) can go and come
        // back too: the others keep the UMEM alive and lend it to the new one.
        assert!(pool.remove_interface(l.a2_idx));
        pool.add_interface(&l.a2, l.a2_idx, InterfaceRole::Pod)
            .unwrap();
        assert_eq!(udp_exchange(&b, &a, 200, Duration::from_secs(5)), 200);

        // A pod's veth deleted under a live socket: the worker carries on, and
        // removing the interface afterwards returns all of its frames.
        sh(&["ip", "-n", &l.ns3, "link", "del", &l.ifname_b3()]);
        std::thread::sleep(Duration::from_millis(20));
        assert!(pool.remove_interface(l.b2_idx));
        let acc = settled(&pool, 256);
        assert!(
            acc.frames.balanced() && acc.frames.in_hand == 0,
            "{:?}",
            acc.frames
        );
        assert_eq!(acc.frames.free, acc.frames.total - 256);
        assert_eq!(pool.interfaces().len(), 1);
        pool.stop();
        assert!(!l.xdp_shown(&l.a2));
    });
}

#[test]
fn overlay_to_and_from_a_kernel_vxlan_node() {
    if !can_run("overlay_to_and_from_a_kernel_vxlan_node") {
        return;
    }
    // ns1 (pod A) —a1/a2— ns2 (node-a, dataplane) —u2/u4— ns4 (flannel-style kernel node).
    let mut lab = Lab::new();
    let ns1 = lab.netns("p1");
    let ns2 = lab.netns("node");
    let ns4 = lab.netns("kern");
    let (a1, a2, u2, u4, vx) = (
        lab.ifname("a1"),
        lab.ifname("a2"),
        lab.ifname("u2"),
        lab.ifname("u4"),
        lab.ifname("vx"),
    );
    lab.veth(&ns1, &a1, &ns2, &a2, 1);
    lab.veth(&ns2, &u2, &ns4, &u4, 1);
    let a2_mac_s = mac_of(&ns2, &a2);
    lab.pod(&ns1, &a1, &POD_A.to_string(), &a2_mac_s);
    sh(&[
        "ip",
        "-n",
        &ns2,
        "addr",
        "add",
        &format!("{NODE_IP}/24"),
        "dev",
        &u2,
    ]);
    sh(&[
        "ip",
        "-n",
        &ns2,
        "route",
        "add",
        &POD_A.to_string(),
        "dev",
        &a2,
        "scope",
        "link",
    ]);
    // No kernel forwarding and no vxlan device in ns2: only the dataplane can
    // carry pod A's traffic to and from the overlay.
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns2,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=0",
    ]);
    sh(&[
        "ip",
        "-n",
        &ns4,
        "addr",
        "add",
        &format!("{REMOTE_NODE_IP}/24"),
        "dev",
        &u4,
    ]);
    // The kernel peer, configured as flannel configures flannel.1.
    sh(&[
        "ip",
        "-n",
        &ns4,
        "link",
        "add",
        &vx,
        "address",
        VTEP_REMOTE,
        "type",
        "vxlan",
        "id",
        "1",
        "dstport",
        "8472",
        "local",
        &REMOTE_NODE_IP.to_string(),
        "dev",
        &u4,
        "nolearning",
    ]);
    sh(&["ip", "-n", &ns4, "link", "set", &vx, "up"]);
    sh(&[
        "ip", "netns", "exec", &ns4, "ethtool", "-K", &vx, "tx", "off",
    ]);
    sh(&[
        "ip",
        "-n",
        &ns4,
        "addr",
        "add",
        &format!("{REMOTE_POD}/32"),
        "dev",
        &vx,
    ]);
    let vtep_a = "02:00:00:00:01:01";
    sh(&[
        "ip",
        "-n",
        &ns4,
        "route",
        "add",
        "198.19.1.0/24",
        "via",
        "198.19.1.0",
        "dev",
        &vx,
        "onlink",
    ]);
    sh(&[
        "ip",
        "-n",
        &ns4,
        "neigh",
        "add",
        "198.19.1.0",
        "lladdr",
        vtep_a,
        "dev",
        &vx,
        "nud",
        "permanent",
    ]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns4,
        "bridge",
        "fdb",
        "append",
        vtep_a,
        "dev",
        &vx,
        "dst",
        &NODE_IP.to_string(),
    ]);
    for k in [
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ] {
        sh(&["ip", "netns", "exec", &ns4, "sysctl", "-qw", k]);
    }
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns4,
        "sysctl",
        "-qw",
        &format!("net.ipv4.conf.{vx}.rp_filter=0"),
    ]);
    let u4_mac = mac(&mac_of(&ns4, &u4));

    in_netns(&ns2.clone(), || {
        let a2_idx = netif::ifindex(&a2).unwrap();
        let up = netif::lookup(&u2).unwrap();
        assert_eq!(up.ipv4, Some(NODE_IP));
        assert_eq!(up.ipv4_addrs, vec![(NODE_IP, 24)]);
        assert_eq!(up.rx_queues, 1);
        assert_eq!(up.mtu, 1500);
        let spec = TableSpec {
            node: NodeInfo {
                name: "node-a".into(),
                underlay_ip: Some(NODE_IP),
                node_ips: vec![NODE_IP],
                nodeport_cidrs: Vec::new(),
                localhost_nodeports: false,
                host_if: None,
                pod_cidrs: vec![Ipv4Cidr::new(Ipv4Addr::new(198, 19, 1, 0), 24).unwrap()],
                uplink_ifindex: up.ifindex,
                uplink_mac: up.mac,
                vtep_mac: VTEP_A,
                ..NodeInfo::default()
            },
            overlay: OverlayConfig { vni: 1, port: 8472 },
            local_pods: vec![PodRoute {
                ip: POD_A,
                mac: mac(&mac_of(&ns1, &a1)),
                host_ifindex: a2_idx,
                host_mac: mac(&a2_mac_s),
                name: "default/a".into(),
            }],
            remote_nodes: vec![RemoteNode {
                name: "kernel-node".into(),
                underlay_ip: REMOTE_NODE_IP,
                vtep_mac: mac(VTEP_REMOTE),
                pod_cidrs: vec![Ipv4Cidr::new(Ipv4Addr::new(198, 19, 3, 0), 24).unwrap()],
            }],
            neighbors: vec![(REMOTE_NODE_IP, u4_mac)],
            masquerade_ports: (61000, 65535),
            masquerade: Default::default(),
            ..TableSpec::default()
        };
        let tables = Arc::new(ArcSwap::from_pointee(Snapshot::build(spec, 7)));
        let mut pool = WorkerPool::start_with(
            PoolConfig {
                workers: 1,
                flow_capacity: 4096,
                frag: dataplane::frag::FragConfig::default(),
                tables,
            },
            opts(),
        )
        .unwrap();
        pool.set_steering(&steering(&[NODE_IP])).unwrap();
        pool.add_interface(&u2, up.ifindex, InterfaceRole::Uplink)
            .unwrap();
        pool.add_interface(&a2, a2_idx, InterfaceRole::Pod).unwrap();

        // Pod A → remote pod: VXLAN encapsulation in the frame's headroom.
        let a = bind_udp(&ns1, POD_A, 0);
        let r = bind_udp(&ns4, REMOTE_POD, 6000);
        assert_eq!(udp_exchange(&a, &r, 200, Duration::from_secs(5)), 200);
        // Remote pod → pod A: decapsulation (the frame starts 50 bytes later).
        assert_eq!(udp_exchange(&r, &a, 200, Duration::from_secs(5)), 200);
        // The neighbour table saw the remote node (the kernel ARPed over the uplink).
        assert!(netif::neighbors(&u2)
            .iter()
            .any(|(ip, m)| *ip == REMOTE_NODE_IP && *m == u4_mac));

        // The node's own traffic on the uplink is passed to the kernel.
        let listener = TcpListener::bind((NODE_IP, 7001)).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut buf = [0u8; 2];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
        });
        let echoed = in_netns(&ns4, || {
            let mut c = TcpStream::connect_timeout(
                &SocketAddr::from((NODE_IP, 7001)),
                Duration::from_secs(3),
            )
            .expect("the node stays reachable on its uplink");
            c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            c.write_all(b"hi").unwrap();
            let mut buf = [0u8; 2];
            c.read_exact(&mut buf).unwrap();
            buf
        });
        assert_eq!(&echoed, b"hi");
        server.join().unwrap();

        // A missing underlay neighbour is resolved on request, rate-limited.
        sh(&["ip", "-n", &ns2, "neigh", "flush", "dev", &u2]);
        assert!(!netif::neighbors(&u2)
            .iter()
            .any(|(ip, _)| *ip == REMOTE_NODE_IP));
        assert!(netif::resolve_neighbor(&u2, REMOTE_NODE_IP));
        assert!(
            !netif::resolve_neighbor(&u2, REMOTE_NODE_IP),
            "rate-limited"
        );
        let end = Instant::now() + Duration::from_secs(3);
        while !netif::neighbors(&u2).contains(&(REMOTE_NODE_IP, u4_mac)) {
            assert!(Instant::now() < end, "neighbour resolved after the nudge");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(netif::default_gateway(up.ifindex), None);
        sh(&[
            "ip",
            "-n",
            &ns2,
            "route",
            "add",
            "default",
            "via",
            &REMOTE_NODE_IP.to_string(),
            "dev",
            &u2,
        ]);
        assert_eq!(netif::default_gateway(up.ifindex), Some(REMOTE_NODE_IP));

        let st = pool.steering().stats();
        assert!(st.get("redirect_vxlan") >= 200, "{st:?}");
        assert!(st.get("redirect_pod") >= 200, "{st:?}");
        assert!(st.get("pass_not_owned") >= 3, "{st:?}");
        std::thread::sleep(Duration::from_millis(30));
        let c = report_counters(&pool);
        assert!(c.encapsulated >= 200 && c.decapsulated >= 200, "{c:?}");
        assert_eq!(pool.reports()[0].load().generation, 7);
        let acc = pool.accounts().unwrap().remove(0);
        assert!(
            acc.frames.balanced() && acc.frames.in_hand == 0,
            "{:?}",
            acc.frames
        );
        pool.stop();
        let shown = sh(&["ip", "link", "show", &u2]);
        assert!(!shown.contains("xdp"), "uplink restored: {shown}");
    });
}

#[test]
fn two_workers_need_enough_queues_and_share_the_work() {
    if !can_run("two_workers_need_enough_queues_and_share_the_work") {
        return;
    }
    // Single-queue veths: refused, and nothing stays attached.
    let l1 = PodLab::new(1);
    in_netns(&l1.ns2.clone(), || {
        let mut pool = l1.start(2);
        match pool.add_interface(&l1.a2, l1.a2_idx, InterfaceRole::Pod) {
            Err(IoError::TooFewQueues {
                queues: 1,
                workers: 2,
                ..
            }) => {}
            other => panic!("expected TooFewQueues, got {other:?}"),
        }
        assert!(!l1.xdp_shown(&l1.a2));
        assert!(pool.interfaces().is_empty());
        pool.stop();
    });
    drop(l1);

    // Two-queue veths: queue q on worker q; pod-to-pod traffic (no NAT) flows.
    let l = PodLab::new(2);
    in_netns(&l.ns2.clone(), || {
        assert_eq!(netif::rx_queue_count(&l.a2), 2);
        let mut pool = l.start(2);
        pool.add_interface(&l.a2, l.a2_idx, InterfaceRole::Pod)
            .unwrap();
        pool.add_interface(&l.b2, l.b2_idx, InterfaceRole::Pod)
            .unwrap();
        let b = bind_udp(&l.ns3, POD_B, 5002);
        // Many source sockets, so that both tx queues of a1 (= rx queues of a2)
        // get used (each socket hashes to one; all 16 on one queue: p = 2^-15).
        let mut total = 0;
        for _ in 0..16 {
            let a = bind_udp(&l.ns1, POD_A, 0);
            total += udp_exchange(&a, &b, 25, Duration::from_secs(3));
        }
        assert_eq!(total, 400);
        std::thread::sleep(Duration::from_millis(30));
        let reps: Vec<_> = pool.reports().iter().map(|r| r.load_full()).collect();
        assert_eq!(reps.len(), 2);
        for (w, rep) in reps.iter().enumerate() {
            let mut q = rep.queues.clone();
            q.sort();
            assert_eq!(q, vec![format!("{}/{w}", l.a2), format!("{}/{w}", l.b2)]);
        }
        for rep in &reps {
            assert!(
                rep.counters.rx_packets > 0,
                "worker {} got traffic: {:?}",
                rep.id,
                rep.counters
            );
        }
        let c = report_counters(&pool);
        assert!(c.tx_packets >= 400, "{c:?}");
        for acc in pool.accounts().unwrap() {
            assert!(
                acc.frames.balanced() && acc.frames.in_hand == 0,
                "{:?}",
                acc.frames
            );
        }
        pool.stop();
        assert!(!l.xdp_shown(&l.a2) && !l.xdp_shown(&l.b2));
    });
}

/// Builds an Ethernet/IPv4 frame with etherparse.
fn frame(dst: Ipv4Addr, l4: &str, port_or_id: u16) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv4(
        [198, 18, 0, 1],
        dst.octets(),
        64,
    );
    let mut v = Vec::new();
    match l4 {
        "udp" => b.udp(40000, port_or_id).write(&mut v, b"payload").unwrap(),
        "tcp" => b
            .tcp(40000, port_or_id, 1, 1024)
            .write(&mut v, b"")
            .unwrap(),
        "echo" => b
            .icmpv4_echo_request(port_or_id, 1)
            .write(&mut v, b"")
            .unwrap(),
        "echo-reply" => b
            .icmpv4_echo_reply(port_or_id, 1)
            .write(&mut v, b"")
            .unwrap(),
        "sctp" => {
            // The common header (ports, tag, CRC left 0: the program reads
            // only the ports) and an empty INIT-sized chunk.
            let mut sctp = vec![0u8; 32];
            sctp[0..2].copy_from_slice(&40000u16.to_be_bytes());
            sctp[2..4].copy_from_slice(&port_or_id.to_be_bytes());
            b.write(&mut v, etherparse::IpNumber(132), &sctp).unwrap()
        }
        other => panic!("{other}"),
    }
    v
}

fn non_ipv4(ethertype: u16, len: usize) -> Vec<u8> {
    let mut v = vec![0xff; 6];
    v.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
    v.extend_from_slice(&ethertype.to_be_bytes());
    v.resize(14 + len, 0);
    v
}

/// An ICMP error of `icmp_type` (3 unreachable, 11 time exceeded) from
/// 198.18.0.1 to `dst`, quoting a packet `dst` sent from `sport` (`l4` as in
/// `frame`; for "echo", `sport` is the echo id) to 198.18.0.1.
fn icmp_error(dst: Ipv4Addr, icmp_type: u8, l4: &str, sport: u16) -> Vec<u8> {
    let q = etherparse::PacketBuilder::ipv4(dst.octets(), [198, 18, 0, 1], 64);
    let mut quoted = Vec::new();
    match l4 {
        "udp" => q.udp(sport, 53).write(&mut quoted, b"question").unwrap(),
        "tcp" => q
            .tcp(sport, 40000, 1, 1024)
            .write(&mut quoted, b"")
            .unwrap(),
        "echo" => q
            .icmpv4_echo_request(sport, 1)
            .write(&mut quoted, b"")
            .unwrap(),
        other => panic!("{other}"),
    }
    quoted.truncate(28);
    use etherparse::icmpv4::DestUnreachableHeader;
    use etherparse::Icmpv4Type;
    let t = match icmp_type {
        3 => Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
        11 => Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit),
        other => panic!("{other}"),
    };
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([198, 18, 0, 1], dst.octets(), 64)
        .icmpv4(t)
        .write(&mut v, &quoted)
        .unwrap();
    v
}

/// A UDP datagram's first fragment (MF set, offset 0) or a later one
/// (offset 8 bytes), IP id `id`.
fn fragment_of(dst: Ipv4Addr, dport: u16, id: u16, first: bool) -> Vec<u8> {
    let mut v = frame(dst, "udp", dport);
    v[14 + 4..14 + 6].copy_from_slice(&id.to_be_bytes());
    let flags: u16 = if first { 0x2000 } else { 0x0001 };
    v[14 + 6..14 + 8].copy_from_slice(&flags.to_be_bytes());
    v
}

/// A non-first fragment: no L4 header to read ports from.
fn later_fragment(dst: Ipv4Addr) -> Vec<u8> {
    let mut v = frame(dst, "udp", 8472);
    v[14 + 6] = 0x00;
    v[14 + 7] = 0x10;
    v
}

#[test]
fn steering_program_takes_only_what_nodeplane_owns() {
    if !can_run("steering_program_takes_only_what_nodeplane_owns") {
        return;
    }
    // BPF_PROG_TEST_RUN against the loopback of a namespace of our own: the
    // program is loaded but attached nowhere.
    let mut lab = Lab::new();
    let ns = lab.netns("steer");
    in_netns(&ns, || {
        let s = dataplane::io::Steering::load().expect("program loads");
        let node = NODE_IP;
        let svc = Ipv4Addr::new(198, 18, 96, 10);
        let ext = Ipv4Addr::new(198, 18, 201, 7);
        let other = Ipv4Addr::new(198, 18, 0, 99);
        let mut params = SteeringParams {
            node_ips: vec![node],
            nodeport_ips: vec![node],
            vxlan_port: 8472,
            service_cidrs: vec![Ipv4Cidr::new(Ipv4Addr::new(198, 18, 96, 0), 20).unwrap()],
            frontend_ips: vec![ext],
            nodeports: vec![
                (L4Proto::Tcp, 30080),
                (L4Proto::Udp, 30053),
                (L4Proto::Sctp, 30132),
            ],
            masq_range: (61000, 65535),
        };
        s.set_params(&params).unwrap();
        use InterfaceRole::{Pod, Uplink};
        let rows: Vec<(&str, InterfaceRole, Vec<u8>, &str)> = vec![
            (
                "VXLAN to the node",
                Uplink,
                frame(node, "udp", 8472),
                "redirect_vxlan",
            ),
            (
                "UDP 4789 is not our port",
                Uplink,
                frame(node, "udp", 4789),
                "pass_not_owned",
            ),
            (
                "ClusterIP TCP",
                Uplink,
                frame(svc, "tcp", 80),
                "redirect_service_cidr",
            ),
            (
                "ClusterIP ICMP",
                Uplink,
                frame(svc, "echo", 7),
                "redirect_service_cidr",
            ),
            (
                "externalIP",
                Uplink,
                frame(ext, "tcp", 443),
                "redirect_frontend_ip",
            ),
            (
                "NodePort TCP",
                Uplink,
                frame(node, "tcp", 30080),
                "redirect_nodeport",
            ),
            (
                "NodePort UDP",
                Uplink,
                frame(node, "udp", 30053),
                "redirect_nodeport",
            ),
            (
                "NodePort SCTP",
                Uplink,
                frame(node, "sctp", 30132),
                "redirect_nodeport",
            ),
            (
                "SCTP to a port that is no NodePort",
                Uplink,
                frame(node, "sctp", 30080),
                "pass_not_owned",
            ),
            (
                "SCTP reply to a masquerade port",
                Uplink,
                frame(node, "sctp", 61001),
                "redirect_masquerade_reply",
            ),
            (
                "UDP on a TCP NodePort",
                Uplink,
                frame(node, "udp", 30080),
                "pass_not_owned",
            ),
            (
                "reply to masquerade",
                Uplink,
                frame(node, "tcp", 62000),
                "redirect_masquerade_reply",
            ),
            (
                "masq range lower bound",
                Uplink,
                frame(node, "udp", 61000),
                "redirect_masquerade_reply",
            ),
            (
                "below the masq range",
                Uplink,
                frame(node, "udp", 60999),
                "pass_not_owned",
            ),
            (
                "node's SSH",
                Uplink,
                frame(node, "tcp", 22),
                "pass_not_owned",
            ),
            (
                "echo reply, masq id",
                Uplink,
                frame(node, "echo-reply", 61500),
                "redirect_masquerade_reply",
            ),
            (
                "echo reply, host id",
                Uplink,
                frame(node, "echo-reply", 1234),
                "pass_not_owned",
            ),
            (
                "echo request to node",
                Uplink,
                frame(node, "echo", 62000),
                "pass_not_owned",
            ),
            (
                "someone else's IP",
                Uplink,
                frame(other, "tcp", 80),
                "pass_not_owned",
            ),
            ("ARP", Uplink, non_ipv4(0x0806, 28), "pass_not_ipv4"),
            ("IPv6", Uplink, non_ipv4(0x86dd, 40), "pass_not_ipv4"),
            (
                "truncated IPv4",
                Uplink,
                non_ipv4(0x0800, 10),
                "pass_malformed",
            ),
            (
                "fragment to the node",
                Uplink,
                later_fragment(node),
                "pass_not_owned",
            ),
            (
                "fragment to a ClusterIP",
                Uplink,
                later_fragment(svc),
                "redirect_service_cidr",
            ),
            ("pod to pod", Pod, frame(POD_B, "udp", 5000), "redirect_pod"),
            (
                "pod off-cluster",
                Pod,
                frame(Ipv4Addr::new(198, 18, 250, 1), "tcp", 80),
                "redirect_pod",
            ),
            (
                "pod to kubelet",
                Pod,
                frame(node, "tcp", 10250),
                "pass_to_node",
            ),
            (
                "pod to a NodePort",
                Pod,
                frame(node, "tcp", 30080),
                "redirect_nodeport",
            ),
            ("pod ARP", Pod, non_ipv4(0x0806, 28), "pass_not_ipv4"),
            (
                "port unreachable about a masqueraded UDP flow",
                Uplink,
                icmp_error(node, 3, "udp", 62000),
                "redirect_icmp_error",
            ),
            (
                "port unreachable about a NodePort reply",
                Uplink,
                icmp_error(node, 3, "tcp", 30080),
                "redirect_icmp_error",
            ),
            (
                "time exceeded about a masqueraded echo",
                Uplink,
                icmp_error(node, 11, "echo", 61500),
                "redirect_icmp_error",
            ),
            (
                "ICMP error about the node's own UDP",
                Uplink,
                icmp_error(node, 3, "udp", 5000),
                "pass_not_owned",
            ),
            (
                "ICMP error about the node's own echo",
                Uplink,
                icmp_error(node, 11, "echo", 1234),
                "pass_not_owned",
            ),
            (
                "ICMP error to a ClusterIP",
                Uplink,
                icmp_error(svc, 3, "udp", 5000),
                "redirect_service_cidr",
            ),
            (
                "pod's ICMP error about a masqueraded flow",
                Pod,
                icmp_error(node, 3, "udp", 62000),
                "redirect_icmp_error",
            ),
            (
                "pod's ICMP error about the node's own flow",
                Pod,
                icmp_error(node, 3, "tcp", 22),
                "pass_to_node",
            ),
            (
                "later fragment before its first",
                Uplink,
                fragment_of(node, 30053, 7, false),
                "pass_not_owned",
            ),
            (
                "first fragment to a NodePort",
                Uplink,
                fragment_of(node, 30053, 7, true),
                "redirect_nodeport",
            ),
            (
                "later fragment after its first",
                Uplink,
                fragment_of(node, 30053, 7, false),
                "redirect_fragment",
            ),
            (
                "later fragment of another datagram",
                Uplink,
                fragment_of(node, 30053, 8, false),
                "pass_not_owned",
            ),
            (
                "first fragment to the node's own port",
                Uplink,
                fragment_of(node, 5000, 9, true),
                "pass_not_owned",
            ),
            (
                "its later fragment",
                Uplink,
                fragment_of(node, 5000, 9, false),
                "pass_not_owned",
            ),
            (
                "pod's later fragment to a NodePort",
                Pod,
                {
                    let _ = s.dry_run(Pod, &fragment_of(node, 30053, 10, true));
                    fragment_of(node, 30053, 10, false)
                },
                "redirect_fragment",
            ),
        ];
        for (what, role, pkt, want) in &rows {
            assert_eq!(s.dry_run(*role, pkt).unwrap(), *want, "{what}");
        }
        // Updates replace the sets: the Service CIDR, externalIP and NodePort go.
        params.service_cidrs.clear();
        params.frontend_ips.clear();
        params.nodeports = vec![(L4Proto::Udp, 30053)];
        params.vxlan_port = 4789;
        s.set_params(&params).unwrap();
        let after: Vec<(InterfaceRole, Vec<u8>, &str)> = vec![
            (Uplink, frame(svc, "tcp", 80), "pass_not_owned"),
            (Uplink, frame(ext, "tcp", 443), "pass_not_owned"),
            (Uplink, frame(node, "tcp", 30080), "pass_not_owned"),
            (Uplink, frame(node, "udp", 30053), "redirect_nodeport"),
            (Uplink, frame(node, "udp", 4789), "redirect_vxlan"),
            (Uplink, frame(node, "udp", 8472), "pass_not_owned"),
            (Pod, frame(node, "tcp", 30080), "pass_to_node"),
        ];
        for (role, pkt, want) in &after {
            assert_eq!(s.dry_run(*role, pkt).unwrap(), *want);
        }
        // nodePortAddresses: a second node IP that NodePorts do not answer on
        // keeps its NodePort-range traffic (the host's), and its other
        // traffic to the node (VXLAN, masquerade replies) is still steered.
        let second = Ipv4Addr::new(198, 18, 0, 3);
        params.node_ips = vec![node, second];
        params.nodeport_ips = vec![node];
        s.set_params(&params).unwrap();
        let narrowed: Vec<(&str, InterfaceRole, Vec<u8>, &str)> = vec![
            (
                "NodePort address",
                Uplink,
                frame(node, "udp", 30053),
                "redirect_nodeport",
            ),
            (
                "other node IP",
                Uplink,
                frame(second, "udp", 30053),
                "pass_not_owned",
            ),
            (
                "other node IP, from a pod",
                Pod,
                frame(second, "udp", 30053),
                "pass_to_node",
            ),
            (
                "VXLAN to it",
                Uplink,
                frame(second, "udp", 4789),
                "redirect_vxlan",
            ),
            (
                "masquerade reply to it",
                Uplink,
                frame(second, "tcp", 61234),
                "redirect_masquerade_reply",
            ),
            (
                "an error about a NodePort reply, to the NodePort address",
                Uplink,
                icmp_error(node, 3, "udp", 30053),
                "redirect_icmp_error",
            ),
            (
                "the same to the other node IP (no NodePort replies leave it)",
                Uplink,
                icmp_error(second, 3, "udp", 30053),
                "pass_not_owned",
            ),
        ];
        for (what, role, pkt, want) in &narrowed {
            assert_eq!(s.dry_run(*role, pkt).unwrap(), *want, "{what}");
        }
        params.node_ips = vec![node];
        // An unknown interface is never steered.
        params.node_ips.clear();
        s.set_params(&params).unwrap();
        assert_eq!(
            s.dry_run(Pod, &frame(node, "tcp", 10250)).unwrap(),
            "redirect_pod"
        );
        let st = s.stats();
        assert_eq!(st.redirected(), 0, "no socket anywhere: {st:?}");
        assert_eq!(st.get("pass_no_socket"), st.decided_redirect());
    });
}

/// The loopback program (tc egress of the node's `lo`): the node's own
/// packets to a NodePort on a nodePortAddresses IP get the host interface's
/// MACs and are redirected to its kernel end; everything else goes on
/// untouched; a datagram longer than the pair's MTU is dropped, counted.
#[test]
fn loopback_program_hands_only_the_nodes_own_nodeport_packets_over() {
    if !can_run("loopback_program_hands_only_the_nodes_own_nodeport_packets_over") {
        return;
    }
    let mut lab = Lab::new();
    let ns = lab.netns("local");
    in_netns(&ns, || {
        let s = dataplane::io::Steering::load().expect("program loads");
        let node = NODE_IP;
        let second = Ipv4Addr::new(198, 18, 1, 2);
        s.set_params(&SteeringParams {
            node_ips: vec![node, second],
            nodeport_ips: vec![node],
            nodeports: vec![
                (L4Proto::Tcp, 30080),
                (L4Proto::Udp, 30053),
                (L4Proto::Sctp, 30132),
            ],
            masq_range: (61000, 65535),
            ..SteeringParams::default()
        })
        .unwrap();
        let to = dataplane::io::steering::LocalRedirect {
            ifindex: 77,
            mtu: 1450,
            dst_mac: [2, 0xee, 0, 0, 0, 2],
            src_mac: [2, 0xee, 0, 0, 0, 1],
            localhost: false,
        };
        const OK: u32 = 0;
        const SHOT: u32 = 2;
        const REDIRECT: u32 = 7;
        let big_udp = {
            let b = etherparse::PacketBuilder::ethernet2([0; 6], [0; 6]).ipv4(
                node.octets(),
                node.octets(),
                64,
            );
            let mut v = Vec::new();
            b.udp(40000, 30053).write(&mut v, &[7u8; 1500]).unwrap();
            v
        };
        let mut fragment = frame(node, "udp", 30053);
        fragment[20] = 0x20; // MF: a first fragment
        let rows: Vec<(&str, Vec<u8>, u32)> = vec![
            ("TCP NodePort", frame(node, "tcp", 30080), REDIRECT),
            ("UDP NodePort", frame(node, "udp", 30053), REDIRECT),
            ("SCTP NodePort", frame(node, "sctp", 30132), REDIRECT),
            (
                "TCP to a port that is no NodePort",
                frame(node, "tcp", 22),
                OK,
            ),
            ("UDP on a TCP NodePort", frame(node, "udp", 30080), OK),
            (
                "a node IP NodePorts do not answer on",
                frame(second, "tcp", 30080),
                OK,
            ),
            (
                "127.0.0.1 (no localhost NodePorts, as nftables kube-proxy)",
                frame(Ipv4Addr::LOCALHOST, "tcp", 30080),
                OK,
            ),
            ("ICMP echo", frame(node, "echo", 30080), OK),
            ("a fragment", fragment, OK),
            ("not IPv4", non_ipv4(0x86dd, 60), OK),
            (
                "an IPv4 header without its ports",
                frame(node, "tcp", 30080)[..34].to_vec(),
                OK,
            ),
            ("a datagram over the pair's MTU", big_udp, SHOT),
        ];
        for (what, pkt, want) in &rows {
            let (verdict, out) = s
                .dry_run_local(to, pkt)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(verdict, *want, "{what}");
            if verdict == REDIRECT {
                assert_eq!(&out[0..6], &to.dst_mac, "{what}: to nph1's MAC");
                assert_eq!(&out[6..12], &to.src_mac, "{what}: from nph0's MAC");
                assert_eq!(&out[12..], &pkt[12..], "{what}: the rest untouched");
            } else {
                assert_eq!(&out, pkt, "{what}: untouched");
            }
        }
        let st = s.stats();
        assert_eq!(st.get("local_nodeport_to_host_interface"), 3);
        assert_eq!(st.get("local_nodeport_too_big"), 1);
        // Not counted as XDP decisions.
        assert_eq!(st.decided_redirect(), 0);
        assert_eq!(st.passed(), 0);
        // Localhost NodePorts (kube-proxy iptables mode's setting): from
        // 127.0.0.0/8 to 127.0.0.0/8 on a NodePort only.
        let lo_frame = |src: [u8; 4], dst: [u8; 4], dport: u16| {
            let mut v = Vec::new();
            etherparse::PacketBuilder::ethernet2([0; 6], [0; 6])
                .ipv4(src, dst, 64)
                .tcp(40000, dport, 1, 1024)
                .write(&mut v, b"")
                .unwrap();
            v
        };
        let localhost = dataplane::io::steering::LocalRedirect {
            localhost: true,
            ..to
        };
        for (what, l, pkt, want) in [
            (
                "localhost off",
                to,
                lo_frame([127, 0, 0, 1], [127, 0, 0, 1], 30080),
                OK,
            ),
            (
                "localhost on",
                localhost,
                lo_frame([127, 0, 0, 1], [127, 0, 0, 1], 30080),
                REDIRECT,
            ),
            (
                "127.0.0.2 on",
                localhost,
                lo_frame([127, 0, 0, 1], [127, 0, 0, 2], 30080),
                REDIRECT,
            ),
            (
                "from the node IP",
                localhost,
                lo_frame(node.octets(), [127, 0, 0, 1], 30080),
                OK,
            ),
            (
                "no NodePort",
                localhost,
                lo_frame([127, 0, 0, 1], [127, 0, 0, 1], 22),
                OK,
            ),
        ] {
            let (verdict, _) = s.dry_run_local(l, &pkt).unwrap();
            assert_eq!(verdict, want, "{what}");
        }
        // No target (a stopped agent): everything passes.
        let off = dataplane::io::steering::LocalRedirect { ifindex: 0, ..to };
        let (verdict, _) = s.dry_run_local(off, &frame(node, "tcp", 30080)).unwrap();
        assert_eq!(verdict, OK);
    });
}

#[test]
fn a_stale_program_is_replaced_and_only_our_own_is_detached() {
    if !can_run("a_stale_program_is_replaced_and_only_our_own_is_detached") {
        return;
    }
    let mut lab = Lab::new();
    let ns = lab.netns("stale");
    let (x, y) = (lab.ifname("x"), lab.ifname("y"));
    lab.veth(&ns, &x, &ns, &y, 1);
    let shown = || sh(&["ip", "-n", &ns, "link", "show", &x]);
    in_netns(&ns.clone(), || {
        let ifx = netif::ifindex(&x).unwrap();
        // A previous run that died left its program attached.
        let old = dataplane::io::Steering::load().unwrap();
        assert_eq!(
            old.attach(ifx, InterfaceRole::Pod).unwrap().mode.name(),
            "native"
        );
        let new = dataplane::io::Steering::load().unwrap();
        let a = new
            .attach(ifx, InterfaceRole::Pod)
            .expect("replaces the stale program");
        assert_eq!(a.mode.name(), "native");
        assert!(shown().contains("xdp"));
        // The old instance going away must not detach the new one's program.
        drop(old);
        assert!(shown().contains("xdp"), "still attached: {}", shown());
        assert!(new.detach(ifx));
        assert!(!new.detach(ifx));
        assert!(!shown().contains("xdp"));
    });
}

#[test]
fn a_stale_generic_mode_program_is_replaced_in_generic_mode() {
    if !can_run("a_stale_generic_mode_program_is_replaced_in_generic_mode") {
        return;
    }
    let mut lab = Lab::new();
    let ns = lab.netns("stalegen");
    let (x, y) = (lab.ifname("x"), lab.ifname("y"));
    lab.veth(&ns, &x, &ns, &y, 1);
    let shown = || sh(&["ip", "-n", &ns, "link", "show", &x]);
    in_netns(&ns.clone(), || {
        let ifx = netif::ifindex(&x).unwrap();
        // A previous run with --xdp-mode generic left its program attached.
        let mut old = dataplane::io::Steering::load().unwrap();
        old.set_mode(Some(dataplane::io::XdpMode::Generic));
        assert_eq!(
            old.attach(ifx, InterfaceRole::Pod).unwrap().mode.name(),
            "generic"
        );
        // The new run would take driver mode on veth, but the stale program
        // is replaced where it is, in generic mode.
        let new = dataplane::io::Steering::load().unwrap();
        let a = new
            .attach(ifx, InterfaceRole::Pod)
            .expect("replaces the stale program");
        assert_eq!(a.mode.name(), "generic");
        assert!(shown().contains("xdpgeneric"), "{}", shown());
        drop(old);
        assert!(
            shown().contains("xdpgeneric"),
            "still attached: {}",
            shown()
        );
        assert!(new.detach(ifx));
        assert!(!shown().contains("xdp"), "{}", shown());
    });
}
