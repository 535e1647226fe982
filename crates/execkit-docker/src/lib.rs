//! execkit transport `docker`: a shell inside a running container.
//!
//! Targets: `docker:NAME_OR_ID` on the engine the docker CLI would use
//! (`DOCKER_HOST`, with TLS per `DOCKER_TLS_VERIFY` and
//! `DOCKER_CERT_PATH`; else the Docker context of `DOCKER_CONTEXT` or of
//! `currentContext` in `~/.docker/config.json`; else
//! `/var/run/docker.sock`), `docker:///NAME?context=CTX` on the engine of a
//! named context, and `docker://HOST:PORT/NAME` (plain HTTP, or TLS when
//! `DOCKER_TLS_VERIFY` is set). A library picks an engine itself with
//! [`DockerTransport::with_endpoint`]: an [`Endpoint::Tls`] with files of
//! its own, or an [`Endpoint::Tunnel`] whose [`EngineConnector`] opens each
//! connection (how an engine behind SSH will be reached).
//!
//! Every connection to the engine is opened in one place (module
//! `engine::dial`); the container is inspected and the exec created,
//! resized and inspected through `bollard` over those connections; the
//! exec's terminal stream is a raw HTTP upgrade written here (module
//! `engine`), because bollard's TTY attach decoder mangles chunks that
//! start with bytes 0x00–0x02.
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

mod endpoint;
mod engine;
mod files;
mod resolve;
mod shell;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use execkit_core::{
    raw::{FileTransfer, ShellProcess, SpawnSpec, Transport},
    ErrorKind, TransportError,
};
use tokio::sync::OnceCell;

pub use crate::endpoint::{
    ClientCert, ConnectFuture, Endpoint, EngineConnector, EngineStream, TlsEndpoint, Tunnel,
    DEFAULT_PORT, DEFAULT_SOCKET,
};
use crate::engine::{ContainerState, Engine};
use crate::resolve::Resolved;

impl Endpoint {
    /// The engine `docker:NAME` uses, chosen as the docker CLI chooses:
    /// `DOCKER_HOST` (TLS per `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH`),
    /// else the context `DOCKER_CONTEXT` names, else the `currentContext`
    /// of `$DOCKER_CONFIG/config.json`, else the default socket.
    pub fn from_env() -> Result<Endpoint, String> {
        resolve::current(&resolve::process_env).map(|r| r.endpoint)
    }

    /// Parses a `DOCKER_HOST` value: `unix:///path`, `tcp://host:port`
    /// (TLS when `DOCKER_TLS_VERIFY` is set, with `DOCKER_CERT_PATH`),
    /// `http://host:port`.
    pub fn parse_host(host: &str) -> Result<Endpoint, String> {
        resolve::host_endpoint(host, &resolve::process_env)
    }
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
    resolved: Resolved,
    target: String,
    cell: Arc<OnceCell<Arc<Engine>>>,
}

impl EngineCell {
    pub(crate) async fn get(&self) -> Result<Arc<Engine>, TransportError> {
        self.cell
            .get_or_try_init(|| async {
                Engine::connect(self.resolved.clone(), &self.target)
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
    engine: EngineCell,
}

impl fmt::Debug for DockerTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerTransport")
            .field("target", &self.target)
            .field("container", &self.container)
            .field("endpoint", &self.engine.resolved.endpoint)
            .finish_non_exhaustive()
    }
}

impl DockerTransport {
    /// Parses `docker:NAME`, `docker:///NAME`, `docker:///NAME?context=CTX`
    /// or `docker://HOST:PORT/NAME`, and chooses the
    /// engine as the docker CLI would (see [`Endpoint::from_env`]; a named
    /// context's files are read now). Does not touch the network.
    pub fn new(target: &str) -> Result<Self, TransportError> {
        Self::new_in(target, &resolve::process_env)
    }

    /// [`DockerTransport::new`] with the environment `env` instead of the
    /// process's.
    pub(crate) fn new_in(target: &str, env: resolve::Lookup<'_>) -> Result<Self, TransportError> {
        let invalid = |reason: String| TransportError::InvalidTarget {
            target: target.to_string(),
            reason,
        };
        let usage =
            "expected `docker:NAME`, `docker:///NAME?context=CONTEXT` or `docker://HOST:PORT/NAME`";
        let rest = match target.split_once(':') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("docker") => rest,
            _ => return Err(invalid(usage.into())),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        // Parameters belong to the URL form, where an allow-list pattern
        // must name each (`docker:*` must not admit another engine).
        if let (Some(q), false) = (query, rest.starts_with("//")) {
            return Err(invalid(format!(
                "parameters go with the URL form: `docker:///{}?{q}`",
                rest.trim_start_matches('/')
            )));
        }
        let mut context = None;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            match pair.split_once('=') {
                Some(("context", v)) if context.is_none() => {
                    resolve::valid_context_name(v).map_err(invalid)?;
                    context = Some(v);
                }
                Some(("context", _)) => return Err(invalid("`context` given twice".into())),
                _ => {
                    return Err(invalid(format!(
                        "unknown parameter `{pair}` (a docker target takes `context=NAME`: `docker:///NAME?context=CONTEXT`)"
                    )))
                }
            }
        }
        let chosen = |env| match context {
            Some(c) => resolve::context(c, env, "named by the target"),
            None => resolve::current(env),
        };
        let (resolved, name) = match rest.strip_prefix("//") {
            Some(url) => {
                let (host, name) = url.split_once('/').ok_or_else(|| {
                    invalid(
                        "no container after the engine address (`docker://HOST:PORT/NAME`)".into(),
                    )
                })?;
                let resolved = if host.is_empty() {
                    chosen(env).map_err(invalid)?
                } else if context.is_some() {
                    return Err(invalid(
                        "both an engine address and a context: give one (`docker://HOST:PORT/NAME` or `docker:///NAME?context=CONTEXT`)".into(),
                    ));
                } else {
                    let addr = endpoint::host_port(host).map_err(invalid)?;
                    resolve::explicit_tcp(&addr, env).map_err(invalid)?
                };
                (resolved, name)
            }
            None => (chosen(env).map_err(invalid)?, rest),
        };
        // Docker shows names as `/name`; accept one leading slash there only.
        let name = name
            .strip_prefix('/')
            .filter(|_| !rest.starts_with("//"))
            .unwrap_or(name);
        valid_container(name).map_err(invalid)?;
        Ok(Self::build(target, name, resolved))
    }

    /// A transport for `container` on an engine the caller chose: a TLS
    /// engine with files of its own, an engine behind an
    /// [`EngineConnector`] ([`Endpoint::Tunnel`]). `target` names it in
    /// messages and in the session's record on disk; `execkit gc`
    /// reconnects a record through [`DockerTransport::new`] of that
    /// target, so only a target that names the same engine lets gc clean
    /// up after a crash.
    pub fn with_endpoint(
        target: &str,
        container: &str,
        endpoint: Endpoint,
    ) -> Result<Self, TransportError> {
        valid_container(container).map_err(|reason| TransportError::InvalidTarget {
            target: target.to_string(),
            reason,
        })?;
        Ok(Self::build(
            target,
            container,
            Resolved {
                endpoint,
                via: None,
            },
        ))
    }

    fn build(target: &str, container: &str, resolved: Resolved) -> Self {
        DockerTransport {
            target: target.to_string(),
            container: container.to_string(),
            engine: EngineCell {
                resolved,
                target: target.to_string(),
                cell: Arc::new(OnceCell::new()),
            },
        }
    }

    /// The container name or id as given.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// The engine this target uses.
    pub fn endpoint(&self) -> &Endpoint {
        &self.engine.resolved.endpoint
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
                        self.container,
                        engine::describe(self.endpoint(), self.engine.resolved.via.as_deref())
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
    summary: "a shell in a running container (DOCKER_HOST, TLS and Docker contexts honoured)",
    example: "docker:web, docker:///web?context=staging, docker://127.0.0.1:2375/web",
    connect: connect,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty environment: no DOCKER_*, no HOME.
    fn bare(target: &str) -> Result<DockerTransport, TransportError> {
        DockerTransport::new_in(target, &|_| None)
    }

    #[test]
    fn parses_targets() {
        let t = bare("docker:web").unwrap();
        assert_eq!(t.container(), "web");
        assert_eq!(t.endpoint(), &Endpoint::Unix(DEFAULT_SOCKET.into()));
        let t = bare("docker:/web").unwrap();
        assert_eq!(t.container(), "web");
        let t = bare("docker:///web").unwrap();
        assert_eq!(t.endpoint(), &Endpoint::Unix(DEFAULT_SOCKET.into()));
        let t = bare("docker://127.0.0.1:2376/web-1").unwrap();
        assert_eq!(t.container(), "web-1");
        assert_eq!(t.endpoint(), &Endpoint::Tcp("127.0.0.1:2376".into()));
        let t = bare("docker://engine/abc123").unwrap();
        assert_eq!(t.endpoint(), &Endpoint::Tcp("engine:2375".into()));
        let t = bare("docker://[::1]:99/x").unwrap();
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
            "docker:web?",
            "docker:web?context=staging",
            "docker:///web?",
            "docker:///web?shell=/bin/sh",
            "docker:///web?context=",
            "docker:///web?context=../x",
            "docker:///web?context=a/b",
            "docker:///web?context=a&context=b",
            "docker://h:1/web?context=a",
            "docker:///?context=a",
        ] {
            let e = bare(bad).unwrap_err();
            assert!(e.is_usage(), "{bad}: {e}");
        }
    }

    #[test]
    fn a_context_in_the_target_wins_over_the_environment() {
        let cfg = std::env::temp_dir().join(format!("execkit-target-ctx-{}", std::process::id()));
        let id = resolve::sha256_hex(b"staging");
        let meta = cfg.join("contexts/meta").join(&id);
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(
            meta.join("meta.json"),
            r#"{"Name":"staging","Endpoints":{"docker":{"Host":"tcp://10.1.2.3:2376","SkipTLSVerify":false}}}"#,
        )
        .unwrap();
        let tls = cfg.join("contexts/tls").join(&id).join("docker");
        std::fs::create_dir_all(&tls).unwrap();
        let c = cfg.to_string_lossy().to_string();
        let env = move |k: &str| match k {
            "DOCKER_CONFIG" => Some(c.clone()),
            // Both lose to the target's own context.
            "DOCKER_HOST" => Some("unix:///elsewhere.sock".into()),
            "DOCKER_CONTEXT" => Some("nope".into()),
            _ => None,
        };
        let t = DockerTransport::new_in("docker:///web?context=staging", &env).unwrap();
        assert_eq!(t.container(), "web");
        assert_eq!(
            t.endpoint(),
            &Endpoint::Tls(TlsEndpoint {
                addr: "10.1.2.3:2376".into(),
                ca: tls.join("ca.pem"),
                client: None,
            })
        );
        // The opaque form takes no parameters: an allow-list pattern
        // `docker:*` would admit them unseen.
        let e = DockerTransport::new_in("docker:web?context=staging", &env).unwrap_err();
        assert!(
            e.to_string().contains("docker:///web?context=staging"),
            "{e}"
        );
        let e = DockerTransport::new_in("docker:///web?context=other", &env).unwrap_err();
        assert!(e.is_usage() && e.to_string().contains("`other`"), "{e}");
        // Without it, DOCKER_HOST decides.
        let t = DockerTransport::new_in("docker:web", &env).unwrap();
        assert_eq!(t.endpoint(), &Endpoint::Unix("/elsewhere.sock".into()));
        std::fs::remove_dir_all(&cfg).unwrap();
    }

    #[test]
    fn an_explicit_engine_uses_tls_when_the_environment_says_so() {
        let env = |k: &str| match k {
            "DOCKER_TLS_VERIFY" => Some("1".to_string()),
            "DOCKER_CERT_PATH" => Some("/certs".to_string()),
            _ => None,
        };
        let t = DockerTransport::new_in("docker://127.0.0.1:2376/web", &env).unwrap();
        assert!(
            matches!(t.endpoint(), Endpoint::Tls(tls) if tls.addr == "127.0.0.1:2376" && tls.ca == std::path::Path::new("/certs/ca.pem")),
            "{:?}",
            t.endpoint()
        );
    }
}
