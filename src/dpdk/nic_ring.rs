//! `testbed-nic-dpdk`: the testbed's emulated NIC (rule table, MARK, RSS,
//! rings) in front of a real DPDK rx path. The NIC classifies frames as
//! usual; a "DMA" thread writes each classified frame into a real mbuf,
//! setting the mark and RSS fields exactly as a NIC's PMD does
//! (`RTE_MBUF_F_RX_FDIR | RTE_MBUF_F_RX_FDIR_ID` + `hash.fdir.hi`,
//! `RTE_MBUF_F_RX_RSS_HASH` + `hash.rss`), and enqueues it on the queue's
//! `rte_ring`. The switch reads those rings through an ethdev made with
//! `rte_eth_from_rings()` and `rte_eth_rx_burst`, so the real mbuf mark
//! path runs with no hardware. Packets the switch transmits on the port
//! land in tx rings that the same thread drains (counted, freed).
//!
//! No change to the testbed's NIC engine is needed: the DMA thread takes
//! the classified frames (with their mark and hash) from the NIC's rx
//! queues through its `Port` face.

use super::eal::register_thread;
use super::ethdev::{EthPort, EthPortConfig};
use super::mbuf::{Mbuf, Mempool};
use super::{rte_errno, strerror, sys, DpdkError};
use fallback::port::{Burst, HeapPacket, PacketBuf, Port, BURST};
use offload::device::Profile;
use std::ffi::{c_void, CString};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use testbed::nic::{Nic, NicConfig, NicFlowDevice, Wire};
use testbed::PacketPool;

/// How a `testbed-nic-dpdk` port is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicDpdkConfig {
    pub name: String,
    pub rxqs: u16,
    pub txqs: u16,
    /// Slots per rte_ring (a power of two).
    pub ring_size: u32,
    pub profile: Profile,
    /// Lossless: the NIC waits for room instead of counting `rx_missed`.
    pub backpressure: bool,
}

impl NicDpdkConfig {
    pub fn new(name: impl Into<String>) -> Self {
        NicDpdkConfig {
            name: name.into(),
            rxqs: 1,
            txqs: 1,
            ring_size: 1024,
            profile: Profile::Generic,
            backpressure: true,
        }
    }
}

/// An `rte_ring` we created.
struct Ring(NonNull<sys::rte_ring>);

// SAFETY: rte_rings are built for concurrent producers/consumers; each of
// ours has one producer and one consumer side used as its flags say.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    fn create(name: &str, size: u32, flags: u32) -> Result<Ring, DpdkError> {
        let err = |reason: String| DpdkError::Ring {
            name: name.to_string(),
            reason,
        };
        let c = CString::new(name).map_err(|_| err("the name contains a NUL byte".into()))?;
        // SAFETY: the EAL is initialised (checked by the caller); c is a
        // valid C string DPDK copies.
        let r =
            unsafe { sys::rte_ring_create(c.as_ptr(), size, sys::rte_socket_id() as i32, flags) };
        NonNull::new(r)
            .map(Ring)
            .ok_or_else(|| err(strerror(rte_errno())))
    }

    fn count(&self) -> u32 {
        // SAFETY: the ring is valid for the life of self.
        unsafe { sys::rte_ring_count(self.0.as_ptr()) }
    }

    /// Frees the mbufs left in the ring.
    fn drain(&self) {
        let mut raw = [ptr::null_mut::<c_void>(); BURST];
        loop {
            // SAFETY: ring valid; raw has BURST slots; called when no
            // other thread uses the ring (teardown).
            let n = unsafe {
                sys::rte_ring_dequeue_burst(
                    self.0.as_ptr(),
                    raw.as_mut_ptr(),
                    BURST as u32,
                    ptr::null_mut(),
                )
            } as usize;
            if n == 0 {
                return;
            }
            for &m in &raw[..n] {
                // SAFETY: the ring only ever holds mbufs we own.
                drop(unsafe { Mbuf::from_raw(m.cast()) });
            }
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.drain();
        // SAFETY: created by rte_ring_create; nothing uses it any more (the
        // port is closed and the DMA thread stopped before the last Arc
        // of the ring set goes).
        unsafe { sys::rte_ring_free(self.0.as_ptr()) };
    }
}

struct Rings {
    rx: Vec<Ring>,
    tx: Vec<Ring>,
}

/// The DMA thread's counters.
#[derive(Debug, Default)]
pub struct DmaStats {
    /// Frames written into mbufs and enqueued.
    pub delivered: AtomicU64,
    /// ... of which carried a mark.
    pub marked: AtomicU64,
    /// Frames lost: no mbuf, or larger than an mbuf.
    pub no_mbuf: AtomicU64,
    /// Packets the switch transmitted on the port.
    pub tx: AtomicU64,
}

struct Dma {
    stop: AtomicBool,
    stats: DmaStats,
}

/// Mbufs handed to [`NicDpdk::deliver_mbuf`], for the DMA thread (the
/// rx rings' single producer) to enqueue.
type Handoff = (
    crossbeam_channel::Sender<(u16, Mbuf)>,
    crossbeam_channel::Receiver<(u16, Mbuf)>,
);

/// A running `testbed-nic-dpdk` port. Dropping it stops the DMA thread and
/// the NIC; the ethdev closes when the last `Arc` of its port goes.
pub struct NicDpdk {
    nic: Nic,
    port: Arc<EthPort>,
    rings: Arc<Rings>,
    dma: Arc<Dma>,
    handoff: crossbeam_channel::Sender<(u16, Mbuf)>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for NicDpdk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NicDpdk")
            .field("nic", &self.nic.name())
            .field("port", &self.port)
            .finish()
    }
}

impl NicDpdk {
    pub fn start(config: &NicDpdkConfig, pool: Arc<Mempool>) -> Result<NicDpdk, DpdkError> {
        if !super::Eal::is_ready() {
            return Err(DpdkError::NoEal);
        }
        let name = &config.name;
        if !config.ring_size.is_power_of_two() || config.ring_size < 2 {
            return Err(DpdkError::Config {
                name: name.clone(),
                why: format!("ring_size {} must be a power of two >= 2", config.ring_size),
            });
        }
        let mut nc = NicConfig::new(name.clone());
        nc.rxqs = config.rxqs;
        nc.txqs = config.txqs;
        nc.profile = config.profile;
        nc.backpressure = config.backpressure;
        let heap_pool = PacketPool::new(4096);
        let nic = Nic::start(nc, heap_pool.clone()).map_err(|e| DpdkError::Nic {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        let flags_rx = sys::RING_F_SP_ENQ | sys::RING_F_SC_DEQ;
        let flags_tx = sys::RING_F_SC_DEQ;
        let rings = Arc::new(Rings {
            rx: (0..config.rxqs)
                .map(|q| Ring::create(&format!("fm_{name}_r{q}"), config.ring_size, flags_rx))
                .collect::<Result<_, _>>()?,
            tx: (0..config.txqs)
                .map(|q| Ring::create(&format!("fm_{name}_t{q}"), config.ring_size, flags_tx))
                .collect::<Result<_, _>>()?,
        });
        let rx: Vec<*mut sys::rte_ring> = rings.rx.iter().map(|r| r.0.as_ptr()).collect();
        let tx: Vec<*mut sys::rte_ring> = rings.tx.iter().map(|r| r.0.as_ptr()).collect();
        let cname = CString::new(format!("fm_{name}")).map_err(|_| DpdkError::Config {
            name: name.clone(),
            why: "the name contains a NUL byte".into(),
        })?;
        // SAFETY: the rings are valid and outlive the ethdev (the port
        // keeps the ring set until it is closed); the arrays are read
        // during the call only.
        let port_id = unsafe {
            sys::rte_eth_from_rings(
                cname.as_ptr(),
                rx.as_ptr(),
                config.rxqs as u32,
                tx.as_ptr(),
                config.txqs as u32,
                sys::rte_socket_id(),
            )
        };
        if port_id < 0 {
            return Err(DpdkError::Port {
                name: name.clone(),
                what: "rte_eth_from_rings",
                reason: strerror(rte_errno()),
            });
        }
        let mut ec = EthPortConfig::new(name.clone(), format!("fm_{name}"));
        ec.rxqs = config.rxqs;
        ec.txqs = config.txqs;
        let mut port = EthPort::start(&ec, port_id as u16, Arc::clone(&pool))?;
        port.keep_until_closed(Box::new(Arc::clone(&rings)));
        let port = Arc::new(port);
        let dma = Arc::new(Dma {
            stop: AtomicBool::new(false),
            stats: DmaStats::default(),
        });
        let (handoff, handed): Handoff = crossbeam_channel::unbounded();
        let job = DmaJob {
            handed,
            nic_port: Arc::clone(nic.port()),
            heap_pool,
            pool,
            rings: Arc::clone(&rings),
            dma: Arc::clone(&dma),
            port_id: port_id as u16,
        };
        let thread = std::thread::Builder::new()
            .name(format!("dma-{name}"))
            .spawn(move || job.run())
            .map_err(|source| DpdkError::Thread {
                name: format!("dma-{name}"),
                source,
            })?;
        Ok(NicDpdk {
            nic,
            port,
            rings,
            dma,
            handoff,
            thread: Some(thread),
        })
    }

    /// Puts an mbuf the caller built (e.g. a multi-segment chain, which
    /// the emulated NIC never makes) on rx queue `queue`'s ring as it is,
    /// behind the frames already on their way: the switch receives it
    /// through `rte_eth_rx_burst` like any other. Gives it back if the
    /// queue does not exist or the port is stopping.
    pub fn deliver_mbuf(&self, queue: u16, m: Mbuf) -> Result<(), Mbuf> {
        if usize::from(queue) >= self.rings.rx.len() || self.thread.is_none() {
            return Err(m);
        }
        self.handoff.send((queue, m)).map_err(|e| e.into_inner().1)
    }

    /// The switch-facing ethdev (`net_ring`).
    pub fn port(&self) -> &Arc<EthPort> {
        &self.port
    }

    /// The emulated NIC's rte_flow (rules, marks, faults).
    pub fn flow_device(&self) -> &Arc<NicFlowDevice> {
        self.nic.flow_device()
    }

    /// Where frames arrive.
    pub fn wire(&self) -> &Wire {
        self.nic.wire()
    }

    pub fn nic(&self) -> &Nic {
        &self.nic
    }

    /// Frames on their way to the switch: in the NIC's queues or in the
    /// rte_rings. 0 once the switch has taken everything.
    pub fn rx_pending(&self) -> usize {
        self.handoff.len()
            + self.nic.port().rx_pending()
            + self
                .rings
                .rx
                .iter()
                .map(|r| r.count() as usize)
                .sum::<usize>()
    }

    pub fn dma_stats(&self) -> &DmaStats {
        &self.dma.stats
    }

    /// Stops the DMA thread and the NIC. Idempotent.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.dma.stop.store(true, Ordering::Relaxed);
            let _ = t.join();
        }
        self.nic.stop();
    }
}

impl Drop for NicDpdk {
    fn drop(&mut self) {
        self.stop();
    }
}

struct DmaJob {
    handed: crossbeam_channel::Receiver<(u16, Mbuf)>,
    nic_port: Arc<testbed::NicPort>,
    heap_pool: PacketPool,
    pool: Arc<Mempool>,
    rings: Arc<Rings>,
    dma: Arc<Dma>,
    port_id: u16,
}

const IDLE_SLEEP_MAX: Duration = Duration::from_micros(200);

impl DmaJob {
    fn run(self) {
        register_thread();
        let mut heap: Burst<HeapPacket> = Burst::new();
        let mut idle = 0u32;
        while !self.dma.stop.load(Ordering::Relaxed) {
            let mut moved = 0;
            while let Ok((q, m)) = self.handed.try_recv() {
                if let Some(ring) = self.rings.rx.get(usize::from(q)) {
                    let mut raw = [ptr::null_mut::<c_void>(); BURST];
                    raw[0] = m.into_raw().cast();
                    let done = self.enqueue(ring, &raw, 1);
                    self.dma
                        .stats
                        .delivered
                        .fetch_add(done as u64, Ordering::Relaxed);
                    moved += 1;
                }
            }
            for (q, ring) in self.rings.rx.iter().enumerate() {
                let n = self.nic_port.rx_burst(q as u16, &mut heap);
                if n > 0 {
                    moved += n;
                    self.deliver(&mut heap, ring);
                }
            }
            for ring in &self.rings.tx {
                moved += self.drain_tx(ring);
            }
            if moved == 0 {
                idle = idle.saturating_add(1);
                if idle > 64 {
                    let us = u64::from(idle.min(200));
                    std::thread::sleep(Duration::from_micros(us).min(IDLE_SLEEP_MAX));
                } else {
                    std::thread::yield_now();
                }
            } else {
                idle = 0;
            }
        }
    }

    /// Writes the frames into mbufs as a PMD would and enqueues them,
    /// waiting for room (the NIC's own back-pressure / rx_missed policy
    /// applies before this point).
    fn deliver(&self, heap: &mut Burst<HeapPacket>, ring: &Ring) {
        let s = &self.dma.stats;
        let mut raw = [ptr::null_mut::<c_void>(); BURST];
        let mut k = 0;
        for p in heap.drain() {
            match self.pool.mbuf_from(p.data()) {
                Some(mut m) => {
                    m.set_rx_metadata(p.mark(), p.rss_hash());
                    m.set_port(self.port_id);
                    if p.mark().is_some() {
                        s.marked.fetch_add(1, Ordering::Relaxed);
                    }
                    raw[k] = m.into_raw().cast();
                    k += 1;
                }
                None => {
                    s.no_mbuf.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.heap_pool.put(p);
        }
        let done = self.enqueue(ring, &raw, k);
        s.delivered.fetch_add(done as u64, Ordering::Relaxed);
    }

    /// Enqueues the mbufs `raw[..k]` (ours) on `ring`, waiting for room;
    /// when the port stops first, frees the rest. Returns how many went in.
    fn enqueue(&self, ring: &Ring, raw: &[*mut c_void; BURST], k: usize) -> usize {
        let mut done = 0;
        while done < k {
            // SAFETY: the ring is valid (kept by self.rings); raw[done..k]
            // are mbufs we own; the ring takes the first `n` of them.
            let n = unsafe {
                sys::rte_ring_enqueue_burst(
                    ring.0.as_ptr(),
                    raw[done..].as_ptr(),
                    (k - done) as u32,
                    ptr::null_mut(),
                )
            } as usize;
            done += n;
            if done < k {
                if self.dma.stop.load(Ordering::Relaxed) {
                    for &m in &raw[done..k] {
                        // SAFETY: not enqueued: still ours.
                        drop(unsafe { Mbuf::from_raw(m.cast()) });
                    }
                    break;
                }
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        done
    }

    /// Takes what the switch transmitted: counted and freed.
    fn drain_tx(&self, ring: &Ring) -> usize {
        let mut raw = [ptr::null_mut::<c_void>(); BURST];
        // SAFETY: ring valid; this thread is its only consumer; raw has
        // BURST slots.
        let n = unsafe {
            sys::rte_ring_dequeue_burst(
                ring.0.as_ptr(),
                raw.as_mut_ptr(),
                BURST as u32,
                ptr::null_mut(),
            )
        } as usize;
        for &m in &raw[..n] {
            // SAFETY: the ring holds mbufs the switch handed over.
            drop(unsafe { Mbuf::from_raw(m.cast()) });
        }
        self.dma.stats.tx.fetch_add(n as u64, Ordering::Relaxed);
        n
    }
}
