//! The per-worker flow table: both directions of every flow a worker tracks,
//! their NAT rewrite, state and expiry. Owned by one worker, never shared: no
//! locks, no atomics. It may not read packets or the snapshot.
//!
//! Layout: a set-associative table (`WAYS` slots per set, like a CPU cache) of
//! fixed size, allocated once. Each flow has two entries, the original direction
//! and the reply direction, linked by slot index; the original-direction entry
//! (the "master") carries the state and the expiry. A 16-bit tag array is scanned
//! before any key is compared, so a lookup touches one tag line and one entry.
//! Keys are hashed with a per-table random seed (attackers choose 5-tuples).
//!
//! Eviction policy (documented, counted): a new flow needs a free way in the set
//! of each of its two keys. Expired entries are free. Otherwise the entry with the
//! earliest expiry that is *not assured* (a TCP flow not yet established or a UDP
//! flow that never saw a reply) is evicted, as Linux conntrack's early_drop does;
//! `Counters::flow_evictions` counts it. If every candidate is assured and live,
//! the new flow is refused (`DropReason::FlowTableFull`): established connections
//! are never sacrificed to a flood of new ones. Memory is fixed: the table is
//! sized for `capacity` flows at ≤ 50% load of its slots, and the per-set rule
//! above is what bounds it.

use shared::mem::prefaulted;

use super::affinity::AffinityTable;
use super::key::{ChecksumDeltas, FlowKey, Rewrite};
use super::tcp::{next_tcp_state, FlowState, Timeouts};

/// Ways per set. With 16, a set overflows (and a new flow must evict or be
/// refused) with a probability near 1e-6 at half the table's capacity, where
/// 8 ways gave 2e-4 (Poisson, 4 and 2 entries per set on average).
pub const WAYS: usize = 16;
const NONE: u32 = u32::MAX;
/// `FlowTable::probe` found no way whose tag matches.
pub const NO_SLOT: u32 = u32::MAX;
/// A slot's tag: a few hash bits compared before any key (0 = empty slot).
type Tag = u16;
/// Most flows a table is sized for (larger capacities are lowered to it): the
/// table then has at most 2^31 slots (4 per flow, rounded up to a power of
/// two), so every slot index fits the `u32` that entries (`peer`) and hits store.
pub const MAX_CAPACITY: usize = 1 << 29;

/// A slot index as entries and hits store it.
#[inline(always)]
// Cannot truncate: slot indexes are below the table's at most 2^31 slots
// (`MAX_CAPACITY`).
#[allow(clippy::cast_possible_truncation)]
fn slot_u32(slot: usize) -> u32 {
    debug_assert!(slot < 1 << 31);
    slot as u32
}

/// The low 32 bits of a snapshot generation, as a flow records the generation
/// its backend was last checked against (`Hit::checked_gen`).
#[inline(always)]
// Truncation intended: a flow keeps the generation's low 32 bits.
#[allow(clippy::cast_possible_truncation)]
pub fn generation_low(generation: u64) -> u32 {
    generation as u32
}

/// One set's tags: 32 bytes, aligned so that a set never straddles two
/// cache lines (two sets share one).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(32))]
struct TagSet([Tag; WAYS]);

const _: () = assert!(std::mem::size_of::<TagSet>() == 32);

/// What the service stage decided for a flow, kept for later packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowMeta {
    /// The backend a Service flow was sent to (ip, port); `None` for plain routing.
    /// It is the destination of the flow's rewrite (DNAT), so only whether
    /// there is one is stored.
    pub backend: Option<(u32, u16)>,
    /// Source NAT was applied (masquerade).
    pub snat: bool,
    /// The L2 source of the flow's first packet when it came in on the uplink
    /// from an on-link client: replies go back to it even before the kernel has
    /// resolved the client as a neighbour.
    pub client_mac: Option<[u8; 6]>,
}

/// One direction of a flow: one cache line.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Entry {
    key: FlowKey,
    rewrite: Rewrite,
    /// Slot of the other direction.
    peer: u32,
    expires_ns: u64,
    /// Snapshot generation (low 32 bits) the backend was last checked against.
    checked_gen: u32,
    /// This direction's checksum changes (`ChecksumDeltas`).
    ip_delta: u16,
    l4_delta: u16,
    /// The flow is DNATed to a Service backend: the master's rewrite destination.
    dnat: bool,
    snat: bool,
    /// True for the original direction (holds state/expiry).
    master: bool,
    state: FlowState,
    /// Bit 0: FIN seen from the original side; bit 1: from the reply side.
    fins: u8,
    /// `FlowMeta::client_mac`; all zero for none.
    client_mac: [u8; 6],
}

const _: () = assert!(
    std::mem::size_of::<Entry>() == 64,
    "an entry is one cache line"
);

impl Entry {
    fn meta(&self) -> FlowMeta {
        FlowMeta {
            backend: self.dnat.then_some((self.rewrite.dst, self.rewrite.dport)),
            snat: self.snat,
            client_mac: (self.client_mac != [0; 6]).then_some(self.client_mac),
        }
    }
}

/// A lookup result: the slot hit and what to do with the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub slot: u32,
    pub master: u32,
    pub rewrite: Rewrite,
    /// The packet travels in the reply direction.
    pub is_reply: bool,
    pub meta: FlowMeta,
    /// The checksum changes of `rewrite`.
    pub deltas: ChecksumDeltas,
    /// Low 32 bits of the generation the flow's backend was last checked against.
    pub checked_gen: u32,
    pub state: FlowState,
}

/// Why a flow could not be inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertError {
    /// Every candidate way is assured and live.
    Full,
    /// The flow's reply tuple belongs to another live flow (a client port
    /// used towards two destinations that translate to the same backend):
    /// the caller gives this flow another source port, as Linux does.
    ReplyTaken,
}

/// The per-worker flow table.
pub struct FlowTable {
    /// Per set, per way: 0 = empty, else the top 16 bits of the hash with the
    /// low bit set.
    tags: Box<[TagSet]>,
    entries: Box<[Entry]>,
    set_mask: usize,
    /// Per-table random seed: attackers choose 5-tuples.
    seed: (u64, u64),
    flows: usize,
    capacity: usize,
    timeouts: Timeouts,
    /// `timeouts` per state in nanoseconds (read on every packet).
    timeout_ns: [u64; FlowState::COUNT],
    evictions: u64,
    tuple_reuses: u64,
    /// ClientIP session affinity, owned by the same worker.
    pub affinity: AffinityTable,
    /// (this worker, number of workers): which flows this table may hold.
    ownership: (u16, u16),
}

/// Stats a worker reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub flows: usize,
    pub capacity: usize,
    pub evictions: u64,
}

impl FlowTable {
    /// A table for up to `capacity_flows` flows (at most `MAX_CAPACITY`) with
    /// default timeouts.
    pub fn new(capacity_flows: usize) -> Self {
        Self::with_timeouts(capacity_flows, Timeouts::default())
    }

    pub fn with_timeouts(capacity_flows: usize, timeouts: Timeouts) -> Self {
        let capacity = capacity_flows.clamp(1, MAX_CAPACITY);
        // Two entries per flow; size the table at ≤ 50% load when full.
        let slots = (capacity * 4).next_power_of_two().max(WAYS * 2);
        let sets = slots / WAYS;
        let tags = prefaulted(sets, TagSet::default());
        let entries = prefaulted(slots, Entry::default());
        FlowTable {
            tags: tags.into_boxed_slice(),
            entries: entries.into_boxed_slice(),
            set_mask: sets - 1,
            seed: (rand::random(), rand::random()),
            flows: 0,
            capacity,
            timeouts,
            timeout_ns: timeouts.by_state_ns(),
            evictions: 0,
            tuple_reuses: 0,
            affinity: AffinityTable::new((capacity / 4).max(1024)),
            ownership: (0, 1),
        }
    }

    /// The same table with hash seed `seed` instead of its random one, for
    /// benchmarks whose set layout must repeat from run to run (callgrind
    /// counts). The agent keeps the random seed: attackers choose 5-tuples. A
    /// table that already holds flows is returned unchanged (their slots
    /// follow the old seed).
    #[must_use]
    pub fn with_seed(mut self, seed: (u64, u64)) -> Self {
        if self.flows == 0 {
            self.seed = seed;
        }
        self
    }

    /// With several workers, each flow has one owner: the worker of its client
    /// IP (`client_owner`), or for a masqueraded flow the worker its translated
    /// port names (`port_owner`; masquerade ports are chosen so the two agree).
    /// The pipeline hands a frame whose flow another worker owns to that worker
    /// (`Verdict::Handoff`) instead of creating state here. Default: (0, 1).
    pub fn set_ownership(&mut self, me: u16, workers: u16) {
        let workers = workers.max(1);
        self.ownership = (me.min(workers - 1), workers);
    }

    /// (this worker, number of workers).
    #[inline]
    pub fn ownership(&self) -> (u16, u16) {
        self.ownership
    }

    pub fn len(&self) -> usize {
        self.flows
    }

    pub fn is_empty(&self) -> bool {
        self.flows == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The hard bound: every flow takes two of the fixed slots.
    pub fn max_flows(&self) -> usize {
        self.slots() / 2
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    pub fn stats(&self) -> FlowStats {
        FlowStats {
            flows: self.flows,
            capacity: self.capacity,
            evictions: self.evictions,
        }
    }

    /// The seeded hash of a key (compute once per packet, pass to `lookup_hashed`).
    #[inline]
    // Truncation intended: `m as u64` is the product's low half.
    #[allow(clippy::cast_possible_truncation)]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        let a = (u64::from(key.src) << 32) | u64::from(key.dst);
        let b = (u64::from(key.sport) << 32) | (u64::from(key.dport) << 16) | u64::from(key.proto);
        // One folded multiply of the seeded halves (as foldhash does): the
        // high half of the product depends on every input bit.
        let m = u128::from(a ^ self.seed.0) * u128::from(b ^ self.seed.1);
        (m as u64) ^ ((m >> 64) as u64)
    }

    #[inline]
    fn tag_of(h: u64) -> Tag {
        ((h >> 48) as Tag) | 1
    }

    #[inline]
    // Truncation intended: only the hash's low bits, under `set_mask`, are kept.
    #[allow(clippy::cast_possible_truncation)]
    fn set_base(&self, h: u64) -> usize {
        ((h as usize) & self.set_mask) * WAYS
    }

    /// Slots in the table (sets × ways).
    #[inline]
    fn slots(&self) -> usize {
        self.tags.len() * WAYS
    }

    /// The tag of `slot` (0: empty, or out of range).
    #[inline]
    fn tag(&self, slot: usize) -> Tag {
        self.tags
            .get(slot / WAYS)
            .map_or(0, |set| set.0[slot % WAYS])
    }

    #[inline]
    fn set_tag(&mut self, slot: usize, tag: Tag) {
        if let Some(set) = self.tags.get_mut(slot / WAYS) {
            set.0[slot % WAYS] = tag;
        }
    }

    /// The ways of the set at `base` whose tag is `tag`, as a bit mask (bit w =
    /// way w): two 128-bit compares of the set's 16 tags.
    #[inline]
    fn tag_matches(&self, base: usize, tag: Tag) -> u32 {
        let Some(set) = self.tags.get(base / WAYS) else {
            return 0;
        };
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::*;
            // SAFETY: `set` is a 32-byte-aligned TagSet: two aligned 16-byte
            // loads read exactly its bytes; SSE2 is part of the x86_64 baseline.
            unsafe {
                let p = set.0.as_ptr().cast::<__m128i>();
                let want = _mm_set1_epi16(tag as i16);
                let lo = _mm_cmpeq_epi16(_mm_load_si128(p), want);
                let hi = _mm_cmpeq_epi16(_mm_load_si128(p.add(1)), want);
                (_mm_movemask_epi8(_mm_packs_epi16(lo, hi)) as u32) & 0xffff
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let mut m = 0u32;
            for (w, &t) in set.0.iter().enumerate() {
                m |= u32::from(t == tag) << w;
            }
            m
        }
    }

    /// Second prefetch pass: with the set's tags already in cache, finds the way
    /// whose tag matches `h` and hints the CPU to load that entry. Returns the
    /// slot (`NO_SLOT` when no tag matches), for `lookup_probed`.
    #[inline]
    pub fn probe(&self, h: u64) -> u32 {
        let base = self.set_base(h);
        let m = self.tag_matches(base, Self::tag_of(h));
        if m == 0 {
            return NO_SLOT;
        }
        let slot = base + m.trailing_zeros() as usize;
        #[cfg(target_arch = "x86_64")]
        if let Some(e) = self.entries.get(slot) {
            let p = std::ptr::from_ref(e).cast::<i8>();
            // SAFETY: prefetch is only a hint; the pointer is inside `entries`.
            unsafe { core::arch::x86_64::_mm_prefetch(p, core::arch::x86_64::_MM_HINT_T0) };
        }
        slot_u32(slot)
    }

    /// Hints the CPU to load the set of hash `h` (for batch prefetching).
    #[inline]
    pub fn prefetch(&self, h: u64) {
        let base = self.set_base(h);
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = self.tags.get(base / WAYS) {
            let p = std::ptr::from_ref(t).cast::<i8>();
            // SAFETY: prefetch is only a hint; the pointer is inside `tags`.
            unsafe { core::arch::x86_64::_mm_prefetch(p, core::arch::x86_64::_MM_HINT_T0) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = base;
    }

    #[inline]
    fn find(&self, key: &FlowKey) -> Option<usize> {
        self.find_hashed(key, self.hash(key))
    }

    #[inline]
    fn find_hashed(&self, key: &FlowKey, h: u64) -> Option<usize> {
        let base = self.set_base(h);
        let mut m = self.tag_matches(base, Self::tag_of(h));
        while m != 0 {
            let slot = base + m.trailing_zeros() as usize;
            if self.entries.get(slot).is_some_and(|e| e.key == *key) {
                return Some(slot);
            }
            m &= m - 1;
        }
        None
    }

    /// Looks a packet's tuple up. Expired flows are removed and miss.
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, now_ns: u64) -> Option<Hit> {
        let h = self.hash(key);
        self.lookup_hashed(key, h, now_ns)
    }

    /// `lookup` with the key's hash already computed by `hash`.
    #[inline]
    pub fn lookup_hashed(&mut self, key: &FlowKey, h: u64, now_ns: u64) -> Option<Hit> {
        let slot = self.find_hashed(key, h)?;
        self.hit_at(slot, now_ns)
    }

    /// `lookup_hashed` starting from the slot `probe` returned for `h` earlier in
    /// the batch: when that slot still holds `key` (the common case) the set is
    /// not scanned again. Otherwise (a tag collision, or the batch changed the
    /// set since) it falls back to the full lookup, so the answer is the same.
    #[inline(always)]
    pub fn lookup_probed(
        &mut self,
        key: &FlowKey,
        h: u64,
        probed: u32,
        now_ns: u64,
    ) -> Option<Hit> {
        let s = probed as usize;
        let still =
            self.tag(s) == Self::tag_of(h) && self.entries.get(s).is_some_and(|e| e.key == *key);
        if still {
            self.hit_at(s, now_ns)
        } else {
            self.lookup_hashed(key, h, now_ns)
        }
    }

    #[inline(always)]
    fn hit_at(&mut self, slot: usize, now_ns: u64) -> Option<Hit> {
        let e = self.entries.get(slot)?;
        let master = if e.master { slot } else { e.peer as usize };
        let rewrite = e.rewrite;
        let is_reply = !e.master;
        let deltas = ChecksumDeltas {
            ip: e.ip_delta,
            l4: e.l4_delta,
        };
        let m = self.entries.get(master)?;
        if m.expires_ns <= now_ns {
            self.remove(slot_u32(slot));
            return None;
        }
        Some(Hit {
            slot: slot_u32(slot),
            master: slot_u32(master),
            rewrite,
            is_reply,
            deltas,
            meta: m.meta(),
            checked_gen: m.checked_gen,
            state: m.state,
        })
    }

    /// Is this tuple in the table (and live)? Does not touch state.
    pub fn contains(&self, key: &FlowKey, now_ns: u64) -> bool {
        self.find(key).is_some_and(|s| {
            let e = &self.entries[s];
            let m = if e.master { s } else { e.peer as usize };
            self.entries[m].expires_ns > now_ns
        })
    }

    /// Records that the flow's backend was checked against generation `g`.
    #[inline]
    pub fn set_checked(&mut self, hit: &Hit, g: u64) {
        self.entries[hit.master as usize].checked_gen = generation_low(g);
    }

    /// Advances the flow's state for a packet (TCP flags for TCP, 0 for UDP) and
    /// refreshes its expiry.
    #[inline]
    pub fn on_packet(&mut self, hit: &Hit, tcp: Option<u8>, now_ns: u64) {
        let m = &mut self.entries[hit.master as usize];
        m.state = match tcp {
            None => {
                if hit.is_reply {
                    FlowState::UdpReplied
                } else {
                    m.state
                }
            }
            Some(f) => next_tcp_state(m.state, &mut m.fins, f, hit.is_reply),
        };
        m.expires_ns = now_ns.saturating_add(self.timeout_ns[m.state as usize]);
    }

    /// Inserts a new flow whose original-direction packets match `key` and are
    /// rewritten to `rw`. The reply entry matches the reversed rewritten tuple
    /// and restores the original. Returns the master slot.
    pub fn insert(
        &mut self,
        key: FlowKey,
        rw: Rewrite,
        meta: FlowMeta,
        tcp: Option<u8>,
        generation: u64,
        now_ns: u64,
    ) -> Result<u32, InsertError> {
        let h1 = self.hash(&key);
        let h2 = self.hash(&key.rewritten(&rw).reversed());
        self.insert_prehashed(key, h1, h2, rw, meta, tcp, generation, now_ns)
    }

    /// Hints the CPU to fetch, for writing, the entry a flow whose key hashes
    /// to `h` would be inserted into (the set's first free way; its tags should
    /// be in cache already, see `prefetch`).
    #[inline]
    pub fn prefetch_for_insert(&self, h: u64) {
        let base = self.set_base(h);
        let free = self.tag_matches(base, 0);
        if free == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(e) = self.entries.get(base + free.trailing_zeros() as usize) {
            let p = std::ptr::from_ref(e).cast::<i8>();
            // SAFETY: prefetch is only a hint; the pointer is inside `entries`.
            unsafe { core::arch::x86_64::_mm_prefetch(p, core::arch::x86_64::_MM_HINT_ET0) };
        }
    }

    /// `insert` with the hashes of `key` (`h1`) and of its reply key
    /// (`h2`, the hash of `key.rewritten(&rw).reversed()`) already computed.
    #[allow(clippy::too_many_arguments)]
    pub fn insert_prehashed(
        &mut self,
        key: FlowKey,
        h1: u64,
        h2: u64,
        rw: Rewrite,
        meta: FlowMeta,
        tcp: Option<u8>,
        generation: u64,
        now_ns: u64,
    ) -> Result<u32, InsertError> {
        let reply_key = key.rewritten(&rw).reversed();
        let reply_rw = key.reversed().identity();
        debug_assert_eq!(h1, self.hash(&key));
        debug_assert_eq!(h2, self.hash(&reply_key));
        // Another flow's replies look the same as this one's: unless that
        // flow is over, this one cannot have the tuple.
        let reply_slot = self.find_hashed(&reply_key, h2);
        if let Some(s) = reply_slot {
            let e = &self.entries[s];
            let m = self
                .entries
                .get(if e.master { s } else { e.peer as usize })
                .unwrap_or(e);
            let over = m.expires_ns <= now_ns
                || matches!(m.state, FlowState::TcpTimeWait | FlowState::TcpClose)
                || (m.master && m.key == key);
            if !over {
                return Err(InsertError::ReplyTaken);
            }
            if !(m.master && m.key == key) {
                self.tuple_reuses += 1;
            }
        }
        // Replace stale entries with the same keys (e.g. a port reused).
        // (`remove` of a slot already freed with its peer does nothing.)
        if let Some(s) = self.find_hashed(&key, h1) {
            self.remove(slot_u32(s));
        }
        if let Some(s) = reply_slot {
            self.remove(slot_u32(s));
        }
        let b1 = self.set_base(h1);
        let s1 = self.free_way(b1, now_ns, None).ok_or(InsertError::Full)?;
        // Reserve s1 so the reply's search cannot pick it.
        self.set_tag(s1, Self::tag_of(h1));
        let b2 = self.set_base(h2);
        let Some(s2) = self.free_way(b2, now_ns, Some(s1)) else {
            self.set_tag(s1, 0);
            return Err(InsertError::Full);
        };
        let mut state = if tcp.is_some() {
            FlowState::TcpSynSent
        } else {
            FlowState::UdpUnreplied
        };
        let mut fins = 0;
        if let Some(f) = tcp {
            state = next_tcp_state(FlowState::TcpSynSent, &mut fins, f, false);
        }
        let expires_ns = now_ns.saturating_add(self.timeout_ns[state as usize]);
        debug_assert!(
            meta.backend.is_none_or(|b| b == (rw.dst, rw.dport)),
            "a flow's backend is its rewrite destination"
        );
        let fwd = ChecksumDeltas::between(&key, &rw);
        let rev = ChecksumDeltas::between(&reply_key, &reply_rw);
        self.entries[s1] = Entry {
            key,
            rewrite: rw,
            peer: slot_u32(s2),
            master: true,
            state,
            fins,
            expires_ns,
            checked_gen: generation_low(generation),
            ip_delta: fwd.ip,
            l4_delta: fwd.l4,
            dnat: meta.backend.is_some(),
            snat: meta.snat,
            client_mac: meta.client_mac.unwrap_or([0; 6]),
        };
        self.set_tag(s2, Self::tag_of(h2));
        self.entries[s2] = Entry {
            key: reply_key,
            rewrite: reply_rw,
            peer: slot_u32(s1),
            master: false,
            ip_delta: rev.ip,
            l4_delta: rev.l4,
            ..Entry::default()
        };
        self.flows += 1;
        Ok(slot_u32(s1))
    }

    /// A free way in the set at `base`: empty, expired (reclaimed), or made free
    /// by evicting per the policy. `keep` is a slot that must not be chosen.
    fn free_way(&mut self, base: usize, now_ns: u64, keep: Option<usize>) -> Option<usize> {
        // Empty ways, from the tags at once; `keep` (a way just reserved) is not one.
        let free = |t: &FlowTable| {
            let mut m = t.tag_matches(base, 0);
            if let Some(k) = keep.and_then(|k| k.checked_sub(base)).filter(|&k| k < WAYS) {
                m &= !(1 << k);
            }
            m
        };
        let m = free(self);
        if m != 0 {
            return Some(base + m.trailing_zeros() as usize);
        }
        if self.evict_one(base, now_ns, keep) {
            let m = free(self);
            (m != 0).then(|| base + m.trailing_zeros() as usize)
        } else {
            None
        }
    }

    /// Evicts, among the flows whose original-direction entry sits in this set
    /// (so only this set's contiguous entries are read), an expired one or else
    /// the unassured one with the earliest expiry. Reply entries of flows held
    /// elsewhere are reclaimed when their flow expires or is evicted.
    fn evict_one(&mut self, base: usize, now_ns: u64, keep: Option<usize>) -> bool {
        let mut victim: Option<(usize, u64)> = None;
        for w in base..base + WAYS {
            if self.tag(w) == 0 || Some(w) == keep || !self.entries[w].master {
                continue;
            }
            let e = &self.entries[w];
            let candidate = e.expires_ns <= now_ns || !e.state.is_assured();
            if candidate && victim.is_none_or(|(_, exp)| e.expires_ns < exp) {
                victim = Some((w, e.expires_ns));
            }
        }
        if victim.is_none() {
            // Only reply entries here: fall back to their flows' masters (one
            // extra memory access each; rare at ≤ 50% load).
            for w in base..base + WAYS {
                if self.tag(w) == 0 || Some(w) == keep || self.entries[w].master {
                    continue;
                }
                let m = self.entries[w].peer as usize;
                if m >= self.entries.len() || keep == Some(m) {
                    continue;
                }
                let e = &self.entries[m];
                let candidate = e.expires_ns <= now_ns || !e.state.is_assured();
                if candidate && victim.is_none_or(|(_, exp)| e.expires_ns < exp) {
                    victim = Some((w, e.expires_ns));
                }
            }
        }
        match victim {
            Some((w, exp)) => {
                if exp > now_ns {
                    self.evictions += 1;
                }
                self.remove(slot_u32(w));
                true
            }
            None => false,
        }
    }

    /// Removes the flow that owns `slot` (both directions).
    pub fn remove(&mut self, slot: u32) {
        let s = slot as usize;
        if s >= self.slots() || self.tag(s) == 0 {
            return;
        }
        let peer = self.entries[s].peer as usize;
        self.set_tag(s, 0);
        if peer < self.slots() && self.tag(peer) != 0 && self.entries[peer].peer as usize == s {
            self.set_tag(peer, 0);
        }
        self.entries[s].peer = NONE;
        self.flows = self.flows.saturating_sub(1);
    }

    /// Evictions made to admit new flows since the table was created.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// New flows that took the reply tuple of another flow that was over
    /// (TIME_WAIT, reset or expired), since the table was created.
    pub fn tuple_reuses(&self) -> u64 {
        self.tuple_reuses
    }
}

#[cfg(test)]
mod tests {
    use super::super::tcp::tcp_flags::*;
    use super::super::tcp::NS;
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn k(src: u32, sport: u16) -> FlowKey {
        FlowKey {
            src,
            dst: 0xc612_600a,
            sport,
            dport: 80,
            proto: 6,
        }
    }

    fn dnat(key: &FlowKey) -> Rewrite {
        Rewrite {
            src: key.src,
            sport: key.sport,
            dst: 0xc613_010a,
            dport: 8080,
        }
    }

    #[test]
    fn insert_lookup_both_directions() {
        let mut t = FlowTable::new(16);
        let key = k(0xc613_0105, 40000);
        let rw = dnat(&key);
        t.insert(key, rw, FlowMeta::default(), Some(SYN), 1, 0)
            .unwrap();
        let fwd = t.lookup(&key, 1).unwrap();
        assert!(!fwd.is_reply);
        assert_eq!(fwd.rewrite, rw);
        let reply_key = key.rewritten(&rw).reversed();
        let rev = t.lookup(&reply_key, 1).unwrap();
        assert!(rev.is_reply);
        // The reply is restored to the original tuple, reversed.
        assert_eq!(reply_key.rewritten(&rev.rewrite), key.reversed());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_live_flows_reply_tuple_is_not_taken_over_but_a_closed_ones_is() {
        let mut t = FlowTable::new(16);
        let a = k(0xc613_0105, 40000);
        t.insert(a, dnat(&a), FlowMeta::default(), Some(SYN), 1, 0)
            .unwrap();
        // Another destination (another Service) translated to the same backend.
        let b = FlowKey {
            dst: 0xc612_600b,
            ..a
        };
        assert_eq!(
            t.insert(b, dnat(&b), FlowMeta::default(), Some(SYN), 1, 0),
            Err(InsertError::ReplyTaken)
        );
        assert_eq!(t.len(), 1);
        // The same flow inserted again replaces itself.
        t.insert(a, dnat(&a), FlowMeta::default(), Some(SYN), 1, 0)
            .unwrap();
        assert_eq!(t.len(), 1);
        // Once `a` is reset, `b` may have the tuple.
        let h = t.lookup(&a, 0).unwrap();
        t.on_packet(&h, Some(RST), 0);
        t.insert(b, dnat(&b), FlowMeta::default(), Some(SYN), 1, 0)
            .unwrap();
        assert_eq!(t.len(), 1);
        assert!(t.lookup(&a, 0).is_none());
        assert!(t.lookup(&b, 0).is_some());
    }

    #[test]
    fn tcp_handshake_and_timeouts() {
        let mut t = FlowTable::new(16);
        let key = k(1, 1);
        let rw = dnat(&key);
        t.insert(key, rw, FlowMeta::default(), Some(SYN), 0, 0)
            .unwrap();
        let h = t.lookup(&key, 0).unwrap();
        assert_eq!(h.state, FlowState::TcpSynSent);
        let r = t.lookup(&key.rewritten(&rw).reversed(), 0).unwrap();
        t.on_packet(&r, Some(SYN | ACK), 0);
        let h = t.lookup(&key, 0).unwrap();
        assert_eq!(h.state, FlowState::TcpSynRecv);
        t.on_packet(&h, Some(ACK), 0);
        let h = t.lookup(&key, 0).unwrap();
        assert_eq!(h.state, FlowState::TcpEstablished);
        // Established lives for a day; still there after an hour.
        assert!(t.lookup(&key, 3600 * NS).is_some());
        let h = t.lookup(&key, 3600 * NS).unwrap();
        t.on_packet(&h, Some(FIN | ACK), 3600 * NS);
        let r = t.lookup(&key.rewritten(&rw).reversed(), 3600 * NS).unwrap();
        t.on_packet(&r, Some(FIN | ACK), 3600 * NS);
        let h = t.lookup(&key, 3600 * NS).unwrap();
        assert_eq!(h.state, FlowState::TcpLastAck);
        t.on_packet(&h, Some(ACK), 3600 * NS);
        let h = t.lookup(&key, 3600 * NS).unwrap();
        assert_eq!(h.state, FlowState::TcpTimeWait);
        assert!(t.lookup(&key, 3600 * NS + 121 * NS).is_none());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_new_connection_on_a_closed_tuple_starts_over() {
        for close in [&[FIN | ACK, FIN | ACK, ACK][..], &[RST][..]] {
            let mut t = FlowTable::new(16);
            let key = k(4, 4);
            let rw = dnat(&key);
            let reply = key.rewritten(&rw).reversed();
            t.insert(key, rw, FlowMeta::default(), Some(SYN), 0, 0)
                .unwrap();
            let r = t.lookup(&reply, 0).unwrap();
            t.on_packet(&r, Some(SYN | ACK), 0);
            let h = t.lookup(&key, 0).unwrap();
            t.on_packet(&h, Some(ACK), 0);
            for (i, &f) in close.iter().enumerate() {
                let h = t.lookup(if i % 2 == 0 { &key } else { &reply }, 0).unwrap();
                t.on_packet(&h, Some(f), 0);
            }
            assert!(matches!(
                t.lookup(&key, 0).unwrap().state,
                FlowState::TcpTimeWait | FlowState::TcpClose
            ));
            // The client's next SYN on the same tuple: a new connection, whose
            // first FIN does not count as both.
            let h = t.lookup(&key, 0).unwrap();
            t.on_packet(&h, Some(SYN), 0);
            assert_eq!(t.lookup(&key, 0).unwrap().state, FlowState::TcpSynSent);
            let r = t.lookup(&reply, 0).unwrap();
            t.on_packet(&r, Some(SYN | ACK), 0);
            let h = t.lookup(&key, 0).unwrap();
            t.on_packet(&h, Some(ACK), 0);
            let h = t.lookup(&key, 0).unwrap();
            t.on_packet(&h, Some(FIN | ACK), 0);
            assert_eq!(t.lookup(&key, 0).unwrap().state, FlowState::TcpFinWait);
        }
    }

    #[test]
    fn rst_closes_quickly_and_udp_times_out() {
        let mut t = FlowTable::new(16);
        let key = k(2, 2);
        t.insert(key, key.identity(), FlowMeta::default(), Some(SYN), 0, 0)
            .unwrap();
        let h = t.lookup(&key, 0).unwrap();
        t.on_packet(&h, Some(RST), 0);
        assert!(t.lookup(&key, 11 * NS).is_none());
        let mut u = k(3, 3);
        u.proto = 17;
        t.insert(u, u.identity(), FlowMeta::default(), None, 0, 0)
            .unwrap();
        assert!(t.lookup(&u, 29 * NS).is_some());
        assert!(t.lookup(&u, 60 * NS).is_none());
        // A UDP flow that saw a reply lives 120 s.
        t.insert(u, u.identity(), FlowMeta::default(), None, 0, 0)
            .unwrap();
        let r = t.lookup(&u.reversed(), 1).unwrap();
        t.on_packet(&r, None, 1);
        assert!(t.lookup(&u, 100 * NS).is_some());
    }

    #[test]
    fn full_table_evicts_unassured_never_established() {
        let cap = 64;
        let mut t = FlowTable::new(cap);
        // Fill with established flows until the table refuses more.
        let mut established = Vec::new();
        for i in 0..u32::try_from(4 * cap).unwrap() {
            let key = k(i + 100, 1000);
            if t.insert(key, key.identity(), FlowMeta::default(), Some(SYN), 0, 0)
                .is_ok()
            {
                let r = t.lookup(&key.reversed(), 0).unwrap();
                t.on_packet(&r, Some(SYN | ACK), 0);
                let h = t.lookup(&key, 0).unwrap();
                t.on_packet(&h, Some(ACK), 0);
                established.push(key);
            }
        }
        assert!(t.len() <= t.max_flows());
        assert!(established.len() >= cap, "holds at least its capacity");
        // A flood of SYNs never pushes out established flows.
        let mut refused = 0;
        for i in 0..10_000u32 {
            let key = k(i + 1_000_000, 2000);
            if t.insert(key, key.identity(), FlowMeta::default(), Some(SYN), 0, 1)
                .is_err()
            {
                refused += 1;
            }
            assert!(t.len() <= t.max_flows());
        }
        for key in &established {
            assert!(t.lookup(key, 2).is_some(), "established flow was evicted");
        }
        assert!(
            refused > 0,
            "a table full of established flows refuses new ones"
        );
    }

    #[test]
    fn syn_flood_evicts_older_syns_and_counts() {
        let mut t = FlowTable::new(32);
        for i in 0..1000u32 {
            let key = k(i, 3000);
            t.insert(
                key,
                key.identity(),
                FlowMeta::default(),
                Some(SYN),
                0,
                u64::from(i),
            )
            .unwrap();
            assert!(t.len() <= t.max_flows());
        }
        assert!(t.evictions() > 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u16),
        Lookup(u8, u16),
        Remove(u8, u16),
        Advance(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..40, 0u16..4).prop_map(|(a, p)| Op::Insert(a, p)),
            (0u8..40, 0u16..4).prop_map(|(a, p)| Op::Lookup(a, p)),
            (0u8..40, 0u16..4).prop_map(|(a, p)| Op::Remove(a, p)),
            (0u8..40).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Against a plain HashMap model (large capacity, so no evictions): UDP
        /// flows with 30 s timeouts; inserts, lookups in both directions, removes.
        #[test]
        fn matches_reference_model(ops in proptest::collection::vec(op(), 1..200)) {
            let mut t = FlowTable::new(4096);
            let mut model: HashMap<FlowKey, (Rewrite, u64)> = HashMap::new();
            let mut now = 0u64;
            let key = |a: u8, p: u16| FlowKey { src: u32::from(a), dst: 0xc612_600b, sport: p, dport: 53, proto: 17 };
            let rw = |k: &FlowKey| Rewrite { src: k.src, sport: k.sport, dst: 0xc613_0300 + k.src, dport: 5353 };
            for o in ops {
                match o {
                    Op::Insert(a, p) => {
                        let kk = key(a, p);
                        let r = rw(&kk);
                        t.insert(kk, r, FlowMeta::default(), None, 0, now).unwrap();
                        model.insert(kk, (r, now + 30 * NS));
                    }
                    Op::Lookup(a, p) => {
                        let kk = key(a, p);
                        let live = model.get(&kk).filter(|(_, e)| *e > now).copied();
                        let got = t.lookup(&kk, now);
                        prop_assert_eq!(got.map(|h| h.rewrite), live.map(|(r, _)| r));
                        if let Some((r, _)) = live {
                            let back = t.lookup(&kk.rewritten(&r).reversed(), now).unwrap();
                            prop_assert!(back.is_reply);
                            prop_assert_eq!(kk.rewritten(&r).reversed().rewritten(&back.rewrite), kk.reversed());
                        }
                    }
                    Op::Remove(a, p) => {
                        let kk = key(a, p);
                        if let Some(h) = t.lookup(&kk, now) { t.remove(h.slot); }
                        model.remove(&kk);
                    }
                    Op::Advance(s) => now += u64::from(s) * NS,
                }
                model.retain(|_, (_, e)| *e > now);
                prop_assert!(t.len() >= model.len());
            }
        }
    }
}

#[cfg(test)]
mod layout_tests {
    #[test]
    fn an_entry_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<super::Entry>(), 64);
        assert_eq!(std::mem::align_of::<super::Entry>(), 64);
    }
}
