//! State shared by the NIC thread, the flow device and the port: the rule
//! table (behind a lock: the NIC thread takes it once per batch, the offload
//! worker per call; the switch's fast path never does), counters and faults.

use fallback::sync::Recover;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crossbeam_channel::Sender;
use offload::device::Capabilities;

use super::rss::Reta;
use super::table::RuleTable;
use crate::sink::AtomicCount;
use crate::toeplitz::Toeplitz;

#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// `create` calls so far.
    pub creates: u64,
    /// The call number that fails.
    pub fail_create_at: Option<u64>,
    pub refuse_as_full: bool,
}

/// Counters of the NIC thread (hardware counters).
#[derive(Debug)]
pub(crate) struct NicCounters {
    /// Frames that arrived from the wire.
    pub wire: AtomicCount,
    /// Frames placed on rx rings, per queue.
    pub placed: Vec<AtomicCount>,
    /// Frames lost to a full rx ring, per queue (`imissed`).
    pub rx_missed: Vec<AtomicU64>,
    /// Frames a DROP rule discarded.
    pub rule_dropped: AtomicU64,
    /// Frames some rule matched.
    pub rule_hits: AtomicU64,
    /// Frames delivered with a mark.
    pub marked: AtomicU64,
}

impl NicCounters {
    pub fn new(n_rxq: u16) -> Self {
        NicCounters {
            wire: AtomicCount::default(),
            placed: (0..n_rxq).map(|_| AtomicCount::default()).collect(),
            rx_missed: (0..n_rxq).map(|_| AtomicU64::new(0)).collect(),
            rule_dropped: AtomicU64::new(0),
            rule_hits: AtomicU64::new(0),
            marked: AtomicU64::new(0),
        }
    }
}

#[derive(Debug)]
pub(crate) struct NicShared {
    pub name: String,
    pub caps: Capabilities,
    pub n_rxq: u16,
    pub toeplitz: Toeplitz,
    /// The port's RETA for packets no rule steers.
    pub default_reta: Reta,
    table: RwLock<RuleTable>,
    faults: Mutex<Faults>,
    pub resets: AtomicU64,
    reset_subscribers: Mutex<Vec<Sender<u64>>>,
    pub counters: NicCounters,
    /// Wait for room in a full rx ring instead of counting `rx_missed`.
    pub backpressure: AtomicBool,
    /// Set when the NIC is being stopped: nothing waits any more.
    pub stopping: AtomicBool,
}

impl NicShared {
    pub fn new(name: String, caps: Capabilities, n_rxq: u16, backpressure: bool) -> Self {
        NicShared {
            name,
            caps,
            n_rxq,
            toeplitz: Toeplitz::default(),
            default_reta: Reta::over_queues(n_rxq),
            table: RwLock::default(),
            faults: Mutex::default(),
            resets: AtomicU64::new(0),
            reset_subscribers: Mutex::default(),
            counters: NicCounters::new(n_rxq),
            backpressure: AtomicBool::new(backpressure),
            stopping: AtomicBool::new(false),
        }
    }

    // A panic while holding one of these locks leaves consistent data (each
    // update is a single call), so a poisoned lock is used as is (`recover`).

    pub fn read_table(&self) -> RwLockReadGuard<'_, RuleTable> {
        self.table.read().recover()
    }

    pub fn write_table(&self) -> RwLockWriteGuard<'_, RuleTable> {
        self.table.write().recover()
    }

    pub fn lock_faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().recover()
    }

    pub fn lock_reset_subscribers(&self) -> MutexGuard<'_, Vec<Sender<u64>>> {
        self.reset_subscribers.lock().recover()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }
}
