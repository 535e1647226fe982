//! The conformance suite every transport runs (feature `testkit`).
//!
//! A transport crate's `tests/conformance.rs` (with `harness = false`) builds
//! one or more [`Fixture`]s — a target URL plus the [`Capabilities`] it
//! has — and calls [`main`]. Each case runs against a real shell on the real
//! target; a case the target cannot support is skipped by capability, never
//! deleted. The run prints one line per case and ends with
//! `conformance: N passed, N failed, N skipped`; when
//! `EXECKIT_CONFORMANCE_REPORT` names a directory, a JSON report per fixture
//! is written there (that is what `cargo xtask test` tabulates).

/// A [`Case`] running the async fn of the same name.
macro_rules! case {
    ($name:ident) => {
        case!($name, |_| None)
    };
    ($name:ident, $needs:expr) => {
        Case {
            name: stringify!($name),
            needs: $needs,
            run: |ctx| Box::pin($name(ctx)),
        }
    };
}

mod cases;
mod wild;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::{RunOptions, RunResult, Session, SessionConfig};

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
}

impl Capabilities {
    /// Everything a Linux target with a full shell offers.
    pub fn full() -> Self {
        Capabilities {
            host_signals: false,
            proc_fs: true,
            ansi_c_quoting: true,
            background_ignores_sigint: true,
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
    fixture: Arc<Fixture>,
    spool_dir: PathBuf,
}

/// A skip decided while running (e.g. a tool missing on the target).
#[derive(Debug)]
pub struct Skip(pub String);

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "skipped: {}", self.0)
    }
}

impl std::error::Error for Skip {}

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

/// Pids on *this* machine whose environment holds `EXECKIT_SID=<marker>`
/// (local shells, and remote ones when the test sshd runs here).
pub fn marked_here(marker: &str) -> Vec<u32> {
    let entry = format!("{}={marker}", crate::shell::MARKER_VAR);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|d| {
            let pid: u32 = d.file_name().to_str()?.parse().ok()?;
            let env = std::fs::read(d.path().join("environ")).ok()?;
            env.split(|&b| b == 0)
                .any(|e| e == entry.as_bytes())
                .then_some(pid)
        })
        .collect()
}

/// A tmpfs mounted on a directory (created if missing), unmounted on drop —
/// also when the test fails. Needs root.
#[derive(Debug)]
pub struct Tmpfs {
    /// Where it is mounted.
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs with `options` (e.g. `size=1m,mode=0700`) on `dir`, or
    /// says why it cannot be done here (not root, mount refused).
    pub fn mount(dir: &std::path::Path, options: &str) -> Result<Tmpfs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(dir);
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it: detach now, freed when released.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .status();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

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

/// Times `n` runs of `true` in `s` (each must exit 0): the warm round trip
/// the transports' `overhead` examples report.
pub async fn time_true(s: &mut Session, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = s.run("true", RunOptions::default()).await?;
        v.push(t.elapsed());
        if r.exit_code != Some(0) {
            bail!("`true` did not succeed: {r:?}");
        }
    }
    Ok(v)
}

/// The 50th and 99th percentile of `samples`, in milliseconds.
pub fn p50_p99_ms(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match samples.len() {
        0 => (f64::NAN, f64::NAN),
        n => (ms(samples[n / 2]), ms(samples[(n * 99 / 100).min(n - 1)])),
    }
}

type CaseFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// One conformance case.
pub struct Case {
    /// Name in reports.
    pub name: &'static str,
    /// Returns why the case cannot run on targets with these capabilities.
    pub needs: fn(&Capabilities) -> Option<&'static str>,
    /// The case itself.
    pub run: fn(Ctx) -> CaseFuture,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pass,
    Fail,
    Skip,
}

#[derive(Debug)]
struct Outcome {
    name: &'static str,
    status: Status,
    ms: u128,
    message: String,
}

/// Entry point for a transport's `tests/conformance.rs`: runs every case on
/// every fixture. Arguments: an optional name filter (substring); libtest
/// flags are accepted and ignored.
pub fn main(fixtures: Vec<Fixture>) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for f in &fixtures {
            for c in cases() {
                println!("{}::{}: test", f.name, c.name);
            }
        }
        return ExitCode::SUCCESS;
    }
    let filter: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let jobs: usize = std::env::var("EXECKIT_CONFORMANCE_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let spool_dir =
        std::env::temp_dir().join(format!("execkit-conformance-{}", std::process::id()));
    let report_dir = std::env::var_os("EXECKIT_CONFORMANCE_REPORT").map(PathBuf::from);

    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for fixture in fixtures {
        let fixture = Arc::new(fixture);
        println!("\nconformance on {} ({})", fixture.name, fixture.target);
        let selected: Vec<Case> = cases()
            .into_iter()
            .filter(|c| filter.is_empty() || filter.iter().any(|f| c.name.contains(f.as_str())))
            .collect();
        let outcomes = rt.block_on(run_fixture(&fixture, selected, jobs, ci, &spool_dir));
        let mut counts = (0, 0, 0);
        for o in &outcomes {
            match o.status {
                Status::Pass => counts.0 += 1,
                Status::Fail => counts.1 += 1,
                Status::Skip => counts.2 += 1,
            }
        }
        println!(
            "{}: {} passed, {} failed, {} skipped",
            fixture.name, counts.0, counts.1, counts.2
        );
        passed += counts.0;
        failed += counts.1;
        skipped += counts.2;
        if let Some(dir) = &report_dir {
            write_report(dir, &fixture, &outcomes);
        }
    }
    let _ = std::fs::remove_dir_all(&spool_dir);
    println!("\nconformance: {passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn run_fixture(
    fixture: &Arc<Fixture>,
    cases: Vec<Case>,
    jobs: usize,
    ci: bool,
    spool_dir: &std::path::Path,
) -> Vec<Outcome> {
    if let Some(reason) = &fixture.unavailable {
        let status = if ci && fixture.required {
            Status::Fail
        } else {
            Status::Skip
        };
        return cases
            .iter()
            .map(|c| {
                let o = Outcome {
                    name: c.name,
                    status,
                    ms: 0,
                    message: format!(
                        "{reason}{}",
                        if status == Status::Fail {
                            " (required under CI=true)"
                        } else {
                            ""
                        }
                    ),
                };
                print_outcome(fixture, &o);
                o
            })
            .collect();
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let mut handles = Vec::new();
    for case in cases {
        let ctx = Ctx {
            fixture: fixture.clone(),
            spool_dir: spool_dir.to_path_buf(),
        };
        let sem = sem.clone();
        let fixture = fixture.clone();
        handles.push(tokio::spawn(async move {
            if let Some(why) = (case.needs)(ctx.caps()) {
                let o = Outcome {
                    name: case.name,
                    status: Status::Skip,
                    ms: 0,
                    message: format!("needs {why}"),
                };
                print_outcome(&fixture, &o);
                return o;
            }
            // Heavy cases run alone so their load cannot push a
            // timing-sensitive neighbour past its bound.
            let permits = if cases::HEAVY.contains(&case.name) {
                jobs.max(1) as u32
            } else {
                1
            };
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
            let o = Outcome {
                name: case.name,
                status,
                ms: start.elapsed().as_millis(),
                message,
            };
            print_outcome(&fixture, &o);
            o
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        if let Ok(o) = h.await {
            out.push(o);
        }
    }
    out
}

fn print_outcome(fixture: &Fixture, o: &Outcome) {
    let word = match o.status {
        Status::Pass => "ok",
        Status::Fail => "FAILED",
        Status::Skip => "skipped",
    };
    let msg = if o.message.is_empty() {
        String::new()
    } else {
        format!(": {}", o.message)
    };
    println!(
        "test {}::{} ... {word} ({} ms){msg}",
        fixture.name, o.name, o.ms
    );
}

fn write_report(dir: &std::path::Path, fixture: &Fixture, outcomes: &[Outcome]) {
    let slug: String = fixture
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let cases: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            serde_json::json!({
                "name": o.name,
                "status": match o.status { Status::Pass => "pass", Status::Fail => "fail", Status::Skip => "skip" },
                "ms": o.ms as u64,
                "message": o.message,
            })
        })
        .collect();
    let count = |s| outcomes.iter().filter(|o| o.status == s).count();
    let report = serde_json::json!({
        "fixture": fixture.name,
        "target": fixture.target,
        "passed": count(Status::Pass),
        "failed": count(Status::Fail),
        "skipped": count(Status::Skip),
        "cases": cases,
    });
    let _ = std::fs::create_dir_all(dir);
    let path = dir.join(format!("{slug}.json"));
    if let Err(e) = std::fs::write(&path, report.to_string()) {
        eprintln!("cannot write {}: {e}", path.display());
    }
}

/// A loopback port reserved for a test's whole life: a TCP socket bound to
/// it that never listens. A connect to it is refused (RST), and no other
/// socket can bind it meanwhile — not even one with `SO_REUSEADDR`, which
/// shares a port only when both sockets set it. (A port bound and dropped
/// is free for the next comer, e.g. an `sshd` another test starts.)
#[derive(Debug)]
pub struct ReservedPort {
    _fd: std::os::fd::OwnedFd,
    /// The reserved port.
    pub port: u16,
}

impl ReservedPort {
    /// Binds a fresh loopback port and keeps it.
    #[allow(clippy::new_without_default)]
    pub fn new() -> ReservedPort {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: plain socket calls on a descriptor this function owns;
        // the address structs are fully initialised and sized correctly.
        unsafe {
            let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(raw);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
                len,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let mut got = len;
            let rc = libc::getsockname(
                fd.as_raw_fd(),
                std::ptr::addr_of_mut!(addr).cast::<libc::sockaddr>(),
                &mut got,
            );
            assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
            ReservedPort {
                _fd: fd,
                port: u16::from_be(addr.sin_port),
            }
        }
    }
}

/// A loopback listener that counts the connections it gets, for tests that
/// must prove nothing connected (a refused target never reached its host).
/// Each connection is accepted and closed at once, so a client that does
/// connect fails fast instead of waiting for a banner or a reply; the count
/// is raised before the close, so it is up to date by the time that client
/// has seen the close. Dropping it stops its thread.
#[derive(Debug)]
pub struct Tripwire {
    /// The loopback port it listens on.
    pub port: u16,
    count: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tripwire {
    /// Listens on a fresh loopback port.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Tripwire {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind a tripwire");
        let port = listener.local_addr().expect("tripwire address").port();
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                if conn.is_ok() {
                    c.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Tripwire {
            port,
            count,
            stop,
            thread: Some(thread),
        }
    }

    /// Connections seen so far.
    pub fn connections(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Tripwire {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept; the thread sees `stop` and ends.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A free loopback port for a daemon a test starts (an `sshd`), taken from
/// below the kernel's ephemeral range: ports handed out by `bind(…:0)` —
/// [`ReservedPort`]s, client sockets — come from that range, so a daemon
/// starting on a port it was told cannot race them for it. Candidates
/// start at an offset from the pid, so concurrent test processes spread
/// out; each is checked free by binding it.
pub fn daemon_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (start, span) = (10_000u16, low.saturating_sub(10_000).max(1000));
    let base = (std::process::id() % u32::from(span)) as u16;
    for _ in 0..span {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = start + (base.wrapping_add(k.wrapping_mul(7919)) % span);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below {low}");
}
