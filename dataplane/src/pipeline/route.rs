//! Stage 7, route + encap: where a (rewritten) packet goes. A local pod (its
//! host interface and MAC), a remote node's pod CIDR (VXLAN encapsulation,
//! flannel-compatible, towards that node's underlay address), the node itself
//! (pass to the kernel), or off the cluster (out of the uplink to the neighbour
//! or the gateway). Reads the snapshot; writes only the frame (MACs, the outer
//! headers it prepends).

use shared::counters::DropReason;
use shared::snapshot::RemoteHop;
use shared::wire::ethernet::ETHERTYPE_IPV4;
use shared::wire::ipv4::PROTO_UDP;
use shared::wire::{
    EthernetHeader, Ipv4Header, UdpHeader, VxlanPacket, VxlanRepr, ETH_HLEN, IPV4_HLEN, UDP_HLEN,
    VXLAN_OVERHEAD,
};

use std::net::Ipv4Addr;

use super::{flow_hash, fragment, icmp, Ctx, Parsed};
use crate::flow::FlowKey;
use crate::frame::{Frame, Verdict};

/// Outer UDP source ports for VXLAN, as Linux's vxlan driver picks them.
const VXLAN_SPORT_RANGE: (u16, u16) = (32768, 60999);

/// Routes a packet whose tuple is now `out` (`p` is what classify saw of it);
/// `fallback_mac` is the L2 destination for an off-cluster destination the
/// snapshot has no neighbour for (the MAC a client's first packet came from).
#[inline]
pub(super) fn route(
    cx: &mut Ctx<'_>,
    f: &mut Frame<'_>,
    p: &Parsed,
    out: &FlowKey,
    fallback_mac: Option<[u8; 6]>,
) -> Verdict {
    let snap = cx.snap;
    let dst = out.dst;
    if let Some(pod) = snap.local_pod_hop(dst) {
        set_macs(f, &pod.mac, &pod.host_mac);
        return Verdict::Tx {
            ifindex: pod.host_ifindex,
        };
    }
    if let Some(remote) = snap.remote_route(dst) {
        return encap(cx, f, p, out, remote);
    }
    let own = snap.node();
    if snap.is_own_ip(dst)
        || own.overlay_ip().is_some_and(|o| u32::from(o) == dst)
        || shared::snapshot::is_loopback(dst)
    {
        // A reply to the node's own connection to a Service, restored (its
        // flow's client MAC is the host interface's kernel end; 127.0.0.0/8
        // for a localhost NodePort's), or a
        // connection to an endpoint on the node's own address (masqueraded
        // to the host link address): out of the host interface, to the
        // kernel. Anything else to the node's addresses is the kernel's,
        // never sent to it by nodeplane.
        // (The second: nodeplane wrote that source; a frame that arrived
        // with it is a forgery and stays out of the kernel.)
        let link = u32::from(super::HOST_LINK_ADDR);
        let to_kernel = fallback_mac.is_some_and(|m| own.host_if.is_some_and(|h| h.mac == m))
            || (out.src == link && p.key.src != link);
        return match own.host_if {
            Some(h) if to_kernel => {
                set_macs(f, &h.mac, &h.host_mac);
                Verdict::Tx {
                    ifindex: h.host_ifindex,
                }
            }
            _ => Verdict::Pass,
        };
    }
    if snap.in_local_pod_cidr(dst) {
        return Verdict::Drop(DropReason::NoRoute);
    }
    // Off-cluster: out of the uplink to the neighbour or the gateway.
    let mac = snap
        .neighbor(dst)
        .or(fallback_mac)
        .or_else(|| snap.spec.gateway.and_then(|g| snap.neighbor(u32::from(g))));
    let Some(mac) = mac else {
        return Verdict::Drop(DropReason::NoNeighbor);
    };
    set_macs(f, &mac, &own.uplink_mac);
    Verdict::Tx {
        ifindex: own.uplink_ifindex,
    }
}

/// Writes the Ethernet destination and source.
#[inline(always)]
fn set_macs(f: &mut Frame<'_>, dst: &[u8; 6], src: &[u8; 6]) {
    if let Some(mut e) = EthernetHeader::new_mut(f.data_mut()) {
        e.set_dst(dst);
        e.set_src(src);
    }
}

/// The outer UDP source port for the inner flow `out`, as Linux's vxlan driver
/// spreads them.
#[inline]
pub(super) fn vxlan_sport(out: &FlowKey) -> u16 {
    let (lo, hi) = VXLAN_SPORT_RANGE;
    let span = u64::from(hi - lo + 1);
    lo + u16::try_from(flow_hash(out) % span).unwrap_or(0)
}

/// VXLAN encapsulation towards a remote node, as flannel's vxlan device does
/// it: inner destination MAC the node's VTEP, outer UDP source port a hash of
/// the inner flow, destination port and VNI from the snapshot. A frame the
/// uplink's MTU cannot carry once encapsulated gets ICMP fragmentation needed
/// back (DF set) or is cut into fragments (`fragment::cut`).
fn encap(
    cx: &mut Ctx<'_>,
    f: &mut Frame<'_>,
    p: &Parsed,
    out: &FlowKey,
    remote: RemoteHop<'_>,
) -> Verdict {
    let snap = cx.snap;
    let own = snap.node();
    let node = remote.node;
    let Some(src_ip) = own.underlay_ip else {
        return Verdict::Drop(DropReason::NoRoute);
    };
    let Some(next_hop) = remote.next_hop else {
        return Verdict::Drop(DropReason::NoNeighbor);
    };
    let mtu = own.uplink_mtu as usize;
    if mtu != 0 && f.len() + VXLAN_OVERHEAD - ETH_HLEN > mtu {
        if let Some(v) = too_big(cx, f, p, out, &remote, mtu) {
            return v;
        }
    }
    set_macs(f, &node.vtep_mac, &own.vtep_mac);
    let inner_len = f.len();
    if !f.push(VXLAN_OVERHEAD) {
        return Verdict::Drop(DropReason::TooBig);
    }
    let sport = vxlan_sport(out);
    let Some(outer) = f.data_mut().first_chunk_mut::<VXLAN_OVERHEAD>() else {
        return Verdict::Drop(DropReason::TooBig);
    };
    if !write_outer(
        outer,
        snap,
        &next_hop,
        src_ip,
        node.underlay_ip,
        sport,
        inner_len,
    ) {
        return Verdict::Drop(DropReason::TooBig);
    }
    cx.c.encapsulated += 1;
    Verdict::Tx {
        ifindex: own.uplink_ifindex,
    }
}

/// A frame the uplink's MTU (`mtu`) cannot carry once encapsulated: ICMP
/// fragmentation needed back to the sender (DF set), or cut into fragments
/// that wait in the fragment table (`fragment::cut`). `None`: it is sent
/// whole after all (`cut` declined it). Out of line, so `route`, which every
/// packet takes, does not pay this path's registers.
#[cold]
#[inline(never)]
fn too_big(
    cx: &mut Ctx<'_>,
    f: &mut Frame<'_>,
    p: &Parsed,
    out: &FlowKey,
    remote: &RemoteHop<'_>,
    mtu: usize,
) -> Option<Verdict> {
    let inner_mtu = mtu.saturating_sub(VXLAN_OVERHEAD);
    let df = Ipv4Header::new_checked(f.data().get(ETH_HLEN..).unwrap_or_default())
        .is_ok_and(|ip| ip.dont_frag());
    if df {
        return Some(icmp::frag_needed(
            cx,
            f,
            p,
            out,
            u16::try_from(inner_mtu).unwrap_or(u16::MAX),
        ));
    }
    fragment::cut(cx, f, out, remote, inner_mtu)
}

/// Writes the 50 outer bytes of a VXLAN frame carrying an `inner_len`-byte
/// inner frame: Ethernet to the next hop, IPv4 (no options, no fragmentation,
/// TTL 64), UDP without a checksum (as Linux's vxlan sends it by default),
/// VXLAN with the snapshot's VNI. False when the frame is too long for IPv4.
pub(super) fn write_outer(
    outer: &mut [u8; VXLAN_OVERHEAD],
    snap: &shared::snapshot::Snapshot,
    next_hop: &[u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    inner_len: usize,
) -> bool {
    let Ok(total) = u16::try_from(inner_len + VXLAN_OVERHEAD - ETH_HLEN) else {
        return false;
    };
    let own = snap.node();
    let overlay = snap.overlay();
    let (eth, rest) = outer.split_at_mut(ETH_HLEN);
    let (ip, rest) = rest.split_at_mut(IPV4_HLEN);
    let (udp, vx) = rest.split_at_mut(UDP_HLEN);
    if let Some(mut e) = EthernetHeader::new_mut(eth) {
        e.set_dst(next_hop);
        e.set_src(&own.uplink_mac);
        e.set_ethertype(ETHERTYPE_IPV4);
    }
    if let Some(mut h) = Ipv4Header::new_mut(ip) {
        h.emit(total, 0, 64, PROTO_UDP, u32::from(src), u32::from(dst));
    }
    if let Some(mut u) = UdpHeader::new_mut(udp) {
        u.set_src_port(sport);
        u.set_dst_port(overlay.port);
        u.set_len(total - 20);
        u.set_checksum(0);
    }
    VxlanRepr { vni: overlay.vni }.emit(&mut VxlanPacket::new_unchecked(vx));
    true
}
