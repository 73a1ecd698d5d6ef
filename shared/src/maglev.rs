//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of
//! prime size in which every backend owns about 1/N of the slots, and removing one
//! backend moves little more than that backend's own slots. Built by the control
//! thread; workers only call `lookup`.

/// A Maglev lookup table. Entries are indexes into the caller's backend list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Maglev {
    table: Box<[u16]>,
    backends: u16,
}

/// A 64-bit mixer (splitmix64 finaliser): stable across processes and versions.
#[inline]
pub const fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Maglev {
    /// Builds the table for backends identified by `keys` (stable identities such
    /// as `ip<<16|port`). `size` should be prime and well above `keys.len()`;
    /// it is raised to the next prime ≥ max(size, 2·len+1) otherwise.
    /// At most 65535 backends are used; the rest are ignored.
    pub fn build(keys: &[u64], size: u32) -> Maglev {
        let n = keys.len().min(usize::from(u16::MAX));
        if n == 0 {
            return Maglev {
                table: Box::new([]),
                backends: 0,
            };
        }
        let min = u64::try_from(n).unwrap_or(u64::MAX) * 2 + 1;
        let mut m = u64::from(size.max(3)).max(min);
        while !is_prime(m) {
            m += 1;
        }
        let m_usize = usize::try_from(m).unwrap_or(usize::MAX);
        let perms: Vec<(u64, u64)> = keys[..n]
            .iter()
            .map(|&k| {
                let offset = mix64(k ^ 0x6a09_e667_f3bc_c909) % m;
                let skip = mix64(k ^ 0xbb67_ae85_84ca_a73b) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; n];
        let mut table = vec![u16::MAX; m_usize];
        let mut filled = 0usize;
        'fill: loop {
            for i in 0..n {
                let (offset, skip) = perms[i];
                let mut c = (offset + next[i] * skip) % m;
                while table[c as usize] != u16::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                table[c as usize] = i as u16;
                next[i] += 1;
                filled += 1;
                if filled == m_usize {
                    break 'fill;
                }
            }
        }
        Maglev {
            table: table.into_boxed_slice(),
            backends: n as u16,
        }
    }

    /// Rewrites entries through `map` (entry i becomes `map[i]`): used to build a
    /// table over a subset whose entries index the full backend list.
    pub fn remap(mut self, map: &[u16]) -> Maglev {
        for e in self.table.iter_mut() {
            if let Some(v) = map.get(usize::from(*e)) {
                *e = *v;
            }
        }
        self
    }

    /// The backend index for a flow hash, or `None` if there are no backends.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<u16> {
        if self.table.is_empty() {
            return None;
        }
        let i = (hash % self.table.len() as u64) as usize;
        self.table.get(i).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Number of backends the table spreads over.
    pub fn backends(&self) -> usize {
        usize::from(self.backends)
    }

    /// Table size (a prime), 0 when empty.
    pub fn size(&self) -> usize {
        self.table.len()
    }

    /// Slots owned by each backend (for tests and status).
    pub fn slot_counts(&self, n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &e in self.table.iter() {
            if let Some(c) = counts.get_mut(usize::from(e)) {
                *c += 1;
            }
        }
        counts
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(n: u64) -> Vec<u64> {
        (0..n).map(|i| (0xc612_0000 + i) << 16 | 8080).collect()
    }

    #[test]
    fn empty_has_no_backend() {
        let m = Maglev::build(&[], 16381);
        assert!(m.lookup(42).is_none());
        assert!(m.is_empty());
    }

    #[test]
    fn size_is_prime_and_every_slot_filled() {
        let m = Maglev::build(&keys(7), 16381);
        assert_eq!(m.size(), 16381);
        assert!(m.slot_counts(7).iter().all(|&c| c > 0));
        assert_eq!(m.slot_counts(7).iter().sum::<usize>(), 16381);
        // Non-prime or too-small sizes are raised to a prime.
        assert_eq!(Maglev::build(&keys(3), 100).size(), 101);
        assert!(is_prime(Maglev::build(&keys(100), 10).size() as u64));
    }

    #[test]
    fn slots_within_ten_percent_of_even_over_100_backends() {
        let n = 100;
        let m = Maglev::build(&keys(n as u64), 16381);
        let even = 16381.0 / n as f64;
        for c in m.slot_counts(n) {
            let dev = (c as f64 - even).abs() / even;
            assert!(
                dev <= 0.10,
                "slot count {c} deviates {dev:.3} from {even:.1}"
            );
        }
    }

    #[test]
    fn flows_spread_within_ten_percent_over_100_backends() {
        let n = 100;
        let m = Maglev::build(&keys(n as u64), 16381);
        let mut hits = vec![0u32; n];
        let flows = 1_000_000u64;
        for f in 0..flows {
            hits[usize::from(m.lookup(mix64(f)).unwrap())] += 1;
        }
        let even = flows as f64 / n as f64;
        for h in hits {
            let dev = (f64::from(h) - even).abs() / even;
            assert!(dev <= 0.10, "backend got {h} flows, {dev:.3} off even");
        }
    }

    #[test]
    fn deterministic() {
        assert_eq!(
            Maglev::build(&keys(10), 16381),
            Maglev::build(&keys(10), 16381)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Removing one of N backends moves at most ~1/N of flows plus a few percent.
        #[test]
        fn removal_moves_about_one_nth(n in 2u64..120, victim_sel in 0u64..1000) {
            let all = keys(n);
            let victim = (victim_sel % n) as usize;
            let mut rest = all.clone();
            rest.remove(victim);
            let before = Maglev::build(&all, 16381);
            let after = Maglev::build(&rest, 16381);
            let flows = 20_000u64;
            let mut moved = 0u64;
            for f in 0..flows {
                let h = mix64(f.wrapping_mul(0x9e37_79b9));
                let b = all[usize::from(before.lookup(h).unwrap())];
                let a = rest[usize::from(after.lookup(h).unwrap())];
                if a != b { moved += 1; }
            }
            let frac = moved as f64 / flows as f64;
            let bound = 1.0 / n as f64 + 0.05;
            prop_assert!(frac <= bound, "moved {frac:.3} of flows with n={n}, bound {bound:.3}");
        }

        #[test]
        fn remap_points_into_map(n in 1u64..20) {
            let map: Vec<u16> = (0..n as u16).map(|i| i * 2 + 1).collect();
            let m = Maglev::build(&keys(n), 101).remap(&map);
            for h in 0..500u64 {
                let e = m.lookup(mix64(h)).unwrap();
                prop_assert!(e % 2 == 1 && e < 2 * n as u16);
            }
        }
    }
}
