//! The OpenFlow endpoint of `flowmark run`: [`DaemonSwitch`] implements
//! [`OpenFlowSwitch`] over the daemon's handle, so flows added over
//! OpenFlow go through the same path as `flowmark flow add` (revalidation,
//! megaflows, NIC offloads); [`start_hook`] starts the endpoint from the
//! `[openflow]` config section.

use super::error::{BadRequestCode, FlowModFailedCode, OfpError, PortModFailedCode};
use super::flow_table::{AggregateCounts, RuleSelector};
use super::group_table::GroupInfo;
use super::message::{BundledFlowMods, GroupMod, MeterMod};
use super::meter_table::MeterInfo;
use super::net::{Endpoint, EndpointConfig, EventHub, LogFn};
use super::switch::{FlowInfo, FlowTable, OpenFlowSwitch, PortCounters, PortInfo, SwitchEvent};
use super::tls::TlsFiles;
use crate::daemon::{DaemonError, DaemonHandle, StartHook};
use fallback::ofproto::table::Pipeline;
use fallback::ofproto::{Match, OfAction, Rule};
use fallback::port::RxDropReason;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The datapath id without `[openflow] datapath_id`.
pub const DEFAULT_DATAPATH_ID: u64 = 0xf10e_0000_0000_0001;

/// How often the port list is compared to send PORT_STATUS.
const PORT_WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// The running endpoint, kept for the daemon's lifetime.
static ENDPOINT: Mutex<Option<Endpoint>> = Mutex::new(None);

pub struct DaemonSwitch {
    handle: DaemonHandle,
    datapath_id: u64,
}

impl DaemonSwitch {
    pub fn new(handle: DaemonHandle, datapath_id: u64) -> Self {
        DaemonSwitch {
            handle,
            datapath_id,
        }
    }
}

impl DaemonSwitch {
    /// Applies `change` to a copy of the pipeline as one transaction (a
    /// group or meter mod): the new version, or no change and its error.
    fn pipeline_mod(
        &self,
        change: impl FnOnce(&mut Pipeline, std::time::Instant) -> Result<(), OfpError> + Send + 'static,
    ) -> Result<(), OfpError> {
        let failure: Arc<Mutex<Option<OfpError>>> = Arc::new(Mutex::new(None));
        let seen = Arc::clone(&failure);
        let now = std::time::Instant::now();
        self.handle
            .transaction(Box::new(move |mut pipeline| {
                match change(&mut pipeline, now) {
                    Ok(()) => Some(pipeline),
                    Err(e) => {
                        if let Ok(mut f) = seen.lock() {
                            *f = Some(e);
                        }
                        None
                    }
                }
            }))
            .map_err(refused)?;
        match failure.lock().ok().and_then(|mut f| f.take()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn refused(e: DaemonError) -> OfpError {
    OfpError::bad_request(BadRequestCode::Eperm, e.to_string())
}

impl FlowTable for DaemonSwitch {
    fn has_group(&self, id: u32) -> Result<bool, OfpError> {
        self.handle.has_group(id).map_err(refused)
    }
    fn has_meter(&self, id: u32) -> Result<bool, OfpError> {
        self.handle.has_meter(id).map_err(refused)
    }
    fn flows(&self) -> Result<Vec<FlowInfo>, OfpError> {
        Ok(self
            .handle
            .flow_dump()
            .map_err(refused)?
            .into_iter()
            .map(|f| FlowInfo {
                id: f.id,
                n_packets: f.n_packets,
                n_bytes: f.n_bytes,
                age: Duration::from_secs_f64(f.duration_s.max(0.0)),
                rule: f.rule,
            })
            .collect())
    }
    fn add_flow_checked(
        &self,
        rule: Rule,
        check_overlap: bool,
        send_flow_rem: bool,
    ) -> Result<(), OfpError> {
        self.handle
            .flow_add_checked(rule, check_overlap, self.max_flows(), send_flow_rem)
            .map_err(|e| OfpError::flow_mod_failed(FlowModFailedCode::Unknown, e.to_string()))?
            .map(|_| ())
            .map_err(super::flow_table::add_refused)
    }
    fn delete_flows(
        &self,
        table: Option<u8>,
        selector: &Match,
        strict_priority: Option<u16>,
    ) -> Result<usize, OfpError> {
        // The daemon's strict delete names one table; OFPTT_ALL means each.
        if let (Some(prio), None) = (strict_priority, table) {
            let tables: Vec<u8> = {
                let mut t: Vec<u8> = self.flows()?.iter().map(|f| f.rule.table).collect();
                t.sort_unstable();
                t.dedup();
                t
            };
            let mut n = 0;
            for t in tables {
                n += self
                    .handle
                    .flow_del(Some(t), *selector, Some(prio))
                    .map_err(refused)?
                    .len();
            }
            return Ok(n);
        }
        self.handle
            .flow_del(table, *selector, strict_priority)
            .map(|ids| ids.len())
            .map_err(refused)
    }
    fn modify_flows(
        &self,
        table: Option<u8>,
        selector: &Match,
        strict_priority: Option<u16>,
        actions: &[OfAction],
    ) -> Result<usize, OfpError> {
        if let (Some(prio), None) = (strict_priority, table) {
            let mut tables: Vec<u8> = self.flows()?.iter().map(|f| f.rule.table).collect();
            tables.sort_unstable();
            tables.dedup();
            let mut n = 0;
            for t in tables {
                n += self
                    .handle
                    .flow_mod(Some(t), *selector, Some(prio), actions.to_vec())
                    .map_err(refused)?
                    .len();
            }
            return Ok(n);
        }
        self.handle
            .flow_mod(table, *selector, strict_priority, actions.to_vec())
            .map(|ids| ids.len())
            .map_err(refused)
    }
}

impl OpenFlowSwitch for DaemonSwitch {
    fn datapath_id(&self) -> u64 {
        self.datapath_id
    }

    fn add_flows(&self, rules: Vec<Rule>) -> Result<(), OfpError> {
        self.handle
            .flow_add(rules)
            .map(|_| ())
            .map_err(|e| OfpError::flow_mod_failed(FlowModFailedCode::Unknown, e.to_string()))
    }

    fn aggregate(&self, sel: RuleSelector) -> Result<AggregateCounts, OfpError> {
        let (flows, packets, bytes) = self
            .handle
            .flow_aggregate(Box::new(move |e| sel.selects_entry(e)))
            .map_err(refused)?;
        Ok(AggregateCounts {
            flows,
            packets,
            bytes,
        })
    }
    fn commit_flow_mods(&self, mods: Arc<BundledFlowMods>) -> Result<(), (usize, OfpError)> {
        let failure: Arc<Mutex<Option<(usize, OfpError)>>> = Arc::new(Mutex::new(None));
        let seen = Arc::clone(&failure);
        let max_flows = self.max_flows();
        let committed = self
            .handle
            .transaction(Box::new(
                move |pipeline| match super::flow_table::apply_flow_mods_to(
                    pipeline, &mods, max_flows,
                ) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        if let Ok(mut f) = seen.lock() {
                            *f = Some(e);
                        }
                        None
                    }
                },
            ))
            .map_err(|e| (0, refused(e)))?;
        if committed {
            return Ok(());
        }
        let failed = failure.lock().ok().and_then(|mut f| f.take());
        Err(failed.unwrap_or_else(|| {
            (
                0,
                OfpError::flow_mod_failed(FlowModFailedCode::Unknown, "the commit failed"),
            )
        }))
    }

    fn group_mod(&self, gm: &GroupMod) -> Result<(), OfpError> {
        let gm = gm.clone();
        self.pipeline_mod(move |p, now| {
            super::group_table::apply_group_mod(p, &gm, now).map(|_| ())
        })
    }

    fn groups(&self) -> Result<Vec<GroupInfo>, OfpError> {
        self.handle.groups().map_err(refused)
    }

    fn meter_mod(&self, mm: &MeterMod) -> Result<(), OfpError> {
        let mm = mm.clone();
        self.pipeline_mod(move |p, now| {
            super::meter_table::apply_meter_mod(p, &mm, now).map(|_| ())
        })
    }

    fn meters(&self) -> Result<Vec<MeterInfo>, OfpError> {
        self.handle.meters().map_err(refused)
    }

    fn ports(&self) -> Result<Vec<PortInfo>, OfpError> {
        Ok(self
            .handle
            .port_list()
            .map_err(refused)?
            .into_iter()
            .map(|p| PortInfo {
                ofport: p.ofport,
                name: p.name,
                config: p.config,
            })
            .collect())
    }

    fn port_mod(&self, ofport: u32, config: u32, mask: u32) -> Result<u32, OfpError> {
        self.handle
            .port_mod(ofport, config, mask)
            .map_err(refused)?
            .ok_or_else(|| {
                OfpError::port_mod_failed(PortModFailedCode::BadPort, format!("no port {ofport}"))
            })
    }

    fn port_counters(&self) -> Result<Vec<(u32, PortCounters)>, OfpError> {
        let ports = self.handle.port_list().map_err(refused)?;
        let stats = self.handle.port_stats().map_err(refused)?;
        Ok(stats
            .into_iter()
            .filter_map(|s| {
                let ofport = ports.iter().find(|p| p.name == s.name)?.ofport;
                let d = &s.stats.rx_dropped;
                let rx_errors = d.get(RxDropReason::ParseError) + d.get(RxDropReason::NotLinear);
                Some((
                    ofport,
                    PortCounters {
                        rx_packets: s.stats.rx,
                        tx_packets: s.stats.tx,
                        rx_bytes: s.stats.rx_bytes,
                        tx_bytes: s.stats.tx_bytes,
                        rx_dropped: d.total() - rx_errors,
                        tx_dropped: s.stats.tx_dropped.total(),
                        rx_errors,
                    },
                ))
            })
            .collect())
    }

    fn packet_out(&self, in_port: u32, actions: &[OfAction], frame: &[u8]) -> Result<(), OfpError> {
        self.handle
            .packet_out(in_port, actions.to_vec(), frame.to_vec())
            .map(|_| ())
            .map_err(refused)
    }
}

/// Publishes PORT_STATUS add/delete by watching the port list.
fn watch_ports(sw: Arc<DaemonSwitch>, hub: EventHub) {
    let mut known = sw.ports().unwrap_or_default();
    loop {
        std::thread::sleep(PORT_WATCH_INTERVAL);
        let Ok(now) = sw.ports() else {
            // The daemon stopped.
            return;
        };
        let same_port = |a: &PortInfo, b: &PortInfo| a.ofport == b.ofport && a.name == b.name;
        for p in &now {
            match known.iter().find(|k| same_port(k, p)) {
                None => hub.publish(SwitchEvent::PortAdded(p.clone())),
                Some(k) if k.config != p.config => {
                    hub.publish(SwitchEvent::PortModified(p.clone()))
                }
                Some(_) => {}
            }
        }
        for p in known
            .iter()
            .filter(|k| !now.iter().any(|p| same_port(k, p)))
        {
            hub.publish(SwitchEvent::PortDeleted(p.clone()));
        }
        known = now;
    }
}

/// The daemon's start hook: starts the OpenFlow endpoint when the config
/// has `[openflow] listen` and/or `controller`.
pub fn start_hook() -> StartHook {
    Box::new(|ctx| {
        let section = ctx.openflow;
        if section.listen.is_none() && section.controller.is_none() {
            return Ok(());
        }
        let sw = Arc::new(DaemonSwitch::new(
            ctx.handle,
            section.datapath_id.unwrap_or(DEFAULT_DATAPATH_ID),
        ));
        let hub = EventHub::default();
        let log = ctx.log.clone();
        let log_fn: LogFn = Arc::new(move |line: &str| slog::info!(log, "{}", line));
        let tls = match (&section.private_key, &section.certificate, &section.ca_cert) {
            (None, None, None) => None,
            (k, c, ca) => Some(
                TlsFiles::from_parts("[openflow]", k.as_deref(), c.as_deref(), ca.as_deref())
                    .map_err(|e| e.to_string())?,
            ),
        };
        let config = EndpointConfig {
            listen: section.listen.clone(),
            controller: section.controller.clone(),
            tls,
            allow_plaintext: section.allow_plaintext,
        };
        let ep = Endpoint::start_with(
            Arc::clone(&sw) as Arc<dyn OpenFlowSwitch>,
            hub.clone(),
            &config,
            log_fn,
        )
        .map_err(|e| e.to_string())?;
        let punt_hub = hub.clone();
        let punts = ctx.punts;
        let removed_hub = hub.clone();
        let removed = ctx.removed;
        std::thread::Builder::new()
            .name("of-ports".into())
            .spawn(move || watch_ports(sw, hub))
            .map_err(|e| format!("cannot start the OpenFlow port watcher: {e}"))?;
        // `controller` actions: every punted packet becomes a PACKET_IN.
        std::thread::Builder::new()
            .name("of-packet-in".into())
            .spawn(move || {
                for p in punts.iter() {
                    punt_hub.publish(SwitchEvent::PacketIn {
                        in_port: p.in_port,
                        table: p.table,
                        cookie: p.cookie,
                        miss: p.miss,
                        total_len: p.total_len,
                        frame: p.frame,
                    });
                }
            })
            .map_err(|e| format!("cannot start the OpenFlow packet-in relay: {e}"))?;
        // Rules added with send_flow_rem that went: FLOW_REMOVED.
        std::thread::Builder::new()
            .name("of-flow-removed".into())
            .spawn(move || {
                for r in removed.iter() {
                    removed_hub.publish(SwitchEvent::FlowRemoved {
                        rule: Box::new(r.rule),
                        reason: r.reason as u8,
                        age: r.age,
                        packets: r.packets,
                        bytes: r.bytes,
                    });
                }
            })
            .map_err(|e| format!("cannot start the OpenFlow flow-removed relay: {e}"))?;
        if let Ok(mut slot) = ENDPOINT.lock() {
            *slot = Some(ep);
        }
        Ok(())
    })
}
