//! Reactive controllers (issue 14) against `flowmark run` over OpenFlow 1.3
//! with ovs-ofctl: PACKET_OUT with action lists, compared frame for frame
//! with Open vSwitch 3.1 on its dummy datapath (`ovs-vswitchd
//! --enable-dummy=override --disable-system`, ports writing what they send
//! to pcap files with `options:tx_pcap`); refused packet-outs send nothing.
//! Received traffic too: random OpenFlow 1.3 rule sets and random frames,
//! into both switches' datapaths, must leave every port with the same frames.
//! Skipped without ovs-ofctl / ovs-vswitchd unless FLOWMARK_REQUIRE_ORACLES
//! is set.

use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use testbed::build;

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/test_env.rs"]
mod test_env;

/// How long anything asynchronous may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{cmd:?} does not start: {e}"))
}

fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ofctl(target: &str, args: &[&str]) -> Output {
    output(
        Command::new("ovs-ofctl")
            .args(["-O", "OpenFlow13", "--timeout=10", args[0], target])
            .args(&args[1..]),
    )
}

fn ofctl_ok(target: &str, args: &[&str]) -> String {
    let out = ofctl(target, args);
    assert!(
        out.status.success(),
        "ovs-ofctl {args:?} into {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `flowmark run` (the shared test harness, `tests/support/daemon.rs`) with
/// the default testbed ports (nic0, nic1, vm0 as 1, 2, 3) and an OpenFlow
/// listener.
struct Flowmark {
    d: daemon::Daemon,
    dir: PathBuf,
    target: String,
}

impl Flowmark {
    fn start() -> Flowmark {
        let port = free_port();
        let d = daemon::Daemon::start(Some(&format!(
            "pmd_cores = [0]\n[[port]]\nname = \"nic0\"\ntype = \"testbed-nic\"\n[[port]]\nname = \"nic1\"\ntype = \"testbed-nic\"\n[[port]]\nname = \"vm0\"\ntype = \"testbed-vm\"\n[openflow]\nlisten = \"ptcp:{port}\"\ndatapath_id = 0x14\n"
        )));
        wait_listening(port, "flowmark");
        Flowmark {
            dir: d.dir.path().to_path_buf(),
            d,
            target: format!("tcp:127.0.0.1:{port}"),
        }
    }

    fn cli(&self, args: &[&str]) -> Value {
        self.d.json(args)
    }

    /// tx_attempted of every port, summed.
    fn tx_attempted(&self) -> u64 {
        self.port_stats()
            .iter()
            .map(|p| daemon::u(&p["tx_attempted"]))
            .sum()
    }

    fn port_stats(&self) -> Vec<Value> {
        daemon::arr(&self.cli(&["port", "stats"]))
    }

    /// The frames each port sent since the last call, by OpenFlow port.
    fn take_frames(&self) -> [Vec<Vec<u8>>; 3] {
        ["nic0", "nic1", "vm0"].map(|name| {
            daemon::arr(&self.cli(&["port", "capture", name])["frames"])
                .iter()
                .map(|f| unhex(f.as_str().expect("hex")))
                .collect()
        })
    }
}

/// Open vSwitch on the dummy datapath: bridge br0 with dummy ports p1, p2,
/// p3 as OpenFlow ports 1, 2, 3, each writing what it sends to a pcap.
struct Ovs {
    dir: PathBuf,
    target: String,
    /// Frames of each port's pcap already handed out.
    seen: [usize; 3],
}

impl Ovs {
    fn start(dir: &Path) -> Ovs {
        let run_dir = dir.join("run");
        std::fs::create_dir_all(&run_dir).expect("run dir");
        let db = dir.join("conf.db");
        let sock = format!("unix:{}", run_dir.join("db.sock").display());
        run(Command::new("ovsdb-tool")
            .arg("create")
            .arg(&db)
            .arg("/usr/share/openvswitch/vswitch.ovsschema"));
        run(Command::new("ovsdb-server")
            .arg(&db)
            .arg(format!("--remote=p{sock}"))
            .arg(format!(
                "--pidfile={}",
                run_dir.join("ovsdb-server.pid").display()
            ))
            .arg(format!(
                "--unixctl={}",
                run_dir.join("ovsdb-server.ctl").display()
            ))
            .arg(format!(
                "--log-file={}",
                dir.join("ovsdb-server.log").display()
            ))
            .args(["--detach", "--no-chdir"]));
        let vsctl = |args: &[&str]| {
            run(Command::new("ovs-vsctl")
                .arg(format!("--db={sock}"))
                .arg("--timeout=30")
                .args(args))
        };
        vsctl(&["--no-wait", "init"]);
        run(Command::new("ovs-vswitchd")
            .arg(&sock)
            .args(["--enable-dummy=override", "--disable-system"])
            .arg(format!(
                "--pidfile={}",
                run_dir.join("ovs-vswitchd.pid").display()
            ))
            .arg(format!(
                "--unixctl={}",
                run_dir.join("ovs-vswitchd.ctl").display()
            ))
            .arg(format!(
                "--log-file={}",
                dir.join("ovs-vswitchd.log").display()
            ))
            .args(["--detach", "--no-chdir"]));
        let port = free_port();
        vsctl(&[
            "add-br",
            "br0",
            "--",
            "set",
            "bridge",
            "br0",
            "datapath_type=dummy",
            "fail-mode=secure",
            "protocols=OpenFlow13",
            "--",
            "set-controller",
            "br0",
            &format!("ptcp:{port}:127.0.0.1"),
        ]);
        for i in 1..=3 {
            vsctl(&[
                "add-port",
                "br0",
                &format!("p{i}"),
                "--",
                "set",
                "interface",
                &format!("p{i}"),
                "type=dummy",
                &format!("ofport_request={i}"),
                &format!(
                    "options:tx_pcap={}",
                    dir.join(format!("p{i}.pcap")).display()
                ),
            ]);
        }
        wait_listening(port, "ovs-vswitchd");
        Ovs {
            dir: dir.to_path_buf(),
            target: format!("tcp:127.0.0.1:{port}"),
            seen: [0; 3],
        }
    }

    /// The frames each port sent since the last call. ovs-ofctl waits for
    /// a barrier after a packet-out, so they are written by then.
    fn take_frames(&mut self) -> [Vec<Vec<u8>>; 3] {
        let mut out: [Vec<Vec<u8>>; 3] = Default::default();
        for (i, o) in out.iter_mut().enumerate() {
            let path = self.dir.join(format!("p{}.pcap", i + 1));
            // A file Open vSwitch is still writing ends in a partial
            // record and does not read: nothing new this time, not a
            // restart from the first frame.
            let Ok(all) = testbed::pcap::read_file(&path) else {
                continue;
            };
            *o = all[self.seen[i].min(all.len())..].to_vec();
            self.seen[i] = all.len();
        }
        out
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        for ctl in ["ovs-vswitchd.ctl", "ovsdb-server.ctl"] {
            let _ = Command::new("ovs-appctl")
                .arg("-t")
                .arg(self.dir.join("run").join(ctl))
                .arg("exit")
                .output();
        }
    }
}

/// `ovs-ofctl dump-ports`: per port number, (rx pkts, rx bytes, tx pkts,
/// tx bytes).
fn dump_ports(target: &str) -> std::collections::BTreeMap<u32, [u64; 4]> {
    let text = ofctl_ok(target, &["dump-ports"]);
    let mut out = std::collections::BTreeMap::new();
    let mut port = None;
    for line in text.lines() {
        let l = line.trim();
        let num = |key: &str| -> u64 {
            field(l, key)
                .and_then(|v| v.trim_end_matches(',').parse().ok())
                .unwrap_or(0)
        };
        if let Some(rest) = l.strip_prefix("port") {
            let n = rest
                .trim()
                .split(':')
                .next()
                .and_then(|n| n.trim().parse().ok());
            port = n;
            if let Some(p) = n {
                let e: &mut [u64; 4] = out.entry(p).or_default();
                e[0] = num("pkts");
                e[1] = num("bytes");
            }
        } else if l.starts_with("tx") {
            if let Some(p) = port {
                let e: &mut [u64; 4] = out.entry(p).or_default();
                e[2] = num("pkts");
                e[3] = num("bytes");
            }
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex byte"))
        .collect()
}

fn have_oracles() -> bool {
    test_env::oracle("ovs-ofctl", "--version", "openvswitch-common")
        && test_env::oracle("ovs-vswitchd", "--version", "openvswitch-switch")
}

fn arp_request() -> Vec<u8> {
    let arp = build::arp(
        1,
        [0x02, 0, 0, 0, 0, 0x0a],
        Ipv4Addr::new(10, 0, 0, 1),
        [0; 6],
        Ipv4Addr::new(10, 0, 0, 2),
    );
    build::ethernet([0xff; 6], [0x02, 0, 0, 0, 0, 0x0a], 0x0806, &arp)
}

fn udp() -> Vec<u8> {
    build::udp4(
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 2),
        1234,
        5678,
        b"flowmark packet-out",
    )
}

fn tagged_udp() -> Vec<u8> {
    build::push_tag(&udp(), 0x8100, 0x2064)
}

/// Every packet-out of the matrix lands on the same ports as in Open
/// vSwitch with the same bytes, in the same order per port, and is counted
/// as a transmit (tx_attempted = tx + drops on every port).
#[test]
fn packet_out_matrix_matches_open_vswitch() {
    if !have_oracles() {
        return;
    }
    let ovs_dir = tempfile::tempdir().expect("tempdir");
    let fm = Flowmark::start();
    let mut ovs = Ovs::start(ovs_dir.path());
    // For output:TABLE: the same rule in both.
    for t in [&fm.target, &ovs.target] {
        ofctl_ok(
            t,
            &["add-flow", "priority=5,udp,tp_dst=5678,actions=output:3"],
        );
    }
    let (arp, udp, tagged) = (arp_request(), udp(), tagged_udp());
    let cases: Vec<(&str, &[u8], &str)> = vec![
        ("controller", &arp, "output:1"),
        ("controller", &arp, "output:2,output:3"),
        ("controller", &arp, "flood"),
        ("controller", &arp, "all"),
        ("1", &arp, "flood"),
        ("2", &arp, "all"),
        ("1", &arp, "in_port"),
        ("2", &udp, "output:2,output:1,in_port"),
        (
            "controller",
            &udp,
            "set_field:02:11:22:33:44:55->eth_dst,output:1",
        ),
        (
            "controller",
            &udp,
            "output:1,set_field:02:aa:bb:cc:dd:ee->eth_src,output:2",
        ),
        (
            "controller",
            &udp,
            "push_vlan:0x8100,set_field:4196->vlan_vid,output:3",
        ),
        (
            "controller",
            &udp,
            "push_vlan:0x8100,output:1,pop_vlan,output:2",
        ),
        ("controller", &tagged, "pop_vlan,output:1"),
        ("controller", &tagged, "set_field:4101->vlan_vid,output:2"),
        ("controller", &udp, "table"),
        ("controller", &arp, "table"),
        ("3", &udp, "output:3,table"),
        ("controller", &udp, ""),
    ];
    let mut attempted = fm.tx_attempted();
    for (in_port, frame, actions) in cases {
        let po = format!("in_port={in_port} packet={} actions={actions}", hex(frame));
        let what = format!("packet-out {po}");
        ofctl_ok(&ovs.target, &["packet-out", &po]);
        ofctl_ok(&fm.target, &["packet-out", &po]);
        let want = ovs.take_frames();
        let n: usize = want.iter().map(Vec::len).sum();
        // flowmark's PMD transmits asynchronously: wait for its count.
        let deadline = Instant::now() + DEADLINE;
        while fm.tx_attempted() < attempted + n as u64 {
            assert!(Instant::now() < deadline, "{what}: {n} frames sent");
            std::thread::sleep(Duration::from_millis(20));
        }
        let got = fm.take_frames();
        let show = |f: &[Vec<Vec<u8>>; 3]| {
            f.iter()
                .enumerate()
                .map(|(i, fs)| {
                    format!(
                        "  port {}: {:?}",
                        i + 1,
                        fs.iter().map(|x| hex(x)).collect::<Vec<_>>()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            got,
            want,
            "{what}\nflowmark:\n{}\nOpen vSwitch:\n{}",
            show(&got),
            show(&want)
        );
        attempted += n as u64;
        assert_eq!(fm.tx_attempted(), attempted, "{what}: nothing more sent");
    }
    assert!(attempted > 20, "the matrix sent frames ({attempted})");
    // Port counters: flowmark's tx packets and bytes are Open vSwitch's.
    let (fm_ports, ovs_ports) = (dump_ports(&fm.target), dump_ports(&ovs.target));
    for p in 1..=3u32 {
        let (f, o) = (fm_ports.get(&p), ovs_ports.get(&p));
        assert_eq!(
            f.map(|c| (c[2], c[3])),
            o.map(|c| (c[2], c[3])),
            "tx pkts, bytes of port {p}: flowmark {fm_ports:?}, OVS {ovs_ports:?}"
        );
        assert!(f.is_some_and(|c| c[3] > 0), "port {p} sent bytes");
    }
    daemon::check_accounting(&fm.port_stats());
}

/// LOCAL, groups that do not exist and unknown buffers are refused with the OpenFlow error
/// Open vSwitch would name, nothing is sent, and the switch keeps serving.
#[test]
fn refused_packet_outs_send_nothing() {
    if !test_env::oracle("ovs-ofctl", "--version", "openvswitch-common") {
        return;
    }
    let fm = Flowmark::start();
    let frame = hex(&arp_request());
    for (actions, error) in [
        ("output:1,local", "OFPBAC_BAD_OUT_PORT"),
        ("output:1,group:1", "OFPBAC_BAD_OUT_GROUP"),
        ("set_field:5->vlan_vid,output:1", "OFPBAC_BAD_SET_ARGUMENT"),
    ] {
        let po = format!("in_port=controller packet={frame} actions={actions}");
        let out = ofctl(&fm.target, &["packet-out", &po]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{po} refused");
        assert!(err.contains(error), "{po}: {err}");
    }
    // The configured datapath id; every port up (LIVE, not PORT_DOWN).
    let show = ofctl_ok(&fm.target, &["show"]);
    assert!(show.contains("dpid:0000000000000014"), "{show}");
    assert!(show.contains("n_buffers:0"), "{show}");
    let desc = ofctl_ok(&fm.target, &["dump-ports-desc"]);
    assert_eq!(desc.matches("state:      LIVE").count(), 3, "{desc}");
    assert_eq!(desc.matches("config:     0").count(), 3, "{desc}");
    // The same connection-level service goes on: a good one goes out.
    ofctl_ok(
        &fm.target,
        &[
            "packet-out",
            &format!("in_port=controller packet={frame} actions=output:2"),
        ],
    );
    let deadline = Instant::now() + DEADLINE;
    while fm.tx_attempted() < 1 {
        assert!(Instant::now() < deadline, "the good packet-out is sent");
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = fm.take_frames();
    assert_eq!(got, [vec![], vec![arp_request()], vec![]]);
    assert_eq!(fm.tx_attempted(), 1, "nothing of the refused ones went out");
}

/// `ovs-ofctl -O OpenFlow13 monitor TARGET MISS_SEND_LEN`: every line it
/// prints, from both of its streams.
struct Monitor {
    _child: daemon::KillOnDrop,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Monitor {
    fn start(fm: &Flowmark, miss_send_len: u16) -> Monitor {
        let mut child = daemon::KillOnDrop(
            // Line-buffered: ovs-ofctl's stdio buffers a pipe fully.
            Command::new("stdbuf")
                .args(["-oL", "ovs-ofctl", "-O", "OpenFlow13"])
                // Its control socket would go under /var/run/openvswitch.
                .arg(format!(
                    "--unixctl={}",
                    fm.dir
                        .join(format!("monitor-{miss_send_len}.ctl"))
                        .display()
                ))
                .args(["monitor", &fm.target, &miss_send_len.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("ovs-ofctl monitor starts"),
        );
        let lines = daemon::lines_of(&mut child.0);
        Monitor {
            _child: child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing every one of `parts` (None at the
    /// deadline); lines seen are kept for the failure message.
    fn wait_for(&mut self, parts: &[&str], deadline: Instant) -> Option<String> {
        loop {
            if let Some(l) = self
                .seen
                .iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return Some(l.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if let Ok(l) = self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                self.seen.push(l);
            }
        }
    }

    fn transcript(&self) -> String {
        self.seen.join("\n")
    }
}

/// `name=VALUE` in a monitor line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    line[at..].split([' ', ',']).next()
}

fn udp_to(port: u16, payload_len: usize) -> Vec<u8> {
    build::udp4(
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 2),
        1234,
        port,
        &vec![0x5a; payload_len],
    )
}

/// PACKET_IN with reason ACTION (cut to the action's max_len) and NO_MATCH
/// (a table-miss rule: the whole frame with miss_send_len 65535), and
/// FLOW_REMOVED for idle timeout, hard timeout, delete and group delete, with their
/// packet and byte counts (mark-path packets included), as `ovs-ofctl
/// monitor` prints them.
#[test]
fn monitor_sees_packet_ins_and_flow_removed() {
    if !test_env::oracle("ovs-ofctl", "--version", "openvswitch-common") {
        return;
    }
    let fm = Flowmark::start();
    let mut mon = Monitor::start(&fm, 65535);
    let deadline = Instant::now() + DEADLINE;
    // The monitor is registered once a packet-out's controller copy shows.
    let probe = hex(&arp_request());
    loop {
        ofctl_ok(
            &fm.target,
            &[
                "packet-out",
                &format!("in_port=controller packet={probe} actions=controller"),
            ],
        );
        if mon
            .wait_for(
                &["PACKET_IN", "via action"],
                Instant::now() + Duration::from_millis(300),
            )
            .is_some()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the monitor never saw a PACKET_IN:\n{}",
            mon.transcript()
        );
    }

    // A new port is announced up.
    fm.cli(&["port", "add", "vm1", "--type", "testbed-vm"]);
    mon.wait_for(&["PORT_STATUS", "ADD", "vm1"], deadline)
        .unwrap_or_else(|| panic!("PORT_STATUS for vm1:\n{}", mon.transcript()));
    let live = mon
        .wait_for(&["state:", "LIVE"], deadline)
        .unwrap_or_else(|| panic!("vm1 announced LIVE:\n{}", mon.transcript()));
    assert!(!live.contains("LINK_DOWN"), "{live}");
    for flow in [
        "priority=0,actions=controller:65535",
        "priority=20,in_port=1,udp,tp_dst=2000,actions=controller:50",
        "send_flow_rem,priority=30,in_port=1,udp,tp_dst=3003,cookie=0x77,actions=output:2",
    ] {
        ofctl_ok(&fm.target, &["add-flow", flow]);
    }
    let inject = |frames: &[Vec<u8>], name: &str| {
        let path = fm.dir.join(format!("{name}.pcap"));
        testbed::pcap::write_file(&path, Duration::ZERO, frames.iter().map(Vec::as_slice))
            .expect("pcap written");
        fm.cli(&[
            "port",
            "inject",
            "nic0",
            "--pcap",
            path.to_str().expect("utf-8"),
        ]);
    };
    let action_frame = udp_to(2000, 100);
    let miss_frame = udp_to(2500, 80);
    inject(&[action_frame.clone(), miss_frame.clone()], "punts");
    let action = mon
        .wait_for(&["PACKET_IN", "via action", "in_port=1"], deadline)
        .unwrap_or_else(|| panic!("a PACKET_IN with reason action:\n{}", mon.transcript()));
    assert_eq!(
        field(&action, "total_len"),
        Some(action_frame.len().to_string().as_str()),
        "{action}"
    );
    assert_eq!(
        field(&action, "data_len"),
        Some("50"),
        "cut to max_len: {action}"
    );
    let miss = mon
        .wait_for(&["PACKET_IN", "via no_match", "in_port=1"], deadline)
        .unwrap_or_else(|| panic!("a PACKET_IN with reason no_match:\n{}", mon.transcript()));
    let whole = miss_frame.len().to_string();
    assert_eq!(field(&miss, "total_len"), Some(whole.as_str()), "{miss}");
    assert_eq!(field(&miss, "data_len"), Some(whole.as_str()), "{miss}");

    // Traffic for the delete case in two rounds: the second one takes the
    // NIC's mark path once the megaflow is offloaded.
    let del_frame = udp_to(3003, 58);
    inject(&vec![del_frame.clone(); 40], "delete-1");
    let offloaded = Instant::now() + DEADLINE;
    loop {
        let mf = fm.cli(&["megaflow", "dump", "--state", "offloaded"]);
        if mf.to_string().contains("3003") {
            break;
        }
        assert!(
            Instant::now() < offloaded,
            "the tp_dst=3003 megaflow is offloaded: {mf}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let marks_before = fm.cli(&["pmd", "stats"]);
    inject(&vec![del_frame.clone(); 60], "delete-2");
    // Counted on the rule before it goes.
    let counted = Instant::now() + DEADLINE;
    while !ofctl_ok(&fm.target, &["dump-flows", "udp,tp_dst=3003"]).contains("n_packets=100") {
        assert!(
            Instant::now() < counted,
            "100 packets counted on tp_dst=3003"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let marks_after = fm.cli(&["pmd", "stats"]);
    let mark_hits = |v: &Value| -> u64 {
        v.as_array().map_or(0, |a| {
            a.iter().filter_map(|p| p["mark_hits"].as_u64()).sum()
        })
    };
    assert!(
        mark_hits(&marks_after) > mark_hits(&marks_before),
        "some packets took the mark path: {marks_before} -> {marks_after}"
    );
    ofctl_ok(&fm.target, &["del-flows", "udp,tp_dst=3003"]);
    let deleted = mon
        .wait_for(&["FLOW_REMOVED", "tp_dst=3003"], deadline)
        .unwrap_or_else(|| panic!("FLOW_REMOVED for the delete:\n{}", mon.transcript()));
    assert!(deleted.contains("reason=delete"), "{deleted}");
    assert!(
        deleted.contains("cookie:0x77") || deleted.contains("cookie=0x77"),
        "{deleted}"
    );
    let bytes = (100 * del_frame.len()).to_string();
    assert!(deleted.contains("pkts100"), "{deleted}");
    assert!(deleted.contains(&format!("bytes{bytes}")), "{deleted}");

    // In a bundle: a delete is announced, an add replacing a rule is not.
    let bundle = |args: &[&str]| {
        let out = output(
            Command::new("ovs-ofctl")
                .args([
                    "-O",
                    "OpenFlow13",
                    "--timeout=10",
                    "--bundle",
                    args[0],
                    &fm.target,
                ])
                .args(&args[1..]),
        );
        assert!(
            out.status.success(),
            "ovs-ofctl --bundle {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let kept = "send_flow_rem,priority=30,in_port=1,udp,tp_dst=3006,actions=output:2";
    ofctl_ok(&fm.target, &["add-flow", kept]);
    ofctl_ok(
        &fm.target,
        &[
            "add-flow",
            "send_flow_rem,priority=30,in_port=1,udp,tp_dst=3005,actions=output:2",
        ],
    );
    bundle(&["add-flow", kept]);
    bundle(&["del-flows", "udp,tp_dst=3005"]);
    let in_bundle = mon
        .wait_for(&["FLOW_REMOVED", "tp_dst=3005"], deadline)
        .unwrap_or_else(|| panic!("FLOW_REMOVED for a bundle's delete:\n{}", mon.transcript()));
    assert!(in_bundle.contains("reason=delete"), "{in_bundle}");
    assert!(
        mon.wait_for(&["FLOW_REMOVED", "tp_dst=3006"], Instant::now())
            .is_none(),
        "a rule replaced in a bundle is not announced:\n{}",
        mon.transcript()
    );

    // Deleting a group takes the flow that names it: reason group_delete.
    ofctl_ok(
        &fm.target,
        &["add-group", "group_id=7,type=all,bucket=output:2"],
    );
    ofctl_ok(
        &fm.target,
        &[
            "add-flow",
            "send_flow_rem,priority=30,in_port=1,udp,tp_dst=3007,actions=group:7",
        ],
    );
    ofctl_ok(&fm.target, &["del-groups", "group_id=7"]);
    let by_group = mon
        .wait_for(&["FLOW_REMOVED", "tp_dst=3007"], deadline)
        .unwrap_or_else(|| panic!("FLOW_REMOVED for a group's delete:\n{}", mon.transcript()));
    assert!(by_group.contains("reason=group_delete"), "{by_group}");

    // Idle: one packet, then silence; hard: traffic does not keep it. The
    // rules are added just before their packet, with timeouts long enough
    // for the packet to be counted first on a loaded machine.
    for flow in [
        "send_flow_rem,priority=30,in_port=1,udp,tp_dst=3001,idle_timeout=3,actions=output:2",
        "send_flow_rem,priority=30,in_port=1,udp,tp_dst=3002,hard_timeout=4,actions=output:2",
        // Not announced: no send_flow_rem.
        "priority=30,in_port=1,udp,tp_dst=3004,idle_timeout=3,actions=output:2",
    ] {
        ofctl_ok(&fm.target, &["add-flow", flow]);
    }
    let timeouts = [udp_to(3001, 10), udp_to(3002, 10), udp_to(3004, 10)];
    inject(&timeouts, "timeouts");
    // Port 1 received every injected byte (dump-ports rx bytes).
    let rx_bytes = (action_frame.len()
        + miss_frame.len()
        + 100 * del_frame.len()
        + timeouts.iter().map(Vec::len).sum::<usize>()) as u64;
    let counted = Instant::now() + DEADLINE;
    loop {
        let ports = dump_ports(&fm.target);
        let got = ports.get(&1).map(|c| (c[0], c[1]));
        if got == Some((105, rx_bytes)) {
            break;
        }
        assert!(
            Instant::now() < counted,
            "port 1 rx pkts/bytes {got:?}, want (105, {rx_bytes})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let idle = mon
        .wait_for(&["FLOW_REMOVED", "tp_dst=3001"], deadline)
        .unwrap_or_else(|| panic!("FLOW_REMOVED for the idle timeout:\n{}", mon.transcript()));
    assert!(idle.contains("reason=idle"), "{idle}");
    assert!(idle.contains("pkts1 "), "{idle}");
    let hard = mon
        .wait_for(&["FLOW_REMOVED", "tp_dst=3002"], deadline)
        .unwrap_or_else(|| panic!("FLOW_REMOVED for the hard timeout:\n{}", mon.transcript()));
    assert!(hard.contains("reason=hard"), "{hard}");
    assert!(hard.contains("pkts1 "), "{hard}");
    // The rule without send_flow_rem went too, silently.
    let gone = Instant::now() + DEADLINE;
    while ofctl_ok(&fm.target, &["dump-flows"]).contains("tp_dst=3004") {
        assert!(
            Instant::now() < gone,
            "the idle rule without send_flow_rem expires"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        mon.wait_for(&["FLOW_REMOVED", "tp_dst=3004"], Instant::now())
            .is_none(),
        "no FLOW_REMOVED without send_flow_rem:\n{}",
        mon.transcript()
    );
}

/// The OpenFlow 1.3 pipeline as controllers use it: goto_table, the action
/// set (write_actions, clear_actions, run when the pipeline ends), apply
/// actions before a goto, write_metadata and a metadata match. The same rules go into flowmark and Open vSwitch;
/// packet-outs to TABLE must leave both with the same frames, and
/// dump-flows shows the instructions as Open vSwitch does.
#[test]
fn of13_pipeline_matches_open_vswitch() {
    if !have_oracles() {
        return;
    }
    let ovs_dir = tempfile::tempdir().expect("tempdir");
    let fm = Flowmark::start();
    let mut ovs = Ovs::start(ovs_dir.path());
    let flows = [
        "table=0,priority=10,udp,actions=write_actions(output:3),goto_table:1",
        "table=0,priority=5,arp,actions=push_vlan:0x8100,set_field:4196->vlan_vid,goto_table:2",
        "table=1,priority=10,udp,tp_dst=5678,actions=write_actions(set_field:10.9.9.9->ip_src),goto_table:2",
        "table=1,priority=10,udp,tp_dst=1111,actions=output:1,clear_actions",
        "table=1,priority=10,udp,tp_dst=3333,actions=output:1,write_actions(output:2)",
        "table=2,priority=1,actions=write_actions(output:2)",
        "table=0,priority=20,udp,tp_dst=4444,actions=write_metadata:0x5/0xff,goto_table:1",
        "table=1,priority=20,metadata=0x5/0xff,udp,actions=output:3",
        "table=1,priority=30,metadata=0x6/0xff,udp,actions=output:1",
        "table=1,priority=20,metadata=0x1234,udp,actions=output:1",
    ];
    for t in [&fm.target, &ovs.target] {
        for f in flows {
            ofctl_ok(t, &["add-flow", f]);
        }
    }
    // Each rule as dump-flows prints it, counters and ages left out.
    let actions_of = |dump: &str| -> Vec<String> {
        let mut v: Vec<String> = dump
            .lines()
            .filter(|l| l.contains("actions="))
            .map(|l| {
                l.trim()
                    .split(", ")
                    .filter(|kv| {
                        !["cookie=", "duration=", "n_packets=", "n_bytes="]
                            .iter()
                            .any(|p| kv.starts_with(p))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        actions_of(&ofctl_ok(&fm.target, &["dump-flows"])),
        actions_of(&ofctl_ok(&ovs.target, &["dump-flows"])),
        "dump-flows shows the instructions as Open vSwitch does"
    );
    let mut attempted = fm.tx_attempted();
    for (what, frame) in [
        ("udp 5678: output replaced, ip_src set", udp_to(5678, 20)),
        ("udp 1111: cleared, apply output only", udp_to(1111, 20)),
        ("udp 3333: apply then the set's output", udp_to(3333, 20)),
        ("udp 2222: a miss in table 1", udp_to(2222, 20)),
        (
            "udp 4444: write_metadata, matched in table 1",
            udp_to(4444, 20),
        ),
        ("arp: tag pushed, then table 2's set", arp_request()),
    ] {
        let po = format!("in_port=controller packet={} actions=table", hex(&frame));
        ofctl_ok(&ovs.target, &["packet-out", &po]);
        ofctl_ok(&fm.target, &["packet-out", &po]);
        let want = ovs.take_frames();
        let n: u64 = want.iter().map(|f| f.len() as u64).sum();
        let deadline = Instant::now() + DEADLINE;
        while fm.tx_attempted() < attempted + n {
            assert!(Instant::now() < deadline, "{what}: {n} frames sent");
            std::thread::sleep(Duration::from_millis(20));
        }
        let got = fm.take_frames();
        assert_eq!(got, want, "{what}");
        attempted += n;
        assert_eq!(fm.tx_attempted(), attempted, "{what}: nothing more sent");
    }
}

// ---------------------------------------------------------------------------
// Received traffic against Open vSwitch: random rule sets, random frames.

/// One random rule of `table` (tables 0..3), in ovs-ofctl's syntax: a
/// match over the fields the frames below vary, and actions that rewrite,
/// tag, untag, output (several ports, `in_port`), continue in a later table
/// (`goto_table`, `resubmit`) or drop.
fn random_rule(rng: &mut testbed::traffic::Rng, table: u8, priority: u16) -> String {
    let mut m = vec![format!("table={table}"), format!("priority={priority}")];
    let l4 = rng.pick(&[
        "", "ip", "udp", "tcp", "icmp", "arp", "ipv6", "udp6", "icmp6",
    ]);
    if !l4.is_empty() {
        m.push(l4.to_string());
    }
    if rng.chance(25) {
        m.push("in_port=1".to_string());
    }
    if rng.chance(25) {
        m.push(format!("dl_dst={}", rng.pick(&MACS)));
    }
    if rng.chance(15) {
        m.push(format!(
            "dl_src=02:00:00:00:00:0{}/ff:ff:ff:ff:ff:fe",
            rng.below(4) * 2
        ));
    }
    // At most two tags ever: Open vSwitch tracks two, and a third push
    // drops the innermost there. Tags are pushed only on untagged frames
    // (the frames come with at most one).
    let (mut tagged, mut untagged) = (false, false);
    match rng.below(6) {
        0 => {
            m.push(format!("dl_vlan={}", rng.pick(&[10u16, 20])));
            tagged = true;
        }
        1 => {
            m.push("vlan_tci=0x0000/0x1000".to_string());
            untagged = true;
        }
        _ => {}
    }
    let ipv4 = matches!(l4, "ip" | "udp" | "tcp" | "icmp");
    if ipv4 {
        if rng.chance(40) {
            m.push(format!(
                "nw_src=10.0.{}.0/{}",
                rng.below(2),
                rng.pick(&[16u8, 24, 25])
            ));
        }
        if rng.chance(40) {
            m.push(format!("nw_dst=10.1.0.{}", rng.below(4)));
        }
        if rng.chance(15) {
            m.push(format!("ip_dscp={}", rng.pick(&[0u8, 46])));
        }
    }
    if matches!(l4, "udp" | "tcp" | "udp6") {
        if rng.chance(40) {
            m.push(format!("tp_dst={}", rng.pick(&[53u16, 80, 443])));
        }
        if rng.chance(25) {
            m.push("tp_src=0x1000/0xf000".to_string());
        }
    }
    if l4 == "arp" {
        if rng.chance(40) {
            m.push(format!("arp_tpa=10.1.0.{}", rng.below(4)));
        }
        if rng.chance(20) {
            m.push(format!("arp_op={}", 1 + rng.below(2)));
        }
        if rng.chance(20) {
            m.push("arp_spa=10.0.1.0/24".to_string());
        }
    }
    if l4 == "tcp" && rng.chance(25) {
        m.push(
            rng.pick(&["tcp_flags=+ack", "tcp_flags=-syn", "tcp_flags=+syn"])
                .to_string(),
        );
    }
    if l4 == "icmp" && rng.chance(30) {
        m.push(format!("icmp_type={}", rng.pick(&[0u8, 8])));
    }
    let ipv6 = matches!(l4, "ipv6" | "udp6" | "icmp6");
    if l4 == "icmp6" && rng.chance(40) {
        m.push(format!("icmpv6_type={}", rng.pick(&[128u8, 135])));
    }
    if ipv6 && rng.chance(30) {
        m.push(
            rng.pick(&[
                "ipv6_src=fd00::/64",
                "ipv6_dst=fd00::2",
                "ipv6_dst=fd00::3/127",
            ])
            .to_string(),
        );
    }
    if ipv4 && rng.chance(10) {
        m.push(format!("nw_ttl={}", rng.pick(&[1u8, 63, 64])));
    }
    // (A later fragment has no L4 header: no nw_frag beside L4 matches.)
    if matches!(l4, "ip" | "ipv6") && rng.chance(30) {
        m.push(
            rng.pick(&[
                "nw_frag=no",
                "nw_frag=yes",
                "nw_frag=first",
                "nw_frag=later",
                "nw_frag=not_later",
                "ip_ecn=1",
                "nw_tos=0",
            ])
            .to_string(),
        );
    }
    if l4 == "icmp" && rng.chance(15) {
        m.push("icmp_code=0".to_string());
    }
    if l4 == "arp" && rng.chance(15) {
        m.push(
            rng.pick(&["arp_sha=02:00:00:00:00:01", "arp_tha=00:00:00:00:00:00"])
                .to_string(),
        );
    }
    if rng.chance(5) {
        m.push(
            rng.pick(&[
                "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00",
                "vlan_tci=0x1000/0x1000",
            ])
            .to_string(),
        );
    }
    if tagged && rng.chance(20) {
        m.push("dl_vlan_pcp=1".to_string());
    }
    if table > 0 && rng.chance(15) {
        m.push("metadata=0x5/0xff".to_string());
    }
    // Instructions in the order OpenFlow 1.3 has them: apply actions,
    // clear_actions, write_actions, write_metadata, goto_table.
    let mut actions = Vec::new();
    for _ in 0..rng.below(3) {
        let a = match rng.below(18) {
            0 => format!("mod_dl_src:{}", rng.pick(&MACS)),
            1 if ipv4 => format!("mod_nw_dst:10.9.0.{}", rng.below(4)),
            2 if ipv4 => "dec_ttl".to_string(),
            3 if matches!(l4, "udp" | "tcp") => format!("mod_tp_dst:{}", rng.pick(&[8080u16, 53])),
            // Without a tag matched, OpenFlow 1.3's mod_vlan_vid pushes one.
            4 if tagged => format!("mod_vlan_vid:{}", rng.pick(&[10u16, 30])),
            // OpenFlow 1.3 pops only a tag the rule matched.
            5 if tagged => {
                tagged = false;
                "strip_vlan".to_string()
            }
            6 if untagged => {
                untagged = false;
                "push_vlan:0x8100,set_field:4126->vlan_vid".to_string()
            }
            7 if ipv4 => "mod_nw_src:10.8.0.1".to_string(),
            8 if ipv4 => "mod_nw_tos:32".to_string(),
            9 if matches!(l4, "udp" | "tcp") => "mod_tp_src:1111".to_string(),
            10 if ipv6 => "set_field:fd00::9->ipv6_dst".to_string(),
            11 => format!("mod_dl_dst:{}", rng.pick(&MACS)),
            12 => rng.pick(&["output:all", "flood", "normal"]).to_string(),
            13 if ipv4 || ipv6 => "mod_nw_ttl:9".to_string(),
            14 if ipv4 || ipv6 => rng
                .pick(&["mod_nw_ecn:1", "set_field:3->ip_ecn"])
                .to_string(),
            15 if tagged => format!("mod_vlan_pcp:{}", rng.pick(&[0u8, 5])),
            16 => format!("group:{}", 1 + rng.below(GROUPS.len() as u64)),
            _ => format!("output:{}", rng.pick(&["1", "2", "3", "in_port"])),
        };
        actions.push(a);
    }
    let next = match rng.below(5) {
        0 if table < 2 => Some(table + 1 + rng.below(2 - u64::from(table)) as u8),
        1 if table < 2 => {
            actions.push(format!("resubmit(,{})", table + 1));
            None
        }
        2 => None,
        _ => {
            actions.push(format!("output:{}", rng.pick(&["2", "3", "in_port"])));
            None
        }
    };
    if rng.chance(10) {
        actions.push("clear_actions".to_string());
    }
    if rng.chance(20) {
        actions.push(format!(
            "write_actions({})",
            rng.pick(&["output:2", "output:3", "group:1", "group:3"])
        ));
    }
    if let Some(t) = next {
        if rng.chance(30) {
            actions.push("write_metadata:0x5/0xff".to_string());
        }
        actions.push(format!("goto_table:{t}"));
    }
    // Now and then a meter instruction (first, as OpenFlow 1.3 orders
    // them), through a meter too fast to drop anything here.
    if !actions.is_empty() && rng.chance(12) {
        actions.insert(0, "meter:1".to_string());
    }
    if actions.is_empty() {
        actions.push("drop".to_string());
    }
    format!("{},actions={}", m.join(","), actions.join(","))
}

const MACS: [&str; 3] = [
    "02:00:00:00:00:01",
    "02:00:00:00:00:02",
    "ff:ff:ff:ff:ff:ff",
];

/// A random frame over the values the rules match.
fn random_frame(rng: &mut testbed::traffic::Rng) -> Vec<u8> {
    use std::net::Ipv6Addr;
    let mac = |s: &str| -> [u8; 6] {
        let mut b = [0u8; 6];
        for (i, p) in s.split(':').enumerate() {
            b[i] = u8::from_str_radix(p, 16).expect("mac");
        }
        b
    };
    let dst = mac(rng.pick(&MACS));
    // Sometimes a destination's MAC: NORMAL learns a frame's source before
    // it looks the destination up, so a frame to itself is dropped.
    let src = [2, 0, 0, 0, 0, rng.below(8) as u8];
    let ip_src = Ipv4Addr::new(10, 0, rng.below(2) as u8, rng.below(200) as u8);
    let ip_dst = Ipv4Addr::new(10, 1, 0, rng.below(5) as u8);
    let sport = rng.pick(&[0x1234u16, 0x2345, 4096]);
    let dport = rng.pick(&[53u16, 80, 443, 9999]);
    let payload = [0x5a; 8];
    // IPv4 headers now and then with TTL 1, a fragment offset or flag, or
    // options. No later fragment of TCP or UDP: Open vSwitch rewrites the
    // bytes where their header would be (ports, and checksums after an
    // address change) in the fragment's payload; flowmark leaves a later
    // fragment's payload alone.
    let v4 = |rng: &mut testbed::traffic::Rng, proto: u8| {
        let mut h = build::Ipv4Header::new(ip_src, ip_dst, proto);
        match rng.below(12) {
            0 => h.ttl = 1,
            1 => h.flags_frag = 0x2000,
            2 if !matches!(proto, 6 | 17) => h.flags_frag = 100,
            3 => h.options = vec![1, 1, 1, 0],
            4 => h.tos = 46 << 2,
            5 => h.tos = 1,
            _ => {}
        }
        h
    };
    let v6 = |next: u8| {
        build::Ipv6Header::new(
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
            next,
        )
    };
    let l3 = match rng.below(9) {
        0 | 1 => {
            let h = v4(rng, 17);
            (
                0x0800,
                build::ipv4(&h, &build::udp(h.pseudo(), sport, dport, &payload)),
            )
        }
        2 => {
            let h = v4(rng, 6);
            let flags = rng.pick(&[0x10u16, 0x02, 0x12, 0x11, 0x04]);
            (
                0x0800,
                build::ipv4(
                    &h,
                    &build::tcp(h.pseudo(), sport, dport, flags, &[], &payload),
                ),
            )
        }
        3 => {
            let h = v4(rng, 1);
            let ty = rng.pick(&[8u8, 0, 3]);
            (0x0800, build::ipv4(&h, &build::icmp(ty, 0, &[0, 1, 0, 1])))
        }
        4 => {
            let op = 1 + rng.below(2) as u16;
            (0x0806, build::arp(op, src, ip_src, [0; 6], ip_dst))
        }
        5 => {
            let h = v6(17);
            (
                0x86dd,
                build::ipv6(&h, &build::udp(h.pseudo(), sport, dport, &payload)),
            )
        }
        6 => {
            // IPv6 with a hop-by-hop header, or a fragment header.
            let udp = build::udp(v6(17).pseudo(), sport, dport, &payload);
            let (next, mut body) = if rng.chance(50) {
                (0u8, build::ipv6_ext(0, 17))
            } else {
                (
                    44u8,
                    build::ipv6_frag(17, rng.below(2) as u16 * 10, true, 7),
                )
            };
            body.extend_from_slice(&udp);
            (0x86dd, build::ipv6(&v6(next), &body))
        }
        // An 802.3 length field instead of an ethertype, and an unknown type.
        7 if rng.chance(50) => (rng.pick(&[0x0040u16, 0x88b5]), vec![0xaa; 64]),
        // ICMPv6: echo request, or a neighbor solicitation with its option.
        7 => {
            let h = v6(58);
            let (ty, rest) = if rng.chance(50) {
                (128u8, vec![0, 1, 0, 1])
            } else {
                let mut ns = vec![0u8; 4];
                ns.extend_from_slice(&Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets());
                ns.extend_from_slice(&[1, 1, 2, 0, 0, 0, 0, 1]);
                (135u8, ns)
            };
            (
                0x86dd,
                build::ipv6(&h, &build::icmpv6(h.pseudo(), ty, 0, &rest)),
            )
        }
        _ => {
            let h = v4(rng, 47);
            (0x0800, build::ipv4(&h, &[0u8; 8]))
        }
    };
    let mut frame = build::ethernet(dst, src, l3.0, &l3.1);
    frame = match rng.below(6) {
        0 => build::push_tag(&frame, 0x8100, 10),
        1 => build::push_tag(&frame, 0x8100, 0x2014),
        2 if rng.chance(30) => build::push_tag(&build::push_tag(&frame, 0x8100, 10), 0x88a8, 20),
        3 if rng.chance(30) => build::push_tag(&frame, 0x88a8, 10),
        _ => frame,
    };
    // Now and then cut short: headers end early.
    if rng.chance(5) {
        let keep = 14 + rng.below(frame.len() as u64 - 14) as usize;
        frame.truncate(keep);
    }
    frame
}

/// The groups every case of the differential test has (its rules name them
/// by number): each bucket a copy (with a rewrite or a pushed tag undone for
/// the next), one bucket, the first live bucket of a port that does not
/// exist and one that does. Select groups are not among them: Open
/// vSwitch's default selection hashes in the datapath (dp_hash), which
/// picks other buckets than flowmark's hash.
const GROUPS: [&str; 4] = [
    "group_id=1,type=all,bucket=mod_dl_dst:02:00:00:00:00:0b,output:2,bucket=output:3",
    "group_id=2,type=indirect,bucket=mod_dl_src:02:00:00:00:00:0c,output:1",
    "group_id=3,type=ff,bucket=watch_port:9,actions=output:1,bucket=watch_port:3,actions=output:3",
    "group_id=4,type=all,bucket=push_vlan:0x8100,set_field:4106->vlan_vid,output:2,bucket=output:1,bucket=output:3",
];

/// The meter rules of the differential test may name: a million packets a
/// second, so that neither switch drops (which packet of a burst a meter
/// lets through depends on each switch's order of processing).
const METER: &str = "meter=1,pktps,band=type=drop,rate=1000000";

/// Random rule sets over three tables and random frames received on port
/// 1, into flowmark (its datapath: upcalls, megaflows, EMC and dpcls, the
/// emulated NIC's marks on the second round) and into Open vSwitch's dummy
/// datapath: every port sends the same frames.
#[test]
fn received_traffic_matches_open_vswitch_on_random_rule_sets() {
    if !have_oracles() {
        return;
    }
    let ovs_dir = tempfile::tempdir().expect("tempdir");
    let fm = Flowmark::start();
    let mut ovs = Ovs::start(ovs_dir.path());
    let ovs_ctl = ovs.dir.join("run").join("ovs-vswitchd.ctl");
    // FLOWMARK_SEED=N replays one failing case.
    let seeds = match std::env::var("FLOWMARK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => seed..seed + 1,
        None => 0..u64::from(test_env::cases(8)),
    };
    for seed in seeds {
        let mut rng = testbed::traffic::Rng::new(0xf10e_0000 + seed);
        let mut rules = Vec::new();
        for table in 0..3u8 {
            let n = 2 + rng.below(5) as u16;
            // Distinct priorities: no two rules of a table tie.
            let mut prios: Vec<u16> = (1..=20).map(|p| p * 10).collect();
            for i in 0..n {
                let j = i as usize + rng.below((prios.len() - i as usize) as u64) as usize;
                prios.swap(i as usize, j);
                rules.push(random_rule(&mut rng, table, prios[i as usize]));
            }
        }
        let file = ovs_dir.path().join(format!("rules{seed}.txt"));
        std::fs::write(&file, rules.join("\n") + "\n").expect("write rules");
        for t in [&fm.target, &ovs.target] {
            ofctl_ok(t, &["del-flows"]);
            ofctl_ok(t, &["del-groups"]);
            ofctl_ok(t, &["del-meters"]);
            for g in GROUPS {
                ofctl_ok(t, &["add-group", g]);
            }
            ofctl_ok(t, &["add-meter", METER]);
            ofctl_ok(t, &["add-flows", file.to_str().expect("path")]);
        }
        // Some cases run with a port configured by PORT_MOD: an output
        // port that does not forward, or the ingress port that does not
        // receive. Both switches must then drop the same frames.
        let port_mod = match rng.below(8) {
            0 => Some(("2", "no-forward", "forward")),
            1 => Some(("3", "no-forward", "forward")),
            2 => Some(("1", "no-receive", "receive")),
            _ => None,
        };
        if let Some((port, set, _)) = port_mod {
            for t in [&fm.target, &ovs.target] {
                ofctl_ok(t, &["mod-port", port, set]);
            }
        }
        // Both answer the barrier before their megaflows are revalidated;
        // wait for that, or the first frames may meet the last case's.
        // Open vSwitch's datapath is emptied instead: after revalidation it
        // was seen to keep flooding, for two rounds, a frame no new rule
        // matched (a NORMAL megaflow of an earlier case).
        run(Command::new("ovs-appctl")
            .arg("-t")
            .arg(&ovs_ctl)
            .arg("revalidator/purge"));
        // A CLI flow change returns once the revalidator has handled every
        // change before it; this one deletes nothing (no rule in table 253).
        fm.cli(&["flow", "del", "table=253"]);
        let frames: Vec<Vec<u8>> = (0..24).map(|_| random_frame(&mut rng)).collect();
        let pcap = ovs_dir.path().join(format!("frames{seed}.pcap"));
        testbed::pcap::write_file(&pcap, Duration::ZERO, frames.iter().map(|f| f.as_slice()))
            .expect("pcap");
        // Twice: the second round meets flowmark's caches and marks. A
        // round that differs is replayed once and must then agree: Open
        // vSwitch's dummy datapath has been seen to lose a frame about
        // once in a few hundred rounds, while a difference in forwarding
        // repeats.
        let mut replayed = false;
        let mut round = 0;
        while round < 2 {
            fm.d.inject_pcap("nic0", &pcap);
            let mut cmd = Command::new("ovs-appctl");
            cmd.arg("-t")
                .arg(&ovs_ctl)
                .args(["netdev-dummy/receive", "p1"]);
            for f in &frames {
                cmd.arg(hex(f));
            }
            run(&mut cmd);
            // Per port, as multisets: neither switch keeps the arrival
            // order across flows (Open vSwitch sends a burst's upcalled
            // packets before its cache hits; flowmark runs a burst's
            // direct route first), only within one flow.
            let sorted = |mut ports: [Vec<Vec<u8>>; 3]| {
                for p in &mut ports {
                    p.sort();
                }
                ports
            };
            let want = sorted(wait_frames(|| ovs.take_frames()));
            let got = sorted(wait_frames(|| fm.take_frames()));
            if got != want {
                let mut diff = String::new();
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    for f in g.iter().filter(|f| !w.contains(f)) {
                        diff += &format!("port {}: flowmark only {}\n", i + 1, hex(f));
                    }
                    for f in w.iter().filter(|f| !g.contains(f)) {
                        diff += &format!("port {}: Open vSwitch only {}\n", i + 1, hex(f));
                    }
                    if g.len() != w.len() {
                        diff += &format!(
                            "port {}: {} frames, Open vSwitch {}\n",
                            i + 1,
                            g.len(),
                            w.len()
                        );
                    }
                }
                if !replayed {
                    eprintln!("seed {seed}, round {round}: replayed once after\n{diff}");
                    replayed = true;
                    continue;
                }
                let coverage = run(Command::new("ovs-appctl")
                    .arg("-t")
                    .arg(&ovs_ctl)
                    .arg("coverage/show"));
                let drops: Vec<&str> = coverage
                    .lines()
                    .filter(|l| l.contains("drop") || l.contains("upcall") || l.contains("fail"))
                    .collect();
                panic!(
                    "seed {seed}, round {round}:\n{diff}Open vSwitch ports {:?}\nits coverage\n{}\nrules\n{}\nframes\n{}",
                    dump_ports(&ovs.target),
                    drops.join("\n"),
                    rules.join("\n"),
                    frames.iter().map(|f| hex(f)).collect::<Vec<_>>().join("\n")
                );
            }
            round += 1;
        }
        if let Some((port, _, clear)) = port_mod {
            for t in [&fm.target, &ovs.target] {
                ofctl_ok(t, &["mod-port", port, clear]);
            }
        }
    }
}

/// Collects what `take` gives until nothing more comes for 300 ms.
fn wait_frames(mut take: impl FnMut() -> [Vec<Vec<u8>>; 3]) -> [Vec<Vec<u8>>; 3] {
    let mut all: [Vec<Vec<u8>>; 3] = Default::default();
    let deadline = Instant::now() + DEADLINE;
    let mut quiet_since = Instant::now();
    loop {
        let more = take();
        if more.iter().any(|v| !v.is_empty()) {
            quiet_since = Instant::now();
        }
        for (a, m) in all.iter_mut().zip(more) {
            a.extend(m);
        }
        if quiet_since.elapsed() > Duration::from_millis(300) || Instant::now() > deadline {
            return all;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
