//! `execkit gc`, and the same cleanup at start-up: sessions whose owner
//! died (`kill -9`, a crash) still have processes on their targets; their
//! records in the state dir say where, and the marker says which. `gc` also
//! prunes spool files (full outputs of capped commands) past their age
//! (`--spool-days`, `--spool-hours`), then oldest first past a total size
//! (`--spool-max-bytes`, default the spool cap).

use std::future::Future;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use execkit_core::cleanup::{self, GcOptions, GcReport};

/// How long a command waits at its end for the start-up cleanup.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Remove spool files last written more than DAYS days ago (0: no age limit).
    #[arg(long, value_name = "DAYS", default_value_t = 7)]
    pub spool_days: u64,
    /// Remove spool files last written more than HOURS hours ago; replaces
    /// --spool-days (0: no age limit).
    #[arg(long, value_name = "HOURS")]
    pub spool_hours: Option<u64>,
    /// Then remove the oldest spool files until they take at most SIZE
    /// (K, M, G suffixes; 0: no size limit)
    /// [default: $EXECKIT_SPOOL_MAX_BYTES, else 1G].
    #[arg(long, value_name = "SIZE", value_parser = execkit_core::journal::parse_size)]
    pub spool_max_bytes: Option<u64>,
}

/// `execkit gc`: cleans now and reports what it did.
pub fn main(args: GcArgs) -> ExitCode {
    let rt = match crate::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let report = rt.block_on(cleanup::gc());
    // An attempt that timed out may still hold a blocking thread (a
    // connect to a stalled host): it must not hold the exit up.
    rt.shutdown_background();
    for rec in &report.cleaned {
        println!(
            "cleaned session {} on {} (owner pid {} is gone)",
            rec.marker, rec.target, rec.owner_pid
        );
    }
    for (rec, why) in &report.failed {
        eprintln!(
            "execkit: cannot clean session {} on {} yet: {why}",
            rec.marker, rec.target
        );
    }
    if report.busy {
        println!("gc: another gc is running; sessions left to it");
    }
    if let Some(why) = &report.refused {
        eprintln!("execkit: gc: not reading session records: {why}");
    }
    println!(
        "gc: {} cleaned, {} failed, {} live, {} deferred",
        report.cleaned.len(),
        report.failed.len(),
        report.live,
        report.deferred
    );
    let pruned = prune_spool(&args);
    let ok = report.failed.is_empty() && report.refused.is_none() && pruned;
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Prunes the spool directory by age, then by total size; false when it
/// cannot be read.
fn prune_spool(args: &GcArgs) -> bool {
    let (age_secs, age_text) = match args.spool_hours {
        Some(h) => (h.saturating_mul(3600), format!("{h} hour(s)")),
        None => (
            args.spool_days.saturating_mul(86_400),
            format!("{} day(s)", args.spool_days),
        ),
    };
    let max = args
        .spool_max_bytes
        .unwrap_or_else(cleanup::spool_max_bytes);
    let opts = cleanup::SpoolPrune {
        max_age: Duration::from_secs(age_secs),
        max_bytes: max,
    };
    match cleanup::prune_spool(opts) {
        Ok(None) => {}
        Ok(Some(p)) => {
            if age_secs > 0 {
                println!(
                    "gc: pruned {} spool file(s), {} bytes, older than {age_text}",
                    p.by_age.removed, p.by_age.bytes
                );
            }
            // Said only when it removed something (`--spool-days 0` then
            // reads as "kept everything").
            if p.by_size.removed > 0 {
                println!(
                    "gc: pruned {} spool file(s), {} bytes, oldest first, to keep the spool within {max} bytes",
                    p.by_size.removed, p.by_size.bytes
                );
            }
        }
        Err(e) => {
            eprintln!(
                "execkit: cannot prune the spool directory {}: {e}",
                execkit_core::state::spool_dir().display()
            );
            return false;
        }
    }
    true
}

/// Runs `work` with a dead-owner cleanup alongside it (so a `kill -9`ed
/// run leaks nothing for longer than until the next run), then gives the
/// cleanup a bounded time to finish.
///
/// The cleanup runs on a thread of its own with its own small runtime
/// (two blocking threads at most), which this run never joins: a stalled
/// target can hold that thread, never the command or the exit. The run
/// waits up to [`SETTLE`] at its end only while a cleanup attempt is under
/// way; records of targets that failed before are in back-off and not
/// tried at all, and a gc already running elsewhere makes this one a no-op.
pub async fn alongside<F: Future>(work: F) -> F::Output {
    let attempting = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let flag = attempting.clone();
    let spawned = std::thread::Builder::new()
        .name("execkit-gc".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(2)
                .build();
            if let Ok(rt) = rt {
                let report = rt.block_on(cleanup::gc_here(GcOptions::background(flag)));
                let _ = tx.send(report);
                // A cleanup still on a blocking thread is not waited for.
                rt.shutdown_background();
            }
        });
    let out = work.await;
    if spawned.is_ok() && attempting.load(Ordering::SeqCst) {
        // A slow target must not hold every run up; `execkit gc` finishes it.
        if let Ok(Ok(report)) = tokio::time::timeout(SETTLE, rx).await {
            log(&report);
        }
    }
    out
}

fn log(report: &GcReport) {
    if std::env::var_os("EXECKIT_DEBUG_GC").is_some() {
        eprintln!(
            "execkit: gc: {} cleaned, {} failed, {} live",
            report.cleaned.len(),
            report.failed.len(),
            report.live
        );
        if let Some(why) = &report.refused {
            eprintln!("execkit: gc: not reading session records: {why}");
        }
    }
}
