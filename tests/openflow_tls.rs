//! OpenFlow over TLS with the real client: certificates made with `openssl`
//! here, `flowmark run` listening on `pssl:PORT:127.0.0.1`, and
//! `ovs-ofctl -O OpenFlow13 --private-key --certificate --ca-cert
//! add-flow/dump-flows ssl:127.0.0.1:PORT`. A client whose certificate
//! another CA signed is refused; a plaintext listener on a non-loopback
//! address is refused at start. Skipped without openssl/ovs-ofctl unless
//! FLOWMARK_REQUIRE_ORACLES=1.

#[path = "support/pipeline_switch.rs"]
mod pipeline_switch;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "support/test_env.rs"]
mod test_env;

const BIN: &str = env!("CARGO_BIN_EXE_flowmark");
const WAIT: Duration = Duration::from_secs(30);

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{cmd:?} cannot run: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CA (key + self-signed certificate) in `dir` named `name`.
fn make_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let crt = dir.join(format!("{name}.crt"));
    ok(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "2", "-subj"])
        .arg(format!("/CN={name}"))
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt));
    (key, crt)
}

/// A key and a certificate for `name` signed by the CA, valid for
/// 127.0.0.1 as a server and as a client.
fn make_cert(dir: &Path, name: &str, ca: &(PathBuf, PathBuf)) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let crt = dir.join(format!("{name}.crt"));
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .expect("ext file");
    ok(Command::new("openssl")
        .args(["req", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-subj"])
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    ok(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(&ca.1)
        .arg("-CAkey")
        .arg(&ca.0)
        .args(["-CAcreateserial", "-extfile"])
        .arg(&ext)
        .arg("-out")
        .arg(&crt));
    (key, crt)
}

struct Daemon(std::process::Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(dir: &Path, openflow: &str) -> PathBuf {
    let config = dir.join("flowmark.toml");
    std::fs::write(
        &config,
        format!(
            "pmd_cores = [0]\n\
             [[port]]\nname = \"nic0\"\ntype = \"testbed-nic\"\n\
             [[port]]\nname = \"nic1\"\ntype = \"testbed-nic\"\n\
             [openflow]\n{openflow}"
        ),
    )
    .expect("config");
    config
}

fn tools() -> bool {
    test_env::oracle("openssl", "version", "openssl")
        && test_env::oracle("ovs-ofctl", "--version", "openvswitch-common")
}

#[test]
fn ovs_ofctl_over_tls_and_a_foreign_ca_refused() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = make_ca(d, "ca");
    let switch = make_cert(d, "switch", &ca);
    let client = make_cert(d, "client", &ca);
    let other_ca = make_ca(d, "other-ca");
    let stranger = make_cert(d, "stranger", &other_ca);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = write_config(
        d,
        &format!(
            "listen = \"pssl:{port}:127.0.0.1\"\nprivate_key = {:?}\ncertificate = {:?}\nca_cert = {:?}\n",
            switch.0, switch.1, ca.1
        ),
    );
    let socket = d.join("flowmark.sock");
    let mut daemon = Daemon(
        Command::new(BIN)
            .arg("--socket")
            .arg(&socket)
            .args(["run", "--log-level", "warning", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("flowmark run starts"),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = daemon.0.try_wait().expect("try_wait") {
            panic!("flowmark run exited at start: {status}");
        }
        assert!(start.elapsed() < WAIT, "the TLS listener came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let target = format!("ssl:127.0.0.1:{port}");
    let ofctl = |who: &(PathBuf, PathBuf), args: &[&str]| -> Output {
        run(Command::new("ovs-ofctl")
            .args(["-O", "OpenFlow13", "--timeout=10"])
            .arg(format!("--private-key={}", who.0.display()))
            .arg(format!("--certificate={}", who.1.display()))
            .arg(format!("--ca-cert={}", ca.1.display()))
            .arg(args[0])
            .arg(&target)
            .args(&args[1..]))
    };
    let flow_dump = || {
        ok(Command::new(BIN)
            .arg("--socket")
            .arg(&socket)
            .args(["flow", "dump"]))
    };

    let out = ofctl(
        &client,
        &["add-flow", "priority=5,in_port=1,ip,actions=output:2"],
    );
    assert!(
        out.status.success(),
        "add-flow over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ofctl(&client, &["dump-flows"]);
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dump-flows over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dump.contains("priority=5,ip,in_port=1 actions=output:2"),
        "dump-flows over TLS:\n{dump}"
    );
    assert!(flow_dump().contains("in_port=1"), "the daemon has the rule");

    // A certificate from another CA: refused, and nothing changes.
    let out = ofctl(
        &stranger,
        &["add-flow", "priority=9,in_port=2,actions=drop"],
    );
    assert!(
        !out.status.success(),
        "a client with another CA's certificate was served: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!flow_dump().contains("priority=9"), "{}", flow_dump());
    // The switch goes on serving the right client.
    let out = ofctl(&client, &["dump-flows"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        daemon.0.try_wait().expect("try_wait").is_none(),
        "daemon alive"
    );
}

#[test]
fn plaintext_listener_on_a_non_loopback_address_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "listen = \"ptcp:6653:0.0.0.0\"\n");
    let out = run(Command::new(BIN)
        .arg("--socket")
        .arg(dir.path().join("flowmark.sock"))
        .args(["run", "--log-level", "warning", "--config"])
        .arg(&config));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started: {err}");
    assert!(
        err.contains("whoever reaches that port can program the switch"),
        "{err}"
    );
    assert!(err.contains("allow_plaintext = true"), "{err}");

    // pssl without the key, certificate and CA: refused, naming them.
    let config = write_config(dir.path(), "listen = \"pssl:6653\"\n");
    let out = run(Command::new(BIN)
        .arg("--socket")
        .arg(dir.path().join("flowmark.sock"))
        .args(["run", "--log-level", "warning", "--config"])
        .arg(&config));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started: {err}");
    assert!(
        err.contains("private_key") && err.contains("ca_cert"),
        "{err}"
    );
}

/// A log that the test can read.
fn captured() -> (
    flowmark::openflow::net::LogFn,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&lines);
    let log: flowmark::openflow::net::LogFn = std::sync::Arc::new(move |l: &str| {
        if let Ok(mut v) = sink.lock() {
            v.push(l.to_string());
        }
    });
    (log, lines)
}

fn wait_for_line(lines: &std::sync::Mutex<Vec<String>>, what: &str) {
    let start = Instant::now();
    loop {
        if let Ok(v) = lines.lock() {
            if v.iter().any(|l| l.contains(what)) {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "no log line with {what:?}: {:#?}",
                *v
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `controller = "ssl:HOST:PORT"`: the switch connects over TLS, presents
/// its certificate and verifies the controller's against the CA (and that
/// it names HOST). The "controller" here is another OpenFlow endpoint
/// listening on pssl with the controller's certificate: the two sessions
/// exchange HELLOs and negotiate OpenFlow 1.3 over TLS. A controller whose
/// certificate another CA signed is refused.
#[test]
fn ssl_controller_connection_verifies_the_controller() {
    use crate::pipeline_switch::PipelineSwitch;
    use flowmark::openflow::net::{Endpoint, EndpointConfig, EventHub};
    use flowmark::openflow::switch::OpenFlowSwitch;
    use flowmark::openflow::tls::TlsFiles;
    use std::sync::Arc;
    if !test_env::oracle("openssl", "version", "openssl") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = make_ca(d, "ca");
    let switch = make_cert(d, "switch", &ca);
    let controller = make_cert(d, "controller", &ca);
    let other_ca = make_ca(d, "other-ca");
    let impostor = make_cert(d, "impostor", &other_ca);
    let files = |who: &(PathBuf, PathBuf), ca: &(PathBuf, PathBuf)| TlsFiles {
        private_key: who.0.clone(),
        certificate: who.1.clone(),
        ca_cert: ca.1.clone(),
    };
    let sw = || Arc::new(PipelineSwitch::new(0xf10e, Vec::new())) as Arc<dyn OpenFlowSwitch>;
    let listen = |who: &(PathBuf, PathBuf), its_ca: &(PathBuf, PathBuf)| {
        let (log, lines) = captured();
        let ep = Endpoint::start_with(
            sw(),
            EventHub::default(),
            &EndpointConfig {
                listen: Some("pssl:0:127.0.0.1".into()),
                tls: Some(files(who, its_ca)),
                ..EndpointConfig::default()
            },
            log,
        )
        .expect("the controller side listens");
        let port = ep.listen_addr.expect("bound").port();
        (ep, port, lines)
    };
    let connect = |port: u16| {
        let (log, lines) = captured();
        let ep = Endpoint::start_with(
            sw(),
            EventHub::default(),
            &EndpointConfig {
                controller: Some(format!("ssl:127.0.0.1:{port}")),
                tls: Some(files(&switch, &ca)),
                ..EndpointConfig::default()
            },
            log,
        )
        .expect("the switch side starts");
        (ep, lines)
    };

    let (_ctl, port, ctl_lines) = listen(&controller, &ca);
    let (_sw, sw_lines) = connect(port);
    wait_for_line(
        &sw_lines,
        &format!("connected to controller 127.0.0.1:{port} (TLS)"),
    );
    wait_for_line(&sw_lines, "connected (OpenFlow 1.3)");
    wait_for_line(&ctl_lines, "connected (OpenFlow 1.3)");

    // The impostor trusts our CA (it would take our certificate) but its
    // own is from another CA: the switch refuses it.
    let (_bad, port, _) = listen(&impostor, &ca);
    let (_sw2, sw2_lines) = connect(port);
    wait_for_line(
        &sw2_lines,
        &format!("TLS handshake with controller 127.0.0.1:{port} failed"),
    );
    let negotiated = sw2_lines
        .lock()
        .map(|v| v.iter().any(|l| l.contains("OpenFlow 1.3")))
        .unwrap_or(true);
    assert!(!negotiated, "the impostor controller was served");
}
