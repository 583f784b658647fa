//! `port inject`: test traffic into a testbed port, from a pcap file or a
//! generator, optionally paced. Runs on its own thread so that the daemon
//! keeps answering while it sends.

use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};
use testbed::traffic::{GtpSpec, Mix, Sizes, Traffic, TrafficSpec};
use testbed::Inject;

/// The most flows one `--generate` makes (their frames are kept in memory).
pub const MAX_FLOWS: usize = 1_000_000;
/// Packets per pacing step.
const PACE_CHUNK: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("bad --generate {spec:?}: {why} (expected flows=N,count=M[,kind=udp|tcp|mix|gtp-up|gtp-down][,rate=PPS][,size=BYTES][,seed=S])")]
    Spec { spec: String, why: String },
    #[error("cannot read pcap file {path}: {why}")]
    Pcap { path: String, why: String },
    #[error("pcap file {0} has no packets")]
    EmptyPcap(String),
    #[error("injection stopped: {0}")]
    Port(#[from] testbed::InjectError),
}

/// What the generator makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficKind {
    /// IPv4 UDP, untagged.
    Udp,
    /// IPv4 TCP, untagged.
    Tcp,
    /// The default mix: TCP/UDP/ICMP, 20% IPv6, 10% VLAN-tagged.
    Mix,
    /// GTP-U/GTP-C uplink of the GTP scenario (eNodeB → gateway).
    GtpUp,
    /// GTP-U/GTP-C downlink (gateway → eNodeB).
    GtpDown,
}

/// `flows=N,count=M[,kind=K][,rate=PPS][,size=B][,seed=S]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerateSpec {
    pub flows: usize,
    pub count: u64,
    pub kind: TrafficKind,
    /// Packets per second; `None`: as fast as the port takes them.
    pub rate: Option<u64>,
    pub size: Option<usize>,
    pub seed: u64,
}

impl GenerateSpec {
    pub fn parse(s: &str) -> Result<GenerateSpec, InjectError> {
        let bad = |why: String| InjectError::Spec {
            spec: s.to_string(),
            why,
        };
        let mut flows = None;
        let mut count = None;
        let mut spec = GenerateSpec {
            flows: 0,
            count: 0,
            kind: TrafficKind::Udp,
            rate: None,
            size: None,
            seed: 1,
        };
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| bad(format!("{item:?} has no value")))?;
            let num = |v: &str| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| bad(format!("{k}={v}: not a whole number")))
            };
            match k.trim() {
                "flows" => flows = Some(num(v)?),
                "count" => count = Some(num(v)?),
                "rate" => spec.rate = Some(num(v)?),
                "size" => spec.size = Some(num(v)? as usize),
                "seed" => spec.seed = num(v)?,
                "kind" => {
                    spec.kind = match v.trim() {
                        "udp" => TrafficKind::Udp,
                        "tcp" => TrafficKind::Tcp,
                        "mix" => TrafficKind::Mix,
                        "gtp-up" => TrafficKind::GtpUp,
                        "gtp-down" => TrafficKind::GtpDown,
                        other => return Err(bad(format!("unknown kind {other:?}"))),
                    }
                }
                other => return Err(bad(format!("unknown key {other:?}"))),
            }
        }
        let flows = flows.ok_or_else(|| bad("flows= is missing".into()))?;
        spec.count = count.ok_or_else(|| bad("count= is missing".into()))?;
        if flows == 0 || flows > MAX_FLOWS as u64 {
            return Err(bad(format!("flows={flows}: give 1 to {MAX_FLOWS}")));
        }
        spec.flows = flows as usize;
        if spec.rate == Some(0) {
            return Err(bad(
                "rate=0: give packets per second, or leave rate out".into()
            ));
        }
        if let Some(size) = spec.size {
            if !(60..=9018).contains(&size) {
                return Err(bad(format!("size={size}: give 60 to 9018 bytes")));
            }
        }
        Ok(spec)
    }

    /// The frames of the flows (one per flow).
    pub fn frames(&self) -> Vec<Vec<u8>> {
        let sizes = |default| Sizes::Fixed(self.size.unwrap_or(default));
        match self.kind {
            TrafficKind::Udp | TrafficKind::Tcp | TrafficKind::Mix => {
                let mix = match self.kind {
                    TrafficKind::Udp => Mix::UDP,
                    TrafficKind::Tcp => Mix {
                        tcp: 1,
                        udp: 0,
                        ..Mix::UDP
                    },
                    _ => Mix::default(),
                };
                Traffic::generate(&TrafficSpec {
                    mix,
                    sizes: sizes(64),
                    seed: self.seed,
                    ..TrafficSpec::new(self.flows)
                })
                .flows
                .into_iter()
                .map(|f| f.frame)
                .collect()
            }
            TrafficKind::GtpUp | TrafficKind::GtpDown => {
                let gtp = GtpSpec {
                    sizes: sizes(128),
                    seed: self.seed,
                    ..GtpSpec::new(self.flows)
                };
                let side = if self.kind == TrafficKind::GtpUp {
                    gtp.access_port
                } else {
                    gtp.core_port
                };
                Traffic::gtp(&gtp)
                    .flows
                    .into_iter()
                    .filter(|f| f.in_port == side)
                    .take(self.flows)
                    .map(|f| f.frame)
                    .collect()
            }
        }
    }
}

/// What an injection did (`port inject`'s result).
#[derive(Clone, Debug, Serialize)]
pub struct InjectReport {
    pub port: String,
    pub flows: usize,
    pub packets: u64,
    pub seconds: f64,
}

/// Reads a pcap file's frames.
pub fn pcap_frames(path: &Path) -> Result<Vec<Vec<u8>>, InjectError> {
    let frames = testbed::pcap::read_file(path).map_err(|e| InjectError::Pcap {
        path: path.display().to_string(),
        why: e.to_string(),
    })?;
    if frames.is_empty() {
        return Err(InjectError::EmptyPcap(path.display().to_string()));
    }
    Ok(frames)
}

/// Sends `count` frames round-robin over `frames`, paced at `rate` packets
/// per second when given, then waits until the port has them all.
pub fn send(
    port: &str,
    into: &dyn Inject,
    frames: &[Vec<u8>],
    count: u64,
    rate: Option<u64>,
) -> Result<InjectReport, InjectError> {
    let start = Instant::now();
    let n = frames.len() as u64;
    let mut sent = 0u64;
    while sent < count && n > 0 {
        let chunk = PACE_CHUNK.min(count - sent);
        for i in sent..sent + chunk {
            into.inject(&frames[(i % n) as usize])?;
        }
        sent += chunk;
        if let Some(rate) = rate {
            // Wait for this chunk's place on the timeline.
            let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
    }
    into.sync()?;
    Ok(InjectReport {
        port: port.to_string(),
        flows: frames.len(),
        packets: sent,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_specs() {
        let s = GenerateSpec::parse("flows=10,count=100").unwrap();
        assert_eq!(
            (s.flows, s.count, s.kind, s.rate),
            (10, 100, TrafficKind::Udp, None)
        );
        let s =
            GenerateSpec::parse("flows=3,count=5,kind=gtp-up,rate=1000,size=128,seed=7").unwrap();
        assert_eq!(s.kind, TrafficKind::GtpUp);
        assert_eq!(s.rate, Some(1000));
        assert_eq!(s.frames().len(), 3);
        for bad in [
            "",
            "flows=1",
            "count=1",
            "flows=0,count=1",
            "flows=x,count=1",
            "flows=1,count=1,kind=foo",
            "flows=1,count=1,bogus=2",
            "flows=1,count=1,rate=0",
            "flows=1,count=1,size=10",
            "flows",
        ] {
            let e = GenerateSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected flows=N,count=M"), "{bad}: {e}");
        }
        assert_eq!(
            GenerateSpec::parse("flows=50,count=1,kind=mix")
                .unwrap()
                .frames()
                .len(),
            50
        );
        assert_eq!(
            GenerateSpec::parse("flows=20,count=1,kind=gtp-down")
                .unwrap()
                .frames()
                .len(),
            20
        );
    }
}
