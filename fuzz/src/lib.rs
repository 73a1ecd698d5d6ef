//! What the fuzz targets share: a lab-like node-a snapshot (Services with
//! local and remote backends, a NodePort, ClientIP affinity, one without
//! endpoints, the cluster DNS Service with its name table; two local pods,
//! node-b across the overlay, the host interface).

use std::net::Ipv4Addr;
use std::sync::OnceLock;

use shared::snapshot::{
    EndpointSpec, NodeInfo, OverlayConfig, PodRoute, RemoteNode, ServicePortSpec, ServiceSpec, Snapshot, TableSpec,
};
use shared::L4Proto;

pub fn snapshot() -> &'static Snapshot {
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
                nodeport_cidrs: Vec::new(),
                localhost_nodeports: true,
                // The host interface (ifindex 30): the node's own traffic.
                host_if: Some(shared::snapshot::PodHop { mac: [2, 0xee, 0, 0, 0, 1], host_mac: [2, 0xee, 0, 0, 0, 2], host_ifindex: 30 }),
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
                // The cluster DNS Service (its questions answered by the workers).
                ServiceSpec {
                    namespace: "kube-system".into(),
                    name: "kube-dns".into(),
                    cluster_ips: vec![Ipv4Addr::new(198, 18, 96, 53)],
                    ports: vec![ServicePortSpec { name: "dns".into(), proto: L4Proto::Udp, port: 53, node_port: None, endpoints: vec![ep([198, 19, 3, 10], "node-b")] }],
                    ..ServiceSpec::default()
                },
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
            masquerade: Default::default(),
            maglev_size: 251,
            dns: Some(shared::dns::DnsSpec { domain: "cluster.local".into(), server: Ipv4Addr::new(198, 18, 96, 53), ttl: 5 }),
            headless: Vec::new(),
        };
        Snapshot::build(spec, 1)
    })
}

