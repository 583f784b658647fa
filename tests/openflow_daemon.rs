//! `flowmark run` with `[openflow] listen`: flows added by ovs-ofctl over
//! OpenFlow 1.3 take effect in the datapath (packets counted on them,
//! megaflows installed). Skipped without ovs-ofctl unless
//! FLOWMARK_REQUIRE_ORACLES is set.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn openflow_flows_take_effect_in_the_datapath() {
    if Command::new("ovs-ofctl").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("FLOWMARK_REQUIRE_ORACLES").is_none(),
            "ovs-ofctl required"
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("flowmark-of-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = dir.join("flowmark.toml");
    std::fs::write(
        &config,
        format!(
            "pmd_cores = [0]\n[[port]]\nname = \"nic0\"\ntype = \"testbed-nic\"\n[[port]]\nname = \"nic1\"\ntype = \"testbed-nic\"\n[[port]]\nname = \"vm0\"\ntype = \"testbed-vm\"\n[openflow]\nlisten = \"ptcp:{port}\"\n"
        ),
    )
    .expect("config");
    let socket = dir.join("flowmark.sock");
    let bin = env!("CARGO_BIN_EXE_flowmark");
    let _daemon = Daemon(
        Command::new(bin)
            .arg("--socket")
            .arg(&socket)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("flowmark run starts"),
    );
    let target = format!("tcp:127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the OpenFlow listener came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ofctl = |args: &[&str]| {
        run(Command::new("ovs-ofctl")
            .args(["-O", "OpenFlow13", "--timeout=10", args[0], &target])
            .args(&args[1..]))
    };
    let flows = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gtp.flows"))
        .expect("gtp flows");
    let flows: Vec<&str> = flows
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    for f in &flows {
        ofctl(&["add-flow", f]);
    }
    let fm = |args: &[&str]| run(Command::new(bin).arg("--socket").arg(&socket).args(args));
    fm(&[
        "port",
        "inject",
        "nic1",
        "--generate",
        "flows=8,count=200,kind=gtp-up",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let dump = ofctl(&["dump-flows"]);
    let total: u64 = dump
        .split("n_packets=")
        .skip(1)
        .filter_map(|s| s.split(',').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(
        total, 200,
        "every injected packet counted on an OpenFlow rule:\n{dump}"
    );
    assert_eq!(
        dump.lines().filter(|l| l.contains("actions=")).count(),
        flows.len()
    );
    let megaflows = fm(&["megaflow", "dump"]);
    assert!(
        megaflows.contains("ufid:"),
        "megaflows installed:\n{megaflows}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
