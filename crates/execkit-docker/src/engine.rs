//! Talking to the Docker engine: `bollard` for the JSON API (inspect,
//! exec create / resize / inspect), and a raw HTTP upgrade for the exec's
//! terminal stream.
//!
//! Why not bollard's `start_exec`: its TTY attach decoder treats a chunk
//! whose first byte is 0x00–0x02 as the header of a multiplexed frame
//! (stdin/stdout/stderr), so such output is corrupted or stalls. A TTY exec
//! stream is plain bytes both ways; we upgrade the connection ourselves
//! (`POST /exec/ID/start`, `Connection: Upgrade`, `Upgrade: tcp`) and then
//! read and write it as a byte stream.

use std::io;
use std::sync::Mutex;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, ResizeExecOptions};
use bollard::{ClientVersion, Docker};
use execkit_core::{ErrorKind, Size, TransportError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Endpoint;

/// Seconds bollard waits for any one API request.
const API_TIMEOUT: u64 = 30;
/// How long the engine may take to answer the version handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a marker cleanup may run in the container (a loaded engine
/// with a hundred sessions closing at once is slow to start execs).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);

/// API versions already negotiated, per endpoint: every session opens its
/// own transport, and the handshake is a round trip each time otherwise.
static NEGOTIATED: Mutex<Vec<(Endpoint, ClientVersion)>> = Mutex::new(Vec::new());
/// Largest HTTP response head we accept before the raw stream starts.
const MAX_HEAD: usize = 64 * 1024;
/// While waiting for an unpause on the event stream, how often the
/// container's state is checked again anyway.
const UNPAUSE_RECHECK: Duration = Duration::from_secs(30);

/// A byte stream to the engine (Unix socket or TCP).
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Boxed stream halves of an upgraded exec connection.
pub(crate) type ReadHalf = tokio::io::ReadHalf<Box<dyn Stream>>;
/// The writing half.
pub(crate) type WriteHalf = tokio::io::WriteHalf<Box<dyn Stream>>;

/// A started exec's terminal: bytes the engine sent along with the
/// response head, then the stream halves.
pub(crate) struct Attached {
    pub initial: Vec<u8>,
    pub read: ReadHalf,
    pub write: WriteHalf,
}

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
    target: String,
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

impl Engine {
    /// Builds a client for `endpoint` and negotiates the API version.
    pub async fn connect(endpoint: Endpoint, target: &str) -> Result<Engine, TransportError> {
        let unreachable = |kind, reason: String| TransportError::unreachable(target, kind, reason);
        let known = NEGOTIATED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(e, _)| *e == endpoint)
            .map(|(_, v)| *v);
        let version = known.as_ref().unwrap_or(bollard::API_DEFAULT_VERSION);
        let docker = match &endpoint {
            Endpoint::Unix(path) => {
                if !path.exists() {
                    return Err(unreachable(ErrorKind::ConnectionRefused, format!(
                        "no Docker engine at {endpoint} (socket not found; is dockerd running? DOCKER_HOST selects another engine)"
                    )));
                }
                Docker::connect_with_unix(&path.to_string_lossy(), API_TIMEOUT, version)
            }
            Endpoint::Tcp(addr) => {
                Docker::connect_with_http(&format!("http://{addr}"), API_TIMEOUT, version)
            }
        }
        .map_err(|e| {
            unreachable(
                ErrorKind::Other,
                format!("cannot use the Docker engine at {endpoint}: {e}"),
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
                        return Err(unreachable(
                            chain_kind(&e),
                            format!(
                                "the Docker engine at {endpoint} does not answer: {}",
                                one_line(&e)
                            ),
                        )
                        .with_source(e))
                    }
                    Err(_) => {
                        return Err(unreachable(
                            ErrorKind::Timeout,
                            format!(
                                "the Docker engine at {endpoint} did not answer within {} s",
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
            target: target.to_string(),
            docker,
        })
    }

    /// Maps a bollard error of `what` to a transport error.
    fn error(&self, what: &str, e: BollardError) -> TransportError {
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
            other => TransportError::unreachable(
                &self.target,
                chain_kind(&other),
                format!(
                    "{what}: the Docker engine at {} does not answer: {}",
                    self.endpoint,
                    one_line(&other)
                ),
            )
            .with_source(other),
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

    /// Creates an exec in the container; returns its id.
    pub async fn create_exec(
        &self,
        container: &str,
        cmd: Vec<String>,
        env: Vec<String>,
        tty: bool,
        working_dir: Option<String>,
    ) -> Result<String, BollardError> {
        let opts = CreateExecOptions::<String> {
            attach_stdin: Some(tty),
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

    async fn open(&self) -> io::Result<Box<dyn Stream>> {
        match &self.endpoint {
            Endpoint::Unix(path) => Ok(Box::new(tokio::net::UnixStream::connect(path).await?)),
            Endpoint::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr.as_str()).await?;
                s.set_nodelay(true)?;
                Ok(Box::new(s))
            }
        }
    }

    /// Starts an exec and takes over its connection as a raw byte stream.
    pub async fn start_raw(&self, exec_id: &str, tty: bool) -> Result<Attached, TransportError> {
        let body = format!("{{\"Detach\":false,\"Tty\":{tty}}}");
        let request = format!(
            "POST /{}/exec/{exec_id}/start HTTP/1.1\r\nHost: {}\r\nUser-Agent: execkit\r\n\
             Content-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.api,
            self.host(),
            body.len()
        );
        let (mut stream, head, rest) = self.exchange(&request, "reading from").await?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if status == 101 || status == 200 {
            let (read, write) = tokio::io::split(stream);
            return Ok(Attached {
                initial: rest,
                read,
                write,
            });
        }
        // An error: the JSON body says why.
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0)
            .min(MAX_HEAD);
        let mut body = rest;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = [0u8; 4096];
            while body.len() < len {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => body.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        let reason = format!("starting the exec: the engine answered {status}: {message}");
        Err(match status {
            // The exec or its container is gone.
            404 => TransportError::unreachable(&self.target, ErrorKind::NotFound, reason),
            // The container stopped or was paused since the exec was made.
            409 => TransportError::unreachable(&self.target, conflict_kind(&message), reason),
            _ => self.spawn_err(&reason),
        })
    }

    fn spawn_err(&self, reason: &str) -> TransportError {
        TransportError::Spawn {
            target: self.target.clone(),
            reason: reason.to_string(),
        }
    }

    /// Kills every process in the container whose environment holds
    /// exactly `entry`, by a one-shot exec of the portable marker-kill
    /// script; waits until it finished. A container that stopped or went
    /// away runs nothing, so that counts as done; a paused one is an error
    /// ([`paused_error`]): its processes live on, frozen.
    pub async fn kill_matching(
        &self,
        container_id: &str,
        name: &str,
        sh: &[String],
        entry: &str,
    ) -> Result<(), TransportError> {
        match self
            .try_kill_matching(container_id, name, sh, entry)
            .await?
        {
            Killed::Done => Ok(()),
            Killed::Paused => Err(paused_error(&self.target, name)),
        }
    }

    /// [`Engine::kill_matching`], telling a paused container apart.
    pub async fn try_kill_matching(
        &self,
        container_id: &str,
        name: &str,
        sh: &[String],
        entry: &str,
    ) -> Result<Killed, TransportError> {
        let script = execkit_core::raw::kill_matching_script(entry);
        let what = format!("marker cleanup in container {name}");
        Ok(self.oneshot(container_id, &what, sh, &script).await?.0)
    }

    /// Runs `script` with `/bin/sh` in the container, out of band, and
    /// returns its output (at most 64 KiB). A paused container is an error.
    pub async fn run_script(
        &self,
        container_id: &str,
        name: &str,
        sh: &[String],
        script: &str,
    ) -> Result<String, TransportError> {
        let what = format!("a script in container {name}");
        match self.oneshot(container_id, &what, sh, script).await? {
            (Killed::Done, out) => Ok(String::from_utf8_lossy(&out).into_owned()),
            (Killed::Paused, _) => Err(paused_error(&self.target, name)),
        }
    }

    /// A one-shot `SH… SCRIPT` exec (`sh`: e.g. `/bin/sh -c`, see
    /// `shell::script_argv`): waits until it finished and returns its
    /// output (bounded). A container that stopped or went away runs
    /// nothing, which counts as done; a paused one is told apart.
    async fn oneshot(
        &self,
        container_id: &str,
        what: &str,
        sh: &[String],
        script: &str,
    ) -> Result<(Killed, Vec<u8>), TransportError> {
        const MAX_OUTPUT: usize = 64 * 1024;
        let mut cmd = sh.to_vec();
        cmd.push(script.to_string());
        let exec_id = match self
            .create_exec(container_id, cmd, Vec::new(), false, None)
            .await
        {
            Ok(id) => id,
            Err(BollardError::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => return Ok((self.why_no_exec(container_id).await?, Vec::new())),
            Err(e) => return Err(self.error(what, e)),
        };
        let run = async {
            let mut att = self.start_raw(&exec_id, false).await?;
            // The stream ends when the script does. Without a TTY it is
            // multiplexed: 8-byte frame headers, kept out of the output.
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match att.read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) if raw.len() < MAX_OUTPUT + 8 * 1024 => raw.extend_from_slice(&buf[..n]),
                    Ok(_) => {}
                }
            }
            Ok::<_, TransportError>(demux_stdout(&raw, MAX_OUTPUT))
        };
        let failed = |why: String| TransportError::io(what.to_string(), io::Error::other(why));
        let output = match tokio::time::timeout(CLEANUP_TIMEOUT, run).await {
            Err(_) => {
                return Err(failed(format!(
                    "did not finish within {} s",
                    CLEANUP_TIMEOUT.as_secs()
                )))
            }
            // The engine's 409 on start: the container stopped or paused.
            Ok(Err(e)) if matches!(e.kind(), ErrorKind::NotRunning | ErrorKind::Paused) => {
                return Ok((self.why_no_exec(container_id).await?, Vec::new()))
            }
            Ok(r) => r?,
        };
        // The stream can end a moment before the engine records the exit.
        for _ in 0..50 {
            match self.exec_state(&exec_id).await {
                Ok(ExecState {
                    running: false,
                    exit_code,
                }) => {
                    return match exit_code {
                        Some(0) | None => Ok((Killed::Done, output)),
                        Some(c) => Err(failed(format!("the script exited with code {c}"))),
                    }
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Ok((Killed::Done, output)),
                Err(e) => return Err(self.error(what, e)),
            }
        }
        Ok((Killed::Done, output))
    }

    /// The engine refused an exec (404/409): a stopped or removed
    /// container runs nothing, so that counts as done; a paused one does not.
    async fn why_no_exec(&self, container_id: &str) -> Result<Killed, TransportError> {
        match self.container_state(container_id).await? {
            ContainerState::Paused { .. } => Ok(Killed::Paused),
            _ => Ok(Killed::Done),
        }
    }

    /// Waits until the container is no longer paused (unpaused, stopped or
    /// removed) or `deadline` passes, by following the engine's event
    /// stream for it; the state is checked again every
    /// [`UNPAUSE_RECHECK`] in case an event was missed (a remote engine's
    /// clock off by more than the replay margin). Returns whether it left
    /// the paused state.
    pub async fn wait_unpaused(
        &self,
        container_id: &str,
        deadline: tokio::time::Instant,
    ) -> Result<bool, TransportError> {
        if !container_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.spawn_err("a container id is not hexadecimal"));
        }
        loop {
            // Events since a moment before the state check are replayed, so
            // an unpause between the check and the subscription counts.
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .saturating_sub(1);
            if !matches!(
                self.container_state(container_id).await?,
                ContainerState::Paused { .. }
            ) {
                return Ok(true);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let until = deadline.min(now + UNPAUSE_RECHECK);
            match tokio::time::timeout_at(until, self.next_event(container_id, since)).await {
                Ok(Ok(())) => return Ok(true),
                Ok(Err(e)) => return Err(e),
                Err(_) => {}
            }
        }
    }

    /// Waits for the first unpause, die or destroy event of the container
    /// since `since` (Unix seconds), on the engine's event stream.
    async fn next_event(&self, container_id: &str, since: u64) -> Result<(), TransportError> {
        // filters={"container":["ID"],"event":["unpause","die","destroy"]}
        let filters = format!(
            "%7B%22container%22%3A%5B%22{container_id}%22%5D%2C%22event%22%3A%5B%22unpause%22%2C%22die%22%2C%22destroy%22%5D%7D"
        );
        let request = format!(
            "GET /{}/events?since={since}&filters={filters} HTTP/1.1\r\nHost: {}\r\nUser-Agent: execkit\r\n\r\n",
            self.api,
            self.host()
        );
        let (mut stream, head, rest) = self.exchange(&request, "reading events from").await?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Err(self.spawn_err(&format!(
                "watching container events: the engine answered {}",
                head.lines().next().unwrap_or("")
            )));
        }
        // Any body after the response head is one of the filtered events.
        if !rest.is_empty() {
            return Ok(());
        }
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf).await {
            Ok(0) => Err(self.io_err(
                "reading events from",
                io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"),
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(self.io_err("reading from", e)),
        }
    }

    /// The `Host` header for requests written by hand.
    fn host(&self) -> &str {
        match &self.endpoint {
            Endpoint::Unix(_) => "docker",
            Endpoint::Tcp(a) => a.as_str(),
        }
    }

    fn io_err(&self, what: &str, e: io::Error) -> TransportError {
        TransportError::unreachable(
            &self.target,
            io_kind(&e),
            format!("{what} the Docker engine at {}: {e}", self.endpoint),
        )
        .with_source(e)
    }

    /// Sends one hand-written HTTP/1.1 request on a fresh connection and
    /// reads the response head: returns the connection, the head and the
    /// bytes that came after it. `eof_what` names a premature end.
    async fn exchange(
        &self,
        request: &str,
        eof_what: &str,
    ) -> Result<(Box<dyn Stream>, String, Vec<u8>), TransportError> {
        let mut stream = self
            .open()
            .await
            .map_err(|e| self.io_err("cannot connect to", e))?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| self.io_err("writing to", e))?;
        stream
            .flush()
            .await
            .map_err(|e| self.io_err("writing to", e))?;
        let mut head = Vec::with_capacity(1024);
        let end = loop {
            if let Some(i) = find(&head, b"\r\n\r\n") {
                break i + 4;
            }
            if head.len() > MAX_HEAD {
                return Err(self.spawn_err("the engine sent an oversized response head"));
            }
            let mut buf = [0u8; 4096];
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| self.io_err("reading from", e))?;
            if n == 0 {
                return Err(self.io_err(
                    eof_what,
                    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"),
                ));
            }
            head.extend_from_slice(&buf[..n]);
        };
        let rest = head.split_off(end);
        Ok((stream, String::from_utf8_lossy(&head).into_owned(), rest))
    }
}

/// Whether a marker cleanup ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Killed {
    /// Done (or nothing to do: the container is stopped or gone).
    Done,
    /// The container is paused: nothing can run in it, its processes live on.
    Paused,
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

/// The error for a cleanup that has to wait for an unpause.
pub(crate) fn paused_error(target: &str, name: &str) -> TransportError {
    TransportError::unreachable(
        target,
        ErrorKind::Paused,
        format!("container {name} is paused; its session processes are killed once it is unpaused"),
    )
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
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            return io_kind(io);
        }
        cur = c.source();
    }
    ErrorKind::Other
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
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

/// The stdout frames of a multiplexed (non-TTY) attach stream: each frame
/// is an 8-byte header (stream type, 3 zero bytes, big-endian length) and
/// its payload. At most `max` bytes are kept; a torn last frame is cut.
fn demux_stdout(raw: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = raw;
    while rest.len() >= 8 {
        let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let end = (8 + len).min(rest.len());
        if rest[0] == 1 {
            let take = (end - 8).min(max.saturating_sub(out.len()));
            out.extend_from_slice(&rest[8..8 + take]);
        }
        rest = &rest[end..];
    }
    out
}
