//! Cluster DNS answered by the dataplane, with real resolvers in the lab's
//! pods (root): `dig` (dnsutils), glibc's `getent hosts` through a resolv.conf
//! with the cluster search path and `ndots:5` (as the kubelet writes it), and
//! dnspython. The kube-dns Service (kube-system, 198.18.96.53) has one
//! endpoint, an upstream DNS server on pod k1 (tests/lab/dnsupstream.py, the
//! role CoreDNS's `forward` plays): the cluster's names are answered by the
//! workers, the rest go to it through ordinary Service NAT. The lab builds and
//! removes its own namespaces and resolv.conf files; every query is bounded.

mod lab_support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use lab_support::*;

const DNS_IP: &str = "198.18.96.53";

/// The Debian python with dnspython (the lab's pods may run another one).
const PY: &str = "/usr/bin/python3";

fn dig(lab: &Lab, pod: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns(pod),
            "dig",
            &format!("@{DNS_IP}"),
            "+time=2",
            "+tries=2",
        ])
        .args(args)
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Upstream(Child);

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn lab_cluster_dns_answered_by_the_dataplane() {
    let Some(mut lab) = Lab::up("d") else { return };
    let dir = PathBuf::from(lab.var("NP_LAB_DIR")).join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(repo().join("configs/demo")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let k1 = lab.ip("k1");
    std::fs::write(
        dir.join("dns.yaml"),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: kube-dns, namespace: kube-system}}\n\
             spec:\n  clusterIP: {DNS_IP}\n  ports: [{{name: dns, protocol: UDP, port: 53, targetPort: 5300}}]\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: kube-dns-1, namespace: kube-system, labels: {{kubernetes.io/service-name: kube-dns}}}}\n\
             addressType: IPv4\nports: [{{name: dns, protocol: UDP, port: 5300}}]\n\
             endpoints: [{{addresses: [\"{k1}\"], conditions: {{ready: true}}, nodeName: node-k}}]\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: backends, namespace: default}}\n\
             spec:\n  clusterIP: None\n  selector: {{app: backend}}\n  ports: [{{name: http, protocol: TCP, port: 80, targetPort: http}}]\n"
        ),
    )
    .unwrap();
    let pid_file = PathBuf::from(lab.var("NP_LAB_DIR")).join("dnsupstream.pid");
    let upstream = Upstream(
        Command::new("ip")
            .args(["netns", "exec", &lab.ns("k1"), PY])
            .arg(repo().join("tests/lab/dnsupstream.py"))
            .args(["--port", "5300", "--seconds", "120", "--pid-file"])
            .arg(&pid_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the upstream DNS server"),
    );
    eventually(5, || {
        pid_file
            .exists()
            .then_some(())
            .ok_or_else(|| "upstream not listening".to_string())
    })
    .unwrap();
    lab.start_agent_with_manifests("a", &dir);
    lab.start_agent_with_manifests("b", &dir);

    // dig: A, SRV, PTR, NXDOMAIN, and a name that is not the cluster's.
    let a = eventually(5, || {
        let out = dig(&lab, "a2", &["+short", "web.default.svc.cluster.local"]);
        (out.trim() == "198.18.96.10")
            .then_some(out.clone())
            .ok_or(out)
    });
    a.unwrap_or_else(|e| panic!("dig A: {e}\n{}", lab.agent_log("a")));
    let srv = dig(
        &lab,
        "a2",
        &["+short", "SRV", "_http._tcp.web.default.svc.cluster.local"],
    );
    assert_eq!(srv.trim(), "0 100 80 web.default.svc.cluster.local.");
    let ptr = dig(&lab, "a2", &["+short", "-x", "198.18.96.10"]);
    assert_eq!(ptr.trim(), "web.default.svc.cluster.local.");
    let nx = dig(&lab, "a2", &["nothing.default.svc.cluster.local"]);
    assert!(
        nx.contains("status: NXDOMAIN") && nx.contains("SOA"),
        "{nx}"
    );
    assert!(nx.contains("flags: qr aa rd ra"), "authoritative: {nx}");
    let fwd = dig(&lab, "a2", &["+short", "www.example.org"]);
    assert_eq!(fwd.trim(), "198.18.222.1", "forwarded to the upstream");
    // A headless Service: its ready endpoints (from its selector), SRV to
    // each endpoint's name.
    let mut ips: Vec<String> = dig(
        &lab,
        "a2",
        &["+short", "backends.default.svc.cluster.local"],
    )
    .lines()
    .map(str::to_string)
    .collect();
    ips.sort();
    assert_eq!(ips, ["198.19.1.10", "198.19.2.10", "198.19.3.10"]);
    let mut srv: Vec<String> = dig(
        &lab,
        "a2",
        &[
            "+short",
            "SRV",
            "_http._tcp.backends.default.svc.cluster.local",
        ],
    )
    .lines()
    .map(str::to_string)
    .collect();
    srv.sort();
    assert_eq!(
        srv,
        [
            "0 100 8080 198-19-1-10.backends.default.svc.cluster.local.",
            "0 100 8080 198-19-2-10.backends.default.svc.cluster.local.",
            "0 100 8080 198-19-3-10.backends.default.svc.cluster.local."
        ]
    );
    let one = dig(
        &lab,
        "a2",
        &["+short", "198-19-3-10.backends.default.svc.cluster.local"],
    );
    assert_eq!(one.trim(), "198.19.3.10");
    // From node-b's pod too (its own worker answers).
    let b = dig(&lab, "b2", &["+short", "dns-udp.default.svc.cluster.local"]);
    assert_eq!(b.trim(), "198.18.96.11");

    // glibc through the kubelet's resolv.conf: the short name, via the
    // search path (ndots:5 tries the search forms first: NXDOMAIN, then it).
    let conf_dir = PathBuf::from("/etc/netns").join(lab.ns("a2"));
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::write(
        conf_dir.join("resolv.conf"),
        format!(
            "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver {DNS_IP}\noptions ndots:5 timeout:2 attempts:2\n"
        ),
    )
    .unwrap();
    let getent = |name: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.ns("a2"), "getent", "hosts", name])
            .output()
            .expect("getent");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let short = getent("web");
    let dotted = getent("dns-udp.default");
    let external = getent("www.example.org");
    // dnspython with the same resolv.conf (ip netns exec bind-mounts it).
    let py = Command::new("ip")
        .args(["netns", "exec", &lab.ns("a2"), PY, "-c"])
        .arg(
            "import dns.resolver\n\
             r = dns.resolver.Resolver()\n\
             r.lifetime = 4\n\
             print(r.resolve('web', 'A', search=True)[0].address)\n\
             print(r.resolve('_http._tcp.web.default.svc.cluster.local', 'SRV')[0].port)\n\
             try:\n    r.resolve('nothing.default.svc.cluster.local', 'A')\nexcept dns.resolver.NXDOMAIN:\n    print('nxdomain')\n",
        )
        .output()
        .expect("dnspython");
    let _ = std::fs::remove_dir_all(&conf_dir);
    assert_eq!(short, "198.18.96.10    web.default.svc.cluster.local");
    assert_eq!(dotted, "198.18.96.11    dns-udp.default.svc.cluster.local");
    assert_eq!(external, "198.18.222.1    www.example.org");
    assert_eq!(
        String::from_utf8_lossy(&py.stdout).trim(),
        "198.18.96.10\n80\nnxdomain",
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let answered = lab.counter("a", "dns_answered");
    let nx = lab.counter("a", "dns_nxdomain");
    let forwarded = lab.counter("a", "dns_forwarded");
    assert!(answered >= 6, "answered {answered}");
    assert!(nx >= 3, "nxdomain {nx} (dig's, and the search forms)");
    assert!(forwarded >= 2, "forwarded {forwarded}");
    drop(upstream);
}
