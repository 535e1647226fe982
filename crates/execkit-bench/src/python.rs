//! The Python rows: `crates/execkit-py/bench/bench.py` run with the python
//! of a venv holding the execkit wheel, pexpect and swe-rex (`cargo xtask
//! bench` builds both and passes `--python` and `--py-script`). One-shot
//! modes print one JSON value; `serve` keeps a warm `execkit.Session` and
//! answers blocks of round trips on request, so they alternate with the
//! Rust samples of the same minute.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

/// The venv's python and the driver script.
#[derive(Debug, Clone)]
pub(crate) struct Driver {
    pub(crate) python: PathBuf,
    pub(crate) script: PathBuf,
}

#[derive(Deserialize)]
struct Samples {
    samples_s: Vec<f64>,
}

fn durations(s: Samples) -> Vec<Duration> {
    s.samples_s
        .into_iter()
        .map(Duration::from_secs_f64)
        .collect()
}

impl Driver {
    /// The venv's `bin` directory (where its python and `swerex-remote` are).
    pub(crate) fn venv_bin(&self) -> &Path {
        self.python.parent().unwrap_or(Path::new("/"))
    }

    /// One mode of the driver, its JSON output parsed.
    pub(crate) fn run<T: for<'de> Deserialize<'de>>(&self, args: &[&str]) -> Result<T> {
        self.run_with(args, |_| {})
    }

    /// [`Driver::run`], its command set up by `setup` first (environment,
    /// working directory).
    pub(crate) fn run_with<T: for<'de> Deserialize<'de>>(
        &self,
        args: &[&str],
        setup: impl FnOnce(&mut Command),
    ) -> Result<T> {
        let mut cmd = Command::new(&self.python);
        setup(&mut cmd);
        let out = cmd
            .arg(&self.script)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.python.display()))?;
        let mode = args.first().copied().unwrap_or_default();
        if !out.status.success() {
            // All of it on the console, its last line (the exception) in
            // the report's note.
            let err = String::from_utf8_lossy(&out.stderr);
            eprintln!("bench.py {mode}: {}", err.trim_end());
            let last = err.lines().rev().find(|l| !l.trim().is_empty());
            bail!(
                "bench.py {mode} failed ({}): {}",
                out.status,
                last.unwrap_or("").trim()
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| format!("bench.py {mode} output"))
    }

    /// Round-trip samples of a one-shot mode (`pexpect`, `swerex`, …),
    /// its command set up by `setup`.
    pub(crate) fn samples_with(
        &self,
        args: &[&str],
        setup: impl FnOnce(&mut Command),
    ) -> Result<Vec<Duration>> {
        Ok(durations(self.run_with(args, setup)?))
    }

    /// A warm `execkit.Session` in a driver process, ready for blocks.
    pub(crate) fn serve(&self) -> Result<Served> {
        let child = Command::new(&self.python)
            .arg(&self.script)
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", self.python.display()))?;
        let mut s = Served {
            child,
            stdin: None,
            stdout: None,
        };
        s.stdin = s.child.stdin.take();
        s.stdout = s.child.stdout.take().map(BufReader::new);
        #[derive(Deserialize)]
        struct Ready {
            ready: bool,
        }
        let ready: Ready = s.reply()?;
        ensure!(ready.ready, "bench.py serve did not start");
        Ok(s)
    }
}

/// A running `bench.py serve`; stopped (by its PID) when dropped.
#[derive(Debug)]
pub(crate) struct Served {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Served {
    fn reply<T: for<'de> Deserialize<'de>>(&mut self) -> Result<T> {
        let mut line = String::new();
        let stdout = self.stdout.as_mut().context("bench.py serve has ended")?;
        if stdout.read_line(&mut line)? == 0 {
            bail!("bench.py serve ended ({:?})", self.child.try_wait()?);
        }
        serde_json::from_str(&line).with_context(|| format!("bench.py serve said {line:?}"))
    }

    /// `k` round trips of `true` through `Session.run`, timed in Python.
    pub(crate) fn block(&mut self, k: usize) -> Result<Vec<Duration>> {
        let stdin = self.stdin.as_mut().context("bench.py serve has ended")?;
        writeln!(stdin, "{k}")?;
        stdin.flush()?;
        Ok(durations(self.reply()?))
    }

    /// Ends the driver: an empty line, then its exit (it closes its session).
    pub(crate) fn finish(mut self) -> Result<()> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        let st = self.child.wait()?;
        ensure!(st.success(), "bench.py serve exited with {st}");
        Ok(())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // Only on an error path: our own child, by its PID.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
