//! The tokio side of a connection: the `Conn` handle, the requests it
//! queues for the thread, and the state both share.

use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};

use execkit_core::{
    raw::{ExitStatus, ShellEvent},
    Size,
};
use ssh2::Session;
use tokio::sync::{mpsc::UnboundedSender, oneshot};

use super::sys::Wake;
use super::Actor;

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
    pub(super) fn fail(self, e: OpenError) {
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
        stream: TcpStream,
    ) -> std::io::Result<Arc<Conn>> {
        let wake = Arc::new(Wake::new()?);
        let shared = Arc::new(Shared::default());
        let (tx, rx) = std::sync::mpsc::channel();
        session.set_blocking(false);
        let actor = Actor::new(
            session,
            stream,
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

/// Answers a request the thread will never serve.
pub(super) fn reject(req: Req, msg: &str) {
    match req {
        Req::Open(what) => what.fail(OpenError::Lost(msg.to_string())),
        Req::Write { done, .. } | Req::Resize { done, .. } => {
            let _ = done.send(Err(msg.to_string()));
        }
        Req::Close { .. } => {}
    }
}
