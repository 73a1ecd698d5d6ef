//! The agent's settings: `nodeplane run` flags and the same settings as a YAML
//! file (`--config FILE`, camelCase keys as in the DaemonSet's ConfigMap). Flags
//! override the file; everything is validated here, before anything is attached,
//! so a bad flag is a clear error and never a half-configured node.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use dataplane::frag::FragConfig;
use dataplane::io::XdpMode;
use shared::{net::parse_mac, Ipv4Cidr, Mac};

/// nodeplane: a Kubernetes node dataplane (kube-proxy + flannel VXLAN) on AF_XDP.
#[derive(Parser, Debug)]
#[command(name = "nodeplane", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent on this node.
    Run(Box<RunArgs>),
    /// Print the running agent's status.
    Status(StatusArgs),
    /// Remove what nodeplane put on this node, after a crash without restart
    /// (like `kube-proxy --cleanup`): its XDP programs on every interface, the
    /// host interface (nph0/nph1) and its routes, the pod-CIDR file in the
    /// state directory. Never run it while an agent runs.
    Cleanup(CleanupArgs),
    /// Print the environment variables the kubelet gives a pod's containers
    /// for the Services of its namespace ({SVC}_SERVICE_HOST,
    /// {SVC}_SERVICE_PORT, {SVC}_PORT_{PORT}_{PROTO}_ADDR, ...), from a
    /// manifest directory: for runtimes and scripts without a kubelet.
    ServiceEnv(ServiceEnvArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ServiceEnvArgs {
    /// The pod's namespace.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// The manifest directory the Services come from.
    #[arg(long, value_name = "DIR")]
    pub manifests: PathBuf,
    /// The pod has `enableServiceLinks: false`: only the `kubernetes`
    /// Service's variables.
    #[arg(long)]
    pub no_service_links: bool,
    /// `env` (NAME=value lines, as an env file) or `shell` (export
    /// NAME='value', for eval).
    #[arg(long, default_value = "env", value_parser = ["env", "shell"])]
    pub format: String,
}

#[derive(Args, Debug, Clone)]
pub struct CleanupArgs {
    /// The state directory the agent used (its pod-CIDR file is removed; the
    /// CNI plugin's pod registrations are kept for its DEL calls).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The agent's status endpoint: if it answers, an agent runs and nothing
    /// is removed.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10256")]
    pub status_addr: SocketAddr,
}

#[derive(Args, Debug, Default, Clone)]
pub struct RunArgs {
    /// YAML file with the same settings (flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's name (as in its Node object).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// The node's uplink interface (the NIC carrying the overlay).
    #[arg(long, value_name = "IF")]
    pub uplink: Option<String>,
    /// Directory of Kubernetes manifests (Node, Service, EndpointSlice, Pod).
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    pub manifests: Option<PathBuf>,
    /// kubeconfig for the API server; `in-cluster` uses the pod's service account.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<String>,
    /// Worker threads (each pinned to a core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// VXLAN UDP port (flannel: 8472; IANA: 4789).
    #[arg(long)]
    pub vxlan_port: Option<u16>,
    /// VXLAN network identifier.
    #[arg(long)]
    pub vni: Option<u32>,
    /// Status endpoint address.
    #[arg(long, value_name = "ADDR")]
    pub status_addr: Option<SocketAddr>,
    /// Where nodeplane-cni registers pods.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Service CIDR(s); traffic to unallocated IPs inside them is dropped.
    #[arg(long = "service-cidr", value_name = "CIDR")]
    pub service_cidrs: Vec<String>,
    /// This node's VTEP MAC (inner source MAC of encapsulated frames).
    #[arg(long, value_name = "MAC")]
    pub vtep_mac: Option<String>,
    /// Flow-table capacity per worker (flows).
    #[arg(long)]
    pub flow_capacity: Option<usize>,
    /// Masquerade source-port range, e.g. 61000-65535.
    #[arg(long, value_name = "LO-HI")]
    pub masquerade_ports: Option<String>,
    /// Maglev table size (a prime).
    #[arg(long)]
    pub maglev_size: Option<u32>,
    /// Cores to pin workers to, e.g. `2,3` (default: automatic, sparing core 0).
    #[arg(long, value_name = "LIST")]
    pub cores: Option<String>,
    /// Sleep this many µs between polls when a worker is idle (0: always
    /// busy-poll, the default; use on shared machines and labs).
    #[arg(long, value_name = "US")]
    pub idle_sleep_us: Option<u64>,
    /// Fragment-table arena per worker, in bytes: IPv4 fragments that wait
    /// for their datagram's first fragment (default 1048576; 2 KiB a fragment).
    #[arg(long, value_name = "BYTES")]
    pub frag_memory: Option<usize>,
    /// Datagrams the fragment table tracks at once per worker (default 1024).
    #[arg(long, value_name = "N")]
    pub frag_datagrams: Option<usize>,
    /// Seconds a datagram's fragments are remembered (default 5).
    #[arg(long, value_name = "SECS")]
    pub frag_timeout: Option<u64>,
    /// How the XDP steering program is attached: auto (driver mode, else
    /// generic; the default), native (driver mode only) or generic. Generic
    /// mode runs after Receive Packet Steering, so RPS can move the receive
    /// work of a veth off the sending CPU (labs of network namespaces).
    #[arg(long, value_name = "MODE")]
    pub xdp_mode: Option<String>,
    /// kube-proxy's masqueradeAll: masquerade every flow to a ClusterIP.
    #[arg(long)]
    pub masquerade_all: bool,
    /// kube-proxy's detectLocalMode, which sources are the cluster's:
    /// ClusterCIDR (the default: --cluster-cidr, else every Node's podCIDRs),
    /// NodeCIDR (this node's podCIDRs), BridgeInterface
    /// (--pod-bridge-interface) or InterfaceNamePrefix
    /// (--pod-interface-name-prefix).
    #[arg(long, value_name = "MODE")]
    pub detect_local_mode: Option<String>,
    /// The cluster's pod CIDR(s), for detectLocalMode ClusterCIDR.
    #[arg(long = "cluster-cidr", value_name = "CIDR")]
    pub cluster_cidrs: Vec<String>,
    /// For detectLocalMode BridgeInterface: the bridge the pods hang off.
    #[arg(long, value_name = "IF")]
    pub pod_bridge_interface: Option<String>,
    /// For detectLocalMode InterfaceNamePrefix: the prefix of the pods'
    /// host interfaces.
    #[arg(long, value_name = "PREFIX")]
    pub pod_interface_name_prefix: Option<String>,
    /// Which external Service traffic is masqueraded: kube-proxy (the
    /// default: kube-proxy's decisions) or remote-only (eTP=Cluster traffic
    /// to a NodePort, externalIP or LoadBalancer IP keeps its client address
    /// toward a backend on this node).
    #[arg(long, value_name = "MODE")]
    pub masquerade_mode: Option<String>,
    /// kube-proxy's nodePortAddresses: NodePorts answer only on the node IPs
    /// inside these CIDRs, or on its primary IP with `primary` (a
    /// comma-separated list; default: every node IP).
    #[arg(long = "nodeport-addresses", value_name = "LIST")]
    pub nodeport_addresses: Vec<String>,
    /// Do not create the host interface (nph0/nph1): the node's own processes
    /// then do not reach Services through nodeplane.
    #[arg(long)]
    pub no_host_interface: bool,
    /// kube-proxy iptables mode's localhostNodePorts: the node's own
    /// connections to 127.0.0.0/8 on a NodePort are proxied too (default off,
    /// as nftables kube-proxy; needs the host interface).
    #[arg(long)]
    pub localhost_nodeports: bool,
    /// The cluster DNS address (the kubelet's clusterDNS; default: the
    /// ClusterIP of kube-system/kube-dns): the workers answer UDP queries
    /// to it for names under the cluster domain themselves.
    #[arg(long, value_name = "IP")]
    pub cluster_dns: Option<String>,
    /// The cluster domain (the kubelet's clusterDomain; default cluster.local).
    #[arg(long, value_name = "DOMAIN")]
    pub cluster_domain: Option<String>,
    /// The TTL of the workers' DNS answers, in seconds (default 5, as
    /// CoreDNS's kubernetes plugin).
    #[arg(long, value_name = "SECS")]
    pub dns_ttl: Option<u32>,
    /// Do not answer cluster DNS in the workers: every query goes to the
    /// DNS Service's backends.
    #[arg(long)]
    pub no_dns_answers: bool,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// The agent's status endpoint.
    #[arg(long, default_value = "127.0.0.1:10256")]
    pub addr: String,
    /// Output format: table (default) or json.
    #[arg(short = 'o', long = "output", default_value = "table")]
    pub output: String,
}

/// The YAML form of `RunArgs`.
#[derive(serde::Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    pub node_name: Option<String>,
    pub uplink: Option<String>,
    pub manifests: Option<PathBuf>,
    pub kubeconfig: Option<String>,
    pub workers: Option<usize>,
    pub vxlan_port: Option<u16>,
    pub vni: Option<u32>,
    pub status_addr: Option<SocketAddr>,
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub service_cidrs: Vec<String>,
    pub vtep_mac: Option<String>,
    pub flow_capacity: Option<usize>,
    pub masquerade_ports: Option<String>,
    pub maglev_size: Option<u32>,
    pub cores: Option<String>,
    pub idle_sleep_us: Option<u64>,
    pub frag_memory: Option<usize>,
    pub frag_datagrams: Option<usize>,
    pub frag_timeout: Option<u64>,
    pub xdp_mode: Option<String>,
    pub masquerade_all: Option<bool>,
    pub detect_local_mode: Option<String>,
    /// kube-proxy's spelling (`clusterCIDR`); a comma-separated list.
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    /// kube-proxy's `detectLocal: {bridgeInterface, interfaceNamePrefix}`.
    pub detect_local: Option<DetectLocalFile>,
    pub masquerade_mode: Option<String>,
    #[serde(default)]
    pub node_port_addresses: Vec<String>,
    /// `false`: no host interface (`--no-host-interface`).
    pub host_interface: Option<bool>,
    /// kube-proxy's `iptables: {localhostNodePorts}`.
    pub iptables: Option<IptablesFile>,
    /// The kubelet's spelling: `clusterDNS: [IP, ...]` (the first IPv4).
    #[serde(rename = "clusterDNS", default)]
    pub cluster_dns: Vec<String>,
    pub cluster_domain: Option<String>,
    #[serde(rename = "dnsTTL")]
    pub dns_ttl: Option<u32>,
    /// `false`: `--no-dns-answers`.
    pub dns_answers: Option<bool>,
}

/// The `iptables` block of the config file: of kube-proxy's, the setting
/// that changes what is proxied.
#[derive(serde::Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IptablesFile {
    #[serde(rename = "localhostNodePorts")]
    pub localhost_nodeports: Option<bool>,
}

/// The `detectLocal` block of the config file, as kube-proxy's.
#[derive(serde::Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DetectLocalFile {
    pub bridge_interface: Option<String>,
    pub interface_name_prefix: Option<String>,
}

/// kube-proxy's `detectLocalMode` with its parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DetectLocal {
    /// Sources in these CIDRs; none given: every Node's podCIDRs.
    ClusterCidr(Vec<Ipv4Cidr>),
    NodeCidr,
    BridgeInterface(String),
    InterfaceNamePrefix(String),
}

/// One entry of kube-proxy's `nodePortAddresses`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodePortAddress {
    /// The node's primary IP (its first InternalIP, else the uplink's).
    Primary,
    Cidr(Ipv4Cidr),
}

/// Which flows to Services are masqueraded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasqueradeConfig {
    pub mode: shared::snapshot::MasqueradeMode,
    pub all: bool,
    pub detect_local: DetectLocal,
}

impl Default for MasqueradeConfig {
    fn default() -> Self {
        MasqueradeConfig {
            mode: shared::snapshot::MasqueradeMode::KubeProxy,
            all: false,
            detect_local: DetectLocal::ClusterCidr(Vec::new()),
        }
    }
}

/// Where Kubernetes objects come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Manifests(PathBuf),
    /// `None` = in-cluster configuration.
    ApiServer(Option<PathBuf>),
}

/// Validated settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub node_name: String,
    pub uplink: String,
    pub source: Source,
    pub workers: usize,
    pub vxlan_port: u16,
    pub vni: u32,
    pub status_addr: SocketAddr,
    pub state_dir: PathBuf,
    pub service_cidrs: Vec<Ipv4Cidr>,
    pub vtep_mac: Mac,
    pub flow_capacity: usize,
    pub masquerade_ports: (u16, u16),
    pub maglev_size: u32,
    /// Explicit worker cores (empty: automatic).
    pub cores: Vec<usize>,
    /// 0: busy-poll always.
    pub idle_sleep_us: u64,
    /// None: driver mode, falling back to generic.
    pub xdp_mode: Option<XdpMode>,
    /// Fragment-table limits per worker.
    pub frag: FragConfig,
    pub masquerade: MasqueradeConfig,
    /// Empty: NodePorts on every node IP.
    pub nodeport_addresses: Vec<NodePortAddress>,
    /// Create the host interface (`hostif`) so the node's own processes reach
    /// Services (default true).
    pub host_interface: bool,
    /// Proxy the node's connections to NodePorts on 127.0.0.0/8 (default false).
    pub localhost_nodeports: bool,
    /// Cluster DNS answered by the workers (None: off).
    pub dns: Option<DnsConfig>,
}

/// Cluster DNS as the workers answer it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// None: the ClusterIP of kube-system/kube-dns, when there is one.
    pub server: Option<Ipv4Addr>,
    pub domain: String,
    pub ttl: u32,
}

pub const DEFAULT_STATE_DIR: &str = "/run/nodeplane/pods";
pub const DEFAULT_FLOW_CAPACITY: usize = 262_144;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `message` is the parser's, with line, column and the lines around.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("missing setting: {0}")]
    Missing(&'static str),
    #[error("invalid {what} '{value}': {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: String,
    },
}

fn invalid(what: &'static str, value: impl ToString, why: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        what,
        value: value.to_string(),
        why: why.to_string(),
    }
}

/// Reads a YAML config file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_saphyr::from_str_with_options(&text, crate::manifests::yaml_options()).map_err(|e| {
        let name = path.display().to_string();
        ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.render_with_options(serde_saphyr::render_options! {
                source_name: Some(&name),
            }),
        }
    })
}

/// A locally administered MAC derived from the node name (stable across restarts).
pub fn derived_vtep_mac(node_name: &str) -> Mac {
    let h = shared::snapshot::stable_id(node_name, "vtep", "", shared::L4Proto::Udp);
    let b = h.to_be_bytes();
    [0x0e, b[0], b[1], b[2], b[3], b[4]]
}

fn parse_port_range(s: &str) -> Result<(u16, u16), ConfigError> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| invalid("masquerade port range", s, "want LO-HI"))?;
    let lo: u16 = a
        .trim()
        .parse()
        .map_err(|e| invalid("masquerade port range", s, e))?;
    let hi: u16 = b
        .trim()
        .parse()
        .map_err(|e| invalid("masquerade port range", s, e))?;
    if lo == 0 || lo > hi {
        return Err(invalid("masquerade port range", s, "want 1 ≤ LO ≤ HI"));
    }
    Ok((lo, hi))
}

/// Merges flags over the file (if any) and validates: the file read, the flags
/// merged over it, each setting validated (defaults filled in), `Settings` built.
pub fn resolve(args: &RunArgs) -> Result<Settings, ConfigError> {
    let file = match &args.config {
        Some(p) => read_file(p)?,
        None => FileConfig::default(),
    };
    validate(merge(args, file))
}

/// The flags over the file: each setting from its flag when given, else from
/// the file; the service CIDRs from the flags when any is given. Nothing is
/// checked or defaulted here.
fn merge(args: &RunArgs, file: FileConfig) -> FileConfig {
    let args = args.clone();
    FileConfig {
        node_name: args.node_name.or(file.node_name),
        uplink: args.uplink.or(file.uplink),
        manifests: args.manifests.or(file.manifests),
        kubeconfig: args.kubeconfig.or(file.kubeconfig),
        workers: args.workers.or(file.workers),
        vxlan_port: args.vxlan_port.or(file.vxlan_port),
        vni: args.vni.or(file.vni),
        status_addr: args.status_addr.or(file.status_addr),
        state_dir: args.state_dir.or(file.state_dir),
        service_cidrs: if args.service_cidrs.is_empty() {
            file.service_cidrs
        } else {
            args.service_cidrs
        },
        vtep_mac: args.vtep_mac.or(file.vtep_mac),
        flow_capacity: args.flow_capacity.or(file.flow_capacity),
        masquerade_ports: args.masquerade_ports.or(file.masquerade_ports),
        maglev_size: args.maglev_size.or(file.maglev_size),
        cores: args.cores.or(file.cores),
        idle_sleep_us: args.idle_sleep_us.or(file.idle_sleep_us),
        frag_memory: args.frag_memory.or(file.frag_memory),
        frag_datagrams: args.frag_datagrams.or(file.frag_datagrams),
        frag_timeout: args.frag_timeout.or(file.frag_timeout),
        xdp_mode: args.xdp_mode.or(file.xdp_mode),
        masquerade_all: if args.masquerade_all {
            Some(true)
        } else {
            file.masquerade_all
        },
        detect_local_mode: args.detect_local_mode.or(file.detect_local_mode),
        cluster_cidr: if args.cluster_cidrs.is_empty() {
            file.cluster_cidr
        } else {
            Some(args.cluster_cidrs.join(","))
        },
        detect_local: {
            let f = file.detect_local.unwrap_or_default();
            Some(DetectLocalFile {
                bridge_interface: args.pod_bridge_interface.or(f.bridge_interface),
                interface_name_prefix: args.pod_interface_name_prefix.or(f.interface_name_prefix),
            })
        },
        masquerade_mode: args.masquerade_mode.or(file.masquerade_mode),
        node_port_addresses: if args.nodeport_addresses.is_empty() {
            file.node_port_addresses
        } else {
            args.nodeport_addresses
        },
        host_interface: if args.no_host_interface {
            Some(false)
        } else {
            file.host_interface
        },
        iptables: if args.localhost_nodeports {
            Some(IptablesFile {
                localhost_nodeports: Some(true),
            })
        } else {
            file.iptables
        },
        cluster_dns: match args.cluster_dns {
            Some(ip) => vec![ip],
            None => file.cluster_dns,
        },
        cluster_domain: args.cluster_domain.or(file.cluster_domain),
        dns_ttl: args.dns_ttl.or(file.dns_ttl),
        dns_answers: if args.no_dns_answers {
            Some(false)
        } else {
            file.dns_answers
        },
    }
}

/// Validates the merged settings one by one (the first bad one is the
/// error: the fragment limits, the masquerade settings, then in
/// `Settings`'s order), fills in the
/// defaults and builds `Settings`.
fn validate(m: FileConfig) -> Result<Settings, ConfigError> {
    let frag = frag_config(&m)?;
    let masquerade = masquerade_config(&m)?;
    let dns = dns_config(&m)?;
    let nodeport_addresses = parse_nodeport_addresses(&m.node_port_addresses)?;
    let node_name = required(
        m.node_name,
        "--node-name (or NODE_NAME, or nodeName in the config file)",
    )?;
    let uplink = check_uplink(required(
        m.uplink,
        "--uplink (or uplink in the config file)",
    )?)?;
    let source = source_of(m.manifests, m.kubeconfig)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = check_workers(m.workers.unwrap_or(1), cores)?;
    let vxlan_port = check_vxlan_port(m.vxlan_port.unwrap_or(8472))?;
    let vni = check_vni(m.vni.unwrap_or(1))?;
    let status_addr = m
        .status_addr
        .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 10256)));
    let state_dir = m
        .state_dir
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let service_cidrs = parse_service_cidrs(&m.service_cidrs)?;
    let vtep_mac = match m.vtep_mac {
        Some(s) => parse_vtep_mac(&s)?,
        None => derived_vtep_mac(&node_name),
    };
    let flow_capacity = check_flow_capacity(m.flow_capacity.unwrap_or(DEFAULT_FLOW_CAPACITY))?;
    let masquerade_ports = match m.masquerade_ports {
        Some(s) => parse_port_range(&s)?,
        None => dataplane::pipeline::DEFAULT_MASQ_PORTS,
    };
    let maglev_size = check_maglev_size(
        m.maglev_size
            .unwrap_or(shared::snapshot::DEFAULT_MAGLEV_SIZE),
    )?;
    let cores_list = match m.cores {
        Some(text) => parse_cores(&text, cores)?,
        None => Vec::new(),
    };
    let idle_sleep_us = check_idle_sleep(m.idle_sleep_us.unwrap_or(0))?;
    let xdp_mode = parse_xdp_mode(m.xdp_mode.as_deref())?;
    let host_interface = m.host_interface.unwrap_or(true);
    let localhost_nodeports = m
        .iptables
        .as_ref()
        .and_then(|i| i.localhost_nodeports)
        .unwrap_or(false);
    if localhost_nodeports && !host_interface {
        return Err(invalid(
            "localhost NodePorts",
            "true",
            "the node's loopback connections come in through the host interface, which is off",
        ));
    }
    Ok(Settings {
        node_name,
        uplink,
        source,
        workers,
        vxlan_port,
        vni,
        status_addr,
        state_dir,
        service_cidrs,
        vtep_mac,
        flow_capacity,
        masquerade_ports,
        maglev_size,
        cores: cores_list,
        idle_sleep_us,
        xdp_mode,
        frag,
        masquerade,
        nodeport_addresses,
        host_interface,
        localhost_nodeports,
        dns,
    })
}

/// `--cluster-dns`, `--cluster-domain`, `--dns-ttl`, `--no-dns-answers`.
fn dns_config(m: &FileConfig) -> Result<Option<DnsConfig>, ConfigError> {
    if m.dns_answers == Some(false) {
        return Ok(None);
    }
    let mut server = None;
    for ip in &m.cluster_dns {
        if ip.contains(':') {
            tracing::warn!(ip = %ip, "IPv6 cluster DNS address ignored: nodeplane serves IPv4 only");
            continue;
        }
        let v: Ipv4Addr = ip
            .trim()
            .parse()
            .map_err(|e| invalid("cluster DNS address", ip, e))?;
        server.get_or_insert(v);
    }
    let domain = m
        .cluster_domain
        .as_deref()
        .unwrap_or("cluster.local")
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if shared::dns::to_wire(&domain).is_none() {
        return Err(invalid(
            "cluster domain",
            &domain,
            "want a DNS name (labels of 1-63 characters)",
        ));
    }
    let ttl = m.dns_ttl.unwrap_or(5);
    if ttl > 86_400 {
        return Err(invalid("DNS TTL", ttl, "want 0-86400 seconds"));
    }
    Ok(Some(DnsConfig {
        server,
        domain,
        ttl,
    }))
}

/// `--nodeport-addresses` / `nodePortAddresses`: CIDRs and `primary`, each
/// text a comma-separated list; IPv6 entries are skipped with a warning
/// (nodeplane serves IPv4 only).
fn parse_nodeport_addresses(texts: &[String]) -> Result<Vec<NodePortAddress>, ConfigError> {
    let mut out = Vec::new();
    for t in texts.iter().flat_map(|s| s.split(',')).map(str::trim) {
        if t.is_empty() {
            continue;
        }
        if t == "primary" {
            out.push(NodePortAddress::Primary);
        } else if t.contains(':') {
            tracing::warn!(cidr = %t, "IPv6 nodePortAddresses entry ignored: nodeplane serves IPv4 only");
        } else {
            let c = t.parse::<Ipv4Cidr>().map_err(|e| {
                invalid(
                    "NodePort address",
                    t,
                    format!("{e} (want a CIDR or primary)"),
                )
            })?;
            out.push(NodePortAddress::Cidr(c));
        }
    }
    out.dedup();
    Ok(out)
}

/// A setting that must be given and not empty.
fn required(value: Option<String>, what: &'static str) -> Result<String, ConfigError> {
    value
        .filter(|s| !s.is_empty())
        .ok_or(ConfigError::Missing(what))
}

fn check_uplink(uplink: String) -> Result<String, ConfigError> {
    check_ifname("uplink", uplink)
}

/// At most 15 bytes (IFNAMSIZ − 1), no '/'.
fn check_ifname(what: &'static str, name: String) -> Result<String, ConfigError> {
    if name.len() > 15 || name.contains('/') {
        return Err(invalid(what, &name, "not an interface name"));
    }
    Ok(name)
}

/// Exactly one of a manifest directory and a kubeconfig (`in-cluster`: the
/// pod's service account); an empty kubeconfig is none.
fn source_of(
    manifests: Option<PathBuf>,
    kubeconfig: Option<String>,
) -> Result<Source, ConfigError> {
    match (manifests, kubeconfig.filter(|s| !s.is_empty())) {
        (Some(_), Some(_)) => Err(invalid(
            "source",
            "manifests + kubeconfig",
            "choose one of --manifests and --kubeconfig",
        )),
        (Some(dir), None) => Ok(Source::Manifests(dir)),
        (None, Some(k)) if k == "in-cluster" => Ok(Source::ApiServer(None)),
        (None, Some(k)) => Ok(Source::ApiServer(Some(PathBuf::from(k)))),
        (None, None) => Err(ConfigError::Missing(
            "a source: --manifests DIR or --kubeconfig PATH|in-cluster",
        )),
    }
}

/// 1 to four per core of this machine (`cores`).
fn check_workers(workers: usize, cores: usize) -> Result<usize, ConfigError> {
    if workers == 0 || workers > cores.max(1) * 4 {
        return Err(invalid(
            "workers",
            workers,
            format!("want 1..={}", cores * 4),
        ));
    }
    Ok(workers)
}

fn check_vxlan_port(port: u16) -> Result<u16, ConfigError> {
    if port == 0 {
        return Err(invalid("vxlan port", 0, "must be non-zero"));
    }
    Ok(port)
}

fn check_vni(vni: u32) -> Result<u32, ConfigError> {
    if vni >= 1 << 24 {
        return Err(invalid("vni", vni, "VNIs are 24 bits"));
    }
    Ok(vni)
}

/// Every CIDR of the texts, each text a comma-separated list (empty items skipped).
fn parse_service_cidrs(texts: &[String]) -> Result<Vec<Ipv4Cidr>, ConfigError> {
    texts
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<Ipv4Cidr>()
                .map_err(|e| invalid("service CIDR", t, e))
        })
        .collect()
}

fn parse_vtep_mac(text: &str) -> Result<Mac, ConfigError> {
    parse_mac(text).ok_or_else(|| invalid("VTEP MAC", text, "want aa:bb:cc:dd:ee:ff"))
}

fn check_flow_capacity(capacity: usize) -> Result<usize, ConfigError> {
    if !(1024..=64 << 20).contains(&capacity) {
        return Err(invalid("flow capacity", capacity, "want 1024..=67108864"));
    }
    Ok(capacity)
}

fn check_maglev_size(size: u32) -> Result<u32, ConfigError> {
    if !(7..=1_000_003).contains(&size) {
        return Err(invalid("maglev size", size, "want 7..=1000003 (a prime)"));
    }
    Ok(size)
}

/// A comma-separated list of cores, each below `cores` (this machine's), at
/// least one.
fn parse_cores(text: &str, cores: usize) -> Result<Vec<usize>, ConfigError> {
    let mut list = Vec::new();
    for t in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let c: usize = t
            .parse()
            .map_err(|e| invalid("cores", text, format!("'{t}': {e}")))?;
        if c >= cores {
            return Err(invalid(
                "cores",
                text,
                format!("core {c} does not exist (this machine has {cores})"),
            ));
        }
        list.push(c);
    }
    if list.is_empty() {
        return Err(invalid("cores", text, "want a list such as 0,1"));
    }
    Ok(list)
}

fn check_idle_sleep(us: u64) -> Result<u64, ConfigError> {
    if us > 100_000 {
        return Err(invalid("idle sleep", us, "want 0..=100000 µs"));
    }
    Ok(us)
}

/// None (auto): driver mode, falling back to generic.
fn parse_xdp_mode(text: Option<&str>) -> Result<Option<XdpMode>, ConfigError> {
    match text {
        None | Some("auto") => Ok(None),
        Some("native") => Ok(Some(XdpMode::Native)),
        Some("generic") => Ok(Some(XdpMode::Generic)),
        Some(other) => Err(invalid("XDP mode", other, "want auto, native or generic")),
    }
}

/// The masquerade settings: `--masquerade-mode`, `--masquerade-all`, and
/// kube-proxy's `--detect-local-mode` with the parameter its mode needs (a
/// parameter for another mode is an error, as it would be ignored).
fn masquerade_config(m: &FileConfig) -> Result<MasqueradeConfig, ConfigError> {
    use shared::snapshot::MasqueradeMode;
    let mode = match m.masquerade_mode.as_deref() {
        None | Some("kube-proxy") => MasqueradeMode::KubeProxy,
        Some("remote-only") => MasqueradeMode::RemoteOnly,
        Some(other) => {
            return Err(invalid(
                "masquerade mode",
                other,
                "want kube-proxy or remote-only",
            ))
        }
    };
    // kube-proxy's clusterCIDR may list both families; IPv6 is not served
    // yet (its entries are skipped, with a warning).
    let text = m.cluster_cidr.as_deref().unwrap_or("");
    let (v6, v4): (Vec<&str>, Vec<&str>) = text.split(',').partition(|t| t.contains(':'));
    for t in v6.iter().map(|t| t.trim()) {
        tracing::warn!(cidr = %t, "IPv6 cluster CIDR ignored: nodeplane serves IPv4 only");
    }
    let cidrs = parse_cidr_list("cluster CIDR", &v4.join(","))?;
    let dl = m.detect_local.clone().unwrap_or_default();
    let bridge = dl.bridge_interface.filter(|s| !s.is_empty());
    let prefix = dl.interface_name_prefix.filter(|s| !s.is_empty());
    let mode_name = m.detect_local_mode.as_deref().unwrap_or("ClusterCIDR");
    let unused = |what: &'static str, given: bool| {
        if given {
            Err(invalid(
                "detect-local mode",
                mode_name,
                format!("{what} is only used with another detect-local mode"),
            ))
        } else {
            Ok(())
        }
    };
    let detect_local = match mode_name {
        "ClusterCIDR" | "" => {
            unused("--pod-bridge-interface", bridge.is_some())?;
            unused("--pod-interface-name-prefix", prefix.is_some())?;
            DetectLocal::ClusterCidr(cidrs)
        }
        "NodeCIDR" => {
            unused("--cluster-cidr", !cidrs.is_empty())?;
            unused("--pod-bridge-interface", bridge.is_some())?;
            unused("--pod-interface-name-prefix", prefix.is_some())?;
            DetectLocal::NodeCidr
        }
        "BridgeInterface" => {
            unused("--cluster-cidr", !cidrs.is_empty())?;
            unused("--pod-interface-name-prefix", prefix.is_some())?;
            DetectLocal::BridgeInterface(check_ifname(
                "pod bridge interface",
                bridge.ok_or(ConfigError::Missing(
                    "--pod-bridge-interface (or detectLocal.bridgeInterface) for BridgeInterface",
                ))?,
            )?)
        }
        "InterfaceNamePrefix" => {
            unused("--cluster-cidr", !cidrs.is_empty())?;
            unused("--pod-bridge-interface", bridge.is_some())?;
            DetectLocal::InterfaceNamePrefix(prefix.ok_or(ConfigError::Missing(
                "--pod-interface-name-prefix (or detectLocal.interfaceNamePrefix) for InterfaceNamePrefix",
            ))?)
        }
        other => {
            return Err(invalid(
                "detect-local mode",
                other,
                "want ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix",
            ))
        }
    };
    Ok(MasqueradeConfig {
        mode,
        all: m.masquerade_all.unwrap_or(false),
        detect_local,
    })
}

/// A comma-separated list of CIDRs (empty items skipped).
fn parse_cidr_list(what: &'static str, text: &str) -> Result<Vec<Ipv4Cidr>, ConfigError> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<Ipv4Cidr>().map_err(|e| invalid(what, t, e)))
        .collect()
}

/// The fragment-table limits (`--frag-memory`, `--frag-datagrams`,
/// `--frag-timeout`), defaults filled in.
fn frag_config(m: &FileConfig) -> Result<FragConfig, ConfigError> {
    let d = FragConfig::default();
    let memory_bytes = m.frag_memory.unwrap_or(d.memory_bytes);
    if !(64 << 10..=1 << 30).contains(&memory_bytes) {
        return Err(invalid(
            "fragment memory",
            memory_bytes,
            "want 65536..=1073741824 bytes",
        ));
    }
    let datagrams = m.frag_datagrams.unwrap_or(d.datagrams);
    if !(16..=1 << 20).contains(&datagrams) {
        return Err(invalid(
            "fragment datagrams",
            datagrams,
            "want 16..=1048576",
        ));
    }
    let secs = m.frag_timeout.unwrap_or(d.timeout_ns / 1_000_000_000);
    if !(1..=60).contains(&secs) {
        return Err(invalid("fragment timeout", secs, "want 1..=60 s"));
    }
    Ok(FragConfig {
        memory_bytes,
        timeout_ns: secs * 1_000_000_000,
        datagrams,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RunArgs {
        RunArgs {
            node_name: Some("node-a".into()),
            uplink: Some("eth0".into()),
            manifests: Some("configs/demo".into()),
            ..RunArgs::default()
        }
    }

    #[test]
    fn defaults() {
        let s = resolve(&args()).unwrap();
        assert_eq!(s.vxlan_port, 8472);
        assert_eq!(s.vni, 1);
        assert_eq!(s.workers, 1);
        assert_eq!(s.status_addr.to_string(), "127.0.0.1:10256");
        assert_eq!(s.source, Source::Manifests("configs/demo".into()));
        assert_eq!(s.masquerade_ports, (61000, 65535));
        assert_eq!(s.vtep_mac[0], 0x0e);
        assert_eq!(s.vtep_mac, derived_vtep_mac("node-a"));
    }

    #[test]
    fn bad_flags_are_clear_errors() {
        let mut a = args();
        a.service_cidrs = vec!["198.18.96.0/33".into()];
        assert!(resolve(&a)
            .unwrap_err()
            .to_string()
            .contains("service CIDR"));
        let mut a = args();
        a.vni = Some(1 << 24);
        assert!(resolve(&a).unwrap_err().to_string().contains("vni"));
        let mut a = args();
        a.vtep_mac = Some("zz".into());
        assert!(resolve(&a).unwrap_err().to_string().contains("VTEP MAC"));
        let mut a = args();
        a.masquerade_ports = Some("70000-1".into());
        assert!(resolve(&a).unwrap_err().to_string().contains("masquerade"));
        let mut a = args();
        a.manifests = None;
        assert!(resolve(&a).unwrap_err().to_string().contains("source"));
        let mut a = args();
        a.node_name = None;
        assert!(matches!(resolve(&a), Err(ConfigError::Missing(_))));
        let mut a = args();
        a.workers = Some(0);
        assert!(resolve(&a).unwrap_err().to_string().contains("workers"));
        let mut a = args();
        a.xdp_mode = Some("offload".into());
        assert!(resolve(&a).unwrap_err().to_string().contains("XDP mode"));
    }

    #[test]
    fn fragment_limits_default_and_are_bounded() {
        assert_eq!(resolve(&args()).unwrap().frag, FragConfig::default());
        let mut a = args();
        a.frag_memory = Some(4 << 20);
        a.frag_datagrams = Some(4096);
        a.frag_timeout = Some(30);
        let f = resolve(&a).unwrap().frag;
        assert_eq!(
            (f.memory_bytes, f.datagrams, f.timeout_ns),
            (4 << 20, 4096, 30_000_000_000)
        );
        for (what, set) in [
            ("fragment memory", (Some(1000), None, None)),
            ("fragment datagrams", (None, Some(0), None)),
            ("fragment timeout", (None, None, Some(0))),
            ("fragment timeout", (None, None, Some(3600))),
        ] {
            let mut a = args();
            (a.frag_memory, a.frag_datagrams, a.frag_timeout) = set;
            let e = resolve(&a).unwrap_err().to_string();
            assert!(e.contains(what), "{what}: {e}");
        }
    }

    #[test]
    fn xdp_mode_is_auto_unless_chosen() {
        assert_eq!(resolve(&args()).unwrap().xdp_mode, None);
        for (text, want) in [
            ("auto", None),
            ("native", Some(XdpMode::Native)),
            ("generic", Some(XdpMode::Generic)),
        ] {
            let mut a = args();
            a.xdp_mode = Some(text.into());
            assert_eq!(resolve(&a).unwrap().xdp_mode, want, "{text}");
        }
    }

    #[test]
    fn masquerade_settings_as_kube_proxys() {
        use shared::snapshot::MasqueradeMode;
        let m = resolve(&args()).unwrap().masquerade;
        assert_eq!(m, MasqueradeConfig::default());
        assert_eq!(m.detect_local, DetectLocal::ClusterCidr(Vec::new()));
        let with = |f: &dyn Fn(&mut RunArgs)| {
            let mut a = args();
            f(&mut a);
            resolve(&a).map(|s| s.masquerade)
        };
        let m = with(&|a| {
            a.masquerade_all = true;
            a.cluster_cidrs = vec!["198.19.0.0/16".into()];
            a.masquerade_mode = Some("remote-only".into());
        })
        .unwrap();
        assert!(m.all);
        assert_eq!(m.mode, MasqueradeMode::RemoteOnly);
        assert_eq!(
            m.detect_local,
            DetectLocal::ClusterCidr(vec!["198.19.0.0/16".parse().unwrap()])
        );
        let m = with(&|a| {
            a.detect_local_mode = Some("InterfaceNamePrefix".into());
            a.pod_interface_name_prefix = Some("np".into());
        })
        .unwrap();
        assert_eq!(
            m.detect_local,
            DetectLocal::InterfaceNamePrefix("np".into())
        );
        let m = with(&|a| a.detect_local_mode = Some("NodeCIDR".into())).unwrap();
        assert_eq!(m.detect_local, DetectLocal::NodeCidr);
        // Errors name the setting and what is wanted.
        let err = |f: &dyn Fn(&mut RunArgs)| with(f).unwrap_err().to_string();
        let e = err(&|a| a.detect_local_mode = Some("Magic".into()));
        assert!(
            e.contains("Magic") && e.contains("ClusterCIDR, NodeCIDR"),
            "{e}"
        );
        let e = err(&|a| a.detect_local_mode = Some("BridgeInterface".into()));
        assert!(e.contains("--pod-bridge-interface"), "{e}");
        let e = err(&|a| {
            a.detect_local_mode = Some("NodeCIDR".into());
            a.cluster_cidrs = vec!["198.19.0.0/16".into()];
        });
        assert!(e.contains("--cluster-cidr"), "{e}");
        // Dual-stack, as kube-proxy's config often has it: the IPv6 part is skipped.
        let m = with(&|a| a.cluster_cidrs = vec!["198.19.0.0/16,2001:db8:42::/56".into()]).unwrap();
        assert_eq!(
            m.detect_local,
            DetectLocal::ClusterCidr(vec!["198.19.0.0/16".parse().unwrap()])
        );
        let e = err(&|a| a.cluster_cidrs = vec!["198.19.0.0/33".into()]);
        assert!(e.contains("cluster CIDR"), "{e}");
        let e = err(&|a| a.masquerade_mode = Some("never".into()));
        assert!(e.contains("kube-proxy or remote-only"), "{e}");
    }

    #[test]
    fn the_host_interface_is_on_unless_turned_off() {
        assert!(resolve(&args()).unwrap().host_interface);
        let mut a = args();
        a.no_host_interface = true;
        assert!(!resolve(&a).unwrap().host_interface);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(
            &p,
            "nodeName: n\nuplink: eth0\nmanifests: d\nhostInterface: false\n",
        )
        .unwrap();
        let f = RunArgs {
            config: Some(p),
            ..RunArgs::default()
        };
        assert!(!resolve(&f).unwrap().host_interface);
    }

    #[test]
    fn nodeport_addresses_as_kube_proxys() {
        assert!(resolve(&args()).unwrap().nodeport_addresses.is_empty());
        let mut a = args();
        a.nodeport_addresses = vec!["primary,198.18.0.0/24".into(), "2001:db8::/64".into()];
        assert_eq!(
            resolve(&a).unwrap().nodeport_addresses,
            vec![
                NodePortAddress::Primary,
                NodePortAddress::Cidr("198.18.0.0/24".parse().unwrap())
            ]
        );
        a.nodeport_addresses = vec!["198.18.0.300/24".into()];
        let e = resolve(&a).unwrap_err().to_string();
        assert!(
            e.contains("NodePort address") && e.contains("primary"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(
            &p,
            "nodeName: n\nuplink: eth0\nmanifests: d\nnodePortAddresses: [primary]\n",
        )
        .unwrap();
        let f = RunArgs {
            config: Some(p),
            ..RunArgs::default()
        };
        assert_eq!(
            resolve(&f).unwrap().nodeport_addresses,
            vec![NodePortAddress::Primary]
        );
    }

    #[test]
    fn cluster_dns_settings() {
        let d = resolve(&args()).unwrap().dns.unwrap();
        assert_eq!(
            d,
            DnsConfig {
                server: None,
                domain: "cluster.local".into(),
                ttl: 5
            }
        );
        let mut a = args();
        a.cluster_dns = Some("198.18.96.53".into());
        a.cluster_domain = Some("Corp.Example.".into());
        a.dns_ttl = Some(30);
        let d = resolve(&a).unwrap().dns.unwrap();
        assert_eq!(d.server, Some(Ipv4Addr::new(198, 18, 96, 53)));
        assert_eq!((d.domain.as_str(), d.ttl), ("corp.example", 30));
        a.no_dns_answers = true;
        assert!(resolve(&a).unwrap().dns.is_none());
        for (field, value) in [
            ("cluster_dns", "198.18.96.300"),
            ("cluster_domain", "a..b"),
            ("dns_ttl", "100000"),
        ] {
            let mut a = args();
            match field {
                "cluster_dns" => a.cluster_dns = Some(value.into()),
                "cluster_domain" => a.cluster_domain = Some(value.into()),
                _ => a.dns_ttl = Some(value.parse().unwrap()),
            }
            let e = resolve(&a).unwrap_err().to_string();
            assert!(e.contains(value), "{field}: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(
            &p,
            "nodeName: n\nuplink: eth0\nmanifests: d\nclusterDNS: [\"2001:db8::a\", 198.18.96.53]\nclusterDomain: cluster.local\ndnsTTL: 10\n",
        )
        .unwrap();
        let d = resolve(&RunArgs {
            config: Some(p),
            ..RunArgs::default()
        })
        .unwrap()
        .dns
        .unwrap();
        assert_eq!(
            (d.server, d.ttl),
            (Some(Ipv4Addr::new(198, 18, 96, 53)), 10)
        );
    }

    #[test]
    fn localhost_nodeports_as_kube_proxys_iptables_mode() {
        assert!(!resolve(&args()).unwrap().localhost_nodeports);
        let mut a = args();
        a.localhost_nodeports = true;
        assert!(resolve(&a).unwrap().localhost_nodeports);
        a.no_host_interface = true;
        let e = resolve(&a).unwrap_err().to_string();
        assert!(e.contains("host interface"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        let file = |body: &str| {
            std::fs::write(
                &p,
                format!("nodeName: n\nuplink: eth0\nmanifests: d\n{body}"),
            )
            .unwrap();
            resolve(&RunArgs {
                config: Some(p.clone()),
                ..RunArgs::default()
            })
        };
        assert!(
            file("iptables: {localhostNodePorts: true}\n")
                .unwrap()
                .localhost_nodeports
        );
        assert!(
            !file("iptables: {localhostNodePorts: false}\n")
                .unwrap()
                .localhost_nodeports
        );
        let e = file("iptables: {masqueradeBit: 14}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("masqueradeBit"), "{e}");
    }

    #[test]
    fn masquerade_settings_from_the_file_in_kube_proxys_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(
            &p,
            "nodeName: n\nuplink: eth0\nmanifests: d\nmasqueradeAll: true\ndetectLocalMode: BridgeInterface\ndetectLocal: {bridgeInterface: cni0}\n",
        )
        .unwrap();
        let a = RunArgs {
            config: Some(p.clone()),
            ..RunArgs::default()
        };
        let m = resolve(&a).unwrap().masquerade;
        assert!(m.all);
        assert_eq!(m.detect_local, DetectLocal::BridgeInterface("cni0".into()));
        std::fs::write(
            &p,
            "nodeName: n\nuplink: eth0\nmanifests: d\nclusterCIDR: 198.19.0.0/16,198.20.0.0/16\n",
        )
        .unwrap();
        let m = resolve(&a).unwrap().masquerade;
        assert_eq!(
            m.detect_local,
            DetectLocal::ClusterCidr(vec![
                "198.19.0.0/16".parse().unwrap(),
                "198.20.0.0/16".parse().unwrap()
            ])
        );
    }

    #[test]
    fn file_then_flags_override() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(
            &p,
            "nodeName: node-b\nuplink: ens3\nkubeconfig: in-cluster\nvxlanPort: 4789\nvni: 42\nserviceCidrs: [\"10.96.0.0/12\"]\nvtepMac: \"02:00:00:00:03:01\"\n",
        )
        .unwrap();
        let a = RunArgs {
            config: Some(p.clone()),
            vni: Some(7),
            ..RunArgs::default()
        };
        let s = resolve(&a).unwrap();
        assert_eq!(s.node_name, "node-b");
        assert_eq!(s.uplink, "ens3");
        assert_eq!(s.source, Source::ApiServer(None));
        assert_eq!(s.vxlan_port, 4789);
        assert_eq!(s.vni, 7);
        assert_eq!(s.service_cidrs, vec!["10.96.0.0/12".parse().unwrap()]);
        assert_eq!(s.vtep_mac, [2, 0, 0, 0, 3, 1]);
        std::fs::write(&p, "nodeName: x\nbogusKey: 1\n").unwrap();
        let err = resolve(&a).unwrap_err().to_string();
        assert!(err.contains("c.yaml") && err.contains("bogusKey"), "{err}");
        // The position, in the file's name, with the offending line shown.
        assert!(err.contains("line 2 column 1"), "{err}");
        assert!(err.contains(&format!("{}:2:1", p.display())), "{err}");
        assert!(err.contains("2 | bogusKey: 1"), "{err}");
        // A type error names the line too.
        std::fs::write(
            &p,
            "nodeName: x
vni: many
",
        )
        .unwrap();
        let err = resolve(&a).unwrap_err().to_string();
        assert!(err.contains("line 2 column 6"), "{err}");
    }
}
