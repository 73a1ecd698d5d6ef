//! Frames for the traffic generator, and the probe the sink reads back: plain
//! UDP, TCP (ACK|PSH segments, no handshake) or VXLAN carrying UDP, over many
//! flows (the flow number moves the source port), each with a 16-byte probe in
//! its payload: magic, flow, sequence number and the send time. Bytes only: no
//! sockets here.

use std::net::Ipv4Addr;

use shared::wire::checksum::{checksum, l4_checksum};

/// "NP": the first two payload bytes of every probe.
pub const MAGIC: u16 = 0x4e50;
/// Probe bytes at the start of the payload.
pub const PROBE_LEN: usize = 16;

const ETH: usize = 14;
const IP: usize = 20;
const UDP: usize = 8;
const TCP: usize = 20;
const VXLAN: usize = 8;

/// What the generator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Udp,
    Tcp,
    /// VXLAN (flags 0x08) to the outer destination, carrying UDP.
    Vxlan,
}

/// Addresses of the frames; `inner` is the packet itself for UDP/TCP.
#[derive(Clone, Debug)]
pub struct Spec {
    pub kind: Kind,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport_base: u16,
    pub dport: u16,
    /// VXLAN only: the outer addresses and the inner MACs.
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    pub vxlan_port: u16,
    pub vni: u32,
    pub inner_src_mac: [u8; 6],
    pub inner_dst_mac: [u8; 6],
    /// Length of the (inner) Ethernet frame; at least header + probe.
    pub size: usize,
}

/// The probe carried by one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub flow: u16,
    pub seq: u32,
    pub sent_ns: u64,
}

impl Probe {
    pub fn write(&self, out: &mut [u8]) {
        out[0..2].copy_from_slice(&MAGIC.to_be_bytes());
        out[2..4].copy_from_slice(&self.flow.to_be_bytes());
        out[4..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..16].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// The probe at the start of `payload`, if it is one.
    pub fn read(payload: &[u8]) -> Option<Probe> {
        let p = payload.get(..PROBE_LEN)?;
        if u16::from_be_bytes([p[0], p[1]]) != MAGIC {
            return None;
        }
        Some(Probe {
            flow: u16::from_be_bytes([p[2], p[3]]),
            seq: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            sent_ns: u64::from_be_bytes([p[8], p[9], p[10], p[11], p[12], p[13], p[14], p[15]]),
        })
    }
}

impl Spec {
    fn l4_header(&self) -> usize {
        match self.kind {
            Kind::Tcp => TCP,
            Kind::Udp | Kind::Vxlan => UDP,
        }
    }

    /// The smallest (inner) frame that holds the probe.
    pub fn min_size(&self) -> usize {
        ETH + IP + self.l4_header() + PROBE_LEN
    }

    /// Length of the frame on the wire.
    pub fn wire_len(&self) -> usize {
        let inner = self.size.max(self.min_size());
        match self.kind {
            Kind::Vxlan => ETH + IP + UDP + VXLAN + inner,
            _ => inner,
        }
    }

    /// Writes the frame for `probe` into `out` (at least `wire_len()` bytes);
    /// returns its length. Checksums are complete (IPv4 header; UDP and TCP
    /// over the pseudo-header; the outer VXLAN UDP checksum is 0, as Linux and
    /// flannel send it).
    pub fn write(&self, probe: &Probe, out: &mut [u8]) -> usize {
        let inner_len = self.size.max(self.min_size());
        let total = self.wire_len();
        let out = &mut out[..total];
        out.fill(0);
        let inner_at = match self.kind {
            Kind::Vxlan => {
                let l4_len = UDP + VXLAN + inner_len;
                eth(out, self.src_mac, self.dst_mac);
                ipv4(
                    &mut out[ETH..],
                    self.outer_src,
                    self.outer_dst,
                    17,
                    IP + l4_len,
                );
                let u = ETH + IP;
                // Outer source port from the flow, as a VTEP hashes the inner flow.
                let sport = 49152 + (self.sport_base.wrapping_add(probe.flow) % 16384);
                out[u..u + 2].copy_from_slice(&sport.to_be_bytes());
                out[u + 2..u + 4].copy_from_slice(&self.vxlan_port.to_be_bytes());
                out[u + 4..u + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                let v = u + UDP;
                out[v] = 0x08;
                out[v + 4..v + 7].copy_from_slice(&self.vni.to_be_bytes()[1..4]);
                v + VXLAN
            }
            _ => 0,
        };
        let (smac, dmac) = match self.kind {
            Kind::Vxlan => (self.inner_src_mac, self.inner_dst_mac),
            _ => (self.src_mac, self.dst_mac),
        };
        let f = &mut out[inner_at..inner_at + inner_len];
        eth(f, smac, dmac);
        let proto = if self.kind == Kind::Tcp { 6 } else { 17 };
        ipv4(&mut f[ETH..], self.src, self.dst, proto, inner_len - ETH);
        let l4 = ETH + IP;
        let sport = self.sport_base.wrapping_add(probe.flow);
        f[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
        f[l4 + 2..l4 + 4].copy_from_slice(&self.dport.to_be_bytes());
        let payload = l4 + self.l4_header();
        probe.write(&mut f[payload..]);
        let seg_len = inner_len - ETH - IP;
        if self.kind == Kind::Tcp {
            f[l4 + 4..l4 + 8].copy_from_slice(&probe.seq.to_be_bytes());
            f[l4 + 12] = 5 << 4; // data offset
            f[l4 + 13] = 0x18; // PSH|ACK
            f[l4 + 14..l4 + 16].copy_from_slice(&65535u16.to_be_bytes());
            let c = l4_checksum(self.src.octets(), self.dst.octets(), 6, &f[l4..]);
            f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        } else {
            f[l4 + 4..l4 + 6].copy_from_slice(&(seg_len as u16).to_be_bytes());
            let mut c = l4_checksum(self.src.octets(), self.dst.octets(), 17, &f[l4..]);
            if c == 0 {
                c = 0xffff;
            }
            f[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
        }
        total
    }
}

fn eth(out: &mut [u8], src: [u8; 6], dst: [u8; 6]) {
    out[0..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&src);
    out[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
}

fn ipv4(out: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, proto: u8, total: usize) {
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[6] = 0x40; // don't fragment
    out[8] = 64;
    out[9] = proto;
    out[12..16].copy_from_slice(&src.octets());
    out[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&out[..IP]);
    out[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    shared::net::parse_mac(s).ok_or_else(|| anyhow::anyhow!("'{s}' is not a MAC address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn spec(kind: Kind) -> Spec {
        Spec {
            kind,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: Ipv4Addr::new(198, 19, 3, 10),
            dst: Ipv4Addr::new(198, 18, 96, 11),
            sport_base: 40000,
            dport: 53,
            outer_src: Ipv4Addr::new(198, 18, 0, 3),
            outer_dst: Ipv4Addr::new(198, 18, 0, 2),
            vxlan_port: 8472,
            vni: 1,
            inner_src_mac: [2, 0, 0, 0, 3, 1],
            inner_dst_mac: [2, 0, 0, 0, 1, 1],
            size: 64,
        }
    }

    /// Parses with etherparse and checks every checksum independently.
    fn check(bytes: &[u8]) -> (Ipv4Addr, Ipv4Addr, u16, u16, Probe) {
        let p = SlicedPacket::from_ethernet(bytes).expect("parses");
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("IPv4")
        };
        let h = ip.header().to_header();
        assert_eq!(h.calc_header_checksum(), h.header_checksum);
        let (src, dst) = (ip.header().source_addr(), ip.header().destination_addr());
        match p.transport.expect("L4") {
            TransportSlice::Udp(u) => {
                let want = u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap();
                assert_eq!(u.checksum(), want, "UDP checksum");
                let probe = Probe::read(u.payload()).expect("probe");
                (src, dst, u.source_port(), u.destination_port(), probe)
            }
            TransportSlice::Tcp(t) => {
                let want = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
                assert_eq!(t.checksum(), want, "TCP checksum");
                let probe = Probe::read(t.payload()).expect("probe");
                (src, dst, t.source_port(), t.destination_port(), probe)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn udp_and_tcp_frames_are_valid_and_carry_the_probe() {
        let probe = Probe {
            flow: 7,
            seq: 123_456,
            sent_ns: 0x0102_0304_0506_0708,
        };
        for kind in [Kind::Udp, Kind::Tcp] {
            let s = spec(kind);
            let mut buf = [0u8; 2048];
            let n = s.write(&probe, &mut buf);
            assert_eq!(n, s.size.max(s.min_size()));
            let (src, dst, sport, dport, got) = check(&buf[..n]);
            assert_eq!((src, dst, sport, dport), (s.src, s.dst, 40007, 53));
            assert_eq!(got, probe);
        }
        assert_eq!(spec(Kind::Udp).wire_len(), 64, "64-byte frames");
    }

    #[test]
    fn vxlan_frames_carry_a_valid_inner_packet() {
        let s = spec(Kind::Vxlan);
        let probe = Probe {
            flow: 3,
            seq: 9,
            sent_ns: 42,
        };
        let mut buf = [0u8; 2048];
        let n = s.write(&probe, &mut buf);
        assert_eq!(n, 50 + 64);
        let outer = SlicedPacket::from_ethernet(&buf[..n]).unwrap();
        let Some(TransportSlice::Udp(u)) = outer.transport else {
            panic!("outer UDP")
        };
        assert_eq!(u.destination_port(), 8472);
        assert_eq!(u.checksum(), 0, "outer UDP checksum 0, as Linux sends it");
        let vx = u.payload();
        assert_eq!(vx[0], 0x08);
        assert_eq!(&vx[4..7], &[0, 0, 1]);
        let (src, dst, sport, dport, got) = check(&vx[8..]);
        assert_eq!((src, dst, sport, dport), (s.src, s.dst, 40003, 53));
        assert_eq!(got, probe);
        assert_eq!(&vx[8..14], &s.inner_dst_mac);
    }

    #[test]
    fn probes_round_trip_and_others_are_ignored() {
        let p = Probe {
            flow: 65535,
            seq: u32::MAX,
            sent_ns: u64::MAX,
        };
        let mut b = [0u8; 16];
        p.write(&mut b);
        assert_eq!(Probe::read(&b), Some(p));
        assert_eq!(Probe::read(&b[..15]), None);
        b[0] = 0;
        assert_eq!(Probe::read(&b), None);
    }
}
