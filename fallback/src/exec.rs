//! Executes datapath actions on a packet.
//!
//! Actions are ordered: in `output:1, mod_nw_src:X, output:2` port 1 gets the
//! packet as received and port 2 the modified one. [`steps`] splits an action
//! list at its outputs; the caller applies each step's modifications with
//! [`apply_modifications`] and then sends the packet, copying it only for
//! outputs that are not the last ([`Step::last`]): the common one-output
//! flow never copies. [`execute`] is that loop for buffers that are `Clone`.
//!
//! Header rewrites use the offsets of the packet's [`ParseInfo`] and keep
//! checksums right incrementally (RFC 1624): the IPv4 header checksum, and
//! the TCP/UDP/ICMPv6 checksums for changes to ports or to addresses of the
//! pseudo-header. A UDP checksum of 0 (none) stays 0. SCTP's CRC32c covers
//! the whole packet and is recomputed when a port changes. A rewrite of a
//! header the packet lacks is ignored.

use crate::actions::DpAction;
use crate::key::{ethertype, ipproto, Field, VLAN_PCP_MASK, VLAN_VID_MASK};
use crate::packet::{checksum, ParseInfo};
use crate::port::PacketBuf;

const VLAN_TAG_OFS: usize = 12;
const VLAN_TAG_LEN: usize = 4;

/// Where a step sends the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// Transmit on this OpenFlow port.
    Port(u32),
    /// Punt to the controller: the rule's table and cookie, the bytes to
    /// send, and whether the rule is a table-miss rule (reason NO_MATCH).
    Controller {
        table: u8,
        cookie: u64,
        max_len: u16,
        miss: bool,
    },
}

/// Modifications to apply, then where to send the result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step<'a> {
    /// The actions between the previous output and this one (no outputs).
    pub mods: &'a [DpAction],
    pub sink: Sink,
    /// No output follows: the packet itself can be sent, not a copy.
    pub last: bool,
}

/// Splits an action list at its outputs. Modifications after the last
/// output affect nothing and are skipped. No allocation.
pub fn steps(actions: &[DpAction]) -> Steps<'_> {
    Steps { rest: actions }
}

/// Iterator returned by [`steps`].
#[derive(Clone, Debug)]
pub struct Steps<'a> {
    rest: &'a [DpAction],
}

fn sink_of(a: &DpAction) -> Option<Sink> {
    match *a {
        DpAction::Output(p) => Some(Sink::Port(p)),
        DpAction::Controller {
            table,
            cookie,
            max_len,
            miss,
        } => Some(Sink::Controller {
            table,
            cookie,
            max_len,
            miss,
        }),
        DpAction::Set(..) | DpAction::PushVlan(_) | DpAction::PopVlan | DpAction::Meter(_) => None,
    }
}

impl<'a> Iterator for Steps<'a> {
    type Item = Step<'a>;

    fn next(&mut self) -> Option<Step<'a>> {
        let i = self.rest.iter().position(|a| sink_of(a).is_some())?;
        let (mods, tail) = self.rest.split_at(i);
        let (first, after) = tail.split_first()?;
        let sink = sink_of(first)?;
        self.rest = after;
        Some(Step {
            mods,
            sink,
            last: !after.iter().any(|a| sink_of(a).is_some()),
        })
    }
}

/// Why the actions could not be applied to a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    #[error("push_vlan needs {needed} bytes of headroom, the buffer has {available}")]
    NoHeadroom { needed: usize, available: usize },
}

/// Applies the non-output actions of `mods` in order (outputs in it are
/// skipped) and keeps `info`'s offsets in step with pushed and popped tags.
/// On error the packet is unchanged by the failing action and the rest are
/// not applied.
pub fn apply_modifications<B: PacketBuf + ?Sized>(
    mods: &[DpAction],
    pkt: &mut B,
    info: &mut ParseInfo,
) -> Result<(), ExecError> {
    for a in mods {
        match *a {
            DpAction::Set(field, value) => set_field(pkt.data_mut(), info, field, value),
            DpAction::PushVlan(tpid) => push_vlan(pkt, info, tpid)?,
            DpAction::PopVlan => pop_vlan(pkt, info),
            // Meters are passed before the step's modifications run (see
            // `execute_gated`).
            DpAction::Output(_) | DpAction::Controller { .. } | DpAction::Meter(_) => {}
        }
    }
    Ok(())
}

/// How a packet's actions ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran {
    /// Every step ran.
    Completed,
    /// Meter `meter` dropped the packet; `after_output`: earlier outputs
    /// had already taken copies of it.
    Metered { meter: u32, after_output: bool },
}

/// Runs `actions` on `pkt`, handing each output its packet: a copy for all
/// but the last output, the packet itself for the last. After an error,
/// that output and every later one get the error (to count it as a drop on
/// that port). Every meter lets the packet through (for callers with no
/// meters; see [`execute_gated`]).
pub fn execute<B, F>(actions: &[DpAction], pkt: B, info: ParseInfo, emit: F)
where
    B: PacketBuf + Clone,
    F: FnMut(Sink, Result<B, ExecError>),
{
    execute_gated(actions, pkt, info, B::clone, |_, _| true, emit);
}

/// [`execute`] with the copies for all but the last output made by `copy`
/// (e.g. into a pooled buffer), and each meter action asking `meter(id,
/// packet length)` whether the packet passes: when it does not, nothing
/// after the meter runs. A meter after the last output affects nothing and
/// is not asked.
pub fn execute_gated<B, C, M, F>(
    actions: &[DpAction],
    pkt: B,
    info: ParseInfo,
    mut copy: C,
    mut meter: M,
    mut emit: F,
) -> Ran
where
    B: PacketBuf,
    C: FnMut(&B) -> B,
    M: FnMut(u32, usize) -> bool,
    F: FnMut(Sink, Result<B, ExecError>),
{
    let mut pkt = pkt;
    let mut info = info;
    let mut failed = None;
    let mut emitted = false;
    for step in steps(actions) {
        for a in step.mods {
            if let DpAction::Meter(id) = *a {
                if !meter(id, pkt.len()) {
                    return Ran::Metered {
                        meter: id,
                        after_output: emitted,
                    };
                }
            }
        }
        if failed.is_none() {
            failed = apply_modifications(step.mods, &mut pkt, &mut info).err();
        }
        emitted = true;
        if let Some(e) = failed {
            emit(step.sink, Err(e));
        } else if step.last {
            emit(step.sink, Ok(pkt));
            return Ran::Completed;
        } else {
            emit(step.sink, Ok(copy(&pkt)));
        }
    }
    Ran::Completed
}

/// `n` bytes at `ofs`, if present.
fn bytes_mut(data: &mut [u8], ofs: usize, n: usize) -> Option<&mut [u8]> {
    data.get_mut(ofs..ofs.checked_add(n)?)
}

fn read16(data: &[u8], ofs: usize) -> Option<u16> {
    let b = data.get(ofs..ofs.checked_add(2)?)?;
    Some(u16::from_be_bytes([
        b.first().copied()?,
        b.get(1).copied()?,
    ]))
}

fn write16(data: &mut [u8], ofs: usize, v: u16) {
    if let Some(b) = bytes_mut(data, ofs, 2) {
        b.copy_from_slice(&v.to_be_bytes());
    }
}

/// Replaces the bytes at `ofs` (an even offset inside every checksummed
/// region involved) with `new` and returns the folded sums of the old and
/// new words, for [`checksum::adjust`]. `None` when the bytes are absent.
fn rewrite(data: &mut [u8], ofs: usize, new: &[u8]) -> Option<(u16, u16)> {
    let b = bytes_mut(data, ofs, new.len())?;
    let old = checksum::fold(checksum::sum(b, 0));
    b.copy_from_slice(new);
    Some((old, checksum::fold(checksum::sum(new, 0))))
}

/// Applies a word delta to the 16-bit checksum at `ofs`.
fn adjust_csum(data: &mut [u8], ofs: usize, (old, new): (u16, u16)) {
    if let Some(c) = read16(data, ofs) {
        write16(data, ofs, checksum::adjust(c, old, new));
    }
}

/// Applies a delta to the UDP checksum at `ofs`, unless it is 0 ("none");
/// a result of 0 is sent as 0xffff.
fn adjust_udp_csum(data: &mut [u8], ofs: usize, delta: (u16, u16)) {
    if let Some(c) = read16(data, ofs) {
        if c != 0 {
            let c = match checksum::adjust(c, delta.0, delta.1) {
                0 => 0xffff,
                c => c,
            };
            write16(data, ofs, c);
        }
    }
}

/// Where the L4 checksum is and how it is treated.
#[derive(Clone, Copy)]
enum L4Csum {
    /// Internet checksum at this offset.
    Internet(usize),
    /// UDP: as Internet, but 0 means "none".
    Udp(usize),
    /// SCTP's CRC32c over the whole packet.
    Sctp(usize),
    None,
}

fn l4_csum(info: &ParseInfo) -> L4Csum {
    let Some(l4) = info.l4_ofs.map(usize::from) else {
        return L4Csum::None;
    };
    match info.nw_proto {
        ipproto::TCP => L4Csum::Internet(l4 + 16),
        ipproto::UDP => L4Csum::Udp(l4 + 6),
        ipproto::ICMPV6 if info.dl_type == ethertype::IPV6 => L4Csum::Internet(l4 + 2),
        ipproto::SCTP => L4Csum::Sctp(l4),
        _ => L4Csum::None,
    }
}

/// Adjusts the L4 checksum after a change covered by it (ports, or
/// pseudo-header addresses: `pseudo` says which; ICMPv4 has none).
fn adjust_l4(data: &mut [u8], info: &ParseInfo, delta: (u16, u16), pseudo: bool) {
    match l4_csum(info) {
        L4Csum::Internet(ofs) => {
            if !pseudo || info.nw_proto != ipproto::ICMP {
                adjust_csum(data, ofs, delta);
            }
        }
        L4Csum::Udp(ofs) => adjust_udp_csum(data, ofs, delta),
        // The CRC does not cover the addresses; ports are handled by
        // `set_l4_port`.
        L4Csum::Sctp(_) | L4Csum::None => {}
    }
}

fn set_field(data: &mut [u8], info: &ParseInfo, field: Field, value: u128) {
    let l3 = info.l3_ofs.map(usize::from);
    let ipv4 = info.dl_type == ethertype::IPV4;
    let ipv6 = info.dl_type == ethertype::IPV6;
    match field {
        Field::DlDst => set_bytes(data, 0, &(value as u64).to_be_bytes()[2..]),
        Field::DlSrc => set_bytes(data, 6, &(value as u64).to_be_bytes()[2..]),
        Field::NwSrc | Field::NwDst if ipv4 => {
            if let Some(l3) = l3 {
                let ofs = l3 + if field == Field::NwSrc { 12 } else { 16 };
                if let Some(delta) = rewrite(data, ofs, &(value as u32).to_be_bytes()) {
                    adjust_csum(data, l3 + 10, delta);
                    adjust_l4(data, info, delta, true);
                }
            }
        }
        Field::Ipv6Src | Field::Ipv6Dst if ipv6 => {
            if let Some(l3) = l3 {
                let ofs = l3 + if field == Field::Ipv6Src { 8 } else { 24 };
                if let Some(delta) = rewrite(data, ofs, &value.to_be_bytes()) {
                    adjust_l4(data, info, delta, true);
                }
            }
        }
        // DSCP: the TOS byte's high 6 bits; ECN: its low 2.
        Field::NwTos => set_tos_bits(data, l3, ipv4, ipv6, 0xfc, value as u8),
        Field::NwEcn => set_tos_bits(data, l3, ipv4, ipv6, 0x03, value as u8),
        Field::NwTtl => match l3 {
            Some(l3) if ipv4 => {
                // TTL shares a word with the protocol.
                if let Some(word) = read16(data, l3 + 8) {
                    let new = (word & 0x00ff) | (u16::from(value as u8) << 8);
                    if let Some(delta) = rewrite(data, l3 + 8, &new.to_be_bytes()) {
                        adjust_csum(data, l3 + 10, delta);
                    }
                }
            }
            Some(l3) if ipv6 => set_bytes(data, l3 + 7, &[value as u8]),
            _ => {}
        },
        Field::TpSrc => set_l4_port(data, info, 0, value as u16),
        Field::TpDst => set_l4_port(data, info, 2, value as u16),
        Field::VlanTci => {
            if let Some(tag) = info.vlan_ofs.map(usize::from) {
                if let Some(tci) = read16(data, tag + 2) {
                    let new = (tci & !VLAN_VID_MASK) | (value as u16 & VLAN_VID_MASK);
                    write16(data, tag + 2, new);
                }
            }
        }
        Field::VlanPcp => {
            if let Some(tag) = info.vlan_ofs.map(usize::from) {
                if let Some(tci) = read16(data, tag + 2) {
                    let new = (tci & !VLAN_PCP_MASK) | ((value as u16 & 0x07) << 13);
                    write16(data, tag + 2, new);
                }
            }
        }
        // Not rewritable here (or not for this packet's kind).
        _ => {}
    }
}

/// Rewrites the `mask` bits of the IPv4 TOS byte (checksum updated) or of
/// the IPv6 traffic class to those of `bits`.
fn set_tos_bits(data: &mut [u8], l3: Option<usize>, ipv4: bool, ipv6: bool, mask: u8, bits: u8) {
    let Some(l3) = l3 else {
        return;
    };
    let Some(word) = read16(data, l3) else {
        return;
    };
    let (mask, bits) = (u16::from(mask), u16::from(bits & mask));
    if ipv4 {
        // The TOS byte is the word's low byte.
        let new = (word & !mask) | bits;
        if let Some(delta) = rewrite(data, l3, &new.to_be_bytes()) {
            adjust_csum(data, l3 + 10, delta);
        }
    } else if ipv6 {
        // The traffic class: low nibble of byte 0, high nibble of byte 1.
        write16(data, l3, (word & !(mask << 4)) | (bits << 4));
    }
}

fn set_bytes(data: &mut [u8], ofs: usize, new: &[u8]) {
    if let Some(b) = bytes_mut(data, ofs, new.len()) {
        b.copy_from_slice(new);
    }
}

/// Rewrites the TCP/UDP/SCTP source (`which` 0) or destination (2) port.
fn set_l4_port(data: &mut [u8], info: &ParseInfo, which: usize, port: u16) {
    let Some(l4) = info.l4_ofs.map(usize::from) else {
        return;
    };
    if !matches!(info.nw_proto, ipproto::TCP | ipproto::UDP | ipproto::SCTP) {
        return;
    }
    let Some(delta) = rewrite(data, l4 + which, &port.to_be_bytes()) else {
        return;
    };
    match l4_csum(info) {
        L4Csum::Sctp(l4) => {
            // The CRC covers the SCTP packet to the end of the IP datagram.
            let end = usize::from(info.ip_end);
            if end >= l4 + 12 {
                if let Some(sctp) = data.get_mut(l4..end) {
                    sctp[8..12].fill(0);
                    let crc = checksum::crc32c(sctp);
                    sctp[8..12].copy_from_slice(&crc.to_le_bytes());
                }
            }
        }
        _ => adjust_l4(data, info, delta, false),
    }
}

fn shift_ofs(ofs: Option<u16>, by: isize) -> Option<u16> {
    ofs.and_then(|o| o.checked_add_signed(by as i16))
}

fn shift_info(info: &mut ParseInfo, by: isize) {
    info.l3_ofs = shift_ofs(info.l3_ofs, by);
    info.l4_ofs = shift_ofs(info.l4_ofs, by);
    if info.ip_end != 0 {
        info.ip_end = shift_ofs(Some(info.ip_end), by).unwrap_or(0);
    }
}

fn push_vlan<B: PacketBuf + ?Sized>(
    pkt: &mut B,
    info: &mut ParseInfo,
    tpid: u16,
) -> Result<(), ExecError> {
    if pkt.len() < VLAN_TAG_OFS {
        return Ok(()); // no Ethernet header to tag
    }
    let available = pkt.headroom();
    if pkt.prepend(VLAN_TAG_LEN).is_none() {
        return Err(ExecError::NoHeadroom {
            needed: VLAN_TAG_LEN,
            available,
        });
    }
    let data = pkt.data_mut();
    // Move the MAC addresses to the new front; the tag goes after them.
    data.copy_within(VLAN_TAG_LEN..VLAN_TAG_LEN + VLAN_TAG_OFS, 0);
    set_bytes(data, VLAN_TAG_OFS, &tpid.to_be_bytes());
    set_bytes(data, VLAN_TAG_OFS + 2, &[0, 0]);
    shift_info(info, VLAN_TAG_LEN as isize);
    info.vlan_ofs = Some(VLAN_TAG_OFS as u16);
    Ok(())
}

fn pop_vlan<B: PacketBuf + ?Sized>(pkt: &mut B, info: &mut ParseInfo) {
    if info.vlan_ofs.is_none() || pkt.len() < VLAN_TAG_OFS + VLAN_TAG_LEN {
        return;
    }
    let data = pkt.data_mut();
    data.copy_within(0..VLAN_TAG_OFS, VLAN_TAG_LEN);
    if !pkt.adj(VLAN_TAG_LEN) {
        return;
    }
    shift_info(info, -(VLAN_TAG_LEN as isize));
    // An inner tag (QinQ) becomes the outer one.
    let inner = read16(pkt.data(), VLAN_TAG_OFS);
    info.vlan_ofs = match inner {
        Some(ethertype::VLAN | ethertype::QINQ) => Some(VLAN_TAG_OFS as u16),
        _ => None,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{FlowKey, VLAN_CFI};
    use crate::packet::{ipv6_ext, parse};
    use crate::port::{HeapPacket, HEADROOM};
    use std::net::{Ipv4Addr, Ipv6Addr};
    use testbed::build::*;

    const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const IP_B: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 3);
    const IP_X: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 188);
    const IP6_A: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const IP6_B: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    const IP6_X: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xabcd, 1, 2, 3, 4, 5, 6);

    fn key_of(pkt: &[u8]) -> (FlowKey, ParseInfo) {
        let mut k = FlowKey::ZERO;
        let info = parse(pkt, 1, &mut k);
        (k, info)
    }

    /// Verifies every checksum from scratch.
    fn assert_checksums(pkt: &[u8]) {
        let (key, info) = key_of(pkt);
        assert_eq!(info.error, None, "{pkt:02x?}");
        let end = usize::from(info.ip_end);
        if let Some(l3) = info.l3_ofs.map(usize::from) {
            if key.dl_type() == ethertype::IPV4 {
                let hlen = usize::from(pkt[l3] & 0xf) * 4;
                assert_eq!(
                    checksum::fold(checksum::sum(&pkt[l3..l3 + hlen], 0)),
                    0xffff
                );
            }
        }
        let (Some(l3), Some(l4)) = (info.l3_ofs.map(usize::from), info.l4_ofs.map(usize::from))
        else {
            return;
        };
        let seg = &pkt[l4..end];
        let pseudo = if key.dl_type() == ethertype::IPV4 {
            checksum::pseudo_v4(
                pkt[l3 + 12..l3 + 16].try_into().unwrap(),
                pkt[l3 + 16..l3 + 20].try_into().unwrap(),
                info.nw_proto,
                seg.len() as u32,
            )
        } else {
            checksum::pseudo_v6(
                pkt[l3 + 8..l3 + 24].try_into().unwrap(),
                pkt[l3 + 24..l3 + 40].try_into().unwrap(),
                info.nw_proto,
                seg.len() as u32,
            )
        };
        match info.nw_proto {
            ipproto::TCP | ipproto::ICMPV6 => {
                assert_eq!(checksum::fold(checksum::sum(seg, pseudo)), 0xffff)
            }
            ipproto::UDP if seg[6..8] != [0, 0] => {
                assert_eq!(checksum::fold(checksum::sum(seg, pseudo)), 0xffff)
            }
            ipproto::ICMP => assert_eq!(checksum::fold(checksum::sum(seg, 0)), 0xffff),
            ipproto::SCTP => {
                let mut copy = seg.to_vec();
                copy[8..12].fill(0);
                assert_eq!(seg[8..12], checksum::crc32c(&copy).to_le_bytes());
            }
            _ => {}
        }
    }

    /// Runs `actions` and returns the packets per sink.
    fn run(pkt: &[u8], actions: &[DpAction]) -> Vec<(Sink, Vec<u8>)> {
        let (_, info) = key_of(pkt);
        let mut out = Vec::new();
        execute(actions, HeapPacket::from_bytes(pkt), info, |sink, p| {
            out.push((sink, p.unwrap().data().to_vec()))
        });
        out
    }

    fn run1(pkt: &[u8], actions: &[DpAction]) -> Vec<u8> {
        let mut all = actions.to_vec();
        all.push(DpAction::Output(9));
        let out = run(pkt, &all);
        assert_eq!(out.len(), 1);
        out.into_iter().next().unwrap().1
    }

    fn samples() -> Vec<Vec<u8>> {
        let h4 = Ipv4Header {
            options: vec![1, 1, 1, 1],
            tos: 0x03,
            ..Ipv4Header::new(IP_A, IP_B, ipproto::TCP)
        };
        let tcp_opts = ethernet(
            MAC_DST,
            MAC_SRC,
            ethertype::IPV4,
            &ipv4(&h4, &tcp(h4.pseudo(), 1, 2, 0x10, &[1, 1, 1, 1], b"abc")),
        );
        let s4 = Ipv4Header::new(IP_A, IP_B, ipproto::SCTP);
        let sctp4 = ethernet(
            MAC_DST,
            MAC_SRC,
            ethertype::IPV4,
            &ipv4(&s4, &sctp(100, 200, &[0, 0, 0, 8, 1, 2, 3, 4])),
        );
        let i4 = Ipv4Header::new(IP_A, IP_B, ipproto::ICMP);
        let icmp4 = ethernet(
            MAC_DST,
            MAC_SRC,
            ethertype::IPV4,
            &ipv4(&i4, &icmp(8, 0, &[0, 1, 0, 1])),
        );
        let h6 = Ipv6Header {
            traffic_class: 0x01,
            ..Ipv6Header::new(IP6_A, IP6_B, ipv6_ext::HOP_BY_HOP)
        };
        let mut p6 = ipv6_ext(ipv6_ext::HOP_BY_HOP, ipproto::ICMPV6);
        p6.extend(icmpv6(h6.pseudo(), 128, 0, &[0, 7, 0, 1]));
        let icmp6 = ethernet(MAC_DST, MAC_SRC, ethertype::IPV6, &ipv6(&h6, &p6));
        let s6 = Ipv6Header::new(IP6_A, IP6_B, ipproto::SCTP);
        let sctp6 = ethernet(
            MAC_DST,
            MAC_SRC,
            ethertype::IPV6,
            &ipv6(&s6, &sctp(7, 8, &[0, 0, 0, 4])),
        );
        let mut udp_nocsum = udp4(IP_A, IP_B, 2152, 2152, b"x");
        udp_nocsum[40..42].fill(0);
        let mut padded = udp4(IP_A, IP_B, 5, 6, b"pad");
        padded.resize(64, 0xee);
        vec![
            tcp4(IP_A, IP_B, 1234, 80),
            tcp_opts,
            udp4(IP_A, IP_B, 2152, 2152, b"gtpu"),
            udp_nocsum,
            padded,
            sctp4,
            icmp4,
            tcp6(IP6_A, IP6_B, 443, 1000),
            udp6(IP6_A, IP6_B, 53, 53, b"dns?"),
            icmp6,
            sctp6,
            push_tag(&tcp4(IP_A, IP_B, 1, 2), ethertype::VLAN, 0x6005),
        ]
    }

    fn all_sets() -> Vec<DpAction> {
        vec![
            DpAction::Set(Field::DlSrc, 0x2ea9_be9e_4d07),
            DpAction::Set(Field::DlDst, 0x0011_2233_4455),
            DpAction::Set(Field::NwSrc, u128::from(u32::from(IP_X))),
            DpAction::Set(Field::NwDst, u128::from(u32::from(IP_X))),
            DpAction::Set(Field::Ipv6Src, u128::from(IP6_X)),
            DpAction::Set(Field::Ipv6Dst, u128::from(IP6_X)),
            DpAction::Set(Field::NwTos, 0xb8),
            DpAction::Set(Field::NwTtl, 7),
            DpAction::Set(Field::TpSrc, 40000),
            DpAction::Set(Field::TpDst, 2123),
            DpAction::Set(Field::VlanTci, 0x0123),
            DpAction::Set(Field::VlanPcp, 5),
            DpAction::Set(Field::NwEcn, 2),
        ]
    }

    #[test]
    fn each_set_rewrites_its_field_and_keeps_checksums() {
        for pkt in samples() {
            assert_checksums(&pkt);
            let (before, _) = key_of(&pkt);
            for set in all_sets() {
                let out = run1(&pkt, &[set]);
                assert_checksums(&out);
                let (after, _) = key_of(&out);
                let DpAction::Set(field, value) = set else {
                    unreachable!()
                };
                let mut expected = before;
                let applies = match field {
                    Field::DlSrc | Field::DlDst => true,
                    Field::NwSrc | Field::NwDst => before.dl_type() == ethertype::IPV4,
                    Field::Ipv6Src | Field::Ipv6Dst => before.dl_type() == ethertype::IPV6,
                    Field::NwTos | Field::NwEcn | Field::NwTtl => before.is_ip(),
                    Field::TpSrc | Field::TpDst => matches!(
                        before.nw_proto(),
                        ipproto::TCP | ipproto::UDP | ipproto::SCTP
                    ),
                    Field::VlanTci | Field::VlanPcp => before.vlan_tci() != 0,
                    _ => false,
                };
                if applies {
                    let v = match field {
                        // DSCP only: ECN bits kept.
                        Field::NwTos => (before.get(field) & 0x03) | (value & 0xfc),
                        Field::VlanTci => (before.get(field) & !u128::from(VLAN_VID_MASK)) | value,
                        _ => value,
                    };
                    expected.set(field, v);
                }
                assert_eq!(after, expected, "{set} on {pkt:02x?}");
                assert_eq!(out.len(), pkt.len());
            }
        }
    }

    #[test]
    fn all_sets_at_once() {
        for pkt in samples() {
            let out = run1(&pkt, &all_sets());
            assert_checksums(&out);
        }
    }

    #[test]
    fn tos_keeps_ecn() {
        let pkt = &samples()[1]; // TOS 0x03
        let out = run1(pkt, &[DpAction::Set(Field::NwTos, 0xb8)]);
        assert_eq!(out[15], 0xbb);
        let v6 = &samples()[9]; // traffic class 0x01
        let out = run1(v6, &[DpAction::Set(Field::NwTos, 0x28)]);
        assert_eq!(key_of(&out).0.get(Field::NwTos), 0x29);
        assert_eq!(out[14] >> 4, 6, "version kept");
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        let pkt = &samples()[3];
        for set in all_sets() {
            let out = run1(pkt, &[set]);
            assert_eq!(out[40..42], [0, 0], "{set}");
        }
    }

    #[test]
    fn ttl_rewrite_ipv4_and_ipv6() {
        let out = run1(&samples()[0], &[DpAction::Set(Field::NwTtl, 63)]);
        assert_eq!(out[22], 63);
        assert_eq!(out[23], ipproto::TCP);
        let out = run1(&samples()[7], &[DpAction::Set(Field::NwTtl, 1)]);
        assert_eq!(out[21], 1);
    }

    #[test]
    fn push_and_pop_vlan() {
        let pkt = tcp4(IP_A, IP_B, 1, 2);
        let out = run1(
            &pkt,
            &[
                DpAction::PushVlan(ethertype::VLAN),
                DpAction::Set(Field::VlanTci, 100),
                DpAction::Set(Field::NwTtl, 9),
                DpAction::Set(Field::TpDst, 8080),
            ],
        );
        assert_eq!(out.len(), pkt.len() + 4);
        let (key, _) = key_of(&out);
        assert_eq!(key.vlan_tci(), 100 | VLAN_CFI);
        assert_eq!(key.get(Field::NwTtl), 9);
        assert_eq!(key.get(Field::TpDst), 8080);
        assert_eq!(key.dl_src(), MAC_SRC);
        assert_checksums(&out);

        let back = run1(&out, &[DpAction::PopVlan, DpAction::Set(Field::TpDst, 2)]);
        let (key, _) = key_of(&back);
        assert_eq!(key.vlan_tci(), 0);
        assert_eq!(key.dl_type(), ethertype::IPV4);
        let mut expected = pkt.clone();
        expected[22] = 9;
        expected[24..26].copy_from_slice(&back[24..26]); // IP checksum
        assert_eq!(back, expected);
        assert_checksums(&back);

        // Pop on an untagged packet, set VID without a tag: ignored.
        assert_eq!(run1(&pkt, &[DpAction::PopVlan]), pkt);
        assert_eq!(run1(&pkt, &[DpAction::Set(Field::VlanTci, 5)]), pkt);

        // QinQ: popping the outer tag leaves the inner one as the outer.
        let inner = push_tag(&pkt, ethertype::VLAN, 10);
        let qinq = push_tag(&inner, ethertype::QINQ, 20);
        let out = run1(
            &qinq,
            &[DpAction::PopVlan, DpAction::Set(Field::VlanTci, 30)],
        );
        assert_eq!(key_of(&out).0.vlan_tci(), 30 | VLAN_CFI);
    }

    #[test]
    fn push_vlan_without_headroom_fails_that_output_only() {
        let bytes = tcp4(IP_A, IP_B, 1, 2);
        // A packet with 2 bytes of headroom: grow at the front, move the
        // bytes there, cut the tail.
        let mut low = HeapPacket::from_bytes(&bytes);
        low.prepend(HEADROOM - 2).unwrap();
        low.data_mut()[..bytes.len()].copy_from_slice(&bytes);
        assert!(low.trim(HEADROOM - 2));
        assert_eq!((low.data(), low.headroom()), (&bytes[..], 2));

        let mut out = Vec::new();
        execute(
            &[
                DpAction::Output(1),
                DpAction::PushVlan(ethertype::VLAN),
                DpAction::Output(2),
                DpAction::Output(3),
            ],
            low,
            key_of(&bytes).1,
            |sink, r| out.push((sink, r.map(|p| p.data().to_vec()))),
        );
        let err = Err(ExecError::NoHeadroom {
            needed: 4,
            available: 2,
        });
        assert_eq!(
            out,
            vec![
                (Sink::Port(1), Ok(bytes.clone())),
                (Sink::Port(2), err.clone()),
                (Sink::Port(3), err),
            ]
        );
    }

    #[test]
    fn a_meter_that_refuses_stops_the_actions_after_it() {
        let bytes = tcp4(IP_A, IP_B, 1, 2);
        let actions = [
            DpAction::Output(1),
            DpAction::Meter(7),
            DpAction::Set(Field::TpDst, 9),
            DpAction::Output(2),
        ];
        let run_with = |pass: bool| {
            let mut asked = Vec::new();
            let mut out = Vec::new();
            let ran = execute_gated(
                &actions,
                HeapPacket::from_bytes(&bytes),
                key_of(&bytes).1,
                HeapPacket::clone,
                |id, len| {
                    asked.push((id, len));
                    pass
                },
                |sink, _| out.push(sink),
            );
            (ran, asked, out)
        };
        let len = bytes.len();
        assert_eq!(
            run_with(true),
            (
                Ran::Completed,
                vec![(7, len)],
                vec![Sink::Port(1), Sink::Port(2)]
            )
        );
        assert_eq!(
            run_with(false),
            (
                Ran::Metered {
                    meter: 7,
                    after_output: true
                },
                vec![(7, len)],
                vec![Sink::Port(1)]
            )
        );
        // First, as a flow's meter instruction puts it: nothing goes out.
        let mut out = Vec::new();
        let ran = execute_gated(
            &actions[1..],
            HeapPacket::from_bytes(&bytes),
            key_of(&bytes).1,
            HeapPacket::clone,
            |_, _| false,
            |sink, _| out.push(sink),
        );
        assert_eq!(
            (ran, out),
            (
                Ran::Metered {
                    meter: 7,
                    after_output: false
                },
                vec![]
            )
        );
    }

    #[test]
    fn outputs_see_the_packet_as_modified_so_far() {
        let pkt = udp4(IP_A, IP_B, 1, 2, b"");
        let x = u128::from(u32::from(IP_X));
        let out = run(
            &pkt,
            &[
                DpAction::Output(1),
                DpAction::Set(Field::NwSrc, x),
                DpAction::Output(2),
                DpAction::Controller {
                    table: 0,
                    cookie: 0,
                    max_len: 0xffff,
                    miss: false,
                },
                DpAction::Set(Field::TpDst, 99),
                DpAction::Output(3),
                DpAction::Set(Field::TpSrc, 77), // after the last output: no effect
            ],
        );
        let sinks: Vec<_> = out.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            sinks,
            [
                Sink::Port(1),
                Sink::Port(2),
                Sink::Controller {
                    table: 0,
                    cookie: 0,
                    max_len: 0xffff,
                    miss: false,
                },
                Sink::Port(3)
            ]
        );
        assert_eq!(out[0].1, pkt);
        let k2 = key_of(&out[1].1).0;
        assert_eq!(k2.get(Field::NwSrc), x);
        assert_eq!(k2.get(Field::TpDst), 2);
        assert_eq!(out[2].1, out[1].1);
        let k3 = key_of(&out[3].1).0;
        assert_eq!((k3.get(Field::NwSrc), k3.get(Field::TpDst)), (x, 99));
        assert_eq!(k3.get(Field::TpSrc), 1);
        for (_, p) in &out {
            assert_checksums(p);
        }
    }

    #[test]
    fn steps_mark_the_last_output() {
        let acts = [
            DpAction::Set(Field::NwTtl, 1),
            DpAction::Output(1),
            DpAction::Output(2),
            DpAction::PopVlan,
        ];
        let s: Vec<_> = steps(&acts).collect();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].mods, &acts[..1]);
        assert_eq!((s[0].sink, s[0].last), (Sink::Port(1), false));
        assert!(s[1].mods.is_empty());
        assert_eq!((s[1].sink, s[1].last), (Sink::Port(2), true));
        assert_eq!(steps(&[]).count(), 0);
        assert_eq!(steps(&acts[..1]).count(), 0, "no output: drop");
    }

    #[test]
    fn sets_on_missing_headers_are_ignored() {
        let arp_pkt = ethernet(
            [0xff; 6],
            MAC_SRC,
            ethertype::ARP,
            &arp(1, MAC_SRC, IP_A, [0; 6], IP_B),
        );
        let mut later = Ipv4Header::new(IP_A, IP_B, ipproto::UDP);
        later.flags_frag = 10;
        let frag = ethernet(MAC_DST, MAC_SRC, ethertype::IPV4, &ipv4(&later, &[1; 16]));
        let tiny = vec![1, 2, 3];
        for pkt in [arp_pkt, frag, tiny] {
            let mut sets = all_sets();
            sets.retain(|a| !matches!(a, DpAction::Set(Field::DlSrc | Field::DlDst, _)));
            if pkt.len() > 20 && pkt[12..14] == ethertype::IPV4.to_be_bytes() {
                sets.retain(|a| matches!(a, DpAction::Set(Field::TpSrc | Field::TpDst, _)));
            }
            assert_eq!(run1(&pkt, &sets), pkt);
        }
        // Offsets that do not fit the buffer (a caller bug) do not panic.
        let pkt = tcp4(IP_A, IP_B, 1, 2);
        let mut info = key_of(&pkt).1;
        info.l3_ofs = Some(60);
        info.l4_ofs = Some(200);
        info.vlan_ofs = Some(59);
        let mut p = HeapPacket::from_bytes(&pkt);
        apply_modifications(&all_sets(), &mut p, &mut info).unwrap();
    }

    fn any_mod() -> impl proptest::strategy::Strategy<Value = DpAction> {
        use proptest::prelude::*;
        let fields = prop::sample::select(vec![
            Field::DlSrc,
            Field::DlDst,
            Field::NwSrc,
            Field::NwDst,
            Field::Ipv6Src,
            Field::Ipv6Dst,
            Field::NwTos,
            Field::NwTtl,
            Field::TpSrc,
            Field::TpDst,
            Field::VlanTci,
        ]);
        prop_oneof![
            8 => (fields, any::<u128>()).prop_map(|(f, v)| DpAction::Set(f, v & f.full_mask())),
            1 => Just(DpAction::PushVlan(ethertype::VLAN)),
            1 => Just(DpAction::PopVlan),
            1 => (1u32..4).prop_map(DpAction::Output),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::test_env::cases(256)))]
        /// Any sequence of actions on any sample keeps every output parseable
        /// with valid checksums.
        #[test]
        fn random_actions_keep_checksums(
            which in 0usize..12,
            actions in proptest::collection::vec(any_mod(), 0..12),
        ) {
            let all = samples();
            let pkt = &all[which % all.len()];
            let mut acts = actions;
            acts.push(DpAction::Output(9));
            for (_, out) in run(pkt, &acts) {
                assert_checksums(&out);
            }
        }
    }
}
