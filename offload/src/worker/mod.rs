//! The offload worker (DESIGN §2 `worker`, §3, §4).
//!
//! [`OffloadEngine`] is the whole lifecycle as a deterministic state machine:
//! no threads, no clock of its own (`now` is a parameter), the NICs behind
//! the [`FlowDevice`](crate::device::FlowDevice)s it is given per port, and PMD table updates handed to
//! an [`UpdateSink`]. [`OffloadWorker`] is the thin thread around it: PMDs
//! `try_send` requests on a bounded crossbeam channel (a full queue leaves
//! the megaflow in software), the thread blocks on receive, drains a batch,
//! and sends [`PmdUpdate`]s on one unbounded channel per PMD, which each PMD
//! applies at the top of its poll loop ([`PmdOffload::quiesce`]). Nothing
//! here ever waits for a PMD, and no PMD ever waits for the worker.
//!
//! Per megaflow (one entry per ingress port and ufid, shared by every PMD
//! that installed it) the state is one of [`OffloadState`]:
//! - `Put`: a new entry is `Pending` (or `Software` when its port has no
//!   flow device) and queued; [`OffloadEngine::process`] translates it,
//!   validates, allocates a mark, publishes mark → megaflow to every PMD
//!   holding a copy, then creates the rule. A refusal unpublishes, releases
//!   the mark and records why: `Rejected` (translate refused, or the device
//!   said `Unsupported`/`Invalid`: permanent) or `Failed` (`NoSpace`,
//!   `Device`, marks exhausted: retried when that changes).
//! - `Modify` with the same ufid (actions changed): the rule and the mark
//!   stay; with a different ufid (the match changed): delete, then put.
//! - `Delete`: the PMD's copy goes (it is unpublished there); when the last
//!   copy goes, the rule is destroyed, the mark unpublished, quarantined
//!   and later freed. A failed destroy leaves the entry `Removing`, still
//!   holding its mark, until the device changes.
//! - Port removal destroys that port's rules and releases their marks; its
//!   megaflows stay, in `Software`, until their PMDs delete them.
//! - NIC reset: the port's rules are gone; its megaflows go back to
//!   `Pending` and are offered again.
//!
//! Failed megaflows are retried one per rule destroyed on their port, all
//! of them on a reset, and those waiting for a mark as marks leave
//! quarantine: never in a loop of their own.
//!
//! Using the thread: the daemon spawns one [`OffloadWorker`], gives it each
//! NIC port's device ([`OffloadWorker::add_port`]; VM ports get none, so
//! their megaflows stay `Software`), and registers each PMD
//! ([`OffloadWorker::add_pmd`]), moving the returned [`PmdOffload`] into the
//! PMD thread. There, at the top of every poll loop, [`PmdOffload::quiesce`]
//! applies the worker's [`PmdUpdate`]s to the PMD's [`MarkTable`] and
//! reports the quiescent point; the fast path calls
//! [`PmdOffload::lookup`]. After an upcall the PMD calls
//! [`PmdOffload::offer_put`] (a `QueueFull` leaves the megaflow in software
//! until the next revalidation sweep offers it again); when it removes a
//! megaflow, [`PmdOffload::offer_delete`]. A datapath that keeps its own
//! MarkTable and delete backlog uses the two halves instead
//! ([`PmdOffload::into_parts`]: [`PmdRequests`], [`PmdUpdates`]).

//!
//! Files: the request and state types here; [`engine`] the pure state
//! machine; [`thread`] the worker thread, the PMDs' halves and the channels.

mod engine;
#[cfg(test)]
mod tests;
mod thread;

pub use engine::*;
pub use thread::*;

use std::time::Instant;

use fallback::cache::FlowHandle;
use fallback::megaflow::Ufid;
use fallback::ofproto::Match;
use thiserror::Error;

use crate::device::{FlowError, RuleHandle};
use crate::marks::{Mark, MarkError};
use crate::translate::Rejected;

pub use crate::marks::{Epoch, PmdId, PmdUpdate, PortId};

/// A PMD installed a megaflow and offers it for offload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutRequest {
    pub pmd: PmdId,
    /// The megaflow's `in_port`: the port whose NIC gets the rule.
    pub port: PortId,
    pub ufid: Ufid,
    pub r#match: Match,
    /// The PMD's own copy, which its [`MarkTable`] will point to.
    pub handle: FlowHandle,
    /// When the PMD enqueued the request (for the insert latency).
    pub enqueued: Instant,
}

/// What PMDs (and the daemon on their behalf) ask of the worker.
// The variants are sized by the match (176 bytes); boxing would put an
// allocation on the PMD's upcall path for no gain.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffloadRequest {
    Put(PutRequest),
    /// Revalidation changed a megaflow of `new.pmd` on `new.port`. Same
    /// ufid: only its actions changed (`new.handle` is its copy, possibly
    /// a new one). Another ufid: the match changed; `old` is deleted, then
    /// `new` is put (break before make).
    Modify {
        old: Ufid,
        new: PutRequest,
    },
    /// `pmd` removed its copy of the megaflow.
    Delete {
        pmd: PmdId,
        port: PortId,
        ufid: Ufid,
    },
}

impl OffloadRequest {
    /// The ingress port the request is about (it picks the shard).
    pub fn port(&self) -> PortId {
        match self {
            OffloadRequest::Put(p) => p.port,
            OffloadRequest::Modify { new, .. } => new.port,
            OffloadRequest::Delete { port, .. } => *port,
        }
    }
}

/// Why a megaflow cannot be offloaded (permanent for that megaflow).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RejectReason {
    #[error("{0}")]
    Translate(Rejected),
    #[error(
        "the match's in_port {rule_port} is not port {port}; this is a flowmark bug, report it"
    )]
    PortMismatch { port: PortId, rule_port: PortId },
    #[error("{0}")]
    Device(FlowError),
}

impl RejectReason {
    /// A short stable key for counting by reason.
    pub fn kind(&self) -> String {
        match self {
            RejectReason::Translate(r) => match r.field {
                Some(f) => format!("translate:{f}"),
                None => "translate".to_string(),
            },
            RejectReason::PortMismatch { .. } => "port_mismatch".to_string(),
            RejectReason::Device(e) => e.kind().to_string(),
        }
    }
}

/// Why a valid rule is not on the NIC (retried when things change).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FailReason {
    #[error("{0}")]
    Device(FlowError),
    #[error("{0}")]
    Marks(MarkError),
}

impl FailReason {
    pub fn kind(&self) -> &'static str {
        match self {
            FailReason::Device(e) => e.kind(),
            FailReason::Marks(_) => "marks_exhausted",
        }
    }
}

/// A megaflow's offload state (DESIGN §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffloadState {
    /// Not offered: the port has no flow device.
    Software,
    /// Queued for the device.
    Pending,
    Offloaded {
        port: PortId,
        mark: Mark,
        rule: RuleHandle,
    },
    // The reasons are boxed: every megaflow has a state, few have a reason,
    // and an unboxed one would double the size of every state.
    Rejected {
        reason: Box<RejectReason>,
    },
    Failed {
        error: Box<FailReason>,
    },
    /// Every PMD's copy is gone but destroying the rule failed: the rule
    /// may still mark packets, so the mark stays reserved until the device
    /// changes (a later destroy succeeds, a reset, the port's removal).
    Removing {
        port: PortId,
        mark: Mark,
        rule: RuleHandle,
        error: Box<FlowError>,
    },
}

impl OffloadState {
    /// `software|pending|offloaded|rejected|failed|removing` (DESIGN §5).
    pub fn name(&self) -> &'static str {
        match self {
            OffloadState::Software => "software",
            OffloadState::Pending => "pending",
            OffloadState::Offloaded { .. } => "offloaded",
            OffloadState::Rejected { .. } => "rejected",
            OffloadState::Failed { .. } => "failed",
            OffloadState::Removing { .. } => "removing",
        }
    }

    /// The mark this megaflow holds (its rule is, or may be, on the NIC).
    pub fn mark(&self) -> Option<Mark> {
        match self {
            OffloadState::Offloaded { mark, .. } | OffloadState::Removing { mark, .. } => {
                Some(*mark)
            }
            _ => None,
        }
    }

    pub fn rule(&self) -> Option<RuleHandle> {
        match self {
            OffloadState::Offloaded { rule, .. } | OffloadState::Removing { rule, .. } => {
                Some(*rule)
            }
            _ => None,
        }
    }

    /// Why it is not offloaded (Rejected, Failed) or not yet gone (Removing).
    pub fn reason(&self) -> Option<String> {
        match self {
            OffloadState::Rejected { reason } => Some(reason.to_string()),
            OffloadState::Failed { error } => Some(error.to_string()),
            OffloadState::Removing { error, .. } => Some(error.to_string()),
            _ => None,
        }
    }
}

/// Engine-level misuse, reported to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EngineError {
    #[error(
        "port {port}'s NIC carries marks up to {device_max} but the mark pool goes to {pool_max}; \
         set the offload max-marks setting to at most {device_max}"
    )]
    MarkRange {
        port: PortId,
        device_max: u32,
        pool_max: u32,
    },
    #[error(transparent)]
    Marks(#[from] MarkError),
}

/// Receives the table updates meant for each PMD.
pub trait UpdateSink {
    fn send(&mut self, pmd: PmdId, update: PmdUpdate);

    /// Hands what was sent so far on to the PMDs. A sink may hold updates
    /// back until then (one message per PMD per batch); the engine flushes
    /// between a batch's publications and its rule creations, and the
    /// caller flushes after every engine call.
    fn flush(&mut self) {}
}

/// Collects updates in order (tests, or a caller that forwards them).
impl UpdateSink for Vec<(PmdId, PmdUpdate)> {
    fn send(&mut self, pmd: PmdId, update: PmdUpdate) {
        self.push((pmd, update));
    }
}

/// The offload shard (worker thread) that owns `port`'s megaflows, of
/// `shards`.
///
/// Sharding is by ingress port: one port's megaflows, its device, its NIC
/// rules, its retry queue, its resets and its removal all belong to one
/// shard, so every DESIGN §3 rule holds within the shard exactly as with
/// one worker (one rule per (port, ufid), break-before-make for a changed
/// match, a freed rule retrying that port's failed megaflows). Marks are
/// what ports share (one MarkTable per PMD): each shard allocates from its
/// own residue class of `1..=max_marks` ([`crate::marks::MarkPool::sharded`]),
/// so two shards never hand out the same mark. The price: one port's
/// insertions run on one thread.
pub fn shard_of(port: PortId, shards: usize) -> usize {
    if shards <= 1 {
        0
    } else {
        port as usize % shards
    }
}
