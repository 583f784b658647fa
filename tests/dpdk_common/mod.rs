//! Shared by the DPDK test binaries (each is its own process: the EAL
//! initialises once per process).
#![allow(dead_code)]

use fallback::ofproto::syntax::parse_flow;
use flowmark::switch::{NamedPortStats, Switch};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// EAL arguments for a test: no hugepages, no PCI, a file prefix of its own.
pub fn eal_args(prefix: &str) -> Vec<String> {
    [
        "--no-huge",
        "-m",
        "512",
        "--no-pci",
        "--no-telemetry",
        "--file-prefix",
        prefix,
        "--log-level",
        "lib.eal:warning",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A unique file prefix for this process.
pub fn prefix(test: &str) -> String {
    format!("fm_{test}_{}", std::process::id())
}

/// EAL's runtime folder for a prefix (left behind even after cleanup).
pub fn runtime_dir(prefix: &str) -> PathBuf {
    PathBuf::from("/var/run/dpdk").join(prefix)
}

/// Removes the prefix's runtime folder when dropped.
pub struct RuntimeDirGuard(pub String);

impl Drop for RuntimeDirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(runtime_dir(&self.0));
    }
}

/// A scratch folder for files of this test.
pub fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flowmark-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create the scratch folder");
    d
}

pub fn load_rules<B>(sw: &mut Switch<B>, text: &str)
where
    B: fallback::port::PacketBuf + Clone + Send + 'static,
{
    let rules = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_flow(l).unwrap_or_else(|e| panic!("rule {l}: {e}")))
        .collect();
    sw.flow_add_all(rules);
}

/// Waits until `done` holds for the port stats (or panics after `limit`).
pub fn wait_stats<B>(
    sw: &Switch<B>,
    limit: Duration,
    what: &str,
    done: impl Fn(&[NamedPortStats]) -> bool,
) -> Vec<NamedPortStats>
where
    B: fallback::port::PacketBuf + Clone + Send + 'static,
{
    let start = Instant::now();
    loop {
        let s = sw.port_stats().expect("port stats");
        if done(&s) {
            return s;
        }
        if start.elapsed() > limit {
            panic!("timed out waiting for {what}: {s:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stats<'a>(s: &'a [NamedPortStats], name: &str) -> &'a fallback::port::PortStats {
    &s.iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no port {name}"))
        .stats
}

/// Internet checksum over `data` (folded, complemented).
pub fn csum(data: &[u8], init: u32) -> u16 {
    let mut sum = init;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 header and UDP checksums of an untagged IPv4/UDP frame are valid.
pub fn ipv4_udp_checksums_ok(f: &[u8]) -> bool {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] {
        return false;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let ip = &f[14..14 + ihl];
    if csum(ip, 0) != 0 {
        return false;
    }
    if f[23] != 17 {
        return true;
    }
    let udp = &f[14 + ihl..];
    if udp.len() < 8 || (udp[6] == 0 && udp[7] == 0) {
        return true;
    }
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    let udp = &udp[..ulen.min(udp.len())];
    let mut pseudo = 0u32;
    for w in [&ip[12..14], &ip[14..16], &ip[16..18], &ip[18..20]] {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    pseudo += 17 + ulen as u32;
    csum(udp, pseudo) == 0
}

/// A port whose rx stays closed until [`Gate::open`]: so that traffic
/// starts only once every port of the test is in the switch (a packet for a
/// port not added yet would be dropped).
pub struct Gated {
    pub inner: std::sync::Arc<dyn fallback::port::Port<Buf = flowmark::dpdk::Mbuf>>,
    pub gate: Gate,
}

#[derive(Clone, Default)]
pub struct Gate(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Gate {
    pub fn open(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl fallback::port::Port for Gated {
    type Buf = flowmark::dpdk::Mbuf;
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn n_rxq(&self) -> u16 {
        self.inner.n_rxq()
    }
    fn n_txq(&self) -> u16 {
        self.inner.n_txq()
    }
    fn mtu(&self) -> usize {
        self.inner.mtu()
    }
    fn rx_burst(&self, queue: u16, out: &mut fallback::port::Burst<Self::Buf>) -> usize {
        if !self.gate.0.load(std::sync::atomic::Ordering::Relaxed) {
            return 0;
        }
        self.inner.rx_burst(queue, out)
    }
    fn tx_burst(&self, queue: u16, pkts: &mut fallback::port::Burst<Self::Buf>) -> usize {
        self.inner.tx_burst(queue, pkts)
    }
    fn is_down(&self) -> bool {
        self.inner.is_down()
    }
    fn stats(&self) -> fallback::port::PortStats {
        self.inner.stats()
    }
}

/// An Ethernet/IPv4/UDP frame of `len` bytes (IP and UDP lengths set to
/// match, valid IPv4 checksum, UDP checksum 0) from 10.0.0.1 to 10.0.0.2,
/// with `seq` at bytes 42..46 and a recognisable payload after it.
pub fn udp_frame(len: usize, src_port: u16, dst_port: u16, seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let c = csum(ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f[34..36].copy_from_slice(&src_port.to_be_bytes());
    f[36..38].copy_from_slice(&dst_port.to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f[42..46].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in f[46..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    f
}

/// The sequence number [`udp_frame`] wrote.
pub fn seq_of(f: &[u8]) -> u32 {
    u32::from_be_bytes([f[42], f[43], f[44], f[45]])
}

/// The UDP destination port of a [`udp_frame`].
pub fn dst_port_of(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[36], f[37]])
}
