//! MCP's stdio transport for `execkit mcp`: one JSON-RPC message per line
//! each way, like rmcp's own, except that every request gets an answer.
//! rmcp ignores a line that is not JSON, so a client that sent one waits
//! for ever; JSON-RPC 2.0 says to answer it with a parse error (-32700,
//! `id` null). A JSON line that is not a valid message gets an invalid
//! request error (-32600, with its `id` when it has a usable one); a
//! malformed notification (a `method` and no `id`) is dropped, because a
//! notification is never answered.

use std::sync::Arc;

use rmcp::model::{ErrorData, JsonRpcMessage, RequestId};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::RoleServer;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

/// Longest line read (as rmcp's default); a longer one is refused whole.
const MAX_LINE: usize = 16 * 1024 * 1024;

/// The transport over any reader and writer (stdin and stdout in `mcp`).
pub struct LineTransport<R, W> {
    input: BufReader<R>,
    /// The line read so far; kept across cancelled `receive` calls.
    line: Vec<u8>,
    /// Dropping the rest of an oversized line.
    discarding: bool,
    output: Arc<Mutex<W>>,
}

/// What one bounded line read found.
enum Read {
    Line,
    Oversized,
    Eof,
}

impl<R, W> LineTransport<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    pub fn new(input: R, output: W) -> Self {
        LineTransport {
            input: BufReader::new(input),
            line: Vec::new(),
            discarding: false,
            output: Arc::new(Mutex::new(output)),
        }
    }

    /// Reads one line into `self.line` (newline kept), never holding more
    /// than [`MAX_LINE`] bytes. Cancel-safe: nothing is consumed across an
    /// await, and a partial line stays in `self.line`.
    async fn read_line(&mut self) -> Read {
        loop {
            let (take, done) = {
                let buf = match self.input.fill_buf().await {
                    Ok(b) => b,
                    Err(_) => return Read::Eof,
                };
                if buf.is_empty() {
                    // A last line without its newline still counts.
                    return if self.line.is_empty() || self.discarding {
                        Read::Eof
                    } else {
                        Read::Line
                    };
                }
                let newline = buf.iter().position(|&b| b == b'\n');
                let take = newline.map_or(buf.len(), |i| i + 1);
                if !self.discarding {
                    if self.line.len() + take > MAX_LINE {
                        self.line.clear();
                        self.discarding = true;
                    } else {
                        self.line.extend_from_slice(&buf[..take]);
                    }
                }
                (take, newline.is_some())
            };
            self.input.consume(take);
            if done {
                if self.discarding {
                    self.discarding = false;
                    return Read::Oversized;
                }
                return Read::Line;
            }
        }
    }

    /// Writes one message as a line.
    fn write(
        &self,
        message: &TxJsonRpcMessage<RoleServer>,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send + 'static {
        let line = serde_json::to_vec(message).map(|mut l| {
            l.push(b'\n');
            l
        });
        let output = self.output.clone();
        async move {
            let line = line.map_err(std::io::Error::other)?;
            let mut out = output.lock().await;
            out.write_all(&line).await?;
            out.flush().await
        }
    }
}

/// What to do with a line that is not a message.
fn refusal(line: &[u8], e: &serde_json::Error) -> Option<TxJsonRpcMessage<RoleServer>> {
    // Not JSON at all, or JSON serde_json cannot hold (`1e999`, which an
    // untagged message type reports as a data error).
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(not_json) => {
            return Some(JsonRpcMessage::error(
                ErrorData::parse_error(format!("parse error: {not_json}"), None),
                None,
            ))
        }
    };
    let id = value.get("id");
    if id.is_none() && value.get("method").is_some() {
        return None; // a notification: never answered
    }
    let id = id.and_then(|id| serde_json::from_value::<RequestId>(id.clone()).ok());
    Some(JsonRpcMessage::error(
        ErrorData::invalid_request(format!("invalid request: {e}"), None),
        id,
    ))
}

impl<R, W> Transport<RoleServer> for LineTransport<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.write(&item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            let reply = match self.read_line().await {
                Read::Eof => return None,
                Read::Oversized => JsonRpcMessage::error(
                    ErrorData::invalid_request(
                        format!("message longer than {MAX_LINE} bytes"),
                        None,
                    ),
                    None,
                ),
                Read::Line => {
                    let line = std::mem::take(&mut self.line);
                    let mut text = line.as_slice();
                    text = text.strip_suffix(b"\n").unwrap_or(text);
                    text = text.strip_suffix(b"\r").unwrap_or(text);
                    text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
                    if text.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match serde_json::from_slice::<RxJsonRpcMessage<RoleServer>>(text) {
                        Ok(message) => return Some(message),
                        Err(e) => match refusal(text, &e) {
                            Some(reply) => reply,
                            None => continue,
                        },
                    }
                }
            };
            if self.write(&reply).await.is_err() {
                return None;
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.output.lock().await.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` and returns the lines written back until the input ends.
    async fn replies(input: &'static [u8]) -> (Vec<Value>, usize) {
        let (out_w, mut out_r) = tokio::io::duplex(1 << 16);
        let mut t = LineTransport::new(input, out_w);
        let mut messages = 0;
        while t.receive().await.is_some() {
            messages += 1;
        }
        drop(t);
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut out_r, &mut text)
            .await
            .unwrap();
        let lines = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines, messages)
    }

    #[tokio::test]
    async fn every_bad_request_is_answered_and_good_ones_pass() {
        let (lines, messages) = replies(
            b"{not json\n\n{\"jsonrpc\":\"2.0\",\"id\":7,\"nope\":1}\n\
              {\"jsonrpc\":\"2.0\",\"method\":\"notifications/bogus\",\"params\":5}\n\
              {\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\",\"params\":{\"x\":1e999}}\n\
              {\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n{\"trunc",
        )
        .await;
        assert_eq!(messages, 1, "{lines:?}");
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[0]["error"]["code"], -32700);
        assert!(lines[0]["id"].is_null(), "{lines:?}");
        assert_eq!(lines[1]["error"]["code"], -32600);
        assert_eq!(lines[1]["id"], 7);
        assert_eq!(lines[2]["error"]["code"], -32700);
        assert_eq!(lines[3]["error"]["code"], -32700);
    }
}
