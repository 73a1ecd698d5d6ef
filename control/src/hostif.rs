//! The host interface: how the node's own processes (hostNetwork pods, the
//! kubelet's probes, `curl` on the node) reach Services through nodeplane. Their
//! packets never cross an XDP hook on receive, so the agent gives them one: a
//! veth pair in the node's namespace, `nph0` on the kernel's side and `nph1` on
//! nodeplane's (its XDP program and AF_XDP sockets, like a pod's host end), and
//! routes for the Service CIDRs and the frontend addresses (externalIPs,
//! LoadBalancer IPs) via a link-local gateway whose neighbour entry is `nph1`'s
//! MAC, with the node's IP as the source. nodeplane translates what arrives on
//! `nph1` like any other client's traffic and sends the replies back out of it,
//! so the kernel receives them on `nph0` as from the Service. kube-proxy's IPVS
//! mode owns a device in the same way (`kube-ipvs0`). The node's connections to
//! its own NodePorts never leave through a route: the steering's loopback
//! program hands them to `nph0` (`dataplane::io::steering`), and their replies,
//! from the node's own address, are accepted on `nph0` (`accept_local`).
//!
//! Owns the pair, its neighbour entry and its routes; removing `nph0` removes
//! all of them. Uses the CNI plugin's netlink helpers, each call on a thread of
//! its own (they run a runtime of their own, which may not start inside the
//! agent's). It may not touch any other interface or route.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::packet_route::route::{RouteProtocol, RouteScope};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use shared::{Ipv4Cidr, Mac};

use crate::cni::{set_tx_checksum, write_sysctl, CniError, Netlink};

/// The kernel's end of the pair: the routes point here.
pub const KERNEL_END: &str = "nph0";
/// nodeplane's end: the XDP program and AF_XDP sockets.
pub const NODEPLANE_END: &str = "nph1";
/// The routes' gateway: link-local, never answered, its neighbour entry
/// permanent (`nph1`'s MAC). Also the source of the node's connections to an
/// endpoint on its own address (the pipeline's `HOST_LINK_ADDR`), so it has a
/// route of its own via `nph0`.
pub const GATEWAY: Ipv4Addr = dataplane::pipeline::HOST_LINK_ADDR;

/// The metric of nodeplane's routes: its own, so replacing one never
/// replaces a route of the same prefix someone else installed (metric 0
/// usually), which then keeps precedence.
const ROUTE_METRIC: u32 = 95;

/// The pair as the agent and the tables need it.
#[derive(Debug)]
pub struct HostInterface {
    /// `nph1`: where nodeplane receives the node's traffic and sends replies.
    pub ifindex: u32,
    /// `nph1`'s MAC: the source of frames nodeplane sends the kernel.
    pub mac: Mac,
    /// `nph0`'s MAC: their destination.
    pub kernel_mac: Mac,
    /// `nph0`: where the loopback program sends the node's NodePort packets.
    pub kernel_ifindex: u32,
    /// The pair's MTU.
    pub mtu: u32,
    routes: Mutex<BTreeSet<Ipv4Cidr>>,
}

fn mac_of(v: &[u8]) -> Mac {
    let mut m = [0u8; 6];
    for (d, s) in m.iter_mut().zip(v) {
        *d = *s;
    }
    m
}

/// Runs `f` with a netlink connection on a thread of its own.
fn with_netlink<T: Send>(
    f: impl FnOnce(&Netlink) -> Result<T, CniError> + Send,
) -> Result<T, CniError> {
    std::thread::scope(|s| {
        s.spawn(|| f(&Netlink::open()?))
            .join()
            .unwrap_or_else(|_| Err(CniError::Check("the netlink thread panicked".into())))
    })
}

impl HostInterface {
    /// Creates the pair (replacing one a previous agent left), with `mtu` (the
    /// pods' MTU: what nodeplane sends on may be encapsulated), both ends up,
    /// no tx checksum offload (nodeplane reads the checksums the kernel
    /// writes), no reverse-path filter on `nph0` (replies come from Service
    /// addresses), and the gateway's neighbour entry.
    pub fn create(mtu: u32) -> Result<HostInterface, CniError> {
        with_netlink(|nl| {
            nl.delete_link(KERNEL_END)?;
            let peer = LinkMessageBuilder::<LinkUnspec>::new()
                .name(NODEPLANE_END)
                .mtu(mtu)
                .build();
            let pair = LinkVeth::new(KERNEL_END, NODEPLANE_END)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .mtu(mtu)
                .build();
            nl.run(
                format!("creating the veth pair {KERNEL_END} / {NODEPLANE_END}"),
                nl.handle.link().add(pair).execute(),
            )?;
            let made = Self::configure(nl, mtu);
            if made.is_err() {
                // Half set up: not left behind.
                let _ = nl.delete_link(KERNEL_END);
            }
            made
        })
    }

    /// `create` once the pair exists.
    fn configure(nl: &Netlink, mtu: u32) -> Result<HostInterface, CniError> {
        {
            let find = |name: &str| {
                nl.link(name)?
                    .ok_or_else(|| CniError::Check(format!("{name} vanished")))
            };
            let (k, n) = (find(KERNEL_END)?, find(NODEPLANE_END)?);
            nl.set_up(KERNEL_END, k.ifindex)?;
            nl.set_up(NODEPLANE_END, n.ifindex)?;
            set_tx_checksum(KERNEL_END, false)?;
            set_tx_checksum(NODEPLANE_END, false)?;
            write_sysctl(&format!("net/ipv4/conf/{KERNEL_END}/rp_filter"), "0")?;
            // The replies to the node's connections to its own NodePorts come
            // from the node's own address.
            write_sysctl(&format!("net/ipv4/conf/{KERNEL_END}/accept_local"), "1")?;
            // With localhost NodePorts, from 127.0.0.1 (only nodeplane sends
            // on nph0's wire: the hole kube-proxy's iptables mode opens with
            // route_localnet on every interface stays shut elsewhere).
            write_sysctl(&format!("net/ipv4/conf/{KERNEL_END}/route_localnet"), "1")?;
            // What arrives on nph1 while no socket takes it (the agent was
            // killed) is dropped, never routed back out of nph0 in a loop.
            write_sysctl(&format!("net/ipv4/conf/{NODEPLANE_END}/forwarding"), "0")?;
            nl.run(
                format!("adding the neighbour entry for {GATEWAY} on {KERNEL_END}"),
                nl.handle
                    .neighbours()
                    .add(k.ifindex, GATEWAY.into())
                    .link_layer_address(&n.mac)
                    .replace()
                    .execute(),
            )?;
            // `ip route replace 169.254.42.1/32 dev nph0 scope link`
            let link = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(GATEWAY, 32)
                .output_interface(k.ifindex)
                .scope(RouteScope::Link)
                .protocol(RouteProtocol::Static)
                .build();
            nl.run(
                format!("adding the route to {GATEWAY} via {KERNEL_END}"),
                nl.handle.route().add(link).replace().execute(),
            )?;
            Ok(HostInterface {
                ifindex: n.ifindex,
                mac: mac_of(&n.mac),
                kernel_mac: mac_of(&k.mac),
                kernel_ifindex: k.ifindex,
                mtu,
                routes: Mutex::new(BTreeSet::new()),
            })
        }
    }

    /// Makes the routes via the pair exactly `want`, each with `src` as the
    /// source the kernel picks. Routes added first, stale ones removed after.
    pub fn set_routes(
        &self,
        want: &BTreeSet<Ipv4Cidr>,
        src: Option<Ipv4Addr>,
    ) -> Result<(), CniError> {
        let mut have = crate::state::lock(&self.routes);
        if *have == *want {
            return Ok(());
        }
        let kernel_ifindex = self.kernel_ifindex;
        let route = |c: &Ipv4Cidr| {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(c.network(), c.prefix_len())
                .gateway(GATEWAY)
                .output_interface(kernel_ifindex)
                .onlink()
                .priority(ROUTE_METRIC)
                .protocol(RouteProtocol::Static);
            if let Some(ip) = src {
                b = b.pref_source(ip);
            }
            b.build()
        };
        let stale: Vec<Ipv4Cidr> = have.difference(want).copied().collect();
        // What is in place afterwards, also when a request failed half way
        // (the caller tries again).
        let (installed, result) = with_netlink(|nl| {
            let mut installed = have.clone();
            for c in want {
                if let Err(e) = nl.run(
                    format!("adding the route to {c} via {KERNEL_END}"),
                    nl.handle.route().add(route(c)).replace().execute(),
                ) {
                    return Ok((installed, Err(e)));
                }
                installed.insert(*c);
            }
            for c in &stale {
                // Gone already (the interface was reset): fine.
                let _ = nl.run(
                    format!("removing the route to {c}"),
                    nl.handle.route().del(route(c)).execute(),
                );
                installed.remove(c);
            }
            Ok((installed, Ok(())))
        })?;
        *have = installed;
        result
    }

    /// Removes the pair, and with `nph0` its neighbour entry and routes.
    pub fn remove() -> Result<(), CniError> {
        with_netlink(|nl| nl.delete_link(KERNEL_END))
    }
}
