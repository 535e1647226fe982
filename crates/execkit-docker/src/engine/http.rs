//! Hand-written HTTP to the engine: the exec's terminal stream and the
//! event stream.
//!
//! Why not bollard's `start_exec`: its TTY attach decoder treats a chunk
//! whose first byte is 0x00–0x02 as the header of a multiplexed frame
//! (stdin/stdout/stderr), so such output is corrupted or stalls. A TTY exec
//! stream is plain bytes both ways; we upgrade the connection ourselves
//! (`POST /exec/ID/start`, `Connection: Upgrade`, `Upgrade: tcp`) and then
//! read and write it as a byte stream.

use std::io;
use std::time::Duration;

use execkit_core::{ErrorKind, TransportError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{conflict_kind, io_kind, why_after_at, Engine};
use crate::endpoint::EngineStream;

/// Largest HTTP response head we accept before the raw stream starts.
const MAX_HEAD: usize = 64 * 1024;

/// Boxed stream halves of an upgraded exec connection.
pub(crate) type ReadHalf = tokio::io::ReadHalf<Box<dyn EngineStream>>;
/// The writing half.
pub(crate) type WriteHalf = tokio::io::WriteHalf<Box<dyn EngineStream>>;

/// A started exec's terminal: bytes the engine sent along with the
/// response head, then the stream halves.
pub(crate) struct Attached {
    pub initial: Vec<u8>,
    pub read: ReadHalf,
    pub write: WriteHalf,
}

impl Engine {
    /// Starts an exec and takes over its connection as a raw byte stream.
    pub async fn start_raw(&self, exec_id: &str, tty: bool) -> Result<Attached, TransportError> {
        let body = format!("{{\"Detach\":false,\"Tty\":{tty}}}");
        let request = format!(
            "POST /{}/exec/{exec_id}/start HTTP/1.1\r\nHost: {}\r\nUser-Agent: execkit\r\n\
             Content-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.api,
            self.host(),
            body.len()
        );
        let (mut stream, head, rest) = self.exchange(&request, "reading from").await?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if status == 101 || status == 200 {
            let (read, write) = tokio::io::split(stream);
            return Ok(Attached {
                initial: rest,
                read,
                write,
            });
        }
        // An error: the JSON body says why.
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0)
            .min(MAX_HEAD);
        let mut body = rest;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = [0u8; 4096];
            while body.len() < len {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => body.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        let reason = format!("starting the exec: the engine answered {status}: {message}");
        Err(match status {
            // The exec or its container is gone.
            404 => TransportError::unreachable(&self.target, ErrorKind::NotFound, reason),
            // The container stopped or was paused since the exec was made.
            409 => TransportError::unreachable(&self.target, conflict_kind(&message), reason),
            _ => self.spawn_err(&reason),
        })
    }

    /// Waits for the first unpause, die or destroy event of the container
    /// since `since` (Unix seconds), on the engine's event stream.
    pub(super) async fn next_event(
        &self,
        container_id: &str,
        since: u64,
    ) -> Result<(), TransportError> {
        // filters={"container":["ID"],"event":["unpause","die","destroy"]}
        let filters = format!(
            "%7B%22container%22%3A%5B%22{container_id}%22%5D%2C%22event%22%3A%5B%22unpause%22%2C%22die%22%2C%22destroy%22%5D%7D"
        );
        let request = format!(
            "GET /{}/events?since={since}&filters={filters} HTTP/1.1\r\nHost: {}\r\nUser-Agent: execkit\r\n\r\n",
            self.api,
            self.host()
        );
        let (mut stream, head, rest) = self.exchange(&request, "reading events from").await?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Err(self.spawn_err(&format!(
                "watching container events: the engine answered {}",
                head.lines().next().unwrap_or("")
            )));
        }
        // Any body after the response head is one of the filtered events.
        if !rest.is_empty() {
            return Ok(());
        }
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf).await {
            Ok(0) => Err(self.io_err(
                "reading events from",
                io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"),
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(self.io_err("reading from", e)),
        }
    }

    /// The `Host` header for requests written by hand.
    fn host(&self) -> &str {
        self.dialer.http_host()
    }

    fn io_err(&self, what: &str, e: io::Error) -> TransportError {
        let (kind, why) = match self.dialer.explain(&e) {
            Some((kind, why)) => (kind, why_after_at(&why)),
            None => (io_kind(&e), format!(": {e}")),
        };
        TransportError::unreachable(
            &self.target,
            kind,
            format!("{what} the Docker engine at {}{why}", self.at()),
        )
        .with_source(e)
    }

    /// Sends one hand-written HTTP/1.1 request on a fresh connection and
    /// reads the response head: returns the connection, the head and the
    /// bytes that came after it. `eof_what` names a premature end.
    pub(super) async fn exchange(
        &self,
        request: &str,
        eof_what: &str,
    ) -> Result<(Box<dyn EngineStream>, String, Vec<u8>), TransportError> {
        let mut stream = self
            .dialer
            .open()
            .await
            .map_err(|e| self.io_err("cannot connect to", e))?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| self.io_err("writing to", e))?;
        stream
            .flush()
            .await
            .map_err(|e| self.io_err("writing to", e))?;
        let mut head = Vec::with_capacity(1024);
        let end = loop {
            if let Some(i) = find(&head, b"\r\n\r\n") {
                break i + 4;
            }
            if head.len() > MAX_HEAD {
                return Err(self.spawn_err("the engine sent an oversized response head"));
            }
            let mut buf = [0u8; 4096];
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| self.io_err("reading from", e))?;
            if n == 0 {
                return Err(self.io_err(
                    eof_what,
                    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"),
                ));
            }
            head.extend_from_slice(&buf[..n]);
        };
        let rest = head.split_off(end);
        Ok((stream, String::from_utf8_lossy(&head).into_owned(), rest))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
