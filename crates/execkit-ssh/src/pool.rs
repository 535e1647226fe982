//! Connection sharing: sessions to the same user@host:port (with the same
//! identity and host-key settings) share one authenticated connection, one
//! channel each, like OpenSSH's ControlMaster. The registry holds weak
//! references; a connection closes with its last session.
//!
//! Opens that find no live connection share one connection attempt: the
//! first starts it on a thread of its own, the others wait for its
//! outcome, and all of them get it at once — the connection, or the same
//! error. Each host has its own attempts; nothing is held across a
//! handshake that another host's open could wait on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use execkit_core::{ErrorKind, ErrorSource, TransportError};
use tokio::sync::watch;

use crate::actor::{Conn, ExecOutput, OpenError, Start, Stream};
use crate::connect;
use crate::target::SshTarget;

/// What makes two connections interchangeable: the resolved target but
/// for what only shapes messages or the wait (alias, origin, which parts
/// were written out, the connect timeout); jump hosts included.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key(SshTarget);

impl Key {
    fn of(t: &SshTarget) -> Key {
        fn normal(t: &SshTarget) -> SshTarget {
            let mut n = t.clone();
            n.host = n.host.to_ascii_lowercase();
            n.alias = String::new();
            n.origin = Vec::new();
            n.given = Default::default();
            n.config = Default::default();
            n.connect_timeout = Duration::ZERO;
            n.jump = t.jump.iter().map(normal).collect();
            n
        }
        Key(normal(t))
    }
}

/// Why a connection attempt failed, in a form every waiter can have a copy
/// of (`TransportError` holds an `io::Error`, which is not `Clone`; the
/// source of an unreachable target is shared); each waiter gets it back as
/// a `TransportError` naming its own target.
#[derive(Debug, Clone)]
enum Failure {
    Unreachable {
        kind: ErrorKind,
        reason: String,
        source: Option<ErrorSource>,
    },
    Invalid(String),
    Spawn(String),
    Lost(String),
    Io {
        context: String,
        kind: std::io::ErrorKind,
        message: String,
    },
}

impl Failure {
    fn of(e: TransportError) -> Failure {
        match e {
            TransportError::Unreachable {
                kind,
                reason,
                source,
                ..
            } => Failure::Unreachable {
                kind,
                reason,
                source,
            },
            TransportError::InvalidTarget { reason, .. } => Failure::Invalid(reason),
            TransportError::Spawn { reason, .. } => Failure::Spawn(reason),
            TransportError::Lost(m) => Failure::Lost(m),
            TransportError::Io { context, source } => Failure::Io {
                context,
                kind: source.kind(),
                message: source.to_string(),
            },
            other => Failure::Unreachable {
                kind: other.kind(),
                reason: other.to_string(),
                source: None,
            },
        }
    }

    fn error(&self, target: &str) -> TransportError {
        let target = target.to_string();
        match self.clone() {
            Failure::Unreachable {
                kind,
                reason,
                source,
            } => TransportError::Unreachable {
                target,
                kind,
                reason,
                source,
            },
            Failure::Invalid(reason) => TransportError::InvalidTarget { target, reason },
            Failure::Spawn(reason) => TransportError::Spawn { target, reason },
            Failure::Lost(m) => TransportError::Lost(m),
            Failure::Io {
                context,
                kind,
                message,
            } => TransportError::io(context, std::io::Error::new(kind, message)),
        }
    }
}

/// What a connection attempt ended with; `None` while it runs.
type Outcome = Option<Result<Arc<Conn>, Failure>>;

/// A connection attempt in flight.
struct Attempt {
    id: u64,
    /// The deadline it runs under: an open only joins an attempt with its
    /// own `connect_timeout`, so nobody waits longer than they asked.
    timeout: Duration,
    outcome: watch::Receiver<Outcome>,
}

#[derive(Default)]
struct Slot {
    conns: Vec<Weak<Conn>>,
    attempts: Vec<Attempt>,
}

static POOL: Mutex<Option<HashMap<Key, Slot>>> = Mutex::new(None);
static ATTEMPT_IDS: AtomicU64 = AtomicU64::new(0);

fn with_pool<R>(f: impl FnOnce(&mut HashMap<Key, Slot>) -> R) -> R {
    let mut g = POOL.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(HashMap::new))
}

impl Slot {
    fn live(&mut self) -> Option<Arc<Conn>> {
        self.conns
            .retain(|w| w.upgrade().is_some_and(|c| !c.is_lost()));
        self.conns
            .iter()
            .filter_map(Weak::upgrade)
            .find(|c| c.shared.has_room())
    }
}

fn find_live(key: &Key) -> Option<Arc<Conn>> {
    with_pool(|pool| pool.get_mut(key)?.live())
}

/// How many live connections the pool holds for `t` (for tests and stats).
pub fn live_connections(t: &SshTarget) -> usize {
    let Ok(t) = t.resolved() else {
        return 0;
    };
    let key = Key::of(&t);
    with_pool(|pool| {
        pool.get(&key).map_or(0, |s| {
            s.conns
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|c| !c.is_lost())
                .count()
        })
    })
}

/// A live connection with room for another channel, connecting if needed:
/// joins the attempt in flight for this host (and connect timeout), or
/// starts one.
pub(crate) async fn get(t: &SshTarget, target: &str) -> Result<Arc<Conn>, TransportError> {
    let t = &t.resolved()?;
    let key = Key::of(t);
    // An attempt ends without an outcome only if its thread died before
    // publishing one; the next round starts a fresh attempt.
    for _ in 0..3 {
        let mut outcome = match join_or_start(&key, t, target)? {
            Joined::Live(c) => return Ok(c),
            Joined::Wait(rx) => rx,
        };
        let done = match outcome.wait_for(Option::is_some).await {
            Ok(done) => done.clone(),
            Err(_) => None,
        };
        if let Some(r) = done {
            return r.map_err(|f| f.error(target));
        }
    }
    Err(TransportError::io(
        "connecting",
        std::io::Error::other(format!(
            "the connection attempt to {} ended without an outcome",
            t.addr()
        )),
    ))
}

enum Joined {
    Live(Arc<Conn>),
    Wait(watch::Receiver<Outcome>),
}

/// Under one pool lock: a live connection, else the attempt in flight,
/// else a new attempt (its thread is started after the lock is released).
fn join_or_start(key: &Key, t: &SshTarget, target: &str) -> Result<Joined, TransportError> {
    let started = with_pool(|pool| {
        let slot = pool.entry(key.clone()).or_default();
        if let Some(c) = slot.live() {
            return Err(Joined::Live(c));
        }
        if let Some(a) = slot
            .attempts
            .iter()
            .find(|a| a.timeout == t.connect_timeout)
        {
            return Err(Joined::Wait(a.outcome.clone()));
        }
        let id = ATTEMPT_IDS.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        slot.attempts.push(Attempt {
            id,
            timeout: t.connect_timeout,
            outcome: rx.clone(),
        });
        Ok((id, tx, rx))
    });
    let (id, tx, rx) = match started {
        Ok(s) => s,
        Err(joined) => return Ok(joined),
    };
    let (key2, t2, target2) = (key.clone(), t.clone(), target.to_string());
    // A thread, not a task: the attempt outlives any one caller (a waiter
    // that gives up, or a runtime that shuts down, leaves it to the rest).
    let spawned = std::thread::Builder::new()
        .name("execkit-ssh connect".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                connect::establish(&t2, &target2).and_then(|est| start(&t2, est))
            }));
            let r = match r {
                Ok(r) => r.map_err(Failure::of),
                Err(_) => Err(Failure::Io {
                    context: "connecting".into(),
                    kind: std::io::ErrorKind::Other,
                    message: format!("the connection attempt to {} panicked", t2.addr()),
                }),
            };
            finish(&key2, id, tx, r);
        });
    if let Err(e) = spawned {
        // The closure (and its sender) is gone: waiters see the channel
        // closed and start again; this caller reports why.
        with_pool(|pool| {
            if let Some(slot) = pool.get_mut(key) {
                slot.attempts.retain(|a| a.id != id);
            }
        });
        return Err(TransportError::io("starting a connection thread", e));
    }
    Ok(Joined::Wait(rx))
}

/// Ends attempt `id`: lists its connection (if any) and retires the
/// attempt in one step, so a later open finds one or the other, then hands
/// the outcome to everyone waiting.
fn finish(key: &Key, id: u64, tx: watch::Sender<Outcome>, r: Result<Arc<Conn>, Failure>) {
    with_pool(|pool| {
        let slot = pool.entry(key.clone()).or_default();
        slot.attempts.retain(|a| a.id != id);
        if let Ok(c) = &r {
            slot.conns.push(Arc::downgrade(c));
        }
    });
    tx.send_replace(Some(r));
}

/// Blocking variant of [`get`] for threads outside the runtime; never
/// waits for another task's handshake.
pub(crate) fn get_blocking(t: &SshTarget, target: &str) -> Result<Arc<Conn>, TransportError> {
    let t = &t.resolved()?;
    let key = Key::of(t);
    if let Some(c) = find_live(&key) {
        return Ok(c);
    }
    let conn = connect::establish(t, target).and_then(|est| start(t, est))?;
    with_pool(|pool| {
        pool.entry(key)
            .or_default()
            .conns
            .push(Arc::downgrade(&conn))
    });
    Ok(conn)
}

/// Starts the thread of a fresh connection.
fn start(t: &SshTarget, est: connect::Established) -> Result<Arc<Conn>, TransportError> {
    Conn::start(t.addr(), est.session, est.socket, est.keepalive)
        .map_err(|e| TransportError::io("starting the ssh connection thread", e))
}

fn exec_err(target: &str, e: OpenError) -> TransportError {
    match e {
        OpenError::Lost(m) => TransportError::Lost(m),
        OpenError::Refused(m) | OpenError::Failed(m) => TransportError::Spawn {
            target: target.to_string(),
            reason: m,
        },
    }
}

/// Runs a one-shot command on the target: on `first` if given and it has
/// room, else on a pooled or new connection.
pub(crate) async fn exec(
    t: &SshTarget,
    target: &str,
    first: Option<&Arc<Conn>>,
    command: &str,
) -> Result<ExecOutput, TransportError> {
    let mut last = None;
    if let Some(c) = first.filter(|c| !c.is_lost()) {
        match c.exec(command.to_string()).await {
            Ok(o) => return Ok(o),
            Err(OpenError::Refused(m)) => {
                c.shared.refused();
                last = Some(OpenError::Refused(m));
            }
            Err(e @ OpenError::Failed(_)) => return Err(exec_err(target, e)),
            Err(e) => last = Some(e),
        }
    }
    on_a_connection(t, target, last, |c| async move {
        c.exec(command.to_string()).await
    })
    .await
}

/// Opens something with `open` on a pooled or new connection, moving on
/// to another connection when one refuses a channel (its MaxSessions
/// reached); `last` is an earlier attempt's failure, reported if no
/// connection does better.
async fn on_a_connection<T, F, Fut>(
    t: &SshTarget,
    target: &str,
    mut last: Option<OpenError>,
    mut open: F,
) -> Result<T, TransportError>
where
    F: FnMut(Arc<Conn>) -> Fut,
    Fut: std::future::Future<Output = Result<T, OpenError>>,
{
    for _ in 0..32 {
        let c = get(t, target).await?;
        match open(c.clone()).await {
            Ok(v) => return Ok(v),
            Err(OpenError::Refused(m)) => {
                last = Some(OpenError::Refused(m));
                if !c.shared.refused() {
                    break;
                }
            }
            Err(e @ OpenError::Failed(_)) => return Err(exec_err(target, e)),
            Err(e) => last = Some(e),
        }
    }
    Err(exec_err(
        target,
        last.unwrap_or(OpenError::Failed("no connection".into())),
    ))
}

/// Blocking variant of [`exec`] (for cleanup from `Drop`).
pub(crate) fn exec_blocking(
    t: &SshTarget,
    target: &str,
    first: &Arc<Conn>,
    command: &str,
) -> Result<ExecOutput, TransportError> {
    if !first.is_lost() {
        match first.exec_blocking(command.to_string()) {
            Ok(o) => return Ok(o),
            Err(OpenError::Refused(_)) => {
                first.shared.refused();
            }
            Err(e) => return Err(exec_err(target, e)),
        }
    }
    let c = get_blocking(t, target)?;
    c.exec_blocking(command.to_string())
        .map_err(|e| exec_err(target, e))
}

/// Starts a streamed command (`What::Stream`) on a pooled or new
/// connection, moving on to another connection when one refuses a channel.
pub(crate) async fn stream(
    t: &SshTarget,
    target: &str,
    command: &str,
) -> Result<Stream, TransportError> {
    on_a_connection(t, target, None, |c| async move {
        Stream::open(&c, command.to_string()).await
    })
    .await
}

/// Opens a forwarded connection (`start` is not a command) on a pooled or
/// new connection.
pub(crate) async fn forward(
    t: &SshTarget,
    target: &str,
    start: Start,
) -> Result<Stream, TransportError> {
    on_a_connection(t, target, None, |c| {
        let start = start.clone();
        async move { Stream::open_to(&c, start).await }
    })
    .await
}
