//! Traffic generators: N distinct flows with a protocol mix and frame sizes,
//! and the GTP gateway scenario. Every frame ends with a flow tag (magic and
//! flow id) so that tests can count packets per flow wherever they end up,
//! whatever headers the switch rewrote.
//!
//! Frames are built once per flow (checksums valid, so captures look right
//! in Wireshark) and sent round-robin over the flows.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::build::{self, Ipv4Header, Ipv6Header, Pseudo};

use crate::inject::{Inject, InjectError};
use crate::matcher::{
    ETHERTYPE_IPV4, ETHERTYPE_IPV6, PROTO_ICMP, PROTO_ICMP6, PROTO_TCP, PROTO_UDP, TPID_8021Q,
};

/// The flow tag's magic, followed by the flow id (big-endian u32).
pub const FLOW_TAG_MAGIC: [u8; 4] = *b"FMK1";
pub const FLOW_TAG_LEN: usize = 8;

/// The GTP gateway of the scenario.
pub const GTP_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 3);
pub const GTPU_PORT: u16 = 2152;
pub const GTPC_PORT: u16 = 2123;
/// Subscriber pools (10.1.0.0/16, 10.2.0.0/16, 10.3.0.0/16).
pub const SUBSCRIBER_POOLS: [[u8; 2]; 3] = [[10, 1], [10, 2], [10, 3]];

/// The flow id a frame carries in its trailing tag.
pub fn flow_id(frame: &[u8]) -> Option<u32> {
    let tag = frame.get(frame.len().checked_sub(FLOW_TAG_LEN)?..)?;
    if tag[..4] != FLOW_TAG_MAGIC {
        return None;
    }
    Some(u32::from_be_bytes([tag[4], tag[5], tag[6], tag[7]]))
}

fn tag(id: u32) -> [u8; FLOW_TAG_LEN] {
    let mut t = [0u8; FLOW_TAG_LEN];
    t[..4].copy_from_slice(&FLOW_TAG_MAGIC);
    t[4..].copy_from_slice(&id.to_be_bytes());
    t
}

/// A small deterministic generator (SplitMix64): reproducible traffic
/// without a dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with `percent`% probability.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `items` (not empty), uniformly.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Frame sizes (Ethernet header included, FCS excluded). A frame is never
/// smaller than its headers and tag need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sizes {
    Fixed(usize),
    /// Simple IMIX: 60, 576 and 1500-byte frames as 7:4:1.
    Imix,
    /// Uniform in `min..=max`.
    Range(usize, usize),
}

impl Sizes {
    fn pick(self, rng: &mut Rng) -> usize {
        match self {
            Sizes::Fixed(n) => n,
            Sizes::Imix => match rng.below(12) {
                0..=6 => 60,
                7..=10 => 576,
                _ => 1500,
            },
            Sizes::Range(a, b) => {
                let (lo, hi) = (a.min(b), a.max(b));
                lo + rng.below((hi - lo + 1) as u64) as usize
            }
        }
    }
}

/// What a flow carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Tcp6,
    Udp6,
    Icmp6,
    /// GTP-U (UDP 2152) with an inner IPv4/UDP packet.
    GtpU,
    /// GTPv2-C (UDP 2123) echo request.
    GtpC,
}

/// Relative weights of the protocols, and how many flows (in percent) are
/// IPv6 and VLAN-tagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    pub tcp: u32,
    pub udp: u32,
    pub icmp: u32,
    pub ipv6_percent: u32,
    pub vlan_percent: u32,
}

impl Mix {
    /// UDP only, IPv4, untagged: the simplest traffic.
    pub const UDP: Mix = Mix {
        tcp: 0,
        udp: 1,
        icmp: 0,
        ipv6_percent: 0,
        vlan_percent: 0,
    };
}

impl Default for Mix {
    /// 50% TCP, 40% UDP, 10% ICMP; 20% IPv6; 10% tagged.
    fn default() -> Self {
        Mix {
            tcp: 5,
            udp: 4,
            icmp: 1,
            ipv6_percent: 20,
            vlan_percent: 10,
        }
    }
}

/// One flow: its id, where it enters, its header values and its frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub id: u32,
    /// The OpenFlow port it is injected on.
    pub in_port: u32,
    pub proto: Proto,
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// L4 ports (ICMP: type and code).
    pub sport: u16,
    pub dport: u16,
    pub frame: Vec<u8>,
}

/// Generic traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficSpec {
    pub flows: usize,
    /// OpenFlow ports the flows enter on, assigned round-robin.
    pub in_ports: Vec<u32>,
    pub mix: Mix,
    pub sizes: Sizes,
    pub seed: u64,
}

impl TrafficSpec {
    /// `flows` flows entering on port 1, default mix, 64-byte frames.
    pub fn new(flows: usize) -> Self {
        TrafficSpec {
            flows,
            in_ports: vec![1],
            mix: Mix::default(),
            sizes: Sizes::Fixed(64),
            seed: 1,
        }
    }
}

/// The GTP gateway scenario: subscribers' GTP-U tunnels between eNodeBs on
/// the access port and the gateway (192.168.200.3) behind the core port,
/// plus GTP-C signalling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GtpSpec {
    pub subscribers: usize,
    /// One GTP-C flow pair per this many subscribers (0: none).
    pub gtpc_every: usize,
    pub access_port: u32,
    pub core_port: u32,
    pub sizes: Sizes,
    pub seed: u64,
}

impl GtpSpec {
    /// Uplink on port 1, downlink from port 2, one GTP-C pair per 10
    /// subscribers, 128-byte frames.
    pub fn new(subscribers: usize) -> Self {
        GtpSpec {
            subscribers,
            gtpc_every: 10,
            access_port: 1,
            core_port: 2,
            sizes: Sizes::Fixed(128),
            seed: 1,
        }
    }
}

/// A set of flows to send.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub flows: Vec<Flow>,
}

/// The payload that brings the frame to `size` and ends with the tag.
fn payload(headers: usize, size: usize, id: u32) -> Vec<u8> {
    let len = size.saturating_sub(headers).max(FLOW_TAG_LEN);
    let mut p = vec![0u8; len];
    p[len - FLOW_TAG_LEN..].copy_from_slice(&tag(id));
    p
}

fn l2(frame_type: u16, l3: &[u8], vlan: Option<u16>) -> Vec<u8> {
    let f = build::ethernet(build::MAC_DST, build::MAC_SRC, frame_type, l3);
    match vlan {
        Some(tci) => build::push_tag(&f, TPID_8021Q, tci),
        None => f,
    }
}

/// What a generic flow's frame is made of, besides its addresses.
struct Shape {
    proto: Proto,
    sport: u16,
    dport: u16,
    vlan: Option<u16>,
    size: usize,
    id: u32,
}

fn ip4_frame(src: Ipv4Addr, dst: Ipv4Addr, s: &Shape) -> Vec<u8> {
    let Shape {
        proto,
        sport,
        dport,
        vlan,
        size,
        id,
    } = *s;
    let tag_len = if vlan.is_some() { 4 } else { 0 };
    let (ipproto, l4_hlen) = match proto {
        Proto::Tcp => (PROTO_TCP, 20),
        Proto::Icmp => (PROTO_ICMP, 8),
        _ => (PROTO_UDP, 8),
    };
    let h = Ipv4Header::new(src, dst, ipproto);
    let body = payload(14 + tag_len + 20 + l4_hlen, size, id);
    let l4 = match proto {
        Proto::Tcp => build::tcp(h.pseudo(), sport, dport, 0x018, &[], &body),
        Proto::Icmp => {
            // Echo request: identifier and sequence, then the data.
            let mut rest = vec![0, 1, 0, 1];
            rest.extend_from_slice(&body);
            build::icmp(sport as u8, dport as u8, &rest)
        }
        _ => build::udp(h.pseudo(), sport, dport, &body),
    };
    l2(ETHERTYPE_IPV4, &build::ipv4(&h, &l4), vlan)
}

fn ip6_frame(src: Ipv6Addr, dst: Ipv6Addr, s: &Shape) -> Vec<u8> {
    let Shape {
        proto,
        sport,
        dport,
        vlan,
        size,
        id,
    } = *s;
    let tag_len = if vlan.is_some() { 4 } else { 0 };
    let (ipproto, l4_hlen) = match proto {
        Proto::Tcp6 => (PROTO_TCP, 20),
        Proto::Icmp6 => (PROTO_ICMP6, 8),
        _ => (PROTO_UDP, 8),
    };
    let h = Ipv6Header::new(src, dst, ipproto);
    let ph: Pseudo = h.pseudo();
    let body = payload(14 + tag_len + 40 + l4_hlen, size, id);
    let l4 = match proto {
        Proto::Tcp6 => build::tcp(ph, sport, dport, 0x018, &[], &body),
        Proto::Icmp6 => {
            let mut rest = vec![0, 1, 0, 1];
            rest.extend_from_slice(&body);
            build::icmpv6(ph, sport as u8, dport as u8, &rest)
        }
        _ => build::udp(ph, sport, dport, &body),
    };
    l2(ETHERTYPE_IPV6, &build::ipv6(&h, &l4), vlan)
}

/// A GTP-U G-PDU carrying an inner IPv4/UDP packet.
fn gtpu_frame(
    outer: (Ipv4Addr, Ipv4Addr),
    inner: (Ipv4Addr, Ipv4Addr),
    teid: u32,
    size: usize,
    id: u32,
) -> Vec<u8> {
    const HEADERS: usize = 14 + 20 + 8 + 8 + 20 + 8;
    let ih = Ipv4Header::new(inner.0, inner.1, PROTO_UDP);
    let inner_pkt = build::ipv4(
        &ih,
        &build::udp(ih.pseudo(), 40000, 443, &payload(HEADERS, size, id)),
    );
    let mut gtp = vec![0x30, 0xff];
    gtp.extend_from_slice(&(inner_pkt.len() as u16).to_be_bytes());
    gtp.extend_from_slice(&teid.to_be_bytes());
    gtp.extend_from_slice(&inner_pkt);
    let oh = Ipv4Header::new(outer.0, outer.1, PROTO_UDP);
    l2(
        ETHERTYPE_IPV4,
        &build::ipv4(&oh, &build::udp(oh.pseudo(), GTPU_PORT, GTPU_PORT, &gtp)),
        None,
    )
}

/// A GTPv2-C echo request with a Recovery IE, padded and tagged.
fn gtpc_frame(src: Ipv4Addr, dst: Ipv4Addr, seq: u32, size: usize, id: u32) -> Vec<u8> {
    const IE_RECOVERY: [u8; 5] = [3, 0, 1, 0, 7];
    let mut msg = vec![0x40, 1, 0, 0];
    msg.extend_from_slice(&(seq << 8).to_be_bytes());
    msg.extend_from_slice(&IE_RECOVERY);
    // Padding and the tag follow the IE, inside the message length.
    msg.extend_from_slice(&payload(14 + 20 + 8 + msg.len(), size, id));
    let len = (msg.len() - 4) as u16;
    msg[2..4].copy_from_slice(&len.to_be_bytes());
    let h = Ipv4Header::new(src, dst, PROTO_UDP);
    l2(
        ETHERTYPE_IPV4,
        &build::ipv4(&h, &build::udp(h.pseudo(), GTPC_PORT, GTPC_PORT, &msg)),
        None,
    )
}

fn subscriber(i: usize) -> Ipv4Addr {
    let [a, b] = SUBSCRIBER_POOLS[i % SUBSCRIBER_POOLS.len()];
    let host = (i / SUBSCRIBER_POOLS.len()) % 65534 + 1;
    Ipv4Addr::new(a, b, (host >> 8) as u8, host as u8)
}

/// 47 eNodeBs; 47 is coprime with the GTP-C spacing, so signalling comes
/// from every eNodeB, not a few.
fn enodeb(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 100, (1 + i % 47) as u8)
}

/// Each eNodeB has its own MAC (so L2 paths such as NORMAL see many
/// stations, as a real access network has); the gateway side has one.
fn enodeb_mac(enb: Ipv4Addr) -> [u8; 6] {
    [0x02, 0xe0, 0, 0, 0, enb.octets()[3]]
}
const GATEWAY_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0xc8, 0x03];

/// Rewrites a frame's Ethernet addresses.
fn set_macs(mut frame: Vec<u8>, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    if frame.len() >= 12 {
        frame[..6].copy_from_slice(&dst);
        frame[6..12].copy_from_slice(&src);
    }
    frame
}

impl Traffic {
    /// `spec.flows` flows with distinct 5-tuples.
    pub fn generate(spec: &TrafficSpec) -> Traffic {
        let mut rng = Rng::new(spec.seed);
        let mix = spec.mix;
        let weights = [
            (Proto::Tcp, mix.tcp),
            (Proto::Udp, mix.udp),
            (Proto::Icmp, mix.icmp),
        ];
        let total: u64 = weights.iter().map(|w| u64::from(w.1)).sum::<u64>().max(1);
        let in_ports = if spec.in_ports.is_empty() {
            vec![1]
        } else {
            spec.in_ports.clone()
        };
        let flows = (0..spec.flows)
            .map(|i| {
                let id = i as u32;
                let mut pick = rng.below(total);
                let mut proto = Proto::Udp;
                for (p, w) in weights {
                    if pick < u64::from(w) {
                        proto = p;
                        break;
                    }
                    pick -= u64::from(w);
                }
                let v6 = rng.below(100) < u64::from(mix.ipv6_percent);
                let vlan =
                    (rng.below(100) < u64::from(mix.vlan_percent)).then(|| 100 + (i % 10) as u16);
                let size = spec.sizes.pick(&mut rng);
                // Distinct sources make distinct 5-tuples.
                let n = i as u32 + 1;
                let (sport, dport) = match proto {
                    Proto::Icmp => (8, 0),
                    _ => (1024 + rng.below(64000) as u16, [80, 443, 53, 8080][i % 4]),
                };
                let in_port = in_ports[i % in_ports.len()];
                if v6 {
                    let proto = match proto {
                        Proto::Tcp => Proto::Tcp6,
                        Proto::Icmp => Proto::Icmp6,
                        _ => Proto::Udp6,
                    };
                    let (sport, dport) = if proto == Proto::Icmp6 {
                        (128, 0)
                    } else {
                        (sport, dport)
                    };
                    let src = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, (n >> 16) as u16, n as u16);
                    let dst = Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1 + (i % 16) as u16);
                    Flow {
                        id,
                        in_port,
                        proto,
                        vlan,
                        src: src.into(),
                        dst: dst.into(),
                        sport,
                        dport,
                        frame: ip6_frame(
                            src,
                            dst,
                            &Shape {
                                proto,
                                sport,
                                dport,
                                vlan,
                                size,
                                id,
                            },
                        ),
                    }
                } else {
                    let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + n);
                    let dst = Ipv4Addr::new(10, 200, 0, 1 + (i % 16) as u8);
                    Flow {
                        id,
                        in_port,
                        proto,
                        vlan,
                        src: src.into(),
                        dst: dst.into(),
                        sport,
                        dport,
                        frame: ip4_frame(
                            src,
                            dst,
                            &Shape {
                                proto,
                                sport,
                                dport,
                                vlan,
                                size,
                                id,
                            },
                        ),
                    }
                }
            })
            .collect();
        Traffic { flows }
    }

    /// The GTP gateway scenario: per subscriber an uplink GTP-U flow
    /// (eNodeB → gateway, on the access port) and a downlink one (gateway →
    /// eNodeB, on the core port); per `gtpc_every` subscribers a GTP-C
    /// echo pair.
    pub fn gtp(spec: &GtpSpec) -> Traffic {
        let mut rng = Rng::new(spec.seed);
        let server = |i: usize| Ipv4Addr::new(203, 0, 113, (1 + i % 200) as u8);
        let mut flows = Vec::new();
        let push =
            |flows: &mut Vec<Flow>, in_port, proto, src: Ipv4Addr, dst: Ipv4Addr, port, frame| {
                flows.push(Flow {
                    id: flows.len() as u32,
                    in_port,
                    proto,
                    vlan: None,
                    src: src.into(),
                    dst: dst.into(),
                    sport: port,
                    dport: port,
                    frame,
                })
            };
        for i in 0..spec.subscribers {
            let teid = 0x1000 + i as u32;
            let (ue, enb) = (subscriber(i), enodeb(i));
            let enb_mac = enodeb_mac(enb);
            let id = flows.len() as u32;
            let up = set_macs(
                gtpu_frame(
                    (enb, GTP_GATEWAY),
                    (ue, server(i)),
                    teid,
                    spec.sizes.pick(&mut rng),
                    id,
                ),
                GATEWAY_MAC,
                enb_mac,
            );
            push(
                &mut flows,
                spec.access_port,
                Proto::GtpU,
                enb,
                GTP_GATEWAY,
                GTPU_PORT,
                up,
            );
            let id = flows.len() as u32;
            let down = set_macs(
                gtpu_frame(
                    (GTP_GATEWAY, enb),
                    (server(i), ue),
                    teid,
                    spec.sizes.pick(&mut rng),
                    id,
                ),
                enb_mac,
                GATEWAY_MAC,
            );
            push(
                &mut flows,
                spec.core_port,
                Proto::GtpU,
                GTP_GATEWAY,
                enb,
                GTPU_PORT,
                down,
            );
            if spec.gtpc_every > 0 && i % spec.gtpc_every == 0 {
                let id = flows.len() as u32;
                let req = set_macs(
                    gtpc_frame(enb, GTP_GATEWAY, i as u32, spec.sizes.pick(&mut rng), id),
                    GATEWAY_MAC,
                    enb_mac,
                );
                push(
                    &mut flows,
                    spec.access_port,
                    Proto::GtpC,
                    enb,
                    GTP_GATEWAY,
                    GTPC_PORT,
                    req,
                );
                let id = flows.len() as u32;
                let resp = set_macs(
                    gtpc_frame(GTP_GATEWAY, enb, i as u32, spec.sizes.pick(&mut rng), id),
                    enb_mac,
                    GATEWAY_MAC,
                );
                push(
                    &mut flows,
                    spec.core_port,
                    Proto::GtpC,
                    GTP_GATEWAY,
                    enb,
                    GTPC_PORT,
                    resp,
                );
            }
        }
        Traffic { flows }
    }

    /// The flow of the `n`th packet sent (round-robin).
    pub fn flow_of_packet(&self, n: u64) -> Option<&Flow> {
        let len = self.flows.len() as u64;
        (len > 0).then(|| &self.flows[(n % len) as usize])
    }

    /// Packets each flow gets when `count` packets are sent.
    pub fn expected_per_flow(&self, count: u64) -> Vec<u64> {
        let len = self.flows.len() as u64;
        if len == 0 {
            return Vec::new();
        }
        (0..len)
            .map(|i| count / len + u64::from(i < count % len))
            .collect()
    }

    /// Sends `count` packets round-robin over the flows, starting with
    /// packet number `start`, each into the port its flow enters on, then
    /// syncs those ports. With back-pressure on, none is lost.
    pub fn send(
        &self,
        start: u64,
        count: u64,
        ports: &[(u32, &dyn Inject)],
    ) -> Result<(), InjectError> {
        let port_of = |ofport: u32| {
            ports
                .iter()
                .find(|(p, _)| *p == ofport)
                .map(|(_, i)| *i)
                .ok_or(InjectError::NoSuchPort { ofport })
        };
        for n in start..start + count {
            if let Some(f) = self.flow_of_packet(n) {
                port_of(f.in_port)?.inject(&f.frame)?;
            }
        }
        for (_, p) in ports {
            p.sync()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::Headers;
    use fallback::key::FlowKey;
    use fallback::packet;
    use std::collections::HashSet;

    #[test]
    fn distinct_tagged_well_formed_flows() {
        let spec = TrafficSpec {
            sizes: Sizes::Imix,
            in_ports: vec![1, 2],
            ..TrafficSpec::new(500)
        };
        let t = Traffic::generate(&spec);
        assert_eq!(t.flows.len(), 500);
        let mut tuples = HashSet::new();
        let mut protos = HashSet::new();
        let mut key = FlowKey::ZERO;
        for f in &t.flows {
            assert_eq!(flow_id(&f.frame), Some(f.id));
            assert!(tuples.insert((f.src, f.dst, f.sport, f.dport, f.proto)));
            protos.insert(f.proto);
            assert!(
                f.frame.len() >= 60 && f.frame.len() <= 1500 + 18,
                "{}",
                f.frame.len()
            );
            let info = packet::parse(&f.frame, f.in_port, &mut key);
            assert_eq!(info.error, None, "flow {f:?}");
            assert!(info.l4_ofs.is_some());
            let h = Headers::parse(&f.frame);
            assert_eq!(h.vlan.is_some(), f.vlan.is_some());
        }
        for p in [
            Proto::Tcp,
            Proto::Udp,
            Proto::Icmp,
            Proto::Tcp6,
            Proto::Udp6,
            Proto::Icmp6,
        ] {
            assert!(protos.contains(&p), "{p:?} missing from the mix");
        }
        assert_eq!(t.flows.iter().filter(|f| f.in_port == 2).count(), 250);
        // Same seed, same traffic.
        assert_eq!(Traffic::generate(&spec), t);
        let udp = TrafficSpec {
            mix: Mix::UDP,
            ..TrafficSpec::new(3)
        };
        assert_eq!(Traffic::generate(&udp).flows[0].frame.len(), 64);
    }

    #[test]
    fn gtp_scenario_matches_the_seed_rules() {
        let t = Traffic::gtp(&GtpSpec::new(30));
        assert_eq!(t.flows.len(), 30 * 2 + 3 * 2);
        let mut key = FlowKey::ZERO;
        for f in &t.flows {
            assert_eq!(flow_id(&f.frame), Some(f.id));
            let info = packet::parse(&f.frame, f.in_port, &mut key);
            assert_eq!(info.error, None);
            let h = Headers::parse(&f.frame);
            let (ip, udp) = (h.ipv4.unwrap(), h.udp.unwrap());
            let gw = u32::from(GTP_GATEWAY);
            if f.in_port == 1 {
                // udp,nw_dst=192.168.200.3,udp_src=2152 (GTP-U uplink)
                assert_eq!(ip.dst_addr, gw);
            } else {
                // in_port=2,udp,nw_src=192.168.200.3,udp_dst=2152 (downlink)
                assert_eq!(ip.src_addr, gw);
            }
            let port = if f.proto == Proto::GtpU {
                GTPU_PORT
            } else {
                GTPC_PORT
            };
            assert_eq!((udp.src_port, udp.dst_port), (port, port));
        }
        // Subscribers come from the three pools; the inner packet is there.
        let up = &t.flows[0].frame;
        let inner = &up[14 + 20 + 8 + 8..];
        assert_eq!(inner[0], 0x45);
        assert_eq!(&inner[12..14], &[10, 1]);
        let third = &t
            .flows
            .iter()
            .filter(|f| f.proto == Proto::GtpU && f.in_port == 1)
            .nth(2)
            .unwrap()
            .frame;
        assert_eq!(&third[14 + 20 + 8 + 8 + 12..][..2], &[10, 3]);
    }

    #[test]
    fn round_robin_counts() {
        let t = Traffic::generate(&TrafficSpec::new(3));
        assert_eq!(t.expected_per_flow(10), vec![4, 3, 3]);
        assert_eq!(t.flow_of_packet(4).map(|f| f.id), Some(1));
        assert!(Traffic::default().flow_of_packet(0).is_none());
        assert_eq!(flow_id(&[1, 2, 3]), None);
        assert_eq!(flow_id(b"xxxxFMK1\0\0\0\x07"), Some(7));
    }
}
