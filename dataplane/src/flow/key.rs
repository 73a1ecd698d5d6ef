//! Flow keys: the directional 5-tuple a flow is looked up by, the rewrite (NAT)
//! applied to its packets, and the checksum changes that rewrite makes, summed
//! once per flow. Plain values: this module may not touch a table or packet bytes.

/// A directional 5-tuple. Addresses are host-order `u32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// The tuple a packet of a flow is rewritten to (identity when no NAT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rewrite {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
}

/// The checksum changes a rewrite makes, summed once (RFC 1624, folded) so each
/// packet of the flow adds one word per checksum instead of recomputing them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChecksumDeltas {
    /// IPv4 header: the rewritten addresses (the TTL decrement is added per packet).
    pub ip: u16,
    /// TCP/UDP: addresses (pseudo-header) and ports. 0 for ICMP, whose
    /// checksum the pipeline updates from the identifier bytes it replaces.
    pub l4: u16,
}

impl ChecksumDeltas {
    /// The changes of rewriting `key` to `rw`; only fields that change count.
    #[inline]
    pub fn between(key: &FlowKey, rw: &Rewrite) -> ChecksumDeltas {
        use shared::wire::checksum::Incremental;
        let dword = |acc: Incremental, old: u32, new: u32| {
            if old == new {
                acc
            } else {
                acc.dword(old, new)
            }
        };
        let word = |acc: Incremental, old: u16, new: u16| {
            if old == new {
                acc
            } else {
                acc.word(old, new)
            }
        };
        let addrs = dword(
            dword(Incremental::changes(), key.src, rw.src),
            key.dst,
            rw.dst,
        );
        let ports = |acc| word(word(acc, key.sport, rw.sport), key.dport, rw.dport);
        let l4 = match key.proto {
            6 | 17 => ports(addrs).folded(),
            _ => 0,
        };
        ChecksumDeltas {
            ip: addrs.folded(),
            l4,
        }
    }
}

impl FlowKey {
    /// The tuple after applying `rw`.
    #[inline]
    pub fn rewritten(&self, rw: &Rewrite) -> FlowKey {
        FlowKey {
            src: rw.src,
            dst: rw.dst,
            sport: rw.sport,
            dport: rw.dport,
            proto: self.proto,
        }
    }

    #[inline]
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    #[inline]
    pub fn identity(&self) -> Rewrite {
        Rewrite {
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
        }
    }
}
