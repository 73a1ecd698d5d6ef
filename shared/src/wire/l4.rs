//! TCP, UDP and ICMPv4 header views for the per-packet path, in smoltcp's
//! shape but over fixed-size arrays (the 20-byte TCP header without options,
//! the 8-byte UDP and ICMP headers): `TcpHeader<B>`, `UdpHeader<B>` and
//! `IcmpHeader<B>` wrap `&[u8; N]` to read or `&mut [u8; N]` to rewrite ports,
//! identifiers and checksums in place, so no accessor has a bounds check left
//! and none can panic. `new_checked` validates the segment it is cut from once.
//! Building whole segments (the RST and ICMP errors the dataplane sends) is
//! smoltcp's `TcpRepr` and `Icmpv4Packet`'s job. Layout only: no flow state.

use core::fmt;
use core::ops::{Deref, DerefMut};

/// Why a buffer is not the L4 header it should be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the fixed header.
    Truncated,
    /// A length field (TCP data offset, UDP length) the segment contradicts.
    Length,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => write!(f, "L4 header truncated"),
            Error::Length => write!(f, "L4 length field inconsistent"),
        }
    }
}

#[inline(always)]
fn be16<const N: usize>(b: &[u8; N], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline(always)]
fn be32<const N: usize>(b: &[u8; N], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline(always)]
fn put16<const N: usize>(b: &mut [u8; N], at: usize, v: u16) {
    let [x, y] = v.to_be_bytes();
    b[at] = x;
    b[at + 1] = y;
}

// ---------------------------------------------------------------- TCP

mod tcp_field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const CHECKSUM: usize = 16;
}

/// The fixed TCP header (no options).
pub const TCP_HEADER_LEN: usize = 20;

/// A view of the fixed TCP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpHeader<B> {
    b: B,
}

impl<'a> TcpHeader<&'a [u8; TCP_HEADER_LEN]> {
    /// The header `segment` starts with: at least 20 bytes, and a data offset
    /// of at least 20 that the segment holds.
    #[inline(always)]
    pub fn new_checked(segment: &'a [u8]) -> Result<Self, Error> {
        let b = segment
            .first_chunk::<TCP_HEADER_LEN>()
            .ok_or(Error::Truncated)?;
        let h = TcpHeader { b };
        let off = h.header_len();
        if off < TCP_HEADER_LEN || off > segment.len() {
            return Err(Error::Length);
        }
        Ok(h)
    }
}

impl<'a> TcpHeader<&'a mut [u8; TCP_HEADER_LEN]> {
    /// A writable view of the header `segment` starts with (length only).
    #[inline(always)]
    pub fn new_mut(segment: &'a mut [u8]) -> Option<Self> {
        segment
            .first_chunk_mut::<TCP_HEADER_LEN>()
            .map(|b| TcpHeader { b })
    }
}

impl<B: Deref<Target = [u8; TCP_HEADER_LEN]>> TcpHeader<B> {
    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        be16(&self.b, tcp_field::SRC_PORT)
    }
    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        be16(&self.b, tcp_field::DST_PORT)
    }
    #[inline(always)]
    pub fn seq(&self) -> u32 {
        be32(&self.b, tcp_field::SEQ)
    }
    #[inline(always)]
    pub fn ack(&self) -> u32 {
        be32(&self.b, tcp_field::ACK)
    }
    /// The header length in bytes (data offset × 4), options included.
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.b[tcp_field::DATA_OFF] >> 4) * 4
    }
    /// The flag bits (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, URG 0x20).
    #[inline(always)]
    pub fn flags(&self) -> u8 {
        self.b[tcp_field::FLAGS]
    }
    #[inline(always)]
    pub fn checksum(&self) -> u16 {
        be16(&self.b, tcp_field::CHECKSUM)
    }
}

impl<B: DerefMut<Target = [u8; TCP_HEADER_LEN]>> TcpHeader<B> {
    #[inline(always)]
    pub fn set_src_port(&mut self, v: u16) {
        put16(&mut self.b, tcp_field::SRC_PORT, v);
    }
    #[inline(always)]
    pub fn set_dst_port(&mut self, v: u16) {
        put16(&mut self.b, tcp_field::DST_PORT, v);
    }
    #[inline(always)]
    pub fn set_checksum(&mut self, v: u16) {
        put16(&mut self.b, tcp_field::CHECKSUM, v);
    }
}

// ---------------------------------------------------------------- UDP

mod udp_field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// The UDP header.
pub const UDP_HEADER_LEN: usize = 8;

/// A view of the UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpHeader<B> {
    b: B,
}

impl<'a> UdpHeader<&'a [u8; UDP_HEADER_LEN]> {
    /// The header `datagram` starts with: at least 8 bytes, and a length field
    /// of at least 8 that the datagram holds.
    #[inline(always)]
    pub fn new_checked(datagram: &'a [u8]) -> Result<Self, Error> {
        let b = datagram
            .first_chunk::<UDP_HEADER_LEN>()
            .ok_or(Error::Truncated)?;
        let h = UdpHeader { b };
        let len = usize::from(h.len());
        if len < UDP_HEADER_LEN || len > datagram.len() {
            return Err(Error::Length);
        }
        Ok(h)
    }
}

impl<'a> UdpHeader<&'a mut [u8; UDP_HEADER_LEN]> {
    /// A writable view of the header `datagram` starts with (length only).
    #[inline(always)]
    pub fn new_mut(datagram: &'a mut [u8]) -> Option<Self> {
        datagram
            .first_chunk_mut::<UDP_HEADER_LEN>()
            .map(|b| UdpHeader { b })
    }
}

impl<B: Deref<Target = [u8; UDP_HEADER_LEN]>> UdpHeader<B> {
    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        be16(&self.b, udp_field::SRC_PORT)
    }
    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        be16(&self.b, udp_field::DST_PORT)
    }
    /// The length field: header and payload, in bytes.
    #[inline(always)]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        be16(&self.b, udp_field::LENGTH)
    }
    /// 0 when the sender computed none.
    #[inline(always)]
    pub fn checksum(&self) -> u16 {
        be16(&self.b, udp_field::CHECKSUM)
    }
}

impl<B: DerefMut<Target = [u8; UDP_HEADER_LEN]>> UdpHeader<B> {
    #[inline(always)]
    pub fn set_src_port(&mut self, v: u16) {
        put16(&mut self.b, udp_field::SRC_PORT, v);
    }
    #[inline(always)]
    pub fn set_dst_port(&mut self, v: u16) {
        put16(&mut self.b, udp_field::DST_PORT, v);
    }
    #[inline(always)]
    pub fn set_len(&mut self, v: u16) {
        put16(&mut self.b, udp_field::LENGTH, v);
    }
    #[inline(always)]
    pub fn set_checksum(&mut self, v: u16) {
        put16(&mut self.b, udp_field::CHECKSUM, v);
    }
}

// ---------------------------------------------------------------- ICMPv4

mod icmp_field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const IDENT: usize = 4;
    pub const SEQ: usize = 6;
}

/// The ICMP header with its 4 type-specific bytes.
pub const ICMP_HEADER_LEN: usize = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DST_UNREACHABLE: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAM_PROBLEM: u8 = 12;

/// A view of the ICMP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpHeader<B> {
    b: B,
}

impl<'a> IcmpHeader<&'a [u8; ICMP_HEADER_LEN]> {
    /// The header `message` starts with: at least 8 bytes.
    #[inline(always)]
    pub fn new_checked(message: &'a [u8]) -> Result<Self, Error> {
        message
            .first_chunk::<ICMP_HEADER_LEN>()
            .map(|b| IcmpHeader { b })
            .ok_or(Error::Truncated)
    }
}

impl<'a> IcmpHeader<&'a mut [u8; ICMP_HEADER_LEN]> {
    /// A writable view of the header `message` starts with.
    #[inline(always)]
    pub fn new_mut(message: &'a mut [u8]) -> Option<Self> {
        message
            .first_chunk_mut::<ICMP_HEADER_LEN>()
            .map(|b| IcmpHeader { b })
    }
}

impl<B: Deref<Target = [u8; ICMP_HEADER_LEN]>> IcmpHeader<B> {
    #[inline(always)]
    pub fn msg_type(&self) -> u8 {
        self.b[icmp_field::TYPE]
    }
    #[inline(always)]
    pub fn code(&self) -> u8 {
        self.b[icmp_field::CODE]
    }
    #[inline(always)]
    pub fn checksum(&self) -> u16 {
        be16(&self.b, icmp_field::CHECKSUM)
    }
    /// Echo request/reply: the identifier.
    #[inline(always)]
    pub fn echo_ident(&self) -> u16 {
        be16(&self.b, icmp_field::IDENT)
    }
    /// Echo request/reply: the sequence number.
    #[inline(always)]
    pub fn echo_seq(&self) -> u16 {
        be16(&self.b, icmp_field::SEQ)
    }
}

impl<B: DerefMut<Target = [u8; ICMP_HEADER_LEN]>> IcmpHeader<B> {
    #[inline(always)]
    pub fn set_checksum(&mut self, v: u16) {
        put16(&mut self.b, icmp_field::CHECKSUM, v);
    }
    #[inline(always)]
    pub fn set_echo_ident(&mut self, v: u16) {
        put16(&mut self.b, icmp_field::IDENT, v);
    }
}

// ---------------------------------------------------------------- SCTP

mod sctp_field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const CHECKSUM: usize = 8;
}

/// SCTP's common header: ports, verification tag, checksum.
pub const SCTP_HEADER_LEN: usize = 12;

/// A view of SCTP's common header. Its checksum is a CRC32c over the whole
/// SCTP packet (no pseudo-header: the addresses are not in it), so a port
/// change needs the packet's bytes (`sctp_checksum`), never a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SctpHeader<B> {
    b: B,
}

impl<'a> SctpHeader<&'a [u8; SCTP_HEADER_LEN]> {
    /// The header `packet` starts with: at least 12 bytes.
    #[inline(always)]
    pub fn new_checked(packet: &'a [u8]) -> Result<Self, Error> {
        packet
            .first_chunk::<SCTP_HEADER_LEN>()
            .map(|b| SctpHeader { b })
            .ok_or(Error::Truncated)
    }
}

impl<'a> SctpHeader<&'a mut [u8; SCTP_HEADER_LEN]> {
    #[inline(always)]
    pub fn new_mut(packet: &'a mut [u8]) -> Option<Self> {
        packet
            .first_chunk_mut::<SCTP_HEADER_LEN>()
            .map(|b| SctpHeader { b })
    }
}

impl<B: Deref<Target = [u8; SCTP_HEADER_LEN]>> SctpHeader<B> {
    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        be16(&self.b, sctp_field::SRC_PORT)
    }
    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        be16(&self.b, sctp_field::DST_PORT)
    }
}

impl<B: DerefMut<Target = [u8; SCTP_HEADER_LEN]>> SctpHeader<B> {
    #[inline(always)]
    pub fn set_src_port(&mut self, v: u16) {
        put16(&mut self.b, sctp_field::SRC_PORT, v);
    }
    #[inline(always)]
    pub fn set_dst_port(&mut self, v: u16) {
        put16(&mut self.b, sctp_field::DST_PORT, v);
    }
}

/// Recomputes the CRC32c of a whole SCTP packet (`packet`: common header
/// and chunks) in place, as RFC 9260 appendix A and Linux store it: over the
/// packet with the field zeroed, the CRC's bytes least significant first.
/// False (nothing written) when `packet` is shorter than the header.
pub fn set_sctp_checksum(packet: &mut [u8]) -> bool {
    let at = sctp_field::CHECKSUM;
    let Some(field) = packet.get_mut(at..at + 4) else {
        return false;
    };
    field.fill(0);
    let crc = crc32c::crc32c(packet);
    packet[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    true
}

/// Does `packet` carry the CRC32c its bytes give?
pub fn sctp_checksum_ok(packet: &[u8]) -> bool {
    let at = sctp_field::CHECKSUM;
    let Some(field) = packet.get(at..at + 4) else {
        return false;
    };
    let want = [field[0], field[1], field[2], field[3]];
    let head = &packet[..at];
    let tail = &packet[at + 4..];
    let crc = crc32c::crc32c_append(crc32c::crc32c_append(crc32c::crc32c(head), &[0; 4]), tail);
    crc.to_le_bytes() == want
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 40000 → 80, seq 1, ack 2, data offset 6 (one option word), SYN|ACK,
    /// window 0x7210, checksum 0xabcd, MSS option.
    static TCP: [u8; 24] = [
        0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 2, 0x60, 0x12, 0x72, 0x10, 0xab, 0xcd, 0, 0,
        0x02, 0x04, 0x05, 0xb4,
    ];
    /// 12345 → 53, length 12, checksum 0x1234, 4 payload bytes.
    static UDP: [u8; 12] = [0x30, 0x39, 0x00, 0x35, 0x00, 0x0c, 0x12, 0x34, 1, 2, 3, 4];
    /// Echo request, id 0x0102, seq 7.
    static ICMP: [u8; 8] = [8, 0, 0xf7, 0xf5, 0x01, 0x02, 0x00, 0x07];

    #[test]
    fn tcp_deconstruct_construct() {
        let h = TcpHeader::new_checked(&TCP).unwrap();
        assert_eq!((h.src_port(), h.dst_port()), (40000, 80));
        assert_eq!((h.seq(), h.ack()), (1, 2));
        assert_eq!(h.header_len(), 24);
        assert_eq!(h.flags(), 0x12);
        assert_eq!(h.checksum(), 0xabcd);
        let mut buf = TCP;
        let mut m = TcpHeader::new_mut(&mut buf).unwrap();
        m.set_src_port(61000);
        m.set_dst_port(8080);
        m.set_checksum(0x0102);
        assert_eq!(&buf[..4], &[0xee, 0x48, 0x1f, 0x90]);
        assert_eq!(&buf[16..18], &[1, 2]);
        assert_eq!(&buf[4..16], &TCP[4..16]);
        // A data offset the segment does not hold, or below 5 words.
        assert_eq!(
            TcpHeader::new_checked(&TCP[..22]).unwrap_err(),
            Error::Length
        );
        let mut bad = TCP;
        bad[12] = 0x40;
        assert_eq!(TcpHeader::new_checked(&bad).unwrap_err(), Error::Length);
        assert_eq!(
            TcpHeader::new_checked(&TCP[..19]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn udp_deconstruct_construct() {
        let h = UdpHeader::new_checked(&UDP).unwrap();
        assert_eq!(
            (h.src_port(), h.dst_port(), h.len(), h.checksum()),
            (12345, 53, 12, 0x1234)
        );
        let mut buf = UDP;
        let mut m = UdpHeader::new_mut(&mut buf).unwrap();
        m.set_dst_port(5353);
        m.set_checksum(0);
        m.set_len(8);
        assert_eq!(&buf[2..8], &[0x14, 0xe9, 0, 8, 0, 0]);
        assert_eq!(
            UdpHeader::new_checked(&UDP[..11]).unwrap_err(),
            Error::Length
        );
        assert_eq!(
            UdpHeader::new_checked(&UDP[..7]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn icmp_deconstruct_construct() {
        let h = IcmpHeader::new_checked(&ICMP).unwrap();
        assert_eq!(
            (h.msg_type(), h.code(), h.checksum()),
            (ICMP_ECHO_REQUEST, 0, 0xf7f5)
        );
        assert_eq!((h.echo_ident(), h.echo_seq()), (0x0102, 7));
        let mut buf = ICMP;
        let mut m = IcmpHeader::new_mut(&mut buf).unwrap();
        m.set_echo_ident(0xeeee);
        m.set_checksum(0x1111);
        assert_eq!(buf, [8, 0, 0x11, 0x11, 0xee, 0xee, 0, 7]);
        assert_eq!(
            IcmpHeader::new_checked(&ICMP[..7]).unwrap_err(),
            Error::Truncated
        );
    }

    proptest! {
        /// The views accept what smoltcp's checked views accept and read the
        /// same fields.
        #[test]
        fn agree_with_smoltcp(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
            let ours = TcpHeader::new_checked(&bytes);
            let theirs = smoltcp::wire::TcpPacket::new_checked(&bytes[..]);
            prop_assert_eq!(ours.is_ok(), theirs.is_ok());
            if let (Ok(h), Ok(s)) = (ours, theirs) {
                prop_assert_eq!(h.src_port(), s.src_port());
                prop_assert_eq!(h.dst_port(), s.dst_port());
                prop_assert_eq!(h.seq(), s.seq_number().0 as u32);
                prop_assert_eq!(h.ack(), s.ack_number().0 as u32);
                prop_assert_eq!(h.header_len(), usize::from(s.header_len()));
                prop_assert_eq!(h.flags() & 0x01 != 0, s.fin());
                prop_assert_eq!(h.flags() & 0x02 != 0, s.syn());
                prop_assert_eq!(h.flags() & 0x04 != 0, s.rst());
                prop_assert_eq!(h.flags() & 0x10 != 0, s.ack());
                prop_assert_eq!(h.checksum(), s.checksum());
            }
            let ours = UdpHeader::new_checked(&bytes);
            let theirs = smoltcp::wire::UdpPacket::new_checked(&bytes[..]);
            prop_assert_eq!(ours.is_ok(), theirs.is_ok());
            if let (Ok(h), Ok(s)) = (ours, theirs) {
                prop_assert_eq!((h.src_port(), h.dst_port()), (s.src_port(), s.dst_port()));
                prop_assert_eq!((h.len(), h.checksum()), (s.len(), s.checksum()));
            }
            let ours = IcmpHeader::new_checked(&bytes);
            let theirs = smoltcp::wire::Icmpv4Packet::new_checked(&bytes[..]);
            if let Ok(h) = ours {
                // smoltcp also wants the quoted header of an error message.
                if let Ok(s) = theirs {
                    prop_assert_eq!(h.code(), s.msg_code());
                    prop_assert_eq!(h.checksum(), s.checksum());
                    prop_assert_eq!(h.msg_type(), u8::from(s.msg_type()));
                }
            } else {
                prop_assert!(theirs.is_err());
            }
        }
    }

    /// An SCTP INIT built by scapy 2.6 (IP()/SCTP(sport=40000, dport=80,
    /// tag=0)/SCTPChunkInit(...)): its checksum is what ours computes, and
    /// the CRC32c check value of "123456789" is the standard one.
    #[test]
    fn sctp_checksum_matches_scapy() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let hex = "9c4000500000000088f2904701000014010203040000ffff000a000a11223344";
        let mut pkt: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert!(sctp_checksum_ok(&pkt));
        let h = SctpHeader::new_checked(&pkt).unwrap();
        assert_eq!((h.src_port(), h.dst_port()), (40000, 80));
        pkt[20] ^= 1;
        assert!(!sctp_checksum_ok(&pkt));
        pkt[20] ^= 1;
        let theirs = pkt[8..12].to_vec();
        pkt[8..12].fill(0xaa);
        assert!(set_sctp_checksum(&mut pkt));
        assert_eq!(pkt[8..12], theirs[..]);
        assert!(!set_sctp_checksum(&mut [0u8; 11]));
        assert!(SctpHeader::new_checked(&[0u8; 11]).is_err());
    }
}
