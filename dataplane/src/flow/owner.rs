//! Flow ownership with several workers: which worker holds a flow's state,
//! computed from the packet alone, identically on every worker and in every
//! process (so it must not depend on any per-table seed). See
//! `FlowTable::set_ownership` and the pipeline's `foreign_owner`.

/// The worker that owns the flows of client `ip` among `workers` (flow
/// ownership, see `FlowTable::set_ownership`). The same on every worker and in
/// every process: it must not depend on the per-table seed.
#[inline]
// Cannot truncate: the remainder is below `workers`, a `u16`.
#[allow(clippy::cast_possible_truncation)]
pub fn client_owner(ip: u32, workers: u16) -> u16 {
    if workers <= 1 {
        return 0;
    }
    (shared::maglev::mix64(u64::from(ip) ^ 0x6e6f_6465_706c_616e) % u64::from(workers)) as u16
}

/// The worker that owns a masqueraded flow whose translated port (or ICMP echo
/// identifier) is `port`.
#[inline]
pub fn port_owner(port: u16, workers: u16) -> u16 {
    if workers <= 1 {
        0
    } else {
        port % workers
    }
}
