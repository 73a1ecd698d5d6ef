//! The frame handle the pipeline works on, independent of AF_XDP: a writable
//! buffer (the whole UMEM chunk or a test buffer) with the packet at
//! `[off, off+len)`. Headroom before `off` lets the pipeline prepend the 50-byte
//! VXLAN header in place; decapsulation just moves `off` forward. No packet
//! semantics here: the pipeline owns those.

use shared::DropReason;

/// What happens to a frame after the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit on this interface (by ifindex).
    Tx { ifindex: u32 },
    /// Hand to the host's own stack (the AF_XDP adapter cannot re-inject; it
    /// counts these — the XDP program passes host traffic before it gets here).
    Pass,
    /// Drop, counted under this reason.
    Drop(DropReason),
    /// Another worker owns this frame's flow: hand it, unmodified, to that
    /// worker (multi-worker operation; see `FlowTable::set_ownership`).
    Handoff { worker: u16 },
    /// The pipeline kept a copy (an IP fragment waiting for its datagram's
    /// first fragment, see `frag`); the frame itself can be freed.
    Held,
}

/// One packet in a batch.
#[derive(Debug)]
pub struct Frame<'a> {
    buf: &'a mut [u8],
    off: usize,
    len: usize,
    /// The interface the frame arrived on.
    pub ifindex: u32,
    /// Handed over by another worker: processed here whatever its owner.
    handed_in: bool,
}

impl<'a> Frame<'a> {
    /// A frame whose packet occupies `buf[off..off+len]`. Out-of-range values are
    /// clamped to the buffer, so a frame is always valid.
    pub fn new(buf: &'a mut [u8], off: usize, len: usize, ifindex: u32) -> Self {
        let off = off.min(buf.len());
        let len = len.min(buf.len() - off);
        Frame {
            buf,
            off,
            len,
            ifindex,
            handed_in: false,
        }
    }

    /// Marks a frame another worker handed over (it is never handed on again).
    pub fn handed_in(mut self) -> Self {
        self.handed_in = true;
        self
    }

    #[inline]
    pub fn is_handed_in(&self) -> bool {
        self.handed_in
    }

    /// The whole buffer, headroom and tailroom included (the AF_XDP adapter
    /// reads a frame's bytes as received from it).
    #[inline]
    pub fn buffer(&self) -> &[u8] {
        self.buf
    }

    /// The packet bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + self.len]
    }

    #[inline]
    pub fn offset(&self) -> usize {
        self.off
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes free before the packet.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.off
    }

    /// Bytes free after the packet.
    #[inline]
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.off - self.len
    }

    /// Drops `n` bytes from the front (decapsulation). False if too short.
    #[inline]
    pub fn pull(&mut self, n: usize) -> bool {
        if n > self.len {
            return false;
        }
        self.off += n;
        self.len -= n;
        true
    }

    /// Grows the packet by `n` bytes at the front (encapsulation). False if the
    /// headroom is too small.
    #[inline]
    pub fn push(&mut self, n: usize) -> bool {
        if n > self.off {
            return false;
        }
        self.off -= n;
        self.len += n;
        true
    }

    /// Sets the packet length (truncate or grow into the tailroom). False if it
    /// does not fit.
    #[inline]
    pub fn set_len(&mut self, len: usize) -> bool {
        if self.off + len > self.buf.len() {
            return false;
        }
        self.len = len;
        true
    }
}
