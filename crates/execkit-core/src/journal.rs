//! The journal: one JSON line per event, appended with `O_APPEND` in a
//! single `write(2)` per line, so concurrent writers (threads or processes)
//! never interleave within a line and a `kill -9` can at worst lose the line
//! being written, never tear an earlier one. Secrets are masked before
//! anything touches disk.
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

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value};

use crate::redact::Redactor;

/// Rotation size when nothing else is configured: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// Files kept when nothing else is configured (`journal.jsonl` + 4 rotated).
pub const DEFAULT_FILES: u32 = 5;
/// How often a failing journal tries again when nothing else is configured.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(1);

/// Environment variable: rotation size in bytes (`K`, `M`, `G` suffixes; `0` never rotates).
pub const ENV_MAX_BYTES: &str = "EXECKIT_JOURNAL_MAX_BYTES";
/// Environment variable: files kept in all, at least 2.
pub const ENV_FILES: &str = "EXECKIT_JOURNAL_FILES";
/// Environment variable: milliseconds between retries after a write failed.
pub const ENV_RETRY_MS: &str = "EXECKIT_JOURNAL_RETRY_MS";

/// Size, rotation and retry settings of a journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalOptions {
    /// Rotate before a line would take the file past this size; 0 never rotates.
    pub max_bytes: u64,
    /// Files kept in all: the live one plus `files - 1` rotated ones (at least 2).
    pub files: u32,
    /// After a failed write, the shortest time before an event tries again.
    pub retry: Duration,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            max_bytes: DEFAULT_MAX_BYTES,
            files: DEFAULT_FILES,
            retry: DEFAULT_RETRY,
        }
    }
}

impl JournalOptions {
    /// The defaults, overridden by `EXECKIT_JOURNAL_MAX_BYTES`,
    /// `EXECKIT_JOURNAL_FILES` and `EXECKIT_JOURNAL_RETRY_MS`; a bad value is
    /// an error naming the variable.
    pub fn from_env() -> Result<JournalOptions, String> {
        let mut o = JournalOptions::default();
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if let Some(v) = var(ENV_MAX_BYTES) {
            o.max_bytes = parse_size(&v).map_err(|e| format!("{ENV_MAX_BYTES}: {e}"))?;
        }
        if let Some(v) = var(ENV_FILES) {
            o.files = parse_files(&v).map_err(|e| format!("{ENV_FILES}: {e}"))?;
        }
        if let Some(v) = var(ENV_RETRY_MS) {
            let ms: u64 = v
                .trim()
                .parse()
                .map_err(|_| format!("{ENV_RETRY_MS}: `{v}` is not a number of milliseconds"))?;
            o.retry = Duration::from_millis(ms);
        }
        Ok(o)
    }
}

/// Parses a file count for rotation: an integer from 2 to 1000.
pub fn parse_files(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (2..=1000).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a file count from 2 to 1000")),
    }
}

/// Parses a size in bytes: `1048576`, `64K`, `64M`, `1G` (also `KiB`,
/// `MiB`, `GiB`, `KB`, …, all binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let bad = || format!("`{s}` is not a size (bytes, or with K, M or G)");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Where journal lines go.
#[derive(Debug)]
pub struct Journal {
    sink: Option<Sink>,
    redactor: Redactor,
}

#[derive(Debug)]
struct Sink {
    path: PathBuf,
    opts: JournalOptions,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    file: Option<Open>,
    failing: Option<Failing>,
    rotate_warned: bool,
    /// The first failure and the first resumption were said on stderr
    /// (later ones are in the journal only, as `journal_gap` events).
    pause_said: bool,
    resume_said: bool,
}

/// The file a writer holds open.
#[derive(Debug)]
struct Open {
    file: File,
    /// (device, inode): whether the path still names this file.
    id: (u64, u64),
    /// The file did not end in `\n` when opened: start with one.
    needs_newline: bool,
}

/// Writes are failing (disk full, …).
#[derive(Debug)]
struct Failing {
    since: SystemTime,
    skipped: u64,
    last_try: Instant,
    error: String,
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
            sink: Some(Sink {
                path,
                opts,
                state: Mutex::new(State {
                    file: Some(file),
                    ..State::default()
                }),
            }),
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

    /// Appends one event: `ts` and `event` first, then `fields`, with every
    /// string value redacted. A failure is said once on stderr; until a
    /// retry succeeds, events are counted instead of written (see the
    /// module docs).
    pub fn append(&self, event: &str, fields: Map<String, Value>) -> std::io::Result<()> {
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        {
            let mut st = lock(&sink.state);
            if let Some(f) = &mut st.failing {
                if f.last_try.elapsed() < sink.opts.retry {
                    f.skipped += 1;
                    return Ok(());
                }
            }
        }
        let line = self.render(event, fields)?;
        let mut st = lock(&sink.state);
        match sink.write(&mut st, &line) {
            Ok(()) => {
                if let Some(f) = st.failing.take().filter(|_| !st.resume_said) {
                    st.resume_said = true;
                    eprintln!(
                        "execkit: the journal {} is writable again; {} event(s) were not journaled (see its journal_gap event)",
                        sink.path.display(),
                        f.skipped
                    );
                }
                Ok(())
            }
            Err(e) => {
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
                                sink.path.display()
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
                Err(e)
            }
        }
    }

    fn render(&self, event: &str, fields: Map<String, Value>) -> std::io::Result<Vec<u8>> {
        let mut line = Map::new();
        line.insert("ts".into(), Value::String(rfc3339(SystemTime::now())));
        line.insert("event".into(), Value::String(event.into()));
        for (k, v) in fields {
            line.insert(k, self.redact_value(v));
        }
        let mut buf = serde_json::to_vec(&Value::Object(line)).map_err(std::io::Error::other)?;
        buf.push(b'\n');
        Ok(buf)
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

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sink {
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
            let mut gap = Map::new();
            gap.insert("ts".into(), rfc3339(SystemTime::now()).into());
            gap.insert("event".into(), "journal_gap".into());
            gap.insert("skipped".into(), f.skipped.into());
            gap.insert("since".into(), rfc3339(f.since).into());
            gap.insert("error".into(), f.error.clone().into());
            buf = serde_json::to_vec(&Value::Object(gap)).map_err(std::io::Error::other)?;
            buf.push(b'\n');
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

    /// Rotates the file this writer holds, unless another writer is doing
    /// it right now or already did.
    fn rotate(&self, st: &mut State, len: u64) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let o = st.file.as_ref().expect("open");
        // SAFETY: flock on an fd we own. The lock goes with the open file
        // description, so it is released when the old file is closed. A
        // writer rotating it holds it for a few renames only.
        if unsafe { libc::flock(o.file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if !names(&self.path, o.id) {
            // Another writer rotated it between our check and the lock.
            st.file = Some(open_file(&self.path)?);
            return Ok(());
        }
        if o.file.metadata()?.len() + len < self.opts.max_bytes {
            // SAFETY: as above.
            unsafe { libc::flock(o.file.as_raw_fd(), libc::LOCK_UN) };
            return Ok(());
        }
        // Shift .1, .2, … up to the first free slot (a crash may have left
        // a gap) or onto the oldest kept one, which is dropped.
        let oldest = self.opts.files - 1;
        let free = (1..oldest)
            .find(|k| std::fs::symlink_metadata(rotated(&self.path, *k)).is_err())
            .unwrap_or(oldest);
        for k in (1..free).rev() {
            match std::fs::rename(rotated(&self.path, k), rotated(&self.path, k + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))?;
        // Dropping the old file releases the lock, after the new one exists.
        st.file = Some(open_file(&self.path)?);
        Ok(())
    }
}

/// `journal.jsonl.K`.
pub fn rotated(path: &Path, k: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{k}"));
    PathBuf::from(s)
}

/// The journal files at `path`, oldest first: the rotated ones
/// (`path.N`, highest N first, regular files only) then `path` itself if it
/// exists. A symbolic link at `path` is followed to find the siblings.
pub fn files_oldest_first(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let path = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(vec![path]);
    };
    let mut numbered: Vec<(u32, PathBuf)> = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for e in entries.flatten() {
                let file = e.file_name();
                let file = file.to_string_lossy();
                let Some(k) = file
                    .strip_prefix(name.as_str())
                    .and_then(|r| r.strip_prefix('.'))
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    numbered.push((k, e.path()));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    numbered.sort_by_key(|n| std::cmp::Reverse(n.0));
    let mut out: Vec<PathBuf> = numbered.into_iter().map(|(_, p)| p).collect();
    if std::fs::symlink_metadata(&path).is_ok() {
        out.push(path);
    }
    Ok(out)
}

/// What kind of file a non-regular file is, for messages.
pub fn kind_of(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

fn not_regular(ft: std::fs::FileType) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("not a regular file ({})", kind_of(ft)),
    )
}

/// The path to open: `path` itself, or where the user's own symbolic link
/// points. Another user's link is not followed; an existing path that is
/// not a regular file is refused.
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(path.to_path_buf()),
        Err(e) => return Err(e),
    };
    let ft = meta.file_type();
    if ft.is_file() {
        return Ok(path.to_path_buf());
    }
    if !ft.is_symlink() {
        return Err(not_regular(ft));
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("a symbolic link owned by uid {}, not followed", meta.uid()),
        ));
    }
    match std::fs::canonicalize(path) {
        Ok(real) => match std::fs::symlink_metadata(&real) {
            Ok(m) if !m.is_file() => Err(not_regular(m.file_type())),
            _ => Ok(real),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A dangling link of ours: create what it points to.
            let target = std::fs::read_link(path)?;
            Ok(match path.parent() {
                Some(dir) if target.is_relative() => dir.join(target),
                _ => target,
            })
        }
        Err(e) => Err(e),
    }
}

/// Opens (creating 0600) `path` for appending, without blocking and
/// without following a link; refuses what is not a regular file.
fn open_file(path: &Path) -> std::io::Result<Open> {
    use std::os::fd::AsRawFd;
    let mut opts = OpenOptions::new();
    opts.read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC);
    let file = match opts.open(path) {
        Ok(f) => f,
        // A FIFO nobody reads (O_NONBLOCK turns the hang into ENXIO), or a
        // link swapped in since `resolve`.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENXIO) | Some(libc::ELOOP)) => {
            return Err(match std::fs::symlink_metadata(path) {
                Ok(m) => not_regular(m.file_type()),
                Err(_) => e,
            })
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "the file belongs to another user (uid {}); the journal is only written into a file of this user",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        // On the descriptor: what is tightened is what was checked.
        file.set_permissions(
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
        )?;
    }
    // SAFETY: fcntl on an fd we own; clears O_NONBLOCK (meaningless on a
    // regular file, but nothing should inherit it).
    unsafe {
        let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
    let mut needs_newline = false;
    if meta.len() > 0 {
        let mut last = [0u8];
        file.read_exact_at(&mut last, meta.len() - 1)?;
        needs_newline = last[0] != b'\n';
    }
    Ok(Open {
        file,
        id: (meta.dev(), meta.ino()),
        needs_newline,
    })
}

/// Whether `path` still names the file `id` (not rotated away, not removed).
fn names(path: &Path, id: (u64, u64)) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == id)
}

/// Reserves `len` bytes past `end` of `file` without changing its size,
/// so a full disk fails the line before any of it is written. Filesystems
/// without `fallocate` just go on to the write.
fn reserve(file: &File, end: u64, len: usize) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(end), Ok(len)) = (libc::off_t::try_from(end), libc::off_t::try_from(len)) else {
            return Ok(());
        };
        // SAFETY: fallocate on an open fd we own; KEEP_SIZE leaves the
        // file's length (and so O_APPEND's offset) as it is.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, end, len) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
                return Err(e);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, end, len);
    Ok(())
}

/// Formats a time as RFC 3339 in UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("execkit-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn events(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    fn seq(n: u64) -> Map<String, Value> {
        let mut f = Map::new();
        f.insert("n".into(), n.into());
        f
    }

    #[test]
    fn formats_known_instants() {
        let at = |s: u64| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(s));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(at(1_795_449_906_000), "2026-11-23T16:05:06.000Z");
    }

    #[test]
    fn parses_sizes_and_counts() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size(" 2 GiB"), Ok(2 << 30));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("12X").is_err() && parse_size("").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
        assert_eq!(parse_files("5"), Ok(5));
        assert!(parse_files("1").is_err() && parse_files("x").is_err());
    }

    #[test]
    fn appends_parseable_redacted_lines() {
        let d = scratch("append");
        let path = d.join("journal.jsonl");
        let j = Journal::open(&path, Redactor::default()).unwrap();
        let mut f = Map::new();
        f.insert(
            "command".into(),
            "curl -H 'Authorization: Bearer abc.def-123' x".into(),
        );
        f.insert("exit_code".into(), 0.into());
        j.append("command", f).unwrap();
        j.append("session_close", Map::new()).unwrap();
        let lines = events(&path);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "command");
        assert!(!lines[0]["command"]
            .as_str()
            .unwrap()
            .contains("abc.def-123"));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_writer_after_a_torn_line_starts_on_a_fresh_line() {
        let d = scratch("torn");
        let path = d.join("journal.jsonl");
        let whole = r#"{"ts":"2026-01-01T00:00:00.000Z","event":"command","command":"a"}"#;
        let torn = r#"{"ts":"2026-01-01T00:00:01.000Z","event":"result","outp"#;
        std::fs::write(&path, format!("{whole}\n{torn}")).unwrap();
        let j = Journal::open(&path, Redactor::default()).unwrap();
        j.append("session_open", seq(1)).unwrap();
        j.append("session_close", seq(2)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], whole);
        assert_eq!(lines[1], torn);
        for (l, n) in [(lines[2], 1), (lines[3], 2)] {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            assert_eq!(v["n"], n);
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn rotates_by_size_keeping_n_files_in_order() {
        let d = scratch("rotate");
        let path = d.join("journal.jsonl");
        let opts = JournalOptions {
            max_bytes: 2000,
            files: 3,
            retry: DEFAULT_RETRY,
        };
        let j = Journal::open_with(&path, Redactor::default(), opts).unwrap();
        for n in 0..200 {
            j.append("tick", seq(n)).unwrap();
        }
        let files = files_oldest_first(&path).unwrap();
        assert_eq!(
            files,
            [rotated(&path, 2), rotated(&path, 1), path.clone()],
            "{files:?}"
        );
        assert!(!rotated(&path, 3).exists());
        let mut all = Vec::new();
        for f in &files {
            let size = std::fs::metadata(f).unwrap().len();
            assert!(size <= 2000, "{} is {size} bytes", f.display());
            all.extend(events(f).into_iter().map(|v| v["n"].as_u64().unwrap()));
        }
        // The newest events, contiguous and in order; older ones rotated away.
        assert_eq!(*all.last().unwrap(), 199);
        assert!(all.windows(2).all(|w| w[1] == w[0] + 1), "{all:?}");
        assert!(all.len() > 40 && all[0] > 0, "{all:?}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn concurrent_writers_rotating_lose_and_duplicate_nothing() {
        // Separate `Journal`s have separate open file descriptions, so they
        // lock and rotate exactly as separate processes do.
        let d = scratch("rotate-concurrent");
        let path = d.join("journal.jsonl");
        let opts = JournalOptions {
            max_bytes: 4096,
            files: 1000,
            retry: DEFAULT_RETRY,
        };
        let writers = 4u64;
        let per = 400u64;
        std::thread::scope(|s| {
            for w in 0..writers {
                let path = &path;
                s.spawn(move || {
                    let j = Journal::open_with(path, Redactor::default(), opts).unwrap();
                    for n in 0..per {
                        let mut f = seq(n);
                        f.insert("w".into(), w.into());
                        j.append("tick", f).unwrap();
                    }
                });
            }
        });
        let files = files_oldest_first(&path).unwrap();
        assert!(files.len() > 10, "{files:?}");
        let mut last = vec![None::<u64>; writers as usize];
        let mut count = 0;
        for f in &files {
            let size = std::fs::metadata(f).unwrap().len();
            assert!(size <= 2 * 4096, "{} is {size} bytes", f.display());
            for v in events(f) {
                let (w, n) = (v["w"].as_u64().unwrap(), v["n"].as_u64().unwrap());
                let prev = last[w as usize].replace(n);
                assert_eq!(prev.map_or(0, |p| p + 1), n, "writer {w} out of order");
                count += 1;
            }
        }
        assert_eq!(count, writers * per);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn failing_writes_are_counted_and_a_gap_event_is_written_on_resume() {
        for (retry, skipped) in [(Duration::ZERO, 2), (Duration::from_secs(3600), 3)] {
            let d = scratch("gap");
            let dir = d.join("logs");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("journal.jsonl");
            let opts = JournalOptions {
                retry,
                ..JournalOptions::default()
            };
            let j = Journal::open_with(&path, Redactor::default(), opts).unwrap();
            j.append("tick", seq(1)).unwrap();
            // The directory goes away and a file takes its place: the path
            // cannot be opened (ENOTDIR) whoever runs this.
            let aside = d.join("aside");
            std::fs::rename(&dir, &aside).unwrap();
            std::fs::write(&dir, b"").unwrap();
            assert!(j.append("tick", seq(2)).is_err());
            assert!(j.stopped());
            let third = j.append("tick", seq(3));
            assert_eq!(third.is_err(), retry.is_zero());
            std::fs::remove_file(&dir).unwrap();
            std::fs::rename(&aside, &dir).unwrap();
            let fourth = j.append("tick", seq(4));
            let v = events(&path);
            if retry.is_zero() {
                fourth.unwrap();
                assert!(!j.stopped());
                assert_eq!(v.len(), 3, "{v:?}");
                assert_eq!(v[0]["n"], 1);
                assert_eq!(v[1]["event"], "journal_gap");
                assert_eq!(v[1]["skipped"], skipped);
                assert!(v[1]["error"].as_str().unwrap().contains("Not a directory"));
                assert_eq!(v[2]["n"], 4);
            } else {
                // Within the retry interval nothing is tried: counted only.
                fourth.unwrap();
                assert!(j.stopped());
                assert_eq!(v.len(), 1, "{v:?}");
                let st = lock(&j.sink.as_ref().unwrap().state);
                assert_eq!(st.failing.as_ref().unwrap().skipped, skipped);
            }
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn refuses_what_is_not_a_regular_file_without_blocking() {
        let d = scratch("kinds");
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for (path, kind) in [
            (fifo.clone(), "a FIFO"),
            (d.clone(), "a directory"),
            (PathBuf::from("/dev/null"), "a character device"),
        ] {
            let e = Journal::open(&path, Redactor::default()).unwrap_err();
            assert_eq!(e.to_string(), format!("not a regular file ({kind})"));
        }
        // Our own link is followed (and rotation renames the real file);
        // a link through to a FIFO is refused.
        let real = d.join("real.jsonl");
        let link = d.join("link.jsonl");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let j = Journal::open(&link, Redactor::default()).unwrap();
        j.append("tick", seq(1)).unwrap();
        assert_eq!(
            j.path(),
            Some(std::fs::canonicalize(&real).unwrap().as_path())
        );
        assert_eq!(events(&real).len(), 1);
        let to_fifo = d.join("to-fifo");
        std::os::unix::fs::symlink(&fifo, &to_fifo).unwrap();
        let e = Journal::open(&to_fifo, Redactor::default()).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file (a FIFO)");
        // Another user's link is not followed (only root can make one here).
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let theirs = d.join("theirs.jsonl");
            std::os::unix::fs::symlink(&real, &theirs).unwrap();
            let c = std::ffi::CString::new(theirs.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: lchown with a valid C string.
            assert_eq!(unsafe { libc::lchown(c.as_ptr(), 4242, 4242) }, 0);
            let e = Journal::open(&theirs, Redactor::default()).unwrap_err();
            assert_eq!(
                e.to_string(),
                "a symbolic link owned by uid 4242, not followed"
            );
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    /// Issue 14 item 3: the journal is only ever the user's own file, 0600:
    /// a loose existing one is tightened, another user's file is refused
    /// however the path reaches it (directly, through the user's own link,
    /// through a directory link), and it is left as it was.
    #[test]
    fn only_the_users_own_file_is_journaled_and_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = scratch("own");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let loose = d.join("loose.jsonl");
        std::fs::write(&loose, b"").unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o666)).unwrap();
        let j = Journal::open(&loose, Redactor::default()).unwrap();
        j.append("tick", seq(1)).unwrap();
        assert_eq!(mode(&loose), 0o600);
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let nobody = |p: &Path| std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
            let theirs_dir = d.join("theirs");
            std::fs::create_dir(&theirs_dir).unwrap();
            let theirs = theirs_dir.join("j.jsonl");
            std::fs::write(&theirs, b"theirs\n").unwrap();
            std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o644)).unwrap();
            nobody(&theirs);
            nobody(&theirs_dir);
            let my_link = d.join("my-link.jsonl");
            std::os::unix::fs::symlink(&theirs, &my_link).unwrap();
            let dir_link = d.join("dir-link");
            std::os::unix::fs::symlink(&theirs_dir, &dir_link).unwrap();
            for path in [theirs.clone(), my_link, dir_link.join("j.jsonl")] {
                let e = Journal::open(&path, Redactor::default()).unwrap_err();
                assert!(
                    e.to_string()
                        .contains("belongs to another user (uid 65534)"),
                    "{}: {e}",
                    path.display()
                );
            }
            assert_eq!(std::fs::read(&theirs).unwrap(), b"theirs\n");
            assert_eq!(mode(&theirs), 0o644);
            // A writer whose file is swapped for another user's between
            // lines does not write into it.
            let mine = d.join("mine.jsonl");
            let j = Journal::open(&mine, Redactor::default()).unwrap();
            j.append("tick", seq(1)).unwrap();
            std::fs::rename(&theirs, &mine).unwrap();
            assert!(j.append("tick", seq(2)).is_err());
            assert_eq!(std::fs::read(&mine).unwrap(), b"theirs\n");
        }
        std::fs::remove_dir_all(d).unwrap();
    }
}
