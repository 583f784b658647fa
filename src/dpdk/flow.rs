//! `FlowDevice` for ethdev ports over the real rte_flow API: the offload
//! crate's model (`offload::rte`) becomes `rte_flow_item`/`rte_flow_action`
//! arrays of the generated C types (header fields in network order),
//! `rte_flow_validate`/`create`/`destroy`/`query`/`flush` are called for
//! real, and an `rte_flow_error` becomes the recorded reason, carrying the
//! PMD's own message (e.g. "Function not implemented" from the virtual
//! devices, which have no rte_flow).

use super::{strerror, sys};
use fallback::sync::Recover;
use hashbrown::HashMap;
use offload::device::{Capabilities, Counters, FlowDevice, FlowError, RuleHandle};
use offload::rte::{self, Action, Item, RssType, Rule};
use std::any::Any;
use std::ffi::{c_void, CStr};
use std::ptr;
use std::sync::{Mutex, RwLock, RwLockReadGuard};

/// One item's spec, last and mask in C layout; boxed so the pointers in
/// the `rte_flow_item` array stay put.
#[derive(Default)]
struct Conf<T> {
    spec: T,
    last: T,
    mask: T,
}

/// A rule in rte_flow's C form, with the storage its pointers point into.
struct CRule {
    attr: sys::rte_flow_attr,
    items: Vec<sys::rte_flow_item>,
    actions: Vec<sys::rte_flow_action>,
    _storage: Vec<Box<dyn Any>>,
}

/// Converts one masked model value with `conv` (model → C) into boxed
/// storage and appends the item.
fn item<M: Copy, T: Default + 'static>(
    c: &mut CRule,
    ty: sys::rte_flow_item_type,
    m: &rte::Masked<M>,
    conv: impl Fn(&M, &mut T),
) {
    let mut b: Box<Conf<T>> = Box::default();
    conv(&m.spec, &mut b.spec);
    conv(&m.mask, &mut b.mask);
    let has_last = if let Some(last) = &m.last {
        conv(last, &mut b.last);
        true
    } else {
        false
    };
    let spec = ptr::from_ref(&b.spec).cast::<c_void>();
    let last = if has_last {
        ptr::from_ref(&b.last).cast::<c_void>()
    } else {
        ptr::null()
    };
    let mask = ptr::from_ref(&b.mask).cast::<c_void>();
    c.items.push(sys::rte_flow_item {
        type_: ty,
        spec,
        last,
        mask,
    });
    c._storage.push(b);
}

fn rss_types(types: &[RssType]) -> u64 {
    types
        .iter()
        .map(|t| match t {
            RssType::Ipv4 => {
                sys::RTE_ETH_RSS_IPV4
                    | sys::RTE_ETH_RSS_FRAG_IPV4
                    | sys::RTE_ETH_RSS_NONFRAG_IPV4_OTHER
            }
            RssType::Ipv4Tcp => sys::RTE_ETH_RSS_NONFRAG_IPV4_TCP,
            RssType::Ipv4Udp => sys::RTE_ETH_RSS_NONFRAG_IPV4_UDP,
            RssType::Ipv4Sctp => sys::RTE_ETH_RSS_NONFRAG_IPV4_SCTP,
            RssType::Ipv6 => {
                sys::RTE_ETH_RSS_IPV6
                    | sys::RTE_ETH_RSS_FRAG_IPV6
                    | sys::RTE_ETH_RSS_NONFRAG_IPV6_OTHER
            }
            RssType::Ipv6Tcp => sys::RTE_ETH_RSS_NONFRAG_IPV6_TCP,
            RssType::Ipv6Udp => sys::RTE_ETH_RSS_NONFRAG_IPV6_UDP,
            RssType::Ipv6Sctp => sys::RTE_ETH_RSS_NONFRAG_IPV6_SCTP,
        })
        .fold(0, |a, b| a | b)
}

fn action<T: 'static>(c: &mut CRule, ty: sys::rte_flow_action_type, conf: Option<Box<T>>) {
    let p = match conf {
        Some(b) => {
            let p = ptr::from_ref(b.as_ref()).cast::<c_void>();
            c._storage.push(b);
            p
        }
        None => ptr::null(),
    };
    c.actions.push(sys::rte_flow_action { type_: ty, conf: p });
}

/// The model rule in rte_flow's C form.
fn to_c(rule: &Rule) -> CRule {
    let mut attr = sys::rte_flow_attr {
        group: rule.attr.group,
        priority: rule.attr.priority,
        ..Default::default()
    };
    attr.set_ingress(u32::from(rule.attr.ingress));
    let mut c = CRule {
        attr,
        items: Vec::with_capacity(rule.pattern.len() + 1),
        actions: Vec::with_capacity(rule.actions.len() + 1),
        _storage: Vec::new(),
    };
    for it in &rule.pattern {
        match it {
            Item::Eth(m) => item(
                &mut c,
                sys::rte_flow_item_type_RTE_FLOW_ITEM_TYPE_ETH,
                m,
                |v: &rte::Eth, e: &mut sys::rte_flow_item_eth| {
                    e.__bindgen_anon_1.hdr = sys::rte_ether_hdr {
                        dst_addr: sys::rte_ether_addr { addr_bytes: v.dst },
                        src_addr: sys::rte_ether_addr { addr_bytes: v.src },
                        ether_type: v.ether_type.to_be(),
                    };
                    e.set_has_vlan(u32::from(v.has_vlan));
                },
            ),
            Item::Vlan(m) => item(
                &mut c,
                sys::rte_flow_item_type_RTE_FLOW_ITEM_TYPE_VLAN,
                m,
                |v: &rte::Vlan, e: &mut sys::rte_flow_item_vlan| {
                    e.__bindgen_anon_1.hdr = sys::rte_vlan_hdr {
                        vlan_tci: v.tci.to_be(),
                        eth_proto: v.inner_type.to_be(),
                    };
                    e.set_has_more_vlan(u32::from(v.has_more_vlan));
                },
            ),
            Item::Ipv4(m) => item(
                &mut c,
                sys::rte_flow_item_type_RTE_FLOW_ITEM_TYPE_IPV4,
                m,
                |v: &rte::Ipv4, e: &mut sys::rte_flow_item_ipv4| {
                    let h = &mut e.hdr;
                    h.__bindgen_anon_1.version_ihl = v.version_ihl;
                    h.type_of_service = v.type_of_service;
                    h.packet_id = v.packet_id.to_be();
                    h.fragment_offset = v.fragment_offset.to_be();
                    h.time_to_live = v.time_to_live;
                    h.next_proto_id = v.next_proto_id;
                    h.src_addr = v.src_addr.to_be();
                    h.dst_addr = v.dst_addr.to_be();
                },
            ),
            Item::Ipv6(m) => item(
                &mut c,
                sys::rte_flow_item_type_RTE_FLOW_ITEM_TYPE_IPV6,
                m,
                |v: &rte::Ipv6, e: &mut sys::rte_flow_item_ipv6| {
                    e.hdr.vtc_flow = v.vtc_flow.to_be();
                    e.hdr.proto = v.proto;
                    e.hdr.hop_limits = v.hop_limits;
                    e.hdr.src_addr = v.src_addr.to_be_bytes();
                    e.hdr.dst_addr = v.dst_addr.to_be_bytes();
                    e.set_has_frag_ext(u32::from(v.has_frag_ext));
                },
            ),
            Item::Tcp(m) => item(
                &mut c,
                sys::rte_flow_item_type_RTE_FLOW_ITEM_TYPE_TCP,
                m,
                |v: &rte::Tcp, e: &mut sys::rte_flow_item_tcp| {
                    e.hdr.src_port = v.src_port.to_be();
                    e.hdr.dst_port = v.dst_port.to_be();
                    e.hdr.tcp_flags = v.tcp_flags;
                },
            ),
            Item::Udp(m) => item(
                &mut c,
                sys::rte_flow_item_type_RTE_FLOW_ITEM_TYPE_UDP,
                m,
                |v: &rte::Udp, e: &mut sys::rte_flow_item_udp| {
                    e.hdr.src_port = v.src_port.to_be();
                    e.hdr.dst_port = v.dst_port.to_be();
                },
            ),
            Item::Sctp(m) => item(
                &mut c,
                sys::rte_flow_item_type_RTE_FLOW_ITEM_TYPE_SCTP,
                m,
                |v: &rte::Sctp, e: &mut sys::rte_flow_item_sctp| {
                    e.hdr.src_port = v.src_port.to_be();
                    e.hdr.dst_port = v.dst_port.to_be();
                    e.hdr.tag = v.tag.to_be();
                },
            ),
            Item::Icmp(m) => item(
                &mut c,
                sys::rte_flow_item_type_RTE_FLOW_ITEM_TYPE_ICMP,
                m,
                |v: &rte::Icmp, e: &mut sys::rte_flow_item_icmp| {
                    e.hdr.icmp_type = v.icmp_type;
                    e.hdr.icmp_code = v.icmp_code;
                    e.hdr.icmp_ident = v.icmp_ident.to_be();
                    e.hdr.icmp_seq_nb = v.icmp_seq_nb.to_be();
                },
            ),
            Item::Icmp6(m) => item(
                &mut c,
                sys::rte_flow_item_type_RTE_FLOW_ITEM_TYPE_ICMP6,
                m,
                |v: &rte::Icmp6, e: &mut sys::rte_flow_item_icmp6| {
                    e.type_ = v.icmp_type;
                    e.code = v.icmp_code;
                },
            ),
        }
    }
    c.items.push(sys::rte_flow_item {
        type_: sys::rte_flow_item_type_RTE_FLOW_ITEM_TYPE_END,
        spec: ptr::null(),
        last: ptr::null(),
        mask: ptr::null(),
    });
    for a in &rule.actions {
        match a {
            Action::Mark { id } => action(
                &mut c,
                sys::rte_flow_action_type_RTE_FLOW_ACTION_TYPE_MARK,
                Some(Box::new(sys::rte_flow_action_mark { id: *id })),
            ),
            Action::Queue { index } => action(
                &mut c,
                sys::rte_flow_action_type_RTE_FLOW_ACTION_TYPE_QUEUE,
                Some(Box::new(sys::rte_flow_action_queue { index: *index })),
            ),
            Action::Drop => action::<()>(
                &mut c,
                sys::rte_flow_action_type_RTE_FLOW_ACTION_TYPE_DROP,
                None,
            ),
            Action::Count => action::<()>(
                &mut c,
                sys::rte_flow_action_type_RTE_FLOW_ACTION_TYPE_COUNT,
                None,
            ),
            Action::Rss { queues, types } => {
                let queues: Box<[u16]> = queues.clone().into_boxed_slice();
                let conf = Box::new(sys::rte_flow_action_rss {
                    types: rss_types(types),
                    queue_num: queues.len() as u32,
                    queue: queues.as_ptr(),
                    ..Default::default()
                });
                c._storage.push(Box::new(queues));
                action(
                    &mut c,
                    sys::rte_flow_action_type_RTE_FLOW_ACTION_TYPE_RSS,
                    Some(conf),
                );
            }
        }
    }
    action::<()>(
        &mut c,
        sys::rte_flow_action_type_RTE_FLOW_ACTION_TYPE_END,
        None,
    );
    c
}

fn cause_name(t: sys::rte_flow_error_type) -> &'static str {
    match t {
        sys::rte_flow_error_type_RTE_FLOW_ERROR_TYPE_NONE => "none",
        sys::rte_flow_error_type_RTE_FLOW_ERROR_TYPE_HANDLE => "flow handle",
        sys::rte_flow_error_type_RTE_FLOW_ERROR_TYPE_ATTR_GROUP
        | sys::rte_flow_error_type_RTE_FLOW_ERROR_TYPE_ATTR_PRIORITY
        | sys::rte_flow_error_type_RTE_FLOW_ERROR_TYPE_ATTR_INGRESS
        | sys::rte_flow_error_type_RTE_FLOW_ERROR_TYPE_ATTR_EGRESS
        | sys::rte_flow_error_type_RTE_FLOW_ERROR_TYPE_ATTR_TRANSFER
        | sys::rte_flow_error_type_RTE_FLOW_ERROR_TYPE_ATTR => "attribute",
        sys::rte_flow_error_type_RTE_FLOW_ERROR_TYPE_ITEM_NUM
        | sys::rte_flow_error_type_RTE_FLOW_ERROR_TYPE_ITEM_SPEC
        | sys::rte_flow_error_type_RTE_FLOW_ERROR_TYPE_ITEM_LAST
        | sys::rte_flow_error_type_RTE_FLOW_ERROR_TYPE_ITEM_MASK
        | sys::rte_flow_error_type_RTE_FLOW_ERROR_TYPE_ITEM => "pattern item",
        sys::rte_flow_error_type_RTE_FLOW_ERROR_TYPE_ACTION_NUM
        | sys::rte_flow_error_type_RTE_FLOW_ERROR_TYPE_ACTION_CONF
        | sys::rte_flow_error_type_RTE_FLOW_ERROR_TYPE_ACTION => "action",
        sys::rte_flow_error_type_RTE_FLOW_ERROR_TYPE_STATE => "state",
        _ => "unspecified",
    }
}

/// `FlowDevice` over one ethdev port's rte_flow.
pub struct EthFlowDevice {
    name: String,
    port_id: u16,
    caps: Capabilities,
    /// Handle → the `struct rte_flow *` (as an address).
    rules: Mutex<HashMap<u64, usize>>,
    /// Held for reading across every rte_flow call; `true` while the port
    /// is stopped (reset or removal under way): calls are refused. Taking
    /// it for writing waits for the calls in flight.
    paused: RwLock<bool>,
}

impl std::fmt::Debug for EthFlowDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EthFlowDevice")
            .field("name", &self.name)
            .field("port_id", &self.port_id)
            .finish()
    }
}

impl EthFlowDevice {
    /// The flow device of ethdev port `port_id`. The capabilities are what
    /// flowmark may try; the PMD's validate has the last word.
    pub fn new(name: impl Into<String>, port_id: u16, caps: Capabilities) -> Self {
        EthFlowDevice {
            name: name.into(),
            port_id,
            caps,
            rules: Mutex::new(HashMap::new()),
            paused: RwLock::new(false),
        }
    }

    /// Refuses (`true`) or takes again rte_flow calls. When this returns
    /// no call is in flight on the port.
    pub fn pause(&self, paused: bool) {
        let mut g = self.paused.write().recover();
        *g = paused;
    }

    /// Forgets every rule handle without destroying the rules: after an
    /// `RTE_ETH_EVENT_INTR_RESET` or a removal the device holds none, and
    /// destroying a stale `struct rte_flow *` is undefined. Returns how
    /// many were forgotten.
    pub fn forget_rules(&self) -> usize {
        let mut g = self.lock();
        let n = g.len();
        g.clear();
        n
    }

    /// The pause gate for one call: `Err` while paused.
    fn enter(&self, call: &str) -> Result<RwLockReadGuard<'_, bool>, FlowError> {
        let g = self.paused.read().recover();
        if *g {
            return Err(FlowError::Device(format!(
                "rte_flow_{call} on port {}: the port is stopped (reset or removal under way); \
                 its megaflows are offered again once it is back",
                self.name
            )));
        }
        Ok(g)
    }

    pub fn port_id(&self) -> u16 {
        self.port_id
    }

    /// Rules created and not yet destroyed.
    pub fn rule_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, usize>> {
        self.rules.lock().recover()
    }

    /// An rte_flow failure as a `FlowError` with the PMD's message.
    fn error(&self, call: &str, ret: i32, err: &sys::rte_flow_error) -> FlowError {
        let errno = -ret;
        let msg = if err.message.is_null() {
            strerror(errno)
        } else {
            // SAFETY: a PMD sets message to a NUL-terminated string that
            // lives at least until the next rte_flow call on this port (by
            // convention a static string); it is copied at once.
            unsafe { CStr::from_ptr(err.message) }
                .to_string_lossy()
                .into_owned()
        };
        let cause = cause_name(err.type_);
        let whence = format!(
            "rte_flow_{call} on port {} ({}): errno {errno} ({}), cause {cause}",
            self.name,
            self.port_id,
            strerror(errno)
        );
        match errno {
            libc_errno::ENOTSUP | libc_errno::EINVAL => {
                FlowError::unsupported(format!("{cause} ({whence})"), msg)
            }
            libc_errno::ENOMEM | libc_errno::ENOSPC => FlowError::NoSpace,
            _ => FlowError::Device(format!("{msg} [{whence}]")),
        }
    }
}

/// The errno values rte_flow uses (Linux).
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const ENOTSUP: i32 = 95;
}

impl FlowDevice for EthFlowDevice {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn validate(&self, rule: &Rule) -> Result<(), FlowError> {
        self.caps.check(rule)?;
        let _gate = self.enter("validate")?;
        let c = to_c(rule);
        let mut err = sys::rte_flow_error::default();
        // SAFETY: attr, the END-terminated item and action arrays and the
        // specs/masks/confs they point to live in `c` for the call; err is
        // ours to fill.
        let ret = unsafe {
            sys::rte_flow_validate(
                self.port_id,
                &c.attr,
                c.items.as_ptr(),
                c.actions.as_ptr(),
                &mut err,
            )
        };
        if ret != 0 {
            return Err(self.error("validate", ret, &err));
        }
        Ok(())
    }

    fn create(&self, rule: &Rule) -> Result<RuleHandle, FlowError> {
        let _gate = self.enter("create")?;
        let c = to_c(rule);
        let mut err = sys::rte_flow_error::default();
        // SAFETY: as in validate; the PMD copies what it keeps.
        let flow = unsafe {
            sys::rte_flow_create(
                self.port_id,
                &c.attr,
                c.items.as_ptr(),
                c.actions.as_ptr(),
                &mut err,
            )
        };
        if flow.is_null() {
            let errno = super::rte_errno();
            return Err(self.error("create", -errno.max(1), &err));
        }
        let handle = flow as usize as u64;
        self.lock().insert(handle, flow as usize);
        Ok(RuleHandle(handle))
    }

    fn destroy(&self, handle: RuleHandle) -> Result<(), FlowError> {
        let _gate = self.enter("destroy")?;
        let Some(flow) = self.lock().remove(&handle.0) else {
            return Err(FlowError::invalid(
                format!("rule {handle}"),
                format!("no such rule on port {}", self.name),
            ));
        };
        let mut err = sys::rte_flow_error::default();
        // SAFETY: flow came from rte_flow_create on this port and was not
        // destroyed (it was still in the table, now removed).
        let ret =
            unsafe { sys::rte_flow_destroy(self.port_id, flow as *mut sys::rte_flow, &mut err) };
        if ret != 0 {
            return Err(self.error("destroy", ret, &err));
        }
        Ok(())
    }

    fn query(&self, handle: RuleHandle) -> Result<Counters, FlowError> {
        let _gate = self.enter("query")?;
        let Some(flow) = self.lock().get(&handle.0).copied() else {
            return Err(FlowError::invalid(
                format!("rule {handle}"),
                format!("no such rule on port {}", self.name),
            ));
        };
        let count = sys::rte_flow_action {
            type_: sys::rte_flow_action_type_RTE_FLOW_ACTION_TYPE_COUNT,
            conf: ptr::null(),
        };
        let mut data = sys::rte_flow_query_count::default();
        let mut err = sys::rte_flow_error::default();
        // SAFETY: flow is a live rule of this port (in the table; the
        // offload worker is the only caller of destroy, and it does not
        // query and destroy at once); data is the COUNT query's out type.
        let ret = unsafe {
            sys::rte_flow_query(
                self.port_id,
                flow as *mut sys::rte_flow,
                &count,
                ptr::from_mut(&mut data).cast(),
                &mut err,
            )
        };
        if ret != 0 {
            return Err(self.error("query", ret, &err));
        }
        Ok(Counters {
            hits: data.hits,
            bytes: data.bytes,
        })
    }

    fn flush(&self) -> Result<(), FlowError> {
        let _gate = self.enter("flush")?;
        let mut err = sys::rte_flow_error::default();
        // SAFETY: the port is valid; flush destroys every rule of the port,
        // whose handles are forgotten below.
        let ret = unsafe { sys::rte_flow_flush(self.port_id, &mut err) };
        self.lock().clear();
        if ret != 0 {
            return Err(self.error("flush", ret, &err));
        }
        Ok(())
    }
}
