//! The one reducer every source feeds: Kubernetes objects (from the store) plus
//! node-local facts (pods the CNI registered, neighbours, gateway) → `TableSpec`.
//! A pure, deterministic function of its inputs: the output does not depend on
//! the order objects arrived in. It applies kube-proxy's Service rules (docs/design.md §4
//! items 1-3) and flannel's Node annotations (§5); it never touches the tables.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Node, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use shared::net::{parse_mac, Ipv4Cidr, L4Proto, Mac};
use shared::snapshot::{
    EndpointSpec, LocalTraffic, MasqueradeRules, NodeInfo, OverlayConfig, PodHop, PodRoute,
    RemoteNode, ServicePortSpec, ServiceSpec, TableSpec, DEFAULT_AFFINITY_TIMEOUT_SECS,
};
use tracing::{debug, warn};

use crate::config::{DetectLocal, MasqueradeConfig, NodePortAddress};
use crate::state::lock;
use crate::store::{Kind, ObjectStore};

/// The name nodeplane answers to in `service.kubernetes.io/service-proxy-name`.
pub const PROXY_NAME: &str = "nodeplane";
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
pub const ANNOTATION_LB_SOURCE_RANGES: &str =
    "service.beta.kubernetes.io/load-balancer-source-ranges";
pub const ANNOTATION_PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
pub const ANNOTATION_PUBLIC_IP_OVERWRITE: &str = "flannel.alpha.coreos.com/public-ip-overwrite";
pub const ANNOTATION_BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
pub const ANNOTATION_BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
pub const ANNOTATION_KUBE_SUBNET_MANAGER: &str = "flannel.alpha.coreos.com/kube-subnet-manager";

/// Maximum ClientIP affinity timeout the API server accepts (one day).
const MAX_AFFINITY_TIMEOUT_SECS: u32 = 86_400;

/// What this node's agent knows about itself (from flags and the uplink).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalConfig {
    pub node_name: String,
    pub uplink_ifindex: u32,
    pub uplink_mac: Mac,
    /// The uplink's MTU (0: unknown).
    pub uplink_mtu: u32,
    pub uplink_ip: Option<Ipv4Addr>,
    pub vtep_mac: Mac,
    pub overlay: OverlayConfig,
    pub service_cidrs: Vec<Ipv4Cidr>,
    pub masquerade_ports: (u16, u16),
    pub maglev_size: u32,
    /// Services labelled with another service-proxy-name are skipped ("nodeplane").
    pub proxy_name: String,
    /// Masquerade settings (`masqueradeAll`, `detectLocalMode`, the mode).
    pub masquerade: MasqueradeConfig,
    /// kube-proxy's `nodePortAddresses` (empty: every node IP).
    pub nodeport_addresses: Vec<NodePortAddress>,
    /// kube-proxy iptables mode's `localhostNodePorts`.
    pub localhost_nodeports: bool,
    /// Compute the EndpointSlices of Services with a selector from the Pods
    /// (`endpoints`): the manifest directory, which has no controller.
    pub derive_endpoints: bool,
    /// Cluster DNS answered by the workers (None: off).
    pub dns: Option<crate::config::DnsConfig>,
    /// The host interface, when the agent made one (`hostif`).
    pub host_if: Option<PodHop>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            node_name: String::new(),
            uplink_ifindex: 0,
            uplink_mac: [0; 6],
            uplink_mtu: 0,
            uplink_ip: None,
            vtep_mac: [0; 6],
            overlay: OverlayConfig::default(),
            service_cidrs: Vec::new(),
            masquerade_ports: (0, 0),
            maglev_size: 0,
            proxy_name: PROXY_NAME.to_string(),
            masquerade: MasqueradeConfig::default(),
            nodeport_addresses: Vec::new(),
            localhost_nodeports: false,
            derive_endpoints: false,
            dns: None,
            host_if: None,
        }
    }
}

/// Node-local facts read on every control tick (not Kubernetes objects).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalFacts {
    /// Pods on this node whose interfaces are attached.
    pub pods: Vec<PodRoute>,
    /// Underlay neighbours of the uplink.
    pub neighbors: Vec<(Ipv4Addr, Mac)>,
    pub gateway: Option<Ipv4Addr>,
    /// The attached pod interfaces (index, name), for the interface-based
    /// local-traffic detectors.
    pub pod_interfaces: Vec<(u32, String)>,
}

/// Have the first full lists of Services and EndpointSlices arrived? Until
/// then no Service is programmed (kube-proxy's rule).
pub fn synced(store: &ObjectStore) -> bool {
    store.kind_synced(Kind::Service) && store.kind_synced(Kind::EndpointSlice)
}

/// Objects + facts → tables. Deterministic; independent of input order.
pub fn reduce(store: &ObjectStore, cfg: &LocalConfig, facts: &LocalFacts) -> TableSpec {
    let mut notes = Notes::default();
    let nodes = store.nodes();
    let this_node = nodes
        .iter()
        .copied()
        .find(|n| n.metadata.name.as_deref() == Some(cfg.node_name.as_str()));
    let node = local_node(this_node, cfg, &mut notes);
    let remote_nodes = remote_nodes(&nodes, cfg, &mut notes);
    let (services, headless) = if synced(store) {
        services(store, cfg, facts, &mut notes)
    } else {
        (Vec::new(), Vec::new())
    };
    let local_pods = local_pods(store, cfg, facts);
    let mut neighbors = facts.neighbors.clone();
    neighbors.sort();
    neighbors.dedup_by_key(|n| n.0);
    notes.flush();
    let local = local_traffic(&cfg.masquerade.detect_local, &node, &remote_nodes, facts);
    let dns = cluster_dns(cfg, &services);
    TableSpec {
        node,
        overlay: cfg.overlay,
        service_cidrs: cfg.service_cidrs.clone(),
        services,
        local_pods,
        remote_nodes,
        neighbors,
        gateway: facts.gateway,
        masquerade_ports: cfg.masquerade_ports,
        masquerade: MasqueradeRules {
            mode: cfg.masquerade.mode,
            all: cfg.masquerade.all,
            local,
        },
        maglev_size: cfg.maglev_size,
        headless: if dns.is_some() { headless } else { Vec::new() },
        dns,
    }
}

/// The cluster DNS the workers answer: the configured address, else the
/// ClusterIP of kube-system/kube-dns (the Service every cluster DNS runs
/// behind); none when neither is there.
fn cluster_dns(cfg: &LocalConfig, services: &[ServiceSpec]) -> Option<shared::dns::DnsSpec> {
    let d = cfg.dns.as_ref()?;
    let server = d.server.or_else(|| {
        services
            .iter()
            .find(|s| s.namespace == "kube-system" && s.name == "kube-dns")
            .and_then(|s| s.cluster_ips.first().copied())
    })?;
    Some(shared::dns::DnsSpec {
        domain: d.domain.clone(),
        server,
        ttl: d.ttl,
    })
}

/// kube-proxy's local-traffic detector for this node's tables. ClusterCIDR
/// without a configured CIDR uses every Node's podCIDRs (which a cluster CIDR
/// covers; kube-proxy would have no detector there, and no masquerade for
/// off-cluster clients of ClusterIPs). The interface modes name the attached
/// pod interfaces that match: nodeplane's CNI attaches no bridge, so
/// BridgeInterface matches only a pod interface of that name.
fn local_traffic(
    detect: &DetectLocal,
    node: &NodeInfo,
    remote: &[RemoteNode],
    facts: &LocalFacts,
) -> LocalTraffic {
    let ifs = |matches: &dyn Fn(&str) -> bool| {
        let mut v: Vec<u32> = facts
            .pod_interfaces
            .iter()
            .filter(|(_, n)| matches(n))
            .map(|(i, _)| *i)
            .collect();
        v.sort_unstable();
        v.dedup();
        LocalTraffic::Interfaces(v)
    };
    match detect {
        DetectLocal::ClusterCidr(c) if !c.is_empty() => LocalTraffic::Cidrs(c.clone()),
        DetectLocal::ClusterCidr(_) => {
            let mut c: Vec<Ipv4Cidr> = node
                .pod_cidrs
                .iter()
                .chain(remote.iter().flat_map(|r| &r.pod_cidrs))
                .copied()
                .collect();
            c.sort_by_key(|c| (u32::from(c.network()), c.prefix_len()));
            c.dedup();
            if c.is_empty() {
                LocalTraffic::None
            } else {
                LocalTraffic::Cidrs(c)
            }
        }
        DetectLocal::NodeCidr if node.pod_cidrs.is_empty() => LocalTraffic::None,
        DetectLocal::NodeCidr => LocalTraffic::Cidrs(node.pod_cidrs.clone()),
        DetectLocal::BridgeInterface(b) => ifs(&|n| n == b),
        DetectLocal::InterfaceNamePrefix(p) => ifs(&|n| n.starts_with(p.as_str())),
    }
}

/// Problems found while reducing, logged once per change rather than on every
/// reduce (a broken Node annotation would otherwise log ten times a second).
#[derive(Default)]
struct Notes(BTreeSet<String>);

static LOGGED_NOTES: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

impl Notes {
    fn warn(&mut self, msg: String) {
        self.0.insert(msg);
    }

    fn flush(self) {
        let mut logged = lock(&LOGGED_NOTES);
        for m in self.0.difference(&logged) {
            warn!("{m}");
        }
        *logged = self.0;
    }
}

fn parse_ipv4(s: &str) -> Option<Ipv4Addr> {
    s.trim().parse::<Ipv4Addr>().ok()
}

fn usable_ipv4(s: &str) -> Option<Ipv4Addr> {
    parse_ipv4(s).filter(|ip| !ip.is_unspecified())
}

// ---------------------------------------------------------------- Services

/// Is this object meant for another service proxy?
fn other_proxy(labels: Option<&BTreeMap<String, String>>, cfg: &LocalConfig) -> bool {
    labels
        .and_then(|l| l.get(LABEL_SERVICE_PROXY_NAME))
        .is_some_and(|v| *v != cfg.proxy_name)
}

fn services(
    store: &ObjectStore,
    cfg: &LocalConfig,
    facts: &LocalFacts,
    notes: &mut Notes,
) -> (Vec<ServiceSpec>, Vec<shared::dns::HeadlessService>) {
    let services = store.services();
    // Manifest mode: the slices of Services with a selector, computed from
    // the Pods (they replace slices a controller wrote for them; other
    // hand-written ones stay).
    let mut derived: BTreeMap<(String, String), Vec<EndpointSlice>> = BTreeMap::new();
    if cfg.derive_endpoints {
        let pods = store.pods();
        let registered: BTreeMap<String, Ipv4Addr> = facts
            .pods
            .iter()
            .filter(|p| p.name.contains('/'))
            .map(|p| (p.name.clone(), p.ip))
            .collect();
        for svc in services
            .iter()
            .filter(|s| crate::endpoints::selector(s).is_some())
        {
            let ns = svc.metadata.namespace.clone().unwrap_or_default();
            let name = svc.metadata.name.clone().unwrap_or_default();
            let (sl, skipped) = crate::endpoints::derive(svc, &pods, &registered);
            for p in &skipped.no_address {
                notes.warn(format!(
                    "service {ns}/{name}: pod {p} matches its selector but has no IPv4 address yet (no status.podIPs, no CNI registration here)"
                ));
            }
            for (p, port) in &skipped.no_port {
                notes.warn(format!(
                    "service {ns}/{name}: pod {p} has no container port for targetPort of port '{port}'"
                ));
            }
            derived.insert((ns, name), sl);
        }
    }
    // EndpointSlices by (namespace, service name).
    let mut slices: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for ((ns, name), sl) in &derived {
        slices
            .entry((ns.as_str(), name.as_str()))
            .or_default()
            .extend(sl.iter());
    }
    for s in store.endpoint_slices() {
        if s.address_type != "IPv4" || other_proxy(s.metadata.labels.as_ref(), cfg) {
            continue;
        }
        let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SERVICE_NAME))
        else {
            continue;
        };
        let ns = s.metadata.namespace.as_deref().unwrap_or_default();
        let controllers = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(crate::endpoints::LABEL_MANAGED_BY))
            .is_some_and(|m| m == crate::endpoints::MANAGED_BY_CONTROLLER);
        if controllers && derived.contains_key(&(ns.to_string(), svc.clone())) {
            continue;
        }
        slices.entry((ns, svc.as_str())).or_default().push(s);
    }
    let headless: Vec<shared::dns::HeadlessService> = services
        .iter()
        .filter_map(|svc| {
            let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
            let name = svc.metadata.name.as_deref().unwrap_or_default();
            let sl = slices.get(&(ns, name)).map_or(&[][..], |v| v.as_slice());
            headless_service(svc, sl, cfg)
        })
        .collect();
    let mut out: Vec<ServiceSpec> = services
        .into_iter()
        .filter_map(|svc| {
            let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
            let name = svc.metadata.name.as_deref().unwrap_or_default();
            let sl = slices.get(&(ns, name)).map_or(&[][..], |v| v.as_slice());
            service_spec(svc, sl, cfg, notes)
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut headless = headless;
    headless.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    (out, headless)
}

/// A headless Service (`clusterIP: None`, not ExternalName) as cluster DNS
/// names it: its ports with their endpoints and ready flags, and the
/// endpoints' hostnames. None for any other Service.
fn headless_service(
    svc: &Service,
    slices: &[&EndpointSlice],
    cfg: &LocalConfig,
) -> Option<shared::dns::HeadlessService> {
    let spec = svc.spec.as_ref()?;
    if other_proxy(svc.metadata.labels.as_ref(), cfg)
        || spec.type_.as_deref() == Some("ExternalName")
        || spec.cluster_ip.as_deref().map(str::trim) != Some("None")
    {
        return None;
    }
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| service_port(p, slices, &ns, &name))
        .map(|p| {
            let eps = p
                .endpoints
                .iter()
                .map(|e| (e.ip, e.port, e.ready))
                .collect();
            (p.name, p.proto, eps)
        })
        .collect();
    let mut hostnames: Vec<(Ipv4Addr, String)> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter_map(|e| {
            let ip = e.addresses.first().and_then(|a| usable_ipv4(a))?;
            Some((ip, e.hostname.clone()?))
        })
        .collect();
    hostnames.sort();
    hostnames.dedup_by_key(|h| h.0);
    Some(shared::dns::HeadlessService {
        namespace: ns,
        name,
        ports,
        hostnames,
    })
}

fn service_spec(
    svc: &Service,
    slices: &[&EndpointSlice],
    cfg: &LocalConfig,
    notes: &mut Notes,
) -> Option<ServiceSpec> {
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    if other_proxy(svc.metadata.labels.as_ref(), cfg) {
        debug!(service = %format!("{namespace}/{name}"), "skipped: labelled for another service proxy");
        return None;
    }
    let spec = svc.spec.as_ref()?;
    let svc_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    if svc_type == "ExternalName" {
        return None;
    }
    let raw_ips: Vec<&str> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    if raw_ips.is_empty() || raw_ips.iter().any(|ip| ip.trim() == "None") {
        return None; // headless (or not yet allocated)
    }
    let mut cluster_ips: Vec<Ipv4Addr> = raw_ips.iter().filter_map(|s| usable_ipv4(s)).collect();
    if cluster_ips.is_empty() {
        return None; // IPv6 single-stack
    }
    cluster_ips.dedup();

    let mut external_ips: Vec<Ipv4Addr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|s| usable_ipv4(s))
        .collect();
    external_ips.sort();
    external_ips.dedup();

    let mut load_balancer_ips: Vec<Ipv4Addr> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        // ipMode Proxy: the load balancer proxies; the VIP is not programmed locally.
        .filter(|ing| ing.ip_mode.as_deref().unwrap_or("VIP") == "VIP")
        .filter_map(|ing| ing.ip.as_deref().and_then(usable_ipv4))
        .collect();
    load_balancer_ips.sort();
    load_balancer_ips.dedup();

    let externally_accessible = matches!(svc_type, "LoadBalancer" | "NodePort")
        || (svc_type == "ClusterIP" && !external_ips.is_empty());
    let external_local =
        externally_accessible && spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let health_check_node_port = if svc_type == "LoadBalancer" && external_local {
        spec.health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
    } else {
        None
    };
    let affinity_timeout_secs = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .map_or(DEFAULT_AFFINITY_TIMEOUT_SECS, |t| {
                t.min(MAX_AFFINITY_TIMEOUT_SECS)
            })
    });
    let source_ranges = source_ranges(svc, &namespace, &name, notes);

    let mut ports: Vec<ServicePortSpec> = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| service_port(p, slices, &namespace, &name))
        .collect();
    ports.sort_by(|a, b| (a.port, a.proto, &a.name).cmp(&(b.port, b.proto, &b.name)));
    ports.dedup_by(|a, b| a.port == b.port && a.proto == b.proto);

    Some(ServiceSpec {
        namespace,
        name,
        cluster_ips,
        external_ips,
        load_balancer_ips,
        ports,
        affinity_timeout_secs,
        external_local,
        internal_local,
        source_ranges,
        health_check_node_port,
    })
}

/// loadBalancerSourceRanges (the spec field, else the legacy annotation):
/// IPv4 prefixes only; a zero-length prefix means "allow any" (empty list).
/// A bare address counts as a /32 so a typo never opens the service to all.
fn source_ranges(svc: &Service, ns: &str, name: &str, notes: &mut Notes) -> Vec<Ipv4Cidr> {
    let from_spec: Vec<String> = svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_source_ranges.clone())
        .unwrap_or_default();
    let raw: Vec<String> = if from_spec.is_empty() {
        svc.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_LB_SOURCE_RANGES))
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    } else {
        from_spec
    };
    let mut out = Vec::new();
    for r in raw.iter().map(|r| r.trim()).filter(|r| !r.is_empty()) {
        if r.contains(':') {
            continue; // IPv6
        }
        match r.parse::<Ipv4Cidr>() {
            Ok(c) => out.push(c),
            Err(e) => match parse_ipv4(r) {
                Some(ip) => out.extend(Ipv4Cidr::new(ip, 32).ok()),
                None => notes.warn(format!(
                    "service {ns}/{name}: ignoring loadBalancerSourceRange '{r}': {e}"
                )),
            },
        }
    }
    if out.iter().any(|c| c.prefix_len() == 0) {
        return Vec::new();
    }
    out.sort();
    out.dedup();
    out
}

fn service_port(
    p: &ServicePort,
    slices: &[&EndpointSlice],
    ns: &str,
    svc: &str,
) -> Option<ServicePortSpec> {
    let proto_name = p.protocol.as_deref().unwrap_or("TCP");
    let Some(proto) = L4Proto::from_k8s(proto_name) else {
        debug!(service = %format!("{ns}/{svc}"), protocol = proto_name, "skipping port: protocol not proxied");
        return None;
    };
    let port = u16::try_from(p.port).ok().filter(|p| *p != 0)?;
    let node_port = p
        .node_port
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n != 0);
    let name = p.name.clone().unwrap_or_default();
    let mut endpoints = Vec::new();
    for slice in slices {
        for sp in slice.ports.iter().flatten() {
            if sp.name.as_deref().unwrap_or_default() != name
                || sp.protocol.as_deref().unwrap_or("TCP") != proto_name
            {
                continue;
            }
            let Some(target) = sp
                .port
                .and_then(|t| u16::try_from(t).ok())
                .filter(|t| *t != 0)
            else {
                continue;
            };
            for ep in slice.endpoints.iter().flatten() {
                // kube-proxy uses an endpoint's first address only.
                let Some(ip) = ep.addresses.first().and_then(|a| usable_ipv4(a)) else {
                    continue;
                };
                let cond = ep.conditions.as_ref();
                let ready = cond.and_then(|c| c.ready).unwrap_or(true);
                let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
                let hint_zones = ep
                    .hints
                    .as_ref()
                    .and_then(|h| h.for_zones.as_ref())
                    .filter(|z| !z.is_empty())
                    .map(|z| {
                        let mut v: Vec<String> = z.iter().map(|f| f.name.clone()).collect();
                        v.sort();
                        v.dedup();
                        v
                    });
                endpoints.push(EndpointSpec {
                    ip,
                    port: target,
                    node_name: ep.node_name.clone(),
                    zone: ep.zone.clone(),
                    ready,
                    serving,
                    terminating,
                    hint_zones,
                });
            }
        }
    }
    // The same endpoint in two slices (during a slice migration): keep the
    // most usable copy, so the result does not depend on slice order.
    endpoints.sort_by(|a, b| {
        (u32::from(a.ip), a.port, !a.ready, !a.serving, a.terminating)
            .cmp(&(u32::from(b.ip), b.port, !b.ready, !b.serving, b.terminating))
            .then_with(|| {
                (&a.node_name, &a.zone, &a.hint_zones).cmp(&(&b.node_name, &b.zone, &b.hint_zones))
            })
    });
    endpoints.dedup_by(|a, b| a.ip == b.ip && a.port == b.port);
    Some(ServicePortSpec {
        name,
        proto,
        port,
        node_port,
        endpoints,
    })
}

// ---------------------------------------------------------------- Nodes

fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn node_name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or_default()
}

/// status.addresses of the given type, IPv4, not loopback/unspecified.
fn node_addresses(node: &Node, types: &[&str]) -> Vec<Ipv4Addr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| types.contains(&a.type_.as_str()))
        .filter_map(|a| usable_ipv4(&a.address))
        .filter(|ip| !ip.is_loopback())
        .collect()
}

/// spec.podCIDRs (else spec.podCIDR), IPv4 only, in the node's order (the
/// first is the primary).
pub fn node_pod_cidrs(node: &Node) -> Vec<Ipv4Cidr> {
    let spec = node.spec.as_ref();
    let raw: Vec<&str> = match spec.and_then(|s| s.pod_cidrs.as_deref()) {
        Some(v) if !v.is_empty() => v.iter().map(String::as_str).collect(),
        _ => spec
            .and_then(|s| s.pod_cidr.as_deref())
            .into_iter()
            .collect(),
    };
    let mut out: Vec<Ipv4Cidr> = Vec::new();
    for c in raw.iter().filter_map(|s| s.parse::<Ipv4Cidr>().ok()) {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// The VTEP MAC a node published (flannel's backend-data annotation).
pub fn node_vtep_mac(node: &Node) -> Result<Mac, String> {
    #[derive(serde::Deserialize)]
    struct BackendData {
        #[serde(rename = "VtepMAC")]
        vtep_mac: Option<String>,
    }
    let raw = annotation(node, ANNOTATION_BACKEND_DATA)
        .ok_or_else(|| format!("no {ANNOTATION_BACKEND_DATA} annotation"))?;
    let data: BackendData = serde_json::from_str(raw)
        .map_err(|e| format!("{ANNOTATION_BACKEND_DATA} is not flannel backend data: {e}"))?;
    let mac = data
        .vtep_mac
        .ok_or_else(|| format!("{ANNOTATION_BACKEND_DATA} has no VtepMAC"))?;
    parse_mac(&mac).ok_or_else(|| format!("{ANNOTATION_BACKEND_DATA} VtepMAC '{mac}' is not a MAC"))
}

/// A node's underlay IP as other nodes see it: the public-ip annotation, else
/// its InternalIP.
pub fn node_underlay_ip(node: &Node) -> Option<Ipv4Addr> {
    annotation(node, ANNOTATION_PUBLIC_IP)
        .and_then(usable_ipv4)
        .or_else(|| node_addresses(node, &["InternalIP"]).first().copied())
}

fn local_node(node: Option<&Node>, cfg: &LocalConfig, notes: &mut Notes) -> NodeInfo {
    let mut info = NodeInfo {
        name: cfg.node_name.clone(),
        zone: None,
        underlay_ip: cfg.uplink_ip,
        node_ips: cfg.uplink_ip.into_iter().collect(),
        nodeport_cidrs: nodeport_cidrs(&cfg.nodeport_addresses, cfg.uplink_ip),
        localhost_nodeports: cfg.localhost_nodeports,
        host_if: cfg.host_if,
        pod_cidrs: Vec::new(),
        uplink_ifindex: cfg.uplink_ifindex,
        uplink_mac: cfg.uplink_mac,
        uplink_mtu: cfg.uplink_mtu,
        vtep_mac: cfg.vtep_mac,
    };
    let Some(node) = node else {
        return info;
    };
    info.zone = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_ZONE))
        .cloned();
    info.pod_cidrs = node_pod_cidrs(node);
    if info.pod_cidrs.is_empty() {
        notes.warn(format!(
            "node {} (this node) has no IPv4 pod CIDR: local pods are not routable from other nodes",
            cfg.node_name
        ));
    }
    info.node_ips = node_addresses(node, &["InternalIP", "ExternalIP"]);
    info.node_ips.extend(cfg.uplink_ip);
    info.node_ips.sort();
    info.node_ips.dedup();
    info.underlay_ip = annotation(node, ANNOTATION_PUBLIC_IP_OVERWRITE)
        .and_then(usable_ipv4)
        .or_else(|| node_underlay_ip(node))
        .or(cfg.uplink_ip);
    let primary = node_addresses(node, &["InternalIP"])
        .first()
        .copied()
        .or(cfg.uplink_ip);
    info.nodeport_cidrs = nodeport_cidrs(&cfg.nodeport_addresses, primary);
    info
}

/// `nodePortAddresses` as CIDRs: `primary` is the primary IP as a /32 (none
/// known: nothing). A non-empty setting that matches no address leaves the
/// node without NodePorts, as kube-proxy's does.
fn nodeport_cidrs(addrs: &[NodePortAddress], primary: Option<Ipv4Addr>) -> Vec<Ipv4Cidr> {
    let mut out: Vec<Ipv4Cidr> = addrs
        .iter()
        .filter_map(|a| match a {
            NodePortAddress::Cidr(c) => Some(*c),
            NodePortAddress::Primary => primary.and_then(|ip| Ipv4Cidr::new(ip, 32).ok()),
        })
        .collect();
    if out.is_empty() && !addrs.is_empty() {
        // "primary" with no address known: an empty list would mean "every
        // IP", so name one that matches nothing a node has.
        out.extend(Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 32).ok());
    }
    out.sort_by_key(|c| (u32::from(c.network()), c.prefix_len()));
    out.dedup();
    out
}

fn remote_nodes(nodes: &[&Node], cfg: &LocalConfig, notes: &mut Notes) -> Vec<RemoteNode> {
    let mut out = Vec::new();
    for node in nodes {
        let name = node_name(node);
        if name == cfg.node_name || name.is_empty() {
            continue;
        }
        let vtep_mac = match node_vtep_mac(node) {
            Ok(m) => m,
            Err(e) => {
                notes.warn(format!("node {name}: not in the overlay: {e}"));
                continue;
            }
        };
        let pod_cidrs = node_pod_cidrs(node);
        if pod_cidrs.is_empty() {
            notes.warn(format!("node {name}: not in the overlay: no IPv4 pod CIDR"));
            continue;
        }
        let Some(underlay_ip) = node_underlay_ip(node) else {
            notes.warn(format!(
                "node {name}: not in the overlay: no {ANNOTATION_PUBLIC_IP} annotation and no IPv4 InternalIP"
            ));
            continue;
        };
        out.push(RemoteNode {
            name: name.to_string(),
            underlay_ip,
            vtep_mac,
            pod_cidrs,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

// ---------------------------------------------------------------- Pods

/// The CNI-registered pods, sorted by IP; names filled from Pod objects of this
/// node when the registration carries none.
fn local_pods(store: &ObjectStore, cfg: &LocalConfig, facts: &LocalFacts) -> Vec<PodRoute> {
    let mut pods = facts.pods.clone();
    pods.sort_by(|a, b| (u32::from(a.ip), &a.name).cmp(&(u32::from(b.ip), &b.name)));
    pods.dedup_by_key(|p| p.ip);
    if pods.iter().any(|p| p.name.is_empty()) {
        let mut names: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        for pod in store.pods() {
            let Some(spec) = pod.spec.as_ref() else {
                continue;
            };
            if spec.host_network == Some(true)
                || spec
                    .node_name
                    .as_deref()
                    .is_some_and(|n| n != cfg.node_name)
            {
                continue;
            }
            let Some(status) = pod.status.as_ref() else {
                continue;
            };
            let ips = status
                .pod_ips
                .iter()
                .flatten()
                .map(|p| p.ip.as_str())
                .chain(status.pod_ip.as_deref());
            for ip in ips.filter_map(usable_ipv4) {
                names.entry(ip).or_insert_with(|| {
                    format!(
                        "{}/{}",
                        pod.metadata.namespace.as_deref().unwrap_or_default(),
                        pod.metadata.name.as_deref().unwrap_or_default()
                    )
                });
            }
        }
        for p in pods.iter_mut().filter(|p| p.name.is_empty()) {
            if let Some(n) = names.get(&p.ip) {
                p.name.clone_from(n);
            }
        }
    }
    pods
}
