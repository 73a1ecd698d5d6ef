//! Interface facts the agent and the workers need, read from the kernel of the
//! calling thread's network namespace: index, MAC, MTU, IPv4 addresses, rx queue
//! count (ioctls on a socket and getifaddrs), the neighbour table and default
//! gateway (/proc/thread-self/net), and nudging the kernel to resolve a missing
//! neighbour. Read-only except for that one UDP datagram.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shared::net::parse_mac;
use shared::Mac;

/// Errors looking up an interface.
#[derive(Debug, thiserror::Error)]
pub enum NetifError {
    #[error("invalid interface name '{0}'")]
    BadName(String),
    #[error("no interface named '{0}'")]
    NotFound(String),
    #[error("{what} of '{name}': {source}")]
    Io {
        what: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// What the dataplane needs to know about one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    pub mac: Mac,
    pub mtu: u32,
    /// The first IPv4 address, if any.
    pub ipv4: Option<Ipv4Addr>,
    /// All IPv4 addresses with their prefix lengths.
    pub ipv4_addrs: Vec<(Ipv4Addr, u8)>,
    /// Receive queues (combined + rx-only channels; at least 1).
    pub rx_queues: u32,
}

fn check_name(name: &str) -> Result<CString, NetifError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
        return Err(NetifError::BadName(name.to_string()));
    }
    CString::new(name).map_err(|_| NetifError::BadName(name.to_string()))
}

/// Looks an interface up by name.
pub fn lookup(name: &str) -> Result<Interface, NetifError> {
    let ifindex = ifindex(name)?;
    let mac = mac(name)?;
    let mtu = mtu(name)?;
    let ipv4_addrs = ipv4_addrs(name);
    Ok(Interface {
        name: name.to_string(),
        ifindex,
        mac,
        mtu,
        ipv4: ipv4_addrs.first().map(|a| a.0),
        ipv4_addrs,
        rx_queues: rx_queue_count(name),
    })
}

/// The interface index of `name`.
pub fn ifindex(name: &str) -> Result<u32, NetifError> {
    let c = check_name(name)?;
    // SAFETY: `c` is NUL-terminated.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(NetifError::NotFound(name.to_string()));
    }
    Ok(i)
}

/// The name of interface `ifindex`.
pub fn name_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IFNAMSIZ];
    // SAFETY: `buf` has IFNAMSIZ bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Some(s.to_string_lossy().into_owned())
}

/// An ioctl on a throwaway UDP socket (in this thread's namespace).
fn ifreq_ioctl(
    name: &str,
    req: libc::c_ulong,
    what: &'static str,
) -> Result<libc::ifreq, NetifError> {
    let c = check_name(name)?;
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| NetifError::Io {
        what,
        name: name.to_string(),
        source: e,
    })?;
    // SAFETY: zero is a valid bit pattern for ifreq.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(c.as_bytes()) {
        *d = *s as libc::c_char;
    }
    // SAFETY: `ifr` is a valid ifreq for this request.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), req as _, &mut ifr) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENODEV) {
            return Err(NetifError::NotFound(name.to_string()));
        }
        return Err(NetifError::Io {
            what,
            name: name.to_string(),
            source: e,
        });
    }
    Ok(ifr)
}

/// The interface's MAC address.
pub fn mac(name: &str) -> Result<Mac, NetifError> {
    let ifr = ifreq_ioctl(name, libc::SIOCGIFHWADDR, "MAC address")?;
    // SAFETY: SIOCGIFHWADDR fills the hwaddr member of the union.
    let sa = unsafe { ifr.ifr_ifru.ifru_hwaddr };
    let mut m = [0u8; 6];
    for (d, s) in m.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(m)
}

/// The interface's MTU.
pub fn mtu(name: &str) -> Result<u32, NetifError> {
    let ifr = ifreq_ioctl(name, libc::SIOCGIFMTU, "MTU")?;
    // SAFETY: SIOCGIFMTU fills the mtu member of the union.
    let m = unsafe { ifr.ifr_ifru.ifru_mtu };
    Ok(m.max(0) as u32)
}

/// All IPv4 addresses of the interface, in the kernel's order.
pub fn ipv4_addrs(name: &str) -> Vec<(Ipv4Addr, u8)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string.
        let n = unsafe { CStr::from_ptr(ifa.ifa_name) };
        if n.to_bytes() != name.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr at least as large as its family says.
        if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: the family is AF_INET, so it is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        // Cannot truncate: a netmask has at most 32 bits set.
        #[allow(clippy::cast_possible_truncation)]
        let prefix = if ifa.ifa_netmask.is_null() {
            32
        } else {
            // SAFETY: the netmask of an AF_INET address is a sockaddr_in.
            let m = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in) };
            u32::from_be(m.sin_addr.s_addr).count_ones() as u8
        };
        out.push((ip, prefix));
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// Layout of `struct ethtool_channels`.
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// Receive queues in use (ethtool channels: rx + combined); 1 when the driver
/// does not say.
pub fn rx_queue_count(name: &str) -> u32 {
    let Ok(c) = check_name(name) else { return 1 };
    let Ok(sock) = UdpSocket::bind("0.0.0.0:0") else {
        return 1;
    };
    let mut ch = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..EthtoolChannels::default()
    };
    // SAFETY: zero is a valid bit pattern for ifreq.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(c.as_bytes()) {
        *d = *s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut ch as *mut EthtoolChannels).cast::<libc::c_char>();
    // SAFETY: SIOCETHTOOL with a valid ifreq whose data points at `ch`.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL as _, &mut ifr) };
    if r != 0 {
        return 1;
    }
    (ch.rx_count + ch.combined_count).max(1)
}

/// Parses /proc/net/arp: complete entries on `dev` (all devices if empty).
pub fn parse_proc_net_arp(text: &str, dev: &str) -> Vec<(Ipv4Addr, Mac)> {
    const ATF_COM: u32 = 0x02;
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 {
            continue;
        }
        if !dev.is_empty() && f[5] != dev {
            continue;
        }
        let Ok(ip) = f[0].parse::<Ipv4Addr>() else {
            continue;
        };
        let flags = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).unwrap_or(0);
        if flags & ATF_COM == 0 {
            continue;
        }
        let Some(mac) = parse_mac(f[3]) else { continue };
        if mac == [0; 6] {
            continue;
        }
        out.push((ip, mac));
    }
    out.sort();
    out.dedup();
    out
}

/// The kernel's resolved IPv4 neighbours on `dev` (this thread's namespace).
pub fn neighbors(dev: &str) -> Vec<(Ipv4Addr, Mac)> {
    match std::fs::read_to_string("/proc/thread-self/net/arp") {
        Ok(t) => parse_proc_net_arp(&t, dev),
        Err(_) => Vec::new(),
    }
}

/// Parses /proc/net/route: the gateway of the default route on `dev`.
pub fn parse_proc_net_route(text: &str, dev: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    let mut best: Option<(u32, Ipv4Addr)> = None;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[0] != dev {
            continue;
        }
        let (Ok(dst), Ok(gw), Ok(flags), Ok(metric), Ok(mask)) = (
            u32::from_str_radix(f[1], 16),
            u32::from_str_radix(f[2], 16),
            u32::from_str_radix(f[3], 16),
            f[6].parse::<u32>(),
            u32::from_str_radix(f[7], 16),
        ) else {
            continue;
        };
        if dst != 0 || mask != 0 || flags & (RTF_UP | RTF_GATEWAY) != (RTF_UP | RTF_GATEWAY) {
            continue;
        }
        // The file prints the in-memory (network-order) address as a native u32.
        let ip = Ipv4Addr::from(gw.to_ne_bytes());
        if best.is_none_or(|(m, _)| metric < m) {
            best = Some((metric, ip));
        }
    }
    best.map(|(_, ip)| ip)
}

/// The default gateway out of interface `ifindex` (this thread's namespace).
pub fn default_gateway(ifindex: u32) -> Option<Ipv4Addr> {
    let dev = name_of(ifindex)?;
    let t = std::fs::read_to_string("/proc/thread-self/net/route").ok()?;
    parse_proc_net_route(&t, &dev)
}

/// Minimum time between two resolution nudges for the same address.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(1);

static LAST_RESOLVE: Mutex<Option<HashMap<Ipv4Addr, Instant>>> = Mutex::new(None);

/// Asks the kernel to resolve `ip`'s MAC on `dev` by sending one UDP datagram to
/// its discard port (9) from a socket bound to `dev`. Rate-limited per address
/// (`RESOLVE_INTERVAL`). Returns true if a datagram was sent.
pub fn resolve_neighbor(dev: &str, ip: Ipv4Addr) -> bool {
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return false;
    }
    {
        let mut g = LAST_RESOLVE.lock().unwrap_or_else(|e| e.into_inner());
        let m = g.get_or_insert_with(HashMap::new);
        let now = Instant::now();
        if m.get(&ip)
            .is_some_and(|t| now.duration_since(*t) < RESOLVE_INTERVAL)
        {
            return false;
        }
        if m.len() > 4096 {
            m.retain(|_, t| now.duration_since(*t) < RESOLVE_INTERVAL);
        }
        m.insert(ip, now);
    }
    let Ok(sock) = UdpSocket::bind("0.0.0.0:0") else {
        return false;
    };
    let Ok(c) = check_name(dev) else { return false };
    let Ok(len) = libc::socklen_t::try_from(c.as_bytes_with_nul().len()) else {
        return false;
    };
    // SAFETY: SO_BINDTODEVICE with a NUL-terminated name and its length.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            c.as_ptr().cast::<libc::c_void>(),
            len,
        )
    };
    if r != 0 {
        return false;
    }
    let _ = sock.set_nonblocking(true);
    sock.send_to(&[0u8], SocketAddrV4::new(ip, 9)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARP: &str =
        "IP address       HW type     Flags       HW address            Mask     Device
198.18.0.1       0x1         0x2         02:00:00:00:02:02     *        eth1
198.18.0.3       0x1         0x0         00:00:00:00:00:00     *        eth1
198.18.0.4       0x1         0x2         02:00:00:00:02:04     *        eth9
garbage line
198.18.0.5       0x1         0x6         02:00:00:00:02:05     *        eth1
";

    #[test]
    fn arp_keeps_complete_entries_on_the_device() {
        let n = parse_proc_net_arp(ARP, "eth1");
        assert_eq!(
            n,
            vec![
                (Ipv4Addr::new(198, 18, 0, 1), [2, 0, 0, 0, 2, 2]),
                (Ipv4Addr::new(198, 18, 0, 5), [2, 0, 0, 0, 2, 5]),
            ]
        );
        assert_eq!(parse_proc_net_arp(ARP, "").len(), 3);
        assert!(parse_proc_net_arp("", "eth1").is_empty());
    }

    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth1\t00000000\t010012C6\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth1\t000012C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth2\t00000000\t020012C6\t0003\t0\t0\t10\t00000000\t0\t0\t0
";

    #[test]
    fn route_finds_the_default_gateway_of_the_device() {
        assert_eq!(
            parse_proc_net_route(ROUTE, "eth1"),
            Some(Ipv4Addr::new(198, 18, 0, 1))
        );
        assert_eq!(
            parse_proc_net_route(ROUTE, "eth2"),
            Some(Ipv4Addr::new(198, 18, 0, 2))
        );
        assert_eq!(parse_proc_net_route(ROUTE, "eth3"), None);
    }

    #[test]
    fn loopback_lookup() {
        let lo = lookup("lo").expect("lo exists in every namespace");
        assert_eq!(lo.ifindex, 1);
        assert_eq!(lo.mac, [0; 6]);
        assert!(lo.mtu > 0);
        assert!(lookup("definitely-nope").is_err());
        assert!(lookup("bad/name").is_err());
        assert_eq!(name_of(1).as_deref(), Some("lo"));
    }
}
