//! Frames handed from one worker to the worker that owns their flow (see
//! `FlowTable::set_ownership`): one single-producer single-consumer byte ring
//! (rtrb: wait-free, plain loads and stores, no read-modify-write) per ordered
//! pair of workers. A record is an 8-byte header (length, ingress ifindex) and
//! the frame's bytes; the owner copies them into a chunk of its own UMEM. Each
//! worker has its own UMEM, so crossing workers costs this one copy. The rings
//! never look inside a frame.

/// Header: frame length (u16), reserved (u16), ingress ifindex (u32).
const HDR: usize = 8;

/// Ring capacity in bytes between one pair of workers (~256 full-size frames).
pub const RING_BYTES: usize = 512 * 1024;

/// The sending end.
pub struct HandoffTx(rtrb::Producer<u8>);

/// The receiving end.
pub struct HandoffRx(rtrb::Consumer<u8>);

/// A ring of `bytes` bytes.
pub fn channel(bytes: usize) -> (HandoffTx, HandoffRx) {
    let (p, c) = rtrb::RingBuffer::new(bytes.max(HDR + 2048));
    (HandoffTx(p), HandoffRx(c))
}

/// Copies `src` to logical position `at` of a chunk split in two halves.
fn scatter(a: &mut [u8], b: &mut [u8], at: usize, src: &[u8]) {
    let in_a = a.len().saturating_sub(at).min(src.len());
    if in_a > 0 {
        a[at..at + in_a].copy_from_slice(&src[..in_a]);
    }
    let rest = src.len() - in_a;
    if rest > 0 {
        let bstart = at + in_a - a.len();
        b[bstart..bstart + rest].copy_from_slice(&src[in_a..]);
    }
}

/// Copies logical positions `at..at + out.len()` of a split chunk into `out`.
fn gather(a: &[u8], b: &[u8], at: usize, out: &mut [u8]) {
    let in_a = a.len().saturating_sub(at).min(out.len());
    if in_a > 0 {
        out[..in_a].copy_from_slice(&a[at..at + in_a]);
    }
    let rest = out.len() - in_a;
    if rest > 0 {
        let bstart = at + in_a - a.len();
        out[in_a..].copy_from_slice(&b[bstart..bstart + rest]);
    }
}

impl HandoffTx {
    /// Queues a frame; false (nothing queued) when the ring is full or the
    /// frame is longer than a record can say.
    pub fn send(&mut self, ifindex: u32, data: &[u8]) -> bool {
        let Ok(len) = u16::try_from(data.len()) else {
            return false;
        };
        let Ok(mut chunk) = self.0.write_chunk(HDR + data.len()) else {
            return false;
        };
        let mut hdr = [0u8; HDR];
        hdr[0..2].copy_from_slice(&len.to_ne_bytes());
        hdr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        let (a, b) = chunk.as_mut_slices();
        scatter(a, b, 0, &hdr);
        scatter(a, b, HDR, data);
        chunk.commit_all();
        true
    }
}

impl HandoffRx {
    /// Takes the next frame into `out`: returns (ingress ifindex, length), or
    /// `None` when the ring is empty. A frame longer than `out` is consumed and
    /// reported with length 0 (the caller counts it as dropped).
    pub fn recv(&mut self, out: &mut [u8]) -> Option<(u32, usize)> {
        let mut hdr = [0u8; HDR];
        {
            let chunk = self.0.read_chunk(HDR).ok()?;
            let (a, b) = chunk.as_slices();
            gather(a, b, 0, &mut hdr);
            // Not committed: the header is read again with the frame below.
        }
        let len = usize::from(u16::from_ne_bytes([hdr[0], hdr[1]]));
        let ifindex = u32::from_ne_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
        // The producer commits header and frame together, so both are there.
        let chunk = self.0.read_chunk(HDR + len).ok()?;
        let fits = len <= out.len();
        if fits {
            let (a, b) = chunk.as_slices();
            gather(a, b, HDR, &mut out[..len]);
        }
        chunk.commit_all();
        Some((ifindex, if fits { len } else { 0 }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // Fixture bytes: the low byte of a counter, on purpose.
    #[allow(clippy::cast_possible_truncation)]
    fn frames_cross_in_order_including_across_the_wrap() {
        let (mut tx, mut rx) = channel(HDR + 2048 + 100);
        let mut out = [0u8; 2048];
        for round in 0..50u32 {
            let len = 1 + (round as usize * 97) % 1500;
            let data: Vec<u8> = (0..len).map(|i| (i as u32 ^ round) as u8).collect();
            assert!(tx.send(round + 7, &data));
            let (ifx, n) = rx.recv(&mut out).unwrap();
            assert_eq!((ifx, n), (round + 7, len));
            assert_eq!(&out[..n], &data[..]);
        }
        assert!(rx.recv(&mut out).is_none());
    }

    #[test]
    fn a_full_ring_refuses_and_loses_nothing_already_queued() {
        let (mut tx, mut rx) = channel(HDR + 2048);
        let big = [0xabu8; 1500];
        assert!(tx.send(1, &big));
        assert!(!tx.send(2, &big), "no room for a second frame");
        let mut out = [0u8; 2048];
        assert_eq!(rx.recv(&mut out), Some((1, 1500)));
        assert!(out[..1500].iter().all(|&b| b == 0xab));
        assert!(rx.recv(&mut out).is_none());
        let mut small = [0u8; 10];
        assert!(tx.send(3, &big));
        assert_eq!(
            rx.recv(&mut small),
            Some((3, 0)),
            "too long for out: consumed, length 0"
        );
        assert!(rx.recv(&mut out).is_none());
    }
}
