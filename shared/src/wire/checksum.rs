//! Internet checksum helpers: the full one's-complement sum for headers the
//! dataplane writes from scratch, and RFC 1624 incremental updates
//! (HC' = ~(~HC + ~m + m')) for fields it rewrites in place. Pure arithmetic
//! over bytes it is given; no packet layout here.

/// One's-complement sum of `data` folded into 32 bits, big-endian 16-bit words;
/// an odd trailing byte is padded with zero.
pub fn sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
    }
    if let [b] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(*b) << 8);
    }
    acc
}

/// Folds a 32-bit sum to 16 bits (end-around carry). Two steps always suffice:
/// the first leaves at most 0x1fffe, the second at most 0xffff.
#[inline]
// Cannot truncate: the two folds leave at most 0xffff.
#[allow(clippy::cast_possible_truncation)]
pub fn fold(acc: u32) -> u16 {
    let a = (acc & 0xffff) + (acc >> 16);
    let a = (a & 0xffff) + (a >> 16);
    a as u16
}

/// A 32-bit field's two 16-bit words, high then low, as the checksum sums them.
#[inline]
// Truncation intended: `x as u16` keeps the low word; `x >> 16` fits in 16 bits.
#[allow(clippy::cast_possible_truncation)]
fn words(x: u32) -> (u16, u16) {
    ((x >> 16) as u16, x as u16)
}

/// The checksum field value for `data` (complement of the folded sum).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

/// RFC 1624 eqn. 3: a checksum after one 16-bit word changed from `old` to `new`.
#[inline]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    let acc = u32::from(!csum) + u32::from(!old) + u32::from(new);
    !fold(acc)
}

/// A checksum after a 32-bit field (an IPv4 address) changed.
#[inline]
pub fn update32(csum: u16, old: u32, new: u32) -> u16 {
    let (old_hi, old_lo) = words(old);
    let (new_hi, new_lo) = words(new);
    let acc = u32::from(!csum)
        + u32::from(!old_hi)
        + u32::from(!old_lo)
        + u32::from(new_hi)
        + u32::from(new_lo);
    !fold(acc)
}

/// RFC 1624 eqn. 3 over several changed fields at once: start from the old
/// checksum, add each change, fold once at the end. Holds up to 30,000 terms.
#[derive(Clone, Copy, Debug)]
pub struct Incremental(u32);

impl Incremental {
    #[inline]
    pub fn new(csum: u16) -> Self {
        Incremental(u32::from(!csum))
    }

    /// A 16-bit word changed from `old` to `new`.
    #[inline]
    pub fn word(self, old: u16, new: u16) -> Self {
        Incremental(self.0 + u32::from(!old) + u32::from(new))
    }

    /// A 32-bit field (an IPv4 address) changed.
    #[inline]
    pub fn dword(self, old: u32, new: u32) -> Self {
        let (old_hi, old_lo) = words(old);
        let (new_hi, new_lo) = words(new);
        self.word(old_hi, new_hi).word(old_lo, new_lo)
    }

    /// The IPv4 TTL, high byte of the (TTL, protocol) word, went down by one:
    /// `!m + (m - 0x100)` is 0xfeff whatever the word was.
    #[inline]
    pub fn ttl_decrement(self) -> Self {
        Incremental(self.0 + 0xfeff)
    }

    /// The new checksum field value.
    #[inline]
    pub fn finish(self) -> u16 {
        !fold(self.0)
    }

    /// A sum of changes alone, with no checksum yet: computed once (say when
    /// a flow is created), stored with `folded`, applied to each packet with `apply`.
    #[inline]
    pub fn changes() -> Self {
        Incremental(0)
    }

    /// The changes folded to 16 bits (0 when there were none).
    #[inline]
    pub fn folded(self) -> u16 {
        fold(self.0)
    }

    /// Adds changes folded earlier by `folded`.
    #[inline]
    pub fn apply(self, folded: u16) -> Self {
        Incremental(self.0 + u32::from(folded))
    }
}

/// UDP's special case: a computed 0 is sent as 0xffff (0 means "no checksum").
#[inline]
pub fn udp_nonzero(c: u16) -> u16 {
    if c == 0 {
        0xffff
    } else {
        c
    }
}

/// The IPv4 pseudo-header sum for an L4 checksum.
pub fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: u16) -> u32 {
    let mut acc = sum(0, &src);
    acc = sum(acc, &dst);
    acc.wrapping_add(u32::from(proto))
        .wrapping_add(u32::from(l4_len))
}

/// Full L4 checksum over pseudo-header + segment (checksum field must be zero).
pub fn l4_checksum(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let len = u16::try_from(segment.len()).unwrap_or(u16::MAX);
    !fold(sum(pseudo_header_sum(src, dst, proto, len), segment))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // RFC 1071 example words.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn ipv4_header_fixture() {
        // 45 00 00 73 00 00 40 00 40 11 [b8 61] c0 a8 00 01 c0 a8 00 c7
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(checksum(&h), 0);
    }

    proptest! {
        /// Incremental update equals recomputation, for 16- and 32-bit fields.
        #[test]
        fn incremental_matches_full(mut words in proptest::collection::vec(any::<u16>(), 4..40),
                                    idx in any::<prop::sample::Index>(), new16 in any::<u16>(), new32 in any::<u32>()) {
            let bytes = |w: &Vec<u16>| w.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
            let c0 = checksum(&bytes(&words));
            let i = idx.index(words.len() - 1);
            let old = words[i];
            words[i] = new16;
            let c1 = checksum(&bytes(&words));
            let inc = update16(c0, old, new16);
            // 0x0000 and 0xffff are the same value in one's complement.
            prop_assert!(inc == c1 || (inc == 0xffff && c1 == 0) || (inc == 0 && c1 == 0xffff));
            let old32 = u32::from(words[i]) << 16 | u32::from(words[i + 1]);
            (words[i], words[i + 1]) = super::words(new32);
            let c2 = checksum(&bytes(&words));
            let inc2 = update32(c1, old32, new32);
            prop_assert!(inc2 == c2 || (inc2 == 0xffff && c2 == 0) || (inc2 == 0 && c2 == 0xffff));
        }

        /// Several fields changed at once, the way the pipeline rewrites a packet
        /// (a TTL decrement, two addresses, two ports), in one `Incremental`,
        /// equal recomputation.
        #[test]
        fn incremental_over_several_fields_matches_full(mut words in proptest::collection::vec(any::<u16>(), 10..40),
                                                        ttl in 1u8.., a in any::<u32>(), b in any::<u32>(),
                                                        p in any::<u16>(), q in any::<u16>()) {
            let bytes = |w: &Vec<u16>| w.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
            words[0] = u16::from(ttl) << 8 | (words[0] & 0xff);
            let c0 = checksum(&bytes(&words));
            let mut inc = Incremental::new(c0).ttl_decrement();
            words[0] -= 0x100;
            let old_a = u32::from(words[2]) << 16 | u32::from(words[3]);
            let old_b = u32::from(words[4]) << 16 | u32::from(words[5]);
            inc = inc.dword(old_a, a).dword(old_b, b).word(words[6], p).word(words[7], q);
            (words[2], words[3]) = super::words(a);
            (words[4], words[5]) = super::words(b);
            words[6] = p;
            words[7] = q;
            let want = checksum(&bytes(&words));
            let got = inc.finish();
            prop_assert!(got == want || (got == 0xffff && want == 0) || (got == 0 && want == 0xffff));
        }

        /// Changes summed and folded once, then added to a packet's checksum,
        /// give what adding them one by one gives.
        #[test]
        fn stored_changes_apply_like_direct_ones(c in any::<u16>(), a in any::<u32>(), b in any::<u32>(),
                                                 p in any::<u16>(), q in any::<u16>()) {
            let delta = Incremental::changes().dword(a, b).word(p, q).folded();
            let direct = Incremental::new(c).dword(a, b).word(p, q).finish();
            let stored = Incremental::new(c).apply(delta).finish();
            prop_assert!(stored == direct || (stored == 0xffff && direct == 0) || (stored == 0 && direct == 0xffff));
            prop_assert_eq!(Incremental::changes().folded(), 0);
            prop_assert_eq!(Incremental::new(c).apply(0).finish(), c);
        }

        #[test]
        fn fold_matches_the_loop(x in any::<u32>()) {
            let mut acc = x;
            while acc > 0xffff {
                acc = (acc & 0xffff) + (acc >> 16);
            }
            prop_assert_eq!(fold(x), u16::try_from(acc).unwrap());
        }
    }
}
