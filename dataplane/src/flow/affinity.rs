//! ClientIP session affinity (kube-proxy's `sessionAffinity: ClientIP`): the
//! backend a client was sent to per Service port, for the Service's timeout.
//! Owned by the worker that owns the client's flows, like the flow table; it
//! never sees packets or the snapshot.

use shared::maglev::mix64;

use super::tcp::NS;

/// ClientIP session affinity: (client IP, service port) → backend, per worker,
/// with the Service's timeout. Fixed size, set-associative like the flow table;
/// when a set is full the entry closest to expiry is replaced.
pub struct AffinityTable {
    slots: Box<[AffinityEntry]>,
    set_mask: usize,
    seed: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct AffinityEntry {
    client: u32,
    service: u64,
    backend: (u32, u16),
    expires_ns: u64,
}

const AFF_WAYS: usize = 4;

impl AffinityTable {
    pub fn new(capacity: usize) -> Self {
        let slots = capacity.max(AFF_WAYS * 2).next_power_of_two();
        AffinityTable {
            slots: vec![AffinityEntry::default(); slots].into_boxed_slice(),
            set_mask: slots / AFF_WAYS - 1,
            seed: rand::random(),
        }
    }

    #[inline]
    // Truncation intended: only the hash's low bits, under `set_mask`, are kept.
    #[allow(clippy::cast_possible_truncation)]
    fn base(&self, client: u32, service: u64) -> usize {
        ((mix64(u64::from(client) ^ self.seed).wrapping_add(mix64(service)) as usize)
            & self.set_mask)
            * AFF_WAYS
    }

    /// The remembered backend, if the affinity has not expired.
    #[inline]
    pub fn get(&self, client: u32, service: u64, now_ns: u64) -> Option<(u32, u16)> {
        let b = self.base(client, service);
        self.slots[b..b + AFF_WAYS]
            .iter()
            .find(|e| e.client == client && e.service == service && e.expires_ns > now_ns)
            .map(|e| e.backend)
    }

    /// Remembers (or refreshes) a client's backend for `timeout_secs`.
    #[inline]
    pub fn set(
        &mut self,
        client: u32,
        service: u64,
        backend: (u32, u16),
        timeout_secs: u32,
        now_ns: u64,
    ) {
        let b = self.base(client, service);
        let set = &mut self.slots[b..b + AFF_WAYS];
        let idx = set
            .iter()
            .position(|e| e.client == client && e.service == service)
            .or_else(|| set.iter().position(|e| e.expires_ns <= now_ns))
            .unwrap_or_else(|| {
                let mut min = 0;
                for (i, e) in set.iter().enumerate() {
                    if e.expires_ns < set[min].expires_ns {
                        min = i;
                    }
                }
                min
            });
        set[idx] = AffinityEntry {
            client,
            service,
            backend,
            expires_ns: now_ns.saturating_add(u64::from(timeout_secs) * NS),
        };
    }

    /// Forgets a client's affinity (its backend went away).
    pub fn forget(&mut self, client: u32, service: u64) {
        let b = self.base(client, service);
        for e in &mut self.slots[b..b + AFF_WAYS] {
            if e.client == client && e.service == service {
                e.expires_ns = 0;
            }
        }
    }
}

#[cfg(test)]
mod affinity_tests {
    use super::*;

    #[test]
    fn remembers_until_timeout() {
        let mut a = AffinityTable::new(64);
        a.set(1, 7, (10, 80), 10, 0);
        assert_eq!(a.get(1, 7, 9 * NS), Some((10, 80)));
        assert_eq!(a.get(1, 8, 0), None);
        assert_eq!(a.get(2, 7, 0), None);
        assert_eq!(a.get(1, 7, 11 * NS), None);
        a.set(1, 7, (11, 80), 10, 0);
        a.forget(1, 7);
        assert_eq!(a.get(1, 7, 0), None);
    }
}
