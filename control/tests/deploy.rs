//! The deployment manifests in `configs/deploy/` parse into k8s-openapi types and
//! agree with each other and with the agent: the ConfigMap's config is a valid
//! agent config, its CNI conflist a valid plugin config, the probes hit the
//! status endpoint's port and routes, and the ClusterRole grants what the
//! API-server source uses.

use std::path::{Path, PathBuf};

use control::cni::NetConf;
use control::config::{resolve, FileConfig, RunArgs, Source};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/deploy")
}

/// Every document of every file, as (kind, value).
fn documents() -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "manifests missing: {files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple_with_options(&text, control::manifests::yaml_options())
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for v in docs {
            let kind = v["kind"].as_str().unwrap_or_default().to_string();
            assert!(!kind.is_empty(), "{}: a document without kind", f.display());
            out.push((kind, v));
        }
    }
    out
}

fn one<T: serde::de::DeserializeOwned>(docs: &[(String, serde_json::Value)], kind: &str) -> T {
    let found: Vec<_> = docs.iter().filter(|(k, _)| k == kind).collect();
    assert_eq!(found.len(), 1, "want exactly one {kind}");
    serde_json::from_value(found[0].1.clone()).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

#[test]
fn every_document_is_a_known_kind_and_parses() {
    let docs = documents();
    let mut kinds: Vec<&str> = docs.iter().map(|(k, _)| k.as_str()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "ServiceAccount"
        ]
    );
    let _: ServiceAccount = one(&docs, "ServiceAccount");
    let _: ClusterRole = one(&docs, "ClusterRole");
    let _: ClusterRoleBinding = one(&docs, "ClusterRoleBinding");
    let _: ConfigMap = one(&docs, "ConfigMap");
    let _: DaemonSet = one(&docs, "DaemonSet");
}

#[test]
fn the_configmap_holds_a_valid_agent_config_and_cni_config() {
    let docs = documents();
    let cm: ConfigMap = one(&docs, "ConfigMap");
    let data = cm.data.expect("data");
    let file: FileConfig = serde_saphyr::from_str_with_options(
        &data["config.yaml"],
        control::manifests::yaml_options(),
    )
    .expect("agent config");
    assert_eq!(file.kubeconfig.as_deref(), Some("in-cluster"));
    // As the DaemonSet runs it: --config plus NODE_NAME from the downward API.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, &data["config.yaml"]).unwrap();
    let settings = resolve(&RunArgs {
        config: Some(path),
        node_name: Some("worker-1".into()),
        ..RunArgs::default()
    })
    .expect("the agent accepts the ConfigMap's config");
    assert_eq!(settings.source, Source::ApiServer(None));
    assert_eq!(settings.status_addr.port(), 10256);
    assert!(
        settings.status_addr.ip().is_unspecified(),
        "kubelet probes a hostNetwork pod on the node IP"
    );
    assert!(!settings.service_cidrs.is_empty());

    // The CNI conflist: the plugin entry parses as nodeplane-cni's config and
    // registers pods where the agent looks for them.
    let conflist: serde_json::Value =
        serde_json::from_str(&data["10-nodeplane.conflist"]).expect("conflist is JSON");
    assert_eq!(conflist["cniVersion"], "1.0.0");
    let plugin = &conflist["plugins"][0];
    assert_eq!(plugin["type"], "nodeplane-cni");
    let mut single = plugin.clone();
    single["cniVersion"] = conflist["cniVersion"].clone();
    single["name"] = conflist["name"].clone();
    let conf = NetConf::parse(single.to_string().as_bytes()).expect("plugin config");
    assert_eq!(conf.state_dir(), settings.state_dir);
    assert_eq!(
        single["ipam"]["ranges"][0][0]["subnet"],
        control::cni::USE_POD_CIDR
    );
}

#[test]
fn the_daemonset_runs_the_agent_as_a_node_dataplane() {
    let docs = documents();
    let ds: DaemonSet = one(&docs, "DaemonSet");
    let sa: ServiceAccount = one(&docs, "ServiceAccount");
    let cm: ConfigMap = one(&docs, "ConfigMap");
    let spec = ds.spec;
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert_eq!(ds.metadata.namespace, sa.metadata.namespace);
    assert_eq!(ds.metadata.namespace, cm.metadata.namespace);
    let labels = spec.template.metadata.and_then(|m| m.labels).unwrap();
    for (k, v) in spec.selector.match_labels.unwrap() {
        assert_eq!(labels.get(&k), Some(&v), "selector matches the template");
    }

    let c = pod
        .containers
        .iter()
        .find(|c| c.name == "nodeplane")
        .expect("agent container");
    let cmd = c.command.clone().unwrap();
    assert_eq!(&cmd[..2], ["nodeplane", "run"]);
    let config_arg = cmd.iter().position(|a| a == "--config").unwrap() + 1;
    let mounts = c.volume_mounts.clone().unwrap();
    let config_mount = mounts.iter().find(|m| m.name == "config").unwrap();
    assert!(cmd[config_arg].starts_with(&config_mount.mount_path));
    let env = c.env.clone().unwrap();
    let node_name = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    let field = node_name
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .unwrap();
    assert_eq!(field.field_path, "spec.nodeName");

    let caps = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap();
    for need in ["NET_ADMIN", "NET_RAW", "BPF", "PERFMON", "IPC_LOCK"] {
        assert!(caps.iter().any(|c| c == need), "capability {need}");
    }
    for (probe, path) in [
        (c.liveness_probe.as_ref(), "/livez"),
        (c.readiness_probe.as_ref(), "/readyz"),
    ] {
        let get = probe.and_then(|p| p.http_get.as_ref()).expect("http probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(10256)
        );
    }

    // Volumes: the config from the ConfigMap, bpffs and the pod state directory
    // from the host, and the CNI directories for the installer.
    let volumes = pod.volumes.unwrap();
    let host_path = |name: &str| {
        volumes
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.clone())
    };
    let cfg_vol = volumes.iter().find(|v| v.name == "config").unwrap();
    assert_eq!(
        cfg_vol.config_map.as_ref().map(|c| c.name.clone()),
        cm.metadata.name
    );
    let bpffs = mounts
        .iter()
        .find(|m| m.mount_path == "/sys/fs/bpf")
        .unwrap();
    assert_eq!(host_path(&bpffs.name).as_deref(), Some("/sys/fs/bpf"));
    let run = mounts
        .iter()
        .find(|m| m.mount_path == "/run/nodeplane")
        .unwrap();
    assert_eq!(host_path(&run.name).as_deref(), Some("/run/nodeplane"));
    let init = pod.init_containers.unwrap();
    let installer = init.iter().find(|c| c.name == "install-cni").unwrap();
    let script = installer.command.clone().unwrap().join(" ");
    assert!(script.contains("/host/opt/cni/bin/nodeplane-cni"));
    assert!(script.contains("/host/etc/cni/net.d/10-nodeplane.conflist"));
    for (mount, host) in [
        ("/host/opt/cni/bin", "/opt/cni/bin"),
        ("/host/etc/cni/net.d", "/etc/cni/net.d"),
    ] {
        let m = installer
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == mount)
            .unwrap();
        assert_eq!(host_path(&m.name).as_deref(), Some(host));
    }
}

#[test]
fn the_cluster_role_grants_what_the_agent_uses_and_is_bound() {
    let docs = documents();
    let role: ClusterRole = one(&docs, "ClusterRole");
    let binding: ClusterRoleBinding = one(&docs, "ClusterRoleBinding");
    let sa: ServiceAccount = one(&docs, "ServiceAccount");
    let rules = role.rules.unwrap();
    let allows = |group: &str, resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r.api_groups
                .as_ref()
                .is_some_and(|g| g.iter().any(|x| x == group))
                && r.resources
                    .as_ref()
                    .is_some_and(|rs| rs.iter().any(|x| x == resource))
                && r.verbs.iter().any(|v| v == verb)
        })
    };
    for (group, resource) in [
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("", "nodes"),
        ("", "pods"),
    ] {
        for verb in ["list", "watch"] {
            assert!(allows(group, resource, verb), "{verb} {resource}");
        }
    }
    assert!(
        allows("", "nodes", "patch"),
        "publishing the VTEP annotations"
    );
    assert!(!allows("", "services", "patch"), "read-only on Services");
    assert!(!allows("", "secrets", "get"), "no secrets");
    // Nothing beyond what the agent uses (the lab test
    // lab_real_api_server_every_rbac_permission_is_needed takes each one away
    // on a real API server).
    let granted: usize = rules
        .iter()
        .map(|r| r.resources.as_ref().map_or(0, Vec::len) * r.verbs.len())
        .sum();
    assert_eq!(
        granted,
        4 * 2 + 1,
        "list and watch on 4 resources, patch on nodes"
    );
    assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(subject.name.clone()), sa.metadata.name);
    assert_eq!(subject.namespace, sa.metadata.namespace);
}
