//! The Kubernetes objects seen so far (Services, EndpointSlices, Nodes, Pods),
//! keyed by (namespace, name) per kind and grouped by the source that delivered
//! them, so one source's relist or replace never drops another source's objects.
//! Operations mirror kube-runtime watcher events. Also each source's health
//! (last sync, last error). Owns no I/O; the reducer only reads it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::Notify;

use crate::state::{lock, SourceStatus};

/// The kinds of object nodeplane reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
    Pod,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Service, Kind::EndpointSlice, Kind::Node, Kind::Pod];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
        }
    }
}

/// An object's identity within its kind. Cluster-scoped objects (Nodes) have an
/// empty namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The key of an object from its metadata.
    pub fn of(meta: &ObjectMeta) -> Self {
        ObjectKey {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// Any object the store holds. (Only used in transit, e.g. a manifest file's
/// objects, so the variants stay unboxed.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Service),
    EndpointSlice(EndpointSlice),
    Node(Node),
    Pod(Pod),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Node(_) => Kind::Node,
            Object::Pod(_) => Kind::Pod,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
        }
    }

    pub fn key(&self) -> ObjectKey {
        ObjectKey::of(self.meta())
    }
}

/// The objects of one source, per kind (opaque; reached through `KubeObject`).
#[derive(Clone, Debug, Default)]
pub struct Objects {
    services: BTreeMap<ObjectKey, Service>,
    slices: BTreeMap<ObjectKey, EndpointSlice>,
    nodes: BTreeMap<ObjectKey, Node>,
    pods: BTreeMap<ObjectKey, Pod>,
}

impl Objects {
    fn len(&self) -> usize {
        self.services.len() + self.slices.len() + self.nodes.len() + self.pods.len()
    }
}

/// A Kubernetes object type the store holds.
pub trait KubeObject: Clone + PartialEq + Send + 'static {
    const KIND: Kind;
    fn metadata(&self) -> &ObjectMeta;
    fn metadata_mut(&mut self) -> &mut ObjectMeta;
    fn into_object(self) -> Object;
    #[doc(hidden)]
    fn map_of(objects: &Objects) -> &BTreeMap<ObjectKey, Self>;
    #[doc(hidden)]
    fn map_of_mut(objects: &mut Objects) -> &mut BTreeMap<ObjectKey, Self>;
}

macro_rules! kube_object {
    ($ty:ty, $kind:ident, $field:ident) => {
        impl KubeObject for $ty {
            const KIND: Kind = Kind::$kind;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
            fn into_object(self) -> Object {
                Object::$kind(self)
            }
            fn map_of(objects: &Objects) -> &BTreeMap<ObjectKey, Self> {
                &objects.$field
            }
            fn map_of_mut(objects: &mut Objects) -> &mut BTreeMap<ObjectKey, Self> {
                &mut objects.$field
            }
        }
    };
}

kube_object!(Service, Service, services);
kube_object!(EndpointSlice, EndpointSlice, slices);
kube_object!(Node, Node, nodes);
kube_object!(Pod, Pod, pods);

/// Everything held for one source.
#[derive(Clone, Debug, Default)]
struct SourceEntry {
    objects: Objects,
    /// Kinds this source will deliver (the store is not synced for a kind until
    /// every source expecting it has delivered a full list).
    expected: BTreeSet<Kind>,
    /// Kinds whose first full list has arrived.
    synced: BTreeSet<Kind>,
    /// Relists in progress (watcher `Init` .. `InitDone`): the objects listed so far.
    relist: BTreeMap<Kind, Objects>,
    last_sync: Option<SystemTime>,
    last_error: Option<String>,
    errors: u64,
    /// The last refusal (403) and when it came.
    forbidden: Option<(SystemTime, String)>,
}

/// The Kubernetes objects seen so far, grouped by source.
#[derive(Clone, Debug, Default)]
pub struct ObjectStore {
    sources: BTreeMap<String, SourceEntry>,
    revision: u64,
    status_revision: u64,
}

/// Drops what the store never needs (managed fields are most of an object's size).
fn trim<K: KubeObject>(mut obj: K) -> K {
    obj.metadata_mut().managed_fields = None;
    obj
}

impl ObjectStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bumped on every change to the objects (not on identical re-applies).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Bumped on every change to a source's health (sync time, errors).
    pub fn status_revision(&self) -> u64 {
        self.status_revision
    }

    fn entry(&mut self, source: &str) -> &mut SourceEntry {
        if !self.sources.contains_key(source) {
            self.status_revision += 1;
        }
        self.sources.entry(source.to_string()).or_default()
    }

    fn touch(&mut self, changed: bool) -> bool {
        if changed {
            self.revision += 1;
        }
        changed
    }

    /// Declares that `source` will deliver `kinds`: until it has delivered a full
    /// list of each, those kinds are not synced.
    pub fn register(&mut self, source: &str, kinds: &[Kind]) {
        let e = self.entry(source);
        e.expected.extend(kinds.iter().copied());
    }

    /// Adds or updates one object. Returns whether anything changed.
    pub fn apply<K: KubeObject>(&mut self, source: &str, obj: K) -> bool {
        let obj = trim(obj);
        let key = ObjectKey::of(obj.metadata());
        let map = K::map_of_mut(&mut self.entry(source).objects);
        let changed = map.get(&key) != Some(&obj);
        if changed {
            map.insert(key, obj);
        }
        self.touch(changed)
    }

    /// Removes one object. Returns whether it was there.
    pub fn delete<K: KubeObject>(&mut self, source: &str, key: &ObjectKey) -> bool {
        let changed = match self.sources.get_mut(source) {
            Some(e) => K::map_of_mut(&mut e.objects).remove(key).is_some(),
            None => false,
        };
        self.touch(changed)
    }

    /// Replaces every object of kind `K` from `source` with a full list (a
    /// relist): objects absent from `objs` are dropped. Marks the kind synced.
    pub fn replace<K: KubeObject>(&mut self, source: &str, objs: Vec<K>) -> bool {
        let new: BTreeMap<ObjectKey, K> = objs
            .into_iter()
            .map(trim)
            .map(|o| (ObjectKey::of(o.metadata()), o))
            .collect();
        let e = self.entry(source);
        e.relist.remove(&K::KIND);
        let map = K::map_of_mut(&mut e.objects);
        let changed = *map != new;
        if changed {
            *map = new;
        }
        let first = e.synced.insert(K::KIND);
        e.expected.insert(K::KIND);
        self.mark_synced(source);
        // The first full list changes what is programmable even when empty.
        self.touch(changed || first)
    }

    /// Replaces everything `source` holds, of every kind, with `objs` (a full
    /// directory load). Marks every kind synced for this source.
    pub fn replace_all(&mut self, source: &str, objs: Vec<Object>) -> bool {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        for o in objs {
            match o {
                Object::Service(s) => services.push(s),
                Object::EndpointSlice(s) => slices.push(s),
                Object::Node(n) => nodes.push(n),
                Object::Pod(p) => pods.push(p),
            }
        }
        let a = self.replace(source, services);
        let b = self.replace(source, slices);
        let c = self.replace(source, nodes);
        let d = self.replace(source, pods);
        a || b || c || d
    }

    /// Starts a relist of kind `K` (watcher `Init`): the objects in force stay
    /// until `relist_done`. A second `Init` restarts the buffer.
    pub fn relist_begin(&mut self, source: &str, kind: Kind) {
        let e = self.entry(source);
        e.expected.insert(kind);
        e.relist.insert(kind, Objects::default());
    }

    /// One object of a relist in progress (watcher `InitApply`). Without a
    /// preceding `relist_begin` it starts one.
    pub fn relist_apply<K: KubeObject>(&mut self, source: &str, obj: K) {
        let obj = trim(obj);
        let key = ObjectKey::of(obj.metadata());
        let buf = self.entry(source).relist.entry(K::KIND).or_default();
        K::map_of_mut(buf).insert(key, obj);
    }

    /// Ends a relist (watcher `InitDone`): the listed objects replace the kind,
    /// dropping objects deleted meanwhile. Returns whether anything changed.
    pub fn relist_done<K: KubeObject>(&mut self, source: &str) -> bool {
        let e = self.entry(source);
        let mut buf = e.relist.remove(&K::KIND).unwrap_or_default();
        let objs: Vec<K> = std::mem::take(K::map_of_mut(&mut buf))
            .into_values()
            .collect();
        self.replace(source, objs)
    }

    /// Records a successful full sync time for `source`, clearing its last error.
    pub fn mark_synced(&mut self, source: &str) {
        let e = self.entry(source);
        e.last_sync = Some(SystemTime::now());
        e.last_error = None;
        self.status_revision += 1;
    }

    /// Records an error of `source` (its objects stay in force).
    pub fn record_error(&mut self, source: &str, msg: impl Into<String>) {
        let e = self.entry(source);
        e.last_error = Some(msg.into());
        e.errors += 1;
        self.status_revision += 1;
    }

    /// Records that the API server refused `source` (403): the agent's
    /// identity lacks a permission. Readiness waits while it is recent.
    pub fn record_forbidden(&mut self, source: &str, msg: impl Into<String>) {
        let e = self.entry(source);
        e.forbidden = Some((SystemTime::now(), msg.into()));
        self.status_revision += 1;
    }

    /// Sets or clears `source`'s last error without counting a new error (a
    /// problem that persists across syncs, e.g. a manifest still broken).
    pub fn set_last_error(&mut self, source: &str, msg: Option<String>) {
        let e = self.entry(source);
        if e.last_error != msg {
            e.last_error = msg;
            self.status_revision += 1;
        }
    }

    /// Clears `source`'s last error (e.g. after a good event following an error).
    pub fn clear_error(&mut self, source: &str) {
        if let Some(e) = self.sources.get_mut(source) {
            if e.last_error.take().is_some() {
                self.status_revision += 1;
            }
        }
    }

    /// Has the first full list of `kind` arrived from every source expecting it
    /// (and from at least one source)?
    pub fn kind_synced(&self, kind: Kind) -> bool {
        let mut any = false;
        for e in self.sources.values() {
            if e.synced.contains(&kind) {
                any = true;
            } else if e.expected.contains(&kind) {
                return false;
            }
        }
        any
    }

    /// Every object of kind `K` across sources, sorted by key. When two sources
    /// hold the same key, the source whose name sorts first wins.
    pub fn all<K: KubeObject>(&self) -> Vec<&K> {
        let mut merged: BTreeMap<&ObjectKey, &K> = BTreeMap::new();
        for e in self.sources.values() {
            for (k, v) in K::map_of(&e.objects) {
                merged.entry(k).or_insert(v);
            }
        }
        merged.into_values().collect()
    }

    pub fn services(&self) -> Vec<&Service> {
        self.all::<Service>()
    }

    pub fn endpoint_slices(&self) -> Vec<&EndpointSlice> {
        self.all::<EndpointSlice>()
    }

    pub fn nodes(&self) -> Vec<&Node> {
        self.all::<Node>()
    }

    pub fn pods(&self) -> Vec<&Pod> {
        self.all::<Pod>()
    }

    /// One object of kind `K` by key (first source wins).
    pub fn get<K: KubeObject>(&self, key: &ObjectKey) -> Option<&K> {
        self.sources
            .values()
            .find_map(|e| K::map_of(&e.objects).get(key))
    }

    /// The names of every source seen.
    pub fn source_names(&self) -> Vec<String> {
        self.sources.keys().cloned().collect()
    }

    /// How many objects `source` holds.
    pub fn object_count(&self, source: &str) -> usize {
        self.sources.get(source).map_or(0, |e| e.objects.len())
    }

    /// How many objects of `kind` `source` holds.
    pub fn count(&self, source: &str, kind: Kind) -> usize {
        self.sources.get(source).map_or(0, |e| match kind {
            Kind::Service => e.objects.services.len(),
            Kind::EndpointSlice => e.objects.slices.len(),
            Kind::Node => e.objects.nodes.len(),
            Kind::Pod => e.objects.pods.len(),
        })
    }

    /// The status of every source, for `AgentState::set_source`.
    pub fn source_statuses(&self) -> Vec<SourceStatus> {
        self.sources
            .iter()
            .map(|(name, e)| SourceStatus {
                name: name.clone(),
                objects: e.objects.len(),
                last_sync: e.last_sync.map(format_rfc3339),
                last_error: e.last_error.clone(),
                errors: e.errors,
                forbidden: e.forbidden.as_ref().map(|(_, m)| m.clone()),
                forbidden_at: e.forbidden.as_ref().map(|(t, _)| *t),
            })
            .collect()
    }
}

/// The store shared between sources (writers) and the control loop (reader),
/// with a wake-up for the control loop and the time the oldest change not yet
/// taken was seen (the start of the programming-latency clock).
#[derive(Clone, Default)]
pub struct StoreHandle {
    inner: Arc<Mutex<ObjectStore>>,
    notify: Arc<Notify>,
    change_seen: Arc<Mutex<Option<Instant>>>,
}

impl StoreHandle {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` on the store; wakes the control loop if objects or source
    /// health changed.
    pub fn update<R>(&self, f: impl FnOnce(&mut ObjectStore) -> R) -> R {
        let mut s = lock(&self.inner);
        let before = (s.revision, s.status_revision);
        let r = f(&mut s);
        let after = (s.revision, s.status_revision);
        drop(s);
        if after.0 != before.0 {
            lock(&self.change_seen).get_or_insert_with(Instant::now);
        }
        if after != before {
            self.notify.notify_one();
        }
        r
    }

    /// Runs `f` on the store without changing it.
    pub fn read<R>(&self, f: impl FnOnce(&ObjectStore) -> R) -> R {
        f(&lock(&self.inner))
    }

    /// Waits until the store changed since the last wake-up.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }

    /// When the oldest change not yet taken was seen; resets the clock.
    pub fn take_change_seen(&self) -> Option<Instant> {
        lock(&self.change_seen).take()
    }
}

/// Formats a wall-clock time as RFC 3339 in UTC, e.g. `2024-05-01T12:34:56Z`.
pub fn format_rfc3339(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs(),
        Err(_) => 0,
    };
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn svc(ns: &str, name: &str, ip: &str) -> Service {
        let mut s = Service::default();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        s.spec = Some(k8s_openapi::api::core::v1::ServiceSpec {
            cluster_ip: Some(ip.into()),
            ..Default::default()
        });
        s
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(format_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661); // 2000-02-29
        assert_eq!(format_rfc3339(t), "2000-02-29T01:01:01Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(format_rfc3339(t), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn sources_do_not_drop_each_other() {
        let mut st = ObjectStore::new();
        assert!(st.replace("a", vec![svc("ns", "x", "10.0.0.1")]));
        assert!(st.replace("b", vec![svc("ns", "y", "10.0.0.2")]));
        assert!(st.replace::<Service>("a", vec![]));
        let names: Vec<_> = st
            .services()
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, vec!["y".to_string()]);
    }

    #[test]
    fn identical_apply_is_not_a_change() {
        let mut st = ObjectStore::new();
        assert!(st.apply("a", svc("ns", "x", "10.0.0.1")));
        let rev = st.revision();
        assert!(!st.apply("a", svc("ns", "x", "10.0.0.1")));
        assert_eq!(st.revision(), rev);
        assert!(st.apply("a", svc("ns", "x", "10.0.0.9")));
        assert!(st.delete::<Service>("a", &ObjectKey::new("ns", "x")));
        assert!(!st.delete::<Service>("a", &ObjectKey::new("ns", "x")));
    }

    #[test]
    fn sync_needs_every_expecting_source() {
        let mut st = ObjectStore::new();
        assert!(!st.kind_synced(Kind::Service));
        st.register("a", &[Kind::Service]);
        st.register("b", &[Kind::Service]);
        st.replace::<Service>("a", vec![]);
        assert!(!st.kind_synced(Kind::Service));
        st.relist_begin("b", Kind::Service);
        st.relist_apply("b", svc("ns", "x", "10.0.0.1"));
        assert!(!st.kind_synced(Kind::Service));
        assert!(st.relist_done::<Service>("b"));
        assert!(st.kind_synced(Kind::Service));
        assert_eq!(st.services().len(), 1);
    }
}
