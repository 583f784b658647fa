//! ethdev interrupt events: `RTE_ETH_EVENT_INTR_RESET` (the device must
//! be reset; its flow rules are gone) and `RTE_ETH_EVENT_INTR_RMV` (the
//! device is gone). The callback runs on DPDK's interrupt thread and only
//! records the event; the daemon's main thread drains them
//! ([`take`], through the port factory) and acts (`daemon::events`).

use super::{strerror, sys, DpdkError};
use fallback::sync::Recover;
use std::ffi::{c_int, c_void};
use std::sync::{Mutex, MutexGuard};

/// An ethdev event flowmark acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EthEvent {
    /// `RTE_ETH_EVENT_INTR_RESET`.
    IntrReset,
    /// `RTE_ETH_EVENT_INTR_RMV`.
    IntrRmv,
}

/// Events recorded and not taken yet: (DPDK port id, event). One queue per
/// process, as DPDK's interrupt thread is.
static EVENTS: Mutex<Vec<(u16, EthEvent)>> = Mutex::new(Vec::new());

fn lock() -> MutexGuard<'static, Vec<(u16, EthEvent)>> {
    EVENTS.lock().recover()
}

/// Records an event for `port_id`: what the callback does. Public so that
/// the handling can be exercised on virtual devices, which never raise
/// these events.
pub fn record(port_id: u16, event: EthEvent) {
    lock().push((port_id, event));
}

/// Takes the recorded events of the ports `mine` selects, in order; the
/// others stay.
pub fn take(mine: impl Fn(u16) -> bool) -> Vec<(u16, EthEvent)> {
    let mut g = lock();
    let (taken, rest): (Vec<_>, Vec<_>) = g.drain(..).partition(|(p, _)| mine(*p));
    *g = rest;
    taken
}

const WATCHED: [(sys::rte_eth_event_type, EthEvent); 2] = [
    (
        sys::rte_eth_event_type_RTE_ETH_EVENT_INTR_RESET,
        EthEvent::IntrReset,
    ),
    (
        sys::rte_eth_event_type_RTE_ETH_EVENT_INTR_RMV,
        EthEvent::IntrRmv,
    ),
];

/// The callback DPDK calls on its interrupt thread: records, never blocks
/// for long (one short mutex), never unwinds into C.
unsafe extern "C" fn on_event(
    port_id: u16,
    event: sys::rte_eth_event_type,
    _cb_arg: *mut c_void,
    _ret_param: *mut c_void,
) -> c_int {
    if let Some((_, e)) = WATCHED.iter().find(|(t, _)| *t == event) {
        record(port_id, *e);
    }
    0
}

/// Registers the callback for both events on `port_id`.
pub(crate) fn register(name: &str, port_id: u16) -> Result<(), DpdkError> {
    for (ty, _) in WATCHED {
        // SAFETY: port_id is a valid port; on_event is a plain function
        // that lives for the process and uses no argument (null cb_arg),
        // so nothing it points to can dangle.
        let ret = unsafe {
            sys::rte_eth_dev_callback_register(port_id, ty, Some(on_event), std::ptr::null_mut())
        };
        if ret != 0 {
            unregister(port_id);
            return Err(DpdkError::Port {
                name: name.to_string(),
                what: "rte_eth_dev_callback_register",
                reason: strerror(-ret),
            });
        }
    }
    Ok(())
}

/// Unregisters the callback on `port_id` (before the port is closed) and
/// drops its events not taken yet.
pub(crate) fn unregister(port_id: u16) {
    for (ty, _) in WATCHED {
        for _ in 0..1000 {
            // SAFETY: the same (port, event, function, argument) as
            // registered; unregistering one that is not registered is a
            // harmless error.
            let ret = unsafe {
                sys::rte_eth_dev_callback_unregister(
                    port_id,
                    ty,
                    Some(on_event),
                    std::ptr::null_mut(),
                )
            };
            // -EAGAIN: the callback is running right now; it is short.
            if ret != -11 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    let _ = take(|p| p == port_id);
}
