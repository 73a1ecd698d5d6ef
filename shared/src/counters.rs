//! Drop reasons and per-worker counters, each defined once: a table of
//! (field, metric name, help text) generates the `DropReason` enum with its
//! names, the `Counters` struct, its accumulation, and the lists `/status` and
//! `/metrics` render. A worker owns its `Counters` and bumps plain integers;
//! readers sum copies when scraped. No I/O here.
//!
//! Where a frame is counted: every frame a worker takes in counts once in
//! `rx_packets`; the pipeline then counts its verdict exactly once, as
//! `forwarded`, `passed`, `handed_off` or a drop reason. The I/O adapter counts
//! what became of a forwarded frame, exactly once: `tx_packets` when it was
//! queued on a ring, else a drop (`tx_full`, `no_route`); and a handoff that found
//! the ring full as `handoff_full`. Nothing counted is ever taken back.

/// One counter as `/status` and `/metrics` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterField {
    /// The `Counters` field, and the key in `/status`.
    pub name: &'static str,
    /// The Prometheus metric name, without the `nodeplane_` prefix and the
    /// `_total` suffix prometheus-client adds to counters.
    pub metric: &'static str,
    pub help: &'static str,
}

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal, $help:literal;)+) => {
        /// Why a frame was dropped. One enum, one counter per variant; the
        /// names are the `reason` label in `/metrics` and the keys in `/status`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum DropReason {
            $(#[doc = $help] $variant,)+
        }

        impl DropReason {
            pub const COUNT: usize = [$($name),+].len();

            /// Every reason, in discriminant order.
            pub const ALL: [DropReason; Self::COUNT] = [$(DropReason::$variant),+];

            /// The snake_case name used as the metrics label.
            pub const fn name(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)+
                }
            }

            /// What the reason means, for people reading `/metrics`.
            pub const fn help(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $help,)+
                }
            }
        }
    };
}

drop_reasons! {
    Malformed => "malformed",
        "Shorter than an Ethernet header, or an IPv4 header that fails its checks (version, IHL, total length; the header checksum is not verified).";
    UnsupportedEtherType => "unsupported_ethertype",
        "An EtherType the dataplane does not forward (IPv6, VLAN, ...).";
    FragmentOverlap => "fragment_overlap",
        "An IPv4 fragment overlapping one of the same datagram seen before.";
    FragmentTooBig => "fragment_too_big",
        "An IPv4 fragment ending beyond 65,535 bytes, or one fragment too many for a datagram.";
    FragmentNoRoom => "fragment_no_room",
        "An IPv4 fragment that had to wait for its datagram's first fragment, with the fragment memory full.";
    FragmentRefused => "fragment_refused",
        "An IPv4 fragment of a datagram whose first fragment was dropped.";
    FragmentTimeout => "fragment_timeout",
        "An IPv4 fragment that waited for its datagram's first fragment longer than the fragment timeout.";
    FragmentEvicted => "fragment_evicted",
        "An IPv4 fragment waiting for its datagram's first fragment, pushed out by newer datagrams (the fragment table was full).";
    MalformedL4 => "malformed_l4",
        "The L4 header is truncated or inconsistent.";
    HostLinkSpoofed => "host_link_spoofed",
        "A reply to the host interface's link address (169.254.42.1) that did not come from the kernel through the host interface.";
    LoopbackNotFromNode => "loopback_not_from_node",
        "A frame to a NodePort on 127.0.0.0/8 that is not the node's own localhost connection (from 127.0.0.0/8, through the host interface).";
    SctpFragment => "sctp_fragment",
        "An IPv4 fragment of an SCTP packet whose ports a Service translates: SCTP's CRC32c covers the whole packet, so it cannot be fixed in one fragment.";
    VxlanBadFlags => "vxlan_bad_flags",
        "VXLAN header flags other than 0x08 (I bit only).";
    VxlanUnknownVni => "vxlan_unknown_vni",
        "The VXLAN network identifier is not ours.";
    VxlanShortInner => "vxlan_short_inner",
        "The frame inside the VXLAN header is too short to be Ethernet + IPv4.";
    TtlExceeded => "ttl_exceeded",
        "The TTL reached zero and no ICMP time exceeded was sent (rate limit, or the frame was an ICMP error or a later fragment).";
    FragmentOtherWorker => "fragment_other_worker", "IPv4 fragments that arrived before their datagram's first fragment, which was handed to the worker owning its flow.";
    IcmpErrorOfError => "icmp_error_of_error",
        "An ICMP error quoting an ICMP error: never translated, answered or forwarded.";
    IcmpErrorNoFlow => "icmp_error_no_flow",
        "An ICMP error about no flow this node tracks, addressed outside the cluster or to a ClusterIP.";
    MtuExceeded => "mtu_exceeded",
        "Too big for the overlay with DF set; an ICMP fragmentation needed was sent unless rate-limited.";
    UnallocatedServiceIp => "unallocated_service_ip",
        "A destination inside the Service CIDR with no Service behind it.";
    NoLocalEndpoint => "no_local_endpoint",
        "externalTrafficPolicy or internalTrafficPolicy Local with no local endpoint.";
    SourceRangeDenied => "source_range_denied",
        "A source outside the Service's loadBalancerSourceRanges.";
    UnsupportedProtocol => "unsupported_protocol",
        "A protocol the path does not serve (e.g. masquerading something other than TCP, UDP or ICMP echo).";
    NoRoute => "no_route",
        "No route to the destination (unknown pod, no remote node, no socket on the interface a verdict names).";
    NoNeighbor => "no_neighbor",
        "The MAC of the next hop is not known yet.";
    TooBig => "too_big",
        "The frame would exceed the buffer or the MTU after encapsulation.";
    FlowTableFull => "flow_table_full",
        "The flow table had no room and no entry could be evicted.";
    NoMasqueradePort => "no_masquerade_port",
        "The masquerade port range is exhausted.";
    TxFull => "tx_full",
        "The transmit ring was full.";
    HandoffFull => "handoff_full",
        "The ring to the worker that owns the frame's flow was full.";
}

macro_rules! counters {
    ($($field:ident => $metric:literal, $help:literal;)+) => {
        /// Plain per-worker counters. Only the owning worker writes them.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct Counters {
            $(#[doc = $help] pub $field: u64,)+
            /// Frames dropped, by `DropReason`.
            pub drops: [u64; DropReason::COUNT],
        }

        impl Counters {
            /// Every counter but the drops, in declaration order.
            pub const FIELDS: [CounterField; COUNTER_FIELDS] = [
                $(CounterField { name: stringify!($field), metric: $metric, help: $help },)+
            ];

            /// The values of `FIELDS`, in the same order.
            pub fn values(&self) -> [u64; COUNTER_FIELDS] {
                [$(self.$field,)+]
            }

            /// Adds `other` into `self` (used when scraping several workers).
            pub fn accumulate(&mut self, other: &Counters) {
                $(self.$field += other.$field;)+
                for (a, b) in self.drops.iter_mut().zip(other.drops.iter()) {
                    *a += *b;
                }
            }
        }

        /// How many counters `Counters::FIELDS` lists.
        pub const COUNTER_FIELDS: usize = [$(stringify!($field)),+].len();
    };
}

counters! {
    rx_packets => "rx_packets", "Frames received by the workers (from their sockets or handed in by another worker).";
    rx_bytes => "rx_bytes", "Bytes received by the workers.";
    forwarded => "forwarded_packets", "Frames the pipeline sent to an interface (each then counts as transmitted or as a transmit-side drop).";
    tx_packets => "tx_packets", "Frames queued on a transmit ring.";
    tx_bytes => "tx_bytes", "Bytes queued on a transmit ring.";
    passed => "passed_packets", "Frames handed to the host's network stack.";
    rejected => "rejected_packets", "Frames answered with a crafted TCP RST or ICMP port unreachable.";
    icmp_errors_translated => "icmp_errors_translated", "ICMP errors about a tracked flow, translated through its NAT.";
    icmp_errors_sent => "icmp_errors_sent", "ICMP time exceeded and fragmentation needed sent by the dataplane.";
    icmp_rate_limited => "icmp_rate_limited", "ICMP errors the dataplane did not send because of the per-destination rate limit.";
    fragments_translated => "fragments_translated", "IPv4 fragments after the first given their datagram's translation on arrival.";
    fragments_held => "fragments_held", "IPv4 fragments kept to wait for their datagram's first fragment.";
    fragments_released => "fragments_released", "Waiting IPv4 fragments sent on once their first fragment was translated.";
    fragments_cut => "fragments_cut", "IPv4 fragments cut from frames too big for the overlay (DF clear).";
    decapsulated => "decapsulated_packets", "VXLAN frames decapsulated.";
    encapsulated => "encapsulated_packets", "Frames VXLAN-encapsulated.";
    flow_hits => "flow_hits", "Frames that matched a flow in the flow table.";
    flows_created => "flows_created", "Flows created.";
    flow_evictions => "flow_evictions", "Flows evicted from the flow table to admit new ones.";
    flows_flushed => "flows_flushed", "Flows flushed because their backend left the Service.";
    masqueraded => "masqueraded_flows", "New flows source-NATed to an address of the node.";
    tuple_clashes => "tuple_clashes", "New flows given another source port because a live flow had their reply tuple.";
    tuple_reuses => "tuple_reuses", "New flows that took the reply tuple of a closed or expired flow.";
    handed_off => "handed_off", "Frames the pipeline handed to the worker that owns their flow.";
    handed_in => "handed_in", "Frames received from another worker (also counted in rx_packets).";
    dns_answered => "dns_answers", "Cluster DNS queries the workers answered with records (A, SRV, PTR, SOA).";
    dns_nodata => "dns_nodata", "Cluster DNS queries the workers answered NOERROR without records (the name exists, not with that type).";
    dns_nxdomain => "dns_nxdomain", "Cluster DNS queries the workers answered NXDOMAIN (a name under the cluster domain that does not exist).";
    dns_forwarded => "dns_forwarded", "Queries to the cluster DNS address the workers did not answer: sent on to the DNS Service's backends.";
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

    /// Every counter with its value, then every drop reason with its count.
    pub fn fields(&self) -> impl Iterator<Item = (CounterField, u64)> {
        Self::FIELDS.into_iter().zip(self.values())
    }

    /// Every drop reason with its count.
    pub fn drop_counts(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.into_iter().map(|r| (r, self.dropped(r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_reasons_listed_once_with_unique_names() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "ALL must be in discriminant order");
            assert!(!r.help().is_empty());
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
    }

    #[test]
    fn fields_are_unique_and_follow_the_struct() {
        let mut names: Vec<_> = Counters::FIELDS.iter().map(|f| f.name).collect();
        let mut metrics: Vec<_> = Counters::FIELDS.iter().map(|f| f.metric).collect();
        names.sort();
        names.dedup();
        metrics.sort();
        metrics.dedup();
        assert_eq!(names.len(), COUNTER_FIELDS);
        assert_eq!(metrics.len(), COUNTER_FIELDS);
        let c = Counters {
            rx_packets: 1,
            handed_in: 2,
            ..Counters::default()
        };
        let got: Vec<_> = c.fields().filter(|(_, v)| *v > 0).collect();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0.name, got[0].1), ("rx_packets", 1));
        assert_eq!((got[1].0.name, got[1].1), ("handed_in", 2));
    }

    #[test]
    fn accumulate_sums_every_field() {
        let mut a = Counters::default();
        a.drop(DropReason::NoRoute);
        a.rx_packets = 3;
        a.flow_hits = 5;
        let mut b = a.clone();
        b.accumulate(&a);
        assert_eq!(b.rx_packets, 6);
        assert_eq!(b.flow_hits, 10);
        assert_eq!(b.dropped(DropReason::NoRoute), 2);
        assert_eq!(b.total_drops(), 2);
    }
}
