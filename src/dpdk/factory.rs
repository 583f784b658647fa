//! The daemon's DPDK port factory: `dpdk` (any devargs), `vhost`
//! (`net_vhost`, server or client) and `testbed-nic-dpdk` ports, all over
//! one mempool, for a `Switch<Mbuf>`. [`DpdkBackend`] is the EAL and that
//! mempool, whose free count is printed at start and at shutdown (equal:
//! no mbuf leaked); `crate::backend` runs the daemon over it.

use super::ethdev::{EthPort, EthPortConfig};
use super::events::{self as eth_events, EthEvent};
use super::flow::EthFlowDevice;
use super::mbuf::{Mbuf, Mempool};
use super::nic_ring::{NicDpdk, NicDpdkConfig};
use super::{DpdkError, Eal};
use crate::config::{PortFamily, PortSpec, PortType, VhostMode};
use crate::ports::{
    drain_resets, NewPort, PortError, PortEvent, PortEventKind, PortFactory, ResetOutcome,
};
use fallback::port::Port;
use offload::device::{Capabilities, FlowDevice, Profile};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use testbed::Inject;

/// Mbufs in the daemon's pool.
pub const DEFAULT_MBUFS: u32 = 16_384;

/// A DPDK port to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DpdkPortSpec {
    /// An ethdev from devargs (vdev string or PCI address), with rte_flow.
    Dpdk {
        name: String,
        devargs: String,
        rxqs: u16,
    },
    /// A vhost-user VM port (`net_vhost`): software path only.
    Vhost {
        name: String,
        socket: PathBuf,
        server: bool,
        rxqs: u16,
    },
    /// The emulated NIC writing real mbufs through `net_ring`.
    TestbedNicDpdk {
        name: String,
        rxqs: u16,
        profile: Profile,
    },
}

/// A port made by the factory.
pub struct MadePort {
    pub port: Arc<dyn Port<Buf = Mbuf>>,
    pub flow_device: Option<Arc<dyn FlowDevice>>,
    /// The rte_flow device of a `dpdk` port (paused and its handles
    /// forgotten on a reset or removal).
    pub eth_flow: Option<Arc<EthFlowDevice>>,
    /// The ethdev (stats, link state).
    pub eth: Arc<EthPort>,
    /// The emulated NIC of a `testbed-nic-dpdk` port.
    pub nic: Option<NicDpdk>,
}

impl std::fmt::Debug for MadePort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MadePort").field("eth", &self.eth).finish()
    }
}

/// vdev devargs of a vhost-user port.
pub fn vhost_devargs(seq: u32, socket: &Path, server: bool, queues: u16) -> String {
    format!(
        "net_vhost{seq},iface={},queues={queues},client={}",
        socket.display(),
        u8::from(!server)
    )
}

/// Makes DPDK ports over one mempool.
pub struct DpdkPortFactory {
    pool: Arc<Mempool>,
    vhost_seq: u32,
    ports: BTreeMap<u32, (String, PortType, MadePort)>,
    /// The emulated NICs' reset notices (`testbed-nic-dpdk`).
    resets: BTreeMap<u32, crossbeam_channel::Receiver<u64>>,
}

impl DpdkPortFactory {
    /// The EAL must be up.
    pub fn new(pool: Arc<Mempool>) -> Self {
        DpdkPortFactory {
            pool,
            vhost_seq: 0,
            ports: BTreeMap::new(),
            resets: BTreeMap::new(),
        }
    }

    pub fn pool(&self) -> &Arc<Mempool> {
        &self.pool
    }

    /// The ports made and not removed, by OpenFlow number.
    pub fn made(&self, ofport: u32) -> Option<&MadePort> {
        self.ports.get(&ofport).map(|(_, _, m)| m)
    }

    /// Makes a port (without registering it under an OpenFlow number).
    pub fn make(&mut self, spec: &DpdkPortSpec) -> Result<MadePort, DpdkError> {
        match spec {
            DpdkPortSpec::Dpdk {
                name,
                devargs,
                rxqs,
            } => {
                let mut c = EthPortConfig::new(name.clone(), devargs.clone());
                c.rxqs = *rxqs;
                c.txqs = *rxqs;
                let eth = Arc::new(EthPort::open(&c, Arc::clone(&self.pool))?);
                let fd = Arc::new(EthFlowDevice::new(
                    name.clone(),
                    eth.port_id(),
                    Capabilities::default(),
                ));
                Ok(MadePort {
                    port: eth.clone(),
                    flow_device: Some(fd.clone()),
                    eth_flow: Some(fd),
                    eth,
                    nic: None,
                })
            }
            DpdkPortSpec::Vhost {
                name,
                socket,
                server,
                rxqs,
            } => {
                if *server {
                    prepare_server_socket(name, socket)?;
                }
                let seq = self.vhost_seq;
                self.vhost_seq += 1;
                let mut c =
                    EthPortConfig::new(name.clone(), vhost_devargs(seq, socket, *server, *rxqs));
                c.rxqs = *rxqs;
                c.txqs = *rxqs;
                c.want_mark = false;
                let eth = Arc::new(EthPort::open(&c, Arc::clone(&self.pool))?);
                Ok(MadePort {
                    port: eth.clone(),
                    flow_device: None,
                    eth_flow: None,
                    eth,
                    nic: None,
                })
            }
            DpdkPortSpec::TestbedNicDpdk {
                name,
                rxqs,
                profile,
            } => {
                let mut c = NicDpdkConfig::new(name.clone());
                c.rxqs = *rxqs;
                c.txqs = *rxqs;
                c.profile = *profile;
                let nic = NicDpdk::start(&c, Arc::clone(&self.pool))?;
                let eth = Arc::clone(nic.port());
                let fd: Arc<dyn FlowDevice> = nic.flow_device().clone();
                Ok(MadePort {
                    port: eth.clone(),
                    flow_device: Some(fd),
                    eth_flow: None,
                    eth,
                    nic: Some(nic),
                })
            }
        }
    }
}

/// A server socket path: its folder must exist and a stale socket file
/// from an earlier run is removed (bind would fail on it).
fn prepare_server_socket(name: &str, socket: &Path) -> Result<(), DpdkError> {
    let bad = |why: String| DpdkError::Config {
        name: name.to_string(),
        why,
    };
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
    }
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(socket) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(socket).map_err(|e| {
                bad(format!(
                    "cannot remove the stale socket {}: {e}",
                    socket.display()
                ))
            })?;
        } else {
            return Err(bad(format!(
                "{} exists and is not a socket; give another vhost socket path",
                socket.display()
            )));
        }
    }
    Ok(())
}

fn to_dpdk_spec(spec: &PortSpec) -> Result<DpdkPortSpec, String> {
    let rxqs = spec.rxqs.unwrap_or(1);
    match spec.kind {
        PortType::Dpdk => Ok(DpdkPortSpec::Dpdk {
            name: spec.name.clone(),
            devargs: spec
                .devargs
                .clone()
                .ok_or("a dpdk port needs devargs")?,
            rxqs,
        }),
        PortType::Vhost => Ok(DpdkPortSpec::Vhost {
            name: spec.name.clone(),
            socket: spec.socket.clone().ok_or("a vhost port needs socket")?,
            server: spec.mode != Some(VhostMode::Client),
            rxqs,
        }),
        PortType::TestbedNicDpdk => Ok(DpdkPortSpec::TestbedNicDpdk {
            name: spec.name.clone(),
            rxqs,
            profile: spec.profile.unwrap_or_default(),
        }),
        other => Err(format!(
            "a {} port is not a DPDK port; this daemon runs DPDK ports (dpdk, vhost, testbed-nic-dpdk)",
            other.name()
        )),
    }
}

impl PortFactory<Mbuf> for DpdkPortFactory {
    fn family(&self) -> PortFamily {
        PortFamily::Dpdk
    }

    fn create(&mut self, ofport: u32, spec: &PortSpec) -> Result<NewPort<Mbuf>, PortError> {
        let err = |why: String| PortError::Create {
            name: spec.name.clone(),
            why,
        };
        let ds = to_dpdk_spec(spec).map_err(err)?;
        let made = self.make(&ds).map_err(|e| err(e.to_string()))?;
        let new = NewPort {
            port: Arc::clone(&made.port),
            flow_device: made.flow_device.clone(),
        };
        if let Some(nic) = &made.nic {
            self.resets
                .insert(ofport, nic.flow_device().subscribe_resets());
        }
        self.ports
            .insert(ofport, (spec.name.clone(), spec.kind, made));
        Ok(new)
    }

    fn remove(&mut self, ofport: u32) {
        // Stops a testbed NIC's threads; the ethdev closes when the switch's
        // Arc goes too.
        self.resets.remove(&ofport);
        drop(self.ports.remove(&ofport));
    }

    fn injector(&self, ofport: u32) -> Result<Box<dyn Inject>, PortError> {
        match self.ports.get(&ofport) {
            Some((_, _, MadePort { nic: Some(nic), .. })) => Ok(Box::new(nic.wire().clone())),
            Some((name, kind, _)) => Err(PortError::NotTestbed {
                name: name.clone(),
                kind: kind.name().to_string(),
                what: "injection",
            }),
            None => Err(PortError::NoSuchOfport(ofport)),
        }
    }

    fn reset_nic(&self, ofport: u32) -> Result<(), PortError> {
        match self.ports.get(&ofport) {
            Some((_, _, MadePort { nic: Some(nic), .. })) => {
                nic.flow_device().reset();
                Ok(())
            }
            Some((name, _, _)) => Err(PortError::NotNic { name: name.clone() }),
            None => Err(PortError::NoSuchOfport(ofport)),
        }
    }

    /// The emulated NICs' resets (`RulesLost`), then the ethdev events
    /// recorded by DPDK's interrupt thread: `RTE_ETH_EVENT_INTR_RESET`
    /// (`ResetNeeded`) and `RTE_ETH_EVENT_INTR_RMV` (`Removed`).
    fn poll_events(&mut self) -> Vec<PortEvent> {
        let mut out = drain_resets(&self.resets);
        let by_id: BTreeMap<u16, u32> = self
            .ports
            .iter()
            .map(|(ofport, (_, _, m))| (m.eth.port_id(), *ofport))
            .collect();
        for (port_id, ev) in eth_events::take(|id| by_id.contains_key(&id)) {
            if let Some(&ofport) = by_id.get(&port_id) {
                out.push(PortEvent {
                    ofport,
                    kind: match ev {
                        EthEvent::IntrReset => PortEventKind::ResetNeeded,
                        EthEvent::IntrRmv => PortEventKind::Removed,
                    },
                });
            }
        }
        out
    }

    fn set_io(&self, ofport: u32, up: bool) {
        if let Some((_, _, m)) = self.ports.get(&ofport) {
            m.eth.set_down(!up);
            if let Some(fd) = &m.eth_flow {
                fd.pause(!up);
            }
        }
    }

    fn forget_rules(&self, ofport: u32) {
        if let Some((_, _, m)) = self.ports.get(&ofport) {
            if let Some(fd) = &m.eth_flow {
                fd.forget_rules();
            }
        }
    }

    fn reset_port(&self, ofport: u32) -> Result<ResetOutcome, PortError> {
        let (name, _, m) = self
            .ports
            .get(&ofport)
            .ok_or(PortError::NoSuchOfport(ofport))?;
        match m.eth.reset() {
            Ok(true) => Ok(ResetOutcome::Done),
            Ok(false) => Ok(ResetOutcome::TryAgain),
            Err(e) => Err(PortError::Reset {
                name: name.clone(),
                why: e.to_string(),
            }),
        }
    }

    fn device_rules(&self, ofport: u32) -> Option<usize> {
        let (_, _, m) = self.ports.get(&ofport)?;
        m.nic.as_ref().map(|n| n.flow_device().rule_count())
    }
}

/// The DPDK runtime under the daemon's DPDK ports (`flowmark run --config
/// FILE` with DPDK ports): the EAL from `[dpdk] eal_args` and the mempool
/// every port draws from.
pub struct DpdkBackend {
    eal: Eal,
    pool: Arc<Mempool>,
}

impl DpdkBackend {
    /// Initialises the EAL and makes the mempool; prints the pool's free
    /// mbufs (compare with the count [`DpdkBackend::shutdown`] prints).
    pub fn init(dpdk: &crate::config::DpdkSection) -> Result<DpdkBackend, DpdkError> {
        let eal = Eal::init(&dpdk.eal_args)?;
        let mbufs = dpdk.mbufs.unwrap_or(DEFAULT_MBUFS);
        let pool = Arc::new(Mempool::create("flowmark_mbufs", mbufs)?);
        println!(
            "flowmark: mempool {} free mbufs at start: {} of {}",
            pool.name(),
            pool.free_count(),
            pool.size()
        );
        Ok(DpdkBackend { eal, pool })
    }

    /// The port factory over this backend's mempool.
    pub fn port_factory(&self) -> DpdkPortFactory {
        DpdkPortFactory::new(Arc::clone(&self.pool))
    }

    /// Prints the pool's free mbufs (equal to the count at start when no
    /// mbuf leaked) and shuts the EAL down.
    pub fn shutdown(self) {
        println!(
            "flowmark: mempool {} free mbufs at shutdown: {} of {}",
            self.pool.name(),
            self.pool.free_count(),
            self.pool.size()
        );
        drop(self.pool);
        self.eal.cleanup();
    }
}
