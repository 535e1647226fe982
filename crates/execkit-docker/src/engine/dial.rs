//! Reaching the engine: the one place a byte stream to it is opened (one
//! arm per [`Endpoint`] kind: Unix socket, TCP, TLS over TCP, a caller's
//! tunnel), the TLS set-up from the endpoint's files, bollard's client on
//! those streams (HTTP/1.1 by hyper's client connection, one connection
//! per request as bollard's own Unix client does), and what a failure to
//! connect means in words that name the files involved.
//!
//! Why bollard does not dial itself: its TLS client would be a second TLS
//! set-up beside the one the hand-written exec stream (`http`) needs, and
//! an engine reached through an SSH channel has no address it could dial
//! at all. With [`Dialer::open`] every request, exec stream and event
//! stream goes the same way.

use std::error::Error as StdError;
use std::io;
use std::sync::Arc;

use bollard::errors::Error as BollardError;
use bollard::{BollardRequest, ClientVersion, Docker};
use execkit_core::ErrorKind;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::endpoint::{EngineStream, TlsEndpoint};
use crate::Endpoint;

/// Seconds bollard waits for any one API request.
const API_TIMEOUT: u64 = 30;

/// Opens connections to one engine.
pub(crate) struct Dialer {
    endpoint: Endpoint,
    tls: Option<Tls>,
}

struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
    files: TlsEndpoint,
}

/// Why a dialer could not be set up: the kind and one line naming the file.
pub(crate) type SetupError = (ErrorKind, String);

impl Dialer {
    /// A dialer for `endpoint`; a TLS endpoint's files are read now.
    pub fn new(endpoint: &Endpoint) -> Result<Dialer, SetupError> {
        let tls = match endpoint {
            Endpoint::Tls(files) => Some(Tls::load(files)?),
            _ => None,
        };
        Ok(Dialer {
            endpoint: endpoint.clone(),
            tls,
        })
    }

    /// A fresh byte stream to the engine.
    pub async fn open(&self) -> io::Result<Box<dyn EngineStream>> {
        match (&self.endpoint, &self.tls) {
            (Endpoint::Unix(path), _) => Ok(Box::new(tokio::net::UnixStream::connect(path).await?)),
            (Endpoint::Tcp(addr), _) => Ok(Box::new(tcp(addr).await?)),
            (Endpoint::Tls(t), Some(tls)) => {
                let s = tcp(&t.addr).await?;
                Ok(Box::new(tls.connector.connect(tls.name.clone(), s).await?))
            }
            (Endpoint::Tls(_), None) => Err(io::Error::other("TLS was not set up")),
            (Endpoint::Tunnel(t), _) => t.connector.connect().await,
        }
    }

    /// The `Host` header of requests: the address for TCP, a placeholder
    /// for a socket (which the engine ignores).
    pub fn http_host(&self) -> &str {
        match &self.endpoint {
            Endpoint::Tcp(a) => a,
            Endpoint::Tls(t) => &t.addr,
            Endpoint::Unix(_) | Endpoint::Tunnel(_) => "docker",
        }
    }

    /// bollard's client, every request on a stream of [`Dialer::open`].
    pub fn client(self: &Arc<Self>, version: &ClientVersion) -> Result<Docker, BollardError> {
        let dialer = self.clone();
        Docker::connect_with_custom_transport(
            move |req: BollardRequest| {
                let dialer = dialer.clone();
                async move { dialer.request(req).await }
            },
            Some(format!("http://{}", self.http_host())),
            API_TIMEOUT,
            version,
        )
    }

    /// Sends one request on a connection of its own; the connection closes
    /// once the response is read.
    async fn request<B>(
        &self,
        req: hyper::Request<B>,
    ) -> Result<hyper::Response<Incoming>, BollardError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let stream = self.open().await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // Drives the connection; it ends when the response body is done
        // (or dropped) and `sender` is gone.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let (mut parts, body) = req.into_parts();
        // bollard writes absolute URIs; an HTTP/1.1 connection of our own
        // sends the path (origin form) and a Host header.
        let path = parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
        parts.uri = path.parse::<hyper::Uri>()?;
        if let Ok(host) = hyper::header::HeaderValue::from_str(self.http_host()) {
            parts.headers.insert(hyper::header::HOST, host);
        }
        Ok(sender
            .send_request(hyper::Request::from_parts(parts, body))
            .await?)
    }

    /// What a failure talking to a TLS engine means, naming the files
    /// involved; `None` if `e` is no TLS failure (or this is no TLS engine).
    pub fn explain(&self, e: &(dyn StdError + 'static)) -> Option<(ErrorKind, String)> {
        let tls = self.tls.as_ref()?;
        causes(e)
            .into_iter()
            .find_map(|c| c.downcast_ref::<rustls::Error>())
            .map(|r| tls.explain(r))
    }
}

async fn tcp(addr: &str) -> io::Result<tokio::net::TcpStream> {
    let s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

impl Tls {
    fn load(files: &TlsEndpoint) -> Result<Tls, SetupError> {
        let name = ServerName::try_from(files.server_name().to_string()).map_err(|e| {
            (
                ErrorKind::InvalidTarget,
                format!(
                    "`{}` cannot be checked against a certificate: {e}",
                    files.server_name()
                ),
            )
        })?;
        let ca = &files.ca;
        let ca_pem = read(
            ca,
            "the CA certificate (the engine's certificate is verified against it)",
        )?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            let cert = cert.map_err(|e| {
                (
                    ErrorKind::Other,
                    format!("the CA file {} is not PEM: {e}", ca.display()),
                )
            })?;
            roots.add(cert).map_err(|e| {
                (
                    ErrorKind::Other,
                    format!(
                        "the CA file {} holds a certificate rustls cannot use: {e}",
                        ca.display()
                    ),
                )
            })?;
        }
        if roots.is_empty() {
            return Err((
                ErrorKind::Other,
                format!(
                    "the CA file {} holds no certificate (-----BEGIN CERTIFICATE-----)",
                    ca.display()
                ),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| (ErrorKind::Other, format!("TLS set-up: {e}")))?
            .with_root_certificates(roots);
        let config = match &files.client {
            None => builder.with_no_client_auth(),
            Some(client) => {
                for (path, other) in [(&client.cert, &client.key), (&client.key, &client.cert)] {
                    if !path.exists() {
                        return Err((
                            ErrorKind::Other,
                            format!(
                                "{} is missing: a client certificate needs both cert.pem and key.pem (found {})",
                                path.display(),
                                other.display()
                            ),
                        ));
                    }
                }
                let cert_pem = read(&client.cert, "the client certificate")?;
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
                    .collect::<Result<_, _>>()
                    .map_err(|e| {
                        (
                            ErrorKind::Other,
                            format!(
                                "the client certificate {} is not PEM: {e}",
                                client.cert.display()
                            ),
                        )
                    })?;
                if chain.is_empty() {
                    return Err((
                        ErrorKind::Other,
                        format!(
                            "the client certificate file {} holds no certificate",
                            client.cert.display()
                        ),
                    ));
                }
                let key_pem = read(&client.key, "the client key")?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    (
                        ErrorKind::Other,
                        format!(
                            "the client key {} holds no private key rustls can read: {e}",
                            client.key.display()
                        ),
                    )
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    (
                        ErrorKind::Other,
                        format!(
                            "the client certificate {} and key {} cannot be used together: {e}",
                            client.cert.display(),
                            client.key.display()
                        ),
                    )
                })?
            }
        };
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            name,
            files: files.clone(),
        })
    }

    fn explain(&self, e: &rustls::Error) -> (ErrorKind, String) {
        let ca = self.files.ca.display();
        let host = self.files.server_name();
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => (
                    ErrorKind::Other,
                    format!("the engine's certificate is not valid for {host} (the host it was reached at): {e}"),
                ),
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => (
                    ErrorKind::Other,
                    format!("the engine's certificate is not valid now: {e}"),
                ),
                _ => (
                    ErrorKind::Other,
                    format!("the engine's certificate is not trusted by the CA at {ca}: {e}"),
                ),
            },
            rustls::Error::AlertReceived(alert) => match alert {
                AlertDescription::CertificateRequired
                | AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::AccessDenied => (
                    ErrorKind::PermissionDenied,
                    match &self.files.client {
                        Some(c) => format!(
                            "the engine refused our client certificate {} (TLS alert {alert:?}): is it signed by the CA the engine trusts (dockerd --tlscacert)?",
                            c.cert.display()
                        ),
                        None => format!(
                            "the engine refused the connection (TLS alert {alert:?}): it wants a client certificate and none was presented (no cert.pem and key.pem in {})",
                            self.files.ca.parent().map_or_else(|| ca.to_string(), |d| d.display().to_string())
                        ),
                    },
                ),
                _ => (ErrorKind::Other, format!("the engine ended TLS with alert {alert:?}")),
            },
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => (
                ErrorKind::Other,
                format!(
                    "the engine at {} does not speak TLS ({e}); for a plain-HTTP engine unset DOCKER_TLS_VERIFY",
                    self.files.addr
                ),
            ),
            other => (ErrorKind::Other, format!("TLS with the engine failed: {other}")),
        }
    }
}

/// Reads a PEM file; a missing or unreadable one is named with what it is.
fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, SetupError> {
    std::fs::read(path).map_err(|e| {
        let kind = match e.kind() {
            io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            _ => ErrorKind::Other,
        };
        let why = match e.kind() {
            io::ErrorKind::NotFound if what == "the CA certificate" => {
                "no such file (the engine's certificate is verified against this CA only)"
                    .to_string()
            }
            io::ErrorKind::NotFound => "no such file".to_string(),
            _ => e.to_string(),
        };
        (
            kind,
            format!("cannot read {what} {}: {why}", path.display()),
        )
    })
}

/// Every cause of `e`: its `source` chain, and the error inside each
/// `io::Error` and each bollard I/O error (`transparent`, so their own
/// `source` skips it).
pub(crate) fn causes<'a>(e: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out = Vec::new();
    // Outermost first: a kind is taken from the first I/O error met.
    let mut todo = std::collections::VecDeque::from([e]);
    while let Some(c) = todo.pop_front() {
        if out.len() > 64 {
            break;
        }
        out.push(c);
        if let Some(io) = c.downcast_ref::<io::Error>() {
            if let Some(inner) = io.get_ref() {
                todo.push_back(inner);
            }
        }
        if let Some(BollardError::IOError { err }) = c.downcast_ref::<BollardError>() {
            todo.push_back(err);
        }
        if let Some(s) = c.source() {
            todo.push_back(s);
        }
    }
    out
}
