//! The status endpoint (docs/design.md §7) over real HTTP: every route's status code and
//! fields before and after the first sync, `/healthz` turning 503 while an
//! update is stuck, `/metrics` parsing as Prometheus text, and `nodeplane status`
//! printing from a served endpoint (and failing clearly with none).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use control::publish::{run_control, Publisher, SourceConfig};
use control::reducer::{LocalConfig, LocalFacts};
use control::state::AgentState;
use control::status::{print_status, router, StatusOptions};
use dataplane::report::{new_slot, ReportSlot, WorkerReport};
use serde_json::Value;
use shared::{Counters, DropReason};

/// Serves the status routes of `state` on an ephemeral port.
async fn serve(state: AgentState, opts: StatusOptions) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router(state, opts)).await.unwrap();
    });
    addr
}

/// A blocking HTTP/1.0 GET: (code, content type, body).
fn get_blocking(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (code, ctype, body.to_string())
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || get_blocking(addr, &path))
        .await
        .unwrap()
}

async fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (code, ctype, body) = get(addr, path).await;
    assert!(ctype.starts_with("application/json"), "{path}: {ctype}");
    (code, serde_json::from_str(&body).expect("JSON body"))
}

/// One parsed sample: (name, sorted labels, value).
type Sample = (String, Vec<(String, String)>, f64);

/// Parses `/metrics` with a second implementation.
async fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let (code, ctype, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(ctype.contains("text"), "{ctype}");
    assert!(
        body.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("/metrics parses");
    assert!(!parsed.samples.is_empty());
    parsed
        .samples
        .into_iter()
        .map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                // A histogram's value here: its observations (the +Inf bucket).
                prometheus_parse::Value::Histogram(buckets) => buckets
                    .iter()
                    .find(|b| b.less_than.is_infinite())
                    .map(|b| b.count)
                    .expect("a histogram has a +Inf bucket"),
                other => panic!("{}: unexpected {other:?}", s.metric),
            };
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            (s.metric, labels, v)
        })
        .collect()
}

fn sample(m: &[Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    m.iter()
        .find(|(n, l, _)| {
            n == name && label.is_none_or(|(k, v)| l.iter().any(|(a, b)| a == k && b == v))
        })
        .unwrap_or_else(|| panic!("metric {name} {label:?} missing"))
        .2
}

/// A stand-in for a worker: reports the generation it is told to run and some
/// counters, every 5 ms, as a real worker's publish does.
fn fake_worker(state: &AgentState, follow: bool) -> (ReportSlot, tokio::task::JoinHandle<()>) {
    let slot = new_slot(0);
    state.workers.lock().unwrap().push(slot.clone());
    let (s, st) = (slot.clone(), state.clone());
    let task = tokio::spawn(async move {
        loop {
            let generation = if follow {
                st.tables.load().generation
            } else {
                s.load().generation
            };
            let mut c = Counters {
                rx_packets: 1000,
                tx_packets: 990,
                ..Counters::default()
            };
            for _ in 0..7 {
                c.drop(DropReason::Malformed);
            }
            s.store(std::sync::Arc::new(WorkerReport {
                id: 0,
                core: Some(1),
                queues: vec!["eth0/0".into()],
                counters: c,
                generation,
                flow_entries: 12,
                flow_capacity: 1024,
                ..WorkerReport::default()
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (slot, task)
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within {limit:?}");
}

fn demo_manifests() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/demo");
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    tmp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_before_and_after_the_first_sync() {
    let state = AgentState::new("node-a");
    let (_slot, worker) = fake_worker(&state, true);
    let addr = serve(state.clone(), StatusOptions::default()).await;

    // Before any source has synced.
    for path in ["/healthz", "/livez"] {
        let (code, v) = get_json(addr, path).await;
        assert_eq!(
            code, 200,
            "{path}: alive before the first sync, as kube-proxy"
        );
        for k in ["lastUpdated", "currentTime"] {
            let t = v[k].as_str().unwrap_or_else(|| panic!("{path}: {k}"));
            assert!(t.ends_with('Z') && t.contains('T'), "{path}: {k} = {t}");
        }
        assert_eq!(v["nodeEligible"], true);
    }
    let (code, v) = get_json(addr, "/readyz").await;
    assert_eq!(code, 503);
    assert_eq!(v["ready"], false);
    assert!(v["reason"].as_str().unwrap().contains("first full sync"));
    let (code, v) = get_json(addr, "/status").await;
    assert_eq!(code, 200);
    assert_eq!(v["node"], "node-a");
    assert_eq!(v["ready"], false);
    assert_eq!(v["subsystems"]["tables"]["state"], "Warning");
    assert_eq!(v["subsystems"]["sources"]["state"], "Warning");
    assert_eq!(v["subsystems"]["workers"]["state"], "Ok");
    assert_eq!(v["tables"]["services"], 0);
    let m = scrape(addr).await;
    assert_eq!(sample(&m, "nodeplane_table_generation", None), 0.0);
    // A manifest directory has no trigger times: nothing observed.
    assert_eq!(
        sample(&m, "nodeplane_network_programming_duration_seconds", None),
        0.0
    );

    // The demo manifests as the source.
    let dir = demo_manifests();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let control = tokio::spawn(run_control(
        SourceConfig::Manifests(dir.path().to_path_buf()),
        LocalConfig {
            node_name: "node-a".into(),
            uplink_ip: Some("198.18.0.2".parse().unwrap()),
            service_cidrs: vec!["198.18.96.0/20".parse().unwrap()],
            ..LocalConfig::default()
        },
        // The kernel has resolved the other two nodes' underlay addresses.
        Box::new(|| LocalFacts {
            neighbors: vec![
                ("198.18.0.1".parse().unwrap(), [2, 0, 0, 0, 0, 1]),
                ("198.18.0.3".parse().unwrap(), [2, 0, 0, 0, 0, 3]),
            ],
            ..LocalFacts::default()
        }),
        state.clone(),
        stop_rx,
    ));
    wait_for("ready", Duration::from_secs(5), async || {
        get_json(addr, "/readyz").await.0 == 200
    })
    .await;

    let (_, v) = get_json(addr, "/readyz").await;
    assert_eq!(v["ready"], true);
    let (code, v) = get_json(addr, "/status").await;
    assert_eq!(code, 200);
    assert_eq!(v["ready"], true);
    for sub in ["sources", "tables", "workers", "interfaces", "neighbors"] {
        assert_eq!(
            v["subsystems"][sub]["state"], "Ok",
            "{sub}: {}",
            v["subsystems"][sub]
        );
    }
    let generation = v["tables"]["generation"].as_u64().unwrap();
    assert!(generation >= 1);
    assert_eq!(v["last_publish"]["generation"], generation);
    assert_eq!(v["tables"]["services"], 3);
    let w = &v["workers"][0];
    assert_eq!(w["generation"], generation);
    assert_eq!(w["core"], 1);
    assert_eq!(w["queues"][0], "eth0/0");
    assert_eq!(w["rx_packets"], 1000);
    assert_eq!(w["drops"]["malformed"], 7);
    assert_eq!(w["drops"]["no_route"], 0, "every reason is listed");
    assert_eq!(w["flow_entries"], 12);
    let names: Vec<&str> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"default/web:http"), "{names:?}");
    let src = &v["sources"][0];
    assert!(src["name"].as_str().unwrap().starts_with("manifests:"));
    assert_eq!(src["errors"], 0);
    assert!(src["last_sync"].as_str().is_some());
    let (code, v) = get_json(addr, "/healthz").await;
    assert_eq!(code, 200);
    assert!(v["lastUpdated"].as_str().is_some());

    let m = scrape(addr).await;
    assert_eq!(
        sample(&m, "nodeplane_table_generation", None),
        generation as f64
    );
    assert_eq!(
        sample(&m, "nodeplane_drops_total", Some(("reason", "malformed"))),
        7.0
    );
    assert_eq!(sample(&m, "nodeplane_rx_packets_total", None), 1000.0);
    assert_eq!(sample(&m, "nodeplane_flow_table_entries", None), 12.0);
    // Every counter and every drop reason is in both documents, from the one
    // table that defines them (none can drift out of /metrics again).
    let (_, st) = get_json(addr, "/status").await;
    let w = &st["workers"][0];
    for f in Counters::FIELDS {
        let want = if f.name == "rx_packets" {
            1000.0
        } else if f.name == "tx_packets" {
            990.0
        } else {
            0.0
        };
        assert_eq!(w[f.name].as_f64(), Some(want), "/status {}", f.name);
        let metric = format!("nodeplane_{}_total", f.metric);
        assert_eq!(sample(&m, &metric, None), want, "{metric}");
    }
    for r in DropReason::ALL {
        assert!(w["drops"][r.name()].is_u64(), "/status drops.{}", r.name());
        sample(&m, "nodeplane_drops_total", Some(("reason", r.name())));
    }
    assert!(
        sample(
            &m,
            "nodeplane_network_programming_latency_microseconds",
            None
        ) >= 0.0
    );

    // Unknown routes are 404, not a crash.
    assert_eq!(get(addr, "/nope").await.0, 404);

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(3), control)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    worker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_turns_503_while_an_update_is_stuck_and_recovers() {
    let state = AgentState::new("node-a");
    // A worker that stays on generation 0 until told otherwise.
    let (slot, worker) = fake_worker(&state, false);
    let opts = StatusOptions {
        health_timeout: Duration::from_millis(200),
    };
    let addr = serve(state.clone(), opts).await;
    let mut publisher = Publisher::new(state.clone());
    let spec = control::reducer::reduce(
        &control::store::ObjectStore::default(),
        &LocalConfig {
            node_name: "node-a".into(),
            ..LocalConfig::default()
        },
        &LocalFacts::default(),
    );
    let g = publisher.publish(spec).expect("a new generation");
    state
        .first_sync
        .store(true, std::sync::atomic::Ordering::Release);
    assert_eq!(
        get_json(addr, "/healthz").await.0,
        200,
        "pending, not yet too long"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, v) = get_json(addr, "/healthz").await;
    assert_eq!(code, 503, "{v}");
    assert_eq!(get_json(addr, "/livez").await.0, 503);
    let (code, v) = get_json(addr, "/readyz").await;
    assert_eq!(code, 503);
    assert!(v["reason"]
        .as_str()
        .unwrap()
        .contains("workers run generation 0"));
    let (_, v) = get_json(addr, "/status").await;
    assert_eq!(v["subsystems"]["tables"]["state"], "Failure");

    // The worker catches up: healthy and ready again, latency recorded.
    let mut r = (**slot.load()).clone();
    r.generation = g;
    slot.store(std::sync::Arc::new(r));
    publisher.observe_workers();
    assert_eq!(get_json(addr, "/healthz").await.0, 200);
    assert_eq!(get_json(addr, "/readyz").await.0, 200);
    let (_, v) = get_json(addr, "/status").await;
    let latency = v["last_publish"]["programming_latency_us"]
        .as_u64()
        .unwrap();
    assert!(latency >= 300_000, "measured from the change: {latency} µs");
    worker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodeplane_status_prints_a_table_and_json_and_fails_clearly_without_an_agent() {
    let state = AgentState::new("node-a");
    let (_slot, worker) = fake_worker(&state, true);
    state.steering.lock().unwrap().extend([
        ("redirect_pod".to_string(), 41),
        ("pass_not_owned".to_string(), 5),
    ]);
    let addr = serve(state.clone(), StatusOptions::default()).await;
    let m = scrape(addr).await;
    assert_eq!(
        sample(
            &m,
            "nodeplane_xdp_decisions_total",
            Some(("decision", "redirect_pod"))
        ),
        41.0
    );
    let (_, v) = get_json(addr, "/status").await;
    assert_eq!(v["steering"]["pass_not_owned"], 5);
    let a = addr.to_string();
    let (table, json) = tokio::task::spawn_blocking(move || {
        let mut t = Vec::new();
        print_status(&a, false, &mut t).unwrap();
        let mut j = Vec::new();
        print_status(&a, true, &mut j).unwrap();
        (String::from_utf8(t).unwrap(), String::from_utf8(j).unwrap())
    })
    .await
    .unwrap();
    for want in [
        "node node-a",
        "ready: false",
        "WORKERS",
        "eth0/0",
        "malformed",
        "TABLES",
    ] {
        assert!(table.contains(want), "table lacks {want:?}:\n{table}");
    }
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["node"], "node-a");
    assert_eq!(v["workers"][0]["drops"]["malformed"], 7);

    // No agent listening: a clear error naming the address, no panic.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let c = closed.clone();
    let err = tokio::task::spawn_blocking(move || print_status(&c, false, &mut Vec::new()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(format!("{err:#}").contains(&closed), "{err:#}");
    worker.abort();
}
