//! Stage 4's cluster DNS answers: a new UDP flow to the cluster DNS address
//! on port 53 whose question is the cluster's (`shared::dns::DnsTable`) is
//! answered by the worker itself, from the frontend address, back the way
//! the query came; no flow is created. The message is parsed with the
//! `domain` crate's wire code; an answer from the table's composed records is
//! written over the query where it lies (its header and question stay), one
//! the builder makes (a pod name) on a fixed buffer (octseq's `Array`, 512
//! bytes: the classic UDP limit every resolver accepts) and sent through
//! `icmp::answer`; an EDNS0 query gets an OPT record back.
//! Everything else goes on to the DNS Service's backends through ordinary
//! Service NAT: not a standard query, not exactly one question, a class
//! other than IN, an EDNS version other than 0, a name outside the domain
//! (or, for a name that would not exist, a label with a dot in it), a first
//! fragment, an answer over 512 bytes. Reads the frame and the snapshot;
//! replaces the frame with the answer; writes nothing else.

use domain::base::iana::{Class, Opcode, Rcode};
use domain::base::message_builder::{AnswerBuilder, MessageBuilder, PushError, StaticCompressor};
use domain::base::name::ToLabelIter;
use domain::base::opt::{Opt, OptRecord};
use domain::base::{Header, HeaderCounts, Message, Name, ParsedRecord, Serial, Ttl};
use domain::rdata::{Ptr, Soa, Srv, A};
use octseq::array::Array;
use octseq::parse::Parser;
use shared::counters::DropReason;
use shared::dns::{Answer, DnsTable};
use shared::wire::checksum;
use shared::wire::ipv4::PROTO_UDP;
use shared::wire::{
    EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr, ETH_HLEN,
    IPV4_HLEN, UDP_HLEN,
};

use super::{icmp, Ctx, Parsed};
use crate::flow::FlowKey;
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
    // The buffer only for answers the builder makes (it is 512 bytes to
    // clear).
    let mut out: Option<Out> = None;
    let built = {
        let query = f.data().get(start..)?;
        build(t, cx.snap.generation, query, &mut out)?
    };
    let key = p.key;
    let (kind, v) = match built {
        // Without IP options the answer is written over the query where it
        // lies: its header and question are already in place.
        Built::Composed(kind, c) if p.l4() == ETH_HLEN + IPV4_HLEN => {
            (kind, c.answer_in_place(cx, f, p, t))
        }
        Built::Composed(kind, c) => {
            let v = icmp::answer(cx, f, p, key.dst, IpProtocol::Udp, |d, body| {
                let query = d.get(start..).unwrap_or_default();
                let msg = body.get_mut(UDP_HLEN..).unwrap_or_default();
                c.write(t, query, msg)
                    .map_or(0, |n| udp_header(&key, body, n))
            });
            (kind, v)
        }
        Built::Into(kind) => {
            let bytes: &[u8] = out.as_ref().map_or(&[], |o| o.as_ref());
            let v = icmp::answer(cx, f, p, key.dst, IpProtocol::Udp, |_, body| {
                body.get_mut(UDP_HLEN..UDP_HLEN + bytes.len())
                    .map(|b| b.copy_from_slice(bytes))
                    .map_or(0, |()| udp_header(&key, body, bytes.len()))
            });
            (kind, v)
        }
    };
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

/// Fills the UDP header of an answer of `n` bytes at the start of `seg`
/// (ports of the query's `key` swapped, length, checksum); the segment's
/// length, 0 if `seg` is shorter.
fn udp_header(key: &FlowKey, seg: &mut [u8], n: usize) -> usize {
    let len = UDP_HLEN + n;
    let Some(seg) = seg.get_mut(..len) else {
        return 0;
    };
    seg[0..2].copy_from_slice(&key.dport.to_be_bytes());
    seg[2..4].copy_from_slice(&key.sport.to_be_bytes());
    seg[4..6].copy_from_slice(&u16::try_from(len).unwrap_or(0).to_be_bytes());
    seg[6..8].copy_from_slice(&[0, 0]);
    let c = checksum::l4_checksum(key.dst.to_be_bytes(), key.src.to_be_bytes(), PROTO_UDP, seg);
    seg[6..8].copy_from_slice(&checksum::udp_nonzero(c).to_be_bytes());
    len
}

/// What an answer was, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Records,
    NoData,
    NxDomain,
}

/// The question's name as the table keys it (wire form, lowercase) into
/// `buf`, from a compressed name's labels; None if it does not fit.
fn wire_key<'b>(name: &impl ToLabelIter, buf: &'b mut [u8; 256]) -> Option<&'b [u8]> {
    let mut n = 0;
    for label in name.iter_labels() {
        let l = label.as_slice();
        let dst = buf.get_mut(n..n + 1 + l.len())?;
        dst[0] = u8::try_from(l.len()).ok()?;
        for (d, s) in dst[1..].iter_mut().zip(l) {
            *d = s.to_ascii_lowercase();
        }
        n += 1 + l.len();
        if label.is_root() {
            break;
        }
    }
    buf.get(..n)
}

/// An answer from composed records: the query's header and question, the
/// records, the OPT record when the query had one.
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
        self.len(t) <= MAX_ANSWER && query.len() >= self.qend
    }

    fn len(&self, t: &DnsTable) -> usize {
        let opt = if self.edns { t.opt_record.len() } else { 0 };
        self.qend + self.records.len() + opt
    }

    /// Writes the answer into `out`, whose first `qend` bytes are the
    /// query's header and question: the records, the OPT record, the
    /// header's flags and counts as `MessageBuilder::start_answer` sets them,
    /// plus AA and RA. Its length; None when it does not fit 512 bytes or
    /// `out`.
    fn finish(&self, t: &DnsTable, out: &mut [u8]) -> Option<usize> {
        let opt: &[u8] = if self.edns { &t.opt_record } else { &[] };
        let len = self.len(t);
        if len > MAX_ANSWER {
            return None;
        }
        let out = out.get_mut(..len)?;
        let rest = &mut out[self.qend..];
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

    /// Writes the answer into `out` after copying the query's header and
    /// question there (`finish`).
    fn write(&self, t: &DnsTable, query: &[u8], out: &mut [u8]) -> Option<usize> {
        out.get_mut(..self.qend)?
            .copy_from_slice(query.get(..self.qend)?);
        self.finish(t, out)
    }

    /// Turns the query in `f` (an IPv4 header without options) into the
    /// answer where it lies: the DNS message finished over the query's, the
    /// UDP, IPv4 and Ethernet headers' addresses and ports swapped, as
    /// `icmp::answer` writes them.
    fn answer_in_place(
        &self,
        cx: &mut Ctx<'_>,
        f: &mut Frame<'_>,
        p: &Parsed,
        t: &DnsTable,
    ) -> Verdict {
        let l4 = ETH_HLEN + IPV4_HLEN;
        let seg_len = UDP_HLEN + self.len(t);
        if !f.set_len(l4 + seg_len) {
            return Verdict::Drop(DropReason::TooBig);
        }
        let key = p.key;
        let d = f.data_mut();
        let (hdrs, seg) = d.split_at_mut(l4);
        if self.finish(t, &mut seg[UDP_HLEN..]).is_none() {
            return Verdict::Drop(DropReason::TooBig);
        }
        udp_header(&key, seg, seg_len - UDP_HLEN);
        let (eth, ip) = hdrs.split_at_mut(ETH_HLEN);
        Ipv4Repr {
            src_addr: key.dst.into(),
            dst_addr: key.src.into(),
            next_header: IpProtocol::Udp,
            payload_len: seg_len,
            hop_limit: 64,
        }
        .emit(&mut Ipv4Packet::new_unchecked(ip), &Default::default());
        let mut frame = EthernetFrame::new_unchecked(eth);
        let (src, dst) = (frame.src_addr(), frame.dst_addr());
        EthernetRepr {
            src_addr: dst,
            dst_addr: src,
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut frame);
        icmp::back(cx, f, p, key.dst, IpProtocol::Udp)
    }
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
    let qname = q.qname();
    let counts = msg.header_counts();
    // Where the question ends, for an uncompressed name (every resolver's).
    let qend = HEADER_LEN + usize::from(qname.compose_len()) + 4;
    // Only a message with additional records can carry an OPT record; with
    // the question its only other record, it is the record after it.
    let opt = match counts.arcount() {
        0 => None,
        1 if counts.ancount() == 0 && counts.nscount() == 0 && !qname.is_compressed() => {
            opt_at(query, qend)
        }
        _ => msg.opt(),
    };
    if opt.as_ref().is_some_and(|o| o.version() != 0) {
        return None;
    }
    let mut buf = [0u8; 256];
    let key = if qname.is_compressed() {
        wire_key(&qname, &mut buf)?
    } else {
        // The name as it is in the query, lowercased in one pass (its
        // length bytes are all below b'A').
        let wire = query.get(HEADER_LEN..qend - 4)?;
        let key = buf.get_mut(..wire.len())?;
        for (d, s) in key.iter_mut().zip(wire) {
            *d = s.to_ascii_lowercase();
        }
        key
    };
    let answer = t.lookup_wire(key, q.qtype().to_int());
    let (rcode, kind) = match answer {
        Answer::Forward => return None,
        Answer::NxDomain => (Rcode::NXDOMAIN, Kind::NxDomain),
        Answer::NoData => (Rcode::NOERROR, Kind::NoData),
        _ => (Rcode::NOERROR, Kind::Records),
    };
    if !qname.is_compressed() {
        let (records, an, ns): (&[u8], u16, u16) = match answer {
            Answer::A(_, r) | Answer::Srv(_, r) | Answer::Ptr(_, r) => (&r.bytes, r.count, 0),
            Answer::Soa => (&t.soa_record, 1, 0),
            Answer::NoData | Answer::NxDomain => (&t.soa_record, 0, 1),
            Answer::PodA(_) | Answer::Forward => (&[], 0, 0),
        };
        if !records.is_empty() {
            let c = Composed {
                qend,
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

/// The OPT record at `at` in `query`, if the record there is one.
fn opt_at(query: &[u8], at: usize) -> Option<OptRecord<&[u8]>> {
    let mut parser = Parser::from_ref(query);
    parser.advance(at).ok()?;
    let rr = ParsedRecord::parse(&mut parser).ok()?;
    let rr = rr.into_record::<Opt<&[u8]>>().ok()??;
    Some(OptRecord::from(rr))
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
