//! Ethernet II header view for the per-packet path, in smoltcp's shape but
//! over the fixed 14 bytes: `EthernetHeader<B>` wraps `&[u8; 14]` to read or
//! `&mut [u8; 14]` to write the addresses, so no accessor can panic. Layout
//! only: no meaning of addresses here.

use core::ops::{Deref, DerefMut};

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const DST: Field = 0..6;
    pub const SRC: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
}

/// The Ethernet II header.
pub const HEADER_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// A view of an Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetHeader<B> {
    b: B,
}

impl<'a> EthernetHeader<&'a [u8; HEADER_LEN]> {
    /// The header `frame` starts with; `None` when it is shorter.
    #[inline(always)]
    pub fn new_checked(frame: &'a [u8]) -> Option<Self> {
        frame
            .first_chunk::<HEADER_LEN>()
            .map(|b| EthernetHeader { b })
    }
}

impl<'a> EthernetHeader<&'a mut [u8; HEADER_LEN]> {
    /// A writable view of the header `frame` starts with.
    #[inline(always)]
    pub fn new_mut(frame: &'a mut [u8]) -> Option<Self> {
        frame
            .first_chunk_mut::<HEADER_LEN>()
            .map(|b| EthernetHeader { b })
    }
}

impl<B: Deref<Target = [u8; HEADER_LEN]>> EthernetHeader<B> {
    #[inline(always)]
    pub fn dst(&self) -> [u8; 6] {
        let mut m = [0; 6];
        m.copy_from_slice(&self.b[field::DST]);
        m
    }
    #[inline(always)]
    pub fn src(&self) -> [u8; 6] {
        let mut m = [0; 6];
        m.copy_from_slice(&self.b[field::SRC]);
        m
    }
    #[inline(always)]
    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes([
            self.b[field::ETHERTYPE.start],
            self.b[field::ETHERTYPE.start + 1],
        ])
    }
}

impl<B: DerefMut<Target = [u8; HEADER_LEN]>> EthernetHeader<B> {
    #[inline(always)]
    pub fn set_dst(&mut self, m: &[u8; 6]) {
        self.b[field::DST].copy_from_slice(m);
    }
    #[inline(always)]
    pub fn set_src(&mut self, m: &[u8; 6]) {
        self.b[field::SRC].copy_from_slice(m);
    }
    #[inline(always)]
    pub fn set_ethertype(&mut self, t: u16) {
        self.b[field::ETHERTYPE].copy_from_slice(&t.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static FRAME: [u8; 16] = [
        0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00, 0x45, 0x00,
    ];

    #[test]
    fn deconstruct_construct() {
        let h = EthernetHeader::new_checked(&FRAME).unwrap();
        assert_eq!(h.dst(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(h.src(), [2, 0, 0, 0, 0, 2]);
        assert_eq!(h.ethertype(), ETHERTYPE_IPV4);
        let s = smoltcp::wire::EthernetFrame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(h.dst(), s.dst_addr().0);
        assert_eq!(h.src(), s.src_addr().0);
        let mut buf = FRAME;
        let mut m = EthernetHeader::new_mut(&mut buf).unwrap();
        m.set_dst(&[0xaa; 6]);
        m.set_src(&[0xbb; 6]);
        m.set_ethertype(ETHERTYPE_IPV6);
        assert_eq!(
            &buf[..14],
            &[0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0x86, 0xdd]
        );
        assert_eq!(&buf[14..], &FRAME[14..]);
        assert!(EthernetHeader::new_checked(&FRAME[..13]).is_none());
    }
}
