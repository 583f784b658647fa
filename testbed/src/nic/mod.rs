//! The emulated offload NIC: an rte_flow PMD in software.
//!
//! One [`Nic`] is one port with three faces, each usable from its own
//! thread:
//! - the [`Wire`], where traffic arrives (generators, pcap files);
//! - the NIC thread, which classifies each frame against the rule table
//!   (MARK, RSS, QUEUE, DROP, COUNT) and places it on an rx ring, or counts
//!   it in `rx_missed` when the ring is full (unless back-pressure is on);
//! - the switch-facing [`NicPort`] (the `Port` trait) and the
//!   [`NicFlowDevice`] (the `FlowDevice` trait) for the offload worker.

mod device;
mod engine;
mod port;
pub mod rss;
mod shared;
mod table;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{bounded, Sender};
use fallback::port::HeapPacket;
use offload::device::{Capabilities, Profile};
use thiserror::Error;

pub use device::{NicFlowDevice, PRIORITY_LEVELS};
pub use port::NicPort;

use crate::inject::{Inject, InjectError};
use crate::pool::PacketPool;
use crate::sink::{AtomicCount, Count, TxSink};
use engine::{Engine, WireMsg};
use shared::NicShared;

/// How an emulated NIC port is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicConfig {
    pub name: String,
    pub rxqs: u16,
    pub txqs: u16,
    /// Descriptors per rx ring.
    pub rx_ring_size: usize,
    /// Frames the wire holds before `inject` blocks.
    pub wire_ring_size: usize,
    pub profile: Profile,
    /// Overrides the profile's rule capacity.
    pub max_rules: Option<usize>,
    /// Wait for room in full rx rings instead of counting `rx_missed`
    /// (so that a run can send exactly N packets and lose none).
    pub backpressure: bool,
    /// Transmitted packets kept for tests and pcap files (0: none).
    pub keep_tx: usize,
    /// Count transmitted packets per flow id (the generator's tag).
    pub count_flows: bool,
    /// The largest L3 packet transmitted (Ethernet header and tags on top).
    pub mtu: usize,
}

impl NicConfig {
    /// Defaults: 2 rx and 2 tx queues of 1024 descriptors, the generic
    /// profile, no back-pressure, nothing kept.
    pub fn new(name: impl Into<String>) -> Self {
        NicConfig {
            name: name.into(),
            rxqs: 2,
            txqs: 2,
            rx_ring_size: 1024,
            wire_ring_size: 4096,
            profile: Profile::Generic,
            max_rules: None,
            backpressure: false,
            keep_tx: 0,
            count_flows: false,
            mtu: 1500,
        }
    }

    /// The capabilities the flow device reports.
    pub fn capabilities(&self) -> Capabilities {
        let caps = self.profile.capabilities();
        Capabilities {
            max_rules: self.max_rules.unwrap_or(caps.max_rules),
            ..caps
        }
    }
}

#[derive(Debug, Error)]
pub enum NicError {
    #[error("invalid configuration for NIC port {name}: {why}")]
    Config { name: String, why: String },
    #[error(
        "cannot start the thread of NIC port {name}: {source}; check the process's thread limit"
    )]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// A NIC's hardware counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NicStats {
    /// Frames that arrived on the wire.
    pub wire: Count,
    /// Frames placed on the rx rings, all queues.
    pub placed: Count,
    /// Frames taken from the rx rings by the switch.
    pub rx: Count,
    /// Frames lost to full rx rings, per queue.
    pub rx_missed: Vec<u64>,
    /// Frames discarded by DROP rules.
    pub rule_dropped: u64,
    /// Frames some rule matched.
    pub rule_hits: u64,
    /// Frames delivered with a mark.
    pub marked: u64,
    /// Frames transmitted by the switch.
    pub tx: Count,
    pub rules: usize,
    pub resets: u64,
}

impl NicStats {
    /// Every frame from the wire is accounted for once the NIC is synced:
    /// `wire = placed + rule_dropped + Σ rx_missed`.
    pub fn wire_accounted(&self) -> bool {
        self.wire.packets
            == self.placed.packets + self.rule_dropped + self.rx_missed.iter().sum::<u64>()
    }
}

/// Where frames arrive on a NIC port. Cloneable; any thread.
#[derive(Clone, Debug)]
pub struct Wire {
    port: Arc<str>,
    tx: Sender<WireMsg>,
    pool: PacketPool,
}

impl Wire {
    fn stopped(&self) -> InjectError {
        InjectError::Stopped {
            port: self.port.to_string(),
        }
    }

    /// Sends a frame already in a buffer (no copy).
    pub fn send_packet(&self, pkt: HeapPacket) -> Result<(), InjectError> {
        self.tx
            .send(WireMsg::Frame(pkt))
            .map_err(|_| self.stopped())
    }
}

impl Inject for Wire {
    fn port_name(&self) -> &str {
        &self.port
    }

    fn inject(&self, frame: &[u8]) -> Result<(), InjectError> {
        self.send_packet(self.pool.packet(frame))
    }

    fn sync(&self) -> Result<(), InjectError> {
        let (done_tx, done_rx) = bounded(1);
        self.tx
            .send(WireMsg::Sync(done_tx))
            .map_err(|_| self.stopped())?;
        done_rx.recv().map_err(|_| self.stopped())
    }
}

/// An emulated NIC port and its thread. Dropping it stops the thread.
#[derive(Debug)]
pub struct Nic {
    shared: Arc<NicShared>,
    port: Arc<NicPort>,
    device: Arc<NicFlowDevice>,
    wire: Wire,
    thread: Option<JoinHandle<()>>,
}

impl Nic {
    /// Builds the port and starts its thread. Buffers come from `pool` and
    /// go back to it when transmitted (share one pool among the ports of a
    /// switch).
    pub fn start(config: NicConfig, pool: PacketPool) -> Result<Nic, NicError> {
        let bad = |why: &str| NicError::Config {
            name: config.name.clone(),
            why: why.to_string(),
        };
        if config.rxqs == 0 || config.txqs == 0 {
            return Err(bad("rxqs and txqs must be at least 1"));
        }
        if config.rx_ring_size == 0 || config.wire_ring_size == 0 {
            return Err(bad("ring sizes must be at least 1"));
        }
        let shared = Arc::new(NicShared::new(
            config.name.clone(),
            config.capabilities(),
            config.rxqs,
            config.backpressure,
        ));
        let (ring_tx, ring_rx): (Vec<_>, Vec<_>) = (0..config.rxqs)
            .map(|_| bounded::<HeapPacket>(config.rx_ring_size))
            .unzip();
        let (wire_tx, wire_rx) = bounded(config.wire_ring_size);
        let engine = Engine::new(Arc::clone(&shared), wire_rx, ring_tx, pool.clone());
        let thread = thread::Builder::new()
            .name(format!("nic-{}", config.name))
            .spawn(move || engine.run())
            .map_err(|source| NicError::Spawn {
                name: config.name.clone(),
                source,
            })?;
        let port = Arc::new(NicPort {
            shared: Arc::clone(&shared),
            rings: ring_rx,
            rx_counts: (0..config.rxqs).map(|_| AtomicCount::default()).collect(),
            n_txq: config.txqs,
            sink: {
                let sink = TxSink::new(config.txqs, config.keep_tx, pool.clone());
                if config.count_flows {
                    sink.with_flow_counts()
                } else {
                    sink
                }
            },
            mtu: config.mtu,
        });
        Ok(Nic {
            device: Arc::new(NicFlowDevice {
                shared: Arc::clone(&shared),
            }),
            shared,
            port,
            wire: Wire {
                port: config.name.into(),
                tx: wire_tx,
                pool,
            },
            thread: Some(thread),
        })
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The switch-facing port (`Port` trait).
    pub fn port(&self) -> &Arc<NicPort> {
        &self.port
    }

    /// The rte_flow side (`FlowDevice` trait) and fault injection.
    pub fn flow_device(&self) -> &Arc<NicFlowDevice> {
        &self.device
    }

    /// Where traffic is injected.
    pub fn wire(&self) -> &Wire {
        &self.wire
    }

    /// Turns back-pressure on or off (see [`NicConfig::backpressure`]).
    pub fn set_backpressure(&self, on: bool) {
        self.shared.backpressure.store(on, Ordering::Relaxed);
    }

    pub fn stats(&self) -> NicStats {
        let c = &self.shared.counters;
        let sum = |v: &[AtomicCount]| {
            v.iter().fold(Count::default(), |a, c| {
                let c = c.get();
                Count {
                    packets: a.packets + c.packets,
                    bytes: a.bytes + c.bytes,
                }
            })
        };
        NicStats {
            wire: c.wire.get(),
            placed: sum(&c.placed),
            rx: sum(&self.port.rx_counts),
            rx_missed: c
                .rx_missed
                .iter()
                .map(|m| m.load(Ordering::Relaxed))
                .collect(),
            rule_dropped: c.rule_dropped.load(Ordering::Relaxed),
            rule_hits: c.rule_hits.load(Ordering::Relaxed),
            marked: c.marked.load(Ordering::Relaxed),
            tx: self.port.sink.count(),
            rules: self.device.rule_count(),
            resets: self.device.reset_count(),
        }
    }

    /// Stops the NIC thread; frames still on the wire are handled without
    /// waiting (a full ring counts them missed). Idempotent.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::Relaxed);
        let _ = self.wire.tx.send(WireMsg::Stop);
        let _ = thread.join();
    }
}

impl Drop for Nic {
    fn drop(&mut self) {
        self.stop();
    }
}
