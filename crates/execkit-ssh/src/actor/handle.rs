//! The tokio side of a connection: the `Conn` handle, the requests it
//! queues for the thread, the state both share, and `Stream`, a streamed
//! command's handle.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use execkit_core::{
    raw::{ExitStatus, ShellEvent},
    Size,
};
use ssh2::Session;
use tokio::sync::{
    mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender},
    oneshot,
};

use super::sys::{Socket, Wake};
use super::{Actor, STREAM_HIGH_WATER};

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

pub(super) type Done = oneshot::Sender<Result<(), String>>;

/// What a streamed command sends back, in order: its stdout, then its end.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    /// Bytes it wrote on stdout.
    Stdout(Vec<u8>),
    /// How it ended, or why its channel failed (the connection's message
    /// when that was lost).
    End(Result<StreamEnd, String>),
}

/// How a streamed command ended.
#[derive(Debug, Clone)]
pub(crate) struct StreamEnd {
    pub status: ExitStatus,
    /// The start of what it wrote on stderr (at most [`STDERR_KEPT`] bytes).
    pub stderr: Vec<u8>,
}

/// How much of a streamed command's stderr is kept (the rest is read and
/// dropped, so it never holds up the channel).
pub(crate) const STDERR_KEPT: usize = 8 * 1024;

pub(crate) enum Req {
    /// A new channel: an interactive shell, a one-shot exec or a stream.
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
    /// End of input for a streamed command, after the writes queued before.
    Eof {
        id: u64,
    },
    Close {
        id: u64,
    },
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
    /// A command without a terminal (binary-clean), or a forwarded
    /// connection, whose input is fed by `Req::Write`/`Req::Eof` and whose
    /// output streams to `events`, at most
    /// [`STREAM_HIGH_WATER`](super::STREAM_HIGH_WATER) bytes unconsumed.
    Stream {
        id: u64,
        start: Start,
        events: UnboundedSender<StreamEvent>,
        inflight: Arc<AtomicUsize>,
        reply: oneshot::Sender<Result<(), OpenError>>,
    },
}

impl What {
    pub(super) fn fail(self, e: OpenError) {
        match self {
            What::Shell { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            What::Exec { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            What::Stream { reply, .. } => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

/// What a stream channel carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Start {
    /// A command (stdout is the stream, stderr is kept apart).
    Command(String),
    /// A TCP connection the server makes to `host:port` (`direct-tcpip`,
    /// as `ssh -W` and ProxyJump use).
    Tcp { host: String, port: u16 },
    /// A connection the server makes to a Unix socket on its side
    /// (`direct-streamlocal`, e.g. a remote Docker engine's socket).
    Unix(String),
}

impl Start {
    /// What the channel reaches, for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Start::Command(c) => format!("command `{c}`"),
            Start::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Start::Tcp { host, port } => format!("{host}:{port}"),
            Start::Unix(path) => format!("unix socket {path}"),
        }
    }
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

    pub(super) fn release(&self) {
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
        socket: Socket,
        keepalive: Duration,
    ) -> std::io::Result<Arc<Conn>> {
        let wake = Arc::new(Wake::new()?);
        let shared = Arc::new(Shared::default());
        let (tx, rx) = std::sync::mpsc::channel();
        session.set_blocking(false);
        let actor = Actor::new(
            session,
            socket,
            keepalive,
            wake.clone(),
            rx,
            shared.clone(),
            label.clone(),
        );
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

/// A streamed command on an open channel (the tokio side of a
/// `What::Stream`); dropping it closes the channel.
#[derive(Debug)]
pub(crate) struct Stream {
    conn: Arc<Conn>,
    id: u64,
    events: UnboundedReceiver<StreamEvent>,
    inflight: Arc<AtomicUsize>,
}

impl Stream {
    /// Starts `command` on a fresh channel of `conn`.
    pub(crate) async fn open(conn: &Arc<Conn>, command: String) -> Result<Stream, OpenError> {
        Stream::open_to(conn, Start::Command(command)).await
    }

    /// Opens a fresh stream channel of `conn` to `start`.
    pub(crate) async fn open_to(conn: &Arc<Conn>, start: Start) -> Result<Stream, OpenError> {
        let (stream, rx) = Stream::request(conn, start)?;
        rx.await
            .unwrap_or_else(|_| Err(OpenError::Lost(conn.lost_message())))?;
        Ok(stream)
    }

    /// [`Stream::open_to`] for threads outside the runtime.
    pub(crate) fn open_blocking(conn: &Arc<Conn>, start: Start) -> Result<Stream, OpenError> {
        let (stream, rx) = Stream::request(conn, start)?;
        rx.blocking_recv()
            .unwrap_or_else(|_| Err(OpenError::Lost(conn.lost_message())))?;
        Ok(stream)
    }

    /// Queues the open; the stream is usable once the reply says so.
    #[allow(clippy::type_complexity)]
    fn request(
        conn: &Arc<Conn>,
        start: Start,
    ) -> Result<(Stream, oneshot::Receiver<Result<(), OpenError>>), OpenError> {
        let (events_tx, events) = unbounded_channel();
        let inflight = Arc::new(AtomicUsize::new(0));
        let id = conn.next_id();
        let (reply, rx) = oneshot::channel();
        conn.send(Req::Open(What::Stream {
            id,
            start,
            events: events_tx,
            inflight: inflight.clone(),
            reply,
        }))
        .map_err(OpenError::Lost)?;
        // Built before the reply: dropped early, it closes the channel.
        Ok((
            Stream {
                conn: conn.clone(),
                id,
                events,
                inflight,
            },
            rx,
        ))
    }

    /// A handle that can write to this stream from another thread.
    pub(crate) fn writer(&self) -> StreamWriter {
        StreamWriter {
            conn: self.conn.clone(),
            id: self.id,
        }
    }

    /// [`Stream::next`] for threads outside the runtime.
    pub(crate) fn next_blocking(&mut self) -> StreamEvent {
        match self.events.blocking_recv() {
            Some(StreamEvent::Stdout(b)) => {
                self.consumed(b.len());
                StreamEvent::Stdout(b)
            }
            Some(end) => end,
            None => StreamEvent::End(Err(self.conn.lost_message())),
        }
    }

    /// `n` bytes of output left the channel's queue: below the high-water
    /// mark again, the thread resumes reading it.
    fn consumed(&self, n: usize) {
        let before = self.inflight.fetch_sub(n, Ordering::Relaxed);
        if before >= STREAM_HIGH_WATER && before - n < STREAM_HIGH_WATER {
            self.conn.wake();
        }
    }

    /// Writes `data` to the command's stdin; returns once the channel took
    /// all of it (the SSH window is the backpressure). An error says the
    /// command or the connection ended first ([`Stream::next`] says how).
    pub(crate) async fn write(&self, data: Vec<u8>) -> Result<(), String> {
        let rx = queue_write(&self.conn, self.id, data)?;
        rx.await.unwrap_or_else(|_| Err(self.conn.lost_message()))
    }

    /// Ends the command's stdin after the writes before.
    pub(crate) fn eof(&self) -> Result<(), String> {
        self.conn.send(Req::Eof { id: self.id })
    }

    /// The next event: stdout in order, then the end (the connection's
    /// loss is an end too). Cancel-safe.
    pub(crate) async fn next(&mut self) -> StreamEvent {
        match self.events.recv().await {
            Some(StreamEvent::Stdout(b)) => {
                self.consumed(b.len());
                StreamEvent::Stdout(b)
            }
            Some(end) => end,
            None => StreamEvent::End(Err(self.conn.lost_message())),
        }
    }

    /// Where the command runs (`host:port`), for messages.
    pub(crate) fn label(&self) -> &str {
        &self.conn.label
    }
}

/// Queues `data` for stream `id`; the receiver answers once the channel
/// took all of it.
fn queue_write(
    conn: &Conn,
    id: u64,
    data: Vec<u8>,
) -> Result<oneshot::Receiver<Result<(), String>>, String> {
    let (done, rx) = oneshot::channel();
    conn.send(Req::Write { id, data, done })?;
    Ok(rx)
}

/// The writing side of a [`Stream`], for another thread.
#[derive(Debug)]
pub(crate) struct StreamWriter {
    conn: Arc<Conn>,
    id: u64,
}

impl StreamWriter {
    /// Writes `data`; returns once the channel took all of it.
    pub(crate) fn write_blocking(&self, data: Vec<u8>) -> Result<(), String> {
        let rx = queue_write(&self.conn, self.id, data)?;
        rx.blocking_recv()
            .unwrap_or_else(|_| Err(self.conn.lost_message()))
    }

    /// Closes the channel (the stream's reader then sees its end).
    pub(crate) fn close(&self) {
        let _ = self.conn.send(Req::Close { id: self.id });
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.conn.send(Req::Close { id: self.id });
    }
}

/// Answers a request the thread will never serve.
pub(super) fn reject(req: Req, msg: &str) {
    match req {
        Req::Open(what) => what.fail(OpenError::Lost(msg.to_string())),
        Req::Write { done, .. } | Req::Resize { done, .. } => {
            let _ = done.send(Err(msg.to_string()));
        }
        Req::Eof { .. } | Req::Close { .. } => {}
    }
}
