//! Fuzz target: arbitrary bytes, split into up to 64 frames on 0xff 0xfe
//! separators, go through the pipeline on a lab-like snapshot. Each frame must
//! end in a verdict, the counters must add up, and transmitted frames must fit
//! their buffer. Run with `cargo fuzz run pipeline` (see fuzz/README.md).
#![no_main]

use std::net::Ipv4Addr;
use std::sync::OnceLock;

use dataplane::{process_batch, Frame, Verdict, WorkerState};
use libfuzzer_sys::fuzz_target;
use shared::snapshot::{
    EndpointSpec, NodeInfo, OverlayConfig, PodRoute, RemoteNode, ServicePortSpec, ServiceSpec, Snapshot, TableSpec,
};
use shared::{Counters, L4Proto};

fn snapshot() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| {
        let ep = |ip: [u8; 4], node: &str| EndpointSpec::ready(Ipv4Addr::from(ip), 8080, Some(node));
        let svc = |name: &str, ip: [u8; 4], proto, eps: Vec<EndpointSpec>, np| ServiceSpec {
            namespace: "default".into(),
            name: name.into(),
            cluster_ips: vec![Ipv4Addr::from(ip)],
            ports: vec![ServicePortSpec { name: "p".into(), proto, port: 80, node_port: np, endpoints: eps }],
            affinity_timeout_secs: (name == "aff").then_some(60),
            ..ServiceSpec::default()
        };
        let spec = TableSpec {
            node: NodeInfo {
                name: "node-a".into(),
                zone: None,
                underlay_ip: Some(Ipv4Addr::new(198, 18, 0, 2)),
                node_ips: vec![Ipv4Addr::new(198, 18, 0, 2)],
                pod_cidrs: vec!["198.19.1.0/24".parse().unwrap()],
                uplink_ifindex: 2,
                uplink_mtu: 1500,
                uplink_mac: [2, 0, 0, 0, 0, 2],
                vtep_mac: [2, 0, 0, 0, 1, 1],
            },
            overlay: OverlayConfig { vni: 1, port: 8472 },
            service_cidrs: vec!["198.18.96.0/20".parse().unwrap()],
            services: vec![
                svc("web", [198, 18, 96, 10], L4Proto::Tcp, vec![ep([198, 19, 1, 10], "node-a"), ep([198, 19, 3, 10], "node-b")], Some(30080)),
                svc("dns", [198, 18, 96, 11], L4Proto::Udp, vec![ep([198, 19, 1, 10], "node-a")], None),
                svc("aff", [198, 18, 96, 13], L4Proto::Tcp, vec![ep([198, 19, 1, 11], "node-a")], None),
                svc("empty", [198, 18, 96, 12], L4Proto::Udp, vec![], None),
            ],
            local_pods: vec![
                PodRoute { ip: Ipv4Addr::new(198, 19, 1, 10), mac: [2, 1, 0, 0, 0, 1], host_ifindex: 10, host_mac: [2, 1, 0, 0, 0, 2], name: String::new() },
                PodRoute { ip: Ipv4Addr::new(198, 19, 1, 11), mac: [2, 2, 0, 0, 0, 1], host_ifindex: 11, host_mac: [2, 2, 0, 0, 0, 2], name: String::new() },
            ],
            remote_nodes: vec![RemoteNode {
                name: "node-b".into(),
                underlay_ip: Ipv4Addr::new(198, 18, 0, 3),
                vtep_mac: [2, 0, 0, 0, 3, 1],
                pod_cidrs: vec!["198.19.3.0/24".parse().unwrap()],
            }],
            neighbors: vec![(Ipv4Addr::new(198, 18, 0, 3), [2, 0, 0, 0, 0, 3]), (Ipv4Addr::new(198, 18, 200, 10), [2, 0, 0, 0, 0, 0xc8])],
            gateway: None,
            masquerade_ports: (61000, 65535),
            maglev_size: 251,
        };
        Snapshot::build(spec, 1)
    })
}

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
        .map(|(i, (b, p))| Frame::new(b, 128, p.len(), [2, 10, 11][i % 3]))
        .collect();
    let sentinel = Verdict::Tx { ifindex: u32::MAX };
    let mut verdicts = vec![sentinel; frames.len()];
    // Twice, so the second pass exercises conntrack hits on the flows the first made.
    for now in [1_000_000_000u64, 2_000_000_000] {
        verdicts.iter_mut().for_each(|v| *v = sentinel);
        process_batch(&mut frames, &mut verdicts, snap, &mut flows, &mut counters, now);
        assert!(!verdicts.contains(&sentinel));
    }
    assert_eq!(counters.rx_packets, counters.forwarded + counters.handed_off + counters.total_drops() + counters.passed + counters.fragments_held);
});
