//! `nodeplane run`: wires the parts together. It looks up the uplink, starts the
//! workers and attaches the steering program, runs the control loop (source →
//! reducer → publish), keeps the steering maps and the pod interfaces in step
//! with the published tables and the CNI registrations, serves the status
//! endpoint, and on SIGINT/SIGTERM stops everything and restores the NIC. It
//! decides nothing about packets or Kubernetes semantics itself.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use dataplane::io::{netif, InterfaceRole, IoOptions, PoolConfig, SteeringParams, WorkerPool};
use shared::snapshot::{FrontendKind, PodRoute, Snapshot};
use tracing::{info, warn};

use crate::config::{Settings, Source};
use crate::podstate;
use crate::publish::{run_control, SourceConfig};
use crate::reducer::{LocalConfig, LocalFacts};
use crate::state::{lock, AgentState, InterfaceStatus};
use crate::status::{self, StatusOptions};

/// Runs the agent until SIGINT/SIGTERM.
pub fn run(settings: Settings) -> anyhow::Result<()> {
    let uplink = netif::lookup(&settings.uplink)
        .with_context(|| format!("uplink interface '{}'", settings.uplink))?;
    info!(
        node = %settings.node_name,
        uplink = %settings.uplink,
        ifindex = uplink.ifindex,
        ip = ?uplink.ipv4,
        "starting nodeplane"
    );
    let state = AgentState::new(&settings.node_name);
    let pool = WorkerPool::start_with(
        PoolConfig {
            workers: settings.workers,
            flow_capacity: settings.flow_capacity,
            frag: settings.frag,
            tables: state.tables.clone(),
        },
        IoOptions {
            cores: settings.cores.clone(),
            idle_sleep: (settings.idle_sleep_us > 0)
                .then(|| Duration::from_micros(settings.idle_sleep_us)),
            xdp_mode: settings.xdp_mode,
            ..IoOptions::default()
        },
    )
    .context("starting workers")?;
    *lock(&state.workers) = pool.reports();
    let pool = Arc::new(Mutex::new(pool));
    let result = run_with_pool(&settings, &uplink, &state, &pool);
    info!("stopping: detaching XDP programs and restoring the interfaces");
    match Arc::try_unwrap(pool) {
        Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()).stop(),
        Err(shared_pool) => lock(&shared_pool).stop_in_place(),
    }
    result
}

/// Creates the host interface and attaches nodeplane to its end, so the
/// node's own processes reach Services (`hostif`). A failure is logged and the
/// agent runs without it: the node's traffic then goes where it went before.
fn host_interface(
    uplink: &netif::Interface,
    state: &AgentState,
    pool: &Arc<Mutex<WorkerPool>>,
    localhost_nodeports: bool,
) -> Option<Arc<crate::hostif::HostInterface>> {
    use crate::hostif::{HostInterface, NODEPLANE_END};
    let mtu = if uplink.mtu > 50 {
        uplink.mtu - 50
    } else {
        1450
    };
    let h = match HostInterface::create(mtu) {
        Ok(h) => h,
        Err(e) => {
            warn!("no host interface, the node's own traffic is not proxied: {e}");
            return None;
        }
    };
    // The pool's lock is released before the arms take it again.
    let attached = lock(pool).add_interface(NODEPLANE_END, h.ifindex, InterfaceRole::Pod);
    match attached {
        Ok(mode) => {
            info!(interface = NODEPLANE_END, mode = %mode, "host interface attached");
            let queues = queues_of(&lock(pool), h.ifindex);
            lock(&state.interfaces).push(InterfaceStatus {
                name: NODEPLANE_END.into(),
                ifindex: h.ifindex,
                role: "host".into(),
                xdp_mode: mode,
                queues,
            });
            local_nodeports(&h, pool, localhost_nodeports);
            Some(Arc::new(h))
        }
        Err(e) => {
            warn!("cannot attach the host interface, the node's own traffic is not proxied: {e:#}");
            let _ = HostInterface::remove();
            None
        }
    }
}

/// Hands the node's own connections to its NodePorts (delivered through
/// `lo`, never routed) to the host interface: the steering's loopback program
/// on `lo` egress. Without it those connections reach the node's own sockets
/// on the NodePort, as before; a failure is logged.
fn local_nodeports(
    h: &crate::hostif::HostInterface,
    pool: &Arc<Mutex<WorkerPool>>,
    localhost: bool,
) {
    let to = dataplane::io::steering::LocalRedirect {
        ifindex: h.kernel_ifindex,
        mtu: h.mtu,
        dst_mac: h.mac,
        src_mac: h.kernel_mac,
        localhost,
    };
    let r = netif::ifindex("lo")
        .map_err(anyhow::Error::from)
        .and_then(|lo| Ok(lock(pool).steering().redirect_local_nodeports(lo, to)?));
    match r {
        Ok(()) => info!(
            "the node's own NodePort connections go through the host interface (tc egress on lo)"
        ),
        Err(e) => warn!("the node's connections to its own NodePorts are not proxied: {e:#}"),
    }
}

fn run_with_pool(
    settings: &Settings,
    uplink: &netif::Interface,
    state: &AgentState,
    pool: &Arc<Mutex<WorkerPool>>,
) -> anyhow::Result<()> {
    let mode = lock(pool)
        .add_interface(&settings.uplink, uplink.ifindex, InterfaceRole::Uplink)
        .with_context(|| format!("attaching to the uplink {}", settings.uplink))?;
    let queues = queues_of(&lock(pool), uplink.ifindex);
    lock(&state.interfaces).push(InterfaceStatus {
        name: settings.uplink.clone(),
        ifindex: uplink.ifindex,
        role: "uplink".into(),
        xdp_mode: mode,
        queues,
    });
    if let crate::config::DetectLocal::BridgeInterface(b) = &settings.masquerade.detect_local {
        warn!(
            bridge = %b,
            "detect-local-mode BridgeInterface: nodeplane-cni attaches pods without a bridge, so only a pod interface named like the bridge counts as the cluster's; every other pod's ClusterIP traffic is masqueraded"
        );
    }
    let host_if = if settings.host_interface {
        host_interface(uplink, state, pool, settings.localhost_nodeports)
    } else {
        // One a previous agent left (it crashed, or ran with it on).
        if let Err(e) = crate::hostif::HostInterface::remove() {
            warn!("removing a stale host interface: {e}");
        }
        None
    };
    let cfg = LocalConfig {
        node_name: settings.node_name.clone(),
        uplink_ifindex: uplink.ifindex,
        uplink_mac: uplink.mac,
        uplink_mtu: uplink.mtu,
        uplink_ip: uplink.ipv4,
        vtep_mac: settings.vtep_mac,
        overlay: shared::snapshot::OverlayConfig {
            vni: settings.vni,
            port: settings.vxlan_port,
        },
        service_cidrs: settings.service_cidrs.clone(),
        masquerade_ports: settings.masquerade_ports,
        maglev_size: settings.maglev_size,
        proxy_name: "nodeplane".into(),
        masquerade: settings.masquerade.clone(),
        nodeport_addresses: settings.nodeport_addresses.clone(),
        localhost_nodeports: settings.localhost_nodeports,
        derive_endpoints: matches!(settings.source, Source::Manifests(_)),
        dns: settings.dns.clone(),
        host_if: host_if.as_ref().map(|h| shared::snapshot::PodHop {
            mac: h.kernel_mac,
            host_mac: h.mac,
            host_ifindex: h.ifindex,
        }),
    };
    let source = match &settings.source {
        Source::Manifests(dir) => SourceConfig::Manifests(dir.clone()),
        Source::ApiServer(k) => SourceConfig::ApiServer {
            kubeconfig: k.clone(),
        },
    };
    let facts = facts_provider(settings, uplink, state.clone(), pool.clone());

    // Keep the control threads off the workers' cores when there are others,
    // so a publish or a facts tick never preempts a poll-mode worker.
    let control_cores = control_cores(state);
    if !control_cores.is_empty() {
        info!(cores = ?control_cores, "control threads kept off the worker cores");
        pin_to_any(&control_cores);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("nodeplane-control")
        .on_thread_start(move || pin_to_any(&control_cores))
        .build()
        .context("starting the control runtime")?;
    let result = rt.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let status_task = tokio::spawn({
            let (addr, st, stop) = (settings.status_addr, state.clone(), stop_rx.clone());
            async move {
                let r = status::serve(addr, st, StatusOptions::default(), stop).await;
                if let Err(e) = &r {
                    warn!("{e:#}");
                }
                r
            }
        });
        let hc_ip = uplink.ipv4.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let hc_task = tokio::spawn(status::serve_health_check_node_ports(
            state.clone(),
            hc_ip,
            stop_rx.clone(),
        ));
        let steer_task = tokio::spawn(steering_loop(
            state.clone(),
            pool.clone(),
            settings.clone(),
            uplink.ipv4,
            host_if.clone(),
            stop_rx.clone(),
        ));
        let control_task = tokio::spawn(run_control(
            source,
            cfg,
            facts,
            state.clone(),
            stop_rx.clone(),
        ));
        let mut control_task = control_task;
        let outcome = tokio::select! {
            r = shutdown_signal() => r.map(|sig| info!(signal = sig, "shutting down")),
            r = &mut control_task => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.context("control loop")),
                Err(e) => Err(anyhow::anyhow!("control loop panicked: {e}")),
            },
        };
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), status_task).await;
        let _ = tokio::time::timeout(Duration::from_secs(3), hc_task).await;
        let _ = tokio::time::timeout(Duration::from_secs(3), steer_task).await;
        let _ = tokio::time::timeout(Duration::from_secs(3), control_task).await;
        outcome
    });
    if let Some(h) = &host_if {
        // Detached and closed first, then removed with its routes (nph1
        // forwards nothing meanwhile, so no packet loops between the ends).
        lock(pool).steering().stop_local_nodeports();
        lock(pool).remove_interface(h.ifindex);
        if let Err(e) = crate::hostif::HostInterface::remove() {
            warn!("removing the host interface: {e}");
        }
    }
    result
}

/// How many queues of an attached interface the workers poll.
fn queues_of(pool: &WorkerPool, ifindex: u32) -> u32 {
    pool.interfaces()
        .iter()
        .find(|i| i.ifindex == ifindex)
        .map_or(0, |i| i.queues)
}

async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Cores no worker is pinned to (empty when the workers use them all, or
/// pinning failed: then the kernel places the control threads).
fn control_cores(state: &AgentState) -> Vec<usize> {
    // Workers report their core once started; wait briefly for the reports.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut used: Vec<Option<usize>>;
    loop {
        used = lock(&state.workers).iter().map(|w| w.load().core).collect();
        if used.iter().all(Option::is_some) || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if used.iter().any(Option::is_none) {
        return Vec::new();
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..n).filter(|c| !used.contains(&Some(*c))).collect()
}

/// Restricts the calling thread to `cores` (best effort).
fn pin_to_any(cores: &[usize]) {
    if cores.is_empty() {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes within it
    // for core ids below CPU_SETSIZE; sched_setaffinity(0, …) affects only the
    // calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cores {
            if c < libc::CPU_SETSIZE as usize {
                libc::CPU_SET(c, &mut set);
            }
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The node-local facts the reducer needs, read on every control tick: pods the
/// CNI plugin registered (their interfaces are attached or detached here as they
/// come and go), the uplink's neighbours and its default gateway.
fn facts_provider(
    settings: &Settings,
    uplink: &netif::Interface,
    state: AgentState,
    pool: Arc<Mutex<WorkerPool>>,
) -> Box<dyn FnMut() -> LocalFacts + Send> {
    let state_dir = settings.state_dir.clone();
    let uplink_name = settings.uplink.clone();
    let uplink_index = uplink.ifindex;
    let mut attached: BTreeMap<u32, String> = BTreeMap::new();
    let mut last_errors: Vec<String> = Vec::new();
    Box::new(move || {
        let (records, errors) = podstate::load_pods(&state_dir);
        if errors != last_errors {
            for e in &errors {
                warn!("pod registration: {e}");
            }
            last_errors = errors;
        }
        let mut pods: Vec<PodRoute> = records.iter().filter_map(|r| r.to_route()).collect();
        pods.sort_by_key(|p| u32::from(p.ip));
        pods.dedup_by_key(|p| p.ip);
        // Reconcile attached pod interfaces with the registrations.
        let wanted: BTreeMap<u32, String> = records
            .iter()
            .filter(|r| r.to_route().is_some())
            .map(|r| (r.host_ifindex, r.host_ifname.clone()))
            .collect();
        let mut p = lock(&pool);
        for (ifindex, name) in &attached {
            if !wanted.contains_key(ifindex) {
                p.remove_interface(*ifindex);
                lock(&state.interfaces).retain(|i| i.ifindex != *ifindex);
                info!(interface = %name, "pod interface detached");
            }
        }
        attached.retain(|k, _| wanted.contains_key(k));
        for (ifindex, name) in &wanted {
            if attached.contains_key(ifindex) {
                continue;
            }
            match p.add_interface(name, *ifindex, InterfaceRole::Pod) {
                Ok(mode) => {
                    info!(interface = %name, mode = %mode, "pod interface attached");
                    attached.insert(*ifindex, name.clone());
                    let queues = queues_of(&p, *ifindex);
                    lock(&state.interfaces).push(InterfaceStatus {
                        name: name.clone(),
                        ifindex: *ifindex,
                        role: "pod".into(),
                        xdp_mode: mode,
                        queues,
                    });
                }
                Err(e) => warn!(interface = %name, "cannot attach pod interface: {e:#}"),
            }
        }
        // Only pods whose interface is attached are routed to.
        pods.retain(|r| attached.contains_key(&r.host_ifindex));
        drop(p);
        let neighbors = netif::neighbors(&uplink_name);
        let gateway = netif::default_gateway(uplink_index);
        let mut pod_interfaces: Vec<(u32, String)> =
            attached.iter().map(|(i, n)| (*i, n.clone())).collect();
        pod_interfaces.sort();
        LocalFacts {
            pods,
            neighbors,
            gateway,
            pod_interfaces,
        }
    })
}

/// Keeps the XDP steering maps equal to what the published tables own, and asks
/// the kernel to resolve the underlay neighbours the tables need.
async fn steering_loop(
    state: AgentState,
    pool: Arc<Mutex<WorkerPool>>,
    settings: Settings,
    uplink_ip: Option<Ipv4Addr>,
    host_if: Option<Arc<crate::hostif::HostInterface>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last: Option<SteeringParams> = None;
    let mut last_cidrs: Option<Vec<shared::Ipv4Cidr>> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        {
            let stats = lock(&pool).steering().stats();
            *lock(&state.steering) = dataplane::io::steering::STAT_NAMES
                .iter()
                .zip(stats.counts)
                .map(|(n, c)| (n.to_string(), c))
                .collect();
        }
        let snap = state.tables.load_full();
        let params = steering_params(&snap, &settings, uplink_ip);
        if last.as_ref() != Some(&params) {
            if let Err(e) = lock(&pool).set_steering(&params) {
                warn!("updating the steering maps: {e:#}");
                continue;
            }
            if let Some(h) = &host_if {
                // The node's routes to what nodeplane serves: the Service
                // CIDRs and the frontend addresses outside them. A failure is
                // tried again on the next tick (`last` is not updated).
                let mut want: std::collections::BTreeSet<shared::Ipv4Cidr> =
                    params.service_cidrs.iter().copied().collect();
                want.extend(
                    params
                        .frontend_ips
                        .iter()
                        .filter_map(|ip| shared::Ipv4Cidr::new(*ip, 32).ok()),
                );
                let h = h.clone();
                let src = uplink_ip;
                let r = tokio::task::spawn_blocking(move || h.set_routes(&want, src)).await;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        warn!("routing Services via the host interface: {e}");
                        continue;
                    }
                    Err(e) => {
                        warn!("routing Services via the host interface: {e}");
                        continue;
                    }
                }
            }
            last = Some(params);
        }
        // The pod CIDR for CNI configs whose subnet is `usePodCidr`.
        let cidrs = &snap.node().pod_cidrs;
        if !cidrs.is_empty() && last_cidrs.as_ref() != Some(cidrs) {
            match crate::podstate::write_pod_cidrs(&settings.state_dir, cidrs) {
                Ok(()) => last_cidrs = Some(cidrs.clone()),
                Err(e) => warn!(
                    "publishing the pod CIDR in {}: {e}",
                    settings.state_dir.display()
                ),
            }
        }
        for node in &snap.spec.remote_nodes {
            if snap.neighbor(u32::from(node.underlay_ip)).is_none() {
                netif::resolve_neighbor(&settings.uplink, node.underlay_ip);
            }
        }
    }
}

/// What the XDP program must steer to the workers for these tables.
pub fn steering_params(
    snap: &Snapshot,
    settings: &Settings,
    uplink_ip: Option<Ipv4Addr>,
) -> SteeringParams {
    let mut node_ips: Vec<Ipv4Addr> = snap.node().node_ips.clone();
    node_ips.extend(snap.node().underlay_ip);
    node_ips.extend(uplink_ip);
    node_ips.sort();
    node_ips.dedup();
    // Without nodePortAddresses NodePorts answer on every address steered to
    // the node (the underlay's too); with it, on the node IPs it names.
    let nodeport_ips = if snap.node().nodeport_cidrs.is_empty() {
        node_ips.clone()
    } else {
        snap.nodeport_ips().collect()
    };
    let mut frontend_ips = Vec::new();
    let mut nodeports = Vec::new();
    for svc in &snap.spec.services {
        frontend_ips.extend(svc.external_ips.iter().copied());
        frontend_ips.extend(svc.load_balancer_ips.iter().copied());
        frontend_ips.extend(
            svc.cluster_ips
                .iter()
                .filter(|ip| !snap.spec.service_cidrs.iter().any(|c| c.contains(**ip)))
                .copied(),
        );
    }
    for sp in &snap.service_ports {
        if let Some(np) = sp.node_port {
            nodeports.push((sp.proto, np));
        }
    }
    frontend_ips.sort();
    frontend_ips.dedup();
    nodeports.sort();
    nodeports.dedup();
    let _ = FrontendKind::ClusterIp;
    SteeringParams {
        node_ips,
        nodeport_ips,
        vxlan_port: settings.vxlan_port,
        service_cidrs: snap.spec.service_cidrs.clone(),
        frontend_ips,
        nodeports,
        masq_range: settings.masquerade_ports,
    }
}
