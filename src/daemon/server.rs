//! The control socket: a Unix stream socket (mode 0600) taking one JSON
//! request per line and answering one JSON reply per line. One thread
//! accepts; one thread per connection decodes and waits for the main loop.

use super::{DaemonError, DaemonHandle};
use crate::control::{decode_request, Response, MAX_REQUEST_BYTES};
use slog::{debug, warn, Logger};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Binds the socket: creates its directory, replaces a stale socket file,
/// refuses to steal a live daemon's, and makes it owner-only.
pub fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    let err = |source| DaemonError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(DaemonError::SocketInUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Starts the accepting thread.
pub fn spawn(listener: UnixListener, handle: DaemonHandle, log: Logger) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        let (conn_handle, conn_log) = (handle.clone(), log.clone());
                        let spawned = std::thread::Builder::new()
                            .name("control-conn".into())
                            .spawn(move || serve(stream, &conn_handle, &conn_log));
                        if let Err(e) = spawned {
                            warn!(log, "cannot serve a control connection"; "error" => e.to_string());
                        }
                    }
                    Err(e) => warn!(log, "control socket accept failed"; "error" => e.to_string()),
                }
            }
        })
        .map(|_| ())
}

/// Answers every request line of one connection until it closes.
fn serve(stream: UnixStream, handle: &DaemonHandle, log: &Logger) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        // One byte past the limit tells an over-long line from a full one.
        let n = match (&mut reader)
            .take(MAX_REQUEST_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                debug!(log, "control connection read failed"; "error" => e.to_string());
                return;
            }
        };
        let too_long = n > MAX_REQUEST_BYTES && line.last() != Some(&b'\n');
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) && !too_long {
            continue;
        }
        let response = match decode_request(&line) {
            Ok(req) => match handle.request(req) {
                Ok(v) => Response::ok(v),
                Err(e) => Response::error(e.to_string()),
            },
            Err(e) => {
                debug!(log, "bad control request"; "error" => e.to_string());
                Response::error(e.to_string())
            }
        };
        if out.write_all(response.to_line().as_bytes()).is_err() {
            return;
        }
        if too_long {
            // The rest of the line cannot be resynchronised: hang up.
            return;
        }
    }
}
