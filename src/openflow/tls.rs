//! OpenFlow over TLS, as OVS offers it: `pssl:PORT[:IP]` listens and
//! `ssl:HOST:PORT` connects to a controller. rustls (ring provider) does
//! the handshake; the switch's key and certificate and the CA certificate
//! come from the `[openflow]` section, and every peer must present a
//! certificate that chains to that CA (a controller's must also name the
//! HOST it is reached by).

use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("[openflow] {key} = {path:?}: cannot read it as PEM: {message}")]
    Pem {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("[openflow] {key} = {path:?} holds no certificate: give a PEM file with a \"BEGIN CERTIFICATE\" block")]
    NoCertificate { key: &'static str, path: PathBuf },
    #[error("[openflow] ca_cert = {path:?}: the CA certificate is not usable: {message}")]
    BadCa { path: PathBuf, message: String },
    #[error("[openflow] private_key/certificate: rustls refuses them ({message}); the key must be the certificate's, in PEM (PKCS#8, PKCS#1 or SEC1)")]
    BadKeyPair { message: String },
    #[error("the TLS endpoint {endpoint:?} needs private_key, certificate and ca_cert in [openflow] (PEM files; peers are verified against ca_cert); missing: {missing}")]
    Missing { endpoint: String, missing: String },
    #[error("ssl:{host}: not a name a certificate can carry (give a DNS name or an IP address)")]
    BadHost { host: String },
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

/// The key, certificate and CA of the `[openflow]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub private_key: PathBuf,
    pub certificate: PathBuf,
    pub ca_cert: PathBuf,
}

impl TlsFiles {
    /// The three files, or an error naming the missing keys for `endpoint`.
    pub fn from_parts(
        endpoint: &str,
        private_key: Option<&Path>,
        certificate: Option<&Path>,
        ca_cert: Option<&Path>,
    ) -> Result<TlsFiles, TlsError> {
        match (private_key, certificate, ca_cert) {
            (Some(k), Some(c), Some(ca)) => Ok(TlsFiles {
                private_key: k.to_path_buf(),
                certificate: c.to_path_buf(),
                ca_cert: ca.to_path_buf(),
            }),
            (k, c, ca) => {
                let missing: Vec<&str> = [
                    ("private_key", k.is_none()),
                    ("certificate", c.is_none()),
                    ("ca_cert", ca.is_none()),
                ]
                .iter()
                .filter(|(_, m)| *m)
                .map(|(n, _)| *n)
                .collect();
                Err(TlsError::Missing {
                    endpoint: endpoint.to_string(),
                    missing: missing.join(", "),
                })
            }
        }
    }
}

/// Loaded TLS settings for both roles.
#[derive(Clone)]
pub struct Tls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |e: rustls_pki_types::pem::Error| TlsError::Pem {
        key,
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            key,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

impl Tls {
    /// Reads the PEM files and builds the server (pssl) and client (ssl)
    /// configurations; both require the peer's certificate to chain to the
    /// CA.
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        // ring, not aws-lc-rs (whose build wants cmake/nasm). rustls marks
        // it deprecated for lacking post-quantum key exchange, which the
        // OpenFlow peers here (OVS 3.1 on OpenSSL 3.0) do not offer either.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certs("certificate", &files.certificate)?;
        let key = PrivateKeyDer::from_pem_file(&files.private_key).map_err(|e| TlsError::Pem {
            key: "private_key",
            path: files.private_key.clone(),
            message: e.to_string(),
        })?;
        let mut roots = RootCertStore::empty();
        for ca in certs("ca_cert", &files.ca_cert)? {
            roots.add(ca).map_err(|e| TlsError::BadCa {
                path: files.ca_cert.clone(),
                message: e.to_string(),
            })?;
        }
        let roots = Arc::new(roots);
        let setup = |e: rustls::Error| TlsError::Setup(e.to_string());
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|e| TlsError::BadCa {
                    path: files.ca_cert.clone(),
                    message: e.to_string(),
                })?;
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(setup)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| TlsError::BadKeyPair {
                message: e.to_string(),
            })?;
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|e| TlsError::BadCa {
                    path: files.ca_cert.clone(),
                    message: e.to_string(),
                })?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(setup)?
            .with_webpki_verifier(server_verifier)
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::BadKeyPair {
                message: e.to_string(),
            })?;
        Ok(Tls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The server side of a handshake on an accepted connection.
    pub fn accept(
        &self,
        mut tcp: TcpStream,
    ) -> std::io::Result<rustls::StreamOwned<ServerConnection, TcpStream>> {
        let mut conn = ServerConnection::new(Arc::clone(&self.server))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        handshake(&mut conn, &mut tcp)?;
        Ok(rustls::StreamOwned::new(conn, tcp))
    }

    /// The client side of a handshake with the controller at `host`.
    pub fn connect(
        &self,
        host: &str,
        mut tcp: TcpStream,
    ) -> std::io::Result<rustls::StreamOwned<ClientConnection, TcpStream>> {
        let name = server_name(host).map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut conn = ClientConnection::new(Arc::clone(&self.client), name)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        handshake(&mut conn, &mut tcp)?;
        Ok(rustls::StreamOwned::new(conn, tcp))
    }
}

/// The name a controller's certificate must carry for `host`.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_string()).map_err(|_| TlsError::BadHost {
        host: host.to_string(),
    })
}

fn handshake<C, D>(conn: &mut C, tcp: &mut TcpStream) -> std::io::Result<()>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
    D: rustls::SideData,
{
    let before = tcp.read_timeout()?;
    tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    while conn.is_handshaking() {
        conn.complete_io(tcp)?;
    }
    tcp.set_read_timeout(before)
}
