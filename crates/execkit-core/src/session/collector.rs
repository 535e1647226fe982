//! Raw bytes of one command to clean, capped text.

use std::path::PathBuf;

use crate::output_cap::OutputCap;
use crate::output_clean::OutputCleaner;

/// Raw bytes → clean, capped text (whole output, plus what arrived since
/// the last read for yielded commands).
#[derive(Debug)]
pub(super) struct Collector {
    cleaner: OutputCleaner,
    cap: OutputCap,
    delta: OutputCap,
    limit: usize,
    text: String,
    /// The end of the last line printed (a prompt waiting for input).
    pub(super) last_line: String,
    /// The shell was replaced before this command ran.
    pub(super) restarted: bool,
    /// Partial output was handed out; the final result carries the rest only.
    pub(super) yielded: bool,
    /// Keep the unread-delta copy (only commands that may yield need it).
    pub(super) track_delta: bool,
}

impl Collector {
    pub(super) fn new(limit: usize, spool: PathBuf) -> Self {
        Collector {
            cleaner: OutputCleaner::default(),
            cap: OutputCap::new(limit, spool),
            delta: OutputCap::memory_only(limit),
            limit,
            text: String::new(),
            last_line: String::new(),
            restarted: false,
            yielded: false,
            track_delta: true,
        }
    }

    /// What arrived since the last call (capped). A final newline is held
    /// back until more output follows or the command ends: it may be the
    /// one the end of the command trims, so the parts a caller reads always
    /// add up to exactly the output a single `run` returns, wherever the
    /// reads fall.
    pub(super) fn take_delta(&mut self) -> String {
        self.yielded = true;
        let fresh = std::mem::replace(&mut self.delta, OutputCap::memory_only(self.limit));
        let mut text = fresh.finish().text;
        if text.ends_with('\n') {
            text.pop();
            self.delta.push("\n");
        }
        text
    }

    pub(super) fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.text.clear();
        self.cleaner.push(bytes, &mut self.text);
        match self.text.rfind('\n') {
            Some(at) => {
                self.last_line.clear();
                self.last_line
                    .push_str(last_chars(&self.text[at + 1..], 200));
            }
            None if self.last_line.len() < 400 => self.last_line.push_str(&self.text),
            None => {}
        }
        self.cap.push(&self.text);
        if self.track_delta {
            self.delta.push(&self.text);
        }
    }

    /// The whole capped output and the unread rest.
    pub(super) fn finish(mut self) -> (crate::output_cap::CappedOutput, String) {
        self.text.clear();
        self.cleaner.finish(&mut self.text);
        self.cap.push(&self.text);
        self.delta.push(&self.text);
        (self.cap.finish(), self.delta.finish().text)
    }
}

pub(crate) fn last_chars(s: &str, n: usize) -> &str {
    let count = s.chars().count();
    if count <= n {
        return s;
    }
    let idx = s.char_indices().nth(count - n).map_or(0, |(i, _)| i);
    &s[idx..]
}
