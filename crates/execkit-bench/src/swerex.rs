//! The SWE-ReX server rows: `execkit swerex --target local` next to
//! upstream's own server, `swerex-remote` (FastAPI and pexpect, from the
//! `swe-rex` package in the bench venv), both on this host, both driven by
//! SWE-ReX's official client (`RemoteRuntime`) from one process —
//! `bench.py swerex-remote` — whose calls take turns between the servers
//! block by block, so both see the same minutes of a noisy machine.
//!
//! Each server gets a free loopback port, a clean environment like a fresh
//! sandbox's ([`sandboxed`]: an empty `HOME`, no `TERM`), and is waited
//! for by `GET /is_alive`; it is stopped by its PID (SIGTERM, then wait).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::python::Driver;
use crate::{Latency, Results};

/// The row of `execkit swerex`.
pub(crate) const EXECKIT: &str = "execkit swerex";
/// The row of upstream's server.
pub(crate) const UPSTREAM: &str = "swerex-remote";
/// The size of the text file written and read back.
pub(crate) const FILE_BYTES: u64 = 10_000_000;

/// How long a server may take to answer its first `GET /is_alive` (a cold
/// Python import of FastAPI on a busy machine takes seconds).
const READY_WITHIN: Duration = Duration::from_secs(120);

/// A file route's timings through one server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FileOp {
    pub(crate) system: String,
    /// `write_file` or `read_file`.
    pub(crate) op: String,
    pub(crate) bytes: u64,
    pub(crate) samples: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// Round trips, in blocks of `block`, and rounds of file transfers.
struct Plan {
    round_trips: usize,
    block: usize,
    files: usize,
}

/// What the client measured through one server.
#[derive(Deserialize)]
struct Measured {
    samples_s: BTreeMap<String, Vec<f64>>,
    errors: BTreeMap<String, Failed>,
}

#[derive(Deserialize)]
struct Failed {
    count: usize,
    first: String,
}

/// Measures both servers with the driver's venv and puts their rows (or
/// why there are none) in `r`.
pub(crate) fn rows(d: &Driver, execkit: &Path, quick: bool, r: &mut Results) {
    let plan = if quick {
        Plan {
            round_trips: 30,
            block: 10,
            files: 2,
        }
    } else {
        Plan {
            round_trips: 200,
            block: 20,
            files: 10,
        }
    };
    println!(
        "SWE-ReX servers through RemoteRuntime ({} round trips, {} × {} MB written and read, each)…",
        plan.round_trips,
        plan.files,
        FILE_BYTES / 1_000_000
    );
    if let Err(e) = measure(d, execkit, &plan, r) {
        r.notes.push(format!("SWE-ReX server rows skipped: {e:#}"));
    }
}

fn measure(d: &Driver, execkit: &Path, plan: &Plan, r: &mut Results) -> Result<()> {
    let dir = Scratch::new("swerex")?;
    let token = token()?;
    let venv_bin = d.venv_bin();
    let mut servers = Vec::new();
    for (name, start) in [
        (EXECKIT, start_execkit as StartFn),
        (UPSTREAM, start_upstream as StartFn),
    ] {
        let home = dir.make(&format!("{}-home", name.replace(' ', "-")))?;
        let files = dir.make(&format!("{}-files", name.replace(' ', "-")))?;
        let started = start(execkit, venv_bin, &token, &home).and_then(|mut s| {
            s.wait_ready(&token)?;
            Ok(s)
        });
        match started {
            Ok(s) => servers.push((s, files)),
            Err(e) => r.notes.push(format!("{name} rows skipped: {e:#}")),
        }
    }
    if servers.is_empty() {
        bail!("no server started");
    }
    let spec = serde_json::json!({
        "n": plan.round_trips,
        "block": plan.block,
        "files": plan.files,
        "bytes": FILE_BYTES,
        "servers": servers.iter().map(|(s, files)| serde_json::json!({
            "name": s.name,
            "url": format!("http://127.0.0.1:{}", s.port),
            "dir": files,
        })).collect::<Vec<_>>(),
    })
    .to_string();
    let measured: Result<BTreeMap<String, Measured>> = d.run_with(&["swerex-remote", &spec], |c| {
        c.env("EXECKIT_BENCH_SWEREX_TOKEN", &token);
    });
    for (s, _) in servers {
        let name = s.name;
        if let Err(e) = s.stop() {
            r.notes.push(format!("{name}: {e:#}"));
        }
    }
    for (system, m) in measured? {
        for (op, failed) in &m.errors {
            r.notes.push(format!(
                "{system} {op}: {} call(s) raised or answered wrongly (not timed); the first: {}",
                failed.count,
                one_line(&failed.first)
            ));
        }
        let samples = |op: &str| -> Vec<Duration> {
            m.samples_s
                .get(op)
                .into_iter()
                .flatten()
                .map(|s| Duration::from_secs_f64(*s))
                .collect()
        };
        let v = samples("run_in_session");
        if !v.is_empty() {
            r.round_trip.push(Latency::from(&system, v));
        }
        for op in ["write_file", "read_file"] {
            let v = samples(op);
            if v.is_empty() {
                continue;
            }
            let l = Latency::from(&system, v);
            r.swerex_files.push(FileOp {
                system: system.clone(),
                op: op.to_string(),
                bytes: FILE_BYTES,
                samples: l.samples,
                p50_ms: l.p50_ms,
                p99_ms: l.p99_ms,
            });
        }
    }
    Ok(())
}

/// The first line of an error message, at most 300 characters.
fn one_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    line.chars().take(300).collect()
}

type StartFn = fn(&Path, &Path, &str, &Path) -> Result<Server>;

/// `execkit swerex --target local`, the key in its environment.
fn start_execkit(execkit: &Path, venv_bin: &Path, token: &str, home: &Path) -> Result<Server> {
    let port = free_port()?;
    let mut cmd = Command::new(execkit);
    cmd.args(["swerex", "--target", "local", "--no-journal", "--port"])
        .arg(port.to_string());
    sandboxed(&mut cmd, home, venv_bin);
    cmd.env("EXECKIT_SWEREX_TOKEN", token);
    Server::spawn(EXECKIT, cmd, port, home)
}

/// Upstream's `swerex-remote` from the venv (its key can only be given on
/// its command line).
fn start_upstream(_: &Path, venv_bin: &Path, token: &str, home: &Path) -> Result<Server> {
    let bin = venv_bin.join("swerex-remote");
    if !bin.is_file() {
        bail!("no {} (swe-rex is not in the venv)", bin.display());
    }
    let port = free_port()?;
    let mut cmd = Command::new(bin);
    cmd.args(["--host", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .args(["--auth-token", token]);
    sandboxed(&mut cmd, home, venv_bin);
    Server::spawn(UPSTREAM, cmd, port, home)
}

/// The environment a server (and so the shells it starts) gets: what a
/// fresh sandbox has — `PATH` (the venv first), `LANG=C.UTF-8`, and an
/// empty `HOME`, which is also its working directory — and nothing of
/// this host's login. Upstream's shell is an interactive bash, which reads
/// `~/.bashrc`: a host's rc file (here, pyenv's prompt hook, which forks
/// at every prompt and sometimes takes far longer) would slow it and
/// break its 0.1 s wait for the prompt after the exit code. No `TERM`, as
/// in a container started without a terminal.
pub(crate) fn sandboxed(cmd: &mut Command, home: &Path, venv_bin: &Path) {
    cmd.env_clear()
        .env(
            "PATH",
            format!("{}:/usr/local/bin:/usr/bin:/bin", venv_bin.display()),
        )
        .env("HOME", home)
        .env("LANG", "C.UTF-8")
        .current_dir(home);
}

/// A server the bench started.
struct Server {
    name: &'static str,
    child: Child,
    port: u16,
    log: PathBuf,
    stopped: bool,
}

impl Server {
    /// Starts `cmd`, its output to a log file next to its home.
    fn spawn(name: &'static str, mut cmd: Command, port: u16, home: &Path) -> Result<Server> {
        let log = home.with_extension("log");
        let out = std::fs::File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Server {
            name,
            child,
            port,
            log,
            stopped: false,
        })
    }

    /// Polls `GET /is_alive` until it answers 200, the server exits, or
    /// [`READY_WITHIN`] passes.
    fn wait_ready(&mut self, token: &str) -> Result<()> {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "{} exited before it answered ({st}): {}",
                    self.name,
                    self.log_tail()
                );
            }
            if is_alive(self.port, token) {
                return Ok(());
            }
            if t.elapsed() > READY_WITHIN {
                bail!(
                    "{} did not answer GET /is_alive within {} s: {}",
                    self.name,
                    READY_WITHIN.as_secs(),
                    self.log_tail()
                );
            }
            // The poll interval (the server has no other readiness signal
            // for a client to wait on).
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    /// SIGTERM, then its exit (within 30 s: both close their sessions
    /// first); an error if it had to be killed.
    fn stop(mut self) -> Result<()> {
        self.stopped = true;
        terminate(&mut self.child, self.name)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = terminate(&mut self.child, self.name);
        }
    }
}

/// SIGTERM to our own child by its PID and wait for it; SIGKILL after 30 s.
fn terminate(child: &mut Child, name: &str) -> Result<()> {
    if child.try_wait()?.is_some() {
        bail!("{name} had exited before it was stopped");
    }
    // SAFETY: kill(2) on the PID of our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{name} ignored SIGTERM for 30 s and was killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `GET /is_alive` with the key: answered 200 with `is_alive` true.
fn is_alive(port: u16, token: &str) -> bool {
    let ask = || -> std::io::Result<String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET /is_alive HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {token}\r\nConnection: close\r\n\r\n"
        )?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply)
    };
    ask().is_ok_and(|reply| {
        reply.starts_with("HTTP/1.1 200") && reply.replace(' ', "").contains("\"is_alive\":true")
    })
}

/// A free loopback port for a server, below the ports client sockets
/// get (see `execkit_ports`).
fn free_port() -> Result<u16> {
    execkit_ports::daemon_port().with_context(|| {
        format!(
            "no free loopback port below {}",
            execkit_ports::ephemeral_low()
        )
    })
}

/// A fresh API key: 24 random bytes, hex.
fn token() -> Result<String> {
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A private scratch directory (homes, files, logs), removed on drop.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    /// `execkit-bench-NAME-PID` in the temporary directory.
    pub(crate) fn new(name: &str) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("execkit-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }

    /// A new empty directory `name` in it.
    pub(crate) fn make(&self, name: &str) -> Result<PathBuf> {
        let d = self.0.join(name);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
