//! Cluster DNS answered in the dataplane (issue 16): queries to the cluster
//! DNS ClusterIP on UDP 53, as byte fixtures (a dig-style EDNS0 query written
//! out by hand, others built with the `domain` crate), through the pipeline:
//! the answers' bytes, addresses, checksums and counters; the queries that go
//! on to the DNS Service's backends; a query over the overlay answered back
//! over it; and no allocation on the way.

mod support;

use std::net::Ipv4Addr;

use dataplane::Verdict;
use domain::base::iana::{Class, Rcode, Rtype};
use domain::base::{Message, MessageBuilder, Name};
use octseq::array::Array;
use shared::dns::DnsSpec;
use shared::snapshot::{ServicePortSpec, ServiceSpec, Snapshot};
use shared::L4Proto;
use support::*;

const DNS_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 96, 53);
const WEB_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 96, 10);

fn tables() -> Snapshot {
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
    snap(spec, 7)
}

/// `web.default.svc.cluster.local A IN` with RD and an EDNS0 OPT (UDP 1232),
/// id 0xbeef, as dig sends it (without its cookie option).
const DIG_WEB_A: &[u8] = &[
    0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // header
    3, b'w', b'e', b'b', 7, b'd', b'e', b'f', b'a', b'u', b'l', b't', 3, b's', b'v', b'c', 7, b'c',
    b'l', b'u', b's', b't', b'e', b'r', 5, b'l', b'o', b'c', b'a', b'l', 0, // qname
    0x00, 0x01, 0x00, 0x01, // A IN
    0x00, 0x00, 0x29, 0x04, 0xd0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // OPT, 1232, no options
];

/// A query for `name` of `rtype` (class IN unless `class`), RD set.
fn query(id: u16, name: &str, rtype: Rtype, class: Class) -> Vec<u8> {
    let mut b = MessageBuilder::from_target(Array::<512>::default()).unwrap();
    b.header_mut().set_id(id);
    b.header_mut().set_rd(true);
    let mut q = b.question();
    let n = Name::<Array<255>>::from_chars(name.chars()).unwrap();
    q.push((&n, rtype, class)).unwrap();
    q.finish().as_ref().to_vec()
}

/// A UDP frame from pod a2 (port 40000) to `dst`:53 carrying `payload`.
fn udp_frame(dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(A2_MAC, A2_HOST_MAC)
        .ipv4(A2.octets(), dst.octets(), 64)
        .udp(40000, 53)
        .write(&mut out, payload)
        .unwrap();
    out
}

/// Runs a query from a2 and returns the answer message (after checking that
/// it goes back to a2 from the DNS ClusterIP:53, checksums correct).
fn ask(w: &mut Worker, s: &Snapshot, payload: &[u8]) -> Vec<u8> {
    let out = w.run(s, A2_IF, &udp_frame(DNS_IP, payload));
    assert_eq!(out.verdict, tx(A2_IF), "answered back to the pod");
    let seen = seen(&out.bytes);
    assert_eq!(
        (seen.src, seen.sport, seen.dst, seen.dport),
        (DNS_IP, 53, A2, 40000)
    );
    assert_eq!((seen.smac, seen.dmac), (A2_HOST_MAC, A2_MAC));
    seen.payload
}

#[test]
fn digs_query_gets_the_clusterip_with_edns() {
    let s = tables();
    let mut w = Worker::default();
    let bytes = ask(&mut w, &s, DIG_WEB_A);
    let m = Message::from_octets(&bytes[..]).unwrap();
    let h = m.header();
    assert_eq!(h.id(), 0xbeef);
    assert!(h.qr() && h.aa() && h.rd() && h.ra());
    assert_eq!(h.rcode(), Rcode::NOERROR);
    let q = m.first_question().unwrap();
    assert_eq!(q.qname().to_string(), "web.default.svc.cluster.local");
    let answers: Vec<_> = m
        .answer()
        .unwrap()
        .limit_to::<domain::rdata::A>()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].data().addr(), WEB_IP);
    assert_eq!(answers[0].ttl().as_secs(), 5);
    assert_eq!(
        m.opt().map(|o| o.udp_payload_size()),
        Some(1232),
        "EDNS0 answered with OPT"
    );
    assert_eq!(w.counters.dns_answered, 1);
    assert_eq!(w.state.flows.len(), 0, "no flow for an answered query");
}

#[test]
fn every_kind_of_answer() {
    let s = tables();
    let mut w = Worker::default();
    let run = |w: &mut Worker, name: &str, rtype: Rtype| {
        let b = ask(w, &s, &query(7, name, rtype, Class::IN));
        let m = Message::from_octets(&b[..]).unwrap();
        let rcode = m.header().rcode();
        let answers: Vec<Rtype> = m.answer().unwrap().map(|r| r.unwrap().rtype()).collect();
        let authority: Vec<Rtype> = m.authority().unwrap().map(|r| r.unwrap().rtype()).collect();
        (rcode, answers, authority, b)
    };
    // Case does not matter.
    let (rc, an, _, _) = run(&mut w, "WEB.Default.SVC.cluster.local", Rtype::A);
    assert_eq!((rc, an), (Rcode::NOERROR, vec![Rtype::A]));
    // IPv4 only: AAAA has no data, the zone's SOA in authority.
    let (rc, an, ns, _) = run(&mut w, "web.default.svc.cluster.local", Rtype::AAAA);
    assert_eq!((rc, an, ns), (Rcode::NOERROR, vec![], vec![Rtype::SOA]));
    // SRV for a named port, its target the Service's name.
    let (rc, an, _, b) = run(
        &mut w,
        "_http._tcp.web.default.svc.cluster.local",
        Rtype::SRV,
    );
    assert_eq!((rc, an), (Rcode::NOERROR, vec![Rtype::SRV]));
    let m = Message::from_octets(&b[..]).unwrap();
    let srv = m
        .answer()
        .unwrap()
        .limit_to::<domain::rdata::Srv<_>>()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            srv.data().port(),
            srv.data().priority(),
            srv.data().weight()
        ),
        (80, 0, 100)
    );
    assert_eq!(
        srv.data().target().to_string(),
        "web.default.svc.cluster.local"
    );
    // PTR for a ClusterIP.
    let (rc, an, _, _) = run(&mut w, "10.96.18.198.in-addr.arpa", Rtype::PTR);
    assert_eq!((rc, an), (Rcode::NOERROR, vec![Rtype::PTR]));
    // The search-path forms a pod's resolv.conf (ndots:5) sends first.
    let (rc, an, ns, _) = run(
        &mut w,
        "web.default.svc.cluster.local.default.svc.cluster.local",
        Rtype::A,
    );
    assert_eq!((rc, an, ns), (Rcode::NXDOMAIN, vec![], vec![Rtype::SOA]));
    let (rc, _, _, _) = run(&mut w, "web.default.default.svc.cluster.local", Rtype::A);
    assert_eq!(rc, Rcode::NXDOMAIN);
    // A pod name spells its address.
    let (rc, an, _, _) = run(&mut w, "198-19-1-10.default.pod.cluster.local", Rtype::A);
    assert_eq!((rc, an), (Rcode::NOERROR, vec![Rtype::A]));
    // The zone's SOA.
    let (rc, an, _, _) = run(&mut w, "cluster.local", Rtype::SOA);
    assert_eq!((rc, an), (Rcode::NOERROR, vec![Rtype::SOA]));
    let c = &w.counters;
    assert_eq!((c.dns_answered, c.dns_nodata, c.dns_nxdomain), (5, 1, 2));
}

#[test]
fn what_is_not_the_clusters_goes_on_to_the_dns_backends() {
    let s = tables();
    let mut truncated = query(9, "web.default.svc.cluster.local", Rtype::A, Class::IN);
    truncated.truncate(20);
    let mut response = query(9, "web.default.svc.cluster.local", Rtype::A, Class::IN);
    response[2] |= 0x80; // QR
    let mut edns1 = DIG_WEB_A.to_vec();
    let n = edns1.len();
    edns1[n - 5] = 1; // EDNS version 1
    let mut dotted = query(9, "x.svc.cluster.local", Rtype::A, Class::IN);
    dotted[13] = b'.'; // "x" → "." inside a label... of length 1
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a name outside the domain",
            query(9, "example.org", Rtype::A, Class::IN),
        ),
        (
            "class CH",
            query(9, "web.default.svc.cluster.local", Rtype::A, Class::CH),
        ),
        (
            "an unknown reverse name",
            query(9, "99.99.18.198.in-addr.arpa", Rtype::PTR, Class::IN),
        ),
        ("a truncated message", truncated),
        ("a response", response),
        ("EDNS version 1", edns1),
        ("a dot inside a label", dotted),
        ("no DNS at all", b"hello".to_vec()),
    ];
    for (what, payload) in cases {
        let mut w = Worker::default();
        let out = w.run(&s, A2_IF, &udp_frame(DNS_IP, &payload));
        assert!(
            matches!(out.verdict, Verdict::Tx { .. }),
            "{what}: {:?}",
            out.verdict
        );
        let inner = if out.verdict == tx(UPLINK) {
            unwrap_vxlan(&out.bytes).2
        } else {
            out.bytes.clone()
        };
        let seen = seen(&inner);
        assert_eq!(
            (seen.dst, seen.dport),
            (B1, 5353),
            "{what}: DNAT to the DNS backend"
        );
        assert_eq!(seen.payload, payload, "{what}: the query unchanged");
        assert_eq!(w.counters.dns_forwarded, 1, "{what}");
        assert_eq!(
            w.counters.dns_answered + w.counters.dns_nxdomain,
            0,
            "{what}"
        );
    }
    // Without a DNS table the cluster's names go to the backends too.
    let mut spec = s.spec.clone();
    spec.dns = None;
    let plain = snap(spec, 8);
    let mut w = Worker::default();
    let out = w.run(&plain, A2_IF, &udp_frame(DNS_IP, DIG_WEB_A));
    assert_eq!(out.verdict, tx(UPLINK));
    assert_eq!(w.counters.dns_forwarded, 0);
}

#[test]
fn a_query_over_the_overlay_is_answered_back_over_it() {
    let s = tables();
    let mut inner = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 3, 9], VTEP_A)
        .ipv4(B2.octets(), DNS_IP.octets(), 64)
        .udp(41000, 53)
        .write(&mut inner, DIG_WEB_A)
        .unwrap();
    let mut w = Worker::default();
    let out = w.run(&s, UPLINK, &vxlan(NODE_B, MAC_B, 1, 0x08, &inner));
    assert_eq!(out.verdict, tx(UPLINK));
    let (outer, _, answer) = unwrap_vxlan(&out.bytes);
    assert_eq!(outer.dst, NODE_B, "back to node-b");
    let seen = seen(&answer);
    assert_eq!(
        (seen.src, seen.sport, seen.dst, seen.dport),
        (DNS_IP, 53, B2, 41000)
    );
    let m = Message::from_octets(&seen.payload[..]).unwrap();
    assert_eq!(m.header().id(), 0xbeef);
    assert_eq!(m.header_counts().ancount(), 1);
}

/// What the dns fuzz target found (a query whose answer would not have fit,
/// sent as an empty IPv4 packet and counted as answered): now forwarded to
/// the DNS backend, unchanged, and not counted.
const FUZZ_OVERSIZE: &[u8] = &[
    0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x38, 0x2d, 0xc0, 0x0a, 0x01, 0x00,
    0x00, 0x01, 0x01, 0x10, 0x00, 0x01, 0x03, 0x03, 0x03, 0x03, 0x03, 0x23, 0x00, 0x00, 0x00, 0x03,
    0x03, 0x03, 0x03, 0x03, 0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0x00, 0x08, 0x00, 0x00, 0x00, 0x01,
    0x0f, 0x2f, 0x2d, 0x01, 0x0f, 0x2f, 0x2d, 0x31, 0x2d, 0x30, 0x00, 0x02, 0x35, 0x33, 0x01, 0x00,
    0x3f, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0xc0, 0x0a, 0x01, 0x00,
    0x00, 0x01, 0x31, 0x00, 0x02, 0x35, 0x33, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01,
    0x01, 0x01, 0x01, 0xc0, 0x0a, 0x01, 0x00, 0x00, 0x01, 0x01, 0x10, 0x00, 0x01, 0x03, 0x03, 0x03,
    0x03, 0x03, 0x64, 0x07, 0x63, 0x6c, 0x75, 0x73, 0x74, 0x65, 0x72, 0x05, 0x6c, 0x6f, 0x63, 0x61,
    0x6c, 0x00, 0x05, 0x00, 0x01,
];

#[test]
fn an_answer_that_would_not_fit_goes_to_the_backends() {
    let s = tables();
    let mut w = Worker::default();
    let out = w.run(&s, A2_IF, &udp_frame(DNS_IP, FUZZ_OVERSIZE));
    assert_eq!(out.verdict, tx(UPLINK), "to b1 over the overlay");
    let inner = unwrap_vxlan(&out.bytes).2;
    let seen = seen(&inner);
    assert_eq!((seen.dst, seen.dport), (B1, 5353));
    assert_eq!(seen.payload, FUZZ_OVERSIZE);
    let c = &w.counters;
    assert_eq!(
        (
            c.dns_answered + c.dns_nodata + c.dns_nxdomain,
            c.dns_forwarded
        ),
        (0, 1)
    );
}

/// The frame with 4 bytes of IPv4 options (NOP NOP NOP EOL) after its
/// header, lengths and header checksum made right.
fn with_ip_options(frame: &[u8]) -> Vec<u8> {
    let mut f = frame[..34].to_vec();
    f.extend_from_slice(&[1, 1, 1, 0]);
    f.extend_from_slice(&frame[34..]);
    f[14] = 0x46;
    let total = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let mut sum = 0u32;
    for w in f[14..38].chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let cs = !u16::try_from(sum).unwrap();
    f[24..26].copy_from_slice(&cs.to_be_bytes());
    f
}

#[test]
fn an_answer_written_over_the_query_is_the_one_built_apart() {
    // Without IP options the answer is written where the query lies; with
    // them it is built in a buffer of its own with a plain header. Both give
    // the same frame, for every kind of composed answer.
    let s = tables();
    let mut w = Worker::default();
    let names = [
        ("WEB.default.svc.cluster.local", Rtype::A),
        ("web.default.svc.cluster.local", Rtype::AAAA),
        ("_http._tcp.web.default.svc.cluster.local", Rtype::SRV),
        ("10.96.18.198.in-addr.arpa", Rtype::PTR),
        (
            "web.default.svc.cluster.local.default.svc.cluster.local",
            Rtype::A,
        ),
        ("cluster.local", Rtype::SOA),
    ];
    let mut payloads: Vec<Vec<u8>> = names
        .iter()
        .map(|(n, t)| query(9, n, *t, Class::IN))
        .collect();
    payloads.push(DIG_WEB_A.to_vec());
    for payload in &payloads {
        let plain = udp_frame(DNS_IP, payload);
        let in_place = w.run(&s, A2_IF, &plain);
        let apart = w.run(&s, A2_IF, &with_ip_options(&plain));
        assert_eq!(in_place.verdict, tx(A2_IF));
        assert_eq!(apart.verdict, tx(A2_IF));
        assert_eq!(in_place.bytes, apart.bytes, "the same answer frame");
        let answer = seen(&in_place.bytes).payload;
        let m = Message::from_octets(&answer[..]).unwrap();
        assert!(m.header().qr());
    }
    let c = &w.counters;
    assert_eq!(c.dns_answered + c.dns_nodata + c.dns_nxdomain, 14);
}
