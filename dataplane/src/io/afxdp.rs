//! AF_XDP plumbing for one worker: the UMEM (frame memory shared by all of the
//! worker's sockets, on every interface), frame ownership accounting, the four
//! rings of a socket, and socket creation with a shared UMEM. A worker thread owns
//! all of it; nothing here is shared between threads, and nothing here reads
//! a packet's bytes.
//!
//! Built on the kernel's AF_XDP socket API directly (libc) rather than xsk-rs:
//! transmitting a frame whose start moved (VXLAN encap/decap) needs a tx
//! descriptor at an arbitrary offset inside its chunk, which xsk-rs's `FrameDesc`
//! cannot express, and sockets on pod interfaces must come and go in any order
//! (libxdp ties the UMEM to its first socket).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::raw::c_void;
use std::sync::atomic::{AtomicU32, Ordering};

/// Size of one UMEM chunk (one frame). Power of two (aligned mode).
pub const FRAME_SIZE: usize = 2048;
/// Where the kernel puts received data inside a chunk (XDP_PACKET_HEADROOM; the
/// UMEM's own headroom is 0). The pipeline may grow a frame into it (encap).
pub const RX_OFFSET: usize = 256;
/// Largest frame a chunk can receive.
pub const MAX_RX_FRAME: usize = FRAME_SIZE - RX_OFFSET;
/// `FRAME_SIZE` as the kernel's UMEM chunk size.
// Cannot truncate: FRAME_SIZE is 2048.
#[allow(clippy::cast_possible_truncation)]
const CHUNK_SIZE: u32 = FRAME_SIZE as u32;
/// `AF_XDP` as a socket address family.
// Cannot truncate: AF_XDP is 44.
#[allow(clippy::cast_possible_truncation)]
const AF_XDP_FAMILY: libc::sa_family_t = libc::AF_XDP as libc::sa_family_t;

/// The size of a kernel option or address struct, as the socket calls take it.
// Cannot truncate: these structs are a few dozen bytes.
#[allow(clippy::cast_possible_truncation)]
const fn socklen_of<T>() -> libc::socklen_t {
    std::mem::size_of::<T>() as libc::socklen_t
}

/// Frame ownership for accounting: who holds chunk `i`.
const OWNER_FREE: u16 = u16::MAX;
const OWNER_HAND: u16 = u16::MAX - 1;
const OWNER_TX: u16 = 0x4000;
/// Largest socket id (ids index the worker's socket slab).
pub const MAX_SOCKETS: usize = OWNER_TX as usize;

/// Errors creating the UMEM or a socket.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("AF_XDP {what}: {source}")]
    Os {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("too many AF_XDP sockets on one worker (max {MAX_SOCKETS})")]
    TooManySockets,
}

fn os(what: &'static str) -> XskError {
    XskError::Os {
        what,
        source: io::Error::last_os_error(),
    }
}

/// The worker's frame memory: an anonymous mapping of `frames * FRAME_SIZE` bytes.
pub struct UmemRegion {
    ptr: *mut u8,
    len: usize,
    frames: u32,
}

// SAFETY: the region is plain memory; it is moved to the worker thread that uses it.
unsafe impl Send for UmemRegion {}

impl UmemRegion {
    pub fn new(frames: u32) -> Result<UmemRegion, XskError> {
        let len = frames as usize * FRAME_SIZE;
        // SAFETY: anonymous private mapping; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(os("mmap of the UMEM"));
        }
        Ok(UmemRegion {
            ptr: p.cast::<u8>(),
            len,
            frames,
        })
    }

    pub fn frames(&self) -> u32 {
        self.frames
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole chunk at UMEM offset `base` (a multiple of `FRAME_SIZE`).
    ///
    /// # Safety
    /// The caller must own the chunk (not in any ring, not handed out twice)
    /// for as long as the slice lives.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn chunk(&self, base: u64) -> &mut [u8] {
        let base = usize::try_from(base)
            .unwrap_or(usize::MAX)
            .min(self.len - FRAME_SIZE)
            & !(FRAME_SIZE - 1);
        // SAFETY: `base + FRAME_SIZE <= len` by the clamp above; exclusivity is
        // the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(base), FRAME_SIZE) }
    }

    fn umem_reg(&self) -> libc::xdp_umem_reg {
        libc::xdp_umem_reg {
            addr: self.ptr as u64,
            len: self.len as u64,
            chunk_size: CHUNK_SIZE,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        }
    }
}

impl Drop for UmemRegion {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` and is unmapped once. Every
        // socket registered on it has been closed before (the worker drops its
        // sockets first; the kernel keeps its own page references otherwise).
        unsafe { libc::munmap(self.ptr.cast::<c_void>(), self.len) };
    }
}

/// The chunk base of a descriptor address.
#[inline]
pub fn chunk_base(addr: u64) -> u64 {
    addr & !(FRAME_SIZE as u64 - 1)
}

/// Where every chunk is: free, in the worker's hands, in a socket's fill/rx
/// rings, or in a socket's tx/completion rings. Free + in hand + Σ fill/rx +
/// Σ tx/comp always equals the number of chunks.
pub struct FramePool {
    free: Vec<u64>,
    owner: Vec<u16>,
    in_hand: u32,
}

/// A snapshot of the frame accounting (see `FramePool`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameAccount {
    pub total: u32,
    pub free: u32,
    pub in_hand: u32,
    /// Frames in fill or rx rings, summed over sockets.
    pub fill_rx: u32,
    /// Frames in tx or completion rings, summed over sockets.
    pub tx_comp: u32,
    /// The per-chunk ownership table agrees with the counters above.
    pub consistent: bool,
}

impl FrameAccount {
    /// The conservation law: every chunk is somewhere.
    pub fn balanced(&self) -> bool {
        self.consistent && self.free + self.in_hand + self.fill_rx + self.tx_comp == self.total
    }
}

impl FramePool {
    pub fn new(frames: u32) -> FramePool {
        FramePool {
            free: (0..u64::from(frames))
                .rev()
                .map(|i| i * FRAME_SIZE as u64)
                .collect(),
            owner: vec![OWNER_FREE; frames as usize],
            in_hand: 0,
        }
    }

    #[inline]
    fn idx(base: u64) -> usize {
        // Past the end (`owner.get_mut` finds nothing) if it does not fit.
        usize::try_from(base / FRAME_SIZE as u64).unwrap_or(usize::MAX)
    }

    #[inline]
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    #[inline]
    fn pop_free(&mut self) -> Option<u64> {
        self.free.pop()
    }

    /// A free chunk into our hands (for a frame another worker handed over).
    #[inline]
    pub fn alloc(&mut self) -> Option<u64> {
        let base = self.pop_free()?;
        self.take(base);
        Some(base)
    }

    /// A chunk came back from the kernel (rx or completion) into our hands.
    #[inline]
    fn take(&mut self, base: u64) {
        if let Some(o) = self.owner.get_mut(Self::idx(base)) {
            *o = OWNER_HAND;
            self.in_hand += 1;
        }
    }

    /// A chunk in our hands is free again.
    #[inline]
    pub fn recycle(&mut self, base: u64) {
        if let Some(o) = self.owner.get_mut(Self::idx(base)) {
            debug_assert_eq!(*o, OWNER_HAND, "recycling a chunk we do not hold");
            if *o == OWNER_HAND {
                *o = OWNER_FREE;
                self.in_hand -= 1;
                self.free.push(base);
            }
        }
    }

    #[inline]
    fn give(&mut self, base: u64, owner: u16) {
        if let Some(o) = self.owner.get_mut(Self::idx(base)) {
            debug_assert!(*o == OWNER_HAND || *o == OWNER_FREE);
            if *o == OWNER_HAND {
                self.in_hand -= 1;
            }
            *o = owner;
        }
    }

    /// Returns to the free list every chunk that socket `id` held (its rings are
    /// gone). Returns how many.
    pub fn reclaim_socket(&mut self, id: u16) -> u32 {
        let mut n = 0;
        for (i, o) in self.owner.iter_mut().enumerate() {
            if *o == id || *o == (id | OWNER_TX) {
                *o = OWNER_FREE;
                self.free.push(i as u64 * FRAME_SIZE as u64);
                n += 1;
            }
        }
        n
    }

    /// Counts chunks per state from the ownership table and checks them against
    /// the running counters of the sockets.
    pub fn account(&self, sockets: &[(u16, u32, u32)]) -> FrameAccount {
        let mut free = 0u32;
        let mut hand = 0u32;
        let mut fill = 0u32;
        let mut tx = 0u32;
        for o in &self.owner {
            match *o {
                OWNER_FREE => free += 1,
                OWNER_HAND => hand += 1,
                x if x & OWNER_TX != 0 => tx += 1,
                _ => fill += 1,
            }
        }
        let c_fill: u32 = sockets.iter().map(|s| s.1).sum();
        let c_tx: u32 = sockets.iter().map(|s| s.2).sum();
        let mut consistent = free as usize == self.free.len()
            && hand == self.in_hand
            && fill == c_fill
            && tx == c_tx;
        if consistent {
            for &(id, f, t) in sockets {
                let of = self.owner.iter().filter(|o| **o == id).count();
                let ot = self.owner.iter().filter(|o| **o == id | OWNER_TX).count();
                consistent &= of == f as usize && ot == t as usize;
            }
        }
        FrameAccount {
            // One entry per chunk of a `u32` count (`new`): it fits.
            total: u32::try_from(self.owner.len()).unwrap_or(u32::MAX),
            free,
            in_hand: hand,
            fill_rx: fill,
            tx_comp: tx,
            consistent,
        }
    }
}

/// One mmapped ring (producer/consumer indices shared with the kernel).
struct Ring {
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    desc: *mut u8,
    mask: u32,
    size: u32,
    cached_prod: u32,
    cached_cons: u32,
    map: *mut c_void,
    map_len: usize,
}

impl Ring {
    /// Maps a ring of `size` entries of `entry` bytes at page offset `pgoff`.
    fn map(
        fd: RawFd,
        off: &libc::xdp_ring_offset,
        size: u32,
        entry: usize,
        pgoff: u64,
        producer_side: bool,
    ) -> Result<Ring, XskError> {
        let offset = |o: u64| {
            usize::try_from(o).map_err(|_| XskError::Os {
                what: "ring offsets",
                source: io::ErrorKind::InvalidData.into(),
            })
        };
        let (producer_off, consumer_off, flags_off, desc_off) = (
            offset(off.producer)?,
            offset(off.consumer)?,
            offset(off.flags)?,
            offset(off.desc)?,
        );
        let map_len = desc_off + size as usize * entry;
        // SAFETY: maps a ring the kernel created on `fd`; the result is checked.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff as libc::off_t,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(os("mmap of a ring"));
        }
        let base = map.cast::<u8>();
        // SAFETY: the offsets come from XDP_MMAP_OFFSETS and lie inside the mapping.
        let (producer, consumer, flags, desc) = unsafe {
            (
                base.add(producer_off).cast::<AtomicU32>() as *const AtomicU32,
                base.add(consumer_off).cast::<AtomicU32>() as *const AtomicU32,
                base.add(flags_off).cast::<AtomicU32>() as *const AtomicU32,
                base.add(desc_off),
            )
        };
        let mut r = Ring {
            producer,
            consumer,
            flags,
            desc,
            mask: size - 1,
            size,
            cached_prod: 0,
            cached_cons: 0,
            map,
            map_len,
        };
        r.cached_prod = r.prod().load(Ordering::Acquire);
        r.cached_cons = r.cons().load(Ordering::Acquire);
        if producer_side {
            // As libxdp: the cached consumer runs `size` ahead, so
            // `cached_cons - cached_prod` is the free space.
            r.cached_cons = r.cached_cons.wrapping_add(size);
        }
        Ok(r)
    }

    #[inline]
    fn prod(&self) -> &AtomicU32 {
        // SAFETY: points into the live mapping, 4-byte aligned (kernel layout).
        unsafe { &*self.producer }
    }

    #[inline]
    fn cons(&self) -> &AtomicU32 {
        // SAFETY: as `prod`.
        unsafe { &*self.consumer }
    }

    #[inline]
    fn needs_wakeup(&self) -> bool {
        // SAFETY: as `prod`.
        unsafe { &*self.flags }.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    // ---- producer side (fill, tx) ----

    /// Free entries, refreshing the consumer index when fewer than `want`.
    #[inline]
    fn prod_free(&mut self, want: u32) -> u32 {
        let free = self.cached_cons.wrapping_sub(self.cached_prod);
        if free >= want {
            return free;
        }
        self.cached_cons = self.cons().load(Ordering::Acquire).wrapping_add(self.size);
        self.cached_cons.wrapping_sub(self.cached_prod)
    }

    /// Index of the next entry to write (after `prod_free` said there is room).
    #[inline]
    fn prod_next(&mut self) -> u32 {
        let i = self.cached_prod;
        self.cached_prod = i.wrapping_add(1);
        i
    }

    #[inline]
    fn prod_submit(&mut self) {
        self.prod().store(self.cached_prod, Ordering::Release);
    }

    /// Entries produced by us and not yet consumed by the kernel.
    #[inline]
    fn prod_outstanding(&self) -> u32 {
        self.cached_prod
            .wrapping_sub(self.cons().load(Ordering::Acquire))
    }

    // ---- consumer side (rx, completion) ----

    /// Entries available (up to `max`), starting at the returned index.
    #[inline]
    fn cons_peek(&mut self, max: u32) -> (u32, u32) {
        let mut avail = self.cached_prod.wrapping_sub(self.cached_cons);
        if avail == 0 {
            self.cached_prod = self.prod().load(Ordering::Acquire);
            avail = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        (avail.min(max), self.cached_cons)
    }

    #[inline]
    fn cons_release(&mut self, n: u32) {
        self.cached_cons = self.cached_cons.wrapping_add(n);
        self.cons().store(self.cached_cons, Ordering::Release);
    }

    #[inline]
    fn addr_at(&self, idx: u32) -> *mut u64 {
        // SAFETY: `idx & mask` < size; entries are u64 in fill/completion rings.
        unsafe { self.desc.cast::<u64>().add((idx & self.mask) as usize) }
    }

    #[inline]
    fn desc_at(&self, idx: u32) -> *mut libc::xdp_desc {
        // SAFETY: `idx & mask` < size; entries are xdp_desc in rx/tx rings.
        unsafe {
            self.desc
                .cast::<libc::xdp_desc>()
                .add((idx & self.mask) as usize)
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `map` and is unmapped once.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// Ring sizes of one socket (powers of two).
#[derive(Clone, Copy, Debug)]
pub struct RingSizes {
    pub rx: u32,
    pub tx: u32,
    pub fill: u32,
    pub comp: u32,
}

/// The kernel's per-socket drop counters (XDP_STATISTICS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskStats {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

/// One AF_XDP socket bound to (ifindex, queue), sharing the worker's UMEM.
pub struct XskSocket {
    // Rings before the fd: they are unmapped before the socket is closed.
    rx: Ring,
    tx: Ring,
    fill: Ring,
    comp: Ring,
    fd: OwnedFd,
    /// This socket's id in the worker (frame ownership tag).
    pub id: u16,
    pub ifindex: u32,
    pub queue: u32,
    /// Frames in the fill or rx ring.
    pub in_fill_rx: u32,
    /// Frames in the tx or completion ring.
    pub in_tx_comp: u32,
    /// How many frames to keep in the fill ring.
    pub fill_target: u32,
    /// Tx descriptors written since the last submit.
    tx_pending: u32,
}

fn setsockopt<T>(fd: RawFd, opt: libc::c_int, val: &T, what: &'static str) -> Result<(), XskError> {
    // SAFETY: `val` is a live value of the type the option expects.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            opt,
            (val as *const T).cast::<c_void>(),
            socklen_of::<T>(),
        )
    };
    if r != 0 {
        return Err(os(what));
    }
    Ok(())
}

impl XskSocket {
    /// Creates a socket on (ifindex, queue) in copy mode with need_wakeup. With
    /// `shared_with` (any bound socket of the same UMEM) it shares that UMEM;
    /// otherwise it registers `region` itself.
    pub fn create(
        region: &UmemRegion,
        shared_with: Option<RawFd>,
        id: u16,
        ifindex: u32,
        queue: u32,
        sizes: RingSizes,
        fill_target: u32,
    ) -> Result<XskSocket, XskError> {
        if usize::from(id) >= MAX_SOCKETS {
            return Err(XskError::TooManySockets);
        }
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(os("socket"));
        }
        // SAFETY: `raw` is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let f = fd.as_raw_fd();
        if shared_with.is_none() {
            setsockopt(
                f,
                libc::XDP_UMEM_REG,
                &region.umem_reg(),
                "UMEM registration",
            )?;
        }
        // Every socket has its own fill and completion rings: each is bound to a
        // different (device, queue), which the kernel requires for sharing a UMEM.
        setsockopt(f, libc::XDP_UMEM_FILL_RING, &sizes.fill, "fill ring")?;
        setsockopt(
            f,
            libc::XDP_UMEM_COMPLETION_RING,
            &sizes.comp,
            "completion ring",
        )?;
        setsockopt(f, libc::XDP_RX_RING, &sizes.rx, "rx ring")?;
        setsockopt(f, libc::XDP_TX_RING, &sizes.tx, "tx ring")?;
        // SAFETY: zero is a valid bit pattern for this plain C struct.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut optlen = socklen_of::<libc::xdp_mmap_offsets>();
        // SAFETY: `off` has `optlen` writable bytes.
        let r = unsafe {
            libc::getsockopt(
                f,
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast::<c_void>(),
                &mut optlen,
            )
        };
        if r != 0 {
            return Err(os("mmap offsets"));
        }
        let desc = std::mem::size_of::<libc::xdp_desc>();
        let rx = Ring::map(
            f,
            &off.rx,
            sizes.rx,
            desc,
            libc::XDP_PGOFF_RX_RING as u64,
            false,
        )?;
        let tx = Ring::map(
            f,
            &off.tx,
            sizes.tx,
            desc,
            libc::XDP_PGOFF_TX_RING as u64,
            true,
        )?;
        let fill = Ring::map(
            f,
            &off.fr,
            sizes.fill,
            8,
            libc::XDP_UMEM_PGOFF_FILL_RING,
            true,
        )?;
        let comp = Ring::map(
            f,
            &off.cr,
            sizes.comp,
            8,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
            false,
        )?;
        let (flags, shared_fd) = match shared_with {
            Some(s) => (libc::XDP_SHARED_UMEM, s as u32),
            None => (libc::XDP_COPY | libc::XDP_USE_NEED_WAKEUP, 0),
        };
        let sxdp = libc::sockaddr_xdp {
            sxdp_family: AF_XDP_FAMILY,
            sxdp_flags: flags,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: shared_fd,
        };
        // SAFETY: `sxdp` is a complete sockaddr_xdp.
        let r = unsafe {
            libc::bind(
                f,
                (&sxdp as *const libc::sockaddr_xdp).cast::<libc::sockaddr>(),
                socklen_of::<libc::sockaddr_xdp>(),
            )
        };
        if r != 0 {
            return Err(os("bind"));
        }
        Ok(XskSocket {
            rx,
            tx,
            fill,
            comp,
            fd,
            id,
            ifindex,
            queue,
            in_fill_rx: 0,
            in_tx_comp: 0,
            fill_target: fill_target.min(sizes.fill),
            tx_pending: 0,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Moves completed tx frames back to the free list. Returns how many.
    #[inline]
    pub fn reap_completions(&mut self, pool: &mut FramePool) -> u32 {
        let (n, idx) = self.comp.cons_peek(self.comp.size);
        for k in 0..n {
            // SAFETY: entry `idx + k` was published by the kernel (peek).
            let addr = unsafe { *self.comp.addr_at(idx.wrapping_add(k)) };
            let base = chunk_base(addr);
            pool.take(base);
            pool.recycle(base);
        }
        if n > 0 {
            self.comp.cons_release(n);
            self.in_tx_comp = self.in_tx_comp.saturating_sub(n);
        }
        n
    }

    /// Frames in the fill ring the kernel has not taken yet.
    #[inline]
    pub fn fill_level(&self) -> u32 {
        self.fill.prod_outstanding()
    }

    /// Entries the fill ring can hold (the most `fill_target` can be).
    #[inline]
    pub fn fill_capacity(&self) -> u32 {
        self.fill.size
    }

    /// Tops the fill ring up to `fill_target` from the free list; wakes the
    /// kernel if it asked for it. Returns how many frames were added.
    #[inline]
    pub fn refill(&mut self, pool: &mut FramePool) -> u32 {
        let want = self.fill_target.saturating_sub(self.in_fill_rx);
        if want == 0 {
            return 0;
        }
        let room = self.fill.prod_free(want).min(want);
        let mut n = 0;
        while n < room {
            let Some(base) = pool.pop_free() else { break };
            pool.give(base, self.id);
            let i = self.fill.prod_next();
            // SAFETY: there is room for this entry (prod_free).
            unsafe { *self.fill.addr_at(i) = base };
            n += 1;
        }
        if n > 0 {
            self.fill.prod_submit();
            self.in_fill_rx += n;
            if self.fill.needs_wakeup() {
                self.wakeup_rx();
            }
        }
        n
    }

    fn wakeup_rx(&self) {
        // SAFETY: a zero-length non-blocking recvfrom on our AF_XDP fd.
        unsafe {
            libc::recvfrom(
                self.fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }

    /// Takes up to `max` received frames: calls `f(base, offset, len)` for each
    /// (the chunk is then in the caller's hands) and releases the rx entries.
    #[inline]
    pub fn receive(
        &mut self,
        pool: &mut FramePool,
        max: u32,
        mut f: impl FnMut(u64, usize, usize),
    ) -> u32 {
        let (n, idx) = self.rx.cons_peek(max);
        for k in 0..n {
            // SAFETY: entry `idx + k` was published by the kernel (peek).
            let d = unsafe { *self.rx.desc_at(idx.wrapping_add(k)) };
            let base = chunk_base(d.addr);
            pool.take(base);
            // Cannot truncate: an offset inside its chunk, below FRAME_SIZE.
            #[allow(clippy::cast_possible_truncation)]
            let off = (d.addr - base) as usize;
            f(base, off, d.len as usize);
        }
        if n > 0 {
            self.rx.cons_release(n);
            self.in_fill_rx = self.in_fill_rx.saturating_sub(n);
        }
        n
    }

    /// Queues chunk `base` (in the caller's hands) for transmission of
    /// `[off, off+len)`. False (the caller keeps the chunk) if the tx ring is full.
    #[inline]
    pub fn queue_tx(&mut self, pool: &mut FramePool, base: u64, off: usize, len: usize) -> bool {
        if self.tx.prod_free(1) == 0 {
            return false;
        }
        pool.give(base, self.id | OWNER_TX);
        let i = self.tx.prod_next();
        // SAFETY: there is room for this entry (prod_free).
        unsafe {
            *self.tx.desc_at(i) = libc::xdp_desc {
                addr: base + off as u64,
                // Saturated, the kernel refuses the descriptor (counted in
                // `tx_invalid_descs`) rather than send a truncated length.
                len: u32::try_from(len).unwrap_or(u32::MAX),
                options: 0,
            };
        }
        self.tx_pending += 1;
        self.in_tx_comp += 1;
        true
    }

    /// Publishes queued tx descriptors and kicks the kernel (copy mode sends
    /// only inside sendto, at most a small budget per call). Returns the number
    /// of sendto calls made.
    #[inline]
    pub fn flush_tx(&mut self) -> u32 {
        if self.tx_pending > 0 {
            self.tx.prod_submit();
            self.tx_pending = 0;
        }
        let mut kicks = 0;
        // Kick while the kernel has unsent descriptors, bounded per batch.
        while kicks < 8 && self.tx.prod_outstanding() > 0 && self.tx.needs_wakeup() {
            // SAFETY: a zero-length non-blocking sendto on our AF_XDP fd.
            let r = unsafe {
                libc::sendto(
                    self.fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            kicks += 1;
            if r < 0 {
                let e = io::Error::last_os_error().raw_os_error().unwrap_or(0);
                // EAGAIN: budget used up or completion ring full; EBUSY/ENOBUFS:
                // transient. Anything else (ENETDOWN, ENXIO): stop kicking now.
                if e != libc::EAGAIN {
                    break;
                }
            }
        }
        kicks
    }

    /// Tx descriptors the kernel has not consumed yet.
    pub fn tx_unsent(&self) -> u32 {
        self.tx.prod_outstanding()
    }

    /// The kernel's drop counters for this socket.
    pub fn stats(&self) -> XskStats {
        // SAFETY: zero is a valid bit pattern for this plain C struct.
        let mut s: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = socklen_of::<libc::xdp_statistics>();
        // SAFETY: `s` has `len` writable bytes.
        let r = unsafe {
            libc::getsockopt(
                self.fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&mut s as *mut libc::xdp_statistics).cast::<c_void>(),
                &mut len,
            )
        };
        if r != 0 {
            return XskStats::default();
        }
        XskStats {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_conserves_frames() {
        let mut p = FramePool::new(8);
        let a = p.account(&[]);
        assert!(a.balanced());
        assert_eq!(a.free, 8);
        let b = p.pop_free().unwrap();
        p.give(b, 3);
        let a = p.account(&[(3, 1, 0)]);
        assert!(a.balanced(), "{a:?}");
        assert_eq!(a.fill_rx, 1);
        // rx: back in hand, then queued for tx on socket 5.
        p.take(b);
        assert_eq!(p.account(&[(3, 0, 0)]).in_hand, 1);
        p.give(b, 5 | OWNER_TX);
        let a = p.account(&[(3, 0, 0), (5, 0, 1)]);
        assert!(a.balanced(), "{a:?}");
        // Completion.
        p.take(b);
        p.recycle(b);
        let a = p.account(&[(3, 0, 0), (5, 0, 0)]);
        assert!(a.balanced());
        assert_eq!(a.free, 8);
    }

    #[test]
    fn account_detects_a_leak() {
        let mut p = FramePool::new(4);
        let b = p.pop_free().unwrap();
        p.give(b, 1);
        p.take(b); // received, never recycled or sent
        let a = p.account(&[(1, 0, 0)]);
        assert_eq!(a.in_hand, 1);
        assert_eq!(a.free, 3);
        // Balanced in total, but in_hand != 0 between batches is the leak signal.
        assert!(a.balanced());
        // A counter that disagrees with the table is inconsistent.
        let a = p.account(&[(1, 1, 0)]);
        assert!(!a.consistent);
    }

    #[test]
    fn reclaim_returns_socket_frames() {
        let mut p = FramePool::new(6);
        for _ in 0..3 {
            let b = p.pop_free().unwrap();
            p.give(b, 2);
        }
        let b = p.pop_free().unwrap();
        p.give(b, 2 | OWNER_TX);
        assert_eq!(p.reclaim_socket(2), 4);
        let a = p.account(&[]);
        assert!(a.balanced());
        assert_eq!(a.free, 6);
    }

    #[test]
    fn chunk_base_masks_offsets() {
        assert_eq!(
            chunk_base(3 * FRAME_SIZE as u64 + 256),
            3 * FRAME_SIZE as u64
        );
        assert_eq!(
            chunk_base(3 * FRAME_SIZE as u64 + 206),
            3 * FRAME_SIZE as u64
        );
    }
}
