//! Stage 4, service: kube-proxy's contract for a new flow to a frontend
//! (ClusterIP, externalIP, LoadBalancer IP, NodePort). loadBalancerSourceRanges,
//! no usable endpoint (reject: a TCP RST or ICMP port unreachable built with
//! smoltcp's wire representations), externalTrafficPolicy and
//! internalTrafficPolicy Local, ClientIP affinity or Maglev for the backend,
//! and whether the flow is masqueraded (hairpin; external traffic to another
//! node). Reads the snapshot and the worker's affinity table; the new flow it
//! decides is inserted by stage 5; it may not write the flow table.

use shared::counters::DropReason;
use shared::snapshot::{Frontend, FrontendKind, MasqueradeMode, Snapshot};
use shared::wire::ipv4::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use shared::wire::l4::ICMP_DST_UNREACHABLE;
use shared::wire::{
    EthernetHeader, IpAddress, IpProtocol, TcpControl, TcpHeader, TcpPacket, TcpRepr, TcpSeqNumber,
    ETH_HLEN,
};

use super::nat::{self, NewFlow};
use super::{flow_hash, icmp, Ctx, Parsed, HOST_LINK_ADDR};
use crate::flow::{tcp_flags, FlowKey, FlowMeta, Rewrite};
use crate::frame::{Frame, Verdict};

/// What the service stage made of a new flow.
pub(super) enum Decision {
    /// Dropped or rejected: no flow.
    Done(Verdict),
    Flow(NewFlow),
}

/// For a frame no flow-table tag matched (most likely a new flow): if it goes
/// to a frontend, hints the CPU to load what `decide` will read, the Service
/// port's Maglev entry for this flow and its backends, so that with thousands
/// of Services those misses overlap across the batch.
#[inline]
pub(super) fn prefetch(p: &mut Parsed, snap: &Snapshot) {
    let key = p.key;
    if !p.has_ports() {
        return;
    }
    p.frontend = snap.frontend(key.dst, key.proto, key.dport);
    let Some(sp) = p.frontend.and_then(|fe| snap.service_port(fe.service_port)) else {
        return;
    };
    snap.maglev.prefetch(&sp.maglev, flow_hash(&key));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is only a hint; the pointer is the vector's own buffer
    // (dangling but never dereferenced when it is empty).
    unsafe {
        core::arch::x86_64::_mm_prefetch(
            sp.backends.as_ptr().cast::<i8>(),
            core::arch::x86_64::_MM_HINT_T0,
        );
    }
}

/// A new flow to frontend `fe`: drop, reject, or the flow to create (backend,
/// DNAT and SNAT).
pub(super) fn decide(cx: &mut Ctx<'_>, f: &mut Frame<'_>, p: &Parsed, fe: Frontend) -> Decision {
    let snap = cx.snap;
    let key = p.key;
    let kind = fe.kind;
    let Some(sp) = snap.service_port(fe.service_port) else {
        return Decision::Done(Verdict::Drop(DropReason::NoRoute));
    };
    if key.proto == PROTO_UDP
        && key.dport == super::dns::DNS_PORT
        && kind == FrontendKind::ClusterIp
    {
        if let Some(t) = snap.dns.as_ref().filter(|t| t.server == key.dst) {
            if let Some(v) = super::dns::answer(cx, f, p, t) {
                return Decision::Done(v);
            }
            cx.c.dns_forwarded += 1;
        }
    }
    if kind == FrontendKind::LoadBalancer
        && !sp.source_ranges.is_empty()
        && !sp.source_ranges.iter().any(|r| r.contains_u32(key.src))
        // The Service's own LoadBalancer IPs are allowed too, as kube-proxy
        // allows them (the node sending from an LB IP it holds).
        && !snap
            .frontend(key.src, key.proto, key.dport)
            .is_some_and(|f| f.kind == FrontendKind::LoadBalancer && f.service_port == fe.service_port)
    {
        return Decision::Done(Verdict::Drop(DropReason::SourceRangeDenied));
    }
    let from_host = from_host(snap, f);
    if kind == FrontendKind::NodePort
        && shared::snapshot::is_loopback(key.dst)
        && !(from_host && shared::snapshot::is_loopback(key.src))
    {
        // localhostNodePorts serve the node's own loopback connections only.
        return Decision::Done(Verdict::Drop(DropReason::LoopbackNotFromNode));
    }
    if sp.backends.is_empty() {
        return Decision::Done(reject(cx, f, p));
    }
    let rules = &snap.spec.masquerade;
    let from_cluster = rules.local.is_local(key.src, f.ifindex);
    // eTP=Local applies to traffic from outside; the cluster's pods (as the
    // local-traffic detector tells them) reaching an external frontend use the
    // cluster-wide set, unmasqueraded, as kube-proxy does.
    let local_only = if kind.is_external() {
        // The node itself uses the cluster-wide set (kube-proxy: "fib saddr
        // type local" goes to the cluster policy, masqueraded).
        sp.external_local && !from_cluster && !from_host
    } else {
        sp.internal_local
    };
    let table = if local_only {
        match &sp.maglev_local {
            Some(m) if sp.local_backends > 0 => m,
            _ => return Decision::Done(Verdict::Drop(DropReason::NoLocalEndpoint)),
        }
    } else {
        &sp.maglev
    };
    let mut chosen = None;
    if sp.affinity_timeout_secs.is_some() {
        if let Some((ip, port)) = cx.flows.affinity.get(key.src, sp.stable_id, cx.now) {
            let set = if local_only {
                &sp.backends[..]
            } else {
                sp.cluster_set()
            };
            chosen = set
                .iter()
                .find(|b| u32::from(b.ip) == ip && b.port == port && (b.local || !local_only))
                .copied();
        }
    }
    let backend = match chosen {
        Some(b) => b,
        None => match snap
            .maglev
            .lookup(table, flow_hash(&key))
            .and_then(|i| sp.backends.get(usize::from(i)))
        {
            Some(b) => *b,
            None => return Decision::Done(Verdict::Drop(DropReason::NoLocalEndpoint)),
        },
    };
    let bip = u32::from(backend.ip);
    let mut rw = Rewrite {
        src: key.src,
        sport: key.sport,
        dst: bip,
        dport: backend.port,
    };
    let hairpin = bip == key.src;
    // An endpoint on the node's own address (the `kubernetes` Service on a
    // control-plane node) is the kernel's, reached through the host
    // interface: masqueraded to its link address, so the kernel's replies
    // come back through nph1 to be restored.
    let to_kernel = snap.node().host_if.is_some() && snap.is_own_ip(bip);
    // The node's own connections are always masqueraded: their replies must
    // come back through nodeplane (to the overlay address) to be restored.
    let masq = hairpin
        || from_host
        || to_kernel
        || if kind.is_external() {
            // eTP=Cluster: always (kube-proxy), or toward another node only.
            !sp.external_local && (rules.mode == MasqueradeMode::KubeProxy || !backend.local)
        } else {
            // masqueradeAll, or a ClusterIP reached from outside the cluster.
            rules.all || (rules.local.is_implemented() && !from_cluster)
        };
    if key.proto == PROTO_SCTP && p.is_first_fragment() && (masq || backend.port != key.dport) {
        // Its CRC32c cannot be fixed in a fragment (`rewrite::apply`): no
        // flow, affinity or masquerade port for a datagram that cannot pass.
        return Decision::Done(Verdict::Drop(DropReason::SctpFragment));
    }
    if let Some(t) = sp.affinity_timeout_secs {
        cx.flows
            .affinity
            .set(key.src, sp.stable_id, (bip, backend.port), t, cx.now);
    }
    if masq {
        let node = snap.node();
        let pod_backend = snap.in_local_pod_cidr(bip) || snap.remote_route(bip).is_some();
        let src = if to_kernel {
            Some(HOST_LINK_ADDR)
        } else if from_host && !pod_backend {
            // To another node's address or off the cluster: from the
            // underlay address, whose replies come back over the uplink.
            node.underlay_ip.or(node.overlay_ip())
        } else {
            node.overlay_ip().or(node.underlay_ip)
        };
        let Some(ip) = src else {
            return Decision::Done(Verdict::Drop(DropReason::NoRoute));
        };
        rw.src = u32::from(ip);
        // The client's own port may be kept only on the overlay address: on
        // one of the node's addresses the reply must come to a masquerade
        // port for the XDP program to steer it (and not collide with the
        // kernel's own sockets).
        let keep = ip == node.overlay_ip().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)
            || ip == HOST_LINK_ADDR;
        let Some(port) = nat::pick_port(cx, &key, &rw, keep) else {
            return Decision::Done(Verdict::Drop(DropReason::NoMasqueradePort));
        };
        rw.sport = port;
        cx.c.masqueraded += 1;
    }
    // A client that reached a frontend over the uplink: remember its MAC for
    // the replies (the kernel may not have it as a neighbour yet).
    let client_mac = if from_host {
        // The node itself: its replies go back out of the host interface, to
        // the kernel's end (`route::route`).
        snap.node().host_if.map(|h| h.mac)
    } else {
        (!p.decapped && f.ifindex == snap.node().uplink_ifindex)
            .then(|| EthernetHeader::new_checked(f.data()).map(|e| e.src()))
            .flatten()
            .filter(|m| m != &[0; 6] && m[0] & 1 == 0)
    };
    let meta = FlowMeta {
        backend: Some((bip, backend.port)),
        snat: masq,
        client_mac,
    };
    Decision::Flow(NewFlow { rw, meta })
}

/// Did the frame come from the node itself, through the host interface?
#[inline]
fn from_host(snap: &Snapshot, f: &Frame<'_>) -> bool {
    snap.node()
        .host_if
        .is_some_and(|h| h.host_ifindex == f.ifindex)
}

/// Whether a new flow to `fe` may be masqueraded (`decide`'s rule before the
/// backend is known), for the batch driver: such a flow picks its port against
/// the table, so it waits for the flows decided before it.
pub(super) fn may_masquerade(snap: &Snapshot, f: &Frame<'_>, p: &Parsed, fe: Frontend) -> bool {
    let key = p.key;
    let rules = &snap.spec.masquerade;
    fe.kind.is_external()
        || from_host(snap, f)
        || snap.is_backend_ip(key.src)
        || (snap.node().host_if.is_some()
            && snap
                .service_port(fe.service_port)
                .is_some_and(|sp| sp.backend_on_node))
        || rules.all
        || (rules.local.is_implemented() && !rules.local.is_local(key.src, f.ifindex))
}

/// A Service with no usable endpoint rejects, as kube-proxy does, and so does
/// a ClusterIP on a port none of its Service's ports has: a TCP RST for TCP,
/// ICMP port unreachable otherwise, answered from the frontend address to the
/// sender (back over the overlay when the client is on another node).
pub(super) fn reject(cx: &mut Ctx<'_>, f: &mut Frame<'_>, p: &Parsed) -> Verdict {
    let key = p.key;
    let l4 = f.data().get(p.l4()..).unwrap_or_default();
    let v = if key.proto == PROTO_TCP {
        let Ok(t) = TcpHeader::new_checked(l4) else {
            return Verdict::Drop(DropReason::MalformedL4);
        };
        if t.flags() & tcp_flags::RST != 0 {
            // Never answer a reset with a reset.
            return Verdict::Drop(DropReason::NoRoute);
        }
        let (flags, seq, ack, hlen, seg_len) =
            (t.flags(), t.seq(), t.ack(), t.header_len(), l4.len());
        icmp::answer(cx, f, p, key.dst, IpProtocol::Tcp, |_, body| {
            emit_rst(flags, seq, ack, seg_len.saturating_sub(hlen), &key, body)
        })
    } else {
        // The quote: the IP header and the first 8 bytes of its payload.
        let ihl = usize::from(p.ihl);
        icmp::answer(cx, f, p, key.dst, IpProtocol::Icmp, |d, body| {
            let ip = d.get(ETH_HLEN..).unwrap_or_default();
            let quote = &ip[..(ihl + 8).min(ip.len())];
            icmp::emit_error(
                ICMP_DST_UNREACHABLE,
                icmp::CODE_PORT_UNREACHABLE,
                [0; 4],
                quote,
                body,
            )
        })
    };
    if !matches!(v, Verdict::Drop(_)) {
        cx.c.rejected += 1;
    }
    v
}

/// The RST answering a TCP segment (its `flags`, `seq`, `ack` and `data`
/// bytes) of flow `key`, after RFC 793: for a segment with ACK, SEQ = its ACK;
/// otherwise RST|ACK acknowledging it. Written into `body`; returns its length.
fn emit_rst(flags: u8, seq: u32, ack: u32, data: usize, key: &FlowKey, body: &mut [u8]) -> usize {
    let seg = u32::try_from(data).unwrap_or(u32::MAX)
        + u32::from(flags & tcp_flags::SYN != 0)
        + u32::from(flags & tcp_flags::FIN != 0);
    let (seq, ack) = if flags & tcp_flags::ACK != 0 {
        (ack, None)
    } else {
        (0, Some(seq.wrapping_add(seg)))
    };
    let repr = TcpRepr {
        src_port: key.dport,
        dst_port: key.sport,
        control: TcpControl::Rst,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let len = repr.buffer_len();
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut body[..len]),
        &IpAddress::Ipv4(key.dst.into()),
        &IpAddress::Ipv4(key.src.into()),
        &Default::default(),
    );
    len
}
