//! The conformance suite every transport runs, and the one test runner
//! (feature `testkit`).
//!
//! A transport crate's `tests/conformance.rs` (with `harness = false`) builds
//! one or more [`Fixture`]s — a target URL plus the [`Capabilities`] it
//! has — and calls [`main`]. Each case runs against a real shell on the real
//! target; a case the target cannot support is skipped by capability, never
//! deleted. The run is a libtest run (`libtest-mimic`): one test per fixture
//! and case, a skip shown as *ignored* with its reason; when
//! `EXECKIT_CONFORMANCE_REPORT` names a directory, a JSON report per fixture
//! is written there (that is what `cargo xtask test` tabulates).
//!
//! Other `harness = false` test files run on the same runner ([`harness`],
//! [`test_with`], [`async_test_with`]) and decide what missing
//! infrastructure means by one policy, [`unprovisioned`].

/// A [`Case`] running the async fn of the same name.
macro_rules! case {
    ($name:ident) => {
        case!($name, |_| None)
    };
    ($name:ident, $needs:expr) => {
        Case {
            name: stringify!($name),
            heavy: false,
            needs: $needs,
            run: |ctx| Box::pin($name(ctx)),
        }
    };
}

mod cases;
mod fixture;
mod host;
mod report;
mod runner;
mod wild;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::{RunOptions, RunResult, Session};

pub use fixture::{Capabilities, Ctx, Fixture};
pub use host::{daemon_port, marked_here, ReservedPort, Tmpfs, Tripwire};
pub use libtest_mimic;
pub use runner::{
    async_test_with, block_on, ci, harness, harness_in_order, main, test_with, unprovisioned,
    TestResult, CONFORMANCE_BANNER,
};

/// A skip decided while running (e.g. a tool missing on the target).
#[derive(Debug)]
pub struct Skip(pub String);

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "skipped: {}", self.0)
    }
}

impl std::error::Error for Skip {}

/// Runs `cmd` with a timeout of `secs` and fails on an engine error.
pub async fn run(s: &mut Session, cmd: &str, secs: u64) -> anyhow::Result<RunResult> {
    s.run(cmd, RunOptions::timeout(Duration::from_secs(secs)))
        .await
        .with_context(|| format!("running {cmd:?}"))
}

/// Runs `cmd` and requires exit 0; returns the output.
pub async fn ok(s: &mut Session, cmd: &str) -> anyhow::Result<String> {
    let r = run(s, cmd, 30).await?;
    if r.exit_code != Some(0) || r.timed_out || r.session_lost {
        bail!("{cmd:?} did not succeed: {r:?}");
    }
    Ok(r.output)
}

type CaseFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// One conformance case.
pub struct Case {
    /// Name in reports.
    pub name: &'static str,
    /// Loads the target enough to disturb others: it runs alone.
    pub heavy: bool,
    /// Returns why the case cannot run on targets with these capabilities.
    pub needs: fn(&Capabilities) -> Option<&'static str>,
    /// The case itself.
    pub run: fn(Ctx) -> CaseFuture,
}

impl Case {
    /// Marks the case heavy: it runs alone.
    pub fn heavy(mut self) -> Self {
        self.heavy = true;
        self
    }
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case").field("name", &self.name).finish()
    }
}

/// Every case of the suite.
pub fn cases() -> Vec<Case> {
    let mut all = cases::all();
    all.extend(wild::all());
    all
}
