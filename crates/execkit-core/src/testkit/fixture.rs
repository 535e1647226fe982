//! A column of the matrix: the target, what it can do, and what a case
//! gets to work on it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::{RunOptions, Session, SessionConfig};

/// What a target can do; cases that need more are skipped.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Capabilities {
    /// Shell processes are children of this test process (signal
    /// dispositions inherited from us matter).
    pub host_signals: bool,
    /// `/proc` on the target shows the session's processes (leak checks).
    pub proc_fs: bool,
    /// The shell understands `$'…'` quoting (bash, busybox ash; not dash).
    pub ansi_c_quoting: bool,
    /// Background jobs ignore SIGINT as POSIX asks of a shell without job
    /// control (bash, dash; busybox ash lets Ctrl-C reach them).
    pub background_ignores_sigint: bool,
    /// The transport moves whole files natively ([`Transport::files`](crate::raw::Transport::files)).
    pub native_files: bool,
}

impl Capabilities {
    /// Everything a Linux target with a full shell offers.
    pub fn full() -> Self {
        Capabilities {
            host_signals: false,
            proc_fs: true,
            ansi_c_quoting: true,
            background_ignores_sigint: true,
            native_files: true,
        }
    }

    /// Sets `background_ignores_sigint`.
    pub fn background_ignores_sigint(mut self, on: bool) -> Self {
        self.background_ignores_sigint = on;
        self
    }

    /// Sets `host_signals`.
    pub fn host_signals(mut self, on: bool) -> Self {
        self.host_signals = on;
        self
    }

    /// Sets `ansi_c_quoting`.
    pub fn ansi_c_quoting(mut self, on: bool) -> Self {
        self.ansi_c_quoting = on;
        self
    }

    /// Sets `native_files`.
    pub fn native_files(mut self, on: bool) -> Self {
        self.native_files = on;
        self
    }

    /// Sets `proc_fs`.
    pub fn proc_fs(mut self, on: bool) -> Self {
        self.proc_fs = on;
        self
    }
}

/// One column of the matrix: a named target and what it can do.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Name in reports, e.g. `local (dash)`.
    pub name: String,
    /// Target URL.
    pub target: String,
    /// Capabilities.
    pub caps: Capabilities,
    /// Why the whole fixture cannot run here (e.g. the shell is not
    /// installed); every case is then skipped, or failed under `CI=true`
    /// when `required`.
    pub unavailable: Option<String>,
    /// Under `CI=true`, an unavailable fixture is a failure.
    pub required: bool,
}

impl Fixture {
    /// A fixture for `target`.
    pub fn new(name: impl Into<String>, target: impl Into<String>, caps: Capabilities) -> Self {
        Fixture {
            name: name.into(),
            target: target.into(),
            caps,
            unavailable: None,
            required: true,
        }
    }

    /// Marks the fixture as not runnable here, with the reason.
    pub fn unavailable(mut self, reason: impl Into<String>) -> Self {
        self.unavailable = Some(reason.into());
        self
    }
}

/// What a case gets: the fixture and helpers for opening sessions on it.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub(super) fixture: Arc<Fixture>,
    pub(super) spool_dir: PathBuf,
}

impl Ctx {
    /// The target under test.
    pub fn target(&self) -> &str {
        &self.fixture.target
    }

    /// Its capabilities.
    pub fn caps(&self) -> &Capabilities {
        &self.fixture.caps
    }

    /// A session config for this run (spool files go to a scratch dir).
    pub fn config(&self) -> SessionConfig {
        SessionConfig {
            spool_dir: self.spool_dir.clone(),
            ..SessionConfig::default()
        }
    }

    /// Opens a session with the default config.
    pub async fn open(&self) -> anyhow::Result<Session> {
        self.open_with(self.config()).await
    }

    /// Opens a session with `config`.
    pub async fn open_with(&self, config: SessionConfig) -> anyhow::Result<Session> {
        Session::open(self.target(), config)
            .await
            .with_context(|| format!("opening a session on {}", self.target()))
    }

    /// Processes on the target carrying `marker`, as `(pid, cmdline)`,
    /// found by a separate probe session.
    pub async fn marked(&self, marker: &str) -> anyhow::Result<Vec<(u32, String)>> {
        let mut probe = self.open().await?;
        let script = format!(
            "for d in /proc/[0-9]*; do if tr '\\000' '\\n' < \"$d/environ\" 2>/dev/null | grep -qxF 'EXECKIT_SID={marker}'; then \
             printf '%s %s\\n' \"${{d#/proc/}}\" \"$(tr '\\000' ' ' < \"$d/cmdline\" 2>/dev/null)\"; fi; done"
        );
        let r = probe
            .run(&script, RunOptions::timeout(Duration::from_secs(30)))
            .await?;
        probe.close().await?;
        if r.exit_code != Some(0) {
            bail!("process probe failed: {r:?}");
        }
        Ok(r.output
            .lines()
            .filter_map(|l| {
                let (pid, cmd) = l.split_once(' ')?;
                Some((pid.parse().ok()?, cmd.trim().to_string()))
            })
            .collect())
    }

    /// Marked processes other than `spare` (normally the live shell).
    pub async fn leaked(&self, marker: &str, spare: &[u32]) -> anyhow::Result<Vec<(u32, String)>> {
        // Killed processes may take a moment to be reaped.
        let mut left = Vec::new();
        for _ in 0..20 {
            left = self.marked(marker).await?;
            left.retain(|(p, _)| !spare.contains(p));
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(left)
    }

    /// Kills a process on the target from outside the session under test.
    pub async fn kill_from_outside(&self, pid: u32) -> anyhow::Result<()> {
        let mut s = self.open().await?;
        let r = s
            .run(
                &format!("kill -9 {pid}"),
                RunOptions::timeout(Duration::from_secs(10)),
            )
            .await?;
        s.close().await?;
        if r.exit_code != Some(0) {
            bail!("kill -9 {pid} failed: {r:?}");
        }
        Ok(())
    }
}
