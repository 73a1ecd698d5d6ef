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

/// `x mod m` as an index (`m` non-zero).
#[inline]
// Cannot truncate: the remainder is below `m`, itself a `usize`.
#[allow(clippy::cast_possible_truncation)]
fn index_mod(x: u64, m: usize) -> usize {
    (x % m as u64) as usize
}

impl Maglev {
    /// Builds the table for backends identified by `keys` (stable identities such
    /// as `ip<<16|port`). `size` should be prime and well above `keys.len()`;
    /// it is raised to the next prime ≥ max(size, 2·len+1) otherwise.
    /// At most 65535 backends are used; the rest are ignored.
    pub fn build(keys: &[u64], size: u32) -> Maglev {
        // At most u16::MAX backends: the rest are ignored.
        let backends = u16::try_from(keys.len()).unwrap_or(u16::MAX);
        let n = usize::from(backends);
        if n == 0 {
            return Maglev {
                table: Box::new([]),
                backends: 0,
            };
        }
        let m_usize = Self::size_for(n, size);
        let m = m_usize as u64;
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
            for b in 0..backends {
                let i = usize::from(b);
                let (offset, skip) = perms[i];
                let mut c = index_mod(offset + next[i] * skip, m_usize);
                while table[c] != u16::MAX {
                    next[i] += 1;
                    c = index_mod(offset + next[i] * skip, m_usize);
                }
                table[c] = b;
                next[i] += 1;
                filled += 1;
                if filled == m_usize {
                    break 'fill;
                }
            }
        }
        Maglev {
            table: table.into_boxed_slice(),
            backends,
        }
    }

    /// The size `build` gives a table of `backends` backends asked to be
    /// `size`: the next prime ≥ max(size, 2·backends+1), 0 with no backends.
    pub fn size_for(backends: usize, size: u32) -> usize {
        let n = backends.min(usize::from(u16::MAX));
        if n == 0 {
            return 0;
        }
        let min = u64::try_from(n).unwrap_or(u64::MAX) * 2 + 1;
        let mut m = u64::from(size.max(3)).max(min);
        while !is_prime(m) {
            m += 1;
        }
        usize::try_from(m).unwrap_or(usize::MAX)
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
        let i = index_mod(hash, self.table.len());
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

/// Where one table sits in a `MaglevTables`: a slice of `size` entries (a
/// prime, 0 for a table with no backends) from `start`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MaglevRef {
    start: usize,
    size: usize,
    backends: u16,
}

impl MaglevRef {
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Number of backends the table spreads over.
    pub fn backends(&self) -> usize {
        usize::from(self.backends)
    }

    /// Table size (a prime), 0 when empty.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// Every Maglev table of one snapshot in one array, each a slice of it: with
/// 10,000 Services (32 KiB each at the default size) the tables take 320 MiB,
/// and one huge-page-backed array lets a worker reach any of them with a cache
/// miss but no TLB miss. Built once per snapshot; read-only afterwards.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct MaglevTables {
    entries: Box<[u16]>,
}

impl std::fmt::Debug for MaglevTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MaglevTables({} entries)", self.entries.len())
    }
}

impl MaglevTables {
    /// The backend index for a flow hash in table `r`, or `None` if it has no
    /// backends.
    #[inline]
    pub fn lookup(&self, r: &MaglevRef, hash: u64) -> Option<u16> {
        if r.size == 0 {
            return None;
        }
        let i = r.start + index_mod(hash, r.size);
        self.entries.get(i).copied()
    }

    /// Hints the CPU to load the entry `lookup(r, hash)` will read.
    #[inline]
    pub fn prefetch(&self, r: &MaglevRef, hash: u64) {
        if r.size == 0 {
            return;
        }
        let i = r.start + index_mod(hash, r.size);
        #[cfg(target_arch = "x86_64")]
        if let Some(e) = self.entries.get(i) {
            // SAFETY: prefetch is only a hint; the pointer is inside `entries`.
            unsafe {
                core::arch::x86_64::_mm_prefetch(
                    std::ptr::from_ref(e).cast::<i8>(),
                    core::arch::x86_64::_MM_HINT_T0,
                );
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }

    /// The entries of table `r`.
    pub fn table(&self, r: &MaglevRef) -> &[u16] {
        self.entries
            .get(r.start..r.start + r.size)
            .unwrap_or_default()
    }

    /// Slots owned by each of `n` backends in table `r` (for tests and status).
    pub fn slot_counts(&self, r: &MaglevRef, n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &e in self.table(r) {
            if let Some(c) = counts.get_mut(usize::from(e)) {
                *c += 1;
            }
        }
        counts
    }

    /// Total entries over all tables.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Collects tables into a `MaglevTables`; `with_capacity` should be the sum
/// of `Maglev::size_for` over the tables to come, so the array is allocated
/// once, on huge pages.
pub struct MaglevTablesBuilder {
    entries: Vec<u16>,
}

impl MaglevTablesBuilder {
    pub fn with_capacity(entries: usize) -> Self {
        MaglevTablesBuilder {
            entries: crate::mem::huge_vec(entries),
        }
    }

    /// Appends a table built with `Maglev::build`.
    pub fn push(&mut self, m: &Maglev) -> MaglevRef {
        self.push_entries(&m.table, m.backends)
    }

    /// Appends a copy of table `r` of `from` (a table kept from the previous
    /// snapshot: same backends, same size).
    pub fn push_copy(&mut self, from: &MaglevTables, r: &MaglevRef) -> MaglevRef {
        self.push_entries(from.table(r), r.backends)
    }

    fn push_entries(&mut self, table: &[u16], backends: u16) -> MaglevRef {
        let r = MaglevRef {
            start: self.entries.len(),
            size: table.len(),
            backends,
        };
        self.entries.extend_from_slice(table);
        r
    }

    pub fn finish(self) -> MaglevTables {
        MaglevTables {
            entries: self.entries.into_boxed_slice(),
        }
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

    #[test]
    fn tables_in_one_array_answer_as_built_and_copies_as_the_original() {
        let a = Maglev::build(&keys(3), 101);
        let b = Maglev::build(&keys(40), 16381);
        let none = Maglev::build(&[], 16381);
        let total: usize = [3, 40, 0]
            .iter()
            .zip([101, 16381, 16381])
            .map(|(&n, s)| Maglev::size_for(n, s))
            .sum();
        assert_eq!(total, a.size() + b.size() + none.size());
        let mut build = MaglevTablesBuilder::with_capacity(total);
        let (ra, rb, rn) = (build.push(&a), build.push(&b), build.push(&none));
        let tables = build.finish();
        assert_eq!(tables.len(), total);
        let mut again = MaglevTablesBuilder::with_capacity(b.size());
        let rb2 = again.push_copy(&tables, &rb);
        let copy = again.finish();
        for h in (0..5000u64).map(mix64) {
            assert_eq!(tables.lookup(&ra, h), a.lookup(h));
            assert_eq!(tables.lookup(&rb, h), b.lookup(h));
            assert_eq!(copy.lookup(&rb2, h), b.lookup(h));
            tables.prefetch(&rb, h);
        }
        assert_eq!(tables.lookup(&rn, 7), None);
        assert!(rn.is_empty() && rb.backends() == 40 && rb.size() == 16381);
        assert_eq!(tables.slot_counts(&rb, 40), b.slot_counts(40));
    }

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
            let victim = usize::try_from(victim_sel % n).unwrap();
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
            let n = u16::try_from(n).unwrap();
            let map: Vec<u16> = (0..n).map(|i| i * 2 + 1).collect();
            let m = Maglev::build(&keys(u64::from(n)), 101).remap(&map);
            for h in 0..500u64 {
                let e = m.lookup(mix64(h)).unwrap();
                prop_assert!(e % 2 == 1 && e < 2 * n);
            }
        }
    }
}
