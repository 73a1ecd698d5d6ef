//! The reducer as a specification: Kubernetes objects in → tables out, one or
//! more rows per kube-proxy rule (docs/design.md §4 items 1-3) and flannel Node rule
//! (§5); ordering independence; nothing before the first sync; and a no-op
//! resync publishes no new generation.

use std::net::Ipv4Addr;

use control::publish::Publisher;
use control::reducer::{reduce, synced, LocalConfig, LocalFacts};
use control::state::AgentState;
use control::store::{Kind, Object, ObjectStore};
use shared::snapshot::{EndpointSpec, PodRoute, ServicePortSpec, ServiceSpec, TableSpec};
use shared::L4Proto;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Multi-document YAML → objects (test helper, independent of the manifest source).
fn objects(yaml: &str) -> Vec<Object> {
    let mut out = Vec::new();
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple_with_options(yaml, control::manifests::yaml_options()).unwrap();
    for v in docs {
        let kind = v["kind"].as_str().unwrap().to_string();
        out.push(match kind.as_str() {
            "Service" => Object::Service(serde_json::from_value(v).unwrap()),
            "EndpointSlice" => Object::EndpointSlice(serde_json::from_value(v).unwrap()),
            "Node" => Object::Node(serde_json::from_value(v).unwrap()),
            "Pod" => Object::Pod(serde_json::from_value(v).unwrap()),
            k => panic!("unexpected kind {k}"),
        });
    }
    out
}

fn cfg() -> LocalConfig {
    LocalConfig {
        node_name: "node-a".into(),
        uplink_ifindex: 7,
        uplink_mac: [2, 0, 0, 0, 0, 0xa],
        uplink_ip: Some(ip("198.18.0.1")),
        vtep_mac: [2, 0, 0, 0, 1, 0xa],
        service_cidrs: vec!["198.19.128.0/17".parse().unwrap()],
        masquerade_ports: (61000, 65000),
        maglev_size: 251,
        ..LocalConfig::default()
    }
}

fn reduce_yaml(yaml: &str) -> TableSpec {
    let mut store = ObjectStore::new();
    store.replace_all("test", objects(yaml));
    reduce(&store, &cfg(), &LocalFacts::default())
}

fn service<'a>(t: &'a TableSpec, name: &str) -> &'a ServiceSpec {
    t.services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("service {name} missing from {:#?}", t.services))
}

fn port<'a>(s: &'a ServiceSpec, name: &str) -> &'a ServicePortSpec {
    s.ports
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("port {name} missing from {:#?}", s.ports))
}

fn ep(ipaddr: &str, port: u16) -> EndpointSpec {
    EndpointSpec::ready(ip(ipaddr), port, None)
}

/// A Service named `name` with one TCP port 80 "http", plus the slice with
/// endpoint 10.244.1.5:8080, so cases can vary just the Service spec.
fn with_http_slice(name: &str, svc_yaml: &str) -> String {
    format!(
        "{svc_yaml}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-abc
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- addresses: [10.244.1.5]
"
    )
}

struct Case {
    name: &'static str,
    yaml: String,
    check: fn(&TableSpec),
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "ClusterIP service: frontend, port, endpoints resolved from the slice",
            yaml: with_http_slice(
                "web",
                "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 198.19.128.10
  clusterIPs: [198.19.128.10]
  ports: [{name: http, port: 80, targetPort: 8080}]",
            ),
            check: |t| {
                assert_eq!(
                    t.services,
                    vec![ServiceSpec {
                        namespace: "default".into(),
                        name: "web".into(),
                        cluster_ips: vec![ip("198.19.128.10")],
                        ports: vec![ServicePortSpec {
                            name: "http".into(),
                            proto: L4Proto::Tcp,
                            port: 80,
                            node_port: None,
                            endpoints: vec![ep("10.244.1.5", 8080)],
                        }],
                        ..ServiceSpec::default()
                    }]
                );
            },
        },
        Case {
            name: "spec.clusterIP is used when clusterIPs is absent",
            yaml: with_http_slice(
                "old",
                "
apiVersion: v1
kind: Service
metadata: {name: old, namespace: default}
spec: {clusterIP: 198.19.128.11, ports: [{name: http, port: 80}]}",
            ),
            check: |t| assert_eq!(service(t, "old").cluster_ips, vec![ip("198.19.128.11")]),
        },
        Case {
            name: "dual-stack: only the IPv4 cluster IP",
            yaml: with_http_slice(
                "dual",
                "
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: default}
spec:
  clusterIP: fd00::11
  clusterIPs: [fd00::11, 198.19.128.12]
  ports: [{name: http, port: 80}]",
            ),
            check: |t| assert_eq!(service(t, "dual").cluster_ips, vec![ip("198.19.128.12")]),
        },
        Case {
            name: "IPv6 single-stack, headless and ExternalName services are skipped",
            yaml: "
apiVersion: v1
kind: Service
metadata: {name: v6, namespace: default}
spec: {clusterIP: fd00::1, clusterIPs: [fd00::1], ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: default}
spec: {clusterIP: None, clusterIPs: [None], ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec: {type: ExternalName, externalName: example.com}
---
apiVersion: v1
kind: Service
metadata: {name: kept, namespace: default}
spec: {clusterIP: 198.19.128.13, ports: [{port: 80}]}
"
            .into(),
            check: |t| {
                let names: Vec<_> = t.services.iter().map(|s| s.name.as_str()).collect();
                assert_eq!(names, vec!["kept"]);
            },
        },
        Case {
            name: "service-proxy-name: skipped unless it names nodeplane",
            yaml: "
apiVersion: v1
kind: Service
metadata:
  name: other
  namespace: default
  labels: {service.kubernetes.io/service-proxy-name: cilium}
spec: {clusterIP: 198.19.128.14, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata:
  name: ours
  namespace: default
  labels: {service.kubernetes.io/service-proxy-name: nodeplane}
spec: {clusterIP: 198.19.128.15, ports: [{port: 80}]}
"
            .into(),
            check: |t| {
                let names: Vec<_> = t.services.iter().map(|s| s.name.as_str()).collect();
                assert_eq!(names, vec!["ours"]);
            },
        },
        Case {
            name: "externalIPs (IPv4 only)",
            yaml: with_http_slice(
                "eip",
                "
apiVersion: v1
kind: Service
metadata: {name: eip, namespace: default}
spec:
  clusterIP: 198.19.128.16
  externalIPs: [198.18.5.6, 2001:db8::5, 198.18.5.5]
  ports: [{name: http, port: 80}]",
            ),
            check: |t| {
                let s = service(t, "eip");
                assert_eq!(s.external_ips, vec![ip("198.18.5.5"), ip("198.18.5.6")]);
                assert!(!s.external_local);
            },
        },
        Case {
            name: "LoadBalancer: ingress IPs (VIP mode only), nodePort, eTP=Local, healthCheckNodePort",
            yaml: with_http_slice(
                "lb",
                "
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 198.19.128.17
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  ports: [{name: http, port: 80, nodePort: 30080}]
status:
  loadBalancer:
    ingress:
    - ip: 198.18.6.1
    - ip: 198.18.6.2
      ipMode: Proxy
    - hostname: lb.example.com
    - ip: 198.18.6.3
      ipMode: VIP",
            ),
            check: |t| {
                let s = service(t, "lb");
                assert_eq!(s.load_balancer_ips, vec![ip("198.18.6.1"), ip("198.18.6.3")]);
                assert_eq!(port(s, "http").node_port, Some(30080));
                assert!(s.external_local);
                assert_eq!(s.health_check_node_port, Some(32000));
            },
        },
        Case {
            name: "LoadBalancer with eTP=Cluster has no health check node port",
            yaml: with_http_slice(
                "lbc",
                "
apiVersion: v1
kind: Service
metadata: {name: lbc, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 198.19.128.18
  externalTrafficPolicy: Cluster
  healthCheckNodePort: 32001
  ports: [{name: http, port: 80, nodePort: 30081}]",
            ),
            check: |t| {
                let s = service(t, "lbc");
                assert!(!s.external_local);
                assert_eq!(s.health_check_node_port, None);
            },
        },
        Case {
            name: "eTP=Local counts only for externally reachable services; iTP=Local",
            yaml: "
apiVersion: v1
kind: Service
metadata: {name: np, namespace: default}
spec: {type: NodePort, clusterIP: 198.19.128.19, externalTrafficPolicy: Local,
       ports: [{port: 80, nodePort: 30082}]}
---
apiVersion: v1
kind: Service
metadata: {name: cip, namespace: default}
spec: {clusterIP: 198.19.128.20, externalTrafficPolicy: Local, internalTrafficPolicy: Local,
       ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: cipext, namespace: default}
spec: {clusterIP: 198.19.128.21, externalIPs: [198.18.5.9], externalTrafficPolicy: Local,
       ports: [{port: 80}]}
"
            .into(),
            check: |t| {
                assert!(service(t, "np").external_local);
                assert!(!service(t, "np").internal_local);
                assert!(!service(t, "cip").external_local);
                assert!(service(t, "cip").internal_local);
                assert!(service(t, "cipext").external_local);
            },
        },
        Case {
            name: "sessionAffinity ClientIP: timeoutSeconds, default 10800; None → no affinity",
            yaml: "
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: default}
spec:
  clusterIP: 198.19.128.22
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky-default, namespace: default}
spec: {clusterIP: 198.19.128.23, sessionAffinity: ClientIP, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: loose, namespace: default}
spec: {clusterIP: 198.19.128.24, sessionAffinity: None, ports: [{port: 80}]}
"
            .into(),
            check: |t| {
                assert_eq!(service(t, "sticky").affinity_timeout_secs, Some(60));
                assert_eq!(service(t, "sticky-default").affinity_timeout_secs, Some(10800));
                assert_eq!(service(t, "loose").affinity_timeout_secs, None);
            },
        },
        Case {
            name: "loadBalancerSourceRanges: spec field (trimmed, IPv4, bare IP = /32), annotation fallback, 0.0.0.0/0 = any",
            yaml: "
apiVersion: v1
kind: Service
metadata:
  name: ranges
  namespace: default
  annotations: {service.beta.kubernetes.io/load-balancer-source-ranges: 192.0.2.0/24}
spec:
  type: LoadBalancer
  clusterIP: 198.19.128.25
  loadBalancerSourceRanges: [' 198.18.0.0/16 ', 2001:db8::/32, 203.0.113.7, bogus, 10.0.0.0/8]
  ports: [{port: 80, nodePort: 30090}]
---
apiVersion: v1
kind: Service
metadata:
  name: ann
  namespace: default
  annotations: {service.beta.kubernetes.io/load-balancer-source-ranges: '198.18.2.0/24, 198.18.1.0/24'}
spec: {type: LoadBalancer, clusterIP: 198.19.128.26, ports: [{port: 80, nodePort: 30091}]}
---
apiVersion: v1
kind: Service
metadata: {name: any, namespace: default}
spec: {type: LoadBalancer, clusterIP: 198.19.128.27, loadBalancerSourceRanges: [198.18.0.0/16, 0.0.0.0/0],
       ports: [{port: 80, nodePort: 30092}]}
"
            .into(),
            check: |t| {
                let cidrs = |n: &str| -> Vec<String> {
                    service(t, n).source_ranges.iter().map(|c| c.to_string()).collect()
                };
                assert_eq!(cidrs("ranges"), vec!["10.0.0.0/8", "198.18.0.0/16", "203.0.113.7/32"]);
                assert_eq!(cidrs("ann"), vec!["198.18.1.0/24", "198.18.2.0/24"]);
                assert!(cidrs("any").is_empty());
            },
        },
        Case {
            name: "protocols: TCP (also when unset), UDP and SCTP kept",
            yaml: "
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  clusterIP: 198.19.128.28
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53}
  - {name: sig, port: 2905, protocol: SCTP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-1, namespace: kube-system, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports:
- {name: dns, port: 5353, protocol: UDP}
- {name: dns-tcp, port: 5354, protocol: TCP}
- {name: sig, port: 2905, protocol: SCTP}
endpoints: [{addresses: [10.244.1.9]}]
"
            .into(),
            check: |t| {
                let s = service(t, "dns");
                let got: Vec<_> = s.ports.iter().map(|p| (p.name.as_str(), p.proto, p.port)).collect();
                assert_eq!(
                    got,
                    vec![("dns-tcp", L4Proto::Tcp, 53), ("dns", L4Proto::Udp, 53), ("sig", L4Proto::Sctp, 2905)]
                );
                assert_eq!(port(s, "dns").endpoints, vec![ep("10.244.1.9", 5353)]);
                assert_eq!(port(s, "dns-tcp").endpoints, vec![ep("10.244.1.9", 5354)]);
                assert_eq!(port(s, "sig").endpoints, vec![ep("10.244.1.9", 2905)]);
            },
        },
        Case {
            name: "service port ↔ slice port by name (and protocol); endpoint port = the slice port's port",
            yaml: "
apiVersion: v1
kind: Service
metadata: {name: multi, namespace: default}
spec:
  clusterIP: 198.19.128.29
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: metrics, port: 9090, targetPort: 9100}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: multi-1, namespace: default, labels: {kubernetes.io/service-name: multi}}
addressType: IPv4
ports:
- {name: metrics, port: 9100, protocol: TCP}
- {name: http, port: 8080, protocol: TCP}
- {name: http, port: 7777, protocol: UDP}
- {port: 6666, protocol: TCP}
endpoints: [{addresses: [10.244.1.10]}]
"
            .into(),
            check: |t| {
                let s = service(t, "multi");
                assert_eq!(port(s, "http").endpoints, vec![ep("10.244.1.10", 8080)]);
                assert_eq!(port(s, "metrics").endpoints, vec![ep("10.244.1.10", 9100)]);
            },
        },
        Case {
            name: "endpoint conditions: ready unset = true, serving unset = ready, terminating unset = false",
            yaml: "
apiVersion: v1
kind: Service
metadata: {name: cond, namespace: default}
spec: {clusterIP: 198.19.128.30, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: cond-1, namespace: default, labels: {kubernetes.io/service-name: cond}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- addresses: [10.244.1.1]
- addresses: [10.244.1.2]
  conditions: {ready: false}
- addresses: [10.244.1.3]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.244.1.4]
  conditions: {serving: false}
"
            .into(),
            check: |t| {
                let eps = &port(service(t, "cond"), "").endpoints;
                let got: Vec<_> = eps
                    .iter()
                    .map(|e| (e.ip.to_string(), e.ready, e.serving, e.terminating))
                    .collect();
                assert_eq!(
                    got,
                    vec![
                        ("10.244.1.1".into(), true, true, false),
                        ("10.244.1.2".into(), false, false, false),
                        ("10.244.1.3".into(), false, true, true),
                        ("10.244.1.4".into(), true, false, false),
                    ]
                );
            },
        },
        Case {
            name: "nodeName, zone and hints.forZones carried; empty hints = none",
            yaml: "
apiVersion: v1
kind: Service
metadata: {name: topo, namespace: default}
spec: {clusterIP: 198.19.128.31, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: topo-1, namespace: default, labels: {kubernetes.io/service-name: topo}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- addresses: [10.244.1.1]
  nodeName: node-a
  zone: zone-a
  hints: {forZones: [{name: zone-b}, {name: zone-a}]}
- addresses: [10.244.2.1]
  nodeName: node-b
  zone: zone-b
  hints: {forZones: []}
"
            .into(),
            check: |t| {
                let eps = &port(service(t, "topo"), "").endpoints;
                assert_eq!(eps[0].node_name.as_deref(), Some("node-a"));
                assert_eq!(eps[0].zone.as_deref(), Some("zone-a"));
                assert_eq!(eps[0].hint_zones, Some(vec!["zone-a".to_string(), "zone-b".to_string()]));
                assert_eq!(eps[1].node_name.as_deref(), Some("node-b"));
                assert_eq!(eps[1].hint_zones, None);
            },
        },
        Case {
            name: "several slices merge; an endpoint in two slices is kept once (the ready copy); IPv6/FQDN slices, first address only",
            yaml: "
apiVersion: v1
kind: Service
metadata: {name: big, namespace: default}
spec: {clusterIP: 198.19.128.32, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: big-2, namespace: default, labels: {kubernetes.io/service-name: big}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.244.2.2, 10.244.9.9]
- addresses: [10.244.1.1]
  conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: big-1, namespace: default, labels: {kubernetes.io/service-name: big}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.244.1.1]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: big-v6, namespace: default, labels: {kubernetes.io/service-name: big}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints: [{addresses: ['fd00::1']}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: big-fqdn, namespace: default, labels: {kubernetes.io/service-name: big}}
addressType: FQDN
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [example.com]}]
"
            .into(),
            check: |t| {
                assert_eq!(
                    port(service(t, "big"), "http").endpoints,
                    vec![ep("10.244.1.1", 8080), ep("10.244.2.2", 8080)]
                );
            },
        },
        Case {
            name: "slices attach by the service-name label in the same namespace only",
            yaml: "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec: {clusterIP: 198.19.128.33, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-x, namespace: staging, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.244.3.1]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-nolabel, namespace: prod}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.244.3.2]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-y, namespace: prod, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.244.3.3]}]
"
            .into(),
            check: |t| {
                assert_eq!(port(service(t, "web"), "").endpoints, vec![ep("10.244.3.3", 8080)]);
            },
        },
        Case {
            name: "this node: pod CIDRs, node IPs (Internal+External, IPv4, no loopback, + uplink), zone, public-ip underlay",
            yaml: "
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: {topology.kubernetes.io/zone: zone-a}
  annotations: {flannel.alpha.coreos.com/public-ip: 198.18.0.100}
spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24, 'fd00:1::/64']}
status:
  addresses:
  - {type: InternalIP, address: 198.18.0.11}
  - {type: ExternalIP, address: 203.0.113.11}
  - {type: InternalIP, address: 127.0.0.1}
  - {type: InternalIP, address: 'fd00::11'}
  - {type: Hostname, address: node-a}
"
            .into(),
            check: |t| {
                let n = &t.node;
                assert_eq!(n.name, "node-a");
                assert_eq!(n.zone.as_deref(), Some("zone-a"));
                assert_eq!(n.pod_cidrs, vec!["10.244.1.0/24".parse().unwrap()]);
                assert_eq!(n.node_ips, vec![ip("198.18.0.1"), ip("198.18.0.11"), ip("203.0.113.11")]);
                assert_eq!(n.underlay_ip, Some(ip("198.18.0.100")));
                assert_eq!((n.uplink_ifindex, n.uplink_mac, n.vtep_mac), (7, cfg().uplink_mac, cfg().vtep_mac));
                assert!(t.remote_nodes.is_empty());
            },
        },
        Case {
            name: "this node without public-ip: InternalIP is the underlay; spec.podCIDR fallback",
            yaml: "
apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 198.18.0.11}]}
"
            .into(),
            check: |t| {
                assert_eq!(t.node.underlay_ip, Some(ip("198.18.0.11")));
                assert_eq!(t.node.pod_cidrs, vec!["10.244.1.0/24".parse().unwrap()]);
            },
        },
        Case {
            name: "no Node object for this node: the uplink address stands in",
            yaml: String::new(),
            check: |t| {
                assert_eq!(t.node.name, "node-a");
                assert_eq!(t.node.underlay_ip, Some(ip("198.18.0.1")));
                assert_eq!(t.node.node_ips, vec![ip("198.18.0.1")]);
                assert!(t.node.pod_cidrs.is_empty());
            },
        },
        Case {
            name: "remote nodes: VTEP MAC from backend-data, underlay from public-ip else InternalIP; unusable ones skipped; sorted",
            yaml: r#"
apiVersion: v1
kind: Node
metadata:
  name: node-c
  annotations:
    flannel.alpha.coreos.com/backend-data: '{"VNI":1,"VtepMAC":"02:00:00:00:01:0C"}'
spec: {podCIDRs: [10.244.3.0/24]}
status: {addresses: [{type: InternalIP, address: 198.18.0.13}]}
---
apiVersion: v1
kind: Node
metadata:
  name: node-b
  annotations:
    flannel.alpha.coreos.com/backend-data: '{"VNI":1,"VtepMAC":"02:00:00:00:01:0b"}'
    flannel.alpha.coreos.com/public-ip: 198.18.0.112
spec: {podCIDR: 10.244.2.0/24}
status: {addresses: [{type: InternalIP, address: 198.18.0.12}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-nomac}
spec: {podCIDR: 10.244.4.0/24}
status: {addresses: [{type: InternalIP, address: 198.18.0.14}]}
---
apiVersion: v1
kind: Node
metadata:
  name: node-badmac
  annotations: {flannel.alpha.coreos.com/backend-data: '{"VNI":1,"VtepMAC":"zz"}'}
spec: {podCIDR: 10.244.5.0/24}
status: {addresses: [{type: InternalIP, address: 198.18.0.15}]}
---
apiVersion: v1
kind: Node
metadata:
  name: node-nocidr
  annotations: {flannel.alpha.coreos.com/backend-data: '{"VNI":1,"VtepMAC":"02:00:00:00:01:0e"}'}
status: {addresses: [{type: InternalIP, address: 198.18.0.16}]}
---
apiVersion: v1
kind: Node
metadata:
  name: node-noip
  annotations: {flannel.alpha.coreos.com/backend-data: '{"VNI":1,"VtepMAC":"02:00:00:00:01:0f"}'}
spec: {podCIDR: 10.244.7.0/24}
"#
            .into(),
            check: |t| {
                let got: Vec<_> = t
                    .remote_nodes
                    .iter()
                    .map(|n| (n.name.as_str(), n.underlay_ip, n.vtep_mac, n.pod_cidrs.clone()))
                    .collect();
                assert_eq!(
                    got,
                    vec![
                        ("node-b", ip("198.18.0.112"), [2, 0, 0, 0, 1, 0xb], vec!["10.244.2.0/24".parse().unwrap()]),
                        ("node-c", ip("198.18.0.13"), [2, 0, 0, 0, 1, 0xc], vec!["10.244.3.0/24".parse().unwrap()]),
                    ]
                );
            },
        },
    ]
}

#[test]
fn objects_in_tables_out() {
    for c in cases() {
        eprintln!("case: {}", c.name);
        let t = reduce_yaml(&c.yaml);
        (c.check)(&t);
        // Everything from the config is carried through unchanged.
        assert_eq!(t.service_cidrs, cfg().service_cidrs, "{}", c.name);
        assert_eq!(t.masquerade_ports, (61000, 65000), "{}", c.name);
        assert_eq!(t.maglev_size, 251, "{}", c.name);
    }
}

const MIXED: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: b, namespace: default}
spec: {clusterIP: 198.19.128.41, ports: [{name: x, port: 81}, {name: w, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: a, namespace: default}
spec: {clusterIP: 198.19.128.40, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: a, namespace: other}
spec: {clusterIP: 198.19.128.42, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: b-2, namespace: default, labels: {kubernetes.io/service-name: b}}
addressType: IPv4
ports: [{name: w, port: 8080}, {name: x, port: 8081}]
endpoints: [{addresses: [10.244.2.9]}, {addresses: [10.244.1.3], conditions: {ready: false}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: b-1, namespace: default, labels: {kubernetes.io/service-name: b}}
addressType: IPv4
ports: [{name: x, port: 8081}, {name: w, port: 8080}]
endpoints: [{addresses: [10.244.1.3]}, {addresses: [10.244.1.1]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: a-1, namespace: default, labels: {kubernetes.io/service-name: a}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.244.3.3]}, {addresses: [10.244.3.1]}]
---
apiVersion: v1
kind: Node
metadata:
  name: node-z
  annotations: {flannel.alpha.coreos.com/backend-data: '{"VNI":1,"VtepMAC":"02:00:00:00:01:1a"}'}
spec: {podCIDR: 10.244.26.0/24}
status: {addresses: [{type: InternalIP, address: 198.18.0.26}]}
---
apiVersion: v1
kind: Node
metadata:
  name: node-b
  annotations: {flannel.alpha.coreos.com/backend-data: '{"VNI":1,"VtepMAC":"02:00:00:00:01:0b"}'}
spec: {podCIDR: 10.244.2.0/24}
status: {addresses: [{type: InternalIP, address: 198.18.0.12}]}
"#;

fn pod_route(last: u8, name: &str) -> PodRoute {
    PodRoute {
        ip: Ipv4Addr::new(10, 244, 1, last),
        mac: [2, 0, 0, 0, 2, last],
        host_ifindex: 100 + u32::from(last),
        host_mac: [2, 0, 0, 0, 3, last],
        name: name.into(),
    }
}

#[test]
fn output_is_independent_of_input_order() {
    let objs = objects(MIXED);
    let facts = LocalFacts {
        pods: vec![
            pod_route(9, "x/p9"),
            pod_route(2, "x/p2"),
            pod_route(5, "x/p5"),
        ],
        neighbors: vec![(ip("198.18.0.26"), [1; 6]), (ip("198.18.0.12"), [2; 6])],
        gateway: Some(ip("198.18.0.254")),
        pod_interfaces: Vec::new(),
    };
    let mut reference: Option<TableSpec> = None;
    // Forward, reversed and every rotation.
    let mut orders: Vec<Vec<Object>> = vec![objs.clone(), objs.iter().rev().cloned().collect()];
    for k in 1..objs.len() {
        let mut o = objs.clone();
        o.rotate_left(k);
        orders.push(o);
    }
    for (i, order) in orders.into_iter().enumerate() {
        let mut store = ObjectStore::new();
        store.replace_all("test", order);
        let mut f = facts.clone();
        f.pods.rotate_left(i % 3);
        f.neighbors.rotate_left(i % 2);
        let t = reduce(&store, &cfg(), &f);
        match &reference {
            None => reference = Some(t),
            Some(r) => assert_eq!(&t, r, "order #{i} gave different tables"),
        }
    }
    let t = reference.unwrap();
    let svcs: Vec<_> = t
        .services
        .iter()
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .collect();
    assert_eq!(svcs, vec!["default/a", "default/b", "other/a"]);
    let b = service(&t, "b");
    assert_eq!(
        b.ports.iter().map(|p| p.port).collect::<Vec<_>>(),
        vec![80, 81]
    );
    let w: Vec<_> = port(b, "w")
        .endpoints
        .iter()
        .map(|e| (e.ip.to_string(), e.ready))
        .collect();
    assert_eq!(
        w,
        vec![
            ("10.244.1.1".into(), true),
            ("10.244.1.3".into(), true),
            ("10.244.2.9".into(), true)
        ]
    );
    assert_eq!(
        t.remote_nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>(),
        vec!["node-b", "node-z"]
    );
    assert_eq!(
        t.local_pods
            .iter()
            .map(|p| p.ip.octets()[3])
            .collect::<Vec<_>>(),
        vec![2, 5, 9]
    );
    assert_eq!(t.neighbors[0].0, ip("198.18.0.12"));
    assert_eq!(t.gateway, Some(ip("198.18.0.254")));
}

#[test]
fn nothing_is_programmed_before_the_first_sync() {
    let objs = objects(MIXED);
    let mut store = ObjectStore::new();
    store.register("w:svc", &[Kind::Service]);
    store.register("w:eps", &[Kind::EndpointSlice]);
    for o in objs.iter().cloned() {
        match o {
            Object::Service(s) => {
                store.apply("w:svc", s);
            }
            Object::EndpointSlice(s) => {
                store.apply("w:eps", s);
            }
            Object::Node(n) => {
                store.apply("w:nodes", n);
            }
            Object::Pod(_) => {}
        }
    }
    assert!(!synced(&store));
    let t = reduce(&store, &cfg(), &LocalFacts::default());
    assert!(t.services.is_empty(), "services programmed before sync");
    assert_eq!(
        t.remote_nodes.len(),
        2,
        "the overlay does not wait for the Service sync"
    );

    // Services synced but EndpointSlices not yet: still nothing.
    let services: Vec<_> = store.services().into_iter().cloned().collect();
    store.replace("w:svc", services);
    assert!(!synced(&store));
    assert!(reduce(&store, &cfg(), &LocalFacts::default())
        .services
        .is_empty());

    let slices: Vec<_> = store.endpoint_slices().into_iter().cloned().collect();
    store.replace("w:eps", slices);
    assert!(synced(&store));
    assert_eq!(
        reduce(&store, &cfg(), &LocalFacts::default())
            .services
            .len(),
        3
    );
}

#[test]
fn pod_names_come_from_pod_objects_of_this_node() {
    let yaml = "
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop}
spec: {nodeName: node-a, containers: [{name: c, image: i}]}
status: {podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: elsewhere, namespace: shop}
spec: {nodeName: node-b, containers: [{name: c, image: i}]}
status: {podIP: 10.244.1.5}
";
    let mut store = ObjectStore::new();
    store.replace_all("test", objects(yaml));
    let facts = LocalFacts {
        pods: vec![
            pod_route(5, ""),
            pod_route(2, ""),
            pod_route(9, "given/name"),
        ],
        ..LocalFacts::default()
    };
    let t = reduce(&store, &cfg(), &facts);
    let names: Vec<_> = t.local_pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["shop/web-1", "", "given/name"]);
}

#[test]
fn a_no_op_resync_publishes_no_new_generation() {
    let state = AgentState::new("node-a");
    let mut publisher = Publisher::new(state.clone());
    let mut store = ObjectStore::new();
    store.replace_all("test", objects(MIXED));
    let facts = LocalFacts::default();

    let g1 = publisher.publish(reduce(&store, &cfg(), &facts));
    assert_eq!(g1, Some(1));
    assert_eq!(state.tables.load().generation, 1);
    assert_eq!(state.tables.load().spec.services.len(), 3);

    // The same objects again (a relist), in another order: same tables, no publish.
    let mut again = objects(MIXED);
    again.reverse();
    store.replace_all("test", again);
    assert_eq!(publisher.publish(reduce(&store, &cfg(), &facts)), None);
    assert_eq!(state.tables.load().generation, 1);
    assert_eq!(publisher.generation(), 1);
    assert_eq!(state.last_publish.lock().unwrap().generation, 1);

    // A real change publishes generation 2.
    let mut changed = objects(MIXED);
    changed.retain(|o| o.key().name != "node-z");
    store.replace_all("test", changed);
    assert_eq!(publisher.publish(reduce(&store, &cfg(), &facts)), Some(2));
    assert_eq!(state.tables.load().generation, 2);
    assert_eq!(state.tables.load().spec.remote_nodes.len(), 1);
}

#[test]
fn programming_latency_waits_for_every_worker() {
    let state = AgentState::new("node-a");
    let w0 = dataplane::report::new_slot(0);
    let w1 = dataplane::report::new_slot(1);
    state
        .workers
        .lock()
        .unwrap()
        .extend([w0.clone(), w1.clone()]);
    let mut publisher = Publisher::new(state.clone());
    let seen = std::time::Instant::now() - std::time::Duration::from_millis(5);
    let g = publisher
        .publish_seen(reduce_yaml(MIXED), seen, std::time::Duration::ZERO)
        .unwrap();
    assert!(state.pending_since.lock().unwrap().is_some());
    let set_gen = |slot: &dataplane::report::ReportSlot, g: u64| {
        let mut r = (**slot.load()).clone();
        r.generation = g;
        slot.store(std::sync::Arc::new(r));
    };
    set_gen(&w0, g);
    publisher.observe_workers();
    assert_eq!(
        state.last_publish.lock().unwrap().programming_latency_us,
        None
    );
    assert!(state.pending_since.lock().unwrap().is_some());
    set_gen(&w1, g);
    publisher.observe_workers();
    let lat = state.last_publish.lock().unwrap().programming_latency_us;
    assert!(
        lat.is_some_and(|us| us >= 5_000),
        "latency {lat:?} must count from the change"
    );
    assert!(state.pending_since.lock().unwrap().is_none());

    // With no workers, a publish is programmed at once.
    let state = AgentState::new("node-a");
    let mut publisher = Publisher::new(state.clone());
    publisher.publish(reduce_yaml(MIXED));
    assert!(state
        .last_publish
        .lock()
        .unwrap()
        .programming_latency_us
        .is_some());
    assert!(state.pending_since.lock().unwrap().is_none());
}

/// kube-proxy's local-traffic detector as the tables get it: ClusterCIDR
/// without a CIDR from every Node's podCIDRs (none known: no detector), with
/// one as given; NodeCIDR this node's; the interface modes the attached pod
/// interfaces that match.
#[test]
fn local_traffic_detector_follows_detect_local_mode() {
    use control::config::{DetectLocal, MasqueradeConfig};
    use shared::snapshot::LocalTraffic;
    let nodes = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDR: 198.19.1.0/24}
status: {addresses: [{type: InternalIP, address: 198.18.0.11}]}
---
apiVersion: v1
kind: Node
metadata:
  name: node-b
  annotations:
    flannel.alpha.coreos.com/backend-data: '{"VNI":1,"VtepMAC":"02:00:00:00:01:0b"}'
spec: {podCIDR: 198.19.2.0/24}
status: {addresses: [{type: InternalIP, address: 198.18.0.12}]}
"#;
    let mut store = ObjectStore::new();
    store.replace_all("test", objects(nodes));
    let facts = LocalFacts {
        pod_interfaces: vec![
            (21, "npa1".into()),
            (22, "npa2".into()),
            (23, "veth9".into()),
        ],
        ..LocalFacts::default()
    };
    let with = |d: DetectLocal| {
        let c = LocalConfig {
            masquerade: MasqueradeConfig {
                detect_local: d,
                ..MasqueradeConfig::default()
            },
            ..cfg()
        };
        reduce(&store, &c, &facts).masquerade.local
    };
    let cidr = |s: &str| s.parse().unwrap();
    assert_eq!(
        with(DetectLocal::ClusterCidr(Vec::new())),
        LocalTraffic::Cidrs(vec![cidr("198.19.1.0/24"), cidr("198.19.2.0/24")])
    );
    assert_eq!(
        with(DetectLocal::ClusterCidr(vec![cidr("198.19.0.0/16")])),
        LocalTraffic::Cidrs(vec![cidr("198.19.0.0/16")])
    );
    assert_eq!(
        with(DetectLocal::NodeCidr),
        LocalTraffic::Cidrs(vec![cidr("198.19.1.0/24")])
    );
    assert_eq!(
        with(DetectLocal::InterfaceNamePrefix("npa".into())),
        LocalTraffic::Interfaces(vec![21, 22])
    );
    assert_eq!(
        with(DetectLocal::BridgeInterface("cni0".into())),
        LocalTraffic::Interfaces(Vec::new())
    );
    // No Node known: no pod CIDR, so no detector (kube-proxy without one).
    let empty = ObjectStore::new();
    let c = cfg();
    assert_eq!(
        reduce(&empty, &c, &LocalFacts::default()).masquerade.local,
        LocalTraffic::None
    );
}

/// kube-proxy's nodePortAddresses as the tables get it: CIDRs as given,
/// `primary` as the node's first InternalIP (/32); nothing set: every IP.
#[test]
fn nodeport_addresses_resolve_primary_to_the_internal_ip() {
    use control::config::NodePortAddress;
    let node = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDR: 198.19.1.0/24}
status:
  addresses:
  - {type: InternalIP, address: 198.18.0.11}
  - {type: ExternalIP, address: 198.18.5.11}
"#;
    let mut store = ObjectStore::new();
    store.replace_all("test", objects(node));
    let with = |a: Vec<NodePortAddress>| {
        let c = LocalConfig {
            nodeport_addresses: a,
            ..cfg()
        };
        reduce(&store, &c, &LocalFacts::default()).node
    };
    let n = with(Vec::new());
    assert!(n.nodeport_cidrs.is_empty());
    assert!(n.node_ips.contains(&ip("198.18.5.11")));
    let n = with(vec![NodePortAddress::Primary]);
    assert_eq!(n.nodeport_cidrs, vec!["198.18.0.11/32".parse().unwrap()]);
    assert!(
        n.node_ips.contains(&ip("198.18.5.11")),
        "still a node IP, only without NodePorts"
    );
    let n = with(vec![NodePortAddress::Cidr(
        "198.18.5.0/24".parse().unwrap(),
    )]);
    assert_eq!(n.nodeport_cidrs, vec!["198.18.5.0/24".parse().unwrap()]);
}

// ------------------------------------------------ selectors → endpoints

/// A Pod in `ns` with `labels` ("k=v,k2=v2"), on `node`, with its IP in the
/// status (or none), its Ready condition, deletionTimestamp, phase and a
/// container port "http" 8080/TCP and "dns" 5353/UDP.
fn pod_yaml(
    ns: &str,
    name: &str,
    labels: &str,
    node: &str,
    ip: Option<&str>,
    (ready, deleting, phase): (bool, bool, &str),
) -> String {
    let labels: Vec<String> = labels
        .split(',')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            format!("{k}: {v}")
        })
        .collect();
    let del = if deleting {
        "\n  deletionTimestamp: \"2026-12-04T00:00:00Z\""
    } else {
        ""
    };
    let ips = ip.map_or(String::new(), |ip| {
        format!("\n  podIP: {ip}\n  podIPs: [{{ip: {ip}}}]")
    });
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  uid: uid-{name}{del}\n  labels: {{{}}}\n\
         spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    ports:\n    - {{name: http, containerPort: 8080, protocol: TCP}}\n    - {{name: dns, containerPort: 5353, protocol: UDP}}\n\
         status:\n  phase: {phase}{ips}\n  conditions: [{{type: Ready, status: \"{}\"}}]\n",
        labels.join(", "),
        if ready { "True" } else { "False" }
    )
}

fn svc_yaml(ns: &str, name: &str, ip: &str, selector: &str, ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  clusterIP: {ip}\n  selector: {{{selector}}}\n  ports:\n{ports}"
    )
}

fn derive_cfg() -> LocalConfig {
    LocalConfig {
        derive_endpoints: true,
        ..cfg()
    }
}

fn reduce_derived(yaml: &str, facts: &LocalFacts) -> TableSpec {
    let mut store = ObjectStore::new();
    store.replace_all("test", objects(yaml));
    reduce(&store, &derive_cfg(), facts)
}

fn endpoint_set(p: &ServicePortSpec) -> Vec<(Ipv4Addr, u16, bool, bool, bool, Option<String>)> {
    let mut v: Vec<_> = p
        .endpoints
        .iter()
        .map(|e| {
            (
                e.ip,
                e.port,
                e.ready,
                e.serving,
                e.terminating,
                e.node_name.clone(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn selectors_give_endpoints_as_the_endpointslice_controller() {
    let http = "  - {name: http, port: 80, targetPort: http}\n  - {name: dns, port: 53, protocol: UDP, targetPort: dns}\n  - {name: raw, port: 81, targetPort: 9000}\n";
    let pods = [
        // Matches: ready, on node-a.
        pod_yaml(
            "default",
            "p1",
            "app=web,tier=fe",
            "node-a",
            Some("10.244.1.5"),
            (true, false, "Running"),
        ),
        // Matches: not ready (serving false, ready false).
        pod_yaml(
            "default",
            "p2",
            "app=web",
            "node-b",
            Some("10.244.2.5"),
            (false, false, "Running"),
        ),
        // Matches: ready but terminating (serving, not ready).
        pod_yaml(
            "default",
            "p3",
            "app=web",
            "node-b",
            Some("10.244.2.6"),
            (true, true, "Running"),
        ),
        // Terminal phases: left out.
        pod_yaml(
            "default",
            "p4",
            "app=web",
            "node-b",
            Some("10.244.2.7"),
            (false, false, "Succeeded"),
        ),
        pod_yaml(
            "default",
            "p5",
            "app=web",
            "node-b",
            Some("10.244.2.8"),
            (false, false, "Failed"),
        ),
        // Another namespace, another label value, a missing label: left out.
        pod_yaml(
            "other",
            "p6",
            "app=web",
            "node-a",
            Some("10.244.1.6"),
            (true, false, "Running"),
        ),
        pod_yaml(
            "default",
            "p7",
            "app=db",
            "node-a",
            Some("10.244.1.7"),
            (true, false, "Running"),
        ),
        pod_yaml(
            "default",
            "p8",
            "tier=fe",
            "node-a",
            Some("10.244.1.8"),
            (true, false, "Running"),
        ),
        // No address anywhere: left out (a note in the log).
        pod_yaml(
            "default",
            "p9",
            "app=web",
            "node-b",
            None,
            (true, false, "Pending"),
        ),
    ];
    let yaml = format!(
        "{}\n---\n{}\n---\n{}",
        svc_yaml("default", "web", "198.19.128.10", "app: web", http),
        svc_yaml(
            "default",
            "fe",
            "198.19.128.11",
            "app: web, tier: fe",
            "  - {name: http, port: 80, targetPort: http}\n"
        ),
        pods.join("\n---\n")
    );
    let t = reduce_derived(&yaml, &LocalFacts::default());
    let web = service(&t, "web");
    let want = |port: u16| {
        vec![
            (
                ip("10.244.1.5"),
                port,
                true,
                true,
                false,
                Some("node-a".to_string()),
            ),
            (
                ip("10.244.2.5"),
                port,
                false,
                false,
                false,
                Some("node-b".to_string()),
            ),
            (
                ip("10.244.2.6"),
                port,
                false,
                true,
                true,
                Some("node-b".to_string()),
            ),
        ]
    };
    // Named targetPorts resolve per protocol; numbers pass through.
    assert_eq!(endpoint_set(port(web, "http")), want(8080));
    assert_eq!(endpoint_set(port(web, "dns")), want(5353));
    assert_eq!(endpoint_set(port(web, "raw")), want(9000));
    // Two labels: both must match.
    let fe = service(&t, "fe");
    assert_eq!(
        endpoint_set(port(fe, "http")),
        vec![(
            ip("10.244.1.5"),
            8080,
            true,
            true,
            false,
            Some("node-a".to_string())
        )]
    );
}

#[test]
fn named_ports_publish_not_ready_and_cni_addresses() {
    // A named targetPort a pod lacks leaves that pod out of that port only.
    let mut nohttp = pod_yaml(
        "default",
        "q1",
        "app=web",
        "node-a",
        Some("10.244.1.9"),
        (true, false, "Running"),
    );
    nohttp = nohttp.replace(
        "    - {name: http, containerPort: 8080, protocol: TCP}\n",
        "",
    );
    // No status IP, but the CNI plugin registered default/q2 on this node.
    let cni = pod_yaml(
        "default",
        "q2",
        "app=web",
        "node-a",
        None,
        (true, false, "Running"),
    );
    let ports = "  - {name: http, port: 80, targetPort: http}\n  - {name: dns, port: 53, protocol: UDP, targetPort: dns}\n";
    let mut pnr = svc_yaml("default", "pnr", "198.19.128.12", "app: web", ports);
    pnr = pnr.replace("spec:\n", "spec:\n  publishNotReadyAddresses: true\n");
    let notready = pod_yaml(
        "default",
        "q3",
        "app=web",
        "node-b",
        Some("10.244.2.9"),
        (false, true, "Running"),
    );
    let yaml = format!(
        "{}\n---\n{pnr}\n---\n{nohttp}\n---\n{cni}\n---\n{notready}",
        svc_yaml("default", "web", "198.19.128.10", "app: web", ports)
    );
    let facts = LocalFacts {
        pods: vec![PodRoute {
            name: "default/q2".into(),
            ..pod_route(44, "")
        }],
        ..LocalFacts::default()
    };
    let t = reduce_derived(&yaml, &facts);
    let web = service(&t, "web");
    let q2 = pod_route(44, "").ip;
    let http: Vec<Ipv4Addr> = endpoint_set(port(web, "http"))
        .iter()
        .map(|e| e.0)
        .collect();
    let dns: Vec<Ipv4Addr> = endpoint_set(port(web, "dns")).iter().map(|e| e.0).collect();
    let mut want_http = vec![q2, ip("10.244.2.9")];
    want_http.sort();
    assert_eq!(http, want_http, "q1 has no port named http");
    let mut want_dns = vec![ip("10.244.1.9"), q2, ip("10.244.2.9")];
    want_dns.sort();
    assert_eq!(dns, want_dns);
    // publishNotReadyAddresses: ready even while not ready and terminating.
    let pnr = service(&t, "pnr");
    let q3 = endpoint_set(port(pnr, "dns"))
        .into_iter()
        .find(|e| e.0 == ip("10.244.2.9"))
        .unwrap();
    assert_eq!((q3.2, q3.3, q3.4), (true, false, true));
}

#[test]
fn hand_written_slices_win_without_a_selector_and_controllers_are_replaced() {
    let ports = "  - {name: http, port: 80, targetPort: 8080}\n";
    let pod = pod_yaml(
        "default",
        "r1",
        "app=web",
        "node-a",
        Some("10.244.1.20"),
        (true, false, "Running"),
    );
    let slice = |svc: &str, name: &str, managed: &str, addr: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {{kubernetes.io/service-name: {svc}{managed}}}\n\
             addressType: IPv4\nports: [{{name: http, protocol: TCP, port: 8080}}]\nendpoints: [{{addresses: [\"{addr}\"]}}]\n"
        )
    };
    let ctrl = ", endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io";
    let plain = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: plain, namespace: default}}\nspec:\n  clusterIP: 198.19.128.20\n  ports:\n{ports}"
    );
    let yaml = [
        svc_yaml("default", "web", "198.19.128.10", "app: web", ports),
        plain,
        pod,
        // A controller's slice for a selector Service: replaced.
        slice("web", "web-old", ctrl, "10.244.9.9"),
        // Someone else's slice for it: kept next to the derived one.
        slice("web", "web-extra", "", "10.244.9.10"),
        // A Service without a selector: its hand-written slices only.
        slice("plain", "plain-1", "", "10.244.9.11"),
    ]
    .join("\n---\n");
    let t = reduce_derived(&yaml, &LocalFacts::default());
    let web: Vec<Ipv4Addr> = endpoint_set(port(service(&t, "web"), "http"))
        .iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(web, vec![ip("10.244.1.20"), ip("10.244.9.10")]);
    let plain: Vec<Ipv4Addr> = endpoint_set(port(service(&t, "plain"), "http"))
        .iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(plain, vec![ip("10.244.9.11")]);
    // Without derivation (the API server: its controller writes slices), the
    // store's slices only.
    let mut store = ObjectStore::new();
    store.replace_all("test", objects(&yaml));
    let t = reduce(&store, &cfg(), &LocalFacts::default());
    let web: Vec<Ipv4Addr> = endpoint_set(port(service(&t, "web"), "http"))
        .iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(web, vec![ip("10.244.9.9"), ip("10.244.9.10")]);
}

#[test]
fn endpoints_follow_pods_added_relabelled_and_removed() {
    let ports = "  - {name: http, port: 80, targetPort: http}\n";
    let svc = svc_yaml("default", "web", "198.19.128.10", "app: web", ports);
    let p = |name: &str, labels: &str, last: u8| {
        pod_yaml(
            "default",
            name,
            labels,
            "node-a",
            Some(&format!("10.244.1.{last}")),
            (true, false, "Running"),
        )
    };
    let mut store = ObjectStore::new();
    let eps = |store: &ObjectStore| -> Vec<Ipv4Addr> {
        let t = reduce(store, &derive_cfg(), &LocalFacts::default());
        endpoint_set(port(service(&t, "web"), "http"))
            .iter()
            .map(|e| e.0)
            .collect()
    };
    store.replace_all(
        "test",
        objects(&format!("{svc}\n---\n{}", p("a", "app=web", 1))),
    );
    assert_eq!(eps(&store), vec![ip("10.244.1.1")]);
    store.replace_all(
        "test",
        objects(&format!(
            "{svc}\n---\n{}\n---\n{}",
            p("a", "app=web", 1),
            p("b", "app=web", 2)
        )),
    );
    assert_eq!(eps(&store), vec![ip("10.244.1.1"), ip("10.244.1.2")]);
    store.replace_all(
        "test",
        objects(&format!(
            "{svc}\n---\n{}\n---\n{}",
            p("a", "app=old", 1),
            p("b", "app=web", 2)
        )),
    );
    assert_eq!(eps(&store), vec![ip("10.244.1.2")]);
    // Every pod gone: no endpoints, the Service rejects.
    store.replace_all("test", objects(&svc));
    assert!(eps(&store).is_empty());
    assert!(service(
        &reduce(&store, &derive_cfg(), &LocalFacts::default()),
        "web"
    )
    .ports
    .iter()
    .all(|p| p.endpoints.is_empty()));
}

/// `nodeplane_network_programming_duration_seconds`, as kube-proxy's: the
/// EndpointSlice controller's `last-change-trigger-time` to every worker on
/// the tables. A trigger time counts once, only once every worker runs the
/// generation, and not if it is from before the agent started (the first
/// list) or is not a time.
#[test]
fn programming_duration_counts_each_trigger_time_once_every_worker_runs_it() {
    use control::publish::{TriggerTimes, LAST_CHANGE_TRIGGER_TIME};
    use std::time::{Duration, SystemTime};
    let rfc3339 = |t: SystemTime| {
        k8s_openapi::jiff::Timestamp::try_from(t)
            .unwrap()
            .to_string()
    };
    let slice = |name: &str, trigger: &str| {
        format!(
            r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
  annotations: {{{LAST_CHANGE_TRIGGER_TIME}: "{trigger}"}}
addressType: IPv4
endpoints: [{{addresses: [198.19.1.10], conditions: {{ready: true}}}}]
ports: [{{port: 8080, protocol: TCP}}]
"#
        )
    };
    let count = |state: &AgentState| {
        let text = control::status::metrics_text(state);
        let get = |k: &str| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(&format!(
                        "nodeplane_network_programming_duration_seconds_{k} "
                    ))
                })
                .unwrap_or_else(|| panic!("no _{k} in\n{text}"))
                .parse::<f64>()
                .unwrap()
        };
        (get("count"), get("sum"))
    };
    let now = SystemTime::now();
    let state = AgentState::new("node-a");
    let w0 = dataplane::report::new_slot(0);
    state.workers.lock().unwrap().push(w0.clone());
    let mut publisher = Publisher::new(state.clone());
    let mut triggers = TriggerTimes::new(now - Duration::from_secs(10));
    let mut store = ObjectStore::new();
    let three_s_ago = rfc3339(now - Duration::from_secs(3));
    let yaml = [
        slice("web-1", &three_s_ago),
        slice("web-2", &rfc3339(now - Duration::from_secs(20))),
        slice("web-3", "yesterday"),
    ]
    .join("---");
    store.replace_all("test", objects(&format!("{MIXED}---{yaml}")));
    let new = triggers.take_new(&store);
    assert_eq!(new.len(), 1, "only web-1's time is new and after the start");
    let g = publisher
        .publish(reduce(&store, &cfg(), &LocalFacts::default()))
        .unwrap();
    publisher.triggered(new);
    assert_eq!(count(&state).0, 0.0, "the worker is not on the tables yet");
    let mut r = (**w0.load()).clone();
    r.generation = g;
    w0.store(std::sync::Arc::new(r));
    publisher.observe_workers();
    let (c, s) = count(&state);
    assert_eq!(c, 1.0);
    assert!((3.0..30.0).contains(&s), "3 s and a little: {s}");
    // The same slices again: nothing new. web-1 changed: counted at once
    // (its change published nothing, so every worker already runs it).
    assert!(triggers.take_new(&store).is_empty());
    let one_s_ago = rfc3339(now - Duration::from_secs(1));
    store.replace_all(
        "test",
        objects(&format!("{MIXED}---{}", slice("web-1", &one_s_ago))),
    );
    let new = triggers.take_new(&store);
    assert_eq!(new.len(), 1);
    publisher.triggered(new);
    assert_eq!(count(&state).0, 2.0);
}
