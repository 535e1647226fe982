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
    /// The server answered with an error.
    Refused(String),
    /// The connection broke.
    Io(String),
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
            ClientError::Refused(e) => write!(f, "{e}"),
            ClientError::Io(e) => write!(f, "connection to execkit serve failed: {e}"),
        }
    }
}

impl Client {
    /// Connects to the server at `path`.
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| ClientError::NotRunning(path.to_path_buf(), e))?;
        let (r, w) = stream.into_split();
        Ok(Client {
            reader: BufReader::new(r),
            writer: w,
            next_id: 1,
        })
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
                    Ok(r) if !r.ok => Err(ClientError::Refused(r.error.unwrap_or_default())),
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
            Err(ClientError::Refused(
                resp.error.unwrap_or_else(|| "unknown error".into()),
            ))
        }
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

/// Mirrors this process's console to a running `execkit serve`, so
/// `execkit watch` shows what `exec` and `mcp` run too. Best effort: no
/// server, no mirror; a slow server skips events (the console is a
/// broadcast with a bounded backlog), it never slows a command down.
#[derive(Debug)]
pub struct ConsoleMirror {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ConsoleMirror {
    /// Starts mirroring `console` to the server at `socket`, if one answers.
    pub async fn start(
        console: &execkit_core::console::Console,
        socket: &Path,
    ) -> Option<ConsoleMirror> {
        // A server that does not answer within a second is not waited for.
        let client = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            let mut client = Client::connect(socket).await.ok()?;
            client.call(Request::Publish).await.ok()?;
            Some(client)
        });
        let mut client = client.await.ok().flatten()?;
        let mut rx = console.subscribe();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            use tokio::sync::broadcast::error::{RecvError, TryRecvError};
            let mut draining = false;
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
                if client.writer.write_all(&line).await.is_err() {
                    return;
                }
            }
        });
        Some(ConsoleMirror { stop, task })
    }

    /// Sends what is still queued (at most `grace`), then hangs up.
    pub async fn finish(self, grace: std::time::Duration) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(grace, self.task).await;
    }
}
