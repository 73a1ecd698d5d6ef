//! The kernel reference path for the benchmarks: Service rules as kube-proxy
//! writes them, generated from the same manifests nodeplane reads (through the
//! same reducer), in nftables mode (a `service-ips` verdict map → per-Service
//! chains that pick an endpoint with `numgen random` → endpoint chains that
//! `dnat`; NodePorts on local addresses; masquerade marking for external
//! traffic and hairpin; reject for Services without endpoints) and in iptables
//! mode (`KUBE-SERVICES` → `KUBE-SVC-*` with `-m statistic --mode random` →
//! `KUBE-SEP-*` with `DNAT`, `KUBE-NODEPORTS`, `KUBE-MARK-MASQ`,
//! `KUBE-POSTROUTING`, REJECT in the filter table). Applied inside a lab node's
//! namespace; with RPS steering receive work to the other core. It never
//! touches the root namespace.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use control::reducer::{reduce, LocalConfig, LocalFacts};
use control::store::StoreHandle;
use shared::snapshot::{ServiceSpec, TableSpec};
use shared::L4Proto;

/// The Service tables for `node` from a manifest directory, as nodeplane
/// would program them.
pub fn spec_for(manifests: &Path, node: &str) -> anyhow::Result<TableSpec> {
    let store = StoreHandle::new();
    let dir = control::manifests::load(manifests, &store)?;
    let errors = dir.errors();
    if !errors.is_empty() {
        bail!("manifests: {}", errors.join("; "));
    }
    Ok(store.read(|s| {
        reduce(
            s,
            &LocalConfig {
                node_name: node.to_string(),
                // A manifest directory: Services with a selector get their
                // endpoints from its Pods, as the agent computes them.
                derive_endpoints: true,
                ..LocalConfig::default()
            },
            &LocalFacts::default(),
        )
    }))
}

fn proto(p: L4Proto) -> &'static str {
    match p {
        L4Proto::Tcp => "tcp",
        L4Proto::Udp => "udp",
        L4Proto::Sctp => "sctp",
    }
}

/// kube-proxy's chain-name hash: a short stable digest of the port's identity.
fn hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:016X}", h)[..16].to_string()
}

/// Endpoints kube-proxy would use: ready ones, else serving+terminating.
fn usable(sp: &shared::snapshot::ServicePortSpec) -> Vec<(std::net::Ipv4Addr, u16)> {
    let ready: Vec<_> = sp
        .endpoints
        .iter()
        .filter(|e| e.ready)
        .map(|e| (e.ip, e.port))
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    sp.endpoints
        .iter()
        .filter(|e| e.serving && e.terminating)
        .map(|e| (e.ip, e.port))
        .collect()
}

fn ports(
    spec: &TableSpec,
) -> impl Iterator<Item = (&ServiceSpec, &shared::snapshot::ServicePortSpec)> {
    spec.services
        .iter()
        .flat_map(|s| s.ports.iter().map(move |p| (s, p)))
}

/// nftables rule set (`nft -f`), table `ip kube-proxy`.
pub fn nftables(spec: &TableSpec) -> String {
    let mut o = String::new();
    let mut svc_elems = Vec::new();
    let mut np_elems = Vec::new();
    let mut reject_elems = Vec::new();
    let mut chains = String::new();
    for (s, p) in ports(spec) {
        let id = format!("{}/{}/{}/{}", s.namespace, s.name, proto(p.proto), p.name);
        let h = hash(&id);
        let svc_chain = format!("service-{h}-{}-{}", s.name, p.port);
        let eps = usable(p);
        for ip in &s.cluster_ips {
            if eps.is_empty() {
                reject_elems.push(format!(
                    "{ip} . {} . {} : goto reject-chain",
                    proto(p.proto),
                    p.port
                ));
            } else {
                svc_elems.push(format!(
                    "{ip} . {} . {} : goto {svc_chain}",
                    proto(p.proto),
                    p.port
                ));
            }
        }
        if let Some(np) = p.node_port {
            if eps.is_empty() {
                continue;
            }
            let ext = format!("external-{h}-{}-{}", s.name, p.port);
            np_elems.push(format!("{} . {np} : goto {ext}", proto(p.proto)));
            let _ = writeln!(chains, "  chain {ext} {{");
            if !s.external_local {
                let _ = writeln!(chains, "    jump mark-for-masquerade");
            }
            let _ = writeln!(chains, "    goto {svc_chain}\n  }}");
        }
        if eps.is_empty() {
            continue;
        }
        let _ = writeln!(chains, "  chain {svc_chain} {{");
        let vmap: Vec<String> = eps
            .iter()
            .enumerate()
            .map(|(i, (ip, port))| {
                format!("{i} : goto endpoint-{}", hash(&format!("{id}/{ip}:{port}")))
            })
            .collect();
        let _ = writeln!(
            chains,
            "    numgen random mod {} vmap {{ {} }}\n  }}",
            eps.len(),
            vmap.join(", ")
        );
        for (ip, port) in &eps {
            let _ = writeln!(
                chains,
                "  chain endpoint-{} {{\n    ip saddr {ip} jump mark-for-masquerade\n    meta l4proto {} dnat to {ip}:{port}\n  }}",
                hash(&format!("{id}/{ip}:{port}")),
                proto(p.proto)
            );
        }
    }
    let _ = writeln!(o, "table ip kube-proxy {{");
    let _ = writeln!(
        o,
        "  map service-ips {{\n    type ipv4_addr . inet_proto . inet_service : verdict\n{}  }}",
        elements(&svc_elems)
    );
    let _ = writeln!(
        o,
        "  map service-nodeports {{\n    type inet_proto . inet_service : verdict\n{}  }}",
        elements(&np_elems)
    );
    let _ = writeln!(
        o,
        "  map no-endpoint-services {{\n    type ipv4_addr . inet_proto . inet_service : verdict\n{}  }}",
        elements(&reject_elems)
    );
    o.push_str(
        "  chain mark-for-masquerade {\n    meta mark set meta mark | 0x4000\n  }\n\
         \x20 chain masquerading {\n    meta mark & 0x4000 == 0 return\n    meta mark set meta mark ^ 0x4000\n    masquerade fully-random\n  }\n\
         \x20 chain reject-chain {\n    reject\n  }\n\
         \x20 chain services {\n    ip daddr . meta l4proto . th dport vmap @service-ips\n    fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports\n  }\n\
         \x20 chain nat-prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }\n\
         \x20 chain nat-output {\n    type nat hook output priority -100; policy accept;\n    jump services\n  }\n\
         \x20 chain nat-postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n    jump masquerading\n  }\n\
         \x20 chain filter-forward {\n    type filter hook forward priority -110; policy accept;\n    ct state new ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n  }\n\
         \x20 chain filter-output {\n    type filter hook output priority -110; policy accept;\n    ct state new ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n  }\n",
    );
    o.push_str(&chains);
    o.push_str("}\n");
    o
}

fn elements(e: &[String]) -> String {
    if e.is_empty() {
        String::new()
    } else {
        format!("    elements = {{\n      {}\n    }}\n", e.join(",\n      "))
    }
}

/// iptables-restore input (nat and filter tables).
pub fn iptables(spec: &TableSpec) -> String {
    let mut chains = vec![
        "KUBE-SERVICES".to_string(),
        "KUBE-NODEPORTS".into(),
        "KUBE-POSTROUTING".into(),
        "KUBE-MARK-MASQ".into(),
    ];
    let mut rules = Vec::new();
    let mut nodeport_rules = Vec::new();
    let mut reject = Vec::new();
    for (s, p) in ports(spec) {
        let pr = proto(p.proto);
        let id = format!("{}/{}/{}/{}", s.namespace, s.name, pr, p.name);
        let h = hash(&id);
        let svc = format!("KUBE-SVC-{h}");
        let eps = usable(p);
        if eps.is_empty() {
            for ip in &s.cluster_ips {
                reject.push(format!(
                    "-A KUBE-SERVICES -d {ip}/32 -p {pr} -m {pr} --dport {} -m comment --comment \"{id} has no endpoints\" -j REJECT",
                    p.port
                ));
            }
            continue;
        }
        chains.push(svc.clone());
        for ip in &s.cluster_ips {
            rules.push(format!(
                "-A KUBE-SERVICES -d {ip}/32 -p {pr} -m comment --comment \"{id} cluster IP\" -m {pr} --dport {} -j {svc}",
                p.port
            ));
        }
        if let Some(np) = p.node_port {
            let ext = format!("KUBE-EXT-{h}");
            chains.push(ext.clone());
            nodeport_rules.push(format!(
                "-A KUBE-NODEPORTS -p {pr} -m comment --comment \"{id}\" -m {pr} --dport {np} -j {ext}"
            ));
            if !s.external_local {
                rules.push(format!("-A {ext} -j KUBE-MARK-MASQ"));
            }
            rules.push(format!("-A {ext} -j {svc}"));
        }
        let n = eps.len();
        for (i, (ip, port)) in eps.iter().enumerate() {
            let sep = format!("KUBE-SEP-{}", hash(&format!("{id}/{ip}:{port}")));
            chains.push(sep.clone());
            if i + 1 < n {
                rules.push(format!(
                    "-A {svc} -m comment --comment \"{id} -> {ip}:{port}\" -m statistic --mode random --probability {:.10} -j {sep}",
                    1.0 / (n - i) as f64
                ));
            } else {
                rules.push(format!(
                    "-A {svc} -m comment --comment \"{id} -> {ip}:{port}\" -j {sep}"
                ));
            }
            rules.push(format!("-A {sep} -s {ip}/32 -j KUBE-MARK-MASQ"));
            rules.push(format!(
                "-A {sep} -p {pr} -m {pr} -j DNAT --to-destination {ip}:{port}"
            ));
        }
    }
    let mut o = String::from("*nat\n");
    for c in &chains {
        let _ = writeln!(o, ":{c} - [0:0]");
    }
    o.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
    );
    for r in rules.iter().chain(nodeport_rules.iter()) {
        o.push_str(r);
        o.push('\n');
    }
    o.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n");
    o.push_str("*filter\n:KUBE-SERVICES - [0:0]\n");
    o.push_str("-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    o.push_str("-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    for r in &reject {
        o.push_str(r);
        o.push('\n');
    }
    o.push_str("COMMIT\n");
    o
}

fn feed(ns: &str, program: &[&str], input: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program:?}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program:?} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Removes whatever `apply` installed in `ns` (both modes; idempotent).
pub fn remove(ns: &str) {
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "nft",
            "delete",
            "table",
            "ip",
            "kube-proxy",
        ])
        .output();
    // A fresh nat and filter table (the lab's node namespaces have no other rules).
    let _ = feed(ns, &["iptables-restore"], "*nat\nCOMMIT\n*filter\nCOMMIT\n");
}

/// Installs the rules for `spec` in `ns` in `mode` ("nftables" or "iptables"),
/// replacing earlier ones.
pub fn apply(ns: &str, mode: &str, spec: &TableSpec) -> anyhow::Result<()> {
    remove(ns);
    match mode {
        "nftables" => feed(ns, &["nft", "-f", "-"], &nftables(spec)),
        "iptables" => feed(ns, &["iptables-restore"], &iptables(spec)),
        other => bail!("unknown kernel mode {other} (nftables or iptables)"),
    }
}

/// Receive Packet Steering on every interface of `ns` to the CPUs in `mask`
/// ("0" turns it off).
pub fn set_rps(ns: &str, mask: &str) -> anyhow::Result<()> {
    let script = format!(
        "for f in /sys/class/net/*/queues/rx-*/rps_cpus; do echo {mask} > \"$f\" 2>/dev/null || true; done"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", &script])
        .output()?;
    if !out.status.success() {
        bail!(
            "setting RPS in {ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo_spec() -> TableSpec {
        let tmp = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (sub, pre) in [("configs/demo", "d"), ("configs/bench", "b")] {
            for e in std::fs::read_dir(root.join(sub)).unwrap() {
                let p = e.unwrap().path();
                std::fs::copy(
                    &p,
                    tmp.path().join(format!(
                        "{pre}-{}",
                        p.file_name().unwrap().to_string_lossy()
                    )),
                )
                .unwrap();
            }
        }
        spec_for(tmp.path(), "node-a").unwrap()
    }

    #[test]
    fn nftables_rules_follow_kube_proxys_layout() {
        let r = nftables(&demo_spec());
        assert!(r.starts_with("table ip kube-proxy {"));
        assert!(r.contains("198.18.96.10 . tcp . 80 : goto service-"), "{r}");
        assert!(
            r.contains("numgen random mod 3 vmap"),
            "three web endpoints"
        );
        assert!(r.contains("dnat to 198.19.1.10:8080"));
        assert!(r.contains("udp . 30090 : goto external-"), "NodePort");
        assert!(
            r.contains("198.18.96.12 . tcp . 80 : goto reject-chain"),
            "no endpoints: reject"
        );
        assert!(r.contains("masquerade fully-random"));
        assert_eq!(r.matches('{').count(), r.matches('}').count());
    }

    #[test]
    fn iptables_rules_follow_kube_proxys_layout() {
        let r = iptables(&demo_spec());
        assert!(r.starts_with("*nat\n:KUBE-SERVICES - [0:0]"));
        assert!(
            r.contains("-m statistic --mode random --probability 0.3333333333"),
            "{r}"
        );
        assert!(r.contains("-m statistic --mode random --probability 0.5000000000"));
        assert!(r.contains("-j DNAT --to-destination 198.19.2.10:9000"));
        assert!(r.contains("--dport 30090 -j KUBE-EXT-"));
        assert!(
            r.contains("-d 198.18.96.12/32 -p tcp -m tcp --dport 80") && r.contains("-j REJECT")
        );
        assert!(r.trim_end().ends_with("COMMIT"));
        assert_eq!(r.matches("COMMIT").count(), 2);
    }
}
