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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use tokio::time::Instant;

use crate::output_cap::OutputCap;
use crate::{Observer, RunOptions, RunResult, Session, SessionConfig, SessionError};

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

type Reply<T> = oneshot::Sender<Result<T, HostError>>;

enum Req {
    Run(String, RunOptions, Reply<RunResult>),
    Poll(Duration, Reply<RunResult>),
    Input(String, Reply<()>),
    Interrupt(Reply<RunResult>),
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
        crate::allow::check(allow, target, shell).map_err(|why| HostError::TargetNotAllowed {
            target: target.to_string(),
            shell: shell.map(str::to_string),
            why: why.to_string(),
            allowed: allow.join(", "),
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
        self.check_target(&target, req.shell.as_deref())?;
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
        let slot = self.reserve()?;
        let mut config = self.config.session.clone();
        config.observer = Some(self.observer.clone());
        config.name = Some(name.clone());
        if req.shell.is_some() {
            config.shell = req.shell.clone();
        }
        if req.cwd.is_some() {
            config.cwd = req.cwd.clone();
        }
        config.env.extend(req.env.clone());
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
        let host = Arc::downgrade(self);
        let actor = Actor {
            name: name.clone(),
            session,
            rx,
            idle: self.config.idle_timeout,
            limit: self.config.session.output_limit,
            last_activity: Instant::now(),
            running: None,
            unread: None,
            waiters: Vec::new(),
        };
        let slots = self.close_slots.clone();
        let id = info.id.clone();
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
        Ok(info)
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
    /// thousands of them took minutes): their actors stop, one sweep of
    /// `/proc` kills every process carrying any of their markers, their
    /// records are removed, and what is left of them (descriptors of dead
    /// shells) is let go with the process.
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
        let markers: Vec<String> = local.iter().map(|s| s.marker().to_string()).collect();
        let swept = tokio::task::spawn_blocking(move || {
            crate::cleanup::kill_marked_here(&markers);
            markers
        })
        .await;
        if let Ok(markers) = swept {
            for m in &markers {
                crate::cleanup::remove_record(m);
            }
            for s in local {
                // Its shell is dead; dropping it would scan `/proc` again.
                std::mem::forget(s);
            }
        }
    }
}

/// How long a command may hold the actor when it starts before the actor
/// takes over driving it in [`TICK`]s (a command that ends within it costs
/// nothing extra).
pub const SLICE: Duration = Duration::from_millis(250);
/// How often a running command is checked for requests.
pub const TICK: Duration = Duration::from_millis(50);
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

/// Unread progress of a command.
struct Unread {
    delta: OutputCap,
    done: Option<RunResult>,
    /// No partial output of this command was handed out: its final result
    /// is the whole output, not a delta.
    whole: bool,
}

/// The command in flight.
struct Running {
    command: String,
    since: SystemTime,
    /// The latest partial result (its output already taken).
    last: RunResult,
}

/// A client waiting for a running command's result (a `run` that has not
/// returned yet, a `poll` with a wait).
struct Waiter {
    tx: Reply<RunResult>,
    /// When to answer with `running: true` and the output so far; `None`
    /// waits for the end.
    until: Option<Instant>,
}

struct Actor {
    name: String,
    session: Session,
    rx: mpsc::Receiver<Req>,
    idle: Duration,
    limit: usize,
    last_activity: Instant,
    running: Option<Running>,
    unread: Option<Unread>,
    waiters: Vec<Waiter>,
}

/// Whether the actor goes on.
enum Flow {
    Continue,
    /// Idle too long, or the host is gone.
    End,
}

impl Actor {
    /// Serves until closed (`kill`), idle expiry or the host's end; returns
    /// the session to close and whether it expired on its own.
    async fn live(mut self, kill: &Notify) -> (Session, bool) {
        let expired = loop {
            tokio::select! {
                biased;
                _ = kill.notified() => break false,
                flow = self.step() => match flow {
                    Flow::Continue => {}
                    Flow::End => break true,
                },
            }
        };
        // Whoever still waits learns that the session is gone.
        let name = self.session_name();
        for w in self.waiters.drain(..) {
            let _ = w.tx.send(Err(HostError::Ended(name.clone())));
        }
        (self.session, expired)
    }

    fn session_name(&self) -> String {
        self.name.clone()
    }

    async fn step(&mut self) -> Flow {
        if !self.session.is_running() {
            let wait = self.idle.saturating_sub(self.last_activity.elapsed());
            return match tokio::time::timeout(wait, self.rx.recv()).await {
                Ok(Some(req)) => {
                    self.handle(req).await;
                    Flow::Continue
                }
                Ok(None) | Err(_) => Flow::End,
            };
        }
        // A command runs: requests first, then one more tick of driving.
        match self.rx.try_recv() {
            Ok(req) => {
                self.handle(req).await;
                return Flow::Continue;
            }
            Err(mpsc::error::TryRecvError::Empty) => {}
            Err(mpsc::error::TryRecvError::Disconnected) => return Flow::End,
        }
        let now = Instant::now();
        let wait = self
            .waiters
            .iter()
            .filter_map(|w| w.until)
            .map(|u| u.saturating_duration_since(now))
            .fold(TICK, Duration::min);
        match self.session.poll(wait).await {
            Ok(r) => {
                self.absorb(r);
                if !self.session.is_running() {
                    self.deliver_final().await;
                }
            }
            Err(e) => {
                // Cannot happen while running; say so to whoever waits.
                let mut e = Some(HostError::from(e));
                let name = self.session_name();
                for w in self.waiters.drain(..) {
                    let err = e.take().unwrap_or_else(|| HostError::Ended(name.clone()));
                    let _ = w.tx.send(Err(err));
                }
            }
        }
        self.release_due();
        Flow::Continue
    }

    fn unread(&mut self) -> &mut Unread {
        let limit = self.limit;
        self.unread.get_or_insert_with(|| Unread {
            delta: OutputCap::memory_only(limit),
            done: None,
            whole: true,
        })
    }

    /// Adds a slice's result to what clients have not read yet.
    fn absorb(&mut self, r: RunResult) {
        if r.running {
            self.unread().delta.push(&r.output);
            if r.waiting_for_input {
                // Everyone waiting on output hears at once that it waits.
                let now = Instant::now();
                for w in &mut self.waiters {
                    w.until = Some(now);
                }
            }
            if let Some(run) = &mut self.running {
                run.last = RunResult {
                    output: String::new(),
                    ..r
                };
            }
            return;
        }
        self.running = None;
        self.last_activity = Instant::now();
        self.unread().done = Some(r);
    }

    /// The finished command's result with its unread output. A command
    /// driven in slices was capped slice by slice: when nobody saw a part
    /// of it and it was capped, head and tail come from its spool file
    /// (what a single `run` returns), not from the capped slices.
    async fn final_result(&mut self) -> Option<RunResult> {
        let whole = self.unread.as_ref().is_some_and(|u| u.whole);
        let mut result = deliver(&mut self.unread, None)?;
        if let (true, true, Some(path)) = (whole, result.truncated, result.output_path.clone()) {
            let limit = self.limit;
            if let Ok(Ok(text)) = tokio::task::spawn_blocking(move || recap(&path, limit)).await {
                result.output = text;
            }
        }
        Some(result)
    }

    /// Hands a finished command's result to every waiter; kept for a later
    /// `poll` if none is left to take it.
    async fn deliver_final(&mut self) {
        self.waiters.retain(|w| !w.tx.is_closed());
        if self.waiters.is_empty() {
            return;
        }
        let Some(result) = self.final_result().await else {
            return;
        };
        let mut taken = false;
        for w in self.waiters.drain(..) {
            taken |= w.tx.send(Ok(result.clone())).is_ok();
        }
        if !taken {
            self.unread = Some(Unread {
                delta: OutputCap::memory_only(self.limit),
                done: Some(result),
                whole: false,
            });
        }
    }

    /// Answers waiters whose wait is over with the output so far, and
    /// forgets those that went away.
    fn release_due(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.waiters.len() {
            let w = &self.waiters[i];
            if w.tx.is_closed() {
                self.waiters.swap_remove(i);
            } else if w.until.is_some_and(|u| u <= now) {
                let w = self.waiters.swap_remove(i);
                let partial = self.partial();
                if let Err(Ok(back)) = w.tx.send(Ok(partial)) {
                    // Gone meanwhile: the text is not lost.
                    self.unread().delta.push(&back.output);
                }
            } else {
                i += 1;
            }
        }
    }

    /// `running: true` and the unread output so far.
    fn partial(&mut self) -> RunResult {
        let mut r = match &self.running {
            Some(run) => run.last.clone(),
            None => crate::session::blank("", Instant::now(), self.session.cwd()),
        };
        if let Some(run) = &self.running {
            r.duration_ms = run.since.elapsed().map_or(0, |d| d.as_millis() as u64);
        }
        let limit = self.limit;
        if let Some(u) = &mut self.unread {
            let delta = std::mem::replace(&mut u.delta, OutputCap::memory_only(limit));
            r.output = delta.finish().text;
            u.whole = false;
        }
        r.running = true;
        r
    }

    fn busy(&self) -> HostError {
        let (command, since) = match &self.running {
            Some(r) => (r.command.as_str(), r.since),
            None => ("?", SystemTime::now()),
        };
        let mut shown: String = command.chars().take(80).collect();
        if shown.len() < command.len() {
            shown.push('…');
        }
        HostError::Busy {
            name: self.session_name(),
            command: shown.escape_debug().to_string(),
            since: crate::journal::rfc3339(since),
        }
    }

    /// Serves one request.
    async fn handle(&mut self, req: Req) {
        self.last_activity = Instant::now();
        match req {
            Req::Run(cmd, opts, tx) => {
                if self.session.is_running() {
                    let _ = tx.send(Err(self.busy()));
                    return;
                }
                if self.unread.as_ref().is_some_and(|u| u.done.is_some()) {
                    // The previous command ended unread; its result is
                    // dropped in favour of the new command (the journal
                    // has it).
                    self.unread = None;
                }
                let started = Instant::now();
                let since = SystemTime::now();
                let want_yield = opts.yield_after;
                let mut sliced = opts;
                sliced.yield_after = Some(want_yield.map_or(SLICE, |y| y.min(SLICE)));
                // A program waiting for terminal input is reported at once
                // (`running` and `waiting_for_input`): a client or a person
                // answers, polls or interrupts it.
                sliced.input_wait = crate::session::InputWait::Yield;
                let r = match self.session.run(&cmd, sliced).await {
                    Ok(r) if r.running => r,
                    other => {
                        self.last_activity = Instant::now();
                        let _ = tx.send(other.map_err(HostError::from));
                        return;
                    }
                };
                self.running = Some(Running {
                    command: cmd,
                    since,
                    last: RunResult {
                        output: String::new(),
                        ..r.clone()
                    },
                });
                self.unread = None;
                self.unread().delta.push(&r.output);
                let until = if r.waiting_for_input {
                    Some(started)
                } else {
                    want_yield.map(|y| started + y)
                };
                self.waiters.push(Waiter { tx, until });
                self.release_due();
            }
            Req::Poll(wait, tx) => {
                if !self.session.is_running() {
                    let r = match self.final_result().await {
                        Some(r) => Ok(r),
                        None => Err(SessionError::Idle.into()),
                    };
                    let _ = tx.send(r);
                    return;
                }
                // Known to wait for input: no point in waiting for output.
                let waiting = self
                    .running
                    .as_ref()
                    .is_some_and(|r| r.last.waiting_for_input);
                let now = Instant::now();
                let until = if waiting { now } else { now + wait };
                self.waiters.push(Waiter {
                    tx,
                    until: Some(until),
                });
                self.release_due();
            }
            Req::Input(text, tx) => {
                let sent = self.session.send_input(&text).await;
                if sent.is_ok() {
                    if let Some(run) = &mut self.running {
                        run.last.waiting_for_input = false;
                    }
                }
                let _ = tx.send(sent.map_err(Into::into));
            }
            Req::Interrupt(tx) => {
                if !self.session.is_running() {
                    let _ = tx.send(Err(SessionError::Idle.into()));
                    return;
                }
                match self.session.interrupt().await {
                    Ok(r) => {
                        self.running = None;
                        self.last_activity = Instant::now();
                        self.unread().done = Some(r);
                        let result = self.final_result().await.expect("result");
                        for w in self.waiters.drain(..) {
                            let _ = w.tx.send(Ok(result.clone()));
                        }
                        let _ = tx.send(Ok(result));
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into()));
                    }
                }
            }
        }
    }
}

/// Head and tail of the spooled output at `path`, with the elision line
/// [`OutputCap`] writes (total characters counted over the whole file), the
/// final newline trimmed as in a result.
fn recap(path: &std::path::Path, limit: usize) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let limit = limit.max(2);
    let (head_chars, tail_chars) = (limit / 2, limit - limit / 2);
    let mut f = std::fs::File::open(path)?;
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += buf[..n].iter().filter(|&&b| b & 0xC0 != 0x80).count() as u64;
    }
    let len = f.metadata()?.len();
    let span = |chars: usize| (chars as u64 * 4).min(len);
    f.seek(SeekFrom::Start(0))?;
    let mut head = vec![0u8; span(head_chars) as usize];
    f.read_exact(&mut head)?;
    f.seek(SeekFrom::Start(len - span(tail_chars)))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)?;
    let head = String::from_utf8_lossy(&head);
    let head: String = head.chars().take(head_chars).collect();
    // The tail may start inside a character: skip to the next one.
    let start = tail.iter().position(|&b| b & 0xC0 != 0x80).unwrap_or(0);
    let tail = String::from_utf8_lossy(&tail[start..]);
    let skip = tail.chars().count().saturating_sub(tail_chars);
    let tail: String = tail.chars().skip(skip).collect();
    let elided = total.saturating_sub((head_chars + tail_chars) as u64);
    let mut text = head;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "[… {elided} of {total} characters elided; full output in {} …]\n",
        path.display()
    ));
    text.push_str(&tail);
    if text.ends_with('\n') {
        text.pop();
    }
    Ok(text)
}

/// Merges unread output into the final result for the client.
fn deliver(unread: &mut Option<Unread>, fresh: Option<RunResult>) -> Option<RunResult> {
    let Some(u) = unread.take() else {
        return fresh;
    };
    let mut delta = u.delta;
    let mut result = match (u.done, fresh) {
        (Some(done), _) => done,
        (None, Some(f)) => f,
        (None, None) => return None,
    };
    delta.push(&result.output);
    result.output = delta.finish().text;
    Some(result)
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
mod tests {
    use super::{target_matches, valid_name};

    #[test]
    fn session_names() {
        for ok in ["s1", "build", "web-01", "a.b_c", &"x".repeat(64)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-rf",
            "a b",
            "a;b",
            "$(id)",
            "a/b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    /// The patterns in use before the allow list compared parts keep
    /// their meaning (the grammar's own tests are in `allow.rs`).
    #[test]
    fn globs() {
        assert!(target_matches("local", "local"));
        assert!(!target_matches("local", "local:/bin/sh"));
        assert!(target_matches("local*", "local:/bin/sh"));
        assert!(target_matches("docker:*", "docker:web"));
        assert!(!target_matches("docker:*", "ssh://x"));
        assert!(target_matches(
            "ssh://*@127.0.0.1:*",
            "ssh://root@127.0.0.1:2222"
        ));
        assert!(!target_matches("docker:a*b*c", "docker:acb"));
    }
}
