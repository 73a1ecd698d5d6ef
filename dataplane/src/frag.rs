//! IP fragments through NAT, per worker: a bounded table of datagrams by
//! (source, destination, protocol, IP id) that remembers the translation the
//! first fragment got, so every fragment of a datagram reaches the same backend
//! with the same addresses; the byte ranges seen of each (overlapping fragments
//! are refused); and a fixed arena where fragments that arrive before their
//! first fragment wait, for a bounded time. The same arena holds the frames the
//! pipeline emits beyond the one it was given (fragments released, or cut from
//! a frame too big for the overlay), queued for the I/O adapter to transmit.
//! Memory is fixed when the table is made: a flood of fragments can fill it but
//! never grow it. This module copies bytes; it never parses them.

use arrayvec::ArrayVec;

use crate::flow::Rewrite;

/// Where a waiting fragment's bytes start in its arena slot: room for a VXLAN
/// header in front (encapsulation) and for the rest of the frame behind.
pub const SLOT_HEADROOM: usize = 256;
/// One arena slot: a frame of up to `SLOT_BYTES - SLOT_HEADROOM` bytes.
pub const SLOT_BYTES: usize = 2048;
/// Fragments of one datagram the table tracks (64 × 1,480 bytes > 64 KiB).
pub const MAX_FRAGMENTS: usize = 64;
/// Frames emitted beyond the batch's own, waiting for the adapter, at most.
pub const MAX_EXTRA: usize = 128;
const WAYS: usize = 4;

/// The table's limits (`--frag-memory`, `--frag-timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragConfig {
    /// Bytes of arena: fragments waiting for their first fragment, and frames
    /// waiting for the adapter. Rounded down to whole 2 KiB slots.
    pub memory_bytes: usize,
    /// How long a datagram's translation, or its waiting fragments, live
    /// after its last fragment.
    pub timeout_ns: u64,
    /// Datagrams tracked at once.
    pub datagrams: usize,
}

impl Default for FragConfig {
    fn default() -> Self {
        FragConfig {
            memory_bytes: 1 << 20,
            timeout_ns: 5_000_000_000,
            datagrams: 1024,
        }
    }
}

/// A datagram: its fragments share these fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: u32,
    pub dst: u32,
    pub id: u16,
    pub proto: u8,
}

/// What the first fragment of a datagram got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragDecision {
    /// Not seen yet: later fragments wait.
    Pending,
    /// Translated (addresses only matter to fragments without the L4 header)
    /// and forwarded; `ip_delta` is the IPv4 checksum change of `rw`.
    Forward { rw: Rewrite, ip_delta: u16 },
    /// Dropped, rejected or passed to the host: the rest is dropped.
    Drop,
    /// Handed to the worker that owns its flow: the rest follows it there.
    Handoff { worker: u16 },
}

/// What to do with a fragment that has no L4 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Later {
    Forward {
        rw: Rewrite,
        ip_delta: u16,
    },
    /// Wait for the first fragment (call `hold`).
    Wait(u32),
    /// Hand to the worker the first fragment went to.
    Handoff {
        worker: u16,
    },
    Drop(FragError),
}

/// Why a fragment was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragError {
    /// Overlaps a fragment of the same datagram already seen.
    Overlap,
    /// Ends beyond 65,535 bytes, or more fragments than the table tracks.
    TooBig,
    /// No arena slot free (and none expired), or no table entry to be had.
    Full,
    /// The datagram's first fragment was not forwarded.
    Refused,
}

#[derive(Clone, Debug)]
struct Entry {
    key: FragKey,
    used: bool,
    expires_ns: u64,
    decision: FragDecision,
    /// Byte ranges [start, end) of the datagram seen so far.
    ranges: ArrayVec<(u32, u32), MAX_FRAGMENTS>,
    /// Arena slots of fragments waiting for the first.
    waiting: ArrayVec<u16, MAX_FRAGMENTS>,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            key: FragKey::default(),
            used: false,
            expires_ns: 0,
            decision: FragDecision::Pending,
            ranges: ArrayVec::new(),
            waiting: ArrayVec::new(),
        }
    }
}

/// A frame in the arena for the adapter to transmit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extra {
    pub slot: u16,
    pub off: u16,
    pub len: u16,
    pub ifindex: u32,
}

/// The per-worker fragment table and its arena.
pub struct FragTable {
    cfg: FragConfig,
    entries: Box<[Entry]>,
    set_mask: usize,
    seed: u64,
    arena: Box<[u8]>,
    free: Vec<u16>,
    extra: ArrayVec<Extra, MAX_EXTRA>,
    /// Slots whose first fragment was decided and that wait to be run through
    /// the pipeline (`take_released`).
    released: ArrayVec<(u16, u32), MAX_FRAGMENTS>,
    /// Waiting fragments dropped because their datagram timed out.
    timed_out: u64,
    /// Waiting fragments dropped because newer datagrams needed their entry.
    evicted: u64,
    /// Waiting fragments dropped because their first fragment went to the
    /// worker that owns its flow (this worker's arena cannot follow it).
    other_worker: u64,
    /// When the arena was last swept for expired datagrams.
    last_sweep_ns: u64,
}

impl FragTable {
    pub fn new(cfg: FragConfig) -> Self {
        let sets = (cfg.datagrams.max(WAYS) / WAYS).next_power_of_two();
        let slots = (cfg.memory_bytes / SLOT_BYTES).clamp(0, usize::from(u16::MAX));
        let mut free = Vec::with_capacity(slots);
        free.extend((0..slots).rev().filter_map(|s| u16::try_from(s).ok()));
        FragTable {
            cfg,
            entries: vec![Entry::default(); sets * WAYS].into_boxed_slice(),
            set_mask: sets - 1,
            seed: rand::random(),
            arena: vec![0u8; slots * SLOT_BYTES].into_boxed_slice(),
            free,
            extra: ArrayVec::new(),
            released: ArrayVec::new(),
            timed_out: 0,
            evicted: 0,
            other_worker: 0,
            last_sweep_ns: 0,
        }
    }

    pub fn config(&self) -> FragConfig {
        self.cfg
    }

    /// Bytes the table holds, fixed at creation (entries and arena).
    pub fn memory_bytes(&self) -> usize {
        self.arena.len() + self.entries.len() * std::mem::size_of::<Entry>()
    }

    /// Arena slots in use (waiting fragments and extra frames).
    pub fn slots_in_use(&self) -> usize {
        self.arena.len() / SLOT_BYTES - self.free.len()
    }

    /// Waiting fragments dropped because their datagram timed out.
    pub fn timed_out(&self) -> u64 {
        self.timed_out
    }

    /// Waiting fragments dropped because newer datagrams needed their entry.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Waiting fragments dropped because their first fragment was handed to
    /// another worker.
    pub fn other_worker(&self) -> u64 {
        self.other_worker
    }

    fn set_of(&self, k: &FragKey) -> usize {
        let h = shared::maglev::mix64(
            (u64::from(k.src) << 32 | u64::from(k.dst))
                ^ (u64::from(k.id) << 8 | u64::from(k.proto)).rotate_left(29)
                ^ self.seed,
        );
        (usize::try_from(h).unwrap_or(0) & self.set_mask) * WAYS
    }

    fn find(&self, k: &FragKey, now: u64) -> Option<usize> {
        let base = self.set_of(k);
        (base..base + WAYS).find(|&i| {
            self.entries[i].used && self.entries[i].key == *k && self.entries[i].expires_ns > now
        })
    }

    /// The entry for `k`, made if there is none (evicting an expired entry,
    /// else the one that expires first).
    fn entry(&mut self, k: &FragKey, now: u64) -> usize {
        if let Some(i) = self.find(k, now) {
            return i;
        }
        // Free or expired first; then a datagram still waiting for its first
        // fragment before one that has its translation (a flood of orphan
        // fragments cannot push out the datagrams being forwarded); the
        // earliest expiry among those.
        let base = self.set_of(k);
        let victim = (base..base + WAYS)
            .min_by_key(|&i| {
                let e = &self.entries[i];
                if !e.used || e.expires_ns <= now {
                    (0, 0)
                } else {
                    (
                        1 + u8::from(e.decision != FragDecision::Pending),
                        e.expires_ns,
                    )
                }
            })
            .unwrap_or(base);
        self.clear(victim, now);
        let e = &mut self.entries[victim];
        e.key = *k;
        e.used = true;
        e.decision = FragDecision::Pending;
        e.expires_ns = now.saturating_add(self.cfg.timeout_ns);
        victim
    }

    /// Frees an entry and drops its waiting fragments (timed out when it had
    /// expired, else evicted).
    fn clear(&mut self, i: usize, now: u64) {
        let waiting = std::mem::take(&mut self.entries[i].waiting);
        if self.entries[i].expires_ns <= now {
            self.timed_out += waiting.len() as u64;
        } else {
            self.evicted += waiting.len() as u64;
        }
        self.free.extend(waiting);
        let e = &mut self.entries[i];
        e.used = false;
        e.ranges.clear();
    }

    /// Records the byte range of a fragment; false when it overlaps one seen
    /// or there are too many.
    fn add_range(&mut self, i: usize, start: u32, end: u32) -> Result<(), FragError> {
        if end > 65_535 || end <= start {
            return Err(FragError::TooBig);
        }
        let e = &mut self.entries[i];
        if e.ranges.iter().any(|&(s, t)| start < t && s < end) {
            return Err(FragError::Overlap);
        }
        e.ranges
            .try_push((start, end))
            .map_err(|_| FragError::TooBig)
    }

    /// A first fragment (offset 0) of `k` covering `[0, end)`: recorded so a
    /// repeat or an overlap is seen; its translation comes with `decide`.
    pub fn first(&mut self, k: &FragKey, end: u32, now: u64) -> Result<(), FragError> {
        let i = self.entry(k, now);
        self.add_range(i, 0, end)?;
        self.entries[i].expires_ns = now.saturating_add(self.cfg.timeout_ns);
        Ok(())
    }

    /// The translation the first fragment of `k` got. Fragments that waited
    /// are queued to be run (`take_released`).
    pub fn decide(&mut self, k: &FragKey, d: FragDecision, now: u64) {
        let Some(i) = self.find(k, now) else {
            return;
        };
        // A repeated or overlapping first fragment (dropped) does not undo
        // the translation the datagram already has.
        if d == FragDecision::Drop
            && matches!(self.entries[i].decision, FragDecision::Forward { .. })
        {
            return;
        }
        self.entries[i].decision = d;
        let waiting = std::mem::take(&mut self.entries[i].waiting);
        for slot in waiting {
            match d {
                FragDecision::Forward { .. } => {
                    if let Err(e) = self.released.try_push((slot, 0)) {
                        self.free.push(e.element().0);
                        self.timed_out += 1;
                    }
                }
                FragDecision::Handoff { .. } => {
                    self.free.push(slot);
                    self.other_worker += 1;
                }
                _ => {
                    self.free.push(slot);
                    self.timed_out += 1;
                }
            }
        }
    }

    /// A fragment without the L4 header covering `[start, end)` of `k`.
    pub fn later(&mut self, k: &FragKey, start: u32, end: u32, now: u64) -> Later {
        let i = self.entry(k, now);
        if let Err(e) = self.add_range(i, start, end) {
            return Later::Drop(e);
        }
        self.entries[i].expires_ns = now.saturating_add(self.cfg.timeout_ns);
        match self.entries[i].decision {
            FragDecision::Forward { rw, ip_delta } => Later::Forward { rw, ip_delta },
            FragDecision::Drop => Later::Drop(FragError::Refused),
            FragDecision::Handoff { worker } => Later::Handoff { worker },
            FragDecision::Pending => Later::Wait(u32::try_from(i).unwrap_or(u32::MAX)),
        }
    }

    /// Copies a waiting fragment (`bytes`, from interface `ifindex`, over the
    /// overlay or not) into the arena for entry `w` (from `Later::Wait`).
    pub fn hold(
        &mut self,
        w: u32,
        bytes: &[u8],
        ifindex: u32,
        decapped: bool,
        now: u64,
    ) -> Result<(), FragError> {
        let i = usize::try_from(w).unwrap_or(usize::MAX);
        if i >= self.entries.len() || bytes.len() > SLOT_BYTES - SLOT_HEADROOM {
            return Err(FragError::TooBig);
        }
        let Some(slot) = self.alloc(now) else {
            return Err(FragError::Full);
        };
        let off = usize::from(slot) * SLOT_BYTES + SLOT_HEADROOM;
        self.arena[off..off + bytes.len()].copy_from_slice(bytes);
        // The length and ingress are kept in the slot's first bytes.
        let meta = usize::from(slot) * SLOT_BYTES;
        self.arena[meta..meta + 2]
            .copy_from_slice(&u16::try_from(bytes.len()).unwrap_or(0).to_le_bytes());
        self.arena[meta + 2] = u8::from(decapped);
        self.arena[meta + 4..meta + 8].copy_from_slice(&ifindex.to_le_bytes());
        if self.entries[i].waiting.try_push(slot).is_err() {
            self.free.push(slot);
            return Err(FragError::TooBig);
        }
        Ok(())
    }

    /// A free arena slot; when none is, the datagrams that expired give theirs
    /// up (a sweep of the table at most every 10 ms, so a flood against a full
    /// arena costs no more than a lookup per fragment).
    pub fn alloc(&mut self, now: u64) -> Option<u16> {
        if self.free.is_empty() && now.saturating_sub(self.last_sweep_ns) >= 10_000_000 {
            self.last_sweep_ns = now;
            for i in 0..self.entries.len() {
                if self.entries[i].used && self.entries[i].expires_ns <= now {
                    self.clear(i, now);
                }
            }
        }
        self.free.pop()
    }

    /// Gives a slot back.
    pub fn free_slot(&mut self, slot: u16) {
        self.free.push(slot);
    }

    /// Are fragments waiting to be run through the pipeline (`take_released`)?
    pub fn released_is_empty(&self) -> bool {
        self.released.is_empty()
    }

    /// The released fragments, to be run through the pipeline: (slot, bytes
    /// in it, ingress).
    pub fn take_released(&mut self) -> ArrayVec<(u16, u32), MAX_FRAGMENTS> {
        std::mem::take(&mut self.released)
    }

    /// A slot's bytes (the frame held in it starts at `SLOT_HEADROOM`), the
    /// held frame's length, ingress interface and whether it came over the
    /// overlay.
    pub fn slot_mut(&mut self, slot: u16) -> (&mut [u8], usize, u32, bool) {
        let base = usize::from(slot) * SLOT_BYTES;
        let len = usize::from(u16::from_le_bytes([self.arena[base], self.arena[base + 1]]));
        let decapped = self.arena[base + 2] != 0;
        let ifindex = u32::from_le_bytes([
            self.arena[base + 4],
            self.arena[base + 5],
            self.arena[base + 6],
            self.arena[base + 7],
        ]);
        (
            &mut self.arena[base..base + SLOT_BYTES],
            len,
            ifindex,
            decapped,
        )
    }

    /// Free arena slots.
    pub fn free_slots(&self) -> usize {
        self.free.len()
    }

    /// The recorded translation of datagram `k`, if any.
    pub fn decision(&self, k: &FragKey, now: u64) -> Option<FragDecision> {
        self.find(k, now).map(|i| self.entries[i].decision)
    }

    /// Queues a slot's frame at `[off, off+len)` for transmit on `ifindex`;
    /// false (and the slot freed) when the queue is full.
    pub fn emit(&mut self, slot: u16, off: usize, len: usize, ifindex: u32) -> bool {
        let (Ok(off), Ok(len)) = (u16::try_from(off), u16::try_from(len)) else {
            self.free.push(slot);
            return false;
        };
        if self
            .extra
            .try_push(Extra {
                slot,
                off,
                len,
                ifindex,
            })
            .is_err()
        {
            self.free.push(slot);
            return false;
        }
        true
    }

    /// Frames emitted so far and not yet drained.
    pub fn extra(&self) -> &[Extra] {
        &self.extra
    }

    /// Hands every emitted frame's bytes to `tx` (the adapter copies them into
    /// its UMEM), frees their slots, and empties the queue.
    pub fn drain_extra(&mut self, mut tx: impl FnMut(u32, &[u8])) {
        let extra = std::mem::take(&mut self.extra);
        for x in extra {
            let base = usize::from(x.slot) * SLOT_BYTES;
            let (off, len) = (usize::from(x.off), usize::from(x.len));
            if off + len <= SLOT_BYTES {
                tx(x.ifindex, &self.arena[base + off..base + off + len]);
            }
            self.free.push(x.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn key(id: u16) -> FragKey {
        FragKey {
            src: 1,
            dst: 2,
            id,
            proto: 17,
        }
    }

    fn rw() -> Rewrite {
        Rewrite {
            src: 1,
            dst: 9,
            sport: 0,
            dport: 0,
        }
    }

    #[test]
    fn later_fragments_follow_the_first_ones_decision() {
        let mut t = FragTable::new(FragConfig::default());
        t.first(&key(1), 1480, MS).unwrap();
        t.decide(
            &key(1),
            FragDecision::Forward {
                rw: rw(),
                ip_delta: 7,
            },
            MS,
        );
        assert_eq!(
            t.later(&key(1), 1480, 2960, MS),
            Later::Forward {
                rw: rw(),
                ip_delta: 7
            }
        );
        // Another datagram (other id) knows nothing yet.
        assert!(matches!(t.later(&key(2), 1480, 2960, MS), Later::Wait(_)));
    }

    #[test]
    fn fragments_before_the_first_wait_then_are_released() {
        let mut t = FragTable::new(FragConfig::default());
        let Later::Wait(w) = t.later(&key(1), 1480, 2000, MS) else {
            panic!("must wait")
        };
        t.hold(w, &[0xab; 534], 3, true, MS).unwrap();
        assert_eq!(t.slots_in_use(), 1);
        t.first(&key(1), 1480, 2 * MS).unwrap();
        t.decide(
            &key(1),
            FragDecision::Forward {
                rw: rw(),
                ip_delta: 0,
            },
            2 * MS,
        );
        let rel = t.take_released();
        assert_eq!(rel.len(), 1);
        let (bytes, len, ifindex, decapped) = t.slot_mut(rel[0].0);
        assert_eq!((len, ifindex, decapped), (534, 3, true));
        assert!(bytes[SLOT_HEADROOM..SLOT_HEADROOM + len]
            .iter()
            .all(|&b| b == 0xab));
    }

    #[test]
    fn overlaps_and_oversize_are_refused() {
        let mut t = FragTable::new(FragConfig::default());
        t.first(&key(1), 1480, MS).unwrap();
        assert_eq!(
            t.later(&key(1), 1000, 2000, MS),
            Later::Drop(FragError::Overlap)
        );
        assert_eq!(t.first(&key(1), 1480, MS), Err(FragError::Overlap));
        assert_eq!(
            t.later(&key(1), 65_000, 66_000, MS),
            Later::Drop(FragError::TooBig)
        );
    }

    #[test]
    fn a_refused_first_fragment_drops_the_rest() {
        let mut t = FragTable::new(FragConfig::default());
        let Later::Wait(w) = t.later(&key(1), 1480, 2000, MS) else {
            panic!()
        };
        t.hold(w, &[1; 100], 3, false, MS).unwrap();
        t.first(&key(1), 1480, MS).unwrap();
        t.decide(&key(1), FragDecision::Drop, MS);
        assert!(t.take_released().is_empty());
        assert_eq!(t.slots_in_use(), 0);
        assert_eq!(
            t.later(&key(1), 2000, 2500, MS),
            Later::Drop(FragError::Refused)
        );
    }

    #[test]
    fn a_flood_fills_the_arena_but_never_grows_it_and_expiry_frees_it() {
        let cfg = FragConfig {
            memory_bytes: 64 * SLOT_BYTES,
            timeout_ns: 1000 * MS,
            datagrams: 256,
        };
        let mut t = FragTable::new(cfg);
        let before = t.memory_bytes();
        let mut full = 0;
        for id in 0..10_000u16 {
            if let Later::Wait(w) = t.later(&key(id), 8, 1000, MS) {
                if t.hold(w, &[0; 1000], 1, false, MS).is_err() {
                    full += 1;
                }
            }
        }
        assert!(full > 0);
        assert!(t.slots_in_use() <= 64);
        assert_eq!(t.memory_bytes(), before);
        // After the timeout, a new fragment finds room again.
        let Later::Wait(w) = t.later(&key(60_000), 8, 1000, 2000 * MS) else {
            panic!()
        };
        t.hold(w, &[0; 1000], 1, false, 2000 * MS).unwrap();
        assert!(t.timed_out() > 0);
    }

    #[test]
    fn emitted_frames_drain_once() {
        let mut t = FragTable::new(FragConfig::default());
        let s = t.alloc(MS).unwrap();
        let (b, _, _, _) = t.slot_mut(s);
        b[300..304].copy_from_slice(&[1, 2, 3, 4]);
        assert!(t.emit(s, 300, 4, 9));
        let mut seen = Vec::new();
        t.drain_extra(|i, bytes| seen.push((i, bytes.to_vec())));
        assert_eq!(seen, vec![(9, vec![1, 2, 3, 4])]);
        t.drain_extra(|_, _| panic!("drained twice"));
        assert_eq!(t.slots_in_use(), 0);
    }
}
