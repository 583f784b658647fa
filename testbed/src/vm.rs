//! A VM port, vhost-user-like: no flow device (its traffic always takes the
//! software path), no mark and no RSS hash on received packets. The guest's
//! transmissions are injected straight into the port's rx rings; what the
//! switch transmits to the guest is counted and optionally kept.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, SendTimeoutError, Sender, TrySendError};
use fallback::port::{Burst, HeapPacket, PacketBuf, Port, PortStats};

use crate::inject::{Inject, InjectError};
use crate::matcher::Headers;
use crate::nic::rss::{self, HashTypes, Reta};
use crate::pool::PacketPool;
use crate::sink::{AtomicCount, Count, TxSink};
use crate::toeplitz::Toeplitz;

/// How often a guest blocked on a full ring checks whether the port stops.
const BLOCKED_RECHECK: Duration = Duration::from_millis(50);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    pub name: String,
    /// Virtqueue pairs the guest uses (the guest spreads its flows over
    /// them by hash).
    pub rxqs: u16,
    pub txqs: u16,
    pub ring_size: usize,
    /// Block the guest while a ring is full instead of dropping.
    pub backpressure: bool,
    /// Transmitted packets kept for tests and pcap files (0: none).
    pub keep_tx: usize,
    /// Count transmitted packets per flow id (the generator's tag).
    pub count_flows: bool,
    /// The largest L3 packet transmitted (Ethernet header and tags on top).
    pub mtu: usize,
}

impl VmConfig {
    /// Defaults: one queue pair of 1024 descriptors, no back-pressure.
    pub fn new(name: impl Into<String>) -> Self {
        VmConfig {
            name: name.into(),
            rxqs: 1,
            txqs: 1,
            ring_size: 1024,
            backpressure: false,
            keep_tx: 0,
            count_flows: false,
            mtu: 1500,
        }
    }
}

#[derive(Debug)]
struct VmShared {
    name: String,
    rx_missed: Vec<AtomicU64>,
    backpressure: AtomicBool,
    stopping: AtomicBool,
}

/// The switch-facing side of a VM port.
#[derive(Debug)]
pub struct VmPort {
    shared: Arc<VmShared>,
    rings: Vec<Receiver<HeapPacket>>,
    rx_counts: Vec<AtomicCount>,
    n_txq: u16,
    sink: TxSink,
    mtu: usize,
}

/// The guest's side: where its transmissions are injected. Cloneable.
#[derive(Clone, Debug)]
pub struct Guest {
    shared: Arc<VmShared>,
    rings: Vec<Sender<HeapPacket>>,
    reta: Arc<Reta>,
    toeplitz: Arc<Toeplitz>,
    pool: PacketPool,
}

/// A VM port: its `Port` and its guest.
#[derive(Debug)]
pub struct Vm {
    port: Arc<VmPort>,
    guest: Guest,
}

impl Vm {
    pub fn new(config: VmConfig, pool: PacketPool) -> Vm {
        let rxqs = config.rxqs.max(1);
        let txqs = config.txqs.max(1);
        let shared = Arc::new(VmShared {
            name: config.name,
            rx_missed: (0..rxqs).map(|_| AtomicU64::new(0)).collect(),
            backpressure: AtomicBool::new(config.backpressure),
            stopping: AtomicBool::new(false),
        });
        let (tx, rx): (Vec<_>, Vec<_>) = (0..rxqs)
            .map(|_| bounded::<HeapPacket>(config.ring_size.max(1)))
            .unzip();
        Vm {
            port: Arc::new(VmPort {
                shared: Arc::clone(&shared),
                rings: rx,
                rx_counts: (0..rxqs).map(|_| AtomicCount::default()).collect(),
                n_txq: txqs,
                sink: {
                    let sink = TxSink::new(txqs, config.keep_tx, pool.clone());
                    if config.count_flows {
                        sink.with_flow_counts()
                    } else {
                        sink
                    }
                },
                mtu: config.mtu,
            }),
            guest: Guest {
                shared,
                rings: tx,
                reta: Arc::new(Reta::over_queues(rxqs)),
                toeplitz: Arc::new(Toeplitz::default()),
                pool,
            },
        }
    }

    pub fn name(&self) -> &str {
        &self.port.shared.name
    }

    pub fn port(&self) -> &Arc<VmPort> {
        &self.port
    }

    pub fn guest(&self) -> &Guest {
        &self.guest
    }

    pub fn set_backpressure(&self, on: bool) {
        self.port.shared.backpressure.store(on, Ordering::Relaxed);
    }

    /// Stops waiting guests: blocked injections give up (counted missed).
    pub fn stop(&self) {
        self.port.shared.stopping.store(true, Ordering::Relaxed);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}

impl VmPort {
    /// Packets waiting on the rx rings.
    pub fn rx_pending(&self) -> usize {
        self.rings.iter().map(Receiver::len).sum()
    }

    /// Guest packets lost to a full ring on `queue`.
    pub fn rx_missed(&self, queue: u16) -> u64 {
        self.shared
            .rx_missed
            .get(usize::from(queue))
            .map_or(0, |m| m.load(Ordering::Relaxed))
    }

    /// Packets and bytes taken by rx bursts, all queues.
    pub fn rx_count(&self) -> Count {
        self.rx_counts.iter().fold(Count::default(), |a, c| {
            let c = c.get();
            Count {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
            }
        })
    }

    pub fn sink(&self) -> &TxSink {
        &self.sink
    }
}

impl Port for VmPort {
    type Buf = HeapPacket;

    fn name(&self) -> &str {
        &self.shared.name
    }

    fn n_rxq(&self) -> u16 {
        self.rings.len() as u16
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

    fn stats(&self) -> PortStats {
        PortStats {
            rx: self.rx_count().packets,
            tx: self.sink.count().packets,
            ..PortStats::default()
        }
    }
}

impl Guest {
    fn missed(&self, q: usize, pkt: HeapPacket) {
        if let Some(m) = self.shared.rx_missed.get(q) {
            m.fetch_add(1, Ordering::Relaxed);
        }
        self.pool.put(pkt);
    }

    /// Sends a frame already in a buffer. Metadata is cleared: a virtio
    /// port reports no mark and no hash.
    pub fn send_packet(&self, mut pkt: HeapPacket) -> Result<(), InjectError> {
        pkt.set_mark(None);
        pkt.set_rss_hash(None);
        let q = if self.rings.len() > 1 {
            let h = Headers::parse(pkt.data());
            let hash = rss::hash(&self.toeplitz, &h, HashTypes::pmd_default());
            usize::from(self.reta.queue(hash))
        } else {
            0
        };
        let Some(ring) = self.rings.get(q) else {
            self.missed(0, pkt);
            return Ok(());
        };
        let stopped = || InjectError::Stopped {
            port: self.shared.name.clone(),
        };
        let mut pkt = match ring.try_send(pkt) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Disconnected(p)) => {
                self.pool.put(p);
                return Err(stopped());
            }
            Err(TrySendError::Full(p)) => p,
        };
        loop {
            if !self.shared.backpressure.load(Ordering::Relaxed)
                || self.shared.stopping.load(Ordering::Relaxed)
            {
                self.missed(q, pkt);
                return Ok(());
            }
            match ring.send_timeout(pkt, BLOCKED_RECHECK) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Timeout(p)) => pkt = p,
                Err(SendTimeoutError::Disconnected(p)) => {
                    self.pool.put(p);
                    return Err(stopped());
                }
            }
        }
    }
}

impl Inject for Guest {
    fn port_name(&self) -> &str {
        &self.shared.name
    }

    fn inject(&self, frame: &[u8]) -> Result<(), InjectError> {
        self.send_packet(self.pool.packet(frame))
    }

    /// Injection is synchronous: every frame is already on a ring.
    fn sync(&self) -> Result<(), InjectError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build;
    use std::net::Ipv4Addr;

    fn frame(i: u8) -> Vec<u8> {
        build::udp4(
            Ipv4Addr::new(10, 0, 0, i),
            Ipv4Addr::new(10, 0, 1, 1),
            1000 + u16::from(i),
            53,
            &[i],
        )
    }

    #[test]
    fn guest_traffic_reaches_rx_without_metadata() {
        let pool = PacketPool::new(64);
        let vm = Vm::new(
            VmConfig {
                keep_tx: 8,
                ..VmConfig::new("vm0")
            },
            pool.clone(),
        );
        let mut p = pool.packet(&frame(1));
        p.set_mark(Some(5));
        p.set_rss_hash(Some(6));
        vm.guest().send_packet(p).unwrap();
        vm.guest().inject(&frame(2)).unwrap();
        vm.guest().sync().unwrap();
        let port = vm.port();
        assert_eq!(port.rx_pending(), 2);
        let mut b = Burst::new();
        assert_eq!(port.rx_burst(0, &mut b), 2);
        assert_eq!(port.rx_burst(1, &mut b), 0, "unknown queue");
        assert!(b
            .iter()
            .all(|p| p.mark().is_none() && p.rss_hash().is_none()));
        assert_eq!(b.as_slice()[1].data(), frame(2).as_slice());
        // What the switch sends the guest is counted and kept.
        assert_eq!(port.tx_burst(0, &mut b), 2);
        assert_eq!(port.tx_burst(1, &mut Burst::new()), 0);
        let s = port.stats();
        assert_eq!((s.rx, s.tx), (2, 2));
        assert_eq!(port.sink().take_captured(), vec![frame(1), frame(2)]);
    }

    #[test]
    fn full_ring_drops_without_backpressure_and_waits_with_it() {
        let pool = PacketPool::new(64);
        let vm = Vm::new(
            VmConfig {
                ring_size: 2,
                ..VmConfig::new("vm0")
            },
            pool.clone(),
        );
        for i in 0..3 {
            vm.guest().inject(&frame(i)).unwrap();
        }
        assert_eq!(vm.port().rx_missed(0), 1);
        vm.set_backpressure(true);
        let guest = vm.guest().clone();
        let port = Arc::clone(vm.port());
        // The guest blocks on the full ring until the switch drains it.
        let sender = std::thread::spawn(move || {
            for i in 0..10 {
                guest.inject(&frame(i)).unwrap();
            }
        });
        let mut got = 0;
        let mut b = Burst::new();
        while got < 12 {
            b.clear();
            got += port.rx_burst(0, &mut b);
            if b.is_empty() {
                // Poll like a PMD, gently: the guest is blocked meanwhile.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        sender.join().unwrap();
        assert_eq!(got, 12);
        assert_eq!(vm.port().rx_missed(0), 1);
    }

    #[test]
    fn guest_spreads_flows_over_queues() {
        let pool = PacketPool::new(64);
        let vm = Vm::new(
            VmConfig {
                rxqs: 4,
                ..VmConfig::new("vm0")
            },
            pool,
        );
        for i in 0..64 {
            vm.guest().inject(&frame(i)).unwrap();
        }
        let mut b = Burst::new();
        let mut per_queue = Vec::new();
        for q in 0..4 {
            let mut n = 0;
            loop {
                b.clear();
                let k = vm.port().rx_burst(q, &mut b);
                if k == 0 {
                    break;
                }
                n += k;
            }
            per_queue.push(n);
        }
        assert_eq!(per_queue.iter().sum::<usize>(), 64);
        assert!(
            per_queue.iter().filter(|n| **n > 0).count() >= 2,
            "{per_queue:?}"
        );
    }
}
