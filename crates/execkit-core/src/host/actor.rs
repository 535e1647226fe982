//! The actor behind each named session: one task that owns the
//! [`Session`], drives a running command in slices, serves requests
//! between them, and keeps what no client has read yet.

use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use super::screen::{Attachment, Screen};
use super::HostError;
use crate::output_cap::OutputCap;
use crate::{RunOptions, RunResult, Session, SessionError};

pub(super) type Reply<T> = oneshot::Sender<Result<T, HostError>>;

/// A client's request to a session's actor.
pub(super) enum Req {
    Run(String, RunOptions, Reply<RunResult>),
    Poll(Duration, Reply<RunResult>),
    Input(String, Reply<()>),
    Interrupt(Reply<RunResult>),
    /// A person attaches: the screen now and its updates.
    Attach(Reply<Attachment>),
    /// Keys a person typed, for the running command.
    Keys(Vec<u8>, Reply<()>),
}

/// How long a command may hold the actor when it starts before the actor
/// takes over driving it in [`TICK`]s (a command that ends within it costs
/// nothing extra).
pub const SLICE: Duration = Duration::from_millis(250);
/// How often a running command is checked for requests.
pub const TICK: Duration = Duration::from_millis(50);

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

pub(super) struct Actor {
    name: String,
    session: Session,
    rx: mpsc::Receiver<Req>,
    idle: Duration,
    limit: usize,
    last_activity: Instant,
    running: Option<Running>,
    unread: Option<Unread>,
    waiters: Vec<Waiter>,
    /// The session's screen, for people who attach.
    screen: Screen,
}

/// Whether the actor goes on.
enum Flow {
    Continue,
    /// Idle too long, or the host is gone.
    End,
}

impl Actor {
    /// An actor for `session`, named `name`, serving requests from `rx`.
    pub(super) fn new(
        name: String,
        mut session: Session,
        rx: mpsc::Receiver<Req>,
        idle: Duration,
        limit: usize,
    ) -> Actor {
        let (screen, raw) = Screen::new();
        session.tap_raw(Some(raw));
        Actor {
            screen,
            name,
            session,
            rx,
            idle,
            limit,
            last_activity: Instant::now(),
            running: None,
            unread: None,
            waiters: Vec::new(),
        }
    }

    /// The session's name.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Serves until closed (`kill`), idle expiry or the host's end; returns
    /// the session to close and whether it expired on its own.
    pub(super) async fn live(mut self, kill: &Notify) -> (Session, bool) {
        let expired = loop {
            tokio::select! {
                biased;
                _ = kill.notified() => break false,
                flow = self.step() => match flow {
                    Flow::Continue => self.screen.pump(),
                    Flow::End => break true,
                },
            }
        };
        self.session.tap_raw(None);
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
            Req::Run(cmd, opts, tx) => self.handle_run(cmd, opts, tx).await,
            Req::Poll(wait, tx) => self.handle_poll(wait, tx).await,
            Req::Input(text, tx) => {
                let sent = self.session.send_input(&text).await;
                if sent.is_ok() {
                    if let Some(run) = &mut self.running {
                        run.last.waiting_for_input = false;
                    }
                }
                let _ = tx.send(sent.map_err(Into::into));
            }
            Req::Interrupt(tx) => self.handle_interrupt(tx).await,
            Req::Attach(tx) => {
                let _ = tx.send(Ok(self.screen.attach()));
            }
            Req::Keys(keys, tx) => self.handle_keys(keys, tx).await,
        }
    }

    /// Keys a person typed go to the running command as they are (and to
    /// the journal, marked as the person's); the screen shows them as a
    /// terminal with echo on would, unless the command asks for a secret.
    async fn handle_keys(&mut self, keys: Vec<u8>, tx: Reply<()>) {
        if !self.session.is_running() {
            let _ = tx.send(Err(SessionError::Idle.into()));
            return;
        }
        self.screen.pump();
        if !self.session.asks_for_secret() {
            self.screen.echo(&keys);
        }
        let sent = self.session.send_keys(&keys).await;
        if sent.is_ok() {
            if let Some(run) = &mut self.running {
                run.last.waiting_for_input = false;
            }
        }
        let _ = tx.send(sent.map_err(Into::into));
    }

    /// Starts a command for its first slice; refused while one runs.
    async fn handle_run(&mut self, cmd: String, opts: RunOptions, tx: Reply<RunResult>) {
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
        self.screen.pump();
        self.screen.command(&cmd);
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

    /// The final result if the command ended, else a waiter for output.
    async fn handle_poll(&mut self, wait: Duration, tx: Reply<RunResult>) {
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

    /// Interrupts the running command; every waiter gets its result.
    async fn handle_interrupt(&mut self, tx: Reply<RunResult>) {
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
