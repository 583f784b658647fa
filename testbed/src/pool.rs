//! A free list of packet buffers shared by the testbed's ports, so that the
//! steady state allocates nothing: the wire side takes buffers from it, the
//! tx sinks give them back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};
use fallback::port::{HeapPacket, DEFAULT_DATA_ROOM};

/// Buffers the pool keeps by default (about 36 MiB of 2 KiB buffers).
pub const DEFAULT_POOL_SIZE: usize = 16 * 1024;

/// A cloneable handle to one pool.
#[derive(Clone, Debug)]
pub struct PacketPool {
    put_side: Sender<HeapPacket>,
    get_side: Receiver<HeapPacket>,
    counters: Arc<PoolCounters>,
}

#[derive(Debug, Default)]
struct PoolCounters {
    allocated: AtomicU64,
    released: AtomicU64,
}

/// What the pool has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers allocated because the free list was empty.
    pub allocated: u64,
    /// Buffers freed because the free list was full (or of another size).
    pub released: u64,
    /// Buffers on the free list now.
    pub free: usize,
}

impl Default for PacketPool {
    fn default() -> Self {
        PacketPool::new(DEFAULT_POOL_SIZE)
    }
}

impl PacketPool {
    /// A pool that keeps up to `capacity` free buffers (allocated on demand).
    pub fn new(capacity: usize) -> Self {
        let (put_side, get_side) = bounded(capacity.max(1));
        PacketPool {
            put_side,
            get_side,
            counters: Arc::default(),
        }
    }

    /// An empty buffer with the default data room.
    pub fn get(&self) -> HeapPacket {
        match self.get_side.try_recv() {
            Ok(p) => p,
            Err(_) => {
                self.counters.allocated.fetch_add(1, Ordering::Relaxed);
                HeapPacket::new()
            }
        }
    }

    /// A buffer holding `frame` (a larger-than-default frame gets a buffer
    /// of its own, freed rather than pooled when returned).
    pub fn packet(&self, frame: &[u8]) -> HeapPacket {
        if frame.len() > DEFAULT_DATA_ROOM {
            self.counters.allocated.fetch_add(1, Ordering::Relaxed);
            return HeapPacket::from_bytes(frame);
        }
        let mut p = self.get();
        if p.set_data(frame).is_err() {
            // Only a foreign-sized buffer can get here; replace it.
            return HeapPacket::from_bytes(frame);
        }
        p
    }

    /// Returns a buffer to the free list.
    pub fn put(&self, mut pkt: HeapPacket) {
        if pkt.data_room() != DEFAULT_DATA_ROOM {
            self.counters.released.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pkt.reset();
        if self.put_side.try_send(pkt).is_err() {
            self.counters.released.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Allocates `n` buffers up front, as a DPDK mempool is, so that a run
    /// starts warm and resident memory does not creep up as traffic first
    /// reaches its peak in-flight count. Each buffer is written once so its
    /// pages are really resident.
    pub fn prefill(&self, n: usize) {
        let zeros = [0u8; DEFAULT_DATA_ROOM];
        for _ in 0..n {
            self.counters.allocated.fetch_add(1, Ordering::Relaxed);
            let mut p = HeapPacket::new();
            if p.set_data(&zeros).is_ok() {
                p.reset();
            }
            if self.put_side.try_send(p).is_err() {
                break;
            }
        }
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            allocated: self.counters.allocated.load(Ordering::Relaxed),
            released: self.counters.released.load(Ordering::Relaxed),
            free: self.get_side.len(),
        }
    }
}

/// Copies for multi-output actions come from the pool's free list.
impl fallback::port::BufferSource<HeapPacket> for PacketPool {
    fn take(&mut self) -> Option<HeapPacket> {
        self.get_side.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fallback::port::PacketBuf;

    #[test]
    fn recycles_without_allocating() {
        let pool = PacketPool::new(4);
        let a = pool.packet(&[1, 2, 3]);
        assert_eq!(a.data(), &[1, 2, 3]);
        pool.put(a);
        let mut b = pool.get();
        assert!(b.is_empty(), "a recycled buffer comes back reset");
        b.set_mark(Some(3));
        pool.put(b);
        let c = pool.packet(&[9]);
        assert_eq!((c.data(), c.mark()), (&[9][..], None));
        assert_eq!(pool.stats().allocated, 1);
        // Jumbo frames get their own buffer, not pooled.
        let big = pool.packet(&vec![0; DEFAULT_DATA_ROOM + 1]);
        assert_eq!(big.len(), DEFAULT_DATA_ROOM + 1);
        pool.put(big);
        assert_eq!(pool.stats().released, 1);
        // A full free list frees the surplus.
        let many: Vec<_> = (0..6).map(|_| pool.get()).collect();
        for p in many {
            pool.put(p);
        }
        assert_eq!(pool.stats().free, 4);
        assert_eq!(pool.stats().released, 3);
    }
}
