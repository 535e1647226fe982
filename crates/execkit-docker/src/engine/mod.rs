//! Talking to the Docker engine: `bollard` for the JSON API (inspect,
//! exec create / resize / inspect) here; every connection opened in one
//! place (`dial`: Unix socket, TCP, TLS, a caller's tunnel); the exec's
//! terminal stream and the event stream over hand-written HTTP (`http`);
//! one-shot execs for cleanup and scripts, and waiting out a pause
//! (`oneshot`).

mod dial;
mod http;
mod oneshot;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, ResizeExecOptions};
use bollard::{ClientVersion, Docker};
use execkit_core::{ErrorKind, Size, TransportError};

use crate::resolve::Resolved;
use crate::Endpoint;

pub(crate) use http::{ReadHalf, WriteHalf};
pub(crate) use oneshot::{paused_error, Killed};

/// How long the engine may take to answer the version handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// API versions already negotiated, per endpoint: every session opens its
/// own transport, and the handshake is a round trip each time otherwise.
static NEGOTIATED: Mutex<Vec<(Endpoint, ClientVersion)>> = Mutex::new(Vec::new());

/// What an inspect says about the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ContainerState {
    /// Running; its full id and when it (last) started: a restart keeps
    /// the id and changes that.
    Running { id: String, started: String },
    /// Frozen by `docker pause`: its processes exist but nothing can be
    /// exec'd into it (so nothing can be killed) until it is unpaused.
    Paused { id: String, started: String },
    /// Exists but is stopped, restarting…
    NotRunning { status: String },
    /// No such container.
    Missing,
}

/// What an exec inspect says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExecState {
    pub running: bool,
    pub exit_code: Option<i64>,
}

/// One engine endpoint with a negotiated API version.
pub(crate) struct Engine {
    endpoint: Endpoint,
    /// How the endpoint was chosen (`resolve::Resolved::via`).
    via: Option<String>,
    target: String,
    dialer: Arc<dial::Dialer>,
    docker: Docker,
    /// `v1.41`, as negotiated.
    api: String,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("endpoint", &self.endpoint)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

/// `tcp://H:P (TLS; context `x` from …)`: the engine and how it was chosen.
pub(crate) fn describe(endpoint: &Endpoint, via: Option<&str>) -> String {
    let (base, mut notes) = match endpoint {
        Endpoint::Tls(t) => (format!("tcp://{}", t.addr), vec!["TLS"]),
        e => (e.to_string(), Vec::new()),
    };
    notes.extend(via);
    if notes.is_empty() {
        base
    } else {
        format!("{base} ({})", notes.join("; "))
    }
}

impl Engine {
    /// Builds a client for `resolved` and negotiates the API version.
    pub async fn connect(resolved: Resolved, target: &str) -> Result<Engine, TransportError> {
        let Resolved { endpoint, via } = resolved;
        let at = describe(&endpoint, via.as_deref());
        let unreachable = |kind, reason: String| TransportError::unreachable(target, kind, reason);
        let known = NEGOTIATED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(e, _)| *e == endpoint)
            .map(|(_, v)| *v);
        let version = known.as_ref().unwrap_or(bollard::API_DEFAULT_VERSION);
        if let Endpoint::Unix(path) = &endpoint {
            if !path.exists() {
                return Err(unreachable(ErrorKind::ConnectionRefused, format!(
                    "no Docker engine at {at} (socket not found; is dockerd running? DOCKER_HOST or a Docker context selects another engine)"
                )));
            }
        }
        let dialer = Arc::new(dial::Dialer::new(&endpoint).map_err(|(kind, why)| {
            unreachable(kind, format!("cannot use the Docker engine at {at}: {why}"))
        })?);
        let docker = dialer.client(version).map_err(|e| {
            unreachable(
                ErrorKind::Other,
                format!("cannot use the Docker engine at {at}: {e}"),
            )
            .with_source(e)
        })?;
        let docker = if known.is_some() {
            docker
        } else {
            let docker =
                match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
                    Ok(Ok(d)) => d,
                    Ok(Err(e)) => {
                        let (kind, why) = match (dialer.explain(&e), plain_to_tls(&e)) {
                            (Some(explained), _) => explained,
                            (None, Some(hint)) => (ErrorKind::Other, hint),
                            (None, None) => {
                                (chain_kind(&e), format!("does not answer: {}", one_line(&e)))
                            }
                        };
                        return Err(unreachable(
                            kind,
                            format!("the Docker engine at {at}{}", why_after_at(&why)),
                        )
                        .with_source(e));
                    }
                    Err(_) => {
                        return Err(unreachable(
                            ErrorKind::Timeout,
                            format!(
                                "the Docker engine at {at} did not answer within {} s",
                                CONNECT_TIMEOUT.as_secs()
                            ),
                        ))
                    }
                };
            let mut cache = NEGOTIATED.lock().unwrap_or_else(|e| e.into_inner());
            if !cache.iter().any(|(e, _)| *e == endpoint) {
                cache.push((endpoint.clone(), docker.client_version()));
            }
            docker
        };
        let v = docker.client_version();
        Ok(Engine {
            api: format!("v{}.{}", v.major_version, v.minor_version),
            endpoint,
            via,
            target: target.to_string(),
            dialer,
            docker,
        })
    }

    /// The engine and how it was chosen, for messages.
    fn at(&self) -> String {
        describe(&self.endpoint, self.via.as_deref())
    }

    /// Maps a bollard error of `what` to a transport error.
    fn error(&self, what: &str, e: BollardError) -> TransportError {
        if let Some(hint) = plain_to_tls(&e) {
            return TransportError::unreachable(
                &self.target,
                ErrorKind::Other,
                format!("{what}: the Docker engine at {}: {hint}", self.at()),
            )
            .with_source(e);
        }
        match e {
            BollardError::DockerResponseServerError {
                status_code,
                message,
            } => TransportError::Spawn {
                target: self.target.clone(),
                reason: format!(
                    "{what}: the engine answered {status_code}: {}",
                    message.trim()
                ),
            },
            other => {
                let (kind, why) = match self.dialer.explain(&other) {
                    Some(explained) => explained,
                    None => (
                        chain_kind(&other),
                        format!("does not answer: {}", one_line(&other)),
                    ),
                };
                TransportError::unreachable(
                    &self.target,
                    kind,
                    format!(
                        "{what}: the Docker engine at {}{}",
                        self.at(),
                        why_after_at(&why)
                    ),
                )
                .with_source(other)
            }
        }
    }

    /// Inspects the container.
    pub async fn container_state(&self, name: &str) -> Result<ContainerState, TransportError> {
        match self.docker.inspect_container(name, None).await {
            Ok(c) => {
                let state = c.state.unwrap_or_default();
                let running = state.running == Some(true) && state.restarting != Some(true);
                let started = state.started_at.unwrap_or_default();
                match (running, state.paused == Some(true), c.id) {
                    (true, false, Some(id)) => Ok(ContainerState::Running { id, started }),
                    (true, true, Some(id)) => Ok(ContainerState::Paused { id, started }),
                    _ => Ok(ContainerState::NotRunning {
                        status: state
                            .status
                            .map_or_else(|| "status unknown".into(), |s| s.to_string()),
                    }),
                }
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(ContainerState::Missing),
            // An id prefix of two containers: the target names none (a
            // usage error, not an unreachable engine).
            Err(BollardError::DockerResponseServerError { message, .. })
                if ambiguous_prefix(&message) =>
            {
                Err(TransportError::InvalidTarget {
                    target: self.target.clone(),
                    reason: format!(
                        "`{name}` is the start of more than one container's id; \
                         give more of the id, or the container's name (the engine said: {})",
                        message.trim()
                    ),
                })
            }
            Err(e) => Err(self.error(&format!("inspecting container {name}"), e)),
        }
    }

    /// Creates an exec in the container; returns its id. With a `tty` the
    /// exec has stdin too; without one, only if `stdin`.
    pub async fn create_exec(
        &self,
        container: &str,
        cmd: Vec<String>,
        env: Vec<String>,
        tty: bool,
        working_dir: Option<String>,
        stdin: bool,
    ) -> Result<String, BollardError> {
        let opts = CreateExecOptions::<String> {
            attach_stdin: Some(tty || stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(tty),
            // The default detach keys (Ctrl-P Ctrl-Q) would make the engine
            // hold back every Ctrl-P typed; NUL never appears in input.
            detach_keys: Some("ctrl-@".into()),
            env: Some(env),
            cmd: Some(cmd),
            working_dir,
            ..Default::default()
        };
        Ok(self.docker.create_exec(container, opts).await?.id)
    }

    /// Resizes an exec's terminal.
    pub async fn resize(&self, exec_id: &str, size: Size) -> Result<(), TransportError> {
        self.docker
            .resize_exec(
                exec_id,
                ResizeExecOptions {
                    height: size.rows,
                    width: size.cols,
                },
            )
            .await
            .map_err(|e| self.error("resizing the terminal", e))
    }

    /// Inspects an exec.
    pub async fn exec_state(&self, exec_id: &str) -> Result<ExecState, BollardError> {
        let r = self.docker.inspect_exec(exec_id).await?;
        Ok(ExecState {
            running: r.running.unwrap_or(false),
            exit_code: r.exit_code,
        })
    }

    fn spawn_err(&self, reason: &str) -> TransportError {
        TransportError::Spawn {
            target: self.target.clone(),
            reason: reason.to_string(),
        }
    }
}

/// Whether the engine's answer says an id prefix matched several
/// containers: Docker's "Multiple IDs found with provided prefix: X"
/// (no status of its own: 500 from Docker 20.10), Podman's "more than one
/// result for container …".
fn ambiguous_prefix(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("multiple ids found")
        || m.contains("more than one result")
        || m.contains("ambiguous")
}

/// The kind of the engine's 409 Conflict to an exec: Docker says
/// "Container X is paused, unpause the container before exec" or
/// "container X is not running".
pub(crate) fn conflict_kind(message: &str) -> ErrorKind {
    if message.to_ascii_lowercase().contains("paused") {
        ErrorKind::Paused
    } else {
        ErrorKind::NotRunning
    }
}

/// The kind of an I/O error talking to the engine: a socket that is not
/// there refuses like a closed port.
fn io_kind(e: &io::Error) -> ErrorKind {
    match e.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => ErrorKind::ConnectionRefused,
        io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        io::ErrorKind::TimedOut => ErrorKind::Timeout,
        _ => ErrorKind::Other,
    }
}

/// The kind of a client error, from the first I/O error in its chain
/// (hyper and bollard wrap the connect error).
pub(crate) fn chain_kind(e: &(dyn std::error::Error + 'static)) -> ErrorKind {
    dial::causes(e)
        .into_iter()
        .find_map(|c| c.downcast_ref::<io::Error>())
        .map_or(ErrorKind::Other, io_kind)
}

/// Plain HTTP sent to a TLS port: Go's server answers 400 "Client sent an
/// HTTP request to an HTTPS server." — say what to set instead.
fn plain_to_tls(e: &BollardError) -> Option<String> {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 400,
            message,
        } if message.contains("HTTPS server") => Some(format!(
            "it takes only TLS (it answered: {}); set DOCKER_TLS_VERIFY=1 with its CA and a client \
             certificate in DOCKER_CERT_PATH, or use a Docker context that has them",
            message.trim()
        )),
        _ => None,
    }
}

/// A reason as it reads after "the Docker engine at X": "does not
/// answer: …" after a space, a TLS diagnosis after a colon.
fn why_after_at(why: &str) -> String {
    if why.starts_with("does not") || why.starts_with("did not") {
        format!(" {why}")
    } else {
        format!(": {why}")
    }
}

/// An error as one line (hyper errors chain their causes).
pub(crate) fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s.replace('\n', " ")
}
