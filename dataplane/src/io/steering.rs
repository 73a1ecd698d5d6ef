//! The XDP steering program (bpf/steer.c, compiled by build.rs): loading it with
//! libbpf, attaching/detaching it per interface (driver mode, falling back to
//! generic), and the maps the agent updates at run time (`SteeringParams`), the
//! XSKMAP the workers insert their sockets into, and the per-CPU decision counters.
//! It never touches an interface it was not asked to attach to, and only ever
//! detaches its own program.

use std::collections::HashMap;
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::raw::{c_int, c_void};
use std::sync::Mutex;

use shared::{Ipv4Cidr, L4Proto};

/// The compiled steering program.
static STEER_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/steer.bpf.o"));

/// The program's name (also what `bpftool prog` shows, ≤ 15 chars).
pub const PROGRAM_NAME: &str = "nodeplane_steer";
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
        source: std::io::Error,
    },
    #[error("attaching XDP to ifindex {ifindex}: {source}")]
    Attach {
        ifindex: u32,
        #[source]
        source: std::io::Error,
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

    fn flag(self) -> u32 {
        match self {
            XdpMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
            XdpMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
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

/// Layout of `struct config` in steer.c.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ConfigValue {
    vxlan_port: u16,
    masq_lo: u16,
    masq_hi: u16,
    pad: u16,
}

/// Layout of `struct iface` in steer.c.
#[repr(C)]
#[derive(Clone, Copy)]
struct IfaceValue {
    role: u32,
    slot_base: u32,
}

/// Layout of `struct nodeport_key` in steer.c.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct NodePortKey {
    port: u16,
    proto: u8,
    pad: u8,
}

/// Layout of `struct lpm_v4_key` in steer.c.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct LpmKey {
    prefixlen: u32,
    addr: u32,
}

/// The program's per-reason decisions (slots of the `stats` map). `redirect_*`
/// count decisions to steer a frame; `pass_no_socket` counts those of them that
/// found no socket at the queue's XSKMAP slot and were passed instead.
pub const STAT_NAMES: [&str; 12] = [
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

struct MapFds {
    xsks: c_int,
    config: c_int,
    ifaces: c_int,
    node_ips: c_int,
    frontend_ips: c_int,
    nodeports: c_int,
    service_cidrs: c_int,
    stats: c_int,
}

/// The loaded steering program and its maps. Dropping it detaches it from every
/// interface it was attached to.
pub struct Steering {
    obj: *mut libbpf_sys::bpf_object,
    prog_fd: c_int,
    maps: MapFds,
    state: Mutex<AttachState>,
    /// The modes tried when attaching, in order.
    modes: &'static [XdpMode],
}

// SAFETY: `obj` is only dereferenced by libbpf in `Drop` (close); everything else
// uses file descriptors, and the kernel serialises map and netlink operations.
unsafe impl Send for Steering {}
// SAFETY: as above; the mutable attachment state is behind a Mutex.
unsafe impl Sync for Steering {}

fn last_err(ret: c_int) -> std::io::Error {
    if ret < 0 {
        std::io::Error::from_raw_os_error(-ret)
    } else {
        std::io::Error::last_os_error()
    }
}

fn bpf_err(what: impl Into<String>, ret: c_int) -> SteeringError {
    SteeringError::Bpf {
        what: what.into(),
        source: last_err(ret),
    }
}

impl Steering {
    /// Loads the program and creates its maps (nothing is attached yet).
    pub fn load() -> Result<Steering, SteeringError> {
        let name = CString::new("nodeplane").unwrap_or_default();
        // SAFETY: zero is a valid bit pattern for this plain C options struct.
        let mut opts: libbpf_sys::bpf_object_open_opts = unsafe { std::mem::zeroed() };
        opts.sz = std::mem::size_of::<libbpf_sys::bpf_object_open_opts>() as libbpf_sys::size_t;
        opts.object_name = name.as_ptr();
        // SAFETY: the buffer is a static ELF object; libbpf copies what it keeps.
        let obj = unsafe {
            libbpf_sys::bpf_object__open_mem(
                STEER_OBJ.as_ptr().cast::<c_void>(),
                STEER_OBJ.len() as libbpf_sys::size_t,
                &opts,
            )
        };
        if obj.is_null() {
            return Err(bpf_err("opening the steering object", -1));
        }
        // From here on, `Steering`'s Drop closes the object on every error path.
        let mut s = Steering {
            obj,
            prog_fd: -1,
            maps: MapFds {
                xsks: -1,
                config: -1,
                ifaces: -1,
                node_ips: -1,
                frontend_ips: -1,
                nodeports: -1,
                service_cidrs: -1,
                stats: -1,
            },
            state: Mutex::new(AttachState {
                by_ifindex: HashMap::new(),
                used_slots: vec![false; MAX_INTERFACES as usize],
            }),
            modes: &[XdpMode::Native, XdpMode::Generic],
        };
        // SAFETY: `obj` is a valid, not yet loaded object.
        let ret = unsafe { libbpf_sys::bpf_object__load(obj) };
        if ret != 0 {
            return Err(bpf_err(
                "loading the steering program (is this kernel XDP-capable?)",
                ret,
            ));
        }
        let prog_name = CString::new(PROGRAM_NAME).unwrap_or_default();
        // SAFETY: `obj` is loaded; the name is NUL-terminated.
        let prog = unsafe { libbpf_sys::bpf_object__find_program_by_name(obj, prog_name.as_ptr()) };
        if prog.is_null() {
            return Err(bpf_err("finding the steering program", -libc::ENOENT));
        }
        // SAFETY: `prog` belongs to the loaded object.
        s.prog_fd = unsafe { libbpf_sys::bpf_program__fd(prog) };
        let map_fd = |n: &str| -> Result<c_int, SteeringError> {
            let cn = CString::new(n).unwrap_or_default();
            // SAFETY: `obj` is loaded; the name is NUL-terminated.
            let fd = unsafe { libbpf_sys::bpf_object__find_map_fd_by_name(obj, cn.as_ptr()) };
            if fd < 0 {
                Err(bpf_err(format!("finding map '{n}'"), fd))
            } else {
                Ok(fd)
            }
        };
        s.maps = MapFds {
            xsks: map_fd("xsks")?,
            config: map_fd("config")?,
            ifaces: map_fd("ifaces")?,
            node_ips: map_fd("node_ips")?,
            frontend_ips: map_fd("frontend_ips")?,
            nodeports: map_fd("nodeports")?,
            service_cidrs: map_fd("service_cidrs")?,
            stats: map_fd("stats")?,
        };
        // Nothing steered until the agent says so: an empty masquerade range.
        s.set_params(&SteeringParams {
            masq_range: (1, 0),
            ..SteeringParams::default()
        })?;
        Ok(s)
    }

    /// The program's file descriptor (for tests and diagnostics).
    pub fn prog_fd(&self) -> c_int {
        self.prog_fd
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
            pad: 0,
        };
        map_update(self.maps.config, &0u32, &cfg, "config")?;
        let ip_key = |ip: &Ipv4Addr| u32::from_ne_bytes(ip.octets());
        sync_set(
            self.maps.node_ips,
            p.node_ips.iter().map(ip_key).collect(),
            "node_ips",
        )?;
        sync_set(
            self.maps.frontend_ips,
            p.frontend_ips.iter().map(ip_key).collect(),
            "frontend_ips",
        )?;
        sync_set(
            self.maps.nodeports,
            p.nodeports
                .iter()
                .map(|(proto, port)| NodePortKey {
                    port: *port,
                    proto: proto.number(),
                    pad: 0,
                })
                .collect(),
            "nodeports",
        )?;
        sync_set(
            self.maps.service_cidrs,
            p.service_cidrs
                .iter()
                .map(|c| LpmKey {
                    prefixlen: u32::from(c.prefix_len()),
                    addr: u32::from_ne_bytes(c.network().octets()),
                })
                .collect(),
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
        let slot_base = slot as u32 * QUEUES_PER_INTERFACE;
        let value = IfaceValue {
            role: match role {
                InterfaceRole::Uplink => ROLE_UPLINK,
                InterfaceRole::Pod => ROLE_POD,
            },
            slot_base,
        };
        map_update(self.maps.ifaces, &ifindex, &value, "ifaces")?;
        let mode = match self.attach_prog(ifindex) {
            Ok(m) => m,
            Err(e) => {
                map_delete(self.maps.ifaces, &ifindex);
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
        let mut last = None;
        for &mode in self.modes {
            let flags = mode.flag() | libbpf_sys::XDP_FLAGS_UPDATE_IF_NOEXIST;
            // SAFETY: plain syscall wrapper; a null opts pointer is allowed.
            let ret = unsafe {
                libbpf_sys::bpf_xdp_attach(ifindex as c_int, self.prog_fd, flags, std::ptr::null())
            };
            if ret == 0 {
                return Ok(mode);
            }
            let errno = -ret;
            if errno == libc::EBUSY || errno == libc::EEXIST {
                // Something is attached already: ours from a crashed run, or not ours.
                return self.replace_stale(ifindex);
            }
            if errno == libc::ENODEV {
                return Err(SteeringError::Attach {
                    ifindex,
                    source: last_err(ret),
                });
            }
            last = Some(last_err(ret));
        }
        Err(SteeringError::Attach {
            ifindex,
            source: last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL)),
        })
    }

    /// Replaces a program named like ours (left behind by a previous run).
    fn replace_stale(&self, ifindex: u32) -> Result<XdpMode, SteeringError> {
        for mode in [XdpMode::Native, XdpMode::Generic] {
            let mut id = 0u32;
            // SAFETY: plain syscall wrapper writing one u32.
            let ret = unsafe {
                libbpf_sys::bpf_xdp_query_id(ifindex as c_int, mode.flag() as c_int, &mut id)
            };
            if ret != 0 || id == 0 {
                continue;
            }
            let name = prog_name_by_id(id).unwrap_or_default();
            if name != PROGRAM_NAME {
                return Err(SteeringError::Occupied {
                    ifindex,
                    prog_id: id,
                    name,
                });
            }
            // SAFETY: plain syscall wrapper.
            let old_fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
            if old_fd < 0 {
                return Err(SteeringError::Attach {
                    ifindex,
                    source: last_err(old_fd),
                });
            }
            let opts = libbpf_sys::bpf_xdp_attach_opts {
                sz: std::mem::size_of::<libbpf_sys::bpf_xdp_attach_opts>() as libbpf_sys::size_t,
                old_prog_fd: old_fd,
                ..Default::default()
            };
            // SAFETY: plain syscall wrapper; `opts` outlives the call.
            let ret = unsafe {
                libbpf_sys::bpf_xdp_attach(ifindex as c_int, self.prog_fd, mode.flag(), &opts)
            };
            // SAFETY: `old_fd` was returned by the kernel above and is ours to close.
            unsafe { libc::close(old_fd) };
            if ret != 0 {
                return Err(SteeringError::Attach {
                    ifindex,
                    source: last_err(ret),
                });
            }
            tracing::warn!(ifindex, "replaced a stale nodeplane XDP program");
            return Ok(mode);
        }
        Err(SteeringError::Attach {
            ifindex,
            source: std::io::Error::from_raw_os_error(libc::EBUSY),
        })
    }

    /// Detaches the program from `ifindex` (only if it is still ours) and forgets
    /// the interface. False if it was not attached by this `Steering`.
    pub fn detach(&self, ifindex: u32) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(a) = st.by_ifindex.remove(&ifindex) else {
            return false;
        };
        map_delete(self.maps.ifaces, &ifindex);
        self.detach_prog(&a);
        let slot = (a.slot_base / QUEUES_PER_INTERFACE) as usize;
        if let Some(u) = st.used_slots.get_mut(slot) {
            *u = false;
        }
        true
    }

    fn detach_prog(&self, a: &Attachment) {
        let opts = libbpf_sys::bpf_xdp_attach_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_xdp_attach_opts>() as libbpf_sys::size_t,
            old_prog_fd: self.prog_fd,
            ..Default::default()
        };
        // SAFETY: plain syscall wrapper; `opts` outlives the call. With
        // old_prog_fd set, the kernel detaches only if our program is attached.
        let ret = unsafe { libbpf_sys::bpf_xdp_detach(a.ifindex as c_int, a.mode.flag(), &opts) };
        if ret != 0 && -ret != libc::ENODEV {
            tracing::warn!(ifindex = a.ifindex, error = %last_err(ret), "detaching XDP");
        }
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

    /// Inserts an AF_XDP socket at XSKMAP index `slot`.
    pub(crate) fn set_socket(&self, slot: u32, fd: c_int) -> Result<(), SteeringError> {
        let v = fd as u32;
        map_update(self.maps.xsks, &slot, &v, "xsks")
    }

    /// Removes the socket at XSKMAP index `slot`.
    pub(crate) fn clear_socket(&self, slot: u32) {
        map_delete(self.maps.xsks, &slot);
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
        let value = IfaceValue {
            role: match role {
                InterfaceRole::Uplink => ROLE_UPLINK,
                InterfaceRole::Pod => ROLE_POD,
            },
            // Past every interface slot: nothing is ever inserted there.
            slot_base: XSK_SLOTS - QUEUES_PER_INTERFACE,
        };
        map_update(self.maps.ifaces, &LOOPBACK, &value, "ifaces")?;
        let before = self.stats();
        let ctx = libbpf_sys::xdp_md {
            data: 0,
            data_end: packet.len() as u32,
            data_meta: 0,
            ingress_ifindex: LOOPBACK,
            rx_queue_index: 0,
            egress_ifindex: 0,
        };
        let mut out = vec![0u8; packet.len() + 512];
        let mut opts = libbpf_sys::bpf_test_run_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as libbpf_sys::size_t,
            data_in: packet.as_ptr().cast::<c_void>(),
            data_out: out.as_mut_ptr().cast::<c_void>(),
            data_size_in: packet.len() as u32,
            data_size_out: out.len() as u32,
            ctx_in: (&ctx as *const libbpf_sys::xdp_md).cast::<c_void>(),
            ctx_size_in: std::mem::size_of::<libbpf_sys::xdp_md>() as u32,
            repeat: 1,
            ..Default::default()
        };
        // SAFETY: every pointer in `opts` refers to a live buffer of the stated size.
        let ret = unsafe { libbpf_sys::bpf_prog_test_run_opts(self.prog_fd, &mut opts) };
        map_delete(self.maps.ifaces, &LOOPBACK);
        if ret != 0 {
            return Err(bpf_err("test-running the steering program", ret));
        }
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
            None => Err(bpf_err("test run counted no decision", -libc::EIO)),
        }
    }

    /// The program's decision counters, summed over CPUs.
    pub fn stats(&self) -> SteeringStats {
        // SAFETY: plain library call.
        let ncpu = unsafe { libbpf_sys::libbpf_num_possible_cpus() }.max(1) as usize;
        let mut out = SteeringStats::default();
        let mut vals = vec![0u64; ncpu];
        for (i, c) in out.counts.iter_mut().enumerate() {
            let key = i as u32;
            // SAFETY: a per-CPU array lookup writes one u64 per possible CPU,
            // which `vals` holds.
            let ret = unsafe {
                libbpf_sys::bpf_map_lookup_elem(
                    self.maps.stats,
                    (&key as *const u32).cast::<c_void>(),
                    vals.as_mut_ptr().cast::<c_void>(),
                )
            };
            if ret == 0 {
                *c = vals.iter().sum();
            }
        }
        out
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        self.detach_all();
        // SAFETY: `obj` came from bpf_object__open_mem and is closed once, here.
        unsafe { libbpf_sys::bpf_object__close(self.obj) };
    }
}

fn check_len(what: &'static str, count: usize, max: usize) -> Result<(), SteeringError> {
    if count > max {
        Err(SteeringError::TooMany { what, count, max })
    } else {
        Ok(())
    }
}

fn map_update<K, V>(fd: c_int, key: &K, value: &V, what: &str) -> Result<(), SteeringError> {
    // SAFETY: `key` and `value` have the map's key/value layouts (repr(C) mirrors
    // of steer.c) and live across the call.
    let ret = unsafe {
        libbpf_sys::bpf_map_update_elem(
            fd,
            (key as *const K).cast::<c_void>(),
            (value as *const V).cast::<c_void>(),
            0,
        )
    };
    if ret != 0 {
        return Err(bpf_err(format!("updating map {what}"), ret));
    }
    Ok(())
}

fn map_delete<K>(fd: c_int, key: &K) {
    // SAFETY: `key` has the map's key layout and lives across the call.
    unsafe { libbpf_sys::bpf_map_delete_elem(fd, (key as *const K).cast::<c_void>()) };
}

/// Makes a set-like map (key → 1u8) hold exactly `want`.
fn sync_set<K: Copy + Eq + std::hash::Hash>(
    fd: c_int,
    want: Vec<K>,
    what: &str,
) -> Result<(), SteeringError> {
    let one = 1u8;
    for k in &want {
        map_update(fd, k, &one, what)?;
    }
    let want: std::collections::HashSet<K> = want.into_iter().collect();
    let mut stale = Vec::new();
    let mut cur: Option<K> = None;
    loop {
        let mut next = std::mem::MaybeUninit::<K>::uninit();
        let prev = cur
            .as_ref()
            .map_or(std::ptr::null(), |k| (k as *const K).cast::<c_void>());
        // SAFETY: `prev` is null (first key) or a key of the map's layout;
        // `next` has room for one key.
        let ret = unsafe {
            libbpf_sys::bpf_map_get_next_key(fd, prev, next.as_mut_ptr().cast::<c_void>())
        };
        if ret != 0 {
            break;
        }
        // SAFETY: the kernel wrote a full key on success.
        let k = unsafe { next.assume_init() };
        if !want.contains(&k) {
            stale.push(k);
        }
        cur = Some(k);
        if stale.len() > 1 << 20 {
            break;
        }
    }
    for k in &stale {
        map_delete(fd, k);
    }
    Ok(())
}

fn prog_name_by_id(id: u32) -> Option<String> {
    // SAFETY: plain syscall wrapper.
    let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return None;
    }
    // SAFETY: zero is a valid bit pattern for this plain C struct.
    let mut info: libbpf_sys::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: `info` has `len` writable bytes; `fd` is a program fd.
    let ret = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd, &mut info, &mut len) };
    // SAFETY: `fd` is ours to close.
    unsafe { libc::close(fd) };
    if ret != 0 {
        return None;
    }
    let bytes: Vec<u8> = info
        .name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
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
