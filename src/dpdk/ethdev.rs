//! Ethdev ports: any devargs (a vdev string such as `net_pcap0,rx_pcap=F`
//! or `net_vhost0,iface=SOCK`, or a NIC's PCI address), several rx/tx
//! queues, bursts of up to 32 mbufs without copies.

use super::eal::register_thread;
use super::mbuf::{Mbuf, Mempool};
use super::{strerror, sys, DpdkError};
use fallback::port::{Burst, PacketBuf, Port, PortStats, BURST};
use std::ffi::CString;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const EAGAIN: i32 = 11;
const ENOTSUP: i32 = 95;

/// Descriptors per queue by default.
pub const DEFAULT_DESC: u16 = 1024;

/// How an ethdev port is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EthPortConfig {
    /// The switch's name for the port.
    pub name: String,
    /// `rte_dev_probe` devargs: a vdev string or a PCI address (an EAL
    /// `--vdev` device is found by the same string).
    pub devargs: String,
    pub rxqs: u16,
    pub txqs: u16,
    pub rx_desc: u16,
    pub tx_desc: u16,
    /// Ask the PMD to deliver MARK ids (`RTE_ETH_RX_METADATA_USER_MARK`).
    pub want_mark: bool,
}

impl EthPortConfig {
    pub fn new(name: impl Into<String>, devargs: impl Into<String>) -> Self {
        EthPortConfig {
            name: name.into(),
            devargs: devargs.into(),
            rxqs: 1,
            txqs: 1,
            rx_desc: DEFAULT_DESC,
            tx_desc: DEFAULT_DESC,
            want_mark: true,
        }
    }
}

/// Link state (`rte_eth_link_get_nowait`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkState {
    pub up: bool,
    pub speed_mbps: u32,
    pub full_duplex: bool,
}

/// The PMD's own counters (`rte_eth_stats_get`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EthStats {
    pub ipackets: u64,
    pub opackets: u64,
    pub ibytes: u64,
    pub obytes: u64,
    /// Dropped by the NIC for lack of rx descriptors.
    pub imissed: u64,
    pub ierrors: u64,
    pub oerrors: u64,
    pub rx_nombuf: u64,
}

/// Per-queue packet counts, written by the one thread that owns the queue.
/// Bytes are the datapath's to count (its port stats): counted here too,
/// they cost a read of every packet's length and nothing read them.
#[derive(Default)]
#[repr(align(64))]
struct QueueCount {
    packets: AtomicU64,
}

impl QueueCount {
    #[inline]
    fn add(&self, packets: u64) {
        // One writer per queue: load + store, no locked instruction.
        self.packets.store(
            self.packets.load(Ordering::Relaxed) + packets,
            Ordering::Relaxed,
        );
    }
}

/// What configuring a port found out.
struct Setup {
    driver: String,
    mark_negotiated: bool,
    rss_hash_offload: bool,
    mtu: usize,
}

/// An ethdev port, started. Dropping it stops and closes the port.
pub struct EthPort {
    name: String,
    devargs: String,
    /// As opened: a reset restarts the port with it.
    config: EthPortConfig,
    /// Stopped for a reset (or gone): bursts receive and send nothing.
    down: AtomicBool,
    port_id: u16,
    n_rxq: u16,
    n_txq: u16,
    mtu: usize,
    pool: Arc<Mempool>,
    mark_negotiated: bool,
    rss_hash_offload: bool,
    driver: String,
    rx: Box<[QueueCount]>,
    tx: Box<[QueueCount]>,
    /// Copies that had no mbuf (pool exhausted), refused on transmit.
    tx_no_mbuf: AtomicU64,
    /// Multi-segment mbufs refused on transmit (the port is not set up for
    /// `RTE_ETH_TX_OFFLOAD_MULTI_SEGS`).
    tx_chained: AtomicU64,
    /// What the PMD uses and must outlive the port (e.g. the rte_rings
    /// under a `net_ring` port): dropped after the port is closed.
    keep: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for EthPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EthPort")
            .field("name", &self.name)
            .field("devargs", &self.devargs)
            .field("port_id", &self.port_id)
            .field("driver", &self.driver)
            .finish()
    }
}

fn port_err(name: &str, what: &'static str, ret: i32) -> DpdkError {
    DpdkError::Port {
        name: name.to_string(),
        what,
        reason: strerror(-ret),
    }
}

/// Ports matching `devargs` (`rte_eth_iterator_*`).
fn find_port(devargs: &str) -> Option<u16> {
    let c = CString::new(devargs).ok()?;
    let mut iter = sys::rte_dev_iterator::default();
    // SAFETY: iter is a zeroed iterator owned here; c outlives the
    // iteration; cleanup is called after a successful init.
    unsafe {
        if sys::rte_eth_iterator_init(&mut iter, c.as_ptr()) != 0 {
            return None;
        }
        let id = sys::rte_eth_iterator_next(&mut iter);
        sys::rte_eth_iterator_cleanup(&mut iter);
        (u32::from(id) < sys::RTE_MAX_ETHPORTS).then_some(id)
    }
}

impl EthPort {
    /// Finds the device (probing it with `rte_dev_probe` unless it exists
    /// already, e.g. from an EAL `--vdev`), then configures and starts it.
    pub fn open(config: &EthPortConfig, pool: Arc<Mempool>) -> Result<EthPort, DpdkError> {
        if !super::Eal::is_ready() {
            return Err(DpdkError::NoEal);
        }
        let c = CString::new(config.devargs.as_str()).map_err(|_| DpdkError::NoDevice {
            devargs: config.devargs.clone(),
            reason: "contains a NUL byte".into(),
        })?;
        let port_id = match find_port(&config.devargs) {
            Some(id) => id,
            None => {
                // SAFETY: the EAL is initialised; c is a valid C string.
                let ret = unsafe { sys::rte_dev_probe(c.as_ptr()) };
                if ret != 0 {
                    return Err(DpdkError::NoDevice {
                        devargs: config.devargs.clone(),
                        reason: format!("rte_dev_probe: {}", strerror(-ret)),
                    });
                }
                find_port(&config.devargs).ok_or_else(|| DpdkError::NoDevice {
                    devargs: config.devargs.clone(),
                    reason: "probed, but no ethdev port appeared".into(),
                })?
            }
        };
        Self::start(config, port_id, pool)
    }

    /// Configures and starts an existing ethdev port (e.g. one made by
    /// `rte_eth_from_rings`).
    pub(crate) fn start(
        config: &EthPortConfig,
        port_id: u16,
        pool: Arc<Mempool>,
    ) -> Result<EthPort, DpdkError> {
        let setup = Self::setup(config, port_id, &pool, true)?;
        super::events::register(&config.name, port_id)?;
        Ok(EthPort {
            name: config.name.clone(),
            devargs: config.devargs.clone(),
            config: config.clone(),
            down: AtomicBool::new(false),
            port_id,
            n_rxq: config.rxqs,
            n_txq: config.txqs,
            mtu: setup.mtu,
            pool,
            mark_negotiated: setup.mark_negotiated,
            rss_hash_offload: setup.rss_hash_offload,
            driver: setup.driver,
            rx: (0..config.rxqs).map(|_| QueueCount::default()).collect(),
            tx: (0..config.txqs).map(|_| QueueCount::default()).collect(),
            tx_no_mbuf: AtomicU64::new(0),
            tx_chained: AtomicU64::new(0),
            keep: None,
        })
    }

    /// Configures the port (queues, offloads) and starts it. `negotiate`:
    /// ask for MARK delivery first (only possible before the port is
    /// configured for the first time, or after `rte_eth_dev_reset`).
    fn setup(
        config: &EthPortConfig,
        port_id: u16,
        pool: &Mempool,
        negotiate: bool,
    ) -> Result<Setup, DpdkError> {
        let name = config.name.as_str();
        if config.rxqs == 0 || config.txqs == 0 {
            return Err(DpdkError::Config {
                name: name.into(),
                why: "rxqs and txqs must be at least 1".into(),
            });
        }
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: port_id is a valid port; info is ours to fill.
        let ret = unsafe { sys::rte_eth_dev_info_get(port_id, &mut info) };
        if ret != 0 {
            return Err(port_err(name, "rte_eth_dev_info_get", ret));
        }
        if config.rxqs > info.max_rx_queues || config.txqs > info.max_tx_queues {
            return Err(DpdkError::Config {
                name: name.into(),
                why: format!(
                    "{} rx / {} tx queues asked, the device offers {} / {}",
                    config.rxqs, config.txqs, info.max_rx_queues, info.max_tx_queues
                ),
            });
        }
        let driver = if info.driver_name.is_null() {
            String::new()
        } else {
            // SAFETY: driver_name points to the driver's static C string.
            unsafe { std::ffi::CStr::from_ptr(info.driver_name) }
                .to_string_lossy()
                .into_owned()
        };
        // Ask for MARK delivery before configure (PMDs without the
        // negotiation either deliver marks anyway or cannot mark at all).
        let mut mark_negotiated = false;
        if config.want_mark && negotiate {
            let mut features =
                sys::RTE_ETH_RX_METADATA_USER_MARK | sys::RTE_ETH_RX_METADATA_USER_FLAG;
            // SAFETY: port_id is valid and not yet configured; features is ours.
            let ret = unsafe { sys::rte_eth_rx_metadata_negotiate(port_id, &mut features) };
            mark_negotiated = ret == 0 && features & sys::RTE_ETH_RX_METADATA_USER_MARK != 0;
        }
        let mut conf = sys::rte_eth_conf::default();
        let rss_hash_offload = info.rx_offload_capa & sys::RTE_ETH_RX_OFFLOAD_RSS_HASH != 0;
        if rss_hash_offload {
            conf.rxmode.offloads |= sys::RTE_ETH_RX_OFFLOAD_RSS_HASH;
        }
        let rss_hf = sys::RTE_ETH_RSS_IP | sys::RTE_ETH_RSS_TCP | sys::RTE_ETH_RSS_UDP;
        if config.rxqs > 1 && info.flow_type_rss_offloads & rss_hf != 0 {
            conf.rxmode.mq_mode = sys::rte_eth_rx_mq_mode_RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_hf = info.flow_type_rss_offloads & rss_hf;
        }
        // SAFETY: port_id is valid; conf is a fully initialised struct.
        let ret = unsafe { sys::rte_eth_dev_configure(port_id, config.rxqs, config.txqs, &conf) };
        if ret != 0 {
            return Err(port_err(name, "rte_eth_dev_configure", ret));
        }
        let (mut nb_rx, mut nb_tx) = (config.rx_desc, config.tx_desc);
        // SAFETY: port_id is valid and configured; the counts are ours.
        let ret = unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(port_id, &mut nb_rx, &mut nb_tx) };
        if ret != 0 {
            return Err(port_err(name, "rte_eth_dev_adjust_nb_rx_tx_desc", ret));
        }
        // SAFETY: port_id is valid.
        let socket = unsafe { sys::rte_eth_dev_socket_id(port_id) }.max(0) as u32;
        for q in 0..config.rxqs {
            // SAFETY: port configured with rxqs queues; null conf means the
            // PMD's defaults; the pool lives for the process.
            let ret = unsafe {
                sys::rte_eth_rx_queue_setup(port_id, q, nb_rx, socket, ptr::null(), pool.as_ptr())
            };
            if ret != 0 {
                return Err(port_err(name, "rte_eth_rx_queue_setup", ret));
            }
        }
        for q in 0..config.txqs {
            // SAFETY: as above, for the tx queues.
            let ret =
                unsafe { sys::rte_eth_tx_queue_setup(port_id, q, nb_tx, socket, ptr::null()) };
            if ret != 0 {
                return Err(port_err(name, "rte_eth_tx_queue_setup", ret));
            }
        }
        // SAFETY: port configured and its queues set up.
        let ret = unsafe { sys::rte_eth_dev_start(port_id) };
        if ret != 0 {
            return Err(port_err(name, "rte_eth_dev_start", ret));
        }
        // SAFETY: port started; failures (PMDs without promiscuous mode)
        // are harmless.
        unsafe {
            sys::rte_eth_promiscuous_enable(port_id);
        }
        let mut mtu: u16 = 1500;
        // SAFETY: port valid; mtu is ours. On failure the default stays.
        if unsafe { sys::rte_eth_dev_get_mtu(port_id, &mut mtu) } != 0 {
            mtu = 1500;
        }
        Ok(Setup {
            driver,
            mark_negotiated,
            rss_hash_offload,
            mtu: usize::from(mtu),
        })
    }

    /// Stops (`true`) or resumes the PMDs' use of the port: while down,
    /// rx bursts receive nothing and tx bursts accept nothing. A PMD may
    /// be inside a burst when this returns; the caller waits for every
    /// PMD to pass its loop's top before touching the device.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Resets the device (`rte_eth_dev_reset`, after an
    /// `RTE_ETH_EVENT_INTR_RESET`) and configures and starts it again
    /// with the configuration it was opened with. A device without a
    /// reset of its own (`-ENOTSUP`, e.g. the virtual ones) is stopped,
    /// configured and started. `Ok(false)`: the device is not ready yet
    /// (`-EAGAIN`), try again later. The port must be down ([`set_down`])
    /// and no PMD inside a burst on it.
    ///
    /// [`set_down`]: EthPort::set_down
    pub fn reset(&self) -> Result<bool, DpdkError> {
        if !self.is_down() {
            return Err(DpdkError::Config {
                name: self.name.clone(),
                why: "reset while the port is in use: stop its I/O first (set_down)".into(),
            });
        }
        // SAFETY: the port is valid (open until self drops) and no thread
        // uses its queues: it is down and the caller waited for every PMD
        // to pass a quiescent point; the reset leaves it unconfigured.
        let ret = unsafe { sys::rte_eth_dev_reset(self.port_id) };
        let negotiate = match ret {
            0 => true,
            r if r == -EAGAIN => return Ok(false),
            r if r == -ENOTSUP => {
                // SAFETY: as above; a stopped port may be configured again.
                let ret = unsafe { sys::rte_eth_dev_stop(self.port_id) };
                if ret != 0 {
                    return Err(port_err(&self.name, "rte_eth_dev_stop", ret));
                }
                false
            }
            r => return Err(port_err(&self.name, "rte_eth_dev_reset", r)),
        };
        Self::setup(&self.config, self.port_id, &self.pool, negotiate)?;
        Ok(true)
    }

    /// Keeps `k` alive until the port is closed.
    pub(crate) fn keep_until_closed(&mut self, k: Box<dyn std::any::Any + Send + Sync>) {
        self.keep = Some(k);
    }

    pub fn port_id(&self) -> u16 {
        self.port_id
    }

    pub fn devargs(&self) -> &str {
        &self.devargs
    }

    /// The PMD's name (`net_pcap`, `net_vhost`, `net_ring`, ...).
    pub fn driver(&self) -> &str {
        &self.driver
    }

    pub fn pool(&self) -> &Arc<Mempool> {
        &self.pool
    }

    /// The PMD agreed to deliver MARK ids.
    pub fn mark_negotiated(&self) -> bool {
        self.mark_negotiated
    }

    /// `RTE_ETH_RX_OFFLOAD_RSS_HASH` is on.
    pub fn rss_hash_offload(&self) -> bool {
        self.rss_hash_offload
    }

    /// Copies refused on transmit because the pool had no mbuf for them.
    pub fn tx_no_mbuf(&self) -> u64 {
        self.tx_no_mbuf.load(Ordering::Relaxed)
    }

    /// Multi-segment mbufs refused on transmit.
    pub fn tx_chained(&self) -> u64 {
        self.tx_chained.load(Ordering::Relaxed)
    }

    pub fn link(&self) -> LinkState {
        let mut link = sys::rte_eth_link::default();
        // SAFETY: port valid; link is ours to fill; nowait does not block.
        let ret = unsafe { sys::rte_eth_link_get_nowait(self.port_id, &mut link) };
        if ret != 0 {
            return LinkState::default();
        }
        LinkState {
            up: u32::from(link.link_status()) == sys::RTE_ETH_LINK_UP,
            speed_mbps: link.link_speed,
            full_duplex: u32::from(link.link_duplex()) == sys::RTE_ETH_LINK_FULL_DUPLEX,
        }
    }

    /// The PMD's counters.
    pub fn eth_stats(&self) -> EthStats {
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: port valid; s is ours to fill.
        if unsafe { sys::rte_eth_stats_get(self.port_id, &mut s) } != 0 {
            return EthStats::default();
        }
        EthStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        }
    }

    /// Packets taken by rx bursts (all queues).
    pub fn rx_count(&self) -> u64 {
        self.rx
            .iter()
            .map(|q| q.packets.load(Ordering::Relaxed))
            .sum()
    }

    /// Packets accepted by tx bursts (all queues).
    pub fn tx_count(&self) -> u64 {
        self.tx
            .iter()
            .map(|q| q.packets.load(Ordering::Relaxed))
            .sum()
    }
}

impl Drop for EthPort {
    fn drop(&mut self) {
        // No event for a closed port (its id may be reused).
        super::events::unregister(self.port_id);
        // SAFETY: the port was started by us; no queue is in use any more
        // (the switch drops a port after its PMDs stopped using it). Stop
        // then close releases the PMD's mbufs and, for net_pcap, flushes
        // and closes the files.
        unsafe {
            sys::rte_eth_dev_stop(self.port_id);
            sys::rte_eth_dev_close(self.port_id);
        }
        // Now what the PMD used may go.
        self.keep.take();
    }
}

impl Port for EthPort {
    type Buf = Mbuf;

    fn name(&self) -> &str {
        &self.name
    }

    fn n_rxq(&self) -> u16 {
        self.n_rxq
    }

    fn n_txq(&self) -> u16 {
        self.n_txq
    }

    fn mtu(&self) -> usize {
        self.mtu
    }

    #[inline]
    fn rx_burst(&self, queue: u16, out: &mut Burst<Mbuf>) -> usize {
        let Some(count) = self.rx.get(usize::from(queue)) else {
            return 0;
        };
        if self.is_down() {
            return 0;
        }
        register_thread();
        let room = out.room().min(BURST);
        if room == 0 {
            return 0;
        }
        let mut raw = [ptr::null_mut::<sys::rte_mbuf>(); BURST];
        // SAFETY: queue < n_rxq of a started port, used by this thread only
        // (the Port contract); raw has room for `room` pointers.
        let n = usize::from(unsafe {
            sys::rte_eth_rx_burst(self.port_id, queue, raw.as_mut_ptr(), room as u16)
        });
        for &m in &raw[..n] {
            // SAFETY: rx_burst returned n valid mbufs that are now ours.
            let mbuf = unsafe { Mbuf::from_raw(m) };
            // Room was checked: push cannot give the packet back.
            let _ = out.push(mbuf);
        }
        if n > 0 {
            count.add(n as u64);
        }
        n
    }

    #[inline]
    fn tx_burst(&self, queue: u16, pkts: &mut Burst<Mbuf>) -> usize {
        let Some(count) = self.tx.get(usize::from(queue)) else {
            return 0;
        };
        if self.is_down() {
            return 0;
        }
        register_thread();
        // Failed copies (no mbuf) and chains (the port is set up for
        // single-segment mbufs only) move to the back, in order, and are
        // refused with whatever the PMD does not take. One pass checks the
        // packets and collects their pointers.
        let slice = pkts.as_mut_slice();
        let mut raw = [ptr::null_mut::<sys::rte_mbuf>(); BURST];
        let mut valid = 0;
        let (mut no_mbuf, mut chained) = (0u64, 0u64);
        for i in 0..slice.len().min(BURST) {
            if !slice[i].is_valid() {
                no_mbuf += 1;
                continue;
            }
            if !slice[i].is_contiguous() {
                chained += 1;
                continue;
            }
            if valid != i {
                slice[valid..=i].rotate_right(1);
            }
            raw[valid] = slice[valid].as_ptr();
            valid += 1;
        }
        if no_mbuf > 0 {
            self.tx_no_mbuf.fetch_add(no_mbuf, Ordering::Relaxed);
        }
        if chained > 0 {
            self.tx_chained.fetch_add(chained, Ordering::Relaxed);
        }
        if valid == 0 {
            return 0;
        }
        // SAFETY: queue < n_txq of a started port, used by this thread
        // only; raw holds `valid` (<= BURST) valid mbufs we own. The PMD
        // takes ownership of the first `sent`; they are forgotten below.
        let sent = usize::from(unsafe {
            sys::rte_eth_tx_burst(self.port_id, queue, raw.as_mut_ptr(), valid as u16)
        })
        .min(valid);
        for p in pkts.drain_front(sent) {
            let _ = p.into_raw();
        }
        if sent > 0 {
            count.add(sent as u64);
        }
        sent
    }

    #[inline]
    fn is_down(&self) -> bool {
        EthPort::is_down(self)
    }

    fn frame_buf(&self, frame: &[u8]) -> Option<Self::Buf> {
        self.pool.mbuf_from(frame)
    }

    /// `rx` (packets taken by rx bursts) and `tx` (accepted by tx bursts);
    /// the datapath keeps the rest.
    fn stats(&self) -> PortStats {
        PortStats {
            rx: self.rx_count(),
            tx: self.tx_count(),
            ..PortStats::default()
        }
    }
}
