//! The CPU's time-stamp counter, for cycles-per-packet figures (what OVS's
//! `pmd-stats-show` reports), with a wall-clock fallback off x86_64.

/// Reads the time-stamp counter.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no preconditions and no side effects; it is present
    // on every x86_64 CPU (it predates the architecture).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Nanoseconds since the first call, where there is no TSC.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub fn rdtsc() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Counter ticks per microsecond, measured once (over 20 ms, the first
/// time it is asked: `Switch::start` asks, so that no PMD ever waits).
pub fn tsc_per_us() -> f64 {
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};
    static RATE: OnceLock<f64> = OnceLock::new();
    *RATE.get_or_init(|| {
        let (t0, c0) = (Instant::now(), rdtsc());
        std::thread::sleep(Duration::from_millis(20));
        let us = t0.elapsed().as_secs_f64() * 1e6;
        (rdtsc().wrapping_sub(c0) as f64 / us).max(1e-3)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_up() {
        let a = super::rdtsc();
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert!(super::rdtsc() > a);
    }
}
