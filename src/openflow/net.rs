//! The socket layer: one thread per connection running a [`Session`], a
//! passive listener, and an active connection to a controller that
//! reconnects with exponential back-off. Everything protocol lives in the
//! session; this file only moves bytes and events.

use super::session::{Session, SessionNote};
use super::switch::{OpenFlowSwitch, SwitchEvent};
use crossbeam_channel::{Receiver, Sender};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often a connection thread wakes to pass on events and keepalives.
const POLL: Duration = Duration::from_millis(50);
/// Reconnect back-off: first wait, and the most it grows to (OVS's 8 s).
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(8);

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("bad OpenFlow endpoint {0:?}: expected tcp:HOST:PORT (controller) or ptcp:PORT[:IP] / tcp:IP:PORT (listen)")]
    BadEndpoint(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// Parses a listen endpoint: `ptcp:PORT[:IP]` (OVS; loopback when no IP),
/// `tcp:IP:PORT` or `IP:PORT`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, EndpointError> {
    let bad = || EndpointError::BadEndpoint(s.to_string());
    if let Some(rest) = s.strip_prefix("ptcp:") {
        let (port, ip) = match rest.split_once(':') {
            Some((p, ip)) => (p, ip),
            None => (rest, "127.0.0.1"),
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        return format!("{ip}:{port}")
            .parse::<SocketAddr>()
            .or_else(|_| format!("[{ip}]:{port}").parse())
            .map_err(|_| bad());
    }
    let hostport = s.strip_prefix("tcp:").unwrap_or(s);
    resolve(hostport).ok_or_else(bad)
}

/// Parses a controller endpoint: `tcp:HOST:PORT` (port 6653 when left out).
pub fn parse_controller(s: &str) -> Result<String, EndpointError> {
    let rest = s
        .strip_prefix("tcp:")
        .ok_or_else(|| EndpointError::BadEndpoint(s.to_string()))?;
    if rest.is_empty() {
        return Err(EndpointError::BadEndpoint(s.to_string()));
    }
    Ok(
        if rest
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            rest.to_string()
        } else {
            format!("{rest}:6653")
        },
    )
}

fn resolve(hostport: &str) -> Option<SocketAddr> {
    hostport.to_socket_addrs().ok()?.next()
}

/// Fans switch events out to every live connection.
#[derive(Clone, Default)]
pub struct EventHub {
    subscribers: Arc<Mutex<Vec<Sender<SwitchEvent>>>>,
}

impl EventHub {
    pub fn subscribe(&self) -> Receiver<SwitchEvent> {
        let (tx, rx) = crossbeam_channel::bounded(1024);
        if let Ok(mut s) = self.subscribers.lock() {
            s.push(tx);
        }
        rx
    }

    /// Sends `ev` to every connection; a full or gone one is skipped (a
    /// slow controller loses events rather than stalling the switch).
    pub fn publish(&self, ev: SwitchEvent) {
        if let Ok(mut s) = self.subscribers.lock() {
            s.retain(|tx| {
                !matches!(
                    tx.try_send(ev.clone()),
                    Err(crossbeam_channel::TrySendError::Disconnected(_))
                )
            });
        }
    }
}

/// A log line from the endpoint (the daemon routes them to its logger).
pub type LogFn = Arc<dyn Fn(&str) + Send + Sync>;

/// Runs one connection until it ends or `stop` is set.
pub fn serve_connection(
    mut stream: TcpStream,
    sw: &dyn OpenFlowSwitch,
    events: &Receiver<SwitchEvent>,
    stop: &AtomicBool,
    log: &LogFn,
) -> bool {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let _ = stream.set_nodelay(true);
    if stream.set_read_timeout(Some(POLL)).is_err() {
        return false;
    }
    let mut session = Session::new(Instant::now());
    let mut buf = vec![0u8; 65536];
    let mut negotiated = false;
    loop {
        let out = session.take_output();
        if !out.is_empty() && stream.write_all(&out).is_err() {
            log(&format!("openflow {peer}: write failed, closing"));
            break;
        }
        for note in session.take_notes() {
            match note {
                SessionNote::Negotiated => {
                    negotiated = true;
                    log(&format!("openflow {peer}: connected (OpenFlow 1.3)"));
                }
                SessionNote::Refused(e) => log(&format!("openflow {peer}: refused: {e}")),
                SessionNote::PeerError { err_type, code } => log(&format!(
                    "openflow {peer}: peer sent error type {err_type} code {code}"
                )),
            }
        }
        if session.is_closed() {
            if let Some(e) = session.end() {
                log(&format!("openflow {peer}: closing: {e}"));
            }
            break;
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => session.receive(&buf[..n], sw, Instant::now()),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                log(&format!("openflow {peer}: read failed: {e}"));
                break;
            }
        }
        while let Ok(ev) = events.try_recv() {
            session.event(&ev);
        }
        session.tick(Instant::now());
    }
    let _ = stream.flush();
    negotiated
}

/// The OpenFlow endpoint: its threads stop when this is dropped.
pub struct Endpoint {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// The listener's bound address (port 0 resolves to the real one).
    pub listen_addr: Option<SocketAddr>,
}

impl Endpoint {
    /// Starts a passive listener on `listen` and/or an active connection
    /// to `controller`.
    pub fn start(
        sw: Arc<dyn OpenFlowSwitch>,
        hub: EventHub,
        listen: Option<&str>,
        controller: Option<&str>,
        log: LogFn,
    ) -> Result<Endpoint, EndpointError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut ep = Endpoint {
            stop: Arc::clone(&stop),
            threads: Vec::new(),
            listen_addr: None,
        };
        if let Some(l) = listen {
            let addr = parse_listen(l)?;
            let listener = TcpListener::bind(addr).map_err(|source| EndpointError::Listen {
                addr: addr.to_string(),
                source,
            })?;
            ep.listen_addr = listener.local_addr().ok();
            listener
                .set_nonblocking(true)
                .map_err(EndpointError::Thread)?;
            let (sw, hub, stop, log) =
                (Arc::clone(&sw), hub.clone(), Arc::clone(&stop), log.clone());
            log(&format!(
                "openflow: listening on {}",
                ep.listen_addr.map_or(addr, |a| a)
            ));
            let t = std::thread::Builder::new()
                .name("of-listen".into())
                .spawn(move || accept_loop(listener, sw, hub, stop, log))
                .map_err(EndpointError::Thread)?;
            ep.threads.push(t);
        }
        if let Some(c) = controller {
            let target = parse_controller(c)?;
            let (sw, hub, stop, log) =
                (Arc::clone(&sw), hub.clone(), Arc::clone(&stop), log.clone());
            let t = std::thread::Builder::new()
                .name("of-controller".into())
                .spawn(move || controller_loop(&target, sw, hub, stop, log))
                .map_err(EndpointError::Thread)?;
            ep.threads.push(t);
        }
        Ok(ep)
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    listener: TcpListener,
    sw: Arc<dyn OpenFlowSwitch>,
    hub: EventHub,
    stop: Arc<AtomicBool>,
    log: LogFn,
) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let (sw, events, stop, conn_log) = (
                    Arc::clone(&sw),
                    hub.subscribe(),
                    Arc::clone(&stop),
                    log.clone(),
                );
                let spawned = std::thread::Builder::new()
                    .name("of-conn".into())
                    .spawn(move || {
                        serve_connection(stream, sw.as_ref(), &events, &stop, &conn_log);
                    });
                match spawned {
                    Ok(t) => conns.push(t),
                    Err(e) => log(&format!("openflow: cannot serve a connection: {e}")),
                }
                conns.retain(|t| !t.is_finished());
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => {
                log(&format!("openflow: accept failed: {e}"));
                std::thread::sleep(POLL);
            }
        }
    }
    for t in conns {
        let _ = t.join();
    }
}

/// The next back-off: doubled, at most [`BACKOFF_MAX`].
pub fn next_backoff(cur: Duration) -> Duration {
    (cur * 2).clamp(BACKOFF_MIN, BACKOFF_MAX)
}

fn controller_loop(
    target: &str,
    sw: Arc<dyn OpenFlowSwitch>,
    hub: EventHub,
    stop: Arc<AtomicBool>,
    log: LogFn,
) {
    let mut backoff = BACKOFF_MIN;
    while !stop.load(Ordering::Relaxed) {
        let connected = resolve(target)
            .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok());
        match connected {
            Some(stream) => {
                log(&format!("openflow: connected to controller {target}"));
                let events = hub.subscribe();
                if serve_connection(stream, sw.as_ref(), &events, &stop, &log) {
                    // A session that got going earns a quick reconnect.
                    backoff = BACKOFF_MIN / 2;
                }
                log(&format!(
                    "openflow: controller {target} disconnected; retrying in {backoff:?}"
                ));
            }
            None => log(&format!(
                "openflow: cannot reach controller {target}; retrying in {backoff:?}"
            )),
        }
        // Sleep in slices so that stop is prompt.
        let until = Instant::now() + backoff;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(POLL);
        }
        backoff = next_backoff(backoff);
    }
}
