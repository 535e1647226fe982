//! Sessions on disk: every live session is recorded as one small JSON file
//! in `<state>/sessions/` (marker, target, owner pid and owner start time),
//! written when the session opens and removed when it closes. A shell in a
//! container or on a remote host outlives a `kill -9`ed owner; [`gc`] finds
//! records whose owner is dead, kills the marked processes on their targets
//! and removes the records.
//!
//! The owner is identified by pid *and* its start time (field 22 of
//! `/proc/PID/stat`), so a recycled pid does not keep a dead session alive.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::shell::MARKER_VAR;

/// How long cleaning one target may take in [`gc`].
const TARGET_TIMEOUT: Duration = Duration::from_secs(15);
/// Records that could not be cleaned for this long are dropped.
const GIVE_UP_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

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
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
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
    if let Err(e) = write_record_in(&sessions_dir(), &SessionRecord::new(marker, target)) {
        tracing::warn!("cannot record the session on disk: {e}");
    }
}

/// Removes the record of a closed session.
pub(crate) fn remove_record(marker: &str) {
    let _ = std::fs::remove_file(record_path(&sessions_dir(), marker));
}

/// Writes `rec` into `dir` atomically (temp file, then rename).
pub fn write_record_in(dir: &Path, rec: &SessionRecord) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = record_path(dir, &rec.marker);
    let tmp = dir.join(format!(".{}.tmp", rec.marker));
    let json = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Every record in `dir` with its file.
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
        let rec = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<SessionRecord>(&b).ok());
        match rec {
            Some(r) => out.push((path, r)),
            None => {
                // Unreadable or torn: nothing can be cleaned by it.
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    out
}

/// What a [`gc`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct GcReport {
    /// Orphaned sessions whose processes were killed and records removed.
    pub cleaned: Vec<SessionRecord>,
    /// Orphaned sessions that could not be cleaned now (kept for later),
    /// with why.
    pub failed: Vec<(SessionRecord, String)>,
    /// Sessions whose owner is alive (left alone).
    pub live: usize,
}

/// Cleans the sessions in [`sessions_dir`] whose owner is dead.
pub async fn gc() -> GcReport {
    gc_in(&sessions_dir()).await
}

/// Cleans the sessions recorded in `dir` whose owner is dead: connects
/// each target through the registry, kills every process carrying the
/// marker, and removes the record. A target that cannot be reached keeps
/// its record (for a week) so a later gc can try again.
pub async fn gc_in(dir: &Path) -> GcReport {
    let mut report = GcReport::default();
    // Targets are cleaned concurrently: one slow engine must not hold up
    // the others.
    let mut tasks = tokio::task::JoinSet::new();
    for (path, rec) in list_in(dir) {
        if rec.owner_alive() {
            report.live += 1;
            continue;
        }
        tasks.spawn(async move {
            let result = clean(&rec).await;
            match &result {
                Ok(()) => {
                    let _ = std::fs::remove_file(&path);
                }
                Err(_) => {
                    let age = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs())
                        .saturating_sub(rec.created);
                    if age > GIVE_UP_AFTER.as_secs() {
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            (rec, result)
        });
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((rec, Ok(()))) => report.cleaned.push(rec),
            Ok((rec, Err(why))) => report.failed.push((rec, why)),
            Err(e) => tracing::warn!("session cleanup task failed: {e}"),
        }
    }
    report
}

/// Kills the marked processes of one orphaned session on its target.
async fn clean(rec: &SessionRecord) -> Result<(), String> {
    let transport = crate::registry::connect(&rec.target).map_err(|e| e.to_string())?;
    match tokio::time::timeout(TARGET_TIMEOUT, transport.kill_matching(&rec.marker_entry())).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "cleanup on {} did not finish within {} s",
            rec.target,
            TARGET_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "execkit-sessions-test-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn own_start_time_is_known() {
        let rec = SessionRecord::new("m", "local");
        assert!(rec.owner_start > 0);
        assert!(rec.owner_alive());
        // Same pid, other start time: a recycled pid is not the owner.
        let recycled = SessionRecord {
            owner_start: rec.owner_start + 1,
            ..rec.clone()
        };
        assert!(!recycled.owner_alive());
        let gone = SessionRecord {
            owner_pid: u32::MAX - 1,
            ..rec
        };
        assert!(!gone.owner_alive());
    }

    #[test]
    fn records_round_trip() {
        let dir = scratch("roundtrip");
        let rec = SessionRecord::new("abc123", "docker:web");
        let path = write_record_in(&dir, &rec).unwrap();
        std::fs::write(dir.join("torn.json"), b"{\"marker\":").unwrap();
        let all = list_in(&dir);
        assert_eq!(all, vec![(path, rec)]);
        assert!(!dir.join("torn.json").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn gc_keeps_live_and_unreachable_sessions() {
        let dir = scratch("gc");
        let live = SessionRecord::new("live1", "nosuchscheme:x");
        write_record_in(&dir, &live).unwrap();
        let dead = SessionRecord {
            marker: "dead1".into(),
            owner_pid: u32::MAX - 1,
            ..live.clone()
        };
        write_record_in(&dir, &dead).unwrap();
        let r = gc_in(&dir).await;
        assert_eq!(r.live, 1);
        assert!(r.cleaned.is_empty());
        assert_eq!(r.failed.len(), 1, "{r:?}");
        assert!(r.failed[0].1.contains("nosuchscheme"), "{r:?}");
        // Kept for a later try.
        assert_eq!(list_in(&dir).len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
