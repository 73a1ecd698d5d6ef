//! Properties of the pipeline over generated input: any bytes end in a verdict
//! without a panic and with consistent counters; valid frames mutated at random
//! do too; NAT then reverse NAT gives the client exactly the mirror of its tuple.

mod support;

use std::net::Ipv4Addr;

use dataplane::WorkerState;
use dataplane::{process_batch, Frame, Verdict};
use proptest::prelude::*;
use shared::snapshot::Snapshot;
use shared::{Counters, L4Proto};
use support::*;

const SENTINEL: Verdict = Verdict::Tx { ifindex: u32::MAX };

fn lab() -> Snapshot {
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
        vec![ep(A1, 5353, "node-a"), ep(B1, 5353, "node-b")],
    );
    let empty = svc("empty", "198.18.96.12", L4Proto::Tcp, 80, vec![]);
    snap(world(vec![web, dns, empty]), 1)
}

/// Runs a batch; checks every frame got a verdict and the counters add up.
/// Corrupted input keeps a corrupted checksum (a router does not repair L4
/// checksums), so checksums are verified only when `valid_input`.
fn run_batch(
    s: &Snapshot,
    flows: &mut WorkerState,
    inputs: &[(u32, Vec<u8>)],
    valid_input: bool,
) -> Vec<Verdict> {
    let mut bufs: Vec<Vec<u8>> = inputs
        .iter()
        .map(|(_, b)| {
            let mut v = vec![0u8; BUF];
            let n = b.len().min(BUF - HEADROOM);
            v[HEADROOM..HEADROOM + n].copy_from_slice(&b[..n]);
            v
        })
        .collect();
    let mut frames: Vec<Frame<'_>> = bufs
        .iter_mut()
        .zip(inputs)
        .map(|(buf, (ifx, b))| Frame::new(buf, HEADROOM, b.len(), *ifx))
        .collect();
    let mut verdicts = vec![SENTINEL; frames.len()];
    let mut c = Counters::default();
    process_batch(&mut frames, &mut verdicts, s, flows, &mut c, 5 * NS);
    assert!(
        !verdicts.contains(&SENTINEL),
        "every frame ends in a verdict"
    );
    assert_eq!(c.rx_packets, inputs.len() as u64);
    assert_eq!(
        c.rx_packets,
        c.forwarded + c.handed_off + c.total_drops() + c.passed + c.fragments_held,
        "{c:?}"
    );
    for (f, v) in frames.iter().zip(&verdicts) {
        if let Verdict::Tx { .. } = v {
            assert!(f.len() >= 14 + 20, "transmitted frames are whole");
            if valid_input {
                verify_checksums(f.data());
            }
        }
    }
    verdicts
}

fn valid_frame(kind: u8, a: u8, port: u16) -> (u32, Vec<u8>) {
    let remote = Ipv4Addr::new(198, 19, 3, a);
    match kind % 6 {
        0 => (
            A2_IF,
            frame(
                A2_MAC,
                A2_HOST_MAC,
                A2,
                ip("198.18.96.10"),
                syn(port, 80),
                64,
            ),
        ),
        1 => (
            A2_IF,
            frame(
                A2_MAC,
                A2_HOST_MAC,
                A2,
                ip("198.18.96.11"),
                udp(port, 53),
                64,
            ),
        ),
        2 => (
            UPLINK,
            vxlan(
                NODE_B,
                MAC_B,
                1,
                0x08,
                &frame(
                    VTEP_B,
                    VTEP_A,
                    remote,
                    ip("198.18.96.10"),
                    syn(port, 80),
                    64,
                ),
            ),
        ),
        3 => (
            UPLINK,
            frame(MAC_EXT, UPLINK_MAC, EXT, NODE_A, syn(port, 30080), 64),
        ),
        4 => (
            A1_IF,
            frame(
                A1_MAC,
                A1_HOST_MAC,
                A1,
                ip("198.18.96.12"),
                syn(port, 80),
                64,
            ),
        ),
        _ => (
            A1_IF,
            frame(A1_MAC, A1_HOST_MAC, A1, remote, udp(port, 9), 64),
        ),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(batch in proptest::collection::vec(
        (prop_oneof![Just(UPLINK), Just(A1_IF), Just(A2_IF), any::<u32>()],
         proptest::collection::vec(any::<u8>(), 0..300)), 1..80)) {
        let s = lab();
        let mut flows = WorkerState::new(1024);
        run_batch(&s, &mut flows, &batch, false);
    }

    #[test]
    fn mutated_valid_frames_never_panic(seeds in proptest::collection::vec(
        (any::<u8>(), 1u8..250, any::<u16>(), proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
         any::<prop::sample::Index>(), any::<bool>()), 1..64)) {
        let s = lab();
        let mut flows = WorkerState::new(1024);
        let batch: Vec<(u32, Vec<u8>)> = seeds.into_iter().map(|(kind, a, port, flips, cut, truncate)| {
            let (ifx, mut f) = valid_frame(kind, a, port);
            for (at, byte) in flips {
                let i = at.index(f.len());
                f[i] = byte;
            }
            if truncate {
                let n = cut.index(f.len());
                f.truncate(n);
            }
            (ifx, f)
        }).collect();
        run_batch(&s, &mut flows, &batch, false);
    }

    /// Unmodified valid frames of every kind, in one batch: checksums stay valid.
    #[test]
    fn valid_batches_keep_checksums_valid(seeds in proptest::collection::vec((any::<u8>(), 1u8..250, 1024u16..65535), 1..64)) {
        let s = lab();
        let mut flows = WorkerState::new(4096);
        let batch: Vec<(u32, Vec<u8>)> = seeds.into_iter().map(|(k, a, p)| valid_frame(k, a, p)).collect();
        let v = run_batch(&s, &mut flows, &batch, true);
        prop_assert!(v.iter().all(|v| matches!(v, Verdict::Tx { .. })), "{:?}", v);
    }

    /// NAT then reverse NAT restores the original tuple, whichever backend and
    /// wherever the client is (local pod or a remote pod through the overlay).
    #[test]
    fn nat_then_reverse_nat_restores_the_tuple(clients in proptest::collection::vec((any::<bool>(), 2u8..250, 1024u16..65535, any::<bool>()), 1..40)) {
        let s = lab();
        let mut w = Worker::default();
        for (local, host, cport, is_udp) in clients {
            let (cip, ingress, smac, dmac) = if local {
                (A2, A2_IF, A2_MAC, A2_HOST_MAC)
            } else {
                (Ipv4Addr::new(198, 19, 3, host), UPLINK, VTEP_B, VTEP_A)
            };
            let (vip, vport, l4) = if is_udp {
                (ip("198.18.96.11"), 53, udp(cport, 53))
            } else {
                (ip("198.18.96.10"), 80, syn(cport, 80))
            };
            let f = frame(smac, dmac, cip, vip, l4, 64);
            let f = if local { f } else { vxlan(NODE_B, MAC_B, 1, 0x08, &f) };
            let out = w.run(&s, ingress, &f);
            prop_assert!(matches!(out.verdict, Verdict::Tx { .. }), "forward verdict {:?}", out.verdict);
            let fwd = if out.verdict == tx(UPLINK) { seen(&unwrap_vxlan(&out.bytes).2) } else { seen(&out.bytes) };
            if fwd.dst == cip {
                prop_assert_eq!(fwd.src, OVERLAY_A, "hairpin is masqueraded");
            } else {
                prop_assert_eq!((fwd.src, fwd.sport), (cip, cport), "ClusterIP traffic keeps the client address");
            }
            // The backend replies to what it saw.
            let reply_l4 = if is_udp { udp(fwd.dport, fwd.sport) } else { tcp(fwd.dport, fwd.sport, SYN | ACK) };
            let (bif, bmac, bhost) = match fwd.dst {
                x if x == A1 => (A1_IF, A1_MAC, A1_HOST_MAC),
                x if x == A2 => (A2_IF, A2_MAC, A2_HOST_MAC),
                _ => (UPLINK, VTEP_B, VTEP_A),
            };
            let r = frame(bmac, bhost, fwd.dst, fwd.src, reply_l4, 64);
            let r = if bif == UPLINK {
                let (node, mac) = if fwd.dst == K1 { (NODE_K, MAC_K) } else { (NODE_B, MAC_B) };
                vxlan(node, mac, 1, 0x08, &r)
            } else { r };
            let back = w.run(&s, bif, &r);
            prop_assert!(matches!(back.verdict, Verdict::Tx { .. }), "reply verdict {:?}", back.verdict);
            let got = if back.verdict == tx(UPLINK) { seen(&unwrap_vxlan(&back.bytes).2) } else { seen(&back.bytes) };
            prop_assert_eq!((got.src, got.sport, got.dst, got.dport), (vip, vport, cip, cport));
        }
    }
}

/// Runs `inputs` through one `process_batch` call (or one call per frame with
/// `one_at_a_time`) on fresh tables: each frame's verdict and bytes, the
/// counters, and the number of flows left in the table.
fn forward_all(
    s: &Snapshot,
    inputs: &[(u32, Vec<u8>)],
    one_at_a_time: bool,
) -> (Vec<(Verdict, Vec<u8>)>, Counters, usize) {
    let mut flows = WorkerState::new(4096);
    let (out, c) = forward_on(s, &mut flows, inputs, one_at_a_time);
    (out, c, flows.flows.len())
}

/// `forward_all` on a given flow table.
fn forward_on(
    s: &Snapshot,
    flows: &mut WorkerState,
    inputs: &[(u32, Vec<u8>)],
    one_at_a_time: bool,
) -> (Vec<(Verdict, Vec<u8>)>, Counters) {
    let mut c = Counters::default();
    let mut bufs: Vec<Vec<u8>> = inputs
        .iter()
        .map(|(_, b)| {
            let mut v = vec![0u8; BUF];
            v[HEADROOM..HEADROOM + b.len()].copy_from_slice(b);
            v
        })
        .collect();
    let mut frames: Vec<Frame<'_>> = bufs
        .iter_mut()
        .zip(inputs)
        .map(|(buf, (ifx, b))| Frame::new(buf, HEADROOM, b.len(), *ifx))
        .collect();
    let mut verdicts = vec![SENTINEL; frames.len()];
    if one_at_a_time {
        for (f, v) in frames.chunks_mut(1).zip(verdicts.chunks_mut(1)) {
            process_batch(f, v, s, flows, &mut c, 5 * NS);
        }
    } else {
        process_batch(&mut frames, &mut verdicts, s, flows, &mut c, 5 * NS);
    }
    let out = frames
        .iter()
        .zip(verdicts)
        .map(|(f, v)| (v, f.data().to_vec()))
        .collect();
    (out, c)
}

/// Runs `opening` one frame at a time on two fresh tables, then the frames
/// `mixed` makes of the replies to it: as one batch on one table, one frame
/// at a time on the other. Same verdicts, bytes, counters and flows.
fn mixed_batch_forwards_like_one_at_a_time(
    s: &Snapshot,
    opening: &[(u32, Vec<u8>)],
    mixed: impl FnOnce(&[(u32, Vec<u8>)]) -> Vec<(u32, Vec<u8>)>,
) -> Result<(), TestCaseError> {
    let mut t_batch = WorkerState::new(4096);
    let mut t_single = WorkerState::new(4096);
    let (out, _) = forward_on(s, &mut t_batch, opening, true);
    forward_on(s, &mut t_single, opening, true);
    let replies: Vec<(u32, Vec<u8>)> = out.iter().filter_map(|(v, b)| reply_to(*v, b)).collect();
    let mixed = mixed(&replies);
    let (b, bc) = forward_on(s, &mut t_batch, &mixed, false);
    let (one, sc) = forward_on(s, &mut t_single, &mixed, true);
    for (i, (x, y)) in b.iter().zip(&one).enumerate() {
        prop_assert_eq!(x, y, "frame {}", i);
    }
    prop_assert_eq!(bc, sc);
    prop_assert_eq!(t_batch.flows.len(), t_single.flows.len());
    Ok(())
}

/// What the backend a forwarded frame reached sends back to what it saw: from
/// its pod interface, or from its node through the overlay.
fn reply_to(verdict: Verdict, out: &[u8]) -> Option<(u32, Vec<u8>)> {
    let fwd = if verdict == tx(UPLINK) {
        seen(&unwrap_vxlan(out).2)
    } else if let Verdict::Tx { .. } = verdict {
        seen(out)
    } else {
        return None;
    };
    let l4 = match fwd.proto {
        17 => udp(fwd.dport, fwd.sport),
        6 => tcp(fwd.dport, fwd.sport, SYN | ACK),
        _ => return None,
    };
    let r = |smac, dmac| frame(smac, dmac, fwd.dst, fwd.src, l4, 64);
    match fwd.dst {
        x if x == A1 => Some((A1_IF, r(A1_MAC, A1_HOST_MAC))),
        x if x == A2 => Some((A2_IF, r(A2_MAC, A2_HOST_MAC))),
        x if x == B1 => Some((UPLINK, vxlan(NODE_B, MAC_B, 1, 0x08, &r(VTEP_B, VTEP_A)))),
        x if x == K1 => Some((UPLINK, vxlan(NODE_K, MAC_K, 1, 0x08, &r(VTEP_K, VTEP_A)))),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The batch stages (new Service flows decided for the whole batch, then
    /// inserted; a frame of a flow decided earlier in the batch waiting for
    /// it) change nothing a packet sees: a batch drawn from a few flows, so
    /// that a flow's packets repeat within it, is forwarded exactly as its
    /// frames are one batch each — same verdicts, same bytes, same counters,
    /// same flows.
    #[test]
    fn a_batch_forwards_like_its_frames_one_at_a_time(
        pool in proptest::collection::vec((any::<u8>(), 1u8..250, 1024u16..65535), 1..6),
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 1..64),
    ) {
        let s = lab();
        let inputs: Vec<(u32, Vec<u8>)> = picks
            .iter()
            .map(|i| {
                let (k, a, p) = pool[i.index(pool.len())];
                valid_frame(k, a, p)
            })
            .collect();
        let (batch, bc, bflows) = forward_all(&s, &inputs, false);
        let (single, sc, sflows) = forward_all(&s, &inputs, true);
        for (i, (b, one)) in batch.iter().zip(&single).enumerate() {
            prop_assert_eq!(b, one, "frame {}", i);
        }
        prop_assert_eq!(bc, sc);
        prop_assert_eq!(bflows, sflows);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// Replies to existing flows (NATed both ways, some masqueraded) mixed with
    /// new flows and repeats in one batch: forwarded exactly as one frame at a
    /// time would be, from the same tables.
    #[test]
    fn replies_and_new_flows_in_one_batch_forward_like_one_at_a_time(
        pool in proptest::collection::vec((any::<u8>(), 1u8..250, 1024u16..65535), 1..6),
        first in proptest::collection::vec(any::<prop::sample::Index>(), 1..24),
        second in proptest::collection::vec((any::<bool>(), any::<prop::sample::Index>()), 1..64),
    ) {
        let s = lab();
        let frame_of = |i: &prop::sample::Index| {
            let (k, a, p) = pool[i.index(pool.len())];
            valid_frame(k, a, p)
        };
        let opening: Vec<(u32, Vec<u8>)> = first.iter().map(frame_of).collect();
        mixed_batch_forwards_like_one_at_a_time(&s, &opening, |replies| {
            second
                .iter()
                .map(|(reply, i)| match replies.get(i.index(replies.len().max(1))) {
                    Some(r) if *reply => r.clone(),
                    _ => frame_of(i),
                })
                .collect()
        })?;
    }
}

/// A local pod's frame from one of a few client ports, to a Service or straight
/// to one of its backends: flows whose reply tuples often clash, and FINs and
/// RSTs that close them.
fn clashing_frame(kind: u8, port: u16) -> (u32, Vec<u8>) {
    let (dst, l4) = match kind % 8 {
        0 => (ip("198.18.96.10"), syn(port, 80)),
        1 => (A1, syn(port, 8080)),
        2 => (B1, syn(port, 8080)),
        3 => (ip("198.18.96.11"), udp(port, 53)),
        4 => (A1, udp(port, 5353)),
        5 => (A1, tcp(port, 8080, RST)),
        6 => (ip("198.18.96.10"), tcp(port, 80, FIN | ACK)),
        _ => (ip("198.18.96.10"), tcp(port, 80, RST)),
    };
    (A2_IF, frame(A2_MAC, A2_HOST_MAC, A2, dst, l4, 64))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// Service flows and direct flows to the same backends from the same few
    /// client ports (their reply tuples clash; the later flow gets another
    /// source port, unless the earlier one is closed), with replies, FINs and
    /// RSTs, in one batch: forwarded exactly as one frame at a time would be.
    /// And every reply to the opening frames reaches its client with the
    /// source that client sent to.
    #[test]
    fn clashing_reply_tuples_in_a_batch_forward_like_one_at_a_time(
        first in proptest::collection::vec((any::<u8>(), 40000u16..40004), 1..16),
        second in proptest::collection::vec((any::<bool>(), any::<u8>(), 40000u16..40004, any::<prop::sample::Index>()), 1..64),
    ) {
        let s = lab();
        let opening: Vec<(u32, Vec<u8>)> = first.iter().map(|&(k, p)| clashing_frame(k, p)).collect();
        mixed_batch_forwards_like_one_at_a_time(&s, &opening, |replies| {
            second
                .iter()
                .map(|&(reply, k, p, i)| match replies.get(i.index(replies.len().max(1))) {
                    Some(r) if reply => r.clone(),
                    _ => clashing_frame(k, p),
                })
                .collect()
        })?;
        // The opening's connection requests (no FIN or RST, which may give a
        // tuple up), then a reply to each: it comes back to its client from
        // where the client sent it.
        let opens: Vec<(u32, Vec<u8>)> = first
            .iter()
            .filter(|&&(k, _)| k % 8 < 5)
            .map(|&(k, p)| clashing_frame(k, p))
            .collect();
        let mut t = WorkerState::new(4096);
        let (out, _) = forward_on(&s, &mut t, &opens, true);
        for ((_, sent), (v, fwd)) in opens.iter().zip(&out) {
            let Some(r) = reply_to(*v, fwd) else { continue };
            let asked = seen(sent);
            let (back, _) = forward_on(&s, &mut t, &[r], true);
            let (bv, bytes) = &back[0];
            prop_assert_eq!(*bv, tx(A2_IF));
            let got = seen(bytes);
            prop_assert_eq!((got.src, got.sport, got.dst, got.dport), (asked.dst, asked.dport, asked.src, asked.sport));
        }
    }
}
