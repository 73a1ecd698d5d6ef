//! VXLAN (RFC 7348) header view in smoltcp's style: `Packet<T: AsRef<[u8]>>`,
//! `new_checked` validates the length once, accessors cannot panic after it.
//! Only the 8-byte VXLAN header: the outer headers belong to the other views.
//!
//! ```text
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```

use core::fmt;

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const FLAGS: usize = 0;
    pub const RESERVED1: Field = 1..4;
    pub const VNI: Field = 4..7;
    pub const RESERVED2: usize = 7;
    pub const PAYLOAD: usize = 8;
}

/// The only flags value nodeplane accepts: the I bit (valid VNI).
pub const FLAGS_VNI_VALID: u8 = 0x08;

/// Errors from checked construction and parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the 8-byte header.
    Truncated,
    /// Flags other than exactly 0x08.
    BadFlags(u8),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => write!(f, "VXLAN header truncated"),
            Error::BadFlags(x) => write!(f, "VXLAN flags {x:#04x}, want 0x08"),
        }
    }
}

/// A read/write view of a VXLAN header and its payload (the inner frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wraps without checking; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        VxlanPacket { buffer }
    }

    /// Wraps after checking that the header fits.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < field::PAYLOAD {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2])
    }

    /// The reserved bits are all zero.
    pub fn reserved_clear(&self) -> bool {
        let b = self.buffer.as_ref();
        b[field::RESERVED1].iter().all(|&x| x == 0) && b[field::RESERVED2] == 0
    }

    /// The encapsulated Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the 24-bit VNI (higher bits are ignored) and clears the reserved bytes.
    pub fn set_vni(&mut self, vni: u32) {
        let b = self.buffer.as_mut();
        b[field::RESERVED1].fill(0);
        let [_, hi, mid, lo] = vni.to_be_bytes();
        b[field::VNI].copy_from_slice(&[hi, mid, lo]);
        b[field::RESERVED2] = 0;
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// A parsed VXLAN header: what nodeplane accepts (flags 0x08) and emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    pub vni: u32,
}

impl VxlanRepr {
    /// Parses a checked view; flags must be exactly 0x08.
    pub fn parse<T: AsRef<[u8]>>(p: &VxlanPacket<T>) -> Result<Self, Error> {
        p.check_len()?;
        if p.flags() != FLAGS_VNI_VALID {
            return Err(Error::BadFlags(p.flags()));
        }
        Ok(VxlanRepr { vni: p.vni() })
    }

    pub const fn buffer_len(&self) -> usize {
        field::PAYLOAD
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut VxlanPacket<T>) {
        p.set_flags(FLAGS_VNI_VALID);
        p.set_vni(self.vni & 0x00ff_ffff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    static PACKET: [u8; 10] = [0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0xaa, 0xbb];

    #[test]
    fn deconstruct() {
        let p = VxlanPacket::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.flags(), 0x08);
        assert_eq!(p.vni(), 1);
        assert!(p.reserved_clear());
        assert_eq!(p.payload(), &[0xaa, 0xbb]);
    }

    #[test]
    fn construct() {
        let mut buf = [0xffu8; 10];
        let mut p = VxlanPacket::new_unchecked(&mut buf[..]);
        p.set_flags(0x08);
        p.set_vni(1);
        p.payload_mut().copy_from_slice(&[0xaa, 0xbb]);
        assert_eq!(buf, PACKET);
    }

    #[test]
    fn parse_and_emit() {
        let p = VxlanPacket::new_checked(&PACKET[..]).unwrap();
        let r = VxlanRepr::parse(&p).unwrap();
        assert_eq!(r, VxlanRepr { vni: 1 });
        let mut buf = [0u8; 8];
        r.emit(&mut VxlanPacket::new_unchecked(&mut buf[..]));
        assert_eq!(&buf[..], &PACKET[..8]);
    }

    #[test]
    fn truncated_and_bad_flags() {
        for n in 0..8 {
            assert_eq!(
                VxlanPacket::new_checked(&PACKET[..n]).unwrap_err(),
                Error::Truncated
            );
        }
        let mut bad = PACKET;
        bad[0] = 0x0c;
        let p = VxlanPacket::new_checked(&bad[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&p).unwrap_err(), Error::BadFlags(0x0c));
    }

    proptest! {
        #[test]
        fn round_trip(vni in 0u32..(1 << 24), tail in proptest::collection::vec(any::<u8>(), 0..32)) {
            let mut buf = vec![0u8; 8 + tail.len()];
            let mut p = VxlanPacket::new_unchecked(&mut buf[..]);
            VxlanRepr { vni }.emit(&mut p);
            p.payload_mut().copy_from_slice(&tail);
            let p = VxlanPacket::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(VxlanRepr::parse(&p).unwrap().vni, vni);
            prop_assert_eq!(p.payload(), &tail[..]);
        }

        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(p) = VxlanPacket::new_checked(&bytes[..]) {
                let _ = (p.flags(), p.vni(), p.reserved_clear(), p.payload().len());
                let _ = VxlanRepr::parse(&p);
            }
        }
    }
}
