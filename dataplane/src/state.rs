//! The pipeline's per-worker mutable state: the flow table (conntrack, NAT,
//! ClientIP affinity), the fragment table (with the arena of frames the
//! pipeline emits beyond the ones it was given), and the ICMP rate limiter. Owned by one worker, never shared: no
//! locks, no atomics. Nothing here reads packets; the pipeline's stages do.

use crate::flow::FlowTable;
use crate::frag::{FragConfig, FragTable};

/// Everything a worker's pipeline keeps between batches.
pub struct WorkerState {
    pub flows: FlowTable,
    pub frags: FragTable,
    pub icmp: IcmpLimiter,
}

impl WorkerState {
    /// A worker's state with a flow table for `flow_capacity` flows and the
    /// default fragment limits.
    pub fn new(flow_capacity: usize) -> Self {
        Self::with(FlowTable::new(flow_capacity), FragConfig::default())
    }

    pub fn with(flows: FlowTable, frag: FragConfig) -> Self {
        WorkerState {
            flows,
            frags: FragTable::new(frag),
            icmp: IcmpLimiter::new(),
        }
    }
}

impl From<FlowTable> for WorkerState {
    fn from(flows: FlowTable) -> Self {
        Self::with(flows, FragConfig::default())
    }
}

/// Which ICMP errors the dataplane sends itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpKind {
    /// Time exceeded, port unreachable: Linux's default, a burst of 6 then one
    /// per second, per destination (`net.ipv4.icmp_ratelimit` 1000 ms).
    Error,
    /// Fragmentation needed (path MTU discovery): a burst of 6 then 100 per
    /// second per destination, so a sender's PMTU probe is never starved.
    FragNeeded,
}

const LIMIT_SLOTS: usize = 256;
const BURST: u32 = 6;
const NS: u64 = 1_000_000_000;

/// Token buckets per destination of the ICMP errors the dataplane crafts, in
/// a small direct-mapped table (a collision shares a bucket: stricter, never
/// looser). Fixed size: a flood of senders cannot grow it.
pub struct IcmpLimiter {
    slots: Box<[LimitSlot; LIMIT_SLOTS]>,
}

#[derive(Clone, Copy, Default)]
struct LimitSlot {
    dst: u32,
    tokens: u32,
    last_ns: u64,
    kind: u8,
}

impl Default for IcmpLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl IcmpLimiter {
    pub fn new() -> Self {
        IcmpLimiter {
            slots: Box::new([LimitSlot::default(); LIMIT_SLOTS]),
        }
    }

    /// May an error of `kind` go to `dst` now? Takes a token if so.
    pub fn allow(&mut self, dst: u32, kind: IcmpKind, now_ns: u64) -> bool {
        let interval = match kind {
            IcmpKind::Error => NS,
            IcmpKind::FragNeeded => NS / 100,
        };
        let k = kind as u8;
        let h = shared::maglev::mix64(u64::from(dst) ^ (u64::from(k) << 40));
        let s = &mut self.slots[usize::try_from(h % LIMIT_SLOTS as u64).unwrap_or(0)];
        if s.last_ns == 0 {
            *s = LimitSlot {
                dst,
                tokens: BURST,
                last_ns: now_ns.max(1),
                kind: k,
            };
        } else {
            let earned = now_ns.saturating_sub(s.last_ns) / interval;
            if earned > 0 {
                s.tokens = s
                    .tokens
                    .saturating_add(u32::try_from(earned).unwrap_or(u32::MAX))
                    .min(BURST);
                s.last_ns = s.last_ns.saturating_add(earned.saturating_mul(interval));
            }
            // Another destination in the same slot shares its tokens.
            s.dst = dst;
            s.kind = k;
        }
        if s.tokens == 0 {
            return false;
        }
        s.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_sharing_a_slot_share_its_tokens() {
        let mut l = IcmpLimiter::new();
        let h = |x: u32| shared::maglev::mix64(u64::from(x)) % LIMIT_SLOTS as u64;
        let a = 1u32;
        let b = (2u32..).find(|&d| h(d) == h(a)).unwrap();
        let sent = (0..20)
            .filter(|i| l.allow(if i % 2 == 0 { a } else { b }, IcmpKind::Error, NS))
            .count();
        assert_eq!(
            sent, 6,
            "alternating colliding senders get no more than one burst"
        );
    }

    #[test]
    fn a_burst_then_one_per_interval() {
        let mut l = IcmpLimiter::new();
        let t0 = 5 * NS;
        let sent = (0..20).filter(|_| l.allow(7, IcmpKind::Error, t0)).count();
        assert_eq!(sent, 6);
        assert!(!l.allow(7, IcmpKind::Error, t0 + NS / 2));
        assert!(l.allow(7, IcmpKind::Error, t0 + NS));
        assert!(!l.allow(7, IcmpKind::Error, t0 + NS));
        // Another destination has its own bucket (unless it shares the slot).
        let other = (8..).find(|&d| {
            let h = |x: u32| shared::maglev::mix64(u64::from(x)) % LIMIT_SLOTS as u64;
            h(d) != h(7)
        });
        assert!(l.allow(other.unwrap(), IcmpKind::Error, t0));
        // Frag-needed refills a hundred times faster.
        let sent = (0..10)
            .filter(|_| l.allow(9, IcmpKind::FragNeeded, t0))
            .count();
        assert_eq!(sent, 6);
        assert!(l.allow(9, IcmpKind::FragNeeded, t0 + NS / 100));
    }
}
