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
        /// Who published it, when it came from another process through
        /// `serve`'s `publish` (set by the server, never by the publisher).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<Origin>,
    },
    /// Raw bytes the command printed (whole lines, colours kept).
    Output {
        /// Session id.
        session: String,
        /// The bytes.
        bytes: Vec<u8>,
        /// Who published it, when it came from another process through
        /// `serve`'s `publish` (set by the server, never by the publisher).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<Origin>,
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
        /// Who published it, when it came from another process through
        /// `serve`'s `publish` (set by the server, never by the publisher).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<Origin>,
    },
    /// Input sent to a running command.
    Input {
        /// Session id.
        session: String,
        /// The text.
        text: String,
        /// Who published it, when it came from another process through
        /// `serve`'s `publish` (set by the server, never by the publisher).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<Origin>,
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

/// The publisher of an event that reached a server through `publish`
/// (another process's session: `execkit exec`, `execkit mcp`, or anything
/// else running as the user). Filled in by the server from the connection,
/// whatever the publisher sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The server's number for the publishing connection (1, 2, …; never
    /// reused while the server runs). Published session ids are
    /// namespaced with it: `pub3/7b7d2a7bb0dc`.
    pub publisher: u64,
    /// The publisher's process id (`SO_PEERCRED`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The publisher's user id (always the server's own: others are refused).
    pub uid: u32,
    /// The publisher's process name (`/proc/PID/comm`) when it connected;
    /// chosen by that process, so informative only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
}

impl Origin {
    /// The namespace of this publisher's session ids (`pub3`).
    pub fn namespace(&self) -> String {
        format!("pub{}", self.publisher)
    }
}

impl ConsoleEvent {
    /// The session the event is about.
    pub fn session(&self) -> &str {
        match self {
            ConsoleEvent::Header { session, .. }
            | ConsoleEvent::Output { session, .. }
            | ConsoleEvent::Footer { session, .. }
            | ConsoleEvent::Input { session, .. } => session,
        }
    }

    /// Who published it, for an event relayed from another process.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            ConsoleEvent::Header { origin, .. }
            | ConsoleEvent::Output { origin, .. }
            | ConsoleEvent::Footer { origin, .. }
            | ConsoleEvent::Input { origin, .. } => origin.as_ref(),
        }
    }

    /// The event as a server relays it from `publisher`: tagged with it
    /// (any origin the publisher claimed is replaced) and its session id
    /// put in the publisher's namespace (`pub3/<id>`), which no session of
    /// the server (hex ids, names without `/`) and no other publisher can
    /// have.
    pub fn published_by(mut self, publisher: &Origin) -> ConsoleEvent {
        let (ConsoleEvent::Header {
            session, origin, ..
        }
        | ConsoleEvent::Output {
            session, origin, ..
        }
        | ConsoleEvent::Footer {
            session, origin, ..
        }
        | ConsoleEvent::Input {
            session, origin, ..
        }) = &mut self;
        *session = format!("{}/{session}", publisher.namespace());
        *origin = Some(publisher.clone());
        self
    }
}

/// Most sessions whose output parser state `Renderer` keeps at once.
const MAX_PANE_FILTERS: usize = 256;

/// Renders console events for a person's terminal (`execkit watch`).
///
/// Headers, footers and input lines are watch's own: every field in them
/// has its control characters escaped ([`crate::term::escape_into`]), so
/// command text, session ids and targets cannot draw over or hide what
/// ran. Output goes through a [`PaneFilter`] per session (colours and
/// same-line cursor movement kept, whatever acts outside the pane dropped)
/// unless `raw_output`. Events of another process (relayed by `publish`)
/// say so, and output of a session other than the last one shown is
/// introduced by a line naming it, so nobody's output reads as another
/// session's.
#[derive(Debug)]
pub struct Renderer {
    color: bool,
    raw_output: bool,
    filters: std::collections::HashMap<String, PaneFilter>,
    /// The session whose output may follow without a line naming it.
    current: Option<String>,
    /// Where the terminal stands: a line of watch's own starts on a fresh
    /// line with attributes reset (output may have left reverse video or
    /// concealed text on).
    state: LineState,
}

use crate::term::{escape_into, LineState, PaneFilter};

impl Renderer {
    /// A renderer; `color` styles watch's own lines, `raw_output` passes
    /// command output through unfiltered.
    pub fn new(color: bool, raw_output: bool) -> Renderer {
        Renderer {
            color,
            raw_output,
            filters: std::collections::HashMap::new(),
            current: None,
            state: LineState::default(),
        }
    }

    /// The bytes that show `event`.
    pub fn render(&mut self, event: &ConsoleEvent) -> Vec<u8> {
        let mut out = Vec::new();
        match event {
            ConsoleEvent::Header {
                session,
                target,
                command,
                origin,
            } => self.header(&mut out, session, target, command, origin.as_ref()),
            ConsoleEvent::Output {
                session,
                bytes,
                origin,
            } => self.output(&mut out, session, bytes, origin.as_ref()),
            ConsoleEvent::Footer {
                session,
                exit_code,
                duration_ms,
                timed_out,
                ..
            } => {
                self.own_line(&mut out);
                let status = match (exit_code, timed_out) {
                    (_, true) => "timed out".to_string(),
                    (Some(c), _) => format!("exit {c}"),
                    (None, _) => "no exit code".to_string(),
                };
                let mut line = String::from("[");
                self.field(&mut line, session);
                line.push_str(&format!(": {status} · {duration_ms} ms]"));
                self.styled_line(&mut out, Style::Dim, &line);
                self.filters.remove(session);
                if self.current.as_deref() == Some(session.as_str()) {
                    self.current = None;
                }
            }
            ConsoleEvent::Input { session, text, .. } => {
                self.own_line(&mut out);
                let mut line = String::from("[");
                self.field(&mut line, session);
                line.push_str(" input] \"");
                self.field(&mut line, text);
                line.push('"');
                self.styled_line(&mut out, Style::Dim, &line);
            }
        }
        out
    }

    /// A command's header: `── session @ target ──` and `$ command`.
    fn header(
        &mut self,
        out: &mut Vec<u8>,
        session: &str,
        target: &str,
        command: &str,
        origin: Option<&Origin>,
    ) {
        self.own_line(out);
        let mut line = String::from("── ");
        self.field(&mut line, session);
        line.push_str(" @ ");
        self.field(&mut line, target);
        line.push_str(" ──");
        self.origin(&mut line, origin);
        self.styled_line(out, Style::Bold, &line);
        let mut line = String::from("$ ");
        self.command(&mut line, command);
        self.styled_line(out, Style::Bold, &line);
        self.current = Some(session.to_string());
        // A new command starts its output in a fresh parser.
        self.filters.remove(session);
    }

    /// A command's output, under a `── session ──` line when another
    /// session spoke last; filtered unless `raw_output`.
    fn output(&mut self, out: &mut Vec<u8>, session: &str, bytes: &[u8], origin: Option<&Origin>) {
        if self.current.as_deref() != Some(session) {
            self.own_line(out);
            let mut line = String::from("── ");
            self.field(&mut line, session);
            line.push_str(" ──");
            self.origin(&mut line, origin);
            self.styled_line(out, Style::Dim, &line);
            self.current = Some(session.to_string());
        }
        if self.raw_output {
            out.extend_from_slice(bytes);
            if let Some(&last) = bytes.last() {
                self.state.dirty = last != b'\n';
            }
            self.state.styled |= bytes.contains(&0x1b);
            return;
        }
        if !self.filters.contains_key(session) && self.filters.len() >= MAX_PANE_FILTERS {
            // Bounded whatever a publisher claims: parsers are dropped, so
            // at worst the rest of a sequence split across events shows as
            // text.
            self.filters.clear();
        }
        self.filters
            .entry(session.to_string())
            .or_default()
            .push(bytes, out, &mut self.state);
    }

    /// A line of watch's own (`[console: …]`), `text` escaped.
    pub fn note(&mut self, text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        self.own_line(&mut out);
        let mut line = String::new();
        self.field(&mut line, text);
        self.styled_line(&mut out, Style::Dim, &line);
        out
    }

    /// Gets the terminal ready for a line of watch's own: at the start of
    /// a fresh line, attributes reset.
    fn own_line(&mut self, out: &mut Vec<u8>) {
        if self.state.dirty {
            out.push(b'\n');
            self.state.dirty = false;
        }
        if self.state.styled {
            out.extend_from_slice(b"\x1b[0m");
            self.state.styled = false;
        }
    }

    fn styled_line(&self, out: &mut Vec<u8>, style: Style, line: &str) {
        let (on, off) = match (self.color, style) {
            (false, _) => ("", ""),
            (true, Style::Bold) => ("\x1b[0;1;36m", "\x1b[0m"),
            (true, Style::Dim) => ("\x1b[0;2m", "\x1b[0m"),
        };
        out.extend_from_slice(on.as_bytes());
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(off.as_bytes());
        out.push(b'\n');
    }

    /// Marks escapes in reverse video when colours are on, so an escaped
    /// `\e` reads differently from a typed backslash and `e`.
    fn marks(&self) -> Option<(&'static str, &'static str)> {
        self.color.then_some(("\x1b[7m", "\x1b[27m"))
    }

    /// A one-line field, every control character escaped.
    fn field(&self, line: &mut String, text: &str) {
        escape_into(text, line, false, self.marks());
    }

    /// Command text: its lines shown as lines, each after the first marked
    /// `> ` (like a shell's continuation prompt), tabs kept (they only move
    /// right); every other control character escaped.
    fn command(&self, line: &mut String, text: &str) {
        let mut lines = text.split('\n');
        escape_into(lines.next().unwrap_or(""), line, true, self.marks());
        for rest in lines {
            line.push_str("\n> ");
            escape_into(rest, line, true, self.marks());
        }
    }

    fn origin(&self, line: &mut String, origin: Option<&Origin>) {
        let Some(o) = origin else { return };
        line.push_str(" mirrored by ");
        match o.pid {
            Some(pid) => line.push_str(&format!("pid {pid}")),
            None => line.push_str("an unknown process"),
        }
        if let Some(comm) = &o.comm {
            line.push_str(" (");
            self.field(line, comm);
            line.push(')');
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Style {
    Bold,
    Dim,
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
                origin: None,
            });
        }
        for i in 0..3 {
            match &*rx.recv().await.unwrap() {
                ConsoleEvent::Input { text, .. } => assert_eq!(text, &i.to_string()),
                e => panic!("{e:?}"),
            }
        }
    }

    fn show(r: &mut Renderer, events: &[ConsoleEvent]) -> String {
        let out: Vec<u8> = events.iter().flat_map(|e| r.render(e)).collect();
        String::from_utf8(out).unwrap()
    }

    fn output(session: &str, bytes: &[u8]) -> ConsoleEvent {
        ConsoleEvent::Output {
            session: session.into(),
            bytes: bytes.to_vec(),
            origin: None,
        }
    }

    #[test]
    fn fields_are_escaped_and_lines_start_fresh() {
        let mut r = Renderer::new(false, false);
        let shown = show(
            &mut r,
            &[
                ConsoleEvent::Header {
                    session: "s\x1b]0;x\x07".into(),
                    target: "local\r".into(),
                    command: "touch e #\x1b[2K\r$ ls\nsecond\tline".into(),
                    origin: None,
                },
                output("s\x1b]0;x\x07", b"partial \x1b[8mhidden"),
                ConsoleEvent::Footer {
                    session: "s\x1b]0;x\x07".into(),
                    exit_code: Some(0),
                    duration_ms: 1,
                    timed_out: false,
                    origin: None,
                },
            ],
        );
        assert_eq!(
            shown,
            "── s\\e]0;x\\a @ local\\r ──\n$ touch e #\\e[2K\\r$ ls\n> second\tline\n\
             partial \x1b[8mhidden\n\x1b[0m[s\\e]0;x\\a: exit 0 · 1 ms]\n"
        );
    }

    #[test]
    fn published_events_are_namespaced_tagged_and_introduced() {
        let publisher = Origin {
            publisher: 3,
            pid: Some(4242),
            uid: 1000,
            comm: Some("exec\x1bc".into()),
        };
        let forged = Origin {
            publisher: 0,
            pid: Some(1),
            uid: 0,
            comm: None,
        };
        let fake = ConsoleEvent::Output {
            session: "abc".into(),
            bytes: b"fake\n".to_vec(),
            origin: Some(forged),
        }
        .published_by(&publisher);
        assert_eq!(fake.session(), "pub3/abc");
        assert_eq!(fake.origin(), Some(&publisher));
        let mut r = Renderer::new(false, false);
        let header = ConsoleEvent::Header {
            session: "abc".into(),
            target: "local".into(),
            command: "make".into(),
            origin: None,
        };
        let shown = show(&mut r, &[header, fake, output("abc", b"real\n")]);
        assert_eq!(
            shown,
            "── abc @ local ──\n$ make\n── pub3/abc ── mirrored by pid 4242 (exec\\ec)\nfake\n── abc ──\nreal\n"
        );
    }

    #[test]
    fn raw_output_passes_bytes_through() {
        let mut r = Renderer::new(false, true);
        assert_eq!(
            show(&mut r, &[output("s", b"\x1b]52;c;eA==\x07\x1b[6n\n")]),
            "── s ──\n\x1b]52;c;eA==\x07\x1b[6n\n"
        );
    }
}
