//! The switch-facing side of the emulated NIC: rx bursts from the queue
//! rings, tx bursts into the sink. No lock and no allocation per packet.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::Receiver;
use fallback::port::{Burst, HeapPacket, Port, PortStats};

use super::shared::NicShared;
use crate::sink::{AtomicCount, Count, TxSink};

#[derive(Debug)]
pub struct NicPort {
    pub(crate) shared: Arc<NicShared>,
    pub(crate) rings: Vec<Receiver<HeapPacket>>,
    pub(crate) rx_counts: Vec<AtomicCount>,
    pub(crate) n_txq: u16,
    pub(crate) sink: TxSink,
    pub(crate) mtu: usize,
}

impl NicPort {
    /// Packets waiting on the rx rings (placed by the NIC, not yet taken by
    /// an rx burst): 0 once the switch has drained the port.
    pub fn rx_pending(&self) -> usize {
        self.rings.iter().map(Receiver::len).sum()
    }

    /// Packets and bytes taken by rx bursts on `queue`.
    pub fn rx_queue_count(&self, queue: u16) -> Count {
        self.rx_counts
            .get(usize::from(queue))
            .map(AtomicCount::get)
            .unwrap_or_default()
    }

    /// Frames lost to a full ring on `queue` (DPDK's `imissed`).
    pub fn rx_missed(&self, queue: u16) -> u64 {
        self.shared
            .counters
            .rx_missed
            .get(usize::from(queue))
            .map_or(0, |m| m.load(Ordering::Relaxed))
    }

    /// The transmit side: counts and kept packets.
    pub fn sink(&self) -> &TxSink {
        &self.sink
    }
}

impl Port for NicPort {
    type Buf = HeapPacket;

    fn name(&self) -> &str {
        &self.shared.name
    }

    fn n_rxq(&self) -> u16 {
        self.shared.n_rxq
    }

    fn n_txq(&self) -> u16 {
        self.n_txq
    }

    fn mtu(&self) -> usize {
        self.mtu
    }

    fn rx_burst(&self, queue: u16, out: &mut Burst<HeapPacket>) -> usize {
        let q = usize::from(queue);
        let (Some(ring), Some(count)) = (self.rings.get(q), self.rx_counts.get(q)) else {
            return 0;
        };
        crate::sink::drain_ring(ring, count, out)
    }

    fn tx_burst(&self, queue: u16, pkts: &mut Burst<HeapPacket>) -> usize {
        if queue >= self.n_txq {
            return 0;
        }
        self.sink.transmit(queue, pkts)
    }

    fn frame_buf(&self, frame: &[u8]) -> Option<Self::Buf> {
        Some(HeapPacket::from_bytes(frame))
    }

    /// `rx` (packets taken by rx bursts) and `tx` (packets accepted by tx
    /// bursts); the datapath keeps `forwarded`, `tx_attempted` and the
    /// drops.
    fn stats(&self) -> PortStats {
        PortStats {
            rx: self.rx_counts.iter().map(|c| c.get().packets).sum(),
            tx: self.sink.count().packets,
            ..PortStats::default()
        }
    }
}
