//! Simple match (the idea of OVS 2.17's): a port whose megaflows all match
//! only `in_port`, `dl_type`, `vlan_tci` and `nw_frag` — what an
//! `in_port=X,actions=...` rule set makes — needs neither the full key nor
//! the EMC nor dpcls. Its packets are looked up by the few fields
//! [`crate::packet::l2_fields`] reads, against at most [`SIMPLE_MAX`]
//! megaflows, each compared as two masked key words.
//!
//! Sound whatever else is installed: a packet that matches a megaflow's
//! masked words is inside that megaflow, whose actions are right for every
//! packet inside it. The "all megaflows of the port are simple" condition
//! only keeps packets from paying this lookup before the full one.

use crate::key::{Field, FlowKey, KEY_WORDS};
use crate::ofproto::Match;
use crate::packet::L2Fields;
use hashbrown::HashMap;

/// More simple megaflows than this on a port: the port takes the EMC and
/// dpcls (a linear probe stops paying off).
pub const SIMPLE_MAX: usize = 4;

const L2_WORD: usize = Field::InPort.position().0;
const FRAG_WORD: usize = Field::NwFrag.position().0;
const DL_TYPE_SHIFT: u32 = Field::DlType.position().1;
const VLAN_SHIFT: u32 = Field::VlanTci.position().1;
const FRAG_SHIFT: u32 = Field::NwFrag.position().1;
const FRAG_BITS: u64 = 0xff << FRAG_SHIFT;

// What the lookup below assumes of the key layout.
const _: () = assert!(Field::DlType.position().0 == L2_WORD);
const _: () = assert!(Field::VlanTci.position().0 == L2_WORD);
const _: () = assert!(Field::InPort.position().1 == 0);
const _: () = assert!(L2_WORD != FRAG_WORD);

/// One simple megaflow: its two masked key words and its handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimpleEntry<H> {
    mask_l2: u64,
    value_l2: u64,
    mask_frag: u64,
    value_frag: u64,
    pub handle: H,
}

/// Whether a megaflow's match is simple: `in_port` exact, and nothing but
/// `dl_type`, `vlan_tci` and `nw_frag` besides.
pub fn is_simple(m: &Match) -> bool {
    let mask = &m.mask;
    mask.in_port() == u32::MAX
        && mask.words[FRAG_WORD] & !FRAG_BITS == 0
        && (0..KEY_WORDS).all(|w| w == L2_WORD || w == FRAG_WORD || mask.words[w] == 0)
}

/// A port's simple megaflows, copied out once per burst.
#[derive(Clone, Copy, Debug)]
pub struct SimpleTable<H> {
    entries: [Option<SimpleEntry<H>>; SIMPLE_MAX],
}

impl<H: Copy> SimpleTable<H> {
    /// The megaflow the packet received on `in_port` with fields `f` is
    /// inside, if any.
    #[inline]
    pub fn lookup(&self, in_port: u32, f: &L2Fields) -> Option<H> {
        let l2 = u64::from(in_port)
            | u64::from(f.dl_type) << DL_TYPE_SHIFT
            | u64::from(f.vlan_tci) << VLAN_SHIFT;
        let frag = u64::from(f.nw_frag) << FRAG_SHIFT;
        self.entries.iter().map_while(|e| e.as_ref()).find_map(|e| {
            (l2 & e.mask_l2 == e.value_l2 && frag & e.mask_frag == e.value_frag).then_some(e.handle)
        })
    }
}

#[derive(Debug)]
struct PortMegaflows<H> {
    simple: Vec<SimpleEntry<H>>,
    others: usize,
}

/// Per ingress port, its simple megaflows and how many others it has: kept
/// by [`crate::cache::FlowCache`] as megaflows come and go.
#[derive(Debug)]
pub struct SimplePorts<H> {
    ports: HashMap<u32, PortMegaflows<H>>,
}

impl<H: Copy + PartialEq> Default for SimplePorts<H> {
    fn default() -> Self {
        SimplePorts {
            ports: HashMap::new(),
        }
    }
}

impl<H: Copy + PartialEq> SimplePorts<H> {
    pub fn insert(&mut self, m: &Match, handle: H) {
        let port = self
            .ports
            .entry(m.value.in_port())
            .or_insert_with(|| PortMegaflows {
                simple: Vec::new(),
                others: 0,
            });
        if is_simple(m) {
            port.simple.push(entry(m, handle));
        } else {
            port.others += 1;
        }
    }

    pub fn remove(&mut self, m: &Match, handle: H) {
        let in_port = m.value.in_port();
        let Some(port) = self.ports.get_mut(&in_port) else {
            return;
        };
        if is_simple(m) {
            if let Some(i) = port.simple.iter().position(|e| e.handle == handle) {
                port.simple.remove(i);
            }
        } else {
            port.others = port.others.saturating_sub(1);
        }
        if port.simple.is_empty() && port.others == 0 {
            self.ports.remove(&in_port);
        }
    }

    /// The port's simple megaflows, when all of its megaflows are simple
    /// and there are at most [`SIMPLE_MAX`] of them.
    #[inline]
    pub fn table(&self, in_port: u32) -> Option<SimpleTable<H>> {
        let port = self.ports.get(&in_port)?;
        if port.others != 0 || port.simple.is_empty() || port.simple.len() > SIMPLE_MAX {
            return None;
        }
        let mut entries = [None; SIMPLE_MAX];
        for (slot, e) in entries.iter_mut().zip(&port.simple) {
            *slot = Some(*e);
        }
        Some(SimpleTable { entries })
    }
}

fn entry<H>(m: &Match, handle: H) -> SimpleEntry<H> {
    let word = |k: &FlowKey, w: usize| k.words[w];
    let (mask_l2, mask_frag) = (word(&m.mask, L2_WORD), word(&m.mask, FRAG_WORD));
    SimpleEntry {
        mask_l2,
        value_l2: word(&m.value, L2_WORD) & mask_l2,
        mask_frag,
        value_frag: word(&m.value, FRAG_WORD) & mask_frag,
        handle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{ethertype, frag};
    use crate::packet::{l2_fields, parse};

    fn simple_match(in_port: u32, dl_type: Option<u16>, nw_frag: Option<u8>) -> Match {
        let mut value = FlowKey::ZERO;
        let mut mask = FlowKey::ZERO;
        value.set(Field::InPort, u128::from(in_port));
        mask.set(Field::InPort, u128::from(u32::MAX));
        if let Some(t) = dl_type {
            value.set(Field::DlType, u128::from(t));
            mask.set(Field::DlType, 0xffff);
        }
        if let Some(f) = nw_frag {
            value.set(Field::NwFrag, u128::from(f));
            mask.set(Field::NwFrag, u128::from(frag::MASK));
        }
        Match { value, mask }
    }

    #[test]
    fn only_in_port_dl_type_vlan_and_frag_are_simple() {
        assert!(is_simple(&simple_match(1, Some(ethertype::IPV4), Some(0))));
        assert!(is_simple(&simple_match(1, None, None)));
        let mut m = simple_match(1, Some(ethertype::IPV4), Some(0));
        m.mask.set(Field::NwProto, 0xff);
        assert!(!is_simple(&m));
        let mut m = simple_match(1, Some(ethertype::IPV4), None);
        m.mask.set(Field::InPort, 0);
        assert!(!is_simple(&m));
    }

    #[test]
    fn a_table_exists_only_while_every_megaflow_of_the_port_is_simple() {
        let mut ports = SimplePorts::default();
        let ip = simple_match(1, Some(ethertype::IPV4), Some(0));
        let arp = simple_match(1, Some(ethertype::ARP), None);
        let mut l4 = simple_match(1, Some(ethertype::IPV4), Some(0));
        l4.mask.set(Field::TpDst, 0xffff);
        ports.insert(&ip, 10u32);
        ports.insert(&arp, 11);
        assert!(ports.table(1).is_some());
        assert!(ports.table(2).is_none());
        ports.insert(&l4, 12);
        assert!(ports.table(1).is_none());
        ports.remove(&l4, 12);
        assert!(ports.table(1).is_some());
        for h in 0..SIMPLE_MAX as u32 {
            ports.insert(&simple_match(1, Some(0x9000 + h as u16), None), 20 + h);
        }
        assert!(ports.table(1).is_none(), "more than SIMPLE_MAX");
        for h in 0..SIMPLE_MAX as u32 {
            ports.remove(&simple_match(1, Some(0x9000 + h as u16), None), 20 + h);
        }
        ports.remove(&ip, 10);
        ports.remove(&arp, 11);
        assert!(ports.table(1).is_none());
        assert!(ports.ports.is_empty());
    }

    /// The table's answer is exactly "the packet's full key is inside the
    /// megaflow" (`Match::matches` on the parsed key).
    #[test]
    fn lookup_agrees_with_the_full_key() {
        use std::net::Ipv4Addr;
        use testbed::build::*;
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let udp = udp4(a, b, 1, 2, b"x");
        let fragment = |flags_frag: u16| {
            let h = Ipv4Header {
                flags_frag,
                ..Ipv4Header::new(a, b, crate::key::ipproto::UDP)
            };
            ethernet(MAC_DST, MAC_SRC, ethertype::IPV4, &ipv4(&h, &[0; 16]))
        };
        let frames = [
            udp.clone(),
            push_tag(&udp, ethertype::VLAN, 0x2007),
            ethernet(
                MAC_DST,
                MAC_SRC,
                ethertype::ARP,
                &arp(1, MAC_SRC, a, [0; 6], b),
            ),
            fragment(0x2000),
            fragment(0x0001),
            tcp4(a, b, 1, 2),
        ];
        let matches = [
            simple_match(1, Some(ethertype::IPV4), Some(0)),
            simple_match(1, Some(ethertype::IPV4), Some(frag::ANY)),
            simple_match(1, Some(ethertype::IPV4), Some(frag::MASK)),
            simple_match(1, Some(ethertype::ARP), None),
            simple_match(1, None, None),
        ];
        for (i, m) in matches.iter().enumerate() {
            let mut ports = SimplePorts::default();
            ports.insert(m, i);
            let t = ports.table(1).expect("simple");
            for f in &frames {
                let mut key = FlowKey::ZERO;
                parse(f, 1, &mut key);
                let fields = l2_fields(f).expect("not IPv6");
                assert_eq!(
                    t.lookup(1, &fields).is_some(),
                    m.matches(&key),
                    "{m:?} {f:02x?}"
                );
                assert_eq!(t.lookup(2, &fields), None);
            }
        }
    }
}
