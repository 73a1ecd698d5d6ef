//! The API-server source: kube-runtime watchers on Services, EndpointSlices,
//! Nodes and this node's Pods, mapped onto the object store (Init..InitDone is a
//! relist that drops objects deleted meanwhile; 410 Gone relists; errors back
//! off and leave the objects in force, so the tables never empty on an outage).
//! Also publishes this node's VTEP the way flannel's kube subnet manager does.

use std::fmt::Debug;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Config, Resource};
use serde::de::DeserializeOwned;
use shared::net::{mac_to_string, Mac};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::reducer::{
    node_vtep_mac, ANNOTATION_BACKEND_DATA, ANNOTATION_BACKEND_TYPE,
    ANNOTATION_KUBE_SUBNET_MANAGER, ANNOTATION_PUBLIC_IP, ANNOTATION_PUBLIC_IP_OVERWRITE,
    LABEL_HEADLESS,
};
use crate::store::{Kind, KubeObject, ObjectKey, ObjectStore, StoreHandle};

/// Source names, one per watcher (as shown in `/status`).
pub const SOURCE_SERVICES: &str = "apiserver:services";
pub const SOURCE_ENDPOINT_SLICES: &str = "apiserver:endpointslices";
pub const SOURCE_NODES: &str = "apiserver:nodes";
pub const SOURCE_PODS: &str = "apiserver:pods";

#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no in-cluster configuration ({incluster}) and no usable kubeconfig ({infer}); pass --kubeconfig")]
    NoConfig { incluster: String, infer: String },
    #[error("creating the API client: {0}")]
    Client(#[source] kube::Error),
    #[error("patching node {node}: {source}")]
    PatchNode {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// A client from a kubeconfig file, or (None) the in-cluster service account,
/// falling back to `$KUBECONFIG`/`~/.kube/config`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, ApiServerError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| ApiServerError::Kubeconfig {
                path: path.to_path_buf(),
                source,
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| ApiServerError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?
        }
        None => match Config::incluster() {
            Ok(c) => c,
            Err(incluster) => Config::infer()
                .await
                .map_err(|infer| ApiServerError::NoConfig {
                    incluster: incluster.to_string(),
                    infer: infer.to_string(),
                })?,
        },
    };
    Client::try_from(config).map_err(ApiServerError::Client)
}

/// kube-proxy's selector, minus the service-proxy-name exclusion (nodeplane
/// also serves Services labelled for it; the reducer filters the others).
pub fn service_watch_config() -> watcher::Config {
    watcher::Config::default().labels(&format!("!{LABEL_HEADLESS}"))
}

/// Same selector as Services (headless Services' slices are not needed).
pub fn endpoint_slice_watch_config() -> watcher::Config {
    watcher::Config::default().labels(&format!("!{LABEL_HEADLESS}"))
}

pub fn node_watch_config() -> watcher::Config {
    watcher::Config::default()
}

/// Only the Pods scheduled to this node.
pub fn pod_watch_config(node_name: &str) -> watcher::Config {
    watcher::Config::default().fields(&format!("spec.nodeName={node_name}"))
}

/// Applies one watcher event to the store. Returns whether objects changed.
pub fn apply_watch_event<K: KubeObject>(
    store: &mut ObjectStore,
    source: &str,
    event: watcher::Event<K>,
) -> bool {
    match event {
        watcher::Event::Init => {
            store.relist_begin(source, K::KIND);
            false
        }
        watcher::Event::InitApply(obj) => {
            store.relist_apply(source, obj);
            false
        }
        watcher::Event::InitDone => store.relist_done::<K>(source),
        watcher::Event::Apply(obj) => {
            store.clear_error(source);
            store.apply(source, obj)
        }
        watcher::Event::Delete(obj) => {
            store.clear_error(source);
            store.delete::<K>(source, &ObjectKey::of(obj.metadata()))
        }
    }
}

/// Feeds a watcher stream into the store until it ends: events are applied,
/// errors recorded (the objects in force stay). The API-server source runs
/// this on `watcher(..).default_backoff()`; tests run it on scripted streams.
pub async fn feed_watch_events<K, S>(store: &StoreHandle, source: &str, events: S)
where
    K: KubeObject,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    store.update(|s| s.register(source, &[K::KIND]));
    let mut events = std::pin::pin!(events);
    while let Some(ev) = events.next().await {
        match ev {
            Ok(ev) => {
                store.update(|s| apply_watch_event(s, source, ev));
            }
            Err(e) => {
                warn!(source, "watch error (retrying with backoff): {e}");
                let refused = forbidden(&e);
                store.update(|s| {
                    s.record_error(source, e.to_string());
                    if refused {
                        s.record_forbidden(source, e.to_string());
                    }
                });
            }
        }
    }
    debug!(source, "watch stream ended");
}

/// Is `e` the API server refusing this identity (HTTP 403, RBAC)?
fn forbidden(e: &watcher::Error) -> bool {
    let code = match e {
        watcher::Error::InitialListFailed(k)
        | watcher::Error::WatchStartFailed(k)
        | watcher::Error::WatchFailed(k) => match k {
            kube::Error::Api(s) => Some(s.code),
            _ => None,
        },
        watcher::Error::WatchError(s) => Some(s.code),
        watcher::Error::NoResourceVersion => None,
    };
    code == Some(403)
}

async fn watch_kind<K>(api: Api<K>, config: watcher::Config, store: StoreHandle, source: &str)
where
    K: KubeObject + Resource + DeserializeOwned + Debug,
{
    let stream = watcher(api, config).default_backoff();
    feed_watch_events(&store, source, stream).await;
}

/// Runs the four watchers until `shutdown`. Objects go into `store`.
pub async fn run_source(
    client: Client,
    node_name: String,
    store: StoreHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    // Register every kind first so "synced" waits for all of them.
    store.update(|s| {
        s.register(SOURCE_SERVICES, &[Kind::Service]);
        s.register(SOURCE_ENDPOINT_SLICES, &[Kind::EndpointSlice]);
        s.register(SOURCE_NODES, &[Kind::Node]);
        s.register(SOURCE_PODS, &[Kind::Pod]);
    });
    let services = watch_kind(
        Api::<Service>::all(client.clone()),
        service_watch_config(),
        store.clone(),
        SOURCE_SERVICES,
    );
    let slices = watch_kind(
        Api::<EndpointSlice>::all(client.clone()),
        endpoint_slice_watch_config(),
        store.clone(),
        SOURCE_ENDPOINT_SLICES,
    );
    let nodes = watch_kind(
        Api::<Node>::all(client.clone()),
        node_watch_config(),
        store.clone(),
        SOURCE_NODES,
    );
    let pods = watch_kind(
        Api::<Pod>::all(client),
        pod_watch_config(&node_name),
        store.clone(),
        SOURCE_PODS,
    );
    let all = futures::future::join4(services, slices, nodes, pods);
    tokio::select! {
        _ = all => {}
        _ = wait_shutdown(&mut shutdown) => {}
    }
}

pub(crate) async fn wait_shutdown(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            // The sender is gone: nobody can ask us to stop any more; run on.
            std::future::pending::<()>().await;
        }
    }
}

/// flannel's backend-data value: `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`.
pub fn backend_data(vtep_mac: Mac, vni: u32) -> String {
    let mut m = serde_json::Map::new();
    m.insert("VNI".into(), vni.into());
    m.insert("VtepMAC".into(), mac_to_string(&vtep_mac).into());
    serde_json::Value::Object(m).to_string()
}

/// Patches this node's flannel annotations (backend-data, backend-type=vxlan,
/// kube-subnet-manager=true, public-ip) so other nodes (nodeplane or flannel)
/// can reach its pods.
pub async fn publish_node_vtep(
    client: &Client,
    node_name: &str,
    vtep_mac: Mac,
    underlay_ip: Ipv4Addr,
    vni: u32,
) -> Result<(), ApiServerError> {
    let mut ann = serde_json::Map::new();
    ann.insert(
        ANNOTATION_BACKEND_DATA.into(),
        backend_data(vtep_mac, vni).into(),
    );
    ann.insert(ANNOTATION_BACKEND_TYPE.into(), "vxlan".into());
    ann.insert(ANNOTATION_KUBE_SUBNET_MANAGER.into(), "true".into());
    ann.insert(ANNOTATION_PUBLIC_IP.into(), underlay_ip.to_string().into());
    let patch = serde_json::json!({ "metadata": { "annotations": ann } });
    Api::<Node>::all(client.clone())
        .patch(node_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| ApiServerError::PatchNode {
            node: node_name.to_string(),
            source,
        })?;
    Ok(())
}

/// Does `node` already carry the VTEP annotations nodeplane would publish?
pub fn node_vtep_published(node: &Node, vtep_mac: Mac, underlay_ip: Ipv4Addr, vni: u32) -> bool {
    let ann = |k: &str| {
        node.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(k))
            .map(String::as_str)
    };
    #[derive(serde::Deserialize)]
    struct Vni {
        #[serde(rename = "VNI")]
        vni: Option<u32>,
    }
    let vni_ok = ann(ANNOTATION_BACKEND_DATA)
        .and_then(|d| serde_json::from_str::<Vni>(d).ok())
        .and_then(|d| d.vni)
        == Some(vni);
    vni_ok
        && node_vtep_mac(node).ok() == Some(vtep_mac)
        && ann(ANNOTATION_BACKEND_TYPE) == Some("vxlan")
        && ann(ANNOTATION_KUBE_SUBNET_MANAGER) == Some("true")
        && ann(ANNOTATION_PUBLIC_IP) == Some(underlay_ip.to_string().as_str())
}

/// Keeps this node's VTEP annotations published: once the Node list is in the
/// store, patches the node when its annotations differ (at start, or if someone
/// overwrote them), retrying with backoff on errors. Runs until `shutdown`.
pub async fn keep_node_vtep_published(
    client: Client,
    store: StoreHandle,
    node_name: String,
    vtep_mac: Mac,
    uplink_ip: Option<Ipv4Addr>,
    vni: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut retry = Duration::from_secs(1);
    let mut next_try = tokio::time::Instant::now();
    let mut last_note = String::new();
    let key = ObjectKey::new("", &node_name);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = wait_shutdown(&mut shutdown) => return,
        }
        if tokio::time::Instant::now() < next_try {
            continue;
        }
        let status = store.read(|s| {
            if !s.kind_synced(Kind::Node) {
                return Err(String::new());
            }
            let node = s.get::<Node>(&key).ok_or_else(|| {
                format!("node {node_name} is not registered: cannot publish its VTEP yet")
            })?;
            let ip = node
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_PUBLIC_IP_OVERWRITE))
                .and_then(|v| v.trim().parse::<Ipv4Addr>().ok())
                .or(uplink_ip)
                .ok_or_else(|| {
                    format!(
                        "node {node_name}: the uplink has no IPv4 address: cannot publish its VTEP"
                    )
                })?;
            Ok((ip, node_vtep_published(node, vtep_mac, ip, vni)))
        });
        let ip = match status {
            Ok((_, true)) => continue,
            Ok((ip, false)) => ip,
            Err(note) => {
                if !note.is_empty() && note != last_note {
                    warn!("{note}");
                }
                last_note = note;
                next_try = tokio::time::Instant::now() + Duration::from_secs(5);
                continue;
            }
        };
        match publish_node_vtep(&client, &node_name, vtep_mac, ip, vni).await {
            Ok(()) => {
                info!(node = %node_name, vtep = %mac_to_string(&vtep_mac), underlay = %ip, vni, "published this node's VTEP");
                retry = Duration::from_secs(1);
                // Give the Node watch time to show the new annotations.
                next_try = tokio::time::Instant::now() + Duration::from_secs(10);
            }
            Err(e) => {
                warn!("{e} (retrying in {}s)", retry.as_secs());
                next_try = tokio::time::Instant::now() + retry;
                retry = (retry * 2).min(Duration::from_secs(60));
            }
        }
    }
}
