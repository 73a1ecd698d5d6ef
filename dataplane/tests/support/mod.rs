//! Fixtures for the pipeline specification tests: a lab-like world (node-a with
//! two local pods, node-b and a flannel-style kernel node behind VXLAN, an
//! external client), frame crafting with etherparse, and an independent check of
//! every output frame (IPv4 and L4 checksums, inner and outer, by etherparse).
#![allow(dead_code)]

use std::net::Ipv4Addr;

use dataplane::{process_batch, Frame, Verdict, WorkerState};
use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};
use shared::snapshot::{
    EndpointSpec, NodeInfo, OverlayConfig, PodRoute, RemoteNode, ServicePortSpec, ServiceSpec,
    Snapshot, TableSpec,
};
// Not every test crate that includes this module names them.
#[allow(unused_imports)]
pub use shared::snapshot::{LocalTraffic, MasqueradeMode, MasqueradeRules};
use shared::{Counters, L4Proto, Mac};

pub const HEADROOM: usize = 256;
pub const BUF: usize = 2048;

pub const UPLINK: u32 = 2;
pub const UPLINK_MAC: Mac = [2, 0, 0, 0, 0, 2];
pub const VTEP_A: Mac = [2, 0, 0, 0, 1, 1];
pub const VTEP_K: Mac = [2, 0, 0, 0, 2, 1];
pub const VTEP_B: Mac = [2, 0, 0, 0, 3, 1];
pub const MAC_K: Mac = [2, 0, 0, 0, 0, 1];
pub const MAC_B: Mac = [2, 0, 0, 0, 0, 3];
pub const MAC_EXT: Mac = [2, 0, 0, 0, 0, 0xc8];
pub const NODE_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const NODE_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
pub const NODE_K: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const OVERLAY_A: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 0);
pub const EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 10);
pub const A1: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 10);
pub const A2: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 11);
pub const B1: Ipv4Addr = Ipv4Addr::new(198, 19, 3, 10);
pub const B2: Ipv4Addr = Ipv4Addr::new(198, 19, 3, 11);
pub const K1: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 10);
pub const A1_IF: u32 = 10;
pub const A2_IF: u32 = 11;
pub const A1_MAC: Mac = [2, 0xa1, 0, 0, 0, 1];
pub const A2_MAC: Mac = [2, 0xa2, 0, 0, 0, 1];
pub const A1_HOST_MAC: Mac = [2, 0xa1, 0, 0, 0, 2];
pub const A2_HOST_MAC: Mac = [2, 0xa2, 0, 0, 0, 2];
pub const VXLAN_PORT: u16 = 8472;
pub const NS: u64 = 1_000_000_000;

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

pub fn ep(addr: Ipv4Addr, port: u16, node: &str) -> EndpointSpec {
    EndpointSpec::ready(addr, port, Some(node))
}

pub fn svc(
    name: &str,
    cluster_ip: &str,
    proto: L4Proto,
    port: u16,
    endpoints: Vec<EndpointSpec>,
) -> ServiceSpec {
    ServiceSpec {
        namespace: "default".into(),
        name: name.into(),
        cluster_ips: vec![ip(cluster_ip)],
        ports: vec![ServicePortSpec {
            name: "p".into(),
            proto,
            port,
            node_port: None,
            endpoints,
        }],
        ..ServiceSpec::default()
    }
}

/// The node-a world with the given Services.
pub fn world(services: Vec<ServiceSpec>) -> TableSpec {
    TableSpec {
        node: NodeInfo {
            name: "node-a".into(),
            zone: Some("zone-a".into()),
            underlay_ip: Some(NODE_A),
            node_ips: vec![NODE_A],
            nodeport_cidrs: Vec::new(),
            localhost_nodeports: false,
            host_if: None,
            pod_cidrs: vec!["198.19.1.0/24".parse().unwrap()],
            uplink_ifindex: UPLINK,
            uplink_mac: UPLINK_MAC,
            uplink_mtu: 1500,
            vtep_mac: VTEP_A,
        },
        overlay: OverlayConfig {
            vni: 1,
            port: VXLAN_PORT,
        },
        service_cidrs: vec!["198.18.96.0/20".parse().unwrap()],
        services,
        local_pods: vec![
            PodRoute {
                ip: A1,
                mac: A1_MAC,
                host_ifindex: A1_IF,
                host_mac: A1_HOST_MAC,
                name: "default/a1".into(),
            },
            PodRoute {
                ip: A2,
                mac: A2_MAC,
                host_ifindex: A2_IF,
                host_mac: A2_HOST_MAC,
                name: "default/a2".into(),
            },
        ],
        remote_nodes: vec![
            RemoteNode {
                name: "node-b".into(),
                underlay_ip: NODE_B,
                vtep_mac: VTEP_B,
                pod_cidrs: vec!["198.19.3.0/24".parse().unwrap()],
            },
            RemoteNode {
                name: "node-k".into(),
                underlay_ip: NODE_K,
                vtep_mac: VTEP_K,
                pod_cidrs: vec!["198.19.2.0/24".parse().unwrap()],
            },
        ],
        neighbors: vec![(NODE_B, MAC_B), (NODE_K, MAC_K), (EXT, MAC_EXT)],
        gateway: None,
        masquerade_ports: (61000, 65535),
        // As the agent derives it by default (detectLocalMode ClusterCIDR,
        // no --cluster-cidr): every Node's podCIDRs.
        masquerade: MasqueradeRules {
            local: LocalTraffic::Cidrs(vec![
                "198.19.1.0/24".parse().unwrap(),
                "198.19.2.0/24".parse().unwrap(),
                "198.19.3.0/24".parse().unwrap(),
            ]),
            ..Default::default()
        },
        maglev_size: 251,
        dns: None,
        headless: Vec::new(),
    }
}

pub fn snap(spec: TableSpec, generation: u64) -> Snapshot {
    Snapshot::build(spec, generation)
}

/// L4 of a crafted packet.
#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Udp {
        sport: u16,
        dport: u16,
    },
    /// flags: SYN/ACK/FIN/RST bits as in the header.
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
    },
    IcmpEcho {
        id: u16,
        seq: u16,
    },
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

pub fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp { sport, dport }
}

pub fn syn(sport: u16, dport: u16) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags: SYN,
        seq: 1000,
        ack: 0,
    }
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
        seq: 5000,
        ack: 7000,
    }
}

/// An Ethernet/IPv4 frame with a small payload.
pub fn frame(smac: Mac, dmac: Mac, src: Ipv4Addr, dst: Ipv4Addr, l4: L4, ttl: u8) -> Vec<u8> {
    let payload = b"nodeplane-payload";
    let b = PacketBuilder::ethernet2(smac, dmac).ipv4(src.octets(), dst.octets(), ttl);
    let mut out = Vec::new();
    match l4 {
        L4::Udp { sport, dport } => {
            let b = b.udp(sport, dport);
            b.write(&mut out, payload).unwrap();
        }
        L4::Tcp {
            sport,
            dport,
            flags,
            seq,
            ack,
        } => {
            let mut b = b.tcp(sport, dport, seq, 64240);
            if flags & SYN != 0 {
                b = b.syn();
            }
            if flags & ACK != 0 {
                b = b.ack(ack);
            }
            if flags & FIN != 0 {
                b = b.fin();
            }
            if flags & RST != 0 {
                b = b.rst();
            }
            b.write(&mut out, payload).unwrap();
        }
        L4::IcmpEcho { id, seq } => {
            let b = b.icmpv4_echo_request(id, seq);
            b.write(&mut out, payload).unwrap();
        }
    }
    out
}

/// `inner` wrapped in VXLAN from `outer_src` (a remote node) to node-a.
pub fn vxlan(outer_src: Ipv4Addr, outer_smac: Mac, vni: u32, flags: u8, inner: &[u8]) -> Vec<u8> {
    let mut vx = vec![
        flags,
        0,
        0,
        0,
        (vni >> 16) as u8,
        (vni >> 8) as u8,
        vni as u8,
        0,
    ];
    vx.extend_from_slice(inner);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(outer_smac, UPLINK_MAC)
        .ipv4(outer_src.octets(), NODE_A.octets(), 64)
        .udp(49152, VXLAN_PORT)
        .write(&mut out, &vx)
        .unwrap();
    out
}

/// One frame through the pipeline.
#[derive(Debug, Clone)]
pub struct Out {
    pub verdict: Verdict,
    pub bytes: Vec<u8>,
}

/// A worker: one flow table and its counters, fed one frame at a time.
pub struct Worker {
    pub state: WorkerState,
    pub counters: Counters,
    pub now: u64,
}

impl Default for Worker {
    fn default() -> Self {
        Worker {
            state: WorkerState::new(65536),
            counters: Counters::default(),
            now: 1_000 * NS,
        }
    }
}

impl Worker {
    pub fn run(&mut self, snap: &Snapshot, ingress: u32, bytes: &[u8]) -> Out {
        self.run_as(snap, ingress, bytes, false)
    }

    /// A worker of `workers` owning its share of flows.
    pub fn owning(me: u16, workers: u16) -> Worker {
        let mut w = Worker::default();
        w.state.flows.set_ownership(me, workers);
        w
    }

    /// `run` for a frame another worker handed over.
    pub fn run_handed_in(&mut self, snap: &Snapshot, ingress: u32, bytes: &[u8]) -> Out {
        self.run_as(snap, ingress, bytes, true)
    }

    fn run_as(&mut self, snap: &Snapshot, ingress: u32, bytes: &[u8], handed_in: bool) -> Out {
        let mut buf = vec![0u8; BUF];
        buf[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(bytes);
        let mut frame = Frame::new(&mut buf, HEADROOM, bytes.len(), ingress);
        if handed_in {
            frame = frame.handed_in();
        }
        let mut frames = [frame];
        let mut verdicts = [Verdict::Pass];
        process_batch(
            &mut frames,
            &mut verdicts,
            snap,
            &mut self.state,
            &mut self.counters,
            self.now,
        );
        let out = frames[0].data().to_vec();
        if let Verdict::Tx { .. } = verdicts[0] {
            verify_checksums(&out);
        }
        Out {
            verdict: verdicts[0],
            bytes: out,
        }
    }
}

impl Worker {
    /// Runs `frames` (ingress, bytes) as one batch; an `Out` per frame.
    pub fn run_batch(&mut self, snap: &Snapshot, frames: &[(u32, Vec<u8>)]) -> Vec<Out> {
        let mut bufs: Vec<Vec<u8>> = frames.iter().map(|_| vec![0u8; BUF]).collect();
        let mut batch: Vec<Frame<'_>> = bufs
            .iter_mut()
            .zip(frames)
            .map(|(buf, (ingress, bytes))| {
                buf[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(bytes);
                Frame::new(buf, HEADROOM, bytes.len(), *ingress)
            })
            .collect();
        let mut verdicts = vec![Verdict::Pass; batch.len()];
        process_batch(
            &mut batch,
            &mut verdicts,
            snap,
            &mut self.state,
            &mut self.counters,
            self.now,
        );
        batch
            .iter()
            .zip(verdicts)
            .map(|(f, verdict)| {
                let bytes = f.data().to_vec();
                if let Verdict::Tx { .. } = verdict {
                    verify_checksums(&bytes);
                }
                Out { verdict, bytes }
            })
            .collect()
    }

    /// The frames the pipeline emitted beyond its batch (fragments released or
    /// cut), with the interface each goes out of; each is checked like `run`'s.
    pub fn drain_extra(&mut self) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        self.state
            .frags
            .drain_extra(|ifindex, bytes| out.push((ifindex, bytes.to_vec())));
        for (_, b) in &out {
            verify_checksums(b);
        }
        out
    }
}

/// What a test needs to know of an output frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub smac: Mac,
    pub dmac: Mac,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub icmp: Option<(u8, u8)>,
    pub payload: Vec<u8>,
}

/// Parses an Ethernet/IPv4 frame with etherparse.
pub fn seen(bytes: &[u8]) -> Seen {
    let h = PacketHeaders::from_ethernet_slice(bytes).expect("output parses");
    let eth = h
        .link
        .clone()
        .and_then(|l| l.ethernet2())
        .expect("ethernet");
    let Some(NetHeaders::Ipv4(ip, _)) = &h.net else {
        panic!("no IPv4 header")
    };
    let mut s = Seen {
        smac: eth.source,
        dmac: eth.destination,
        src: Ipv4Addr::from(ip.source),
        dst: Ipv4Addr::from(ip.destination),
        ttl: ip.time_to_live,
        proto: ip.protocol.0,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        seq: 0,
        ack: 0,
        icmp: None,
        payload: h.payload.slice().to_vec(),
    };
    match &h.transport {
        Some(TransportHeader::Udp(u)) => {
            s.sport = u.source_port;
            s.dport = u.destination_port;
        }
        Some(TransportHeader::Tcp(t)) => {
            s.sport = t.source_port;
            s.dport = t.destination_port;
            s.seq = t.sequence_number;
            s.ack = t.acknowledgment_number;
            s.tcp_flags = u8::from(t.fin)
                | u8::from(t.syn) << 1
                | u8::from(t.rst) << 2
                | u8::from(t.psh) << 3
                | u8::from(t.ack) << 4;
        }
        Some(TransportHeader::Icmpv4(i)) => {
            let b = i.to_bytes();
            s.icmp = Some((b[0], b[1]));
        }
        _ => {}
    }
    s
}

/// For VXLAN output: (outer, vxlan header, inner frame bytes).
pub fn unwrap_vxlan(bytes: &[u8]) -> (Seen, [u8; 8], Vec<u8>) {
    let outer = seen(bytes);
    assert_eq!(outer.proto, 17, "outer is UDP");
    assert!(outer.payload.len() >= 8 + 14 + 20, "room for VXLAN + inner");
    let mut hdr = [0u8; 8];
    hdr.copy_from_slice(&outer.payload[..8]);
    let inner = outer.payload[8..].to_vec();
    verify_checksums(&inner);
    (outer, hdr, inner)
}

/// Every output frame's IPv4 and L4 checksums, verified by etherparse.
pub fn verify_checksums(bytes: &[u8]) {
    let h = PacketHeaders::from_ethernet_slice(bytes).expect("output parses");
    let Some(NetHeaders::Ipv4(ip, _)) = &h.net else {
        panic!("output is not IPv4")
    };
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let payload = h.payload.slice();
    match &h.transport {
        // A UDP checksum of 0 means "none" (as VXLAN's outer header sends).
        Some(TransportHeader::Udp(u)) if u.checksum != 0 => {
            assert_eq!(
                u.checksum,
                u.calc_checksum_ipv4(ip, payload).unwrap(),
                "UDP checksum"
            );
        }
        Some(TransportHeader::Tcp(t)) => {
            assert_eq!(
                t.checksum,
                t.calc_checksum_ipv4(ip, payload).unwrap(),
                "TCP checksum"
            );
        }
        Some(TransportHeader::Icmpv4(i)) => {
            assert_eq!(
                i.checksum,
                i.icmp_type.calc_checksum(payload),
                "ICMP checksum"
            );
        }
        _ => {}
    }
}

pub fn tx(ifindex: u32) -> Verdict {
    Verdict::Tx { ifindex }
}

// ---- SCTP (etherparse has none): built here, the CRC32c by a reference of
// the tests' own, independent of the crate the dataplane uses.

/// The reference CRC32c (Castagnoli, reflected, bit by bit).
pub fn crc32c_ref(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An SCTP packet: common header (tag 0x0a0b0c0d) and one INIT-sized chunk,
/// with its CRC32c stored least significant byte first (RFC 9260, Linux).
pub fn sctp_packet(sport: u16, dport: u16) -> Vec<u8> {
    let mut p = vec![0u8; 32];
    p[0..2].copy_from_slice(&sport.to_be_bytes());
    p[2..4].copy_from_slice(&dport.to_be_bytes());
    p[4..8].copy_from_slice(&[0x0a, 0x0b, 0x0c, 0x0d]);
    p[12..16].copy_from_slice(&[1, 0, 0, 20]);
    p[16..32].copy_from_slice(&[7; 16]);
    let crc = crc32c_ref(&p);
    p[8..12].copy_from_slice(&crc.to_le_bytes());
    p
}

/// An Ethernet/IPv4 frame carrying `sctp_packet(sport, dport)`.
pub fn sctp_frame(
    smac: Mac,
    dmac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src.octets(), dst.octets(), 64)
        .write(
            &mut v,
            etherparse::IpNumber(132),
            &sctp_packet(sport, dport),
        )
        .unwrap();
    v
}
