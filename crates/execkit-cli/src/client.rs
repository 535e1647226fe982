//! A client of `execkit serve`: one request, one response line.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::proto::{Envelope, Request, Response};

/// A connection to a running server.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    next_id: u64,
}

/// Why talking to the server failed.
#[derive(Debug)]
pub enum ClientError {
    /// No server at the socket.
    NotRunning(PathBuf, std::io::Error),
    /// The server answered with an error: which failure (the host's
    /// `HostError::code`: `busy`, `no_such_session`, `invalid_target`, …;
    /// none for a request it could not read) and the message.
    Refused {
        /// `busy`, `no_such_session`, `host_key_mismatch`, ….
        kind: Option<String>,
        /// What went wrong.
        message: String,
    },
    /// The connection broke.
    Io(String),
    /// Something answers at the socket, but not a server of this user in a
    /// directory only this user can change: nothing was sent to it.
    Untrusted(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::NotRunning(p, e) => {
                write!(
                    f,
                    "no execkit serve at {} ({e}); start one with `execkit serve`",
                    p.display()
                )
            }
            ClientError::Refused { message, .. } => write!(f, "{message}"),
            ClientError::Io(e) => write!(f, "connection to execkit serve failed: {e}"),
            ClientError::Untrusted(e) => write!(f, "refusing to talk to {e}"),
        }
    }
}

impl Client {
    /// Connects to the server at `path`.
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| ClientError::NotRunning(path.to_path_buf(), e))?;
        trust(&stream, path).map_err(ClientError::Untrusted)?;
        Ok(Client::from_stream(stream))
    }

    /// A client on a connected stream.
    pub fn from_stream(stream: UnixStream) -> Client {
        let (r, w) = stream.into_split();
        Client {
            reader: BufReader::new(r),
            writer: w,
            next_id: 1,
        }
    }

    /// Sends a request and returns its result.
    pub async fn call(&mut self, request: Request) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let env = Envelope {
            id: Value::from(id),
            request,
        };
        let mut line = serde_json::to_vec(&env).map_err(|e| ClientError::Io(e.to_string()))?;
        line.push(b'\n');
        if let Err(e) = self.writer.write_all(&line).await {
            // The server may have answered and hung up first (a refused
            // peer): its last word is more useful than EPIPE.
            return match self.next_line().await {
                Ok(v) => match serde_json::from_value::<Response>(v) {
                    Ok(r) if !r.ok => Err(refusal(r)),
                    _ => Err(ClientError::Io(e.to_string())),
                },
                Err(_) => Err(ClientError::Io(e.to_string())),
            };
        }
        let resp = self.next_line().await?;
        let resp: Response =
            serde_json::from_value(resp).map_err(|e| ClientError::Io(e.to_string()))?;
        if resp.ok {
            Ok(resp.result.unwrap_or(Value::Null))
        } else {
            Err(refusal(resp))
        }
    }

    /// The connection's two halves, for a client that reads and writes at
    /// once (`execkit attach`).
    pub fn into_parts(
        self,
    ) -> (
        BufReader<tokio::net::unix::OwnedReadHalf>,
        tokio::net::unix::OwnedWriteHalf,
    ) {
        (self.reader, self.writer)
    }

    /// The next JSON line from the server (responses or console events).
    pub async fn next_line(&mut self) -> Result<Value, ClientError> {
        let mut buf = String::new();
        let n = self
            .reader
            .read_line(&mut buf)
            .await
            .map_err(|e| ClientError::Io(e.to_string()))?;
        if n == 0 {
            return Err(ClientError::Io("the server closed the connection".into()));
        }
        serde_json::from_str(&buf)
            .map_err(|e| ClientError::Io(format!("bad line from server: {e}")))
    }
}

/// Checks, before a byte is sent, that the server at `path` is this user's:
/// its process runs as our uid (`SO_PEERCRED`), and the socket's directory
/// is not a symlink, belongs to us (or root) and is writable by nobody
/// else — in a shared directory another user could have put the socket
/// there, or swap it later. Commands, their output and session requests go
/// only to a server that passes; `Err` says which check failed.
pub fn trust(stream: &UnixStream, path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let me = crate::proto::nix_uid();
    let shown = path.display();
    let peer = stream
        .peer_cred()
        .map_err(|e| format!("the server at {shown}: cannot tell who runs it ({e})"))?;
    if peer.uid() != me {
        return Err(format!(
            "the server at {shown}: it runs as uid {}, not as this user (uid {me})",
            peer.uid()
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("the server at {shown}: its directory: {e}"))?;
    if meta.file_type().is_symlink() {
        return Err(format!(
            "the server at {shown}: its directory {} is a symlink",
            dir.display()
        ));
    }
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "the server at {shown}: its directory {} belongs to uid {}",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "the server at {shown}: its directory {} is writable by others (mode {:o})",
            dir.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Mirrors this process's console to a running `execkit serve`, so
/// `execkit watch` shows what `exec` and `mcp` run too. Best effort: no
/// server, no mirror; a slow server skips events (the console is a
/// broadcast with a bounded backlog). It never delays a command: it
/// connects in the background while the command runs, and at the end it
/// does not wait for a server that is stopped (`SIGSTOP`: the kernel still
/// accepts the connection, but nobody answers or reads).
#[derive(Debug)]
pub struct ConsoleMirror {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// How long a server has, from the start, to accept the mirror.
const MIRROR_CONNECT: std::time::Duration = std::time::Duration::from_secs(1);

impl ConsoleMirror {
    /// Starts mirroring `console` to the server at `socket`, if one
    /// answers; returns at once (the connection is made by a task).
    pub fn start(console: &execkit_core::console::Console, socket: &Path) -> ConsoleMirror {
        // Subscribed now, so what runs while the server answers is queued.
        let rx = console.subscribe();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(mirror(socket.to_path_buf(), rx, stopped));
        ConsoleMirror { stop, task }
    }

    /// Sends what is still queued (at most `grace`, and nothing to a
    /// stopped server), then hangs up.
    pub async fn finish(self, grace: std::time::Duration) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// The mirror's task: connect, ask to publish, forward events; once told
/// to stop, forward what is queued without waiting on a stopped server.
async fn mirror(
    socket: PathBuf,
    rx: tokio::sync::broadcast::Receiver<std::sync::Arc<execkit_core::console::ConsoleEvent>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    if let Some((client, peer, draining)) = publish_to(&socket, &mut stopped).await {
        forward(client, rx, stopped, peer, draining).await;
    }
}

/// Connects to the server at `socket` (verified, [`trust`]) and asks to
/// publish: the client, the server's pid, and whether the run ended
/// meanwhile. `None` when there is nobody to publish to.
async fn publish_to(
    socket: &Path,
    stopped: &mut tokio::sync::oneshot::Receiver<()>,
) -> Option<(Client, Option<i32>, bool)> {
    let deadline = tokio::time::Instant::now() + MIRROR_CONNECT;
    // A Unix socket connects at once unless the server's backlog is full;
    // a run that ends first does not wait for it.
    let stream = tokio::select! {
        r = tokio::time::timeout_at(deadline, UnixStream::connect(socket)) => match r {
            Ok(Ok(stream)) => stream,
            _ => return None,
        },
        _ = &mut *stopped => return None,
    };
    if let Err(e) = trust(&stream, socket) {
        tracing::debug!("console mirror skipped: {e}");
        return None;
    }
    let peer = stream.peer_cred().ok().and_then(|c| c.pid());
    let mut client = Client::from_stream(stream);
    let mut draining = false;
    {
        let publish = tokio::time::timeout_at(deadline, client.call(Request::Publish));
        tokio::pin!(publish);
        loop {
            tokio::select! {
                r = &mut publish => match r {
                    Ok(Ok(_)) => break,
                    _ => return None,
                },
                _ = &mut *stopped, if !draining => {
                    // The run is over: a stopped server is not waited for.
                    draining = true;
                    if process_stopped(peer) {
                        return None;
                    }
                }
            }
        }
    }
    Some((client, peer, draining))
}

/// Forwards console events to the server; once the run is over
/// (`draining`), only what is queued, never waiting on a stopped server.
async fn forward(
    mut client: Client,
    mut rx: tokio::sync::broadcast::Receiver<std::sync::Arc<execkit_core::console::ConsoleEvent>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    peer: Option<i32>,
    mut draining: bool,
) {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    loop {
        let ev = if draining {
            match rx.try_recv() {
                Ok(ev) => ev,
                Err(TryRecvError::Lagged(_)) => continue,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                r = rx.recv() => match r {
                    Ok(ev) => ev,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                },
                _ = &mut stopped => { draining = true; continue }
            }
        };
        let mut line = serde_json::to_vec(&*ev).unwrap_or_default();
        line.push(b'\n');
        let write = client.writer.write_all(&line);
        tokio::pin!(write);
        // A write blocks when the server does not read (its socket buffer
        // is full); the end of the run must not wait behind it.
        while !draining {
            tokio::select! {
                r = &mut write => {
                    if r.is_err() {
                        return;
                    }
                    break;
                }
                _ = &mut stopped => draining = true,
            }
        }
        if draining {
            // A write that cannot finish at once while the run is over:
            // give up if nobody will ever read it.
            let done = tokio::select! {
                biased;
                r = &mut write => Some(r),
                _ = std::future::ready(()) => None,
            };
            match done {
                Some(Ok(())) => continue,
                Some(Err(_)) => return,
                None if process_stopped(peer) => return,
                None => {}
            }
            if write.await.is_err() {
                return;
            }
        }
    }
}

/// Whether process `pid` is stopped (state `T` or `t` in `/proc/PID/stat`).
fn process_stopped(pid: Option<i32>) -> bool {
    let Some(pid) = pid else { return false };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `PID (COMM) STATE …`: COMM may hold anything, so split at its last `)`.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state == "T" || state == "t")
}

/// The error of a refused response, with its kind when the server gave one.
fn refusal(r: Response) -> ClientError {
    ClientError::Refused {
        kind: r.kind,
        message: r.error.unwrap_or_else(|| "unknown error".into()),
    }
}
