//! Stage 4's cluster DNS answers: a new UDP flow to the cluster DNS address
//! on port 53 whose question is the cluster's (`shared::dns::DnsTable`) is
//! answered by the worker itself, from the frontend address, back the way
//! the query came (`icmp::answer`); no flow is created. The message is
//! parsed and built with the `domain` crate's wire code on fixed buffers
//! (octseq's `Array`, 512 bytes: the classic UDP limit every resolver
//! accepts), with name compression; an EDNS0 query gets an OPT record back.
//! Everything else goes on to the DNS Service's backends through ordinary
//! Service NAT: not a standard query, not exactly one question, a class
//! other than IN, an EDNS version other than 0, a name outside the domain
//! (or a label with a dot in it), a first fragment, an answer over 512
//! bytes. Reads the frame and the snapshot; replaces the frame with the
//! answer; writes nothing else.

use domain::base::iana::{Class, Opcode, Rcode};
use domain::base::message_builder::{AnswerBuilder, MessageBuilder, PushError, StaticCompressor};
use domain::base::name::ToLabelIter;
use domain::base::{Header, HeaderCounts, Message, Name, Serial, Ttl};
use domain::rdata::{Ptr, Soa, Srv, A};
use octseq::array::Array;
use shared::dns::{Answer, DnsTable};
use shared::wire::checksum;
use shared::wire::ipv4::PROTO_UDP;
use shared::wire::{IpProtocol, UDP_HLEN};

use super::{icmp, Ctx, Parsed};
use crate::frame::{Frame, Verdict};

/// The cluster DNS port.
pub(super) const DNS_PORT: u16 = 53;
/// A DNS header's length.
const HEADER_LEN: usize = 12;
/// The longest answer sent (RFC 1035's UDP limit).
const MAX_ANSWER: usize = 512;
/// The UDP payload size an EDNS0 answer advertises.
const EDNS_UDP_SIZE: u16 = 1232;

type Out = Array<MAX_ANSWER>;

/// Answers the query in `f` from `t`, or None: it goes on to the backends.
pub(super) fn answer(
    cx: &mut Ctx<'_>,
    f: &mut Frame<'_>,
    p: &Parsed,
    t: &DnsTable,
) -> Option<Verdict> {
    if p.is_first_fragment() {
        return None;
    }
    let start = p.l4() + UDP_HLEN;
    let (kind, plan) = {
        let query = f.data().get(start..)?;
        plan(t, cx.snap.generation, query)?
    };
    let key = p.key;
    let v = icmp::answer(cx, f, p, key.dst, IpProtocol::Udp, |d, body| {
        let query = d.get(start..).unwrap_or_default();
        let n = match &plan {
            Plan::Copy(c) => c.write(t, query, body.get_mut(UDP_HLEN..).unwrap_or_default()),
            Plan::Built(out) => {
                let bytes: &[u8] = out.as_ref();
                body.get_mut(UDP_HLEN..UDP_HLEN + bytes.len())
                    .map(|b| b.copy_from_slice(bytes))
                    .map(|()| bytes.len())
            }
        };
        let Some(n) = n else {
            return 0;
        };
        let len = UDP_HLEN + n;
        let Some(seg) = body.get_mut(..len) else {
            return 0;
        };
        seg[0..2].copy_from_slice(&key.dport.to_be_bytes());
        seg[2..4].copy_from_slice(&key.sport.to_be_bytes());
        seg[4..6].copy_from_slice(&u16::try_from(len).unwrap_or(0).to_be_bytes());
        seg[6..8].copy_from_slice(&[0, 0]);
        let c = checksum::l4_checksum(key.dst.to_be_bytes(), key.src.to_be_bytes(), PROTO_UDP, seg);
        seg[6..8].copy_from_slice(&checksum::udp_nonzero(c).to_be_bytes());
        len
    });
    if !matches!(v, Verdict::Drop(_)) {
        let c = &mut cx.c;
        match kind {
            Kind::Records => c.dns_answered += 1,
            Kind::NoData => c.dns_nodata += 1,
            Kind::NxDomain => c.dns_nxdomain += 1,
        }
    }
    Some(v)
}

/// What an answer was, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Records,
    NoData,
    NxDomain,
}

/// The question's name as the table keys it (lowercase, dotted, no final
/// dot) into `buf`; None for a name with a dot inside a label.
fn key_of<'b>(name: &impl ToLabelIter, buf: &'b mut [u8; 256]) -> Option<&'b [u8]> {
    let mut n = 0;
    for label in name.iter_labels() {
        if label.is_root() {
            break;
        }
        let l = label.as_slice();
        if l.contains(&b'.') || n + l.len() + 1 > buf.len() {
            return None;
        }
        if n > 0 {
            buf[n] = b'.';
            n += 1;
        }
        for (d, s) in buf[n..n + l.len()].iter_mut().zip(l) {
            *d = s.to_ascii_lowercase();
        }
        n += l.len();
    }
    Some(&buf[..n])
}

/// How an answer is made: copied from the query and the table's composed
/// records, or built by `domain`'s builder (pod names).
// One lives on the stack per answer; boxing the built one would allocate on
// the per-packet path.
#[allow(clippy::large_enum_variant)]
enum Plan<'t> {
    Copy(Composed<'t>),
    Built(Out),
}

/// An answer from composed records (`copy_composed`).
struct Composed<'t> {
    /// The query's header and question: its first `qend` bytes.
    qend: usize,
    records: &'t [u8],
    an: u16,
    ns: u16,
    edns: bool,
    rcode: Rcode,
}

impl Composed<'_> {
    /// Does the answer fit 512 bytes, and is the question where it says?
    fn fits(&self, t: &DnsTable, query: &[u8]) -> bool {
        let opt = if self.edns { t.opt_record.len() } else { 0 };
        self.qend + self.records.len() + opt <= MAX_ANSWER && query.len() >= self.qend
    }

    /// Writes the answer into `out`: the query's header and question, the
    /// records, the OPT record when the query had one; the header's flags
    /// and counts as `MessageBuilder::start_answer` sets them, plus AA and
    /// RA. Its length; None when it does not fit 512 bytes or `out`.
    fn write(&self, t: &DnsTable, query: &[u8], out: &mut [u8]) -> Option<usize> {
        let opt: &[u8] = if self.edns { &t.opt_record } else { &[] };
        let len = self.qend + self.records.len() + opt.len();
        if len > MAX_ANSWER || query.len() < self.qend {
            return None;
        }
        let out = out.get_mut(..len)?;
        let (head, rest) = out.split_at_mut(self.qend);
        head.copy_from_slice(&query[..self.qend]);
        let (recs, tail) = rest.split_at_mut(self.records.len());
        recs.copy_from_slice(self.records);
        tail.copy_from_slice(opt);
        let h = Header::for_message_slice_mut(out);
        h.set_qr(true);
        h.set_aa(true);
        h.set_tc(false);
        h.set_ra(true);
        h.set_z(false);
        h.set_ad(false);
        h.set_cd(false);
        h.set_rcode(self.rcode);
        let c = HeaderCounts::for_message_slice_mut(out);
        c.set_qdcount(1);
        c.set_ancount(self.an);
        c.set_nscount(self.ns);
        c.set_arcount(u16::from(self.edns));
        Some(len)
    }
}

/// What the answer to `query` (a DNS message) is and how to make it; None
/// when the table does not answer it (see the module's list).
fn plan<'t>(t: &'t DnsTable, serial: u64, query: &[u8]) -> Option<(Kind, Plan<'t>)> {
    // The buffer only for answers the builder makes (it is 512 bytes to
    // clear).
    let mut out = None;
    let kind = build(t, serial, query, &mut out)?;
    Some(match (kind, out) {
        (Built::Composed(k, c), _) => (k, Plan::Copy(c)),
        (Built::Into(k), Some(out)) => (k, Plan::Built(out)),
        (Built::Into(_), None) => return None,
    })
}

/// What `build` did.
enum Built<'t> {
    /// Found composed records (nothing written to `out`).
    Composed(Kind, Composed<'t>),
    /// Built the answer into `out`.
    Into(Kind),
}

/// The answer to `query` (a DNS message): its composed records, or built
/// into `out` when there are none (a pod name); None when the table does not
/// answer it (see the module's list).
fn build<'t>(
    t: &'t DnsTable,
    serial: u64,
    query: &[u8],
    out: &mut Option<Out>,
) -> Option<Built<'t>> {
    let msg = Message::from_octets(query).ok()?;
    let h = msg.header();
    if h.qr() || h.opcode() != Opcode::QUERY || msg.header_counts().qdcount() != 1 {
        return None;
    }
    let q = msg.first_question()?;
    if q.qclass() != Class::IN {
        return None;
    }
    // Only a message with additional records can carry an OPT record.
    let opt = if msg.header_counts().arcount() > 0 {
        msg.opt()
    } else {
        None
    };
    if opt.as_ref().is_some_and(|o| o.version() != 0) {
        return None;
    }
    let mut buf = [0u8; 256];
    let key = key_of(q.qname(), &mut buf)?;
    let answer = t.lookup(key, q.qtype().to_int());
    let (rcode, kind) = match answer {
        Answer::Forward => return None,
        Answer::NxDomain => (Rcode::NXDOMAIN, Kind::NxDomain),
        Answer::NoData => (Rcode::NOERROR, Kind::NoData),
        _ => (Rcode::NOERROR, Kind::Records),
    };
    let qname = q.qname();
    if !qname.is_compressed() {
        let (records, an, ns): (&[u8], u16, u16) = match answer {
            Answer::A(_, r) | Answer::Srv(_, r) | Answer::Ptr(_, r) => (&r.bytes, r.count, 0),
            Answer::Soa => (&t.soa_record, 1, 0),
            Answer::NoData | Answer::NxDomain => (&t.soa_record, 0, 1),
            Answer::PodA(_) | Answer::Forward => (&[], 0, 0),
        };
        if !records.is_empty() {
            let c = Composed {
                qend: HEADER_LEN + usize::from(qname.compose_len()) + 4,
                records,
                an,
                ns,
                edns: opt.is_some(),
                rcode,
            };
            // Over 512 bytes (a long question with many records): not ours
            // to truncate; the backends answer it.
            return c.fits(t, query).then_some(Built::Composed(kind, c));
        }
    }
    let ttl = Ttl::from_secs(t.ttl);
    let mut push = || -> Result<(), PushError> {
        let target = out.insert(Out::default());
        let mb = MessageBuilder::from_target(StaticCompressor::new(target))
            .map_err(|_| PushError::ShortBuf)?;
        let mut ans: AnswerBuilder<_> = mb.start_answer(&msg, rcode)?;
        ans.header_mut().set_aa(true);
        ans.header_mut().set_ra(true);
        match answer {
            Answer::A(ips, _) => {
                for ip in ips {
                    ans.push((qname, Class::IN, ttl, A::new(*ip)))?;
                }
            }
            Answer::PodA(ip) => ans.push((qname, Class::IN, ttl, A::new(ip)))?,
            Answer::Srv(records, _) => {
                for (port, target) in records {
                    let target = Name::from_slice(target).map_err(|_| short())?;
                    ans.push((qname, Class::IN, ttl, Srv::new(0, 100, *port, target)))?;
                }
            }
            Answer::Ptr(target, _) => {
                let target = Name::from_slice(target).map_err(|_| short())?;
                ans.push((qname, Class::IN, ttl, Ptr::new(target)))?;
            }
            Answer::Soa => ans.push(soa(t, serial, ttl)?)?,
            _ => {}
        }
        let mut auth = ans.authority();
        if matches!(answer, Answer::NoData | Answer::NxDomain) {
            auth.push(soa(t, serial, ttl)?)?;
        }
        let mut add = auth.additional();
        if opt.is_some() {
            add.opt(|o| {
                o.set_udp_payload_size(EDNS_UDP_SIZE);
                Ok(())
            })?;
        }
        Ok(())
    };
    push().ok()?;
    Some(Built::Into(kind))
}

fn short() -> PushError {
    PushError::ShortBuf
}

/// The zone's SOA record as CoreDNS's `kubernetes` plugin gives it:
/// `ns.dns.DOMAIN. hostmaster.DOMAIN. SERIAL 7200 1800 86400 TTL`, the
/// serial the snapshot's generation.
type SoaRecord<'a> = (Name<&'a [u8]>, Class, Ttl, Soa<Name<&'a [u8]>>);

fn soa(t: &DnsTable, serial: u64, ttl: Ttl) -> Result<SoaRecord<'_>, PushError> {
    let apex = Name::from_octets(&t.domain_wire[..]).map_err(|_| short())?;
    let mname = Name::from_octets(&t.soa_mname[..]).map_err(|_| short())?;
    let rname = Name::from_octets(&t.soa_rname[..]).map_err(|_| short())?;
    let serial = Serial(u32::try_from(serial % (1 << 31)).unwrap_or(1));
    Ok((
        apex,
        Class::IN,
        ttl,
        Soa::new(
            mname,
            rname,
            serial,
            Ttl::from_secs(7200),
            Ttl::from_secs(1800),
            Ttl::from_secs(86400),
            ttl,
        ),
    ))
}
