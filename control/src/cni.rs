//! The nodeplane CNI plugin (spec 1.0: ADD, DEL, CHECK, VERSION): a veth pair per
//! pod, the pod end renamed to CNI_IFNAME with its IPAM address as /32, a default
//! route via the link-local gateway 169.254.1.1 (a permanent neighbour entry for
//! it, proxy ARP on the host end), tx checksum offload off on both ends, and a
//! registration record for the agent (`podstate`). Links, addresses, routes and
//! neighbours are configured over rtnetlink; pod-side steps run on a thread that
//! entered CNI_NETNS with setns(2). Proxy ARP is a /proc/sys write and the
//! checksum offload an ethtool ioctl (rtnetlink speaks neither).

use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol, RouteScope};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use serde::Deserialize;
use serde_json::{json, Value};
use thiserror::Error;

use crate::podstate::{self, PodRecord};

/// CNI versions this plugin speaks (CHECK exists from 0.4.0 on).
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// The pod's default gateway: link-local, answered by the host end of the veth.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Where IPAM plugins are looked for when CNI_PATH is empty.
pub const DEFAULT_CNI_PATH: &str = "/opt/cni/bin:/usr/lib/cni";
/// VXLAN encapsulation overhead: pods get the uplink MTU minus this.
pub const VXLAN_OVERHEAD: u32 = 50;
/// Uplink MTU assumed when neither `mtu` nor an uplink can be found.
const FALLBACK_UPLINK_MTU: u32 = 1500;

/// Everything that can go wrong, with its CNI error code.
#[derive(Debug, Error)]
pub enum CniError {
    #[error("incompatible CNI version {0:?} (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0)")]
    IncompatibleVersion(String),
    #[error("invalid environment: {0}")]
    InvalidEnv(String),
    #[error("network namespace {path}: {reason}")]
    ContainerUnknown { path: String, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot decode the network configuration: {0}")]
    Decode(String),
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    #[error("IPAM plugin {plugin} failed: {msg}")]
    Ipam {
        plugin: String,
        code: u32,
        msg: String,
        details: String,
    },
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("CHECK failed: {0}")]
    Check(String),
}

impl CniError {
    /// The CNI error code (1-99 reserved by the spec, 100+ plugin specific).
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion(_) => 1,
            CniError::ContainerUnknown { .. } => 3,
            CniError::InvalidEnv(_) => 4,
            CniError::Io { .. } => 5,
            CniError::Decode(_) => 6,
            CniError::InvalidConfig(_) => 7,
            CniError::Ipam { code, .. } => *code,
            CniError::Netlink { .. } => 100,
            CniError::Check(_) => 101,
        }
    }

    /// The error as the CNI error JSON object.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let details = match self {
            CniError::Ipam { details, .. } => details.clone(),
            CniError::Netlink { what, .. } => what.clone(),
            CniError::Io { source, .. } => source.to_string(),
            _ => String::new(),
        };
        json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.to_string(),
            "details": details,
        })
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> CniError {
    let what = what.into();
    move |source| CniError::Io { what, source }
}

/// CNI_COMMAND.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
    Check,
    Version,
}

impl CniCommand {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ADD" => Some(CniCommand::Add),
            "DEL" => Some(CniCommand::Del),
            "CHECK" => Some(CniCommand::Check),
            "VERSION" => Some(CniCommand::Version),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
            CniCommand::Version => "VERSION",
        }
    }
}

/// The CNI_* environment of one invocation (VERSION needs none of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniEnv {
    pub command: CniCommand,
    pub container_id: String,
    /// CNI_NETNS; may be empty for DEL.
    pub netns: String,
    pub ifname: String,
    /// CNI_PATH split on ':' (the default directories when unset or empty).
    pub path: Vec<PathBuf>,
    /// CNI_ARGS as given.
    pub args: String,
}

impl CniEnv {
    /// Reads and validates the environment through `get`.
    pub fn from_vars(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let command_s = get("CNI_COMMAND")
            .ok_or_else(|| CniError::InvalidEnv("CNI_COMMAND is not set".into()))?;
        let command = CniCommand::parse(&command_s).ok_or_else(|| {
            CniError::InvalidEnv(format!(
                "CNI_COMMAND {command_s:?} is not one of ADD, DEL, CHECK, VERSION"
            ))
        })?;
        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        let netns = get("CNI_NETNS").unwrap_or_default();
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        let path_s = get("CNI_PATH").filter(|p| !p.is_empty());
        let path = path_s
            .as_deref()
            .unwrap_or(DEFAULT_CNI_PATH)
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        let args = get("CNI_ARGS").unwrap_or_default();
        let env = CniEnv {
            command,
            container_id,
            netns,
            ifname,
            path,
            args,
        };
        if command != CniCommand::Version {
            validate_container_id(&env.container_id)?;
            validate_ifname(&env.ifname)?;
            if command != CniCommand::Del && env.netns.is_empty() {
                return Err(CniError::InvalidEnv(format!(
                    "CNI_NETNS is required for {}",
                    command.as_str()
                )));
            }
            parse_cni_args(&env.args)?;
        }
        Ok(env)
    }

    /// A CNI_ARGS value (e.g. K8S_POD_NAME), if given.
    pub fn arg(&self, key: &str) -> Option<String> {
        parse_cni_args(&self.args)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

/// Splits CNI_ARGS ("K=V;K=V") into pairs.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    s.split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CniError::InvalidEnv(format!(
                "CNI_ARGS item {kv:?} is not KEY=VALUE"
            ))),
        })
        .collect()
}

fn validate_container_id(id: &str) -> Result<(), CniError> {
    let ok = !id.is_empty()
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CniError::InvalidEnv(format!(
            "CNI_CONTAINERID {id:?} must be non-empty and contain only letters, digits, '_', '.', '-'"
        )))
    }
}

fn validate_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(CniError::InvalidEnv(format!(
            "CNI_IFNAME {name:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
        )))
    }
}

/// The `ipam` section: its `type` names the plugin; the rest is the plugin's.
#[derive(Clone, Debug, Deserialize)]
pub struct IpamConf {
    #[serde(rename = "type")]
    pub ipam_type: String,
}

/// The network configuration on stdin.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    pub ipam: Option<IpamConf>,
    /// Pod MTU; default: the uplink's MTU minus 50.
    pub mtu: Option<u32>,
    /// The node's uplink (for the default MTU); default: the default route's device.
    pub uplink: Option<String>,
    /// Where pods are registered for the agent.
    pub state_dir: Option<PathBuf>,
    /// Add a /32 route to the pod on the host end (default true), so the node
    /// itself reaches its pods through the kernel.
    pub host_route: Option<bool>,
    /// Queue pairs of both veth ends (default: one per CPU).
    pub queues: Option<u32>,
    pub dns: Option<Value>,
    pub prev_result: Option<Value>,
}

impl NetConf {
    /// Parses and validates stdin.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let conf: NetConf =
            serde_json::from_slice(stdin).map_err(|e| CniError::Decode(e.to_string()))?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::IncompatibleVersion(conf.cni_version));
        }
        if conf.name.is_empty() {
            return Err(CniError::InvalidConfig("\"name\" is missing".into()));
        }
        let ipam = conf
            .ipam
            .as_ref()
            .ok_or_else(|| CniError::InvalidConfig("\"ipam\" is missing".into()))?;
        if ipam.ipam_type.is_empty()
            || ipam.ipam_type.contains('/')
            || ipam.ipam_type.starts_with('.')
        {
            return Err(CniError::InvalidConfig(format!(
                "ipam.type {:?} is not a plugin name",
                ipam.ipam_type
            )));
        }
        if let Some(q) = conf.queues {
            if !(1..=64).contains(&q) {
                return Err(CniError::InvalidConfig(format!(
                    "queues {q} is outside 1..64"
                )));
            }
        }
        if let Some(mtu) = conf.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(CniError::InvalidConfig(format!(
                    "mtu {mtu} is outside 68..65535"
                )));
            }
        }
        Ok(conf)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(podstate::DEFAULT_STATE_DIR))
    }

    fn ipam_type(&self) -> &str {
        self.ipam
            .as_ref()
            .map(|i| i.ipam_type.as_str())
            .unwrap_or("")
    }
}

/// The host end's name: "np" + 11 hex digits of a 64-bit FNV-1a hash of the
/// container id and interface name (13 characters, stable across calls).
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(ifname.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("np{:011x}", h >> 20)
}

/// The ADD/CHECK result object for a set-up pod.
pub fn build_result(cni_version: &str, rec: &PodRecord, dns: Option<&Value>) -> Value {
    let mut ip = json!({
        "address": format!("{}/32", rec.ip),
        "gateway": POD_GATEWAY.to_string(),
        "interface": 1,
    });
    if cni_version != "1.0.0" {
        ip["version"] = json!("4");
    }
    json!({
        "cniVersion": cni_version,
        "interfaces": [
            {"name": rec.host_ifname, "mac": rec.host_mac},
            {"name": rec.ifname, "mac": rec.mac, "sandbox": rec.netns},
        ],
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": POD_GATEWAY.to_string()}],
        "dns": dns.cloned().unwrap_or_else(|| json!({})),
    })
}

/// The VERSION answer.
pub fn version_result(requested: Option<&str>) -> Value {
    let v = requested
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .unwrap_or("1.0.0");
    json!({"cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS})
}

/// The first IPv4 address (and its prefix length) in an IPAM result, of any
/// result version (0.2.0 `ip4.ip` or 0.3.0+ `ips[].address`).
pub fn parse_ipam_result(stdout: &[u8]) -> Result<(Ipv4Addr, u8), CniError> {
    let v: Value = serde_json::from_slice(stdout)
        .map_err(|e| CniError::Decode(format!("IPAM result: {e}")))?;
    let mut candidates: Vec<&str> = Vec::new();
    if let Some(ips) = v.get("ips").and_then(Value::as_array) {
        candidates.extend(ips.iter().filter_map(|i| i.get("address")?.as_str()));
    }
    if let Some(ip4) = v
        .get("ip4")
        .and_then(|i| i.get("ip"))
        .and_then(Value::as_str)
    {
        candidates.push(ip4);
    }
    candidates
        .into_iter()
        .find_map(parse_cidr)
        .ok_or_else(|| CniError::Decode(format!("IPAM result has no IPv4 address: {v}")))
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let ip: Ipv4Addr = a.parse().ok()?;
    let prefix: u8 = p.parse().ok()?;
    (prefix <= 32).then_some((ip, prefix))
}

/// Runs one invocation: `(exit code, stdout)`. Errors become CNI error JSON.
pub fn execute(get: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> (i32, String) {
    let requested: Option<String> = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string));
    let err_version = requested
        .as_deref()
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .unwrap_or("1.0.0")
        .to_string();
    match run(get, stdin, requested.as_deref()) {
        Ok(out) => (0, out),
        Err(e) => (1, e.to_json(&err_version).to_string()),
    }
}

fn run(
    get: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
    requested: Option<&str>,
) -> Result<String, CniError> {
    let env = CniEnv::from_vars(get)?;
    if env.command == CniCommand::Version {
        return Ok(version_result(requested).to_string());
    }
    let conf = NetConf::parse(stdin)?;
    match env.command {
        CniCommand::Add => cmd_add(&env, &conf, stdin).map(|v| v.to_string()),
        CniCommand::Del => cmd_del(&env, &conf, stdin).map(|()| String::new()),
        CniCommand::Check => {
            if conf.cni_version.starts_with("0.3.") {
                return Err(CniError::IncompatibleVersion(format!(
                    "{} (CHECK needs 0.4.0 or later)",
                    conf.cni_version
                )));
            }
            cmd_check(&env, &conf, stdin).map(|()| String::new())
        }
        CniCommand::Version => Ok(version_result(requested).to_string()),
    }
}

fn open_netns(path: &str) -> Result<File, CniError> {
    File::open(path).map_err(|e| CniError::ContainerUnknown {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

fn cmd_add(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<Value, CniError> {
    let ns = open_netns(&env.netns)?;
    let host = host_ifname(&env.container_id, &env.ifname);
    let state_dir = conf.state_dir();
    // ADD again for a pod that is fully set up returns the same result.
    let existing = podstate::read_record(&state_dir, &env.container_id, &env.ifname);
    if let Ok(Some(rec)) = &existing {
        if rec.netns == env.netns && verify(rec, &ns).is_ok() {
            return Ok(build_result(&conf.cni_version, rec, conf.dns.as_ref()));
        }
    }
    // Leftovers of an earlier ADD (interrupted, or its namespace was replaced):
    // release them first so the IPAM plugin can hand out the address again.
    let leftover = !matches!(existing, Ok(None));
    let nl = Netlink::open()?;
    if leftover || nl.link(&host)?.is_some() {
        nl.delete_link(&host)?;
        exec_ipam(env, conf, stdin, CniCommand::Del)?;
        podstate::remove_record(&state_dir, &env.container_id, &env.ifname).map_err(io_err(
            format!("removing the stale pod record in {}", state_dir.display()),
        ))?;
    }
    let mtu = pod_mtu(&nl, conf)?;
    let ipam_out = exec_ipam(env, conf, stdin, CniCommand::Add)?;
    let (ip, _prefix) = parse_ipam_result(&ipam_out)?;
    match setup_pod(&nl, env, conf, &ns, &host, ip, mtu) {
        Ok(rec) => Ok(build_result(&conf.cni_version, &rec, conf.dns.as_ref())),
        Err(e) => {
            let _ = nl.delete_link(&host);
            let _ = exec_ipam(env, conf, stdin, CniCommand::Del);
            let _ = podstate::remove_record(&state_dir, &env.container_id, &env.ifname);
            Err(e)
        }
    }
}

fn setup_pod(
    nl: &Netlink,
    env: &CniEnv,
    conf: &NetConf,
    ns: &File,
    host: &str,
    ip: Ipv4Addr,
    mtu: u32,
) -> Result<PodRecord, CniError> {
    let ifname = env.ifname.as_str();
    // One queue pair per CPU on both ends, so every nodeplane worker gets a
    // queue of the pod's interface (`queues` overrides).
    let queues = conf.queues.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(64) as u32)
    });
    // The pair, the pod end created in the pod's namespace (`ip link add HOST
    // mtu M numtxqueues Q numrxqueues Q type veth peer name IF mtu M
    // numtxqueues Q numrxqueues Q netns CNI_NETNS`).
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(ifname)
        .mtu(mtu)
        .setns_by_fd(ns.as_raw_fd())
        .append_extra_attribute(LinkAttribute::NumTxQueues(queues))
        .append_extra_attribute(LinkAttribute::NumRxQueues(queues))
        .build();
    let pair = LinkVeth::new(host, ifname)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(mtu)
        .append_extra_attribute(LinkAttribute::NumTxQueues(queues))
        .append_extra_attribute(LinkAttribute::NumRxQueues(queues))
        .build();
    nl.run(
        format!("creating the veth pair {host} / {ifname}"),
        nl.handle.link().add(pair).execute(),
    )?;
    // Host end: proxy ARP (answer at once), up, no tx checksum offload, /32 route.
    write_sysctl(&format!("net/ipv4/conf/{host}/proxy_arp"), "1")?;
    write_sysctl(&format!("net/ipv4/neigh/{host}/proxy_delay"), "0")?;
    let host_link = nl
        .link(host)?
        .ok_or_else(|| CniError::Check(format!("host interface {host} vanished")))?;
    nl.set_up(host, host_link.ifindex)?;
    set_tx_checksum(host, false)?;
    if conf.host_route.unwrap_or(true) {
        // `ip route replace IP/32 dev HOST`
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(ip, 32)
            .output_interface(host_link.ifindex)
            .protocol(RouteProtocol::Boot)
            .scope(RouteScope::Link)
            .build();
        nl.run(
            format!("adding the route to {ip}/32 via {host}"),
            nl.handle.route().add(route).replace().execute(),
        )?;
    }
    // Pod end.
    let host_mac = host_link.mac.clone();
    let pod_link = in_netns(ns, || {
        let nl = Netlink::open()?;
        let lo = nl
            .link("lo")?
            .ok_or_else(|| CniError::Check("the pod namespace has no lo".into()))?;
        nl.set_up("lo", lo.ifindex)?;
        let pod = nl
            .link(ifname)?
            .ok_or_else(|| CniError::Check(format!("pod interface {ifname} vanished")))?;
        nl.run(
            format!("adding {ip}/32 to {ifname}"),
            nl.handle
                .address()
                .add(pod.ifindex, ip.into(), 32)
                .replace()
                .execute(),
        )?;
        nl.set_up(ifname, pod.ifindex)?;
        set_tx_checksum(ifname, false)?;
        // `ip neigh replace GW lladdr HOST_MAC dev IF nud permanent`
        nl.run(
            format!("adding the neighbour entry for {POD_GATEWAY} on {ifname}"),
            nl.handle
                .neighbours()
                .add(pod.ifindex, POD_GATEWAY.into())
                .link_layer_address(&host_mac)
                .replace()
                .execute(),
        )?;
        // `ip route replace default via GW dev IF onlink`
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(POD_GATEWAY)
            .output_interface(pod.ifindex)
            .onlink()
            .protocol(RouteProtocol::Boot)
            .build();
        nl.run(
            format!("adding the default route via {POD_GATEWAY} on {ifname}"),
            nl.handle.route().add(default).replace().execute(),
        )?;
        nl.link(ifname)?
            .ok_or_else(|| CniError::Check(format!("pod interface {ifname} vanished")))
    })?;
    let rec = PodRecord {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: env.netns.clone(),
        ip,
        mac: pod_link.address,
        host_ifname: host.to_string(),
        host_ifindex: host_link.ifindex,
        host_mac: host_link.address,
        pod_namespace: env.arg("K8S_POD_NAMESPACE").unwrap_or_default(),
        pod_name: env.arg("K8S_POD_NAME").unwrap_or_default(),
    };
    let dir = conf.state_dir();
    podstate::write_record(&dir, &rec).map_err(io_err(format!(
        "writing the pod record in {}",
        dir.display()
    )))?;
    Ok(rec)
}

fn cmd_del(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    // Deleting the host end deletes the pod end with it.
    Netlink::open()?.delete_link(&host_ifname(&env.container_id, &env.ifname))?;
    exec_ipam(env, conf, stdin, CniCommand::Del)?;
    let dir = conf.state_dir();
    podstate::remove_record(&dir, &env.container_id, &env.ifname).map_err(io_err(format!(
        "removing the pod record in {}",
        dir.display()
    )))
}

fn cmd_check(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let ns = open_netns(&env.netns)?;
    let dir = conf.state_dir();
    let rec = podstate::read_record(&dir, &env.container_id, &env.ifname)
        .map_err(io_err(format!(
            "reading the pod record in {}",
            dir.display()
        )))?
        .ok_or_else(|| {
            CniError::Check(format!(
                "no pod record for {}/{} in {}",
                env.container_id,
                env.ifname,
                dir.display()
            ))
        })?;
    if rec.netns != env.netns {
        return Err(CniError::Check(format!(
            "the pod was set up in {} but CNI_NETNS is {}",
            rec.netns, env.netns
        )));
    }
    if rec.host_ifname != host_ifname(&env.container_id, &env.ifname) {
        return Err(CniError::Check(format!(
            "record names host interface {}, expected {}",
            rec.host_ifname,
            host_ifname(&env.container_id, &env.ifname)
        )));
    }
    if let Some(prev) = &conf.prev_result {
        let (prev_ip, _) = parse_ipam_result(prev.to_string().as_bytes())?;
        if prev_ip != rec.ip {
            return Err(CniError::Check(format!(
                "prevResult has {prev_ip}, the pod has {}",
                rec.ip
            )));
        }
    }
    verify(&rec, &ns)?;
    exec_ipam(env, conf, stdin, CniCommand::Check)?;
    Ok(())
}

/// Checks that the interfaces, address, route and neighbour of `rec` exist.
fn verify(rec: &PodRecord, ns: &File) -> Result<(), CniError> {
    let host = Netlink::open()?.link(&rec.host_ifname)?.ok_or_else(|| {
        CniError::Check(format!("host interface {} does not exist", rec.host_ifname))
    })?;
    if host.ifindex != rec.host_ifindex || !host.address.eq_ignore_ascii_case(&rec.host_mac) {
        return Err(CniError::Check(format!(
            "host interface {} is ifindex {} MAC {}, the record says {} {}",
            rec.host_ifname, host.ifindex, host.address, rec.host_ifindex, rec.host_mac
        )));
    }
    let ifname = rec.ifname.clone();
    let ip = rec.ip;
    let mac = rec.mac.clone();
    in_netns(ns, move || {
        let nl = Netlink::open()?;
        let link = nl.link(&ifname)?.ok_or_else(|| {
            CniError::Check(format!("{ifname} does not exist in the pod namespace"))
        })?;
        if !link.address.eq_ignore_ascii_case(&mac) {
            return Err(CniError::Check(format!(
                "{ifname} has MAC {}, the record says {mac}",
                link.address
            )));
        }
        if !nl.has_address(&link, ip)? {
            return Err(CniError::Check(format!("{ifname} does not have {ip}/32")));
        }
        if !nl.has_default_route_via(&link, POD_GATEWAY)? {
            return Err(CniError::Check(format!(
                "no default route via {POD_GATEWAY} on {ifname}"
            )));
        }
        Ok(())
    })
}

// ---- IPAM delegation ----

fn find_plugin(name: &str, dirs: &[PathBuf]) -> Result<PathBuf, CniError> {
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::InvalidConfig(format!(
                "IPAM plugin {name:?} not found in CNI_PATH ({})",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":")
            ))
        })
}

/// The subnet value that stands for this node's pod CIDR (as Calico spells it).
pub const USE_POD_CIDR: &str = "usePodCidr";

/// Replaces every IPAM `subnet` equal to `usePodCidr` (in `ipam.subnet` or
/// `ipam.ranges[][]`) with the pod CIDR the agent published (see
/// `podstate::read_pod_cidr`). `Ok(None)`: nothing to replace. Without a
/// published CIDR, ADD and CHECK fail with a clear error (the runtime retries);
/// DEL uses a placeholder, since host-local releases by container id.
pub fn substitute_pod_cidr(
    stdin: &[u8],
    pod_cidr: Option<&str>,
    command: CniCommand,
) -> Result<Option<Vec<u8>>, CniError> {
    let mut v: Value =
        serde_json::from_slice(stdin).map_err(|e| CniError::Decode(e.to_string()))?;
    let Some(ipam) = v.get_mut("ipam") else {
        return Ok(None);
    };
    let mut slots: Vec<&mut Value> = Vec::new();
    if let Some(Value::Object(ipam)) = Some(&mut *ipam) {
        for (k, val) in ipam.iter_mut() {
            match (k.as_str(), val) {
                ("subnet", val) => slots.push(val),
                ("ranges", Value::Array(sets)) => {
                    for set in sets.iter_mut() {
                        if let Value::Array(ranges) = set {
                            for r in ranges.iter_mut() {
                                if let Some(sub) = r.get_mut("subnet") {
                                    slots.push(sub);
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut slots: Vec<&mut Value> = slots
        .into_iter()
        .filter(|s| s.as_str() == Some(USE_POD_CIDR))
        .collect();
    if slots.is_empty() {
        return Ok(None);
    }
    let cidr = match (pod_cidr, command) {
        (Some(c), _) => c.to_string(),
        (None, CniCommand::Del) => "192.0.2.0/24".to_string(),
        (None, _) => {
            return Err(CniError::InvalidConfig(format!(
                "ipam subnet is {USE_POD_CIDR:?} but the nodeplane agent has not published \
                 this node's pod CIDR yet (is it running?)"
            )))
        }
    };
    for s in slots.iter_mut() {
        **s = Value::String(cidr.clone());
    }
    serde_json::to_vec(&v)
        .map(Some)
        .map_err(|e| CniError::Decode(e.to_string()))
}

/// Runs the IPAM plugin with this invocation's environment and config; returns
/// its stdout, or its CNI error.
fn exec_ipam(
    env: &CniEnv,
    conf: &NetConf,
    stdin: &[u8],
    command: CniCommand,
) -> Result<Vec<u8>, CniError> {
    let name = conf.ipam_type();
    let plugin = find_plugin(name, &env.path)?;
    let pod_cidr = podstate::read_pod_cidr(&conf.state_dir());
    let substituted = substitute_pod_cidr(stdin, pod_cidr.as_deref(), command)?;
    let stdin = substituted.as_deref().unwrap_or(stdin);
    // Runtimes pass IgnoreUnknown=1 so IPAM plugins accept K8S_* args; make sure.
    let args = if parse_cni_args(&env.args)?
        .iter()
        .any(|(k, _)| k == "IgnoreUnknown")
    {
        env.args.clone()
    } else if env.args.is_empty() {
        "IgnoreUnknown=1".to_string()
    } else {
        format!("IgnoreUnknown=1;{}", env.args)
    };
    let cni_path = env
        .path
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut child = Process::new(&plugin)
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", &env.container_id)
        .env("CNI_NETNS", &env.netns)
        .env("CNI_IFNAME", &env.ifname)
        .env("CNI_PATH", cni_path)
        .env("CNI_ARGS", args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("starting {}", plugin.display())))?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin).map_err(io_err(format!(
            "writing the config to {}",
            plugin.display()
        )))?;
    }
    let out = child
        .wait_with_output()
        .map_err(io_err(format!("waiting for {}", plugin.display())))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let code = parsed
        .as_ref()
        .and_then(|v| v.get("code"))
        .and_then(Value::as_u64)
        .and_then(|c| u32::try_from(c).ok())
        .unwrap_or(999);
    let mut msg = field("msg");
    if msg.is_empty() {
        msg = format!(
            "{} {} exited with {}: {}",
            name,
            command.as_str(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Err(CniError::Ipam {
        plugin: name.to_string(),
        code,
        msg,
        details: field("details"),
    })
}

// ---- links and namespaces ----

/// What the plugin reads of one interface.
#[derive(Clone, Debug)]
pub(crate) struct LinkInfo {
    pub(crate) ifindex: u32,
    /// The MAC as `ip` prints it (lower-case hex, colons).
    address: String,
    pub(crate) mac: Vec<u8>,
    mtu: u32,
}

impl LinkInfo {
    fn from_message(m: &LinkMessage) -> LinkInfo {
        let mut info = LinkInfo {
            ifindex: m.header.index,
            address: String::new(),
            mac: Vec::new(),
            mtu: 0,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::Address(mac) => {
                    info.address = mac
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":");
                    info.mac = mac.clone();
                }
                LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
                _ => {}
            }
        }
        info
    }
}

/// An rtnetlink connection in the network namespace of the thread that opened
/// it (the socket stays there), driven by a single-threaded runtime of its own.
pub(crate) struct Netlink {
    rt: tokio::runtime::Runtime,
    pub(crate) handle: rtnetlink::Handle,
}

impl Netlink {
    pub(crate) fn open() -> Result<Netlink, CniError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(io_err("starting the netlink runtime"))?;
        let (connection, handle, _) = {
            let _in_rt = rt.enter();
            rtnetlink::new_connection().map_err(io_err("opening a netlink socket"))?
        };
        rt.spawn(connection);
        Ok(Netlink { rt, handle })
    }

    /// Runs one request; a failure names `what` was being done.
    pub(crate) fn run<T>(
        &self,
        what: impl Into<String>,
        request: impl std::future::Future<Output = Result<T, rtnetlink::Error>>,
    ) -> Result<T, CniError> {
        self.rt
            .block_on(request)
            .map_err(|source| CniError::Netlink {
                what: what.into(),
                source,
            })
    }

    /// The interface named `name`, if it exists.
    pub(crate) fn link(&self, name: &str) -> Result<Option<LinkInfo>, CniError> {
        let request = self.handle.link().get().match_name(name).execute();
        let found = self.rt.block_on(async {
            let mut links = std::pin::pin!(request);
            links.try_next().await
        });
        match found {
            Ok(link) => Ok(link.as_ref().map(LinkInfo::from_message)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(source) => Err(CniError::Netlink {
                what: format!("reading interface {name}"),
                source,
            }),
        }
    }

    /// The name of the interface with `index`.
    fn link_name(&self, index: u32) -> Result<Option<String>, CniError> {
        let request = self.handle.link().get().match_index(index).execute();
        let found = self.run(format!("reading interface {index}"), async {
            let mut links = std::pin::pin!(request);
            links.try_next().await
        })?;
        Ok(found.and_then(|m| {
            m.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            })
        }))
    }

    /// `ip link set dev NAME up`
    pub(crate) fn set_up(&self, name: &str, index: u32) -> Result<(), CniError> {
        let up = LinkUnspec::new_with_index(index).up().build();
        self.run(
            format!("setting {name} up"),
            self.handle.link().set(up).execute(),
        )
    }

    /// Deletes the interface `name`; fine if it does not exist.
    pub(crate) fn delete_link(&self, name: &str) -> Result<(), CniError> {
        let Some(link) = self.link(name)? else {
            return Ok(());
        };
        match self
            .rt
            .block_on(self.handle.link().del(link.ifindex).execute())
        {
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            other => other.map_err(|source| CniError::Netlink {
                what: format!("deleting interface {name}"),
                source,
            }),
        }
    }

    /// Whether `link` has `ip`/32.
    fn has_address(&self, link: &LinkInfo, ip: Ipv4Addr) -> Result<bool, CniError> {
        let request = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.ifindex)
            .execute();
        let addrs: Vec<_> = self.run("reading addresses", request.try_collect())?;
        Ok(addrs.iter().any(|a| {
            a.header.prefix_len == 32
                && a.attributes
                    .iter()
                    .any(|at| matches!(at, AddressAttribute::Local(l) if *l == ip))
        }))
    }

    /// The IPv4 default routes of the main table.
    fn default_routes(&self) -> Result<Vec<DefaultRoute>, CniError> {
        let request = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let routes: Vec<_> = self.run("reading routes", request.try_collect())?;
        Ok(routes
            .into_iter()
            .filter(|r| {
                r.header.destination_prefix_length == 0
                    && route_table(r)
                        == u32::from(rtnetlink::packet_route::route::RouteHeader::RT_TABLE_MAIN)
            })
            .map(|r| {
                let mut gw = None;
                let mut oif = None;
                for a in r.attributes {
                    match a {
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(g),
                        RouteAttribute::Oif(i) => oif = Some(i),
                        _ => {}
                    }
                }
                DefaultRoute { gw, oif }
            })
            .collect())
    }

    /// Whether there is a default route via `gw` on `link`.
    fn has_default_route_via(&self, link: &LinkInfo, gw: Ipv4Addr) -> Result<bool, CniError> {
        Ok(self
            .default_routes()?
            .iter()
            .any(|r| r.gw == Some(gw) && r.oif == Some(link.ifindex)))
    }

    /// The device of the first default route, if any.
    fn default_route_device(&self) -> Result<Option<String>, CniError> {
        match self.default_routes()?.iter().find_map(|r| r.oif) {
            Some(index) => self.link_name(index),
            None => Ok(None),
        }
    }
}

/// An IPv4 default route: its gateway and output interface.
struct DefaultRoute {
    gw: Option<Ipv4Addr>,
    oif: Option<u32>,
}

/// The routing table of a route (the attribute holds ids above 255).
fn route_table(r: &rtnetlink::packet_route::route::RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

/// The errno of a netlink error answer.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// The pod MTU: `mtu` from the config, else the uplink's MTU − 50 (the uplink
/// being `uplink` from the config or the default route's device).
fn pod_mtu(nl: &Netlink, conf: &NetConf) -> Result<u32, CniError> {
    if let Some(mtu) = conf.mtu {
        return Ok(mtu);
    }
    let uplink = match &conf.uplink {
        Some(u) => Some(u.clone()),
        None => nl.default_route_device()?,
    };
    let uplink_mtu = match uplink {
        Some(u) => {
            nl.link(&u)?
                .ok_or_else(|| {
                    CniError::InvalidConfig(format!("uplink interface {u:?} does not exist"))
                })?
                .mtu
        }
        None => FALLBACK_UPLINK_MTU,
    };
    Ok(uplink_mtu.saturating_sub(VXLAN_OVERHEAD).max(68))
}

/// Runs `f` on a thread that entered the network namespace `ns` (setns affects
/// only that thread; processes it starts inherit the namespace).
fn in_netns<T: Send>(
    ns: &File,
    f: impl FnOnce() -> Result<T, CniError> + Send,
) -> Result<T, CniError> {
    std::thread::scope(|s| {
        let handle = s.spawn(|| {
            // CLONE_NEWNET changes only this thread's network namespace.
            if let Err(e) = nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET) {
                return Err(CniError::ContainerUnknown {
                    path: "CNI_NETNS".into(),
                    reason: format!("cannot enter it (not a network namespace?): {e}"),
                });
            }
            f()
        });
        handle.join().unwrap_or_else(|_| {
            Err(CniError::Io {
                what: "the network-namespace thread".into(),
                source: io::Error::other("panicked"),
            })
        })
    })
}

/// Writes `/proc/sys/<key>` (for the calling thread's network namespace).
pub(crate) fn write_sysctl(key: &str, value: &str) -> Result<(), CniError> {
    let path = Path::new("/proc/sys").join(key);
    std::fs::write(&path, value).map_err(io_err(format!("writing {}", path.display())))
}

// ---- ethtool: tx checksum offload ----

const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value` from <linux/ethtool.h>.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

fn ethtool_value(ifname: &str, cmd: u32, data: u32) -> io::Result<u32> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: socket(2) with constant arguments; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we just opened and nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut value = EthtoolValue { cmd, data };
    // SAFETY: `ifreq` is plain old data for which all-zero bytes are valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: SIOCETHTOOL with an ifreq naming the interface whose data pointer
    // refers to a live `ethtool_value` for the whole call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL as _, &mut ifr) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}

/// Turns tx checksum offload on or off (`ethtool -K IF tx on|off`) in the
/// calling thread's network namespace.
pub fn set_tx_checksum(ifname: &str, on: bool) -> Result<(), CniError> {
    ethtool_value(ifname, ETHTOOL_STXCSUM, u32::from(on)).map_err(io_err(format!(
        "turning tx checksum offload {} on {ifname} (ETHTOOL_STXCSUM)",
        if on { "on" } else { "off" }
    )))?;
    Ok(())
}

/// Whether tx checksum offload is on (`ethtool -k IF`).
pub fn tx_checksum(ifname: &str) -> Result<bool, CniError> {
    ethtool_value(ifname, ETHTOOL_GTXCSUM, 0)
        .map(|v| v != 0)
        .map_err(io_err(format!(
            "reading tx checksum offload of {ifname} (ETHTOOL_GTXCSUM)"
        )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn getter(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"nodeplane","type":"nodeplane-cni",
        "ipam":{"type":"host-local","ranges":[[{"subnet":"198.19.1.0/24"}]]},
        "stateDir":"/tmp/x"}"#;

    #[test]
    fn host_ifname_is_stable_short_and_distinct() {
        let a = host_ifname("abc123", "eth0");
        assert_eq!(a, host_ifname("abc123", "eth0"));
        assert_eq!(a.len(), 13);
        assert!(a.starts_with("np"));
        assert!(a[2..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, host_ifname("abc124", "eth0"));
        assert_ne!(a, host_ifname("abc123", "eth1"));
    }

    #[test]
    fn version_lists_supported_versions() {
        let (code, out) = execute(
            &getter(&[("CNI_COMMAND", "VERSION")]),
            br#"{"cniVersion":"0.4.0"}"#,
        );
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        let sv: Vec<&str> = v["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        assert!(sv.contains(&"0.4.0") && sv.contains(&"1.0.0"), "{sv:?}");
    }

    #[test]
    fn malformed_stdin_is_a_decode_error() {
        let vars = getter(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/none"),
            ("CNI_IFNAME", "eth0"),
        ]);
        let (code, out) = execute(&vars, b"{this is not json");
        assert_ne!(code, 0);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["code"], 6);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["msg"].as_str().unwrap().contains("decode"));
    }

    #[test]
    fn bad_environment_and_versions_are_rejected_with_their_codes() {
        type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, u64);
        let cases: Vec<Case> = vec![
            (vec![], CONF, 4),
            (vec![("CNI_COMMAND", "FROB")], CONF, 4),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "c/1"),
                    ("CNI_NETNS", "/x"),
                    ("CNI_IFNAME", "eth0"),
                ],
                CONF,
                4,
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_NETNS", "/x"),
                    ("CNI_IFNAME", "this-name-is-too-long"),
                ],
                CONF,
                4,
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_IFNAME", "eth0"),
                ],
                CONF,
                4,
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_NETNS", "/x"),
                    ("CNI_IFNAME", "eth0"),
                ],
                r#"{"cniVersion":"9.9.9","name":"n","ipam":{"type":"host-local"}}"#,
                1,
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_NETNS", "/x"),
                    ("CNI_IFNAME", "eth0"),
                ],
                r#"{"cniVersion":"1.0.0","name":"n"}"#,
                7,
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_NETNS", "/x"),
                    ("CNI_IFNAME", "eth0"),
                ],
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"../../bin/sh"}}"#,
                7,
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_NETNS", "/nonexistent/ns"),
                    ("CNI_IFNAME", "eth0"),
                ],
                CONF,
                3,
            ),
            (
                vec![
                    ("CNI_COMMAND", "CHECK"),
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_NETNS", "/x"),
                    ("CNI_IFNAME", "eth0"),
                ],
                r#"{"cniVersion":"0.3.1","name":"n","ipam":{"type":"host-local"}}"#,
                1,
            ),
        ];
        for (vars, conf, want) in cases {
            let (code, out) = execute(&getter(&vars), conf.as_bytes());
            assert_ne!(code, 0, "{vars:?} {conf}");
            let v: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["code"], want, "{vars:?} {conf} -> {v}");
            assert!(!v["msg"].as_str().unwrap().is_empty());
        }
    }

    #[test]
    fn cni_args_parse_and_lookup() {
        let env = CniEnv::from_vars(&getter(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=a1;IP=198.19.1.10",
            ),
        ]))
        .unwrap();
        assert_eq!(env.arg("K8S_POD_NAME").as_deref(), Some("a1"));
        assert_eq!(env.arg("IP").as_deref(), Some("198.19.1.10"));
        assert_eq!(env.arg("MISSING"), None);
        assert_eq!(
            env.path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
        assert!(parse_cni_args("A=1;broken").is_err());
    }

    #[test]
    fn use_pod_cidr_is_replaced_with_the_published_cidr() {
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"nodeplane-cni",
            "ipam":{"type":"host-local","ranges":[[{"subnet":"usePodCidr"}],[{"subnet":"10.9.0.0/24"}]]}}"#;
        let out = substitute_pod_cidr(conf, Some("198.19.1.0/24"), CniCommand::Add)
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["ipam"]["ranges"][0][0]["subnet"], "198.19.1.0/24");
        assert_eq!(v["ipam"]["ranges"][1][0]["subnet"], "10.9.0.0/24");
        assert_eq!(v["ipam"]["type"], "host-local");
        assert_eq!(v["type"], "nodeplane-cni");
        // The old single-subnet form too.
        let old = br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"usePodCidr"}}"#;
        let out = substitute_pod_cidr(old, Some("198.19.2.0/24"), CniCommand::Check)
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["ipam"]["subnet"], "198.19.2.0/24");
        // Nothing to replace: the config is passed through untouched.
        let plain = br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24"}]]}}"#;
        assert!(substitute_pod_cidr(plain, None, CniCommand::Add)
            .unwrap()
            .is_none());
        // No published CIDR: ADD is a clear error, DEL still works.
        let e = substitute_pod_cidr(conf, None, CniCommand::Add).unwrap_err();
        assert!(e.to_string().contains("pod CIDR"), "{e}");
        let del = substitute_pod_cidr(conf, None, CniCommand::Del)
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&del).unwrap();
        assert!(v["ipam"]["ranges"][0][0]["subnet"]
            .as_str()
            .unwrap()
            .parse::<shared::Ipv4Cidr>()
            .is_ok());
    }

    #[test]
    fn ipam_results_of_every_version_parse() {
        let v1 = br#"{"cniVersion":"1.0.0","ips":[{"address":"198.19.1.10/24","gateway":"198.19.1.1"}]}"#;
        assert_eq!(
            parse_ipam_result(v1).unwrap(),
            (Ipv4Addr::new(198, 19, 1, 10), 24)
        );
        let v04 = br#"{"cniVersion":"0.4.0","ips":[{"version":"6","address":"fd00::2/64"},{"version":"4","address":"198.19.3.11/24"}]}"#;
        assert_eq!(
            parse_ipam_result(v04).unwrap(),
            (Ipv4Addr::new(198, 19, 3, 11), 24)
        );
        let v02 = br#"{"cniVersion":"0.2.0","ip4":{"ip":"198.19.2.10/24"}}"#;
        assert_eq!(
            parse_ipam_result(v02).unwrap(),
            (Ipv4Addr::new(198, 19, 2, 10), 24)
        );
        assert!(parse_ipam_result(br#"{"ips":[]}"#).is_err());
        assert!(parse_ipam_result(b"garbage").is_err());
    }

    #[test]
    fn result_json_has_interfaces_ips_routes_and_dns() {
        let rec = PodRecord {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/p".into(),
            ip: Ipv4Addr::new(198, 19, 1, 10),
            mac: "02:00:00:00:aa:01".into(),
            host_ifname: "np0123456789a".into(),
            host_ifindex: 9,
            host_mac: "02:00:00:00:bb:01".into(),
            pod_namespace: "default".into(),
            pod_name: "a1".into(),
        };
        let r = build_result("1.0.0", &rec, None);
        assert_eq!(r["interfaces"][0]["name"], "np0123456789a");
        assert!(r["interfaces"][0].get("sandbox").is_none());
        assert_eq!(r["interfaces"][1]["sandbox"], "/var/run/netns/p");
        assert_eq!(r["ips"][0]["address"], "198.19.1.10/32");
        assert_eq!(r["ips"][0]["gateway"], "169.254.1.1");
        assert_eq!(r["ips"][0]["interface"], 1);
        assert!(r["ips"][0].get("version").is_none());
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        assert!(r["dns"].is_object());
        let old = build_result(
            "0.4.0",
            &rec,
            Some(&json!({"nameservers":["198.18.96.11"]})),
        );
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["dns"]["nameservers"][0], "198.18.96.11");
    }

    #[test]
    fn config_mtu_wins_and_is_validated() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"},"mtu":1400}"#,
        )
        .unwrap();
        assert_eq!(pod_mtu(&Netlink::open().unwrap(), &conf).unwrap(), 1400);
        assert!(NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"},"mtu":20}"#
        )
        .is_err());
    }
}
