//! The daemon's TOML configuration (DESIGN §5): EAL arguments, ports, PMD
//! cores, offload settings and the OpenFlow endpoints. Unknown keys are
//! refused, and every error names the file, the line and the key.
//!
//! ```toml
//! pmd_cores = [0]
//! offload = true
//! max_idle_ms = 10000
//! mac_aging_s = 300
//!
//! [dpdk]
//! eal_args = ["-l", "0-1", "--in-memory"]
//!
//! [[port]]
//! name = "nic0"
//! type = "testbed-nic"
//! profile = "xl710"
//! rxqs = 2
//!
//! [openflow]
//! listen = "ptcp:6653"
//!
//! [metrics]
//! listen = "127.0.0.1:9464"
//! ```

use offload::device::Profile;
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use toml::Spanned;

/// Keys of the top level: a misplaced one inside `[[port]]` gets a hint.
const TOP_LEVEL_KEYS: &[&str] = &[
    "pmd_cores",
    "offload",
    "offload_threads",
    "max_marks",
    "max_idle_ms",
    "mac_aging_s",
    "upcall_budget",
    "emc_insert_inv_prob",
];

/// OVS's default MAC aging time.
pub const DEFAULT_MAC_AGING_S: u64 = 300;

/// The most rx queues a port may ask for.
pub const MAX_RXQS: u16 = 64;
/// Offload worker threads at most (shards by ingress port; see
/// `offload::worker::shard_of`).
pub const MAX_OFFLOAD_THREADS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: key `{key}`: {message}")]
    At {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

/// Which packet buffers a port type delivers: a daemon runs one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortFamily {
    /// The emulated testbed: heap buffers (`HeapPacket`).
    Testbed,
    /// DPDK ethdev/vhost ports: mbufs (feature `dpdk`).
    Dpdk,
}

impl fmt::Display for PortFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortFamily::Testbed => "testbed (testbed-nic, testbed-vm)",
            PortFamily::Dpdk => "DPDK (dpdk, vhost, testbed-nic-dpdk)",
        })
    }
}

/// A port's `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortType {
    TestbedNic,
    TestbedVm,
    Dpdk,
    Vhost,
    TestbedNicDpdk,
}

impl PortType {
    pub const NAMES: &'static str = "testbed-nic, testbed-vm, dpdk, vhost, testbed-nic-dpdk";

    pub fn name(self) -> &'static str {
        match self {
            PortType::TestbedNic => "testbed-nic",
            PortType::TestbedVm => "testbed-vm",
            PortType::Dpdk => "dpdk",
            PortType::Vhost => "vhost",
            PortType::TestbedNicDpdk => "testbed-nic-dpdk",
        }
    }

    pub fn family(self) -> PortFamily {
        match self {
            PortType::TestbedNic | PortType::TestbedVm => PortFamily::Testbed,
            PortType::Dpdk | PortType::Vhost | PortType::TestbedNicDpdk => PortFamily::Dpdk,
        }
    }
}

impl FromStr for PortType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "testbed-nic" => PortType::TestbedNic,
            "testbed-vm" => PortType::TestbedVm,
            "dpdk" => PortType::Dpdk,
            "vhost" => PortType::Vhost,
            "testbed-nic-dpdk" => PortType::TestbedNicDpdk,
            other => {
                return Err(format!(
                    "unknown port type {other:?}; expected one of {}",
                    PortType::NAMES
                ))
            }
        })
    }
}

/// vhost-user socket role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VhostMode {
    /// flowmark creates the socket and QEMU connects.
    Server,
    /// QEMU creates the socket and flowmark connects (reconnects survive a
    /// flowmark restart).
    Client,
}

impl FromStr for VhostMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "server" => Ok(VhostMode::Server),
            "client" => Ok(VhostMode::Client),
            other => Err(format!(
                "unknown vhost mode {other:?}; expected server or client"
            )),
        }
    }
}

/// A port to create, checked: from the config file or `port add`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub name: String,
    pub kind: PortType,
    pub ofport: Option<u32>,
    pub rxqs: Option<u16>,
    pub profile: Option<Profile>,
    pub devargs: Option<String>,
    pub socket: Option<PathBuf>,
    pub mode: Option<VhostMode>,
}

impl PortSpec {
    /// Checks what the type needs; the error names the key at fault.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.name.is_empty() || self.name.len() > 64 || self.name.contains(char::is_whitespace) {
            return Err((
                "name",
                format!(
                    "port name {:?} must be 1 to 64 characters without spaces",
                    self.name
                ),
            ));
        }
        if let Some(n) = self.rxqs {
            if n == 0 || n > MAX_RXQS {
                return Err(("rxqs", format!("rxqs = {n}: give 1 to {MAX_RXQS}")));
            }
        }
        if self.ofport == Some(0) || self.ofport.is_some_and(|p| p >= 0xff00) {
            return Err((
                "ofport",
                "OpenFlow port numbers run from 1 to 65279".to_string(),
            ));
        }
        let only =
            |key: &'static str, set: bool, types: &str| -> Result<(), (&'static str, String)> {
                if set {
                    Err((
                        key,
                        format!(
                            "`{key}` applies to {types} ports, not to a {} port; remove it",
                            self.kind.name()
                        ),
                    ))
                } else {
                    Ok(())
                }
            };
        match self.kind {
            PortType::TestbedNic | PortType::TestbedNicDpdk => {
                only("devargs", self.devargs.is_some(), "dpdk")?;
                only("socket", self.socket.is_some(), "vhost")?;
                only("mode", self.mode.is_some(), "vhost")?;
            }
            PortType::TestbedVm => {
                only("profile", self.profile.is_some(), "testbed-nic")?;
                only("devargs", self.devargs.is_some(), "dpdk")?;
                only("socket", self.socket.is_some(), "vhost")?;
                only("mode", self.mode.is_some(), "vhost")?;
            }
            PortType::Dpdk => {
                only("profile", self.profile.is_some(), "testbed-nic")?;
                only("socket", self.socket.is_some(), "vhost")?;
                only("mode", self.mode.is_some(), "vhost")?;
                if self.devargs.as_deref().is_none_or(str::is_empty) {
                    return Err((
                        "devargs",
                        "a dpdk port needs devargs, e.g. devargs = \"0000:01:00.0\" or \"net_ring0\""
                            .to_string(),
                    ));
                }
            }
            PortType::Vhost => {
                only("profile", self.profile.is_some(), "testbed-nic")?;
                only("devargs", self.devargs.is_some(), "dpdk")?;
                if self.socket.is_none() {
                    return Err((
                        "socket",
                        "a vhost port needs socket = \"/path/to/vhost-user.sock\"".to_string(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `[dpdk]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DpdkSection {
    #[serde(default)]
    pub eal_args: Vec<String>,
    /// Mbufs in the daemon's pool (default 16,384). A `net_pcap` port with
    /// `infinite_rx=1` keeps the whole capture in mbufs: give it the
    /// capture's packet count on top.
    pub mbufs: Option<u32>,
}

/// `[openflow]`: kept for the OpenFlow endpoint.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OpenFlowSection {
    /// Passive endpoint controllers connect to, e.g. `ptcp:6653` or, over
    /// TLS, `pssl:6653:0.0.0.0`.
    pub listen: Option<String>,
    /// Active connection to a controller, e.g. `tcp:127.0.0.1:6653` or
    /// `ssl:ctl.example.net:6653`.
    pub controller: Option<String>,
    /// The datapath id FEATURES_REPLY reports (a TOML integer, `0x1` too);
    /// default 0xf10e000000000001.
    pub datapath_id: Option<u64>,
    /// TLS (`pssl:`/`ssl:`): the switch's private key (PEM).
    pub private_key: Option<PathBuf>,
    /// TLS: the switch's certificate (PEM), for that key.
    pub certificate: Option<PathBuf>,
    /// TLS: the CA certificate (PEM) every peer's certificate must chain to.
    pub ca_cert: Option<PathBuf>,
    /// Accept a plaintext listener on a non-loopback address (whoever
    /// reaches it can program the switch). Default false.
    #[serde(default)]
    pub allow_plaintext: bool,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSection {
    /// Where `/metrics` is served, e.g. `127.0.0.1:9464`.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[metrics]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

/// One `[[port]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    name: Spanned<String>,
    #[serde(rename = "type")]
    kind: Spanned<PortType>,
    ofport: Option<Spanned<u32>>,
    rxqs: Option<Spanned<u16>>,
    profile: Option<Spanned<String>>,
    devargs: Option<Spanned<String>>,
    socket: Option<Spanned<String>>,
    mode: Option<Spanned<VhostMode>>,
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    pmd_cores: Option<Spanned<Vec<usize>>>,
    offload: Option<bool>,
    offload_threads: Option<Spanned<usize>>,
    max_marks: Option<Spanned<u32>>,
    max_idle_ms: Option<Spanned<u64>>,
    mac_aging_s: Option<Spanned<u64>>,
    upcall_budget: Option<Spanned<usize>>,
    emc_insert_inv_prob: Option<u32>,
    #[serde(default)]
    dpdk: DpdkSection,
    #[serde(default, rename = "port")]
    ports: Vec<RawPort>,
    #[serde(default)]
    openflow: OpenFlowSection,
    #[serde(default)]
    metrics: RawMetrics,
}

/// The checked configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `None`: the default testbed (nic0, nic1, vm0).
    pub ports: Option<Vec<PortSpec>>,
    /// One PMD per entry, pinned to that CPU; `None`: one unpinned PMD.
    pub pmd_cores: Option<Vec<usize>>,
    pub offload: bool,
    pub offload_threads: usize,
    pub max_marks: Option<u32>,
    pub max_idle_ms: u64,
    /// MAC-learning entries unused for this long are forgotten (OVS's
    /// `mac-aging-time`, default 300 s).
    pub mac_aging_s: u64,
    pub upcall_budget: Option<usize>,
    pub emc_insert_inv_prob: Option<u32>,
    pub dpdk: DpdkSection,
    pub openflow: OpenFlowSection,
    pub metrics: MetricsSection,
    /// Notes for the log (settings accepted but not fully honoured).
    pub warnings: Vec<String>,
}

impl Default for Config {
    /// No config file: the default testbed, one PMD, offload on.
    fn default() -> Self {
        Config {
            ports: None,
            pmd_cores: None,
            offload: true,
            offload_threads: 1,
            max_marks: None,
            max_idle_ms: 10_000,
            mac_aging_s: DEFAULT_MAC_AGING_S,
            upcall_budget: None,
            emc_insert_inv_prob: None,
            dpdk: DpdkSection::default(),
            openflow: OpenFlowSection::default(),
            metrics: MetricsSection::default(),
            warnings: Vec::new(),
        }
    }
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and checks config text; `path` is for the messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let at = |span: Range<usize>, key: &str, message: String| ConfigError::At {
            path: path.to_path_buf(),
            line: line_of(text, span.start),
            key: key.to_string(),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let key = key_at(text, &span);
            let mut message = e.message().trim().to_string();
            if TOP_LEVEL_KEYS.contains(&key.as_str()) && message.starts_with("unknown field") {
                message.push_str(
                    "; top-level settings such as this one go before the first [section] or [[port]]",
                );
            }
            at(span, &key, message)
        })?;

        let warnings = Vec::new();
        let offload_threads = match raw.offload_threads {
            Some(n) if *n.get_ref() == 0 => {
                return Err(at(
                    n.span(),
                    "offload_threads",
                    "give at least 1 offload thread".into(),
                ))
            }
            Some(n) if *n.get_ref() > MAX_OFFLOAD_THREADS => {
                return Err(at(
                    n.span(),
                    "offload_threads",
                    format!(
                        "{} offload threads is more than the {MAX_OFFLOAD_THREADS} this build \
                         runs (megaflows are sharded by ingress port: more threads than NIC \
                         ports only idle)",
                        n.get_ref()
                    ),
                ))
            }
            Some(n) => *n.get_ref(),
            None => 1,
        };
        if let Some(m) = &raw.max_marks {
            if *m.get_ref() == 0 {
                return Err(at(
                    m.span(),
                    "max_marks",
                    "give at least 1 mark (or offload = false)".into(),
                ));
            }
        }
        if let Some(b) = &raw.upcall_budget {
            if *b.get_ref() == 0 {
                return Err(at(
                    b.span(),
                    "upcall_budget",
                    "give at least 1 upcall per port per burst".into(),
                ));
            }
        }
        if let Some(ms) = &raw.max_idle_ms {
            if *ms.get_ref() == 0 {
                return Err(at(
                    ms.span(),
                    "max_idle_ms",
                    "give a positive number of milliseconds".into(),
                ));
            }
        }
        if let Some(s) = &raw.mac_aging_s {
            // OVS accepts 15 s to 3600 s for mac-aging-time.
            if !(15..=3600).contains(s.get_ref()) {
                return Err(at(
                    s.span(),
                    "mac_aging_s",
                    format!(
                        "{} is out of range: give 15 to 3600 seconds (default {DEFAULT_MAC_AGING_S})",
                        s.get_ref()
                    ),
                ));
            }
        }
        let pmd_cores = match raw.pmd_cores {
            None => None,
            Some(cores) => {
                let span = cores.span();
                let cores = cores.into_inner();
                if cores.is_empty() {
                    return Err(at(
                        span,
                        "pmd_cores",
                        "give at least one core, e.g. pmd_cores = [0]".into(),
                    ));
                }
                let usable = usable_cpus();
                for c in &cores {
                    if !usable.is_empty() && !usable.contains(c) {
                        return Err(at(
                            span,
                            "pmd_cores",
                            format!(
                                "core {c} is not one this process may run on (usable: {usable:?})"
                            ),
                        ));
                    }
                }
                let distinct: HashSet<_> = cores.iter().collect();
                if distinct.len() != cores.len() {
                    return Err(at(
                        span,
                        "pmd_cores",
                        "a core is listed twice: one PMD per core".into(),
                    ));
                }
                Some(cores)
            }
        };

        let metrics = match &raw.metrics.listen {
            None => MetricsSection::default(),
            Some(l) => {
                let addr = l.get_ref().parse().map_err(|_| {
                    at(
                        l.span(),
                        "listen",
                        format!(
                            "[metrics] listen = {:?}: give IP:PORT, e.g. \"127.0.0.1:9464\"",
                            l.get_ref()
                        ),
                    )
                })?;
                MetricsSection { listen: Some(addr) }
            }
        };

        let mut ports = Vec::new();
        let mut names = HashSet::new();
        let mut family: Option<(PortFamily, Range<usize>)> = None;
        for p in raw.ports {
            let kind = *p.kind.get_ref();
            let kind_span = p.kind.span();
            if !cfg!(feature = "dpdk") && kind.family() == PortFamily::Dpdk {
                return Err(at(
                    kind_span,
                    "type",
                    format!(
                        "port type {:?} needs the DPDK backend: build flowmark with `cargo build --features dpdk`",
                        kind.name()
                    ),
                ));
            }
            match &family {
                Some((f, first)) if *f != kind.family() => {
                    return Err(at(
                        kind_span,
                        "type",
                        format!(
                            "a {} port cannot join the {} ports declared from line {}: one daemon runs one family of ports (their packet buffers differ)",
                            kind.name(),
                            f,
                            line_of(text, first.start)
                        ),
                    ))
                }
                Some(_) => {}
                None => family = Some((kind.family(), kind_span.clone())),
            }
            let name_span = p.name.span();
            let name = p.name.into_inner();
            if !names.insert(name.clone()) {
                return Err(at(
                    name_span,
                    "name",
                    format!("a port named {name:?} is declared twice; port names are unique"),
                ));
            }
            let profile = match &p.profile {
                None => None,
                Some(s) => Some(
                    Profile::from_name(s.get_ref())
                        .map_err(|e| at(s.span(), "profile", e.to_string()))?,
                ),
            };
            let spec = PortSpec {
                name,
                kind,
                ofport: p.ofport.as_ref().map(|o| *o.get_ref()),
                rxqs: p.rxqs.as_ref().map(|r| *r.get_ref()),
                profile,
                devargs: p.devargs.as_ref().map(|d| d.get_ref().clone()),
                socket: p.socket.as_ref().map(|s| PathBuf::from(s.get_ref())),
                mode: p.mode.as_ref().map(|m| *m.get_ref()),
            };
            if let Err((key, message)) = spec.check() {
                let span = match key {
                    "rxqs" => p.rxqs.as_ref().map(|s| s.span()),
                    "ofport" => p.ofport.as_ref().map(|s| s.span()),
                    "profile" => p.profile.as_ref().map(|s| s.span()),
                    "devargs" => p.devargs.as_ref().map(|s| s.span()),
                    "socket" => p.socket.as_ref().map(|s| s.span()),
                    "mode" => p.mode.as_ref().map(|s| s.span()),
                    "name" => Some(name_span.clone()),
                    _ => None,
                }
                .unwrap_or(kind_span);
                return Err(at(span, key, message));
            }
            if let Some(o) = &p.ofport {
                let ofport = *o.get_ref();
                if let Some(first) = ports.iter().find(|q: &&PortSpec| q.ofport == Some(ofport)) {
                    return Err(at(
                        o.span(),
                        "ofport",
                        format!(
                            "OpenFlow port {ofport} is already given to port {:?}; OpenFlow port numbers are unique",
                            first.name
                        ),
                    ));
                }
            }
            ports.push(spec);
        }

        // TLS files named relative to the config file's directory.
        let mut openflow = raw.openflow;
        let base = path.parent().unwrap_or(Path::new(""));
        for file in [
            &mut openflow.private_key,
            &mut openflow.certificate,
            &mut openflow.ca_cert,
        ]
        .into_iter()
        .flatten()
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }

        Ok(Config {
            ports: if ports.is_empty() { None } else { Some(ports) },
            pmd_cores,
            offload: raw.offload.unwrap_or(true),
            offload_threads,
            max_marks: raw.max_marks.map(Spanned::into_inner),
            max_idle_ms: raw.max_idle_ms.map_or(10_000, Spanned::into_inner),
            mac_aging_s: raw
                .mac_aging_s
                .map_or(DEFAULT_MAC_AGING_S, Spanned::into_inner),
            upcall_budget: raw.upcall_budget.map(Spanned::into_inner),
            emc_insert_inv_prob: raw.emc_insert_inv_prob,
            dpdk: raw.dpdk,
            openflow,
            metrics,
            warnings,
        })
    }

    /// The port family of the configured ports (the default testbed's when
    /// none are given).
    pub fn family(&self) -> PortFamily {
        self.ports
            .as_ref()
            .and_then(|p| p.first())
            .map_or(PortFamily::Testbed, |p| p.kind.family())
    }

    /// The switch's settings.
    pub fn switch_config(&self) -> crate::switch::SwitchConfig {
        let mut c = crate::switch::SwitchConfig {
            offload: self.offload,
            offload_threads: self.offload_threads,
            max_idle_ms: self.max_idle_ms,
            mac_aging_ms: self.mac_aging_s * 1000,
            ..crate::switch::SwitchConfig::default()
        };
        if let Some(cores) = &self.pmd_cores {
            c.pmd_cores = cores.iter().map(|c| Some(*c)).collect();
        }
        if let Some(m) = self.max_marks {
            c.max_marks = m;
        }
        if let Some(b) = self.upcall_budget {
            c.upcall_budget = b;
        }
        if let Some(p) = self.emc_insert_inv_prob {
            c.emc_insert_inv_prob = p;
        }
        c
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The key an error span points into: the span's own text when it is a
/// bare key, else the `key = ...` or `[table]` of its line.
fn key_at(text: &str, span: &Range<usize>) -> String {
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[line_start..line_end].trim();
    let own = text
        .get(span.start..span.end.min(line_end))
        .unwrap_or("")
        .trim();
    let is_key = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if line.starts_with('[') {
        return line
            .trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_string();
    }
    if let Some((k, _)) = line.split_once('=') {
        return k.trim().trim_matches('"').to_string();
    }
    if is_key(own) {
        return own.to_string();
    }
    "(top level)".to_string()
}

/// The CPUs this process may run on (empty when unknown).
fn usable_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|c| set.is_set(*c))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("test.toml"))
    }

    /// More than one offload thread is run, not warned about; the switch
    /// gets the count; zero and more than the maximum are refused.
    #[test]
    fn offload_threads() {
        let c = parse("offload_threads = 2\n").expect("2 offload threads");
        assert_eq!(c.offload_threads, 2);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.switch_config().offload_threads, 2);
        assert_eq!(
            parse("").expect("defaults").switch_config().offload_threads,
            1
        );
        assert!(parse("offload_threads = 0\n").is_err());
        let over = format!("offload_threads = {}\n", MAX_OFFLOAD_THREADS + 1);
        assert!(parse(&over).is_err());
    }

    #[test]
    fn full_config() {
        let c = parse(
            r#"
pmd_cores = [0]
offload = true
offload_threads = 1
max_marks = 1000
max_idle_ms = 500

[dpdk]
eal_args = ["-l", "0-1"]

[[port]]
name = "a"
type = "testbed-nic"
profile = "xl710"
rxqs = 4

[[port]]
name = "v"
type = "testbed-vm"

[openflow]
listen = "ptcp:6653"
datapath_id = 0x2a
"#,
        )
        .unwrap();
        assert_eq!(c.openflow.datapath_id, Some(42));
        let ports = c.ports.as_ref().unwrap();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].profile, Some(Profile::Xl710));
        assert_eq!(ports[0].rxqs, Some(4));
        assert_eq!(c.max_idle_ms, 500);
        assert_eq!(c.openflow.listen.as_deref(), Some("ptcp:6653"));
        assert_eq!(c.dpdk.eal_args, vec!["-l", "0-1"]);
        assert_eq!(c.family(), PortFamily::Testbed);
        assert_eq!(c.switch_config().pmd_cores, vec![Some(0)]);
    }

    #[test]
    fn mac_aging_s_default_value_and_range() {
        assert_eq!(parse("").unwrap().mac_aging_s, 300);
        assert_eq!(
            parse("offload = true")
                .unwrap()
                .switch_config()
                .mac_aging_ms,
            300_000
        );
        let c = parse("mac_aging_s = 60\n").unwrap();
        assert_eq!(c.switch_config().mac_aging_ms, 60_000);
        let e = parse("offload = true\nmac_aging_s = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.toml:2: key `mac_aging_s`"), "{e}");
        assert!(e.contains("15 to 3600"), "{e}");
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = parse("offload = true\nmax_idle = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.toml:2: key `max_idle`"), "{e}");
        let e = parse("[[port]]\nname = \"a\"\ntype = \"testbed-nic\"\nprofle = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.toml:4: key `profle`"), "{e}");
        let e = parse("[[port]]\nname = \"a\"\ntype = \"testbed-nic\"\npmd_cores = [0]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("before the first [section]"), "{e}");
    }

    #[test]
    fn bad_values_name_line_and_key() {
        let e = parse("[[port]]\nname = \"a\"\ntype = \"testbed-nix\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.toml:3: key `type`"), "{e}");
        let e = parse("[[port]]\nname = \"a\"\ntype = \"testbed-nic\"\nprofile = \"foo\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.toml:4: key `profile`"), "{e}");
        let e = parse("[[port]]\nname = \"a\"\ntype = \"testbed-vm\"\nrxqs = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.toml:4: key `rxqs`"), "{e}");
        let e = parse(
            "[[port]]\nname = \"a\"\ntype = \"testbed-vm\"\n[[port]]\nname = \"a\"\ntype = \"testbed-vm\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("test.toml:5: key `name`"), "{e}");
        let e = parse(
            "[[port]]\nname = \"a\"\ntype = \"testbed-vm\"\nofport = 3\n[[port]]\nname = \"b\"\ntype = \"testbed-vm\"\nofport = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("test.toml:8: key `ofport`"), "{e}");
        assert!(e.contains("already given to port \"a\""), "{e}");
        let e = parse("pmd_cores = []\n").unwrap_err().to_string();
        assert!(e.starts_with("test.toml:1: key `pmd_cores`"), "{e}");
        let e = parse("max_marks = \"x\"\n").unwrap_err().to_string();
        assert!(e.starts_with("test.toml:1: key `max_marks`"), "{e}");
        let e = parse("[[port]]\ntype = \"testbed-vm\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("name"), "{e}");
    }

    #[test]
    fn dpdk_types() {
        let text = "[[port]]\nname = \"d\"\ntype = \"dpdk\"\ndevargs = \"net_ring0\"\n";
        if cfg!(feature = "dpdk") {
            assert_eq!(parse(text).unwrap().family(), PortFamily::Dpdk);
            let e = parse("[[port]]\nname = \"d\"\ntype = \"dpdk\"\n")
                .unwrap_err()
                .to_string();
            assert!(e.contains("devargs"), "{e}");
            let mixed = format!("{text}[[port]]\nname = \"v\"\ntype = \"testbed-vm\"\n");
            let e = parse(&mixed).unwrap_err().to_string();
            assert!(e.contains("one family"), "{e}");
        } else {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains("--features dpdk"), "{e}");
            assert!(e.starts_with("test.toml:3: key `type`"), "{e}");
        }
    }

    #[test]
    fn openflow_tls_files_are_relative_to_the_config() {
        let c = Config::parse(
            "[openflow]\nlisten = \"pssl:6653\"\nprivate_key = \"k.pem\"\ncertificate = \"/abs/c.pem\"\nca_cert = \"pki/ca.pem\"\nallow_plaintext = true\n",
            Path::new("/etc/flowmark/flowmark.toml"),
        )
        .unwrap();
        assert_eq!(
            c.openflow.private_key.as_deref(),
            Some(Path::new("/etc/flowmark/k.pem"))
        );
        assert_eq!(
            c.openflow.certificate.as_deref(),
            Some(Path::new("/abs/c.pem"))
        );
        assert_eq!(
            c.openflow.ca_cert.as_deref(),
            Some(Path::new("/etc/flowmark/pki/ca.pem"))
        );
        assert!(c.openflow.allow_plaintext);
        assert!(!parse("").unwrap().openflow.allow_plaintext);
    }

    #[test]
    fn metrics_listen() {
        let c = parse("[metrics]\nlisten = \"127.0.0.1:9464\"\n").unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(parse("").unwrap().metrics.listen, None);
        let e = parse("offload = true\n[metrics]\nlisten = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.toml:3: key `listen`"), "{e}");
        assert!(e.contains("IP:PORT"), "{e}");
        let e = parse("[metrics]\nport = 1\n").unwrap_err().to_string();
        assert!(e.starts_with("test.toml:2: key `port`"), "{e}");
    }

    #[test]
    fn empty_is_default_testbed() {
        let c = parse("").unwrap();
        assert_eq!(c.ports, None);
        assert_eq!(c.max_idle_ms, 10_000);
        assert!(c.offload);
    }
}
