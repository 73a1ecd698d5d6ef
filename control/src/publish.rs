//! Publishing tables: `Publisher` builds a `Snapshot` from a `TableSpec` and
//! swaps it in with the next generation number (only when the spec changed),
//! and measures programming latency once every worker runs on it: from when
//! the agent saw the change, and (`TriggerTimes`) from when the API server's
//! EndpointSlice controller says it happened, as kube-proxy measures it.
//! `run_control` is the control loop: source → store → reducer → publisher.
//! Nothing here runs on the per-packet path.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use shared::snapshot::{Snapshot, TableSpec};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::apiserver;
use crate::manifests;
use crate::reducer::{reduce, synced, LocalConfig, LocalFacts};
use crate::state::{lock, AgentState, PublishInfo};
use crate::store::{ObjectKey, ObjectStore, StoreHandle};

/// How often node-local facts are re-read when nothing else happens.
pub const FACTS_INTERVAL: Duration = Duration::from_millis(100);
/// The least time between two reduces: a change after a quiet spell is
/// reduced at once, and the rest of a burst is collected until `DEBOUNCE`
/// after that reduce (kube-proxy's minimum sync period does the same).
pub const DEBOUNCE: Duration = Duration::from_millis(20);
/// How often workers are checked while a generation is not on all of them.
const OBSERVE_INTERVAL: Duration = Duration::from_millis(2);

/// Publishes tables to the workers.
pub struct Publisher {
    state: AgentState,
    last: Option<TableSpec>,
    generation: u64,
    /// The generation not yet on every worker, and when the oldest change it
    /// carries was seen.
    awaiting: Option<(u64, Instant)>,
    /// Trigger times of changes waiting for every worker (`triggered`).
    triggers: Vec<SystemTime>,
}

impl Publisher {
    /// Starts after whatever generation `state.tables` holds.
    pub fn new(state: AgentState) -> Self {
        let generation = state.tables.load().generation;
        Publisher {
            state,
            last: None,
            generation,
            awaiting: None,
            triggers: Vec::new(),
        }
    }

    /// The last published generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The spec of the last published generation.
    pub fn last_spec(&self) -> Option<&TableSpec> {
        self.last.as_ref()
    }

    /// Is a published generation not yet on every worker?
    pub fn awaiting_workers(&self) -> bool {
        self.awaiting.is_some()
    }

    /// Publishes `spec` as the next generation, unless it equals the last one
    /// (a no-op resync publishes nothing). Returns the new generation.
    pub fn publish(&mut self, spec: TableSpec) -> Option<u64> {
        self.publish_seen(spec, Instant::now(), Duration::ZERO)
    }

    /// `publish`, with the time the change was first seen (start of the
    /// programming-latency clock) and the time the reduce took (counted in
    /// `build_us`).
    pub fn publish_seen(
        &mut self,
        spec: TableSpec,
        seen: Instant,
        reduce_time: Duration,
    ) -> Option<u64> {
        if self.last.as_ref() == Some(&spec) {
            return None;
        }
        let t0 = Instant::now();
        let generation = self.generation + 1;
        // Tables whose backends did not change are copied from the running
        // snapshot rather than rebuilt.
        let prev = self.state.tables.load_full();
        let snap = Snapshot::build_after(spec.clone(), generation, Some(&prev));
        drop(prev);
        let build_us = u64::try_from((reduce_time + t0.elapsed()).as_micros()).unwrap_or(u64::MAX);
        self.state.tables.store(Arc::new(snap));
        self.generation = generation;
        self.last = Some(spec);
        *lock(&self.state.last_publish) = PublishInfo {
            generation,
            at: Some(SystemTime::now()),
            build_us,
            programming_latency_us: None,
        };
        lock(&self.state.pending_since).get_or_insert(seen);
        let oldest = self.awaiting.map_or(seen, |(_, s)| s.min(seen));
        self.awaiting = Some((generation, oldest));
        self.observe_workers();
        Some(generation)
    }

    /// Once every worker runs the last published generation (or there are no
    /// workers), records the programming latency and clears `pending_since`.
    pub fn observe_workers(&mut self) {
        let Some((generation, seen)) = self.awaiting else {
            return;
        };
        let on_it = self
            .state
            .min_worker_generation()
            .is_none_or(|g| g >= generation);
        if !on_it {
            return;
        }
        let latency = u64::try_from(seen.elapsed().as_micros()).unwrap_or(u64::MAX);
        {
            let mut lp = lock(&self.state.last_publish);
            if lp.generation == generation {
                lp.programming_latency_us = Some(latency);
            }
        }
        *lock(&self.state.pending_since) = None;
        self.awaiting = None;
        self.observe_triggers();
    }

    /// Counts each of `triggers` (when changes happened in the API) in
    /// `programming_duration` once every worker runs the last published
    /// generation: now, if they already do (the change published nothing, or
    /// is on them already).
    pub fn triggered(&mut self, triggers: Vec<SystemTime>) {
        self.triggers.extend(triggers);
        if self.awaiting.is_none() {
            self.observe_triggers();
        }
    }

    fn observe_triggers(&mut self) {
        let now = SystemTime::now();
        for t in self.triggers.drain(..) {
            let d = now.duration_since(t).unwrap_or_default();
            self.state.programming_duration.observe(d.as_secs_f64());
        }
    }
}

/// The annotation the EndpointSlice controller sets on a slice: the time of
/// the newest change (a Pod's or the Service's) the slice reflects, with the
/// API's one-second resolution; kube-proxy's clock start for
/// `network_programming_duration_seconds`.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The trigger times already counted, by slice, so each change counts once.
#[derive(Debug)]
pub struct TriggerTimes {
    known: BTreeMap<ObjectKey, String>,
    since: SystemTime,
    /// The store revision `known` was taken at (a reduce for node-local
    /// facts alone reads no slice).
    revision: Option<u64>,
}

impl TriggerTimes {
    /// Counts only changes from `since` on (kube-proxy's rule: the first
    /// list's changes happened before this agent ran).
    pub fn new(since: SystemTime) -> Self {
        TriggerTimes {
            known: BTreeMap::new(),
            since,
            revision: None,
        }
    }

    /// The trigger times of `store`'s slices that are new since the last call
    /// (a slice's annotation appeared or changed) and not before `since`.
    /// Slices gone from the store are forgotten; an annotation that is not
    /// RFC 3339 is ignored.
    pub fn take_new(&mut self, store: &ObjectStore) -> Vec<SystemTime> {
        if self.revision == Some(store.revision()) {
            return Vec::new();
        }
        self.revision = Some(store.revision());
        let mut now = BTreeMap::new();
        let mut new = Vec::new();
        for slice in store.endpoint_slices() {
            let Some(v) = slice
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(LAST_CHANGE_TRIGGER_TIME))
            else {
                continue;
            };
            let key = ObjectKey::of(&slice.metadata);
            if self.known.get(&key) != Some(v) {
                if let Some(t) = parse_time(v).filter(|t| *t >= self.since) {
                    new.push(t);
                }
            }
            now.insert(key, v.clone());
        }
        self.known = now;
        new
    }
}

fn parse_time(v: &str) -> Option<SystemTime> {
    let ts: k8s_openapi::jiff::Timestamp = v.parse().ok()?;
    Some(SystemTime::from(ts))
}

/// Where Kubernetes objects come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceConfig {
    /// A directory of manifests (the embedded default).
    Manifests(PathBuf),
    /// The API server: a kubeconfig file, or `None` for the in-cluster config.
    ApiServer { kubeconfig: Option<PathBuf> },
}

/// Starts the source; its objects go into `store`.
async fn start_source(
    source: SourceConfig,
    cfg: &LocalConfig,
    store: &StoreHandle,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    match source {
        SourceConfig::Manifests(dir) => {
            let m = manifests::load(&dir, store)?;
            info!(dir = %dir.display(), "reading Kubernetes objects from a manifest directory");
            Ok(tokio::spawn(manifests::run(
                m,
                store.clone(),
                shutdown.clone(),
            )))
        }
        SourceConfig::ApiServer { kubeconfig } => {
            let client = apiserver::client(kubeconfig.as_deref())
                .await
                .context("connecting to the API server")?;
            info!(
                kubeconfig = ?kubeconfig,
                "watching Services, EndpointSlices, Nodes and this node's Pods on the API server"
            );
            let vtep = apiserver::keep_node_vtep_published(
                client.clone(),
                store.clone(),
                cfg.node_name.clone(),
                cfg.vtep_mac,
                cfg.uplink_ip,
                cfg.overlay.vni,
                shutdown.clone(),
            );
            let watchers = apiserver::run_source(
                client,
                cfg.node_name.clone(),
                store.clone(),
                shutdown.clone(),
            );
            Ok(tokio::spawn(async move {
                futures::future::join(watchers, vtep).await;
            }))
        }
    }
}

enum Wake {
    Stop,
    Store,
    Tick,
    Reduce,
    Observe,
    SourceEnded(Result<(), tokio::task::JoinError>),
}

/// The control loop: feeds source events into the store, re-reads node-local
/// facts every `FACTS_INTERVAL` and before every reduce, reduces when anything
/// changed (at once after a quiet spell, then at most one reduce per `DEBOUNCE`), publishes, marks `first_sync` once the first
/// full sync is published, and keeps the source statuses current. Runs until
/// `shutdown` turns true. Errors only if the source cannot start (bad flag,
/// unreadable kubeconfig) or ends unexpectedly.
pub async fn run_control(
    source: SourceConfig,
    cfg: LocalConfig,
    mut facts: Box<dyn FnMut() -> LocalFacts + Send>,
    state: AgentState,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let store = StoreHandle::new();
    let mut source_task = start_source(source, &cfg, &store, &shutdown).await?;
    let mut publisher = Publisher::new(state.clone());
    let mut trigger_times = TriggerTimes::new(state.started);
    let mut current_facts = facts();
    // Reduce once right away: this node and its pods are routable before the
    // first sync of Services (which stay unprogrammed until then).
    let mut dirty: Option<Instant> = Some(Instant::now());
    let mut deadline: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
    let mut seen_revisions: Option<(u64, u64)> = None;
    let mut last_reduce: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(FACTS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let result = loop {
        let wake = tokio::select! {
            _ = apiserver::wait_shutdown(&mut shutdown) => Wake::Stop,
            r = &mut source_task => Wake::SourceEnded(r),
            _ = store.changed() => Wake::Store,
            _ = tick.tick() => Wake::Tick,
            _ = sleep_until_opt(deadline) => Wake::Reduce,
            _ = tokio::time::sleep(OBSERVE_INTERVAL), if publisher.awaiting_workers() => Wake::Observe,
        };
        let mut mark = |seen: Instant| {
            dirty = Some(dirty.map_or(seen, |d| d.min(seen)));
            deadline.get_or_insert_with(|| {
                let now = tokio::time::Instant::now();
                last_reduce.map_or(now, |l| (l + DEBOUNCE).max(now))
            });
        };
        match wake {
            Wake::Stop => break Ok(()),
            Wake::SourceEnded(r) => {
                if *shutdown.borrow() {
                    break Ok(());
                }
                break match r {
                    Ok(()) => Err(anyhow::anyhow!("the object source stopped unexpectedly")),
                    Err(e) => Err(anyhow::anyhow!("the object source failed: {e}")),
                };
            }
            Wake::Store => {
                if let Some(seen) = store.take_change_seen() {
                    mark(seen);
                }
            }
            Wake::Tick => {
                let f = facts();
                if f != current_facts {
                    current_facts = f;
                    mark(Instant::now());
                }
            }
            Wake::Reduce => {
                deadline = None;
                last_reduce = Some(tokio::time::Instant::now());
                // Facts are read fresh for every reduce, so every object event
                // is reduced together with the node's current pods/neighbours.
                current_facts = facts();
                let seen = dirty.take().unwrap_or_else(Instant::now);
                let t0 = Instant::now();
                let (spec, is_synced, triggers) = store.read(|s| {
                    (
                        reduce(s, &cfg, &current_facts),
                        synced(s),
                        trigger_times.take_new(s),
                    )
                });
                let reduce_time = t0.elapsed();
                if let Some(g) = publisher.publish_seen(spec, seen, reduce_time) {
                    tracing::debug!(generation = g, "published tables");
                }
                publisher.triggered(triggers);
                if is_synced && !state.first_sync_done() {
                    state.first_sync.store(true, Ordering::Release);
                    info!(
                        generation = publisher.generation(),
                        "first full sync of Services and EndpointSlices published"
                    );
                }
            }
            Wake::Observe => {}
        }
        publisher.observe_workers();
        let revisions = store.read(|s| (s.revision(), s.status_revision()));
        if seen_revisions != Some(revisions) {
            seen_revisions = Some(revisions);
            for st in store.read(|s| s.source_statuses()) {
                state.set_source(st);
            }
        }
    };
    source_task.abort();
    if let Err(e) = &result {
        warn!("control loop: {e:#}");
    }
    result
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
