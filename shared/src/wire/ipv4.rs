//! IPv4 header view (RFC 791) for the per-packet path, in smoltcp's shape but
//! over a fixed-size array: `Ipv4Header<B>` wraps the 20 fixed header bytes
//! (`&[u8; 20]` to read, `&mut [u8; 20]` to rewrite), so no accessor has a
//! bounds check left and none can panic. `new_checked` validates the packet it
//! is cut from once: version, header length, total length against the buffer.
//! Options are skipped, never parsed. Building whole headers (replies the
//! dataplane sends) is smoltcp's `Ipv4Repr`'s job.
//!
//! ```text
//! |Version|  IHL  |    DSCP/ECN   |          Total Length         |
//! |         Identification        |Flags|     Fragment Offset     |
//! |      TTL      |    Protocol   |         Header Checksum       |
//! |                       Source Address                          |
//! |                    Destination Address                        |
//! ```

use core::fmt;
use core::ops::{Deref, DerefMut};

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const VER_IHL: usize = 0;
    pub const TOTAL_LEN: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLAGS_FRAG: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;
}

/// The fixed header (no options).
pub const HEADER_LEN: usize = 20;
/// IP protocol numbers the dataplane handles.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;
/// The "don't fragment" flag in the flags/fragment-offset word.
pub const FLAG_DF: u16 = 0x4000;
/// The "more fragments" flag.
pub const FLAG_MF: u16 = 0x2000;
/// The fragment offset bits (in 8-byte units).
pub const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// Why a buffer is not an IPv4 packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the fixed header, or than its own total length.
    Truncated,
    /// The version nibble is not 4.
    Version,
    /// IHL below 5, or a header longer than the total length.
    HeaderLen,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => write!(f, "IPv4 packet truncated"),
            Error::Version => write!(f, "not IPv4 (version)"),
            Error::HeaderLen => write!(f, "IPv4 header length inconsistent"),
        }
    }
}

/// A view of the fixed IPv4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header<B> {
    b: B,
}

#[inline(always)]
fn be16(b: &[u8; HEADER_LEN], r: field::Field) -> u16 {
    u16::from_be_bytes([b[r.start], b[r.start + 1]])
}

#[inline(always)]
fn be32(b: &[u8; HEADER_LEN], r: field::Field) -> u32 {
    u32::from_be_bytes([b[r.start], b[r.start + 1], b[r.start + 2], b[r.start + 3]])
}

impl<'a> Ipv4Header<&'a [u8; HEADER_LEN]> {
    /// The header of `packet`, which must start with it: checks the version,
    /// that IHL ≥ 5, and that `header_len() ≤ total_len() ≤ packet.len()`.
    #[inline(always)]
    pub fn new_checked(packet: &'a [u8]) -> Result<Self, Error> {
        let b = packet.first_chunk::<HEADER_LEN>().ok_or(Error::Truncated)?;
        let h = Ipv4Header { b };
        if h.version() != 4 {
            return Err(Error::Version);
        }
        let (ihl, total) = (h.header_len(), usize::from(h.total_len()));
        if ihl < HEADER_LEN || total < ihl {
            return Err(Error::HeaderLen);
        }
        if total > packet.len() {
            return Err(Error::Truncated);
        }
        Ok(h)
    }
}

impl<'a> Ipv4Header<&'a [u8; HEADER_LEN]> {
    /// The header of a packet quoted in an ICMP error, which is cut short: checks
    /// the version and that IHL ≥ 5, and that the quote holds the whole header
    /// and 8 bytes after it (RFC 792), but not the total length.
    #[inline]
    pub fn new_quoted(quote: &'a [u8]) -> Result<Self, Error> {
        let b = quote.first_chunk::<HEADER_LEN>().ok_or(Error::Truncated)?;
        let h = Ipv4Header { b };
        if h.version() != 4 {
            return Err(Error::Version);
        }
        if h.header_len() < HEADER_LEN {
            return Err(Error::HeaderLen);
        }
        if quote.len() < h.header_len() + 8 {
            return Err(Error::Truncated);
        }
        Ok(h)
    }
}

impl<'a> Ipv4Header<&'a mut [u8; HEADER_LEN]> {
    /// A writable view of the header `packet` starts with (length checked
    /// only: for rewriting a packet `new_checked` accepted before).
    #[inline(always)]
    pub fn new_mut(packet: &'a mut [u8]) -> Option<Self> {
        packet
            .first_chunk_mut::<HEADER_LEN>()
            .map(|b| Ipv4Header { b })
    }
}

impl<B: Deref<Target = [u8; HEADER_LEN]>> Ipv4Header<B> {
    /// Wraps the fixed header bytes as they are.
    #[inline(always)]
    pub const fn new_unchecked(b: B) -> Self {
        Ipv4Header { b }
    }

    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.b[field::VER_IHL] >> 4
    }

    /// The header length in bytes (IHL × 4), options included.
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.ihl_bytes())
    }

    /// `header_len` as a byte (at most 60).
    #[inline(always)]
    pub fn ihl_bytes(&self) -> u8 {
        (self.b[field::VER_IHL] & 0x0f) * 4
    }

    #[inline(always)]
    pub fn total_len(&self) -> u16 {
        be16(&self.b, field::TOTAL_LEN)
    }

    #[inline(always)]
    pub fn ident(&self) -> u16 {
        be16(&self.b, field::IDENT)
    }

    /// The flags and fragment-offset word.
    #[inline(always)]
    pub fn flags_frag(&self) -> u16 {
        be16(&self.b, field::FLAGS_FRAG)
    }

    #[inline(always)]
    pub fn dont_frag(&self) -> bool {
        self.flags_frag() & FLAG_DF != 0
    }

    #[inline(always)]
    pub fn more_frags(&self) -> bool {
        self.flags_frag() & FLAG_MF != 0
    }

    /// The fragment offset in bytes.
    #[inline(always)]
    pub fn frag_offset(&self) -> u16 {
        (self.flags_frag() & FRAG_OFFSET_MASK) << 3
    }

    /// A fragment of a larger datagram (MF set or a non-zero offset).
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.flags_frag() & (FLAG_MF | FRAG_OFFSET_MASK) != 0
    }

    #[inline(always)]
    pub fn ttl(&self) -> u8 {
        self.b[field::TTL]
    }

    #[inline(always)]
    pub fn protocol(&self) -> u8 {
        self.b[field::PROTOCOL]
    }

    #[inline(always)]
    pub fn checksum(&self) -> u16 {
        be16(&self.b, field::CHECKSUM)
    }

    /// The source address, host order.
    #[inline(always)]
    pub fn src(&self) -> u32 {
        be32(&self.b, field::SRC)
    }

    /// The destination address, host order.
    #[inline(always)]
    pub fn dst(&self) -> u32 {
        be32(&self.b, field::DST)
    }
}

impl<B: DerefMut<Target = [u8; HEADER_LEN]>> Ipv4Header<B> {
    /// Writes a whole option-less header (DSCP/ECN 0, ident 0, flags and
    /// fragment offset `flags_frag`) with its checksum.
    #[inline(always)]
    pub fn emit(
        &mut self,
        total_len: u16,
        flags_frag: u16,
        ttl: u8,
        protocol: u8,
        src: u32,
        dst: u32,
    ) {
        let b = &mut *self.b;
        b[field::VER_IHL] = 0x45;
        b[1] = 0;
        b[field::TOTAL_LEN].copy_from_slice(&total_len.to_be_bytes());
        b[field::IDENT].fill(0);
        b[field::FLAGS_FRAG].copy_from_slice(&flags_frag.to_be_bytes());
        b[field::TTL] = ttl;
        b[field::PROTOCOL] = protocol;
        b[field::CHECKSUM].fill(0);
        b[field::SRC].copy_from_slice(&src.to_be_bytes());
        b[field::DST].copy_from_slice(&dst.to_be_bytes());
        let cs = super::checksum::checksum(&b[..]);
        b[field::CHECKSUM].copy_from_slice(&cs.to_be_bytes());
    }

    #[inline(always)]
    pub fn set_ttl(&mut self, v: u8) {
        self.b[field::TTL] = v;
    }

    #[inline(always)]
    pub fn set_checksum(&mut self, v: u16) {
        self.b[field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }

    #[inline(always)]
    pub fn set_src(&mut self, v: u32) {
        self.b[field::SRC].copy_from_slice(&v.to_be_bytes());
    }

    #[inline(always)]
    pub fn set_dst(&mut self, v: u32) {
        self.b[field::DST].copy_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 198.19.3.5 → 198.18.96.10, UDP, TTL 64, DF, ident 0x1234, 28 bytes.
    static PACKET: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 198, 19, 3, 5, 198,
        18, 96, 10, // header
        0x30, 0x39, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00, // UDP
    ];

    #[test]
    fn deconstruct() {
        let h = Ipv4Header::new_checked(&PACKET).unwrap();
        assert_eq!(h.version(), 4);
        assert_eq!(h.header_len(), 20);
        assert_eq!(h.total_len(), 28);
        assert_eq!(h.ident(), 0x1234);
        assert!(h.dont_frag() && !h.more_frags() && !h.is_fragment());
        assert_eq!(h.frag_offset(), 0);
        assert_eq!(h.ttl(), 64);
        assert_eq!(h.protocol(), 17);
        assert_eq!(h.src(), u32::from_be_bytes([198, 19, 3, 5]));
        assert_eq!(h.dst(), u32::from_be_bytes([198, 18, 96, 10]));
    }

    #[test]
    fn construct() {
        let mut buf = PACKET;
        let mut h = Ipv4Header::new_mut(&mut buf).unwrap();
        h.set_ttl(63);
        h.set_src(u32::from_be_bytes([198, 19, 1, 7]));
        h.set_dst(u32::from_be_bytes([198, 19, 1, 8]));
        h.set_checksum(0xbeef);
        assert_eq!(
            &buf[8..20],
            &[63, 0x11, 0xbe, 0xef, 198, 19, 1, 7, 198, 19, 1, 8]
        );
        assert_eq!(&buf[20..], &PACKET[20..]);
    }

    #[test]
    fn emit_matches_smoltcp() {
        let mut ours = [0u8; 28];
        let (src, dst) = (
            u32::from_be_bytes([198, 19, 3, 5]),
            u32::from_be_bytes([198, 18, 96, 10]),
        );
        Ipv4Header::new_mut(&mut ours)
            .unwrap()
            .emit(28, FLAG_DF, 64, PROTO_UDP, src, dst);
        let mut theirs = [0u8; 28];
        smoltcp::wire::Ipv4Repr {
            src_addr: src.into(),
            dst_addr: dst.into(),
            next_header: smoltcp::wire::IpProtocol::Udp,
            payload_len: 8,
            hop_limit: 64,
        }
        .emit(
            &mut smoltcp::wire::Ipv4Packet::new_unchecked(&mut theirs[..]),
            &Default::default(),
        );
        assert_eq!(ours[..20], theirs[..20]);
        assert!(smoltcp::wire::Ipv4Packet::new_checked(&ours[..])
            .unwrap()
            .verify_checksum());
    }

    #[test]
    fn quoted_headers_need_no_total_length() {
        // The first 28 bytes of a longer packet, as an ICMP error quotes it.
        let mut q = PACKET;
        q[2..4].copy_from_slice(&1500u16.to_be_bytes());
        assert!(Ipv4Header::new_checked(&q).is_err());
        let h = Ipv4Header::new_quoted(&q).unwrap();
        assert_eq!((h.total_len(), h.protocol()), (1500, 17));
        assert_eq!(
            Ipv4Header::new_quoted(&q[..27]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn fragments() {
        let mut buf = PACKET;
        buf[6] = 0x20; // MF
        assert!(Ipv4Header::new_checked(&buf).unwrap().is_fragment());
        buf[6] = 0x00;
        buf[7] = 0x03; // offset 24 bytes
        let h = Ipv4Header::new_checked(&buf).unwrap();
        assert!(h.is_fragment() && h.frag_offset() == 24);
    }

    #[test]
    fn rejects() {
        for n in 0..20 {
            assert_eq!(
                Ipv4Header::new_checked(&PACKET[..n]).unwrap_err(),
                Error::Truncated
            );
        }
        // Shorter than its total length.
        assert_eq!(
            Ipv4Header::new_checked(&PACKET[..27]).unwrap_err(),
            Error::Truncated
        );
        let mut v6 = PACKET;
        v6[0] = 0x65;
        assert_eq!(Ipv4Header::new_checked(&v6).unwrap_err(), Error::Version);
        let mut short_ihl = PACKET;
        short_ihl[0] = 0x44;
        assert_eq!(
            Ipv4Header::new_checked(&short_ihl).unwrap_err(),
            Error::HeaderLen
        );
        let mut long_ihl = PACKET;
        long_ihl[0] = 0x48; // 32-byte header in a 28-byte packet
        assert_eq!(
            Ipv4Header::new_checked(&long_ihl).unwrap_err(),
            Error::HeaderLen
        );
    }

    proptest! {
        /// Whatever the bytes, the view accepts exactly what smoltcp's checked
        /// view accepts as a consistent header and reads the same fields.
        #[test]
        fn agrees_with_smoltcp(bytes in proptest::collection::vec(any::<u8>(), 0..64), ver4 in any::<bool>()) {
            let mut bytes = bytes;
            if ver4 && !bytes.is_empty() {
                bytes[0] = 0x40 | (bytes[0] & 0x0f);
            }
            let ours = Ipv4Header::new_checked(&bytes);
            let theirs = smoltcp::wire::Ipv4Packet::new_checked(&bytes[..]);
            if let Ok(h) = ours {
                let s = theirs.expect("smoltcp accepts what the view accepts");
                prop_assert_eq!(h.total_len(), s.total_len());
                prop_assert_eq!(h.header_len(), usize::from(s.header_len()));
                prop_assert_eq!(h.ttl(), s.hop_limit());
                prop_assert_eq!(h.ident(), s.ident());
                prop_assert_eq!(h.dont_frag(), s.dont_frag());
                prop_assert_eq!(h.more_frags(), s.more_frags());
                prop_assert_eq!(h.frag_offset(), s.frag_offset());
                prop_assert_eq!(h.src(), u32::from(s.src_addr()));
                prop_assert_eq!(h.dst(), u32::from(s.dst_addr()));
                prop_assert_eq!(h.checksum(), s.checksum());
            } else if let Ok(s) = theirs {
                // smoltcp does not check the version; everything else it does.
                prop_assert!(s.version() != 4, "smoltcp accepted what the view refused");
            }
        }
    }
}
