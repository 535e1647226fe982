//! The journal: one JSON line per event, appended with `O_APPEND` in a
//! single `write(2)` per line, so concurrent writers (threads or processes)
//! never interleave within a line and a `kill -9` can at worst lose the line
//! being written, never tear an earlier one. Secrets are masked before
//! anything touches disk.
//!
//! **What a line says** is one [`JournalEvent`] in a [`JournalLine`] (its
//! time and session): sessions record those, and `execkit journal` reads
//! them back (module `event`).
//!
//! **Only regular files.** The path must be a regular file (or not exist
//! yet): a FIFO, a device or a directory is refused when the journal is
//! opened (the open itself is non-blocking, so a FIFO cannot hang it), and
//! a symbolic link is followed only when it belongs to the user.
//!
//! **Only the user's own file, private.** The file is opened with
//! `O_NOFOLLOW` and checked on the descriptor: one that belongs to another
//! user is refused (however the path reached it: a link of the user's, a
//! directory swapped in), so nobody else is handed the user's commands; an
//! existing file that others may read or write is made 0600 (`fchmod`).
//! Files created by rotation go through the same open.
//!
//! **Torn lines.** A writer that finds the file not ending in `\n` (a
//! crash mid-write) starts with a newline, so its first line is never glued
//! onto the torn one.
//!
//! **Rotation.** When a line would take the file past
//! [`JournalOptions::max_bytes`] (default 64 MiB), the file is rotated:
//! `journal.jsonl.3` → `.4`, …, `journal.jsonl` → `.1`, and a fresh
//! `journal.jsonl` is started; [`JournalOptions::files`] files are kept in
//! all (default 5). Renames are atomic, so a crash at any point loses no
//! line (at worst one numbered slot is empty). Several processes may append
//! to one journal: the rotating one holds an exclusive `flock` on the file
//! being rotated and re-checks, under it, that the path still names that
//! file — so two processes never rotate the same file twice — and every
//! writer reopens the path when it no longer names the file it holds (a
//! writer that wanted to rotate too waits for the lock, a few renames, then
//! finds the fresh file).
//!
//! **A full disk.** The space for each line is reserved first (`fallocate`
//! past the end, size unchanged), so on `ENOSPC` nothing is written rather
//! than half a line. The first failure is said once on stderr; later events
//! are counted, and at most once per [`JournalOptions::retry`] (default 1 s)
//! an event tries again. When one gets through, a `journal_gap` event with
//! the number of events that were not journaled (`skipped`), when the gap
//! began (`since`) and why (`error`) is written before it, and one line on
//! stderr says journaling resumed (the first pause and the first resumption
//! only: a disk on the edge would otherwise print a pair per event; every
//! gap is in the journal). Commands and their results are never affected.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::Value;

use crate::redact::Redactor;

mod event;
mod file;
mod options;
mod rotate;
mod sink;

pub use event::{rfc3339, JournalEvent, JournalLine, ResultEvent, SessionRef};
pub use file::kind_of;
pub use options::{
    parse_files, parse_size, JournalOptions, DEFAULT_FILES, DEFAULT_MAX_BYTES, DEFAULT_RETRY,
    ENV_FILES, ENV_MAX_BYTES, ENV_RETRY_MS,
};
pub use rotate::{files_oldest_first, rotated};

use file::{open_file, resolve};
use sink::{lock, Sink};

/// Where journal lines go.
#[derive(Debug)]
pub struct Journal {
    sink: Option<Sink>,
    redactor: Redactor,
}

impl Journal {
    /// A journal appending to `path` (created 0600, parents created), with
    /// the default [`JournalOptions`].
    pub fn open(path: &Path, redactor: Redactor) -> std::io::Result<Journal> {
        Journal::open_with(path, redactor, JournalOptions::default())
    }

    /// A journal appending to `path` with `opts`. Refuses a path that is
    /// not a regular file (FIFO, device, directory), a symbolic link that
    /// belongs to another user, and a file that belongs to another user,
    /// without blocking on any; an existing file that others may read or
    /// write is made 0600.
    pub fn open_with(
        path: &Path,
        redactor: Redactor,
        opts: JournalOptions,
    ) -> std::io::Result<Journal> {
        let path = resolve(path)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_file(&path)?;
        let opts = JournalOptions {
            files: opts.files.max(2),
            ..opts
        };
        Ok(Journal {
            sink: Some(Sink::new(path, opts, file)),
            redactor,
        })
    }

    /// A journal that records nothing (`--no-journal`).
    pub fn disabled() -> Journal {
        Journal::disabled_with(Redactor::default())
    }

    /// A journal that records nothing, keeping `redactor` for the console.
    pub fn disabled_with(redactor: Redactor) -> Journal {
        Journal {
            sink: None,
            redactor,
        }
    }

    /// The default path: `${XDG_STATE_HOME:-~/.local/state}/execkit/journal.jsonl`.
    pub fn default_path() -> PathBuf {
        crate::paths::state_dir().join("journal.jsonl")
    }

    /// Where lines go, if anywhere (a symbolic link already resolved).
    pub fn path(&self) -> Option<&Path> {
        self.sink.as_ref().map(|s| s.path.as_path())
    }

    /// The options in force, if journaling.
    pub fn options(&self) -> Option<JournalOptions> {
        self.sink.as_ref().map(|s| s.opts)
    }

    /// The redactor applied to every string field.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Whether writes are failing (events are being counted, not written).
    pub fn stopped(&self) -> bool {
        self.sink
            .as_ref()
            .is_some_and(|s| lock(&s.state).failing.is_some())
    }

    /// Appends one event about `session` with the time it is written,
    /// every string value masked except `ts` and `event`. A failure is
    /// said once on stderr; until a retry succeeds, events are counted
    /// instead of written (see the module docs).
    pub fn append(&self, session: SessionRef, event: JournalEvent) -> std::io::Result<()> {
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        sink.append(|| {
            self.render(&JournalLine {
                ts: rfc3339(SystemTime::now()),
                session: Some(session),
                event,
            })
        })
    }

    /// The line as written: `line` as JSON (keys in alphabetical order),
    /// masked, with its newline.
    fn render(&self, line: &JournalLine) -> std::io::Result<Vec<u8>> {
        let mut v = serde_json::to_value(line).map_err(std::io::Error::other)?;
        if let Value::Object(fields) = &mut v {
            for (k, v) in fields.iter_mut() {
                if k != "ts" && k != "event" {
                    *v = self.redact_value(std::mem::take(v));
                }
            }
        }
        encode(&v)
    }

    fn redact_value(&self, v: Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.redactor.redact(&s).into_owned()),
            Value::Array(a) => Value::Array(a.into_iter().map(|v| self.redact_value(v)).collect()),
            Value::Object(o) => Value::Object(
                o.into_iter()
                    .map(|(k, v)| (k, self.redact_value(v)))
                    .collect(),
            ),
            other => other,
        }
    }
}

/// A line's bytes: `v` as compact JSON and a newline.
fn encode(v: &Value) -> std::io::Result<Vec<u8>> {
    let mut buf = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    buf.push(b'\n');
    Ok(buf)
}

#[cfg(test)]
mod tests;
