//! A fixed-size histogram of TSC cycle counts (the PMD's upcall cost in
//! `pmd stats`), filled on the PMD without allocating: log-linear buckets,
//! eight per power of two, so a percentile read from it lies within 12.5 %
//! above the true value (values under 16 are exact).

use serde::Serialize;

/// Sub-buckets per power of two, as bits.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for every u64.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) << SUB_BITS;

/// Counts of cycle values in fixed buckets (about 4 KiB, boxed by its owner).
#[derive(Clone, Debug)]
pub struct CycleHistogram {
    count: u64,
    sum: u64,
    max: u64,
    buckets: [u64; BUCKETS],
}

impl Default for CycleHistogram {
    fn default() -> Self {
        CycleHistogram {
            count: 0,
            sum: 0,
            max: 0,
            buckets: [0; BUCKETS],
        }
    }
}

/// The bucket of `v`: values under 16 have their own, above that each
/// power of two is split into eight equal parts.
#[inline]
fn bucket_of(v: u64) -> usize {
    if v < 2 * SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let sub = (v >> (msb - SUB_BITS)) & (SUB - 1);
    (((msb - SUB_BITS + 1) as u64) << SUB_BITS | sub) as usize
}

/// The largest value bucket `b` holds.
fn bucket_upper(b: usize) -> u64 {
    let b = b as u64;
    if b < 2 * SUB {
        return b;
    }
    let shift = (b >> SUB_BITS) - 1;
    let sub = b & (SUB - 1);
    // The top bucket's bound does not fit: it is u64::MAX itself.
    ((SUB + sub + 1) as u128)
        .checked_shl(shift as u32)
        .map_or(u64::MAX, |x| u64::try_from(x - 1).unwrap_or(u64::MAX))
}

impl CycleHistogram {
    #[inline]
    pub fn record(&mut self, cycles: u64) {
        self.count += 1;
        self.sum = self.sum.saturating_add(cycles);
        self.max = self.max.max(cycles);
        self.buckets[bucket_of(cycles)] += 1;
    }

    pub fn clear(&mut self) {
        *self = CycleHistogram::default();
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (0 < q ≤ 1): the upper bound of the bucket that holds
    /// it, never above the largest value seen; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_upper(b).min(self.max);
            }
        }
        self.max
    }

    /// The summary `pmd stats` shows (microseconds at `tsc_per_us`), with
    /// the non-empty buckets as (upper bound in cycles, count).
    pub fn summary(&self, tsc_per_us: f64) -> CycleSummary {
        let us = |c: u64| c as f64 / tsc_per_us.max(1e-3);
        let (p50, p99) = (self.quantile(0.50), self.quantile(0.99));
        let mean = if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        };
        CycleSummary {
            count: self.count,
            mean_cycles: mean,
            p50_cycles: p50,
            p99_cycles: p99,
            max_cycles: self.max,
            p50_us: us(p50),
            p99_us: us(p99),
            max_us: us(self.max),
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(b, n)| (bucket_upper(b), *n))
                .collect(),
        }
    }
}

/// What `pmd stats` reports of a [`CycleHistogram`].
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct CycleSummary {
    pub count: u64,
    pub mean_cycles: f64,
    pub p50_cycles: u64,
    pub p99_cycles: u64,
    pub max_cycles: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Non-empty buckets: (largest value the bucket holds, count).
    pub buckets: Vec<(u64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lies_in_its_bucket_and_buckets_are_ordered() {
        let mut probes: Vec<u64> = (0..4096).collect();
        for s in 0..64 {
            let p = 1u64 << s;
            probes.extend([p - 1, p, p + 1, p.wrapping_mul(3) / 2]);
        }
        probes.push(u64::MAX);
        for v in probes {
            let b = bucket_of(v);
            assert!(b < BUCKETS, "{v} -> {b}");
            assert!(v <= bucket_upper(b), "{v} above bucket {b}'s bound");
            if b > 0 {
                assert!(v > bucket_upper(b - 1), "{v} fits bucket {}", b - 1);
            }
            // Within 12.5 % of the bound.
            assert!(
                bucket_upper(b) - v <= v / 8,
                "{v}: bound {}",
                bucket_upper(b)
            );
        }
    }

    #[test]
    fn quantiles_of_a_known_spread() {
        let mut h = CycleHistogram::default();
        assert_eq!(h.quantile(0.5), 0);
        // 1 .. 10,000: p50 = 5,000, p99 = 9,900, each read at most 12.5 % high.
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let (p50, p99) = (h.quantile(0.5), h.quantile(0.99));
        assert!((5_000..=5_625).contains(&p50), "{p50}");
        assert!((9_900..=10_000).contains(&p99), "{p99}");
        assert_eq!(h.quantile(1.0), 10_000);
        let s = h.summary(1000.0);
        assert_eq!(s.count, 10_000);
        assert_eq!(s.max_cycles, 10_000);
        assert!((s.mean_cycles - 5_000.5).abs() < 1e-9);
        assert_eq!(s.buckets.iter().map(|b| b.1).sum::<u64>(), 10_000);
        assert!((s.p50_us - p50 as f64 / 1000.0).abs() < 1e-9);
        h.clear();
        assert_eq!(h.count(), 0);
        assert!(h.summary(1000.0).buckets.is_empty());
    }

    #[test]
    fn one_slow_value_moves_p99_only_when_it_is_more_than_one_percent() {
        let mut h = CycleHistogram::default();
        for _ in 0..999 {
            h.record(100);
        }
        h.record(1_000_000);
        assert!(
            (100..=112).contains(&h.quantile(0.99)),
            "{}",
            h.quantile(0.99)
        );
        assert_eq!(h.quantile(1.0), 1_000_000);
        for _ in 0..20 {
            h.record(1_000_000);
        }
        assert!(h.quantile(0.99) >= 1_000_000);
    }
}
