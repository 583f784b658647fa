//! The socket layer: one thread per connection running a [`Session`], a
//! passive listener, and an active connection to a controller that
//! reconnects with exponential back-off, each over TCP or TLS
//! (`pssl:`/`ssl:`, [`super::tls`]). Everything protocol lives in the
//! session; this file only moves bytes and events.

use super::session::{Election, Session, SessionNote};
use super::switch::{OpenFlowSwitch, SwitchEvent};
use super::tls::{Tls, TlsError, TlsFiles};
use crossbeam_channel::{Receiver, Sender};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
#[cfg(test)]
use std::path::Path;
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
    #[error("bad OpenFlow endpoint {0:?}: expected tcp:HOST:PORT or ssl:HOST:PORT (controller), ptcp:PORT[:IP], pssl:PORT[:IP] or tcp:IP:PORT (listen)")]
    BadEndpoint(String),
    #[error("[openflow] listen = {listen:?} is plaintext on {addr}, which is not a loopback address: whoever reaches that port can program the switch. Listen with TLS (pssl:PORT[:IP] with private_key, certificate and ca_cert in [openflow]), on a loopback address, or set allow_plaintext = true in [openflow] to accept that")]
    PlaintextExposed { listen: String, addr: SocketAddr },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// How a connection's bytes travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
}

/// Parses a listen endpoint: `ptcp:PORT[:IP]` (OVS; loopback when no IP),
/// `tcp:IP:PORT` or `IP:PORT`; `pssl:PORT[:IP]` for TLS.
pub fn parse_listen_endpoint(s: &str) -> Result<(SocketAddr, Transport), EndpointError> {
    match s.strip_prefix("pssl:") {
        Some(rest) => Ok((parse_listen(&format!("ptcp:{rest}"))?, Transport::Tls)),
        None => Ok((parse_listen(s)?, Transport::Tcp)),
    }
}

/// Parses a controller endpoint: `tcp:HOST:PORT` or `ssl:HOST:PORT` (port
/// 6653 when left out).
pub fn parse_controller_endpoint(s: &str) -> Result<(String, Transport), EndpointError> {
    match s.strip_prefix("ssl:") {
        Some(rest) => Ok((parse_controller(&format!("tcp:{rest}"))?, Transport::Tls)),
        None => Ok((parse_controller(s)?, Transport::Tcp)),
    }
}

/// Parses a plaintext listen endpoint: `ptcp:PORT[:IP]` (OVS; loopback
/// when no IP), `tcp:IP:PORT` or `IP:PORT`.
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

/// Fans switch events out to every live connection, and holds the master
/// election they share.
#[derive(Clone, Default)]
pub struct EventHub {
    subscribers: Arc<Mutex<Vec<Subscriber>>>,
    election: Arc<Election>,
}

/// A connection's event queue and its wake-up fd, on the hub's side.
type Subscriber = (Sender<SwitchEvent>, Arc<OwnedFd>);

/// One connection's events, and the eventfd that wakes its thread when one
/// is sent (a connection waits on its socket and this fd together, so a
/// PACKET_IN leaves at once instead of at the thread's next tick).
pub struct Subscription {
    pub events: Receiver<SwitchEvent>,
    wake: Option<Arc<OwnedFd>>,
    /// The switch's master election.
    pub election: Arc<Election>,
}

impl Subscription {
    /// Takes the wake-up count (non-blocking).
    fn clear_wake(&self) {
        if let Some(fd) = &self.wake {
            let mut b = [0u8; 8];
            let _ = rustix::io::read(fd.as_fd(), &mut b);
        }
    }
}

impl EventHub {
    pub fn subscribe(&self) -> Subscription {
        let (tx, rx) = crossbeam_channel::bounded(1024);
        // Without an eventfd (none left) the connection still gets its
        // events, at its tick.
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC,
        )
        .ok()
        .map(Arc::new);
        if let (Ok(mut s), Some(fd)) = (self.subscribers.lock(), &wake) {
            s.push((tx, Arc::clone(fd)));
        }
        Subscription {
            events: rx,
            wake,
            election: Arc::clone(&self.election),
        }
    }

    /// Sends `ev` to every connection; a full or gone one is skipped (a
    /// slow controller loses events rather than stalling the switch).
    pub fn publish(&self, ev: SwitchEvent) {
        if let Ok(mut s) = self.subscribers.lock() {
            s.retain(|(tx, wake)| {
                match tx.try_send(ev.clone()) {
                    Err(crossbeam_channel::TrySendError::Disconnected(_)) => return false,
                    Err(crossbeam_channel::TrySendError::Full(_)) => {}
                    Ok(()) => {
                        let _ = rustix::io::write(wake.as_fd(), &1u64.to_ne_bytes());
                    }
                }
                true
            });
        }
    }
}

/// A log line from the endpoint (the daemon routes them to its logger).
pub type LogFn = Arc<dyn Fn(&str) + Send + Sync>;

/// A connection's byte stream: plain TCP or TLS over TCP.
pub trait Conn: Read + Write {
    /// The TCP socket underneath.
    fn tcp(&self) -> &TcpStream;
    /// Input already taken off the socket and waiting to be read (TLS
    /// records decrypted ahead): a wait on the socket would not see it.
    fn buffered(&mut self) -> bool {
        false
    }
}

impl Conn for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl<C, D> Conn for rustls::StreamOwned<C, TcpStream>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
    D: rustls::SideData,
{
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }
    fn buffered(&mut self) -> bool {
        self.conn
            .process_new_packets()
            .is_ok_and(|io| io.plaintext_bytes_to_read() > 0)
    }
}

/// Runs one connection until it ends or `stop` is set.
pub fn serve_connection(
    mut stream: impl Conn,
    sw: &dyn OpenFlowSwitch,
    sub: &Subscription,
    stop: &AtomicBool,
    log: &LogFn,
) -> bool {
    let peer = stream
        .tcp()
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let _ = stream.tcp().set_nodelay(true);
    if stream.tcp().set_read_timeout(Some(POLL)).is_err() {
        return false;
    }
    let mut session = Session::new(Instant::now()).with_election(Arc::clone(&sub.election));
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
        // Input, an event to pass on, or the tick (keepalives, `stop`).
        let (readable, woken) = if stream.buffered() {
            (true, false)
        } else {
            wait_input(stream.tcp(), sub, POLL)
        };
        if readable {
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
        }
        // Only when poll saw it rung: a read every loop was one more system
        // call per flow mod (`ovs-ofctl add-flows` makes a round trip per
        // rule). Events are taken every loop either way.
        if woken {
            sub.clear_wake();
        }
        while let Ok(ev) = sub.events.try_recv() {
            session.event(&ev);
        }
        session.tick(Instant::now());
    }
    let _ = stream.flush();
    session.leave_election();
    negotiated
}

/// The OpenFlow endpoint: its threads stop when this is dropped.
pub struct Endpoint {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// The listener's bound address (port 0 resolves to the real one).
    pub listen_addr: Option<SocketAddr>,
}

/// Where and how the endpoint talks OpenFlow.
#[derive(Clone, Debug, Default)]
pub struct EndpointConfig {
    /// `ptcp:PORT[:IP]`, `pssl:PORT[:IP]`, `tcp:IP:PORT`.
    pub listen: Option<String>,
    /// `tcp:HOST:PORT` or `ssl:HOST:PORT`.
    pub controller: Option<String>,
    /// Key, certificate and CA for `pssl:`/`ssl:`.
    pub tls: Option<TlsFiles>,
    /// A plaintext listener on a non-loopback address is refused unless set.
    pub allow_plaintext: bool,
}

impl EndpointConfig {
    /// Checks the endpoints and loads the TLS files they need.
    fn prepare(&self) -> Result<Prepared, EndpointError> {
        let listen = match &self.listen {
            None => None,
            Some(l) => {
                let (addr, transport) = parse_listen_endpoint(l)?;
                if transport == Transport::Tcp && !addr.ip().is_loopback() && !self.allow_plaintext
                {
                    return Err(EndpointError::PlaintextExposed {
                        listen: l.clone(),
                        addr,
                    });
                }
                Some((addr, transport, l.clone()))
            }
        };
        let controller = self
            .controller
            .as_deref()
            .map(parse_controller_endpoint)
            .transpose()?;
        let tls_for = listen
            .as_ref()
            .filter(|l| l.1 == Transport::Tls)
            .map(|l| l.2.clone())
            .or_else(|| {
                controller
                    .as_ref()
                    .filter(|c| c.1 == Transport::Tls)
                    .and(self.controller.clone())
            });
        let tls = match tls_for {
            None => None,
            Some(endpoint) => {
                let files = self.tls.as_ref().ok_or_else(|| TlsError::Missing {
                    endpoint,
                    missing: "private_key, certificate, ca_cert".into(),
                })?;
                Some(Arc::new(Tls::load(files)?))
            }
        };
        if let Some((target, Transport::Tls)) = &controller {
            let host = target.rsplit_once(':').map_or(target.as_str(), |(h, _)| h);
            super::tls::server_name(host)?;
        }
        Ok(Prepared {
            listen: listen.map(|(a, t, _)| (a, t)),
            controller,
            tls,
        })
    }
}

struct Prepared {
    listen: Option<(SocketAddr, Transport)>,
    controller: Option<(String, Transport)>,
    tls: Option<Arc<Tls>>,
}

impl Endpoint {
    /// Starts a plaintext passive listener on `listen` and/or an active
    /// connection to `controller` (see [`Endpoint::start_with`]).
    pub fn start(
        sw: Arc<dyn OpenFlowSwitch>,
        hub: EventHub,
        listen: Option<&str>,
        controller: Option<&str>,
        log: LogFn,
    ) -> Result<Endpoint, EndpointError> {
        let config = EndpointConfig {
            listen: listen.map(str::to_string),
            controller: controller.map(str::to_string),
            ..EndpointConfig::default()
        };
        Endpoint::start_with(sw, hub, &config, log)
    }

    /// Starts the listener and/or controller connection of `config`, over
    /// TCP or TLS; refuses a plaintext listener on a non-loopback address
    /// unless `allow_plaintext`.
    pub fn start_with(
        sw: Arc<dyn OpenFlowSwitch>,
        hub: EventHub,
        config: &EndpointConfig,
        log: LogFn,
    ) -> Result<Endpoint, EndpointError> {
        let prepared = config.prepare()?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut ep = Endpoint {
            stop: Arc::clone(&stop),
            threads: Vec::new(),
            listen_addr: None,
        };
        if let Some((addr, transport)) = prepared.listen {
            let tls = match transport {
                Transport::Tls => prepared.tls.clone(),
                Transport::Tcp => None,
            };
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
                "openflow: listening on {}{}",
                ep.listen_addr.map_or(addr, |a| a),
                if tls.is_some() { " (TLS)" } else { "" }
            ));
            let t = std::thread::Builder::new()
                .name("of-listen".into())
                .spawn(move || accept_loop(listener, tls, sw, hub, stop, log))
                .map_err(EndpointError::Thread)?;
            ep.threads.push(t);
        }
        if let Some((target, transport)) = prepared.controller {
            let tls = match transport {
                Transport::Tls => prepared.tls.clone(),
                Transport::Tcp => None,
            };
            let (sw, hub, stop, log) =
                (Arc::clone(&sw), hub.clone(), Arc::clone(&stop), log.clone());
            let t = std::thread::Builder::new()
                .name("of-controller".into())
                .spawn(move || controller_loop(&target, tls, sw, hub, stop, log))
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

/// Waits until the socket has input, an event's wake-up arrives, or `max`
/// passes: (the socket has input, so a read will not block; the wake-up
/// was rung).
fn wait_input(sock: &TcpStream, sub: &Subscription, max: Duration) -> (bool, bool) {
    use rustix::event::{poll, PollFd, PollFlags};
    let timeout = timespec(max);
    let got = match &sub.wake {
        Some(wake) => {
            let mut fds = [
                PollFd::new(sock, PollFlags::IN),
                PollFd::new(wake.as_ref(), PollFlags::IN),
            ];
            poll(&mut fds, Some(&timeout))
                .map(|_| (!fds[0].revents().is_empty(), !fds[1].revents().is_empty()))
        }
        None => {
            let mut fds = [PollFd::new(sock, PollFlags::IN)];
            poll(&mut fds, Some(&timeout)).map(|_| (!fds[0].revents().is_empty(), false))
        }
    };
    // An error: let the read (with its timeout) find out, and clear the
    // wake-up in case it was rung.
    got.unwrap_or((true, true))
}

fn timespec(d: Duration) -> rustix::event::Timespec {
    rustix::event::Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// Waits until `fd` is readable (a connection to accept) or `max` passes:
/// a connection is served at once, and `stop` is still checked every `max`.
/// (Sleeping `max` between accepts delayed every new connection by up to
/// 50 ms: `ovs-ofctl` opens two per command.)
fn wait_readable(fd: &impl std::os::fd::AsFd, max: Duration) {
    use rustix::event::{poll, PollFd, PollFlags};
    let timeout = timespec(max);
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    if poll(&mut fds, Some(&timeout)).is_err() {
        std::thread::sleep(max);
    }
}

fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
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
                let (sw, events, stop, conn_log, tls) = (
                    Arc::clone(&sw),
                    hub.subscribe(),
                    Arc::clone(&stop),
                    log.clone(),
                    tls.clone(),
                );
                let spawned = std::thread::Builder::new()
                    .name("of-conn".into())
                    .spawn(move || match tls {
                        None => {
                            serve_connection(stream, sw.as_ref(), &events, &stop, &conn_log);
                        }
                        Some(tls) => {
                            let peer = stream
                                .peer_addr()
                                .map_or_else(|_| "?".to_string(), |a| a.to_string());
                            match tls.accept(stream) {
                                Ok(s) => {
                                    serve_connection(s, sw.as_ref(), &events, &stop, &conn_log);
                                }
                                Err(e) => conn_log(&format!(
                                    "openflow {peer}: TLS handshake refused: {e}"
                                )),
                            }
                        }
                    });
                match spawned {
                    Ok(t) => conns.push(t),
                    Err(e) => log(&format!("openflow: cannot serve a connection: {e}")),
                }
                conns.retain(|t| !t.is_finished());
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => wait_readable(&listener, POLL),
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
    tls: Option<Arc<Tls>>,
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
                let events = hub.subscribe();
                let served = match &tls {
                    None => {
                        log(&format!("openflow: connected to controller {target}"));
                        Some(serve_connection(stream, sw.as_ref(), &events, &stop, &log))
                    }
                    Some(tls) => {
                        let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
                        match tls.connect(host, stream) {
                            Ok(s) => {
                                log(&format!("openflow: connected to controller {target} (TLS)"));
                                Some(serve_connection(s, sw.as_ref(), &events, &stop, &log))
                            }
                            Err(e) => {
                                log(&format!(
                                    "openflow: TLS handshake with controller {target} failed: {e}"
                                ));
                                None
                            }
                        }
                    }
                };
                if served == Some(true) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `fd` is readable now (a zero-timeout poll).
    fn readable_now(fd: &impl AsFd) -> bool {
        use rustix::event::{poll, PollFd, PollFlags};
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        let zero = timespec(Duration::ZERO);
        poll(&mut fds, Some(&zero)).is_ok_and(|n| n == 1)
    }

    /// A published event makes its subscriber's wake-up fd readable (the
    /// connection's poll returns at once), taking the event clears it, and
    /// a connection that is gone is dropped from the hub.
    #[test]
    fn a_published_event_wakes_its_connection() {
        let hub = EventHub::default();
        let sub = hub.subscribe();
        let wake = sub.wake.clone().expect("an eventfd");
        assert!(!readable_now(wake.as_ref()), "no event yet");
        let port = crate::openflow::switch::PortInfo {
            ofport: 7,
            name: "nic7".into(),
            config: 0,
        };
        hub.publish(SwitchEvent::PortAdded(port.clone()));
        assert!(readable_now(wake.as_ref()), "the event woke it");
        sub.clear_wake();
        assert!(!readable_now(wake.as_ref()), "taken");
        assert!(matches!(sub.events.try_recv(), Ok(SwitchEvent::PortAdded(p)) if p == port));
        drop(sub);
        hub.publish(SwitchEvent::PortDeleted(port));
        assert_eq!(hub.subscribers.lock().map(|s| s.len()).unwrap_or(1), 0);
    }

    fn prepare(listen: Option<&str>, controller: Option<&str>, allow: bool) -> String {
        let c = EndpointConfig {
            listen: listen.map(str::to_string),
            controller: controller.map(str::to_string),
            tls: None,
            allow_plaintext: allow,
        };
        match c.prepare() {
            Ok(p) => format!("ok {:?} {:?}", p.listen, p.controller),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn endpoints_parse_with_their_transport() {
        assert_eq!(
            parse_listen_endpoint("pssl:6653").unwrap(),
            ("127.0.0.1:6653".parse().unwrap(), Transport::Tls)
        );
        assert_eq!(
            parse_listen_endpoint("pssl:6653:[::1]").unwrap(),
            ("[::1]:6653".parse().unwrap(), Transport::Tls)
        );
        assert_eq!(
            parse_listen_endpoint("ptcp:6653:10.0.0.1").unwrap(),
            ("10.0.0.1:6653".parse().unwrap(), Transport::Tcp)
        );
        assert_eq!(
            parse_controller_endpoint("ssl:ctl.example:6633").unwrap(),
            ("ctl.example:6633".to_string(), Transport::Tls)
        );
        assert_eq!(
            parse_controller_endpoint("ssl:ctl.example").unwrap(),
            ("ctl.example:6653".to_string(), Transport::Tls)
        );
        assert!(parse_listen_endpoint("pssl:x").is_err());
        assert!(parse_controller_endpoint("tls:1.2.3.4:6653").is_err());
    }

    #[test]
    fn plaintext_beyond_loopback_needs_allow_plaintext() {
        let e = prepare(Some("ptcp:6653:0.0.0.0"), None, false);
        assert!(
            e.contains("whoever reaches that port can program the switch")
                && e.contains("allow_plaintext = true"),
            "{e}"
        );
        assert!(prepare(Some("tcp:192.0.2.1:6653"), None, false).contains("not a loopback"));
        assert!(prepare(Some("ptcp:6653:0.0.0.0"), None, true).starts_with("ok "));
        assert!(prepare(Some("ptcp:6653"), None, false).starts_with("ok "));
        assert!(prepare(Some("ptcp:6653:[::1]"), None, false).starts_with("ok "));
        // A controller connection is not a listener.
        assert!(prepare(None, Some("tcp:192.0.2.1:6653"), false).starts_with("ok "));
    }

    #[test]
    fn tls_endpoints_need_key_certificate_and_ca() {
        for (l, c) in [
            (Some("pssl:6653:0.0.0.0"), None),
            (None, Some("ssl:192.0.2.1:6653")),
        ] {
            let e = prepare(l, c, false);
            assert!(
                e.contains("private_key") && e.contains("certificate") && e.contains("ca_cert"),
                "{e}"
            );
        }
        let e = TlsFiles::from_parts("[openflow]", Some(Path::new("k")), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing: certificate, ca_cert"), "{e}");
        let files = TlsFiles {
            private_key: "/nonexistent/k.pem".into(),
            certificate: "/nonexistent/c.pem".into(),
            ca_cert: "/nonexistent/ca.pem".into(),
        };
        let e = match Tls::load(&files) {
            Ok(_) => panic!("loaded missing files"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("certificate") && e.contains("/nonexistent/c.pem"),
            "{e}"
        );
    }
}
