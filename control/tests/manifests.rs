//! The manifest-directory source: multi-document files, errors that name the
//! file and document while the rest still applies, last good objects of a
//! broken file, and live pick-up of added, edited and removed files through the
//! whole control loop (source → store → reducer → published tables).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control::manifests::{self, parse_manifest, ManifestDir, ManifestError};
use control::publish::{run_control, SourceConfig};
use control::reducer::{LocalConfig, LocalFacts};
use control::state::AgentState;
use control::store::{Kind, Object, StoreHandle};
use shared::snapshot::PodRoute;

const MULTI: &str = r#"# a comment before the first document
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 198.19.128.10, ports: [{name: http, port: 80}]}
---
---
# only a comment
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.244.1.5]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec: {selector: {matchLabels: {app: web}}, template: {metadata: {labels: {app: web}}, spec: {containers: []}}}
---
apiVersion: v1
kind: Endpoints
metadata: {name: web}
subsets: [{addresses: [{ip: 10.244.9.9}], ports: [{port: 9999}]}]
---
apiVersion: v1
kind: Node
metadata: {name: node-b, namespace: ignored}
spec: {podCIDR: 10.244.2.0/24}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: shop}
spec: {containers: [{name: c, image: i}]}
"#;

#[test]
fn multi_document_file_keeps_the_four_kinds_and_skips_the_rest() {
    let objs = parse_manifest(Path::new("/m/all.yaml"), MULTI).unwrap();
    let got: Vec<_> = objs
        .iter()
        .map(|o| (o.kind(), o.key().namespace, o.key().name))
        .collect();
    assert_eq!(
        got,
        vec![
            (Kind::Service, "default".into(), "web".into()),
            (Kind::EndpointSlice, "shop".into(), "web-1".into()),
            (Kind::Node, String::new(), "node-b".into()),
            (Kind::Pod, "shop".into(), "p".into()),
        ]
    );
    assert!(parse_manifest(Path::new("/m/empty.yaml"), "")
        .unwrap()
        .is_empty());
    assert!(
        parse_manifest(Path::new("/m/empty.yaml"), "---\n---\n# x\n")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_list_document_is_read_item_by_item() {
    let text = "
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Service, metadata: {name: a}, spec: {clusterIP: 198.19.128.1, ports: [{port: 80}]}}
- {apiVersion: v1, kind: ConfigMap, metadata: {name: c}}
- {apiVersion: v1, kind: Node, metadata: {name: n}}
";
    let objs = parse_manifest(Path::new("/m/list.yaml"), text).unwrap();
    assert_eq!(objs.len(), 2);
    assert!(
        matches!(&objs[0], Object::Service(s) if s.metadata.namespace.as_deref() == Some("default"))
    );
}

fn doc_error(text: &str) -> (usize, String) {
    match parse_manifest(Path::new("/etc/np/bad.yaml"), text) {
        Err(e @ ManifestError::Document { .. }) => {
            let ManifestError::Document { index, .. } = &e else {
                unreachable!()
            };
            (*index, e.to_string())
        }
        other => panic!("expected a document error, got {other:?}"),
    }
}

#[test]
fn malformed_documents_are_named_by_file_and_index() {
    let good = "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\nspec: {ports: [{port: 80}]}\n";
    // A type error in the second document.
    let (i, msg) = doc_error(&format!(
        "{good}---\napiVersion: v1\nkind: Service\nmetadata: {{name: bad}}\nspec:\n  ports:\n  - port: eighty\n"
    ));
    assert_eq!(i, 2);
    assert!(
        msg.starts_with("/etc/np/bad.yaml: document 2: Service: "),
        "{msg}"
    );
    assert!(
        msg.contains("invalid") && msg.contains("port"),
        "serde's reason is kept: {msg}"
    );
    // YAML syntax error in the third document.
    let (i, msg) = doc_error(&format!(
        "{good}---\n{good}---\nkind: Service\nmetadata: {{name: [unclosed\n"
    ));
    assert_eq!(i, 3, "{msg}");
    // Missing kind; not a mapping; no name; wrong apiVersion for the kind.
    assert!(doc_error("metadata: {name: x}\n")
        .1
        .contains("document 1: no 'kind'"));
    assert!(doc_error(&format!("{good}---\n- a\n- b\n"))
        .1
        .contains("document 2: not a Kubernetes object"));
    assert!(doc_error("apiVersion: v1\nkind: Node\nmetadata: {}\n")
        .1
        .contains("Node without metadata.name"));
    assert!(
        doc_error("apiVersion: v2\nkind: Service\nmetadata: {name: x}\n")
            .1
            .contains("document 1: Service")
    );
    // Required fields missing.
    assert!(doc_error("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: x}\nendpoints: []\n")
        .1
        .contains("document 1: EndpointSlice without addressType"));
    assert!(doc_error("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 80}, {name: b}]}\n")
        .1
        .contains("spec.ports[1].port"));
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn svc(name: &str, ip: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n")
}

fn names(objs: &[Object]) -> Vec<String> {
    objs.iter().map(|o| o.key().name).collect()
}

#[test]
fn a_bad_file_is_reported_and_the_others_still_apply() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "a.yaml", &svc("a", "198.19.128.1"));
    write(
        tmp.path(),
        "b.yml",
        &format!(
            "{}---\nkind: Service\nmetadata: {{name: [\n",
            svc("b", "198.19.128.2")
        ),
    );
    write(tmp.path(), "c.yaml.bak", &svc("c", "198.19.128.3"));
    write(tmp.path(), ".hidden.yaml", &svc("h", "198.19.128.4"));
    std::fs::create_dir(tmp.path().join("sub.yaml")).unwrap();
    write(
        &tmp.path().join("sub.yaml"),
        "x.yaml",
        &svc("x", "198.19.128.5"),
    );

    let store = StoreHandle::new();
    let dir = manifests::load(tmp.path(), &store).unwrap();
    let src = manifests::source_name(tmp.path());
    let services: Vec<String> = store.read(|s| {
        s.services()
            .iter()
            .map(|x| x.metadata.name.clone().unwrap())
            .collect()
    });
    assert_eq!(
        services,
        vec!["a"],
        "only a.yaml applies (b.yml is broken, the others are not manifests)"
    );
    assert!(store.read(|s| s.kind_synced(Kind::Service) && s.kind_synced(Kind::Node)));
    let st = store
        .read(|s| s.source_statuses())
        .into_iter()
        .find(|s| s.name == src)
        .unwrap();
    assert_eq!(st.objects, 1);
    assert_eq!(st.errors, 1);
    let err = st.last_error.unwrap();
    assert!(err.contains("b.yml: document 2:"), "{err}");
    assert!(st.last_sync.is_some());
    assert_eq!(dir.errors().len(), 1);
}

/// A file written in place is truncated first: a scan that reads it between
/// the truncation and the write (a timer rescan, not only an inotify event)
/// must not take its objects away. Once the file has stayed empty for the
/// settle time, that is its content and its objects go.
#[test]
fn a_file_read_while_being_rewritten_keeps_its_objects_until_it_settles() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "a.yaml", &svc("a1", "198.19.128.1"));
    write(tmp.path(), "b.yaml", &svc("b", "198.19.128.3"));
    let mut dir = ManifestDir::new(tmp.path()).with_settle(manifests::SETTLE);
    assert!(
        dir.scan(true).unwrap().changed,
        "the first load reads at once"
    );
    assert_eq!(names(&dir.objects()), vec!["a1", "b"]);

    // Truncated, as a writer does before writing: read at once, it is left alone.
    std::fs::File::create(tmp.path().join("a.yaml")).unwrap();
    let r = dir.scan(true).unwrap();
    assert!(r.unsettled && !r.changed, "{r:?}");
    assert_eq!(names(&dir.objects()), vec!["a1", "b"]);

    // The write completes: once settled, the new content applies.
    write(tmp.path(), "a.yaml", &svc("a2", "198.19.128.2"));
    std::thread::sleep(manifests::SETTLE * 2);
    let r = dir.scan(true).unwrap();
    assert!(r.changed && !r.unsettled, "{r:?}");
    assert_eq!(names(&dir.objects()), vec!["a2", "b"]);

    // Emptied: a writer stalled after truncating (a loaded node) leaves it
    // empty for longer than SETTLE, so an emptied file waits EMPTY_SETTLE.
    std::fs::File::create(tmp.path().join("a.yaml")).unwrap();
    assert!(dir.scan(true).unwrap().unsettled);
    std::thread::sleep(manifests::SETTLE * 2);
    let r = dir.scan(true).unwrap();
    assert!(r.unsettled && !r.changed, "{r:?}");
    assert_eq!(names(&dir.objects()), vec!["a2", "b"]);
    // Emptied for good: after EMPTY_SETTLE its objects go.
    std::thread::sleep(manifests::EMPTY_SETTLE);
    let r = dir.scan(false).unwrap();
    assert!(r.changed && !r.unsettled, "{r:?}");
    assert_eq!(names(&dir.objects()), vec!["b"]);
    // A new empty file has no objects to lose: it waits SETTLE only.
    write(tmp.path(), "c.yaml", "");
    std::thread::sleep(manifests::SETTLE * 2);
    let r = dir.scan(false).unwrap();
    assert!(!r.unsettled, "{r:?}");
}

#[test]
fn an_edited_to_broken_file_keeps_its_last_good_objects() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "a.yaml",
        &format!(
            "{}---\n{}",
            svc("a1", "198.19.128.1"),
            svc("a2", "198.19.128.2")
        ),
    );
    write(tmp.path(), "b.yaml", &svc("b", "198.19.128.3"));
    let mut dir = ManifestDir::new(tmp.path());
    let r = dir.scan(true).unwrap();
    assert!(r.changed && r.new_errors.is_empty());
    assert_eq!(names(&dir.objects()), vec!["a1", "a2", "b"]);

    // a.yaml breaks; b.yaml changes at the same time.
    write(tmp.path(), "a.yaml", &format!("{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: a2}}\nspec: {{ports: [{{port: x}}]}}\n", svc("a1", "198.19.128.9")));
    write(tmp.path(), "b.yaml", &svc("b2", "198.19.128.4"));
    let r = dir.scan(true).unwrap();
    assert!(r.changed);
    assert_eq!(r.new_errors.len(), 1);
    assert!(r.new_errors[0].to_string().contains("a.yaml: document 2:"));
    let objs = dir.objects();
    assert_eq!(
        names(&objs),
        vec!["a1", "a2", "b2"],
        "a.yaml's last good objects stay, b.yaml's edit applies"
    );
    let a1 = objs.iter().find_map(|o| match o {
        Object::Service(s) if s.metadata.name.as_deref() == Some("a1") => Some(s),
        _ => None,
    });
    assert_eq!(
        a1.unwrap().spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some("198.19.128.1"),
        "the half-edited broken file is not partially applied"
    );
    // Rescanning the still-broken file reports nothing new.
    let r = dir.scan(true).unwrap();
    assert!(!r.changed && r.new_errors.is_empty());
    assert_eq!(dir.errors().len(), 1);

    // Fixed: the new content applies and the error clears.
    write(tmp.path(), "a.yaml", &svc("a3", "198.19.128.5"));
    let r = dir.scan(true).unwrap();
    assert!(r.changed && r.new_errors.is_empty());
    assert_eq!(names(&dir.objects()), vec!["a3", "b2"]);
    assert!(dir.errors().is_empty());

    // Removed: its objects go.
    std::fs::remove_file(tmp.path().join("a.yaml")).unwrap();
    assert!(dir.scan(false).unwrap().changed);
    assert_eq!(names(&dir.objects()), vec!["b2"]);
}

#[test]
fn an_edit_that_keeps_size_and_mtime_is_caught_by_the_content_check() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("a.yaml");
    write(tmp.path(), "a.yaml", &svc("aaa", "198.19.128.1"));
    let mut dir = ManifestDir::new(tmp.path());
    dir.scan(true).unwrap();
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    write(tmp.path(), "a.yaml", &svc("bbb", "198.19.128.1"));
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert!(
        !dir.scan(false).unwrap().changed,
        "the stat-only rescan cannot see it"
    );
    assert!(dir.scan(true).unwrap().changed, "the content check does");
    assert_eq!(names(&dir.objects()), vec!["bbb"]);
}

#[test]
fn a_missing_directory_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let err = manifests::load(&missing, &StoreHandle::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
    write(tmp.path(), "file.yaml", "");
    let err = manifests::load(&tmp.path().join("file.yaml"), &StoreHandle::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a directory"), "{err}");
}

fn cfg() -> LocalConfig {
    LocalConfig {
        node_name: "node-a".into(),
        uplink_ip: Some("198.18.0.1".parse().unwrap()),
        ..LocalConfig::default()
    }
}

/// Polls `cond` every 50 ms for up to 3 s; returns how long it took.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        if cond() {
            return t0.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not seen within 3 s");
}

fn published_services(state: &AgentState) -> Vec<String> {
    state
        .tables
        .load()
        .spec
        .services
        .iter()
        .map(|s| s.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_changes_reach_the_published_tables_within_a_second() {
    let tmp = tempfile::tempdir().unwrap();
    let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [10.244.1.5]}]\n";
    write(
        tmp.path(),
        "web.yaml",
        &format!("{}---\n{slice}", svc("web", "198.19.128.10")),
    );
    let state = AgentState::new("node-a");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let pods: Arc<Mutex<Vec<PodRoute>>> = Arc::default();
    let facts_pods = pods.clone();
    let task = tokio::spawn(run_control(
        SourceConfig::Manifests(tmp.path().to_path_buf()),
        cfg(),
        Box::new(move || LocalFacts {
            pods: facts_pods.lock().unwrap().clone(),
            ..LocalFacts::default()
        }),
        state.clone(),
        stop_rx,
    ));

    wait_for("first sync", || state.first_sync_done()).await;
    assert_eq!(published_services(&state), vec!["web"]);
    let g0 = state.tables.load().generation;
    assert!(g0 >= 1);
    let eps = &state.tables.load().spec.services[0].ports[0].endpoints;
    assert_eq!(eps[0].port, 8080);
    let src = state.sources.lock().unwrap().clone();
    assert_eq!(src.len(), 1);
    assert!(src[0].name.starts_with("manifests:"));
    assert_eq!(src[0].objects, 2);

    // A pod registered on this node (a node-local fact) is routed shortly after.
    pods.lock().unwrap().push(PodRoute {
        ip: "10.244.1.5".parse().unwrap(),
        mac: [2, 0, 0, 0, 2, 5],
        host_ifindex: 55,
        host_mac: [2, 0, 0, 0, 3, 5],
        name: "shop/web-1".into(),
    });
    let t = wait_for("pod fact", || state.tables.load().local_pod_count() == 1).await;
    assert!(t < Duration::from_secs(1), "pod fact took {t:?}");

    // Added.
    write(tmp.path(), "db.yml", &svc("db", "198.19.128.11"));
    let t = wait_for("added file", || published_services(&state) == ["db", "web"]).await;
    assert!(t < Duration::from_secs(1), "added file took {t:?}");

    // Edited: the service gets a second cluster IP port.
    write(tmp.path(), "db.yml", "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec: {clusterIP: 198.19.128.11, ports: [{port: 5432}]}\n");
    let t = wait_for("edited file", || {
        let snap = state.tables.load();
        snap.spec
            .services
            .iter()
            .any(|s| s.name == "db" && s.ports[0].port == 5432)
    })
    .await;
    assert!(t < Duration::from_secs(1), "edited file took {t:?}");

    // Broken: the last good objects stay, the error shows in the source status.
    let g_before = state.tables.load().generation;
    write(
        tmp.path(),
        "db.yml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: db\n",
    );
    wait_for("error reported", || {
        state.sources.lock().unwrap()[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("db.yml: document 1"))
    })
    .await;
    assert_eq!(published_services(&state), vec!["db", "web"]);
    assert_eq!(
        state.tables.load().generation,
        g_before,
        "a broken edit publishes nothing"
    );

    // Removed.
    std::fs::remove_file(tmp.path().join("db.yml")).unwrap();
    let t = wait_for("removed file", || published_services(&state) == ["web"]).await;
    assert!(t < Duration::from_secs(1), "removed file took {t:?}");
    assert!(state.sources.lock().unwrap()[0].last_error.is_none());

    stop_tx.send(true).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
    assert!(r.is_ok());
}

#[tokio::test]
async fn run_control_fails_clearly_on_a_missing_manifest_directory() {
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let r = run_control(
        SourceConfig::Manifests("/nonexistent/nodeplane-manifests".into()),
        cfg(),
        Box::new(LocalFacts::default),
        AgentState::new("node-a"),
        rx,
    )
    .await;
    let msg = format!("{:#}", r.unwrap_err());
    assert!(msg.contains("/nonexistent/nodeplane-manifests"), "{msg}");
}

/// The benchmark's Services (configs/bench/) parse and reduce next to the
/// demo's: one UDP frontend per scenario, each with its one backend, and the
/// NodePort on the node's address.
#[test]
fn the_benchmark_manifests_reduce_to_their_scenarios() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (sub, prefix) in [("configs/demo", "demo"), ("configs/bench", "bench")] {
        for e in std::fs::read_dir(root.join(sub)).unwrap() {
            let p = e.unwrap().path();
            let name = format!("{prefix}-{}", p.file_name().unwrap().to_string_lossy());
            std::fs::copy(&p, tmp.path().join(name)).unwrap();
        }
    }
    let store = StoreHandle::new();
    let dir = manifests::load(tmp.path(), &store).unwrap();
    assert!(dir.errors().is_empty(), "{:?}", dir.errors());
    let spec = store.read(|s| {
        control::reducer::reduce(
            s,
            &LocalConfig {
                node_name: "node-a".into(),
                uplink_ip: Some("198.18.0.2".parse().unwrap()),
                ..LocalConfig::default()
            },
            &LocalFacts::default(),
        )
    });
    let find = |name: &str| {
        spec.services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    for (name, ip, port, backend, node_port) in [
        ("bench-remote", "198.18.96.20", 9000, "198.19.2.10", None),
        ("bench-local", "198.18.96.21", 9000, "198.19.1.10", None),
        (
            "bench-nodeport",
            "198.18.96.22",
            9000,
            "198.19.1.10",
            Some(30090),
        ),
        ("bench-sockperf", "198.18.96.23", 11111, "198.19.1.10", None),
    ] {
        let s = find(name);
        assert_eq!(
            s.cluster_ips,
            vec![ip.parse::<std::net::Ipv4Addr>().unwrap()]
        );
        let p = &s.ports[0];
        assert_eq!((p.port, p.proto), (port, shared::L4Proto::Udp));
        assert_eq!(p.node_port, node_port);
        assert_eq!(p.endpoints.len(), 1);
        assert_eq!(p.endpoints[0].ip.to_string(), backend);
    }
    assert_eq!(spec.services.len(), 7, "3 demo + 4 bench Services");
}

#[test]
fn errors_give_the_field_path_and_the_line_and_column_in_the_file() {
    let good = "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\nspec: {ports: [{port: 80}]}\n";
    // A type error in the second document: line 11 of the file, not of the document.
    let (_, msg) = doc_error(&format!(
        "{good}---\napiVersion: v1\nkind: Service\nmetadata: {{name: bad}}\nspec:\n  ports:\n  - port: eighty\n"
    ));
    assert_eq!(
        msg,
        "/etc/np/bad.yaml: document 2: Service: spec.ports[0].port: invalid i32 at line 11, column 11"
    );
    // A syntax error in the third document, after an empty one.
    let (i, msg) = doc_error(&format!("{good}---\n---\nkind: Service\nspec: [1\n"));
    assert_eq!(i, 3, "{msg}");
    assert!(msg.contains("line 8, column 7"), "{msg}");
    // A List item: its index, kind and field path.
    let (_, msg) = doc_error(
        "kind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: a}, spec: {ports: [{port: x}]}}\n",
    );
    assert!(
        msg.contains("items[0] (Service): spec.ports[0].port: invalid type"),
        "{msg}"
    );
}

#[test]
fn plain_scalars_follow_the_yaml_1_2_core_schema() {
    // `n`, `no`, `on` are names here, not booleans (YAML 1.1 would make them so).
    let text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Node, metadata: {name: n}}\n- {apiVersion: v1, kind: Node, metadata: {name: on}}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: no}\n";
    let objs = parse_manifest(Path::new("/m/nodes.yaml"), text).unwrap();
    let names: Vec<_> = objs
        .iter()
        .map(|o| match o {
            Object::Node(n) => n.metadata.name.clone().unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(names, ["n", "on", "no"]);
}
