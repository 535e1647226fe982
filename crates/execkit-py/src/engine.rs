//! What the Python classes share: how a session is opened (journal,
//! console mirror), the calls that wait on a command and how a waiting
//! call is stopped (Ctrl-C in the calling program, a cancelled task), and
//! the list of live sessions closed at interpreter exit.
//!
//! Everything here runs on the one tokio runtime of the module, either
//! driven by the calling thread with the GIL released (`Session`) or as a
//! task (`AsyncSession`); the session sits behind an async mutex, so calls
//! from several threads or tasks take turns.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use execkit_cli::{ConsoleMirror, JournalArgs, ObserverError};
use execkit_core::{RunOptions, RunResult, Session, SessionConfig, SessionError, Size};
use pyo3::prelude::*;
use tokio::sync::Notify;

use crate::errors::Failure;

/// The runtime every session of this process runs on.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("execkit")
            .build()
            .expect("execkit: cannot start the tokio runtime")
    })
}

/// Where runs are journaled: the CLI's default file, another file, or
/// nowhere.
#[derive(Debug, Clone)]
pub enum JournalArg {
    /// The CLI's default journal (`$XDG_STATE_HOME/execkit/journal.jsonl`).
    Default,
    /// No journal.
    Off,
    /// This file.
    Path(PathBuf),
}

impl<'a, 'py> FromPyObject<'a, 'py> for JournalArg {
    type Error = PyErr;

    fn extract(ob: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if ob.is_none() {
            return Ok(JournalArg::Off);
        }
        if let Ok(b) = ob.extract::<bool>() {
            return Ok(if b {
                JournalArg::Default
            } else {
                JournalArg::Off
            });
        }
        match ob.extract::<PathBuf>() {
            Ok(p) => Ok(JournalArg::Path(p)),
            Err(_) => Err(pyo3::exceptions::PyTypeError::new_err(
                "journal must be a path, True (the default journal) or None (off)",
            )),
        }
    }
}

/// Everything a session is opened with.
#[derive(Debug, Clone)]
pub struct Spec {
    pub target: String,
    pub config: SessionConfig,
    pub journal: JournalArg,
    pub redact: Vec<String>,
    pub console: bool,
}

/// Checks the Python arguments of `Session(...)` / `AsyncSession(...)`.
#[allow(clippy::too_many_arguments)]
pub fn spec(
    target: String,
    env: Option<BTreeMap<String, String>>,
    cwd: Option<PathBuf>,
    shell: Option<String>,
    load_profile: bool,
    output_limit: usize,
    start_timeout: f64,
    size: (u16, u16),
    journal: JournalArg,
    redact: Vec<String>,
    console: bool,
    name: Option<String>,
) -> PyResult<Spec> {
    use pyo3::exceptions::PyValueError;
    let mut config = SessionConfig::default();
    config.env = env.unwrap_or_default().into_iter().collect();
    config.cwd = cwd;
    config.shell = shell;
    config.load_profile = load_profile;
    if output_limit == 0 {
        return Err(PyValueError::new_err("output_limit must be at least 1"));
    }
    config.output_limit = output_limit;
    config.start_timeout = seconds("start_timeout", start_timeout)?;
    let (rows, cols) = size;
    if rows == 0 || cols == 0 {
        return Err(PyValueError::new_err("size must be (rows, cols), both > 0"));
    }
    config.size = Size { rows, cols };
    config.name = name;
    Ok(Spec {
        target,
        config,
        journal,
        redact,
        console,
    })
}

/// A positive, finite number of seconds as a `Duration` (`ValueError`
/// otherwise).
pub fn seconds(what: &str, secs: f64) -> PyResult<Duration> {
    if secs.is_nan() || secs <= 0.0 {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "{what} must be a positive number of seconds, not {secs}"
        )));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| {
        pyo3::exceptions::PyValueError::new_err(format!("{what} is too large: {secs}"))
    })
}

/// What a caller knows of a session without waiting for it.
#[derive(Debug, Clone, Default)]
pub struct Info {
    pub id: String,
    pub marker: String,
    pub cwd: String,
    pub alive: bool,
    pub running: bool,
    pub open: bool,
}

/// One session and what comes with it.
#[derive(Debug)]
struct Open {
    session: Session,
    mirror: Option<ConsoleMirror>,
}

#[derive(Debug)]
enum State {
    /// An `AsyncSession` not yet entered.
    Unopened(Box<Spec>),
    Open(Box<Open>),
    Closed,
}

/// A session shared by the Python object, its tasks and the exit hook.
#[derive(Debug)]
pub struct Inner {
    target: String,
    state: tokio::sync::Mutex<State>,
    info: Mutex<Info>,
    /// Wakes the wait of the command in flight (see [`RunOptions::wake`]);
    /// outside the state lock, which a waiting call holds.
    wake: Mutex<Arc<Notify>>,
    /// `close` was called: a call waiting on a command lets go (the
    /// command is interrupted) instead of holding the session until the
    /// command ends.
    closing: AtomicBool,
}

/// How a call waiting on a command is stopped early: the command is then
/// interrupted (its processes killed) before the call returns.
#[derive(Debug)]
pub enum Stop {
    /// Only by the command ending.
    Never,
    /// By a signal handler raising in the calling thread (Ctrl-C:
    /// `KeyboardInterrupt`), checked every 100 ms; for the main thread.
    Signals,
    /// By the task's owner going away (`CancelOnDrop`).
    Token(Arc<Notify>),
}

impl Stop {
    /// For a blocking call on this thread: signals are only delivered to
    /// the main thread.
    pub fn for_this_thread() -> Stop {
        // SAFETY: getpid and gettid only read the calling thread's ids.
        let main = unsafe { libc::getpid() == libc::gettid() };
        if main {
            Stop::Signals
        } else {
            Stop::Never
        }
    }

    /// Resolves with why the call must stop.
    async fn requested(&self) -> Failure {
        match self {
            Stop::Never => std::future::pending().await,
            Stop::Token(n) => {
                n.notified().await;
                Failure::Cancelled
            }
            Stop::Signals => loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Err(e) = Python::attach(|py| py.check_signals()) {
                    return Failure::Python(e);
                }
            },
        }
    }
}

/// Notifies the task's [`Stop::Token`] when dropped: an awaiting Python
/// task that is cancelled drops its future, and the command it waited on
/// is interrupted.
#[derive(Debug)]
pub struct CancelOnDrop(pub Arc<Notify>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        // A finished task no longer listens: harmless then.
        self.0.notify_one();
    }
}

/// What a waiting call does.
#[derive(Debug)]
pub enum Wait {
    Run {
        command: String,
        stdin: Option<Vec<u8>>,
        opts: RunOptions,
    },
    Poll(Duration),
}

impl Inner {
    /// A session to be opened with `spec`, registered for the exit hook.
    pub fn new(spec: Spec) -> Arc<Inner> {
        let inner = Arc::new(Inner {
            target: spec.target.clone(),
            state: tokio::sync::Mutex::new(State::Unopened(Box::new(spec))),
            info: Mutex::new(Info::default()),
            wake: Mutex::new(Arc::new(Notify::new())),
            closing: AtomicBool::new(false),
        });
        let mut live = lock(live());
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&inner));
        inner
    }

    /// The target as given.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// What is known without waiting.
    pub fn info(&self) -> Info {
        lock(&self.info).clone()
    }

    fn note(&self, open: Option<&Open>) {
        let mut info = lock(&self.info);
        match open {
            Some(o) => {
                let s = &o.session;
                *info = Info {
                    id: s.id().to_string(),
                    marker: s.marker().to_string(),
                    cwd: s.cwd().to_string(),
                    alive: s.is_alive(),
                    running: s.is_running(),
                    open: true,
                };
            }
            None => {
                info.open = false;
                info.alive = false;
                info.running = false;
            }
        }
    }

    /// Opens the session (once; again is a no-op, after close an error).
    pub async fn open(&self) -> Result<(), Failure> {
        let mut st = self.state.lock().await;
        let spec = match std::mem::replace(&mut *st, State::Closed) {
            State::Unopened(spec) => spec,
            other => {
                let open = matches!(other, State::Open(_));
                *st = other;
                return if open {
                    Ok(())
                } else {
                    Err(SessionError::Closed.into())
                };
            }
        };
        let Spec {
            target,
            mut config,
            journal,
            redact,
            console,
        } = *spec;
        let args = JournalArgs {
            journal: match &journal {
                JournalArg::Path(p) => Some(p.clone()),
                _ => None,
            },
            no_journal: matches!(journal, JournalArg::Off),
            redact,
            ..JournalArgs::default()
        };
        let observer = args.observer().map_err(|e| match e {
            ObserverError::Usage(m) => Failure::Session(SessionError::InvalidConfig(m)),
            ObserverError::CantCreate(m) => Failure::Journal(m),
        })?;
        let mirror = console
            .then(|| ConsoleMirror::start(&observer.console, &execkit_cli::default_socket()));
        config.observer = Some(observer);
        match Session::open(&target, config).await {
            Ok(session) => {
                let open = Open { session, mirror };
                self.note(Some(&open));
                *st = State::Open(Box::new(open));
                Ok(())
            }
            Err(e) => {
                if let Some(m) = mirror {
                    m.finish(Duration::from_secs(1)).await;
                }
                Err(e.into())
            }
        }
    }

    /// Runs or polls a command; `stop` ends the wait early, and then the
    /// command is interrupted (killed with what it started) before the
    /// failure is returned.
    pub async fn wait(&self, what: Wait, stop: Stop) -> Result<RunResult, Failure> {
        let mut st = self.state.lock().await;
        if self.closing.load(Ordering::SeqCst) {
            return Err(SessionError::Closed.into());
        }
        let open = open_mut(&mut st)?;
        let (r, stopped) = {
            let s = &mut open.session;
            let call = async {
                match what {
                    Wait::Run {
                        command,
                        stdin,
                        opts,
                    } => {
                        let wake = Arc::new(Notify::new());
                        *lock(&self.wake) = wake.clone();
                        let opts = opts.wake(wake);
                        match stdin {
                            Some(data) => s.run_with_stdin(&command, &data, opts).await,
                            None => s.run(&command, opts).await,
                        }
                    }
                    Wait::Poll(wait) => s.poll(wait).await,
                }
            };
            tokio::pin!(call);
            let stopping = stop.requested();
            tokio::pin!(stopping);
            let mut stopped = None;
            let r = loop {
                tokio::select! {
                    r = &mut call => break r,
                    why = &mut stopping, if stopped.is_none() => {
                        // The wait returns with the command running.
                        self.wake_waiter();
                        stopped = Some(why);
                    }
                }
            };
            (r, stopped)
        };
        let closing = self.closing.load(Ordering::SeqCst);
        let stopped = match stopped {
            None if closing => Some(Failure::Session(SessionError::Closed)),
            other => other,
        };
        let out = match stopped {
            None => r.map_err(Failure::from),
            Some(why) => {
                if open.session.is_running() {
                    // Its own failure is not the caller's: the stop is what
                    // they get; a lost shell shows on the next call.
                    let _ = open.session.interrupt().await;
                }
                Err(why)
            }
        };
        self.note(Some(open));
        out
    }

    /// Types `text` into the running command.
    pub async fn send_input(&self, text: String) -> Result<(), Failure> {
        let mut st = self.state.lock().await;
        let open = open_mut(&mut st)?;
        let r = open.session.send_input(&text).await;
        self.note(Some(open));
        Ok(r?)
    }

    /// Interrupts the running command and returns its final result.
    pub async fn interrupt(&self) -> Result<RunResult, Failure> {
        let mut st = self.state.lock().await;
        let open = open_mut(&mut st)?;
        let r = open.session.interrupt().await;
        self.note(Some(open));
        Ok(r?)
    }

    /// Resizes the session's terminal.
    pub async fn resize(&self, size: Size) -> Result<(), Failure> {
        let mut st = self.state.lock().await;
        let open = open_mut(&mut st)?;
        Ok(open.session.resize(size).await?)
    }

    /// Closes the session (its shell and every process it started are
    /// killed); closing again is a no-op.
    pub async fn close(&self) -> Result<(), Failure> {
        // A call waiting on a command (another thread, a task) lets go.
        self.closing.store(true, Ordering::SeqCst);
        self.wake_waiter();
        let mut st = self.state.lock().await;
        let prev = std::mem::replace(&mut *st, State::Closed);
        self.note(None);
        drop(st);
        if let State::Open(open) = prev {
            close_open(*open).await?;
        }
        Ok(())
    }

    /// Wakes the wait of the command in flight, if any: it returns with
    /// the command still running and lets go of the session.
    fn wake_waiter(&self) {
        lock(&self.wake).notify_one();
    }
}

/// A std mutex's guard, whether or not a panic poisoned it (what it guards
/// is always left whole).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn close_open(open: Open) -> Result<(), Failure> {
    let Open {
        session, mirror, ..
    } = open;
    let r = session.close().await;
    if let Some(m) = mirror {
        m.finish(Duration::from_secs(1)).await;
    }
    Ok(r?)
}

fn open_mut(st: &mut State) -> Result<&mut Open, Failure> {
    match st {
        State::Open(o) => Ok(o),
        State::Unopened(_) => Err(Failure::NotOpened),
        State::Closed => Err(SessionError::Closed.into()),
    }
}

impl Drop for Inner {
    /// A session garbage-collected while open is closed in the background
    /// (the exit hook waits for it).
    fn drop(&mut self) {
        let State::Open(open) = std::mem::replace(self.state.get_mut(), State::Closed) else {
            return;
        };
        let task = rt().spawn(async move {
            let _ = close_open(*open).await;
        });
        lock(closing()).push(task);
    }
}

fn live() -> &'static Mutex<Vec<Weak<Inner>>> {
    static LIVE: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());
    &LIVE
}

fn closing() -> &'static Mutex<Vec<tokio::task::JoinHandle<()>>> {
    static CLOSING: Mutex<Vec<tokio::task::JoinHandle<()>>> = Mutex::new(Vec::new());
    &CLOSING
}

/// Closes every session still open and waits for those being closed (the
/// interpreter is exiting): nothing is left running on any target. Bounded
/// by `limit`, after which what is left is up to `execkit gc`.
pub async fn close_all(limit: Duration) {
    let all: Vec<Arc<Inner>> = lock(live()).iter().filter_map(Weak::upgrade).collect();
    let mut tasks: Vec<_> = std::mem::take(&mut *lock(closing()));
    for inner in all {
        inner.wake_waiter();
        tasks.push(rt().spawn(async move {
            let _ = inner.close().await;
        }));
    }
    let _ = tokio::time::timeout(limit, async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
}
