//! Writing whole lines into the file: reopening it when rotation or a
//! removal took it away, pausing (and counting) while writes fail, and the
//! `journal_gap` line that says so once they work again.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use super::file::{names, open_file, reserve, Open};
use super::{encode, rfc3339, JournalEvent, JournalLine, JournalOptions};

/// An open journal: its path, its options and the writer's state.
#[derive(Debug)]
pub(super) struct Sink {
    pub(super) path: PathBuf,
    pub(super) opts: JournalOptions,
    pub(super) state: Mutex<State>,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) file: Option<Open>,
    pub(super) failing: Option<Failing>,
    rotate_warned: bool,
    /// The first failure and the first resumption were said on stderr
    /// (later ones are in the journal only, as `journal_gap` events).
    pause_said: bool,
    resume_said: bool,
}

/// Writes are failing (disk full, …).
#[derive(Debug)]
pub(super) struct Failing {
    since: SystemTime,
    pub(super) skipped: u64,
    last_try: Instant,
    error: String,
}

pub(super) fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sink {
    /// A sink appending to `path`, already opened as `file`.
    pub(super) fn new(path: PathBuf, opts: JournalOptions, file: Open) -> Sink {
        Sink {
            path,
            opts,
            state: Mutex::new(State {
                file: Some(file),
                ..State::default()
            }),
        }
    }

    /// Writes the line `render` makes, or counts it when writes are failing
    /// and the retry interval has not passed (nothing is rendered then).
    /// Says the first failure and the first resumption on stderr.
    pub(super) fn append(
        &self,
        render: impl FnOnce() -> std::io::Result<Vec<u8>>,
    ) -> std::io::Result<()> {
        {
            let mut st = lock(&self.state);
            if let Some(f) = &mut st.failing {
                if f.last_try.elapsed() < self.opts.retry {
                    f.skipped += 1;
                    return Ok(());
                }
            }
        }
        let line = render()?;
        let mut st = lock(&self.state);
        match self.write(&mut st, &line) {
            Ok(()) => {
                if let Some(f) = st.failing.take().filter(|_| !st.resume_said) {
                    st.resume_said = true;
                    eprintln!(
                        "execkit: the journal {} is writable again; {} event(s) were not journaled (see its journal_gap event)",
                        self.path.display(),
                        f.skipped
                    );
                }
                Ok(())
            }
            Err(e) => {
                self.failed(&mut st, &e);
                Err(e)
            }
        }
    }

    /// Counts a line that could not be written; the first failure pauses
    /// the journal (said once on stderr).
    fn failed(&self, st: &mut State, e: &std::io::Error) {
        let now = Instant::now();
        match &mut st.failing {
            Some(f) => {
                f.skipped += 1;
                f.last_try = now;
            }
            None => {
                if !st.pause_said {
                    st.pause_said = true;
                    eprintln!(
                    "execkit: warning: cannot write the journal {}: {e}; journaling paused (retried as events come), commands go on",
                        self.path.display()
                    );
                }
                st.failing = Some(Failing {
                    since: SystemTime::now(),
                    skipped: 1,
                    last_try: now,
                    error: e.to_string(),
                });
            }
        }
    }

    /// Writes `line` (after a `journal_gap` line when events were skipped),
    /// reopening and rotating first as needed.
    fn write(&self, st: &mut State, line: &[u8]) -> std::io::Result<()> {
        let current = st.file.as_ref().is_some_and(|o| names(&self.path, o.id));
        if !current {
            // Rotated by another process, removed, or never opened.
            st.file = None;
            st.file = Some(open_file(&self.path)?);
        }
        let mut buf = Vec::with_capacity(line.len() + 160);
        if let Some(f) = &st.failing {
            buf = encode(&serde_json::to_value(JournalLine {
                ts: rfc3339(SystemTime::now()),
                session: None,
                event: JournalEvent::JournalGap {
                    skipped: f.skipped,
                    since: rfc3339(f.since),
                    error: f.error.clone(),
                },
            })?)?;
        }
        buf.extend_from_slice(line);
        let mut size = st.file.as_ref().expect("open").file.metadata()?.len();
        let max = self.opts.max_bytes;
        if max > 0 && size > 0 && size + buf.len() as u64 + 1 > max {
            if let Err(e) = self.rotate(st, buf.len() as u64) {
                if !st.rotate_warned {
                    st.rotate_warned = true;
                    eprintln!(
                        "execkit: warning: cannot rotate the journal {}: {e}; it keeps growing",
                        self.path.display()
                    );
                }
            }
            size = st.file.as_ref().expect("open").file.metadata()?.len();
        }
        let o = st.file.as_mut().expect("open");
        if o.needs_newline {
            buf.insert(0, b'\n');
        }
        reserve(&o.file, size, buf.len())?;
        // One write call per line; O_APPEND makes it atomic against other writers.
        (&o.file).write_all(&buf)?;
        o.needs_newline = false;
        Ok(())
    }
}
