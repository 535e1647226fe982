//! The journal: one JSON line per event, appended with `O_APPEND` in a
//! single `write(2)` per line, so concurrent writers never interleave within
//! a line and a `kill -9` can at worst lose the line being written, never
//! tear an earlier one. Secrets are masked before anything touches disk.
//!
//! A full disk: the space for each line is reserved first (`fallocate`
//! past the end, size unchanged), so on `ENOSPC` nothing is written rather
//! than half a line. The first write that fails stops the journal for the
//! rest of the process with one warning line on stderr; commands and their
//! results are not affected.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::redact::Redactor;

/// Where journal lines go.
#[derive(Debug)]
pub struct Journal {
    sink: Option<(PathBuf, File)>,
    redactor: Redactor,
    /// A write failed: the journal has stopped.
    stopped: AtomicBool,
}

impl Journal {
    /// A journal appending to `path` (created 0600, parents created).
    pub fn open(path: &Path, redactor: Redactor) -> std::io::Result<Journal> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut opts = OpenOptions::new();
        opts.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let file = opts.open(path)?;
        Ok(Journal {
            sink: Some((path.to_path_buf(), file)),
            redactor,
            stopped: AtomicBool::new(false),
        })
    }

    /// A journal that records nothing (`--no-journal`).
    pub fn disabled() -> Journal {
        Journal {
            sink: None,
            redactor: Redactor::default(),
            stopped: AtomicBool::new(false),
        }
    }

    /// The default path: `${XDG_STATE_HOME:-~/.local/state}/execkit/journal.jsonl`.
    pub fn default_path() -> PathBuf {
        crate::paths::state_dir().join("journal.jsonl")
    }

    /// Where lines go, if anywhere.
    pub fn path(&self) -> Option<&Path> {
        self.sink.as_ref().map(|(p, _)| p.as_path())
    }

    /// The redactor applied to every string field.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Whether a write failed and the journal stopped.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Appends one event: `ts` and `event` first, then `fields`, with every
    /// string value redacted. The first failure stops the journal (later
    /// calls do nothing) and is reported once on stderr.
    pub fn append(&self, event: &str, fields: Map<String, Value>) -> std::io::Result<()> {
        let Some((path, file)) = &self.sink else {
            return Ok(());
        };
        if self.stopped() {
            return Ok(());
        }
        let r = self.write_line(file, event, fields);
        if let Err(e) = &r {
            if !self.stopped.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "execkit: warning: cannot write the journal {}: {e}; journaling stopped, commands go on",
                    path.display()
                );
            }
        }
        r
    }

    fn write_line(
        &self,
        file: &File,
        event: &str,
        fields: Map<String, Value>,
    ) -> std::io::Result<()> {
        let mut line = Map::new();
        line.insert("ts".into(), Value::String(rfc3339(SystemTime::now())));
        line.insert("event".into(), Value::String(event.into()));
        for (k, v) in fields {
            line.insert(k, self.redact_value(v));
        }
        let mut buf = serde_json::to_vec(&Value::Object(line)).map_err(std::io::Error::other)?;
        buf.push(b'\n');
        reserve(file, buf.len())?;
        // One write call per line; O_APPEND makes it atomic against other writers.
        let mut f: &File = file;
        f.write_all(&buf)
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

/// Reserves `len` bytes past the end of `file` without changing its size,
/// so a full disk fails the line before any of it is written. Filesystems
/// without `fallocate` just go on to the write.
fn reserve(file: &File, len: usize) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let end = file.metadata()?.len();
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
    let _ = (file, len);
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
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        let at = |s: u64| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(s));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(at(1_795_449_906_000), "2026-11-23T16:05:06.000Z");
    }

    #[test]
    fn appends_parseable_redacted_lines() {
        let path =
            std::env::temp_dir().join(format!("execkit-journal-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let j = Journal::open(&path, Redactor::default()).unwrap();
        let mut f = Map::new();
        f.insert(
            "command".into(),
            "curl -H 'Authorization: Bearer abc.def-123' x".into(),
        );
        f.insert("exit_code".into(), 0.into());
        j.append("command", f).unwrap();
        j.append("session_close", Map::new()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "command");
        assert!(!lines[0]["command"]
            .as_str()
            .unwrap()
            .contains("abc.def-123"));
        std::fs::remove_file(path).unwrap();
    }
}
