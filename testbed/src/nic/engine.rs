//! The NIC thread: classifies frames from the wire against the rule table
//! (mark, RSS, queue, drop, count) and places them on the rx rings. It
//! models hardware, so its work is not the switch's; it blocks when idle.

use std::mem;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError};
use fallback::port::{HeapPacket, PacketBuf, BURST};

use super::rss::{self, HashTypes};
use super::shared::NicShared;
use super::table::{Fate, RuleTable};
use crate::matcher::Headers;
use crate::pool::PacketPool;

/// How often a NIC blocked on a full ring (back-pressure) checks whether it
/// is being stopped. Only while blocked: an idle NIC sleeps in `recv`.
const BLOCKED_RECHECK: Duration = Duration::from_millis(50);

/// What travels on the wire channel.
#[derive(Debug)]
pub(crate) enum WireMsg {
    Frame(HeapPacket),
    /// Answer once every earlier frame is handled.
    Sync(Sender<()>),
    Stop,
}

pub(crate) struct Engine {
    pub shared: Arc<NicShared>,
    pub wire: Receiver<WireMsg>,
    pub rings: Vec<Sender<HeapPacket>>,
    pub pool: PacketPool,
    /// Classified frames and their queue, delivered after the table lock is
    /// released (so a blocked ring never holds up the offload worker).
    batch: Vec<(HeapPacket, u16)>,
    scratch: Vec<u64>,
    default_types: HashTypes,
}

impl Engine {
    pub fn new(
        shared: Arc<NicShared>,
        wire: Receiver<WireMsg>,
        rings: Vec<Sender<HeapPacket>>,
        pool: PacketPool,
    ) -> Self {
        Engine {
            shared,
            wire,
            rings,
            pool,
            batch: Vec::with_capacity(BURST),
            scratch: Vec::with_capacity(64),
            default_types: HashTypes::pmd_default(),
        }
    }

    pub fn run(mut self) {
        while let Ok(first) = self.wire.recv() {
            let mut control = None;
            {
                let shared = Arc::clone(&self.shared);
                let table = shared.read_table();
                let mut next = Some(first);
                while let Some(msg) = next.take() {
                    match msg {
                        WireMsg::Frame(p) => self.classify(&table, p),
                        other => {
                            control = Some(other);
                            break;
                        }
                    }
                    if self.batch.len() >= BURST {
                        break;
                    }
                    next = self.wire.try_recv().ok();
                }
            }
            self.deliver_batch();
            match control {
                Some(WireMsg::Sync(done)) => {
                    let _ = done.send(());
                }
                Some(WireMsg::Stop) => return,
                _ => {}
            }
        }
    }

    fn classify(&mut self, table: &RuleTable, mut pkt: HeapPacket) {
        let c = &self.shared.counters;
        let len = pkt.len() as u64;
        c.wire.add(1, len);
        let h = Headers::parse(pkt.data());
        pkt.set_mark(None);
        let (hash, queue) = match table.lookup(&h, &mut self.scratch) {
            None => {
                let hash = rss::hash(&self.shared.toeplitz, &h, self.default_types);
                (hash, self.shared.default_reta.queue(hash))
            }
            Some(rule) => {
                c.rule_hits.fetch_add(1, Ordering::Relaxed);
                if let Some(counter) = &rule.counter {
                    counter.add(1, len);
                }
                if let Some(mark) = rule.mark {
                    pkt.set_mark(Some(mark));
                }
                match &rule.fate {
                    Fate::Drop => {
                        c.rule_dropped.fetch_add(1, Ordering::Relaxed);
                        self.pool.put(pkt);
                        return;
                    }
                    Fate::Queue(q) => (None, *q),
                    Fate::Rss { types, reta } => {
                        let hash = rss::hash(&self.shared.toeplitz, &h, *types);
                        (hash, reta.queue(hash))
                    }
                    Fate::Default => {
                        let hash = rss::hash(&self.shared.toeplitz, &h, self.default_types);
                        (hash, self.shared.default_reta.queue(hash))
                    }
                }
            }
        };
        if pkt.mark().is_some() {
            c.marked.fetch_add(1, Ordering::Relaxed);
        }
        pkt.set_rss_hash(hash);
        self.batch.push((pkt, queue));
    }

    fn deliver_batch(&mut self) {
        let mut batch = mem::take(&mut self.batch);
        for (pkt, queue) in batch.drain(..) {
            self.deliver(pkt, queue);
        }
        self.batch = batch;
    }

    fn deliver(&self, pkt: HeapPacket, queue: u16) {
        let q = usize::from(queue);
        let c = &self.shared.counters;
        let len = pkt.len() as u64;
        // Queues were checked when the rule was created; a bad one is a
        // miss, not a panic.
        let Some(ring) = self.rings.get(q) else {
            self.missed(0, pkt);
            return;
        };
        let mut pkt = match ring.try_send(pkt) {
            Ok(()) => {
                c.placed[q].add(1, len);
                return;
            }
            Err(TrySendError::Full(p))
                if self.shared.backpressure.load(Ordering::Relaxed)
                    && !self.shared.is_stopping() =>
            {
                p
            }
            Err(TrySendError::Full(p)) | Err(TrySendError::Disconnected(p)) => {
                self.missed(q, p);
                return;
            }
        };
        loop {
            match ring.send_timeout(pkt, BLOCKED_RECHECK) {
                Ok(()) => {
                    c.placed[q].add(1, len);
                    return;
                }
                Err(SendTimeoutError::Timeout(p)) if !self.shared.is_stopping() => pkt = p,
                Err(SendTimeoutError::Timeout(p)) | Err(SendTimeoutError::Disconnected(p)) => {
                    self.missed(q, p);
                    return;
                }
            }
        }
    }

    fn missed(&self, q: usize, pkt: HeapPacket) {
        if let Some(m) = self.shared.counters.rx_missed.get(q) {
            m.fetch_add(1, Ordering::Relaxed);
        }
        self.pool.put(pkt);
    }
}
