//! The EndpointSlice controller in miniature, for the manifest directory: a
//! Service with a selector gets EndpointSlices computed from the Pods of the
//! directory, as kube-controller-manager's endpointslice controller writes
//! them for a cluster. Label selection in the Service's namespace; the Pod's
//! IPv4 address from `status.podIPs` (else `status.podIP`, else the address the
//! CNI plugin gave a pod of that namespace/name on this node: the registration
//! carries `K8S_POD_NAMESPACE`/`K8S_POD_NAME` from `CNI_ARGS`); `serving` from
//! the Ready condition of the manifest's status (no kubelet writes one here: no
//! condition, not ready), `terminating` from `deletionTimestamp`;
//! `publishNotReadyAddresses`; terminal Pods (Succeeded, Failed) left out;
//! `nodeName`; named `targetPort`s resolved from the containers' ports (and
//! restartable init containers', as sidecars), a Pod without that port left out
//! of that port; one slice per address family and port mapping. Pure: reads
//! the objects it is given, writes nothing; the reducer decides where the
//! slices go.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The label the endpointslice controller puts on the slices it manages.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Its value for kube-controller-manager's slices (replaced by derived ones).
pub const MANAGED_BY_CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// Its value on the slices computed here.
pub const MANAGED_BY_NODEPLANE: &str = "nodeplane.io/manifest-endpoints";

/// The Service's selector, when it has a non-empty one (only then are its
/// endpoints computed; a Service without one keeps hand-written slices).
pub fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

/// Does `labels` satisfy the equality selector `sel` (every key with its
/// value; Service selectors have no set-based form)?
pub fn matches(sel: &BTreeMap<String, String>, labels: Option<&BTreeMap<String, String>>) -> bool {
    sel.iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The Pod's IPv4 address: its status, else the CNI registration of its
/// namespace/name on this node (`local`: "ns/name" → address).
fn pod_ipv4(pod: &Pod, local: &BTreeMap<String, Ipv4Addr>) -> Option<Ipv4Addr> {
    let from_status = pod.status.as_ref().and_then(|st| {
        st.pod_ips
            .iter()
            .flatten()
            .map(|p| p.ip.as_str())
            .chain(st.pod_ip.as_deref())
            .filter_map(|s| s.trim().parse::<Ipv4Addr>().ok())
            .find(|ip| !ip.is_unspecified())
    });
    from_status.or_else(|| {
        let key = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        local.get(&key).copied()
    })
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The container port a Service port's `targetPort` names on `pod` (its
/// number when numeric; the Service port when unset).
fn target_port(pod: &Pod, port: i32, target: Option<&IntOrString>, proto: &str) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) if *n > 0 => Some(*n),
        Some(IntOrString::Int(_)) => Some(port),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            let spec = pod.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == proto
                })
                .map(|p| p.container_port)
        }
    }
}

/// What was left out while computing a Service's slices (for the log).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Pods that match but have no IPv4 address yet.
    pub no_address: Vec<String>,
    /// (pod, Service port name): a named targetPort the pod does not have.
    pub no_port: Vec<(String, String)>,
}

/// The slices for `svc` (which must have a selector) from `pods`; IPv4 only
/// (nodeplane serves IPv4). Deterministic: slices are named
/// `<service>-np<n>` in the order of their port mappings, endpoints sorted by
/// address.
pub fn derive(
    svc: &Service,
    pods: &[&Pod],
    local: &BTreeMap<String, Ipv4Addr>,
) -> (Vec<EndpointSlice>, Skipped) {
    let mut skipped = Skipped::default();
    let Some(sel) = selector(svc) else {
        return (Vec::new(), skipped);
    };
    let Some(spec) = svc.spec.as_ref() else {
        return (Vec::new(), skipped);
    };
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let ports = spec.ports.as_deref().unwrap_or_default();
    // Port mapping (name, protocol, port) → endpoints.
    type Mapping = Vec<(Option<String>, String, i32)>;
    let mut groups: BTreeMap<Mapping, BTreeMap<u32, Endpoint>> = BTreeMap::new();
    for pod in pods {
        if pod.metadata.namespace.as_deref().unwrap_or_default() != ns
            || !matches(sel, pod.metadata.labels.as_ref())
            || is_terminal(pod)
        {
            continue;
        }
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let Some(ip) = pod_ipv4(pod, local) else {
            skipped.no_address.push(format!("{ns}/{pod_name}"));
            continue;
        };
        let mut mapping = Mapping::new();
        for p in ports {
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            match target_port(pod, p.port, p.target_port.as_ref(), &proto) {
                Some(t) => mapping.push((p.name.clone(), proto, t)),
                None => skipped.no_port.push((
                    format!("{ns}/{pod_name}"),
                    p.name.clone().unwrap_or_default(),
                )),
            }
        }
        // As the controller's podToEndpoint: ready never true while
        // terminating, unless publishNotReadyAddresses.
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let serving = is_ready(pod);
        let ep = Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(publish_not_ready || (serving && !terminating)),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            // A pod with `hostname` whose `subdomain` is this Service is
            // named by it in DNS (a StatefulSet's pods).
            hostname: pod
                .spec
                .as_ref()
                .filter(|s| s.subdomain.as_deref() == Some(name))
                .and_then(|s| s.hostname.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some(ns.to_string()),
                name: Some(pod_name),
                uid: pod.metadata.uid.clone(),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        };
        groups.entry(mapping).or_default().insert(u32::from(ip), ep);
    }
    if groups.is_empty() {
        // No pod: one slice without endpoints, so the Service rejects.
        let mapping = ports
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    0,
                )
            })
            .collect();
        groups.insert(mapping, BTreeMap::new());
    }
    let slices = groups
        .into_iter()
        .enumerate()
        .map(|(i, (mapping, eps))| EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-np{i}")),
                namespace: Some(ns.to_string()),
                labels: Some(BTreeMap::from([
                    (
                        crate::reducer::LABEL_SERVICE_NAME.to_string(),
                        name.to_string(),
                    ),
                    (
                        LABEL_MANAGED_BY.to_string(),
                        MANAGED_BY_NODEPLANE.to_string(),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(eps.into_values().collect()),
            ports: Some(
                mapping
                    .into_iter()
                    .filter(|(_, _, port)| *port > 0)
                    .map(|(name, protocol, port)| EndpointPort {
                        name,
                        protocol: Some(protocol),
                        port: Some(port),
                        app_protocol: None,
                    })
                    .collect(),
            ),
        })
        .collect();
    (slices, skipped)
}
