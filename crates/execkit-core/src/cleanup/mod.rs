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
//!
//! `records.rs` writes, reads and removes the records; `gc.rs` cleans up
//! after dead owners; this file also prunes the spool ([`prune_spool`]).

mod gc;
mod records;

use std::time::Duration;

pub use crate::output_cap::{spool_max_bytes, PruneReport, DEFAULT_SPOOL_MAX_BYTES};
pub use gc::{
    gc, gc_here, gc_in, gc_with, GcOptions, GcReport, ATTEMPT_TIMEOUT, BACKOFF, GC_CONCURRENCY,
    MAX_BACKOFF, TARGET_BUDGET,
};
pub use records::{list_in, process_start_time, sessions_dir, write_record_in, SessionRecord};
pub(crate) use records::{remove_record, write_record};

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
        done.by_age = crate::output_cap::prune_spool_by_age(&dir, opts.max_age)?;
    }
    if opts.max_bytes > 0 {
        done.by_size = crate::output_cap::prune_spool_by_size(&dir, opts.max_bytes, None)?;
    }
    Ok(Some(done))
}

#[cfg(test)]
mod tests;
