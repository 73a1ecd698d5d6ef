//! Drop reasons and per-worker counters. A worker owns its `Counters` and bumps
//! plain integers; readers sum copies when scraped. The `DropReason` names are
//! the `reason` label in `/metrics` and the keys in `/status`.

/// Why a frame was dropped. One enum, one counter per variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than an Ethernet header, or an IPv4 header that fails its checks
    /// (version, IHL, total length, header checksum is not verified).
    Malformed,
    /// EtherType the dataplane does not forward (IPv6, VLAN, …).
    UnsupportedEtherType,
    /// IPv4 fragment (not reassembled yet).
    Fragment,
    /// L4 header truncated or inconsistent.
    MalformedL4,
    /// VXLAN header flags other than 0x08 (I bit only).
    VxlanBadFlags,
    /// VXLAN network identifier is not ours.
    VxlanUnknownVni,
    /// The frame inside the VXLAN header is too short to be Ethernet + IPv4.
    VxlanShortInner,
    /// TTL reached zero.
    TtlExceeded,
    /// Destination inside the Service CIDR with no Service behind it.
    UnallocatedServiceIp,
    /// externalTrafficPolicy/internalTrafficPolicy Local with no local endpoint.
    NoLocalEndpoint,
    /// Source outside the Service's loadBalancerSourceRanges.
    SourceRangeDenied,
    /// Protocol the Service frontend does not serve (e.g. ICMP to a ClusterIP).
    UnsupportedProtocol,
    /// No route to the destination (unknown pod, no remote node, no neighbour).
    NoRoute,
    /// The underlay next hop's MAC is not known yet.
    NoNeighbor,
    /// The frame would exceed the buffer or MTU after encapsulation.
    TooBig,
    /// The flow table had no room and no entry could be evicted.
    FlowTableFull,
    /// Masquerade port range exhausted.
    NoMasqueradePort,
    /// The frame was for the host stack but arrived on a path that cannot hand it over.
    HostUnreachable,
    /// A TCP packet that is not a SYN for a flow the table does not know.
    TcpNoFlow,
    /// Transmit ring full or the frame could not be queued.
    TxFull,
    /// The ring to the worker that owns the frame's flow was full.
    HandoffFull,
}

impl DropReason {
    pub const COUNT: usize = 21;

    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Malformed,
        DropReason::UnsupportedEtherType,
        DropReason::Fragment,
        DropReason::MalformedL4,
        DropReason::VxlanBadFlags,
        DropReason::VxlanUnknownVni,
        DropReason::VxlanShortInner,
        DropReason::TtlExceeded,
        DropReason::UnallocatedServiceIp,
        DropReason::NoLocalEndpoint,
        DropReason::SourceRangeDenied,
        DropReason::UnsupportedProtocol,
        DropReason::NoRoute,
        DropReason::NoNeighbor,
        DropReason::TooBig,
        DropReason::FlowTableFull,
        DropReason::NoMasqueradePort,
        DropReason::HostUnreachable,
        DropReason::TcpNoFlow,
        DropReason::TxFull,
        DropReason::HandoffFull,
    ];

    /// The snake_case name used as the metrics label.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnsupportedEtherType => "unsupported_ethertype",
            DropReason::Fragment => "fragment",
            DropReason::MalformedL4 => "malformed_l4",
            DropReason::VxlanBadFlags => "vxlan_bad_flags",
            DropReason::VxlanUnknownVni => "vxlan_unknown_vni",
            DropReason::VxlanShortInner => "vxlan_short_inner",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::UnallocatedServiceIp => "unallocated_service_ip",
            DropReason::NoLocalEndpoint => "no_local_endpoint",
            DropReason::SourceRangeDenied => "source_range_denied",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::NoRoute => "no_route",
            DropReason::NoNeighbor => "no_neighbor",
            DropReason::TooBig => "too_big",
            DropReason::FlowTableFull => "flow_table_full",
            DropReason::NoMasqueradePort => "no_masquerade_port",
            DropReason::HostUnreachable => "host_unreachable",
            DropReason::TcpNoFlow => "tcp_no_flow",
            DropReason::TxFull => "tx_full",
            DropReason::HandoffFull => "handoff_full",
        }
    }
}

/// Plain per-worker counters. Only the owning worker writes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Frames ending in `Verdict::Pass` (handed to the host stack).
    pub passed: u64,
    /// Frames answered with a crafted ICMP port unreachable or TCP RST.
    pub rejected: u64,
    pub decapsulated: u64,
    pub encapsulated: u64,
    pub flows_created: u64,
    pub flow_hits: u64,
    /// Flows evicted from the flow table to make room (the eviction policy bit).
    pub flow_evictions: u64,
    /// Flows removed because their backend left the Service (UDP flush / stale TCP).
    pub flows_flushed: u64,
    pub masqueraded: u64,
    /// New flows given another source port because another live flow had
    /// their reply tuple (Linux conntrack's clash handling).
    pub tuple_clashes: u64,
    /// New flows that took the reply tuple of a flow that was over (TCP
    /// TIME_WAIT or reset, or expired); that flow was removed.
    pub tuple_reuses: u64,
    /// Frames sent to the worker that owns their flow (`Verdict::Handoff`).
    pub handed_off: u64,
    /// Frames received from another worker (also counted in `rx_packets`).
    pub handed_in: u64,
    pub drops: [u64; DropReason::COUNT],
}

impl Counters {
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Adds `other` into `self` (used when scraping several workers).
    pub fn accumulate(&mut self, other: &Counters) {
        self.rx_packets += other.rx_packets;
        self.tx_packets += other.tx_packets;
        self.rx_bytes += other.rx_bytes;
        self.tx_bytes += other.tx_bytes;
        self.passed += other.passed;
        self.rejected += other.rejected;
        self.decapsulated += other.decapsulated;
        self.encapsulated += other.encapsulated;
        self.flows_created += other.flows_created;
        self.flow_hits += other.flow_hits;
        self.flow_evictions += other.flow_evictions;
        self.flows_flushed += other.flows_flushed;
        self.masqueraded += other.masqueraded;
        self.tuple_clashes += other.tuple_clashes;
        self.tuple_reuses += other.tuple_reuses;
        self.handed_off += other.handed_off;
        self.handed_in += other.handed_in;
        for (a, b) in self.drops.iter_mut().zip(other.drops.iter()) {
            *a += *b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_reasons_listed_once_with_unique_names() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "ALL must be in discriminant order");
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
    }

    #[test]
    fn accumulate_sums() {
        let mut a = Counters::default();
        a.drop(DropReason::NoRoute);
        a.rx_packets = 3;
        let mut b = a.clone();
        b.accumulate(&a);
        assert_eq!(b.rx_packets, 6);
        assert_eq!(b.dropped(DropReason::NoRoute), 2);
        assert_eq!(b.total_drops(), 2);
    }
}
