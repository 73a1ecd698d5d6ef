//! Root lab test of `nodeplane-cni`, driven exactly as a container runtime drives
//! it: CNI_* environment, config on stdin, the real `host-local` IPAM plugin from
//! /usr/lib/cni. The plugin runs inside a "node" namespace this test creates, pods
//! are further namespaces; everything is removed by a Drop guard, even on failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_nodeplane-cni");
const CNI_DIR: &str = "/usr/lib/cni";

/// The namespaces of one run; deleting them removes every interface made here.
struct Lab {
    node: String,
    pods: Vec<String>,
    dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.pods.iter().chain(std::iter::once(&self.node)) {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Lab {
    fn pod_path(&self, i: usize) -> String {
        format!("/var/run/netns/{}", self.pods[i])
    }
    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }
    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("pods")
    }
    fn conf(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "nodeplane-test",
            "type": "nodeplane-cni",
            "uplink": "up0",
            "stateDir": self.state_dir(),
            "ipam": {
                "type": "host-local",
                "dataDir": self.ipam_dir(),
                "ranges": [[{"subnet": "198.19.9.0/24", "rangeStart": "198.19.9.10", "rangeEnd": "198.19.9.50"}]],
            },
        })
    }
    /// Runs the plugin in the node namespace.
    fn cni(&self, command: &str, cid: &str, netns: &str, args: &str, stdin: &[u8]) -> Output {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node, BIN])
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_DIR)
            .env("CNI_ARGS", args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning nodeplane-cni");
        {
            use std::io::Write;
            let mut input = child.stdin.take().unwrap();
            input.write_all(stdin).unwrap();
        }
        child.wait_with_output().unwrap()
    }
    /// `ip -j ARGS` inside namespace `ns`, parsed.
    fn ip_json(&self, ns: &str, args: &[&str]) -> Value {
        let out = sh("ip", &[&["-n", ns, "-j"], args].concat());
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip {args:?}: {e}: {out}"))
    }
}

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok_json(out: &Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what} failed: stdout {} stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: bad JSON {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn err_json(out: &Output, what: &str) -> Value {
    assert!(!out.status.success(), "{what} should fail");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: error is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    for key in ["cniVersion", "code", "msg"] {
        assert!(v.get(key).is_some(), "{what}: error JSON lacks {key}: {v}");
    }
    v
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn tx_checksumming(ns: &str, ifname: &str) -> String {
    let out = sh("ip", &["netns", "exec", ns, "ethtool", "-k", ifname]);
    out.lines()
        .find(|l| l.starts_with("tx-checksumming:"))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Runs `f` on a thread inside the named network namespace.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on an open namespace fd; it changes only this thread's
        // network namespace, and the thread ends with the closure.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// Sends a UDP datagram from namespace `from` to `dst` (an echo server in
/// namespace `to`) and returns the echo's source address, or `None` when it
/// did not come back within 2 s.
fn udp_echo(from: &str, to: &str, dst: &str) -> Option<std::net::SocketAddr> {
    use std::net::UdpSocket;
    use std::time::Duration;
    let server = {
        let s = in_netns(to, || UdpSocket::bind("0.0.0.0:7777")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    };
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        if let Ok((n, peer)) = server.recv_from(&mut buf) {
            let _ = server.send_to(&buf[..n], peer);
        }
    });
    let dst: std::net::SocketAddr = format!("{dst}:7777").parse().unwrap();
    let got = in_netns(from, move || {
        let c = UdpSocket::bind("0.0.0.0:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.send_to(b"nodeplane-cni", dst).ok()?;
        let mut buf = [0u8; 64];
        let (n, peer) = c.recv_from(&mut buf).ok()?;
        (&buf[..n] == b"nodeplane-cni").then_some(peer)
    });
    let _ = echo.join();
    got
}

#[test]
fn cni_plugin_add_check_del_in_namespaces() {
    if !is_root() {
        eprintln!(
            "SKIPPED cni_plugin_add_check_del_in_namespaces: needs root (network namespaces)"
        );
        return;
    }
    assert!(
        Path::new(CNI_DIR).join("host-local").is_file(),
        "{CNI_DIR}/host-local is missing (apt-get install containernetworking-plugins)"
    );
    let started = Instant::now();
    let p = format!("npct{}", std::process::id());
    let lab = Lab {
        node: format!("{p}-node"),
        pods: vec![format!("{p}-p1"), format!("{p}-p2")],
        dir: tempfile::tempdir().unwrap(),
    };
    for ns in lab.pods.iter().chain(std::iter::once(&lab.node)) {
        sh("ip", &["netns", "add", ns]);
    }
    // The node: an "uplink" with MTU 9000 and an address, forwarding on.
    let node = lab.node.as_str();
    sh(
        "ip",
        &[
            "-n", node, "link", "add", "up0", "mtu", "9000", "type", "veth", "peer", "name", "up1",
        ],
    );
    sh(
        "ip",
        &["-n", node, "addr", "add", "198.18.0.2/24", "dev", "up0"],
    );
    sh("ip", &["-n", node, "link", "set", "up0", "up"]);
    sh("ip", &["-n", node, "link", "set", "up1", "up"]);
    sh(
        "ip",
        &[
            "netns",
            "exec",
            node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
    );
    let conf = lab.conf();
    let conf_s = conf.to_string();

    // VERSION
    let v = ok_json(
        &lab.cni("VERSION", "", "", "", br#"{"cniVersion":"1.0.0"}"#),
        "VERSION",
    );
    let versions = v["supportedVersions"].as_array().unwrap();
    assert!(
        versions.contains(&json!("0.4.0")) && versions.contains(&json!("1.0.0")),
        "{v}"
    );

    // ADD pod 1 with a requested IP (no IgnoreUnknown: the plugin adds it for IPAM).
    let args1 = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p1;IP=198.19.9.20";
    let pod1 = lab.pod_path(0);
    let r1 = ok_json(
        &lab.cni("ADD", "ctr1", &pod1, args1, conf_s.as_bytes()),
        "ADD ctr1",
    );
    assert_eq!(r1["cniVersion"], "1.0.0");
    let host1 = r1["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert!(host1.starts_with("np") && host1.len() <= 15, "{r1}");
    assert!(r1["interfaces"][0].get("sandbox").is_none());
    assert_eq!(r1["interfaces"][1]["name"], "eth0");
    assert_eq!(r1["interfaces"][1]["sandbox"], pod1.as_str());
    assert_eq!(r1["ips"][0]["address"], "198.19.9.20/32");
    assert_eq!(r1["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(r1["ips"][0]["interface"], 1);
    assert_eq!(r1["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(r1["routes"][0]["gw"], "169.254.1.1");

    // Host side: exists with the reported MAC, proxy ARP, /32 route, tx csum off.
    let hl = lab.ip_json(node, &["link", "show", "dev", &host1]);
    let host_mac = hl[0]["address"].as_str().unwrap().to_string();
    let host_ifindex = hl[0]["ifindex"].as_u64().unwrap();
    assert_eq!(r1["interfaces"][0]["mac"], host_mac.as_str());
    assert_eq!(hl[0]["mtu"], 8950, "pod MTU = uplink MTU - 50");
    // One queue pair per CPU on both ends (no `queues` in the config).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(64)) as u64;
    let hd = lab.ip_json(node, &["-d", "link", "show", "dev", &host1]);
    assert_eq!(
        (
            hd[0]["num_tx_queues"].as_u64(),
            hd[0]["num_rx_queues"].as_u64()
        ),
        (Some(cpus), Some(cpus)),
        "{hd}"
    );
    let proxy = sh(
        "ip",
        &[
            "netns",
            "exec",
            node,
            "cat",
            &format!("/proc/sys/net/ipv4/conf/{host1}/proxy_arp"),
        ],
    );
    assert_eq!(proxy.trim(), "1");
    let routes = lab.ip_json(node, &["route", "show", "198.19.9.20/32"]);
    assert_eq!(routes[0]["dev"], host1.as_str(), "{routes}");
    assert_eq!(tx_checksumming(node, &host1), "tx-checksumming: off");

    // Pod side: address /32, MTU, default route via the gateway onlink, permanent
    // neighbour = host MAC, tx csum off.
    let pod1_ns = lab.pods[0].clone();
    let addrs = lab.ip_json(&pod1_ns, &["-4", "addr", "show", "dev", "eth0"]);
    assert_eq!(addrs[0]["mtu"], 8950);
    let ai = &addrs[0]["addr_info"][0];
    assert_eq!(
        (ai["local"].as_str(), ai["prefixlen"].as_u64()),
        (Some("198.19.9.20"), Some(32)),
        "{addrs}"
    );
    let pl = lab.ip_json(&pod1_ns, &["link", "show", "dev", "eth0"]);
    let pd = lab.ip_json(&pod1_ns, &["-d", "link", "show", "dev", "eth0"]);
    assert_eq!(
        (
            pd[0]["num_tx_queues"].as_u64(),
            pd[0]["num_rx_queues"].as_u64()
        ),
        (Some(cpus), Some(cpus)),
        "{pd}"
    );
    let pod_mac = pl[0]["address"].as_str().unwrap().to_string();
    assert_eq!(r1["interfaces"][1]["mac"], pod_mac.as_str());
    let def = lab.ip_json(&pod1_ns, &["-4", "route", "show", "default"]);
    assert_eq!(def[0]["gateway"], "169.254.1.1", "{def}");
    assert_eq!(def[0]["dev"], "eth0");
    assert!(
        def[0]["flags"]
            .as_array()
            .unwrap()
            .contains(&json!("onlink")),
        "{def}"
    );
    let neigh = lab.ip_json(&pod1_ns, &["neigh", "show", "169.254.1.1", "dev", "eth0"]);
    assert_eq!(neigh[0]["lladdr"], host_mac.as_str(), "{neigh}");
    assert!(
        neigh[0]["state"]
            .as_array()
            .unwrap()
            .contains(&json!("PERMANENT")),
        "{neigh}"
    );
    assert_eq!(tx_checksumming(&pod1_ns, "eth0"), "tx-checksumming: off");

    // The registration record for the agent.
    let rec_path = lab.state_dir().join("ctr1_eth0.json");
    let rec: Value = serde_json::from_slice(&std::fs::read(&rec_path).unwrap()).unwrap();
    assert_eq!(rec["containerId"], "ctr1");
    assert_eq!(rec["ifname"], "eth0");
    assert_eq!(rec["netns"], pod1.as_str());
    assert_eq!(rec["ip"], "198.19.9.20");
    assert_eq!(rec["mac"], pod_mac.as_str());
    assert_eq!(rec["hostIfname"], host1.as_str());
    assert_eq!(rec["hostIfindex"], host_ifindex);
    assert_eq!(rec["hostMac"], host_mac.as_str());
    assert_eq!(rec["podNamespace"], "default");
    assert_eq!(rec["podName"], "p1");
    let (records, errors) = control::podstate::load_pods(&lab.state_dir());
    assert!(errors.is_empty(), "{errors:?}");
    let route = records[0].to_route().expect("usable record");
    assert_eq!(u64::from(route.host_ifindex), host_ifindex);
    assert_eq!(route.name, "default/p1");

    // The node reaches the pod through the veth (kernel: /32 route + the pod's gateway entry).
    let peer = udp_echo(node, &lab.pods[0], "198.19.9.20");
    assert_eq!(
        peer.map(|p| p.ip().to_string()).as_deref(),
        Some("198.19.9.20"),
        "node <-> pod 1"
    );

    // CHECK with the previous result.
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = r1.clone();
    let out = lab.cni(
        "CHECK",
        "ctr1",
        &pod1,
        args1,
        check_conf.to_string().as_bytes(),
    );
    assert!(
        out.status.success(),
        "CHECK: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // ADD again is idempotent: same result, same interface.
    let again = ok_json(
        &lab.cni("ADD", "ctr1", &pod1, args1, conf_s.as_bytes()),
        "ADD ctr1 again",
    );
    assert_eq!(again, r1);

    // The sandbox's namespace is replaced (its veth died with it): ADD recovers,
    // releasing the stale reservation and record first, and gets the same IP.
    sh("ip", &["netns", "del", &lab.pods[0]]);
    sh("ip", &["netns", "add", &lab.pods[0]]);
    let r1b = ok_json(
        &lab.cni("ADD", "ctr1", &pod1, args1, conf_s.as_bytes()),
        "ADD ctr1 in a new namespace",
    );
    assert_eq!(r1b["ips"][0]["address"], "198.19.9.20/32");
    assert_eq!(r1b["interfaces"][0]["name"], host1.as_str());
    assert_ne!(
        r1b["interfaces"][1]["mac"], r1["interfaces"][1]["mac"],
        "a new veth"
    );
    let rec: Value = serde_json::from_slice(&std::fs::read(&rec_path).unwrap()).unwrap();
    assert_eq!(rec["mac"], r1b["interfaces"][1]["mac"]);

    // A second container, address from the range.
    let pod2 = lab.pod_path(1);
    let args2 = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p2";
    let r2 = ok_json(
        &lab.cni("ADD", "ctr2", &pod2, args2, conf_s.as_bytes()),
        "ADD ctr2",
    );
    let host2 = r2["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert_ne!(host1, host2);
    let ip2 = r2["ips"][0]["address"]
        .as_str()
        .unwrap()
        .trim_end_matches("/32")
        .to_string();
    assert_ne!(ip2, "198.19.9.20");
    assert!(ip2.starts_with("198.19.9."), "{r2}");
    // Pod to pod through the node's kernel (gateway neighbour, proxy ARP side, host routes).
    let peer = udp_echo(&lab.pods[0], &lab.pods[1], &ip2);
    assert_eq!(
        peer.map(|p| p.ip().to_string()),
        Some(ip2.clone()),
        "pod 1 <-> pod 2"
    );

    // DEL twice: both succeed; veth, record and IP reservation are gone.
    let ipam_file = lab.ipam_dir().join("nodeplane-test").join("198.19.9.20");
    assert!(
        ipam_file.exists(),
        "host-local reservation missing: {}",
        ipam_file.display()
    );
    for round in 0..2 {
        let out = lab.cni("DEL", "ctr1", &pod1, args1, conf_s.as_bytes());
        assert!(
            out.status.success(),
            "DEL round {round}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let links = lab.ip_json(node, &["link", "show"]);
    assert!(
        !links
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["ifname"] == host1.as_str()),
        "host veth still there"
    );
    let pod_links = lab.ip_json(&pod1_ns, &["link", "show"]);
    assert!(
        !pod_links
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["ifname"] == "eth0"),
        "pod eth0 still there"
    );
    assert!(!rec_path.exists(), "record not removed");
    assert!(!ipam_file.exists(), "IP reservation not released");

    // CHECK after DEL fails with a CNI error.
    let out = lab.cni(
        "CHECK",
        "ctr1",
        &pod1,
        args1,
        check_conf.to_string().as_bytes(),
    );
    let e = err_json(&out, "CHECK after DEL");
    assert_eq!(e["code"], 101, "{e}");

    // DEL of the second pod after its namespace is gone (netns empty) still cleans up.
    sh("ip", &["netns", "del", &lab.pods[1]]);
    let out = lab.cni("DEL", "ctr2", "", args2, conf_s.as_bytes());
    assert!(
        out.status.success(),
        "DEL without netns: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!lab.state_dir().join("ctr2_eth0.json").exists());
    let links = lab.ip_json(node, &["link", "show"]);
    assert!(!links
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["ifname"] == host2.as_str()));

    // Malformed stdin → CNI error JSON (decode failure, code 6) and a non-zero exit.
    let e = err_json(
        &lab.cni("ADD", "ctr3", &pod1, "", b"{\"cniVersion\": 1.0.0 nope"),
        "malformed ADD",
    );
    assert_eq!(e["code"], 6, "{e}");
    // Bad environment → code 4.
    let e = err_json(
        &lab.cni("ADD", "bad/id", &pod1, "", conf_s.as_bytes()),
        "bad container id",
    );
    assert_eq!(e["code"], 4, "{e}");
    // A failing IPAM (requested IP outside the range) is reported and leaves nothing behind.
    let e = err_json(
        &lab.cni("ADD", "ctr4", &pod1, "IP=198.19.10.1", conf_s.as_bytes()),
        "ADD with an IP outside the range",
    );
    assert!(!e["msg"].as_str().unwrap().is_empty());
    let links = lab.ip_json(node, &["link", "show"]);
    let host4 = links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["ifname"].as_str().is_some_and(|n| n.starts_with("np")))
        .count();
    assert_eq!(host4, 0, "a failed ADD left a veth: {links}");

    assert!(
        started.elapsed().as_secs() < 20,
        "took {:?}",
        started.elapsed()
    );
}
