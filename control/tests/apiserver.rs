//! The API-server source. First, scripted kube-runtime watcher event streams
//! fed into the same function the source runs (`feed_watch_events`): relists
//! (Init..InitDone) that drop objects deleted meanwhile, Apply/Delete, errors
//! that keep the objects. Then an HTTP-level test: a scripted fake API server
//! on 127.0.0.1 (list, chunked watch streams, a 410 Gone, a dropped
//! connection, then an outage) behind a kubeconfig, driving `run_control`.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control::apiserver::{
    self, apply_watch_event, feed_watch_events, SOURCE_ENDPOINT_SLICES, SOURCE_SERVICES,
};
use control::publish::{run_control, SourceConfig};
use control::reducer::{reduce, synced, LocalConfig, LocalFacts};
use control::state::AgentState;
use control::store::{Kind, ObjectStore, StoreHandle};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{Error as WatchError, Event};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ------------------------------------------------------------------ objects

fn svc_json(name: &str, rv: &str, ip: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": rv},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}
    })
}

fn slice_json(svc: &str, rv: &str, ips: &[&str]) -> Value {
    let eps: Vec<Value> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-1"), "namespace": "default", "resourceVersion": rv,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps
    })
}

fn node_json(name: &str, rv: &str, ip: &str, cidr: &str, mac: Option<&str>) -> Value {
    let mut ann = serde_json::Map::new();
    if let Some(m) = mac {
        ann.insert(
            "flannel.alpha.coreos.com/backend-data".into(),
            json!(format!("{{\"VNI\":1,\"VtepMAC\":\"{m}\"}}")),
        );
    }
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "resourceVersion": rv, "annotations": ann},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
    })
}

fn svc(name: &str, rv: &str, ip: &str, port: u16) -> Service {
    serde_json::from_value(svc_json(name, rv, ip, port)).unwrap()
}

fn slice(svc: &str, rv: &str, ips: &[&str]) -> EndpointSlice {
    serde_json::from_value(slice_json(svc, rv, ips)).unwrap()
}

fn names(store: &StoreHandle) -> Vec<String> {
    store.read(|s| {
        s.services()
            .iter()
            .map(|x| x.metadata.name.clone().unwrap())
            .collect()
    })
}

// ---------------------------------------------------- scripted watch streams

#[tokio::test]
async fn scripted_watch_events_map_onto_the_store() {
    let store = StoreHandle::new();
    let events: Vec<Result<Event<Service>, WatchError>> = vec![
        Ok(Event::Init),
        Ok(Event::InitApply(svc("a", "1", "198.19.128.1", 80))),
        Ok(Event::InitApply(svc("b", "2", "198.19.128.2", 80))),
        Ok(Event::InitDone),
        Ok(Event::Apply(svc("c", "3", "198.19.128.3", 80))),
        Ok(Event::Apply(svc("a", "4", "198.19.128.1", 8080))),
        Ok(Event::Delete(svc("b", "5", "198.19.128.2", 80))),
    ];
    feed_watch_events(&store, SOURCE_SERVICES, futures::stream::iter(events)).await;
    assert_eq!(names(&store), vec!["a", "c"]);
    assert!(store.read(|s| s.kind_synced(Kind::Service)));
    let a_port = store.read(|s| {
        s.services()[0]
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()[0]
            .port
    });
    assert_eq!(a_port, 8080, "Apply of an existing object updates it");

    // An error keeps every object; the relist that follows drops what was
    // deleted while the watch was down (c) and takes the new versions.
    let events: Vec<Result<Event<Service>, WatchError>> = vec![
        Err(WatchError::NoResourceVersion),
        Ok(Event::Init),
        Ok(Event::InitApply(svc("a", "9", "198.19.128.1", 9090))),
        Ok(Event::InitApply(svc("d", "10", "198.19.128.4", 80))),
        Ok(Event::InitDone),
    ];
    feed_watch_events(&store, SOURCE_SERVICES, futures::stream::iter(events)).await;
    assert_eq!(names(&store), vec!["a", "d"]);
    let st = store.read(|s| s.source_statuses());
    assert_eq!(st[0].errors, 1);
    assert_eq!(st[0].last_error, None, "cleared by the good relist");
}

#[test]
fn a_relist_keeps_the_old_objects_until_init_done() {
    let mut store = ObjectStore::new();
    let src = SOURCE_ENDPOINT_SLICES;
    for ev in [
        Event::Init,
        Event::InitApply(slice("web", "1", &["10.244.1.1"])),
        Event::InitApply(slice("db", "2", &["10.244.1.2"])),
        Event::InitDone,
    ] {
        apply_watch_event(&mut store, src, ev);
    }
    assert_eq!(store.endpoint_slices().len(), 2);
    apply_watch_event::<EndpointSlice>(&mut store, src, Event::Init);
    apply_watch_event(
        &mut store,
        src,
        Event::InitApply(slice("web", "3", &["10.244.1.9"])),
    );
    assert_eq!(
        store.endpoint_slices().len(),
        2,
        "a relist in progress changes nothing yet"
    );
    // The relist is restarted (the list failed halfway): the buffer starts over.
    apply_watch_event::<EndpointSlice>(&mut store, src, Event::Init);
    apply_watch_event(
        &mut store,
        src,
        Event::InitApply(slice("web", "4", &["10.244.1.7"])),
    );
    assert!(apply_watch_event::<EndpointSlice>(
        &mut store,
        src,
        Event::InitDone
    ));
    let s = store.endpoint_slices();
    assert_eq!(s.len(), 1, "db's slice was deleted meanwhile");
    assert_eq!(
        s[0].endpoints.as_ref().unwrap()[0].addresses,
        vec!["10.244.1.7"]
    );
}

#[tokio::test]
async fn services_are_programmed_only_after_both_watches_sync() {
    let store = StoreHandle::new();
    store.update(|s| {
        s.register(SOURCE_SERVICES, &[Kind::Service]);
        s.register(SOURCE_ENDPOINT_SLICES, &[Kind::EndpointSlice]);
    });
    let cfg = LocalConfig {
        node_name: "node-a".into(),
        ..LocalConfig::default()
    };
    let svcs: Vec<Result<Event<Service>, WatchError>> = vec![
        Ok(Event::Init),
        Ok(Event::InitApply(svc("web", "1", "198.19.128.1", 80))),
        Ok(Event::InitDone),
    ];
    feed_watch_events(&store, SOURCE_SERVICES, futures::stream::iter(svcs)).await;
    assert!(!store.read(synced));
    assert!(store
        .read(|s| reduce(s, &cfg, &LocalFacts::default()))
        .services
        .is_empty());
    let slices: Vec<Result<Event<EndpointSlice>, WatchError>> = vec![
        Ok(Event::Init),
        Ok(Event::InitApply(slice("web", "2", &["10.244.1.1"]))),
        Ok(Event::InitDone),
    ];
    feed_watch_events(
        &store,
        SOURCE_ENDPOINT_SLICES,
        futures::stream::iter(slices),
    )
    .await;
    let t = store.read(|s| reduce(s, &cfg, &LocalFacts::default()));
    assert_eq!(t.services.len(), 1);
    assert_eq!(
        t.services[0].ports[0].endpoints[0].ip,
        Ipv4Addr::new(10, 244, 1, 1)
    );
}

#[test]
fn vtep_annotations_match_flannel() {
    assert_eq!(
        apiserver::backend_data([2, 0, 0, 0, 1, 0xab], 1),
        r#"{"VNI":1,"VtepMAC":"02:00:00:00:01:ab"}"#
    );
    let mut n: Node = serde_json::from_value(node_json(
        "node-a",
        "1",
        "198.18.0.1",
        "10.244.1.0/24",
        Some("02:00:00:00:01:ab"),
    ))
    .unwrap();
    let ip = Ipv4Addr::new(198, 18, 0, 1);
    assert!(
        !apiserver::node_vtep_published(&n, [2, 0, 0, 0, 1, 0xab], ip, 1),
        "backend-type/public-ip missing"
    );
    let ann = n.metadata.annotations.get_or_insert_default();
    ann.insert(
        "flannel.alpha.coreos.com/backend-type".into(),
        "vxlan".into(),
    );
    ann.insert(
        "flannel.alpha.coreos.com/kube-subnet-manager".into(),
        "true".into(),
    );
    ann.insert(
        "flannel.alpha.coreos.com/public-ip".into(),
        "198.18.0.1".into(),
    );
    assert!(apiserver::node_vtep_published(
        &n,
        [2, 0, 0, 0, 1, 0xab],
        ip,
        1
    ));
    assert!(!apiserver::node_vtep_published(
        &n,
        [2, 0, 0, 0, 1, 0xac],
        ip,
        1
    ));
    assert!(!apiserver::node_vtep_published(
        &n,
        [2, 0, 0, 0, 1, 0xab],
        ip,
        2
    ));
}

// ------------------------------------------------------- fake API server

enum Step {
    /// One watch event (a JSON line in its own chunk).
    Event(Value),
    /// Close the connection in the middle of the stream.
    Drop,
}

#[derive(Default)]
struct Script {
    /// Per resource path: list bodies (the last one repeats).
    lists: HashMap<String, VecDeque<Value>>,
    /// Per resource path: one script per watch request; when none are left a
    /// watch stays open and silent.
    watches: HashMap<String, VecDeque<Vec<Step>>>,
}

#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    body: String,
}

#[derive(Clone)]
struct FakeApi {
    script: Arc<Mutex<Script>>,
    requests: Arc<Mutex<Vec<Request>>>,
    kill: tokio::sync::watch::Sender<bool>,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn read_request(conn: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let len: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Some(Request {
        method,
        path: path.to_string(),
        query,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

async fn respond_json(conn: &mut TcpStream, status: &str, body: &Value) {
    let body = body.to_string();
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(msg.as_bytes()).await;
    let _ = conn.shutdown().await;
}

async fn send_chunk(conn: &mut TcpStream, data: &str) -> std::io::Result<()> {
    conn.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
        .await?;
    conn.flush().await
}

impl FakeApi {
    async fn start() -> (FakeApi, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (kill, _) = tokio::sync::watch::channel(false);
        let api = FakeApi {
            script: Arc::default(),
            requests: Arc::default(),
            kill,
        };
        let a = api.clone();
        let mut killed = api.kill.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = listener.accept() => {
                        let Ok((conn, _)) = r else { continue };
                        let a = a.clone();
                        let mut k = a.kill.subscribe();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = a.serve(conn) => {}
                                _ = k.wait_for(|v| *v) => {}
                            }
                        });
                    }
                    // Outage: stop listening (connections are then refused).
                    _ = killed.wait_for(|v| *v) => return,
                }
            }
        });
        (api, url)
    }

    fn requests(&self, method: &str, path: &str, watch: bool) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .filter(|r| r.query.get("watch").map(String::as_str) == watch.then_some("true"))
            .cloned()
            .collect()
    }

    async fn serve(&self, mut conn: TcpStream) {
        let Some(req) = read_request(&mut conn).await else {
            return;
        };
        self.requests.lock().unwrap().push(req.clone());
        if req.method == "PATCH" {
            let name = req.path.rsplit('/').next().unwrap_or_default();
            let node = node_json(name, "999", "198.18.0.1", "10.244.1.0/24", None);
            respond_json(&mut conn, "200 OK", &node).await;
            return;
        }
        if req.query.get("watch").map(String::as_str) == Some("true") {
            let steps = self
                .script
                .lock()
                .unwrap()
                .watches
                .get_mut(&req.path)
                .and_then(|q| q.pop_front())
                .unwrap_or_default();
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            if conn.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for step in steps {
                match step {
                    Step::Event(ev) => {
                        if send_chunk(&mut conn, &format!("{ev}\n")).await.is_err() {
                            return;
                        }
                    }
                    Step::Drop => return,
                }
            }
            // Stay open and silent, like an idle watch.
            std::future::pending::<()>().await;
        }
        let body = {
            let mut s = self.script.lock().unwrap();
            match s.lists.get_mut(&req.path) {
                Some(q) if q.len() > 1 => q.pop_front(),
                Some(q) => q.front().cloned(),
                None => None,
            }
        };
        match body {
            Some(b) => respond_json(&mut conn, "200 OK", &b).await,
            None => {
                let st = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "reason": "NotFound", "code": 404});
                respond_json(&mut conn, "404 Not Found", &st).await;
            }
        }
    }
}

fn list(kind: &str, rv: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": rv}, "items": items})
}

fn event(kind: &str, obj: Value) -> Step {
    Step::Event(json!({"type": kind, "object": obj}))
}

const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const NODES: &str = "/api/v1/nodes";
const PODS: &str = "/api/v1/pods";

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not seen within {limit:?}");
}

fn published(state: &AgentState) -> Vec<(String, u16, Vec<String>)> {
    state
        .tables
        .load()
        .spec
        .services
        .iter()
        .map(|s| {
            let p = &s.ports[0];
            (
                s.name.clone(),
                p.port,
                p.endpoints.iter().map(|e| e.ip.to_string()).collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_api_server_list_watch_410_relist_drop_and_outage() {
    let (api, url) = FakeApi::start().await;
    {
        let mut s = api.script.lock().unwrap();
        // Services: list → watch (modify a, then 410 Gone) → relist without b
        // (deleted meanwhile) → watch (add d, then the connection drops) →
        // resumed watch from d's resourceVersion (delete c).
        s.lists.insert(
            SERVICES.into(),
            VecDeque::from([
                list(
                    "ServiceList",
                    "100",
                    vec![
                        svc_json("a", "11", "198.19.128.1", 80),
                        svc_json("b", "12", "198.19.128.2", 80),
                    ],
                ),
                list(
                    "ServiceList",
                    "200",
                    vec![
                        svc_json("a", "101", "198.19.128.1", 81),
                        svc_json("c", "150", "198.19.128.3", 80),
                    ],
                ),
            ]),
        );
        s.watches.insert(
            SERVICES.into(),
            VecDeque::from([
                vec![
                    event("MODIFIED", svc_json("a", "101", "198.19.128.1", 81)),
                    event(
                        "ERROR",
                        json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "message": "too old resource version: 100 (180)",
                        "reason": "Expired", "code": 410}),
                    ),
                ],
                vec![
                    event("ADDED", svc_json("d", "201", "198.19.128.4", 80)),
                    Step::Drop,
                ],
                vec![event("DELETED", svc_json("c", "202", "198.19.128.3", 80))],
            ]),
        );
        s.lists.insert(
            SLICES.into(),
            VecDeque::from([list(
                "EndpointSliceList",
                "300",
                vec![slice_json("a", "31", &["10.244.1.1"])],
            )]),
        );
        s.watches.insert(
            SLICES.into(),
            VecDeque::from([vec![event(
                "ADDED",
                slice_json("d", "301", &["10.244.2.2", "10.244.1.3"]),
            )]]),
        );
        s.lists.insert(
            NODES.into(),
            VecDeque::from([list(
                "NodeList",
                "400",
                vec![
                    node_json("node-a", "41", "198.18.0.1", "10.244.1.0/24", None),
                    node_json(
                        "node-b",
                        "42",
                        "198.18.0.2",
                        "10.244.2.0/24",
                        Some("02:00:00:00:01:0b"),
                    ),
                ],
            )]),
        );
        s.lists.insert(
            PODS.into(),
            VecDeque::from([list("PodList", "500", vec![])]),
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{url}\"}}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: fake, user: u}}\n\
             current-context: c\n"
        ),
    )
    .unwrap();

    let state = AgentState::new("node-a");
    let cfg = LocalConfig {
        node_name: "node-a".into(),
        uplink_ip: Some(Ipv4Addr::new(198, 18, 0, 1)),
        vtep_mac: [2, 0, 0, 0, 1, 0xa],
        ..LocalConfig::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run_control(
        SourceConfig::ApiServer {
            kubeconfig: Some(kubeconfig),
        },
        cfg,
        Box::new(LocalFacts::default),
        state.clone(),
        stop_rx,
    ));

    let want = vec![
        ("a".to_string(), 81, vec!["10.244.1.1".to_string()]),
        (
            "d".to_string(),
            80,
            vec!["10.244.1.3".to_string(), "10.244.2.2".to_string()],
        ),
    ];
    wait_for("final tables", Duration::from_secs(10), || {
        published(&state) == want
    })
    .await;
    assert!(state.first_sync_done());
    let spec = state.tables.load().spec.clone();
    assert_eq!(spec.remote_nodes.len(), 1);
    assert_eq!(spec.remote_nodes[0].name, "node-b");
    assert_eq!(spec.node.pod_cidrs, vec!["10.244.1.0/24".parse().unwrap()]);

    // The requests: kube-proxy's selectors, one relist (after the 410), and a
    // resumed watch (no relist) after the dropped connection.
    let svc_lists = api.requests("GET", SERVICES, false);
    assert_eq!(
        svc_lists.len(),
        2,
        "one initial list and one relist after 410"
    );
    assert_eq!(
        svc_lists[0].query.get("labelSelector").map(String::as_str),
        Some("!service.kubernetes.io/headless")
    );
    let rvs: Vec<_> = api
        .requests("GET", SERVICES, true)
        .iter()
        .map(|r| r.query.get("resourceVersion").cloned().unwrap_or_default())
        .collect();
    assert_eq!(rvs, vec!["100", "200", "201"]);
    let slice_list = &api.requests("GET", SLICES, false)[0];
    assert_eq!(
        slice_list.query.get("labelSelector").map(String::as_str),
        Some("!service.kubernetes.io/headless")
    );
    let pod_list = &api.requests("GET", PODS, false)[0];
    assert_eq!(
        pod_list.query.get("fieldSelector").map(String::as_str),
        Some("spec.nodeName=node-a")
    );
    assert!(!api.requests("GET", NODES, false)[0]
        .query
        .contains_key("labelSelector"));

    // This node's VTEP was published as flannel does.
    wait_for("VTEP patch", Duration::from_secs(5), || {
        !api.requests("PATCH", "/api/v1/nodes/node-a", false)
            .is_empty()
    })
    .await;
    let patch: Value =
        serde_json::from_str(&api.requests("PATCH", "/api/v1/nodes/node-a", false)[0].body)
            .unwrap();
    let ann = &patch["metadata"]["annotations"];
    assert_eq!(
        ann["flannel.alpha.coreos.com/backend-data"],
        r#"{"VNI":1,"VtepMAC":"02:00:00:00:01:0a"}"#
    );
    assert_eq!(ann["flannel.alpha.coreos.com/backend-type"], "vxlan");
    assert_eq!(ann["flannel.alpha.coreos.com/kube-subnet-manager"], "true");
    assert_eq!(ann["flannel.alpha.coreos.com/public-ip"], "198.18.0.1");

    let st = state.sources.lock().unwrap().clone();
    let services_status = st.iter().find(|s| s.name == SOURCE_SERVICES).unwrap();
    assert!(services_status.errors >= 1, "the 410 is counted");
    assert_eq!(services_status.objects, 2);

    // Outage: the server goes away. Errors are recorded; the tables stay.
    let generation = state.tables.load().generation;
    api.kill.send(true).unwrap();
    wait_for(
        "watch errors during the outage",
        Duration::from_secs(5),
        || {
            state
                .sources
                .lock()
                .unwrap()
                .iter()
                .any(|s| s.last_error.is_some())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        published(&state),
        want,
        "the last tables stay while the API server is unreachable"
    );
    assert_eq!(state.tables.load().generation, generation);

    stop_tx.send(true).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .unwrap()
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
}
