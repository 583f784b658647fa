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

#[cfg(test)]
mod tests {
    #[test]
    fn counts_up() {
        let a = super::rdtsc();
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert!(super::rdtsc() > a);
    }
}
