//! The gc: finds records whose owner is dead and kills their marked
//! processes on their targets, bounded in time and concurrency, with a
//! back-off per target written into the records.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::records::{list_in, now_secs, sessions_dir, store};
use super::SessionRecord;

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
pub(super) fn lock(dir: &Path) -> Option<Option<std::fs::File>> {
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
pub(super) fn backoff(failures: u32) -> Duration {
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
        match kill_orphan(&rec).await {
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
async fn kill_orphan(rec: &SessionRecord) -> Result<(), String> {
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
