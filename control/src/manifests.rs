//! The manifest-directory source (`--manifests DIR`, the embedded default):
//! every `*.yaml`/`*.yml` file directly in DIR, each with one or more documents
//! of kind Node, Service, EndpointSlice or Pod (others are ignored). A broken
//! file is reported by file and document and keeps its last good objects; the
//! other files still apply. Changes are picked up live (inotify via `notify`,
//! plus a cheap periodic rescan as a fallback). Every load is a full sync.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::apiserver::wait_shutdown;
use crate::store::{Kind, Object, ObjectKey, StoreHandle};

/// How often the directory is re-stat'ed when no inotify event arrives.
pub const RESCAN_INTERVAL: Duration = Duration::from_millis(250);
/// Every this many rescans, file contents are re-read and hashed even when
/// size and mtime look unchanged (edits within one mtime tick).
const VERIFY_EVERY: u32 = 8;
/// Quiet time after an inotify event before reading (editors write in steps).
pub const SETTLE: Duration = Duration::from_millis(30);

/// How long a file emptied of its objects must stay empty before they go: an
/// in-place writer stalled between truncating and writing (a loaded node)
/// leaves an empty file for longer than `SETTLE`. Removing a file takes its
/// objects away at once.
pub const EMPTY_SETTLE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest directory {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `index` counts documents from 1 in file order (separated by `---`).
    #[error("{file}: document {index}: {message}")]
    Document {
        file: PathBuf,
        index: usize,
        message: String,
    },
}

/// The source name a manifest directory shows up as in `/status`.
pub fn source_name(dir: &Path) -> String {
    format!("manifests:{}", dir.display())
}

/// Parses one manifest file's text. Documents of other kinds and empty
/// documents are skipped; namespaced objects without a namespace get
/// "default". The first malformed document makes the whole file an error.
/// Messages name the field path and the line and column in the file.
pub fn parse_manifest(file: &Path, text: &str) -> Result<Vec<Object>, ManifestError> {
    let doc_err = |index: usize, message: String| ManifestError::Document {
        file: file.to_path_buf(),
        index,
        message,
    };
    let (documents, syntax) = split_documents(text);
    let mut out = Vec::new();
    for (i, doc) in documents.iter().enumerate() {
        let index = i + 1;
        let kind = match doc.parse::<Shape>() {
            Err(m) => return Err(doc_err(index, m)),
            Ok(Shape::Empty) => continue,
            Ok(Shape::NotMapping) => {
                return Err(doc_err(
                    index,
                    "not a Kubernetes object (expected a mapping)".into(),
                ))
            }
            Ok(Shape::Mapping { kind: None }) => {
                return Err(doc_err(index, "no 'kind' field".into()))
            }
            Ok(Shape::Mapping { kind: Some(kind) }) => kind,
        };
        let obj = match kind.as_str() {
            "Service" => doc.parse().map(Object::Service),
            "EndpointSlice" => doc.parse().map(Object::EndpointSlice),
            "Node" => doc.parse().map(Object::Node),
            "Pod" => doc.parse().map(Object::Pod),
            "List" => {
                let list: ListDoc = doc.parse().map_err(|m| doc_err(index, m))?;
                list_items(list, &mut out).map_err(|m| doc_err(index, m))?;
                continue;
            }
            other => {
                debug!(file = %file.display(), document = index, kind = other, "ignoring a document of a kind nodeplane does not read");
                continue;
            }
        }
        .map_err(|m| doc_err(index, format!("{kind}: {m}")))?;
        out.push(normalize(obj).map_err(|m| doc_err(index, m))?);
    }
    // A syntax error ends the stream: it lies in the document after the
    // last complete one.
    match syntax {
        Some(message) => Err(doc_err(documents.len() + 1, message)),
        None => Ok(out),
    }
}

/// How nodeplane reads YAML (manifests, the config file): the YAML 1.2 core
/// schema, as Kubernetes' own JSON-compatible YAML and the earlier reader
/// did: `yes`/`no`/`on`/`off`/`y`/`n` are strings, not booleans, and `0755`
/// or `1_000` left untyped stay strings. Duplicate keys are an error.
pub fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
    }
}

/// One document of a YAML stream: its text and the number of lines before it
/// in the file, so that positions in messages are the file's.
struct Document<'a> {
    text: &'a str,
    line_offset: u64,
}

impl Document<'_> {
    /// Deserializes the document; an error names the field path (when not
    /// the root) and the line and column in the file.
    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        let mut track = serde_path_to_error::Track::new();
        serde_saphyr::with_deserializer_from_str_with_options(self.text, yaml_options(), |de| {
            T::deserialize(serde_path_to_error::Deserializer::new(de, &mut track))
        })
        .map_err(|e| {
            let message = e.render_with_options(serde_saphyr::render_options! {
                snippets: serde_saphyr::SnippetMode::Off,
                line_offset: self.line_offset,
            });
            match track.path().to_string() {
                root if root == "." => message,
                path => format!("{path}: {message}"),
            }
        })
    }
}

/// Splits a YAML stream into its documents (`---` / `...` separated), as the
/// YAML parser sees them; empty documents count. A syntax error stops the
/// split and comes back as the message, with its line and column.
fn split_documents(text: &str) -> (Vec<Document<'_>>, Option<String>) {
    use serde_saphyr::granit_parser::{Event, Parser};
    let mut documents = Vec::new();
    // Each document runs from the end of the one before (directives and
    // comments between documents go with the next one) to its own end.
    let mut start = 0;
    for event in Parser::new_from_str(text) {
        match event {
            Ok((Event::DocumentEnd, span)) => {
                let end = span.end.index();
                documents.push(Document {
                    text: &text[start..end],
                    line_offset: text[..start].matches('\n').count() as u64,
                });
                start = end;
            }
            Ok((Event::StreamEnd, _)) => break,
            Ok(_) => {}
            Err(e) => {
                let at = e.marker();
                let message = format!(
                    "{} at line {}, column {}",
                    e.info(),
                    at.line(),
                    at.col() + 1
                );
                return (documents, Some(message));
            }
        }
    }
    (documents, None)
}

/// What the first look at a document finds: nothing, something other than a
/// mapping, or a mapping and its `kind` (when that is a string).
enum Shape {
    Empty,
    NotMapping,
    Mapping { kind: Option<String> },
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> serde::de::Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a YAML document")
    }
    fn visit_unit<E>(self) -> Result<Shape, E> {
        Ok(Shape::Empty)
    }
    fn visit_none<E>(self) -> Result<Shape, E> {
        Ok(Shape::Empty)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::NotMapping)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::NotMapping)
    }
    fn visit_i128<E>(self, _: i128) -> Result<Shape, E> {
        Ok(Shape::NotMapping)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::NotMapping)
    }
    fn visit_u128<E>(self, _: u128) -> Result<Shape, E> {
        Ok(Shape::NotMapping)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::NotMapping)
    }
    fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::NotMapping)
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<Shape, E> {
        Ok(Shape::NotMapping)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Shape::NotMapping)
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Shape, A::Error> {
        // A tagged node (`!Tag ...`): not an object.
        use serde::de::VariantAccess as _;
        let (serde::de::IgnoredAny, variant) = data.variant()?;
        variant.newtype_variant::<serde::de::IgnoredAny>()?;
        Ok(Shape::NotMapping)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut kind = None;
        while let Some(key) = map.next_key::<serde_json::Value>()? {
            if key == "kind" {
                kind = map
                    .next_value::<serde_json::Value>()?
                    .as_str()
                    .map(str::to_owned);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(Shape::Mapping { kind })
    }
}

/// `kind: List` (as `kubectl get -o yaml` writes it).
#[derive(Deserialize)]
struct ListDoc {
    items: Option<serde_json::Value>,
}

/// A List's items, same rules as documents.
fn list_items(list: ListDoc, out: &mut Vec<Object>) -> Result<(), String> {
    let Some(serde_json::Value::Array(items)) = list.items else {
        return Err("List without 'items'".into());
    };
    for (j, item) in items.into_iter().enumerate() {
        let kind = item
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        let obj = match kind.as_str() {
            "Service" => typed(item).map(Object::Service),
            "EndpointSlice" => typed(item).map(Object::EndpointSlice),
            "Node" => typed(item).map(Object::Node),
            "Pod" => typed(item).map(Object::Pod),
            _ => continue,
        }
        .map_err(|e| format!("items[{j}] ({kind}): {e}"))?;
        out.push(normalize(obj).map_err(|m| format!("items[{j}]: {m}"))?);
    }
    Ok(())
}

/// One List item, typed; an error names the field path.
fn typed<T: serde::de::DeserializeOwned>(item: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(item).map_err(|e| e.to_string())
}

/// Requires a name; defaults the namespace of namespaced kinds to "default"
/// and clears it on Nodes.
fn normalize(mut obj: Object) -> Result<Object, String> {
    let kind = obj.kind();
    let meta = match &mut obj {
        Object::Service(o) => &mut o.metadata,
        Object::EndpointSlice(o) => &mut o.metadata,
        Object::Node(o) => &mut o.metadata,
        Object::Pod(o) => &mut o.metadata,
    };
    if meta.name.as_deref().unwrap_or_default().is_empty() {
        return Err(format!("{} without metadata.name", kind.as_str()));
    }
    if kind == Kind::Node {
        meta.namespace = None;
    } else if meta.namespace.as_deref().unwrap_or_default().is_empty() {
        meta.namespace = Some("default".into());
    }
    // Required fields the API server would insist on (missing ones would
    // otherwise read as "" or 0 and silently program nothing).
    match &obj {
        Object::EndpointSlice(s) if s.address_type.is_empty() => {
            return Err("EndpointSlice without addressType (IPv4, IPv6 or FQDN)".into());
        }
        Object::Service(s) => {
            let ports = s.spec.as_ref().and_then(|sp| sp.ports.as_ref());
            if let Some(i) = ports
                .into_iter()
                .flatten()
                .position(|p| !(1..=65535).contains(&p.port))
            {
                return Err(format!("Service spec.ports[{i}].port must be 1-65535"));
            }
        }
        _ => {}
    }
    Ok(obj)
}

/// What the last look at a file found.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Stamp {
    mtime: Option<SystemTime>,
    size: u64,
}

#[derive(Debug)]
struct FileState {
    stamp: Stamp,
    hash: u64,
    /// The objects of the last version that parsed cleanly.
    good: Option<Vec<Object>>,
    /// The current version's error, if it is broken.
    error: Option<String>,
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// The set of objects in force changed.
    pub changed: bool,
    /// Errors that appeared in this scan (a file newly broken, or broken differently).
    pub new_errors: Vec<ManifestError>,
    /// Files that changed less than `SETTLE` ago were left as they were (a
    /// writer may be between truncating and writing): scan again soon.
    pub unsettled: bool,
}

/// A manifest directory and the last good objects of each file in it.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// The last directory-level error (cleared when the directory reads again).
    dir_error: Option<String>,
    scans: u32,
    /// The last scan left files for later (`ScanReport::unsettled`).
    unsettled: bool,
    /// A file changed less than this long ago is read on a later scan.
    settle: Duration,
    /// The same for a file that had objects and is now empty.
    empty_settle: Duration,
}

fn is_manifest_name(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

impl ManifestDir {
    pub fn new(dir: &Path) -> Self {
        ManifestDir {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            dir_error: None,
            scans: 0,
            unsettled: false,
            settle: Duration::ZERO,
            empty_settle: Duration::ZERO,
        }
    }

    /// Files that changed less than `d` ago are left as they were and read
    /// on a later scan (`ScanReport::unsettled`): an in-place write first
    /// truncates the file. A file that had objects and is now empty waits
    /// at least `EMPTY_SETTLE`. `new` reads every change at once; `load`, the
    /// agent's source, waits `SETTLE`.
    pub fn with_settle(mut self, d: Duration) -> Self {
        self.settle = d;
        self.empty_settle = if d.is_zero() { d } else { d.max(EMPTY_SETTLE) };
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads the directory. Files whose size and mtime are unchanged are
    /// not re-read unless `verify`. A directory that cannot be read is an
    /// error and leaves every object in force.
    pub fn scan(&mut self, verify: bool) -> Result<ScanReport, ManifestError> {
        let dir_err = |source| ManifestError::Dir {
            dir: self.dir.clone(),
            source,
        };
        let md = std::fs::metadata(&self.dir).map_err(dir_err)?;
        if !md.is_dir() {
            return Err(ManifestError::NotADirectory(self.dir.clone()));
        }
        let mut present = BTreeSet::new();
        for entry in std::fs::read_dir(&self.dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if !is_manifest_name(name) {
                continue;
            }
            let path = entry.path();
            // Follows symlinks (ConfigMap volumes link every file).
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => {
                    present.insert((
                        path,
                        Stamp {
                            mtime: m.modified().ok(),
                            size: m.len(),
                        },
                    ));
                }
                _ => {}
            }
        }
        let mut report = ScanReport::default();
        // Whether the objects in force may have changed: a file with objects
        // went away, or a file's objects were replaced by different ones. (No
        // copy of everything per rescan: with 10,000 Services that was most
        // of a core.)
        let mut changed = false;
        let present_paths: BTreeSet<&PathBuf> = present.iter().map(|(p, _)| p).collect();
        self.files.retain(|p, f| {
            let keep = present_paths.contains(p);
            if !keep && f.good.as_ref().is_some_and(|g| !g.is_empty()) {
                changed = true;
            }
            keep
        });
        let now = SystemTime::now();
        for (path, stamp) in present {
            let known = self.files.get(&path);
            if !verify && known.is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            // A file written in place is first truncated: read between the two
            // steps it is empty and would take the file's objects away. After
            // the first load, a file changed within `settle` is read once it has
            // been quiet for that long, whatever woke this scan.
            // (The kernel stamps mtime from a coarse clock, up to a tick
            // early, so an age here may be a few ms too long.)
            let emptied = stamp.size == 0
                && known.is_some_and(|f| f.good.as_ref().is_some_and(|g| !g.is_empty()));
            let settle = if emptied {
                self.empty_settle
            } else {
                self.settle
            };
            let fresh = stamp
                .mtime
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age < settle);
            if fresh && self.scans > 0 && known.is_none_or(|f| f.stamp != stamp) {
                report.unsettled = true;
                continue;
            }
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(source) => {
                    // Vanished between listing and reading, or unreadable.
                    let e = ManifestError::Read {
                        file: path.clone(),
                        source,
                    };
                    let msg = e.to_string();
                    let f = self.files.entry(path).or_insert(FileState {
                        stamp: stamp.clone(),
                        hash: 0,
                        good: None,
                        error: None,
                    });
                    if f.error.as_deref() != Some(msg.as_str()) {
                        f.error = Some(msg);
                        report.new_errors.push(e);
                    }
                    f.stamp = stamp;
                    continue;
                }
            };
            let hash = content_hash(&bytes);
            if let Some(f) = self.files.get_mut(&path) {
                if f.hash == hash && (f.good.is_some() || f.error.is_some()) {
                    f.stamp = stamp;
                    continue;
                }
            }
            let parsed = match std::str::from_utf8(&bytes) {
                Ok(text) => parse_manifest(&path, text),
                Err(e) => Err(ManifestError::Document {
                    file: path.clone(),
                    index: 1,
                    message: format!("not UTF-8: {e}"),
                }),
            };
            let f = self.files.entry(path).or_insert(FileState {
                stamp: stamp.clone(),
                hash,
                good: None,
                error: None,
            });
            f.stamp = stamp;
            f.hash = hash;
            match parsed {
                Ok(objs) => {
                    if f.good.as_ref() != Some(&objs) {
                        changed = true;
                    }
                    f.good = Some(objs);
                    f.error = None;
                }
                Err(e) => {
                    f.error = Some(e.to_string());
                    report.new_errors.push(e);
                }
            }
        }
        self.dir_error = None;
        self.scans = self.scans.wrapping_add(1);
        self.unsettled = report.unsettled;
        report.changed = changed;
        Ok(report)
    }

    /// The objects in force: every file's last good objects. When two files
    /// define the same object, the file whose name sorts last wins.
    pub fn objects(&self) -> Vec<Object> {
        let mut merged: BTreeMap<(Kind, ObjectKey), &Object> = BTreeMap::new();
        for f in self.files.values() {
            for o in f.good.iter().flatten() {
                merged.insert((o.kind(), o.key()), o);
            }
        }
        merged.into_values().cloned().collect()
    }

    /// The current problems, one per broken file (or the directory).
    pub fn errors(&self) -> Vec<String> {
        self.dir_error
            .iter()
            .cloned()
            .chain(self.files.values().filter_map(|f| f.error.clone()))
            .collect()
    }

    /// Scans and brings the store in line: the first sync, or a change,
    /// replaces everything this source holds; new errors are logged and counted.
    /// Returns whether the objects changed.
    pub fn sync(&mut self, store: &StoreHandle, verify: bool) -> bool {
        let source = source_name(&self.dir);
        let first = self.scans == 0;
        match self.scan(verify) {
            Ok(report) => {
                for e in &report.new_errors {
                    warn!("manifest: {e} (the file's last good objects stay in force)");
                }
                let errors = self.errors();
                let objects = (report.changed || first).then(|| self.objects());
                store.update(|s| {
                    if let Some(objs) = objects {
                        s.replace_all(&source, objs);
                    }
                    for e in &report.new_errors {
                        s.record_error(&source, e.to_string());
                    }
                    s.set_last_error(&source, (!errors.is_empty()).then(|| errors.join("; ")));
                });
                if report.changed {
                    info!(dir = %self.dir.display(), objects = self.files.values().map(|f| f.good.as_ref().map_or(0, Vec::len)).sum::<usize>(), "manifests loaded");
                }
                report.changed
            }
            Err(e) => {
                let msg = e.to_string();
                if self.dir_error.as_deref() != Some(msg.as_str()) {
                    warn!("{msg} (the objects loaded before stay in force)");
                    store.update(|s| s.record_error(&source, msg.clone()));
                    self.dir_error = Some(msg);
                }
                false
            }
        }
    }
}

/// Loads the directory once (the first full sync). Fails if DIR is not a
/// readable directory (a bad `--manifests` flag); broken files do not fail it.
pub fn load(dir: &Path, store: &StoreHandle) -> Result<ManifestDir, ManifestError> {
    let md = std::fs::metadata(dir).map_err(|source| ManifestError::Dir {
        dir: dir.to_path_buf(),
        source,
    })?;
    if !md.is_dir() {
        return Err(ManifestError::NotADirectory(dir.to_path_buf()));
    }
    let mut m = ManifestDir::new(dir).with_settle(SETTLE);
    store.update(|s| s.register(&source_name(dir), &Kind::ALL));
    m.sync(store, true);
    Ok(m)
}

fn start_watcher(
    dir: &Path,
    tx: &tokio::sync::mpsc::UnboundedSender<()>,
) -> Option<RecommendedWatcher> {
    let tx = tx.clone();
    let mut w = match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = tx.send(());
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            warn!(
                "cannot watch {}: {e}; rescanning every {:?}",
                dir.display(),
                RESCAN_INTERVAL
            );
            return None;
        }
    };
    match w.watch(dir, RecursiveMode::NonRecursive) {
        Ok(()) => Some(w),
        Err(e) => {
            debug!(
                "cannot watch {}: {e}; rescanning every {:?}",
                dir.display(),
                RESCAN_INTERVAL
            );
            None
        }
    }
}

/// Follows the directory until `shutdown`: inotify events trigger a re-read
/// within ~30 ms; a stat-only rescan runs every `RESCAN_INTERVAL` (contents
/// re-hashed every few rescans) in case events are missed.
pub async fn run(mut dir: ManifestDir, store: StoreHandle, mut shutdown: watch::Receiver<bool>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut _watcher = start_watcher(dir.dir(), &tx);
    let mut tick = tokio::time::interval(RESCAN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u32 = 0;
    loop {
        enum Woke {
            Event,
            Tick,
            Settled,
        }
        let woke = if dir.unsettled {
            // A file was still changing: look again once it has settled.
            tokio::select! {
                _ = wait_shutdown(&mut shutdown) => return,
                () = tokio::time::sleep(SETTLE) => Woke::Settled,
            }
        } else {
            tokio::select! {
                _ = wait_shutdown(&mut shutdown) => return,
                Some(()) = rx.recv() => Woke::Event,
                _ = tick.tick() => Woke::Tick,
            }
        };
        let verify = match woke {
            Woke::Event => {
                tokio::time::sleep(SETTLE).await;
                while rx.try_recv().is_ok() {}
                true
            }
            // The files left for later have a stamp unlike the one known, so
            // a stat-only scan reads them.
            Woke::Settled => false,
            Woke::Tick => {
                ticks = ticks.wrapping_add(1);
                ticks.is_multiple_of(VERIFY_EVERY)
            }
        };
        let had_error = dir.dir_error.is_some();
        dir.sync(&store, verify);
        match (had_error, dir.dir_error.is_some()) {
            (_, true) => _watcher = None,
            // The directory came back (maybe a new one): watch it again.
            (true, false) => _watcher = start_watcher(dir.dir(), &tx),
            (false, false) => {}
        }
    }
}
