//! `nodeplane-perf bench`: the end-to-end suite of issue 5 on the namespace lab.
//! For each path (nodeplane; the kernel with kube-proxy's rules in nftables and
//! in iptables mode, flannel-style VXLAN, RPS to the other core; or, as
//! `kube-proxy-nftables` and `kube-proxy-iptables`, the real kube-proxy and the
//! real flanneld on every node against a real control plane from
//! scripts/cluster) and scenario
//! (S1 overlay in, S2 service out, S3 NodePort in, S4 service local) it finds
//! the zero-loss throughput (binary search on the offered rate, loss ≤ 0.1%,
//! bounded trials), the delivered rate at full offered load, latency at half the
//! zero-loss rate and CPU time per packet, with the same generator in the same
//! run; then sockperf ping-pong through S1 and S4, and the zero-loss rate of S4
//! at 10, 1,000 and 10,000 Services. Writes JSON, a Markdown report and SVG
//! plots, and prints a summary with the nodeplane/kernel ratios. Its labs live
//! in namespaces it creates and removes; it never touches the root namespace.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// Services in configs/demo (3) and configs/bench (4).
const BASE_SERVICES: usize = 7;

/// Loss allowed at the "zero-loss" rate.
pub const ZERO_LOSS: f64 = 0.001;

#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Where results go (JSON, report.md, *.svg).
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Paths to measure: nodeplane; nftables and iptables (kube-proxy's rules
    /// as the lab writes them, the lab's static VXLAN); kube-proxy-nftables and
    /// kube-proxy-iptables (the real kube-proxy and flanneld, built by
    /// `scripts/cluster build`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "nodeplane,nftables,iptables,kube-proxy-nftables,kube-proxy-iptables"
    )]
    pub paths: Vec<String>,
    /// Scenarios to measure.
    #[arg(long, value_delimiter = ',', default_value = "S1,S2,S3,S4")]
    pub scenarios: Vec<String>,
    /// Service counts for the scaling measurement (S4).
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
    pub services: Vec<usize>,
    /// Seconds per throughput trial.
    #[arg(long, default_value_t = 1.0)]
    pub trial_secs: f64,
    /// Binary-search steps per zero-loss search.
    #[arg(long, default_value_t = 6)]
    pub steps: u32,
    /// Skip sockperf.
    #[arg(long)]
    pub no_sockperf: bool,
    /// Frame size of the generated (inner) packets.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Trial {
    pub offered_pps: f64,
    pub delivered_pps: f64,
    pub sent: u64,
    pub received: u64,
    pub loss: f64,
    pub latency_us_p50: f64,
    pub latency_us_p99: f64,
    pub latency_us_p999: f64,
    /// Machine CPU (all cores, generator and sink included) per delivered packet.
    pub cpu_ns_per_packet: f64,
    /// Each core's time during the trial, by kind: where the work went (core 0
    /// runs the generator and the sink, core 1 the node under test).
    pub cores: Vec<CoreUse>,
    pub cdf: Vec<(f64, f64)>,
}

/// Fractions of one core's time over a trial.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct CoreUse {
    pub core: usize,
    pub user: f64,
    pub system: f64,
    pub softirq: f64,
    pub idle: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ScenarioResult {
    pub path: String,
    pub scenario: String,
    pub zero_loss_pps: f64,
    /// The zero-loss rate is the generator's own maximum: the path was not the limit.
    pub generator_limited: bool,
    pub full_load: Trial,
    pub at_half_rate: Trial,
    pub trials: Vec<Trial>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PingPong {
    pub path: String,
    pub scenario: String,
    pub avg_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Scaling {
    pub path: String,
    pub services: usize,
    pub zero_loss_pps: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct BenchResult {
    pub generator_ceiling_pps: f64,
    pub scenarios: Vec<ScenarioResult>,
    pub pingpong: Vec<PingPong>,
    pub scaling: Vec<Scaling>,
    pub started: String,
    pub elapsed_s: f64,
    pub command: String,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bin_dir() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf())
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    let s = s
        .strip_prefix("$'")
        .and_then(|x| x.strip_suffix('\''))
        .or_else(|| s.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
        .unwrap_or(s);
    s.replace('\\', "")
}

/// A lab brought up by scripts/testbed, removed on drop (agents by pid first).
struct Lab {
    prefix: String,
    env: BTreeMap<String, String>,
    agents: Vec<Child>,
    kernel_mode: Option<String>,
    /// The control plane of a real kernel path (`scripts/cluster up`).
    cluster: Option<String>,
}

/// The paths that run the real kube-proxy (in the mode after the prefix) and
/// flanneld.
const REAL: &str = "kube-proxy-";

/// `scripts/cluster ARGS`.
fn cluster(args: &[&str]) -> anyhow::Result<String> {
    run_ok(Command::new(repo().join("scripts/cluster")).args(args))
}

impl Lab {
    fn up(prefix: &str, kernel_only: bool) -> anyhow::Result<Lab> {
        let mut cmd = Command::new(repo().join("scripts/testbed"));
        cmd.args(["up", "--prefix", prefix]);
        if kernel_only {
            cmd.arg("--nodes-kernel-only");
        }
        run_ok(&mut cmd)?;
        let mut lab = Lab {
            prefix: prefix.to_string(),
            env: BTreeMap::new(),
            agents: Vec::new(),
            kernel_mode: None,
            cluster: None,
        };
        let out =
            run_ok(Command::new(repo().join("scripts/testbed")).args(["env", "--prefix", prefix]))?;
        for line in out.lines() {
            if let Some((k, v)) = line.split_once('=') {
                lab.env.insert(k.to_string(), unquote(v));
            }
        }
        Ok(lab)
    }

    fn var(&self, k: &str) -> anyhow::Result<String> {
        self.env
            .get(k)
            .cloned()
            .with_context(|| format!("testbed env has no {k}"))
    }

    fn ns(&self, who: &str) -> anyhow::Result<String> {
        self.var(&format!("NP_NS_{}", who.to_uppercase()))
    }

    fn ip(&self, who: &str) -> anyhow::Result<String> {
        self.var(&format!("NP_IP_{}", who.to_uppercase()))
    }

    /// nodeplane on node "a" or "b" with `manifests`; waits for /readyz.
    fn start_agent(&mut self, node: &str, manifests: &Path) -> anyhow::Result<()> {
        let mut args: Vec<String> = self
            .var(&format!("NP_AGENT_ARGS_{}", node.to_uppercase()))?
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if let Some(i) = args.iter().position(|a| a == "--manifests") {
            args[i + 1] = manifests.display().to_string();
        }
        // node-a, the node under test, has core 1 to itself and busy-polls it
        // as it would in production; node-b shares core 0 with the generator
        // and the sink, so it keeps `--idle-sleep-us` and gives the core back
        // when idle.
        if node == "a" {
            if let Some(i) = args.iter().position(|a| a == "--idle-sleep-us") {
                args.drain(i..(i + 2).min(args.len()));
            }
        }
        let log = PathBuf::from(self.var("NP_LAB_DIR")?).join(format!("agent-{node}.log"));
        let f = std::fs::File::create(&log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(node)?])
            .arg(bin_dir()?.join("nodeplane"))
            .args(&args)
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .context("starting nodeplane")?;
        self.agents.push(child);
        let ns = self.ns(node)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new("ip")
                .args(["netns", "exec", &ns])
                .arg(bin_dir()?.join("nodeplane"))
                .args(["status", "-o", "json"])
                .output()
                .ok()
                .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                .is_some_and(|v| v["ready"] == true);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "nodeplane on {node} not ready in 30 s: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits (≤ 60 s) until both agents run tables with `n` Services.
    fn wait_services(&self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        for node in ["a", "b"] {
            let ns = self.ns(node)?;
            loop {
                let v = Command::new("ip")
                    .args(["netns", "exec", &ns])
                    .arg(bin_dir()?.join("nodeplane"))
                    .args(["status", "-o", "json"])
                    .output()
                    .ok()
                    .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok());
                let done = v.as_ref().is_some_and(|v| {
                    v["tables"]["services"].as_u64() == Some(n as u64) && v["ready"] == true
                });
                if done {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "node {node} did not reach {n} services: {:?}",
                        v.map(|v| v["tables"].clone())
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }

    /// kube-proxy's rules (from `manifests`) on every node; node-a's receive
    /// work steered to core 1, the other nodes' to core 0 (`place_work`).
    fn kernel_path(&mut self, mode: &str, manifests: &Path) -> anyhow::Result<()> {
        for (node, name) in [("a", "node-a"), ("b", "node-b"), ("k", "node-k")] {
            let ns = self.ns(node)?;
            let spec = crate::kernel_path::spec_for(manifests, name)?;
            crate::kernel_path::apply(&ns, mode, &spec)?;
        }
        self.kernel_mode = Some(mode.to_string());
        self.place_work(true)
    }

    /// The real kube-proxy (`mode`) and flanneld on every node, on a control
    /// plane holding `manifests`' objects (started the first time, with every
    /// node a fresh flannel node, as `scripts/cluster flanneld` makes it; later
    /// calls apply the generated Services); waits (bounded) until flanneld has
    /// routed every node and node-a's kube-proxy has programmed every Service.
    fn real_kernel_path(&mut self, mode: &str, manifests: &Path) -> anyhow::Result<()> {
        let nodes = [("a", "node-a"), ("b", "node-b"), ("k", "node-k")];
        let mut files: Vec<PathBuf> = std::fs::read_dir(manifests)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        let name = match &self.cluster {
            Some(name) => {
                let scale = manifests.join("scale.yaml");
                cluster(&["apply", name, &scale.display().to_string()])?;
                name.clone()
            }
            None => {
                let name = format!("np-bc{}", std::process::id() % 10_000);
                cluster(&["up", &name])?;
                self.cluster = Some(name.clone());
                let mut args = vec!["apply".to_string(), name.clone()];
                args.extend(files.iter().map(|f| f.display().to_string()));
                cluster(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
                let lab_dir = PathBuf::from(self.var("NP_LAB_DIR")?);
                let state = self.cluster_state()?;
                for (n, node) in nodes {
                    let ns = self.ns(n)?;
                    let pods = lab_dir.join(node).join("pods").display().to_string();
                    cluster(&["pod-status", &name, &ns, node, &pods])?;
                    // On a fresh node: flanneld's start removes the lab's
                    // static flannel.1 and the node's flannel annotations.
                    cluster(&["flanneld", &name, &ns, node])?;
                    cluster(&["kube-proxy", &name, &ns, node, mode])?;
                }
                // flanneld's routes to the two other nodes, on every node.
                let deadline = Instant::now() + Duration::from_secs(60);
                for (n, node) in nodes {
                    let ns = self.ns(n)?;
                    loop {
                        let routes = run_ok(Command::new("ip").args([
                            "-n",
                            &ns,
                            "route",
                            "show",
                            "dev",
                            "flannel.1",
                        ]))
                        .unwrap_or_default();
                        if routes.lines().filter(|l| l.contains(" via ")).count() == 2 {
                            break;
                        }
                        if Instant::now() > deadline {
                            bail!(
                                "flanneld on {node} did not route the other nodes in 60 s ({routes}): {}",
                                std::fs::read_to_string(state.join(format!("flanneld-{ns}.log")))
                                    .unwrap_or_default()
                            );
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                name
            }
        };
        // Every Service in node-a's rules: the last ClusterIP of the files.
        let last_ip = files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| {
                        let rest = &l[l.find("clusterIP: ")? + "clusterIP: ".len()..];
                        rest.split([',', '}', ' ']).next().map(str::to_string)
                    })
                    .collect::<Vec<_>>()
            })
            .last()
            .context("no clusterIP in the manifests")?;
        let ns = self.ns("a")?;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let rules = match mode {
                "nftables" => run_ok(
                    Command::new("ip").args(["netns", "exec", &ns, "nft", "list", "ruleset"]),
                ),
                // All tables: a Service without endpoints is a reject rule in
                // the filter table.
                _ => run_ok(Command::new("ip").args(["netns", "exec", &ns, "iptables-save"])),
            }
            .unwrap_or_default();
            if rules.contains(&last_ip) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "node-a's kube-proxy ({name}) did not program {last_ip} in 600 s: {}",
                    std::fs::read_to_string(
                        self.cluster_state()?.join(format!("kube-proxy-{ns}.log"))
                    )
                    .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        self.place_work(true)
    }

    fn cluster_state(&self) -> anyhow::Result<PathBuf> {
        let name = self.cluster.as_deref().context("no control plane")?;
        let env = cluster(&["env", name])?;
        let kc = env
            .split_whitespace()
            .find_map(|w| w.strip_prefix("KUBECONFIG="))
            .context("KUBECONFIG in scripts/cluster env")?;
        Ok(PathBuf::from(kc)
            .parent()
            .context("state dir")?
            .to_path_buf())
    }

    /// Node `n`'s VTEP MAC: flannel.1's (flanneld made it on a real path),
    /// else the lab's.
    fn vtep(&self, n: &str) -> anyhow::Result<String> {
        if self.cluster.is_none() {
            return self.var(&format!("NP_VTEP_{}", n.to_uppercase()));
        }
        let out = run_ok(Command::new("ip").args([
            "-j",
            "-n",
            &self.ns(n)?,
            "link",
            "show",
            "flannel.1",
        ]))?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v[0]["address"]
            .as_str()
            .map(str::to_string)
            .context("flannel.1 has no address")
    }

    /// Where the receive work goes, the same for both paths: core 1 is node-a's
    /// (the node under test: its worker, or the kernel's receive work for its
    /// interfaces, steered there with RPS); core 0 is the rest of the world
    /// (the generator, the sink, and the other nodes, whose receive work RPS
    /// steers there). Work a sender triggers downstream on a veth (a pod's
    /// stack after node-a forwards to it) runs on the sender's core on both
    /// paths alike.
    fn place_work(&self, kernel_node_a: bool) -> anyhow::Result<()> {
        if kernel_node_a {
            crate::kernel_path::set_rps(&self.ns("a")?, "2")?;
        }
        for node in ["b", "k"] {
            crate::kernel_path::set_rps(&self.ns(node)?, "1")?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.agents {
            // SAFETY: signalling a child we started, by pid.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        }
        for c in &mut self.agents {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(name) = &self.cluster {
            let _ = cluster(&["down", name]);
        }
        if self.kernel_mode.is_some() {
            for node in ["a", "b", "k"] {
                if let Ok(ns) = self.ns(node) {
                    crate::kernel_path::remove(&ns);
                }
            }
        }
        let _ = Command::new(repo().join("scripts/testbed"))
            .args(["down", "--prefix", &self.prefix])
            .output();
    }
}

/// How a scenario's traffic is sent and received in a lab.
struct Scenario {
    name: &'static str,
    gen_ns: String,
    gen_args: Vec<String>,
    sink_ns: String,
    sink_port: u16,
}

fn neigh_mac(ns: &str, ip: &str) -> anyhow::Result<String> {
    let out = run_ok(Command::new("ip").args(["-n", ns, "neigh", "show", ip]))?;
    out.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("no neighbour {ip} in {ns}"))
}

fn scenario(lab: &Lab, name: &'static str, size: usize) -> anyhow::Result<Scenario> {
    let a2_gw = || neigh_mac(&lab.ns("a2")?, "169.254.1.1");
    let s = |v: &str| v.to_string();
    let (gen_ns, mut gen_args, sink_ns) = match name {
        // VXLAN from a remote node (node-b's addresses, sent from the external
        // namespace so no agent's socket holds the sending queue) to pod a1.
        "S1" => (
            lab.ns("x")?,
            vec![
                s("--kind"),
                s("vxlan"),
                s("--dst-mac"),
                lab.var("NP_MAC_A")?,
                s("--outer-src"),
                lab.ip("b")?,
                s("--outer-dst"),
                lab.ip("a")?,
                s("--inner-src-mac"),
                lab.vtep("b")?,
                s("--inner-dst-mac"),
                lab.vtep("a")?,
                s("--src"),
                s("198.19.3.200"),
                s("--dst"),
                lab.ip("a1")?,
            ],
            lab.ns("a1")?,
        ),
        // Pod a2 → ClusterIP whose backend is k1 on the kernel node (the same
        // remote node for both paths).
        "S2" => (
            lab.ns("a2")?,
            vec![
                s("--dst-mac"),
                a2_gw()?,
                s("--src"),
                lab.ip("a2")?,
                s("--dst"),
                s("198.18.96.20"),
            ],
            lab.ns("k1")?,
        ),
        // External client → NodePort 30090 on node-a → a1.
        "S3" => (
            lab.ns("x")?,
            vec![
                s("--dst-mac"),
                lab.var("NP_MAC_A")?,
                s("--src"),
                lab.ip("x")?,
                s("--dst"),
                lab.ip("a")?,
                s("--dport"),
                s("30090"),
            ],
            lab.ns("a1")?,
        ),
        // Pod a2 → ClusterIP whose backend is a1 on the same node.
        "S4" => (
            lab.ns("a2")?,
            vec![
                s("--dst-mac"),
                a2_gw()?,
                s("--src"),
                lab.ip("a2")?,
                s("--dst"),
                s("198.18.96.21"),
            ],
            lab.ns("a1")?,
        ),
        other => bail!("unknown scenario {other}"),
    };
    if !gen_args.iter().any(|a| a == "--dport") {
        gen_args.extend([s("--dport"), s("9000")]);
    }
    gen_args.extend([
        s("--iface"),
        s("eth0"),
        s("--size"),
        size.to_string(),
        s("--flows"),
        s("64"),
    ]);
    Ok(Scenario {
        name,
        gen_ns,
        gen_args,
        sink_ns,
        sink_port: 9000,
    })
}

/// Per core: (user+nice, system, idle+iowait, softirq, total) jiffies.
fn core_jiffies() -> Vec<[u64; 5]> {
    let t = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    t.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            [
                at(0) + at(1),
                at(2),
                at(3) + at(4),
                at(6),
                v.iter().take(8).sum(),
            ]
        })
        .collect()
}

/// What each core did between two `core_jiffies` readings.
fn core_use(before: &[[u64; 5]], after: &[[u64; 5]]) -> Vec<CoreUse> {
    before
        .iter()
        .zip(after)
        .enumerate()
        .map(|(core, (b, a))| {
            let d = |i: usize| a[i].saturating_sub(b[i]) as f64;
            let total = d(4).max(1.0);
            CoreUse {
                core,
                user: d(0) / total,
                system: d(1) / total,
                softirq: d(3) / total,
                idle: d(2) / total,
            }
        })
        .collect()
}

/// Busy and total jiffies of the whole machine.
fn cpu_jiffies() -> (u64, u64) {
    let t = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = t.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Set by SIGINT/SIGTERM: the suite stops at the next trial and the labs it
/// built come down through their `Drop` (agents stopped by pid, namespaces removed).
static INTERRUPTED: std::sync::LazyLock<Arc<AtomicBool>> =
    std::sync::LazyLock::new(|| Arc::new(AtomicBool::new(false)));

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted: stopping, labs are being removed");
    }
    Ok(())
}

/// One trial: a sink in the destination pod, the generator at `rate` (0 = flat
/// out) for `secs`.
fn trial(sc: &Scenario, rate: u64, secs: f64, ceiling: f64) -> anyhow::Result<Trial> {
    check_interrupted()?;
    let perf = bin_dir()?.join("nodeplane-perf");
    let packets = if rate == 0 {
        (ceiling.max(100_000.0) * secs * 2.0) as u64
    } else {
        (rate as f64 * secs).max(1000.0) as u64
    };
    // The sink runs at real-time priority: it shares core 0 with the
    // generator, and without it the scheduler, not the path, sets the tail
    // latency (p99 of 3.5 ms at 150 kpps in S4 on either path; 0.1 ms with it).
    let mut sink = Command::new("ip")
        .args(["netns", "exec", &sc.sink_ns])
        .args(["chrt", "-f", "10"])
        .arg(&perf)
        .args(["sink", "--json", "--announce", "--cdf", "--idle", "0.5"])
        .args(["--port", &sc.sink_port.to_string()])
        .args(["--seconds", &format!("{}", secs + 5.0)])
        // Generator and sink share core 0; core 1 is the node's (the agent's
        // worker, or the kernel's receive work steered there by RPS).
        .args(["--core", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the sink")?;
    {
        let mut err = BufReader::new(sink.stderr.take().context("sink stderr")?);
        let mut line = String::new();
        err.read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = sink.kill();
            bail!("sink did not start: {line}");
        }
    }
    let (b0, _) = cpu_jiffies();
    let c0 = core_jiffies();
    let out = Command::new("ip")
        .args(["netns", "exec", &sc.gen_ns])
        .arg(&perf)
        .arg("gen")
        .args(&sc.gen_args)
        .args(["--json", "--core", "0"])
        .args(["--rate", &rate.to_string()])
        .args(["--packets", &packets.to_string()])
        .args(["--seconds", &format!("{secs}")])
        .output()
        .context("running the generator")?;
    if !out.status.success() {
        let _ = sink.kill();
        let _ = sink.wait();
        bail!("generator failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let c1 = core_jiffies();
    let g: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let s_out = sink.wait_with_output()?;
    let (b1, _) = cpu_jiffies();
    let s: serde_json::Value = serde_json::from_slice(&s_out.stdout)
        .with_context(|| format!("sink output: {}", String::from_utf8_lossy(&s_out.stdout)))?;
    let sent = g["sent"].as_u64().unwrap_or(0);
    let received = s["received"].as_u64().unwrap_or(0);
    let elapsed = g["elapsed_s"].as_f64().unwrap_or(secs).max(1e-9);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_ns = (b1.saturating_sub(b0)) as f64 * 1e9 / hz;
    let cdf = s["cdf"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    Ok(Trial {
        offered_pps: sent as f64 / elapsed,
        delivered_pps: received as f64 / elapsed,
        sent,
        received,
        loss: if sent == 0 {
            0.0
        } else {
            1.0 - received.min(sent) as f64 / sent as f64
        },
        latency_us_p50: s["latency_us_p50"].as_f64().unwrap_or(0.0),
        latency_us_p99: s["latency_us_p99"].as_f64().unwrap_or(0.0),
        latency_us_p999: s["latency_us_p999"].as_f64().unwrap_or(0.0),
        cpu_ns_per_packet: if received == 0 {
            0.0
        } else {
            cpu_ns / received as f64
        },
        cdf,
        cores: core_use(&c0, &c1),
    })
}

/// Full load, then a binary search for the highest rate with loss ≤ 0.1%,
/// then latency at half that rate.
fn measure(
    sc: &Scenario,
    path: &str,
    a: &BenchArgs,
    ceiling: f64,
    pb: &ProgressBar,
) -> anyhow::Result<ScenarioResult> {
    let mut r = ScenarioResult {
        path: path.to_string(),
        scenario: sc.name.to_string(),
        ..ScenarioResult::default()
    };
    pb.set_message(format!("{path} {}: full load", sc.name));
    let full = trial(sc, 0, a.trial_secs, ceiling)?;
    pb.inc(1);
    r.trials.push(full.clone());
    let max = full.offered_pps;
    if full.loss <= ZERO_LOSS {
        r.zero_loss_pps = full.delivered_pps;
        r.generator_limited = true;
        pb.inc(u64::from(a.steps));
    } else {
        let (mut lo, mut hi) = (0.0f64, max);
        for step in 0..a.steps {
            let rate = if step == 0 {
                full.delivered_pps * 0.9
            } else {
                (lo + hi) / 2.0
            };
            pb.set_message(format!("{path} {}: {:.0} kpps", sc.name, rate / 1000.0));
            let t = trial(sc, rate as u64, a.trial_secs, ceiling)?;
            pb.inc(1);
            if t.loss <= ZERO_LOSS {
                lo = rate;
                r.zero_loss_pps = r.zero_loss_pps.max(t.delivered_pps);
            } else {
                hi = rate;
            }
            r.trials.push(t);
        }
    }
    r.full_load = full;
    pb.set_message(format!("{path} {}: latency", sc.name));
    let half = (r.zero_loss_pps / 2.0).max(1000.0) as u64;
    r.at_half_rate = trial(sc, half, (a.trial_secs * 2.0).max(1.0), ceiling)?;
    pb.inc(1);
    Ok(r)
}

/// The generator alone: its frames dropped by an XDP program on the peer.
fn generator_ceiling(a: &BenchArgs) -> anyhow::Result<f64> {
    let p = format!("bc{}", std::process::id() % 100_000);
    let (na, nb) = (format!("{p}a"), format!("{p}b"));
    struct Cleanup(String, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
            let _ = Command::new("ip").args(["netns", "del", &self.1]).output();
        }
    }
    let _c = Cleanup(na.clone(), nb.clone());
    run_ok(Command::new("ip").args(["netns", "add", &na]))?;
    run_ok(Command::new("ip").args(["netns", "add", &nb]))?;
    run_ok(Command::new("ip").args([
        "link",
        "add",
        &format!("{p}x"),
        "type",
        "veth",
        "peer",
        "name",
        &format!("{p}y"),
    ]))?;
    run_ok(Command::new("ip").args([
        "link",
        "set",
        &format!("{p}x"),
        "netns",
        &na,
        "name",
        "eth0",
    ]))?;
    run_ok(Command::new("ip").args([
        "link",
        "set",
        &format!("{p}y"),
        "netns",
        &nb,
        "name",
        "eth0",
    ]))?;
    for ns in [&na, &nb] {
        run_ok(Command::new("ip").args(["-n", ns, "link", "set", "eth0", "up"]))?;
    }
    let obj = xdp_drop_object()?;
    run_ok(
        Command::new("ip")
            .args(["-n", &nb, "link", "set", "dev", "eth0", "xdp", "obj"])
            .arg(&obj)
            .args(["sec", "xdp"]),
    )?;
    let out = run_ok(
        Command::new("ip")
            .args(["netns", "exec", &na])
            .arg(bin_dir()?.join("nodeplane-perf"))
            .args([
                "gen",
                "--iface",
                "eth0",
                "--dst-mac",
                "02:00:00:00:00:99",
                "--src",
                "198.18.252.1",
            ])
            .args([
                "--dst",
                "198.18.252.2",
                "--json",
                "--core",
                "0",
                "--packets",
                "100000000",
            ])
            .args([
                "--size",
                &a.size.to_string(),
                "--seconds",
                &format!("{}", a.trial_secs.max(2.0)),
            ]),
    )?;
    let g: serde_json::Value = serde_json::from_str(out.trim())?;
    Ok(g["offered_pps"].as_f64().unwrap_or(0.0))
}

/// A minimal XDP_DROP program, compiled with clang into the output directory.
fn xdp_drop_object() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("nodeplane-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let src = dir.join("drop.c");
    std::fs::write(
        &src,
        "#include <linux/bpf.h>\n#define SEC(n) __attribute__((section(n), used))\n\
         SEC(\"xdp\") int drop_all(struct xdp_md *ctx) { return XDP_DROP; }\n\
         char _license[] SEC(\"license\") = \"GPL\";\n",
    )?;
    let obj = dir.join("drop.o");
    run_ok(
        Command::new("clang")
            .args([
                "-O2",
                "-g",
                "-target",
                "bpf",
                "-I/usr/include/x86_64-linux-gnu",
                "-c",
            ])
            .arg(&src)
            .arg("-o")
            .arg(&obj),
    )?;
    Ok(obj)
}

/// sockperf ping-pong (UDP) from `client_ns` to `dst:port`, server in `server_ns`.
fn sockperf(
    path: &str,
    name: &str,
    server_ns: &str,
    client_ns: &str,
    dst: &str,
    port: u16,
) -> PingPong {
    let mut r = PingPong {
        path: path.into(),
        scenario: name.into(),
        ..PingPong::default()
    };
    // Client and server on core 0 at real-time priority, like the sink: core 1
    // is the node's (node-a's worker spins there; the kernel path's receive
    // work is steered there).
    let sockperf_in = |ns: &str| {
        let mut c = Command::new("ip");
        c.args([
            "netns", "exec", ns, "taskset", "-c", "0", "chrt", "-f", "10", "sockperf",
        ]);
        c
    };
    let server = sockperf_in(server_ns)
        .args(["server", "-i", "0.0.0.0", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut server) = server else {
        r.error = Some("sockperf not found".into());
        return r;
    };
    std::thread::sleep(Duration::from_millis(300));
    let out = sockperf_in(client_ns)
        .args(["ping-pong", "-i", dst, "-p", &port.to_string()])
        .args(["-t", "3", "--mps", "10000", "--full-rtt"])
        .output();
    let _ = server.kill();
    let _ = server.wait();
    match out {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            let num_after = |key: &str| text.lines().find_map(|l| sockperf_value(l, key));
            r.avg_us = num_after("avg-rtt")
                .or_else(|| num_after("avg-latency"))
                .unwrap_or(0.0);
            r.p50_us = num_after("percentile 50.000").unwrap_or(0.0);
            r.p99_us = num_after("percentile 99.000").unwrap_or(0.0);
            r.p999_us = num_after("percentile 99.900").unwrap_or(0.0);
            if r.p50_us == 0.0 {
                r.error = Some(text.lines().rev().take(5).collect::<Vec<_>>().join(" | "));
            }
        }
        Err(e) => r.error = Some(e.to_string()),
    }
    r
}

/// The number after `key =` in a line of sockperf's output, e.g. 74.573 in
/// `sockperf: \x1b[2;35m====> avg-rtt=74.573 (std-dev=54.352)\x1b[0m` or 68.902 in
/// `sockperf: ---> percentile 50.000 =   68.902`.
fn sockperf_value(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    let v = rest
        .trim_start()
        .strip_prefix('=')?
        .split_whitespace()
        .next()?;
    v.trim_end_matches(',').parse().ok()
}

/// Generated Services a real API server takes: each needs a ClusterIP of its
/// own, from 198.18.98.0 to the end of the lab's /20 Service CIDR (its last
/// address is the broadcast address, which the allocator never hands out).
const MAX_UNIQUE_EXTRA: usize = 14 * 256 - 1;

/// configs/demo + configs/bench, plus `extra` generated ClusterIP services
/// (each backed by a1:9000) for the scaling measurement: four to a ClusterIP
/// (ports 9100–9103) for the manifest directory and the lab's own rules, or
/// (`unique`, for a real API server) each on its own ClusterIP.
fn write_manifests(dir: &Path, extra: usize, unique: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for sub in ["configs/demo", "configs/bench"] {
        for e in std::fs::read_dir(repo().join(sub))? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let name = format!(
                    "{}-{}",
                    sub.rsplit('/').next().unwrap_or("x"),
                    p.file_name().unwrap_or_default().to_string_lossy()
                );
                std::fs::copy(&p, dir.join(name))?;
            }
        }
    }
    let mut y = String::new();
    for i in 0..extra {
        let (n, port) = if unique {
            (i, 9100)
        } else {
            (i / 4, 9100 + (i % 4))
        };
        let ip =
            std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 98, 0)) + n as u32);
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: scale-{i}, namespace: default}}\n\
             spec: {{type: ClusterIP, clusterIP: {ip}, clusterIPs: [{ip}], ports: [{{name: udp, protocol: UDP, port: {port}, targetPort: 9000}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: scale-{i}-1, namespace: default, labels: {{kubernetes.io/service-name: scale-{i}}}}}\n\
             addressType: IPv4\nports: [{{name: udp, protocol: UDP, port: 9000}}]\n\
             endpoints: [{{addresses: [198.19.1.10], conditions: {{ready: true}}, nodeName: node-a}}]\n"
        ));
    }
    let tmp = dir.join(".scale.yaml.tmp");
    std::fs::write(&tmp, y)?;
    std::fs::rename(tmp, dir.join("scale.yaml"))?;
    Ok(())
}

pub fn run(a: &BenchArgs) -> anyhow::Result<BenchResult> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    anyhow::ensure!(euid == 0, "the benchmark needs root (namespaces, XDP)");
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&INTERRUPTED))
            .context("installing the signal handler")?;
    }
    let t0 = Instant::now();
    std::fs::create_dir_all(&a.out)?;
    let mut res = BenchResult {
        started: control::store::format_rfc3339(std::time::SystemTime::now()),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        ..BenchResult::default()
    };
    let per_scenario = u64::from(a.steps) + 2;
    let total = a.paths.len() as u64
        * (a.scenarios.len() as u64 * per_scenario + a.services.len() as u64 * (per_scenario - 1))
        + 1;
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message("generator ceiling");
    res.generator_ceiling_pps = generator_ceiling(a)?;
    pb.inc(1);
    let ceiling = res.generator_ceiling_pps;
    for path in &a.paths {
        let kernel = path != "nodeplane";
        let prefix = format!("bn{}", std::process::id() % 10_000);
        check_interrupted()?;
        pb.set_message(format!("{path}: lab up"));
        let mut lab = Lab::up(&prefix, kernel)?;
        let manifests = PathBuf::from(lab.var("NP_LAB_DIR")?).join("bench-manifests");
        let real = path.starts_with(REAL);
        write_manifests(&manifests, 0, real)?;
        if let Some(mode) = path.strip_prefix(REAL) {
            lab.real_kernel_path(mode, &manifests)?;
        } else if kernel {
            lab.kernel_path(path, &manifests)?;
        } else {
            lab.place_work(false)?;
            lab.start_agent("a", &manifests)?;
            lab.start_agent("b", &manifests)?;
        }
        for name in &a.scenarios {
            let name: &'static str = match name.as_str() {
                "S1" => "S1",
                "S2" => "S2",
                "S3" => "S3",
                "S4" => "S4",
                other => bail!("unknown scenario {other}"),
            };
            let sc = scenario(&lab, name, a.size)?;
            res.scenarios.push(measure(&sc, path, a, ceiling, &pb)?);
        }
        if !a.no_sockperf {
            pb.set_message(format!("{path}: sockperf"));
            let (a1, b1, a2) = (lab.ns("a1")?, lab.ns("b1")?, lab.ns("a2")?);
            let a1_ip = lab.ip("a1")?;
            res.pingpong
                .push(sockperf(path, "S1", &a1, &b1, &a1_ip, 11111));
            res.pingpong
                .push(sockperf(path, "S4", &a1, &a2, "198.18.96.23", 11111));
        }
        for &n in &a.services {
            pb.set_message(format!("{path}: {n} services"));
            let extra = n.saturating_sub(BASE_SERVICES);
            if real && extra > MAX_UNIQUE_EXTRA {
                pb.println(format!(
                    "{path}: {n} Services skipped: a real API server gives each its own ClusterIP, and the lab's /20 Service CIDR holds {} generated ones",
                    MAX_UNIQUE_EXTRA + BASE_SERVICES
                ));
                continue;
            }
            write_manifests(&manifests, extra, real)?;
            if let Some(mode) = path.strip_prefix(REAL) {
                lab.real_kernel_path(mode, &manifests)?;
            } else if kernel {
                lab.kernel_path(path, &manifests)?;
            } else {
                // The agents pick the directory up live; wait for the tables.
                lab.wait_services(n.max(BASE_SERVICES))?;
            }
            let sc = scenario(&lab, "S4", a.size)?;
            let mut sa = a.clone();
            sa.steps = a.steps.saturating_sub(1).max(3);
            let r = measure(&sc, path, &sa, ceiling, &pb)?;
            res.scaling.push(Scaling {
                path: path.clone(),
                services: n,
                zero_loss_pps: r.zero_loss_pps,
            });
        }
        drop(lab);
    }
    pb.finish_with_message("done");
    res.elapsed_s = t0.elapsed().as_secs_f64();
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::sockperf_value;

    #[test]
    fn sockperf_summary_lines_parse() {
        let avg = "sockperf: \x1b[2;35m====> avg-rtt=74.573 (std-dev=54.352)\x1b[0m";
        assert_eq!(sockperf_value(avg, "avg-rtt"), Some(74.573));
        let p50 = "sockperf: ---> percentile 50.000 =   68.902";
        assert_eq!(sockperf_value(p50, "percentile 50.000"), Some(68.902));
        assert_eq!(sockperf_value(p50, "percentile 99.000"), None);
        assert_eq!(sockperf_value("sockperf: avg-rtt=", "avg-rtt"), None);
    }
}
