//! `nodeplane service-env`: the environment variables the kubelet gives a
//! pod's containers for the Services it may use (kubelet's `envvars`):
//! `{SVC}_SERVICE_HOST`, `{SVC}_SERVICE_PORT`, `{SVC}_SERVICE_PORT_{NAME}` for
//! each named port, and the Docker-link forms `{SVC}_PORT`,
//! `{SVC}_PORT_{PORT}_{PROTO}` with `_PROTO`, `_PORT` and `_ADDR`; names
//! upper-cased with `-` as `_`. For the pod's namespace's Services (unless
//! service links are off) and always the `kubernetes` Service of `default`
//! (the namespace's own Service of that name wins); Services without a
//! ClusterIP (headless, ExternalName) have none. Pure: Services in, variables
//! out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;

/// The services the kubelet always exposes, from the `default` namespace.
const MASTER_SERVICES: [&str; 1] = ["kubernetes"];

/// `makeEnvVariableName`: upper case, `-` → `_`.
fn var_name(s: &str) -> String {
    s.replace('-', "_").to_uppercase()
}

/// `host:port`, IPv6 in brackets (Go's `net.JoinHostPort`).
fn host_port(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The ClusterIP when it is set (not empty, not "None").
fn cluster_ip(svc: &Service) -> Option<&str> {
    svc.spec
        .as_ref()?
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")
}

/// The variables of one Service, in the kubelet's order.
fn of_service(svc: &Service, out: &mut Vec<(String, String)>) {
    let Some(ip) = cluster_ip(svc) else {
        return;
    };
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    let Some(first) = ports.first() else {
        return; // validation forbids it; the kubelet would fail
    };
    let prefix = var_name(svc.metadata.name.as_deref().unwrap_or_default());
    out.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
    let port_var = format!("{prefix}_SERVICE_PORT");
    out.push((port_var.clone(), first.port.to_string()));
    for p in ports {
        if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((format!("{port_var}_{}", var_name(n)), p.port.to_string()));
        }
    }
    for (i, p) in ports.iter().enumerate() {
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        let lower = proto.to_lowercase();
        let url = format!("{lower}://{}", host_port(ip, p.port));
        if i == 0 {
            out.push((format!("{prefix}_PORT"), url.clone()));
        }
        let pp = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
        out.push((pp.clone(), url));
        out.push((format!("{pp}_PROTO"), lower));
        out.push((format!("{pp}_PORT"), p.port.to_string()));
        out.push((format!("{pp}_ADDR"), ip.to_string()));
    }
}

/// The variables for a pod in `namespace` (`links`: its
/// `enableServiceLinks`, true by default), sorted by name.
pub fn for_namespace(
    services: &[&Service],
    namespace: &str,
    links: bool,
) -> BTreeMap<String, String> {
    let mut chosen: BTreeMap<&str, &Service> = BTreeMap::new();
    for svc in services {
        if cluster_ip(svc).is_none() {
            continue;
        }
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        if ns == "default" && MASTER_SERVICES.contains(&name) {
            chosen.entry(name).or_insert(svc);
        } else if ns == namespace && links {
            chosen.insert(name, svc);
        }
    }
    let services: Vec<&Service> = chosen.into_values().collect();
    from_services(&services).into_iter().collect()
}

/// The kubelet's `FromServices`: every Service's variables, in its order.
pub fn from_services(services: &[&Service]) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    for svc in services {
        of_service(svc, &mut vars);
    }
    vars
}

/// Shell-safe `NAME='value'` (the values are addresses, ports and URLs, but
/// quoted all the same).
pub fn shell_line(name: &str, value: &str) -> String {
    format!("{name}='{}'", value.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(yaml: &str) -> Vec<Service> {
        serde_saphyr::from_multiple_with_options(yaml, crate::manifests::yaml_options()).unwrap()
    }

    fn svc(ns: &str, name: &str, ip: &str, ports: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  clusterIP: \"{ip}\"\n  ports: [{ports}]\n"
        )
    }

    /// kubelet's TestFromServices (pkg/kubelet/envvars/envvars_test.go,
    /// k8s.io/kubernetes v1.34.4): its Services and expected variables, in
    /// order.
    #[test]
    fn kubelets_from_services_case() {
        let yaml = [
            svc("default", "foo-bar", "1.2.3.4", "{port: 8080, protocol: TCP}"),
            svc(
                "default",
                "abc-123",
                "5.6.7.8",
                "{name: u-d-p, port: 8081, protocol: UDP}, {name: t-c-p, port: 8081, protocol: TCP}",
            ),
            svc(
                "default",
                "q-u-u-x",
                "9.8.7.6",
                "{port: 8082, protocol: TCP}, {name: \"8083\", port: 8083, protocol: TCP}",
            ),
            svc("default", "svrc-clusterip-none", "None", "{port: 8082, protocol: TCP}"),
            svc("default", "svrc-clusterip-empty", "", "{port: 8082, protocol: TCP}"),
            svc(
                "default",
                "super-ipv6",
                "2001:DB8::",
                "{name: u-d-p, port: 8084, protocol: UDP}, {name: t-c-p, port: 8084, protocol: TCP}",
            ),
            svc("default", "sctp-1", "1.2.3.4", "{port: 777, protocol: SCTP}"),
        ]
        .join("---\n");
        let list = services(&yaml);
        let refs: Vec<&Service> = list.iter().collect();
        let got = from_services(&refs);
        let want: Vec<(String, String)> = [
            ("FOO_BAR_SERVICE_HOST", "1.2.3.4"),
            ("FOO_BAR_SERVICE_PORT", "8080"),
            ("FOO_BAR_PORT", "tcp://1.2.3.4:8080"),
            ("FOO_BAR_PORT_8080_TCP", "tcp://1.2.3.4:8080"),
            ("FOO_BAR_PORT_8080_TCP_PROTO", "tcp"),
            ("FOO_BAR_PORT_8080_TCP_PORT", "8080"),
            ("FOO_BAR_PORT_8080_TCP_ADDR", "1.2.3.4"),
            ("ABC_123_SERVICE_HOST", "5.6.7.8"),
            ("ABC_123_SERVICE_PORT", "8081"),
            ("ABC_123_SERVICE_PORT_U_D_P", "8081"),
            ("ABC_123_SERVICE_PORT_T_C_P", "8081"),
            ("ABC_123_PORT", "udp://5.6.7.8:8081"),
            ("ABC_123_PORT_8081_UDP", "udp://5.6.7.8:8081"),
            ("ABC_123_PORT_8081_UDP_PROTO", "udp"),
            ("ABC_123_PORT_8081_UDP_PORT", "8081"),
            ("ABC_123_PORT_8081_UDP_ADDR", "5.6.7.8"),
            ("ABC_123_PORT_8081_TCP", "tcp://5.6.7.8:8081"),
            ("ABC_123_PORT_8081_TCP_PROTO", "tcp"),
            ("ABC_123_PORT_8081_TCP_PORT", "8081"),
            ("ABC_123_PORT_8081_TCP_ADDR", "5.6.7.8"),
            ("Q_U_U_X_SERVICE_HOST", "9.8.7.6"),
            ("Q_U_U_X_SERVICE_PORT", "8082"),
            ("Q_U_U_X_SERVICE_PORT_8083", "8083"),
            ("Q_U_U_X_PORT", "tcp://9.8.7.6:8082"),
            ("Q_U_U_X_PORT_8082_TCP", "tcp://9.8.7.6:8082"),
            ("Q_U_U_X_PORT_8082_TCP_PROTO", "tcp"),
            ("Q_U_U_X_PORT_8082_TCP_PORT", "8082"),
            ("Q_U_U_X_PORT_8082_TCP_ADDR", "9.8.7.6"),
            ("Q_U_U_X_PORT_8083_TCP", "tcp://9.8.7.6:8083"),
            ("Q_U_U_X_PORT_8083_TCP_PROTO", "tcp"),
            ("Q_U_U_X_PORT_8083_TCP_PORT", "8083"),
            ("Q_U_U_X_PORT_8083_TCP_ADDR", "9.8.7.6"),
            ("SUPER_IPV6_SERVICE_HOST", "2001:DB8::"),
            ("SUPER_IPV6_SERVICE_PORT", "8084"),
            ("SUPER_IPV6_SERVICE_PORT_U_D_P", "8084"),
            ("SUPER_IPV6_SERVICE_PORT_T_C_P", "8084"),
            ("SUPER_IPV6_PORT", "udp://[2001:DB8::]:8084"),
            ("SUPER_IPV6_PORT_8084_UDP", "udp://[2001:DB8::]:8084"),
            ("SUPER_IPV6_PORT_8084_UDP_PROTO", "udp"),
            ("SUPER_IPV6_PORT_8084_UDP_PORT", "8084"),
            ("SUPER_IPV6_PORT_8084_UDP_ADDR", "2001:DB8::"),
            ("SUPER_IPV6_PORT_8084_TCP", "tcp://[2001:DB8::]:8084"),
            ("SUPER_IPV6_PORT_8084_TCP_PROTO", "tcp"),
            ("SUPER_IPV6_PORT_8084_TCP_PORT", "8084"),
            ("SUPER_IPV6_PORT_8084_TCP_ADDR", "2001:DB8::"),
            ("SCTP_1_SERVICE_HOST", "1.2.3.4"),
            ("SCTP_1_SERVICE_PORT", "777"),
            ("SCTP_1_PORT", "sctp://1.2.3.4:777"),
            ("SCTP_1_PORT_777_SCTP", "sctp://1.2.3.4:777"),
            ("SCTP_1_PORT_777_SCTP_PROTO", "sctp"),
            ("SCTP_1_PORT_777_SCTP_PORT", "777"),
            ("SCTP_1_PORT_777_SCTP_ADDR", "1.2.3.4"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    /// kubelet's getServiceEnvVarMap: the namespace's Services and always
    /// default/kubernetes (the namespace's own `kubernetes` wins); with
    /// service links off, only the latter; headless and ExternalName none.
    #[test]
    fn namespace_selection_as_the_kubelets() {
        let yaml = [
            svc("default", "kubernetes", "10.0.0.1", "{name: https, port: 443}"),
            svc("default", "web", "10.0.0.10", "{port: 80}"),
            svc("team", "api", "10.0.0.20", "{name: grpc-port, port: 9000}"),
            svc("team", "headless", "None", "{port: 80}"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: team}\nspec: {type: ExternalName, externalName: example.org}\n".to_string(),
            svc("mine", "kubernetes", "10.0.0.30", "{port: 8443}"),
        ]
        .join("---\n");
        let list = services(&yaml);
        let refs: Vec<&Service> = list.iter().collect();
        let team = for_namespace(&refs, "team", true);
        assert_eq!(team["API_SERVICE_HOST"], "10.0.0.20");
        assert_eq!(team["API_SERVICE_PORT_GRPC_PORT"], "9000");
        assert_eq!(team["KUBERNETES_SERVICE_HOST"], "10.0.0.1");
        assert_eq!(team["KUBERNETES_PORT_443_TCP"], "tcp://10.0.0.1:443");
        assert!(
            !team.contains_key("WEB_SERVICE_HOST"),
            "another namespace's"
        );
        assert!(!team
            .keys()
            .any(|k| k.starts_with("HEADLESS_") || k.starts_with("EXT_")));
        let off = for_namespace(&refs, "team", false);
        assert!(off.keys().all(|k| k.starts_with("KUBERNETES_")), "{off:?}");
        assert_eq!(off.len(), 8);
        let mine = for_namespace(&refs, "mine", true);
        assert_eq!(mine["KUBERNETES_SERVICE_HOST"], "10.0.0.30");
        assert_eq!(mine["KUBERNETES_SERVICE_PORT"], "8443");
        let default = for_namespace(&refs, "default", true);
        assert_eq!(default["WEB_PORT"], "tcp://10.0.0.10:80");
        assert_eq!(shell_line("A", "it's"), "A='it'\\''s'");
    }
}
