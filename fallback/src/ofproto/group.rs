//! OpenFlow groups: a rule's `group:N` action runs the buckets of group N.
//!
//! - `all`: every bucket, each on its own copy of the packet (a clone);
//! - `select`: one bucket, chosen by a hash of the flow's addresses and
//!   ports among the live buckets, weighted;
//! - `indirect`: its one bucket;
//! - `fast_failover`: the first live bucket (one whose watched port exists
//!   or whose watched group has a live bucket).
//!
//! A bucket's actions are an OpenFlow action set, as in Open vSwitch: one
//! action of each kind, run in the action-set order, and nothing at all
//! when the set has no output or group (see [`SetAction`]).

use super::{ofport, OfAction, SetAction};
use thiserror::Error;

/// Highest group id a group may have (`OFPG_MAX`); the ids above are reserved.
pub const GROUP_MAX: u32 = 0xffff_ff00;
/// `OFPG_ALL`: every group (a delete or a stats request).
pub const GROUP_ALL: u32 = 0xffff_fffc;
/// `OFPG_ANY`: no group (a bucket that watches none, a filter that selects any).
pub const GROUP_ANY: u32 = 0xffff_ffff;
/// Groups a bridge holds at most, of each type.
pub const MAX_GROUPS: usize = 65_536;
/// Buckets a group holds at most.
pub const MAX_BUCKETS: usize = 1024;
/// How deep fast-failover liveness follows watched groups (OVS: 128).
pub const MAX_LIVENESS_DEPTH: usize = 128;

/// The four OpenFlow 1.1+ group types (`OFPGT_*`, the wire values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupType {
    All = 0,
    Select = 1,
    Indirect = 2,
    FastFailover = 3,
}

impl GroupType {
    pub const TYPES: [GroupType; 4] = [
        GroupType::All,
        GroupType::Select,
        GroupType::Indirect,
        GroupType::FastFailover,
    ];

    pub fn from_wire(t: u8) -> Option<GroupType> {
        GroupType::TYPES.get(usize::from(t)).copied()
    }

    /// The name ovs-ofctl uses (`type=...`).
    pub fn name(self) -> &'static str {
        match self {
            GroupType::All => "all",
            GroupType::Select => "select",
            GroupType::Indirect => "indirect",
            GroupType::FastFailover => "ff",
        }
    }
}

/// One bucket: its actions (as the controller gave them) and what decides
/// whether it is live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// Share of a select group's traffic (0: never chosen); 0 elsewhere.
    pub weight: u16,
    /// The port whose presence makes the bucket live ([`ofport::NONE`]: none).
    pub watch_port: u32,
    /// The group whose liveness makes the bucket live ([`GROUP_ANY`]: none).
    pub watch_group: u32,
    pub actions: Vec<OfAction>,
}

impl Bucket {
    /// A bucket with no weight and nothing watched.
    pub fn new(actions: Vec<OfAction>) -> Self {
        Bucket {
            weight: 0,
            watch_port: ofport::NONE,
            watch_group: GROUP_ANY,
            actions,
        }
    }

    /// True when the bucket names something to watch.
    pub fn has_liveness(&self) -> bool {
        self.watch_port != ofport::NONE || self.watch_group != GROUP_ANY
    }
}

/// Why a group mod is refused; each names the OpenFlow error it answers as.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum GroupError {
    #[error("group {0} exists already (OFPGMFC_GROUP_EXISTS): modify it or delete it first")]
    Exists(u32),
    #[error("no group {0} (OFPGMFC_UNKNOWN_GROUP): add it first")]
    Unknown(u32),
    #[error("group {id}: {reason} (OFPGMFC_INVALID_GROUP)")]
    Invalid { id: u32, reason: &'static str },
    #[error("group {0}: all and indirect buckets cannot watch a port or group (OFPGMFC_WATCH_UNSUPPORTED)")]
    WatchUnsupported(u32),
    #[error("group {id}: bucket {bucket}: {reason} (OFPGMFC_BAD_BUCKET)")]
    BadBucket {
        id: u32,
        bucket: usize,
        reason: &'static str,
    },
    #[error("the bridge holds {MAX_GROUPS} groups of type {0} already (OFPGMFC_OUT_OF_GROUPS): delete some")]
    OutOfGroups(&'static str),
}

/// A group as installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub id: u32,
    pub kind: GroupType,
    pub buckets: Vec<Bucket>,
    /// Unique per installed version of a group (set by the pipeline): the
    /// statistics of megaflows translated through it are counted under it,
    /// so a modified or re-added group starts from zero, as in OVS.
    pub(crate) serial: u64,
    /// Each bucket's actions in the order they run (empty: the bucket does
    /// nothing, having no output or group).
    pub(crate) exec: Vec<Vec<OfAction>>,
    /// When it was added or last modified (set by the caller: statistics
    /// report its age).
    pub created: Option<std::time::Instant>,
}

impl Group {
    /// A group after Open vSwitch's checks of a group mod.
    pub fn new(id: u32, kind: GroupType, buckets: Vec<Bucket>) -> Result<Group, GroupError> {
        if id > GROUP_MAX {
            return Err(GroupError::Invalid {
                id,
                reason: "the id is reserved (above 0xffffff00)",
            });
        }
        if kind == GroupType::Indirect && buckets.len() != 1 {
            return Err(GroupError::Invalid {
                id,
                reason: "an indirect group has exactly one bucket",
            });
        }
        if buckets.len() > MAX_BUCKETS {
            return Err(GroupError::Invalid {
                id,
                reason: "more than 1024 buckets",
            });
        }
        let mut exec = Vec::with_capacity(buckets.len());
        for (i, b) in buckets.iter().enumerate() {
            if b.weight != 0 && kind != GroupType::Select {
                return Err(GroupError::Invalid {
                    id,
                    reason: "only a select group's buckets have a weight",
                });
            }
            match kind {
                GroupType::All | GroupType::Indirect if b.has_liveness() => {
                    return Err(GroupError::WatchUnsupported(id))
                }
                GroupType::FastFailover if !b.has_liveness() => {
                    return Err(GroupError::Invalid {
                        id,
                        reason: "a fast-failover bucket watches a port or a group",
                    })
                }
                _ => {}
            }
            let mut set = Vec::with_capacity(b.actions.len());
            for a in &b.actions {
                let Some(s) = SetAction::from_action(*a) else {
                    return Err(GroupError::BadBucket {
                        id,
                        bucket: i,
                        reason: "a bucket holds output, group, set-field, push/pop VLAN and dec_ttl actions only",
                    });
                };
                SetAction::write(&mut set, s);
            }
            exec.push(SetAction::run_order(&set));
        }
        Ok(Group {
            id,
            kind,
            buckets,
            serial: 0,
            exec,
            created: None,
        })
    }

    /// See [`credit`].
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The groups this one's buckets run or watch.
    pub fn references(&self) -> impl Iterator<Item = u32> + '_ {
        self.buckets.iter().flat_map(|b| {
            let watched = (b.watch_group != GROUP_ANY).then_some(b.watch_group);
            b.actions
                .iter()
                .filter_map(|a| match a {
                    OfAction::Group(g) => Some(*g),
                    _ => None,
                })
                .chain(watched)
        })
    }
}

/// The group an action list runs, directly or through its action set.
pub fn groups_in(actions: &[OfAction]) -> impl Iterator<Item = u32> + '_ {
    actions.iter().filter_map(|a| match a {
        OfAction::Group(g) | OfAction::Write(SetAction::Group(g)) => Some(*g),
        _ => None,
    })
}

/// Statistics of megaflows are credited to the OpenFlow rules their
/// translation ran (a list of [`super::table::RuleId`]s per megaflow). A
/// group's bucket is credited the same way, under an id no rule has: the
/// top bit set, the group's serial, and the bucket's index ([`GROUP_ITSELF`]
/// for the group as a whole).
pub mod credit {
    use super::super::table::RuleId;

    const TAG: u64 = 1 << 63;
    /// The bucket index that stands for the whole group.
    pub const GROUP_ITSELF: u16 = u16::MAX;

    pub fn id(serial: u64, bucket: u16) -> RuleId {
        RuleId(TAG | (serial & 0x7fff_ffff_ffff) << 16 | u64::from(bucket))
    }

    /// (serial, bucket) of an id made by [`id`]; `None` for a rule's id.
    pub fn parse(id: RuleId) -> Option<(u64, u16)> {
        (id.0 & TAG != 0).then_some(((id.0 & !TAG) >> 16, id.0 as u16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_follow_open_vswitch() {
        let out = |p| Bucket::new(vec![OfAction::Output(p)]);
        assert!(Group::new(1, GroupType::All, vec![out(1), out(2)]).is_ok());
        assert!(matches!(
            Group::new(1, GroupType::Indirect, vec![out(1), out(2)]),
            Err(GroupError::Invalid { .. })
        ));
        assert!(matches!(
            Group::new(0xffff_ff01, GroupType::All, vec![]),
            Err(GroupError::Invalid { .. })
        ));
        let mut weighted = out(1);
        weighted.weight = 5;
        assert!(Group::new(1, GroupType::Select, vec![weighted.clone()]).is_ok());
        assert!(matches!(
            Group::new(1, GroupType::All, vec![weighted]),
            Err(GroupError::Invalid { .. })
        ));
        let mut watching = out(1);
        watching.watch_port = 1;
        assert_eq!(
            Group::new(7, GroupType::All, vec![watching.clone()]),
            Err(GroupError::WatchUnsupported(7))
        );
        assert!(Group::new(7, GroupType::FastFailover, vec![watching]).is_ok());
        assert!(matches!(
            Group::new(7, GroupType::FastFailover, vec![out(1)]),
            Err(GroupError::Invalid { .. })
        ));
        assert!(matches!(
            Group::new(
                7,
                GroupType::All,
                vec![Bucket::new(vec![OfAction::Resubmit {
                    port: None,
                    table: Some(1)
                }])]
            ),
            Err(GroupError::BadBucket { bucket: 0, .. })
        ));
    }

    #[test]
    fn a_bucket_runs_as_an_action_set() {
        let g = Group::new(
            1,
            GroupType::All,
            vec![
                Bucket::new(vec![
                    OfAction::Output(2),
                    OfAction::SetField(crate::key::Field::NwTtl, 9),
                    OfAction::Output(3),
                ]),
                // No output: the bucket does nothing.
                Bucket::new(vec![OfAction::DecTtl]),
                // A group wins over an output.
                Bucket::new(vec![OfAction::Group(4), OfAction::Output(1)]),
            ],
        )
        .unwrap();
        assert_eq!(
            g.exec[0],
            vec![
                OfAction::SetField(crate::key::Field::NwTtl, 9),
                OfAction::Output(3)
            ]
        );
        assert!(g.exec[1].is_empty());
        assert_eq!(g.exec[2], vec![OfAction::Group(4)]);
        assert_eq!(g.references().collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn credit_ids_are_not_rule_ids() {
        let id = credit::id(12345, 3);
        assert_eq!(credit::parse(id), Some((12345, 3)));
        assert_eq!(credit::parse(super::super::table::RuleId(12345)), None);
        assert_eq!(
            credit::parse(credit::id(1, credit::GROUP_ITSELF)),
            Some((1, credit::GROUP_ITSELF))
        );
    }
}
