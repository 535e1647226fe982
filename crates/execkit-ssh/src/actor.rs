//! One OS thread per SSH connection. It owns the `ssh2::Session` in
//! non-blocking mode and multiplexes every channel of the connection: libssh2
//! serialises all I/O of a session, so a blocking read would stall writes
//! from other threads. Tokio talks to it through a request queue (plus an
//! eventfd to wake it) and gets output through one event channel per shell.
//!
//! libssh2's non-blocking contract is kept: an operation that returned
//! EAGAIN is retried with the same arguments (pending input stays at the
//! front of its queue until written), only one channel open is in flight at a
//! time, and keepalives are sent only while nothing else is half-sent.

use std::collections::{HashMap, VecDeque};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use execkit_core::{ExitStatus, ShellEvent, Size};
use ssh2::{BlockDirections, Channel, ErrorCode, ExtendedData, PtyModeOpcode, PtyModes, Session};
use tokio::sync::{mpsc::UnboundedSender, oneshot};

/// Output bytes handed to tokio but not yet consumed, per shell, above which
/// the thread stops reading that channel (the SSH window then throttles the
/// server).
pub(crate) const HIGH_WATER: usize = 4 << 20;
const READ_CHUNK: usize = 64 * 1024;
const EAGAIN: i32 = -37;
const CHANNEL_FAILURE: i32 = -21;
/// How long to wait for the server's close (carrying the exit status) after EOF.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
const IDLE_POLL: Duration = Duration::from_millis(250);
/// Keepalive interval (sent with want-reply, so the server answers).
pub(crate) const KEEPALIVE_SECS: u32 = 15;
/// How long the server may stay silent while it owes us an answer (to a
/// keepalive, sent every 15 s, or to a channel set-up) before the
/// connection counts as stalled and is given up. TCP alone cannot tell: a
/// stopped or wedged sshd still has its kernel acknowledge our packets.
pub(crate) const STALL_LIMIT: Duration = Duration::from_secs(10);

macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing_on() {
            eprintln!("[ssh {:?}] {}", std::thread::current().name(), format!($($arg)*));
        }
    };
}

/// `EXECKIT_SSH_TRACE=1` prints the connection thread's steps on stderr.
fn tracing_on() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("EXECKIT_SSH_TRACE").is_some())
}

/// Why a channel could not be opened.
#[derive(Debug, Clone)]
pub(crate) enum OpenError {
    /// The server refused another channel on this connection (MaxSessions).
    Refused(String),
    /// The connection is gone.
    Lost(String),
    /// The server refused the PTY or the command.
    Failed(String),
}

/// What a one-shot command returned.
#[derive(Debug, Clone)]
pub(crate) struct ExecOutput {
    pub status: ExitStatus,
    pub output: Vec<u8>,
}

type Done = oneshot::Sender<Result<(), String>>;

pub(crate) enum Req {
    /// A new channel: an interactive shell or a one-shot exec.
    Open(What),
    Write {
        id: u64,
        data: Vec<u8>,
        done: Done,
    },
    Resize {
        id: u64,
        size: Size,
        done: Done,
    },
    Close {
        id: u64,
    },
}

/// State shared by the handle and the thread.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Set once the connection is gone, with the message for users.
    pub lost: OnceLock<String>,
    /// Channels the server allows on this connection (MaxSessions), learnt
    /// from its first refusal.
    pub limit: AtomicUsize,
    /// Channels open or being opened (shells and one-shot commands).
    pub channels: AtomicUsize,
    /// Channels the server has accepted and not yet seen closed.
    pub open: AtomicUsize,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            lost: OnceLock::new(),
            limit: AtomicUsize::new(usize::MAX),
            channels: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
        }
    }
}

impl Shared {
    /// Whether another shell channel would likely be accepted.
    pub(crate) fn has_room(&self) -> bool {
        self.channels.load(Ordering::Relaxed) < self.limit.load(Ordering::Relaxed)
    }

    fn release(&self) {
        let _ = self
            .channels
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// The server refused a channel: it allows no more than are open now.
    /// Returns false when nothing is open (the refusal is not about load).
    pub(crate) fn refused(&self) -> bool {
        let open = self.open.load(Ordering::Relaxed);
        self.limit.fetch_min(open.max(1), Ordering::Relaxed);
        open > 0
    }
}

/// An eventfd the thread polls so requests wake it at once.
#[derive(Debug)]
pub(crate) struct Wake(RawFd);

impl Wake {
    fn new() -> std::io::Result<Wake> {
        // SAFETY: plain syscall; the fd is owned by the returned value.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Wake(fd))
    }

    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
        unsafe {
            libc::write(self.0, (&one as *const u64).cast(), 8);
        }
    }

    fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a valid u64 from our non-blocking eventfd.
        unsafe {
            libc::read(self.0, (&mut v as *mut u64).cast(), 8);
        }
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe {
            libc::close(self.0);
        }
    }
}

/// Handle to a live connection; the thread shuts the connection down when
/// the last handle is dropped.
#[derive(Debug)]
pub(crate) struct Conn {
    /// `host:port` for messages.
    pub label: String,
    tx: std::sync::Mutex<Sender<Req>>,
    wake: Arc<Wake>,
    pub shared: Arc<Shared>,
    next_id: AtomicU64,
}

impl Conn {
    /// Starts the connection thread for an established session.
    pub(crate) fn start(
        label: String,
        session: Session,
        stream: TcpStream,
    ) -> std::io::Result<Arc<Conn>> {
        let wake = Arc::new(Wake::new()?);
        let shared = Arc::new(Shared::default());
        let (tx, rx) = std::sync::mpsc::channel();
        session.set_blocking(false);
        let actor = Actor {
            sess: session,
            stream,
            wake: wake.clone(),
            rx,
            shared: shared.clone(),
            label: label.clone(),
            pending: Vec::new(),
            shells: HashMap::new(),
            execs: Vec::new(),
            closing: Vec::new(),
            shutdown: None,
            next_keepalive: Instant::now() + Duration::from_secs(u64::from(KEEPALIVE_SECS)),
            expect: None,
        };
        static SEQ: AtomicU64 = AtomicU64::new(1);
        std::thread::Builder::new()
            .name(format!(
                "execkit-ssh {label} #{}",
                SEQ.fetch_add(1, Ordering::Relaxed)
            ))
            .spawn(move || actor.run())?;
        Ok(Arc::new(Conn {
            label,
            tx: std::sync::Mutex::new(tx),
            wake,
            shared,
            next_id: AtomicU64::new(1),
        }))
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The message for a lost connection.
    pub(crate) fn lost_message(&self) -> String {
        self.shared
            .lost
            .get()
            .cloned()
            .unwrap_or_else(|| format!("connection to {} closed", self.label))
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.shared.lost.get().is_some()
    }

    /// Queues a request for the thread.
    pub(crate) fn send(&self, req: Req) -> Result<(), String> {
        let opens = matches!(req, Req::Open(_));
        if opens {
            self.shared.channels.fetch_add(1, Ordering::Relaxed);
        }
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if tx.send(req).is_err() {
            if opens {
                self.shared.release();
            }
            return Err(self.lost_message());
        }
        drop(tx);
        self.wake.wake();
        Ok(())
    }

    pub(crate) fn wake(&self) {
        self.wake.wake();
    }

    /// Runs `command` on a fresh exec channel and waits for it.
    pub(crate) async fn exec(&self, command: String) -> Result<ExecOutput, OpenError> {
        let (reply, rx) = oneshot::channel();
        self.send(Req::Open(What::Exec { command, reply }))
            .map_err(OpenError::Lost)?;
        rx.await
            .unwrap_or_else(|_| Err(OpenError::Lost(self.lost_message())))
    }

    /// Like [`Conn::exec`], for threads outside the runtime.
    pub(crate) fn exec_blocking(&self, command: String) -> Result<ExecOutput, OpenError> {
        let (reply, rx) = oneshot::channel();
        self.send(Req::Open(What::Exec { command, reply }))
            .map_err(OpenError::Lost)?;
        rx.blocking_recv()
            .unwrap_or_else(|_| Err(OpenError::Lost(self.lost_message())))
    }
}

/// Terminal modes for the remote PTY: sane defaults, never copied from a
/// local terminal. No echo, no `\n` → `\r\n`, no XON/XOFF; signals kept so
/// Ctrl-C interrupts the foreground command.
///
/// Not canonical, unlike the local and Docker PTYs: with ECHO off and ICANON
/// on, OpenSSH's sshd answers every write into the PTY with an
/// `SSH_MSG_IGNORE` as long as the data written ("simulated echo" against
/// traffic analysis). A large input becomes one such packet per PTY write,
/// up to ~64 KB, and libssh2 drops the connection on any packet over 35,000
/// bytes (seen as "packet length out of bounds"). Without ICANON no IGNORE
/// is sent, and no 4095-byte line limit applies either. The cost: `^D` is
/// passed through as a byte, not turned into end-of-file.
fn pty_modes() -> PtyModes {
    let mut m = PtyModes::new();
    m.set_character(PtyModeOpcode::VINTR, Some('\x03'));
    m.set_character(PtyModeOpcode::VQUIT, Some('\x1c'));
    m.set_character(PtyModeOpcode::VERASE, Some('\x7f'));
    m.set_character(PtyModeOpcode::VKILL, Some('\x15'));
    m.set_character(PtyModeOpcode::VEOF, Some('\x04'));
    m.set_character(PtyModeOpcode::VSUSP, Some('\x1a'));
    m.set_boolean(PtyModeOpcode::ICANON, false);
    m.set_boolean(PtyModeOpcode::ISIG, true);
    m.set_boolean(PtyModeOpcode::IEXTEN, true);
    m.set_boolean(PtyModeOpcode::ECHO, false);
    m.set_boolean(PtyModeOpcode::ECHOE, false);
    m.set_boolean(PtyModeOpcode::ECHOK, false);
    m.set_boolean(PtyModeOpcode::ECHONL, false);
    m.set_boolean(PtyModeOpcode::ICRNL, true);
    m.set_boolean(PtyModeOpcode::INLCR, false);
    m.set_boolean(PtyModeOpcode::IGNCR, false);
    m.set_boolean(PtyModeOpcode::IXON, false);
    m.set_boolean(PtyModeOpcode::IXOFF, false);
    m.set_boolean(PtyModeOpcode::IXANY, false);
    m.set_boolean(PtyModeOpcode::OPOST, true);
    m.set_boolean(PtyModeOpcode::ONLCR, false);
    m.set_boolean(PtyModeOpcode::OCRNL, false);
    m.set_boolean(PtyModeOpcode::CS8, true);
    m
}

enum Stage {
    Open,
    Pty,
    Start,
}

/// What a new channel is for, and whom to answer.
pub(crate) enum What {
    Shell {
        id: u64,
        command: String,
        size: Size,
        events: UnboundedSender<ShellEvent>,
        inflight: Arc<AtomicUsize>,
        reply: oneshot::Sender<Result<(), OpenError>>,
    },
    Exec {
        command: String,
        reply: oneshot::Sender<Result<ExecOutput, OpenError>>,
    },
}

impl What {
    fn fail(self, e: OpenError) {
        match self {
            What::Shell { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            What::Exec { reply, .. } => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

struct Pending {
    chan: Option<Channel>,
    stage: Stage,
    what: What,
}

struct Input {
    data: Vec<u8>,
    off: usize,
    done: Option<Done>,
}

struct ShellChan {
    chan: Channel,
    events: UnboundedSender<ShellEvent>,
    inflight: Arc<AtomicUsize>,
    input: VecDeque<Input>,
    resize: Option<(Size, Vec<Done>)>,
    eof_at: Option<Instant>,
}

struct ExecChan {
    chan: Channel,
    output: Vec<u8>,
    reply: Option<oneshot::Sender<Result<ExecOutput, OpenError>>>,
    eof_at: Option<Instant>,
}

struct Actor {
    sess: Session,
    stream: TcpStream,
    wake: Arc<Wake>,
    rx: Receiver<Req>,
    shared: Arc<Shared>,
    label: String,
    pending: Vec<Pending>,
    shells: HashMap<u64, ShellChan>,
    execs: Vec<ExecChan>,
    closing: Vec<(Channel, Instant)>,
    /// When the last handle went away (then: finish cleanups, close).
    shutdown: Option<Instant>,
    next_keepalive: Instant,
    /// Since when the server owes us an answer, and how many bytes the
    /// socket had received then (see [`STALL_LIMIT`]).
    expect: Option<(Instant, u64)>,
}

/// A failure of the whole connection.
struct Lost(String);

fn code(e: &ssh2::Error) -> i32 {
    match e.code() {
        ErrorCode::Session(c) => c,
        ErrorCode::SFTP(c) => c,
    }
}

fn signal_number(name: &str) -> Option<i32> {
    let n = match name.trim_start_matches("SIG") {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "ABRT" => libc::SIGABRT,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "SEGV" => libc::SIGSEGV,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "BUS" => libc::SIGBUS,
        "TRAP" => libc::SIGTRAP,
        _ => return None,
    };
    Some(n)
}

/// How the remote process ended, from the channel's exit-signal/exit-status.
fn exit_of(chan: &Channel, closed: bool) -> ExitStatus {
    if let Ok(sig) = chan.exit_signal() {
        if let Some(name) = sig.exit_signal {
            return signal_number(&name).map_or(ExitStatus::Unknown, ExitStatus::Signal);
        }
    }
    match chan.exit_status() {
        Ok(c) if closed || c != 0 => ExitStatus::Code(c),
        _ => ExitStatus::Unknown,
    }
}

impl Actor {
    fn run(mut self) {
        let result = self.main_loop();
        let msg = match result {
            Ok(()) => format!("connection to {} closed", self.label),
            Err(Lost(m)) => m,
        };
        let _ = self.shared.lost.set(msg.clone());
        self.fail_everything(&msg);
        // Free channels, then say goodbye; never block on a dead peer.
        self.closing.clear();
        self.execs.clear();
        self.shells.clear();
        self.pending.clear();
        let _ = self.sess.disconnect(None, "execkit session closed", None);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    fn fail_everything(&mut self, msg: &str) {
        for (_, sh) in self.shells.drain() {
            for input in sh.input {
                if let Some(d) = input.done {
                    let _ = d.send(Err(msg.to_string()));
                }
            }
            let _ = sh.events.send(ShellEvent::Lost(msg.to_string()));
        }
        for p in self.pending.drain(..) {
            p.what.fail(OpenError::Lost(msg.to_string()));
        }
        for mut e in self.execs.drain(..) {
            if let Some(r) = e.reply.take() {
                let _ = r.send(Err(OpenError::Lost(msg.to_string())));
            }
        }
        while let Ok(req) = self.rx.try_recv() {
            reject(req, msg);
        }
    }

    fn lost(&self, what: &str, detail: &str) -> Lost {
        lost(&self.label, self.stream.as_raw_fd(), what, detail)
    }

    fn connection_dead(&self) -> bool {
        dead(self.stream.as_raw_fd())
    }

    fn main_loop(&mut self) -> Result<(), Lost> {
        loop {
            let mut progress = self.take_requests();
            if let Some(since) = self.shutdown {
                let idle = self.shells.is_empty()
                    && self.execs.is_empty()
                    && self.pending.is_empty()
                    && self.closing.is_empty();
                if idle || since.elapsed() > Duration::from_secs(10) {
                    return Ok(());
                }
            }
            progress |= self.service_shells()?;
            progress |= self.service_execs()?;
            progress |= self.service_closing();
            // Last: the replies it waits for may have just been pulled off
            // the socket by the reads above.
            progress |= self.advance_pending()?;
            self.keepalive()?;
            self.check_stall()?;
            if progress {
                continue;
            }
            if self.data_buffered() {
                continue;
            }
            self.wait();
        }
    }

    /// Moves queued requests into the state. Returns whether any came.
    fn take_requests(&mut self) -> bool {
        let mut any = false;
        loop {
            match self.rx.try_recv() {
                Ok(req) => {
                    any = true;
                    self.accept(req);
                }
                Err(TryRecvError::Empty) => return any,
                Err(TryRecvError::Disconnected) => {
                    if self.shutdown.is_none() {
                        self.shutdown = Some(Instant::now());
                        // No handle left: no one can read these shells.
                        let ids: Vec<u64> = self.shells.keys().copied().collect();
                        for id in ids {
                            self.close_shell(id);
                        }
                    }
                    return any;
                }
            }
        }
    }

    fn accept(&mut self, req: Req) {
        match req {
            Req::Open(what) => {
                self.expect_answer();
                self.pending.push(Pending {
                    chan: None,
                    stage: Stage::Open,
                    what,
                });
            }
            Req::Write { id, data, done } => match self.shells.get_mut(&id) {
                Some(sh) if sh.eof_at.is_none() => sh.input.push_back(Input {
                    data,
                    off: 0,
                    done: Some(done),
                }),
                _ => {
                    let _ = done.send(Err("the remote shell has ended".into()));
                }
            },
            Req::Resize { id, size, done } => match self.shells.get_mut(&id) {
                Some(sh) => match &mut sh.resize {
                    Some((s, waiters)) => {
                        *s = size;
                        waiters.push(done);
                    }
                    None => sh.resize = Some((size, vec![done])),
                },
                None => {
                    let _ = done.send(Ok(()));
                }
            },
            Req::Close { id } => self.close_shell(id),
        }
    }

    /// Sends a channel off to be closed and freed; it no longer counts
    /// against the server's session limit.
    fn retire(&mut self, chan: Channel) {
        let _ = self
            .shared
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        self.closing.push((chan, Instant::now()));
    }

    fn close_shell(&mut self, id: u64) {
        if let Some(sh) = self.shells.remove(&id) {
            self.shared.release();
            for input in sh.input {
                if let Some(d) = input.done {
                    let _ = d.send(Err("the session was closed".into()));
                }
            }
            self.retire(sh.chan);
        }
    }

    /// Opens channels (one open in flight at a time), requests PTYs and
    /// starts commands.
    fn advance_pending(&mut self) -> Result<bool, Lost> {
        // Strictly one channel set-up at a time: libssh2 keeps one channel
        // open in flight per session, and its wait for a request's reply
        // fails when a reply for another channel arrives meanwhile.
        let mut progress = false;
        let i = 0;
        let fd = self.stream.as_raw_fd();
        let label = self.label.clone();
        while !self.pending.is_empty() {
            let mut advanced = false;
            let p = &mut self.pending[i];
            let step: Result<bool, OpenError> = match p.stage {
                Stage::Open => match self.sess.channel_session() {
                    Ok(mut chan) => {
                        self.shared.open.fetch_add(1, Ordering::Relaxed);
                        let _ = chan.handle_extended_data(ExtendedData::Merge);
                        p.chan = Some(chan);
                        p.stage = match p.what {
                            What::Shell { .. } => Stage::Pty,
                            What::Exec { .. } => Stage::Start,
                        };
                        advanced = true;
                        Ok(false)
                    }
                    Err(e) if code(&e) == EAGAIN => Ok(false),
                    Err(e) if code(&e) == CHANNEL_FAILURE => {
                        Err(OpenError::Refused(e.message().to_string()))
                    }
                    Err(e) => {
                        give_up_if_lost(&e, fd, &label, "opening a channel")?;
                        Err(OpenError::Refused(e.message().to_string()))
                    }
                },
                Stage::Pty => {
                    let (chan, size) = match (&mut p.chan, &p.what) {
                        (Some(c), What::Shell { size, .. }) => (c, *size),
                        _ => unreachable!("PTY stage without a shell channel"),
                    };
                    match chan.request_pty(
                        "dumb",
                        Some(pty_modes()),
                        Some((u32::from(size.cols), u32::from(size.rows), 0, 0)),
                    ) {
                        Ok(()) => {
                            p.stage = Stage::Start;
                            advanced = true;
                            Ok(false)
                        }
                        Err(e) if code(&e) == EAGAIN => Ok(false),
                        Err(e) => {
                            give_up_if_lost(&e, fd, &label, "requesting a PTY")?;
                            Err(OpenError::Failed(format!(
                                "the server refused a terminal: {}",
                                e.message()
                            )))
                        }
                    }
                }
                Stage::Start => {
                    let command = match &p.what {
                        What::Shell { command, .. } | What::Exec { command, .. } => command,
                    };
                    let chan = p.chan.as_mut().expect("channel after open");
                    match chan.exec(command) {
                        Ok(()) => {
                            progress = true;
                            Ok(true)
                        }
                        Err(e) if code(&e) == EAGAIN => Ok(false),
                        Err(e) => {
                            give_up_if_lost(&e, fd, &label, "starting a command")?;
                            Err(OpenError::Failed(format!(
                                "the server refused to run the shell: {}",
                                e.message()
                            )))
                        }
                    }
                }
            };
            trace!(
                "pending head stage={} result={:?} queue={}",
                match self.pending[i].stage {
                    Stage::Open => "open",
                    Stage::Pty => "pty",
                    Stage::Start => "start",
                },
                step.as_ref().map(|b| *b),
                self.pending.len()
            );
            match step {
                Ok(false) if advanced => {
                    progress = true;
                    continue;
                }
                Ok(false) => break,
                Ok(true) => {
                    let p = self.pending.remove(i);
                    let chan = p.chan.expect("channel after start");
                    match p.what {
                        What::Shell {
                            id,
                            events,
                            inflight,
                            reply,
                            ..
                        } => {
                            if reply.send(Ok(())).is_err() {
                                // The caller gave up: nobody will use it.
                                self.shared.release();
                                self.retire(chan);
                            } else {
                                self.shells.insert(
                                    id,
                                    ShellChan {
                                        chan,
                                        events,
                                        inflight,
                                        input: VecDeque::new(),
                                        resize: None,
                                        eof_at: None,
                                    },
                                );
                            }
                        }
                        What::Exec { reply, .. } => self.execs.push(ExecChan {
                            chan,
                            output: Vec::new(),
                            reply: Some(reply),
                            eof_at: None,
                        }),
                    }
                }
                Err(e) => {
                    let p = self.pending.remove(i);
                    if let Some(c) = p.chan {
                        self.retire(c);
                    }
                    self.shared.release();
                    p.what.fail(e);
                    progress = true;
                }
            }
        }
        Ok(progress)
    }

    fn service_shells(&mut self) -> Result<bool, Lost> {
        let mut progress = false;
        let mut ended: Vec<u64> = Vec::new();
        let mut buf = vec![0u8; READ_CHUNK];
        let ids: Vec<u64> = self.shells.keys().copied().collect();
        for id in ids {
            let dead = {
                let sh = self.shells.get_mut(&id).expect("shell by id");
                match service_shell(sh, &mut buf) {
                    Ok((p, end)) => {
                        progress |= p;
                        if end {
                            ended.push(id);
                        }
                        None
                    }
                    Err(detail) => Some(detail),
                }
            };
            if let Some(detail) = dead {
                let last = ssh2::Error::last_session_error(&self.sess).map(|e| code(&e));
                trace!("shell {id} error {detail}: last={last:?}");
                let detail = match last {
                    Some(c) => format!("{detail} (libssh2 error {c})"),
                    None => detail,
                };
                if last.is_some_and(fatal) || self.connection_dead() {
                    return Err(self.lost("serving a shell", &detail));
                }
                if let Some(sh) = self.shells.get(&id) {
                    let _ = sh.events.send(ShellEvent::Lost(format!(
                        "ssh channel to {} failed: {detail}",
                        self.label
                    )));
                }
                ended.push(id);
            }
        }
        for id in ended {
            self.close_shell(id);
            progress = true;
        }
        Ok(progress)
    }

    fn service_execs(&mut self) -> Result<bool, Lost> {
        let mut progress = false;
        let mut buf = vec![0u8; READ_CHUNK];
        let mut i = 0;
        let fd = self.stream.as_raw_fd();
        while i < self.execs.len() {
            let e = &mut self.execs[i];
            let mut finished = None;
            loop {
                match e.chan.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        progress = true;
                        if e.output.len() < 64 * 1024 {
                            e.output.extend_from_slice(&buf[..n]);
                        }
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(err) => {
                        let detail = err.to_string();
                        let last = ssh2::Error::last_session_error(&self.sess).map(|e| code(&e));
                        if last.is_some_and(fatal) || dead(fd) {
                            return Err(lost(&self.label, fd, "running a command", &detail));
                        }
                        finished = Some(Err(OpenError::Failed(detail)));
                        break;
                    }
                }
            }
            let e = &mut self.execs[i];
            if finished.is_none() && e.chan.eof() {
                let since = *e.eof_at.get_or_insert_with(Instant::now);
                match e.chan.wait_close() {
                    Ok(()) => finished = Some(Ok(exit_of(&e.chan, true))),
                    Err(err) if code(&err) == EAGAIN && since.elapsed() < CLOSE_GRACE => {}
                    Err(_) => finished = Some(Ok(exit_of(&e.chan, false))),
                }
            }
            match finished {
                None => i += 1,
                Some(r) => {
                    trace!("exec finished: {:?}", r.as_ref().map(|s| *s));
                    let mut e = self.execs.remove(i);
                    self.shared.release();
                    if let Some(reply) = e.reply.take() {
                        let _ = reply.send(r.map(|status| ExecOutput {
                            status,
                            output: std::mem::take(&mut e.output),
                        }));
                    }
                    self.retire(e.chan);
                    progress = true;
                }
            }
        }
        Ok(progress)
    }

    /// Sends our close for finished channels, then frees them.
    fn service_closing(&mut self) -> bool {
        let before = self.closing.len();
        self.closing.retain_mut(|(chan, since)| {
            matches!(chan.close(), Err(e) if code(&e) == EAGAIN && since.elapsed() < Duration::from_secs(5))
        });
        before != self.closing.len()
    }

    fn keepalive(&mut self) -> Result<(), Lost> {
        let now = Instant::now();
        if now < self.next_keepalive {
            return Ok(());
        }
        // A keepalive must never be the packet left half-sent (libssh2 would
        // then refuse every other packet): only send when nothing is queued
        // and the socket has room.
        let busy = self.shells.values().any(|s| !s.input.is_empty())
            || matches!(
                self.sess.block_directions(),
                BlockDirections::Outbound | BlockDirections::Both
            )
            || !poll_fd(self.stream.as_raw_fd(), libc::POLLOUT, 0);
        if busy {
            self.next_keepalive = now + Duration::from_secs(1);
            return Ok(());
        }
        match self.sess.keepalive_send() {
            Ok(secs) => {
                self.next_keepalive = now + Duration::from_secs(u64::from(secs.max(1)));
                // libssh2 sends only when its interval has passed, and then
                // reports the full interval; sent with want-reply, the
                // server answers it.
                if secs >= KEEPALIVE_SECS {
                    self.expect_answer();
                }
                Ok(())
            }
            Err(e) if code(&e) == EAGAIN => {
                self.next_keepalive = now + Duration::from_secs(1);
                Ok(())
            }
            Err(e) => Err(self.lost("sending a keepalive", e.message())),
        }
    }

    /// Starts the stall clock, unless it already runs.
    fn expect_answer(&mut self) {
        if self.expect.is_none() {
            if let Some(bytes) = bytes_received(self.stream.as_raw_fd()) {
                self.expect = Some((Instant::now(), bytes));
            }
        }
    }

    /// Gives the connection up when the server has sent nothing for
    /// [`STALL_LIMIT`] while it owes us an answer.
    fn check_stall(&mut self) -> Result<(), Lost> {
        let Some((since, before)) = self.expect else {
            return Ok(());
        };
        let Some(now_bytes) = bytes_received(self.stream.as_raw_fd()) else {
            self.expect = None;
            return Ok(());
        };
        if now_bytes != before {
            // It spoke. Channel set-ups still waiting restart the clock.
            self.expect = (!self.pending.is_empty()).then(|| (Instant::now(), now_bytes));
            return Ok(());
        }
        if since.elapsed() > STALL_LIMIT {
            return Err(Lost(format!(
                "connection to {} stalled: the server sent nothing for {} s while an answer was due",
                self.label,
                STALL_LIMIT.as_secs()
            )));
        }
        Ok(())
    }

    /// Whether libssh2 already holds unread data for a channel we would read
    /// (it reads the socket on behalf of every channel).
    fn data_buffered(&self) -> bool {
        self.shells.values().any(|s| {
            s.inflight.load(Ordering::Relaxed) < HIGH_WATER
                && (s.chan.read_window().available > 0 || (s.eof_at.is_none() && s.chan.eof()))
        }) || self
            .execs
            .iter()
            .any(|e| e.chan.read_window().available > 0)
    }

    fn wait(&mut self) {
        trace!(
            "idle: pending={} shells={} execs={} closing={} channels={} limit={} dirs={:?}",
            self.pending.len(),
            self.shells.len(),
            self.execs.len(),
            self.closing.len(),
            self.shared.channels.load(Ordering::Relaxed),
            self.shared.limit.load(Ordering::Relaxed),
            match self.sess.block_directions() {
                BlockDirections::None => 0,
                BlockDirections::Inbound => 1,
                BlockDirections::Outbound => 2,
                BlockDirections::Both => 3,
            }
        );
        let outbound = matches!(
            self.sess.block_directions(),
            BlockDirections::Outbound | BlockDirections::Both
        );
        let mut timeout = IDLE_POLL;
        let until_keepalive = self
            .next_keepalive
            .saturating_duration_since(Instant::now());
        timeout = timeout.min(until_keepalive.max(Duration::from_millis(10)));
        // Shells waiting on the close grace period need a timely re-check.
        if self.shells.values().any(|s| s.eof_at.is_some())
            || self.execs.iter().any(|e| e.eof_at.is_some())
            || !self.closing.is_empty()
        {
            timeout = timeout.min(Duration::from_millis(20));
        }
        let mut fds = [
            libc::pollfd {
                fd: self.stream.as_raw_fd(),
                events: libc::POLLIN | if outbound { libc::POLLOUT } else { 0 },
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.0,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: polling two valid fds with a correctly sized array.
        unsafe {
            libc::poll(fds.as_mut_ptr(), 2, timeout.as_millis() as libc::c_int);
        }
        if fds[1].revents != 0 {
            self.wake.drain();
        }
    }
}

/// libssh2 errors after which the session is unusable: socket failures,
/// a peer that went away, a broken or undecryptable stream.
fn fatal(code: i32) -> bool {
    matches!(
        code,
        -2 | -3 | -4 | -5 | -6 | -7 | -8 | -12 | -13 | -14 | -41 | -43 | -44 | -45 | -52
    )
}

/// After a failed channel step: the connection is lost when the error is
/// fatal or the socket is dead; otherwise only this channel failed.
fn give_up_if_lost(e: &ssh2::Error, fd: RawFd, label: &str, what: &str) -> Result<(), Lost> {
    if fatal(code(e)) || dead(fd) {
        return Err(lost(label, fd, what, e.message()));
    }
    Ok(())
}

/// The message for a connection that failed: plain when the peer closed
/// the socket, with libssh2's reason when the stream itself broke.
fn lost(label: &str, fd: RawFd, what: &str, detail: &str) -> Lost {
    tracing::debug!("ssh connection {label} lost while {what}: {detail}");
    if dead(fd) {
        Lost(format!("connection to {label} closed"))
    } else {
        Lost(format!(
            "connection to {label} failed while {what}: {detail}"
        ))
    }
}

/// After an error that is not EAGAIN: is the whole connection gone?
fn dead(fd: RawFd) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: non-blocking peek of one byte into a valid buffer.
    let n = unsafe {
        libc::recv(
            fd,
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n == 0 {
        return true;
    }
    if n < 0 {
        let e = std::io::Error::last_os_error();
        trace!("peek on fd {fd}: {e}");
        return e.kind() != std::io::ErrorKind::WouldBlock
            && e.kind() != std::io::ErrorKind::Interrupted;
    }
    false
}

/// Bytes the kernel has received on the socket so far (`TCP_INFO`), whether
/// or not libssh2 has read them; `None` where that cannot be known (then no
/// stall is ever declared).
#[cfg(target_os = "linux")]
fn bytes_received(fd: RawFd) -> Option<u64> {
    // SAFETY: tcp_info is plain old data; getsockopt writes at most `len`
    // bytes into it and reports how many.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // Kernels before 4.1 do not fill in the counter.
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_received) + 8;
    (rc == 0 && len as usize >= needed).then_some(info.tcpi_bytes_received)
}

#[cfg(not(target_os = "linux"))]
fn bytes_received(_fd: RawFd) -> Option<u64> {
    None
}

fn poll_fd(fd: RawFd, events: libc::c_short, timeout_ms: libc::c_int) -> bool {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: polling one valid fd.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    n > 0 && (p.revents & events) != 0
}

/// Writes pending input, applies a pending resize, reads output, and
/// detects the end of one shell. Returns (progress, ended) or an error text.
fn service_shell(sh: &mut ShellChan, buf: &mut [u8]) -> Result<(bool, bool), String> {
    let mut progress = false;
    // Input, in order; the front stays put until written (EAGAIN contract).
    while let Some(front) = sh.input.front_mut() {
        match sh.chan.write(&front.data[front.off..]) {
            Ok(0) => break,
            Ok(n) => {
                progress = true;
                front.off += n;
                if front.off >= front.data.len() {
                    if let Some(d) = front.done.take() {
                        let _ = d.send(Ok(()));
                    }
                    sh.input.pop_front();
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(format!("write failed: {e}")),
        }
    }
    if let Some((size, _)) = &sh.resize {
        match sh
            .chan
            .request_pty_size(u32::from(size.cols), u32::from(size.rows), None, None)
        {
            Ok(()) => {
                if let Some((_, waiters)) = sh.resize.take() {
                    for w in waiters {
                        let _ = w.send(Ok(()));
                    }
                }
                progress = true;
            }
            Err(e) if code(&e) == EAGAIN => {}
            Err(e) => {
                if let Some((_, waiters)) = sh.resize.take() {
                    for w in waiters {
                        let _ = w.send(Err(format!("resize refused: {}", e.message())));
                    }
                }
            }
        }
    }
    // Output, unless tokio is far behind.
    while sh.inflight.load(Ordering::Relaxed) < HIGH_WATER {
        match sh.chan.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                progress = true;
                sh.inflight.fetch_add(n, Ordering::Relaxed);
                if sh
                    .events
                    .send(ShellEvent::Output(buf[..n].to_vec()))
                    .is_err()
                {
                    // Nobody reads any more; drop output until closed.
                    sh.inflight.store(0, Ordering::Relaxed);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
    // End: EOF with nothing left to read, then the close that follows the
    // exit status (bounded wait).
    if sh.inflight.load(Ordering::Relaxed) < HIGH_WATER && sh.chan.eof() {
        let since = *sh.eof_at.get_or_insert_with(Instant::now);
        let status = match sh.chan.wait_close() {
            Ok(()) => Some(exit_of(&sh.chan, true)),
            Err(e) if code(&e) == EAGAIN && since.elapsed() < CLOSE_GRACE => None,
            Err(_) => Some(exit_of(&sh.chan, false)),
        };
        if let Some(status) = status {
            for input in sh.input.drain(..) {
                if let Some(d) = input.done {
                    let _ = d.send(Err("the remote shell has ended".into()));
                }
            }
            let _ = sh.events.send(ShellEvent::Exited(status));
            return Ok((true, true));
        }
    }
    Ok((progress, false))
}

fn reject(req: Req, msg: &str) {
    match req {
        Req::Open(what) => what.fail(OpenError::Lost(msg.to_string())),
        Req::Write { done, .. } | Req::Resize { done, .. } => {
            let _ = done.send(Err(msg.to_string()));
        }
        Req::Close { .. } => {}
    }
}
