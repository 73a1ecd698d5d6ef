//! Lab helpers for the AF_XDP tests: network namespaces with a per-run prefix
//! that are deleted on drop, `ip` commands run inside them, and running code in
//! a namespace (a dedicated thread that enters it with setns). Addresses are in
//! 198.18.0.0/15 only; nothing touches the root namespace's interfaces.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// True if we may build namespaces; prints why not otherwise.
pub fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping {test}: needs root (network namespaces, XDP, AF_XDP)");
        return false;
    }
    true
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A set of namespaces named `<prefix>-<name>`, deleted on drop.
pub struct Lab {
    pub prefix: String,
    namespaces: Vec<String>,
}

impl Lab {
    /// A fresh prefix: "np" + pid + a per-process sequence letter.
    pub fn new() -> Lab {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let prefix = format!(
            "np{}{}",
            std::process::id() % 100_000,
            (b'a' + (n % 26) as u8) as char
        );
        Lab {
            prefix,
            namespaces: Vec::new(),
        }
    }

    /// An interface name with the lab prefix (≤ 15 chars).
    pub fn ifname(&self, suffix: &str) -> String {
        let s = format!("{}{}", self.prefix, suffix);
        assert!(s.len() <= 15, "interface name too long: {s}");
        s
    }

    /// Creates namespace `<prefix>-<name>` with lo up; returns its full name.
    pub fn netns(&mut self, name: &str) -> String {
        let ns = format!("{}-{}", self.prefix, name);
        sh(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// A veth pair `a` (in `ns_a`) — `b` (in `ns_b`), both up, with checksum
    /// offload off (frames cross AF_XDP) and `queues` queues each.
    pub fn veth(&self, ns_a: &str, a: &str, ns_b: &str, b: &str, queues: u32) {
        let q = queues.to_string();
        sh(&[
            "ip",
            "-n",
            ns_a,
            "link",
            "add",
            a,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            b,
            "netns",
            ns_b,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ]);
        for (ns, i) in [(ns_a, a), (ns_b, b)] {
            sh(&["ip", "-n", ns, "link", "set", i, "up"]);
            sh(&["ip", "netns", "exec", ns, "ethtool", "-K", i, "tx", "off"]);
        }
    }

    /// A pod: `ip/32` on `pod_if` in `ns`, default route via 169.254.1.1 whose
    /// MAC is pinned to the host side (`host_mac`), as Calico-style CNIs do.
    pub fn pod(&self, ns: &str, pod_if: &str, ip: &str, host_mac: &str) {
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/32"),
            "dev",
            pod_if,
        ]);
        sh(&[
            "ip",
            "-n",
            ns,
            "route",
            "add",
            "169.254.1.1",
            "dev",
            pod_if,
            "scope",
            "link",
        ]);
        sh(&[
            "ip",
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            pod_if,
        ]);
        sh(&[
            "ip",
            "-n",
            ns,
            "neigh",
            "add",
            "169.254.1.1",
            "lladdr",
            host_mac,
            "dev",
            pod_if,
            "nud",
            "permanent",
        ]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs a command; panics with its stderr if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The MAC of `ifname` in `ns`, as text.
pub fn mac_of(ns: &str, ifname: &str) -> String {
    let out = sh(&["ip", "-n", ns, "-o", "link", "show", ifname]);
    let i = out.find("link/ether ").expect("an Ethernet interface") + "link/ether ".len();
    out[i..i + 17].to_string()
}

/// Enters `ns` in the calling thread only.
pub fn enter(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).expect("namespace exists");
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a fresh thread inside `ns` (sockets created there stay in `ns`).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            f()
        })
        .join()
        .expect("namespace thread panicked")
    })
}
