//! The one test runner: the conformance suite and every hand-written
//! `harness = false` test file run on `libtest-mimic`, so their output,
//! flags (`--list`, filters, `--exact`, `--test-threads`, `--format`) and
//! summary line are libtest's; and one CI policy decides what a missing
//! daemon or tool means: under `CI=true` a failure, otherwise a test shown
//! as *ignored* with the reason — never a pass.

use std::fmt::Display;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Completion, Failed, Trial};

use super::report::{write_report, Outcome, Status};
use super::{cases, Case, Ctx, Fixture, Skip};

/// The line a conformance run prints before libtest's own output, so a
/// reader of a whole `cargo test` (`cargo xtask test`) can tell the
/// conformance summary that follows from unit tests' (it counts those from
/// the per-fixture reports instead).
pub const CONFORMANCE_BANNER: &str = "conformance suite on";

/// Whether this run is CI's (`CI=true` or `CI=1`): then nothing may be
/// skipped for want of infrastructure.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The outcome of a test whose infrastructure (a daemon, a tool, root) is
/// not there, the one CI policy: under `CI=true` a failure, otherwise
/// ignored with `reason`.
pub fn unprovisioned(reason: impl Display) -> Result<Completion, Failed> {
    if ci() {
        Err(format!("{reason} (required under CI=true)").into())
    } else {
        Ok(Completion::ignored_with(reason))
    }
}

/// What a hand-written test's body may return: nothing (it asserts and
/// panics), or a `Result` whose error is the failure.
pub trait TestResult {
    /// The libtest-mimic outcome.
    fn into_outcome(self) -> Result<Completion, Failed>;
}

impl TestResult for () {
    fn into_outcome(self) -> Result<Completion, Failed> {
        Ok(Completion::Completed)
    }
}

impl<E: Display> TestResult for Result<(), E> {
    fn into_outcome(self) -> Result<Completion, Failed> {
        self.map(|()| Completion::Completed)
            .map_err(|e| format!("{e:#}").into())
    }
}

impl TestResult for Result<Completion, Failed> {
    fn into_outcome(self) -> Result<Completion, Failed> {
        self
    }
}

/// A test that runs `body` with what `env` provisioned, or — when `env` is
/// the reason it is missing — follows [`unprovisioned`]. A panic in `body`
/// fails the test.
pub fn test_with<E, R>(
    name: impl Into<String>,
    env: &Result<E, String>,
    body: impl FnOnce(E) -> R + Send + 'static,
) -> Trial
where
    E: Clone + Send + 'static,
    R: TestResult,
{
    let env = env.clone();
    Trial::ignorable_test(name, move || match env {
        Ok(e) => body(e).into_outcome(),
        Err(why) => unprovisioned(why),
    })
}

/// Like [`test_with`] for an async body, run on a fresh multi-threaded
/// runtime of two workers (what `#[tokio::test(flavor = "multi_thread",
/// worker_threads = 2)]` gives a test).
pub fn async_test_with<E, F>(
    name: impl Into<String>,
    env: &Result<E, String>,
    body: impl FnOnce(E) -> F + Send + 'static,
) -> Trial
where
    E: Clone + Send + 'static,
    F: Future,
    F::Output: TestResult,
{
    test_with(name, env, move |e| block_on(body(e)).into_outcome())
}

/// Runs `fut` to its end on a fresh two-worker runtime.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(fut)
}

/// Entry point of a hand-written `harness = false` test file: runs `trials`
/// with libtest's arguments (in parallel, as libtest does).
pub fn harness(trials: Vec<Trial>) -> ExitCode {
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}

/// [`harness`] for files whose tests share one target and must not
/// overlap: one at a time unless `--test-threads` says otherwise.
pub fn harness_in_order(trials: Vec<Trial>) -> ExitCode {
    let mut args = Arguments::from_args();
    args.test_threads = args.test_threads.or(Some(1));
    libtest_mimic::run(&args, trials).exit_code()
}

/// Entry point for a transport's `tests/conformance.rs`: every case on
/// every fixture, one libtest test each, named `FIXTURE::CASE`. A case the
/// fixture's capabilities rule out, or that skips itself ([`Skip`]), shows
/// as ignored with the reason; an unavailable fixture follows
/// [`unprovisioned`] when it is `required`. `--test-threads` (default
/// `EXECKIT_CONFORMANCE_JOBS`, else 4) is how many cases run at once; a
/// heavy case runs alone.
pub fn main(fixtures: Vec<Fixture>) -> ExitCode {
    let mut args = Arguments::from_args();
    let jobs = args
        .test_threads
        .or_else(|| {
            std::env::var("EXECKIT_CONFORMANCE_JOBS")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(4)
        .max(1);
    args.test_threads = Some(jobs);
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime"),
    );
    let sem = Arc::new(tokio::sync::Semaphore::new(jobs));
    let spool_dir =
        std::env::temp_dir().join(format!("execkit-conformance-{}", std::process::id()));
    let report_dir = std::env::var_os("EXECKIT_CONFORMANCE_REPORT").map(PathBuf::from);
    let fixtures: Vec<Arc<Fixture>> = fixtures.into_iter().map(Arc::new).collect();
    let outcomes: Arc<Mutex<Vec<Vec<Outcome>>>> =
        Arc::new(Mutex::new(fixtures.iter().map(|_| Vec::new()).collect()));

    let mut trials = Vec::new();
    for (i, fixture) in fixtures.iter().enumerate() {
        for case in cases() {
            let name = format!("{}::{}", fixture.name, case.name);
            let ctx = Ctx {
                fixture: fixture.clone(),
                spool_dir: spool_dir.clone(),
            };
            let (rt, sem, outcomes) = (rt.clone(), sem.clone(), outcomes.clone());
            trials.push(Trial::ignorable_test(name, move || {
                let o = rt.block_on(run_case(case, ctx, &sem, jobs));
                let res = match o.status {
                    Status::Pass => Ok(Completion::Completed),
                    Status::Skip => Ok(Completion::ignored_with(&o.message)),
                    Status::Fail => Err(Failed::from(&o.message)),
                };
                outcomes.lock().expect("outcomes")[i].push(o);
                res
            }));
        }
    }
    if !args.list {
        let names: Vec<&str> = fixtures.iter().map(|f| f.name.as_str()).collect();
        println!("\n{CONFORMANCE_BANNER} {}", names.join(", "));
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if let (Some(dir), false) = (&report_dir, args.list) {
        let outcomes = outcomes.lock().expect("outcomes");
        for (fixture, outcomes) in fixtures.iter().zip(outcomes.iter()) {
            write_report(dir, fixture, outcomes);
        }
    }
    let _ = std::fs::remove_dir_all(&spool_dir);
    conclusion.exit_code()
}

/// One case on one fixture, to its outcome.
async fn run_case(case: Case, ctx: Ctx, sem: &tokio::sync::Semaphore, jobs: usize) -> Outcome {
    let outcome = |status, message: String| Outcome {
        name: case.name,
        status,
        ms: 0,
        message,
    };
    if let Some(reason) = &ctx.fixture.unavailable {
        if !ctx.fixture.required {
            return outcome(Status::Skip, reason.clone());
        }
        return match unprovisioned(reason) {
            Ok(_) => outcome(Status::Skip, reason.clone()),
            Err(failed) => outcome(Status::Fail, failed.message().unwrap_or("").into()),
        };
    }
    if let Some(why) = (case.needs)(ctx.caps()) {
        return outcome(Status::Skip, format!("needs {why}"));
    }
    // Heavy cases run alone so their load cannot push a timing-sensitive
    // neighbour past its bound.
    let permits = if case.heavy { jobs as u32 } else { 1 };
    let _permit = sem.acquire_many(permits).await;
    let start = Instant::now();
    let fut = tokio::spawn((case.run)(ctx));
    let res = tokio::time::timeout(Duration::from_secs(180), fut).await;
    let (status, message) = match res {
        Err(_) => (Status::Fail, "case did not finish within 180 s".to_string()),
        Ok(Err(join)) => (Status::Fail, format!("case panicked: {join}")),
        Ok(Ok(Ok(()))) => (Status::Pass, String::new()),
        Ok(Ok(Err(e))) => match e.downcast_ref::<Skip>() {
            Some(s) => (Status::Skip, s.0.clone()),
            None => (Status::Fail, format!("{e:#}")),
        },
    };
    Outcome {
        ms: start.elapsed().as_millis(),
        ..outcome(status, message)
    }
}
