//! The testpmd oracle: rules rendered by `offload::rte` are fed to the real
//! dpdk-testpmd 22.11 on a `net_null` port. The PMD refuses them ("Function
//! not implemented": net_null has no rte_flow), but testpmd's parser must
//! accept every line: it answers "Bad arguments" to a line it cannot parse.
//!
//! dpdk-testpmd ships in Debian's `dpdk-dev` package. Without it the test
//! prints a notice and passes, unless FLOWMARK_REQUIRE_ORACLES=1.

#[path = "../../tests/support/test_env.rs"]
mod test_env;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use fallback::key::{ethertype, frag, ipproto, Field, VLAN_CFI};
use fallback::ofproto::Match;
use offload::device::{Capabilities, Profile};
use offload::rte::{
    Action, Attr, Eth, Icmp, Icmp6, Ipv4, Ipv6, Item, Masked, RssType, Rule, Sctp, Tcp, Udp, Vlan,
};
use offload::translate::translate;

const TESTPMD: &str = "dpdk-testpmd";

/// What testpmd prints for a line it parsed and handed to the PMD.
const PMD_REFUSED: &str = "port_flow_complain(): Caught PMD error";
/// What it prints for a rule a PMD accepted.
const CREATED: &str = "Flow rule #";
const VALIDATED: &str = "Flow rule validated";
/// What it prints for a line it could not parse.
const PARSE_ERRORS: [&str; 3] = ["Bad arguments", "Command not found", "Ambiguous command"];

/// A deliberately malformed line, to prove a parse error is detected.
const BAD_LINE: &str =
    "flow create 0 ingress pattern eth / ipv4 bogus is 1 / end actions mark id 1 / end";

/// Removes EAL's runtime folder for the prefix, even when the test fails.
struct RuntimeDirs(Vec<PathBuf>);

impl Drop for RuntimeDirs {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = fs::remove_dir_all(d);
        }
    }
}

// ---- megaflows ----

const IN_PORT: u128 = 1;

fn base(dl_type: u16) -> Match {
    let mut m = Match::ANY;
    m.set_exact(Field::InPort, IN_PORT);
    m.set_exact(Field::DlType, dl_type.into());
    m
}

#[derive(Clone, Copy)]
enum Tag {
    /// vlan_tci unmasked.
    Any,
    /// Untagged (CFI masked, clear).
    None,
    /// VLAN present, VID matched.
    Vid(u16),
    /// Full TCI (PCP, CFI, VID).
    Full(u16),
}

fn tag(m: &mut Match, t: Tag) {
    match t {
        Tag::Any => {}
        Tag::None => m.set_masked(Field::VlanTci, 0, VLAN_CFI.into()),
        Tag::Vid(v) => m.set_masked(Field::VlanTci, u128::from(VLAN_CFI | v), 0x1fff),
        Tag::Full(tci) => m.set_exact(Field::VlanTci, u128::from(tci | VLAN_CFI)),
    }
}

fn ip4(a: u8, b: u8, c: u8, d: u8) -> u128 {
    u32::from_be_bytes([a, b, c, d]).into()
}

fn ip6(s: &str) -> u128 {
    u128::from(s.parse::<std::net::Ipv6Addr>().expect("test address"))
}

fn mac(s: &str) -> u128 {
    s.split(':').fold(0u128, |acc, b| {
        (acc << 8) | u128::from_str_radix(b, 16).expect("test mac")
    })
}

/// Varied offloadable megaflows, each with the profile to translate for.
fn megaflows() -> Vec<(String, Match, Capabilities)> {
    let generic = Profile::Generic.capabilities();
    let xl710 = Profile::Xl710.capabilities();
    let mut out = Vec::new();
    let tags = [
        Tag::Any,
        Tag::None,
        Tag::Vid(100),
        Tag::Full(0xa00a),
        Tag::Vid(4095),
    ];
    let frags_v4 = [
        (0u8, frag::MASK, "no"),
        (frag::ANY, frag::MASK, "first"),
        (frag::MASK, frag::MASK, "later"),
        (0, 0, "unmasked"),
        (0, frag::LATER, "not-later"),
    ];

    // IPv4 × tags × L4 protocols.
    for (i, t) in tags.iter().enumerate() {
        for (j, proto) in [
            None,
            Some(ipproto::TCP),
            Some(ipproto::UDP),
            Some(ipproto::SCTP),
            Some(ipproto::ICMP),
            Some(47),
        ]
        .into_iter()
        .enumerate()
        {
            let mut m = base(ethertype::IPV4);
            tag(&mut m, *t);
            let (fv, fm, fname) = frags_v4[(i + j) % 2];
            m.set_masked(Field::NwFrag, fv.into(), fm.into());
            m.set_masked(Field::NwSrc, ip4(10, i as u8, j as u8, 0), 0xffff_ff00);
            m.set_exact(Field::NwDst, ip4(192, 168, 200, 3 + j as u8));
            if let Some(p) = proto {
                m.set_exact(Field::NwProto, p.into());
                match p {
                    ipproto::TCP => {
                        m.set_exact(Field::TpSrc, 1024 + i as u128);
                        m.set_exact(Field::TpDst, 80);
                        m.set_masked(Field::TcpFlags, 0x02, 0x17);
                    }
                    ipproto::UDP => m.set_exact(Field::TpSrc, 2152),
                    ipproto::SCTP => m.set_exact(Field::TpDst, 38412),
                    ipproto::ICMP => {
                        m.set_exact(Field::TpSrc, 8);
                        m.set_exact(Field::TpDst, 0);
                    }
                    _ => {}
                }
            }
            out.push((
                format!("ipv4 tag#{i} proto {proto:?} frag {fname}"),
                m,
                generic,
            ));
        }
    }

    // IPv4 fragments, TOS/TTL.
    for (fv, fm, fname) in frags_v4 {
        let mut m = base(ethertype::IPV4);
        tag(&mut m, Tag::None);
        m.set_masked(Field::NwFrag, fv.into(), fm.into());
        m.set_masked(Field::NwTos, 0xb8, 0xfc);
        m.set_exact(Field::NwTtl, 1);
        m.set_exact(Field::NwProto, ipproto::UDP.into());
        out.push((format!("ipv4 frag {fname}"), m, generic));
    }

    // IPv6 × tags × L4.
    for (i, t) in tags.iter().enumerate() {
        for (j, proto) in [
            None,
            Some(ipproto::TCP),
            Some(ipproto::UDP),
            Some(ipproto::SCTP),
            Some(ipproto::ICMPV6),
        ]
        .into_iter()
        .enumerate()
        {
            let mut m = base(ethertype::IPV6);
            tag(&mut m, *t);
            // nw_frag=no (nw_frag=yes over IPv6 is refused: has_frag_ext
            // would match atomic fragments too).
            m.set_masked(Field::NwFrag, 0, frag::MASK.into());
            m.set_masked(Field::Ipv6Src, ip6("2001:db8:1::"), u128::MAX << 80);
            m.set_exact(Field::Ipv6Dst, ip6(&format!("2001:db8::{}", j + 1)));
            m.set_exact(Field::NwTos, 0x28);
            m.set_masked(Field::NwTtl, 64, 0xff);
            if let Some(p) = proto {
                m.set_exact(Field::NwProto, p.into());
                match p {
                    ipproto::TCP => {
                        m.set_exact(Field::TpDst, 443);
                        m.set_masked(Field::TcpFlags, 0x10, 0x10);
                    }
                    ipproto::UDP => {
                        m.set_exact(Field::TpSrc, 53);
                        m.set_exact(Field::TpDst, 5353);
                    }
                    ipproto::SCTP => m.set_exact(Field::TpSrc, 9),
                    ipproto::ICMPV6 => {
                        m.set_exact(Field::TpSrc, 135);
                        m.set_exact(Field::TpDst, 0);
                    }
                    _ => {}
                }
            }
            out.push((format!("ipv6 tag#{i} proto {proto:?}"), m, generic));
        }
    }

    // MAC matches, L2 only and with IP.
    let mut m = Match::ANY;
    m.set_exact(Field::InPort, IN_PORT);
    m.set_exact(Field::DlDst, mac("ff:ff:ff:ff:ff:ff"));
    out.push(("l2 broadcast".into(), m, generic));
    let mut m = base(ethertype::IPV4);
    tag(&mut m, Tag::None);
    m.set_exact(Field::DlSrc, mac("2e:a9:be:9e:4d:07"));
    m.set_masked(
        Field::DlDst,
        mac("01:00:5e:00:00:00"),
        mac("ff:ff:ff:80:00:00"),
    );
    out.push(("ipv4 macs".into(), m, generic));
    let mut m = base(ethertype::IPV6);
    tag(&mut m, Tag::Vid(7));
    m.set_masked(
        Field::DlDst,
        mac("33:33:00:00:00:00"),
        mac("ff:ff:00:00:00:00"),
    );
    m.set_masked(
        Field::DlSrc,
        mac("01:00:00:00:00:00"),
        mac("01:00:00:00:00:00"),
    );
    out.push(("ipv6 macs".into(), m, generic));

    // Non-IP EtherTypes.
    let mut m = base(ethertype::ARP);
    tag(&mut m, Tag::None);
    out.push(("arp type".into(), m, generic));
    let mut m = base(0x88cc);
    tag(&mut m, Tag::Full(0x2005));
    out.push(("lldp tagged".into(), m, generic));

    // xl710 quirk.
    for t in [Tag::Any, Tag::None, Tag::Vid(10)] {
        for dl in [ethertype::IPV4, ethertype::IPV6] {
            let mut m = base(dl);
            tag(&mut m, t);
            m.set_exact(Field::NwProto, ipproto::UDP.into());
            m.set_exact(Field::TpDst, 4789);
            out.push((format!("xl710 {dl:#06x}"), m, xl710));
        }
    }
    out
}

/// Rules built directly, to cover every field token and action of the model.
fn model_rules() -> Vec<Rule> {
    let eth = Item::Eth(Masked::new(
        Eth {
            dst: [0x02, 0, 0, 0, 0, 1],
            src: [0x02, 0, 0, 0, 0, 2],
            ether_type: 0x8100,
            has_vlan: true,
        },
        Eth {
            dst: [0xff; 6],
            src: [0xff, 0xff, 0xff, 0, 0, 0],
            ether_type: 0xffff,
            has_vlan: true,
        },
    ));
    let vlan = Item::Vlan(Masked::new(
        Vlan {
            tci: 0x0123,
            inner_type: 0x0800,
            has_more_vlan: false,
        },
        Vlan {
            tci: 0x0fff,
            inner_type: 0xffff,
            has_more_vlan: true,
        },
    ));
    let ipv4 = Item::Ipv4(Masked::new(
        Ipv4 {
            version_ihl: 0x45,
            type_of_service: 0x10,
            packet_id: 7,
            fragment_offset: 0,
            time_to_live: 64,
            next_proto_id: 1,
            src_addr: 0x0a00_0001,
            dst_addr: 0x0a00_0002,
        },
        Ipv4 {
            version_ihl: 0xff,
            type_of_service: 0xff,
            packet_id: 0xffff,
            fragment_offset: 0x3fff,
            time_to_live: 0xff,
            next_proto_id: 0xff,
            src_addr: 0xffff_ffff,
            dst_addr: 0xffff_0000,
        },
    ));
    let icmp = Item::Icmp(Masked::new(
        Icmp {
            icmp_type: 8,
            icmp_code: 0,
            icmp_ident: 99,
            icmp_seq_nb: 3,
        },
        Icmp {
            icmp_type: 0xff,
            icmp_code: 0xff,
            icmp_ident: 0xffff,
            icmp_seq_nb: 0xffff,
        },
    ));
    let ipv6 = Item::Ipv6(Box::new(Masked::new(
        Ipv6 {
            vtc_flow: 0x0281_2345,
            proto: 58,
            hop_limits: 255,
            src_addr: 1,
            dst_addr: 2,
            has_frag_ext: false,
        },
        Ipv6 {
            vtc_flow: 0x0fff_ffff,
            proto: 0xff,
            hop_limits: 0xff,
            src_addr: u128::MAX,
            dst_addr: u128::MAX << 64,
            has_frag_ext: true,
        },
    )));
    let icmp6 = Item::Icmp6(Masked::new(
        Icmp6 {
            icmp_type: 128,
            icmp_code: 0,
        },
        Icmp6 {
            icmp_type: 0xff,
            icmp_code: 0xff,
        },
    ));
    let sctp = Item::Sctp(Masked::new(
        Sctp {
            src_port: 1,
            dst_port: 2,
            tag: 0xdead_beef,
        },
        Sctp {
            src_port: 0xffff,
            dst_port: 0xffff,
            tag: 0xffff_ffff,
        },
    ));
    let tcp = Item::Tcp(Masked::new(
        Tcp {
            src_port: 1,
            dst_port: 2,
            tcp_flags: 0x12,
        },
        Tcp {
            src_port: 0xffff,
            dst_port: 0xffff,
            tcp_flags: 0xff,
        },
    ));
    let udp = Item::Udp(Masked::new(
        Udp {
            src_port: 1,
            dst_port: 2,
        },
        Udp {
            src_port: 0xffff,
            dst_port: 0xff00,
        },
    ));
    let eth_any = Item::Eth(Masked::any());
    let ipv4_any = Item::Ipv4(Masked::<Ipv4>::any());
    let ipv6_any = Item::Ipv6(Box::new(Masked::<Ipv6>::any()));
    let rule = |pattern: Vec<Item>, actions: Vec<Action>| Rule {
        attr: Attr {
            ingress: true,
            group: 0,
            priority: 1,
        },
        pattern,
        actions,
    };
    vec![
        rule(
            vec![eth, vlan, ipv4, icmp],
            vec![Action::Count, Action::Queue { index: 0 }],
        ),
        rule(vec![eth_any.clone(), ipv6, icmp6], vec![Action::Drop]),
        rule(
            vec![eth_any.clone(), ipv6_any, sctp],
            vec![
                Action::Mark { id: 0x00ff_ffff },
                Action::Rss {
                    queues: vec![0],
                    types: RssType::ALL.to_vec(),
                },
            ],
        ),
        rule(
            vec![eth_any.clone(), ipv4_any.clone(), tcp],
            vec![Action::Rss {
                queues: vec![],
                types: vec![RssType::Ipv4Tcp],
            }],
        ),
        rule(vec![eth_any, ipv4_any, udp], vec![Action::Mark { id: 1 }]),
    ]
}

// ---- running testpmd ----

/// What testpmd printed: its stdout answer to each input line (by prompt
/// order; parse errors are printed there) and its whole stderr (where the
/// PMD's refusals go, so their order against stdout is lost).
struct TestpmdRun {
    answers: Vec<String>,
    stdout: String,
    stderr: String,
}

fn run_testpmd(lines: &[String], dir: &Path) -> TestpmdRun {
    let prefix = format!("flowmark-offload-{}", std::process::id());
    let _cleanup = RuntimeDirs(vec![
        PathBuf::from("/var/run/dpdk").join(&prefix),
        std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"))
            .join("dpdk")
            .join(&prefix),
    ]);
    let input = dir.join("flows.txt");
    let mut f = fs::File::create(&input).expect("write testpmd input");
    for l in lines {
        writeln!(f, "{l}").expect("write testpmd input");
    }
    writeln!(f, "quit").expect("write testpmd input");
    drop(f);

    let output = Command::new("timeout")
        .arg("120")
        .arg(TESTPMD)
        .args([
            "--no-huge",
            "-m",
            "512",
            "--no-pci",
            "--no-telemetry",
            &format!("--file-prefix={prefix}"),
            "--vdev",
            "net_null0",
            "--",
            "-i",
            // The default pool (n=155456) does not fit in 512 MB.
            "--total-num-mbufs=2048",
        ])
        .stdin(fs::File::open(&input).expect("read testpmd input"))
        .output()
        .expect("run dpdk-testpmd");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    fs::write(dir.join("testpmd.out"), &stdout).expect("keep testpmd output");
    fs::write(dir.join("testpmd.err"), &stderr).expect("keep testpmd output");
    assert!(
        output.status.success(),
        "dpdk-testpmd failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // testpmd echoes each line after its prompt, then prints its answer.
    let chunks: Vec<&str> = stdout.split("testpmd> ").skip(1).collect();
    assert!(
        chunks.len() > lines.len(),
        "expected a prompt for each of {} lines plus quit, got {}:\n{stdout}\n{stderr}",
        lines.len(),
        chunks.len()
    );
    let answers = lines
        .iter()
        .zip(chunks)
        .map(|(line, chunk)| {
            let head: String = line.chars().take(60).collect();
            assert!(
                chunk.starts_with(&head),
                "testpmd output out of step: expected echo of {line:?}, got {chunk:?}"
            );
            chunk.to_string()
        })
        .collect();
    TestpmdRun {
        answers,
        stdout,
        stderr,
    }
}

fn parse_error(answer: &str) -> bool {
    PARSE_ERRORS.iter().any(|e| answer.contains(e))
}

#[test]
fn testpmd_accepts_every_rendered_rule() {
    if !test_env::oracle(TESTPMD, "--version", "dpdk-dev") {
        return;
    }

    let mut lines = Vec::new();
    let mut names = Vec::new();
    for (k, (name, m, caps)) in megaflows().into_iter().enumerate() {
        let n_rxq = 1 + (k % 4) as u16;
        let mut t = translate(&m, &caps, 0, n_rxq)
            .unwrap_or_else(|e| panic!("{name}: expected offloadable, rejected: {e}"));
        t.set_mark(1 + k as u32);
        let line = t
            .rule
            .testpmd_create(0)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(line.len() <= 511, "{name}: {} characters", line.len());
        names.push(name);
        lines.push(line);
    }
    let translated = lines.len();
    assert!(translated >= 50, "only {translated} megaflows");
    let mut unique = lines.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        translated,
        "megaflows must give distinct rules"
    );

    for (k, rule) in model_rules().into_iter().enumerate() {
        names.push(format!("model rule {k}"));
        lines.push(rule.testpmd_create(0).expect("renders"));
        names.push(format!("model rule {k} (validate)"));
        lines.push(rule.testpmd_validate(0).expect("renders"));
    }
    let bad_at = lines.len() / 2;
    names.insert(bad_at, "deliberately bad".into());
    lines.insert(bad_at, BAD_LINE.to_string());

    let dir = std::env::temp_dir().join(format!("flowmark-testpmd-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    let run = run_testpmd(&lines, &dir);

    // The check can see a bad line...
    assert!(
        run.answers[bad_at].contains("Bad arguments"),
        "the deliberately bad line was not reported: {:?}",
        run.answers[bad_at]
    );
    // ...and no rendered line is one.
    let failures: Vec<String> = lines
        .iter()
        .zip(&run.answers)
        .zip(&names)
        .enumerate()
        .filter(|(k, ((_, a), _))| *k != bad_at && parse_error(a))
        .map(|(_, ((l, a), n))| format!("{n}: {l}\n  -> {}", a.trim()))
        .collect();
    assert!(
        failures.is_empty(),
        "testpmd did not parse {} line(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Every good line reached the PMD: it was refused or accepted once.
    let reached = run.stderr.matches(PMD_REFUSED).count()
        + run.stdout.matches(CREATED).count()
        + run.stdout.matches(VALIDATED).count();
    assert_eq!(
        reached,
        lines.len() - 1,
        "not every parsed line reached the PMD:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    eprintln!(
        "testpmd parsed {} rendered lines ({translated} translated megaflows)",
        lines.len() - 1
    );
    let _ = fs::remove_dir_all(&dir);
}
