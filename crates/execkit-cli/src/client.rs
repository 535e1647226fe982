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
