//! SCTP through Service NAT, as kube-proxy gives it (ClusterIP and NodePort,
//! REJECT without endpoints): ports translated and the CRC32c computed again
//! over the packet, checked here by a bitwise reference CRC32c of this file's
//! own (not the crate the dataplane uses); a fragment whose ports would change
//! is a counted drop. In memory; this machine's kernel has no SCTP, so there is
//! no lab test with real SCTP sockets.

mod support;

use std::net::Ipv4Addr;

use dataplane::Verdict;
use shared::snapshot::ServiceSpec;
use shared::{DropReason, L4Proto};
use support::*;

const SVC: &str = "198.18.96.40";
const NODEPORT: u16 = 30132;

/// (src, dst, sport, dport) of an SCTP frame, after checking its IPv4 header
/// with etherparse and its CRC32c with the reference.
fn sctp_seen(frame: &[u8]) -> (Ipv4Addr, Ipv4Addr, u16, u16) {
    let h = etherparse::SlicedPacket::from_ethernet(frame).expect("parses");
    let Some(etherparse::NetSlice::Ipv4(ip)) = h.net else {
        panic!("not IPv4")
    };
    assert_eq!(ip.header().protocol(), etherparse::IpNumber(132));
    let ihl = usize::from(ip.header().ihl()) * 4;
    assert_eq!(
        etherparse::Ipv4Header::from_slice(&frame[14..14 + ihl])
            .unwrap()
            .0
            .calc_header_checksum(),
        ip.header().header_checksum(),
        "IPv4 checksum"
    );
    let mut p = ip.payload().payload.to_vec();
    let stored = [p[8], p[9], p[10], p[11]];
    p[8..12].fill(0);
    assert_eq!(crc32c_ref(&p).to_le_bytes(), stored, "SCTP CRC32c");
    (
        ip.header().source_addr(),
        ip.header().destination_addr(),
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    )
}

fn service() -> ServiceSpec {
    let mut s = svc(SVC, SVC, L4Proto::Sctp, 80, vec![ep(A1, 8080, "node-a")]);
    s.name = "sctp".into();
    s.ports[0].node_port = Some(NODEPORT);
    s
}

#[test]
fn sctp_through_a_clusterip_is_translated_and_its_crc_computed_again() {
    let s = snap(world(vec![service()]), 1);
    let mut w = Worker::default();
    let out = w.run(
        &s,
        A2_IF,
        &sctp_frame(A2_MAC, A2_HOST_MAC, A2, ip(SVC), 40000, 80),
    );
    assert_eq!(out.verdict, tx(A1_IF));
    assert_eq!(
        sctp_seen(&out.bytes),
        (A2, A1, 40000, 8080),
        "DNAT to the endpoint"
    );
    // The reply comes back from the Service address.
    let out = w.run(
        &s,
        A1_IF,
        &sctp_frame(A1_MAC, A1_HOST_MAC, A1, A2, 8080, 40000),
    );
    assert_eq!(out.verdict, tx(A2_IF));
    assert_eq!(sctp_seen(&out.bytes), (ip(SVC), A2, 80, 40000));
    assert_eq!(w.counters.flows_created, 1);
}

#[test]
fn sctp_nodeport_from_outside_is_masqueraded_and_restored() {
    let s = snap(world(vec![service()]), 1);
    let mut w = Worker::default();
    let out = w.run(
        &s,
        UPLINK,
        &sctp_frame(MAC_EXT, UPLINK_MAC, EXT, NODE_A, 40001, NODEPORT),
    );
    assert_eq!(out.verdict, tx(A1_IF));
    let (src, dst, sport, dport) = sctp_seen(&out.bytes);
    assert_eq!(
        (src, dst, dport),
        (OVERLAY_A, A1, 8080),
        "eTP=Cluster: masqueraded"
    );
    let out = w.run(
        &s,
        A1_IF,
        &sctp_frame(A1_MAC, A1_HOST_MAC, A1, OVERLAY_A, 8080, sport),
    );
    assert_eq!(out.verdict, tx(UPLINK));
    assert_eq!(sctp_seen(&out.bytes), (NODE_A, EXT, NODEPORT, 40001));
}

#[test]
fn sctp_without_endpoints_or_on_a_wrong_port_is_rejected() {
    let mut empty = service();
    empty.ports[0].endpoints.clear();
    let s = snap(world(vec![empty]), 1);
    let mut w = Worker::default();
    for dport in [80, 81] {
        let out = w.run(
            &s,
            A2_IF,
            &sctp_frame(A2_MAC, A2_HOST_MAC, A2, ip(SVC), 40002, dport),
        );
        assert_eq!(out.verdict, tx(A2_IF), "port {dport}");
        let r = seen(&out.bytes);
        assert_eq!(
            (r.src, r.dst, r.icmp),
            (ip(SVC), A2, Some((3, 3))),
            "port {dport}"
        );
    }
    // TCP to the SCTP-only port: rejected too.
    let out = w.run(
        &s,
        A2_IF,
        &frame(A2_MAC, A2_HOST_MAC, A2, ip(SVC), syn(40003, 80), 64),
    );
    assert_eq!(seen(&out.bytes).tcp_flags, RST | ACK);
    assert_eq!(w.counters.rejected, 3);
}

/// A fragmented SCTP packet whose ports the Service translates cannot get a
/// correct CRC32c from one fragment: its first fragment is dropped, counted,
/// before a flow is created for it.
#[test]
fn a_fragmented_sctp_packet_to_a_service_is_a_counted_drop() {
    let s = snap(world(vec![service()]), 1);
    let mut w = Worker::default();
    let mut first = sctp_frame(A2_MAC, A2_HOST_MAC, A2, ip(SVC), 40004, 80);
    // More fragments follow: MF set, offset 0, IPv4 checksum refilled.
    first[20] |= 0x20;
    first[24..26].fill(0);
    let sum = etherparse::Ipv4Header::from_slice(&first[14..34])
        .unwrap()
        .0
        .calc_header_checksum();
    first[24..26].copy_from_slice(&sum.to_be_bytes());
    let out = w.run(&s, A2_IF, &first);
    assert_eq!(out.verdict, Verdict::Drop(DropReason::SctpFragment));
    assert_eq!(w.counters.dropped(DropReason::SctpFragment), 1);
    assert_eq!(
        w.counters.flows_created, 0,
        "no flow for a datagram that cannot pass"
    );
}
