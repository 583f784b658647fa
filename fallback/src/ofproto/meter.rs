//! OpenFlow 1.3 meters: a rule's `meter:N` instruction passes its packets
//! through meter N, whose bands drop what exceeds their rates.
//!
//! As in Open vSwitch's userspace datapath: token buckets refilled from
//! the time in milliseconds, one per band, holding `burst` (or `rate` when
//! no burst is given) times 1,000 units: thousandths of a packet for a
//! `pktps` meter, bits for a `kbps` one (kbit/s × ms = bits). A packet
//! takes its volume from every band; when some band cannot give it, the
//! band of highest rate among those fires and the packet is dropped.
//! Only the drop band exists (OVS's userspace datapath refuses
//! `dscp_remark` too).
//!
//! The state is shared by the PMD threads that run a meter: atomics,
//! updated by compare-and-swap, no lock. Pure logic otherwise: the caller
//! passes the time.

use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;

/// Highest id an ordinary meter may have (`OFPM13_MAX`).
pub const METER_MAX: u32 = 0xffff_0000;
/// `OFPM13_SLOWPATH`: the virtual meter of datapath upcalls.
pub const METER_SLOWPATH: u32 = 0xffff_fffd;
/// `OFPM13_CONTROLLER`: the virtual meter of packet-ins.
pub const METER_CONTROLLER: u32 = 0xffff_fffe;
/// `OFPM13_ALL`: every meter (a delete or a statistics request).
pub const METER_ALL: u32 = 0xffff_ffff;
/// Meters a bridge holds at most (OVS's userspace datapath: 2^18).
pub const MAX_METERS: usize = 1 << 18;
/// Bands a meter holds at most (OVS's userspace datapath: 8).
pub const MAX_BANDS: usize = 8;

/// `OFPMF13_*` meter flags.
pub mod flags {
    /// Rates in kilobits per second.
    pub const KBPS: u16 = 1;
    /// Rates in packets per second.
    pub const PKTPS: u16 = 2;
    /// The bands' burst sizes are given.
    pub const BURST: u16 = 4;
    /// Collect statistics.
    pub const STATS: u16 = 8;
    /// Every flag flowmark knows.
    pub const ALL: u16 = KBPS | PKTPS | BURST | STATS;
}

/// `OFPMBT13_*` band types.
pub mod band_type {
    pub const DROP: u16 = 1;
    pub const DSCP_REMARK: u16 = 2;
}

/// One band of a meter as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Band {
    /// `OFPMBT13_*`: only [`band_type::DROP`] is accepted.
    pub kind: u16,
    /// In kbit/s or packets/s (the meter's flags say which).
    pub rate: u32,
    /// In kbit or packets; 0 when none was given (the rate is used).
    pub burst: u32,
    /// `dscp_remark`'s precedence level (kept to report the band as given).
    pub prec_level: u8,
}

/// A meter's configuration (what a meter mod adds and a config request
/// returns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterConfig {
    pub id: u32,
    pub flags: u16,
    pub bands: Vec<Band>,
}

/// Why a meter mod was refused; each maps to an `OFPMMFC_*` code.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum MeterError {
    #[error("meter {0} already exists; modify it, or delete it first")]
    Exists(u32),
    #[error("no meter {0}; add it first")]
    Unknown(u32),
    #[error("meter id {0:#x} is not usable: ids run from 1 to 4294901760 (0xffff0000)")]
    Invalid(u32),
    #[error("meter {id}: {reason}")]
    BadFlags { id: u32, reason: &'static str },
    #[error("meter {id}: {n} bands; a meter has 1 to 8")]
    OutOfBands { id: u32, n: usize },
    #[error("meter {id}: band type {kind} is not supported; only drop bands are")]
    BadBand { id: u32, kind: u16 },
    #[error("meter {id}: a band's rate must be above 0")]
    BadRate { id: u32 },
    #[error("the bridge holds {MAX_METERS} meters already; delete one first")]
    OutOfMeters,
}

impl MeterConfig {
    /// The checks OVS 3.1 makes of a meter mod before it looks the meter
    /// up: the flags' units exclusive, the id, at most 8 bands.
    pub fn check(&self) -> Result<(), MeterError> {
        let id = self.id;
        if self.flags & (flags::KBPS | flags::PKTPS) == flags::KBPS | flags::PKTPS {
            return Err(MeterError::BadFlags {
                id,
                reason: "kbps and pktps are exclusive; give one",
            });
        }
        if id == 0 || (id > METER_MAX && id != METER_SLOWPATH && id != METER_CONTROLLER) {
            return Err(MeterError::Invalid(id));
        }
        if self.bands.len() > MAX_BANDS {
            return Err(MeterError::OutOfBands {
                id,
                n: self.bands.len(),
            });
        }
        Ok(())
    }

    /// The checks its datapath makes when the meter is set (after
    /// [`MeterConfig::check`] and the lookup), in OVS's order.
    pub fn check_datapath(&self) -> Result<(), MeterError> {
        let id = self.id;
        if self.flags & (flags::KBPS | flags::PKTPS) == 0 {
            return Err(MeterError::BadFlags {
                id,
                reason: "give its rates' unit, kbps or pktps",
            });
        }
        if self.bands.is_empty() {
            return Err(MeterError::OutOfBands { id, n: 0 });
        }
        if self.bands.iter().any(|b| b.rate == 0) {
            return Err(MeterError::BadRate { id });
        }
        if self.flags & !flags::ALL != 0 {
            return Err(MeterError::BadFlags {
                id,
                reason: "unknown flags (flowmark knows kbps, pktps, burst and stats)",
            });
        }
        if let Some(b) = self.bands.iter().find(|b| b.kind != band_type::DROP) {
            return Err(MeterError::BadBand { id, kind: b.kind });
        }
        Ok(())
    }

    /// Rates in packets per second (else kbit/s).
    pub fn pktps(&self) -> bool {
        self.flags & flags::PKTPS != 0
    }
}

/// A band's running state.
#[derive(Debug)]
struct BandState {
    rate: u64,
    /// Capacity of the bucket, in the meter's units (see the module doc).
    capacity: u64,
    bucket: AtomicU64,
    packets: AtomicU64,
    bytes: AtomicU64,
}

/// An installed meter: its configuration and running state.
#[derive(Debug)]
pub struct Meter {
    pub config: MeterConfig,
    /// When it was added (for its statistics' duration).
    pub created: std::time::Instant,
    /// The time its buckets were last refilled, in ms.
    used_ms: AtomicU64,
    /// Longest refill that can matter (fills every bucket from empty).
    max_delta_ms: u64,
    packets: AtomicU64,
    bytes: AtomicU64,
    bands: Box<[BandState]>,
}

/// A meter's statistics (OFPMP_METER).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeterStats {
    /// Packets and bytes offered to the meter.
    pub packets: u64,
    pub bytes: u64,
    /// Packets and bytes each band dropped.
    pub bands: Vec<(u64, u64)>,
}

impl Meter {
    /// A meter of `config` (checked), its buckets full, added at `created`.
    /// Its clock (the `now_ms` of [`Meter::admit`]) may start anywhere:
    /// the first refill only tops up buckets that are full already.
    pub fn new(config: MeterConfig, created: std::time::Instant) -> Result<Meter, MeterError> {
        config.check()?;
        config.check_datapath()?;
        let bands: Box<[BandState]> = config
            .bands
            .iter()
            .map(|b| {
                let burst = if b.burst == 0 { b.rate } else { b.burst };
                let capacity = u64::from(burst) * 1000;
                BandState {
                    rate: u64::from(b.rate),
                    capacity,
                    bucket: AtomicU64::new(capacity),
                    packets: AtomicU64::new(0),
                    bytes: AtomicU64::new(0),
                }
            })
            .collect();
        // At least a millisecond: a band whose bucket a millisecond more
        // than fills (a burst below a thousandth of the rate) would
        // otherwise never refill.
        let max_delta_ms = bands
            .iter()
            .map(|b| b.capacity / b.rate.max(1))
            .max()
            .unwrap_or(0)
            .max(1);
        Ok(Meter {
            config,
            created,
            used_ms: AtomicU64::new(0),
            max_delta_ms,
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            bands,
        })
    }

    /// Offers one packet of `len` bytes at `now_ms`: true when it passes,
    /// false when a band dropped it (that band counts it).
    pub fn admit(&self, now_ms: u64, len: usize) -> bool {
        self.refill(now_ms);
        let len = len as u64;
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len, Ordering::Relaxed);
        let volume = if self.config.pktps() { 1000 } else { len * 8 };
        // Every band gives the packet's volume if it can; of those that
        // cannot, the one of highest rate fires.
        let mut fired: Option<&BandState> = None;
        for band in self.bands.iter() {
            let took = band
                .bucket
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    b.checked_sub(volume)
                })
                .is_ok();
            if !took && fired.is_none_or(|f| band.rate > f.rate) {
                fired = Some(band);
            }
        }
        match fired {
            None => true,
            Some(band) => {
                band.packets.fetch_add(1, Ordering::Relaxed);
                band.bytes.fetch_add(len, Ordering::Relaxed);
                false
            }
        }
    }

    /// Adds to every bucket what its rate gave since the last refill (once
    /// per millisecond, whichever thread comes first).
    fn refill(&self, now_ms: u64) {
        let Ok(last) = self
            .used_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used < now_ms).then_some(now_ms)
            })
        else {
            return;
        };
        let delta = (now_ms - last).min(self.max_delta_ms);
        for band in self.bands.iter() {
            let add = delta * band.rate;
            let _ = band
                .bucket
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_add(add).min(band.capacity))
                });
        }
    }

    /// What it has counted.
    pub fn stats(&self) -> MeterStats {
        MeterStats {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            bands: self
                .bands
                .iter()
                .map(|b| {
                    (
                        b.packets.load(Ordering::Relaxed),
                        b.bytes.load(Ordering::Relaxed),
                    )
                })
                .collect(),
        }
    }
}

/// The meter ids a rule's actions name (a rule has at most one).
pub fn meters_in(actions: &[super::OfAction]) -> impl Iterator<Item = u32> + '_ {
    actions.iter().filter_map(|a| match a {
        super::OfAction::Meter(m) => Some(*m),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drop_band(rate: u32, burst: u32) -> Band {
        Band {
            kind: band_type::DROP,
            rate,
            burst,
            prec_level: 0,
        }
    }

    fn meter(flags: u16, bands: Vec<Band>) -> Meter {
        Meter::new(
            MeterConfig {
                id: 1,
                flags,
                bands,
            },
            std::time::Instant::now(),
        )
        .unwrap()
    }

    #[test]
    fn pktps_passes_the_burst_then_the_rate() {
        // 100 packets/s, burst 10: ten pass at once, then one per 10 ms.
        let m = meter(flags::PKTPS | flags::BURST, vec![drop_band(100, 10)]);
        let passed = (0..50).filter(|_| m.admit(1_000, 64)).count();
        assert_eq!(passed, 10);
        // 100 ms later: 10 more.
        let passed = (0..50).filter(|_| m.admit(1_100, 64)).count();
        assert_eq!(passed, 10);
        let s = m.stats();
        assert_eq!((s.packets, s.bytes), (100, 6400));
        assert_eq!(s.bands, vec![(80, 80 * 64)]);
    }

    #[test]
    fn kbps_counts_bits() {
        // 8 kbit/s, no burst given: the bucket holds 8,000 bits = 1,000
        // bytes, so ten 100-byte packets pass, the eleventh does not.
        let m = meter(flags::KBPS, vec![drop_band(8, 0)]);
        let passed = (0..20).filter(|_| m.admit(1_000, 100)).count();
        assert_eq!(passed, 10);
        // 1 s later the bucket is full again, no fuller.
        let passed = (0..20).filter(|_| m.admit(101_000, 100)).count();
        assert_eq!(passed, 10);
    }

    #[test]
    fn the_highest_rate_band_that_is_exceeded_fires() {
        let m = meter(
            flags::PKTPS | flags::BURST,
            vec![drop_band(10, 5), drop_band(20, 2)],
        );
        let passed = (0..10).filter(|_| m.admit(1_000, 60)).count();
        assert_eq!(passed, 2);
        let s = m.stats();
        // Packets 3..5 exceed only the second band; 6..10 both, and the
        // second has the higher rate.
        assert_eq!(s.bands, vec![(0, 0), (8, 480)]);
    }

    #[test]
    fn time_going_back_refills_nothing() {
        let m = meter(flags::PKTPS, vec![drop_band(1000, 0)]);
        let passed = (0..2000).filter(|_| m.admit(5_000, 64)).count();
        assert_eq!(passed, 1000);
        assert!(!m.admit(4_000, 64));
        assert!(m.admit(5_001, 64));
    }

    #[test]
    fn a_burst_below_a_millisecond_of_rate_still_refills() {
        // 100,000 packets/s with a burst of 10: the bucket holds what 0.1 ms
        // brings, and refills each millisecond.
        let m = meter(flags::PKTPS | flags::BURST, vec![drop_band(100_000, 10)]);
        assert_eq!((0..20).filter(|_| m.admit(1_000, 64)).count(), 10);
        assert_eq!((0..20).filter(|_| m.admit(1_001, 64)).count(), 10);
    }

    #[test]
    fn checks_as_ovs() {
        let ok = MeterConfig {
            id: 7,
            flags: flags::PKTPS,
            bands: vec![drop_band(1, 0)],
        };
        assert_eq!(ok.check(), Ok(()));
        let with = |f: &dyn Fn(&mut MeterConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.check().and_then(|()| c.check_datapath())
        };
        assert_eq!(with(&|c| c.id = 0), Err(MeterError::Invalid(0)));
        assert_eq!(with(&|c| c.id = METER_MAX), Ok(()));
        assert_eq!(
            with(&|c| c.id = METER_MAX + 1),
            Err(MeterError::Invalid(METER_MAX + 1))
        );
        assert_eq!(with(&|c| c.id = METER_CONTROLLER), Ok(()));
        assert!(matches!(
            with(&|c| c.flags = flags::KBPS | flags::PKTPS),
            Err(MeterError::BadFlags { .. })
        ));
        assert!(matches!(
            with(&|c| c.flags = flags::STATS),
            Err(MeterError::BadFlags { .. })
        ));
        assert!(matches!(
            with(&|c| c.bands.clear()),
            Err(MeterError::OutOfBands { n: 0, .. })
        ));
        assert!(matches!(
            with(&|c| c.bands = vec![drop_band(1, 0); 9]),
            Err(MeterError::OutOfBands { n: 9, .. })
        ));
        assert!(matches!(
            with(&|c| c.bands[0].kind = band_type::DSCP_REMARK),
            Err(MeterError::BadBand { kind: 2, .. })
        ));
        assert!(matches!(
            with(&|c| c.bands[0].rate = 0),
            Err(MeterError::BadRate { .. })
        ));
    }
}
