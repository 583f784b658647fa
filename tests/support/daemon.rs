//! A `flowmark run` daemon for integration tests: started as a subprocess
//! on a socket in its own temporary folder (with a TOML config when given),
//! driven with the CLI (`--json`) or raw socket lines, stopped with
//! SIGTERM (or killed when dropped). Waits are bounded polls; the JSON
//! readers are strict (a missing or mistyped field fails the test).
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_flowmark");
/// How long any condition may take to come true.
pub const WAIT: Duration = Duration::from_secs(30);

pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts `flowmark run` (with `config` as its TOML when given) and
    /// waits until it answers.
    pub fn start(config: Option<&str>) -> Daemon {
        Daemon::start_with(config, Stdio::null())
    }

    /// [`Daemon::start`] with the daemon's stdout sent to `stdout` (piped:
    /// read it after [`Daemon::stop_output`]).
    pub fn start_with(config: Option<&str>, stdout: Stdio) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("flowmark.sock");
        let mut cmd = Command::new(BIN);
        cmd.arg("run").arg("--socket").arg(&socket);
        cmd.arg("--log-level").arg("warning");
        if let Some(text) = config {
            let path = dir.path().join("flowmark.toml");
            std::fs::write(&path, text).expect("write config");
            cmd.arg("--config").arg(path);
        }
        let child = cmd
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start flowmark run");
        let mut d = Daemon { child, dir, socket };
        let start = Instant::now();
        loop {
            if let Some(status) = d.child.try_wait().expect("try_wait") {
                panic!("flowmark run exited at start: {status}");
            }
            if d.try_cli(&["port", "list", "--json"]).status.success() {
                break;
            }
            assert!(start.elapsed() < WAIT, "the daemon did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    pub fn try_cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run the CLI")
    }

    /// Runs a control command with `--json` and returns its document.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.try_cli(&a);
        assert!(
            out.status.success(),
            "flowmark {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "flowmark {args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.try_cli(args);
        assert!(
            !out.status.success(),
            "flowmark {args:?} should have failed"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Starts a CLI command in the background (a long injection).
    pub fn spawn_cli(&self, args: &[&str]) -> Child {
        Command::new(BIN)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run the CLI")
    }

    /// One raw request line on the socket; returns the reply object.
    pub fn raw(&self, line: &[u8]) -> Value {
        let mut s = UnixStream::connect(&self.socket).expect("connect");
        s.write_all(line).expect("write");
        s.write_all(b"\n").expect("write");
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).expect("read");
        serde_json::from_str(&reply).expect("reply is JSON")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn inject(&self, port: &str, spec: &str) {
        let v = self.json(&["port", "inject", port, "--generate", spec]);
        assert!(u(&v["packets"]) > 0, "{v}");
    }

    pub fn inject_pcap(&self, port: &str, pcap: &Path) {
        self.json(&["port", "inject", port, "--pcap", pcap.to_str().unwrap()]);
    }

    pub fn megaflows(&self) -> Vec<Value> {
        arr(&self.json(&["megaflow", "dump"]))
    }

    pub fn port_stats(&self, name: &str) -> Value {
        arr(&self.json(&["port", "stats"]))
            .into_iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no port {name}"))
    }

    /// Waits until the datapath is quiescent: port counters unchanged over
    /// two reads and no offload pending; returns the port stats.
    pub fn quiesce(&self) -> Vec<Value> {
        let start = Instant::now();
        let mut last = Value::Null;
        loop {
            let now = self.json(&["port", "stats"]);
            let pending = u(&self.json(&["offload", "status"])["states"]["pending"]);
            if now == last && pending == 0 {
                return arr(&now);
            }
            assert!(start.elapsed() < WAIT, "traffic did not settle");
            last = now;
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls until `cond` holds.
    pub fn wait_for(&self, what: &str, mut cond: impl FnMut(&Daemon) -> bool) {
        let start = Instant::now();
        while !cond(self) {
            assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then checks the graceful shutdown.
    pub fn stop(self) {
        self.stop_output();
    }

    /// [`Daemon::stop`]; returns what the daemon wrote on stdout (when it
    /// was piped: [`Daemon::start_with`]).
    pub fn stop_output(mut self) -> String {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(status.success(), "flowmark run exited with {status}");
                break;
            }
            assert!(start.elapsed() < WAIT, "flowmark run ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!self.socket.exists(), "the socket file was left behind");
        let mut text = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            use std::io::Read;
            out.read_to_string(&mut text)
                .expect("read the daemon's stdout");
        }
        text
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// Strict readers: a missing or mistyped field fails the test (reading it as
// 0 would let an accounting check pass as 0 = 0 + 0).
pub fn arr(v: &Value) -> Vec<Value> {
    v.as_array()
        .cloned()
        .unwrap_or_else(|| panic!("expected a JSON array, got {v}"))
}

pub fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected a JSON count, got {v}"))
}

pub fn sum_reasons(v: &Value) -> u64 {
    v.as_object()
        .unwrap_or_else(|| panic!("expected a reason → count object, got {v}"))
        .values()
        .map(u)
        .sum()
}

pub fn check_accounting(ports: &[Value]) {
    for p in ports {
        assert_eq!(
            u(&p["rx"]),
            u(&p["forwarded"]) + sum_reasons(&p["rx_dropped"]),
            "receive side of {p}"
        );
        assert_eq!(
            u(&p["tx_attempted"]),
            u(&p["tx"]) + sum_reasons(&p["tx_dropped"]),
            "transmit side of {p}"
        );
    }
}

/// A helper process (e.g. `ovs-ofctl monitor`) killed when the test ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every line a helper process prints, stdout and stderr alike (ovs-ofctl
/// prints what it receives on one or the other depending on its build), as
/// a channel fed by two reader threads.
pub fn lines_of(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let streams: Vec<Box<dyn std::io::Read + Send>> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for stream in streams {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}
