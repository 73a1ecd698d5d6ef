//! The status endpoint (docs/design.md §7) and the `nodeplane status` printer: one axum
//! server with `/healthz` and `/livez` (kube-proxy compatible), `/readyz`,
//! `/status` (JSON) and `/metrics` (Prometheus text from prometheus-client), plus
//! kube-proxy's healthCheckNodePort answers (§4 item 11). Everything is computed
//! from `AgentState` when asked: workers' reports are summed at scrape time. It
//! only reads the state; it never changes tables or workers.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use shared::Counters;

use crate::state::{lock, AgentState};
use crate::store::format_rfc3339;

/// kube-proxy's default healthz address and port.
pub const DEFAULT_STATUS_ADDR: &str = "127.0.0.1:10256";

#[derive(Clone, Copy, Debug)]
pub struct StatusOptions {
    /// `/healthz` turns 503 when a table update has been pending longer than this.
    pub health_timeout: Duration,
}

impl Default for StatusOptions {
    fn default() -> Self {
        StatusOptions {
            health_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Clone)]
struct Ctx {
    state: AgentState,
    opts: StatusOptions,
}

/// The status routes.
pub fn router(state: AgentState, opts: StatusOptions) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(Ctx { state, opts })
}

/// Serves the status endpoint until `shutdown` turns true.
pub async fn serve(
    addr: SocketAddr,
    state: AgentState,
    opts: StatusOptions,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("status endpoint: cannot listen on {addr}: {e}"))?;
    axum::serve(listener, router(state, opts))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await?;
    Ok(())
}

/// Workers' counters summed, and the lowest generation any worker runs.
fn summed(state: &AgentState) -> (Counters, Option<u64>, u64, u64) {
    let mut c = Counters::default();
    let (mut entries, mut capacity) = (0, 0);
    let mut min_gen: Option<u64> = None;
    for w in lock(&state.workers).iter() {
        let r = w.load();
        c.accumulate(&r.counters);
        entries += r.flow_entries;
        capacity += r.flow_capacity;
        min_gen = Some(min_gen.map_or(r.generation, |g| g.min(r.generation)));
    }
    (c, min_gen, entries, capacity)
}

/// Published to every worker (or published, when there are no workers).
fn ready(state: &AgentState) -> (bool, String) {
    // A permission the agent's ClusterRole lacks is a configuration error,
    // not a passing fault: not ready while the API server keeps refusing
    // (the watcher retries at least every 30 s), so a rollout stops here.
    let refused = lock(&state.sources).iter().find_map(|s| {
        let at = s.forbidden_at?;
        let recent = at.elapsed().map_or(true, |e| e < FORBIDDEN_HOLD);
        recent.then(|| format!("{}: {}", s.name, s.forbidden.clone().unwrap_or_default()))
    });
    if let Some(why) = refused {
        return (
            false,
            format!("the API server refuses this identity: {why}"),
        );
    }
    if !state.first_sync_done() {
        return (
            false,
            "waiting for the first full sync of every source".into(),
        );
    }
    let published = lock(&state.last_publish).generation;
    if let Some(g) = state.min_worker_generation().filter(|g| *g < published) {
        return (
            false,
            format!("workers run generation {g}, published {published}"),
        );
    }
    // Traffic to a remote node needs its underlay MAC; wait (a bounded time
    // after start) until the kernel has resolved every one, so the first
    // packets after readiness are not dropped for want of a neighbour.
    let missing = unresolved_nodes(state);
    let grace = state.started.elapsed().map_or(true, |e| e < NEIGHBOR_GRACE);
    if !missing.is_empty() && grace {
        return (
            false,
            format!("resolving underlay neighbours: {}", missing.join(", ")),
        );
    }
    (true, format!("generation {published} on every worker"))
}

/// How long after the API server's last refusal (403) readiness stays false.
pub const FORBIDDEN_HOLD: Duration = Duration::from_secs(45);

/// How long after start readiness waits for the underlay neighbours of the
/// remote nodes; after that a node that does not answer ARP makes the agent
/// ready anyway (with a warning in `/status`), so one dead node cannot keep
/// every other node unready.
pub const NEIGHBOR_GRACE: Duration = Duration::from_secs(5);

/// Remote nodes (by underlay IP) whose MAC the published tables lack.
fn unresolved_nodes(state: &AgentState) -> Vec<String> {
    let snap = state.tables.load();
    snap.spec
        .remote_nodes
        .iter()
        .filter(|n| snap.neighbor(u32::from(n.underlay_ip)).is_none())
        .map(|n| n.underlay_ip.to_string())
        .collect()
}

async fn healthz(State(ctx): State<Ctx>) -> Response {
    let now = SystemTime::now();
    let pending = *lock(&ctx.state.pending_since);
    let last = lock(&ctx.state.last_publish)
        .at
        .unwrap_or(ctx.state.started);
    let stale = pending.is_some_and(|p| p.elapsed() > ctx.opts.health_timeout);
    let body = json!({
        "lastUpdated": format_rfc3339(last),
        "currentTime": format_rfc3339(now),
        "nodeEligible": true,
    });
    let code = if stale {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(body)).into_response()
}

async fn readyz(State(ctx): State<Ctx>) -> Response {
    let (ok, why) = ready(&ctx.state);
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({ "ready": ok, "reason": why }))).into_response()
}

fn drops_map(c: &Counters) -> BTreeMap<&'static str, u64> {
    c.drop_counts().map(|(r, n)| (r.name(), n)).collect()
}

/// The `/status` document.
pub fn status_json(state: &AgentState, opts: &StatusOptions) -> Value {
    let snap = state.tables.load_full();
    let workers: Vec<Value> = lock(&state.workers)
        .iter()
        .map(|w| {
            let r = w.load();
            let mut w = serde_json::Map::new();
            w.insert("id".into(), json!(r.id));
            w.insert("core".into(), json!(r.core));
            w.insert("queues".into(), json!(r.queues));
            for (f, v) in r.counters.fields() {
                w.insert(f.name.into(), json!(v));
            }
            w.insert("drops".into(), json!(drops_map(&r.counters)));
            let fill = if r.flow_capacity == 0 {
                0.0
            } else {
                100.0 * r.flow_entries as f64 / r.flow_capacity as f64
            };
            for (k, v) in [
                ("generation", json!(r.generation)),
                ("flow_entries", json!(r.flow_entries)),
                ("flow_capacity", json!(r.flow_capacity)),
                ("flow_fill_percent", json!(fill)),
                ("batch_latency", json!(r.batch_latency)),
                ("xsk_drops", json!(r.xsk)),
            ] {
                w.insert(k.into(), v);
            }
            Value::Object(w)
        })
        .collect();
    let sources = lock(&state.sources).clone();
    let interfaces = lock(&state.interfaces).clone();
    let publish = lock(&state.last_publish).clone();
    let (ok, why) = ready(state);
    let pending = lock(&state.pending_since).map(|p| p.elapsed());
    let source_errors: Vec<String> = sources
        .iter()
        .filter_map(|s| s.last_error.as_ref().map(|e| format!("{}: {e}", s.name)))
        .collect();
    let sub = |state: &str, msg: String| json!({ "state": state, "msg": msg });
    let sources_sub = if !source_errors.is_empty() {
        sub("Warning", source_errors.join("; "))
    } else if sources.is_empty() {
        sub("Warning", "no source reported yet".into())
    } else {
        sub("Ok", format!("{} source(s) synced", sources.len()))
    };
    let tables_sub = match pending {
        Some(p) if p > opts.health_timeout => sub(
            "Failure",
            format!("an update has been pending for {:.0?}", p),
        ),
        _ if ok => sub("Ok", why.clone()),
        _ => sub("Warning", why.clone()),
    };
    let unresolved = unresolved_nodes(state);
    let neighbors_sub = if unresolved.is_empty() {
        sub(
            "Ok",
            format!("{} remote node(s) resolved", snap.spec.remote_nodes.len()),
        )
    } else {
        sub(
            "Warning",
            format!("no MAC yet for underlay {}", unresolved.join(", ")),
        )
    };
    let workers_sub = if workers.is_empty() {
        sub("Warning", "no workers".into())
    } else {
        sub("Ok", format!("{} worker(s)", workers.len()))
    };
    let attach_errors: Vec<&str> = interfaces
        .iter()
        .filter(|i| !matches!(i.xdp_mode.as_str(), "native" | "generic"))
        .map(|i| i.name.as_str())
        .collect();
    let interfaces_sub = if attach_errors.is_empty() {
        sub("Ok", format!("{} interface(s) attached", interfaces.len()))
    } else {
        sub(
            "Warning",
            format!("not attached: {}", attach_errors.join(", ")),
        )
    };
    let services: Vec<Value> = snap
        .service_ports
        .iter()
        .map(|sp| {
            json!({
                "name": sp.name.to_string(),
                "protocol": sp.proto.to_string(),
                "port": sp.port,
                "nodePort": sp.node_port,
                "backends": sp.backends.iter().map(|b| format!("{}:{}{}", b.ip, b.port, if b.local { " (local)" } else { "" })).collect::<Vec<_>>(),
                "endpoints": sp.total_endpoints,
            })
        })
        .collect();
    json!({
        "node": state.node_name,
        "ready": ok,
        "subsystems": {
            "sources": sources_sub,
            "tables": tables_sub,
            "workers": workers_sub,
            "interfaces": interfaces_sub,
            "neighbors": neighbors_sub,
        },
        "workers": workers,
        "interfaces": interfaces,
        "tables": {
            "generation": snap.generation,
            "services": snap.spec.services.len(),
            "service_ports": snap.service_ports.len(),
            "frontends": snap.frontend_count(),
            "backends": snap.service_ports.iter().map(|s| s.backends.len()).sum::<usize>(),
            "local_pods": snap.local_pod_count(),
            "remote_nodes": snap.spec.remote_nodes.len(),
        },
        "services": services,
        "steering": lock(&state.steering).clone(),
        "sources": sources,
        "last_publish": {
            "generation": publish.generation,
            "at": publish.at.map(format_rfc3339),
            "build_us": publish.build_us,
            "programming_latency_us": publish.programming_latency_us,
        },
    })
}

async fn status(State(ctx): State<Ctx>) -> Json<Value> {
    Json(status_json(&ctx.state, &ctx.opts))
}

/// `/metrics` rendered from the state at scrape time.
pub fn metrics_text(state: &AgentState) -> String {
    let mut reg = Registry::with_prefix("nodeplane");
    let (c, min_gen, entries, capacity) = summed(state);
    for (f, v) in c.fields() {
        reg.register(f.metric, f.help, counter(v));
    }
    let drops = c.drop_counts().map(|(r, n)| (r.name().to_string(), n));
    register_family(
        &mut reg,
        "drops",
        "Frames dropped, by reason",
        "reason",
        drops,
    );
    let snap = state.tables.load_full();
    let publish = lock(&state.last_publish).clone();
    for (name, help, v) in [
        (
            "flow_table_entries",
            "Flows in the workers' flow tables",
            entries,
        ),
        (
            "flow_table_capacity",
            "Flow-table capacity over all workers",
            capacity,
        ),
        (
            "table_generation",
            "Published table generation",
            snap.generation,
        ),
        (
            "worker_min_generation",
            "Lowest table generation any worker runs",
            min_gen.unwrap_or(0),
        ),
        (
            "services",
            "Service ports programmed",
            snap.service_ports.len() as u64,
        ),
        (
            "sync_duration_microseconds",
            "Time to reduce and build the last published tables",
            publish.build_us,
        ),
        (
            "network_programming_latency_microseconds",
            "Object change seen to every worker on the new generation, last publication",
            publish.programming_latency_us.unwrap_or(0),
        ),
    ] {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        reg.register(name, help, g);
    }
    let ring: Vec<(String, u64)> = lock(&state.workers)
        .iter()
        .flat_map(|w| {
            let x = w.load().xsk.clone();
            [
                ("rx_dropped", x.rx_dropped),
                ("rx_ring_full", x.rx_ring_full),
                ("fill_ring_empty", x.fill_ring_empty),
                ("tx_invalid", x.tx_invalid),
            ]
        })
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    register_family(
        &mut reg,
        "afxdp_kernel_drops",
        "Frames the kernel dropped at the workers' AF_XDP sockets, by reason",
        "reason",
        ring,
    );
    let xdp: Vec<(String, u64)> = lock(&state.steering)
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    register_family(
        &mut reg,
        "xdp_decisions",
        "The steering programs' decisions: XDP's (redirect_* to a worker, pass_* to the kernel) and the loopback's (local_nodeport_*: the node's own NodePort packets to the host interface, or dropped as too long)",
        "decision",
        xdp,
    );
    let errors: Vec<(String, u64)> = lock(&state.sources)
        .iter()
        .map(|s| (s.name.clone(), s.errors))
        .collect();
    register_family(
        &mut reg,
        "source_errors",
        "Errors reading Kubernetes objects, by source",
        "source",
        errors,
    );
    reg.register(
        "network_programming_duration_seconds",
        "EndpointSlice change in the API (its last-change-trigger-time annotation, one-second resolution) to every worker on tables that include it, as kube-proxy's metric of this name measures it",
        state.programming_duration.clone(),
    );
    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        out = "# encoding failed\n# EOF\n".into();
    }
    out
}

fn counter(v: u64) -> Counter<u64> {
    let x = Counter::<u64>::default();
    x.inc_by(v);
    x
}

/// A counter family with one label; values of the same label value add up.
fn register_family(
    reg: &mut Registry,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (String, u64)>,
) {
    let family = Family::<Vec<(String, String)>, Counter<u64>>::default();
    for (k, v) in values {
        family
            .get_or_create(&vec![(label.to_string(), k)])
            .inc_by(v);
    }
    reg.register(name, help, family);
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics_text(&ctx.state),
    )
        .into_response()
}

/// A blocking HTTP/1.0 GET (status endpoints are local and small).
fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| anyhow::anyhow!("'{addr}' is not an address (want IP:PORT): {e}"))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(5)).map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the nodeplane status endpoint at {addr}: {e} (is the agent running?)"
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP answer from {addr}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// `nodeplane status`: the agent's `/status` as a table, or as JSON.
pub fn print_status(addr: &str, json_out: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let (code, body) = http_get(addr, "/status")?;
    anyhow::ensure!(code == 200, "status endpoint at {addr} answered {code}");
    let v: Value = serde_json::from_str(&body)?;
    if json_out {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    let s = |v: &Value| match v {
        Value::String(x) => x.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    writeln!(out, "node {}   ready: {}", s(&v["node"]), s(&v["ready"]))?;
    if let Some(subs) = v["subsystems"].as_object() {
        for (k, x) in subs {
            writeln!(out, "  {:<11} {:<8} {}", k, s(&x["state"]), s(&x["msg"]))?;
        }
    }
    writeln!(
        out,
        "\nWORKERS\n  {:<3} {:<5} {:>12} {:>12} {:>10} {:>12} {:>6}  QUEUES",
        "ID", "CORE", "RX", "TX", "DROPS", "FLOWS", "GEN"
    )?;
    for w in v["workers"].as_array().into_iter().flatten() {
        let drops: u64 = w["drops"]
            .as_object()
            .map_or(0, |d| d.values().filter_map(Value::as_u64).sum());
        let queues: Vec<String> = w["queues"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        writeln!(
            out,
            "  {:<3} {:<5} {:>12} {:>12} {:>10} {:>12} {:>6}  {}",
            s(&w["id"]),
            s(&w["core"]),
            s(&w["rx_packets"]),
            s(&w["tx_packets"]),
            drops,
            format!("{}/{}", s(&w["flow_entries"]), s(&w["flow_capacity"])),
            s(&w["generation"]),
            queues.join(" ")
        )?;
    }
    let mut drops: BTreeMap<String, u64> = BTreeMap::new();
    for w in v["workers"].as_array().into_iter().flatten() {
        for (k, n) in w["drops"].as_object().into_iter().flatten() {
            *drops.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
        }
    }
    // The kernel's own drops at the AF_XDP rings, next to the pipeline's.
    for w in v["workers"].as_array().into_iter().flatten() {
        for (k, n) in w["xsk_drops"].as_object().into_iter().flatten() {
            *drops.entry(format!("afxdp_{k}")).or_default() += n.as_u64().unwrap_or(0);
        }
    }
    drops.retain(|_, n| *n > 0);
    writeln!(out, "\nDROPS BY REASON")?;
    if drops.is_empty() {
        writeln!(out, "  none")?;
    }
    for (k, n) in drops {
        writeln!(out, "  {k:<24} {n}")?;
    }
    if let Some(x) = v["steering"].as_object().filter(|x| !x.is_empty()) {
        let sum = |prefix: &str| -> u64 {
            x.iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        };
        writeln!(
            out,
            "\nXDP STEERING  to workers {}  to the kernel {}",
            sum("redirect_"),
            sum("pass_")
        )?;
        for (k, n) in x.iter().filter(|(_, n)| n.as_u64().unwrap_or(0) > 0) {
            writeln!(out, "  {k:<24} {}", s(n))?;
        }
    }
    writeln!(out, "\nINTERFACES")?;
    for i in v["interfaces"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "  {:<16} ifindex {:<5} {:<7} xdp {:<8} queues {}",
            s(&i["name"]),
            s(&i["ifindex"]),
            s(&i["role"]),
            s(&i["xdp_mode"]),
            s(&i["queues"])
        )?;
    }
    let t = &v["tables"];
    writeln!(
        out,
        "\nTABLES  generation {}  services {}  service ports {}  frontends {}  backends {}  local pods {}  remote nodes {}",
        s(&t["generation"]),
        s(&t["services"]),
        s(&t["service_ports"]),
        s(&t["frontends"]),
        s(&t["backends"]),
        s(&t["local_pods"]),
        s(&t["remote_nodes"])
    )?;
    writeln!(out, "\nSERVICES")?;
    for sv in v["services"].as_array().into_iter().flatten() {
        let b: Vec<String> = sv["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        writeln!(
            out,
            "  {:<28} {:<4} {:<6} → {}",
            s(&sv["name"]),
            s(&sv["protocol"]),
            s(&sv["port"]),
            if b.is_empty() {
                "(no endpoints: reject)".into()
            } else {
                b.join(", ")
            }
        )?;
    }
    writeln!(out, "\nSOURCES")?;
    for src in v["sources"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "  {:<40} objects {:<5} last sync {}  errors {}",
            s(&src["name"]),
            s(&src["objects"]),
            s(&src["last_sync"]),
            s(&src["errors"])
        )?;
        if !src["last_error"].is_null() {
            writeln!(out, "    last error: {}", s(&src["last_error"]))?;
        }
    }
    Ok(())
}

/// kube-proxy's healthCheckNodePort: for each LoadBalancer Service with
/// eTP=Local, answer on `bind_ip:port` with 200 and the local endpoint count when
/// there is at least one local endpoint, else 503. Follows table changes.
pub async fn serve_health_check_node_ports(
    state: AgentState,
    bind_ip: Ipv4Addr,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut servers: BTreeMap<
        u16,
        (
            tokio::task::JoinHandle<()>,
            tokio::sync::watch::Sender<bool>,
        ),
    > = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        let snap = state.tables.load_full();
        let wanted: BTreeMap<u16, ()> = snap
            .service_ports
            .iter()
            .filter_map(|sp| sp.health_check_node_port.map(|p| (p, ())))
            .collect();
        servers.retain(|port, (task, stop)| {
            let keep = wanted.contains_key(port) && !task.is_finished();
            if !keep {
                let _ = stop.send(true);
            }
            keep
        });
        for port in wanted.keys() {
            if servers.contains_key(port) {
                continue;
            }
            let Ok(listener) = tokio::net::TcpListener::bind((bind_ip, *port)).await else {
                tracing::warn!(port, "cannot listen on the healthCheckNodePort");
                continue;
            };
            let (tx, mut rx) = tokio::sync::watch::channel(false);
            let st = state.clone();
            let port_no = *port;
            let app = Router::new().fallback(get(move || hc_answer(st.clone(), port_no)));
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
            });
            servers.insert(*port, (task, tx));
        }
    }
    for (_, (_, stop)) in servers {
        let _ = stop.send(true);
    }
}

async fn hc_answer(state: AgentState, port: u16) -> Response {
    let snap = state.tables.load_full();
    let sp = snap
        .service_ports
        .iter()
        .find(|sp| sp.health_check_node_port == Some(port));
    let (ns, name, local) = match sp {
        Some(sp) => (
            sp.name.namespace.clone(),
            sp.name.service.clone(),
            sp.local_ready,
        ),
        None => (String::new(), String::new(), 0),
    };
    let body = json!({
        "service": { "namespace": ns, "name": name },
        "localEndpoints": local,
        "serviceProxyHealthy": true,
    });
    let code = if local >= 1 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}
