//! The transmit side of a testbed port: the wire the switch sends onto.
//! It counts what it is given, optionally keeps the packets for tests and
//! pcap files, and returns buffers to the pool.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crossbeam_channel::{bounded, Receiver, Sender};
use fallback::port::{Burst, HeapPacket, PacketBuf};

use crate::pool::PacketPool;

/// Packets and bytes, per direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

/// Counters updated once per burst from any thread.
#[derive(Debug, Default)]
pub(crate) struct AtomicCount {
    packets: AtomicU64,
    bytes: AtomicU64,
}

impl AtomicCount {
    pub(crate) fn add(&self, packets: u64, bytes: u64) {
        self.packets.fetch_add(packets, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> Count {
        Count {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// Moves packets from a receive ring into `out` until it is full or the
/// ring is empty, counting them on `count` once (the rx side of every
/// testbed port).
pub(crate) fn drain_ring(
    ring: &Receiver<HeapPacket>,
    count: &AtomicCount,
    out: &mut Burst<HeapPacket>,
) -> usize {
    let mut n = 0;
    let mut bytes = 0;
    while out.room() > 0 {
        let Ok(p) = ring.try_recv() else {
            break;
        };
        bytes += p.len() as u64;
        n += 1;
        // Room was checked: push cannot give the packet back.
        let _ = out.push(p);
    }
    if n > 0 {
        count.add(n as u64, bytes);
    }
    n
}

/// Where a port's transmitted packets go.
#[derive(Debug)]
pub struct TxSink {
    per_queue: Vec<AtomicCount>,
    /// Kept packets (bounded: when full, packets are counted, not kept).
    capture: Option<(Sender<HeapPacket>, Receiver<HeapPacket>)>,
    capture_overflow: AtomicU64,
    /// Packets per flow id (the traffic generator's tag), when asked for:
    /// per-flow books without keeping the packets.
    flow_counts: Option<Mutex<BTreeMap<u32, u64>>>,
    pool: PacketPool,
}

impl TxSink {
    /// Also counts transmitted packets per flow id (see
    /// [`crate::traffic::flow_id`]); untagged packets are not counted there.
    pub fn with_flow_counts(mut self) -> Self {
        self.flow_counts = Some(Mutex::new(BTreeMap::new()));
        self
    }

    /// Packets transmitted per flow id (empty unless enabled).
    pub fn flow_counts(&self) -> BTreeMap<u32, u64> {
        match &self.flow_counts {
            Some(m) => m.lock().map(|c| c.clone()).unwrap_or_default(),
            None => BTreeMap::new(),
        }
    }

    /// A sink for `n_txq` queues that keeps up to `keep` packets
    /// (`usize::MAX`: all of them, in a growing queue).
    pub fn new(n_txq: u16, keep: usize, pool: PacketPool) -> Self {
        TxSink {
            per_queue: (0..n_txq.max(1)).map(|_| AtomicCount::default()).collect(),
            capture: match keep {
                0 => None,
                usize::MAX => Some(crossbeam_channel::unbounded()),
                n => Some(bounded(n)),
            },
            capture_overflow: AtomicU64::new(0),
            flow_counts: None,
            pool,
        }
    }

    /// Takes every packet of `pkts` (an emulated wire never refuses).
    /// Unknown queues count on the last queue's counters.
    pub fn transmit(&self, queue: u16, pkts: &mut Burst<HeapPacket>) -> usize {
        let n = pkts.len();
        let mut bytes = 0u64;
        if let Some(counts) = &self.flow_counts {
            // One lock per burst.
            if let Ok(mut counts) = counts.lock() {
                for p in pkts.iter() {
                    if let Some(id) = crate::traffic::flow_id(p.data()) {
                        *counts.entry(id).or_insert(0) += 1;
                    }
                }
            }
        }
        for p in pkts.drain() {
            bytes += p.len() as u64;
            self.keep_or_recycle(p);
        }
        let q = usize::from(queue).min(self.per_queue.len() - 1);
        if let Some(c) = self.per_queue.get(q) {
            c.add(n as u64, bytes);
        }
        n
    }

    fn keep_or_recycle(&self, p: HeapPacket) {
        let Some((tx, _)) = &self.capture else {
            self.pool.put(p);
            return;
        };
        if let Err(e) = tx.try_send(p) {
            self.capture_overflow.fetch_add(1, Ordering::Relaxed);
            self.pool.put(e.into_inner());
        }
    }

    /// Packets and bytes transmitted, all queues.
    pub fn count(&self) -> Count {
        self.per_queue.iter().fold(Count::default(), |acc, c| {
            let c = c.get();
            Count {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
            }
        })
    }

    /// Packets and bytes transmitted on one queue.
    pub fn queue_count(&self, queue: u16) -> Count {
        self.per_queue
            .get(usize::from(queue))
            .map(AtomicCount::get)
            .unwrap_or_default()
    }

    /// Takes the kept packets' bytes, oldest first (the buffers go back to
    /// the pool).
    pub fn take_captured(&self) -> Vec<Vec<u8>> {
        let Some((_, rx)) = &self.capture else {
            return Vec::new();
        };
        rx.try_iter()
            .map(|p| {
                let bytes = p.data().to_vec();
                self.pool.put(p);
                bytes
            })
            .collect()
    }

    /// Transmitted packets not kept because the capture was full.
    pub fn capture_overflow(&self) -> u64 {
        self.capture_overflow.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_keeps_and_recycles() {
        let pool = PacketPool::new(8);
        let sink = TxSink::new(2, 2, pool.clone());
        let mut b = Burst::new();
        for i in 0..3u8 {
            b.push(pool.packet(&[i; 10])).unwrap();
        }
        assert_eq!(sink.transmit(1, &mut b), 3);
        assert!(b.is_empty());
        assert_eq!(
            sink.count(),
            Count {
                packets: 3,
                bytes: 30
            }
        );
        assert_eq!(sink.queue_count(1).packets, 3);
        assert_eq!(sink.queue_count(0).packets, 0);
        assert_eq!(sink.capture_overflow(), 1);
        assert_eq!(sink.take_captured(), vec![vec![0; 10], vec![1; 10]]);
        assert_eq!(pool.stats().free, 3, "every buffer is back in the pool");
    }
}
