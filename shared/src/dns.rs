//! The cluster DNS name table the workers answer from (built with each
//! snapshot from its Services): what Kubernetes' DNS specification and
//! CoreDNS's `kubernetes` plugin give for a cluster domain. A/`ANY` for
//! `svc.ns.svc.DOMAIN` (the ClusterIPs), SRV for `_port._proto.svc.ns.svc.DOMAIN`
//! (each named port: priority 0, weight 100, the port, the Service's name),
//! PTR for a ClusterIP's `in-addr.arpa` name, A for `a-b-c-d.ns.pod.DOMAIN` (the
//! address the name spells, as the plugin's `pods insecure`), empty
//! non-terminals (`svc.DOMAIN`, `ns.svc.DOMAIN`, `_proto.svc.ns.svc.DOMAIN`)
//! as names without data, and every other name under the domain as
//! nonexistent. Names are kept as lowercase dotted text without the final dot;
//! owners and targets the answers carry are kept in wire form.
//!
//! Owns the table and its lookup (`DnsTable::lookup`, no allocation). It does
//! not parse or build DNS messages: the dataplane's `pipeline::dns` does, with
//! the `domain` crate.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::net::L4Proto;

/// What the control plane says about cluster DNS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSpec {
    /// The cluster domain (`cluster.local`), lowercase, no final dot.
    pub domain: String,
    /// The cluster DNS address pods' resolv.conf names (a Service's
    /// ClusterIP); queries to it on UDP 53 are answered here.
    pub server: Ipv4Addr,
    /// The TTL of every answer (CoreDNS's `kubernetes` plugin: 5 s).
    pub ttl: u32,
}

/// A name's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsData {
    /// A Service's ClusterIPs.
    A(Vec<Ipv4Addr>),
    /// SRV records: (port, target in wire form).
    Srv(Vec<(u16, Box<[u8]>)>),
    /// An empty non-terminal: exists, no data.
    Empty,
}

/// What a query's name and type come to.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    /// A records: the addresses.
    A(&'a [Ipv4Addr]),
    /// One A record a pod name spells.
    PodA(Ipv4Addr),
    /// SRV records.
    Srv(&'a [(u16, Box<[u8]>)]),
    /// A PTR record: the target in wire form.
    Ptr(&'a [u8]),
    /// The zone's SOA (a query for it at the apex).
    Soa,
    /// The name exists, not with this type (NOERROR, SOA in authority).
    NoData,
    /// The name does not exist in the domain (NXDOMAIN, SOA in authority).
    NxDomain,
    /// Not the cluster's: the query goes on to the DNS Service's backends.
    Forward,
}

/// Query types the table knows (`domain`'s numbers, kept here as plain u16
/// so that this crate needs no DNS library).
pub mod qtype {
    pub const A: u16 = 1;
    pub const SOA: u16 = 6;
    pub const PTR: u16 = 12;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const ANY: u16 = 255;
}

/// The name table of one snapshot.
#[derive(Clone, Debug, Default)]
pub struct DnsTable {
    pub server: u32,
    pub ttl: u32,
    /// The domain, dotted (`cluster.local`).
    pub domain: String,
    /// The domain in wire form (the SOA's owner).
    pub domain_wire: Box<[u8]>,
    /// The SOA's `ns.dns.DOMAIN` and `hostmaster.DOMAIN`, in wire form.
    pub soa_mname: Box<[u8]>,
    pub soa_rname: Box<[u8]>,
    names: HashMap<Box<[u8]>, DnsData>,
    /// ClusterIP → the Service's name in wire form.
    ptr: HashMap<u32, Box<[u8]>>,
}

/// `a.b.c` → `\x01a\x01b\x01c\x00`; None if a label is empty or longer than
/// 63 bytes or the name longer than 255.
pub fn to_wire(dotted: &str) -> Option<Box<[u8]>> {
    let mut out = Vec::with_capacity(dotted.len() + 2);
    for label in dotted.split('.') {
        let n = u8::try_from(label.len())
            .ok()
            .filter(|n| (1..=63).contains(n))?;
        out.push(n);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    (out.len() <= 255).then(|| out.into_boxed_slice())
}

/// A Service's identity and ports, as the table needs them.
pub struct DnsService<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub cluster_ips: &'a [Ipv4Addr],
    /// (port name, protocol, port).
    pub ports: Vec<(&'a str, L4Proto, u16)>,
}

impl DnsTable {
    /// The table for `spec` and `services`. Names that cannot be DNS names
    /// (a label over 63 bytes) are left out.
    pub fn build<'a>(spec: &DnsSpec, services: impl IntoIterator<Item = DnsService<'a>>) -> Self {
        let domain = spec.domain.trim_end_matches('.').to_ascii_lowercase();
        let mut names: HashMap<Box<[u8]>, DnsData> = HashMap::new();
        let mut ptr = HashMap::new();
        let key = |s: &str| s.as_bytes().to_vec().into_boxed_slice();
        for svc in services {
            let owner = format!(
                "{}.{}.svc.{domain}",
                svc.name.to_ascii_lowercase(),
                svc.namespace.to_ascii_lowercase()
            );
            let Some(owner_wire) = to_wire(&owner) else {
                continue;
            };
            names.insert(key(&owner), DnsData::A(svc.cluster_ips.to_vec()));
            for ip in svc.cluster_ips {
                ptr.insert(u32::from(*ip), owner_wire.clone());
            }
            for (port_name, proto, port) in &svc.ports {
                if port_name.is_empty() {
                    continue;
                }
                let p = match proto {
                    L4Proto::Tcp => "tcp",
                    L4Proto::Udp => "udp",
                    L4Proto::Sctp => "sctp",
                };
                let srv = format!("_{}._{p}.{owner}", port_name.to_ascii_lowercase());
                if to_wire(&srv).is_none() {
                    continue;
                }
                match names
                    .entry(key(&srv))
                    .or_insert_with(|| DnsData::Srv(Vec::new()))
                {
                    DnsData::Srv(v) => v.push((*port, owner_wire.clone())),
                    other => *other = DnsData::Srv(vec![(*port, owner_wire.clone())]),
                }
            }
        }
        // Every proper ancestor of a name down to the domain exists
        // (empty non-terminals), and so does the domain itself.
        let owners: Vec<Box<[u8]>> = names.keys().cloned().collect();
        for o in owners {
            let s = String::from_utf8_lossy(&o).into_owned();
            let mut rest = s.as_str();
            while let Some((_, parent)) = rest.split_once('.') {
                if parent.len() < domain.len() {
                    break;
                }
                names.entry(key(parent)).or_insert(DnsData::Empty);
                rest = parent;
            }
        }
        names.entry(key(&domain)).or_insert(DnsData::Empty);
        let root = || vec![0].into_boxed_slice();
        DnsTable {
            server: u32::from(spec.server),
            ttl: spec.ttl,
            domain_wire: to_wire(&domain).unwrap_or_else(root),
            soa_mname: to_wire(&format!("ns.dns.{domain}")).unwrap_or_else(root),
            soa_rname: to_wire(&format!("hostmaster.{domain}")).unwrap_or_else(root),
            domain,
            names,
            ptr,
        }
    }

    /// Is `name` (lowercase dotted) the domain or under it?
    fn in_domain(&self, name: &[u8]) -> bool {
        let d = self.domain.as_bytes();
        name == d
            || (name.len() > d.len() && name.ends_with(d) && name[name.len() - d.len() - 1] == b'.')
    }

    /// What a question for `name` (lowercase dotted, no final dot; a name
    /// with a dot inside a label must not come here) of type `qtype` gets.
    pub fn lookup(&self, name: &[u8], qtype: u16) -> Answer<'_> {
        if let Some(ip) = reverse_ipv4(name) {
            return match self.ptr.get(&ip) {
                Some(t) if qtype == qtype::PTR || qtype == qtype::ANY => Answer::Ptr(t),
                Some(_) => Answer::NoData,
                None => Answer::Forward,
            };
        }
        if !self.in_domain(name) {
            return Answer::Forward;
        }
        match self.names.get(name) {
            Some(DnsData::A(ips)) if qtype == qtype::A || qtype == qtype::ANY => Answer::A(ips),
            Some(DnsData::Srv(r)) if qtype == qtype::SRV || qtype == qtype::ANY => Answer::Srv(r),
            Some(_) if qtype == qtype::SOA && name == self.domain.as_bytes() => Answer::Soa,
            Some(_) => Answer::NoData,
            None => match self.pod_name(name) {
                Some(ip) if qtype == qtype::A || qtype == qtype::ANY => Answer::PodA(ip),
                Some(_) => Answer::NoData,
                None => Answer::NxDomain,
            },
        }
    }

    /// `a-b-c-d.ns.pod.DOMAIN` → a.b.c.d.
    fn pod_name(&self, name: &[u8]) -> Option<Ipv4Addr> {
        let s = std::str::from_utf8(name).ok()?;
        let rest = s
            .strip_suffix(self.domain.as_str())?
            .strip_suffix(".pod.")?;
        let (ip, ns) = rest.split_once('.')?;
        if ns.is_empty() || ns.contains('.') {
            return None;
        }
        let mut o = [0u8; 4];
        let mut parts = ip.split('-');
        for b in &mut o {
            *b = parts.next()?.parse().ok()?;
        }
        parts.next().is_none().then(|| Ipv4Addr::from(o))
    }

    /// How many owner names the table holds (for status and tests).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// `d.c.b.a.in-addr.arpa` → a.b.c.d.
fn reverse_ipv4(name: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(name).ok()?;
    let rest = s.strip_suffix(".in-addr.arpa")?;
    let mut o = [0u8; 4];
    let mut parts = rest.split('.');
    for i in (0..4).rev() {
        o[i] = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then(|| u32::from(Ipv4Addr::from(o)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> DnsTable {
        let spec = DnsSpec {
            domain: "cluster.local".into(),
            server: Ipv4Addr::new(198, 18, 96, 53),
            ttl: 5,
        };
        let ips = [Ipv4Addr::new(198, 18, 96, 10)];
        DnsTable::build(
            &spec,
            [DnsService {
                namespace: "default",
                name: "Web",
                cluster_ips: &ips,
                ports: vec![("http", L4Proto::Tcp, 80), ("", L4Proto::Tcp, 81)],
            }],
        )
    }

    #[test]
    fn names_types_and_the_zone() {
        let t = table();
        let ip = [Ipv4Addr::new(198, 18, 96, 10)];
        assert_eq!(
            t.lookup(b"web.default.svc.cluster.local", qtype::A),
            Answer::A(&ip)
        );
        assert_eq!(
            t.lookup(b"web.default.svc.cluster.local", qtype::ANY),
            Answer::A(&ip)
        );
        assert_eq!(
            t.lookup(b"web.default.svc.cluster.local", qtype::AAAA),
            Answer::NoData
        );
        let web = to_wire("web.default.svc.cluster.local").unwrap();
        assert_eq!(
            t.lookup(b"_http._tcp.web.default.svc.cluster.local", qtype::SRV),
            Answer::Srv(&[(80, web.clone())])
        );
        assert_eq!(
            t.lookup(b"_tcp.web.default.svc.cluster.local", qtype::SRV),
            Answer::NoData
        );
        assert_eq!(
            t.lookup(b"default.svc.cluster.local", qtype::A),
            Answer::NoData
        );
        assert_eq!(t.lookup(b"svc.cluster.local", qtype::A), Answer::NoData);
        assert_eq!(t.lookup(b"cluster.local", qtype::SOA), Answer::Soa);
        assert_eq!(t.lookup(b"cluster.local", qtype::A), Answer::NoData);
        // The search-path forms a pod's resolver tries first.
        assert_eq!(
            t.lookup(
                b"web.default.svc.cluster.local.default.svc.cluster.local",
                qtype::A
            ),
            Answer::NxDomain
        );
        assert_eq!(
            t.lookup(b"web.default.default.svc.cluster.local", qtype::A),
            Answer::NxDomain
        );
        assert_eq!(
            t.lookup(b"other.default.svc.cluster.local", qtype::A),
            Answer::NxDomain
        );
        assert_eq!(t.lookup(b"xcluster.local", qtype::A), Answer::Forward);
        assert_eq!(t.lookup(b"example.org", qtype::A), Answer::Forward);
        assert_eq!(
            t.lookup(b"10.96.18.198.in-addr.arpa", qtype::PTR),
            Answer::Ptr(&web[..])
        );
        assert_eq!(
            t.lookup(b"11.96.18.198.in-addr.arpa", qtype::PTR),
            Answer::Forward
        );
        assert_eq!(
            t.lookup(b"198-19-1-10.default.pod.cluster.local", qtype::A),
            Answer::PodA(Ipv4Addr::new(198, 19, 1, 10))
        );
        assert_eq!(
            t.lookup(b"198-19-1.default.pod.cluster.local", qtype::A),
            Answer::NxDomain
        );
        assert_eq!(
            t.lookup(b"198-19-1-300.default.pod.cluster.local", qtype::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn wire_names() {
        assert_eq!(&*to_wire("a.bc").unwrap(), b"\x01a\x02bc\x00");
        assert!(to_wire("a..b").is_none());
        assert!(to_wire(&"x".repeat(64)).is_none());
    }
}
