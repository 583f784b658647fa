//! Receive-side scaling: which hash types apply to a packet, its Toeplitz
//! hash, and the 128-entry redirection table (RETA) that turns the hash into
//! an rx queue.

use offload::rte::RssType;

use crate::matcher::Headers;
use crate::toeplitz::Toeplitz;

/// Entries in the redirection table (the queue is `reta[hash % 128]`).
pub const RETA_SIZE: usize = 128;

/// A set of [`RssType`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HashTypes(u8);

fn bit(t: RssType) -> u8 {
    1 << (RssType::ALL.iter().position(|x| *x == t).unwrap_or(0))
}

impl HashTypes {
    pub const NONE: HashTypes = HashTypes(0);

    /// What the PMD uses for an RSS action with no types and for packets no
    /// rule matched: IPv4 and IPv6, with TCP and UDP ports.
    pub fn pmd_default() -> HashTypes {
        HashTypes::from_list(&[
            RssType::Ipv4,
            RssType::Ipv4Tcp,
            RssType::Ipv4Udp,
            RssType::Ipv6,
            RssType::Ipv6Tcp,
            RssType::Ipv6Udp,
        ])
    }

    /// The set of `types`; an empty list is the PMD default, as in rte_flow.
    pub fn of_action(types: &[RssType]) -> HashTypes {
        if types.is_empty() {
            HashTypes::pmd_default()
        } else {
            HashTypes::from_list(types)
        }
    }

    pub fn from_list(types: &[RssType]) -> HashTypes {
        HashTypes(types.iter().fold(0, |acc, t| acc | bit(*t)))
    }

    pub fn contains(self, t: RssType) -> bool {
        self.0 & bit(t) != 0
    }
}

/// The packet's RSS hash under `types`, `None` when no enabled type applies
/// (the mbuf then has no valid hash). Fragments hash on addresses only, so
/// that every fragment of a datagram lands on the same queue.
pub fn hash(t: &Toeplitz, h: &Headers, types: HashTypes) -> Option<u32> {
    if let Some(ip) = h.ipv4 {
        let (src, dst) = (ip.src_addr.into(), ip.dst_addr.into());
        let fragment = ip.fragment_offset & 0x3fff != 0;
        if !fragment {
            let ports = [
                (RssType::Ipv4Tcp, h.tcp.map(|l| (l.src_port, l.dst_port))),
                (RssType::Ipv4Udp, h.udp.map(|l| (l.src_port, l.dst_port))),
                (RssType::Ipv4Sctp, h.sctp.map(|l| (l.src_port, l.dst_port))),
            ];
            for (ty, p) in ports {
                if let Some((sp, dp)) = p {
                    if types.contains(ty) {
                        return Some(t.ipv4_ports(src, dst, sp, dp));
                    }
                }
            }
        }
        return types.contains(RssType::Ipv4).then(|| t.ipv4(src, dst));
    }
    if let Some(ip) = h.ipv6 {
        let (src, dst) = (ip.src_addr.into(), ip.dst_addr.into());
        if !ip.has_frag_ext {
            let ports = [
                (RssType::Ipv6Tcp, h.tcp.map(|l| (l.src_port, l.dst_port))),
                (RssType::Ipv6Udp, h.udp.map(|l| (l.src_port, l.dst_port))),
                (RssType::Ipv6Sctp, h.sctp.map(|l| (l.src_port, l.dst_port))),
            ];
            for (ty, p) in ports {
                if let Some((sp, dp)) = p {
                    if types.contains(ty) {
                        return Some(t.ipv6_ports(src, dst, sp, dp));
                    }
                }
            }
        }
        return types.contains(RssType::Ipv6).then(|| t.ipv6(src, dst));
    }
    None
}

/// A redirection table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reta {
    entries: [u16; RETA_SIZE],
}

impl Reta {
    /// `queues` repeated over the table (as testpmd and OVS fill it). An
    /// empty list sends everything to queue 0.
    pub fn spread(queues: &[u16]) -> Reta {
        let mut entries = [0u16; RETA_SIZE];
        if !queues.is_empty() {
            for (i, e) in entries.iter_mut().enumerate() {
                *e = queues[i % queues.len()];
            }
        }
        Reta { entries }
    }

    /// Queues `0..n` repeated.
    pub fn over_queues(n: u16) -> Reta {
        let queues: Vec<u16> = (0..n.max(1)).collect();
        Reta::spread(&queues)
    }

    /// The queue for a hash; packets without one go to entry 0's queue.
    pub fn queue(&self, hash: Option<u32>) -> u16 {
        let i = hash.map_or(0, |h| h as usize % RETA_SIZE);
        self.entries[i]
    }

    pub fn entries(&self) -> &[u16; RETA_SIZE] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build;
    use std::net::Ipv4Addr;

    #[test]
    fn hash_types_pick_the_tuple() {
        let t = Toeplitz::default();
        let (s, d) = (
            Ipv4Addr::new(66, 9, 149, 187),
            Ipv4Addr::new(161, 142, 100, 80),
        );
        let tcp = Headers::parse(&build::tcp4(s, d, 2794, 1766));
        assert_eq!(hash(&t, &tcp, HashTypes::pmd_default()), Some(0x51ccc178));
        assert_eq!(
            hash(&t, &tcp, HashTypes::from_list(&[RssType::Ipv4])),
            Some(0x323e8fc2)
        );
        // TCP asked, UDP packet: falls back to the 2-tuple only if asked.
        let udp = Headers::parse(&build::udp4(s, d, 2794, 1766, &[]));
        assert_eq!(
            hash(&t, &udp, HashTypes::from_list(&[RssType::Ipv4Tcp])),
            None
        );
        assert_eq!(hash(&t, &udp, HashTypes::of_action(&[])), Some(0x51ccc178));
        let arp = Headers::parse(&build::ethernet(
            [0xff; 6],
            build::MAC_SRC,
            0x0806,
            &[0; 28],
        ));
        assert_eq!(hash(&t, &arp, HashTypes::pmd_default()), None);
    }

    #[test]
    fn reta_spreads_and_defaults() {
        let r = Reta::spread(&[3, 5]);
        assert_eq!(r.queue(Some(0)), 3);
        assert_eq!(r.queue(Some(1)), 5);
        assert_eq!(r.queue(Some(129)), 5);
        assert_eq!(r.queue(None), 3);
        assert_eq!(Reta::over_queues(4).entries()[127], 3);
        assert_eq!(Reta::spread(&[]).queue(Some(7)), 0);
    }
}
