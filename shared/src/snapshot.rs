//! The tables the workers run on. The control plane produces a `TableSpec`
//! (plain, comparable data: what Kubernetes says, already reduced) and
//! `Snapshot::build` derives the lookup structures from it (frontend maps, Maglev
//! tables, route tables). A `Snapshot` is immutable once built and shared behind
//! an `Arc`; workers only read it.

use std::net::Ipv4Addr;

use hashbrown::{HashMap, HashSet};

use crate::maglev::{Maglev, MaglevRef, MaglevTables, MaglevTablesBuilder};
use crate::net::{Ipv4Cidr, L4Proto, Mac};

/// Default Maglev table size (prime), as in Cilium.
pub const DEFAULT_MAGLEV_SIZE: u32 = 16381;
/// kube-proxy's default ClientIP affinity timeout.
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10800;

/// This node, as the dataplane needs to know it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeInfo {
    pub name: String,
    /// topology.kubernetes.io/zone of this node, for topology hints.
    pub zone: Option<String>,
    /// The uplink's IPv4 address: VXLAN source, masquerade address off-cluster.
    pub underlay_ip: Option<Ipv4Addr>,
    /// Every address of the node (its Node's InternalIPs and ExternalIPs,
    /// the uplink's): NodePorts answer on them (never 127.0.0.0/8) unless
    /// `nodeport_cidrs` narrows that.
    pub node_ips: Vec<Ipv4Addr>,
    /// kube-proxy's `nodePortAddresses`, resolved: NodePorts answer only on
    /// the node IPs inside these CIDRs ("primary": the primary IP as a /32).
    /// Empty: on every node IP.
    pub nodeport_cidrs: Vec<Ipv4Cidr>,
    /// kube-proxy iptables mode's `localhostNodePorts`: the node's own
    /// connections to a NodePort on 127.0.0.0/8 are proxied too (they come
    /// through the host interface; nftables kube-proxy never serves them).
    /// As kube-proxy's, only if `nodeport_cidrs` is empty or has a loopback
    /// CIDR, and then only on the loopback addresses inside it.
    pub localhost_nodeports: bool,
    /// This node's pod CIDR(s).
    pub pod_cidrs: Vec<Ipv4Cidr>,
    /// The uplink interface and its MAC (outer source MAC of encapsulated frames).
    pub uplink_ifindex: u32,
    pub uplink_mac: Mac,
    /// The uplink's MTU: an encapsulated frame must fit it (0: unknown, no check).
    pub uplink_mtu: u32,
    /// This node's VTEP MAC (inner source MAC of frames it encapsulates).
    pub vtep_mac: Mac,
    /// The host interface (`nph1`) through which the node's own processes
    /// reach Services, as a hop: its ifindex, the kernel end's MAC (`mac`,
    /// the destination) and its own (`host_mac`, the source). None: the
    /// node's traffic is not proxied.
    pub host_if: Option<PodHop>,
}

impl NodeInfo {
    /// The node's address inside the overlay, as flannel gives `flannel.1`: the
    /// network address of the first pod CIDR. Used as the masquerade source for
    /// traffic that stays in the cluster (NodePort to a remote backend, hairpin),
    /// so replies come back over the overlay.
    pub fn overlay_ip(&self) -> Option<Ipv4Addr> {
        self.pod_cidrs.first().map(|c| c.network())
    }
}

/// VXLAN parameters (flannel's defaults: VNI 1, port 8472).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverlayConfig {
    pub vni: u32,
    pub port: u16,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        OverlayConfig { vni: 1, port: 8472 }
    }
}

/// A pod on this node: where to send frames for its IP.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodRoute {
    pub ip: Ipv4Addr,
    /// The pod's own MAC (inside its namespace).
    pub mac: Mac,
    /// The host-side interface of its veth pair, and that interface's MAC.
    pub host_ifindex: u32,
    pub host_mac: Mac,
    /// namespace/name, for status output; may be empty.
    pub name: String,
}

/// Another node of the overlay.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RemoteNode {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub vtep_mac: Mac,
    pub pod_cidrs: Vec<Ipv4Cidr>,
}

/// One endpoint of a Service port as an EndpointSlice gives it, target port resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    /// `conditions.ready` (unset counts as true).
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// `hints.forZones`; `None` when the endpoint has no hints.
    pub hint_zones: Option<Vec<String>>,
}

impl EndpointSpec {
    /// A ready, serving endpoint with no zone or hints (as an EndpointSlice
    /// with unset conditions gives it).
    pub fn ready(ip: Ipv4Addr, port: u16, node_name: Option<&str>) -> Self {
        EndpointSpec {
            ip,
            port,
            node_name: node_name.map(str::to_string),
            zone: None,
            ready: true,
            serving: true,
            terminating: false,
            hint_zones: None,
        }
    }
}

/// One port of a Service with its endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServicePortSpec {
    /// The port's name ("" when unnamed).
    pub name: String,
    pub proto: L4Proto,
    pub port: u16,
    pub node_port: Option<u16>,
    pub endpoints: Vec<EndpointSpec>,
}

/// A Service reduced to what the dataplane needs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    pub cluster_ips: Vec<Ipv4Addr>,
    pub external_ips: Vec<Ipv4Addr>,
    pub load_balancer_ips: Vec<Ipv4Addr>,
    pub ports: Vec<ServicePortSpec>,
    /// `Some(timeout)` for sessionAffinity: ClientIP.
    pub affinity_timeout_secs: Option<u32>,
    /// externalTrafficPolicy: Local.
    pub external_local: bool,
    /// internalTrafficPolicy: Local.
    pub internal_local: bool,
    pub source_ranges: Vec<Ipv4Cidr>,
    pub health_check_node_port: Option<u16>,
}

/// Everything the control plane decides; `Snapshot::build` derives the rest.
/// Deterministic and comparable, so a resync that changes nothing can be detected.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TableSpec {
    pub node: NodeInfo,
    pub overlay: OverlayConfig,
    pub service_cidrs: Vec<Ipv4Cidr>,
    pub services: Vec<ServiceSpec>,
    pub local_pods: Vec<PodRoute>,
    pub remote_nodes: Vec<RemoteNode>,
    /// Underlay neighbours (IP → MAC) for the uplink.
    pub neighbors: Vec<(Ipv4Addr, Mac)>,
    /// Default gateway on the uplink, for off-cluster destinations.
    pub gateway: Option<Ipv4Addr>,
    /// Masquerade source-port range (inclusive), outside the kernel's ephemeral range.
    pub masquerade_ports: (u16, u16),
    /// Which new Service flows are masqueraded (kube-proxy's settings).
    pub masquerade: MasqueradeRules,
    /// Maglev table size (prime); 0 means the default.
    pub maglev_size: u32,
    /// Cluster DNS answered by the workers (None: every query goes to the
    /// DNS Service's backends).
    pub dns: Option<crate::dns::DnsSpec>,
    /// Headless Services (no ClusterIP), for their DNS names only.
    pub headless: Vec<crate::dns::HeadlessService>,
}

/// Which new Service flows get the node's address as their source, as
/// kube-proxy decides it (its `masqueradeAll` and `detectLocalMode`), or with
/// nodeplane's `RemoteOnly` variant. Hairpin flows (a backend reaching its own
/// Service) are always masqueraded.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MasqueradeRules {
    pub mode: MasqueradeMode,
    /// kube-proxy's `masqueradeAll`: every flow to a ClusterIP.
    pub all: bool,
    /// kube-proxy's local-traffic detector: which sources are the cluster's.
    pub local: LocalTraffic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MasqueradeMode {
    /// kube-proxy's decisions: traffic to a NodePort, externalIP or
    /// LoadBalancer IP of an externalTrafficPolicy=Cluster Service is always
    /// masqueraded; traffic to a ClusterIP from outside the cluster (per the
    /// detector) is.
    #[default]
    KubeProxy,
    /// nodeplane's earlier rule: external traffic of an eTP=Cluster Service
    /// is masqueraded only toward a backend on another node (a local backend
    /// sees the client's address, as with eTP=Local, and still replies
    /// through this node); the rest as `KubeProxy`.
    RemoteOnly,
}

/// kube-proxy's `detectLocalMode`, resolved by the control plane: which
/// traffic counts as coming from the cluster's pods.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum LocalTraffic {
    /// No detector (kube-proxy's ClusterCIDR mode without a cluster CIDR):
    /// ClusterIP traffic is never masqueraded for its source, and pods reach
    /// eTP=Local external addresses with the local policy.
    #[default]
    None,
    /// Sources inside these CIDRs (ClusterCIDR: the cluster's; NodeCIDR: this
    /// node's pod CIDRs).
    Cidrs(Vec<Ipv4Cidr>),
    /// Frames received on these interfaces (BridgeInterface,
    /// InterfaceNamePrefix: the pods' host interfaces that match).
    Interfaces(Vec<u32>),
}

impl LocalTraffic {
    /// kube-proxy's `IsImplemented`.
    pub fn is_implemented(&self) -> bool {
        !matches!(self, LocalTraffic::None)
    }

    /// Does a frame from `src`, received on `ifindex`, come from the cluster?
    pub fn is_local(&self, src: u32, ifindex: u32) -> bool {
        match self {
            LocalTraffic::None => false,
            LocalTraffic::Cidrs(cidrs) => cidrs.iter().any(|c| c.contains_u32(src)),
            LocalTraffic::Interfaces(ifs) => ifs.contains(&ifindex),
        }
    }
}

/// Which kind of address a frontend is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
}

impl FrontendKind {
    /// NodePort, externalIP and LoadBalancer traffic is "external" for eTP.
    pub fn is_external(self) -> bool {
        !matches!(self, FrontendKind::ClusterIp)
    }
}

/// A frontend address resolves to one service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub kind: FrontendKind,
    pub service_port: u32,
}

/// A backend the pipeline may choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// On this node.
    pub local: bool,
}

/// namespace/name:port-name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServicePortName {
    pub namespace: String,
    pub service: String,
    pub port: String,
}

impl std::fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}/{}", self.namespace, self.service)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.service, self.port)
        }
    }
}

/// A Service port with its usable backends and their Maglev tables.
#[derive(Clone, Debug)]
pub struct ServicePort {
    /// Index in `Snapshot::service_ports` (changes between generations).
    pub id: u32,
    /// Stable identity across generations (hash of namespace/name:port/proto),
    /// used for ClientIP affinity state that outlives a snapshot.
    pub stable_id: u64,
    pub name: ServicePortName,
    pub proto: L4Proto,
    pub port: u16,
    pub node_port: Option<u16>,
    /// Usable backends: first the cluster-wide set after §4 item 3 (ready,
    /// else serving+terminating; topology hints), `cluster_backends` of them;
    /// then, for a Local traffic policy, this node's endpoints that only the
    /// local set uses (serving+terminating ones when no local endpoint is
    /// ready but remote ones are: kube-proxy's `CategorizeEndpoints`).
    pub backends: Vec<Backend>,
    pub cluster_backends: u32,
    /// Maglev over the cluster-wide set (entries index `backends`), in `Snapshot::maglev`.
    pub maglev: MaglevRef,
    /// Maglev over the local ones only (entries index `backends`), built when a
    /// traffic policy is Local.
    pub maglev_local: Option<MaglevRef>,
    /// Endpoints in the local set (`maglev_local`).
    pub local_backends: u32,
    /// This node's ready endpoints (the health check node port's count, as
    /// kube-proxy's: terminating ones serve the local set but do not keep
    /// load balancers sending new traffic here).
    pub local_ready: u32,
    pub affinity_timeout_secs: Option<u32>,
    pub external_local: bool,
    pub internal_local: bool,
    pub source_ranges: Vec<Ipv4Cidr>,
    pub health_check_node_port: Option<u16>,
    /// How many endpoints the EndpointSlices listed before filtering.
    pub total_endpoints: u32,
    /// A usable backend is on one of the node's own addresses (the pipeline
    /// masquerades flows to it; set by `Snapshot::build`).
    pub backend_on_node: bool,
}

impl ServicePort {
    /// The cluster-wide set of `backends` (the Cluster traffic policy's).
    pub fn cluster_set(&self) -> &[Backend] {
        self.backends
            .get(..self.cluster_backends as usize)
            .unwrap_or(&self.backends)
    }
}

/// Key of the frontend map: destination IP, protocol number, destination port.
pub type FrontendKey = (u32, u8, u16);

/// Where the pipeline sends a frame for a local pod: the per-packet copy of a
/// `PodRoute` (16 bytes, no strings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodHop {
    pub mac: Mac,
    pub host_mac: Mac,
    pub host_ifindex: u32,
}

/// A remote node's route for the per-packet path: the node, and the MAC of its
/// underlay next hop when the neighbour table has it.
#[derive(Clone, Copy, Debug)]
pub struct RemoteHop<'a> {
    pub node: &'a RemoteNode,
    pub next_hop: Option<Mac>,
}

/// Local pods by IP, for the per-packet path: a direct-indexed array over this
/// node's first pod CIDR (prefixes /16 and longer), a hash map for pods outside it.
#[derive(Clone, Debug, Default)]
struct PodTable {
    net: u32,
    mask: u32,
    /// 0 = no pod, else index + 1 into `hops`; empty when no CIDR is indexed.
    slots: Box<[u32]>,
    others: HashMap<u32, u32>,
    hops: Vec<PodHop>,
    /// Distinct pod IPs (a later route for an IP replaces an earlier one).
    pods: usize,
}

/// The longest pod CIDR this table indexes directly (2^16 slots of 4 bytes).
const POD_TABLE_MIN_PREFIX: u8 = 16;

impl PodTable {
    fn build(cidr: Option<&Ipv4Cidr>, pods: &[PodRoute]) -> PodTable {
        let mut t = PodTable::default();
        if let Some(c) = cidr.filter(|c| c.prefix_len() >= POD_TABLE_MIN_PREFIX) {
            t.net = c.network_u32();
            t.mask = c.mask();
            t.slots = vec![0u32; 1usize << (32 - u32::from(c.prefix_len()))].into_boxed_slice();
        }
        // A later route for the same IP replaces an earlier one, as in the map
        // of routes.
        for p in pods {
            let ip = u32::from(p.ip);
            t.hops.push(PodHop {
                mac: p.mac,
                host_mac: p.host_mac,
                host_ifindex: p.host_ifindex,
            });
            let idx = u32::try_from(t.hops.len()).unwrap_or(u32::MAX);
            let slot = if t.slots.is_empty() || ip & t.mask != t.net {
                None
            } else {
                t.slots.get_mut(ip.wrapping_sub(t.net) as usize)
            };
            let new_ip = match slot {
                Some(s) => std::mem::replace(s, idx) == 0,
                None => t.others.insert(ip, idx).is_none(),
            };
            t.pods += usize::from(new_ip);
        }
        t
    }

    #[inline]
    fn get(&self, ip: u32) -> Option<&PodHop> {
        let idx = if ip & self.mask == self.net && !self.slots.is_empty() {
            self.slots.get(ip.wrapping_sub(self.net) as usize).copied()
        } else if self.others.is_empty() {
            None
        } else {
            self.others.get(&ip).copied()
        }?;
        self.hops.get((idx as usize).checked_sub(1)?)
    }
}

/// The immutable tables of one generation.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub spec: TableSpec,
    pub service_ports: Vec<ServicePort>,
    /// Every service port's Maglev tables (`ServicePort::maglev`, `maglev_local`).
    pub maglev: MaglevTables,
    /// How many of those tables this build computed (the others were copied
    /// from the snapshot it replaced).
    pub maglev_tables_built: usize,
    frontends: HashMap<FrontendKey, Frontend>,
    node_ports: HashMap<(u8, u16), u32>,
    /// The node IPs NodePorts answer on (`NodeInfo::nodeport_cidrs` applied).
    node_ips: Vec<u32>,
    /// NodePorts answer on 127.0.0.0/8 too (`NodeInfo::localhost_nodeports`,
    /// with a host interface to bring the node's connections in).
    localhost_nodeports: bool,
    /// The node's own addresses: node IPs and the underlay IP.
    own_ips: Vec<u32>,
    /// The cluster DNS name table (`TableSpec::dns`).
    pub dns: Option<crate::dns::DnsTable>,
    pod_hops: PodTable,
    /// Remote pod CIDRs grouped by prefix length, longest first: (mask,
    /// network → index into spec.remote_nodes).
    remote_routes: Vec<(u32, HashMap<u32, usize>)>,
    /// The underlay next hop's MAC of each remote node (same index).
    remote_next_hops: Vec<Option<Mac>>,
    neighbors: HashMap<u32, Mac>,
    live_backends: HashSet<(u32, u16, u8)>,
    /// The addresses of `live_backends`.
    backend_ips: HashSet<u32>,
    /// Every endpoint of every Service port (ip, port, protocol), whatever
    /// its conditions.
    endpoints: HashSet<(u32, u16, u8)>,
    /// Every Service's ClusterIPs (traffic to one on a port no Service
    /// port has is rejected, as kube-proxy's `cluster-ips` set does).
    cluster_ips: HashSet<u32>,
}

impl Snapshot {
    /// An empty snapshot (generation 0): nothing is programmed.
    pub fn empty() -> Self {
        Snapshot::build(TableSpec::default(), 0)
    }

    /// Derives every lookup structure from `spec`. Deterministic.
    pub fn build(spec: TableSpec, generation: u64) -> Self {
        Self::build_after(spec, generation, None)
    }

    /// `build`, copying from `prev` (the snapshot this one replaces) the Maglev
    /// tables of service ports whose usable backends and table size have not
    /// changed, instead of building them again: a table depends on nothing
    /// else, and with 10,000 Services rebuilding every table on each change
    /// took the control thread seconds.
    pub fn build_after(spec: TableSpec, generation: u64, prev: Option<&Snapshot>) -> Self {
        let plans = PortPlan::all(&spec, prev);
        let services = ServiceTables::build(&spec, plans, prev);
        let (node_ips, own_ips) = node_addresses(&spec.node);
        let dns = spec.dns.as_ref().map(|d| {
            crate::dns::DnsTable::build(
                d,
                u32::try_from(generation % (1 << 31)).unwrap_or(1),
                spec.services.iter().map(|s| crate::dns::DnsService {
                    namespace: &s.namespace,
                    name: &s.name,
                    cluster_ips: &s.cluster_ips,
                    ports: s
                        .ports
                        .iter()
                        .map(|p| (p.name.as_str(), p.proto, p.port))
                        .collect(),
                }),
                &spec.headless,
            )
        });
        let localhost_nodeports =
            spec.node.localhost_nodeports
                && spec.node.host_if.is_some()
                && (spec.node.nodeport_cidrs.is_empty()
                    || spec.node.nodeport_cidrs.iter().any(|c| {
                        is_loopback(u32::from(c.network())) || c.contains_u32(0x7f00_0000)
                    }));
        let mut services = services;
        for sp in &mut services.service_ports {
            sp.backend_on_node = sp
                .backends
                .iter()
                .any(|b| own_ips.contains(&u32::from(b.ip)));
        }
        let pod_hops = PodTable::build(spec.node.pod_cidrs.first(), &spec.local_pods);
        let remote_routes = remote_routes(&spec.remote_nodes);
        let neighbors: HashMap<u32, Mac> = spec
            .neighbors
            .iter()
            .map(|(ip, mac)| (u32::from(*ip), *mac))
            .collect();
        let remote_next_hops = spec
            .remote_nodes
            .iter()
            .map(|n| neighbors.get(&u32::from(n.underlay_ip)).copied())
            .collect();
        let backend_ips = services
            .live_backends
            .iter()
            .map(|&(ip, _, _)| ip)
            .collect();
        let endpoints = spec
            .services
            .iter()
            .flat_map(|s| &s.ports)
            .flat_map(|p| {
                p.endpoints
                    .iter()
                    .map(|e| (u32::from(e.ip), e.port, p.proto.number()))
            })
            .collect();
        let cluster_ips = spec
            .services
            .iter()
            .flat_map(|s| &s.cluster_ips)
            .map(|ip| u32::from(*ip))
            .collect();
        Snapshot {
            generation,
            spec,
            service_ports: services.service_ports,
            maglev: services.maglev,
            maglev_tables_built: services.built,
            frontends: services.frontends,
            node_ports: services.node_ports,
            localhost_nodeports,
            dns,
            node_ips,
            own_ips,
            pod_hops,
            remote_routes,
            remote_next_hops,
            neighbors,
            live_backends: services.live_backends,
            backend_ips,
            endpoints,
            cluster_ips,
        }
    }

    pub fn node(&self) -> &NodeInfo {
        &self.spec.node
    }

    pub fn overlay(&self) -> OverlayConfig {
        self.spec.overlay
    }

    /// The frontend for a destination, if any: ClusterIP/externalIP/LB IP first,
    /// then NodePort when the destination is one of this node's IPs.
    #[inline]
    pub fn frontend(&self, dst: u32, proto: u8, dport: u16) -> Option<Frontend> {
        if let Some(f) = self.frontends.get(&(dst, proto, dport)) {
            return Some(*f);
        }
        if self.node_ports.is_empty() || !self.is_nodeport_ip(dst) {
            return None;
        }
        self.node_ports.get(&(proto, dport)).map(|&id| Frontend {
            kind: FrontendKind::NodePort,
            service_port: id,
        })
    }

    #[inline]
    pub fn service_port(&self, id: u32) -> Option<&ServicePort> {
        self.service_ports.get(id as usize)
    }

    /// One of the node IPs NodePorts answer on.
    #[inline]
    pub fn is_nodeport_ip(&self, ip: u32) -> bool {
        self.node_ips.contains(&ip)
            || (self.localhost_nodeports && self.is_localhost_nodeport_ip(ip))
    }

    /// A loopback address NodePorts answer on: with localhostNodePorts, every
    /// one of 127.0.0.0/8, or those inside nodePortAddresses when it is set.
    #[cold]
    fn is_localhost_nodeport_ip(&self, ip: u32) -> bool {
        let cidrs = &self.spec.node.nodeport_cidrs;
        is_loopback(ip) && (cidrs.is_empty() || cidrs.iter().any(|c| c.contains_u32(ip)))
    }

    /// The node IPs NodePorts answer on (for the XDP program's steering).
    pub fn nodeport_ips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.node_ips.iter().map(|&ip| Ipv4Addr::from(ip))
    }

    /// A Service's ClusterIP (allocated), whatever the port.
    #[inline]
    pub fn is_cluster_ip(&self, ip: u32) -> bool {
        self.cluster_ips.contains(&ip)
    }

    /// Inside a Service CIDR (used to drop traffic to unallocated ClusterIPs).
    #[inline]
    pub fn in_service_cidr(&self, ip: u32) -> bool {
        self.spec.service_cidrs.iter().any(|c| c.contains_u32(ip))
    }

    /// Inside one of this node's pod CIDRs.
    #[inline]
    pub fn in_local_pod_cidr(&self, ip: u32) -> bool {
        self.spec.node.pod_cidrs.iter().any(|c| c.contains_u32(ip))
    }

    /// One of this node's own addresses: a node IP or the underlay IP.
    #[inline]
    pub fn is_own_ip(&self, ip: u32) -> bool {
        self.own_ips.contains(&ip)
    }

    /// Where frames for local pod `ip` go.
    #[inline]
    pub fn local_pod_hop(&self, ip: u32) -> Option<&PodHop> {
        self.pod_hops.get(ip)
    }

    /// The remote node whose pod CIDR holds `ip` (longest prefix), with the MAC
    /// of its underlay next hop.
    #[inline]
    pub fn remote_route(&self, ip: u32) -> Option<RemoteHop<'_>> {
        for (mask, nets) in &self.remote_routes {
            if let Some(&i) = nets.get(&(ip & mask)) {
                let node = self.spec.remote_nodes.get(i)?;
                return Some(RemoteHop {
                    node,
                    next_hop: self.remote_next_hops.get(i).copied().flatten(),
                });
            }
        }
        None
    }

    #[inline]
    pub fn neighbor(&self, ip: u32) -> Option<Mac> {
        self.neighbors.get(&ip).copied()
    }

    /// Is `ip` a usable backend of some Service port (any port, any protocol)?
    #[inline]
    pub fn is_backend_ip(&self, ip: u32) -> bool {
        self.backend_ips.contains(&ip)
    }

    /// Is `ip:port` still a usable backend of some Service port with this protocol?
    #[inline]
    pub fn backend_alive(&self, ip: u32, port: u16, proto: u8) -> bool {
        self.live_backends.contains(&(ip, port, proto))
    }

    /// Is `ip:port` an endpoint of some Service port with this protocol, usable
    /// or not (ready, serving, terminating or none)? Stays true while an
    /// endpoint turns unready, so flows keyed on it keep their worker.
    #[inline]
    pub fn is_endpoint(&self, ip: u32, port: u16, proto: u8) -> bool {
        self.endpoints.contains(&(ip, port, proto))
    }

    pub fn frontend_count(&self) -> usize {
        self.frontends.len() + self.node_ports.len() * self.node_ips.len()
    }

    pub fn local_pod_count(&self) -> usize {
        self.pod_hops.pods
    }
}

/// FNV-1a over namespace/name:port/proto: a service port's identity across generations.
pub fn stable_id(namespace: &str, name: &str, port: &str, proto: L4Proto) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in namespace
        .bytes()
        .chain([b'/'])
        .chain(name.bytes())
        .chain([b':'])
        .chain(port.bytes())
        .chain([b'/', proto.number()])
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Stable 64-bit identity of a backend for Maglev permutations.
pub fn backend_key(ip: Ipv4Addr, port: u16) -> u64 {
    (u64::from(u32::from(ip)) << 16) | u64::from(port)
}

/// One Service port's usable backends and whether its Maglev tables can be
/// copied from the running snapshot, worked out before any table is built so
/// the one array of tables is allocated at its final size.
struct PortPlan<'a> {
    backends: Vec<Backend>,
    cluster_len: usize,
    local_idx: Vec<u16>,
    wants_local: bool,
    stable_id: u64,
    /// The same port in the previous snapshot, when its tables still fit.
    reuse: Option<&'a ServicePort>,
    /// Entries of its tables (cluster-wide + local).
    entries: usize,
}

impl<'a> PortPlan<'a> {
    /// A plan per Service port, in spec order.
    fn all(spec: &TableSpec, prev: Option<&'a Snapshot>) -> Vec<PortPlan<'a>> {
        let maglev_size = if spec.maglev_size == 0 {
            DEFAULT_MAGLEV_SIZE
        } else {
            spec.maglev_size
        };
        let node_name = spec.node.name.as_str();
        let node_zone = spec.node.zone.as_deref();
        let reusable: HashMap<u64, &ServicePort> = prev
            .map(|p| {
                p.service_ports
                    .iter()
                    .map(|sp| (sp.stable_id, sp))
                    .collect()
            })
            .unwrap_or_default();
        let mut plans = Vec::new();
        for svc in &spec.services {
            let wants_local = svc.external_local || svc.internal_local;
            for p in &svc.ports {
                let mut backends = usable_backends(&p.endpoints, node_name, node_zone);
                let cluster_len = backends.len();
                let mut local_idx = Vec::new();
                if wants_local {
                    for b in local_backends(&p.endpoints, node_name) {
                        let i = match backends.iter().position(|c| c == &b) {
                            Some(i) => i,
                            None => {
                                backends.push(b);
                                backends.len() - 1
                            }
                        };
                        local_idx.push(u16::try_from(i).unwrap_or(u16::MAX));
                    }
                    local_idx.sort_unstable();
                }
                let size = Maglev::size_for(cluster_len, maglev_size);
                let local_size = if wants_local {
                    Maglev::size_for(local_idx.len(), maglev_size)
                } else {
                    0
                };
                let stable_id = stable_id(&svc.namespace, &svc.name, &p.name, p.proto);
                let reuse = reusable.get(&stable_id).copied().filter(|old| {
                    old.backends == backends
                        && old.cluster_backends as usize == cluster_len
                        && old.maglev.size() == size
                        && old.maglev_local.map(|m| m.size()) == wants_local.then_some(local_size)
                });
                plans.push(PortPlan {
                    backends,
                    cluster_len,
                    local_idx,
                    wants_local,
                    stable_id,
                    reuse,
                    entries: size + local_size,
                });
            }
        }
        plans
    }
}

/// Everything a snapshot holds per Service port: the ports, their Maglev
/// tables (one array), the frontends and NodePorts that lead to them, and the
/// usable backends.
struct ServiceTables {
    service_ports: Vec<ServicePort>,
    maglev: MaglevTables,
    /// Tables built (not copied from the previous snapshot).
    built: usize,
    frontends: HashMap<(u32, u8, u16), Frontend>,
    node_ports: HashMap<(u8, u16), u32>,
    live_backends: HashSet<(u32, u16, u8)>,
}

impl ServiceTables {
    fn build(spec: &TableSpec, plans: Vec<PortPlan<'_>>, prev: Option<&Snapshot>) -> Self {
        let maglev_size = if spec.maglev_size == 0 {
            DEFAULT_MAGLEV_SIZE
        } else {
            spec.maglev_size
        };
        let mut tables = MaglevTablesBuilder::with_capacity(plans.iter().map(|p| p.entries).sum());
        let mut built = 0usize;
        let mut plans = plans.into_iter();
        let mut service_ports = Vec::new();
        let mut frontends = HashMap::new();
        let mut node_ports = HashMap::new();
        let mut live_backends = HashSet::new();
        for svc in &spec.services {
            for p in &svc.ports {
                let Some(PortPlan {
                    backends,
                    cluster_len,
                    local_idx,
                    wants_local,
                    stable_id,
                    reuse,
                    entries: _,
                }) = plans.next()
                else {
                    break;
                };
                let id = u32::try_from(service_ports.len()).unwrap_or(u32::MAX);
                for b in &backends {
                    live_backends.insert((u32::from(b.ip), b.port, p.proto.number()));
                }
                let (maglev, maglev_local) = match (reuse, prev) {
                    (Some(old), Some(prev)) => (
                        tables.push_copy(&prev.maglev, &old.maglev),
                        old.maglev_local.map(|l| tables.push_copy(&prev.maglev, &l)),
                    ),
                    _ => {
                        built += 1 + usize::from(wants_local);
                        let keys: Vec<u64> = backends[..cluster_len]
                            .iter()
                            .map(|b| backend_key(b.ip, b.port))
                            .collect();
                        let maglev = tables.push(&Maglev::build(&keys, maglev_size));
                        let maglev_local = wants_local.then(|| {
                            let lkeys: Vec<u64> = local_idx
                                .iter()
                                .filter_map(|&i| backends.get(usize::from(i)))
                                .map(|b| backend_key(b.ip, b.port))
                                .collect();
                            tables.push(&Maglev::build(&lkeys, maglev_size).remap(&local_idx))
                        });
                        (maglev, maglev_local)
                    }
                };
                let proto = p.proto.number();
                let fe = |kind| Frontend {
                    kind,
                    service_port: id,
                };
                for ip in &svc.cluster_ips {
                    frontends.insert((u32::from(*ip), proto, p.port), fe(FrontendKind::ClusterIp));
                }
                for ip in &svc.external_ips {
                    frontends.insert(
                        (u32::from(*ip), proto, p.port),
                        fe(FrontendKind::ExternalIp),
                    );
                }
                for ip in &svc.load_balancer_ips {
                    frontends
                        .entry((u32::from(*ip), proto, p.port))
                        .or_insert(fe(FrontendKind::LoadBalancer));
                }
                if let Some(np) = p.node_port {
                    node_ports.insert((proto, np), id);
                }
                service_ports.push(ServicePort {
                    id,
                    stable_id,
                    name: ServicePortName {
                        namespace: svc.namespace.clone(),
                        service: svc.name.clone(),
                        port: p.name.clone(),
                    },
                    proto: p.proto,
                    port: p.port,
                    node_port: p.node_port,
                    local_backends: u32::try_from(local_idx.len()).unwrap_or(u32::MAX),
                    cluster_backends: u32::try_from(cluster_len).unwrap_or(u32::MAX),
                    local_ready: u32::try_from(
                        local_backends(
                            &p.endpoints
                                .iter()
                                .filter(|e| e.ready)
                                .cloned()
                                .collect::<Vec<_>>(),
                            &spec.node.name,
                        )
                        .len(),
                    )
                    .unwrap_or(u32::MAX),
                    backends,
                    maglev,
                    maglev_local,
                    affinity_timeout_secs: svc.affinity_timeout_secs,
                    external_local: svc.external_local,
                    internal_local: svc.internal_local,
                    source_ranges: svc.source_ranges.clone(),
                    health_check_node_port: svc.health_check_node_port,
                    total_endpoints: u32::try_from(p.endpoints.len()).unwrap_or(u32::MAX),
                    backend_on_node: false,
                });
            }
        }
        ServiceTables {
            service_ports,
            maglev: tables.finish(),
            built,
            frontends,
            node_ports,
            live_backends,
        }
    }
}

/// 127.0.0.0/8 (`ip` in host order).
#[inline]
pub fn is_loopback(ip: u32) -> bool {
    ip >> 24 == 127
}

/// The node's IPs NodePorts answer on (never loopback; those inside
/// `nodeport_cidrs` when it is set), and every address of the node (all node
/// IPs and the underlay IP), sorted.
fn node_addresses(node: &NodeInfo) -> (Vec<u32>, Vec<u32>) {
    let all: Vec<u32> = node
        .node_ips
        .iter()
        .filter(|ip| !ip.is_loopback())
        .map(|ip| u32::from(*ip))
        .collect();
    let node_ips: Vec<u32> = all
        .iter()
        .copied()
        .filter(|&ip| {
            node.nodeport_cidrs.is_empty() || node.nodeport_cidrs.iter().any(|c| c.contains_u32(ip))
        })
        .collect();
    let mut own_ips = all;
    own_ips.extend(node.underlay_ip.map(u32::from));
    own_ips.sort_unstable();
    own_ips.dedup();
    (node_ips, own_ips)
}

/// Remote nodes' pod CIDRs grouped by mask, longest prefix first; within one
/// length the first node listed wins.
fn remote_routes(nodes: &[RemoteNode]) -> Vec<(u32, HashMap<u32, usize>)> {
    let mut routes: Vec<(u32, HashMap<u32, usize>)> = Vec::new();
    let mut by_len: Vec<(u8, u32, usize)> = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| {
            n.pod_cidrs
                .iter()
                .map(move |c| (c.prefix_len(), c.network_u32(), i))
        })
        .collect();
    by_len.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    for (len, net, i) in by_len {
        let mask = Ipv4Cidr::new(Ipv4Addr::from(net), len)
            .map(|c| c.mask())
            .unwrap_or(u32::MAX);
        if routes.last().is_none_or(|(m, _)| *m != mask) {
            routes.push((mask, HashMap::new()));
        }
        if let Some((_, map)) = routes.last_mut() {
            map.entry(net).or_insert(i);
        }
    }
    routes
}

/// The local set of a Service port with a Local traffic policy, as
/// kube-proxy's `CategorizeEndpoints` builds it apart from the cluster-wide
/// one: this node's ready endpoints; if none, its serving+terminating ones
/// (even while other nodes have ready endpoints, so an eTP=Local Service keeps
/// serving from a terminating local pod). Topology hints do not apply.
pub fn local_backends(endpoints: &[EndpointSpec], node_name: &str) -> Vec<Backend> {
    if node_name.is_empty() {
        return Vec::new();
    }
    let local = |e: &&EndpointSpec| e.node_name.as_deref() == Some(node_name);
    let mut chosen: Vec<&EndpointSpec> =
        endpoints.iter().filter(local).filter(|e| e.ready).collect();
    if chosen.is_empty() {
        chosen = endpoints
            .iter()
            .filter(local)
            .filter(|e| e.serving && e.terminating)
            .collect();
    }
    let mut out: Vec<Backend> = chosen
        .into_iter()
        .map(|e| Backend {
            ip: e.ip,
            port: e.port,
            local: true,
        })
        .collect();
    out.sort_by_key(|b| (u32::from(b.ip), b.port));
    out.dedup_by_key(|b| (b.ip, b.port));
    out
}

/// kube-proxy's endpoint filtering (docs/design.md §4 item 3): ready endpoints (unset =
/// ready); if none, serving+terminating ones. Topology hints narrow the set only
/// when every chosen endpoint has hints and at least one names this node's zone.
/// Sorted and de-duplicated so the result is independent of slice order.
pub fn usable_backends(
    endpoints: &[EndpointSpec],
    node_name: &str,
    zone: Option<&str>,
) -> Vec<Backend> {
    let is_local =
        |e: &EndpointSpec| !node_name.is_empty() && e.node_name.as_deref() == Some(node_name);
    let mut chosen: Vec<&EndpointSpec> = endpoints.iter().filter(|e| e.ready).collect();
    if chosen.is_empty() {
        chosen = endpoints
            .iter()
            .filter(|e| e.serving && e.terminating)
            .collect();
    }
    if let Some(z) = zone {
        let all_hinted = !chosen.is_empty() && chosen.iter().all(|e| e.hint_zones.is_some());
        let matches = |e: &&EndpointSpec| {
            e.hint_zones
                .as_ref()
                .is_some_and(|zs| zs.iter().any(|h| h == z))
        };
        if all_hinted && chosen.iter().any(matches) {
            chosen.retain(matches);
        }
    }
    let mut out: Vec<Backend> = chosen
        .into_iter()
        .map(|e| Backend {
            ip: e.ip,
            port: e.port,
            local: is_local(e),
        })
        .collect();
    out.sort_by_key(|b| (u32::from(b.ip), b.port, !b.local));
    out.dedup_by_key(|b| (b.ip, b.port));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: [u8; 4], node: &str) -> EndpointSpec {
        EndpointSpec::ready(Ipv4Addr::from(ip), 8080, Some(node))
    }

    #[test]
    fn the_local_set_falls_back_to_terminating_local_endpoints_on_its_own() {
        let mut term = ep([198, 19, 1, 10], "node-a");
        (term.ready, term.serving, term.terminating) = (false, true, true);
        let remote = ep([198, 19, 3, 10], "node-b");
        let eps = [term.clone(), remote.clone()];
        // The cluster-wide set: the ready remote one only.
        let cluster = usable_backends(&eps, "node-a", None);
        assert_eq!(
            cluster.iter().map(|b| b.ip).collect::<Vec<_>>(),
            [remote.ip]
        );
        // The local set: the terminating local one.
        let local = local_backends(&eps, "node-a");
        assert_eq!(local.len(), 1);
        assert_eq!((local[0].ip, local[0].local), (term.ip, true));
        // A ready local endpoint wins over a terminating one.
        let ready = ep([198, 19, 1, 11], "node-a");
        let local = local_backends(&[term.clone(), ready.clone(), remote], "node-a");
        assert_eq!(local.iter().map(|b| b.ip).collect::<Vec<_>>(), [ready.ip]);
        // Not serving: not usable anywhere.
        term.serving = false;
        assert!(local_backends(&[term], "node-a").is_empty());
    }

    fn svc(name: &str, ip: [u8; 4], eps: Vec<EndpointSpec>, local: bool) -> ServiceSpec {
        ServiceSpec {
            namespace: "default".into(),
            name: name.into(),
            cluster_ips: vec![Ipv4Addr::from(ip)],
            ports: vec![ServicePortSpec {
                name: "http".into(),
                proto: L4Proto::Tcp,
                port: 80,
                node_port: None,
                endpoints: eps,
            }],
            internal_local: local,
            ..ServiceSpec::default()
        }
    }

    fn spec(services: Vec<ServiceSpec>) -> TableSpec {
        TableSpec {
            node: NodeInfo {
                name: "node-a".into(),
                ..NodeInfo::default()
            },
            services,
            maglev_size: 1009,
            ..TableSpec::default()
        }
    }

    /// With a Local policy, the local set may hold a terminating endpoint
    /// (after the cluster-wide set in `backends`), but the health check's
    /// count (`local_ready`) holds only ready ones, as kube-proxy's does.
    #[test]
    fn local_ready_counts_ready_local_endpoints_only() {
        let mut term = ep([198, 19, 1, 2], "node-a");
        (term.ready, term.serving, term.terminating) = (false, true, true);
        let remote = ep([198, 19, 3, 2], "node-b");
        let s = Snapshot::build(
            spec(vec![svc(
                "t",
                [198, 18, 96, 10],
                vec![term, remote.clone()],
                true,
            )]),
            1,
        );
        let sp = &s.service_ports[0];
        assert_eq!(
            (sp.cluster_backends, sp.local_backends, sp.local_ready),
            (1, 1, 0)
        );
        assert_eq!(
            sp.cluster_set().iter().map(|b| b.ip).collect::<Vec<_>>(),
            [remote.ip]
        );
        assert_eq!(
            sp.backends.len(),
            2,
            "the terminating local one after the cluster-wide set"
        );
        let ready = ep([198, 19, 1, 3], "node-a");
        let s = Snapshot::build(
            spec(vec![svc("t", [198, 18, 96, 10], vec![ready, remote], true)]),
            2,
        );
        let sp = &s.service_ports[0];
        assert_eq!(
            (sp.cluster_backends, sp.local_backends, sp.local_ready),
            (2, 1, 1)
        );
    }

    #[test]
    fn a_backend_on_the_nodes_address_is_flagged() {
        let mut spec = spec(vec![
            svc(
                "api",
                [198, 18, 96, 1],
                vec![ep([198, 18, 0, 2], "node-a")],
                false,
            ),
            svc(
                "web",
                [198, 18, 96, 2],
                vec![ep([198, 19, 1, 2], "node-a")],
                false,
            ),
        ]);
        spec.node.node_ips = vec![Ipv4Addr::new(198, 18, 0, 2)];
        let s = Snapshot::build(spec, 1);
        let flags: Vec<bool> = s
            .service_ports
            .iter()
            .map(|sp| sp.backend_on_node)
            .collect();
        assert_eq!(flags, [true, false]);
    }

    /// Every port's tables, as (size, entries) per table.
    fn tables(s: &Snapshot) -> Vec<Vec<u16>> {
        s.service_ports
            .iter()
            .flat_map(|sp| {
                [
                    Some(s.maglev.table(&sp.maglev).to_vec()),
                    sp.maglev_local.map(|l| s.maglev.table(&l).to_vec()),
                ]
            })
            .flatten()
            .collect()
    }

    #[test]
    fn a_snapshot_built_after_another_has_the_tables_a_fresh_build_has() {
        let a = vec![
            svc(
                "web",
                [198, 18, 96, 10],
                vec![ep([198, 19, 1, 2], "node-a"), ep([198, 19, 3, 2], "node-b")],
                false,
            ),
            svc(
                "api",
                [198, 18, 96, 11],
                vec![ep([198, 19, 1, 3], "node-a"), ep([198, 19, 3, 3], "node-b")],
                true,
            ),
            svc(
                "db",
                [198, 18, 96, 12],
                vec![ep([198, 19, 1, 4], "node-a")],
                false,
            ),
        ];
        let first = Snapshot::build(spec(a.clone()), 1);
        // web loses a backend, api gains one (local tables change too), db
        // stays, a new Service arrives.
        let mut b = a;
        b[0].ports[0].endpoints.pop();
        b[1].ports[0].endpoints.push(ep([198, 19, 1, 9], "node-a"));
        b.push(svc(
            "new",
            [198, 18, 96, 13],
            vec![ep([198, 19, 3, 7], "node-b")],
            false,
        ));
        let after = Snapshot::build_after(spec(b.clone()), 2, Some(&first));
        let fresh = Snapshot::build(spec(b), 2);
        assert_eq!(tables(&after), tables(&fresh));
        for (x, y) in after.service_ports.iter().zip(&fresh.service_ports) {
            assert_eq!(x.backends, y.backends);
            for h in 0..2000u64 {
                let h = crate::maglev::mix64(h);
                assert_eq!(
                    after.maglev.lookup(&x.maglev, h),
                    fresh.maglev.lookup(&y.maglev, h)
                );
            }
        }
        // Only the changed ports' tables were computed: web (1), api (all and
        // local: 2), new (1); db's was copied.
        assert_eq!(first.maglev_tables_built, 4);
        assert_eq!(fresh.maglev_tables_built, 5);
        assert_eq!(after.maglev_tables_built, 4);
        assert_eq!(after.maglev.len(), fresh.maglev.len());
        // Built again from itself, nothing changes and nothing is computed.
        let same = Snapshot::build_after(after.spec.clone(), 3, Some(&after));
        assert_eq!(same.maglev_tables_built, 0);
        assert_eq!(tables(&same), tables(&after));
    }

    #[test]
    fn pods_are_counted_once_per_ip_and_the_last_route_wins() {
        let pod = |ip: [u8; 4], ifindex: u32| PodRoute {
            ip: Ipv4Addr::from(ip),
            mac: [2, 0, 0, 0, 0, u8::try_from(ifindex).unwrap()],
            host_ifindex: ifindex,
            host_mac: [2, 1, 0, 0, 0, u8::try_from(ifindex).unwrap()],
            name: String::new(),
        };
        let mut t = spec(vec![]);
        t.node.pod_cidrs = vec!["198.19.1.0/24".parse().unwrap()];
        // Two routes for .10 (the second replaces the first), one outside the
        // indexed CIDR (kept in the map).
        t.local_pods = vec![
            pod([198, 19, 1, 10], 7),
            pod([198, 19, 1, 11], 8),
            pod([198, 19, 1, 10], 9),
            pod([198, 19, 9, 5], 10),
        ];
        let s = Snapshot::build(t, 1);
        assert_eq!(s.local_pod_count(), 3);
        let hop = |a: [u8; 4]| {
            s.local_pod_hop(u32::from(Ipv4Addr::from(a)))
                .map(|h| h.host_ifindex)
        };
        assert_eq!(hop([198, 19, 1, 10]), Some(9));
        assert_eq!(hop([198, 19, 1, 11]), Some(8));
        assert_eq!(hop([198, 19, 9, 5]), Some(10));
        assert_eq!(hop([198, 19, 1, 12]), None);
    }

    #[test]
    fn a_table_is_reused_only_when_its_backends_are_the_same() {
        let one = vec![svc(
            "web",
            [198, 18, 96, 10],
            vec![ep([198, 19, 1, 2], "node-a")],
            false,
        )];
        let first = Snapshot::build(spec(one.clone()), 1);
        // Same name, other backend: rebuilt, so it points at the new backend.
        let mut other = one;
        other[0].ports[0].endpoints[0].ip = Ipv4Addr::new(198, 19, 1, 77);
        let after = Snapshot::build_after(spec(other), 2, Some(&first));
        let sp = &after.service_ports[0];
        let i = after.maglev.lookup(&sp.maglev, 12345).unwrap();
        assert_eq!(
            sp.backends[usize::from(i)].ip,
            Ipv4Addr::new(198, 19, 1, 77)
        );
    }
}
