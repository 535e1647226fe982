//! The Rust side of the Python threads load: `threads` sessions, each
//! opened and driven by its own OS thread through `block_on` on one shared
//! multi-thread runtime — what `execkit.Session` does under Python threads
//! — running `commands` commands whose outputs are checked. The same load
//! as tokio tasks is measured too, for reference.
//!
//! Two phases, timed apart: every thread opens its session, then (all
//! open: a barrier) every thread runs its commands.

use std::sync::Barrier;
use std::time::Instant;

use anyhow::{Context, Result};
use execkit_core::{RunOptions, Session};
use serde::{Deserialize, Serialize};

use crate::{bench_config, ThreadsLoad};

/// Threads (each with its own session) and commands per thread: the load
/// the Python target is stated for.
pub(crate) const THREADS: usize = 100;
pub(crate) const COMMANDS: usize = 100;

/// One run of the load (the Python driver prints the same fields).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Run {
    pub(crate) threads: usize,
    pub(crate) commands_each: usize,
    /// From the first thread's start to the last session open.
    pub(crate) open_s: f64,
    /// From the last session open to the last command's end.
    pub(crate) commands_s: f64,
    pub(crate) all_correct: bool,
}

/// The median run of `runs` (all of the same load, median by the commands
/// phase) as the row of `system`.
pub(crate) fn summary(system: &str, runs: &[Run]) -> Option<ThreadsLoad> {
    let first = runs.first()?;
    let mut sorted: Vec<&Run> = runs.iter().collect();
    sorted.sort_by(|a, b| a.commands_s.total_cmp(&b.commands_s));
    let median = sorted[sorted.len() / 2];
    Some(ThreadsLoad {
        system: system.to_string(),
        threads: first.threads,
        commands_each: first.commands_each,
        runs: runs.len(),
        open_s: median.open_s,
        commands_s: median.commands_s,
        all_correct: runs.iter().all(|r| r.all_correct),
    })
}

/// The command of thread `i`, number `k`, and the output it must give.
fn command(i: usize, k: usize) -> (String, String) {
    (
        format!("echo $(({i} * 1000 + {k}))"),
        (i * 1000 + k).to_string(),
    )
}

/// Runs the commands of thread `i`; true when every output was right.
async fn drive(s: &mut Session, i: usize, commands: usize) -> Result<bool> {
    let mut ok = true;
    for k in 0..commands {
        let (cmd, want) = command(i, k);
        let r = s.run(&cmd, RunOptions::default()).await?;
        ok &= r.exit_code == Some(0) && r.output == want;
    }
    Ok(ok)
}

async fn open() -> Result<Session> {
    Ok(Session::open("local:/bin/bash", bench_config()).await?)
}

/// The runtime the Python module builds: multi-thread, one worker per core.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

type Outcome = Result<(bool, Session)>;

/// `threads` OS threads, each blocking on the shared runtime for its own
/// session (closing is not timed).
pub(crate) fn os_threads(threads: usize, commands: usize) -> Result<Run> {
    let rt = runtime()?;
    let opened = Barrier::new(threads + 1);
    let t = Instant::now();
    let mut open_s = 0.0;
    let results: Vec<Outcome> = std::thread::scope(|scope| {
        let (rt, opened) = (&rt, &opened);
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                scope.spawn(move || {
                    let s = rt.block_on(open());
                    opened.wait();
                    let mut s = s?;
                    let ok = rt.block_on(drive(&mut s, i, commands));
                    Ok((ok?, s))
                })
            })
            .collect();
        opened.wait();
        open_s = t.elapsed().as_secs_f64();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("thread panicked")))
            })
            .collect()
    });
    let commands_s = t.elapsed().as_secs_f64() - open_s;
    finish(
        "rust os threads",
        threads,
        commands,
        (open_s, commands_s),
        &rt,
        results,
    )
}

/// The same load as `threads` tasks on the runtime's worker threads.
pub(crate) fn tasks(threads: usize, commands: usize) -> Result<Run> {
    let rt = runtime()?;
    let t = Instant::now();
    let (open_s, results) = rt.block_on(async {
        let opened = std::sync::Arc::new(tokio::sync::Barrier::new(threads + 1));
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let opened = opened.clone();
                tokio::spawn(async move {
                    let s = open().await;
                    opened.wait().await;
                    let mut s = s?;
                    let ok = drive(&mut s, i, commands).await?;
                    Ok((ok, s))
                })
            })
            .collect();
        opened.wait().await;
        let open_s = t.elapsed().as_secs_f64();
        let mut v = Vec::with_capacity(threads);
        for h in handles {
            v.push(h.await.unwrap_or_else(|e| Err(e.into())));
        }
        (open_s, v)
    });
    let commands_s = t.elapsed().as_secs_f64() - open_s;
    finish(
        "rust tokio tasks",
        threads,
        commands,
        (open_s, commands_s),
        &rt,
        results,
    )
}

fn finish(
    system: &str,
    threads: usize,
    commands: usize,
    (open_s, commands_s): (f64, f64),
    rt: &tokio::runtime::Runtime,
    results: Vec<Outcome>,
) -> Result<Run> {
    let mut all_correct = true;
    let mut first_err = None;
    let mut sessions = Vec::new();
    for r in results {
        match r {
            Ok((ok, s)) => {
                all_correct &= ok;
                sessions.push(s);
            }
            Err(e) => {
                all_correct = false;
                first_err.get_or_insert(e);
            }
        }
    }
    rt.block_on(async {
        for s in sessions {
            let _ = s.close().await;
        }
    });
    if let Some(e) = first_err {
        return Err(e).context(format!("{system}: {threads} × {commands} commands"));
    }
    Ok(Run {
        threads,
        commands_each: commands,
        open_s,
        commands_s,
        all_correct,
    })
}
