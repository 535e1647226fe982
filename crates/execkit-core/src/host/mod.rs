//! Named, long-lived sessions for a host process (`execkit serve`, the MCP
//! server): each session lives in its own task (an actor) that keeps driving
//! a running command in the background — so timeouts fire, output reaches
//! the console and nothing is lost while no client is polling — buffers what
//! the client has not read yet, and closes itself after an idle period.
//!
//! A command never holds the actor: it is driven in short slices (the first
//! [`SLICE`], then [`TICK`]s), and between slices the actor serves `poll`,
//! `input` and `interrupt` from any client. A client waiting for a result is
//! only a *waiter*: when it goes away the command goes on and its result is
//! kept for the next `poll`. A `run` on a busy session is refused at once
//! ([`HostError::Busy`], naming the command and since when it runs). `close`
//! and [`Host::shutdown`] do not queue at all: they cancel whatever the actor
//! is doing and close the session (its processes are killed, its record on
//! disk removed), at most [`CLOSE_CONCURRENCY`] at a time, so thousands of
//! sessions close in parallel without flooding the blocking pool.
//!
//! This file is the API (`Host`, its config, requests and errors) and the
//! list of sessions; `actor.rs` is the per-session actor.

mod actor;
pub mod screen;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};

use crate::{Containment, Observer, RunOptions, RunResult, Session, SessionConfig, SessionError};
use actor::{Actor, Reply, Req};
pub use actor::{SLICE, TICK};
pub use screen::Attachment;

/// Why a host request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// No session has that name.
    #[error("no session named `{0}`")]
    NoSuchSession(String),
    /// A session with that name is already open.
    #[error("a session named `{0}` is already open")]
    NameTaken(String),
    /// The session name is not 1–64 of `[A-Za-z0-9._-]`, or starts with `-`.
    #[error("`{0}` is not a session name (1 to 64 letters, digits, `.`, `_` or `-`; not starting with `-`)")]
    InvalidName(String),
    /// The target (with the requested shell) is not in the allow list.
    #[error(
        "target `{target}`{} is not allowed here: {why} (allowed: {allowed})",
        .shell.as_deref().map(|s| format!(" with shell `{s}`")).unwrap_or_default()
    )]
    TargetNotAllowed {
        /// The refused target.
        target: String,
        /// The shell the request named, if any.
        shell: Option<String>,
        /// Why no pattern admits it.
        why: String,
        /// The allow list, comma-separated.
        allowed: String,
    },
    /// The session failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The session's task ended (closed, expired, or shut down).
    #[error("session `{0}` has ended")]
    Ended(String),
    /// A command is already running in the session.
    #[error("session `{name}` is busy: `{command}` running since {since} (poll, send input, interrupt or close it first)")]
    Busy {
        /// The session.
        name: String,
        /// The running command (shortened).
        command: String,
        /// When it started (RFC 3339, UTC).
        since: String,
    },
    /// The host holds as many sessions as it may.
    #[error("session limit reached: {0} sessions are open (close one, or raise the limit)")]
    TooManySessions(usize),
    /// The host is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// Closing the session (killing its processes) failed or took too long.
    #[error("session `{name}` closed, but its cleanup failed: {why}")]
    CloseFailed {
        /// The session.
        name: String,
        /// What went wrong.
        why: String,
    },
}

impl HostError {
    /// The transport's error inside, if that is what this is: its
    /// [`kind`](crate::TransportError::kind) says which failure.
    pub fn transport(&self) -> Option<&crate::TransportError> {
        match self {
            HostError::Session(e) => e.transport(),
            _ => None,
        }
    }

    /// A stable snake_case name of this failure for wire protocols (the
    /// serve protocol's `kind`): `no_such_session`, `name_taken`,
    /// `invalid_name`, `target_not_allowed`, `ended`, `busy`,
    /// `too_many_sessions`, `shutting_down`, `close_failed`, or the
    /// session's [`SessionError::code`].
    pub fn code(&self) -> &'static str {
        match self {
            HostError::NoSuchSession(_) => "no_such_session",
            HostError::NameTaken(_) => "name_taken",
            HostError::InvalidName(_) => "invalid_name",
            HostError::TargetNotAllowed { .. } => "target_not_allowed",
            HostError::Session(e) => e.code(),
            HostError::Ended(_) => "ended",
            HostError::Busy { .. } => "busy",
            HostError::TooManySessions(_) => "too_many_sessions",
            HostError::ShuttingDown => "shutting_down",
            HostError::CloseFailed { .. } => "close_failed",
        }
    }
}

/// How the host runs sessions.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HostConfig {
    /// Target for sessions opened without one.
    pub default_target: String,
    /// Patterns a target (and the shell an open names) must match; empty =
    /// any. Grammar: [`TargetPattern`](crate::TargetPattern); a pattern that
    /// does not parse admits nothing (check them with
    /// [`TargetPattern::parse`](crate::TargetPattern::parse)).
    pub allow_targets: Vec<String>,
    /// Sessions with no request and no running command for this long close.
    pub idle_timeout: Duration,
    /// Template for every session.
    pub session: SessionConfig,
    /// Most sessions open at once (0: no limit). The default stays well
    /// below Linux's default PTY limit (`/proc/sys/kernel/pty/max`, 4096).
    pub max_sessions: usize,
    /// The least containment every session gets (`--sandbox …` on a
    /// server): a request's own parameters may tighten it, never loosen
    /// it; with a floor, only local targets open. See [`crate::contain::hold_target`].
    pub containment_floor: Containment,
}

/// Default [`HostConfig::max_sessions`].
pub const DEFAULT_MAX_SESSIONS: usize = 2048;

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            default_target: "local".into(),
            allow_targets: Vec::new(),
            idle_timeout: Duration::from_secs(30 * 60),
            session: SessionConfig::default(),
            max_sessions: DEFAULT_MAX_SESSIONS,
            containment_floor: Containment::default(),
        }
    }
}

/// What to open.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OpenRequest {
    /// Session name; generated when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Target URL; the host's default when absent.
    #[serde(default)]
    pub target: Option<String>,
    /// Shell path on the target.
    #[serde(default)]
    pub shell: Option<String>,
    /// Initial working directory.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: HashMap<String, String>,
}

/// A session as listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionInfo {
    /// Name clients use.
    pub name: String,
    /// Engine id (journal `session` field).
    pub id: String,
    /// Target URL.
    pub target: String,
    /// Seconds since the epoch when it was opened.
    pub opened_at: u64,
}

/// What the host keeps of one session: its info, its request queue, the
/// switch that closes it, and how its close ended.
#[derive(Clone)]
struct Handle {
    info: SessionInfo,
    tx: mpsc::Sender<Req>,
    kill: Arc<Notify>,
    done: watch::Receiver<Option<Result<(), String>>>,
    /// Set by [`Host::shutdown`] for local sessions: the actor hands its
    /// session over instead of closing it (one sweep kills them all).
    hand_over: Arc<Mutex<Option<mpsc::UnboundedSender<Session>>>>,
}

impl Handle {
    /// Closes the session now, whatever it is doing, and waits for it.
    async fn close(self) -> Result<(), HostError> {
        self.kill.notify_one();
        let mut done = self.done;
        let outcome = match done.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or(Ok(())),
            // The actor is gone without a word: nothing left to close.
            Err(_) => Ok(()),
        };
        outcome.map_err(|why| HostError::CloseFailed {
            name: self.info.name.clone(),
            why,
        })
    }
}

/// Holds named sessions.
#[derive(Debug)]
pub struct Host {
    config: HostConfig,
    observer: Arc<Observer>,
    sessions: Mutex<HashMap<String, Handle>>,
    counter: Mutex<u64>,
    /// Sessions being opened (counted against the limit).
    opening: AtomicUsize,
    /// Set by [`Host::shutdown`]: no new sessions.
    closing: AtomicBool,
    /// Bounds closes running at once (each may scan `/proc` or run a
    /// cleanup on its target).
    close_slots: Arc<Semaphore>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.info.fmt(f)
    }
}

/// Whether `target` matches the allow-list `pattern` (see [`TargetPattern`](crate::TargetPattern)).
pub fn target_matches(pattern: &str, target: &str) -> bool {
    crate::allow::matches(pattern, target)
}

/// Releases an `opening` slot when an open ends, however it ends.
struct OpeningSlot<'a>(&'a AtomicUsize);

impl Drop for OpeningSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Host {
    /// A host reporting to `observer`.
    pub fn new(config: HostConfig, observer: Arc<Observer>) -> Arc<Host> {
        Arc::new(Host {
            config,
            observer,
            sessions: Mutex::new(HashMap::new()),
            counter: Mutex::new(0),
            opening: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            close_slots: Arc::new(Semaphore::new(CLOSE_CONCURRENCY)),
        })
    }

    /// The observer (journal, console).
    pub fn observer(&self) -> &Arc<Observer> {
        &self.observer
    }

    /// The host's configuration.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Handle>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses a target, opened with `shell` when the request names one,
    /// that the allow list does not admit.
    pub fn check_target(&self, target: &str, shell: Option<&str>) -> Result<(), HostError> {
        let allow = &self.config.allow_targets;
        // Where the target form names the shell (`local:/bin/dash`), the
        // requested shell replaces it before matching.
        let shell_in_target = crate::registry::info_of(target).is_some_and(|i| i.shell_in_target);
        let bare = crate::contain::without_params(target);
        crate::allow::check(allow, bare, shell, shell_in_target).map_err(|why| {
            HostError::TargetNotAllowed {
                target: target.to_string(),
                shell: shell.map(str::to_string),
                why: why.to_string(),
                allowed: allow.join(", "),
            }
        })
    }

    /// `target` as this host opens it: allowed, and held to the
    /// containment floor (see [`HostConfig::containment_floor`]).
    pub fn hold_target(&self, target: &str, shell: Option<&str>) -> Result<String, HostError> {
        self.check_target(target, shell)?;
        crate::contain::hold_target(target, &self.config.containment_floor).map_err(|why| {
            HostError::TargetNotAllowed {
                target: target.to_string(),
                shell: shell.map(str::to_string),
                why,
                allowed: match self.config.allow_targets.join(", ") {
                    a if a.is_empty() => "any target, contained".into(),
                    a => a,
                },
            }
        })
    }

    /// Takes a slot for a session about to open, or says why there is none.
    fn reserve(&self) -> Result<OpeningSlot<'_>, HostError> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(HostError::ShuttingDown);
        }
        let opening = self.opening.fetch_add(1, Ordering::SeqCst) + 1;
        let slot = OpeningSlot(&self.opening);
        let max = self.config.max_sessions;
        if max > 0 && self.lock().len() + opening > max {
            return Err(HostError::TooManySessions(max));
        }
        Ok(slot)
    }

    /// Opens a named session.
    pub async fn open(self: &Arc<Self>, req: OpenRequest) -> Result<SessionInfo, HostError> {
        let target = req
            .target
            .clone()
            .unwrap_or_else(|| self.config.default_target.clone());
        let target = self.hold_target(&target, req.shell.as_deref())?;
        let name = self.name_for(&req)?;
        let slot = self.reserve()?;
        let config = self.session_config(&name, &req);
        let session = Session::open(&target, config).await?;
        let info = SessionInfo {
            name: name.clone(),
            id: session.id().to_string(),
            target,
            opened_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let (tx, rx) = mpsc::channel(16);
        let kill = Arc::new(Notify::new());
        let (done_tx, done) = watch::channel(None);
        let hand_over = Arc::new(Mutex::new(None));
        let refused = {
            let mut map = self.lock();
            if self.closing.load(Ordering::SeqCst) {
                Some(HostError::ShuttingDown)
            } else if map.contains_key(&name) {
                Some(HostError::NameTaken(name.clone()))
            } else {
                map.insert(
                    name.clone(),
                    Handle {
                        info: info.clone(),
                        tx,
                        kill: kill.clone(),
                        done,
                        hand_over: hand_over.clone(),
                    },
                );
                None
            }
        };
        drop(slot);
        if let Some(e) = refused {
            let _ = close_session(session, &self.close_slots).await;
            return Err(e);
        }
        let actor = Actor::new(
            name,
            session,
            rx,
            self.config.idle_timeout,
            self.config.session.output_limit,
        );
        self.spawn_actor(actor, info.id.clone(), kill, hand_over, done_tx);
        Ok(info)
    }

    /// The name a request gets (its own, else the next `sN`), checked and
    /// not yet taken.
    fn name_for(&self, req: &OpenRequest) -> Result<String, HostError> {
        let name = match req.name.clone() {
            Some(n) => n,
            None => {
                let mut c = self.counter.lock().unwrap_or_else(|e| e.into_inner());
                *c += 1;
                format!("s{}", *c)
            }
        };
        if !valid_name(&name) {
            return Err(HostError::InvalidName(name.escape_debug().to_string()));
        }
        if self.lock().contains_key(&name) {
            return Err(HostError::NameTaken(name));
        }
        Ok(name)
    }

    /// The host's session template with what the request asks for.
    fn session_config(&self, name: &str, req: &OpenRequest) -> SessionConfig {
        let mut config = self.config.session.clone();
        config.observer = Some(self.observer.clone());
        config.name = Some(name.to_string());
        if req.shell.is_some() {
            config.shell = req.shell.clone();
        }
        if req.cwd.is_some() {
            config.cwd = req.cwd.clone();
        }
        config.env.extend(req.env.clone());
        config
    }

    /// Runs the session's actor on its own task until it ends; then the
    /// session leaves the list and is closed (or, at shutdown, handed over).
    fn spawn_actor(
        self: &Arc<Self>,
        actor: Actor,
        id: String,
        kill: Arc<Notify>,
        hand_over: Arc<Mutex<Option<mpsc::UnboundedSender<Session>>>>,
        done_tx: watch::Sender<Option<Result<(), String>>>,
    ) {
        let host = Arc::downgrade(self);
        let name = actor.name().to_string();
        let slots = self.close_slots.clone();
        tokio::spawn(async move {
            let (session, ended) = actor.live(&kill).await;
            // Gone from the list before its processes are: a closing
            // session is not one a client can use.
            if let Some(h) = host.upgrade() {
                let mut map = h.lock();
                if map.get(&name).is_some_and(|h| h.info.id == id) {
                    map.remove(&name);
                }
            }
            if ended {
                tracing::info!(session = %id, "closing idle session");
            }
            let to = hand_over.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(to) = to {
                let _ = to.send(session);
                let _ = done_tx.send(Some(Ok(())));
                return;
            }
            let outcome = close_session(session, &slots).await;
            let _ = done_tx.send(Some(outcome));
        });
    }

    /// Every open session, sorted by name.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut v: Vec<SessionInfo> = self.lock().values().map(|h| h.info.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn handle(&self, name: &str) -> Result<Handle, HostError> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| HostError::NoSuchSession(name.to_string()))
    }

    async fn ask<T>(&self, name: &str, make: impl FnOnce(Reply<T>) -> Req) -> Result<T, HostError> {
        let h = self.handle(name)?;
        let (tx, rx) = oneshot::channel();
        h.tx.send(make(tx))
            .await
            .map_err(|_| HostError::Ended(name.to_string()))?;
        rx.await.map_err(|_| HostError::Ended(name.to_string()))?
    }

    /// Runs a command (see [`Session::run`]). Refused at once with
    /// [`HostError::Busy`] while another command runs in the session. If
    /// the caller stops waiting (its future is dropped), the command goes
    /// on and its result is kept for [`Host::poll`].
    pub async fn run(
        &self,
        name: &str,
        command: &str,
        opts: RunOptions,
    ) -> Result<RunResult, HostError> {
        self.ask(name, |tx| Req::Run(command.to_string(), opts, tx))
            .await
    }

    /// Output since the last read and, once finished, the result; waits up
    /// to `wait` for the command to end.
    pub async fn poll(&self, name: &str, wait: Duration) -> Result<RunResult, HostError> {
        self.ask(name, |tx| Req::Poll(wait, tx)).await
    }

    /// Types `text` into the running command.
    pub async fn send_input(&self, name: &str, text: &str) -> Result<(), HostError> {
        self.ask(name, |tx| Req::Input(text.to_string(), tx)).await
    }

    /// The session's screen as it is now and its updates from then on
    /// (`execkit attach`): a terminal emulator of
    /// [`ROWS`](screen::ROWS)×[`COLS`](screen::COLS) with
    /// [`SCROLLBACK`](screen::SCROLLBACK) lines kept, fed with every
    /// command's raw output and the keys people typed.
    pub async fn attach(&self, name: &str) -> Result<Attachment, HostError> {
        self.ask(name, Req::Attach).await
    }

    /// Types `keys` into the running command for a person at a terminal
    /// ([`Session::send_keys`]: as they are, journaled as the person's
    /// input), and shows them on the session's screen (see
    /// [`Host::attach`]). [`SessionError::Idle`] when no command runs.
    pub async fn send_keys(&self, name: &str, keys: &[u8]) -> Result<(), HostError> {
        self.ask(name, |tx| Req::Keys(keys.to_vec(), tx)).await
    }

    /// Interrupts the running command.
    pub async fn interrupt(&self, name: &str) -> Result<RunResult, HostError> {
        self.ask(name, Req::Interrupt).await
    }

    /// Closes a session now, even mid-command (its processes are killed,
    /// its record on disk removed); returns once that is done.
    pub async fn close(&self, name: &str) -> Result<(), HostError> {
        let h = self
            .lock()
            .remove(name)
            .ok_or_else(|| HostError::NoSuchSession(name.to_string()))?;
        h.close().await
    }

    /// Closes every session (running commands are killed, not waited for)
    /// and refuses new ones; for a process about to exit. Sessions on other
    /// targets close in parallel, at most [`CLOSE_CONCURRENCY`] at a time.
    /// Local sessions are not closed one by one (each close scans `/proc`:
    /// thousands of them took minutes): their actors stop, one
    /// [`kill_sessions`](crate::raw::Transport::kill_sessions) per scheme
    /// (for `local`, one sweep of `/proc`) kills every process carrying any
    /// of their markers, their records are removed, and what is left of
    /// them (descriptors of dead shells) is let go with the process.
    pub async fn shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let all: Vec<Handle> = self.lock().drain().map(|(_, h)| h).collect();
        let (to, mut handed) = mpsc::unbounded_channel();
        for h in &all {
            if crate::registry::on_this_host(&h.info.target) {
                *h.hand_over.lock().unwrap_or_else(|e| e.into_inner()) = Some(to.clone());
            }
            h.kill.notify_one();
        }
        drop(to);
        for h in all {
            let _ = h.close().await;
        }
        let mut local = Vec::new();
        while let Ok(s) = handed.try_recv() {
            local.push(s);
        }
        if local.is_empty() {
            return;
        }
        // Their shells share this host's process table: one call per
        // scheme, on any one of its sessions' transports, ends them all.
        let mut by_scheme: BTreeMap<String, Vec<Session>> = BTreeMap::new();
        for s in local {
            let scheme = crate::registry::scheme_of(s.target()).unwrap_or_default();
            by_scheme.entry(scheme.to_string()).or_default().push(s);
        }
        for sessions in by_scheme.into_values() {
            let markers: Vec<String> = sessions.iter().map(|s| s.marker().to_string()).collect();
            let transport = sessions[0].transport().clone();
            if transport.kill_sessions(&markers).await.is_ok() {
                for m in &markers {
                    crate::cleanup::remove_record(m);
                }
                for s in sessions {
                    // Its shell is dead; dropping it would scan `/proc` again.
                    std::mem::forget(s);
                }
            }
        }
    }
}

/// Sessions closing at once (in [`Host::shutdown`] and otherwise).
pub const CLOSE_CONCURRENCY: usize = 8;
/// How long closing one session may take before it is given up (its
/// record then stays for `execkit gc`).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

/// Closes `session` (bounded in time, at most [`CLOSE_CONCURRENCY`] at once).
async fn close_session(session: Session, slots: &Semaphore) -> Result<(), String> {
    let _slot = slots.acquire().await;
    let mut closing = Box::pin(session.close());
    match tokio::time::timeout(CLOSE_TIMEOUT, &mut closing).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => {
            // Whatever is left is dropped off the runtime: a transport's
            // drop may kill synchronously.
            tokio::task::spawn_blocking(move || drop(closing));
            Err(format!(
                "cleanup did not finish within {} s; its record stays for `execkit gc`",
                CLOSE_TIMEOUT.as_secs()
            ))
        }
    }
}

/// Session names travel in CLI arguments, journal lines and messages: a
/// short word that no tool could read as an option.
fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && !n.starts_with('-')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests;
