//! A session's screen as a person would see it (`execkit attach`): a
//! terminal emulator (`vt100`) fed with every command's raw output, the
//! keys a person typed echoed into it, and what changed on it sent to
//! whoever is attached.

use tokio::sync::{broadcast, mpsc};

/// Rows of the emulated screen.
pub const ROWS: u16 = 24;
/// Columns of the emulated screen.
pub const COLS: u16 = 80;
/// Lines kept above the screen: the emulator's memory is bounded by
/// `ROWS + SCROLLBACK` lines of `COLS` cells.
pub const SCROLLBACK: usize = 1000;
/// Screen updates queued per attached person before it lags (and is sent
/// the whole screen again).
const QUEUE: usize = 256;

/// A view of a session's screen taken by [`Host::attach`](super::Host::attach).
#[derive(Debug)]
#[non_exhaustive]
pub struct Attachment {
    /// The screen as it is now, as bytes that draw it on a cleared
    /// terminal (cursor and colours included).
    pub screen: Vec<u8>,
    /// What changes from then on, as bytes that update the drawn screen;
    /// closed when the session ends. A receiver that lags has missed
    /// updates: attach again for a fresh screen.
    pub updates: broadcast::Receiver<Vec<u8>>,
}

/// The emulator and the people watching it. Both are made when first
/// needed (the first output, the first attach): an idle session holds
/// neither (the emulator's grid alone is ~70 KB, and a server holds
/// thousands of sessions).
pub(super) struct Screen {
    parser: Option<Box<vt100::Parser>>,
    raw: mpsc::UnboundedReceiver<Vec<u8>>,
    viewers: Option<broadcast::Sender<Vec<u8>>>,
    /// The last byte fed ended in `\r` (a `\n` after it is not bare).
    after_cr: bool,
    /// vt100's parser keeps OSC strings whole: bounded before it.
    limit: crate::osc_limit::OscLimit,
}

impl std::fmt::Debug for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Screen").finish_non_exhaustive()
    }
}

/// A blank emulated screen.
fn blank() -> Box<vt100::Parser> {
    Box::new(vt100::Parser::new(ROWS, COLS, SCROLLBACK))
}

impl Screen {
    /// A blank screen and the sender for the session's raw output
    /// ([`Session::tap_raw`](crate::Session::tap_raw)).
    pub(super) fn new() -> (Screen, mpsc::UnboundedSender<Vec<u8>>) {
        let (tx, raw) = mpsc::unbounded_channel();
        (
            Screen {
                parser: None,
                raw,
                viewers: None,
                after_cr: false,
                limit: Default::default(),
            },
            tx,
        )
    }

    /// Feeds what the session printed since the last call.
    pub(super) fn pump(&mut self) {
        let mut chunk = Vec::new();
        while let Ok(b) = self.raw.try_recv() {
            chunk.extend_from_slice(&b);
        }
        if !chunk.is_empty() {
            self.feed(&chunk);
        }
    }

    /// Shows a command as a prompt line would (`$ TEXT`), escaped.
    pub(super) fn command(&mut self, text: &str) {
        let mut line = String::from("$ ");
        line.push_str(&crate::term::escape(text));
        line.push('\n');
        self.feed(line.as_bytes());
    }

    /// Echoes keys a person typed, as a terminal with echo on would (the
    /// session's own terminal has echo off): printable text as is, Enter
    /// as a new line, Backspace erasing a cell; other controls are not
    /// shown.
    pub(super) fn echo(&mut self, keys: &[u8]) {
        let mut out = Vec::with_capacity(keys.len());
        for &b in keys {
            match b {
                b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
                0x7f | 0x08 => out.extend_from_slice(b"\x08 \x08"),
                0x20..=0x7e | 0x80.. => out.push(b),
                _ => {}
            }
        }
        if !out.is_empty() {
            self.after_cr = false;
            self.render(&out);
        }
    }

    /// The session's terminal has no `onlcr` for agents' commands: a bare
    /// `\n` is shown as a new line, as `\r\n`.
    fn feed(&mut self, bytes: &[u8]) {
        let mut kept = Vec::new();
        let bytes = self.limit.filter(bytes, &mut kept);
        let mut out = Vec::with_capacity(bytes.len() + 16);
        for &b in bytes {
            if b == b'\n' && !self.after_cr {
                out.push(b'\r');
            }
            out.push(b);
            self.after_cr = b == b'\r';
        }
        self.render(&out);
    }

    /// The emulator, made on first use.
    fn parser(&mut self) -> &mut vt100::Parser {
        self.parser.get_or_insert_with(blank)
    }

    /// Runs `bytes` through the emulator; what changed goes to viewers.
    fn render(&mut self, bytes: &[u8]) {
        let watched = self.viewers.as_ref().filter(|v| v.receiver_count() > 0);
        let parser = self.parser.get_or_insert_with(blank);
        let Some(viewers) = watched else {
            parser.process(bytes);
            return;
        };
        let before = parser.screen().clone();
        parser.process(bytes);
        let diff = parser.screen().contents_diff(&before);
        if !diff.is_empty() {
            let _ = viewers.send(diff);
        }
    }

    /// The screen now and the updates from here on.
    pub(super) fn attach(&mut self) -> Attachment {
        self.pump();
        let screen = self.parser().screen().contents_formatted();
        let updates = self
            .viewers
            .get_or_insert_with(|| broadcast::channel(QUEUE).0)
            .subscribe();
        Attachment { screen, updates }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_newlines_start_lines_and_updates_follow_the_screen() {
        let (mut s, tx) = Screen::new();
        tx.send(b"one\ntwo\r\n".to_vec()).unwrap();
        s.pump();
        let a = s.attach();
        let mut view = vt100::Parser::new(ROWS, COLS, 0);
        view.process(&a.screen);
        assert_eq!(view.screen().contents(), "one\ntwo");
        let mut rx = a.updates;
        tx.send(b"three".to_vec()).unwrap();
        s.pump();
        s.echo(b"hi\x7f\r");
        while let Ok(d) = rx.try_recv() {
            view.process(&d);
        }
        // (Backspace erases with a blank: the cell holds a space.)
        let shown: Vec<String> = view
            .screen()
            .contents()
            .lines()
            .map(|l| l.trim_end().to_string())
            .collect();
        assert_eq!(shown, ["one", "two", "threeh"]);
        assert_eq!(view.screen().cursor_position(), (3, 0));
    }
}
