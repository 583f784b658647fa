//! The `FlowDevice` trait: what the offload worker needs from a NIC's
//! rte_flow support, plus the capability profiles that describe NIC quirks.
//!
//! One `FlowDevice` object stands for one ingress port: DPDK's `rte_flow_*`
//! calls take a port id, so the DPDK backend keeps it inside the object, the
//! emulated NIC has one rule table per port, and a port's removal simply
//! drops its device. Methods take `&self` so that an implementation can be
//! shared (`Arc`) between the port's datapath side and the offload worker;
//! implementations use interior mutability for their rule tables.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::rte::{Action, Item, Rule};

/// A device's name for an installed rule (what `rte_flow_create` returned).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleHandle(pub u64);

impl fmt::Display for RuleHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A rule's COUNT action counters (`rte_flow_query_count`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    pub hits: u64,
    pub bytes: u64,
}

/// Why a device refused a rule or a call.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FlowError {
    /// The NIC cannot do this (a permanent property of the rule on this
    /// NIC): the megaflow is `Rejected` and stays in software.
    #[error("{what} unsupported by this NIC: {why}; the megaflow stays in software")]
    Unsupported { what: String, why: String },
    /// The rule table is full: the megaflow is `Failed` and retried when
    /// rules are freed.
    #[error(
        "no space for another flow rule on this port (rule table full); \
         the megaflow stays in software and is retried when rules are freed"
    )]
    NoSpace,
    /// The rule or call is malformed (a translator or caller bug).
    #[error(
        "invalid {what}: {why}; this is a flowmark bug, report it with the rule's testpmd line"
    )]
    Invalid { what: String, why: String },
    /// The device failed (e.g. ENOSYS from a PMD without rte_flow): the
    /// megaflow is `Failed` and retried when the device's situation changes.
    #[error("device error: {0}; the megaflow stays in software until the device changes (rules freed, reset)")]
    Device(String),
}

impl FlowError {
    pub fn unsupported(what: impl Into<String>, why: impl Into<String>) -> Self {
        FlowError::Unsupported {
            what: what.into(),
            why: why.into(),
        }
    }

    pub fn invalid(what: impl Into<String>, why: impl Into<String>) -> Self {
        FlowError::Invalid {
            what: what.into(),
            why: why.into(),
        }
    }

    /// True when retrying the same rule on the same device cannot succeed
    /// (`Unsupported`, `Invalid`): DESIGN §3 `Rejected`. `NoSpace` and
    /// `Device` are `Failed` and worth a retry when things change.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            FlowError::Unsupported { .. } | FlowError::Invalid { .. }
        )
    }

    /// A short stable key for counting failures by reason
    /// (`unsupported`, `no_space`, `invalid`, `device`).
    pub fn kind(&self) -> &'static str {
        match self {
            FlowError::Unsupported { .. } => "unsupported",
            FlowError::NoSpace => "no_space",
            FlowError::Invalid { .. } => "invalid",
            FlowError::Device(_) => "device",
        }
    }
}

/// A NIC's rte_flow support, by named profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Profile {
    /// Everything flowmark uses; 1,048,576 rules.
    #[default]
    Generic,
    /// Intel XL710-like: an ETH item cannot match on its type alone;
    /// 8,192 rules.
    Xl710,
    /// The MARK action is refused.
    NoMark,
    /// 16 rules per port (to exercise `NoSpace`).
    Tiny,
}

/// A profile name that is not one of [`Profile::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown NIC profile {name:?}: valid profiles are generic, xl710, no-mark, tiny")]
pub struct UnknownProfile {
    pub name: String,
}

impl Profile {
    pub const ALL: [Profile; 4] = [
        Profile::Generic,
        Profile::Xl710,
        Profile::NoMark,
        Profile::Tiny,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Profile::Generic => "generic",
            Profile::Xl710 => "xl710",
            Profile::NoMark => "no-mark",
            Profile::Tiny => "tiny",
        }
    }

    pub fn from_name(name: &str) -> Result<Profile, UnknownProfile> {
        Profile::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| UnknownProfile {
                name: name.to_string(),
            })
    }

    pub fn capabilities(self) -> Capabilities {
        let generic = Capabilities {
            profile: self,
            max_rules: 1 << 20,
            eth_type_alone: true,
            mark: true,
            ranges: true,
            max_mark: Capabilities::MAX_MARK,
        };
        match self {
            Profile::Generic => generic,
            Profile::Xl710 => Capabilities {
                max_rules: 8192,
                eth_type_alone: false,
                ..generic
            },
            Profile::NoMark => Capabilities {
                mark: false,
                ..generic
            },
            Profile::Tiny => Capabilities {
                max_rules: 16,
                ..generic
            },
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = UnknownProfile;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::from_name(s)
    }
}

/// What a NIC's rte_flow can do. Per port: `max_rules` is each port's own
/// rule table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Capabilities {
    pub profile: Profile,
    /// Rules the port's table holds.
    pub max_rules: usize,
    /// An ETH item may match on `type` without a MAC address.
    pub eth_type_alone: bool,
    /// The MARK action works.
    pub mark: bool,
    /// Items may carry `last` (ranges).
    pub ranges: bool,
    /// The largest MARK id (ids are 1..=max_mark; 0 means "no mark").
    pub max_mark: u32,
}

impl Default for Capabilities {
    fn default() -> Self {
        Profile::Generic.capabilities()
    }
}

impl Capabilities {
    /// 24 bits: what common NICs carry in the mbuf's FDIR id.
    pub const MAX_MARK: u32 = 0x00ff_ffff;

    /// Checks a rule against these capabilities and against rte_flow's
    /// structural rules (item order, fate actions) without touching a
    /// device: the shared part of every `FlowDevice::validate`. Capacity
    /// (`NoSpace`) is the device's own business.
    pub fn check(&self, rule: &Rule) -> Result<(), FlowError> {
        let profile = self.profile;
        if !rule.attr.ingress {
            return Err(FlowError::unsupported(
                "attribute (not ingress)",
                "only ingress rules are supported",
            ));
        }
        if rule.attr.group != 0 {
            return Err(FlowError::unsupported(
                format!("attribute group {}", rule.attr.group),
                "only group 0 (the root table) is supported",
            ));
        }
        check_pattern_order(&rule.pattern)?;
        for item in &rule.pattern {
            // Only items with a `last` can have ranges (building the field
            // list costs an allocation; this runs on every rule insertion).
            let fields = if item.has_last() {
                item.fields()
            } else {
                Vec::new()
            };
            for f in fields {
                if let Some(last) = f.last {
                    if !self.ranges {
                        return Err(FlowError::unsupported(
                            format!("item {} range on {}", item.token(), f.name),
                            format!("this NIC (profile {profile}) cannot match ranges (last)"),
                        ));
                    }
                    if last < f.spec {
                        return Err(FlowError::invalid(
                            format!("item {} range on {}", item.token(), f.name),
                            format!("last {last:#x} is below spec {:#x}", f.spec),
                        ));
                    }
                }
            }
            if let Item::Eth(eth) = item {
                let has_mac = eth.mask.src != [0; 6] || eth.mask.dst != [0; 6];
                if !self.eth_type_alone && eth.mask.ether_type != 0 && !has_mac {
                    return Err(FlowError::unsupported(
                        "item ETH",
                        format!(
                            "this NIC (profile {profile}) cannot match an Ethernet header \
                             on its type alone"
                        ),
                    ));
                }
            }
        }
        let mut fates = 0;
        for action in &rule.actions {
            match action {
                Action::Mark { id } => {
                    if !self.mark {
                        return Err(FlowError::unsupported(
                            "action MARK",
                            format!("this NIC (profile {profile}) cannot mark packets"),
                        ));
                    }
                    if *id > self.max_mark {
                        return Err(FlowError::unsupported(
                            format!("action MARK id {id}"),
                            format!("mark ids go up to {:#x} on this NIC", self.max_mark),
                        ));
                    }
                }
                Action::Rss { queues, .. } if queues.is_empty() => {
                    return Err(FlowError::invalid(
                        "action RSS",
                        "no queue to spread over: list the port's rx queues",
                    ));
                }
                _ => {}
            }
            if action.is_fate() {
                fates += 1;
            }
        }
        if fates > 1 {
            return Err(FlowError::invalid(
                "actions",
                "more than one fate action (RSS, QUEUE, DROP)",
            ));
        }
        Ok(())
    }
}

/// ETH first, then at most one VLAN, then at most one L3, then at most one
/// L4 item that fits the L3 (ICMP after IPv4, ICMP6 after IPv6).
fn check_pattern_order(pattern: &[Item]) -> Result<(), FlowError> {
    #[derive(PartialEq, PartialOrd, Clone, Copy)]
    enum Layer {
        Start,
        Eth,
        Vlan,
        L3,
        L4,
    }
    let mut layer = Layer::Start;
    let mut l3: Option<&Item> = None;
    for item in pattern {
        let (this, ok) = match item {
            Item::Eth(_) => (Layer::Eth, layer == Layer::Start),
            Item::Vlan(_) => (Layer::Vlan, layer == Layer::Eth),
            Item::Ipv4(_) | Item::Ipv6(_) => {
                (Layer::L3, layer == Layer::Eth || layer == Layer::Vlan)
            }
            Item::Tcp(_) | Item::Udp(_) | Item::Sctp(_) => (Layer::L4, layer == Layer::L3),
            Item::Icmp(_) => (Layer::L4, matches!(l3, Some(Item::Ipv4(_)))),
            Item::Icmp6(_) => (Layer::L4, matches!(l3, Some(Item::Ipv6(_)))),
        };
        if !ok || (this == Layer::L4 && layer != Layer::L3) {
            return Err(FlowError::invalid(
                format!("pattern item {}", item.token()),
                "out of place: the order is eth / [vlan] / [ipv4|ipv6] / [tcp|udp|sctp|icmp|icmp6]",
            ));
        }
        if this == Layer::L3 {
            l3 = Some(item);
        }
        layer = this;
    }
    if pattern.is_empty() {
        return Err(FlowError::invalid(
            "pattern",
            "empty: start with an ETH item",
        ));
    }
    Ok(())
}

/// A NIC port's rte_flow interface (one object per ingress port; see the
/// module documentation). The offload worker is the only caller of the
/// mutating methods.
pub trait FlowDevice: Send + Sync {
    /// What this port's NIC can do.
    fn capabilities(&self) -> &Capabilities;

    /// Would `create` accept the rule (ignoring capacity)? Like
    /// `rte_flow_validate`.
    fn validate(&self, rule: &Rule) -> Result<(), FlowError>;

    /// Installs the rule. `NoSpace` when the table is full.
    fn create(&self, rule: &Rule) -> Result<RuleHandle, FlowError>;

    /// [`FlowDevice::create`] for a rule this device's
    /// [`FlowDevice::validate`] has just accepted (the offload worker
    /// validates every rule before creating it; neither the rule nor what
    /// the device can do changes in between): a device may skip checking
    /// again what validate checked, so that an insert is validated once.
    /// Capacity and device failures are still the create's. By default, a
    /// plain create.
    fn create_validated(&self, rule: &Rule) -> Result<RuleHandle, FlowError> {
        self.create(rule)
    }

    /// Removes one rule. An unknown handle is `Invalid`.
    fn destroy(&self, handle: RuleHandle) -> Result<(), FlowError>;

    /// The rule's COUNT counters (`Unsupported` when it has no COUNT action).
    fn query(&self, handle: RuleHandle) -> Result<Counters, FlowError>;

    /// Removes every rule of this port.
    fn flush(&self) -> Result<(), FlowError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rte::{Attr, Eth, Ipv4, Masked};

    fn rule(pattern: Vec<Item>, actions: Vec<Action>) -> Rule {
        Rule {
            attr: Attr::INGRESS,
            pattern,
            actions,
        }
    }

    fn eth_type(t: u16) -> Item {
        Item::Eth(Masked::new(
            Eth {
                ether_type: t,
                ..Eth::default()
            },
            Eth {
                ether_type: 0xffff,
                ..Eth::default()
            },
        ))
    }

    #[test]
    fn profile_names_round_trip() {
        for p in Profile::ALL {
            assert_eq!(Profile::from_name(p.name()), Ok(p));
            assert_eq!(p.name().parse::<Profile>(), Ok(p));
        }
        let err = Profile::from_name("mlx5").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown NIC profile \"mlx5\": valid profiles are generic, xl710, no-mark, tiny"
        );
    }

    #[test]
    fn profile_numbers() {
        assert_eq!(Profile::Generic.capabilities().max_rules, 1_048_576);
        assert_eq!(Profile::Xl710.capabilities().max_rules, 8192);
        assert!(!Profile::Xl710.capabilities().eth_type_alone);
        assert!(!Profile::NoMark.capabilities().mark);
        assert_eq!(Profile::Tiny.capabilities().max_rules, 16);
    }

    #[test]
    fn check_refuses_per_profile() {
        let mark_rss = vec![
            Action::Mark { id: 5 },
            Action::Rss {
                queues: vec![0],
                types: vec![],
            },
        ];
        let r = rule(vec![eth_type(0x0800)], mark_rss.clone());
        assert_eq!(Profile::Generic.capabilities().check(&r), Ok(()));
        let e = Profile::Xl710.capabilities().check(&r).unwrap_err();
        assert_eq!(
            e.to_string(),
            "item ETH unsupported by this NIC: this NIC (profile xl710) cannot match an \
             Ethernet header on its type alone; the megaflow stays in software"
        );
        let e = Profile::NoMark.capabilities().check(&r).unwrap_err();
        assert!(e.is_permanent());
        assert!(e
            .to_string()
            .starts_with("action MARK unsupported by this NIC"));
    }

    #[test]
    fn check_refuses_bad_structure() {
        let acts = vec![Action::Drop];
        let caps = Capabilities::default();
        let l4_first = rule(
            vec![Item::Tcp(Masked::any()), eth_type(0x0800)],
            acts.clone(),
        );
        assert!(matches!(
            caps.check(&l4_first),
            Err(FlowError::Invalid { .. })
        ));
        let icmp_after_eth = rule(
            vec![eth_type(0x0800), Item::Icmp(Masked::any())],
            acts.clone(),
        );
        assert!(caps.check(&icmp_after_eth).is_err());
        let two_fates = rule(
            vec![eth_type(0x0800), Item::Ipv4(Masked::<Ipv4>::any())],
            vec![Action::Drop, Action::Queue { index: 0 }],
        );
        assert!(caps.check(&two_fates).is_err());
        let empty_rss = rule(
            vec![eth_type(0x0800)],
            vec![Action::Rss {
                queues: vec![],
                types: vec![],
            }],
        );
        assert!(caps.check(&empty_rss).is_err());
    }

    #[test]
    fn error_kinds() {
        assert!(!FlowError::NoSpace.is_permanent());
        assert!(!FlowError::Device("Function not implemented".into()).is_permanent());
        assert_eq!(FlowError::NoSpace.kind(), "no_space");
    }
}
