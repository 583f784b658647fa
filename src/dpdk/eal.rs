//! EAL initialisation (once per process) and registration of the threads
//! that use mbufs (PMD threads are plain threads, not EAL lcores; a
//! registered thread gets an lcore id and so the mempools' per-lcore cache).

use super::{rte_errno, strerror, sys, DpdkError};
use std::cell::Cell;
use std::ffi::{c_char, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static STARTED: AtomicBool = AtomicBool::new(false);
static READY: AtomicBool = AtomicBool::new(false);
/// The argv given to `rte_eal_init`: EAL may keep pointers into it.
static ARGV: OnceLock<Vec<CString>> = OnceLock::new();

/// The initialised EAL. There is one per process; [`Eal::cleanup`] ends it.
#[derive(Debug)]
pub struct Eal {
    args: Vec<String>,
}

impl Eal {
    /// Runs `rte_eal_init` with `args` (as in `[dpdk] eal_args`, without the
    /// program name). A second call in the same process is
    /// [`DpdkError::EalTwice`].
    pub fn init(args: &[String]) -> Result<Eal, DpdkError> {
        if STARTED.swap(true, Ordering::SeqCst) {
            return Err(DpdkError::EalTwice);
        }
        let mut all = vec!["flowmark".to_string()];
        all.extend(args.iter().cloned());
        let cstrings = all
            .iter()
            .map(|a| CString::new(a.as_str()).map_err(|_| DpdkError::BadArg(a.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let cstrings = ARGV.get_or_init(|| cstrings);
        let mut argv: Vec<*mut c_char> = cstrings.iter().map(|c| c.as_ptr().cast_mut()).collect();
        argv.push(std::ptr::null_mut());
        let argc = cstrings.len() as i32;
        // SAFETY: argv holds argc pointers to NUL-terminated strings that
        // live for the rest of the process (ARGV is a static), then a null;
        // EAL may permute the pointer array, which is ours. This runs once
        // per process (STARTED).
        let ret = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        if ret < 0 {
            return Err(DpdkError::EalInit {
                args: args.join(" "),
                reason: strerror(rte_errno()),
            });
        }
        READY.store(true, Ordering::SeqCst);
        Ok(Eal {
            args: args.to_vec(),
        })
    }

    /// True once `init` succeeded (and until `cleanup`).
    pub fn is_ready() -> bool {
        READY.load(Ordering::SeqCst)
    }

    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// `rte_eal_cleanup`: call last, after every port is closed and every
    /// mbuf freed.
    pub fn cleanup(self) {
        READY.store(false, Ordering::SeqCst);
        // SAFETY: the EAL was initialised (self exists only then) and is
        // cleaned up once (cleanup consumes the only Eal).
        unsafe {
            sys::rte_eal_cleanup();
        }
    }
}

/// The calling thread's EAL registration: unknown until the first
/// [`register_thread`], then one of the states below (the check after that
/// is one thread-local read).
const UNKNOWN: u8 = 0;
/// Registered by `register_thread`: unregistered when the thread exits.
const REGISTERED_HERE: u8 = 1;
/// An EAL thread already (the main lcore), or registration failed (no
/// free lcore; mbufs still work, without the mempool's per-lcore cache):
/// nothing to do, now or at exit.
const SETTLED: u8 = 2;

/// Unregisters the thread from the EAL when it exits.
struct Registration(Cell<u8>);

impl Drop for Registration {
    fn drop(&mut self) {
        if self.0.get() == REGISTERED_HERE && Eal::is_ready() {
            // SAFETY: this thread registered itself (flag set) and is
            // exiting; unregistering releases its lcore id.
            unsafe { sys::rte_thread_unregister() };
        }
    }
}

thread_local! {
    static REGISTERED: Registration = const { Registration(Cell::new(UNKNOWN)) };
}

/// Gives the calling thread an EAL lcore id if it has none (first call on
/// a thread only; afterwards a thread-local check). Without one, mbufs still
/// work, only without the mempool's per-lcore cache.
#[inline]
pub fn register_thread() {
    REGISTERED.with(|r| {
        if r.0.get() != UNKNOWN || !Eal::is_ready() {
            return;
        }
        // SAFETY: reads a thread-local variable.
        let lcore = unsafe { sys::rte_lcore_id() };
        if lcore != u32::MAX {
            r.0.set(SETTLED);
            return;
        }
        // SAFETY: the EAL is initialised; registering a non-EAL thread has
        // no other precondition.
        let state = if unsafe { sys::rte_thread_register() } == 0 {
            REGISTERED_HERE
        } else {
            SETTLED
        };
        r.0.set(state);
    });
}
