//! Mempools and [`Mbuf`], the `PacketBuf` over a DPDK `rte_mbuf`: the
//! packet bytes stay where the PMD wrote them; headers are pushed into the
//! mbuf's headroom; the NIC's mark and RSS hash are read from the mbuf's
//! offload flags and hash union exactly as a PMD leaves them.

use super::{rte_errno, strerror, sys, DpdkError};
use fallback::port::PacketBuf;
use std::ffi::CString;
use std::ptr::{self, NonNull};

/// Mbuf flags a PMD sets for a flow mark: FDIR (a rule matched) and FDIR_ID
/// (`hash.fdir.hi` holds the MARK id).
pub const MARK_FLAGS: u64 = sys::RTE_MBUF_F_RX_FDIR | sys::RTE_MBUF_F_RX_FDIR_ID;
/// The flag for a valid `hash.rss`.
pub const RSS_FLAG: u64 = sys::RTE_MBUF_F_RX_RSS_HASH;

/// A pool of packet mbufs (`rte_pktmbuf_pool_create`). Thread-safe; lives
/// until the process exits (EAL cleanup releases its memory), so an mbuf
/// can never outlive its pool.
#[derive(Debug)]
pub struct Mempool {
    ptr: NonNull<sys::rte_mempool>,
    name: String,
    size: u32,
}

// SAFETY: rte_mempool is designed for concurrent use from many threads
// (lock-free ring plus per-lcore caches); the pointer itself never changes.
unsafe impl Send for Mempool {}
// SAFETY: as above; every operation used here is thread-safe in DPDK.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool of `n` mbufs of the default data room (2048 bytes +
    /// 128 headroom) with a per-lcore cache.
    pub fn create(name: &str, n: u32) -> Result<Mempool, DpdkError> {
        let err = |reason: String| DpdkError::Mempool {
            name: name.to_string(),
            n,
            reason,
        };
        if !super::Eal::is_ready() {
            return Err(DpdkError::NoEal);
        }
        let cname = CString::new(name).map_err(|_| err("the name contains a NUL byte".into()))?;
        let cache = 256.min(n / 4);
        // SAFETY: the EAL is initialised; cname is a valid C string DPDK
        // copies; the sizes are plain numbers it checks.
        let mp = unsafe {
            sys::rte_pktmbuf_pool_create(
                cname.as_ptr(),
                n,
                cache,
                0,
                sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
                sys::rte_socket_id() as i32,
            )
        };
        let ptr = NonNull::new(mp).ok_or_else(|| err(strerror(rte_errno())))?;
        Ok(Mempool {
            ptr,
            name: name.to_string(),
            size: n,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Mbufs in the pool.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Free mbufs (`rte_mempool_avail_count`, per-lcore caches included):
    /// equal to [`Mempool::size`] when no mbuf is in use.
    pub fn free_count(&self) -> u32 {
        // SAFETY: the pool is valid for the life of self.
        unsafe { sys::rte_mempool_avail_count(self.ptr.as_ptr()) }
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::rte_mempool {
        self.ptr.as_ptr()
    }

    /// A new empty mbuf, or `None` when the pool is exhausted.
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is valid; the returned mbuf (or null) is ours.
        let m = unsafe { sys::rte_pktmbuf_alloc(self.ptr.as_ptr()) };
        NonNull::new(m).map(|m| Mbuf { m: m.as_ptr() })
    }

    /// An mbuf holding a copy of `bytes`; `None` when the pool is exhausted
    /// or the frame does not fit the data room.
    pub fn mbuf_from(&self, bytes: &[u8]) -> Option<Mbuf> {
        let mut m = self.alloc()?;
        m.append(bytes).then_some(m)
    }
}

/// A packet in a DPDK mbuf, owned: dropping it returns it (every segment
/// of a chain) to its pool; a transmit hands it to the PMD.
///
/// Multi-segment mbufs are linearised on receive. One that cannot be (its
/// bytes do not fit the first segment's buffer) stays a chain, intact:
/// [`PacketBuf::is_contiguous`] is false and the datapath drops it,
/// counted. On a chain, [`PacketBuf::data`] is the first segment only;
/// `append` and `trim` refuse (they would cut or extend the middle of the
/// packet), `Clone` copies every segment, and ports refuse to transmit it.
///
/// `Clone` copies the packet into a new mbuf from the same pool. When the
/// pool is exhausted the copy is an *empty* `Mbuf` (no buffer, length 0):
/// `Clone` cannot fail, and ports refuse empty mbufs on transmit, so the
/// copy is dropped and counted there instead of panicking.
pub struct Mbuf {
    /// Null only for a failed copy.
    m: *mut sys::rte_mbuf,
}

// SAFETY: an Mbuf is the sole owner of its rte_mbuf (like a Box); moving
// that ownership to another thread is how DPDK pipelines work, and its
// pool is thread-safe.
unsafe impl Send for Mbuf {}

impl std::fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mbuf")
            .field("len", &self.len())
            .field("mark", &self.mark())
            .field("rss_hash", &self.rss_hash())
            .finish()
    }
}

impl Mbuf {
    /// Takes ownership of an mbuf received from DPDK.
    ///
    /// # Safety
    /// `m` is null or a valid mbuf that nothing else owns or frees.
    #[inline]
    pub(crate) unsafe fn from_raw(m: *mut sys::rte_mbuf) -> Self {
        let mut mbuf = Mbuf { m };
        // A chain that stays one is dropped by the datapath (is_contiguous).
        let _ = mbuf.linearize();
        mbuf
    }

    /// Appends `tail` (its every segment) to this packet as further
    /// segments (`rte_pktmbuf_chain`). On failure (an empty mbuf on either
    /// side, or more segments than an mbuf chain holds) nothing changes and
    /// `tail` comes back.
    pub fn chain(&mut self, tail: Mbuf) -> Result<(), Mbuf> {
        if self.m.is_null() || tail.m.is_null() {
            return Err(tail);
        }
        // SAFETY: both mbufs are valid and exclusively ours; on success
        // the head's chain owns the tail's segments (freed with the head),
        // so the tail's ownership is given up; on failure (-EOVERFLOW)
        // nothing was changed and the tail is still ours.
        let ret = unsafe { sys::rte_pktmbuf_chain(self.m, tail.m) };
        if ret != 0 {
            return Err(tail);
        }
        let _ = tail.into_raw();
        Ok(())
    }

    /// Segments in the packet (`nb_segs`); 0 for an empty mbuf.
    pub fn segments(&self) -> u16 {
        if self.m.is_null() {
            return 0;
        }
        // SAFETY: m is valid and owned by self.
        unsafe { (*self.m).nb_segs }
    }

    /// The whole packet's length over every segment (`pkt_len`); equal to
    /// `len()` for a single segment.
    pub fn pkt_len(&self) -> usize {
        if self.m.is_null() {
            return 0;
        }
        // SAFETY: m is valid and owned by self.
        unsafe { (*self.m).pkt_len as usize }
    }

    /// Every byte of the packet, all segments in order (a copy).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pkt_len());
        let mut seg = self.m;
        // SAFETY: m is valid and owned by self; each segment's `next` is
        // null or the next valid segment of the chain, which self owns
        // too; data_off/data_len describe initialised bytes of each
        // segment's own buffer.
        unsafe {
            while !seg.is_null() {
                let s = &*seg;
                out.extend_from_slice(std::slice::from_raw_parts(
                    s.buf_addr.cast::<u8>().add(usize::from(s.data_off)),
                    usize::from(s.data_len),
                ));
                seg = s.next;
            }
        }
        out
    }

    /// Gives up ownership (to a PMD's tx burst or a ring).
    #[inline]
    pub(crate) fn into_raw(self) -> *mut sys::rte_mbuf {
        let m = self.m;
        std::mem::forget(self);
        m
    }

    #[inline]
    pub(crate) fn as_ptr(&self) -> *mut sys::rte_mbuf {
        self.m
    }

    /// False for the empty result of a failed copy (see [`Mbuf`]).
    #[inline]
    pub fn is_valid(&self) -> bool {
        !self.m.is_null()
    }

    /// The DPDK port id the mbuf arrived on.
    pub fn port(&self) -> Option<u16> {
        // SAFETY: m is valid when non-null and owned by self.
        self.is_valid().then(|| unsafe { (*self.m).port })
    }

    pub(crate) fn set_port(&mut self, port: u16) {
        if !self.m.is_null() {
            // SAFETY: m is valid and exclusively owned.
            unsafe { (*self.m).port = port };
        }
    }

    /// The raw offload flags (`ol_flags`).
    pub fn ol_flags(&self) -> u64 {
        if self.m.is_null() {
            return 0;
        }
        // SAFETY: m is valid and owned by self.
        unsafe { (*self.m).ol_flags }
    }

    /// Free bytes after the data; 0 for a chain (appending to the first
    /// segment would put bytes in the middle of the packet).
    pub fn tailroom(&self) -> usize {
        if self.m.is_null() || !self.is_contiguous() {
            return 0;
        }
        // SAFETY: m is valid; the fields describe its single buffer.
        unsafe {
            let m = &*self.m;
            usize::from(m.buf_len) - usize::from(m.data_off) - usize::from(m.data_len)
        }
    }

    /// Appends `bytes` at the end; false (no change) when they do not fit.
    pub fn append(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() > self.tailroom() {
            return false;
        }
        // SAFETY: m is valid (tailroom is 0 otherwise, and an empty append
        // of a null mbuf returns before touching it only if bytes is
        // empty: checked here); the destination range lies inside the
        // mbuf's buffer (tailroom checked) and does not overlap `bytes`.
        unsafe {
            if self.m.is_null() {
                return bytes.is_empty();
            }
            let m = &mut *self.m;
            let dst = m
                .buf_addr
                .cast::<u8>()
                .add(usize::from(m.data_off) + usize::from(m.data_len));
            ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
            m.data_len += bytes.len() as u16;
            m.pkt_len += bytes.len() as u32;
        }
        true
    }

    /// Sets the mark and RSS fields exactly as a NIC's PMD does: for a
    /// mark, `RTE_MBUF_F_RX_FDIR | RTE_MBUF_F_RX_FDIR_ID` and `hash.fdir.hi`;
    /// for a hash, `RTE_MBUF_F_RX_RSS_HASH` and `hash.rss` (the low word
    /// of the same union, so both coexist).
    pub fn set_rx_metadata(&mut self, mark: Option<u32>, rss: Option<u32>) {
        self.set_mark(mark);
        self.set_rss_hash(rss);
    }

    /// Multi-segment mbufs become one segment (`rte_pktmbuf_linearize`).
    /// If that is impossible (the bytes do not fit the first segment's
    /// buffer) the chain stays as it is, whole: `is_contiguous()` is then
    /// false and the datapath drops the packet, counted, instead of
    /// forwarding a truncated frame whose IP length no longer matches.
    /// Returns whether the packet is one segment now.
    pub fn linearize(&mut self) -> bool {
        if self.m.is_null() {
            return true;
        }
        // SAFETY: m is a valid mbuf owned by self, and so is its chain.
        // rte_pktmbuf_linearize first checks that the first segment's
        // tailroom holds the later segments' bytes; if not it returns -1
        // having changed nothing; if so it copies them in, frees the
        // later segments and fixes nb_segs/data_len/next.
        unsafe {
            if (*self.m).nb_segs <= 1 {
                return true;
            }
            sys::rte_pktmbuf_linearize(self.m) == 0
        }
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        if !self.m.is_null() {
            // SAFETY: self owns the valid mbuf; it is freed once.
            unsafe { sys::rte_pktmbuf_free(self.m) };
        }
    }
}

impl Clone for Mbuf {
    fn clone(&self) -> Self {
        if self.m.is_null() {
            return Mbuf { m: ptr::null_mut() };
        }
        if !self.is_contiguous() {
            // SAFETY: self.m is a valid chain we own; rte_pktmbuf_copy
            // reads every segment and returns a new chain from the same
            // pool (or null when the pool is exhausted) that is ours; only
            // the mark and RSS flags are kept, as below.
            return unsafe {
                let src = &*self.m;
                let n = sys::rte_pktmbuf_copy(self.m, src.pool, 0, u32::MAX);
                if !n.is_null() {
                    (*n).ol_flags = src.ol_flags & (MARK_FLAGS | RSS_FLAG);
                    (*n).__bindgen_anon_2 = src.__bindgen_anon_2;
                }
                Mbuf { m: n }
            };
        }
        // SAFETY: self.m is valid; its pool pointer is the pool it came
        // from, alive for the process. The new mbuf is exclusively ours;
        // the copy stays inside both buffers: the same pool gives the same
        // buffer size and the data is placed at the same offset.
        unsafe {
            let src = &*self.m;
            let n = sys::rte_pktmbuf_alloc(src.pool);
            if n.is_null() {
                return Mbuf { m: ptr::null_mut() };
            }
            let dst = &mut *n;
            if usize::from(dst.buf_len) < usize::from(src.data_off) + usize::from(src.data_len) {
                sys::rte_pktmbuf_free(n);
                return Mbuf { m: ptr::null_mut() };
            }
            dst.data_off = src.data_off;
            ptr::copy_nonoverlapping(
                src.buf_addr.cast::<u8>().add(usize::from(src.data_off)),
                dst.buf_addr.cast::<u8>().add(usize::from(dst.data_off)),
                usize::from(src.data_len),
            );
            dst.data_len = src.data_len;
            dst.pkt_len = u32::from(src.data_len);
            dst.port = src.port;
            dst.ol_flags = src.ol_flags & (MARK_FLAGS | RSS_FLAG);
            dst.__bindgen_anon_2 = src.__bindgen_anon_2;
            Mbuf { m: n }
        }
    }
}

impl PacketBuf for Mbuf {
    #[inline]
    fn data(&self) -> &[u8] {
        if self.m.is_null() {
            return &[];
        }
        // SAFETY: m is valid and owned by self; buf_addr + data_off is the
        // start of data_len initialised bytes inside the buffer (as
        // rte_pktmbuf_mtod); the borrow of self keeps the mbuf alive.
        unsafe {
            let m = &*self.m;
            std::slice::from_raw_parts(
                m.buf_addr.cast::<u8>().add(usize::from(m.data_off)),
                usize::from(m.data_len),
            )
        }
    }

    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        if self.m.is_null() {
            return &mut [];
        }
        // SAFETY: as `data`, and the mutable borrow of self makes the
        // access exclusive (the mbuf has one owner; refcnt 1).
        unsafe {
            let m = &mut *self.m;
            std::slice::from_raw_parts_mut(
                m.buf_addr.cast::<u8>().add(usize::from(m.data_off)),
                usize::from(m.data_len),
            )
        }
    }

    #[inline]
    fn len(&self) -> usize {
        if self.m.is_null() {
            return 0;
        }
        // SAFETY: m is valid and owned by self.
        usize::from(unsafe { (*self.m).data_len })
    }

    #[inline]
    fn headroom(&self) -> usize {
        if self.m.is_null() {
            return 0;
        }
        // SAFETY: m is valid and owned by self.
        usize::from(unsafe { (*self.m).data_off })
    }

    /// `rte_pktmbuf_prepend`.
    #[inline]
    fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.headroom() {
            return None;
        }
        // SAFETY: m is valid (headroom is 0 for null, and n = 0 on a null
        // mbuf is handled by the check below); n <= data_off so the new
        // start stays inside the buffer.
        unsafe {
            if self.m.is_null() {
                return Some(&mut []);
            }
            let m = &mut *self.m;
            m.data_off -= n as u16;
            m.data_len += n as u16;
            m.pkt_len += n as u32;
            Some(std::slice::from_raw_parts_mut(
                m.buf_addr.cast::<u8>().add(usize::from(m.data_off)),
                n,
            ))
        }
    }

    /// `rte_pktmbuf_adj`.
    #[inline]
    fn adj(&mut self, n: usize) -> bool {
        if n > self.len() {
            return false;
        }
        if n == 0 {
            return true;
        }
        // SAFETY: m is valid (len > 0); n <= data_len.
        unsafe {
            let m = &mut *self.m;
            m.data_off += n as u16;
            m.data_len -= n as u16;
            m.pkt_len -= n as u32;
        }
        true
    }

    /// `rte_pktmbuf_trim` on a single segment; a chain refuses (its end
    /// is in another segment).
    #[inline]
    fn trim(&mut self, n: usize) -> bool {
        if n > self.len() || !self.is_contiguous() {
            return false;
        }
        if n == 0 {
            return true;
        }
        // SAFETY: m is valid (len > 0); n <= data_len.
        unsafe {
            let m = &mut *self.m;
            m.data_len -= n as u16;
            m.pkt_len -= n as u32;
        }
        true
    }

    /// `RTE_MBUF_F_RX_FDIR_ID` set: the MARK id in `hash.fdir.hi`.
    #[inline]
    fn mark(&self) -> Option<u32> {
        if self.m.is_null() {
            return None;
        }
        // SAFETY: m is valid; the hash union is plain integers, and
        // fdir.hi is what the PMD wrote when it set FDIR_ID.
        unsafe {
            let m = &*self.m;
            (m.ol_flags & sys::RTE_MBUF_F_RX_FDIR_ID != 0)
                .then_some(m.__bindgen_anon_2.hash.fdir.hi)
        }
    }

    #[inline]
    fn set_mark(&mut self, mark: Option<u32>) {
        if self.m.is_null() {
            return;
        }
        // SAFETY: m is valid and exclusively owned; writing integers into
        // the hash union and the flags.
        unsafe {
            let m = &mut *self.m;
            match mark {
                Some(id) => {
                    m.ol_flags |= MARK_FLAGS;
                    m.__bindgen_anon_2.hash.fdir.hi = id;
                }
                None => m.ol_flags &= !MARK_FLAGS,
            }
        }
    }

    /// `RTE_MBUF_F_RX_RSS_HASH` set: `hash.rss`.
    #[inline]
    fn rss_hash(&self) -> Option<u32> {
        if self.m.is_null() {
            return None;
        }
        // SAFETY: m is valid; hash.rss is a plain integer.
        unsafe {
            let m = &*self.m;
            (m.ol_flags & RSS_FLAG != 0).then_some(m.__bindgen_anon_2.hash.rss)
        }
    }

    #[inline]
    fn set_rss_hash(&mut self, hash: Option<u32>) {
        if self.m.is_null() {
            return;
        }
        // SAFETY: m is valid and exclusively owned.
        unsafe {
            let m = &mut *self.m;
            match hash {
                Some(h) => {
                    m.ol_flags |= RSS_FLAG;
                    m.__bindgen_anon_2.hash.rss = h;
                }
                None => m.ol_flags &= !RSS_FLAG,
            }
        }
    }

    /// One segment (`nb_segs <= 1`): a chain left by a failed
    /// linearisation is not, and the datapath drops it.
    #[inline]
    fn is_contiguous(&self) -> bool {
        if self.m.is_null() {
            return true;
        }
        // SAFETY: m is valid and owned by self.
        unsafe { (*self.m).nb_segs <= 1 }
    }
}
