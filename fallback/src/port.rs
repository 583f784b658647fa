//! The packet buffer abstraction and the `Port` seam.
//!
//! [`PacketBuf`] is what the datapath needs of a packet: its bytes, headroom
//! to push headers into, and the metadata the NIC attached (flow mark, RSS
//! hash). DPDK mbufs implement it without copying; [`HeapPacket`] is the
//! plain-memory version for the testbed and tests.
//!
//! [`Port`] is implemented by the emulated NIC and VM ports (testbed) and by
//! DPDK ethdev ports. Packets move in [`Burst`]s of at most [`BURST`].
//! [`PortStats`] keeps the books of DESIGN §6.

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use std::marker::PhantomData;

/// Packets per rx/tx burst, as DPDK's customary 32.
pub const BURST: usize = 32;

/// Bytes reserved in front of the packet data for pushed headers, as
/// `RTE_PKTMBUF_HEADROOM`.
pub const HEADROOM: usize = 128;

/// Data room of a [`HeapPacket`] by default, as `RTE_MBUF_DEFAULT_DATAROOM`.
pub const DEFAULT_DATA_ROOM: usize = 2048;

/// A packet in a buffer with headroom and NIC metadata.
pub trait PacketBuf {
    /// The packet bytes.
    fn data(&self) -> &[u8];
    /// The packet bytes, writable.
    fn data_mut(&mut self) -> &mut [u8];
    /// Packet length in bytes.
    fn len(&self) -> usize {
        self.data().len()
    }
    /// True for a zero-length packet.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Free bytes in front of the data.
    fn headroom(&self) -> usize;
    /// Grows the packet by `n` bytes at the front, taken from the headroom,
    /// and returns them (contents unspecified). `None`, and no change, when
    /// the headroom is smaller than `n`.
    fn prepend(&mut self, n: usize) -> Option<&mut [u8]>;
    /// Drops `n` bytes from the front (they become headroom). False, and no
    /// change, when the packet is shorter than `n`.
    fn adj(&mut self, n: usize) -> bool;
    /// Drops `n` bytes from the end. False, and no change, when the packet
    /// is shorter than `n`.
    fn trim(&mut self, n: usize) -> bool;
    /// The flow mark the NIC reported (`RTE_MBUF_F_RX_FDIR_ID`,
    /// `hash.fdir.hi`).
    fn mark(&self) -> Option<u32>;
    fn set_mark(&mut self, mark: Option<u32>);
    /// The RSS hash the NIC computed (`RTE_MBUF_F_RX_RSS_HASH`, `hash.rss`).
    fn rss_hash(&self) -> Option<u32>;
    fn set_rss_hash(&mut self, hash: Option<u32>);
    /// False for a packet whose bytes are not all in [`PacketBuf::data`]
    /// (a chained DPDK mbuf that could not be linearized): forwarding it
    /// would send a truncated frame with stale length fields, so the
    /// datapath drops it as [`RxDropReason::NotLinear`].
    #[inline]
    fn is_contiguous(&self) -> bool {
        true
    }
}

/// `set_data` was given more bytes than the buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("packet of {len} bytes does not fit a buffer with {room} bytes of data room")]
pub struct TooBig {
    pub len: usize,
    pub room: usize,
}

/// A packet in one heap buffer of fixed size with [`HEADROOM`] bytes in
/// front. Allocated once and reused (`reset`, `set_data`, `clone_from`) so
/// that pools of them avoid per-packet allocation.
#[derive(Debug)]
pub struct HeapPacket {
    buf: Box<[u8]>,
    /// Start of the data in `buf`.
    start: usize,
    len: usize,
    mark: Option<u32>,
    rss_hash: Option<u32>,
}

impl HeapPacket {
    /// An empty packet with [`DEFAULT_DATA_ROOM`] bytes of data room.
    pub fn new() -> Self {
        Self::with_data_room(DEFAULT_DATA_ROOM)
    }

    /// An empty packet with `room` bytes of data room.
    pub fn with_data_room(room: usize) -> Self {
        HeapPacket {
            buf: vec![0; HEADROOM + room].into_boxed_slice(),
            start: HEADROOM,
            len: 0,
            mark: None,
            rss_hash: None,
        }
    }

    /// A packet holding `bytes`, with at least the default data room.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut p = Self::with_data_room(bytes.len().max(DEFAULT_DATA_ROOM));
        p.buf[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(bytes);
        p.len = bytes.len();
        p
    }

    /// Bytes of data the buffer holds after a `reset`.
    pub fn data_room(&self) -> usize {
        self.buf.len() - HEADROOM
    }

    /// Free bytes after the data.
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.start - self.len
    }

    /// Empties the packet: data at the default headroom, no metadata.
    pub fn reset(&mut self) {
        self.start = HEADROOM;
        self.len = 0;
        self.mark = None;
        self.rss_hash = None;
    }

    /// Resets the packet and copies `bytes` in.
    pub fn set_data(&mut self, bytes: &[u8]) -> Result<(), TooBig> {
        let room = self.data_room();
        let dst = self
            .buf
            .get_mut(HEADROOM..HEADROOM + bytes.len())
            .ok_or(TooBig {
                len: bytes.len(),
                room,
            })?;
        dst.copy_from_slice(bytes);
        self.reset();
        self.len = bytes.len();
        Ok(())
    }
}

impl Default for HeapPacket {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for HeapPacket {
    fn clone(&self) -> Self {
        HeapPacket {
            buf: self.buf.clone(),
            ..*self
        }
    }

    /// Reuses `self`'s buffer when it has the same size (no allocation):
    /// how a pooled packet takes a copy for an extra output.
    fn clone_from(&mut self, source: &Self) {
        if self.buf.len() == source.buf.len() {
            let range = source.start..source.start + source.len;
            self.buf[range.clone()].copy_from_slice(&source.buf[range]);
            self.start = source.start;
            self.len = source.len;
            self.mark = source.mark;
            self.rss_hash = source.rss_hash;
        } else {
            *self = source.clone();
        }
    }
}

impl PacketBuf for HeapPacket {
    #[inline]
    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }

    #[inline]
    fn headroom(&self) -> usize {
        self.start
    }

    #[inline]
    fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        let start = self.start.checked_sub(n)?;
        self.start = start;
        self.len += n;
        Some(&mut self.buf[start..start + n])
    }

    #[inline]
    fn adj(&mut self, n: usize) -> bool {
        if n > self.len {
            return false;
        }
        self.start += n;
        self.len -= n;
        true
    }

    #[inline]
    fn trim(&mut self, n: usize) -> bool {
        if n > self.len {
            return false;
        }
        self.len -= n;
        true
    }

    #[inline]
    fn mark(&self) -> Option<u32> {
        self.mark
    }

    #[inline]
    fn set_mark(&mut self, mark: Option<u32>) {
        self.mark = mark;
    }

    #[inline]
    fn rss_hash(&self) -> Option<u32> {
        self.rss_hash
    }

    #[inline]
    fn set_rss_hash(&mut self, hash: Option<u32>) {
        self.rss_hash = hash;
    }
}

/// Where a datapath takes the buffer for a packet's extra copy (every
/// output but the last of a multi-output action list): a packet pool, so
/// that copying costs no allocation. `None` when none is free; the copy
/// then falls back to `Clone`. (DPDK mbufs need none: their `Clone` takes
/// from the mempool.)
pub trait BufferSource<B>: Send {
    fn take(&mut self) -> Option<B>;
}

/// Up to [`BURST`] packets, owned.
///
/// A `Vec` whose capacity is reserved once and never exceeded: a burst kept
/// by the PMD across polls costs no allocation per burst or per packet, and
/// it needs no unchecked code (unlike an array-vec of `MaybeUninit`). Packets are
/// moved, not borrowed, so a buffer's owner is always clear: a DPDK mbuf
/// returns to its pool when dropped, and packets a port refused on transmit
/// stay in the burst for the caller to retry or drop with a reason.
#[derive(Debug)]
pub struct Burst<P> {
    pkts: Vec<P>,
}

impl<P> Burst<P> {
    /// An empty burst (allocates its [`BURST`] slots once).
    pub fn new() -> Self {
        Burst {
            pkts: Vec::with_capacity(BURST),
        }
    }

    /// A burst with no slots (no allocation): a placeholder while a burst
    /// is lent out, e.g. `std::mem::replace(&mut own, Burst::unallocated())`
    /// (`std::mem::take` would allocate a fresh burst every time).
    pub const fn unallocated() -> Self {
        Burst { pkts: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.pkts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pkts.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.pkts.len() >= BURST
    }

    /// Free slots.
    pub fn room(&self) -> usize {
        BURST.saturating_sub(self.pkts.len())
    }

    /// Appends a packet; gives it back when the burst is full.
    pub fn push(&mut self, pkt: P) -> Result<(), P> {
        if self.is_full() {
            return Err(pkt);
        }
        self.pkts.push(pkt);
        Ok(())
    }

    /// Removes the last packet.
    pub fn pop(&mut self) -> Option<P> {
        self.pkts.pop()
    }

    pub fn as_slice(&self) -> &[P] {
        &self.pkts
    }

    pub fn as_mut_slice(&mut self) -> &mut [P] {
        &mut self.pkts
    }

    pub fn iter(&self) -> std::slice::Iter<'_, P> {
        self.pkts.iter()
    }

    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, P> {
        self.pkts.iter_mut()
    }

    /// Takes the first `n` packets (all of them if fewer), in order; the
    /// rest move to the front. How a port takes the packets it accepted.
    pub fn drain_front(&mut self, n: usize) -> std::vec::Drain<'_, P> {
        let n = n.min(self.pkts.len());
        self.pkts.drain(..n)
    }

    /// Takes every packet, in order.
    pub fn drain(&mut self) -> std::vec::Drain<'_, P> {
        self.pkts.drain(..)
    }

    /// Drops every packet.
    pub fn clear(&mut self) {
        self.pkts.clear();
    }

    /// Keeps the packets `keep` says yes to, in order.
    pub fn retain(&mut self, keep: impl FnMut(&P) -> bool) {
        self.pkts.retain(keep);
    }
}

impl<P> Default for Burst<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a, P> IntoIterator for &'a Burst<P> {
    type Item = &'a P;
    type IntoIter = std::slice::Iter<'a, P>;
    fn into_iter(self) -> Self::IntoIter {
        self.pkts.iter()
    }
}

/// A network port: rx and tx queues moving bursts of packets.
///
/// The burst calls take `&self`: as with `rte_eth_rx_burst`, different
/// queues of one port are used by different PMD threads at the same time,
/// and the fast path takes no lock, so a port is shared (`Sync`) and each
/// queue is used by one thread at a time (the caller's contract: the PMD
/// that owns the queue). Implementations keep per-queue state accordingly.
pub trait Port: Send + Sync {
    /// Every port of a switch uses the same buffer type (all mbufs, or all
    /// testbed buffers), so that packets move between ports without copies.
    type Buf: PacketBuf + Send;

    fn name(&self) -> &str;
    fn n_rxq(&self) -> u16;
    fn n_txq(&self) -> u16;

    /// The largest L3 packet the port transmits (the Ethernet header and
    /// VLAN tags come on top); larger ones are the caller's to drop as
    /// [`TxDropReason::TooBig`].
    fn mtu(&self) -> usize {
        1500
    }

    /// Receives up to `out.room()` packets from rx `queue` into `out`;
    /// returns how many. An unknown queue receives nothing.
    fn rx_burst(&self, queue: u16, out: &mut Burst<Self::Buf>) -> usize;

    /// Transmits packets from the front of `pkts` on tx `queue` and returns
    /// how many the port accepted; those are removed from `pkts` (the port
    /// owns them now). The rest stay in `pkts`, in order: the caller retries
    /// them or drops them, counting a [`TxDropReason`]. A port may pass over
    /// packets it can never send (the DPDK port: failed copies, chained
    /// mbufs) and send later ones; what it passed over stays.
    fn tx_burst(&self, queue: u16, pkts: &mut Burst<Self::Buf>) -> usize;

    /// True while the port is stopped (e.g. its device is being reset): rx
    /// bursts receive nothing and tx bursts accept nothing; the caller
    /// counts what was refused as [`TxDropReason::PortDown`].
    #[inline]
    fn is_down(&self) -> bool {
        false
    }

    /// A buffer of this port's kind holding a copy of `frame`, for frames
    /// the control side sends (OpenFlow PACKET_OUT): `None` when the port
    /// cannot make one (no buffer free, or a port without the means), and
    /// the frame is dropped as [`TxDropReason::NoBuffer`].
    fn frame_buf(&self, _frame: &[u8]) -> Option<Self::Buf> {
        None
    }

    /// The counters the port keeps itself (e.g. packets it received and
    /// sent). The datapath keeps the rest (why packets were dropped) in its
    /// own [`PortStats`] per PMD; [`PortStats::merge`] adds them up.
    fn stats(&self) -> PortStats;
}

/// A reason for dropping a packet, usable as a counter index.
pub trait DropReason: Copy + 'static {
    /// Every reason, in index order.
    const ALL: &'static [Self];
    fn index(self) -> usize;
    /// The name in JSON and in the CLI (snake_case).
    fn name(self) -> &'static str;
}

/// Why a received packet was not forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RxDropReason {
    /// The flow's actions are empty (`drop`).
    DropAction,
    /// No OpenFlow rule matched.
    NoMatch,
    /// The packet did not parse and the datapath refused it.
    ParseError,
    /// The per-burst upcall budget was spent.
    UpcallLimit,
    /// The translation failed (e.g. resubmit deeper than 64).
    XlateError,
    /// The port is being removed.
    PortDown,
    /// A multi-segment packet that could not be made contiguous (no room
    /// for it in its first segment's buffer).
    NotLinear,
    /// The port is configured not to receive (OpenFlow `OFPPC_NO_RECV`).
    NoRecv,
    /// An OpenFlow meter's band dropped it before any output.
    Meter,
}

impl DropReason for RxDropReason {
    const ALL: &'static [Self] = &[
        RxDropReason::DropAction,
        RxDropReason::NoMatch,
        RxDropReason::ParseError,
        RxDropReason::UpcallLimit,
        RxDropReason::XlateError,
        RxDropReason::PortDown,
        RxDropReason::NotLinear,
        RxDropReason::NoRecv,
        RxDropReason::Meter,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            RxDropReason::DropAction => "drop_action",
            RxDropReason::NoMatch => "no_match",
            RxDropReason::ParseError => "parse_error",
            RxDropReason::UpcallLimit => "upcall_limit",
            RxDropReason::XlateError => "xlate_error",
            RxDropReason::PortDown => "port_down",
            RxDropReason::NotLinear => "not_linearizable",
            RxDropReason::NoRecv => "no_recv",
            RxDropReason::Meter => "meter",
        }
    }
}

/// Why a packet sent to a port was not transmitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxDropReason {
    /// The tx queue was full.
    RingFull,
    /// Larger than the port's MTU.
    TooBig,
    /// The port is down or being removed.
    PortDown,
    /// A header push found no headroom.
    NoHeadroom,
    /// The output port does not exist.
    NoSuchPort,
    /// A frame from the control side found no buffer on the port.
    NoBuffer,
    /// The port is configured not to forward (OpenFlow `OFPPC_NO_FWD`).
    NoForward,
}

impl DropReason for TxDropReason {
    const ALL: &'static [Self] = &[
        TxDropReason::RingFull,
        TxDropReason::TooBig,
        TxDropReason::PortDown,
        TxDropReason::NoHeadroom,
        TxDropReason::NoSuchPort,
        TxDropReason::NoBuffer,
        TxDropReason::NoForward,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            TxDropReason::RingFull => "ring_full",
            TxDropReason::TooBig => "too_big",
            TxDropReason::PortDown => "port_down",
            TxDropReason::NoHeadroom => "no_headroom",
            TxDropReason::NoSuchPort => "no_such_port",
            TxDropReason::NoBuffer => "no_buffer",
            TxDropReason::NoForward => "no_fwd",
        }
    }
}

/// Room for the reasons of either kind.
const MAX_REASONS: usize = 10;

/// Drop counters indexed by reason: an array, no hashing on the hot path.
/// Serialises as an object `{reason: count}` with every reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropCounts<R> {
    counts: [u64; MAX_REASONS],
    reason: PhantomData<R>,
}

impl<R: DropReason> DropCounts<R> {
    pub const ZERO: Self = DropCounts {
        counts: [0; MAX_REASONS],
        reason: PhantomData,
    };

    #[inline]
    pub fn add(&mut self, reason: R, n: u64) {
        if let Some(c) = self.counts.get_mut(reason.index()) {
            *c += n;
        }
    }

    pub fn get(&self, reason: R) -> u64 {
        self.counts.get(reason.index()).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(reason, count)` for every reason.
    pub fn iter(&self) -> impl Iterator<Item = (R, u64)> + '_ {
        R::ALL.iter().map(|r| (*r, self.get(*r)))
    }

    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
    }
}

impl<R: DropReason> Default for DropCounts<R> {
    fn default() -> Self {
        Self::ZERO
    }
}

impl<R: DropReason> Serialize for DropCounts<R> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(R::ALL.len()))?;
        for (reason, n) in self.iter() {
            map.serialize_entry(reason.name(), &n)?;
        }
        map.end()
    }
}

/// A port's books (DESIGN §6): `rx = forwarded + Σ rx_dropped` and
/// `tx_attempted = tx + Σ tx_dropped`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PortStats {
    pub rx: u64,
    /// Bytes of the received packets.
    pub rx_bytes: u64,
    /// Received packets sent on to at least one output or the controller.
    pub forwarded: u64,
    pub rx_dropped: DropCounts<RxDropReason>,
    /// Packets the datapath tried to send on this port (copies included).
    pub tx_attempted: u64,
    pub tx: u64,
    /// Bytes of the transmitted packets.
    pub tx_bytes: u64,
    pub tx_dropped: DropCounts<TxDropReason>,
}

/// A broken accounting identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountingError {
    #[error("receive side does not add up: rx {rx} != forwarded {forwarded} + dropped {dropped}")]
    Rx {
        rx: u64,
        forwarded: u64,
        dropped: u64,
    },
    #[error(
        "transmit side does not add up: tx_attempted {attempted} != tx {tx} + dropped {dropped}"
    )]
    Tx {
        attempted: u64,
        tx: u64,
        dropped: u64,
    },
}

impl PortStats {
    #[inline]
    pub fn count_rx_drop(&mut self, reason: RxDropReason, n: u64) {
        self.rx_dropped.add(reason, n);
    }

    #[inline]
    pub fn count_tx_drop(&mut self, reason: TxDropReason, n: u64) {
        self.tx_dropped.add(reason, n);
    }

    /// Adds another set of counters (another PMD's, or the port's own).
    pub fn merge(&mut self, other: &PortStats) {
        self.rx += other.rx;
        self.rx_bytes += other.rx_bytes;
        self.forwarded += other.forwarded;
        self.rx_dropped.merge(&other.rx_dropped);
        self.tx_attempted += other.tx_attempted;
        self.tx += other.tx;
        self.tx_bytes += other.tx_bytes;
        self.tx_dropped.merge(&other.tx_dropped);
    }

    /// Checks both identities.
    pub fn check(&self) -> Result<(), AccountingError> {
        let dropped = self.rx_dropped.total();
        if self.rx != self.forwarded + dropped {
            return Err(AccountingError::Rx {
                rx: self.rx,
                forwarded: self.forwarded,
                dropped,
            });
        }
        let dropped = self.tx_dropped.total();
        if self.tx_attempted != self.tx + dropped {
            return Err(AccountingError::Tx {
                attempted: self.tx_attempted,
                tx: self.tx,
                dropped,
            });
        }
        Ok(())
    }

    /// The `port stats --json` form: the counters with the port's name.
    pub fn named<'a>(&'a self, name: &'a str) -> NamedPortStats<'a> {
        NamedPortStats { name, stats: self }
    }
}

/// `{name, rx, forwarded, rx_dropped, tx_attempted, tx, tx_dropped}`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct NamedPortStats<'a> {
    pub name: &'a str,
    #[serde(flatten)]
    pub stats: &'a PortStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_packet_headroom_and_trims() {
        let mut p = HeapPacket::from_bytes(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(p.headroom(), HEADROOM);
        assert_eq!(p.len(), 6);
        let front = p.prepend(2).unwrap();
        front.copy_from_slice(&[9, 8]);
        assert_eq!(p.data(), &[9, 8, 1, 2, 3, 4, 5, 6]);
        assert_eq!(p.headroom(), HEADROOM - 2);
        assert!(p.adj(3));
        assert_eq!(p.data(), &[2, 3, 4, 5, 6]);
        assert!(p.trim(2));
        assert_eq!(p.data(), &[2, 3, 4]);
        assert!(!p.adj(4));
        assert!(!p.trim(4));
        assert_eq!(p.data(), &[2, 3, 4]);
        assert!(p.prepend(HEADROOM + 2).is_none());
        assert!(p.prepend(HEADROOM + 1).is_some());
        assert_eq!(p.headroom(), 0);
        assert!(p.prepend(1).is_none());
        p.data_mut()[0] = 7;
        assert_eq!(p.data()[0], 7);
    }

    #[test]
    fn heap_packet_reuse_and_metadata() {
        let mut p = HeapPacket::with_data_room(16);
        assert!(p.is_empty());
        assert_eq!(p.set_data(&[0; 17]), Err(TooBig { len: 17, room: 16 }));
        p.set_data(&[5; 16]).unwrap();
        p.set_mark(Some(42));
        p.set_rss_hash(Some(0xdead_beef));
        assert_eq!((p.mark(), p.rss_hash()), (Some(42), Some(0xdead_beef)));
        assert_eq!(p.tailroom(), 0);
        let mut q = HeapPacket::with_data_room(16);
        let before = q.buf.as_ptr();
        q.clone_from(&p);
        assert_eq!(q.buf.as_ptr(), before, "clone_from reuses the buffer");
        assert_eq!(q.data(), p.data());
        assert_eq!(q.mark(), Some(42));
        p.reset();
        assert_eq!((p.len(), p.mark(), p.rss_hash()), (0, None, None));
        assert_eq!(p.headroom(), HEADROOM);
    }

    #[test]
    fn burst_is_bounded_and_drains_from_the_front() {
        let mut b = Burst::new();
        for i in 0..BURST {
            b.push(i).unwrap();
        }
        assert!(b.is_full());
        assert_eq!(b.push(99), Err(99));
        let taken: Vec<_> = b.drain_front(30).collect();
        assert_eq!(taken, (0..30).collect::<Vec<_>>());
        assert_eq!(b.as_slice(), &[30, 31]);
        assert_eq!(b.room(), BURST - 2);
        assert_eq!(b.drain_front(10).count(), 2);
        assert!(b.is_empty());
    }

    #[test]
    fn reasons_index_their_slots() {
        assert!(RxDropReason::ALL.len() <= MAX_REASONS);
        assert!(TxDropReason::ALL.len() <= MAX_REASONS);
        for (i, r) in RxDropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        for (i, r) in TxDropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn identities() {
        let mut s = PortStats {
            rx: 10,
            forwarded: 7,
            tx_attempted: 12,
            tx: 9,
            ..PortStats::default()
        };
        s.count_rx_drop(RxDropReason::NoMatch, 2);
        assert!(matches!(
            s.check(),
            Err(AccountingError::Rx { dropped: 2, .. })
        ));
        s.count_rx_drop(RxDropReason::DropAction, 1);
        s.count_tx_drop(TxDropReason::RingFull, 2);
        assert!(matches!(
            s.check(),
            Err(AccountingError::Tx { dropped: 2, .. })
        ));
        s.count_tx_drop(TxDropReason::TooBig, 1);
        assert_eq!(s.check(), Ok(()));
        let mut total = PortStats::default();
        total.merge(&s);
        total.merge(&s);
        assert_eq!(total.rx, 20);
        assert_eq!(total.rx_dropped.get(RxDropReason::NoMatch), 4);
        assert_eq!(total.tx_dropped.total(), 6);
        assert_eq!(total.check(), Ok(()));
    }

    /// A port over in-memory rings, to show the seam is implementable
    /// without allocation per packet.
    struct LoopPort {
        ring: std::sync::Mutex<Vec<HeapPacket>>,
        capacity: usize,
    }

    impl Port for LoopPort {
        type Buf = HeapPacket;
        fn name(&self) -> &str {
            "loop0"
        }
        fn n_rxq(&self) -> u16 {
            1
        }
        fn n_txq(&self) -> u16 {
            1
        }
        fn rx_burst(&self, _queue: u16, out: &mut Burst<HeapPacket>) -> usize {
            let mut ring = self.ring.lock().unwrap();
            let n = out.room().min(ring.len());
            for p in ring.drain(..n) {
                let _ = out.push(p);
            }
            n
        }
        fn tx_burst(&self, _queue: u16, pkts: &mut Burst<HeapPacket>) -> usize {
            let mut ring = self.ring.lock().unwrap();
            let n = (self.capacity - ring.len()).min(pkts.len());
            ring.extend(pkts.drain_front(n));
            n
        }
        fn stats(&self) -> PortStats {
            PortStats::default()
        }
    }

    /// Ports of one buffer type can be kept together as trait objects.
    #[test]
    fn port_is_object_safe() {
        let port: Box<dyn Port<Buf = HeapPacket>> = Box::new(LoopPort {
            ring: std::sync::Mutex::new(Vec::new()),
            capacity: 1,
        });
        assert_eq!((port.name(), port.mtu()), ("loop0", 1500));
    }

    #[test]
    fn tx_leaves_refused_packets_with_the_caller() {
        let port = LoopPort {
            ring: std::sync::Mutex::new(Vec::new()),
            capacity: 3,
        };
        let mut b = Burst::new();
        for i in 0..5u8 {
            b.push(HeapPacket::from_bytes(&[i])).unwrap();
        }
        let mut stats = PortStats {
            tx_attempted: b.len() as u64,
            ..PortStats::default()
        };
        let sent = port.tx_burst(0, &mut b);
        stats.tx += sent as u64;
        stats.count_tx_drop(TxDropReason::RingFull, b.len() as u64);
        assert_eq!(sent, 3);
        assert_eq!(b.iter().map(|p| p.data()[0]).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(stats.check(), Ok(()));
        b.clear();
        assert_eq!(port.rx_burst(0, &mut b), 3);
        assert_eq!(b.iter().map(|p| p.data()[0]).collect::<Vec<_>>(), [0, 1, 2]);
    }
}
