//! The root lab for integration tests: brings `scripts/testbed` up under a
//! per-test prefix, starts nodeplane agents inside the node namespaces, talks to
//! the pods' servers with real sockets from inside namespaces, and tears it all
//! down on drop (agents by pid, then `scripts/testbed down`). Every wait is bounded.
#![allow(dead_code)]

pub mod netns;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use netns::in_netns;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Unescapes bash `printf %q` output (backslash escapes only).
fn unquote(s: &str) -> String {
    let s = s.trim();
    let s = s
        .strip_prefix("$'")
        .and_then(|x| x.strip_suffix('\''))
        .unwrap_or(s);
    let s = s
        .strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
        .unwrap_or(s);
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        if esc {
            out.push(c);
            esc = false;
        } else if c == '\\' {
            esc = true;
        } else {
            out.push(c);
        }
    }
    out
}

pub struct Lab {
    pub prefix: String,
    pub env: BTreeMap<String, String>,
    agents: BTreeMap<String, (Child, PathBuf)>,
}

impl Lab {
    /// Brings a lab up; `None` (with a printed reason) when not root.
    pub fn up(tag: &str) -> Option<Lab> {
        Self::up_with(tag, &[])
    }

    /// `up` with extra environment for `scripts/testbed up` (e.g. NP_LAB_QUEUES).
    pub fn up_with(tag: &str, env: &[(&str, &str)]) -> Option<Lab> {
        Self::up_args(tag, &[], env)
    }

    /// A lab whose nodes are all kernel nodes (`--nodes-kernel-only`): the
    /// kernel reference path, for tests that run the same case against both.
    pub fn up_kernel(tag: &str) -> Option<Lab> {
        Self::up_args(tag, &["--nodes-kernel-only"], &[])
    }

    /// `scripts/testbed up` with extra arguments and environment.
    pub fn up_args(tag: &str, args: &[&str], env: &[(&str, &str)]) -> Option<Lab> {
        if !is_root() {
            eprintln!("skipping: lab tests need root (CI runs them as root)");
            return None;
        }
        let prefix = format!("t{}{}", tag, std::process::id() % 10000);
        let lab = Lab {
            prefix: prefix.clone(),
            env: BTreeMap::new(),
            agents: BTreeMap::new(),
        };
        let out = Command::new(repo().join("scripts/testbed"))
            .args(["up", "--prefix", &prefix])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("run scripts/testbed");
        assert!(
            out.status.success(),
            "testbed up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut lab = lab;
        let out = Command::new(repo().join("scripts/testbed"))
            .args(["env", "--prefix", &prefix])
            .output()
            .expect("testbed env");
        assert!(out.status.success(), "testbed env failed");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((k, v)) = line.split_once('=') {
                lab.env.insert(k.to_string(), unquote(v));
            }
        }
        Some(lab)
    }

    pub fn var(&self, k: &str) -> String {
        self.env
            .get(k)
            .cloned()
            .unwrap_or_else(|| panic!("testbed env has no {k}"))
    }

    pub fn ns(&self, who: &str) -> String {
        self.var(&format!("NP_NS_{}", who.to_uppercase()))
    }

    pub fn ip(&self, who: &str) -> std::net::Ipv4Addr {
        self.var(&format!("NP_IP_{}", who.to_uppercase()))
            .parse()
            .expect("IP")
    }

    pub fn bin(name: &str) -> PathBuf {
        match std::env::var("NODEPLANE_BIN_DIR") {
            Ok(d) => PathBuf::from(d).join(name),
            // The control crate's tests know where cargo put the binaries;
            // other crates' tests (perf) that include this module use the
            // workspace's debug directory.
            Err(_) => option_env!("CARGO_BIN_EXE_nodeplane")
                .map(|p| PathBuf::from(p).with_file_name(name))
                .unwrap_or_else(|| repo().join("target/debug").join(name)),
        }
    }

    /// Starts the agent on node "a" or "b" and waits (≤ 20 s) for /readyz.
    pub fn start_agent(&mut self, node: &str, extra: &[&str]) {
        let mut args: Vec<String> = self
            .var(&format!("NP_AGENT_ARGS_{}", node.to_uppercase()))
            .split_whitespace()
            .map(str::to_string)
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        self.start_agent_args(node, &args);
    }

    /// `start_agent` reading its manifests from `dir` instead of configs/demo.
    pub fn start_agent_with_manifests(&mut self, node: &str, dir: &std::path::Path) {
        let args = self.agent_args_from(node, "--manifests", &dir.display().to_string());
        self.start_agent_args(node, &args);
    }

    /// The agent's arguments on `node` with its source, `--manifests DIR`,
    /// replaced by `flag value` (another directory, or `--kubeconfig FILE`).
    pub fn agent_args_from(&self, node: &str, flag: &str, value: &str) -> Vec<String> {
        let mut args: Vec<String> = self
            .var(&format!("NP_AGENT_ARGS_{}", node.to_uppercase()))
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let i = args
            .iter()
            .position(|a| a == "--manifests")
            .expect("--manifests in the agent args");
        args[i] = flag.to_string();
        args[i + 1] = value.to_string();
        args
    }

    /// Starts `nodeplane ARGS` in the node's namespace; waits (≤ 20 s) for /readyz.
    pub fn start_agent_args(&mut self, node: &str, args: &[String]) {
        self.spawn_agent_args(node, args);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some((code, _)) = self.http(node, "/readyz") {
                if code == 200 {
                    return;
                }
            }
            if let Some((c, _)) = self.agents.get_mut(node) {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "agent on {node} exited ({st}) before ready:\n{}",
                        self.agent_log(node)
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "agent on {node} not ready in 20 s:\n{}",
                self.agent_log(node)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts `nodeplane ARGS` in the node's namespace without waiting.
    pub fn spawn_agent_args(&mut self, node: &str, args: &[String]) {
        let log = PathBuf::from(self.var("NP_LAB_DIR")).join(format!("agent-{node}.log"));
        let logf = std::fs::File::create(&log).expect("agent log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(node)])
            .arg(Self::bin("nodeplane"))
            .args(args)
            .env("NODEPLANE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log"))
            .stderr(logf);
        let child = cmd.spawn().expect("start nodeplane");
        self.agents.insert(node.to_string(), (child, log));
    }

    pub fn agent_log(&self, node: &str) -> String {
        self.agents
            .get(node)
            .and_then(|(_, p)| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// SIGTERM to the agent; waits ≤ 10 s; returns whether it exited cleanly.
    pub fn stop_agent(&mut self, node: &str) -> bool {
        let Some((mut child, _)) = self.agents.remove(node) else {
            return false;
        };
        let pid = child.id() as libc::pid_t;
        // `ip netns exec` execs the agent, so the pid is the agent's.
        // SAFETY: signalling a child process we started, by pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// SIGKILL to the agent (a crash: it cleans nothing up), and waits for it.
    pub fn kill_agent(&mut self, node: &str) {
        if let Some((mut child, _)) = self.agents.remove(node) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// GET `path` from the agent's status endpoint inside its namespace.
    pub fn http(&self, node: &str, path: &str) -> Option<(u16, String)> {
        let path = path.to_string();
        in_netns(&self.ns(node), move || {
            let addr: SocketAddr = "127.0.0.1:10256".parse().expect("addr");
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
            let mut body = String::new();
            s.read_to_string(&mut body).ok()?;
            let code = body.split_whitespace().nth(1)?.parse().ok()?;
            let text = body
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default();
            Some((code, text))
        })
        .ok()
        .flatten()
    }

    /// Is the agent on `node` still running?
    pub fn agent_alive(&mut self, node: &str) -> bool {
        self.agents
            .get_mut(node)
            .is_some_and(|(c, _)| matches!(c.try_wait(), Ok(None)))
    }

    /// Drops by reason, summed over the agent's workers.
    pub fn drops(&self, node: &str) -> BTreeMap<String, u64> {
        let st = self.status(node);
        let mut out = BTreeMap::new();
        for w in st["workers"].as_array().into_iter().flatten() {
            for (k, v) in w["drops"].as_object().into_iter().flatten() {
                *out.entry(k.clone()).or_insert(0) += v.as_u64().unwrap_or(0);
            }
        }
        out
    }

    /// A per-worker counter of `node`'s status, summed over its workers.
    pub fn counter(&self, node: &str, name: &str) -> u64 {
        let st = self.status(node);
        st["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| w[name].as_u64().unwrap_or(0))
            .sum()
    }

    /// Total drops on `node`.
    pub fn drops_total(&self, node: &str) -> u64 {
        self.drops(node).values().sum()
    }

    pub fn status(&self, node: &str) -> serde_json::Value {
        let (code, body) = self.http(node, "/status").expect("status endpoint answers");
        assert_eq!(code, 200);
        serde_json::from_str(&body).expect("status JSON")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let nodes: Vec<String> = self.agents.keys().cloned().collect();
        for n in nodes {
            self.stop_agent(&n);
        }
        let _ = Command::new(repo().join("scripts/testbed"))
            .args(["down", "--prefix", &self.prefix])
            .output();
    }
}

/// One line over TCP from inside `ns` to `dst:port`: the pod server's answer
/// "<pod> <client-ip>:<client-port> <line>" (bounded by 3 s).
pub fn tcp_line(ns: &str, dst: SocketAddr, line: &str) -> Result<String, String> {
    let line = line.to_string();
    in_netns(ns, move || -> Result<String, String> {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(3))
            .map_err(|e| format!("connect {dst}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        writeln!(s, "{line}").map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        let mut answer = String::new();
        r.read_line(&mut answer)
            .map_err(|e| format!("read from {dst}: {e}"))?;
        Ok(answer.trim().to_string())
    })
    .map_err(|e| e.to_string())?
}

/// One UDP datagram from inside `ns`; the answer (bounded by 2 s).
pub fn udp_roundtrip(ns: &str, dst: SocketAddr, msg: &str) -> Result<String, String> {
    let msg = msg.to_string();
    in_netns(ns, move || -> Result<String, String> {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.send_to(msg.as_bytes(), dst).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2048];
        let (n, _) = s
            .recv_from(&mut buf)
            .map_err(|e| format!("no UDP answer from {dst}: {e}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    })
    .map_err(|e| e.to_string())?
}

/// Retries `f` for up to `secs` seconds until it succeeds.
pub fn eventually<T>(secs: u64, mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// What a background traffic loop saw.
#[derive(Debug, Default)]
pub struct TrafficStats {
    pub ok: u64,
    pub failures: Vec<String>,
    /// Pods that answered, with counts.
    pub answered_by: BTreeMap<String, u64>,
}

/// Request/response traffic from one namespace in a loop (a UDP datagram and a
/// fresh TCP connection per round, to each target) until stopped; bounded by
/// `max_secs` even if nobody stops it.
pub struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<TrafficStats>>,
}

impl Traffic {
    pub fn start(ns: &str, udp: Vec<SocketAddr>, tcp: Vec<SocketAddr>, max_secs: u64) -> Traffic {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let ns = ns.to_string();
        let handle = std::thread::spawn(move || {
            let mut st = TrafficStats::default();
            let deadline = Instant::now() + Duration::from_secs(max_secs);
            let mut round = 0u64;
            let t0 = Instant::now();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                round += 1;
                for d in &udp {
                    let r = udp_roundtrip(&ns, *d, &format!("u{round}"));
                    st.record(format!("{:.2}s UDP {d}", t0.elapsed().as_secs_f64()), r);
                }
                for d in &tcp {
                    let r = tcp_line(&ns, *d, &format!("t{round}"));
                    st.record(format!("{:.2}s TCP {d}", t0.elapsed().as_secs_f64()), r);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            st
        });
        Traffic {
            stop,
            handle: Some(handle),
        }
    }

    pub fn stop(mut self) -> TrafficStats {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle
            .take()
            .expect("running")
            .join()
            .expect("traffic thread")
    }
}

impl TrafficStats {
    fn record(&mut self, what: String, r: Result<String, String>) {
        match r {
            Ok(answer) => {
                self.ok += 1;
                let pod = answer.split_whitespace().next().unwrap_or_default();
                *self.answered_by.entry(pod.to_string()).or_insert(0) += 1;
            }
            Err(e) => self.failures.push(format!("{what}: {e}")),
        }
    }
}
