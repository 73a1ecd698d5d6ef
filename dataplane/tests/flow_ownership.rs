//! Flow ownership with several workers: every frame of a NAT flow, in both
//! directions and whichever worker's queue it lands on, is handled by the one
//! worker that holds the flow. A frame that lands elsewhere is handed over
//! (`Verdict::Handoff`) unmodified, and the owner translates it.

mod support;

use std::net::Ipv4Addr;

use dataplane::flow::{client_owner, port_owner};
use dataplane::Verdict;
use proptest::prelude::*;
use shared::snapshot::{ServiceSpec, Snapshot};
use shared::L4Proto;
use support::*;

const WORKERS: u16 = 3;

/// Builds the reply's L4 header from (source port, destination port).
type ReplyL4 = fn(u16, u16) -> L4;

fn services() -> Vec<ServiceSpec> {
    let mut web = svc(
        "web",
        "198.18.96.10",
        L4Proto::Tcp,
        80,
        vec![
            ep(A1, 8080, "node-a"),
            ep(B1, 8080, "node-b"),
            ep(K1, 8080, "node-k"),
        ],
    );
    web.ports[0].node_port = Some(30080);
    let dns = svc(
        "dns",
        "198.18.96.11",
        L4Proto::Udp,
        53,
        vec![ep(A1, 5353, "node-a"), ep(B2, 5353, "node-b")],
    );
    vec![web, dns]
}

struct Pool {
    workers: Vec<Worker>,
    handoffs: u64,
}

impl Pool {
    fn new() -> Pool {
        Pool {
            workers: (0..WORKERS).map(|i| Worker::owning(i, WORKERS)).collect(),
            handoffs: 0,
        }
    }

    /// Delivers a frame to worker `first` and follows at most one handoff, as
    /// the AF_XDP adapter does. Returns (the worker that handled it, output).
    fn deliver(&mut self, s: &Snapshot, first: u16, ingress: u32, bytes: &[u8]) -> (u16, Out) {
        let out = self.workers[usize::from(first)].run(s, ingress, bytes);
        match out.verdict {
            Verdict::Handoff { worker } => {
                assert_ne!(worker, first, "never handed to itself");
                self.handoffs += 1;
                let out = self.workers[usize::from(worker)].run_handed_in(s, ingress, bytes);
                assert!(
                    !matches!(out.verdict, Verdict::Handoff { .. }),
                    "a handed-in frame is never handed on"
                );
                (worker, out)
            }
            _ => (first, out),
        }
    }
}

#[test]
fn clusterip_flow_lands_on_the_clients_worker_in_both_directions() {
    let s = snap(world(services()), 1);
    let mut pool = Pool::new();
    let owner = client_owner(u32::from(A2), WORKERS);
    let other = (owner + 1) % WORKERS;
    // The SYN lands on a worker that does not own the client: handed over.
    let syn = frame(
        A2_MAC,
        A2_HOST_MAC,
        A2,
        ip("198.18.96.10"),
        syn(40000, 80),
        64,
    );
    let first = pool.workers[usize::from(other)].run(&s, A2_IF, &syn);
    assert_eq!(first.verdict, Verdict::Handoff { worker: owner });
    assert_eq!(first.bytes, syn, "handed over unmodified");
    let (by, out) = pool.deliver(&s, other, A2_IF, &syn);
    assert_eq!(by, owner);
    let fwd = if let Verdict::Tx { ifindex } = out.verdict {
        if ifindex == UPLINK {
            seen(&unwrap_vxlan(&out.bytes).2)
        } else {
            seen(&out.bytes)
        }
    } else {
        panic!("{:?}", out.verdict)
    };
    assert_eq!((fwd.src, fwd.sport, fwd.dport), (A2, 40000, 8080));
    // The backend's reply lands on yet another worker: handed to the owner,
    // which restores the ClusterIP.
    let reply_inner = frame(
        A1_MAC,
        A1_HOST_MAC,
        fwd.dst,
        A2,
        tcp(8080, 40000, SYN | ACK),
        64,
    );
    let (reply_in, reply_bytes) = if fwd.dst == A1 {
        (A1_IF, reply_inner)
    } else {
        let from = if fwd.dst == B1 {
            (NODE_B, MAC_B, VTEP_B)
        } else {
            (NODE_K, MAC_K, VTEP_K)
        };
        let inner = frame(from.2, VTEP_A, fwd.dst, A2, tcp(8080, 40000, SYN | ACK), 64);
        (UPLINK, vxlan(from.0, from.1, 1, 0x08, &inner))
    };
    for w in 0..WORKERS {
        let mut p2 = Pool {
            workers: Vec::new(),
            handoffs: 0,
        };
        // Fresh copies so each start worker sees the same state.
        std::mem::swap(&mut p2.workers, &mut pool.workers);
        let (by, out) = p2.deliver(&s, w, reply_in, &reply_bytes);
        std::mem::swap(&mut p2.workers, &mut pool.workers);
        assert_eq!(by, owner, "reply handled by the owner (landed on {w})");
        assert_eq!(out.verdict, tx(A2_IF));
        let r = seen(&out.bytes);
        assert_eq!(
            (r.src, r.sport, r.dst, r.dport),
            (ip("198.18.96.10"), 80, A2, 40000)
        );
    }
}

#[test]
fn masquerade_ports_name_the_owner_so_replies_come_home() {
    let s = snap(world(services()), 1);
    let mut pool = Pool::new();
    // NodePort from the external client to node-a, for many client ports:
    // whenever the backend is remote the flow is masqueraded, and the port
    // chosen names the owning worker.
    let owner = client_owner(u32::from(EXT), WORKERS);
    let mut masqueraded = 0;
    for sport in 41000..41060u16 {
        let syn = frame(MAC_EXT, UPLINK_MAC, EXT, NODE_A, syn(sport, 30080), 64);
        let (by, out) = pool.deliver(&s, sport % WORKERS, UPLINK, &syn);
        assert_eq!(by, owner);
        let Verdict::Tx { ifindex: UPLINK } = out.verdict else {
            continue; // a local backend: no SNAT
        };
        let (outer, _, inner) = unwrap_vxlan(&out.bytes);
        let inner = seen(&inner);
        assert_eq!(inner.src, OVERLAY_A, "masqueraded");
        assert_eq!(
            port_owner(inner.sport, WORKERS),
            owner,
            "port {} names the owner",
            inner.sport
        );
        masqueraded += 1;
        // The reply comes back over VXLAN to any worker.
        let (node, mac, vtep) = if outer.dst == NODE_B {
            (NODE_B, MAC_B, VTEP_B)
        } else {
            (NODE_K, MAC_K, VTEP_K)
        };
        let reply = frame(
            vtep,
            VTEP_A,
            inner.dst,
            OVERLAY_A,
            tcp(8080, inner.sport, SYN | ACK),
            64,
        );
        let (by, out) = pool.deliver(
            &s,
            (sport + 1) % WORKERS,
            UPLINK,
            &vxlan(node, mac, 1, 0x08, &reply),
        );
        assert_eq!(by, owner);
        assert_eq!(out.verdict, tx(UPLINK));
        let r = seen(&out.bytes);
        assert_eq!(
            (r.src, r.sport, r.dst, r.dport),
            (NODE_A, 30080, EXT, sport)
        );
    }
    assert!(masqueraded > 10, "{masqueraded}");
}

#[test]
fn pod_traffic_leaving_the_cluster_is_owned_by_its_pods_worker() {
    let s = snap(world(services()), 1);
    let mut pool = Pool::new();
    let owner = client_owner(u32::from(A1), WORKERS);
    let out_pkt = frame(A1_MAC, A1_HOST_MAC, A1, EXT, udp(5000, 9000), 64);
    let (by, out) = pool.deliver(&s, (owner + 2) % WORKERS, A1_IF, &out_pkt);
    assert_eq!(by, owner);
    assert_eq!(out.verdict, tx(UPLINK));
    let o = seen(&out.bytes);
    assert_eq!(o.src, NODE_A);
    assert_eq!(port_owner(o.sport, WORKERS), owner);
    let reply = frame(MAC_EXT, UPLINK_MAC, EXT, NODE_A, udp(9000, o.sport), 64);
    let (by, out) = pool.deliver(&s, (owner + 1) % WORKERS, UPLINK, &reply);
    assert_eq!(by, owner);
    assert_eq!(out.verdict, tx(A1_IF));
    let r = seen(&out.bytes);
    assert_eq!((r.src, r.dst, r.dport), (EXT, A1, 5000));
}

#[test]
fn stateless_traffic_is_never_handed_over() {
    let s = snap(world(services()), 1);
    let mut pool = Pool::new();
    for w in 0..WORKERS {
        // Pod to pod across nodes, and a VXLAN frame for a local pod.
        let a = frame(A1_MAC, A1_HOST_MAC, A1, B2, udp(7000, 7001), 64);
        let out = pool.workers[usize::from(w)].run(&s, A1_IF, &a);
        assert_eq!(out.verdict, tx(UPLINK));
        let inner = frame(VTEP_B, VTEP_A, B2, A2, udp(7001, 7000), 64);
        let out =
            pool.workers[usize::from(w)].run(&s, UPLINK, &vxlan(NODE_B, MAC_B, 1, 0x08, &inner));
        assert_eq!(out.verdict, tx(A2_IF));
    }
    assert_eq!(pool.handoffs, 0);
    let handed: u64 = pool.workers.iter().map(|w| w.counters.handed_off).sum();
    assert_eq!(handed, 0);
}

/// A local pod's direct connection to a Service backend is tracked on the
/// client's worker, where its Service flows are: a clash of their reply
/// tuples is seen there, whichever queues the frames land on, and the flows
/// stay there when the backend turns unready.
#[test]
fn direct_flows_to_backends_meet_the_clients_service_flows() {
    let s = snap(world(services()), 1);
    let mut unready = world(services());
    for e in &mut unready.services[0].ports[0].endpoints {
        e.ready = false;
        e.serving = false;
    }
    let s2 = snap(unready, 2);
    let owner = client_owner(u32::from(A2), WORKERS);
    let a2 = |dst, l4| frame(A2_MAC, A2_HOST_MAC, A2, dst, l4, 64);
    let a1 = |l4| frame(A1_MAC, A1_HOST_MAC, A1, A2, l4, 64);
    for first in 0..WORKERS {
        for land in 0..WORKERS {
            let mut pool = Pool::new();
            // A Service flow to A1:8080 from some port.
            let mut q = 45000;
            loop {
                let (who, out) =
                    pool.deliver(&s, first, A2_IF, &a2(ip("198.18.96.10"), syn(q, 80)));
                let d = seen(&out.bytes);
                if out.verdict == tx(A1_IF) && (d.dst, d.dport) == (A1, 8080) {
                    assert_eq!(who, owner);
                    break;
                }
                q += 1;
            }
            // The direct connection from the same port.
            let (who, out) = pool.deliver(&s, land, A2_IF, &a2(A1, syn(q, 8080)));
            assert_eq!(who, owner, "tracked on the client's worker");
            let q2 = seen(&out.bytes).sport;
            assert_ne!(q2, q, "remapped");
            let back = (land + 1) % WORKERS;
            let (who, out) = pool.deliver(&s, back, A1_IF, &a1(tcp(8080, q2, SYN | ACK)));
            assert_eq!(who, owner);
            let r = seen(&out.bytes);
            assert_eq!((r.src, r.sport, r.dst, r.dport), (A1, 8080, A2, q));
            // The Service flow's replies still come from the ClusterIP.
            let (who, out) = pool.deliver(&s, back, A1_IF, &a1(tcp(8080, q, SYN | ACK)));
            assert_eq!(who, owner);
            let r = seen(&out.bytes);
            assert_eq!((r.src, r.sport), (ip("198.18.96.10"), 80));
            // A1 turns unready: the direct flow keeps its worker and its port.
            for w in 0..WORKERS {
                let (who, out) = pool.deliver(&s2, w, A2_IF, &a2(A1, tcp(q, 8080, ACK)));
                assert_eq!(who, owner);
                assert_eq!(seen(&out.bytes).sport, q2);
                let (who, out) = pool.deliver(&s2, w, A1_IF, &a1(tcp(8080, q2, ACK)));
                assert_eq!(who, owner);
                let r = seen(&out.bytes);
                assert_eq!((r.src, r.sport, r.dst, r.dport), (A1, 8080, A2, q));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any client, any service, any landing workers: the flow is created once,
    /// on its owner, and the reply is translated back by that owner.
    #[test]
    fn both_directions_meet_on_one_worker(
        client_host in 20u8..250, // not a backend (hairpin is covered elsewhere)
        sport in 1024u16..60000,
        first in 0u16..WORKERS,
        reply_first in 0u16..WORKERS,
        udp_svc in any::<bool>(),
    ) {
        let s = snap(world(services()), 1);
        let mut pool = Pool::new();
        // A remote pod on node-b (over VXLAN) or a local pod as the client.
        let client = Ipv4Addr::new(198, 19, 3, client_host);
        let (vip, port, l4, rl4): (Ipv4Addr, u16, L4, ReplyL4) = if udp_svc {
            (ip("198.18.96.11"), 53, udp(sport, 53), |a, b| udp(a, b))
        } else {
            (ip("198.18.96.10"), 80, syn(sport, 80), |a, b| tcp(a, b, SYN | ACK))
        };
        let inner = frame(VTEP_B, VTEP_A, client, vip, l4, 64);
        let (by, out) = pool.deliver(&s, first, UPLINK, &vxlan(NODE_B, MAC_B, 1, 0x08, &inner));
        prop_assert_eq!(by, client_owner(u32::from(client), WORKERS));
        let Verdict::Tx { ifindex } = out.verdict else { panic!("{:?}", out.verdict) };
        let fwd = if ifindex == UPLINK { seen(&unwrap_vxlan(&out.bytes).2) } else { seen(&out.bytes) };
        prop_assert_eq!(fwd.src, client);
        let created: u64 = pool.workers.iter().map(|w| w.counters.flows_created).sum();
        prop_assert_eq!(created, 1);
        // The reply from the backend.
        let (reply, rin) = match fwd.dst {
            d if d == A1 || d == A2 => {
                let (m, hm, i) = if d == A1 { (A1_MAC, A1_HOST_MAC, A1_IF) } else { (A2_MAC, A2_HOST_MAC, A2_IF) };
                (frame(m, hm, d, client, rl4(fwd.dport, sport), 64), i)
            }
            d => {
                let (n, m, v) = if d == K1 { (NODE_K, MAC_K, VTEP_K) } else { (NODE_B, MAC_B, VTEP_B) };
                let i = frame(v, VTEP_A, d, client, rl4(fwd.dport, sport), 64);
                (vxlan(n, m, 1, 0x08, &i), UPLINK)
            }
        };
        let (rby, back) = pool.deliver(&s, reply_first, rin, &reply);
        prop_assert_eq!(rby, by);
        prop_assert_eq!(back.verdict, tx(UPLINK));
        let b = seen(&unwrap_vxlan(&back.bytes).2);
        prop_assert_eq!((b.src, b.sport, b.dst, b.dport), (vip, port, client, sport));
    }
}
