//! The shared console: one ordered stream of every session's raw terminal
//! bytes, with a header per command, for people to watch live.
//!
//! Sessions publish whole lines only (a partial line is held until its
//! newline, the command's end, or 4 KiB), so output of concurrent sessions
//! interleaves line by line and never mid-line.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Longest partial line held back before it is published anyway.
const MAX_PARTIAL: usize = 4096;

/// One item of the console stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ConsoleEvent {
    /// A command starts.
    Header {
        /// Session id.
        session: String,
        /// Target URL.
        target: String,
        /// The command text.
        command: String,
    },
    /// Raw bytes the command printed (whole lines, colours kept).
    Output {
        /// Session id.
        session: String,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// A command ended.
    Footer {
        /// Session id.
        session: String,
        /// Its exit code, if it finished.
        exit_code: Option<i32>,
        /// Wall time.
        duration_ms: u64,
        /// Whether the hard timeout fired.
        timed_out: bool,
    },
    /// Input sent to a running command.
    Input {
        /// Session id.
        session: String,
        /// The text.
        text: String,
    },
}

/// A broadcast of console events; cloning shares the stream.
#[derive(Debug, Clone)]
pub struct Console {
    tx: broadcast::Sender<Arc<ConsoleEvent>>,
}

impl Default for Console {
    fn default() -> Self {
        Console::new(4096)
    }
}

impl Console {
    /// A console keeping up to `capacity` events for slow watchers (a
    /// watcher that falls further behind skips ahead).
    pub fn new(capacity: usize) -> Self {
        Console {
            tx: broadcast::channel(capacity.max(16)).0,
        }
    }

    /// Publishes an event (dropped when nobody watches).
    pub fn publish(&self, event: ConsoleEvent) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new(event));
        }
    }

    /// Whether anybody is watching.
    pub fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// A new watcher, seeing events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ConsoleEvent>> {
        self.tx.subscribe()
    }
}

/// Holds a session's partial line so only whole lines are published.
#[derive(Debug, Default)]
pub struct LineBuffer {
    partial: Vec<u8>,
}

impl LineBuffer {
    /// Adds bytes; returns what may be published now (up to the last newline).
    pub fn push(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        self.partial.extend_from_slice(bytes);
        let cut = match self.partial.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None if self.partial.len() >= MAX_PARTIAL => self.partial.len(),
            None => return None,
        };
        let rest = self.partial.split_off(cut);
        Some(std::mem::replace(&mut self.partial, rest))
    }

    /// Everything held back (at the end of a command).
    pub fn flush(&mut self) -> Option<Vec<u8>> {
        (!self.partial.is_empty()).then(|| std::mem::take(&mut self.partial))
    }
}

/// Renders an event for a person's terminal (`execkit watch`).
pub fn render(event: &ConsoleEvent, color: bool) -> Vec<u8> {
    let (bold, dim, reset) = if color {
        ("\x1b[1;36m", "\x1b[2m", "\x1b[0m")
    } else {
        ("", "", "")
    };
    match event {
        ConsoleEvent::Header {
            session,
            target,
            command,
        } => format!("{bold}── {session} @ {target} ──{reset}\n{bold}$ {command}{reset}\n")
            .into_bytes(),
        ConsoleEvent::Output { bytes, .. } => bytes.clone(),
        ConsoleEvent::Footer {
            session,
            exit_code,
            duration_ms,
            timed_out,
        } => {
            let status = match (exit_code, timed_out) {
                (_, true) => "timed out".to_string(),
                (Some(c), _) => format!("exit {c}"),
                (None, _) => "no exit code".to_string(),
            };
            format!("{dim}[{session}: {status} · {duration_ms} ms]{reset}\n").into_bytes()
        }
        ConsoleEvent::Input { session, text } => {
            format!("{dim}[{session} input] {text:?}{reset}\n").into_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_whole_lines_only() {
        let mut b = LineBuffer::default();
        assert_eq!(b.push(b"hel"), None);
        assert_eq!(b.push(b"lo\nwor"), Some(b"hello\n".to_vec()));
        assert_eq!(b.push(b"ld\n"), Some(b"world\n".to_vec()));
        assert_eq!(b.push(b"tail"), None);
        assert_eq!(b.flush(), Some(b"tail".to_vec()));
        assert_eq!(b.flush(), None);
        assert_eq!(b.push(&[b'x'; 5000]).map(|v| v.len()), Some(5000));
    }

    #[tokio::test]
    async fn watchers_see_events_in_order() {
        let c = Console::default();
        let mut rx = c.subscribe();
        for i in 0..3 {
            c.publish(ConsoleEvent::Input {
                session: "s".into(),
                text: i.to_string(),
            });
        }
        for i in 0..3 {
            match &*rx.recv().await.unwrap() {
                ConsoleEvent::Input { text, .. } => assert_eq!(text, &i.to_string()),
                e => panic!("{e:?}"),
            }
        }
    }
}
