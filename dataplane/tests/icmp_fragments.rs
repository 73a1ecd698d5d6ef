//! ICMP errors, path MTU and IP fragments through Service NAT and the overlay,
//! as specification tables: an ICMP error about a tracked flow reaches the
//! flow's other end translated (outer and quoted addresses and ports, every
//! checksum); errors nodeplane cannot match follow a documented rule; a TTL that
//! would reach 0 is answered with time exceeded (rate-limited); a frame too big
//! for the overlay gets fragmentation needed (DF) or is cut (no DF); fragments
//! of one datagram all follow its first fragment, in any order; overlaps,
//! oversize and floods are counted drops with fixed memory. Every output is
//! checked by an independent parser (etherparse in the support module, smoltcp
//! here for quoted packets and reassembled datagrams).

mod support;

use std::net::Ipv4Addr;

use dataplane::flow::FlowTable;
use dataplane::frag::FragConfig;
use dataplane::{Verdict, WorkerState};
use etherparse::{Icmpv4Type, PacketBuilder};
use shared::snapshot::ServiceSpec;
use shared::wire::{IpAddress, Ipv4Packet, UdpPacket};
use shared::{DropReason, L4Proto, Mac};
use support::*;

const DNS_LOCAL: &str = "198.18.96.20";
const DNS_REMOTE: &str = "198.18.96.21";
const WEB_REMOTE: &str = "198.18.96.23";
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);

fn services() -> Vec<ServiceSpec> {
    let mut web = svc(
        "webr",
        WEB_REMOTE,
        L4Proto::Tcp,
        80,
        vec![ep(B1, 8080, "node-b")],
    );
    web.ports[0].node_port = Some(30081);
    let mut dnsr = svc(
        "dnsr",
        DNS_REMOTE,
        L4Proto::Udp,
        53,
        vec![ep(B1, 5353, "node-b")],
    );
    dnsr.ports[0].node_port = Some(30053);
    vec![
        svc(
            "dns1",
            DNS_LOCAL,
            L4Proto::Udp,
            53,
            vec![ep(A1, 5353, "node-a")],
        ),
        dnsr,
        web,
    ]
}

/// An ICMP error frame of `typ`/`code` (`rest`: bytes 5–8) quoting `quote`.
#[allow(clippy::too_many_arguments)]
fn icmp_error(
    smac: Mac,
    dmac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    typ: u8,
    code: u8,
    rest: [u8; 4],
    quote: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4(Icmpv4Type::Unknown {
            type_u8: typ,
            code_u8: code,
            bytes5to8: rest,
        })
        .write(&mut out, quote)
        .unwrap();
    out
}

/// The IP packet of an Ethernet frame.
fn ip_of(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

/// An output frame's IPv4 packet, decapsulated when it went over VXLAN.
fn delivered(out: &Out) -> Vec<u8> {
    let s = seen(&out.bytes);
    if out.verdict == tx(UPLINK) && s.proto == 17 && s.dport == VXLAN_PORT {
        return unwrap_vxlan(&out.bytes).2;
    }
    out.bytes.clone()
}

/// (ICMP type, code, bytes 5–8, quoted packet) of an ICMP frame, after
/// checking the outer IPv4 checksum and the quoted header's checksum.
fn icmp_of(frame: &[u8]) -> (u8, u8, [u8; 4], Vec<u8>) {
    let ip = Ipv4Packet::new_checked(ip_of(frame)).expect("IPv4");
    assert!(ip.verify_checksum(), "outer IPv4 checksum");
    let m = ip.payload();
    let quote = m[8..].to_vec();
    let q = Ipv4Packet::new_unchecked(&quote[..]);
    assert!(q.verify_checksum(), "quoted IPv4 header checksum");
    (m[0], m[1], [m[4], m[5], m[6], m[7]], quote)
}

fn quoted_tuple(quote: &[u8]) -> (Ipv4Addr, Ipv4Addr, u16, u16) {
    let q = Ipv4Packet::new_unchecked(quote);
    let l4 = &quote[usize::from(q.header_len())..];
    (
        q.src_addr(),
        q.dst_addr(),
        u16::from_be_bytes([l4[0], l4[1]]),
        u16::from_be_bytes([l4[2], l4[3]]),
    )
}

// ------------------------------------------------------------ errors of flows

#[test]
fn port_unreachable_from_a_local_backend_reaches_the_client_as_from_the_service() {
    let s = snap(world(services()), 1);
    let mut w = Worker::default();
    let out = w.run(
        &s,
        A2_IF,
        &frame(A2_MAC, A2_HOST_MAC, A2, ip(DNS_LOCAL), udp(40000, 53), 64),
    );
    assert_eq!(out.verdict, tx(A1_IF));
    assert_eq!(seen(&out.bytes).dst, A1);
    // A1's kernel has no socket on 5353: port unreachable, quoting the whole
    // datagram as it received it.
    let err = icmp_error(A1_MAC, A1_HOST_MAC, A1, A2, 3, 3, [0; 4], ip_of(&out.bytes));
    let back = w.run(&s, A1_IF, &err);
    assert_eq!(back.verdict, tx(A2_IF));
    let o = seen(&back.bytes);
    assert_eq!(
        (o.src, o.dst, o.ttl),
        (ip(DNS_LOCAL), A2, 63),
        "outer as from the Service"
    );
    let (t, c, _, quote) = icmp_of(&back.bytes);
    assert_eq!((t, c), (3, 3));
    assert_eq!(quoted_tuple(&quote), (A2, ip(DNS_LOCAL), 40000, 53));
    // The whole datagram was quoted: its UDP checksum must hold for the
    // translated addresses (A2 → the ClusterIP).
    let q = Ipv4Packet::new_unchecked(&quote[..]);
    let u = UdpPacket::new_checked(q.payload()).unwrap();
    assert!(u.verify_checksum(&IpAddress::Ipv4(A2), &IpAddress::Ipv4(ip(DNS_LOCAL))));
    assert_eq!(w.counters.icmp_errors_translated, 1);
}

#[test]
fn port_unreachable_from_a_remote_backend_comes_back_over_the_overlay_translated() {
    let s = snap(world(services()), 1);
    let mut w = Worker::default();
    let out = w.run(
        &s,
        A2_IF,
        &frame(A2_MAC, A2_HOST_MAC, A2, ip(DNS_REMOTE), udp(40001, 53), 64),
    );
    assert_eq!(out.verdict, tx(UPLINK));
    let inner = delivered(&out);
    assert_eq!(seen(&inner).dst, B1);
    // B1 answers port unreachable to A2; node-b sends it over VXLAN.
    let err = icmp_error(VTEP_B, VTEP_A, B1, A2, 3, 3, [0; 4], &ip_of(&inner)[..28]);
    let back = w.run(&s, UPLINK, &vxlan(NODE_B, MAC_B, 1, 0x08, &err));
    assert_eq!(back.verdict, tx(A2_IF));
    let o = seen(&back.bytes);
    assert_eq!((o.src, o.dst), (ip(DNS_REMOTE), A2));
    let (_, _, _, quote) = icmp_of(&back.bytes);
    assert_eq!(quoted_tuple(&quote), (A2, ip(DNS_REMOTE), 40001, 53));
}

#[test]
fn frag_needed_from_a_router_reaches_the_pod_behind_the_masquerade() {
    let s = snap(world(services()), 1);
    let mut w = Worker::default();
    let out = w.run(
        &s,
        A2_IF,
        &frame(A2_MAC, A2_HOST_MAC, A2, EXT, syn(40002, 80), 64),
    );
    assert_eq!(out.verdict, tx(UPLINK));
    let m = seen(&out.bytes);
    assert_eq!(m.src, NODE_A, "masqueraded");
    // A router on the path: fragmentation needed, next-hop MTU 1280, to the node.
    let err = icmp_error(
        MAC_EXT,
        UPLINK_MAC,
        ROUTER,
        NODE_A,
        3,
        4,
        [0, 0, 0x05, 0x00],
        &ip_of(&out.bytes)[..28],
    );
    let back = w.run(&s, UPLINK, &err);
    assert_eq!(back.verdict, tx(A2_IF));
    let o = seen(&back.bytes);
    assert_eq!((o.src, o.dst), (ROUTER, A2), "the router stays the sender");
    let (t, c, rest, quote) = icmp_of(&back.bytes);
    assert_eq!(
        (t, c, rest),
        (3, 4, [0, 0, 0x05, 0x00]),
        "the next-hop MTU is kept"
    );
    assert_eq!(quoted_tuple(&quote), (A2, EXT, 40002, 80));
}

#[test]
fn an_error_about_a_reply_reaches_the_backend() {
    let s = snap(world(services()), 1);
    let mut w = Worker::default();
    let out = w.run(
        &s,
        A2_IF,
        &frame(A2_MAC, A2_HOST_MAC, A2, ip(DNS_LOCAL), udp(40003, 53), 64),
    );
    assert_eq!(out.verdict, tx(A1_IF));
    // The backend's reply reaches A2 from the ClusterIP ...
    let reply = w.run(
        &s,
        A1_IF,
        &frame(A1_MAC, A1_HOST_MAC, A1, A2, udp(5353, 40003), 64),
    );
    assert_eq!(reply.verdict, tx(A2_IF));
    // ... and A2's socket is gone: port unreachable about that reply.
    let err = icmp_error(
        A2_MAC,
        A2_HOST_MAC,
        A2,
        ip(DNS_LOCAL),
        3,
        3,
        [0; 4],
        &ip_of(&reply.bytes)[..28],
    );
    let back = w.run(&s, A2_IF, &err);
    assert_eq!(back.verdict, tx(A1_IF));
    let o = seen(&back.bytes);
    assert_eq!((o.src, o.dst), (A2, A1));
    let (_, _, _, quote) = icmp_of(&back.bytes);
    assert_eq!(quoted_tuple(&quote), (A1, A2, 5353, 40003));
}

/// (case, ingress, frame, expected verdict, drop reason counted)
type ErrRow = (&'static str, u32, Vec<u8>, Verdict);

#[test]
fn errors_nodeplane_cannot_match_follow_the_documented_rule() {
    let s = snap(world(services()), 1);
    let pod_to_pod = frame(A2_MAC, A2_HOST_MAC, A2, A1, udp(1000, 2000), 64);
    let to_ext = frame(MAC_EXT, UPLINK_MAC, EXT, A1, udp(1000, 2000), 64);
    let inner_err = icmp_error(
        A1_MAC,
        A1_HOST_MAC,
        A1,
        A2,
        3,
        3,
        [0; 4],
        &ip_of(&pod_to_pod)[..28],
    );
    let rows: Vec<ErrRow> = vec![
        (
            "pod → pod error, no flow: routed like any packet",
            A1_IF,
            icmp_error(
                A1_MAC,
                A1_HOST_MAC,
                A1,
                A2,
                3,
                3,
                [0; 4],
                &ip_of(&pod_to_pod)[..28],
            ),
            tx(A2_IF),
        ),
        (
            "error to an external host about no flow: dropped (it would leak the pod)",
            A1_IF,
            icmp_error(
                A1_MAC,
                A1_HOST_MAC,
                A1,
                EXT,
                3,
                3,
                [0; 4],
                &ip_of(&to_ext)[..28],
            ),
            Verdict::Drop(DropReason::IcmpErrorNoFlow),
        ),
        (
            "error about an error: dropped",
            A2_IF,
            icmp_error(
                A2_MAC,
                A2_HOST_MAC,
                A2,
                A1,
                3,
                1,
                [0; 4],
                &ip_of(&inner_err)[..28],
            ),
            Verdict::Drop(DropReason::IcmpErrorOfError),
        ),
    ];
    for (name, ingress, bytes, want) in rows {
        let mut w = Worker::default();
        let out = w.run(&s, ingress, &bytes);
        assert_eq!(out.verdict, want, "{name}");
        if let Verdict::Drop(r) = want {
            assert_eq!(w.counters.dropped(r), 1, "{name} counted");
        } else {
            assert_eq!(&out.bytes[34..], &bytes[34..], "{name}: ICMP untouched");
        }
    }
}

// ------------------------------------------------------------ TTL

#[test]
fn ttl_1_gets_time_exceeded_from_the_node_quoting_the_original_rate_limited() {
    let s = snap(world(services()), 1);
    let mut w = Worker::default();
    let probe = frame(A2_MAC, A2_HOST_MAC, A2, ip(DNS_REMOTE), udp(33434, 53), 1);
    let out = w.run(&s, A2_IF, &probe);
    assert_eq!(out.verdict, tx(A2_IF), "back to the sender");
    let o = seen(&out.bytes);
    assert_eq!((o.src, o.dst, o.dmac), (NODE_A, A2, A2_MAC));
    let (t, c, _, quote) = icmp_of(&out.bytes);
    assert_eq!((t, c), (11, 0));
    assert_eq!(
        &quote[..],
        &ip_of(&probe)[..quote.len()],
        "the probe as sent"
    );
    // A burst of 6 per destination, then one per second.
    let answered = (0..9)
        .filter(|_| w.run(&s, A2_IF, &probe).verdict == tx(A2_IF))
        .count();
    assert_eq!(answered, 5, "6 in the burst (one above)");
    assert_eq!(w.counters.icmp_rate_limited, 4);
    assert_eq!(w.counters.dropped(DropReason::TtlExceeded), 4);
    w.now += NS;
    assert_eq!(w.run(&s, A2_IF, &probe).verdict, tx(A2_IF));
    // Over the overlay: back to the remote sender's node.
    let from_b = vxlan(
        NODE_B,
        MAC_B,
        1,
        0x08,
        &frame(VTEP_B, VTEP_A, B1, A1, udp(33434, 9), 1),
    );
    let out = w.run(&s, UPLINK, &from_b);
    assert_eq!(out.verdict, tx(UPLINK));
    let inner = delivered(&out);
    let (t, _, _, _) = icmp_of(&inner);
    assert_eq!(t, 11);
    assert_eq!(seen(&inner).dst, B1);
}

// ------------------------------------------------------------ path MTU

#[test]
fn too_big_for_the_overlay_with_df_gets_frag_needed_quoting_the_original() {
    let s = snap(world(services()), 1);
    let mut w = Worker::default();
    let syn_ = frame(MAC_EXT, UPLINK_MAC, EXT, NODE_A, syn(50000, 30081), 64);
    assert_eq!(w.run(&s, UPLINK, &syn_).verdict, tx(UPLINK));
    // A full-size segment (1500-byte IP packet, DF) towards the remote backend.
    let mut big = Vec::new();
    PacketBuilder::ethernet2(MAC_EXT, UPLINK_MAC)
        .ipv4(EXT.octets(), NODE_A.octets(), 64)
        .tcp(50000, 30081, 1001, 64240)
        .ack(1)
        .write(&mut big, &[0x5a; 1460])
        .unwrap();
    assert_eq!(big.len(), 1514);
    big[20] |= 0x40; // DF
    refill_ipv4_checksum(&mut big);
    let out = w.run(&s, UPLINK, &big);
    assert_eq!(out.verdict, tx(UPLINK), "answered to the client");
    let o = seen(&out.bytes);
    assert_eq!((o.src, o.dst, o.dmac), (NODE_A, EXT, MAC_EXT));
    let (t, c, rest, quote) = icmp_of(&out.bytes);
    assert_eq!((t, c), (3, 4));
    assert_eq!(
        u16::from_be_bytes([rest[2], rest[3]]),
        1450,
        "uplink MTU − 50"
    );
    assert!(out.bytes.len() <= 14 + 576, "an ICMP error fits 576 bytes");
    // The quote is the segment as the client sent it: to the NodePort, TTL 64.
    assert_eq!(quoted_tuple(&quote), (EXT, NODE_A, 50000, 30081));
    assert_eq!(Ipv4Packet::new_unchecked(&quote[..]).hop_limit(), 64);
    assert_eq!(w.counters.icmp_errors_sent, 1);
}

/// Reassembles the inner fragments of one datagram (in any order) and checks
/// them: same id, 8-byte-aligned offsets, MF on all but the last, no gap.
fn reassemble(fragments: &[Vec<u8>]) -> (Ipv4Addr, Ipv4Addr, Vec<u8>) {
    let mut parts: Vec<(u16, bool, Vec<u8>, u16, Ipv4Addr, Ipv4Addr)> = fragments
        .iter()
        .map(|f| {
            let ip = Ipv4Packet::new_checked(ip_of(f)).expect("fragment parses");
            assert!(ip.verify_checksum(), "fragment IPv4 checksum");
            (
                ip.frag_offset(),
                ip.more_frags(),
                ip.payload().to_vec(),
                ip.ident(),
                ip.src_addr(),
                ip.dst_addr(),
            )
        })
        .collect();
    parts.sort_by_key(|p| p.0);
    let id = parts[0].3;
    let mut data = Vec::new();
    for (i, (off, mf, payload, pid, src, dst)) in parts.iter().enumerate() {
        assert_eq!(*pid, id, "one datagram");
        assert_eq!((*src, *dst), (parts[0].4, parts[0].5), "one translation");
        assert_eq!(usize::from(*off), data.len(), "no gap, no overlap");
        assert_eq!(*mf, i + 1 < parts.len(), "MF on all but the last");
        data.extend_from_slice(payload);
    }
    (parts[0].4, parts[0].5, data)
}

#[test]
fn too_big_for_the_overlay_without_df_is_cut_into_fragments() {
    let s = snap(world(services()), 1);
    let mut w = Worker::default();
    // A 1500-byte UDP datagram (no DF) from outside to a NodePort whose
    // backend is on node-b.
    let payload: Vec<u8> = (0..1472u32).map(|i| i as u8).collect();
    let mut big = Vec::new();
    PacketBuilder::ethernet2(MAC_EXT, UPLINK_MAC)
        .ipv4(EXT.octets(), NODE_A.octets(), 64)
        .udp(50001, 30053)
        .write(&mut big, &payload)
        .unwrap();
    big[20] &= !0x40; // etherparse sets DF; this datagram may be fragmented
    refill_ipv4_checksum(&mut big);
    let out = w.run(&s, UPLINK, &big);
    assert_eq!(out.verdict, tx(UPLINK));
    assert!(
        out.bytes.len() <= 1514,
        "the first fragment fits the uplink"
    );
    let extra = w.drain_extra();
    assert_eq!(extra.len(), 1, "one more fragment");
    assert!(extra.iter().all(|(i, b)| *i == UPLINK && b.len() <= 1514));
    let mut inner = vec![delivered(&out)];
    inner.extend(extra.iter().map(|(_, b)| unwrap_vxlan(b).2));
    let (src, dst, data) = reassemble(&inner);
    assert_eq!(dst, B1);
    let u = UdpPacket::new_checked(&data[..]).unwrap();
    assert_eq!(u.dst_port(), 5353);
    assert_eq!(u.payload(), &payload[..]);
    assert!(
        u.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst)),
        "UDP checksum of the whole translated datagram"
    );
    assert_eq!(w.counters.fragments_cut, 2);
}

// ------------------------------------------------------------ fragments through NAT

/// A UDP datagram from `src` cut into fragments of at most `mtu` bytes, as a
/// client's kernel does: (fragment frames in order, the datagram's UDP payload).
fn fragmented_udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, len: usize, id: u16) -> Vec<Vec<u8>> {
    let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
    let mut whole = Vec::new();
    PacketBuilder::ethernet2(A2_MAC, A2_HOST_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, 53)
        .write(&mut whole, &payload)
        .unwrap();
    let data = &whole[34..]; // UDP header + payload
                             // A pod's MTU is the uplink's minus 50: 1,450-byte packets.
    let chunk = 1424;
    let mut out = Vec::new();
    let mut off = 0;
    while off < data.len() {
        let n = chunk.min(data.len() - off);
        let mut f = whole[..34].to_vec();
        f.extend_from_slice(&data[off..off + n]);
        let total = u16::try_from(20 + n).unwrap();
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[18..20].copy_from_slice(&id.to_be_bytes());
        let more = off + n < data.len();
        let word = u16::try_from(off / 8).unwrap() | if more { 0x2000 } else { 0 };
        f[20..22].copy_from_slice(&word.to_be_bytes());
        refill_ipv4_checksum(&mut f);
        out.push(f);
        off += n;
    }
    out
}

fn refill_ipv4_checksum(f: &mut [u8]) {
    f[24] = 0;
    f[25] = 0;
    let cs = shared::wire::checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&cs.to_be_bytes());
}

#[test]
fn fragments_in_order_and_out_of_order_all_reach_the_first_ones_backend() {
    let s = snap(world(services()), 1);
    for order in [[0usize, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]] {
        let mut w = Worker::default();
        let frags = fragmented_udp(A2, 41000, ip(DNS_REMOTE), 4000, 0x1234);
        assert_eq!(frags.len(), 3);
        let mut delivered_inner = Vec::new();
        for &i in &order {
            let out = w.run(&s, A2_IF, &frags[i]);
            match out.verdict {
                Verdict::Held => assert_ne!(i, 0, "{order:?}: the first fragment never waits"),
                v => {
                    assert_eq!(v, tx(UPLINK), "{order:?}: fragment {i}");
                    delivered_inner.push(delivered(&out));
                }
            }
            delivered_inner.extend(w.drain_extra().iter().map(|(_, b)| unwrap_vxlan(b).2));
        }
        assert_eq!(delivered_inner.len(), 3, "{order:?}");
        let (src, dst, data) = reassemble(&delivered_inner);
        assert_eq!((src, dst), (A2, B1), "{order:?}");
        let u = UdpPacket::new_checked(&data[..]).unwrap();
        assert_eq!((u.src_port(), u.dst_port()), (41000, 5353));
        assert!(u.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst)));
        let held = order.iter().take_while(|&&i| i != 0).count() as u64;
        assert_eq!(w.counters.fragments_held, held, "{order:?}");
        assert_eq!(w.counters.fragments_released, held, "{order:?}");
        assert_eq!(
            w.counters.fragments_translated,
            2 - held,
            "{order:?}: the later fragments that came after the first"
        );
    }
}

/// In one batch, later fragments ahead of their first fragment do not wait:
/// they run after the batch's first fragments, so all three go out at once.
#[test]
fn out_of_order_fragments_in_one_batch_go_out_in_that_batch() {
    let s = snap(world(services()), 1);
    let mut w = Worker::default();
    let frags = fragmented_udp(A2, 41001, ip(DNS_REMOTE), 4000, 0x2345);
    let batch: Vec<(u32, Vec<u8>)> = [2usize, 1, 0]
        .iter()
        .map(|&i| (A2_IF, frags[i].clone()))
        .collect();
    let outs = w.run_batch(&s, &batch);
    for (k, o) in outs.iter().enumerate() {
        assert_eq!(o.verdict, tx(UPLINK), "frame {k} of the batch");
    }
    assert_eq!(w.counters.fragments_held, 0);
    assert_eq!(w.counters.fragments_translated, 2);
    let inner: Vec<Vec<u8>> = outs.iter().map(delivered).collect();
    let (src, dst, _) = reassemble(&inner);
    assert_eq!((src, dst), (A2, B1));
}

/// A first fragment too short for its UDP header (RFC 1858) is dropped by
/// classify, and its datagram is refused: a later fragment in the same batch
/// and one in the next are dropped, none waits in the table.
#[test]
fn a_tiny_first_fragment_refuses_its_datagram_in_its_own_batch() {
    let s = snap(world(services()), 1);
    let mut w = Worker::default();
    let frags = fragmented_udp(A2, 41002, ip(DNS_REMOTE), 4000, 0x3456);
    // The first fragment cut to 4 bytes of UDP header.
    let mut tiny = frags[0][..14 + 20 + 4].to_vec();
    let total = u16::try_from(tiny.len() - 14).unwrap();
    tiny[16..18].copy_from_slice(&total.to_be_bytes());
    refill_ipv4_checksum(&mut tiny);
    let outs = w.run_batch(&s, &[(A2_IF, tiny), (A2_IF, frags[1].clone())]);
    assert!(
        matches!(outs[0].verdict, Verdict::Drop(_)),
        "{:?}",
        outs[0].verdict
    );
    // The later fragment waited, then left with its datagram's refusal (the
    // arena counts fragments dropped while waiting as fragment_timeout).
    assert_eq!(outs[1].verdict, Verdict::Held);
    assert_eq!(w.state.frags.slots_in_use(), 0, "nothing waits");
    assert_eq!(w.counters.dropped(DropReason::FragmentTimeout), 1);
    let out = w.run(&s, A2_IF, &frags[2]);
    assert_eq!(out.verdict, Verdict::Drop(DropReason::FragmentRefused));
    // A later fragment waiting from an earlier batch, then the tiny first
    // fragment alone in its batch (no other fragment there): the waiting one
    // is let go all the same.
    let mut w = Worker::default();
    assert_eq!(w.run(&s, A2_IF, &frags[1]).verdict, Verdict::Held);
    assert_eq!(w.state.frags.slots_in_use(), 1);
    let mut tiny = frags[0][..14 + 20 + 4].to_vec();
    tiny[16..18].copy_from_slice(&total.to_be_bytes());
    refill_ipv4_checksum(&mut tiny);
    let out = w.run(&s, A2_IF, &tiny);
    assert!(matches!(out.verdict, Verdict::Drop(_)));
    assert_eq!(w.state.frags.slots_in_use(), 0, "nothing waits");
    let out = w.run(&s, A2_IF, &frags[2]);
    assert_eq!(out.verdict, Verdict::Drop(DropReason::FragmentRefused));
}

#[test]
fn every_datagram_keeps_its_backend_across_backends() {
    // Three backends; many datagrams: each one's fragments meet one backend.
    let mut specs = services();
    specs.push(svc(
        "dns3",
        "198.18.96.30",
        L4Proto::Udp,
        53,
        vec![
            ep(A1, 5353, "node-a"),
            ep(B1, 5353, "node-b"),
            ep(K1, 5353, "node-k"),
        ],
    ));
    let s = snap(world(specs), 1);
    let mut w = Worker::default();
    let mut backends = std::collections::BTreeSet::new();
    for n in 0..60u16 {
        let frags = fragmented_udp(A2, 42000 + n, ip("198.18.96.30"), 3000, 0x4000 + n);
        let mut dsts = std::collections::BTreeSet::new();
        for f in frags.iter().rev() {
            let out = w.run(&s, A2_IF, f);
            if out.verdict != Verdict::Held {
                dsts.insert(seen(&delivered(&out)).dst);
            }
            for (_, b) in w.drain_extra() {
                let inner = if seen(&b).dport == VXLAN_PORT {
                    unwrap_vxlan(&b).2
                } else {
                    b
                };
                dsts.insert(seen(&inner).dst);
            }
        }
        assert_eq!(dsts.len(), 1, "datagram {n}: {dsts:?}");
        backends.extend(dsts);
    }
    assert_eq!(
        backends.len(),
        3,
        "Maglev spread the datagrams: {backends:?}"
    );
}

#[test]
fn overlapping_and_oversize_fragments_are_counted_drops() {
    let s = snap(world(services()), 1);
    let mut w = Worker::default();
    let frags = fragmented_udp(A2, 43000, ip(DNS_REMOTE), 4000, 7);
    assert_eq!(w.run(&s, A2_IF, &frags[0]).verdict, tx(UPLINK));
    // The second fragment moved back by 8 bytes: it overlaps the first.
    let mut overlap = frags[1].clone();
    let word = u16::from_be_bytes([overlap[20], overlap[21]]) - 1;
    overlap[20..22].copy_from_slice(&word.to_be_bytes());
    refill_ipv4_checksum(&mut overlap);
    assert_eq!(
        w.run(&s, A2_IF, &overlap).verdict,
        Verdict::Drop(DropReason::FragmentOverlap)
    );
    // Ends beyond 65,535 bytes.
    let mut oversize = frags[1].clone();
    oversize[20..22].copy_from_slice(&(0x2000u16 | 8190).to_be_bytes());
    refill_ipv4_checksum(&mut oversize);
    assert_eq!(
        w.run(&s, A2_IF, &oversize).verdict,
        Verdict::Drop(DropReason::FragmentTooBig)
    );
    // A repeat of the first fragment overlaps itself.
    assert_eq!(
        w.run(&s, A2_IF, &frags[0]).verdict,
        Verdict::Drop(DropReason::FragmentOverlap)
    );
    // The legitimate rest still goes through.
    assert_eq!(w.run(&s, A2_IF, &frags[1]).verdict, tx(UPLINK));
    assert_eq!(w.run(&s, A2_IF, &frags[2]).verdict, tx(UPLINK));
}

#[test]
fn a_fragment_flood_fills_fixed_memory_and_waiting_fragments_time_out() {
    let s = snap(world(services()), 1);
    let cfg = FragConfig {
        memory_bytes: 32 * 2048,
        timeout_ns: NS,
        datagrams: 256,
    };
    let mut w = Worker {
        state: WorkerState::with(FlowTable::new(1024), cfg),
        ..Worker::default()
    };
    let before = w.state.frags.memory_bytes();
    // A datagram being forwarded in order before the flood.
    let legit = fragmented_udp(A2, 44100, ip(DNS_REMOTE), 2000, 60_000);
    assert_eq!(w.run(&s, A2_IF, &legit[0]).verdict, tx(UPLINK));
    for id in 0..5000u16 {
        // Later fragments only: each would wait for a first that never comes.
        let frags = fragmented_udp(A2, 44000, ip(DNS_REMOTE), 2000, id);
        match w.run(&s, A2_IF, &frags[1]).verdict {
            Verdict::Held | Verdict::Drop(DropReason::FragmentNoRoom) => {}
            v => panic!("fragment {id}: {v:?}"),
        }
        assert!(w.state.frags.slots_in_use() <= 32, "the arena never grows");
    }
    assert_eq!(w.state.frags.memory_bytes(), before, "memory is fixed");
    let c = &w.counters;
    assert_eq!(
        c.fragments_held,
        c.dropped(DropReason::FragmentEvicted) + w.state.frags.slots_in_use() as u64,
        "every held fragment is still waiting or was counted as evicted"
    );
    // The flood pushed out waiting orphans, never the forwarded datagram.
    assert_eq!(w.run(&s, A2_IF, &legit[1]).verdict, tx(UPLINK));
    // After the timeout the waiting ones are dropped and counted, and a new
    // fragment finds room.
    w.now += 2 * NS;
    let frags = fragmented_udp(A2, 44001, ip(DNS_REMOTE), 2000, 9999);
    assert_eq!(w.run(&s, A2_IF, &frags[1]).verdict, Verdict::Held);
    assert!(w.counters.dropped(DropReason::FragmentTimeout) > 0);
}

#[test]
fn with_two_workers_a_datagrams_fragments_follow_the_first_to_its_flows_owner() {
    // The fragments land on the worker that does not own the client's flows:
    // the first is handed to the owner, and the later ones after it follow.
    // One that came before its first cannot follow (it waits in the landing
    // worker's arena): dropped and counted as `fragment_other_worker`.
    let s = snap(world(services()), 1);
    let owner_of_a2 = dataplane::flow::client_owner(u32::from(A2), 2);
    let landing = 1 - owner_of_a2;
    for (order, early) in [([0usize, 1, 2], 0u64), ([1, 0, 2], 1)] {
        let mut workers = [Worker::owning(0, 2), Worker::owning(1, 2)];
        let frags = fragmented_udp(A2, 41000, ip(DNS_REMOTE), 4000, 0x4242);
        let mut delivered_inner = Vec::new();
        for &i in &order {
            let out = workers[usize::from(landing)].run(&s, A2_IF, &frags[i]);
            match out.verdict {
                Verdict::Handoff { worker } => {
                    assert_eq!(worker, owner_of_a2, "{order:?}: fragment {i}");
                    let out = workers[usize::from(worker)].run_handed_in(&s, A2_IF, &frags[i]);
                    assert_eq!(
                        out.verdict,
                        tx(UPLINK),
                        "{order:?}: fragment {i} at the owner"
                    );
                    delivered_inner.push(delivered(&out));
                }
                Verdict::Held => assert_eq!(early, 1, "{order:?}: only an early one waits"),
                v => panic!("{order:?}: fragment {i}: {v:?}"),
            }
        }
        let c = &workers[usize::from(landing)].counters;
        assert_eq!(
            c.drops[DropReason::FragmentOtherWorker as usize],
            early,
            "{order:?}"
        );
        assert_eq!(delivered_inner.len() as u64, 3 - early, "{order:?}");
        if early == 0 {
            let (src, dst, data) = reassemble(&delivered_inner);
            assert_eq!((src, dst), (A2, B1), "{order:?}");
            let u = UdpPacket::new_checked(&data[..]).unwrap();
            assert_eq!((u.src_port(), u.dst_port()), (41000, 5353));
        }
    }
}
