//! `execkit serve`: the per-user daemon holding named sessions behind a Unix
//! socket. The directory is 0700, the socket 0600, and every connection's
//! peer uid is checked (SO_PEERCRED): another user is refused. SIGTERM or
//! SIGINT closes every session with cleanup (running commands are killed,
//! not waited for; a second signal exits at once).
//!
//! Bounds: a request line is at most [`MAX_REQUEST`] bytes, an unfinished
//! one that gets no byte for `--request-timeout` seconds ends its
//! connection, all connections together buffer at most [`MAX_IN_FLIGHT`]
//! bytes of unfinished requests, `accept` backs off while the process is out
//! of file descriptors, and at most `--max-sessions` sessions are open.

mod requests;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use execkit_core::console::{ConsoleEvent, Origin};
use execkit_core::host::{Host, HostConfig};
use execkit_core::SessionConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::observe::JournalArgs;
use crate::proto::{self, Envelope, Request, Response, MAX_REQUEST};
use requests::{accept, handle, refuse};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Socket path [default: ${XDG_RUNTIME_DIR:-/tmp/execkit-$UID}/execkit.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Target for sessions opened without one.
    #[arg(long, short = 't', default_value = "local")]
    pub target: String,
    /// Only targets matching one of these patterns may be opened
    /// (repeatable): a target with `*` in its parts, e.g. `local`,
    /// `local:/bin/dash`, `docker:web-*`, `ssh://deploy@*.example.com:*`.
    /// Parts compare separately; parameters (`?known_hosts=…`) only when
    /// the pattern names them. Without it every target is allowed.
    #[arg(long = "allow-target", value_name = "PATTERN")]
    pub allow_target: Vec<String>,
    /// Close sessions idle for this many seconds.
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    pub idle_timeout: u64,
    /// Characters of output kept per command before capping.
    #[arg(long, default_value_t = 30_000, value_name = "N")]
    pub output_limit: usize,
    /// Most sessions open at once; `open` beyond it is refused (0: no limit).
    #[arg(long, default_value_t = execkit_core::host::DEFAULT_MAX_SESSIONS, value_name = "N")]
    pub max_sessions: usize,
    /// A connection whose request line stays unfinished (no byte received)
    /// this many seconds is closed.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub request_timeout: u64,
    #[command(flatten)]
    pub journal: JournalArgs,
    /// A floor for every session: a request may ask for more containment,
    /// never less (`sandbox=off` is refused), and only local targets open.
    #[command(flatten)]
    pub contain: crate::contain_args::ContainArgs,
}

pub fn main(args: ServeArgs) -> ExitCode {
    if let Err(code) = crate::check_allow_targets("serve", &args.allow_target) {
        return code;
    }
    let rt = match crate::runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let outcome = rt.block_on(serve(args));
    // Connections still open and cleanups still running on blocking
    // threads must not hold the exit up.
    rt.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("execkit serve: {e}");
            ExitCode::from(1)
        }
    }
}

/// Bytes of unfinished request lines all connections may hold together.
pub const MAX_IN_FLIGHT: usize = 64 * 1024 * 1024;
/// How long a shutdown may take before the server exits anyway (whatever
/// is left is killed by the cleanup on drop, or by `execkit gc` later).
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);

/// Limits shared by every connection.
struct Limits {
    /// Bytes buffered in unfinished request lines, all connections.
    in_flight: AtomicUsize,
    /// Idle time allowed inside an unfinished request line.
    request_timeout: Duration,
}

/// One connection's share of [`Limits::in_flight`]; returned on drop.
struct Charge<'a> {
    limits: &'a Limits,
    held: usize,
}

impl<'a> Charge<'a> {
    fn new(limits: &'a Limits) -> Self {
        Charge { limits, held: 0 }
    }

    /// Holds `len` bytes in all; false when that would pass the global cap.
    fn hold(&mut self, len: usize) -> bool {
        if len > self.held {
            let more = len - self.held;
            let before = self.limits.in_flight.fetch_add(more, Ordering::SeqCst);
            if before + more > MAX_IN_FLIGHT {
                self.limits.in_flight.fetch_sub(more, Ordering::SeqCst);
                return false;
            }
            self.held = len;
        }
        true
    }

    fn release(&mut self) {
        self.limits.in_flight.fetch_sub(self.held, Ordering::SeqCst);
        self.held = 0;
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Raises the soft limit on open files to the hard one: every session
/// holds a few descriptors.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Prepares the socket's directory and clears a stale socket. The
/// directory must be one only this user can write: a missing one is
/// created 0700; an existing one is used as it is when it is ours and
/// nobody else may write it, and refused otherwise (a shared or sticky
/// directory like `/tmp`, another user's, or one reached through another
/// user's symlink). A directory execkit did not create is never changed.
fn prepare_socket(path: &Path) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    execkit_core::state::socket_dir(dir).map_err(|e| {
        format!(
            "cannot use {} for the socket: {e}; refusing to serve there",
            dir.display()
        )
    })?;
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(format!(
                    "already running (socket {} answers)",
                    path.display()
                ))
            }
            Err(_) => std::fs::remove_file(path)
                .map_err(|e| format!("cannot remove the stale socket {}: {e}", path.display()))?,
        }
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let path = args.socket.clone().unwrap_or_else(proto::default_socket);
    prepare_socket(&path)?;
    let observer = args.journal.observer()?;
    let mut session = SessionConfig::default();
    session.output_limit = args.output_limit;
    let mut config = HostConfig::default();
    config.default_target = args.target.clone();
    config.allow_targets = args.allow_target.clone();
    config.idle_timeout = Duration::from_secs(args.idle_timeout.max(1));
    config.session = session;
    config.max_sessions = args.max_sessions;
    config.containment_floor = args.contain.policy()?;
    // A default target the floor cannot contain stops the server at start
    // (the allow list is for requests; the default is the user's own).
    execkit_core::contain::hold_target(&args.target, &config.containment_floor)?;
    let host = Host::new(config, observer);
    let limits = Arc::new(Limits {
        in_flight: AtomicUsize::new(0),
        request_timeout: Duration::from_secs(args.request_timeout.max(1)),
    });
    raise_fd_limit();

    let listener = UnixListener::bind(&path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    eprintln!(
        "execkit serve: listening on {} (pid {})",
        path.display(),
        std::process::id()
    );

    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let me = proto::nix_uid();
    // While out of descriptors, accept waits this long (doubling to 1 s)
    // instead of failing in a loop.
    let mut backoff = Duration::ZERO;
    loop {
        tokio::select! {
            conn = listener.accept(), if backoff.is_zero() => match conn {
                Ok((stream, _)) => {
                    let host = host.clone();
                    let limits = limits.clone();
                    tokio::spawn(async move { connection(stream, host, me, limits).await });
                }
                Err(e) if out_of_resources(&e) => {
                    eprintln!("execkit serve: accept: {e}; backing off until descriptors free up");
                    backoff = Duration::from_millis(10);
                }
                Err(_) => {}
            },
            _ = tokio::time::sleep(backoff), if !backoff.is_zero() => {
                match accept_now(&listener) {
                    Some(Ok(stream)) => {
                        backoff = Duration::ZERO;
                        let host = host.clone();
                        let limits = limits.clone();
                        tokio::spawn(async move { connection(stream, host, me, limits).await });
                    }
                    Some(Err(_)) => backoff = (backoff * 2).min(Duration::from_secs(1)),
                    None => backoff = Duration::ZERO,
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // New clients are refused from here on instead of queueing.
    drop(listener);
    let _ = std::fs::remove_file(&path);
    eprintln!(
        "execkit serve: shutting down, closing {} session(s)",
        host.list().len()
    );
    tokio::select! {
        _ = host.shutdown() => {}
        _ = term.recv() => eprintln!("execkit serve: second signal, exiting now"),
        _ = int.recv() => eprintln!("execkit serve: second signal, exiting now"),
        _ = tokio::time::sleep(SHUTDOWN_LIMIT) => {
            eprintln!("execkit serve: sessions still closing after {} s, exiting", SHUTDOWN_LIMIT.as_secs());
        }
    }
    Ok(())
}

/// Whether an accept error means the process or system is out of
/// descriptors or memory (retrying at once would spin).
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// One non-waiting accept after a back-off: `None` when nobody is
/// waiting, an error while still out of descriptors.
fn accept_now(listener: &UnixListener) -> Option<std::io::Result<UnixStream>> {
    use std::task::{Context, Poll};
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match listener.poll_accept(&mut cx) {
        Poll::Ready(Ok((s, _))) => Some(Ok(s)),
        Poll::Ready(Err(e)) if out_of_resources(&e) => Some(Err(e)),
        Poll::Ready(Err(_)) | Poll::Pending => None,
    }
}

async fn connection(stream: UnixStream, host: Arc<Host>, me: u32, limits: Arc<Limits>) {
    let cred = stream.peer_cred();
    let peer = cred.as_ref().map(|c| c.uid()).map_err(|e| e.to_string());
    let pid = cred.as_ref().ok().and_then(|c| c.pid());
    let (read, mut write) = stream.into_split();
    if peer.as_ref().ok() != Some(&me) {
        let who = peer.map_or("unknown".to_string(), |u| u.to_string());
        let _ = send(
            &mut write,
            &refuse(
                Value::Null,
                format!("permission denied: uid {who} is not the owner of this server"),
            ),
        )
        .await;
        return;
    }
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    let mut charge = Charge::new(&limits);
    loop {
        line.clear();
        if line.capacity() > 64 * 1024 {
            // A big request is done with: do not keep its buffer.
            line = Vec::new();
        }
        charge.release();
        match read_line(&mut reader, &mut line, &mut charge).await {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => {
                let _ = send(&mut write, &refuse(Value::Null, e)).await;
                return;
            }
        }
        let env = match parse_request(&line) {
            Ok(e) => e,
            Err(refusal) => {
                if send(&mut write, &refusal).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if let Request::Watch = env.request {
            // Subscribed before the answer: a client that has read it
            // sees every event from then on.
            let rx = host.observer().console.subscribe();
            if send(&mut write, &accept(env.id, json!({"watching": true})))
                .await
                .is_ok()
            {
                watch(rx, &mut write).await;
            }
            return;
        }
        if let Request::Attach { session, read_only } = env.request {
            attach(
                &host,
                env.id,
                &session,
                read_only,
                reader,
                &mut write,
                &mut charge,
            )
            .await;
            return;
        }
        if let Request::Publish = env.request {
            let publisher = Origin {
                publisher: PUBLISHERS.fetch_add(1, Ordering::Relaxed) + 1,
                pid,
                uid: me,
                comm: pid.and_then(process_name),
            };
            if send(&mut write, &accept(env.id, json!({"publishing": true})))
                .await
                .is_ok()
            {
                drop(line);
                relay(&host, reader, &mut charge, &publisher).await;
            }
            return;
        }
        charge.release();
        let Some(resp) = serve_request(&host, env, &mut reader, &write).await else {
            return;
        };
        if send(&mut write, &resp).await.is_err() {
            return;
        }
    }
}

/// One request line as an [`Envelope`], or the refusal to send back (with
/// the request's `id` when it has one).
fn parse_request(line: &[u8]) -> Result<Envelope, Response> {
    serde_json::from_slice(line).map_err(|e| {
        let id = serde_json::from_slice::<Value>(line)
            .ok()
            .and_then(|v| v.get("id").cloned())
            .unwrap_or(Value::Null);
        refuse(id, format!("malformed request: {e}"))
    })
}

/// Serves one request; `None` when the client went away while it waited
/// for a command. Only a wait for a command is given up when its client
/// goes: an open, close or interrupt half done would leave a half state.
async fn serve_request(
    host: &Arc<Host>,
    env: Envelope,
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    write: &tokio::net::unix::OwnedWriteHalf,
) -> Option<Response> {
    let waits = matches!(env.request, Request::Run { .. } | Request::Poll { .. });
    let work = handle(host, env);
    tokio::pin!(work);
    if !waits {
        return Some(work.await);
    }
    tokio::select! {
        resp = &mut work => Some(resp),
        gone = hung_up(reader, write) => {
            // Nobody to answer: dropping the wait leaves the command going
            // (its result waits for `poll`).
            if gone { None } else { Some(work.await) }
        }
    }
}

/// Resolves when the client is gone (true) or has sent more (false) while
/// a request of its is being served; pending otherwise. A client that only
/// shut its sending side (`nc -N`) still gets its answer.
async fn hung_up(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    write: &tokio::net::unix::OwnedWriteHalf,
) -> bool {
    match reader.fill_buf().await {
        Ok(buf) if !buf.is_empty() => false,
        Ok(_) => {
            let stream: &UnixStream = write.as_ref();
            match stream.ready(tokio::io::Interest::WRITABLE).await {
                Ok(r) if r.is_write_closed() => true,
                Ok(_) => std::future::pending().await,
                Err(_) => true,
            }
        }
        Err(_) => true,
    }
}

/// Reads one line (without the newline) up to MAX_REQUEST; false at EOF.
/// Inside a line, a client silent for the request timeout, or a line that
/// would take the server past [`MAX_IN_FLIGHT`], is an error.
async fn read_line(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    line: &mut Vec<u8>,
    charge: &mut Charge<'_>,
) -> Result<bool, String> {
    let limit = charge.limits.request_timeout;
    loop {
        let started = !line.is_empty() || !reader.buffer().is_empty();
        let buf = if started {
            match tokio::time::timeout(limit, reader.fill_buf()).await {
                Ok(r) => r.map_err(|e| e.to_string())?,
                Err(_) => {
                    return Err(format!(
                        "request unfinished after {} s without data; closing the connection",
                        limit.as_secs()
                    ))
                }
            }
        } else {
            reader.fill_buf().await.map_err(|e| e.to_string())?
        };
        if buf.is_empty() {
            return Ok(!line.is_empty());
        }
        let (take, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, Some(i + 1)),
            None => (buf.len(), None),
        };
        if line.len() + take > MAX_REQUEST {
            return Err(format!(
                "request longer than {MAX_REQUEST} bytes; closing the connection"
            ));
        }
        if !charge.hold(line.len() + take) {
            return Err(format!(
                "server busy: unfinished requests hold more than {MAX_IN_FLIGHT} bytes; closing the connection"
            ));
        }
        line.extend_from_slice(&buf[..take]);
        reader.consume(end.unwrap_or(take));
        if end.is_some() {
            return Ok(true);
        }
    }
}

/// Publishing connections so far: each one's number namespaces its
/// session ids (`pub3/…`), so no publisher can speak for a session of the
/// server or of another publisher, even after a pid is reused.
static PUBLISHERS: AtomicU64 = AtomicU64::new(0);

/// A process's name (`/proc/PID/comm`), if it can be read.
fn process_name(pid: i32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end_matches('\n').to_string())
}

/// Mirrors the console events a publisher sends (one JSON line each) to
/// this server's watchers, until it hangs up. Every event is tagged with
/// `publisher` and its session id namespaced (`ConsoleEvent::published_by`):
/// the publisher is of our uid, yet it is another process, and must not
/// pass for one of our sessions. A line that is not an event ends the
/// stream: the publisher is confused.
async fn relay(
    host: &Host,
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    charge: &mut Charge<'_>,
    publisher: &Origin,
) {
    let console = &host.observer().console;
    let mut line = Vec::new();
    loop {
        line.clear();
        charge.release();
        match read_line(&mut reader, &mut line, charge).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
        match serde_json::from_slice::<ConsoleEvent>(&line) {
            Ok(ev) => console.publish(ev.published_by(publisher)),
            Err(_) => return,
        }
    }
}

/// One line to an attached client.
async fn send_value(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    v: &Value,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

/// A person attached to a session (`execkit attach`): its screen, then
/// its updates (`{"output"}`; `{"screen"}` again after falling behind;
/// `{"ended"}` when the session ends), while the client's lines
/// (`{"keys": [bytes]}`) go to the running command — refused
/// (`{"refused", "kind"}`) when read-only or when nothing runs.
async fn attach(
    host: &Arc<Host>,
    id: Value,
    name: &str,
    read_only: bool,
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
    charge: &mut Charge<'_>,
) {
    let a = match host.attach(name).await {
        Ok(a) => a,
        Err(e) => {
            let resp = Response {
                kind: Some(e.code().to_string()),
                ..refuse(id, e.to_string())
            };
            let _ = send(write, &resp).await;
            return;
        }
    };
    let first = json!({
        "attached": name,
        "read_only": read_only,
        "rows": execkit_core::host::screen::ROWS,
        "cols": execkit_core::host::screen::COLS,
        "screen": String::from_utf8_lossy(&a.screen),
    });
    if send(write, &accept(id, first)).await.is_err() {
        return;
    }
    let mut updates = a.updates;
    let mut line = Vec::new();
    loop {
        let out = tokio::select! {
            u = updates.recv() => match u {
                Ok(b) => json!({"output": String::from_utf8_lossy(&b)}),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    match host.attach(name).await {
                        Ok(a) => {
                            updates = a.updates;
                            json!({"screen": String::from_utf8_lossy(&a.screen)})
                        }
                        Err(e) => json!({"ended": e.to_string()}),
                    }
                }
                Err(_) => json!({"ended": format!("session `{name}` has ended")}),
            },
            got = read_line(&mut reader, &mut line, charge) => match got {
                Ok(true) => {
                    let keys = serde_json::from_slice::<Value>(&line)
                        .ok()
                        .and_then(|v| serde_json::from_value::<Vec<u8>>(v.get("keys")?.clone()).ok());
                    line.clear();
                    charge.release();
                    match keys {
                        None => json!({"refused": "not a keys line ({\"keys\": [bytes]})", "kind": "malformed"}),
                        Some(_) if read_only => {
                            json!({"refused": "attached read-only: keys are not sent", "kind": "read_only"})
                        }
                        Some(k) => match host.send_keys(name, &k).await {
                            Ok(()) => continue,
                            Err(e) => json!({"refused": e.to_string(), "kind": e.code()}),
                        },
                    }
                }
                Ok(false) | Err(_) => return,
            },
        };
        let ended = out.get("ended").is_some();
        if send_value(write, &out).await.is_err() || ended {
            return;
        }
    }
}

async fn watch(
    mut rx: tokio::sync::broadcast::Receiver<Arc<ConsoleEvent>>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) {
    loop {
        match rx.recv().await {
            Ok(ev) => {
                let mut line = serde_json::to_vec(&*ev).unwrap_or_default();
                line.push(b'\n');
                if write.write_all(&line).await.is_err() {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                let note = format!("{{\"kind\":\"lagged\",\"skipped\":{n}}}\n");
                if write.write_all(note.as_bytes()).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

async fn send(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    resp: &Response,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(resp).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}
