//! Head + tail output cap with a spool file for the full text.
//!
//! Memory stays bounded whatever the command prints: at most `limit` chars of
//! head, `limit` chars of tail and a small write buffer. Until the text
//! outgrows the limit it lives in memory only; past that, everything (what
//! was buffered and all that follows) streams to a spool file.
//!
//! A spool that cannot be written (directory not creatable, disk full) never
//! stops the command: head and tail are still kept in memory, the spool
//! file is removed (a partial file is no use and may be what filled the
//! disk), and [`CappedOutput::spool_error`] says why, in one sentence naming
//! the path and the OS error.
//!
//! A limit of 0 returns no text at all: everything goes to the spool file,
//! and `truncated` is true when there was any output.
//!
//! The spool directory has a total size cap ([`spool_max_bytes`]: 1 GiB
//! unless `EXECKIT_SPOOL_MAX_BYTES` says otherwise, 0 = none), enforced
//! when a spool file starts and again every [`SPOOL_CHECK_EVERY`] bytes it
//! grows: the oldest spool files are removed first. A single output that
//! alone passes the cap is not kept (the partial file is removed, and
//! `spool_error` says so).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Spool directory cap when nothing else is configured: 1 GiB.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;

/// Environment variable: spool directory cap in bytes (`K`, `M`, `G`
/// suffixes; 0 = no cap).
pub const ENV_SPOOL_MAX_BYTES: &str = "EXECKIT_SPOOL_MAX_BYTES";

/// A growing spool file re-checks the directory's total after this many bytes.
pub const SPOOL_CHECK_EVERY: u64 = 64 << 20;

/// The spool directory cap in force: `EXECKIT_SPOOL_MAX_BYTES` (read once
/// per process) or [`DEFAULT_SPOOL_MAX_BYTES`]; an unparseable value is
/// reported once on stderr and the default used.
pub fn spool_max_bytes() -> u64 {
    static CAP: OnceLock<u64> = OnceLock::new();
    *CAP.get_or_init(|| match std::env::var(ENV_SPOOL_MAX_BYTES) {
        Ok(v) if !v.trim().is_empty() => crate::journal::parse_size(&v).unwrap_or_else(|e| {
            eprintln!(
                "execkit: warning: {ENV_SPOOL_MAX_BYTES}: {e}; using {DEFAULT_SPOOL_MAX_BYTES} bytes"
            );
            DEFAULT_SPOOL_MAX_BYTES
        }),
        _ => DEFAULT_SPOOL_MAX_BYTES,
    })
}

/// Collects cleaned command output under a character limit.
#[derive(Debug)]
pub struct OutputCap {
    limit: usize,
    head_chars: usize,
    tail_chars: usize,
    /// Whole text while it fits; afterwards the first `head_chars` chars.
    head: String,
    head_len: usize,
    /// Last chars seen once the limit was passed (may hold extra, trimmed lazily).
    tail: String,
    total_chars: u64,
    spool_path: Option<PathBuf>,
    spool: Option<BufWriter<File>>,
    spool_error: Option<String>,
    /// Total size cap of the spool directory (0: none).
    spool_cap: u64,
    /// Bytes written to this spool file so far.
    spooled: u64,
    /// `spooled` when the directory's total is next checked.
    next_check: u64,
}

/// The capped text and where the full text went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CappedOutput {
    /// Head, elision line, tail (or the whole text when it fit).
    pub text: String,
    /// Whether anything was elided.
    pub truncated: bool,
    /// Spool file holding the full text, when the text was capped.
    pub spool_path: Option<PathBuf>,
    /// Characters the command produced in all.
    pub total_chars: u64,
    /// Why the spool file could not be written, if it could not.
    pub spool_error: Option<String>,
}

impl OutputCap {
    /// A cap of `limit` characters; the full text spools to `spool_path` if
    /// needed, under the directory cap [`spool_max_bytes`].
    pub fn new(limit: usize, spool_path: PathBuf) -> Self {
        Self::build(limit, Some(spool_path)).with_spool_cap(spool_max_bytes())
    }

    /// Sets the spool directory's total size cap (0: none).
    pub fn with_spool_cap(mut self, bytes: u64) -> Self {
        self.spool_cap = bytes;
        self
    }

    /// A cap that keeps head and tail only, with no spool file.
    pub fn memory_only(limit: usize) -> Self {
        Self::build(limit, None)
    }

    fn build(limit: usize, spool_path: Option<PathBuf>) -> Self {
        let head_chars = limit / 2;
        OutputCap {
            limit,
            head_chars,
            tail_chars: limit - head_chars,
            head: String::new(),
            head_len: 0,
            tail: String::new(),
            total_chars: 0,
            spool_path,
            spool: None,
            spool_error: None,
            spool_cap: 0,
            spooled: 0,
            next_check: 0,
        }
    }

    /// Whether the text has outgrown the limit (and is spooling).
    pub fn overflowed(&self) -> bool {
        self.total_chars > self.limit as u64
    }

    /// Appends cleaned text.
    pub fn push(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        let n = text.chars().count();
        let was_over = self.overflowed();
        self.total_chars += n as u64;
        if !was_over {
            self.head.push_str(text);
            self.head_len += n;
            if self.overflowed() {
                self.start_spool();
            }
            return;
        }
        self.write_spool(text);
        self.tail.push_str(text);
        self.trim_tail(false);
    }

    fn start_spool(&mut self) {
        let whole = std::mem::take(&mut self.head);
        if let Some(path) = &self.spool_path {
            match open_spool(path) {
                Ok(f) => {
                    self.spool = Some(BufWriter::with_capacity(64 * 1024, f));
                    self.next_check = self.check_interval();
                    self.enforce_dir_cap();
                }
                Err(why) => self.spool_error = Some(why),
            }
        }
        self.write_spool(&whole);
        let head_end = byte_index_of_char(&whole, self.head_chars);
        self.head = whole[..head_end].to_string();
        self.tail = whole[head_end..].to_string();
        self.head_len = self.head_chars;
        self.trim_tail(true);
    }

    fn write_spool(&mut self, text: &str) {
        if let Some(w) = &mut self.spool {
            if let Err(e) = w.write_all(text.as_bytes()) {
                self.spool_failed(&e);
                return;
            }
            self.spooled += text.len() as u64;
            if self.spool_cap > 0 && self.spooled > self.spool_cap {
                let cap = self.spool_cap;
                self.spool_failed_with(format!(
                    "the full output passed the spool cap of {cap} bytes ({ENV_SPOOL_MAX_BYTES}); {NOT_KEPT}"
                ));
            } else if self.spooled >= self.next_check {
                self.next_check = self.spooled + self.check_interval();
                self.enforce_dir_cap();
            }
        }
    }

    /// How many spooled bytes pass between checks of the directory's total.
    fn check_interval(&self) -> u64 {
        (self.spool_cap / 4).clamp(64 * 1024, SPOOL_CHECK_EVERY)
    }

    /// Removes the oldest other spool files while the directory is over
    /// its cap.
    fn enforce_dir_cap(&mut self) {
        if self.spool_cap == 0 {
            return;
        }
        let Some(path) = &self.spool_path else {
            return;
        };
        if let Some(dir) = path.parent() {
            let _ = prune_spool_by_size(dir, self.spool_cap, Some(path));
        }
    }

    /// Gives up on the spool file after a write error: the partial file
    /// is removed (it may be what filled the disk).
    fn spool_failed(&mut self, e: &std::io::Error) {
        let why = spool_failure(&self.spool_path, e);
        self.spool_failed_with(why);
    }

    fn spool_failed_with(&mut self, why: String) {
        self.spool_error = Some(why);
        if let Some(w) = self.spool.take() {
            // Dropping the writer retries the flush; it fails again or
            // writes into a file that is removed next.
            drop(w);
        }
        if let Some(p) = &self.spool_path {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Keeps `tail` near `tail_chars`; trimming only when it has grown to
    /// several times that keeps the cost amortised O(1) per char.
    fn trim_tail(&mut self, exact: bool) {
        let threshold = if exact {
            self.tail_chars
        } else {
            self.tail_chars * 4
        };
        if self.tail.len() <= threshold {
            return; // byte length bounds char count from above
        }
        let chars = if self.tail.is_ascii() {
            self.tail.len()
        } else {
            self.tail.chars().count()
        };
        if chars > threshold || (exact && chars > self.tail_chars) {
            let excess = chars - self.tail_chars;
            let cut = if self.tail.is_ascii() {
                excess
            } else {
                byte_index_of_char(&self.tail, excess)
            };
            self.tail.drain(..cut);
        }
    }

    /// Finishes collection: the capped text and the spool file (flushed).
    pub fn finish(mut self) -> CappedOutput {
        if !self.overflowed() {
            return CappedOutput {
                text: self.head,
                truncated: false,
                spool_path: None,
                total_chars: self.total_chars,
                spool_error: None,
            };
        }
        self.trim_tail(true);
        if let Some(mut w) = self.spool.take() {
            if let Err(e) = w.flush() {
                self.spool = Some(w);
                self.spool_failed(&e);
            }
        }
        let tail_len = self.tail.chars().count() as u64;
        let elided = self.total_chars - self.head_len as u64 - tail_len;
        let spool_path = self
            .spool_path
            .take()
            .filter(|_| self.spool_error.is_none());
        if self.limit == 0 {
            // No text asked for: all of it is in the spool file.
            return CappedOutput {
                text: String::new(),
                truncated: true,
                spool_path,
                total_chars: self.total_chars,
                spool_error: self.spool_error,
            };
        }
        let mut text = String::with_capacity(self.head.len() + self.tail.len() + 160);
        text.push_str(&self.head);
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        let total = self.total_chars;
        text.push_str(&match (&spool_path, &self.spool_error) {
            (Some(p), _) => format!(
                "[… {elided} of {total} characters elided; full output in {} …]\n",
                p.display()
            ),
            (None, Some(_)) => {
                format!("[… {elided} of {total} characters elided; full output not kept …]\n")
            }
            (None, None) => format!("[… {elided} of {total} characters elided …]\n"),
        });
        text.push_str(&self.tail);
        CappedOutput {
            text,
            truncated: true,
            spool_path,
            total_chars: self.total_chars,
            spool_error: self.spool_error,
        }
    }
}

/// What the result says when the full output could not be kept.
const NOT_KEPT: &str = "the full output was not kept";

fn spool_failure(path: &Option<PathBuf>, e: &std::io::Error) -> String {
    let shown = path.as_deref().map(Path::display);
    match shown {
        Some(p) => format!("cannot write the spool file {p}: {e}; {NOT_KEPT}"),
        None => format!("cannot write the spool file: {e}; {NOT_KEPT}"),
    }
}

/// Creates the spool file (and its directory); the error is one sentence
/// for the result, naming what could not be created.
///
/// The default spool directory (`<state>/spool`) is made private and
/// verified like the rest of the state ([`crate::paths::private_state_subdir`]);
/// another directory (one the user chose, maybe shared) is created 0700
/// when missing and otherwise left as it is. Either way the file is
/// created fresh (`O_EXCL`) and never through a symlink (`O_NOFOLLOW`), so
/// nothing planted at its name is written through or truncated.
fn open_spool(path: &Path) -> Result<File, String> {
    if let Some(dir) = path.parent() {
        let made = if dir == crate::paths::spool_dir() {
            crate::paths::private_state_subdir("spool").map(|_| ())
        } else {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir)
        };
        made.map_err(|e| {
            format!(
                "cannot create the spool directory {}: {e}; {NOT_KEPT}",
                dir.display()
            )
        })?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    }
    opts.open(path).map_err(|e| {
        format!(
            "cannot create the spool file {}: {e}; {NOT_KEPT}",
            path.display()
        )
    })
}

/// Byte index of the `n`-th char (or the string length when shorter).
fn byte_index_of_char(s: &str, n: usize) -> usize {
    s.char_indices().nth(n).map_or(s.len(), |(i, _)| i)
}

/// What one spool prune removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneReport {
    /// Spool files removed.
    pub removed: usize,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// The spool files in `dir`: `*.out`, regular files only (a symlink is
/// never followed), with their metadata. A missing directory has none.
fn spool_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, std::fs::Metadata)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|x| x == "out"))
        .filter_map(|path| {
            let meta = std::fs::symlink_metadata(&path).ok()?;
            meta.is_file().then_some((path, meta))
        })
        .collect())
}

/// Removes spool files (`*.out`, regular files only, never through a
/// symlink) in `dir` last written more than `older_than` ago. A missing
/// directory is nothing to prune.
pub fn prune_spool_by_age(
    dir: &Path,
    older_than: std::time::Duration,
) -> std::io::Result<PruneReport> {
    let mut report = PruneReport::default();
    let now = std::time::SystemTime::now();
    for (path, meta) in spool_files(dir)? {
        let old = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > older_than);
        if old && std::fs::remove_file(&path).is_ok() {
            report.removed += 1;
            report.bytes += meta.len();
        }
    }
    Ok(report)
}

/// Removes the oldest spool files (`*.out`, regular files only, never
/// through a symlink; by last write, `keep` never) in `dir` until their
/// total size is at most `max_total` bytes. A missing directory is nothing
/// to prune.
pub fn prune_spool_by_size(
    dir: &Path,
    max_total: u64,
    keep: Option<&Path>,
) -> std::io::Result<PruneReport> {
    let mut report = PruneReport::default();
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = Vec::new();
    let mut total = 0u64;
    for (path, meta) in spool_files(dir)? {
        total += meta.len();
        if keep.is_some_and(|k| k == path) {
            continue;
        }
        let when = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        files.push((when, meta.len(), path));
    }
    if total <= max_total {
        return Ok(report);
    }
    files.sort();
    for (_, len, path) in files {
        if total <= max_total {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
            report.removed += 1;
            report.bytes += len;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
