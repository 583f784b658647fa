//! Meter mods and meter replies between the wire and the pipeline's meter
//! table: pure functions, shared by the daemon (which applies them to a
//! copy of its pipeline, as one version) and the tests' in-memory switch.

use super::error::{MeterModFailedCode as Mmfc, OfpError};
use super::message::{mod_command, MeterConfigEntry, MeterFeatures, MeterMod, MeterStats};
use fallback::ofproto::meter::{
    self, band_type, meters_in, Meter, MeterConfig, MeterError, METER_ALL,
};
use fallback::ofproto::table::{Pipeline, RuleId};
use fallback::ofproto::OfAction;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// What flowmark's meters support (OFPMP_METER_FEATURES), as OVS 3.1's
/// userspace datapath: 2^18 meters, drop bands, every flag, 8 bands.
pub fn features() -> MeterFeatures {
    MeterFeatures {
        max_meter: meter::MAX_METERS as u32,
        band_types: 1 << band_type::DROP,
        capabilities: u32::from(meter::flags::ALL),
        max_bands: meter::MAX_BANDS as u8,
        max_color: 0,
    }
}

/// The OpenFlow error for a refused meter mod.
pub fn meter_error(e: MeterError) -> OfpError {
    let code = match &e {
        MeterError::Exists(_) => Mmfc::MeterExists,
        MeterError::Unknown(_) => Mmfc::UnknownMeter,
        MeterError::Invalid(_) => Mmfc::InvalidMeter,
        MeterError::BadFlags { .. } => Mmfc::BadFlags,
        MeterError::OutOfBands { .. } => Mmfc::OutOfBands,
        MeterError::BadBand { .. } => Mmfc::BadBand,
        MeterError::BadRate { .. } => Mmfc::BadRate,
        MeterError::OutOfMeters => Mmfc::OutOfMeters,
    };
    OfpError::meter_mod_failed(code, e.to_string())
}

/// Applies a meter mod to `pipeline` (as one change); the ids of the rules
/// a delete took with it.
pub fn apply_meter_mod(
    pipeline: &mut Pipeline,
    mm: &MeterMod,
    now: Instant,
) -> Result<Vec<RuleId>, OfpError> {
    // A band without a burst size takes its rate as one, and reports it
    // (OVS's userspace datapath writes it back into the configuration).
    let config = || MeterConfig {
        id: mm.meter_id,
        flags: mm.flags,
        bands: mm
            .bands
            .iter()
            .map(|b| meter::Band {
                burst: if b.burst == 0 { b.rate } else { b.burst },
                ..*b
            })
            .collect(),
    };
    match mm.command {
        // Meter 0 does not exist; deleting it (or any meter that does not
        // exist) does nothing, as in OVS.
        mod_command::DELETE => Ok(pipeline.meter_delete(mm.meter_id)),
        mod_command::ADD => {
            pipeline.meter_add(config(), now).map_err(meter_error)?;
            Ok(Vec::new())
        }
        mod_command::MODIFY => {
            pipeline.meter_modify(config()).map_err(meter_error)?;
            Ok(Vec::new())
        }
        other => Err(OfpError::meter_mod_failed(
            Mmfc::BadCommand,
            format!("meter mod command {other}"),
        )),
    }
}

/// OFPMMFC_INVALID_METER when `actions` name a meter `has_meter` denies
/// (OVS's answer to a flow naming a meter that does not exist).
pub fn check_meters(
    actions: &[OfAction],
    has_meter: impl Fn(u32) -> Result<bool, OfpError>,
) -> Result<(), OfpError> {
    for m in meters_in(actions) {
        if !has_meter(m)? {
            return Err(OfpError::meter_mod_failed(
                Mmfc::InvalidMeter,
                format!("meter:{m}: no such meter (add it first)"),
            ));
        }
    }
    Ok(())
}

/// A meter with what its statistics request reports.
#[derive(Clone, Debug)]
pub struct MeterInfo {
    pub meter: Arc<Meter>,
    /// Rules whose instructions name it.
    pub flow_count: u32,
}

/// Every meter of `pipeline`, by id, with its flow count.
pub fn meter_infos(pipeline: &Pipeline) -> Vec<MeterInfo> {
    let mut refs: HashMap<u32, u32> = HashMap::new();
    if pipeline.meters().next().is_some() {
        for e in pipeline.entries() {
            for m in meters_in(e.actions()) {
                *refs.entry(m).or_default() += 1;
            }
        }
    }
    pipeline
        .meters()
        .map(|m| MeterInfo {
            flow_count: refs.get(&m.config.id).copied().unwrap_or(0),
            meter: Arc::clone(m),
        })
        .collect()
}

/// The meters a statistics or configuration request names: every one for
/// [`METER_ALL`], else the one (OFPMMFC_UNKNOWN_METER if there is none, as
/// OVS answers).
fn selected(infos: &[MeterInfo], meter_id: u32) -> Result<Vec<&MeterInfo>, OfpError> {
    let out: Vec<&MeterInfo> = infos
        .iter()
        .filter(|i| meter_id == METER_ALL || i.meter.config.id == meter_id)
        .collect();
    if out.is_empty() && meter_id != METER_ALL {
        return Err(OfpError::meter_mod_failed(
            Mmfc::UnknownMeter,
            format!("no meter {meter_id}"),
        ));
    }
    Ok(out)
}

/// OFPMP_METER's entries.
pub fn meter_stats(
    infos: &[MeterInfo],
    meter_id: u32,
    now: Instant,
) -> Result<Vec<MeterStats>, OfpError> {
    Ok(selected(infos, meter_id)?
        .into_iter()
        .map(|i| {
            let s = i.meter.stats();
            let age = now.saturating_duration_since(i.meter.created);
            MeterStats {
                meter_id: i.meter.config.id,
                flow_count: i.flow_count,
                packet_in_count: s.packets,
                byte_in_count: s.bytes,
                duration_sec: age.as_secs().min(u64::from(u32::MAX)) as u32,
                duration_nsec: age.subsec_nanos(),
                bands: s.bands,
            }
        })
        .collect())
}

/// OFPMP_METER_CONFIG's entries.
pub fn meter_configs(
    infos: &[MeterInfo],
    meter_id: u32,
) -> Result<Vec<MeterConfigEntry>, OfpError> {
    Ok(selected(infos, meter_id)?
        .into_iter()
        .map(|i| MeterConfigEntry {
            flags: i.meter.config.flags,
            meter_id: i.meter.config.id,
            bands: i.meter.config.bands.clone(),
        })
        .collect())
}
