//! nodeplane on a real Kubernetes control plane (issue 17, root): etcd,
//! kube-apiserver and kube-controller-manager built from their Go modules by
//! `scripts/cluster build` (scripts/test runs it) and started by
//! `scripts/cluster up` on loopback inside a lab namespace of the test's own;
//! the agents in node-a's and node-b's namespaces reach the API server through
//! the script's loopback bridge, with the token of the ServiceAccount
//! `configs/deploy/rbac.yaml` binds. The lab has no kubelet: `scripts/cluster
//! apply` applies the demo's Nodes, Services and Pods with kubectl and writes
//! the Nodes' status; `scripts/cluster pod-status` (and `kubelet-sync`, which
//! also starts and removes pods) writes the Pods' as each node's kubelet
//! would, with the node's own identity; the real EndpointSlice controller
//! makes the slices. The real kube-proxy and flanneld run on the kernel node
//! (`scripts/cluster kube-proxy`, `flanneld`). Every wait is bounded; the
//! control plane and the lab are removed on drop.

mod lab_support;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab_support::*;

/// A control plane from `scripts/cluster up`, removed on drop.
struct Cluster {
    name: String,
    kubeconfig: PathBuf,
    bin: PathBuf,
}

impl Cluster {
    fn up(tag: &str) -> Cluster {
        let name = format!("np-cl{tag}{}", std::process::id() % 10000);
        // It says which component is missing when `scripts/cluster build`
        // (scripts/test runs it first) has not built them.
        cluster_script(&["up", &name]);
        let env = cluster_script(&["env", &name]);
        let var = |k: &str| {
            env.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k} in `scripts/cluster env`: {env}"))
                .to_string()
        };
        Cluster {
            kubeconfig: PathBuf::from(var("KUBECONFIG")),
            bin: PathBuf::from(var("NP_CLUSTER_BIN")),
            name,
        }
    }

    /// `kubectl ARGS` as the admin, inside the control plane's namespace,
    /// `input` on stdin; its stdout, or Err with its stderr.
    fn try_kubectl(&self, args: &[&str], input: Option<&str>) -> Result<String, String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--request-timeout", "20s"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        if let Some(i) = input {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(i.as_bytes())
                .expect("kubectl stdin");
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().expect("kubectl");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).to_string())
        } else {
            Err(format!(
                "kubectl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn kubectl(&self, args: &[&str]) -> String {
        self.try_kubectl(args, None)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn kubectl_in(&self, args: &[&str], input: &str) -> String {
        self.try_kubectl(args, Some(input))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// 127.0.0.1:6443 inside `netns` reaches the API server.
    fn bridge(&self, netns: &str) {
        self.script(&["bridge", &self.name, netns]);
    }

    /// A kubeconfig with a token of kube-system/nodeplane (configs/deploy's
    /// ServiceAccount), for 127.0.0.1:6443.
    fn agent_kubeconfig(&self, path: &std::path::Path) {
        self.token_kubeconfig("nodeplane", path);
    }

    /// A kubeconfig with a token of the ServiceAccount kube-system/`sa`, for
    /// 127.0.0.1:6443.
    fn token_kubeconfig(&self, sa: &str, path: &std::path::Path) {
        self.script(&["kubeconfig", &self.name, sa, &path.display().to_string()]);
    }
}

impl Cluster {
    fn script(&self, args: &[&str]) -> String {
        cluster_script(args)
    }

    /// Stops and starts kube-apiserver: every watch on it breaks.
    fn restart_apiserver(&self) {
        self.script(&["restart", &self.name]);
    }

    /// Ends `netns`'s bridge and the connections through it.
    fn unbridge(&self, netns: &str) {
        self.script(&["unbridge", &self.name, netns]);
    }

    /// Compacts etcd to its current revision; returns it.
    fn compact(&self) -> String {
        self.script(&["compact", &self.name]).trim().to_string()
    }

    /// configs/deploy/rbac.yaml and the demo's objects: the Nodes with their
    /// status, the Services, and the Pods, whose status each node's
    /// `scripts/cluster pod-status` writes (as system:node:NODE, from what
    /// nodeplane-cni set up in `lab`); waits (≤ 20 s) for the EndpointSlice
    /// controller's slice of web.
    fn apply_demo(&self, lab: &Lab) {
        self.kubectl(&[
            "apply",
            "-f",
            &repo()
                .join("configs/deploy/rbac.yaml")
                .display()
                .to_string(),
        ]);
        let files: Vec<String> = ["nodes.yaml", "services.yaml", "pods.yaml"]
            .iter()
            .map(|f| repo().join("configs/demo").join(f).display().to_string())
            .collect();
        let mut args = vec!["apply", self.name.as_str()];
        args.extend(files.iter().map(String::as_str));
        self.script(&args);
        let dir = PathBuf::from(lab.var("NP_LAB_DIR"));
        for n in ["a", "b", "k"] {
            let node = format!("node-{n}");
            let state = dir.join(&node).join("pods").display().to_string();
            self.script(&["pod-status", &self.name, &lab.ns(n), &node, &state]);
        }
        eventually(20, || {
            let ips = self.kubectl(&[
                "get",
                "endpointslices",
                "-n",
                "default",
                "-l",
                "kubernetes.io/service-name=web",
                "-o",
                "jsonpath={.items[*].endpoints[*].addresses[*]}",
            ]);
            let n = ips.split_whitespace().count();
            if n == 3 {
                Ok(())
            } else {
                Err(format!("web's slice has {n} addresses: {ips}"))
            }
        })
        .unwrap();
    }

    /// Starts the agents on node-a and node-b on this API server (bridged,
    /// with the ServiceAccount's token).
    fn start_agents(&self, lab: &mut Lab) {
        let kubeconfig = PathBuf::from(lab.var("NP_LAB_DIR")).join("agent.kubeconfig");
        self.agent_kubeconfig(&kubeconfig);
        for node in ["a", "b"] {
            self.bridge(&lab.ns(node));
            let args = api_args(lab, node, &kubeconfig);
            lab.start_agent_args(node, &args);
        }
    }
}

/// A control plane for `lab` with the demo applied and the agents of node-a
/// and node-b on it; web's ClusterIP:80.
fn demo_on_cluster(lab: &mut Lab, tag: &str) -> (Cluster, SocketAddr) {
    let cluster = Cluster::up(tag);
    cluster.apply_demo(lab);
    cluster.start_agents(lab);
    let web: std::net::Ipv4Addr = lab.var("NP_WEB_IP").parse().unwrap();
    (cluster, SocketAddr::from((web, 80)))
}

/// Waits (≤ `secs`) until new connections from `client` to `dst` reach
/// exactly `want`; else panics with `node`'s agent log.
fn reaches(lab: &Lab, node: &str, client: &str, dst: SocketAddr, want: &[&str], secs: u64) {
    reaches_or(lab, client, dst, want, secs, || lab.agent_log(node));
}

/// `reaches`, panicking with `log()` (the path under test's log).
fn reaches_or(
    lab: &Lab,
    client: &str,
    dst: SocketAddr,
    want: &[&str],
    secs: u64,
    log: impl Fn() -> String,
) {
    let want = set(want);
    eventually(secs, || match backends(&lab.ns(client), dst, 30) {
        Ok(b) if b == want => Ok(()),
        Ok(b) => Err(format!("{client} → {dst} reached {b:?}, want {want:?}")),
        Err(e) => Err(e),
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", log()));
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/cluster"))
            .args(["down", &self.name])
            .status();
    }
}

/// The agent's arguments on `node` with `--kubeconfig FILE` for `--manifests DIR`.
fn api_args(lab: &Lab, node: &str, kubeconfig: &std::path::Path) -> Vec<String> {
    lab.agent_args_from(node, "--kubeconfig", &kubeconfig.display().to_string())
}

/// The backends `n` new TCP connections from `ns` to `dst` reach (podserver
/// answers with its pod's name first).
fn backends(ns: &str, dst: SocketAddr, n: usize) -> Result<BTreeSet<String>, String> {
    (0..n)
        .map(|i| {
            tcp_line(ns, dst, &format!("c{i}"))
                .map(|a| a.split_whitespace().next().unwrap_or_default().to_string())
        })
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Issue 17: the demo on a real API server. The agents list and watch it with
/// exactly configs/deploy/rbac.yaml's permissions; the EndpointSlice
/// controller's slices from the Pods' status reach the workers; a Pod deleted
/// with kubectl leaves every worker's backend set.
#[test]
fn lab_real_api_server_programs_the_workers() {
    let Some(mut lab) = Lab::up("r") else { return };
    // The real EndpointSlice controller's slice for web: the three ready
    // backends the Pods' status names.
    let (cluster, dst) = demo_on_cluster(&mut lab, "r");
    reaches(&lab, "a", "a2", dst, &["a1", "b1", "k1"], 20);
    reaches(&lab, "b", "b2", dst, &["a1", "b1", "k1"], 20);
    // The pod-status helper writes as its node: node-a may not write node-b's
    // pods (the Node authorizer and NodeRestriction, as for a kubelet).
    let b_pods = PathBuf::from(lab.var("NP_LAB_DIR")).join("node-b/pods");
    let out = Command::new(repo().join("scripts/cluster"))
        .args(["pod-status", &cluster.name, &lab.ns("a"), "node-a"])
        .arg(&b_pods)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("as system:node:node-a failed")
            && (err.contains("403") || err.contains("forbidden")),
        "node-a wrote node-b's pods' status: {err}"
    );
    eprintln!("node-a's helper on node-b's pods: {}", err.trim());
    // Node IPAM: a Node registered without a pod CIDR gets a /24 from
    // 198.19.0.0/16 that no other node has.
    cluster.kubectl_in(
        &["apply", "-f", "-"],
        "{\"apiVersion\": \"v1\", \"kind\": \"Node\", \"metadata\": {\"name\": \"node-new\"}}",
    );
    let cidr = eventually(20, || {
        let c = cluster.kubectl(&["get", "node", "node-new", "-o", "jsonpath={.spec.podCIDR}"]);
        if c.is_empty() {
            Err("node-new has no pod CIDR yet".to_string())
        } else {
            Ok(c)
        }
    })
    .unwrap();
    assert!(
        cidr.starts_with("198.19.")
            && cidr.ends_with("/24")
            && !["198.19.1.0/24", "198.19.2.0/24", "198.19.3.0/24"].contains(&cidr.as_str()),
        "node IPAM gave node-new {cidr}"
    );
    eprintln!("node IPAM gave node-new {cidr}");
    cluster.kubectl(&["delete", "node", "node-new"]);
    // kubectl delete: the controller drops b1 from the slice, and both
    // nodes' workers stop choosing it.
    let t = Instant::now();
    cluster.kubectl(&["delete", "pod", "b1", "-n", "default", "--wait=false"]);
    for (node, client) in [("a", "a2"), ("b", "b2")] {
        reaches(&lab, node, client, dst, &["a1", "k1"], 20);
    }
    eprintln!(
        "kubectl delete pod b1 → no new connection to b1 from either node within {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert!(t.elapsed() < Duration::from_secs(30));
    for node in ["a", "b"] {
        assert!(lab.stop_agent(node), "agent {node} stops cleanly");
    }
}

/// configs/deploy/rbac.yaml's ClusterRole with `verb` taken from the rule
/// for `resource`, as JSON for `kubectl apply -f -`.
fn role_without(resource: &str, verb: &str) -> String {
    let text = std::fs::read_to_string(repo().join("configs/deploy/rbac.yaml")).unwrap();
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple_with_options(&text, control::manifests::yaml_options())
            .unwrap();
    let mut role = docs
        .into_iter()
        .find(|d| d["kind"] == "ClusterRole")
        .expect("a ClusterRole in rbac.yaml");
    let mut rules = Vec::new();
    for rule in role["rules"].as_array().expect("rules").clone() {
        let resources: Vec<String> = serde_json::from_value(rule["resources"].clone()).unwrap();
        if !resources.iter().any(|r| r == resource) {
            rules.push(rule);
            continue;
        }
        // The other resources of the rule keep every verb.
        for r in resources {
            let mut one = rule.clone();
            one["resources"] = serde_json::json!([r]);
            if r == resource {
                let verbs: Vec<String> = serde_json::from_value(rule["verbs"].clone()).unwrap();
                one["verbs"] =
                    serde_json::json!(verbs.into_iter().filter(|v| v != verb).collect::<Vec<_>>());
            }
            rules.push(one);
        }
    }
    role["rules"] = serde_json::Value::Array(rules);
    role.to_string()
}

/// Issue 17: the agent needs every permission configs/deploy/rbac.yaml gives
/// it, and says so: with one verb taken away it logs the API server's
/// refusal naming the resource, and (for what it lists and watches) never
/// reports ready, so a rollout stops there. With the role whole again the same
/// agent becomes ready without a restart.
#[test]
fn lab_real_api_server_every_rbac_permission_is_needed() {
    let Some(mut lab) = Lab::up("p") else { return };
    let cluster = Cluster::up("p");
    cluster.apply_demo(&lab);
    let kubeconfig = PathBuf::from(lab.var("NP_LAB_DIR")).join("agent.kubeconfig");
    cluster.agent_kubeconfig(&kubeconfig);
    cluster.bridge(&lab.ns("a"));
    let args = api_args(&lab, "a", &kubeconfig);
    let cases = [
        ("services", "list", true),
        ("services", "watch", true),
        ("endpointslices", "list", true),
        ("endpointslices", "watch", true),
        ("nodes", "list", true),
        ("nodes", "watch", true),
        ("pods", "list", true),
        ("pods", "watch", true),
        ("nodes", "patch", false),
    ];
    for (resource, verb, blocks_readiness) in cases {
        cluster.kubectl_in(&["apply", "-f", "-"], &role_without(resource, verb));
        if verb == "patch" {
            // node-a without its VTEP annotations (the agents before put
            // them back): this agent must patch them in.
            cluster.kubectl(&[
                "annotate",
                "node",
                "node-a",
                "flannel.alpha.coreos.com/backend-data-",
                "flannel.alpha.coreos.com/public-ip-",
            ]);
        }
        // RBAC's authorizer follows the role through its own watch.
        std::thread::sleep(Duration::from_millis(1500));
        lab.spawn_agent_args("a", &args);
        let refused = eventually(25, || {
            let log = lab.agent_log("a");
            let needle = if verb == "patch" {
                "patching node node-a".to_string()
            } else {
                format!("\"{resource}\"")
            };
            match log
                .lines()
                .find(|l| l.contains("forbidden") && l.contains(&needle))
            {
                Some(l) => Ok(l.to_string()),
                None => Err(format!(
                    "no refusal of {verb} {resource} in the log yet:\n{log}"
                )),
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("without {verb} on {resource}: {refused}");
        if blocks_readiness {
            // Not ready, and /readyz says why.
            eventually(10, || match lab.http("a", "/readyz") {
                Some((200, _)) | None => Err(format!("ready without {verb} on {resource}")),
                Some((_, body))
                    if body.contains("refuses this identity") && body.contains(resource) =>
                {
                    Ok(())
                }
                Some((c, body)) => Err(format!("/readyz {c}: {body}")),
            })
            .unwrap_or_else(|e| panic!("{e}\n{}", lab.agent_log("a")));
        }
        if resource == "services" && verb == "list" {
            // The whole role again: the same agent recovers by itself.
            cluster.kubectl(&[
                "apply",
                "-f",
                &repo()
                    .join("configs/deploy/rbac.yaml")
                    .display()
                    .to_string(),
            ]);
            eventually(100, || match lab.http("a", "/readyz") {
                Some((200, _)) => Ok(()),
                other => Err(format!("/readyz {other:?}")),
            })
            .unwrap_or_else(|e| panic!("{e}\n{}", lab.agent_log("a")));
        }
        assert!(lab.stop_agent("a"), "the agent stops cleanly");
    }
}

/// Issue 17: watches that break. (1) kube-apiserver restarts: both agents
/// keep their tables meanwhile and follow an edit made after it. (2) node-a
/// loses the API server while a Pod is deleted, etcd is compacted and the API
/// server restarts: node-a keeps serving what it had, its watch resumes from a
/// resourceVersion that no longer exists, gets 410 Gone, relists, and drops the
/// deleted Pod; node-b, connected throughout, dropped it at once.
#[test]
fn lab_real_api_server_restart_and_410_gone_relist() {
    let Some(mut lab) = Lab::up("w") else { return };
    let (cluster, dst) = demo_on_cluster(&mut lab, "w");
    reaches(&lab, "a", "a2", dst, &["a1", "b1", "k1"], 20);
    // (1)
    cluster.restart_apiserver();
    reaches(&lab, "a", "a2", dst, &["a1", "b1", "k1"], 5);
    cluster.kubectl(&["delete", "pod", "k1", "-n", "default", "--wait=false"]);
    reaches(&lab, "a", "a2", dst, &["a1", "b1"], 40);
    reaches(&lab, "b", "b2", dst, &["a1", "b1"], 40);
    // (2)
    cluster.unbridge(&lab.ns("a"));
    cluster.kubectl(&["delete", "pod", "b1", "-n", "default", "--wait=false"]);
    reaches(&lab, "b", "b2", dst, &["a1"], 20);
    // node-a, cut off, keeps its last tables (as kube-proxy keeps its rules).
    reaches(&lab, "a", "a2", dst, &["a1", "b1"], 5);
    let rev = cluster.compact();
    cluster.restart_apiserver();
    cluster.bridge(&lab.ns("a"));
    let t = Instant::now();
    reaches(&lab, "a", "a2", dst, &["a1"], 90);
    eprintln!(
        "etcd compacted at revision {rev}; node-a relisted and dropped b1 {:.1} s after its bridge came back",
        t.elapsed().as_secs_f64()
    );
    let log = lab.agent_log("a");
    let gone = log
        .lines()
        .find(|l| {
            l.contains("watch error")
                && (l.contains("too old resource version") || l.contains("code: 410"))
        })
        .unwrap_or_else(|| {
            panic!("node-a's watch was not told its resourceVersion is gone:\n{log}")
        });
    eprintln!("node-a: {gone}");
    for node in ["a", "b"] {
        assert!(lab.stop_agent(node), "agent {node} stops cleanly");
    }
}

/// Issue 17: the real kube-proxy (`--proxy-mode nftables`, the release's
/// binary) on the lab's kernel node, against the same API server as the
/// nodeplane nodes, with the `system:node-proxier` role. Connections from the
/// kernel node's pod to web's ClusterIP go through its rules to backends on every
/// node (over the flannel-style overlay to nodeplane's nodes); a Pod deleted
/// with kubectl leaves kube-proxy's set and nodeplane's alike. The figures
/// printed: kube-proxy's own `network_programming_duration_seconds` for that
/// change, and the time until neither nodeplane node chose the Pod any more.
#[test]
fn lab_real_kube_proxy_beside_nodeplane() {
    let Some(mut lab) = Lab::up("q") else { return };
    let (cluster, dst) = demo_on_cluster(&mut lab, "q");
    let k = lab.ns("k");
    let mut kp = Peer::kube_proxy(&cluster, &lab, "nftables");
    // Connections from the kernel node's pod through kube-proxy's rules (the
    // lab's nodes have no default route, so the node's own would not reach
    // the Service CIDR).
    reaches_or(&lab, "k1", dst, &["a1", "b1", "k1"], 30, || kp.log());
    assert!(kp.runs(), "kube-proxy runs");
    reaches(&lab, "a", "a2", dst, &["a1", "b1", "k1"], 20);
    let (before, before_sum) = (programming(&k, "count"), programming(&k, "sum"));
    let np_before: Vec<(f64, f64)> = ["a", "b"]
        .iter()
        .map(|n| nodeplane_programming(&lab, n))
        .collect();
    // b1's readiness probe fails: the kubelet's status write (Ready False,
    // its transition time now, which the EndpointSlice controller passes on
    // as the slice's last-change-trigger-time, kube-proxy's clock start).
    let stamp = time_rfc3339();
    let patch = serde_json::json!({"status": {"conditions": [
        {"type": "Ready", "status": "False", "lastTransitionTime": stamp}
    ]}})
    .to_string();
    let t = Instant::now();
    cluster.kubectl(&[
        "patch",
        "pod",
        "b1",
        "-n",
        "default",
        "--subresource",
        "status",
        "--type",
        "merge",
        "-p",
        &patch,
    ]);
    let mut nodeplane_s = 0.0;
    for (node, client) in [("a", "a2"), ("b", "b2")] {
        reaches(&lab, node, client, dst, &["a1", "k1"], 20);
        nodeplane_s = t.elapsed().as_secs_f64();
    }
    reaches_or(&lab, "k1", dst, &["a1", "k1"], 20, || kp.log());
    let kube_proxy_s = t.elapsed().as_secs_f64();
    // nodeplane's metric of the same name, from the same trigger times.
    let np: Vec<(f64, f64)> = ["a", "b"]
        .iter()
        .zip(np_before)
        .map(|(node, (c0, s0))| {
            eventually(10, || match nodeplane_programming(&lab, node) {
                (c, s) if c > c0 => Ok((c - c0, s - s0)),
                _ => Err(format!("node-{node} has not counted the change")),
            })
            .unwrap_or_else(|e| panic!("{e}\n{}", lab.agent_log(node)))
        })
        .collect();
    // kube-proxy's, once it has as many observations as nodeplane (it may
    // observe the second slice update later); at least one.
    let most = np.iter().map(|(c, _)| *c).fold(0.0, f64::max);
    let kp_counted = || {
        let c = programming(&k, "count") - before;
        (c, programming(&k, "sum") - before_sum)
    };
    let (count, sum) = eventually(10, || match kp_counted() {
        (c, s) if c >= most => Ok((c, s)),
        (c, _) => Err(format!("kube-proxy has counted {c} of {most} observations")),
    })
    .or_else(|_| match kp_counted() {
        (c, s) if c > 0.0 => Ok((c, s)),
        _ => Err("kube-proxy has not counted the change".to_string()),
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", kp.log()));
    eprintln!(
        "b1 not ready: polled by new connections, nodeplane (both nodes) by {nodeplane_s:.2} s, kube-proxy by {kube_proxy_s:.2} s (polled after nodeplane); kube-proxy's network_programming_duration_seconds: {count} observation(s), {sum:.3} s in all (its start has 1 s resolution: the transition time's)"
    );
    for (node, (c, s)) in ["a", "b"].iter().zip(np) {
        eprintln!(
            "node-{node}: nodeplane_network_programming_duration_seconds: {c} observation(s), {s:.3} s in all (mean {:.3} s; kube-proxy's mean {:.3} s)",
            s / c,
            sum / count
        );
    }
    for node in ["a", "b"] {
        assert!(lab.stop_agent(node), "agent {node} stops cleanly");
    }
    drop(kp);
}

/// Now, RFC 3339 in seconds (as metav1.Time serializes).
fn time_rfc3339() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A real peer (kube-proxy, flanneld) that `scripts/cluster` started on the
/// kernel node: its pid and log in the control plane's state directory; ended
/// (by pid) on drop, as `scripts/cluster down` would.
struct Peer {
    pid: String,
    log: PathBuf,
}

impl Peer {
    /// `scripts/cluster PROGRAM NAME NETNS ARGS...`, then its pid and log.
    fn start(cluster: &Cluster, program: &str, netns: &str, args: &[&str]) -> Peer {
        let mut a = vec![program, cluster.name.as_str(), netns];
        a.extend(args);
        cluster.script(&a);
        let state = cluster.kubeconfig.parent().expect("state dir");
        let pid = std::fs::read_to_string(state.join(format!("{program}-{netns}.pid")))
            .expect("the peer's pid file")
            .trim()
            .to_string();
        let log = state.join(format!("{program}-{netns}.log"));
        Peer { pid, log }
    }

    /// The real kube-proxy (`--proxy-mode MODE`) on the kernel node node-k.
    fn kube_proxy(cluster: &Cluster, lab: &Lab, mode: &str) -> Peer {
        Peer::start(cluster, "kube-proxy", &lab.ns("k"), &["node-k", mode])
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn runs(&mut self) -> bool {
        std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(&self.pid).status();
    }
}

/// nodeplane's `network_programming_duration_seconds` (count, sum) on `node`.
fn nodeplane_programming(lab: &Lab, node: &str) -> (f64, f64) {
    let text = lab
        .http(node, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "nodeplane_network_programming_duration_seconds_{k} "
                ))
            })
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (get("count"), get("sum"))
}

/// kube-proxy's `kubeproxy_network_programming_duration_seconds_{what}`
/// (count or sum), from its metrics endpoint in `ns`.
fn programming(ns: &str, what: &str) -> f64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sf", "--max-time", "3"])
        .arg("http://127.0.0.1:10249/metrics")
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let name = format!("kubeproxy_network_programming_duration_seconds_{what}");
    text.lines()
        .filter(|l| l.starts_with(&name))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// `cmd ARGS` inside `ns`; its stdout (panics with its stderr on failure).
fn in_ns(ns: &str, cmd: &[&str]) -> String {
    stdout_of(Command::new("ip").args(["netns", "exec", ns]).args(cmd))
}

/// What `scripts/cluster ARGS` prints; panics with its stderr if it fails.
fn cluster_script(args: &[&str]) -> String {
    stdout_of(Command::new(repo().join("scripts/cluster")).args(args))
}

/// What `cmd` prints; panics with its stderr if it fails.
fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Issue 17: the real flanneld (`--kube-subnet-mgr`, the VXLAN backend) and
/// the real kube-proxy (`--proxy-mode iptables`) on the lab's kernel node,
/// against the same API server as nodeplane's nodes. node-k starts as a fresh
/// node: no flannel annotations and no flannel.1 (the testbed's static one is
/// removed). flanneld takes node-k's pod CIDR from its Node, creates flannel.1,
/// publishes its VTEP MAC on the Node, and programs routes, neighbours and fdb
/// entries to node-a and node-b from the annotations nodeplane publishes;
/// nodeplane learns node-k's VTEP from flanneld's annotation. Then: pod to pod
/// both ways between the flannel node and each nodeplane node, web's backends
/// on all three nodes from nodeplane's pods through nodeplane and from the
/// flannel node's pod through kube-proxy's iptables rules.
#[test]
fn lab_real_flanneld_and_kube_proxy_iptables_on_the_kernel_node() {
    let Some(mut lab) = Lab::up("f") else { return };
    let cluster = Cluster::up("f");
    cluster.apply_demo(&lab);
    // node-k's flannel annotations and static flannel.1 go when flanneld
    // starts (`scripts/cluster flanneld`); until then nodeplane has node-k's
    // VTEP from the annotation, so drop it now, as a new node would lack it.
    cluster.kubectl(&[
        "annotate",
        "node",
        "node-k",
        "flannel.alpha.coreos.com/backend-data-",
        "flannel.alpha.coreos.com/backend-type-",
        "flannel.alpha.coreos.com/public-ip-",
        "flannel.alpha.coreos.com/kube-subnet-manager-",
    ]);
    let k = lab.ns("k");
    cluster.start_agents(&mut lab);
    let web: std::net::Ipv4Addr = lab.var("NP_WEB_IP").parse().unwrap();
    let dst = SocketAddr::from((web, 80));
    // Without node-k's VTEP, nodeplane has no way to k1.
    assert!(
        tcp_line(&lab.ns("a2"), SocketAddr::from((lab.ip("k1"), 8080)), "x").is_err(),
        "a2 reached k1 before node-k had a VTEP"
    );

    let mut flanneld = Peer::start(&cluster, "flanneld", &k, &["node-k"]);
    let subnet_file = flanneld
        .log
        .with_file_name(format!("flannel-subnet-{k}.env"));
    // flanneld's VTEP: flannel.1's MAC, published on node-k.
    let mac = eventually(30, || {
        let data = cluster.kubectl(&[
            "get",
            "node",
            "node-k",
            "-o",
            "jsonpath={.metadata.annotations.flannel\\.alpha\\.coreos\\.com/backend-data}",
        ]);
        let v: serde_json::Value =
            serde_json::from_str(&data).map_err(|_| format!("no backend-data yet: {data:?}"))?;
        v["VtepMAC"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("backend-data {data}"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", flanneld.log()));
    let link: serde_json::Value =
        serde_json::from_str(&in_ns(&k, &["ip", "-j", "-d", "link", "show", "flannel.1"])).unwrap();
    assert_eq!(link[0]["address"].as_str(), Some(mac.as_str()), "{link}");
    assert_eq!(link[0]["linkinfo"]["info_data"]["id"], 1, "VNI 1: {link}");
    // flanneld writes its subnet file once its network is set up.
    let subnet = eventually(20, || {
        std::fs::read_to_string(&subnet_file).map_err(|e| format!("{}: {e}", subnet_file.display()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", flanneld.log()));
    assert!(
        subnet.contains("FLANNEL_SUBNET=198.19.2.1/24"),
        "flanneld took node-k's podCIDR from its Node: {subnet}"
    );
    // Its routes, neighbours and fdb entries to nodeplane's nodes, from
    // nodeplane's annotations.
    eventually(30, || {
        let routes = in_ns(&k, &["ip", "route", "show", "dev", "flannel.1"]);
        let neigh = in_ns(&k, &["ip", "neigh", "show", "dev", "flannel.1"]);
        let fdb = in_ns(&k, &["bridge", "fdb", "show", "dev", "flannel.1"]);
        let ok = [
            ("198.19.1.0/24 via 198.19.1.0", &routes),
            ("198.19.3.0/24 via 198.19.3.0", &routes),
            ("198.19.1.0 lladdr 02:00:00:00:01:01", &neigh),
            ("198.19.3.0 lladdr 02:00:00:00:03:01", &neigh),
            ("02:00:00:00:01:01 dst 198.18.0.2", &fdb),
            ("02:00:00:00:03:01 dst 198.18.0.3", &fdb),
        ]
        .iter()
        .all(|(want, have)| have.contains(want));
        if ok {
            Ok(())
        } else {
            Err(format!("flanneld's entries:\n{routes}{neigh}{fdb}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", flanneld.log()));
    eprintln!(
        "flanneld on node-k: VTEP {mac}, {}",
        subnet.replace('\n', " ")
    );
    // Pod to pod, both ways, between the flannel node and each nodeplane node.
    for (from, to) in [("a2", "k1"), ("k1", "a1"), ("b2", "k1"), ("k1", "b1")] {
        let at = SocketAddr::from((lab.ip(to), 8080));
        eventually(20, || match tcp_line(&lab.ns(from), at, "hello") {
            Ok(a) if a.starts_with(&format!("{to} ")) => Ok(()),
            other => Err(format!("{from} → {to}: {other:?}")),
        })
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", flanneld.log(), lab.agent_log("a")));
    }
    // web's backends on every node through nodeplane, the flannel node's
    // among them.
    reaches(&lab, "a", "a2", dst, &["a1", "b1", "k1"], 20);
    reaches(&lab, "b", "b2", dst, &["a1", "b1", "k1"], 20);
    // And from the flannel node's pod through kube-proxy's iptables rules.
    let mut kp = Peer::kube_proxy(&cluster, &lab, "iptables");
    reaches_or(&lab, "k1", dst, &["a1", "b1", "k1"], 30, || kp.log());
    let nat = in_ns(&k, &["iptables", "-t", "nat", "-S", "KUBE-SERVICES"]);
    assert!(
        nat.contains(&format!("-d {web}/32")),
        "kube-proxy's iptables rules for web: {nat}"
    );
    assert!(kp.runs(), "kube-proxy runs:\n{}", kp.log());
    assert!(flanneld.runs(), "flanneld runs:\n{}", flanneld.log());
    for node in ["a", "b"] {
        assert!(lab.stop_agent(node), "agent {node} stops cleanly");
    }
}

/// A Deployment of pod servers on node-b and its Service, for
/// `kubectl scale`.
const ECHO: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      nodeName: node-b
      containers:
        - name: server
          image: registry.k8s.io/e2e-test-images/agnhost:2.52
          args: ["netexec", "--http-port=8080"]
          ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#;

/// Issue 17: scale-up and scale-down with `kubectl scale`. The real
/// Deployment and ReplicaSet controllers create and delete the Pods (bound to
/// node-b by the template; the lab has no scheduler); `scripts/cluster
/// kubelet-sync`, the lab's kubelet stand-in, starts a pod for each new one
/// (nodeplane-cni, an address from node-b's IPAM, a pod server) and writes its
/// status, and tears terminating ones down and deletes them for good. New
/// connections from both nodes reach exactly the current replicas: the new
/// ones once ready, none of those being scaled away once they terminate.
#[test]
fn lab_real_api_server_deployment_scale_up_and_down() {
    let Some(mut lab) = Lab::up("s") else { return };
    let (cluster, _) = demo_on_cluster(&mut lab, "s");
    let prefix = lab.var("NP_PREFIX");
    cluster.kubectl_in(&["apply", "-f", "-"], ECHO);
    let ip: std::net::Ipv4Addr = cluster
        .kubectl(&["get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}"])
        .trim()
        .parse()
        .expect("echo's ClusterIP");
    let dst = SocketAddr::from((ip, 80));
    // The Pods of the Deployment: (not terminating, terminating).
    let pods = || {
        let out = cluster.kubectl(&[
            "get",
            "pods",
            "-l",
            "app=echo",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ]);
        let (mut live, mut going) = (Vec::new(), Vec::new());
        for l in out.lines() {
            let mut w = l.split_whitespace();
            match (w.next(), w.next()) {
                (Some(n), None) => live.push(n.to_string()),
                (Some(n), Some(_)) => going.push(n.to_string()),
                _ => {}
            }
        }
        live.sort();
        (live, going)
    };
    let mut before: Vec<String> = Vec::new();
    for replicas in [1usize, 3, 1] {
        cluster.kubectl(&[
            "scale",
            "deployment",
            "echo",
            "--replicas",
            &replicas.to_string(),
        ]);
        let live = eventually(30, || match pods() {
            (live, _) if live.len() == replicas => Ok(live),
            other => Err(format!("echo's Pods: {other:?}")),
        })
        .unwrap();
        let t = Instant::now();
        cluster.script(&["kubelet-sync", &cluster.name, &prefix, "node-b"]);
        let want: Vec<&str> = live.iter().map(String::as_str).collect();
        reaches(&lab, "a", "a2", dst, &want, 30);
        reaches(&lab, "b", "b2", dst, &want, 30);
        eprintln!(
            "{replicas} replica(s) {live:?}: both nodes reach exactly them {:.2} s after the node's sync (from {} before)",
            t.elapsed().as_secs_f64(),
            before.len()
        );
        // Scaled away: torn down on node-b and gone from the API.
        for gone in before.iter().filter(|p| !live.contains(p)) {
            assert!(
                !std::path::Path::new(&format!("/var/run/netns/{prefix}-{gone}")).exists(),
                "{gone}'s pod was not torn down"
            );
        }
        eventually(30, || match pods() {
            (_, going) if going.is_empty() => Ok(()),
            (_, going) => Err(format!("terminating Pods left: {going:?}")),
        })
        .unwrap();
        before = live;
    }
    for node in ["a", "b"] {
        assert!(lab.stop_agent(node), "agent {node} stops cleanly");
    }
}
