//! execkit transport `docker`: a shell inside a running container.
//!
//! Targets: `docker:NAME_OR_ID` (the engine named by `DOCKER_HOST`, else
//! `/var/run/docker.sock`) and `docker://HOST:PORT/NAME` (a remote engine
//! over plain HTTP). The container is inspected and the exec created,
//! resized and inspected through `bollard`; the exec's terminal stream is a
//! raw HTTP upgrade written here (module `engine`), because bollard's TTY
//! attach decoder mangles chunks that start with bytes 0x00–0x02.
//!
//! Dropping the attach does not stop a process in a container, so every
//! cleanup (close, drop, timeout escalation, restart, dead-owner gc) runs a
//! one-shot exec of [`execkit_core::raw::kill_matching_script`] that kills
//! every process carrying the session marker. A paused container takes no
//! exec: the cleanup of a shell dropped then waits on the engine's event
//! stream for the unpause and runs then; `gc` keeps the record meanwhile.
//! A session's shell in a paused container is kept: the engine in
//! `execkit-core` asks [`ShellProcess::suspended`] and reports the pause at
//! once instead of at the command's timeout.
//!
//! Whole files move outside any session ([`Transport::files`]): one exec
//! per file of `cat` as the container's user, the bytes on the exec's own
//! stdin and stdout — with the rights, umask and mounts the container's
//! shells have (the engine's archive API would act as root on the root
//! filesystem, blind to a tmpfs mounted in the container).

mod engine;
mod files;
mod shell;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use execkit_core::{
    raw::{FileTransfer, ShellProcess, SpawnSpec, Transport},
    ErrorKind, TransportError,
};
use tokio::sync::OnceCell;

use crate::engine::{ContainerState, Engine};

/// Where the Docker engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket (the local daemon).
    Unix(PathBuf),
    /// `host:port` over plain HTTP.
    Tcp(String),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// Default socket of the local engine.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Default port of a remote engine (`docker://HOST/NAME`).
pub const DEFAULT_PORT: u16 = 2375;

impl Endpoint {
    /// The engine `DOCKER_HOST` names, else the default socket.
    pub fn from_env() -> Result<Endpoint, String> {
        match std::env::var("DOCKER_HOST") {
            Ok(v) if !v.trim().is_empty() => Endpoint::parse_host(v.trim()),
            _ => Ok(Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET))),
        }
    }

    /// Parses a `DOCKER_HOST` value: `unix:///path`, `tcp://host:port`,
    /// `http://host:port`.
    pub fn parse_host(host: &str) -> Result<Endpoint, String> {
        if let Some(path) = host.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(format!("DOCKER_HOST={host} names no socket path"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        for prefix in ["tcp://", "http://"] {
            if let Some(rest) = host.strip_prefix(prefix) {
                if std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty() && v != "0") {
                    return Err(format!(
                        "DOCKER_HOST={host} with DOCKER_TLS_VERIFY: TLS engines are not supported"
                    ));
                }
                let rest = rest.trim_end_matches('/');
                return host_port(rest).map(Endpoint::Tcp);
            }
        }
        Err(format!(
            "DOCKER_HOST={host} is not supported (use unix:///PATH or tcp://HOST:PORT)"
        ))
    }
}

/// `host[:port]` → `host:port`, validated.
fn host_port(s: &str) -> Result<String, String> {
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

/// Checks a container name or id as Docker spells them: a letter or digit,
/// then letters, digits, `_`, `.`, `-`. Anything else (a leading `-`, a
/// `/`, `..`) could turn into a flag or an API path, so it is refused.
fn valid_container(name: &str) -> Result<(), String> {
    let first_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if name.is_empty() {
        return Err("no container name (try `docker:NAME`)".into());
    }
    if !first_ok || !rest_ok || name.len() > 255 {
        return Err(format!(
            "`{name}` is not a container name or id (a letter or digit, then letters, digits, `_`, `.` or `-`)"
        ));
    }
    Ok(())
}

/// The engine of one target, connected on first use and shared by the
/// transport and its file transfer.
#[derive(Clone)]
pub(crate) struct EngineCell {
    endpoint: Endpoint,
    target: String,
    cell: Arc<OnceCell<Arc<Engine>>>,
}

impl EngineCell {
    pub(crate) async fn get(&self) -> Result<Arc<Engine>, TransportError> {
        self.cell
            .get_or_try_init(|| async {
                Engine::connect(self.endpoint.clone(), &self.target)
                    .await
                    .map(Arc::new)
            })
            .await
            .cloned()
    }
}

/// The `docker` transport for one container.
pub struct DockerTransport {
    target: String,
    container: String,
    endpoint: Endpoint,
    engine: EngineCell,
}

impl fmt::Debug for DockerTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerTransport")
            .field("target", &self.target)
            .field("container", &self.container)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl DockerTransport {
    /// Parses `docker:NAME`, `docker://HOST:PORT/NAME` or `docker:///NAME`.
    /// Does not touch the network.
    pub fn new(target: &str) -> Result<Self, TransportError> {
        let invalid = |reason: String| TransportError::InvalidTarget {
            target: target.to_string(),
            reason,
        };
        let rest = match target.split_once(':') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("docker") => rest,
            _ => {
                return Err(invalid(
                    "expected `docker:NAME` or `docker://HOST:PORT/NAME`".into(),
                ))
            }
        };
        let (endpoint, name) = match rest.strip_prefix("//") {
            Some(url) => {
                let (host, name) = url.split_once('/').ok_or_else(|| {
                    invalid(
                        "no container after the engine address (`docker://HOST:PORT/NAME`)".into(),
                    )
                })?;
                let endpoint = if host.is_empty() {
                    Endpoint::from_env().map_err(invalid)?
                } else {
                    Endpoint::Tcp(host_port(host).map_err(invalid)?)
                };
                (endpoint, name)
            }
            None => (Endpoint::from_env().map_err(invalid)?, rest),
        };
        // Docker shows names as `/name`; accept one leading slash there only.
        let name = name
            .strip_prefix('/')
            .filter(|_| !rest.starts_with("//"))
            .unwrap_or(name);
        valid_container(name).map_err(invalid)?;
        Ok(DockerTransport {
            target: target.to_string(),
            container: name.to_string(),
            engine: EngineCell {
                endpoint: endpoint.clone(),
                target: target.to_string(),
                cell: Arc::new(OnceCell::new()),
            },
            endpoint,
        })
    }

    /// The container name or id as given.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// The engine this target uses.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn engine(&self) -> Result<Arc<Engine>, TransportError> {
        self.engine.get().await
    }
}

#[async_trait]
impl Transport for DockerTransport {
    fn target(&self) -> &str {
        &self.target
    }

    async fn spawn(&self, spec: &SpawnSpec) -> Result<Box<dyn ShellProcess>, TransportError> {
        spec.refuse_containment(&self.target)?;
        let engine = self.engine().await?;
        let (id, started) = match engine.container_state(&self.container).await? {
            ContainerState::Running { id, started } => (id, started),
            ContainerState::Paused { .. } => {
                return Err(TransportError::unreachable(
                    &self.target,
                    ErrorKind::Paused,
                    format!(
                        "container {} is paused (docker unpause {0})",
                        self.container
                    ),
                ))
            }
            ContainerState::NotRunning { status } => {
                return Err(TransportError::unreachable(
                    &self.target,
                    ErrorKind::NotRunning,
                    format!("container {} is not running ({status})", self.container),
                ))
            }
            ContainerState::Missing => {
                return Err(TransportError::unreachable(
                    &self.target,
                    ErrorKind::NotFound,
                    format!(
                        "no such container {} on the Docker engine at {}",
                        self.container, self.endpoint
                    ),
                ))
            }
        };
        let shell =
            shell::DockerShell::spawn(engine, &self.target, &self.container, id, started, spec)
                .await?;
        Ok(Box::new(shell))
    }

    async fn kill_matching(&self, entry: &str) -> Result<(), TransportError> {
        let engine = self.engine().await?;
        match engine.container_state(&self.container).await? {
            // A stopped or removed container runs nothing: nothing to kill.
            ContainerState::Running { id, .. } => {
                engine
                    .kill_matching(
                        &id,
                        &self.container,
                        &execkit_core::raw::script_argv(None),
                        entry,
                    )
                    .await
            }
            // Frozen processes cannot be killed from inside: an error, so
            // gc keeps the record and tries again after the unpause.
            ContainerState::Paused { .. } => {
                Err(engine::paused_error(&self.target, &self.container))
            }
            ContainerState::NotRunning { .. } | ContainerState::Missing => Ok(()),
        }
    }

    /// Files move by an exec of `cat` as the container's user (module
    /// `files`): with its rights, umask and mounts, like its shells.
    fn files(&self) -> Option<Arc<dyn FileTransfer>> {
        Some(Arc::new(files::DockerFiles {
            target: self.target.clone(),
            container: self.container.clone(),
            engine: self.engine.clone(),
        }))
    }
}

fn connect(target: &str) -> Result<Arc<dyn Transport>, TransportError> {
    Ok(Arc::new(DockerTransport::new(target)?))
}

execkit_core::register_transport! {
    scheme: "docker",
    summary: "a shell in a running container (DOCKER_HOST honoured)",
    example: "docker:web, docker://127.0.0.1:2375/web",
    connect: connect,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = DockerTransport::new("docker:web").unwrap();
        assert_eq!(t.container(), "web");
        let t = DockerTransport::new("docker:/web").unwrap();
        assert_eq!(t.container(), "web");
        let t = DockerTransport::new("docker://127.0.0.1:2376/web-1").unwrap();
        assert_eq!(t.container(), "web-1");
        assert_eq!(t.endpoint(), &Endpoint::Tcp("127.0.0.1:2376".into()));
        let t = DockerTransport::new("docker://engine/abc123").unwrap();
        assert_eq!(t.endpoint(), &Endpoint::Tcp("engine:2375".into()));
        let t = DockerTransport::new("docker://[::1]:99/x").unwrap();
        assert_eq!(t.endpoint(), &Endpoint::Tcp("[::1]:99".into()));
    }

    #[test]
    fn refuses_names_that_could_be_flags_or_paths() {
        for bad in [
            "docker:",
            "docker:-rf",
            "docker:--privileged",
            "docker:../x",
            "docker:a/b",
            "docker:a b",
            "docker:.x",
            "docker://h:1/",
            "docker://h:1/-x",
            "docker://h:1//x",
            "docker://h:x/y",
            "docker://h:0/y",
            "docker://h",
            "dock:x",
        ] {
            let e = DockerTransport::new(bad).unwrap_err();
            assert!(e.is_usage(), "{bad}: {e}");
        }
    }

    #[test]
    fn docker_host_forms() {
        assert_eq!(
            Endpoint::parse_host("unix:///run/d.sock").unwrap(),
            Endpoint::Unix("/run/d.sock".into())
        );
        assert_eq!(
            Endpoint::parse_host("tcp://127.0.0.1:2375").unwrap(),
            Endpoint::Tcp("127.0.0.1:2375".into())
        );
        assert!(Endpoint::parse_host("ssh://u@h").is_err());
        assert!(Endpoint::parse_host("unix://").is_err());
    }
}
