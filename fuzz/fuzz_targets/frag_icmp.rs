//! Fuzz target for the fragment and ICMP paths: the input drives a sequence of
//! well-formed-enough frames (so the fuzzer reaches past classify) through one
//! worker's pipeline over simulated time: fragments of UDP datagrams to a
//! ClusterIP, a NodePort and back from a backend, with ids, offsets, lengths,
//! MF/DF and TTL from the input (repeats, overlaps, out of order, oversize);
//! ICMP errors whose type, code, outer addresses and quoted header (addresses,
//! protocol, ports, truncation) come from the input; and raw bytes. Checks:
//! every frame ends in a verdict, the counters add up, the fragment arena never
//! holds more than its slots, and every frame the pipeline emits beyond its
//! input (released fragments, cut fragments, ICMP errors) is an IPv4 packet
//! with a correct header checksum that fits its slot.
//! `cargo fuzz run frag_icmp --sanitizer none` (fuzz/README.md).
#![no_main]

use dataplane::{process_batch, Frame, Verdict, WorkerState};
use libfuzzer_sys::fuzz_target;
use nodeplane_fuzz::snapshot;
use shared::Counters;

const A1: [u8; 4] = [198, 19, 1, 10];
const A2: [u8; 4] = [198, 19, 1, 11];
const B1: [u8; 4] = [198, 19, 3, 10];
const NODE: [u8; 4] = [198, 18, 0, 2];
const EXT: [u8; 4] = [198, 18, 200, 10];
const WEB: [u8; 4] = [198, 18, 96, 10];
const DNS: [u8; 4] = [198, 18, 96, 11];
const ROUTER: [u8; 4] = [198, 18, 0, 254];
const UPLINK: u32 = 2;
const A1_IF: u32 = 10;
const A2_IF: u32 = 11;

/// Reads input bytes; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::from(self.byte()) % from.len()]
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }
}

fn csum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Ethernet + an IPv4 header (checksum filled) + `payload`.
#[allow(clippy::too_many_arguments)]
fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, id: u16, frag: u16, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    let total = (20 + payload.len()) as u16;
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = ttl;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    v.extend_from_slice(&h);
    v.extend_from_slice(payload);
    v
}

/// One fragment of a UDP datagram; the first carries the UDP header.
fn fragment(inp: &mut Input<'_>) -> (Vec<u8>, u32) {
    let (src, dst, sport, dport, ifindex) = match inp.byte() % 4 {
        0 => (A2, DNS, 40000, 80, A2_IF),
        1 => (EXT, NODE, 40001, 30080, UPLINK),
        2 => (A1, A2, 8080, 40000, A1_IF),
        _ => (B1, A2, 8080, 40002, UPLINK),
    };
    let id = u16::from(inp.byte() % 8);
    let off8 = u16::from(inp.byte());
    let flags = inp.byte();
    let mf = if flags & 1 != 0 { 0x2000 } else { 0 };
    let df = if flags & 2 != 0 { 0x4000 } else { 0 };
    let ttl = flags >> 2;
    let len = usize::from(inp.byte()) * 8 % 1480;
    let mut payload = vec![0xa5u8; len];
    if off8 == 0 && len >= 8 {
        let claimed = inp.u16();
        payload[0..2].copy_from_slice(&u16::to_be_bytes(sport));
        payload[2..4].copy_from_slice(&u16::to_be_bytes(dport));
        payload[4..6].copy_from_slice(&claimed.to_be_bytes());
        payload[6..8].copy_from_slice(&[0, 0]);
    }
    (ipv4(src, dst, 17, id, df | mf | off8, ttl, &payload), ifindex)
}

/// An ICMP error about a (quoted) packet, all fields from the input.
fn icmp_error(inp: &mut Input<'_>) -> (Vec<u8>, u32) {
    let addrs = [A1, A2, B1, NODE, EXT, WEB, DNS, ROUTER];
    let t = inp.pick(&[3u8, 11, 12, 3, 0, 8, 5]);
    let code = inp.byte() % 16;
    let (osrc, ifindex) = inp.pick(&[(A1, A1_IF), (ROUTER, UPLINK), (B1, UPLINK), (EXT, UPLINK), (A2, A2_IF)]);
    let odst = inp.pick(&addrs);
    let qsrc = inp.pick(&addrs);
    let qdst = inp.pick(&addrs);
    let qproto = inp.pick(&[17u8, 6, 1, 47]);
    let ports = [53u16, 80, 8080, 30080, 40000, 40001, 61000, 61001, 65535];
    let qs = inp.pick(&ports);
    let qd = inp.pick(&ports);
    let mut quoted_l4 = [0u8; 20];
    if qproto == 1 {
        quoted_l4[0] = inp.pick(&[8u8, 0, 3, 11]);
        quoted_l4[4..6].copy_from_slice(&qs.to_be_bytes());
    } else {
        quoted_l4[0..2].copy_from_slice(&qs.to_be_bytes());
        quoted_l4[2..4].copy_from_slice(&qd.to_be_bytes());
    }
    let qfrag = if inp.byte() & 1 != 0 { 0x0010 } else { 0 };
    let quoted = ipv4(qsrc, qdst, qproto, inp.u16(), qfrag, 1, &quoted_l4);
    let keep = 20 + usize::from(inp.byte()) % 21;
    let mut icmp = vec![t, code, 0, 0, 0, 0, 0, 0];
    if t == 3 && code == 4 {
        icmp[6..8].copy_from_slice(&inp.u16().to_be_bytes());
    }
    icmp.extend_from_slice(&quoted[14..14 + keep]);
    let c = csum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    (ipv4(osrc, odst, 1, 0, 0, 64, &icmp), ifindex)
}

/// A frame the pipeline transmits: Ethernet, then an IPv4 header with a
/// correct checksum and a total length that matches the frame.
fn check_emitted(bytes: &[u8]) {
    assert!(bytes.len() >= 34, "an emitted frame holds Ethernet and IPv4");
    assert_eq!(&bytes[12..14], &[0x08, 0x00]);
    let ihl = usize::from(bytes[14] & 0x0f) * 4;
    assert!(ihl >= 20 && bytes.len() >= 14 + ihl);
    assert_eq!(csum(&bytes[14..14 + ihl]), 0, "emitted IPv4 header checksum");
    let total = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    assert_eq!(total, bytes.len() - 14, "IPv4 total length matches the frame");
}

fuzz_target!(|data: &[u8]| {
    let snap = snapshot();
    let mut state = WorkerState::new(1024);
    let slots = state.frags.free_slots();
    let mut counters = Counters::default();
    let mut inp = Input(data);
    let mut now = 1_000_000_000u64;
    while !inp.0.is_empty() {
        let n = 1 + usize::from(inp.byte() % 8);
        let mut bufs = Vec::with_capacity(n);
        let mut generated = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = inp.byte() % 5;
            let (bytes, ifindex) = match kind {
                0 | 1 => fragment(&mut inp),
                2 | 3 => icmp_error(&mut inp),
                _ => {
                    let len = usize::from(inp.byte());
                    let mut v = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
                    v.extend((0..len).map(|_| inp.byte()));
                    (v, inp.pick(&[UPLINK, A1_IF, A2_IF]))
                }
            };
            generated.push(kind < 4);
            let mut buf = vec![0u8; 2048];
            let len = bytes.len().min(2048 - 256);
            buf[256..256 + len].copy_from_slice(&bytes[..len]);
            bufs.push((buf, len, ifindex));
        }
        let mut frames: Vec<Frame<'_>> = bufs
            .iter_mut()
            .map(|(b, len, ifindex)| Frame::new(b, 256, *len, *ifindex))
            .collect();
        let sentinel = Verdict::Tx { ifindex: u32::MAX };
        let mut verdicts = vec![sentinel; frames.len()];
        process_batch(&mut frames, &mut verdicts, snap, &mut state, &mut counters, now);
        assert!(!verdicts.contains(&sentinel), "every frame gets a verdict");
        for ((f, v), generated) in frames.iter().zip(&verdicts).zip(&generated) {
            if let Verdict::Tx { .. } = v {
                assert!(f.offset() + f.len() <= 2048);
                if *generated {
                    check_emitted(f.data());
                }
            }
        }
        state.frags.drain_extra(|_, bytes| check_emitted(bytes));
        assert!(state.frags.free_slots() <= slots);
        // Time: milliseconds to several seconds (fragment timeouts, ICMP rate limits).
        let step = inp.byte();
        now += if step & 0x80 != 0 { u64::from(step & 0x7f) * 100_000_000 } else { u64::from(step) * 1_000_000 };
    }
    // Each frame has one fate: forwarded, handed off, passed, dropped, or held;
    // a held fragment's fate comes later: released, dropped (timeout, eviction,
    // another worker, refused) or still waiting in the arena.
    assert_eq!(
        counters.rx_packets,
        counters.forwarded
            + counters.handed_off
            + counters.passed
            + counters.total_drops()
            + counters.fragments_released
            + state.frags.slots_in_use() as u64
    );
});
