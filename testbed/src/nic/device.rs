//! The emulated NIC's rte_flow side: [`FlowDevice`] over the port's rule
//! table, plus fault injection. Usable from any thread (the offload worker)
//! while the NIC thread classifies.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver};
use offload::device::{Capabilities, Counters, FlowDevice, FlowError, RuleHandle};
use offload::rte::{Action, Rule};

use super::shared::NicShared;

/// Priority levels of group 0 (0 is the highest).
pub const PRIORITY_LEVELS: u32 = 16;

/// Reset notifications a subscriber can fall behind by before losing some
/// (the reset counter still tells how many happened).
const RESET_EVENT_BACKLOG: usize = 64;

/// One port's flow device (`rte_flow_*` with this port's id).
#[derive(Debug, Clone)]
pub struct NicFlowDevice {
    pub(crate) shared: Arc<NicShared>,
}

impl NicFlowDevice {
    /// The port's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Rules installed now.
    pub fn rule_count(&self) -> usize {
        self.shared.read_table().len()
    }

    /// Every installed rule's handle and MARK id, oldest first. (Like a
    /// NIC, the device keeps rules compiled, not as created.)
    pub fn rules(&self) -> Vec<(RuleHandle, Option<u32>)> {
        self.shared
            .read_table()
            .rules()
            .into_iter()
            .map(|r| (RuleHandle(r.handle), r.mark))
            .collect()
    }

    /// Fault injection: the `n`th `create` call from now (1 = the next one)
    /// fails with a device error. 0 cancels.
    pub fn fail_nth_create(&self, n: u64) {
        let mut f = self.shared.lock_faults();
        f.fail_create_at = (n > 0).then(|| f.creates + n);
    }

    /// Fault injection: refuse every `create` with `NoSpace`, as if the
    /// table were full, until turned off.
    pub fn set_refuse_as_full(&self, on: bool) {
        self.shared.lock_faults().refuse_as_full = on;
    }

    /// Fault injection: a NIC reset. Every rule is lost (marks and counters
    /// with them); the reset counter goes up and subscribers are told.
    pub fn reset(&self) {
        self.shared.write_table().clear();
        let n = self.shared.resets.fetch_add(1, Ordering::SeqCst) + 1;
        let mut subs = self.shared.lock_reset_subscribers();
        // A subscriber that went away is forgotten; a slow one misses
        // events but not the count.
        subs.retain(|s| {
            !matches!(
                s.try_send(n),
                Err(crossbeam_channel::TrySendError::Disconnected(_))
            )
        });
    }

    /// How many resets happened (the daemon polls this).
    pub fn reset_count(&self) -> u64 {
        self.shared.resets.load(Ordering::SeqCst)
    }

    /// A channel that receives the reset count after every reset.
    pub fn subscribe_resets(&self) -> Receiver<u64> {
        let (tx, rx) = bounded(RESET_EVENT_BACKLOG);
        self.shared.lock_reset_subscribers().push(tx);
        rx
    }

    /// rte_flow_create: faults, the checks of validate (unless the caller's
    /// validate just made them), capacity, the install.
    fn install(&self, rule: &Rule, validate: bool) -> Result<RuleHandle, FlowError> {
        let refuse_as_full = {
            let mut f = self.shared.lock_faults();
            f.creates += 1;
            if f.fail_create_at == Some(f.creates) {
                f.fail_create_at = None;
                return Err(FlowError::Device(format!(
                    "injected fault: create call #{} failed as a PMD returning EIO would",
                    f.creates
                )));
            }
            f.refuse_as_full
        };
        if validate {
            self.validate(rule)?;
        }
        let mut table = self.shared.write_table();
        if refuse_as_full || table.len() >= self.shared.caps.max_rules {
            return Err(FlowError::NoSpace);
        }
        Ok(RuleHandle(table.insert(rule)))
    }

    /// The NIC's own checks after the profile's: priorities and queues.
    fn check_port(&self, rule: &Rule) -> Result<(), FlowError> {
        if rule.attr.priority >= PRIORITY_LEVELS {
            return Err(FlowError::unsupported(
                format!("attribute priority {}", rule.attr.priority),
                format!(
                    "this NIC has {PRIORITY_LEVELS} priority levels in group 0 (0 highest, {} lowest)",
                    PRIORITY_LEVELS - 1
                ),
            ));
        }
        let n_rxq = self.shared.n_rxq;
        for a in &rule.actions {
            let queues: &[u16] = match a {
                Action::Queue { index } => std::slice::from_ref(index),
                Action::Rss { queues, .. } => queues,
                _ => continue,
            };
            if let Some(q) = queues.iter().find(|q| **q >= n_rxq) {
                return Err(FlowError::invalid(
                    format!("action {}", a.token().to_uppercase()),
                    format!(
                        "rx queue {q} does not exist: port {} has {n_rxq} rx queues (0..{n_rxq})",
                        self.shared.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl FlowDevice for NicFlowDevice {
    fn capabilities(&self) -> &Capabilities {
        &self.shared.caps
    }

    fn validate(&self, rule: &Rule) -> Result<(), FlowError> {
        self.shared.caps.check(rule)?;
        self.check_port(rule)
    }

    fn create(&self, rule: &Rule) -> Result<RuleHandle, FlowError> {
        self.install(rule, true)
    }

    fn create_validated(&self, rule: &Rule) -> Result<RuleHandle, FlowError> {
        self.install(rule, false)
    }

    fn destroy(&self, handle: RuleHandle) -> Result<(), FlowError> {
        if self.shared.write_table().remove(handle.0) {
            Ok(())
        } else {
            Err(FlowError::invalid(
                format!("rule {handle}"),
                format!(
                    "no such rule on port {} (already destroyed, or lost in a reset)",
                    self.shared.name
                ),
            ))
        }
    }

    fn query(&self, handle: RuleHandle) -> Result<Counters, FlowError> {
        let table = self.shared.read_table();
        let Some(r) = table.get(handle.0) else {
            return Err(FlowError::invalid(
                format!("rule {handle}"),
                format!(
                    "no such rule on port {} (already destroyed, or lost in a reset)",
                    self.shared.name
                ),
            ));
        };
        match &r.counter {
            Some(c) => {
                let c = c.get();
                Ok(Counters {
                    hits: c.packets,
                    bytes: c.bytes,
                })
            }
            None => Err(FlowError::unsupported(
                "action COUNT",
                format!("rule {handle} has no COUNT action to query; add one when creating it"),
            )),
        }
    }

    fn flush(&self) -> Result<(), FlowError> {
        self.shared.write_table().clear();
        Ok(())
    }
}
