//! Where a Docker engine listens ([`Endpoint`]) and, for an engine reached
//! some other way than a socket or a port of this host's network, the
//! hook that opens connections to it ([`EngineConnector`]).
//!
//! Which endpoint a target means — `DOCKER_HOST`, `DOCKER_TLS_VERIFY`,
//! Docker contexts — is decided in `resolve`; how bytes reach it, in
//! `engine::dial` (one `open` arm per variant).

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

/// Default socket of the local engine.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Default port of a remote engine (`docker://HOST/NAME`).
pub const DEFAULT_PORT: u16 = 2375;

/// Where the Docker engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket (the local daemon).
    Unix(PathBuf),
    /// `host:port` over plain HTTP.
    Tcp(String),
    /// `host:port` over TLS: the engine's certificate verified against a
    /// CA, a client certificate presented (`dockerd --tlsverify`).
    Tls(TlsEndpoint),
    /// An engine reached through a connector of the caller's: each
    /// connection is a fresh stream it opens (an SSH channel to the remote
    /// `/var/run/docker.sock`, …).
    Tunnel(Tunnel),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
            Endpoint::Tls(t) => write!(f, "tcp://{} (TLS)", t.addr),
            Endpoint::Tunnel(t) => f.write_str(&t.name),
        }
    }
}

/// A TLS engine and the files that secure it: what the docker CLI reads
/// from `DOCKER_CERT_PATH` (or a context's TLS directory). The files are
/// read when the engine is first used, not here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsEndpoint {
    /// `host:port`; the host (a DNS name or an IP address) is also the
    /// name the engine's certificate must be valid for.
    pub addr: String,
    /// The CA certificates (PEM) the engine's certificate must chain to:
    /// only these, never the system's roots.
    pub ca: PathBuf,
    /// The client certificate and its key (PEM) presented to the engine,
    /// or none (an engine started with `--tlsverify` then refuses us).
    pub client: Option<ClientCert>,
}

/// A client certificate and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// `cert.pem`: the certificate (and any intermediates).
    pub cert: PathBuf,
    /// `key.pem`: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsEndpoint {
    /// The docker CLI's layout: `ca.pem`, `cert.pem` and `key.pem` in
    /// `dir`. The client certificate is used when `cert.pem` or `key.pem`
    /// exists (one without the other is an error when connecting); a
    /// missing `ca.pem` is an error when connecting, naming it.
    pub fn from_cert_dir(addr: impl Into<String>, dir: &Path) -> TlsEndpoint {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let client = (cert.exists() || key.exists()).then_some(ClientCert { cert, key });
        TlsEndpoint {
            addr: addr.into(),
            ca: dir.join("ca.pem"),
            client,
        }
    }

    /// The host part of `addr` (brackets of an IPv6 address removed): the
    /// name the engine's certificate is checked against.
    pub fn server_name(&self) -> &str {
        let host = match self.addr.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.is_empty() => h,
            _ => self.addr.as_str(),
        };
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }
}

/// A byte stream to an engine's API: HTTP/1.1 is spoken on it, and an
/// exec's terminal takes it over after an upgrade.
pub trait EngineStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> EngineStream for T {}

/// The future [`EngineConnector::connect`] returns.
pub type ConnectFuture<'a> =
    Pin<Box<dyn Future<Output = io::Result<Box<dyn EngineStream>>> + Send + 'a>>;

/// Opens connections to an engine that is reached through something of
/// the caller's (**the hook for `DOCKER_HOST=ssh://…`**: an SSH transport
/// opens a `direct-streamlocal` channel to the remote
/// `/var/run/docker.sock` and hands it over as the stream).
///
/// `connect` is called for every API request (they are not pooled) and
/// for every exec's terminal stream, which then lives as long as the
/// session's shell: the connector must allow many at once.
pub trait EngineConnector: Send + Sync {
    /// A fresh stream to the engine's API socket. Its error is shown to
    /// the user after the tunnel's name ("the Docker engine at NAME does
    /// not answer: …"), so it should say what failed; its
    /// [`io::ErrorKind`] becomes the error's kind (`ConnectionRefused`,
    /// `PermissionDenied`, `TimedOut`).
    fn connect(&self) -> ConnectFuture<'_>;
}

/// An engine reached through an [`EngineConnector`].
#[derive(Clone)]
pub struct Tunnel {
    /// How the engine is named in messages, and told apart: two tunnels
    /// of one name are taken for the same engine (e.g. `ssh://u@host`).
    pub name: String,
    /// Opens each connection.
    pub connector: Arc<dyn EngineConnector>,
}

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Tunnel {
    fn eq(&self, other: &Tunnel) -> bool {
        self.name == other.name
    }
}

impl Eq for Tunnel {}

/// `host[:port]` → `host:port`, validated.
pub(crate) fn host_port(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("no engine host".into());
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unclosed `[` in `{s}`"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("unexpected `{after}` after the host")),
        };
        (format!("[{h}]"), port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (s.to_string(), None),
        }
    };
    let valid_host = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b));
    if !valid_host {
        return Err(format!("invalid engine host `{host}`"));
    }
    let port: u16 = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("invalid port `{p}`"))?,
    };
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        let t = |addr: &str| TlsEndpoint {
            addr: addr.into(),
            ca: "ca.pem".into(),
            client: None,
        };
        assert_eq!(t("127.0.0.1:2376").server_name(), "127.0.0.1");
        assert_eq!(t("[::1]:2376").server_name(), "::1");
        assert_eq!(t("engine.example:2376").server_name(), "engine.example");
    }

    #[test]
    fn a_cert_dir_without_client_files_presents_none() {
        let dir = std::env::temp_dir().join(format!("execkit-certdir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = TlsEndpoint::from_cert_dir("h:1", &dir);
        assert_eq!(t.ca, dir.join("ca.pem"));
        assert!(t.client.is_none());
        std::fs::write(dir.join("key.pem"), "").unwrap();
        let t = TlsEndpoint::from_cert_dir("h:1", &dir);
        assert_eq!(t.client.unwrap().cert, dir.join("cert.pem"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
