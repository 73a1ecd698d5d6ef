//! The cluster DNS name table the workers answer from (built with each
//! snapshot from its Services): what Kubernetes' DNS specification and
//! CoreDNS's `kubernetes` plugin give for a cluster domain. A/`ANY` for
//! `svc.ns.svc.DOMAIN` (the ClusterIPs), SRV for `_port._proto.svc.ns.svc.DOMAIN`
//! (each named port: priority 0, weight 100, the port, the Service's name),
//! PTR for a ClusterIP's `in-addr.arpa` name, A for `a-b-c-d.ns.pod.DOMAIN` (the
//! address the name spells, as the plugin's `pods insecure`), empty
//! non-terminals (`svc.DOMAIN`, `ns.svc.DOMAIN`, `_proto.svc.ns.svc.DOMAIN`)
//! as names without data, and every other name under the domain as
//! nonexistent.
//!
//! Every answer a name has is composed here once, when the table is built,
//! with the `domain` crate's message builder and name compressor: a template
//! response with the name as its question (offset 12, as in every answer),
//! whose records after the question (owners compressed to the question) are
//! kept; likewise the zone's SOA record and the OPT record. The dataplane's
//! `pipeline::dns` parses each query (with `domain`) and copies the query's
//! header and question and the kept records into the answer: the compression
//! pointers stay right because the question has the same name, whatever its
//! case. Names are keyed in wire form, lowercase (`\x03web\x07default…\x00`),
//! so a query's uncompressed question name is its key after one lowercasing
//! pass over its bytes (length bytes are below `A`, so they stay as they are).
//! Owns the table and its lookup (`DnsTable::lookup_wire`, no allocation).

use std::net::Ipv4Addr;

use hashbrown::HashMap;

use domain::base::iana::{Class, Rtype};
use domain::base::message_builder::{AnswerBuilder, MessageBuilder, StaticCompressor};
use domain::base::{Name, Serial, Ttl};
use domain::rdata::{Ptr, Soa, Srv, A};
use octseq::array::Array;

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

/// Answer records composed in advance: the bytes after an answer's question
/// section (owners compressed to the question at offset 12), and how many.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Records {
    pub bytes: Box<[u8]>,
    pub count: u16,
}

/// SRV targets: (port, target name in wire form).
pub type SrvTargets = Vec<(u16, Box<[u8]>)>;

/// A name's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsData {
    /// A Service's ClusterIPs, and their A records.
    A(Vec<Ipv4Addr>, Records),
    /// SRV records: (port, target in wire form), and the records.
    Srv(SrvTargets, Records),
    /// An empty non-terminal: exists, no data.
    Empty,
    /// Its answer does not fit 512 bytes (a large headless Service): the
    /// query goes on to the DNS Service's backends.
    TooBig,
}

/// What a query's name and type come to.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    /// A records: the addresses, composed.
    A(&'a [Ipv4Addr], &'a Records),
    /// One A record a pod name spells.
    PodA(Ipv4Addr),
    /// SRV records, composed.
    Srv(&'a [(u16, Box<[u8]>)], &'a Records),
    /// A PTR record: the target in wire form, composed.
    Ptr(&'a [u8], &'a Records),
    /// The zone's SOA (a query for it at the apex).
    Soa,
    /// The name exists, not with this type (NOERROR, SOA in authority).
    NoData,
    /// The name does not exist in the domain (NXDOMAIN, SOA in authority).
    NxDomain,
    /// Not the cluster's: the query goes on to the DNS Service's backends.
    Forward,
}

/// Query types the table knows.
pub mod qtype {
    pub const A: u16 = 1;
    pub const SOA: u16 = 6;
    pub const PTR: u16 = 12;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const ANY: u16 = 255;
}

/// The UDP payload size EDNS0 answers advertise.
pub const EDNS_UDP_SIZE: u16 = 1232;

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
    /// The zone's SOA record, composed (owner the domain, uncompressed).
    pub soa_record: Box<[u8]>,
    /// The OPT record of an EDNS0 answer (UDP payload size 1232).
    pub opt_record: Box<[u8]>,
    /// Owner names in wire form, lowercase.
    names: HashMap<Box<[u8]>, DnsData>,
    /// ClusterIP → the Service's name in wire form, and the PTR record.
    ptr: HashMap<u32, (Box<[u8]>, Records)>,
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

type Builder<'a> = AnswerBuilder<StaticCompressor<&'a mut Array<512>>>;

/// Composes the records `push` adds to an answer to the question (`qname`
/// in wire form, `qtype`), owners given as the root name and written as a
/// pointer to the question; None if they do not fit 512 bytes.
fn compose(
    qname: &[u8],
    qtype: Rtype,
    push: impl FnOnce(&mut Builder<'_>, Name<&[u8]>) -> Option<()>,
) -> Option<Records> {
    let name = Name::from_octets(qname).ok()?;
    let mut out = Array::<512>::default();
    let start = 12 + qname.len() + 4;
    let count = {
        let mb = MessageBuilder::from_target(StaticCompressor::new(&mut out)).ok()?;
        let mut q = mb.question();
        q.push((name.clone(), qtype)).ok()?;
        let mut a = q.answer();
        push(&mut a, name)?;
        a.counts().ancount()
    };
    let bytes: &[u8] = out.as_ref();
    Some(Records {
        bytes: bytes.get(start..)?.to_vec().into_boxed_slice(),
        count,
    })
}

/// A headless Service (no ClusterIP) as its DNS names need it: its ports
/// with their endpoints (ready ones are answered), and the endpoints'
/// hostnames (`hostname` in the EndpointSlice).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HeadlessService {
    pub namespace: String,
    pub name: String,
    /// (port name, protocol, [(address, port, ready)]).
    pub ports: Vec<HeadlessPort>,
    /// Address → hostname, for endpoints that have one.
    pub hostnames: Vec<(Ipv4Addr, String)>,
}

/// A headless Service's port: name, protocol, endpoints (address, port, ready).
pub type HeadlessPort = (String, L4Proto, Vec<(Ipv4Addr, u16, bool)>);

/// A Service's identity and ports, as the table needs them.
pub struct DnsService<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub cluster_ips: &'a [Ipv4Addr],
    /// (port name, protocol, port).
    pub ports: Vec<(&'a str, L4Proto, u16)>,
}

impl DnsTable {
    /// The table for `spec` and `services`, its SOA serial `serial`. Names
    /// that cannot be DNS names (a label over 63 bytes) are left out.
    pub fn build<'a>(
        spec: &DnsSpec,
        serial: u32,
        services: impl IntoIterator<Item = DnsService<'a>>,
        headless: &[HeadlessService],
    ) -> Self {
        let ttl = Ttl::from_secs(spec.ttl);
        let domain = spec.domain.trim_end_matches('.').to_ascii_lowercase();
        // Dotted owner names while building (their ancestors are found by
        // text); wire form in the table.
        let mut names: HashMap<Box<[u8]>, DnsData> = HashMap::new();
        let mut ptr = HashMap::new();
        let key = |s: &str| s.as_bytes().to_vec().into_boxed_slice();
        let mut srvs: HashMap<String, SrvTargets> = HashMap::new();
        for svc in services {
            let owner = format!(
                "{}.{}.svc.{domain}",
                svc.name.to_ascii_lowercase(),
                svc.namespace.to_ascii_lowercase()
            );
            let Some(owner_wire) = to_wire(&owner) else {
                continue;
            };
            let a = compose(&owner_wire, Rtype::A, |b, q| {
                for ip in svc.cluster_ips {
                    b.push((q.clone(), Class::IN, ttl, A::new(*ip))).ok()?;
                }
                Some(())
            });
            let Some(a) = a else {
                continue;
            };
            names.insert(key(&owner), DnsData::A(svc.cluster_ips.to_vec(), a));
            for ip in svc.cluster_ips {
                let o = ip.octets();
                let rev = format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0]);
                let (Some(rev_wire), Ok(target)) =
                    (to_wire(&rev), Name::from_octets(&owner_wire[..]))
                else {
                    continue;
                };
                let r = compose(&rev_wire, Rtype::PTR, |b, q| {
                    b.push((q, Class::IN, ttl, Ptr::new(target))).ok()
                });
                if let Some(r) = r {
                    ptr.insert(u32::from(*ip), (owner_wire.clone(), r));
                }
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
                srvs.entry(srv)
                    .or_default()
                    .push((*port, owner_wire.clone()));
            }
        }
        // Headless Services: the owner's A records are the ready endpoints'
        // addresses; each endpoint has a name of its own (its hostname, else
        // its address with dashes), with its A and PTR records; SRV records
        // point at those names.
        let mut a_names: HashMap<String, Vec<Ipv4Addr>> = HashMap::new();
        for h in headless {
            let owner = format!(
                "{}.{}.svc.{domain}",
                h.name.to_ascii_lowercase(),
                h.namespace.to_ascii_lowercase()
            );
            let names_of: HashMap<Ipv4Addr, String> = h.hostnames.iter().cloned().collect();
            let ep_name = |ip: &Ipv4Addr| {
                let host = names_of.get(ip).map_or_else(
                    || ip.to_string().replace('.', "-"),
                    |n| n.to_ascii_lowercase(),
                );
                format!("{host}.{owner}")
            };
            let mut ready: Vec<Ipv4Addr> = h
                .ports
                .iter()
                .flat_map(|(_, _, eps)| eps.iter().filter(|e| e.2).map(|e| e.0))
                .collect();
            ready.sort();
            ready.dedup();
            for ip in &ready {
                a_names.entry(ep_name(ip)).or_default().push(*ip);
            }
            a_names
                .entry(owner.clone())
                .or_default()
                .extend(ready.iter().copied());
            for (port_name, proto, eps) in &h.ports {
                if port_name.is_empty() {
                    continue;
                }
                let p = match proto {
                    L4Proto::Tcp => "tcp",
                    L4Proto::Udp => "udp",
                    L4Proto::Sctp => "sctp",
                };
                let srv = format!("_{}._{p}.{owner}", port_name.to_ascii_lowercase());
                let targets = srvs.entry(srv).or_default();
                for (ip, port, ok) in eps {
                    if let (true, Some(t)) = (*ok, to_wire(&ep_name(ip))) {
                        targets.push((*port, t));
                    }
                }
            }
            for ip in &ready {
                let o = ip.octets();
                let rev = format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0]);
                let (Some(rev_wire), Some(target_wire)) = (to_wire(&rev), to_wire(&ep_name(ip)))
                else {
                    continue;
                };
                if ptr.contains_key(&u32::from(*ip)) {
                    continue;
                }
                let r = Name::from_octets(&target_wire[..]).ok().and_then(|t| {
                    compose(&rev_wire, Rtype::PTR, |b, q| {
                        b.push((q, Class::IN, ttl, Ptr::new(t))).ok()
                    })
                });
                if let Some(r) = r {
                    ptr.insert(u32::from(*ip), (target_wire.clone(), r));
                }
            }
        }
        for (name, ips) in a_names {
            let Some(wire) = to_wire(&name) else {
                continue;
            };
            let r = compose(&wire, Rtype::A, |b, q| {
                for ip in &ips {
                    b.push((q.clone(), Class::IN, ttl, A::new(*ip))).ok()?;
                }
                Some(())
            });
            let data = match r {
                Some(r) => DnsData::A(ips, r),
                None => DnsData::TooBig,
            };
            names.entry(key(&name)).or_insert(data);
        }
        for (srv, targets) in srvs {
            let Some(wire) = to_wire(&srv) else {
                continue;
            };
            let r = compose(&wire, Rtype::SRV, |b, q| {
                for (port, target) in &targets {
                    let t = Name::from_octets(&target[..]).ok()?;
                    b.push((q.clone(), Class::IN, ttl, Srv::new(0, 100, *port, t)))
                        .ok()?;
                }
                Some(())
            });
            let data = match r {
                Some(r) => DnsData::Srv(targets, r),
                None => DnsData::TooBig,
            };
            names.insert(key(&srv), data);
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
        let names = names
            .into_iter()
            .filter_map(|(dotted, data)| {
                let wire = to_wire(std::str::from_utf8(&dotted).ok()?)?;
                Some((wire, data))
            })
            .collect();
        let root = || vec![0].into_boxed_slice();
        let domain_wire = to_wire(&domain).unwrap_or_else(root);
        let soa_mname = to_wire(&format!("ns.dns.{domain}")).unwrap_or_else(root);
        let soa_rname = to_wire(&format!("hostmaster.{domain}")).unwrap_or_else(root);
        let soa_record = soa(&domain_wire, &soa_mname, &soa_rname, serial, ttl).unwrap_or_default();
        let opt_record = opt().unwrap_or_default();
        DnsTable {
            server: u32::from(spec.server),
            ttl: spec.ttl,
            domain,
            domain_wire,
            soa_mname,
            soa_rname,
            soa_record,
            opt_record,
            names,
            ptr,
        }
    }

    /// Is `name` (wire form) the domain or under it: does the domain's wire
    /// form end it, starting at a label?
    fn in_domain(&self, name: &[u8]) -> bool {
        let d = &self.domain_wire[..];
        let Some(at) = name.len().checked_sub(d.len()) else {
            return false;
        };
        if !name.ends_with(d) {
            return false;
        }
        let mut i = 0;
        while i < at {
            i += 1 + usize::from(name[i]);
        }
        i == at
    }

    /// What a question for `name` (lowercase dotted, no final dot) of type
    /// `qtype` gets; `lookup_wire` for the name in wire form.
    pub fn lookup(&self, name: &[u8], qtype: u16) -> Answer<'_> {
        let mut wire = [0u8; 256];
        let mut n = 0;
        if !name.is_empty() {
            for label in name.split(|b| *b == b'.') {
                let Ok(len) = u8::try_from(label.len()) else {
                    return Answer::Forward;
                };
                if n + label.len() + 2 > wire.len() {
                    return Answer::Forward;
                }
                wire[n] = len;
                wire[n + 1..n + 1 + label.len()].copy_from_slice(label);
                n += 1 + label.len();
            }
        }
        self.lookup_wire(&wire[..=n], qtype)
    }

    /// What a question for `name` (wire form, uncompressed, lowercase, with
    /// its root label) of type `qtype` gets. A name with a dot inside a label
    /// (which no table name has) that would be nonexistent goes on to the
    /// backends instead.
    pub fn lookup_wire(&self, name: &[u8], qtype: u16) -> Answer<'_> {
        if name.ends_with(IN_ADDR_ARPA) {
            if let Some(ip) = reverse_ipv4(name) {
                return match self.ptr.get(&ip) {
                    Some((t, r)) if qtype == qtype::PTR || qtype == qtype::ANY => Answer::Ptr(t, r),
                    Some(_) => Answer::NoData,
                    None => Answer::Forward,
                };
            }
        }
        if !self.in_domain(name) {
            return Answer::Forward;
        }
        match self.names.get(name) {
            Some(DnsData::TooBig) => Answer::Forward,
            Some(DnsData::A(ips, r)) if qtype == qtype::A || qtype == qtype::ANY => {
                Answer::A(ips, r)
            }
            Some(DnsData::Srv(v, r)) if qtype == qtype::SRV || qtype == qtype::ANY => {
                Answer::Srv(v, r)
            }
            Some(_) if qtype == qtype::SOA && name == &self.domain_wire[..] => Answer::Soa,
            Some(_) => Answer::NoData,
            None => match self.pod_name(name) {
                Some(ip) if qtype == qtype::A || qtype == qtype::ANY => Answer::PodA(ip),
                Some(_) => Answer::NoData,
                None if labels(name).any(|l| l.contains(&b'.')) => Answer::Forward,
                None => Answer::NxDomain,
            },
        }
    }

    /// `a-b-c-d.ns.pod.DOMAIN` (wire form) → a.b.c.d.
    fn pod_name(&self, name: &[u8]) -> Option<Ipv4Addr> {
        let mut l = labels(name);
        let (ip, ns, pod) = (l.next()?, l.next()?, l.next()?);
        let rest = name.get(3 + ip.len() + ns.len() + pod.len()..)?;
        if ns.contains(&b'.') || pod != b"pod" || rest != &self.domain_wire[..] {
            return None;
        }
        let ip = std::str::from_utf8(ip).ok()?;
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

/// The zone's SOA record as CoreDNS's `kubernetes` plugin gives it:
/// `DOMAIN. TTL IN SOA ns.dns.DOMAIN. hostmaster.DOMAIN. SERIAL 7200 1800
/// 86400 TTL`, composed without compression (its place in an answer varies).
fn soa(apex: &[u8], mname: &[u8], rname: &[u8], serial: u32, ttl: Ttl) -> Option<Box<[u8]>> {
    let (apex, m, r) = (
        Name::from_octets(apex).ok()?,
        Name::from_octets(mname).ok()?,
        Name::from_octets(rname).ok()?,
    );
    let mut out = Array::<512>::default();
    {
        let mb = MessageBuilder::from_target(&mut out).ok()?;
        let mut a = mb.answer();
        let data = Soa::new(
            m,
            r,
            Serial(serial),
            Ttl::from_secs(7200),
            Ttl::from_secs(1800),
            Ttl::from_secs(86400),
            ttl,
        );
        a.push((apex, Class::IN, ttl, data)).ok()?;
    }
    let bytes: &[u8] = out.as_ref();
    Some(bytes.get(12..)?.to_vec().into_boxed_slice())
}

/// The OPT record of an EDNS0 answer.
fn opt() -> Option<Box<[u8]>> {
    let mut out = Array::<512>::default();
    {
        let mb = MessageBuilder::from_target(&mut out).ok()?;
        let mut add = mb.additional();
        add.opt(|o| {
            o.set_udp_payload_size(EDNS_UDP_SIZE);
            Ok(())
        })
        .ok()?;
    }
    let bytes: &[u8] = out.as_ref();
    Some(bytes.get(12..)?.to_vec().into_boxed_slice())
}

/// The wire-form suffix of IPv4 reverse names.
const IN_ADDR_ARPA: &[u8] = b"\x07in-addr\x04arpa\x00";

/// The labels of `name` (wire form, uncompressed) before its root label; a
/// length that runs past the end ends them.
fn labels(name: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut i = 0;
    std::iter::from_fn(move || {
        let len = usize::from(*name.get(i)?);
        let label = name.get(i + 1..i + 1 + len).filter(|_| len > 0)?;
        i += 1 + len;
        Some(label)
    })
}

/// `d.c.b.a.in-addr.arpa` (wire form) → a.b.c.d.
fn reverse_ipv4(name: &[u8]) -> Option<u32> {
    let mut o = [0u8; 4];
    let mut at = 0;
    for i in (0..4).rev() {
        let len = usize::from(*name.get(at)?);
        let label = name.get(at + 1..at + 1 + len)?;
        o[i] = std::str::from_utf8(label).ok()?.parse().ok()?;
        at += 1 + len;
    }
    (name.get(at..)? == IN_ADDR_ARPA).then(|| u32::from(Ipv4Addr::from(o)))
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
            1,
            [DnsService {
                namespace: "default",
                name: "Web",
                cluster_ips: &ips,
                ports: vec![("http", L4Proto::Tcp, 80), ("", L4Proto::Tcp, 81)],
            }],
            &[HeadlessService {
                namespace: "default".into(),
                name: "db".into(),
                ports: vec![(
                    "pg".into(),
                    L4Proto::Tcp,
                    vec![
                        (Ipv4Addr::new(198, 19, 1, 20), 5432, true),
                        (Ipv4Addr::new(198, 19, 3, 20), 5432, true),
                        (Ipv4Addr::new(198, 19, 3, 21), 5432, false),
                    ],
                )],
                hostnames: vec![(Ipv4Addr::new(198, 19, 1, 20), "db-0".into())],
            }],
        )
    }

    #[test]
    fn names_types_and_the_zone() {
        let t = table();
        let ip = [Ipv4Addr::new(198, 18, 96, 10)];
        let Answer::A(got, a) = t.lookup(b"web.default.svc.cluster.local", qtype::A) else {
            panic!("A");
        };
        assert_eq!(got, &ip);
        // One record: owner a pointer to the question (0xc00c), A, IN, TTL 5,
        // the address.
        assert_eq!(a.count, 1);
        assert_eq!(
            &a.bytes[..],
            &[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 198, 18, 96, 10]
        );
        assert!(matches!(
            t.lookup(b"web.default.svc.cluster.local", qtype::ANY),
            Answer::A(..)
        ));
        assert_eq!(
            t.lookup(b"web.default.svc.cluster.local", qtype::AAAA),
            Answer::NoData
        );
        let web = to_wire("web.default.svc.cluster.local").unwrap();
        let Answer::Srv(v, r) = t.lookup(b"_http._tcp.web.default.svc.cluster.local", qtype::SRV)
        else {
            panic!("SRV");
        };
        assert_eq!(v, &[(80, web.clone())]);
        assert_eq!(r.count, 1);
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
        assert!(matches!(
            t.lookup(b"10.96.18.198.in-addr.arpa", qtype::PTR),
            Answer::Ptr(n, r) if n == &web[..] && r.count == 1
        ));
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
    fn headless_services_name_their_ready_endpoints() {
        let t = table();
        let Answer::A(ips, r) = t.lookup(b"db.default.svc.cluster.local", qtype::A) else {
            panic!("A");
        };
        assert_eq!(
            ips,
            &[Ipv4Addr::new(198, 19, 1, 20), Ipv4Addr::new(198, 19, 3, 20)]
        );
        assert_eq!(r.count, 2);
        assert!(matches!(
            t.lookup(b"db-0.db.default.svc.cluster.local", qtype::A),
            Answer::A(ips, _) if ips == [Ipv4Addr::new(198, 19, 1, 20)]
        ));
        assert!(matches!(
            t.lookup(b"198-19-3-20.db.default.svc.cluster.local", qtype::A),
            Answer::A(ips, _) if ips == [Ipv4Addr::new(198, 19, 3, 20)]
        ));
        // Not ready: no name.
        assert_eq!(
            t.lookup(b"198-19-3-21.db.default.svc.cluster.local", qtype::A),
            Answer::NxDomain
        );
        let Answer::Srv(v, r) = t.lookup(b"_pg._tcp.db.default.svc.cluster.local", qtype::SRV)
        else {
            panic!("SRV");
        };
        assert_eq!(r.count, 2);
        assert_eq!(
            v[0],
            (5432, to_wire("db-0.db.default.svc.cluster.local").unwrap())
        );
        assert!(matches!(
            t.lookup(b"20.1.19.198.in-addr.arpa", qtype::PTR),
            Answer::Ptr(n, _) if n == &to_wire("db-0.db.default.svc.cluster.local").unwrap()[..]
        ));
    }

    #[test]
    fn an_answer_over_512_bytes_goes_to_the_backends() {
        let spec = DnsSpec {
            domain: "cluster.local".into(),
            server: Ipv4Addr::new(198, 18, 96, 53),
            ttl: 5,
        };
        let eps = (0..40u8)
            .map(|i| (Ipv4Addr::new(198, 19, 1, i), 80, true))
            .collect();
        let h = HeadlessService {
            namespace: "default".into(),
            name: "big".into(),
            ports: vec![("http".into(), L4Proto::Tcp, eps)],
            hostnames: vec![],
        };
        let t = DnsTable::build(&spec, 1, [], &[h]);
        assert_eq!(
            t.lookup(b"big.default.svc.cluster.local", qtype::A),
            Answer::Forward
        );
        assert!(matches!(
            t.lookup(b"198-19-1-7.big.default.svc.cluster.local", qtype::A),
            Answer::A(..)
        ));
    }

    #[test]
    fn wire_form_lookups_keep_to_label_boundaries() {
        let t = table();
        let w = |s: &str| to_wire(s).unwrap();
        assert!(matches!(
            t.lookup_wire(&w("web.default.svc.cluster.local"), qtype::A),
            Answer::A(..)
        ));
        // A label whose last bytes spell the domain's wire form is not under
        // the domain.
        let crafted = b"\x0aab\x07cluster\x05local\x00";
        assert_eq!(t.lookup_wire(crafted, qtype::A), Answer::Forward);
        // A dot inside a label: no table name has one; not ours to deny.
        let dotted = b"\x0bweb.default\x03svc\x07cluster\x05local\x00";
        assert_eq!(t.lookup_wire(dotted, qtype::A), Answer::Forward);
        let pod = b"\x0b198-19-1-10\x03a.b\x03pod\x07cluster\x05local\x00";
        assert_eq!(t.lookup_wire(pod, qtype::A), Answer::Forward);
        // Reverse names: exactly four octets, then in-addr.arpa.
        assert!(matches!(
            t.lookup_wire(&w("10.96.18.198.in-addr.arpa"), qtype::PTR),
            Answer::Ptr(..)
        ));
        assert_eq!(
            t.lookup_wire(&w("1.10.96.18.198.in-addr.arpa"), qtype::PTR),
            Answer::Forward
        );
        assert_eq!(
            t.lookup_wire(&w("96.18.198.in-addr.arpa"), qtype::PTR),
            Answer::Forward
        );
        // A truncated name (a length running past the end) is nobody's.
        assert_eq!(
            t.lookup_wire(b"\x3f\x07cluster\x05local\x00", qtype::A),
            Answer::Forward
        );
    }

    #[test]
    fn wire_names() {
        assert_eq!(&*to_wire("a.bc").unwrap(), b"\x01a\x02bc\x00");
        assert!(to_wire("a..b").is_none());
        assert!(to_wire(&"x".repeat(64)).is_none());
    }
}
