//! The cluster DNS answers allocate nothing on the per-packet path: a
//! counting allocator (this test binary's global allocator, counting only
//! the measuring thread's allocations) around 1,000 batches of queries of
//! every kind through `process_batch`, after one warm-up batch.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::Ipv4Addr;

use dataplane::{process_batch, Frame, Verdict};
use domain::base::iana::{Class, Rtype};
use domain::base::{MessageBuilder, Name};
use octseq::array::Array;
use shared::dns::DnsSpec;
use shared::snapshot::{ServicePortSpec, ServiceSpec};
use shared::L4Proto;
use support::*;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the only
// addition is a thread-local counter, which itself never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const DNS_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 96, 53);

fn query(name: &str, rtype: Rtype) -> Vec<u8> {
    let mut b = MessageBuilder::from_target(Array::<512>::default()).unwrap();
    b.header_mut().set_id(1);
    let mut q = b.question();
    let n = Name::<Array<255>>::from_chars(name.chars()).unwrap();
    q.push((&n, rtype, Class::IN)).unwrap();
    let mut add = q.additional();
    add.opt(|o| {
        o.set_udp_payload_size(1232);
        Ok(())
    })
    .unwrap();
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(A2_MAC, A2_HOST_MAC)
        .ipv4(A2.octets(), DNS_IP.octets(), 64)
        .udp(40000, 53)
        .write(&mut frame, add.finish().as_ref())
        .unwrap();
    frame
}

#[test]
fn answering_allocates_nothing() {
    let mut web = svc(
        "web",
        "198.18.96.10",
        L4Proto::Tcp,
        80,
        vec![ep(A1, 8080, "node-a")],
    );
    web.ports[0].name = "http".into();
    let dns = ServiceSpec {
        namespace: "kube-system".into(),
        name: "kube-dns".into(),
        cluster_ips: vec![DNS_IP],
        ports: vec![ServicePortSpec {
            name: "dns".into(),
            proto: L4Proto::Udp,
            port: 53,
            node_port: None,
            endpoints: vec![ep(B1, 5353, "node-b")],
        }],
        ..ServiceSpec::default()
    };
    let mut spec = world(vec![web, dns]);
    spec.dns = Some(DnsSpec {
        domain: "cluster.local".into(),
        server: DNS_IP,
        ttl: 5,
    });
    let s = snap(spec, 1);
    let queries = [
        query("web.default.svc.cluster.local", Rtype::A),
        query("web.default.svc.cluster.local", Rtype::AAAA),
        query("_http._tcp.web.default.svc.cluster.local", Rtype::SRV),
        query("10.96.18.198.in-addr.arpa", Rtype::PTR),
        query("nothing.default.svc.cluster.local", Rtype::A),
        query("198-19-1-10.default.pod.cluster.local", Rtype::A),
    ];
    let mut bufs: Vec<Vec<u8>> = queries.iter().map(|_| vec![0u8; BUF]).collect();
    let mut verdicts = vec![Verdict::Pass; queries.len()];
    let mut w = Worker::default();
    let run = |bufs: &mut Vec<Vec<u8>>, verdicts: &mut Vec<Verdict>, w: &mut Worker| {
        let mut frames: arrayvec::ArrayVec<Frame<'_>, 8> = bufs
            .iter_mut()
            .zip(&queries)
            .map(|(b, q)| {
                b[HEADROOM..HEADROOM + q.len()].copy_from_slice(q);
                Frame::new(b, HEADROOM, q.len(), A2_IF)
            })
            .collect();
        process_batch(
            &mut frames,
            verdicts,
            &s,
            &mut w.state,
            &mut w.counters,
            w.now,
        );
    };
    run(&mut bufs, &mut verdicts, &mut w);
    assert!(verdicts.iter().all(|v| *v == tx(A2_IF)), "{verdicts:?}");
    // The counter counts (one allocation seen), then starts from zero.
    COUNTING.with(|c| c.set(true));
    drop(std::hint::black_box(vec![0u8; 10]));
    assert_eq!(COUNT.with(Cell::get), 1, "the counting allocator counts");
    COUNT.with(|c| c.set(0));
    for _ in 0..1000 {
        run(&mut bufs, &mut verdicts, &mut w);
    }
    COUNTING.with(|c| c.set(false));
    assert_eq!(COUNT.with(Cell::get), 0, "allocations while answering");
    let c = &w.counters;
    assert_eq!(c.dns_answered + c.dns_nodata + c.dns_nxdomain, 6 * 1001);
}
