//! Named, long-lived sessions for a host process (`execkit serve`, the MCP
//! server): each session lives in its own task (an actor) that keeps driving
//! a yielded command in the background — so timeouts fire, output reaches
//! the console and nothing is lost while no client is polling — buffers what
//! the client has not read yet, and closes itself after an idle period.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::cap::OutputCap;
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
    /// The target is not in the allow list.
    #[error("target `{target}` is not allowed here (allowed: {allowed})")]
    TargetNotAllowed {
        /// The refused target.
        target: String,
        /// The allow list, comma-separated.
        allowed: String,
    },
    /// The session failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The session's task ended (closed, expired, or shut down).
    #[error("session `{0}` has ended")]
    Ended(String),
}

/// How the host runs sessions.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HostConfig {
    /// Target for sessions opened without one.
    pub default_target: String,
    /// Glob patterns (`*` matches anything) a target must match; empty = any.
    pub allow_targets: Vec<String>,
    /// Sessions with no request and no running command for this long close.
    pub idle_timeout: Duration,
    /// Template for every session.
    pub session: SessionConfig,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            default_target: "local".into(),
            allow_targets: Vec::new(),
            idle_timeout: Duration::from_secs(30 * 60),
            session: SessionConfig::default(),
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

enum Req {
    Run(
        String,
        RunOptions,
        oneshot::Sender<Result<RunResult, SessionError>>,
    ),
    Poll(Duration, oneshot::Sender<Result<RunResult, SessionError>>),
    Input(String, oneshot::Sender<Result<(), SessionError>>),
    Interrupt(oneshot::Sender<Result<RunResult, SessionError>>),
    Close(oneshot::Sender<Result<(), SessionError>>),
}

#[derive(Clone)]
struct Handle {
    info: SessionInfo,
    tx: mpsc::Sender<Req>,
}

/// Holds named sessions.
#[derive(Debug)]
pub struct Host {
    config: HostConfig,
    observer: Arc<Observer>,
    sessions: Mutex<HashMap<String, Handle>>,
    counter: Mutex<u64>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.info.fmt(f)
    }
}

/// Whether `target` matches a glob `pattern` (`*` = any run of characters).
pub fn target_matches(pattern: &str, target: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == target;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !target.starts_with(first)
        || target.len() < first.len() + last.len()
        || !target.ends_with(last)
    {
        return false;
    }
    let mut rest = &target[first.len()..target.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

impl Host {
    /// A host reporting to `observer`.
    pub fn new(config: HostConfig, observer: Arc<Observer>) -> Arc<Host> {
        Arc::new(Host {
            config,
            observer,
            sessions: Mutex::new(HashMap::new()),
            counter: Mutex::new(0),
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

    /// Refuses targets outside the allow list.
    pub fn check_target(&self, target: &str) -> Result<(), HostError> {
        let allow = &self.config.allow_targets;
        if allow.is_empty() || allow.iter().any(|p| target_matches(p, target)) {
            return Ok(());
        }
        Err(HostError::TargetNotAllowed {
            target: target.to_string(),
            allowed: allow.join(", "),
        })
    }

    /// Opens a named session.
    pub async fn open(self: &Arc<Self>, req: OpenRequest) -> Result<SessionInfo, HostError> {
        let target = req
            .target
            .clone()
            .unwrap_or_else(|| self.config.default_target.clone());
        self.check_target(&target)?;
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
        let taken = {
            let mut map = self.lock();
            let taken = map.contains_key(&name);
            if !taken {
                map.insert(
                    name.clone(),
                    Handle {
                        info: info.clone(),
                        tx,
                    },
                );
            }
            taken
        };
        if taken {
            let _ = session.close().await;
            return Err(HostError::NameTaken(name));
        }
        let host = Arc::downgrade(self);
        let idle = self.config.idle_timeout;
        let limit = self.config.session.output_limit;
        tokio::spawn(async move {
            actor(session, rx, idle, limit).await;
            if let Some(h) = host.upgrade() {
                h.lock().remove(&name);
            }
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

    async fn ask<T>(
        &self,
        name: &str,
        make: impl FnOnce(oneshot::Sender<Result<T, SessionError>>) -> Req,
    ) -> Result<T, HostError> {
        let h = self.handle(name)?;
        let (tx, rx) = oneshot::channel();
        h.tx.send(make(tx))
            .await
            .map_err(|_| HostError::Ended(name.to_string()))?;
        Ok(rx.await.map_err(|_| HostError::Ended(name.to_string()))??)
    }

    /// Runs a command (see [`Session::run`]).
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

    /// Closes a session (its processes are killed).
    pub async fn close(&self, name: &str) -> Result<(), HostError> {
        let r = self.ask(name, Req::Close).await;
        self.lock().remove(name);
        r
    }

    /// Closes every session.
    pub async fn shutdown(&self) {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        for n in names {
            let _ = self.close(&n).await;
        }
    }
}

/// How often a background-driven command is checked for requests.
const TICK: Duration = Duration::from_millis(50);

/// Unread progress of a command that yielded.
struct Unread {
    delta: OutputCap,
    done: Option<RunResult>,
}

async fn actor(mut session: Session, mut rx: mpsc::Receiver<Req>, idle: Duration, limit: usize) {
    let mut unread: Option<Unread> = None;
    let mut last_activity = Instant::now();
    loop {
        // Keep a yielded command moving while nobody asks.
        if session.is_running() {
            match rx.try_recv() {
                Ok(req) => {
                    last_activity = Instant::now();
                    if handle(&mut session, req, &mut unread).await {
                        return;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    if let Ok(r) = session.poll(TICK).await {
                        absorb(&mut unread, r, limit);
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
            continue;
        }
        let wait = idle.saturating_sub(last_activity.elapsed());
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(req)) => {
                last_activity = Instant::now();
                if handle(&mut session, req, &mut unread).await {
                    return;
                }
            }
            Ok(None) => break,
            Err(_) => {
                tracing::info!(session = session.id(), "closing idle session");
                break;
            }
        }
    }
    let _ = session.close().await;
}

/// Adds a background poll result to what the client has not read yet.
fn absorb(unread: &mut Option<Unread>, r: RunResult, limit: usize) {
    let u = unread.get_or_insert_with(|| Unread {
        delta: OutputCap::memory_only(limit),
        done: None,
    });
    if r.running {
        u.delta.push(&r.output);
    } else {
        // Its output joins the unread text on delivery.
        u.done = Some(r);
    }
}

/// Merges unread output into a fresh result for the client.
fn deliver(unread: &mut Option<Unread>, mut fresh: Option<RunResult>) -> Option<RunResult> {
    let Some(u) = unread.take() else {
        return fresh;
    };
    let mut delta = u.delta;
    let mut result = match (u.done, fresh.take()) {
        (Some(done), _) => done,
        (None, Some(f)) => f,
        (None, None) => return None,
    };
    delta.push(&result.output);
    result.output = delta.finish().text;
    Some(result)
}

/// Serves one request; returns true when the session was closed.
async fn handle(session: &mut Session, req: Req, unread: &mut Option<Unread>) -> bool {
    match req {
        Req::Run(cmd, opts, tx) => {
            if unread.as_ref().is_some_and(|u| u.done.is_some()) {
                // The previous command ended unread; its result is dropped
                // in favour of the new command (the journal has it).
                *unread = None;
            }
            let _ = tx.send(session.run(&cmd, opts).await);
        }
        Req::Poll(wait, tx) => {
            let done_already = unread.as_ref().is_some_and(|u| u.done.is_some());
            let fresh = if session.is_running() && !done_already {
                match session.poll(wait).await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return false;
                    }
                }
            } else {
                None
            };
            let _ = tx.send(deliver(unread, fresh).ok_or(SessionError::Idle));
        }
        Req::Input(text, tx) => {
            let _ = tx.send(session.send_input(&text).await);
        }
        Req::Interrupt(tx) => {
            let r = session
                .interrupt()
                .await
                .map(|r| deliver(unread, Some(r)).expect("result"));
            let _ = tx.send(r);
        }
        Req::Close(tx) => {
            let _ = tx.send(Ok(()));
            return true;
        }
    }
    false
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
        assert!(!target_matches("a*b*c", "acb"));
    }
}
