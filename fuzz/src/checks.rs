//! What each fuzz target checks. Every function takes the raw fuzz input,
//! never panics on bad input by design, and panics (with the evidence) when
//! a property breaks. Shared by the libFuzzer targets (`fuzz/fuzz_targets/`)
//! and the regression replay (`tests/fuzz_regressions.rs`).

use fallback::actions::DpAction;
use fallback::key::{ethertype, frag, ipproto, Field, FlowKey, VLAN_CFI};
use fallback::megaflow::Megaflow;
use fallback::ofproto::mac::MacTable;
use fallback::ofproto::syntax;
use fallback::ofproto::table::Pipeline;
use fallback::ofproto::xlate::{self as ofxlate, Bridge};
use fallback::ofproto::{Match, OfAction, Rule};
use fallback::packet;
use fallback::port::{HeapPacket, PacketBuf};
use offload::device::Profile;
use offload::translate::translate;
use testbed::matcher;

/// Reads the fuzz input as a stream of small choices; past its end every
/// read is zero, so any input decodes.
struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Bytes<'a> {
    fn new(data: &'a [u8]) -> Self {
        Bytes { data, at: 0 }
    }
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.u8()) % n.max(1)
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
    fn rest(&self) -> &'a [u8] {
        self.data.get(self.at..).unwrap_or(&[])
    }
}

// ---- packet_parse ----

/// The packet parser on any bytes: no panic, offsets inside the frame, the
/// key's in_port as given; the NIC's own parser on the same bytes; and the
/// datapath executor running set-field/VLAN actions on the frame.
pub fn packet_parse(data: &[u8]) {
    let mut b = Bytes::new(data);
    let in_port = u32::from(b.u8());
    let n_actions = b.below(4);
    let mut actions = Vec::new();
    for _ in 0..n_actions {
        actions.push(match b.below(8) {
            0 => DpAction::Set(Field::NwTtl, u128::from(b.u8())),
            1 => DpAction::Set(Field::NwSrc, u128::from(b.u32())),
            2 => DpAction::Set(Field::TpDst, u128::from(b.u16())),
            3 => DpAction::Set(Field::NwTos, u128::from(b.u8())),
            4 => DpAction::Set(Field::VlanTci, u128::from(b.u16())),
            5 => DpAction::PushVlan(0x8100),
            6 => DpAction::PopVlan,
            _ => DpAction::Set(Field::Ipv6Dst, u128::from(b.u32()) << 64),
        });
    }
    actions.push(DpAction::Output(1));
    let frame = b.rest();

    let mut key = FlowKey::ZERO;
    let info = packet::parse(frame, in_port, &mut key);
    assert_eq!(key.in_port(), in_port, "parse must keep the given in_port");
    for (name, ofs) in [("l3", info.l3_ofs), ("l4", info.l4_ofs)] {
        if let Some(o) = ofs {
            assert!(
                usize::from(o) <= frame.len(),
                "{name} offset {o} past the frame's {} bytes",
                frame.len()
            );
        }
    }
    let light = packet::parse_offsets(frame);
    assert_eq!(
        (light.l3_ofs, light.l4_ofs),
        (info.l3_ofs, info.l4_ofs),
        "the light parse (mark path) must find the offsets the full parse finds"
    );
    let _ = matcher::Headers::parse(frame);

    let pkt = HeapPacket::from_bytes(frame);
    fallback::exec::execute(&actions, pkt, info, |_, res| {
        if let Ok(p) = res {
            // What was emitted still parses.
            let mut k = FlowKey::ZERO;
            packet::parse(p.data(), in_port, &mut k);
        }
    });
}

// ---- flow_syntax ----

/// ovs-ofctl flow, match, packet and megaflow syntax: no panic on any text,
/// and whatever parses prints to text that parses back to the same thing.
pub fn flow_syntax(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rule) = syntax::parse_flow(text) {
        let printed = syntax::format_flow(&rule);
        match syntax::parse_flow(&printed) {
            Ok(again) => assert_eq!(again, rule, "flow {text:?} printed as {printed:?}"),
            Err(e) => panic!("flow {text:?} printed as {printed:?}, which does not parse: {e}"),
        }
    }
    let _ = syntax::parse_flow_with_warnings(text);
    if let Ok(m) = syntax::parse_match(text) {
        let printed = syntax::format_match(&m);
        match syntax::parse_match(&printed) {
            Ok(again) => assert_eq!(again, m, "match {text:?} printed as {printed:?}"),
            Err(e) => panic!("match {text:?} printed as {printed:?}, which does not parse: {e}"),
        }
    }
    let _ = syntax::parse_packet(text);
    if let Ok(m) = syntax::parse_megaflow(text) {
        let printed = syntax::format_megaflow(&m);
        match syntax::parse_megaflow(&printed) {
            Ok(again) => assert_eq!(again, m, "megaflow {text:?} printed as {printed:?}"),
            Err(e) => {
                panic!("megaflow {text:?} printed as {printed:?}, which does not parse: {e}")
            }
        }
    }
}

// ---- nic_matcher ----

const L3_FIELDS: [Field; 8] = [
    Field::NwSrc,
    Field::NwDst,
    Field::NwTos,
    Field::NwTtl,
    Field::Ipv6Src,
    Field::Ipv6Dst,
    Field::ArpSha,
    Field::ArpTha,
];
const L4_FIELDS: [Field; 3] = [Field::TpSrc, Field::TpDst, Field::TcpFlags];

/// A mask for `field`: exact, empty, a prefix or fuzz-chosen bits.
fn fuzz_mask(b: &mut Bytes, field: Field) -> u128 {
    let full = field.full_mask();
    match b.below(4) {
        0 => 0,
        1 => full,
        2 => {
            let len = b.below(field.bits() as usize + 1) as u32;
            if len == 0 {
                0
            } else {
                full & !full.checked_shr(len).unwrap_or(0)
            }
        }
        _ => {
            let mut bits = 0u128;
            for _ in 0..field.bits().div_ceil(8) {
                bits = (bits << 8) | u128::from(b.u8());
            }
            bits & full
        }
    }
}

/// The safety rule (DESIGN §1) with fuzzed frames and masks: a megaflow
/// built around a frame (its parsed key under a fuzzed, well-formed mask)
/// is translated for each NIC profile; for the frame and a fuzzed mutation
/// of it, the NIC's matcher may match only where `fallback` says the
/// megaflow matches, and must match wherever it does when the translation
/// claims to be exact (for well-formed frames).
pub fn nic_matcher(data: &[u8]) {
    let mut b = Bytes::new(data);
    let in_port = 1 + u32::from(b.u8() % 4);
    let mut mask = FlowKey::ZERO;
    mask.set_exact(Field::InPort);
    mask.set_exact(Field::DlType);
    if b.below(3) == 0 {
        let m = fuzz_mask(&mut b, Field::VlanTci);
        // As in OVS: any TCI bit un-wildcards the tag-present bit.
        let m = if m != 0 { m | u128::from(VLAN_CFI) } else { 0 };
        mask.set(Field::VlanTci, m);
    }
    for f in [Field::DlSrc, Field::DlDst] {
        if b.below(4) == 0 {
            mask.set(f, fuzz_mask(&mut b, f));
        }
    }
    let l3 = b.below(3) != 0;
    if l3 {
        mask.set_exact(Field::NwFrag);
        mask.set_exact(Field::NwProto);
        for f in L3_FIELDS {
            if b.below(3) == 0 {
                mask.set(f, fuzz_mask(&mut b, f));
            }
        }
        for f in L4_FIELDS {
            if b.below(3) == 0 {
                mask.set(f, fuzz_mask(&mut b, f));
            }
        }
    }
    let mutate_at = b.u16();
    let mutate_to = b.u8();
    let frame = b.rest().to_vec();

    let mut key = FlowKey::ZERO;
    packet::parse(&frame, in_port, &mut key);
    let m = Match {
        value: key.masked(&mask),
        mask,
    };
    let mut mutated = frame.clone();
    if !mutated.is_empty() {
        let i = usize::from(mutate_at) % mutated.len();
        mutated[i] = mutate_to;
    }
    for profile in [Profile::Generic, Profile::Xl710] {
        let caps = profile.capabilities();
        let Ok(t) = translate(&m, &caps, 1, 2) else {
            continue;
        };
        assert_eq!(t.port, in_port, "the rule goes on the megaflow's port");
        for (which, bytes) in [("frame", &frame), ("mutated frame", &mutated)] {
            let mut k = FlowKey::ZERO;
            let info = packet::parse(bytes, in_port, &mut k);
            // Exactness is claimed for frames the datapath classifies whole:
            // runts are dropped before classification, and a truncated
            // header leaves the rest of the key zero.
            let well_formed = info.error.is_none() && bytes.len() >= 14;
            let sw = m.matches(&k);
            let nic = matcher::pattern_matches(&t.rule.pattern, bytes);
            let rule = t.rule.testpmd_create(0).unwrap_or_else(|e| e.to_string());
            assert!(
                !nic || sw,
                "safety rule broken ({profile}): the NIC rule matches the {which} outside \
                 its megaflow\nmegaflow {}\nrule {rule}\nbytes {bytes:02x?}",
                syntax::format_megaflow(&m)
            );
            assert!(
                !t.exact || !well_formed || !sw || nic,
                "translation claimed exact ({profile}) but misses the {which} of its \
                 megaflow\nmegaflow {}\nrule {rule}\nbytes {bytes:02x?}",
                syntax::format_megaflow(&m)
            );
        }
    }
}

// ---- xlate ----

const PORTS: [u32; 4] = [1, 2, 3, 4];
const TABLES: [u8; 3] = [0, 1, 2];
const MACS: [u128; 4] = [
    0x0200_0000_0001,
    0x0200_0000_0002,
    0x0a0b_0c0d_0e0f,
    0xffff_ffff_ffff,
];
const NETS: [u128; 4] = [0x0a00_0000, 0x0a01_0000, 0xc0a8_c803, 0x0a01_00ff];
const L4_PORTS: [u128; 4] = [2152, 2123, 80, 0x1000];
const PROTOS: [u8; 4] = [ipproto::UDP, ipproto::TCP, ipproto::ICMP, ipproto::SCTP];

fn fuzz_match(b: &mut Bytes) -> Match {
    let mut m = Match::ANY;
    let which = b.u16();
    let bit = |i: u32| which & (1 << i) != 0;
    if bit(0) {
        m.set_exact(Field::InPort, u128::from(b.pick(&PORTS)));
    }
    if bit(1) {
        m.set_exact(Field::DlDst, b.pick(&MACS));
    }
    if bit(2) {
        m.set_exact(Field::DlSrc, b.pick(&MACS));
    }
    if bit(3) {
        let vid = u128::from(b.u8() % 3);
        m.set_masked(Field::VlanTci, u128::from(VLAN_CFI) | vid, 0x1fff);
    }
    match b.below(5) {
        0 | 1 => {
            m.set_exact(Field::DlType, u128::from(ethertype::IPV4));
            for (i, f) in [Field::NwSrc, Field::NwDst].into_iter().enumerate() {
                if bit(4 + i as u32) {
                    let prefix = b.pick(&[8u32, 16, 24, 31, 32]);
                    m.set_masked(f, b.pick(&NETS), u128::from(u32::MAX << (32 - prefix)));
                }
            }
            if bit(6) {
                m.set_masked(Field::NwTos, b.pick(&[0u128, 0x10, 0xb8]), 0xfc);
            }
            if bit(7) {
                m.set_exact(Field::NwTtl, b.pick(&[1u128, 2, 64]));
            }
            if bit(8) {
                m.set_masked(
                    Field::NwFrag,
                    b.pick(&[0u128, 1, 3]),
                    u128::from(frag::MASK),
                );
            }
            if bit(9) {
                let proto = b.pick(&PROTOS);
                m.set_exact(Field::NwProto, u128::from(proto));
                if bit(10) {
                    let f = if bit(11) { Field::TpSrc } else { Field::TpDst };
                    let mask = if bit(12) { 0xff00 } else { 0xffff };
                    m.set_masked(f, b.pick(&L4_PORTS), mask);
                }
                if proto == ipproto::TCP && bit(13) {
                    m.set_masked(Field::TcpFlags, 0x002, 0x012);
                }
            }
        }
        2 => {
            m.set_exact(Field::DlType, u128::from(ethertype::ARP));
            if bit(4) {
                m.set_exact(Field::NwDst, b.pick(&NETS));
            }
        }
        3 => {
            m.set_exact(Field::DlType, u128::from(ethertype::IPV6));
            if bit(4) {
                m.set_masked(Field::Ipv6Dst, 0x2001_0db8 << 96, u128::MAX << 96);
            }
        }
        _ => {}
    }
    m
}

fn fuzz_actions(b: &mut Bytes, table: u8) -> Vec<OfAction> {
    let n = b.below(4);
    (0..n)
        .map(|_| match b.below(16) {
            0..=3 => OfAction::Output(b.pick(&PORTS)),
            4 => OfAction::Flood,
            5 => OfAction::Normal,
            6 => OfAction::Mod(Field::NwSrc, 0xc0a8_c8bc),
            7 => OfAction::Mod(Field::DlDst, 0x5254_0000_0005),
            8 => OfAction::DecTtl,
            9 => OfAction::Mod(Field::TpDst, 4000),
            10 => OfAction::Mod(Field::VlanTci, 7),
            11 => OfAction::StripVlan,
            12 => OfAction::InPort,
            13 => OfAction::Mod(Field::NwTos, 0x20),
            14 => OfAction::PushVlan(0x8100),
            _ => OfAction::Resubmit {
                port: if b.below(4) == 0 {
                    Some(b.pick(&PORTS))
                } else {
                    None
                },
                // Any table, this one included: loops must hit the limit.
                table: Some(b.pick(&TABLES).max(table)),
            },
        })
        .collect()
}

fn fuzz_key(b: &mut Bytes) -> FlowKey {
    let mut k = FlowKey::ZERO;
    k.set(Field::InPort, u128::from(b.pick(&PORTS)));
    k.set(Field::DlSrc, b.pick(&MACS));
    k.set(Field::DlDst, b.pick(&MACS));
    if b.below(3) == 0 {
        k.set(
            Field::VlanTci,
            u128::from(VLAN_CFI) | u128::from(b.u8() % 3),
        );
    }
    match b.below(4) {
        0 | 1 => {
            k.set(Field::DlType, u128::from(ethertype::IPV4));
            k.set(Field::NwSrc, b.pick(&NETS) | u128::from(b.u8() % 2));
            k.set(Field::NwDst, b.pick(&NETS) | u128::from(b.u8() % 2));
            k.set(Field::NwTos, b.pick(&[0u128, 0x10, 0xb8, 0xbb]));
            k.set(Field::NwTtl, b.pick(&[1u128, 2, 64]));
            k.set(Field::NwFrag, b.pick(&[0u128, 0, 1, 3]));
            let proto = b.pick(&PROTOS);
            k.set(Field::NwProto, u128::from(proto));
            if k.get(Field::NwFrag) & u128::from(frag::LATER) == 0 {
                k.set(Field::TpSrc, b.pick(&L4_PORTS));
                k.set(Field::TpDst, b.pick(&L4_PORTS));
                if proto == ipproto::TCP {
                    k.set(Field::TcpFlags, u128::from(b.u8() & 0x3f));
                }
            }
        }
        2 => {
            k.set(Field::DlType, u128::from(ethertype::ARP));
            k.set(Field::NwDst, b.pick(&NETS));
            k.set(Field::NwProto, 1);
        }
        _ => {
            k.set(Field::DlType, u128::from(ethertype::IPV6));
            k.set(Field::Ipv6Dst, b.pick(&[0x2001_0db8u128 << 96, 1]));
            k.set(Field::NwProto, u128::from(ipproto::UDP));
            k.set(Field::TpDst, b.pick(&L4_PORTS));
        }
    }
    k
}

/// xlate over fuzzed rule sets and keys: no panic; the megaflow
/// un-wildcards in_port and dl_type and covers its key; and a second key
/// that differs from the first only outside the megaflow's mask gets the
/// same datapath actions (the megaflow property of DESIGN §2).
pub fn xlate(data: &[u8]) {
    let mut b = Bytes::new(data);
    let mut pipeline = Pipeline::new();
    let n_rules = b.below(12);
    for i in 0..n_rules {
        let table = b.pick(&TABLES);
        let rule = Rule {
            table,
            // Distinct priorities: equal-priority overlaps are undefined.
            priority: (b.u8() as u16) << 4 | i as u16,
            r#match: fuzz_match(&mut b),
            actions: fuzz_actions(&mut b, table),
            cookie: 0,
            idle_timeout: 0,
            hard_timeout: 0,
        };
        pipeline.add(rule);
    }
    let key = fuzz_key(&mut b);
    let macs = MacTable::default();
    let bridge = Bridge {
        pipeline: &pipeline,
        macs: &macs,
        ports: &PORTS,
        widen_l4: None,
    };
    let x = ofxlate::xlate(bridge, &key);
    for f in [Field::InPort, Field::DlType] {
        assert_eq!(
            x.mask.get(f),
            f.full_mask(),
            "{f} must always be un-wildcarded"
        );
    }
    if key.is_ip() {
        assert_eq!(
            x.mask.get(Field::NwFrag) & u128::from(frag::MASK),
            u128::from(frag::MASK),
            "nw_frag must be un-wildcarded for IP"
        );
    }
    let actions = x.actions.clone();
    let mask = x.mask;
    let mf = Megaflow::from_xlation(&key, x);
    assert!(mf.matches(&key), "the megaflow must cover its own key");

    // Another packet of the megaflow: the key's bits inside the mask, fuzz
    // bits outside.
    let mut other = fuzz_key(&mut b);
    for (w, (o, k)) in other.words.iter_mut().zip(key.words.iter()).enumerate() {
        *o = (*o & !mask.words[w]) | (k & mask.words[w]);
    }
    if other.dl_type() != key.dl_type() || !mf.matches(&other) {
        return;
    }
    let y = ofxlate::xlate(
        Bridge {
            pipeline: &pipeline,
            macs: &macs,
            ports: &PORTS,
            widen_l4: None,
        },
        &other,
    );
    assert_eq!(
        y.actions, actions,
        "two keys of one megaflow got different actions\nmegaflow {}\nkey   {key:?}\nother {other:?}",
        syntax::format_megaflow(&mf.r#match)
    );
}

// ---- control_request ----

/// The control-socket request decoder on any line: no panic; a refusal is
/// a [`flowmark::control::DecodeError`] with a message; an accepted request
/// names a known command and survives serialise → decode unchanged.
pub fn control_request(data: &[u8]) {
    use flowmark::control::{decode_request, COMMANDS};
    match decode_request(data) {
        Ok(req) => {
            assert!(
                COMMANDS.contains(&req.command()),
                "decoded {req:?} from {data:02x?}, whose command is not a known one"
            );
            let line = serde_json::to_vec(&req)
                .unwrap_or_else(|e| panic!("{req:?} does not serialise: {e}"));
            match decode_request(&line) {
                Ok(again) => assert_eq!(
                    again,
                    req,
                    "request re-sent as {:?}",
                    String::from_utf8_lossy(&line)
                ),
                Err(e) => panic!(
                    "{req:?} re-sent as {:?} is refused: {e}",
                    String::from_utf8_lossy(&line)
                ),
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.trim().is_empty(), "empty error for {data:02x?}");
        }
    }
}

// ---- config ----

/// The TOML config loader on any text: no panic; every error is one that
/// names a line of the text (and the file).
pub fn config(data: &[u8]) {
    use flowmark::config::{Config, ConfigError};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("fuzz.toml");
    match Config::parse(text, path) {
        Ok(c) => {
            let _ = c.family();
            let _ = c.switch_config();
        }
        Err(e) => {
            let message = e.to_string();
            match e {
                ConfigError::At { line, .. } => {
                    let lines = text.split('\n').count();
                    assert!(
                        (1..=lines).contains(&line),
                        "error names line {line} of a {lines}-line text: {message}\ntext {text:?}"
                    );
                    assert!(
                        message.starts_with(&format!("fuzz.toml:{line}: ")),
                        "error does not start with the file and line: {message}"
                    );
                }
                ConfigError::Read { .. } => panic!("parse gave a read error: {message}"),
            }
        }
    }
}

// ---- openflow ----

/// The OpenFlow 1.3 decoder and a session on any bytes: no panic; a
/// decoded message encodes to bytes that decode to the same message; and
/// a session that got a HELLO, fed the bytes in two pieces, answers only
/// with messages its own decoder reads.
pub fn openflow(data: &[u8]) {
    use crate::pipeline_switch::PipelineSwitch;
    use flowmark::openflow::session::Session;
    use flowmark::openflow::switch::PortInfo;
    use flowmark::openflow::{decode, encode, Message};
    use std::time::Instant;

    // The first byte splits the rest into the session's two reads.
    let (split, bytes) = match data.split_first() {
        Some((s, rest)) => (usize::from(*s), rest),
        None => (0, data),
    };

    // Every message at the start of the bytes, as a session would frame them.
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        match decode(rest) {
            Ok(env) => {
                let again_bytes = encode(env.xid, &env.msg);
                let declared = u16::from_be_bytes([again_bytes[2], again_bytes[3]]);
                // Longer than a message may be: encode cuts; nothing to compare.
                if usize::from(declared) == again_bytes.len() {
                    match decode(&again_bytes) {
                        Ok(again) => {
                            assert_eq!(again.xid, env.xid);
                            assert_eq!(
                                again.msg, env.msg,
                                "message re-encoded as {again_bytes:02x?} decodes differently\n\
                                 from {rest:02x?}"
                            );
                        }
                        Err(e) => panic!(
                            "{:?} re-encoded as {again_bytes:02x?} does not decode: {e}\n\
                             from {rest:02x?}",
                            env.msg
                        ),
                    }
                }
            }
            Err(e) => {
                let _ = e.to_string();
                let _ = e.ofp_error();
            }
        }
        match flowmark::openflow::message::parse_header(rest) {
            Ok(h) => at += usize::from(h.length),
            Err(_) => break,
        }
    }

    let sw = PipelineSwitch::new(
        1,
        vec![
            PortInfo {
                ofport: 1,
                name: "p1".into(),
                config: 0,
            },
            PortInfo {
                ofport: 2,
                name: "p2".into(),
                config: 0,
            },
        ],
    );
    let now = Instant::now();
    let mut s = Session::new(now);
    s.receive(&encode(0, &Message::Hello { versions: 1 << 4 }), &sw, now);
    let cut = split.min(bytes.len());
    s.receive(&bytes[..cut], &sw, now);
    s.receive(&bytes[cut..], &sw, now);
    let out = s.take_output();
    let _ = s.take_notes();
    let mut rest = &out[..];
    while !rest.is_empty() {
        let env = decode(rest).unwrap_or_else(|e| {
            panic!("the session sent {rest:02x?}, which does not decode: {e}\nfed {bytes:02x?}")
        });
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let _ = env;
        rest = &rest[len..];
    }
}
