//! `nodeplane service-env` as a user runs it: the demo's Services as the
//! kubelet would put them in a pod's environment, both output formats, and a
//! broken manifest reported on stderr without losing the others.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_nodeplane");

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("service-env")
        .args(args)
        .env("NODEPLANE_LOG", "warn")
        .output()
        .expect("run nodeplane");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_demos_services_in_a_pods_environment() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/demo");
    let (ok, out, err) = run(&["--manifests", demo, "--namespace", "default"]);
    assert!(ok, "{err}");
    for line in [
        "WEB_SERVICE_HOST=198.18.96.10",
        "WEB_SERVICE_PORT=80",
        "WEB_SERVICE_PORT_HTTP=80",
        "WEB_PORT=tcp://198.18.96.10:80",
        "WEB_PORT_80_TCP_ADDR=198.18.96.10",
        "DNS_UDP_SERVICE_HOST=198.18.96.11",
        "DNS_UDP_PORT_53_UDP=udp://198.18.96.11:53",
        "DNS_UDP_PORT_53_UDP_PROTO=udp",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "{line} missing from:\n{out}"
        );
    }
    let mut sorted: Vec<&str> = out.lines().collect();
    sorted.sort_unstable();
    assert_eq!(sorted, out.lines().collect::<Vec<_>>(), "sorted by name");
    let (ok, out, _) = run(&["--manifests", demo, "-n", "elsewhere"]);
    assert!(ok);
    assert!(
        out.is_empty(),
        "no Service there, no kubernetes Service: {out}"
    );
    let (ok, out, _) = run(&["--manifests", demo, "--format", "shell"]);
    assert!(ok);
    assert!(
        out.lines()
            .any(|l| l == "export WEB_SERVICE_HOST='198.18.96.10'"),
        "{out}"
    );
}

#[test]
fn a_broken_manifest_is_reported_and_the_rest_still_count() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("good.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: kubernetes, namespace: default}\nspec:\n  clusterIP: 198.18.96.1\n  ports: [{name: https, port: 443}]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: team}\nspec:\n  ports: [{port: notanumber}]\n",
    )
    .unwrap();
    let (ok, out, err) = run(&["--manifests", dir.path().to_str().unwrap(), "-n", "team"]);
    assert!(ok);
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(out.contains("KUBERNETES_SERVICE_HOST=198.18.96.1"), "{out}");
    let (ok, _, err) = run(&["--manifests", "/nonexistent/dir"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/dir"), "{err}");
}
