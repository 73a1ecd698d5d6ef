//! The XDP steering program (bpf/steer.c, compiled by build.rs): loading it with
//! libbpf (through libbpf-rs), attaching/detaching it per interface (driver mode, falling back to
//! generic), and the maps the agent updates at run time (`SteeringParams`), the
//! XSKMAP the workers insert their sockets into, and the per-CPU decision counters;
//! and the loopback's tc egress program (`nodeplane_local`) that hands the node's
//! own NodePort connections to the host interface. It never touches an interface
//! it was not asked to attach to, and only ever detaches its own programs.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Mutex;

use libbpf_rs::query::ProgInfoIter;
use libbpf_rs::{
    MapCore, MapFlags, MapHandle, Object, ObjectBuilder, Program, ProgramInput, ProgramMut, Xdp,
    XdpFlags,
};
use libbpf_rs::{TcHook, TcHookBuilder, TC_EGRESS};

use shared::{Ipv4Cidr, L4Proto};

/// The compiled steering program.
static STEER_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/steer.bpf.o"));

/// The program's name (also what `bpftool prog` shows, ≤ 15 chars).
pub const PROGRAM_NAME: &str = "nodeplane_steer";
/// The loopback's tc egress program (steer.c's `nodeplane_local`).
pub const LOCAL_PROGRAM_NAME: &str = "nodeplane_local";
/// Its tc filter's handle and priority on `lo` egress ("NP"): its own, so it
/// never replaces another filter there.
const TC_HANDLE: u32 = 0x4e50;
const TC_PRIORITY: u32 = 0x4e50;
/// XSKMAP size (`XSK_SLOTS` in steer.c).
pub const XSK_SLOTS: u32 = 8192;
/// Queues reserved per interface in the XSKMAP: interface slot `s` owns XSKMAP
/// indices `s * QUEUES_PER_INTERFACE .. (s + 1) * QUEUES_PER_INTERFACE`.
pub const QUEUES_PER_INTERFACE: u32 = 16;
/// How many interfaces can be attached at once.
pub const MAX_INTERFACES: u32 = XSK_SLOTS / QUEUES_PER_INTERFACE;
const MAX_NODE_IPS: usize = 64;
const MAX_SERVICE_CIDRS: usize = 64;
const MAX_FRONTEND_IPS: usize = 65536;
const MAX_NODEPORTS: usize = 65536;

const ROLE_UPLINK: u32 = 1;
const ROLE_POD: u32 = 2;

/// Errors of the steering program and its maps.
#[derive(Debug, thiserror::Error)]
pub enum SteeringError {
    #[error("libbpf: {what}: {source}")]
    Bpf {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("attaching XDP to ifindex {ifindex}: {source}")]
    Attach {
        ifindex: u32,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("ifindex {0} is already attached")]
    AlreadyAttached(u32),
    #[error("another XDP program (id {prog_id}, '{name}') is attached to ifindex {ifindex}; not replacing it")]
    Occupied {
        ifindex: u32,
        prog_id: u32,
        name: String,
    },
    #[error("too many interfaces attached (max {MAX_INTERFACES})")]
    TooManyInterfaces,
    #[error("too many {what} for the steering maps ({count} > {max})")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("a {0}-byte packet is too long to test-run")]
    PacketTooLong(usize),
}

/// What an interface is to the steering program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InterfaceRole {
    /// The node's NIC: only overlay, frontend and masquerade-reply traffic is taken.
    Uplink,
    /// A pod's host-side veth: all IPv4 except traffic to the node itself.
    Pod,
}

impl InterfaceRole {
    pub fn name(self) -> &'static str {
        match self {
            InterfaceRole::Uplink => "uplink",
            InterfaceRole::Pod => "pod",
        }
    }
}

/// How the program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XdpMode {
    /// Driver (native) mode.
    Native,
    /// Generic (skb) mode: the fallback when the driver has no XDP support.
    Generic,
}

impl XdpMode {
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }

    fn flags(self) -> XdpFlags {
        match self {
            XdpMode::Native => XdpFlags::DRV_MODE,
            XdpMode::Generic => XdpFlags::SKB_MODE,
        }
    }
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything the program needs to know to pick the traffic nodeplane owns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SteeringParams {
    /// Addresses of this node (VXLAN, NodePort and masquerade-reply destinations).
    pub node_ips: Vec<Ipv4Addr>,
    /// Those of `node_ips` NodePorts answer on (kube-proxy's
    /// `nodePortAddresses`); NodePort traffic to the others is the host's.
    pub nodeport_ips: Vec<Ipv4Addr>,
    /// The overlay's UDP port (0: no overlay).
    pub vxlan_port: u16,
    /// Service CIDRs: every destination inside is steered.
    pub service_cidrs: Vec<Ipv4Cidr>,
    /// externalIPs, LoadBalancer IPs and ClusterIPs outside the Service CIDRs.
    pub frontend_ips: Vec<Ipv4Addr>,
    /// NodePorts, on every node IP.
    pub nodeports: Vec<(L4Proto, u16)>,
    /// The masquerade source-port range (inclusive); replies to it are steered.
    pub masq_range: (u16, u16),
}

/// steer.c's `node_ips` values: a node IP, and one NodePorts answer on.
const NODE_IP: u8 = 1;
const NODE_IP_NODEPORTS: u8 = 2;

/// `struct config` in steer.c: vxlan_port, masq_lo, masq_hi, pad (u16 each,
/// host byte order).
struct ConfigValue {
    vxlan_port: u16,
    masq_lo: u16,
    masq_hi: u16,
}

impl ConfigValue {
    fn to_bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0..2].copy_from_slice(&self.vxlan_port.to_ne_bytes());
        b[2..4].copy_from_slice(&self.masq_lo.to_ne_bytes());
        b[4..6].copy_from_slice(&self.masq_hi.to_ne_bytes());
        b
    }
}

/// `struct iface` in steer.c: role, slot_base (u32 each).
struct IfaceValue {
    role: u32,
    slot_base: u32,
}

impl IfaceValue {
    fn new(role: InterfaceRole, slot_base: u32) -> IfaceValue {
        let role = match role {
            InterfaceRole::Uplink => ROLE_UPLINK,
            InterfaceRole::Pod => ROLE_POD,
        };
        IfaceValue { role, slot_base }
    }

    fn to_bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0..4].copy_from_slice(&self.role.to_ne_bytes());
        b[4..8].copy_from_slice(&self.slot_base.to_ne_bytes());
        b
    }
}

/// `struct nodeport_key` in steer.c: port (u16), proto (u8), pad (u8).
fn nodeport_key(proto: L4Proto, port: u16) -> Vec<u8> {
    let p = port.to_ne_bytes();
    vec![p[0], p[1], proto.number(), 0]
}

/// `struct lpm_v4_key` in steer.c: prefixlen (u32), addr (network order).
fn lpm_key(c: &Ipv4Cidr) -> Vec<u8> {
    let mut b = u32::from(c.prefix_len()).to_ne_bytes().to_vec();
    b.extend_from_slice(&c.network().octets());
    b
}

/// `struct xdp_md` (the XDP context) for a test run: data, data_end,
/// data_meta, ingress_ifindex, rx_queue_index, egress_ifindex (u32 each).
fn xdp_md(len: u32, ingress_ifindex: u32) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[4..8].copy_from_slice(&len.to_ne_bytes());
    b[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    b
}

/// The program's per-reason decisions (slots of the `stats` map). `redirect_*`
/// count decisions to steer a frame; `pass_no_socket` counts those of them that
/// found no socket at the queue's XSKMAP slot and were passed instead.
/// `local_nodeport*` count the loopback program's decisions (the node's own
/// NodePort packets handed to the host interface, or dropped as too long for
/// it); a handed packet is counted again by the XDP program on `nph1`.
pub const STAT_NAMES: [&str; 16] = [
    "pass_not_ipv4",
    "pass_malformed",
    "pass_unknown_interface",
    "pass_not_owned",
    "pass_to_node",
    "pass_no_socket",
    "redirect_vxlan",
    "redirect_service_cidr",
    "redirect_frontend_ip",
    "redirect_nodeport",
    "redirect_masquerade_reply",
    "redirect_pod",
    "redirect_icmp_error",
    "redirect_fragment",
    "local_nodeport_to_host_interface",
    "local_nodeport_too_big",
];

/// Decision counters summed over CPUs, indexed like `STAT_NAMES`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SteeringStats {
    pub counts: [u64; STAT_NAMES.len()],
}

impl SteeringStats {
    pub fn get(&self, name: &str) -> u64 {
        STAT_NAMES
            .iter()
            .position(|n| *n == name)
            .map_or(0, |i| self.counts[i])
    }

    /// Frames steered to a socket: decisions to redirect minus those that
    /// found no socket.
    pub fn redirected(&self) -> u64 {
        self.decided_redirect()
            .saturating_sub(self.get("pass_no_socket"))
    }

    /// Decisions to redirect (whether or not a socket was there).
    pub fn decided_redirect(&self) -> u64 {
        STAT_NAMES
            .iter()
            .zip(self.counts.iter())
            .filter(|(n, _)| n.starts_with("redirect_"))
            .map(|(_, c)| *c)
            .sum()
    }

    /// Frames passed to the kernel (including steering decisions without a socket).
    pub fn passed(&self) -> u64 {
        STAT_NAMES
            .iter()
            .zip(self.counts.iter())
            .filter(|(n, _)| n.starts_with("pass_"))
            .map(|(_, c)| *c)
            .sum()
    }
}

/// One attached interface.
#[derive(Clone, Copy, Debug)]
pub struct Attachment {
    pub ifindex: u32,
    pub role: InterfaceRole,
    pub mode: XdpMode,
    /// XSKMAP index of the interface's queue 0.
    pub slot_base: u32,
}

#[derive(Default)]
struct AttachState {
    by_ifindex: HashMap<u32, Attachment>,
    used_slots: Vec<bool>,
}

/// The program's maps (handles of their own, independent of the object's).
struct Maps {
    xsks: MapHandle,
    config: MapHandle,
    ifaces: MapHandle,
    node_ips: MapHandle,
    frontend_ips: MapHandle,
    nodeports: MapHandle,
    service_cidrs: MapHandle,
    local_redirect: MapHandle,
    stats: MapHandle,
}

/// Where the loopback program sends the node's NodePort packets: the host
/// interface's kernel end (`nph0`), with the MACs the frames get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalRedirect {
    pub ifindex: u32,
    /// `nph0`'s MTU: a longer datagram (no GSO burst) is dropped, counted.
    pub mtu: u32,
    /// `nph1`'s MAC (where nodeplane receives).
    pub dst_mac: [u8; 6],
    /// `nph0`'s MAC.
    pub src_mac: [u8; 6],
    /// NodePorts on 127.0.0.0/8 too, from 127.0.0.0/8 (kube-proxy iptables
    /// mode's localhostNodePorts).
    pub localhost: bool,
}

/// `struct local_redirect`'s size in steer.c.
const LOCAL_REDIRECT_LEN: usize = 24;

impl LocalRedirect {
    /// `struct local_redirect` in steer.c: ifindex, mtu (u32), macs[12],
    /// localhost (u32).
    fn to_bytes(self) -> [u8; LOCAL_REDIRECT_LEN] {
        let mut b = [0u8; LOCAL_REDIRECT_LEN];
        b[0..4].copy_from_slice(&self.ifindex.to_ne_bytes());
        b[4..8].copy_from_slice(&self.mtu.to_ne_bytes());
        b[8..14].copy_from_slice(&self.dst_mac);
        b[14..20].copy_from_slice(&self.src_mac);
        b[20..24].copy_from_slice(&u32::from(self.localhost).to_ne_bytes());
        b
    }
}

/// The loopback program's filter on `ifindex`'s egress.
fn local_hook(fd: BorrowedFd<'_>, ifindex: u32) -> TcHook {
    TcHookBuilder::new(fd)
        .ifindex(ifindex as i32)
        .replace(true)
        .handle(TC_HANDLE)
        .priority(TC_PRIORITY)
        .hook(TC_EGRESS)
}

/// The loaded steering program and its maps. Dropping it detaches it from every
/// interface it was attached to.
pub struct Steering {
    obj: Object,
    /// The program's descriptor, for attaching.
    prog: OwnedFd,
    /// The loopback program's.
    local_prog: OwnedFd,
    /// The interface (`lo`) the loopback program is attached to, if it is.
    local_on: Mutex<Option<u32>>,
    maps: Maps,
    state: Mutex<AttachState>,
    /// The modes tried when attaching, in order.
    modes: &'static [XdpMode],
}

fn bpf_err(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> SteeringError {
    let what = what.into();
    move |source| SteeringError::Bpf { what, source }
}

impl Steering {
    /// Loads the program and creates its maps (nothing is attached yet).
    pub fn load() -> Result<Steering, SteeringError> {
        let obj = ObjectBuilder::default()
            .name("nodeplane")
            .map_err(bpf_err("naming the steering object"))?
            .open_memory(STEER_OBJ)
            .map_err(bpf_err("opening the steering object"))?
            .load()
            .map_err(bpf_err(
                "loading the steering program (is this kernel XDP-capable?)",
            ))?;
        let prog = program(&obj)?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| bpf_err("the steering program's descriptor")(e.into()))?;
        let local_prog = obj
            .progs()
            .find(|p| p.name() == LOCAL_PROGRAM_NAME)
            .ok_or_else(|| not_found("finding the loopback program"))?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| bpf_err("the loopback program's descriptor")(e.into()))?;
        let map = |name: &str| -> Result<MapHandle, SteeringError> {
            let m = obj
                .maps()
                .find(|m| m.name() == name)
                .ok_or_else(|| not_found(format!("finding map '{name}'")))?;
            MapHandle::try_from(&m).map_err(bpf_err(format!("map '{name}'")))
        };
        let maps = Maps {
            xsks: map("xsks")?,
            config: map("config")?,
            ifaces: map("ifaces")?,
            node_ips: map("node_ips")?,
            frontend_ips: map("frontend_ips")?,
            nodeports: map("nodeports")?,
            service_cidrs: map("service_cidrs")?,
            local_redirect: map("local_redirect")?,
            stats: map("stats")?,
        };
        let s = Steering {
            obj,
            prog,
            local_prog,
            local_on: Mutex::new(None),
            maps,
            state: Mutex::new(AttachState {
                by_ifindex: HashMap::new(),
                used_slots: vec![false; MAX_INTERFACES as usize],
            }),
            modes: &[XdpMode::Native, XdpMode::Generic],
        };
        // Nothing steered until the agent says so: an empty masquerade range.
        s.set_params(&SteeringParams {
            masq_range: (1, 0),
            ..SteeringParams::default()
        })?;
        Ok(s)
    }

    /// The program's file descriptor (for tests and diagnostics).
    pub fn prog_fd(&self) -> RawFd {
        self.prog.as_raw_fd()
    }

    fn xdp(&self) -> Xdp<'_> {
        Xdp::new(self.prog.as_fd())
    }

    /// Replaces the steering parameters. New entries are added before stale
    /// ones are removed, so a key present in both the old and the new set is
    /// steered throughout.
    pub fn set_params(&self, p: &SteeringParams) -> Result<(), SteeringError> {
        check_len("node IPs", p.node_ips.len(), MAX_NODE_IPS)?;
        check_len("service CIDRs", p.service_cidrs.len(), MAX_SERVICE_CIDRS)?;
        check_len("frontend IPs", p.frontend_ips.len(), MAX_FRONTEND_IPS)?;
        check_len("NodePorts", p.nodeports.len(), MAX_NODEPORTS)?;
        let (lo, hi) = p.masq_range;
        let cfg = ConfigValue {
            vxlan_port: p.vxlan_port,
            masq_lo: lo,
            masq_hi: hi,
        };
        map_update(
            &self.maps.config,
            &0u32.to_ne_bytes(),
            &cfg.to_bytes(),
            "config",
        )?;
        let ip_key = |ip: &Ipv4Addr| ip.octets().to_vec();
        // steer.c's node_ips values: NODE_IP, | NODE_IP_NODEPORTS where
        // NodePorts answer.
        sync_map(
            &self.maps.node_ips,
            p.node_ips
                .iter()
                .map(|ip| {
                    let v = if p.nodeport_ips.contains(ip) {
                        NODE_IP | NODE_IP_NODEPORTS
                    } else {
                        NODE_IP
                    };
                    (ip_key(ip), v)
                })
                .collect(),
            "node_ips",
        )?;
        sync_set(
            &self.maps.frontend_ips,
            p.frontend_ips.iter().map(ip_key).collect(),
            "frontend_ips",
        )?;
        sync_set(
            &self.maps.nodeports,
            p.nodeports
                .iter()
                .map(|(proto, port)| nodeport_key(*proto, *port))
                .collect(),
            "nodeports",
        )?;
        sync_set(
            &self.maps.service_cidrs,
            p.service_cidrs.iter().map(lpm_key).collect(),
            "service_cidrs",
        )?;
        Ok(())
    }

    /// Registers `ifindex` with `role` and attaches the program in driver mode,
    /// falling back to generic mode. A stale nodeplane program left attached by
    /// a previous run is replaced; any other program is left alone (error).
    pub fn attach(&self, ifindex: u32, role: InterfaceRole) -> Result<Attachment, SteeringError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.by_ifindex.contains_key(&ifindex) {
            return Err(SteeringError::AlreadyAttached(ifindex));
        }
        let slot = st
            .used_slots
            .iter()
            .position(|u| !u)
            .ok_or(SteeringError::TooManyInterfaces)?;
        let slot_base = u32::try_from(slot).map_err(|_| SteeringError::TooManyInterfaces)?
            * QUEUES_PER_INTERFACE;
        let value = IfaceValue::new(role, slot_base);
        map_update(
            &self.maps.ifaces,
            &ifindex.to_ne_bytes(),
            &value.to_bytes(),
            "ifaces",
        )?;
        let mode = match self.attach_prog(ifindex) {
            Ok(m) => m,
            Err(e) => {
                map_delete(&self.maps.ifaces, &ifindex.to_ne_bytes());
                return Err(e);
            }
        };
        st.used_slots[slot] = true;
        let a = Attachment {
            ifindex,
            role,
            mode,
            slot_base,
        };
        st.by_ifindex.insert(ifindex, a);
        Ok(a)
    }

    /// Attaches only in `mode` (`None`: driver mode, falling back to generic).
    /// Generic mode runs the program after the kernel's receive steering (RPS),
    /// driver mode in the driver's receive path: on veth, on the sender's CPU.
    pub fn set_mode(&mut self, mode: Option<XdpMode>) {
        self.modes = match mode {
            None => &[XdpMode::Native, XdpMode::Generic],
            Some(XdpMode::Native) => &[XdpMode::Native],
            Some(XdpMode::Generic) => &[XdpMode::Generic],
        };
    }

    fn attach_prog(&self, ifindex: u32) -> Result<XdpMode, SteeringError> {
        let attach_err = |source| SteeringError::Attach { ifindex, source };
        let xdp = self.xdp();
        let mut last = None;
        for &mode in self.modes {
            let Err(e) = xdp.attach(ifindex as i32, mode.flags() | XdpFlags::UPDATE_IF_NOEXIST)
            else {
                return Ok(mode);
            };
            // Why it failed: something attached already (ours from a crashed
            // run, or not ours), no such interface (the query fails too), or
            // this mode is not available here (try the next one).
            let attached = xdp
                .query(ifindex as i32, XdpFlags::NONE)
                .map_err(attach_err)?;
            if attached.prog_id != 0 || attached.drv_prog_id != 0 || attached.skb_prog_id != 0 {
                return self.replace_stale(ifindex);
            }
            last = Some(e);
        }
        Err(attach_err(last.unwrap_or_else(|| {
            libbpf_rs::Error::from_raw_os_error(libc::EINVAL)
        })))
    }

    /// Replaces a program named like ours (left behind by a previous run).
    fn replace_stale(&self, ifindex: u32) -> Result<XdpMode, SteeringError> {
        let attach_err = |source| SteeringError::Attach { ifindex, source };
        for mode in [XdpMode::Native, XdpMode::Generic] {
            let id = match self.xdp().query_id(ifindex as i32, mode.flags()) {
                Ok(id) if id != 0 => id,
                _ => continue,
            };
            let name = prog_name_by_id(id).unwrap_or_default();
            if name != PROGRAM_NAME {
                return Err(SteeringError::Occupied {
                    ifindex,
                    prog_id: id,
                    name,
                });
            }
            let old = Program::fd_from_id(id).map_err(attach_err)?;
            xdp_swap(ifindex, Some(self.prog.as_fd()), mode, old.as_fd())
                .map_err(|e| attach_err(e.into()))?;
            tracing::warn!(ifindex, "replaced a stale nodeplane XDP program");
            return Ok(mode);
        }
        Err(attach_err(libbpf_rs::Error::from_raw_os_error(libc::EBUSY)))
    }

    /// Detaches the program from `ifindex` (only if it is still ours) and forgets
    /// the interface. False if it was not attached by this `Steering`.
    pub fn detach(&self, ifindex: u32) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(a) = st.by_ifindex.remove(&ifindex) else {
            return false;
        };
        map_delete(&self.maps.ifaces, &ifindex.to_ne_bytes());
        self.detach_prog(&a);
        let slot = (a.slot_base / QUEUES_PER_INTERFACE) as usize;
        if let Some(u) = st.used_slots.get_mut(slot) {
            *u = false;
        }
        true
    }

    fn detach_prog(&self, a: &Attachment) {
        // With our program as the expected one, the kernel detaches only if
        // it is still ours (a newer instance may have replaced it).
        if let Err(e) = xdp_swap(a.ifindex, None, a.mode, self.prog.as_fd()) {
            if e.raw_os_error() != Some(libc::ENODEV) {
                tracing::warn!(ifindex = a.ifindex, error = %e, "detaching XDP");
            }
        }
    }

    /// Detaches a program named like ours (`PROGRAM_NAME`) from `ifindex`,
    /// whoever attached it (a killed agent): `nodeplane cleanup`. Any other
    /// program is left alone. The modes it was detached from.
    pub fn detach_stale(&self, ifindex: u32) -> Vec<XdpMode> {
        let mut out = Vec::new();
        for mode in [XdpMode::Native, XdpMode::Generic] {
            let id = match self.xdp().query_id(ifindex as i32, mode.flags()) {
                Ok(id) if id != 0 => id,
                _ => continue,
            };
            if prog_name_by_id(id).as_deref() != Some(PROGRAM_NAME) {
                continue;
            }
            let Ok(old) = Program::fd_from_id(id) else {
                continue;
            };
            // Only if it is still that program (an agent may be starting).
            if xdp_swap(ifindex, None, mode, old.as_fd()).is_ok() {
                out.push(mode);
            }
        }
        out
    }

    /// Detaches from every interface.
    pub fn detach_all(&self) {
        let ifindexes: Vec<u32> = {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.by_ifindex.keys().copied().collect()
        };
        for i in ifindexes {
            self.detach(i);
        }
    }

    /// The interfaces currently attached.
    pub fn attachments(&self) -> Vec<Attachment> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Attachment> = st.by_ifindex.values().copied().collect();
        v.sort_by_key(|a| a.ifindex);
        v
    }

    pub fn attachment(&self, ifindex: u32) -> Option<Attachment> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.by_ifindex.get(&ifindex).copied()
    }

    /// Attaches the loopback program to `lo_ifindex`'s tc egress (creating
    /// its clsact qdisc if there is none; replacing a filter of ours a
    /// previous agent left), sending the node's own NodePort packets to `to`.
    pub fn redirect_local_nodeports(
        &self,
        lo_ifindex: u32,
        to: LocalRedirect,
    ) -> Result<(), SteeringError> {
        map_update(
            &self.maps.local_redirect,
            &0u32.to_ne_bytes(),
            &to.to_bytes(),
            "local_redirect",
        )?;
        let attach_err = |source| SteeringError::Attach {
            ifindex: lo_ifindex,
            source,
        };
        let mut hook = local_hook(self.local_prog.as_fd(), lo_ifindex);
        hook.create().map_err(attach_err)?;
        hook.attach().map_err(attach_err)?;
        *self.local_on.lock().unwrap_or_else(|e| e.into_inner()) = Some(lo_ifindex);
        Ok(())
    }

    /// Stops the loopback program: it passes everything at once (its map
    /// entry is cleared), then its filter is removed if it is still ours.
    /// The clsact qdisc stays (another filter may use it; an empty one
    /// changes nothing).
    pub fn stop_local_nodeports(&self) {
        let _ = self.maps.local_redirect.update(
            &0u32.to_ne_bytes(),
            &[0u8; LOCAL_REDIRECT_LEN],
            MapFlags::ANY,
        );
        let Some(lo) = self
            .local_on
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let ours = Program::id_from_fd(self.local_prog.as_fd()).ok();
        let mut hook = local_hook(self.local_prog.as_fd(), lo);
        if hook.query().ok().is_some_and(|id| Some(id) == ours) {
            if let Err(e) = hook.detach() {
                tracing::warn!(ifindex = lo, error = %e, "detaching the loopback program");
            }
        }
    }

    /// Removes a loopback program of ours from `ifindex`, whoever attached
    /// it (a killed agent): `nodeplane cleanup`. True if one was removed.
    pub fn detach_stale_local(&self, ifindex: u32) -> bool {
        let mut hook = local_hook(self.local_prog.as_fd(), ifindex);
        match hook.query() {
            Ok(id) if id != 0 => {
                prog_name_by_id(id).as_deref() == Some(LOCAL_PROGRAM_NAME) && hook.detach().is_ok()
            }
            _ => false,
        }
    }

    /// The program attached to `ifindex`'s egress at the loopback program's
    /// handle and priority, if any (its id and name), for tests.
    pub fn local_attached(&self, ifindex: u32) -> Option<(u32, String)> {
        let mut hook = local_hook(self.local_prog.as_fd(), ifindex);
        let id = hook.query().ok().filter(|id| *id != 0)?;
        Some((id, prog_name_by_id(id).unwrap_or_default()))
    }

    /// Runs the loopback program once on `packet` (an Ethernet frame, as `lo`
    /// sends it) with `to` as its target, attached nowhere
    /// (BPF_PROG_TEST_RUN): its tc verdict (`TC_ACT_OK` 0, `TC_ACT_SHOT` 2,
    /// `TC_ACT_REDIRECT` 7) and the frame as it left the program. Refused
    /// while the program is attached (its target would change under it).
    pub fn dry_run_local(
        &self,
        to: LocalRedirect,
        packet: &[u8],
    ) -> Result<(u32, Vec<u8>), SteeringError> {
        if let Some(lo) = *self.local_on.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(SteeringError::AlreadyAttached(lo));
        }
        map_update(
            &self.maps.local_redirect,
            &0u32.to_ne_bytes(),
            &to.to_bytes(),
            "local_redirect",
        )?;
        let mut out = vec![0u8; packet.len() + 512];
        let input = ProgramInput {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat: 1,
            ..ProgramInput::default()
        };
        let ran = self
            .obj
            .progs_mut()
            .find(|p| p.name() == LOCAL_PROGRAM_NAME)
            .ok_or_else(|| not_found("finding the loopback program"))
            .and_then(|p| {
                p.test_run(input)
                    .map_err(bpf_err("test-running the loopback program"))
                    .map(|o| (o.return_value, o.data.map(|d| d.len()).unwrap_or(0)))
            });
        map_update(
            &self.maps.local_redirect,
            &0u32.to_ne_bytes(),
            &[0u8; LOCAL_REDIRECT_LEN],
            "local_redirect",
        )?;
        let (verdict, len) = ran?;
        out.truncate(len);
        Ok((verdict, out))
    }

    /// Inserts an AF_XDP socket at XSKMAP index `slot`.
    pub(crate) fn set_socket(&self, slot: u32, fd: RawFd) -> Result<(), SteeringError> {
        let v = fd as u32;
        map_update(
            &self.maps.xsks,
            &slot.to_ne_bytes(),
            &v.to_ne_bytes(),
            "xsks",
        )
    }

    /// Removes the socket at XSKMAP index `slot`.
    pub(crate) fn clear_socket(&self, slot: u32) {
        map_delete(&self.maps.xsks, &slot.to_ne_bytes());
    }

    /// Runs the program once on `packet` (an Ethernet frame) as if it arrived
    /// on queue 0 of the loopback interface with `role`, without attaching
    /// anything (BPF_PROG_TEST_RUN), and returns the name of the decision
    /// counter it bumped (see `STAT_NAMES`): `redirect_<reason>` for a frame
    /// it would steer (no socket sits at the loopback's slot, so it is passed
    /// after all), `pass_<reason>` otherwise. For tests and diagnostics: the answer is exact only while no other
    /// traffic runs through this `Steering` (its counters are shared).
    pub fn dry_run(
        &self,
        role: InterfaceRole,
        packet: &[u8],
    ) -> Result<&'static str, SteeringError> {
        const LOOPBACK: u32 = 1;
        if self.attachment(LOOPBACK).is_some() {
            return Err(SteeringError::AlreadyAttached(LOOPBACK));
        }
        let len =
            u32::try_from(packet.len()).map_err(|_| SteeringError::PacketTooLong(packet.len()))?;
        // Past every interface slot: nothing is ever inserted there.
        let value = IfaceValue::new(role, XSK_SLOTS - QUEUES_PER_INTERFACE);
        map_update(
            &self.maps.ifaces,
            &LOOPBACK.to_ne_bytes(),
            &value.to_bytes(),
            "ifaces",
        )?;
        let before = self.stats();
        let mut ctx = xdp_md(len, LOOPBACK);
        let mut out = vec![0u8; packet.len() + 512];
        let input = ProgramInput {
            data_in: Some(packet),
            data_out: Some(&mut out),
            context_in: Some(&mut ctx),
            repeat: 1,
            ..ProgramInput::default()
        };
        let ran = program(&self.obj).and_then(|p| {
            p.test_run(input)
                .map_err(bpf_err("test-running the steering program"))
        });
        map_delete(&self.maps.ifaces, &LOOPBACK.to_ne_bytes());
        ran?;
        let after = self.stats();
        // The decision; `pass_no_socket` only if it is the sole counter bumped.
        let no_socket = STAT_NAMES.iter().position(|n| *n == "pass_no_socket");
        let bumped: Vec<usize> = (0..STAT_NAMES.len())
            .filter(|&i| after.counts[i] > before.counts[i])
            .collect();
        let decision = bumped
            .iter()
            .copied()
            .find(|i| Some(*i) != no_socket)
            .or(bumped.first().copied());
        match decision {
            Some(i) => Ok(STAT_NAMES[i]),
            None => Err(bpf_err("test run counted no decision")(
                libbpf_rs::Error::from_raw_os_error(libc::EIO),
            )),
        }
    }

    /// The program's decision counters, summed over CPUs.
    pub fn stats(&self) -> SteeringStats {
        let mut out = SteeringStats::default();
        for (i, c) in (0u32..).zip(out.counts.iter_mut()) {
            let key = i.to_ne_bytes();
            if let Ok(Some(per_cpu)) = self.maps.stats.lookup_percpu(&key, MapFlags::ANY) {
                *c = per_cpu
                    .iter()
                    .filter_map(|v| v.get(..8)?.try_into().ok())
                    .map(u64::from_ne_bytes)
                    .sum();
            }
        }
        out
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        // The object (program and maps) is closed after this, by its own Drop.
        self.stop_local_nodeports();
        self.detach_all();
    }
}

/// The steering program of the loaded object.
fn program(obj: &Object) -> Result<ProgramMut<'_>, SteeringError> {
    obj.progs_mut()
        .find(|p| p.name() == PROGRAM_NAME)
        .ok_or_else(|| not_found("finding the steering program"))
}

fn not_found(what: impl Into<String>) -> SteeringError {
    bpf_err(what)(libbpf_rs::Error::from_raw_os_error(libc::ENOENT))
}

/// Puts `new` (None: nothing) in place of `expected` on `ifindex` in `mode`,
/// atomically: the kernel refuses (EEXIST) when the program attached there
/// is not `expected`. Used to replace a stale program of ours and to detach
/// only our own. libbpf-rs 0.27's `Xdp` has no expected program on detach
/// and no mode on replace, so this one call goes to libbpf directly.
fn xdp_swap(
    ifindex: u32,
    new: Option<BorrowedFd<'_>>,
    mode: XdpMode,
    expected: BorrowedFd<'_>,
) -> Result<(), std::io::Error> {
    let opts = libbpf_sys::bpf_xdp_attach_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_xdp_attach_opts>() as libbpf_sys::size_t,
        old_prog_fd: expected.as_raw_fd(),
        ..Default::default()
    };
    let new = new.map_or(-1, |fd| fd.as_raw_fd());
    // SAFETY: a syscall wrapper taking plain integers and `opts`, which lives
    // across the call and has its size in `sz`; both descriptors are borrowed
    // for the call (-1 detaches).
    let ret =
        unsafe { libbpf_sys::bpf_xdp_attach(ifindex as i32, new, mode.flags().bits(), &opts) };
    if ret < 0 {
        return Err(std::io::Error::from_raw_os_error(-ret));
    }
    Ok(())
}

fn check_len(what: &'static str, count: usize, max: usize) -> Result<(), SteeringError> {
    if count > max {
        Err(SteeringError::TooMany { what, count, max })
    } else {
        Ok(())
    }
}

fn map_update(map: &MapHandle, key: &[u8], value: &[u8], what: &str) -> Result<(), SteeringError> {
    map.update(key, value, MapFlags::ANY)
        .map_err(bpf_err(format!("updating map {what}")))
}

fn map_delete(map: &MapHandle, key: &[u8]) {
    // Absent keys are fine: deleting is idempotent here.
    let _ = map.delete(key);
}

/// Makes a set-like map (key → 1u8) hold exactly `want`.
fn sync_set(map: &MapHandle, want: Vec<Vec<u8>>, what: &str) -> Result<(), SteeringError> {
    sync_map(map, want.into_iter().map(|k| (k, 1)).collect(), what)
}

/// `sync_set` for a map whose one-byte values matter.
fn sync_map(map: &MapHandle, want: Vec<(Vec<u8>, u8)>, what: &str) -> Result<(), SteeringError> {
    for (k, v) in &want {
        map_update(map, k, &[*v], what)?;
    }
    let want: std::collections::HashSet<Vec<u8>> = want.into_iter().map(|(k, _)| k).collect();
    let stale: Vec<Vec<u8>> = map
        .keys()
        .take(1 << 20)
        .filter(|k| !want.contains(k))
        .collect();
    for k in &stale {
        map_delete(map, k);
    }
    Ok(())
}

fn prog_name_by_id(id: u32) -> Option<String> {
    ProgInfoIter::default()
        .find(|p| p.id == id)
        .map(|p| p.name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_object_is_bpf_elf() {
        assert_eq!(&STEER_OBJ[..4], b"\x7fELF");
        // e_machine at offset 18: EM_BPF = 247.
        assert_eq!(u16::from_le_bytes([STEER_OBJ[18], STEER_OBJ[19]]), 247);
    }

    #[test]
    fn stats_helpers_sum_by_prefix() {
        let mut s = SteeringStats::default();
        s.counts[0] = 2; // pass_not_ipv4
        s.counts[6] = 3; // redirect_vxlan
        s.counts[11] = 4; // redirect_pod
        s.counts[5] = 1; // pass_no_socket
        assert_eq!(s.passed(), 3);
        assert_eq!(s.decided_redirect(), 7);
        assert_eq!(s.redirected(), 6);
        assert_eq!(s.get("redirect_pod"), 4);
        assert_eq!(s.get("nope"), 0);
    }
}
