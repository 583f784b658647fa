//! Group mods and group replies between the wire and the pipeline's group
//! table: pure functions, shared by the daemon (which applies them to a
//! copy of its pipeline, as one version) and the tests' in-memory switch.

use super::error::{BadActionCode, GroupModFailedCode as Gmfc, OfpError};
use super::message::{mod_command, GroupDesc, GroupFeatures, GroupMod, GroupStats, WireBucket};
use super::port::{ofport_from_of13, ofport_to_of13};
use fallback::ofproto::group::{
    self, credit, groups_in, Bucket, Group, GroupError, GroupType, GROUP_ALL, MAX_GROUPS,
};
use fallback::ofproto::table::{Pipeline, RuleId};
use fallback::ofproto::{ofport, OfAction};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A group with what its statistics request reports.
#[derive(Clone, Debug)]
pub struct GroupInfo {
    pub group: Arc<Group>,
    /// Rules whose actions name it.
    pub ref_count: u32,
    pub packets: u64,
    pub bytes: u64,
    /// (packets, bytes) per bucket.
    pub buckets: Vec<(u64, u64)>,
    pub age: Duration,
}

/// `OFPAT_*` bits of the actions a bucket may hold (output, push and pop
/// VLAN, group, set TTL, decrement TTL, set-field).
const BUCKET_ACTIONS: u32 = 1 | 1 << 17 | 1 << 18 | 1 << 22 | 1 << 23 | 1 << 24 | 1 << 25;

/// What flowmark's group table supports (OFPMP_GROUP_FEATURES): the four
/// types; select weights and liveness; chaining.
pub fn features() -> GroupFeatures {
    GroupFeatures {
        types: 0b1111,
        // OFPGFC_SELECT_WEIGHT | OFPGFC_SELECT_LIVENESS | OFPGFC_CHAINING.
        capabilities: 1 | 2 | 4,
        max_groups: [MAX_GROUPS as u32; 4],
        actions: [BUCKET_ACTIONS; 4],
    }
}

/// The OpenFlow error for a refused group mod.
pub fn group_error(e: GroupError) -> OfpError {
    let code = match &e {
        GroupError::Exists(_) => Gmfc::GroupExists,
        GroupError::Unknown(_) => Gmfc::UnknownGroup,
        GroupError::Invalid { .. } => Gmfc::InvalidGroup,
        GroupError::WatchUnsupported(_) => Gmfc::WatchUnsupported,
        GroupError::BadBucket { .. } => Gmfc::BadBucket,
        GroupError::OutOfGroups(_) => Gmfc::OutOfGroups,
    };
    OfpError::group_mod_failed(code, e.to_string())
}

/// The group a group mod adds or installs in place of one.
fn group_of(gm: &GroupMod, now: Instant) -> Result<Group, OfpError> {
    let kind = GroupType::from_wire(gm.group_type).ok_or_else(|| {
        OfpError::group_mod_failed(Gmfc::BadType, format!("group type {}", gm.group_type))
    })?;
    let buckets = gm
        .buckets
        .iter()
        .map(|b| {
            let watch_port = match b.watch_port {
                super::port::OFPP_ANY => ofport::NONE,
                p => ofport_from_of13(p).ok_or_else(|| {
                    OfpError::group_mod_failed(Gmfc::BadWatch, format!("watch_port {p:#x}"))
                })?,
            };
            Ok(Bucket {
                weight: b.weight,
                watch_port,
                watch_group: b.watch_group,
                actions: b.actions.clone(),
            })
        })
        .collect::<Result<Vec<_>, OfpError>>()?;
    let mut g = Group::new(gm.group_id, kind, buckets).map_err(group_error)?;
    g.created = Some(now);
    Ok(g)
}

/// Applies a group mod to `pipeline` (as one change); the ids of the rules
/// a delete took with it.
pub fn apply_group_mod(
    pipeline: &mut Pipeline,
    gm: &GroupMod,
    now: Instant,
) -> Result<Vec<RuleId>, OfpError> {
    let id = gm.group_id;
    match gm.command {
        mod_command::DELETE => {
            if id > group::GROUP_MAX && id != GROUP_ALL {
                return Err(OfpError::group_mod_failed(
                    Gmfc::InvalidGroup,
                    format!("group id {id:#x} is reserved"),
                ));
            }
            Ok(pipeline.group_delete(id))
        }
        mod_command::ADD => {
            let g = group_of(gm, now)?;
            pipeline.group_add(g).map_err(group_error)?;
            Ok(Vec::new())
        }
        mod_command::MODIFY | mod_command::ADD_OR_MOD => {
            let g = group_of(gm, now)?;
            let r = if gm.command == mod_command::ADD_OR_MOD && pipeline.group(id).is_none() {
                pipeline.group_add(g)
            } else {
                pipeline.group_modify(g)
            };
            r.map_err(group_error)?;
            Ok(Vec::new())
        }
        other => Err(OfpError::group_mod_failed(
            Gmfc::BadCommand,
            format!("group mod command {other}"),
        )),
    }
}

/// OFPBAC_BAD_OUT_GROUP when `actions` name a group `has_group` denies.
pub fn check_groups(
    actions: &[OfAction],
    has_group: impl Fn(u32) -> Result<bool, OfpError>,
) -> Result<(), OfpError> {
    for g in groups_in(actions) {
        if !has_group(g)? {
            return Err(OfpError::bad_action(
                BadActionCode::BadOutGroup,
                format!("group:{g}: no such group (add it first)"),
            ));
        }
    }
    Ok(())
}

/// Every group of `pipeline` with its counters: `stats` are packets and
/// bytes per credited id (rules, and the groups' [`credit`] ids).
pub fn group_infos(
    pipeline: &Pipeline,
    stats: impl IntoIterator<Item = (RuleId, (u64, u64))>,
    now: Instant,
) -> Vec<GroupInfo> {
    let mut refs: HashMap<u32, u32> = HashMap::new();
    for e in pipeline.entries() {
        for g in groups_in(e.actions()) {
            *refs.entry(g).or_default() += 1;
        }
    }
    let mut by_serial: HashMap<u64, HashMap<u16, (u64, u64)>> = HashMap::new();
    for (id, c) in stats {
        if let Some((serial, bucket)) = credit::parse(id) {
            let e = by_serial
                .entry(serial)
                .or_default()
                .entry(bucket)
                .or_default();
            e.0 += c.0;
            e.1 += c.1;
        }
    }
    pipeline
        .groups()
        .map(|g| {
            let counts = by_serial.get(&g.serial());
            let get = |b: u16| counts.and_then(|c| c.get(&b).copied()).unwrap_or((0, 0));
            let (packets, bytes) = get(credit::GROUP_ITSELF);
            GroupInfo {
                ref_count: refs.get(&g.id).copied().unwrap_or(0),
                packets,
                bytes,
                buckets: (0..g.buckets.len()).map(|i| get(i as u16)).collect(),
                age: g
                    .created
                    .map(|c| now.saturating_duration_since(c))
                    .unwrap_or_default(),
                group: Arc::clone(g),
            }
        })
        .collect()
}

fn wire_buckets(g: &Group) -> Vec<WireBucket> {
    g.buckets
        .iter()
        .map(|b| WireBucket {
            weight: b.weight,
            watch_port: if b.watch_port == ofport::NONE {
                super::port::OFPP_ANY
            } else {
                ofport_to_of13(b.watch_port)
            },
            watch_group: b.watch_group,
            actions: b.actions.clone(),
        })
        .collect()
}

/// OFPMP_GROUP_DESC's entries.
pub fn group_descs(groups: &[GroupInfo]) -> Vec<GroupDesc> {
    groups
        .iter()
        .map(|i| GroupDesc {
            group_type: i.group.kind as u8,
            group_id: i.group.id,
            buckets: wire_buckets(&i.group),
        })
        .collect()
}

/// OFPMP_GROUP's entries for `group_id` ([`GROUP_ALL`]: every group; a
/// group that does not exist gives none, as in OVS).
pub fn group_stats(groups: &[GroupInfo], group_id: u32) -> Vec<GroupStats> {
    groups
        .iter()
        .filter(|i| group_id == GROUP_ALL || i.group.id == group_id)
        .map(|i| GroupStats {
            group_id: i.group.id,
            ref_count: i.ref_count,
            packet_count: i.packets,
            byte_count: i.bytes,
            duration_sec: i.age.as_secs().min(u64::from(u32::MAX)) as u32,
            duration_nsec: i.age.subsec_nanos(),
            buckets: i.buckets.clone(),
        })
        .collect()
}
