//! Sessions on disk: every live session is recorded as one small JSON file
//! in `<state>/sessions/` (marker, target, owner pid and owner start time),
//! written when the session opens and removed when it closes. A shell in a
//! container or on a remote host outlives a `kill -9`ed owner; [`gc`] finds
//! records whose owner is dead, kills the marked processes on their targets
//! and removes the records.
//!
//! The owner is identified by pid *and* its start time (field 22 of
//! `/proc/PID/stat`), so a recycled pid does not keep a dead session alive.
//!
//! The directory is private (0700, see [`crate::state::private_dir`]) and
//! records are 0600. A gc reads records only from a directory that is this
//! user's and nobody else may write ([`crate::state::verified_dir`], the
//! state directory too), and only records that are regular files of this
//! user (opened without following a symlink): a record another user planted
//! never points a gc at a target. A gc is bounded: one runs at a time (`.gc.lock`,
//! `flock`), at most [`GC_CONCURRENCY`] cleanups run at once, each attempt
//! has [`ATTEMPT_TIMEOUT`], a target whose first cleanup fails is not tried
//! again in the same gc, and every attempt is written into the record first
//! (`failures`, `retry_after`), so the background gc of later runs skips a
//! target (all its records) while one of them is in back-off (exponential,
//! [`BACKOFF`] doubling up to [`MAX_BACKOFF`]), even when the run that
//! tried it was cut short.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use crate::output_cap::{spool_max_bytes, PruneReport, DEFAULT_SPOOL_MAX_BYTES};
use crate::shell::MARKER_VAR;

/// How long one cleanup (connect the target, kill by marker) may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(8);
/// Cleanups running at once in one gc.
pub const GC_CONCURRENCY: usize = 4;
/// Back-off after a record's first failed cleanup; doubles per failure.
pub const BACKOFF: Duration = Duration::from_secs(60);
/// Longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// How long one gc may spend on one target before leaving the rest of its
/// records for a later gc.
pub const TARGET_BUDGET: Duration = Duration::from_secs(60);
/// Records that could not be cleaned for this long are dropped.
const GIVE_UP_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// The lock file that makes gcs take turns.
const LOCK_FILE: &str = ".gc.lock";

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

fn now_secs() -> u64 {
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
fn store(dir: &Path, rec: &SessionRecord) -> std::io::Result<PathBuf> {
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
    /// Orphaned sessions not tried this time (in back-off, or their target
    /// used up its time in this gc).
    pub deferred: usize,
    /// Another gc holds the lock; this one did nothing.
    pub busy: bool,
    /// The directory could not be trusted (another user's, writable by
    /// others, …): why. Nothing was read from it.
    pub refused: Option<String>,
}

/// How a gc goes about its work.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct GcOptions {
    /// Skip records whose `retry_after` has not come yet (the background
    /// gc of every run); `execkit gc` tries them anyway.
    pub respect_backoff: bool,
    /// Set once the first cleanup attempt starts (the listing is done and
    /// there is real work).
    pub attempting: Option<Arc<AtomicBool>>,
}

impl GcOptions {
    /// The background gc of a run: records in back-off are skipped.
    pub fn background(attempting: Arc<AtomicBool>) -> Self {
        GcOptions {
            respect_backoff: true,
            attempting: Some(attempting),
        }
    }
}

/// Cleans the sessions in [`sessions_dir`] whose owner is dead.
pub async fn gc() -> GcReport {
    gc_here(GcOptions::default()).await
}

/// [`gc`] with options: the state directory is verified first (this
/// user's, nobody else may write it; see [`crate::state::verified_dir`]),
/// then [`gc_with`] on its `sessions/`.
pub async fn gc_here(opts: GcOptions) -> GcReport {
    let state = crate::paths::state_dir();
    match crate::state::verified_dir(&state) {
        Ok(true) => gc_with(&sessions_dir(), opts).await,
        Ok(false) => GcReport::default(),
        Err(e) => GcReport {
            refused: Some(e.to_string()),
            ..GcReport::default()
        },
    }
}

/// Cleans the sessions recorded in `dir` whose owner is dead: connects
/// each target through the registry, kills every process carrying the
/// marker, and removes the record. A target that cannot be reached keeps
/// its records (for a week) so a later gc can try again. Records in
/// back-off are tried too (see [`gc_with`]).
pub async fn gc_in(dir: &Path) -> GcReport {
    gc_with(dir, GcOptions::default()).await
}

/// Takes the gc lock of `dir` without waiting: `None` if another gc holds
/// it. A lock file that cannot be opened (a read-only directory) does not
/// stop the gc: `Some(None)`, it goes on unlocked.
fn lock(dir: &Path) -> Option<Option<std::fs::File>> {
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir.join(LOCK_FILE))
    else {
        return Some(None);
    };
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (r == 0).then_some(Some(f))
}

/// The back-off after `failures` failed attempts.
fn backoff(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

/// [`gc_in`] with options. Bounded: one gc at a time per directory (a
/// second one returns at once with `busy`), [`GC_CONCURRENCY`] cleanups at
/// once, [`ATTEMPT_TIMEOUT`] each, one failure per target per gc, and
/// [`TARGET_BUDGET`] per target. Only a verified directory is read
/// ([`crate::state::verified_dir`]; otherwise `refused` says why).
pub async fn gc_with(dir: &Path, opts: GcOptions) -> GcReport {
    let mut report = GcReport::default();
    match crate::state::verified_dir(dir) {
        Ok(true) => {}
        Ok(false) => return report,
        Err(e) => {
            report.refused = Some(e.to_string());
            return report;
        }
    }
    let Some(_lock) = lock(dir) else {
        report.busy = true;
        return report;
    };
    let now = now_secs();
    let mut owners: HashMap<(u32, u64), bool> = HashMap::new();
    let mut by_target: BTreeMap<String, Vec<(PathBuf, SessionRecord)>> = BTreeMap::new();
    // Back-off is per target: one record of it in back-off (its last
    // attempt failed, or was cut short) defers all of them.
    let mut backing_off = std::collections::HashSet::new();
    for (path, rec) in list_in(dir) {
        let alive = *owners
            .entry((rec.owner_pid, rec.owner_start))
            .or_insert_with(|| rec.owner_alive());
        if alive {
            report.live += 1;
            continue;
        }
        if rec.retry_after > now {
            backing_off.insert(rec.target.clone());
        }
        by_target
            .entry(rec.target.clone())
            .or_default()
            .push((path, rec));
    }
    if opts.respect_backoff {
        by_target.retain(|target, recs| {
            let keep = !backing_off.contains(target);
            if !keep {
                report.deferred += recs.len();
            }
            keep
        });
    }
    if by_target.is_empty() {
        return report;
    }
    if let Some(flag) = &opts.attempting {
        flag.store(true, Ordering::SeqCst);
    }
    // Targets are cleaned concurrently (one slow engine must not hold up
    // the others), each target's records one after the other.
    let slots = Arc::new(tokio::sync::Semaphore::new(GC_CONCURRENCY));
    let dir = dir.to_path_buf();
    let mut tasks = tokio::task::JoinSet::new();
    for (target, recs) in by_target {
        let slots = slots.clone();
        let dir = dir.clone();
        tasks.spawn(async move { clean_target(&dir, &target, recs, &slots).await });
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(part) => {
                report.cleaned.extend(part.cleaned);
                report.failed.extend(part.failed);
                report.deferred += part.deferred;
            }
            Err(e) => tracing::warn!("session cleanup task failed: {e}"),
        }
    }
    report
}

/// Cleans one target's orphaned records in turn; stops at the first
/// failure (the rest are reported as not tried) or when the target's
/// budget is spent (the rest are deferred).
async fn clean_target(
    dir: &Path,
    target: &str,
    recs: Vec<(PathBuf, SessionRecord)>,
    slots: &tokio::sync::Semaphore,
) -> GcReport {
    let mut report = GcReport::default();
    let started = tokio::time::Instant::now();
    let mut down: Option<String> = None;
    for (path, mut rec) in recs {
        if let Some(why) = &down {
            report.failed.push((
                rec,
                format!("not tried: an earlier cleanup on {target} failed in this gc ({why})"),
            ));
            continue;
        }
        if started.elapsed() > TARGET_BUDGET {
            report.deferred += 1;
            continue;
        }
        let Ok(_slot) = slots.acquire().await else {
            break;
        };
        // The attempt is on disk before it starts: a run cut short while
        // it waits still leaves its back-off behind.
        rec.failures = rec.failures.saturating_add(1);
        rec.retry_after = now_secs() + backoff(rec.failures).as_secs();
        let _ = store(dir, &rec);
        match clean(&rec).await {
            Ok(()) => {
                let _ = std::fs::remove_file(&path);
                rec.failures -= 1;
                report.cleaned.push(rec);
            }
            Err(why) => {
                if now_secs().saturating_sub(rec.created) > GIVE_UP_AFTER.as_secs() {
                    let _ = std::fs::remove_file(&path);
                }
                down = Some(why.clone());
                report.failed.push((rec, why));
            }
        }
    }
    report
}

/// Kills the marked processes of one orphaned session on its target.
async fn clean(rec: &SessionRecord) -> Result<(), String> {
    let transport = crate::registry::connect(&rec.target).map_err(|e| e.to_string())?;
    match tokio::time::timeout(
        ATTEMPT_TIMEOUT,
        transport.kill_matching(&rec.marker_entry()),
    )
    .await
    {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "cleanup on {} did not finish within {} s",
            rec.target,
            ATTEMPT_TIMEOUT.as_secs()
        )),
    }
}

/// How `execkit gc` prunes the spool directory (full outputs of capped
/// commands): files last written longer ago than `max_age`, then the oldest
/// until the rest fit in `max_bytes` (0 turns a step off).
#[derive(Debug, Clone, Copy)]
pub struct SpoolPrune {
    /// Remove files older than this.
    pub max_age: Duration,
    /// Then remove the oldest files until the total is at most this.
    pub max_bytes: u64,
}

/// What [`prune_spool`] removed, per step.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpoolPruned {
    /// Removed for their age.
    pub by_age: PruneReport,
    /// Removed, oldest first, to bring the total within `max_bytes`.
    pub by_size: PruneReport,
}

/// Prunes this user's spool directory ([`crate::state::spool_dir`]). Only a
/// directory of this user's that nobody else may write (the state directory
/// too) is touched: `Ok(None)` when it is missing or not such a directory.
pub fn prune_spool(opts: SpoolPrune) -> std::io::Result<Option<SpoolPruned>> {
    let dir = crate::paths::spool_dir();
    if !(crate::state::verified_dir(&crate::paths::state_dir())?
        && crate::state::verified_dir(&dir)?)
    {
        return Ok(None);
    }
    let mut done = SpoolPruned::default();
    if !opts.max_age.is_zero() {
        done.by_age = crate::output_cap::prune_spool(&dir, opts.max_age)?;
    }
    if opts.max_bytes > 0 {
        done.by_size = crate::output_cap::prune_spool_to(&dir, opts.max_bytes, None)?;
    }
    Ok(Some(done))
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

    /// Issue 13 item 10: one failed attempt per target per gc, the attempt
    /// recorded for back-off, which the background gc respects.
    #[tokio::test]
    async fn gc_tries_a_failing_target_once_and_backs_off() {
        let dir = scratch("backoff");
        for m in ["b1", "b2", "b3"] {
            let rec = SessionRecord {
                marker: m.into(),
                owner_pid: u32::MAX - 1,
                ..SessionRecord::new(m, "nosuchscheme:x")
            };
            write_record_in(&dir, &rec).unwrap();
        }
        let r = gc_in(&dir).await;
        assert_eq!(r.failed.len(), 3, "{r:?}");
        let not_tried = r
            .failed
            .iter()
            .filter(|(_, w)| w.starts_with("not tried"))
            .count();
        assert_eq!(not_tried, 2, "{r:?}");
        let tried: Vec<SessionRecord> = list_in(&dir)
            .into_iter()
            .map(|(_, rec)| rec)
            .filter(|rec| rec.failures == 1)
            .collect();
        assert_eq!(tried.len(), 1);
        assert!(tried[0].retry_after >= now_secs() + BACKOFF.as_secs() - 1);
        // The background gc leaves the whole target alone while one of its
        // records is in back-off.
        let flag = Arc::new(AtomicBool::new(false));
        let r = gc_with(&dir, GcOptions::background(flag.clone())).await;
        assert_eq!((r.deferred, r.failed.len()), (3, 0), "{r:?}");
        assert!(!flag.load(Ordering::SeqCst));
        // Another target is tried meanwhile.
        let other = SessionRecord {
            owner_pid: u32::MAX - 1,
            ..SessionRecord::new("o1", "otherscheme:y")
        };
        write_record_in(&dir, &other).unwrap();
        let r = gc_with(&dir, GcOptions::background(flag.clone())).await;
        assert_eq!((r.deferred, r.failed.len()), (3, 1), "{r:?}");
        assert!(flag.load(Ordering::SeqCst));
        assert_eq!(backoff(1), BACKOFF);
        assert_eq!(backoff(2), BACKOFF * 2);
        assert_eq!(backoff(40), MAX_BACKOFF);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Issue 13 item 12: gcs take turns (the lock), the second does nothing.
    #[tokio::test]
    async fn a_second_gc_returns_at_once() {
        let dir = scratch("lock");
        let rec = SessionRecord {
            owner_pid: u32::MAX - 1,
            ..SessionRecord::new("l1", "nosuchscheme:x")
        };
        write_record_in(&dir, &rec).unwrap();
        let held = lock(&dir).unwrap();
        assert!(held.is_some());
        let r = gc_in(&dir).await;
        assert!(r.busy && r.failed.is_empty(), "{r:?}");
        drop(held);
        assert!(!gc_in(&dir).await.busy);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Records are 0600 in a 0700 directory, also one that was looser.
    #[test]
    fn records_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("private");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = write_record_in(&dir, &SessionRecord::new("p1", "local")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&dir), mode(&path)), (0o700, 0o600));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Issue 14 item 3: gc reads records only from a directory nobody
    /// else may write, and only regular files of this user — never through
    /// a symlink, never blocking on a FIFO.
    #[tokio::test]
    async fn gc_reads_only_own_records_from_a_verified_dir() {
        use std::os::unix::fs::PermissionsExt;
        let dead = |m: &str, target: &str| SessionRecord {
            owner_pid: u32::MAX - 1,
            ..SessionRecord::new(m, target)
        };
        let dir = scratch("verified");
        write_record_in(&dir, &dead("mine", "nosuchscheme:mine")).unwrap();
        // Elsewhere: a record the link below points at.
        let outside = scratch("verified-outside");
        let planted = write_record_in(&outside, &dead("p1", "nosuchscheme:planted")).unwrap();
        std::os::unix::fs::symlink(&planted, dir.join("link.json")).unwrap();
        let fifo =
            std::ffi::CString::new(dir.join("fifo.json").into_os_string().into_encoded_bytes())
                .unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let theirs = store(&dir, &dead("p2", "nosuchscheme:planted")).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        }
        // Listing must not block on the FIFO: on a thread, bounded.
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.clone();
        std::thread::spawn(move || tx.send(list_in(&d)).unwrap());
        let listed = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("listing blocked on a FIFO");
        let markers: Vec<&str> = listed.iter().map(|(_, r)| r.marker.as_str()).collect();
        assert_eq!(markers, ["mine"]);
        let r = gc_in(&dir).await;
        let tried: Vec<&str> = r
            .failed
            .iter()
            .map(|(rec, _)| rec.target.as_str())
            .collect();
        assert_eq!(tried, ["nosuchscheme:mine"], "{r:?}");
        // What was not ours is left as it was.
        assert!(dir.join("link.json").symlink_metadata().is_ok());
        assert!(planted.exists());
        // A directory others may write is not read at all (and not changed).
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let r = gc_in(&dir).await;
        assert!(r.failed.is_empty() && r.cleaned.is_empty(), "{r:?}");
        assert!(
            r.refused
                .as_deref()
                .is_some_and(|w| w.contains("other users")),
            "{r:?}"
        );
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o777);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&outside);
    }
}
