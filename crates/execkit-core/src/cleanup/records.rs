//! Session records on disk: one private JSON file per live session,
//! written atomically, read only when it is a regular file of this user.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::shell::MARKER_VAR;

/// One live (or orphaned) session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Value of `EXECKIT_SID` its processes carry.
    pub marker: String,
    /// Target as the user wrote it.
    pub target: String,
    /// Pid of the process that owns the session.
    pub owner_pid: u32,
    /// The owner's start time in clock ticks since boot (`/proc/PID/stat`
    /// field 22); 0 when unknown.
    pub owner_start: u64,
    /// When the session was opened (seconds since the Unix epoch).
    pub created: u64,
    /// Cleanup attempts made by gc so far (counted when one starts).
    #[serde(default)]
    pub failures: u32,
    /// A background gc does not try this record before this time (seconds
    /// since the Unix epoch).
    #[serde(default)]
    pub retry_after: u64,
}

impl SessionRecord {
    /// A record of a session of this process.
    pub fn new(marker: &str, target: &str) -> Self {
        let pid = std::process::id();
        SessionRecord {
            marker: marker.to_string(),
            target: target.to_string(),
            owner_pid: pid,
            owner_start: process_start_time(pid).unwrap_or(0),
            created: now_secs(),
            failures: 0,
            retry_after: 0,
        }
    }

    /// Whether the owning process is still the one that wrote the record.
    pub fn owner_alive(&self) -> bool {
        match process_start_time(self.owner_pid) {
            None => false,
            Some(start) => self.owner_start == 0 || start == self.owner_start,
        }
    }

    /// The `EXECKIT_SID=<marker>` entry to kill by.
    pub fn marker_entry(&self) -> String {
        format!("{MARKER_VAR}={}", self.marker)
    }
}

pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Start time of `pid` in clock ticks since boot, if it exists.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // after it are counted from the last `)`.
    let after = &stat[stat.rfind(')')? + 1..];
    // After `)`: field 3 (state) is index 0, so field 22 is index 19.
    let start = after.split_whitespace().nth(19)?.parse().ok()?;
    // A zombie is dead for our purposes.
    let state = after.split_whitespace().next()?;
    (state != "Z" && state != "X").then_some(start)
}

/// `<state>/sessions`.
pub fn sessions_dir() -> PathBuf {
    crate::paths::state_dir().join("sessions")
}

fn record_path(dir: &Path, marker: &str) -> PathBuf {
    dir.join(format!("{marker}.json"))
}

/// Writes the record of a session of this process (best effort: a
/// read-only state dir must not stop sessions from working).
pub(crate) fn write_record(marker: &str, target: &str) {
    let written = crate::paths::private_state_subdir("sessions")
        .and_then(|dir| store(&dir, &SessionRecord::new(marker, target)));
    if let Err(e) = written {
        tracing::warn!("cannot record the session on disk: {e}");
    }
}

/// Removes the record of a closed session.
pub(crate) fn remove_record(marker: &str) {
    let _ = std::fs::remove_file(record_path(&sessions_dir(), marker));
}

/// Writes `rec` into `dir` atomically (temp file, then rename); the
/// directory is made private (0700) and the file is 0600.
pub fn write_record_in(dir: &Path, rec: &SessionRecord) -> std::io::Result<PathBuf> {
    crate::state::private_dir(dir)?;
    store(dir, rec)
}

/// Writes `rec` into `dir` (private already): a fresh 0600 temp file,
/// never through a symlink, then renamed over the record.
pub(super) fn store(dir: &Path, rec: &SessionRecord) -> std::io::Result<PathBuf> {
    let path = record_path(dir, &rec.marker);
    let tmp = dir.join(format!(".{}.{}.tmp", rec.marker, std::process::id()));
    let json = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    f.write_all(&json)?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Every record in `dir` with its file: regular files of this user only,
/// opened without following a symlink and without blocking (anything else
/// is skipped and left alone). A torn record of ours is removed.
pub fn list_in(dir: &Path) -> Vec<(PathBuf, SessionRecord)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Some(bytes) = read_own_file(&path) else {
            continue;
        };
        match serde_json::from_slice::<SessionRecord>(&bytes) {
            Ok(r) => out.push((path, r)),
            Err(_) => {
                // Torn: nothing can be cleaned by it.
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    out
}

/// The bytes of `path` if it is a regular file of this user (a symlink is
/// not followed, a FIFO does not block); at most 64 KiB, a record is tiny.
fn read_own_file(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let meta = f.metadata().ok()?;
    // SAFETY: geteuid cannot fail.
    if !meta.is_file() || meta.uid() != unsafe { libc::geteuid() } {
        tracing::warn!(
            "ignoring {}: not a regular file of this user",
            path.display()
        );
        return None;
    }
    let mut bytes = Vec::new();
    f.take(64 << 10).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}
