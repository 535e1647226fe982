//! execkit-bench: measures execkit next to the ways agents run commands
//! today, in one run so ratios are fair on a noisy shared machine. Run it
//! through `cargo xtask bench [--quick] [--transport …]`, which builds it in
//! release mode, provisions dockerd/sshd and writes `docs/BENCHMARKS.md`.
//! `execkit-bench soak [--minutes N]` is the resource soak instead (see
//! `soak.rs`; run through `cargo xtask soak`).

mod baselines;
mod contained;
mod floor;
mod load;
mod python;
mod report;
mod soak;
mod swerex;
mod timing;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use execkit_core::{RunOptions, Session, SessionConfig};
use execkit_docker as _;
use execkit_local as _;
use execkit_ssh as _;
use serde::{Deserialize, Serialize};
use timing::time_true;

/// Latency samples of one system.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Latency {
    pub(crate) system: String,
    pub(crate) samples: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

impl Latency {
    fn from(system: &str, mut v: Vec<Duration>) -> Latency {
        v.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let p99 = v[((v.len() * 99).div_ceil(100))
            .saturating_sub(1)
            .min(v.len() - 1)];
        Latency {
            system: system.to_string(),
            samples: v.len(),
            p50_ms: ms(v[v.len() / 2]),
            p99_ms: ms(p99),
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Results {
    pub(crate) quick: bool,
    pub(crate) round_trip: Vec<Latency>,
    pub(crate) start: Vec<Latency>,
    pub(crate) throughput: Vec<Throughput>,
    pub(crate) concurrent: Option<Concurrent>,
    pub(crate) serve_idle: Option<ServeIdle>,
    /// The threads load: Python threads and its Rust counterparts.
    #[serde(default)]
    pub(crate) threads: Vec<ThreadsLoad>,
    /// The Python wheel measured.
    #[serde(default)]
    pub(crate) wheel: Option<Wheel>,
    /// Versions of python and the Python packages measured.
    #[serde(default)]
    pub(crate) python_versions: Option<std::collections::BTreeMap<String, Option<String>>>,
    /// `write_file` / `read_file` through the SWE-ReX servers.
    #[serde(default)]
    pub(crate) swerex_files: Vec<swerex::FileOp>,
    /// A partial run (`--only swerex`): only those rows.
    #[serde(default)]
    pub(crate) only: Option<String>,
    pub(crate) notes: Vec<String>,
}

/// The threads load over `runs` runs: the median run (by its commands
/// phase), and whether every run was all correct.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ThreadsLoad {
    pub(crate) system: String,
    pub(crate) threads: usize,
    pub(crate) commands_each: usize,
    pub(crate) runs: usize,
    /// Opening the sessions (every thread its own).
    pub(crate) open_s: f64,
    /// Running the commands, all sessions open.
    pub(crate) commands_s: f64,
    pub(crate) all_correct: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Wheel {
    pub(crate) file: String,
    pub(crate) mb: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Throughput {
    pub(crate) system: String,
    pub(crate) bytes: u64,
    pub(crate) mb_per_s: f64,
    pub(crate) peak_rss_mb: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Concurrent {
    pub(crate) sessions: usize,
    pub(crate) commands_each: usize,
    pub(crate) wall_s: f64,
    pub(crate) all_correct: bool,
    pub(crate) kb_per_session: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ServeIdle {
    pub(crate) sessions: usize,
    pub(crate) rss_mb: f64,
    pub(crate) kb_per_session: f64,
    pub(crate) cpu_ms_over_10s: f64,
}

struct Args {
    quick: bool,
    transports: Vec<String>,
    execkit: Option<PathBuf>,
    out: Option<PathBuf>,
    python: Option<PathBuf>,
    py_script: Option<PathBuf>,
    wheel: Option<PathBuf>,
    /// `swerex` or `contained`: only those rows.
    only: Option<String>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        quick: false,
        transports: vec!["local".into(), "docker".into(), "ssh".into()],
        execkit: None,
        out: None,
        python: None,
        py_script: None,
        wheel: None,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--transport" => {
                let t = it.next().context("--transport needs a value")?;
                a.transports = if t == "all" { a.transports } else { vec![t] };
            }
            "--execkit" => a.execkit = Some(it.next().context("--execkit needs a path")?.into()),
            "--out" => a.out = Some(it.next().context("--out needs a directory")?.into()),
            "--python" => a.python = Some(it.next().context("--python needs a path")?.into()),
            "--py-script" => {
                a.py_script = Some(it.next().context("--py-script needs a path")?.into())
            }
            "--wheel" => a.wheel = Some(it.next().context("--wheel needs a path")?.into()),
            "--only" => match it.next().as_deref() {
                Some(o @ ("swerex" | "contained")) => a.only = Some(o.into()),
                other => bail!("--only takes `swerex` or `contained`, not {other:?}"),
            },
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    raise_fd_limit();
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some("--child") => return child(&argv[2..]),
        Some("soak") => return soak::main(&argv[2..]),
        _ => {}
    }
    let args = parse_args()?;
    // One thread, as `execkit exec` runs.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut r = Results {
        quick: args.quick,
        only: args.only.clone(),
        ..Results::default()
    };
    let n = if args.quick { 100 } else { 500 };

    // The Python driver, when `cargo xtask bench` made its venv.
    let py = python_driver(&args, &mut r);
    let starts = if args.quick { 10 } else { 50 };
    match args.only.as_deref() {
        Some("swerex") => {
            swerex_rows(&args, py.as_ref(), &mut r);
            return finish(&args, &r);
        }
        Some(_) => {
            rt.block_on(contained::rows(n, starts, &mut r))?;
            return finish(&args, &r);
        }
        None => {}
    }
    let mut served = match &py {
        Some(d) => match d.serve() {
            Ok(s) => Some(s),
            Err(e) => {
                r.notes
                    .push(format!("execkit python round trips skipped: {e:#}"));
                None
            }
        },
        None => None,
    };

    // Round trips of `true`, local systems first.
    println!("round trip of `true` ({n} per system)…");
    let (floor, local, from_py) = rt.block_on(floor_and_local(n, served.as_mut()))?;
    r.round_trip.push(Latency::from("raw-pty-floor", floor));
    r.round_trip.push(Latency::from("execkit local", local));
    if let Some(s) = served {
        s.finish()?;
        r.round_trip.push(Latency::from("execkit python", from_py));
    }

    let v = (0..n)
        .map(|_| baselines::fresh_bash_c())
        .collect::<Result<Vec<_>>>()?;
    r.round_trip.push(Latency::from("fresh-bash-c", v));

    match baselines::Tmux::start() {
        Ok(mut t) => {
            let v = (0..n.min(200))
                .map(|_| t.round_trip("true", Duration::from_millis(10)))
                .collect::<Result<Vec<_>>>()?;
            r.round_trip.push(Latency::from("tmux-poll-10ms", v));
            let m = if args.quick { 10 } else { 40 };
            let v = (0..m)
                .map(|_| t.round_trip("true", Duration::from_millis(500)))
                .collect::<Result<Vec<_>>>()?;
            r.round_trip.push(Latency::from("tmux-poll-500ms", v));
        }
        Err(e) => r.notes.push(format!("tmux baselines skipped: {e:#}")),
    }

    if let Some(d) = &py {
        python_baselines(d, args.quick, n, &mut r);
    }
    swerex_rows(&args, py.as_ref(), &mut r);

    // Session start to first result.
    let v = rt.block_on(execkit_starts("local:/bin/bash", starts))?;
    r.start.push(Latency::from("execkit local", v));
    if let Err(e) = rt.block_on(contained::rows(n, starts, &mut r)) {
        r.notes.push(format!("contained rows skipped: {e:#}"));
    }

    remote_rows(&rt, &args, n, starts, &mut r);

    // Throughput, each in a child process so its peak RSS is its own.
    let bytes: u64 = if args.quick { 20_000_000 } else { 100_000_000 };
    println!("throughput ({} MB)…", bytes / 1_000_000);
    for system in ["raw-pty-floor", "execkit local"] {
        r.throughput.push(run_child::<Throughput>(&[
            "throughput",
            system,
            &bytes.to_string(),
        ])?);
    }

    // Many concurrent local sessions.
    let sessions = if args.quick { 200 } else { 1000 };
    println!("{sessions} concurrent local sessions…");
    r.concurrent = Some(run_child::<Concurrent>(&[
        "concurrent",
        &sessions.to_string(),
    ])?);

    // Threads driving their own sessions: Python's and Rust's.
    threads_load(py.as_ref(), args.quick, &mut r);
    if let Some(w) = &args.wheel {
        match std::fs::metadata(w) {
            Ok(m) => {
                r.wheel = Some(Wheel {
                    file: w
                        .file_name()
                        .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
                    mb: m.len() as f64 / 1e6,
                })
            }
            Err(e) => r.notes.push(format!("wheel {}: {e}", w.display())),
        }
    }

    // Idle sessions held by `execkit serve`.
    if let Some(bin) = &args.execkit {
        println!("{sessions} idle sessions in execkit serve…");
        match serve_idle(bin, sessions) {
            Ok(s) => r.serve_idle = Some(s),
            Err(e) => r.notes.push(format!("serve idle skipped: {e:#}")),
        }
    }

    finish(&args, &r)
}

/// The table on stdout and, with `--out`, the report.
fn finish(args: &Args, r: &Results) -> Result<()> {
    let _ = std::fs::remove_dir_all(bench_config().spool_dir);
    let table = report::table(r);
    println!("\n{table}");
    if let Some(dir) = &args.out {
        report::write(dir, r)?;
        println!("wrote {}", dir.join("BENCHMARKS.md").display());
    }
    Ok(())
}

/// The SWE-ReX server rows (`swerex.rs`): they need the Python driver's
/// venv (the official client, upstream's server) and the `execkit` binary.
fn swerex_rows(args: &Args, py: Option<&python::Driver>, r: &mut Results) {
    match (py, &args.execkit) {
        (Some(d), Some(bin)) => match std::path::absolute(bin) {
            Ok(bin) => swerex::rows(d, &bin, args.quick, r),
            Err(e) => r.notes.push(format!("SWE-ReX server rows skipped: {e}")),
        },
        (None, _) => r
            .notes
            .push("SWE-ReX server rows skipped: no Python driver".into()),
        (_, None) => r
            .notes
            .push("SWE-ReX server rows skipped: no --execkit (cargo xtask bench passes it)".into()),
    }
}

/// Docker and SSH rows, when their targets were provisioned.
fn remote_rows(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    n: usize,
    starts: usize,
    r: &mut Results,
) {
    let want = |t: &str| args.transports.iter().any(|x| x == t);
    if want("docker") {
        match std::env::var("EXECKIT_TEST_DOCKER_CONTAINER") {
            Ok(c) => {
                let target = format!("docker:{c}");
                let res = (|| -> Result<()> {
                    if execkit_core::connect(&target).is_err() {
                        bail!("this build has no docker transport");
                    }
                    let v = rt.block_on(execkit_round_trips(&target, n))?;
                    r.round_trip.push(Latency::from("execkit docker", v));
                    let v = (0..n.min(100))
                        .map(|_| baselines::docker_exec_oneshot(&c))
                        .collect::<Result<Vec<_>>>()?;
                    r.round_trip.push(Latency::from("docker-exec-oneshot", v));
                    let v = rt.block_on(execkit_starts(&target, starts))?;
                    r.start.push(Latency::from("execkit docker", v));
                    Ok(())
                })();
                if let Err(e) = res {
                    r.notes.push(format!("docker rows skipped: {e:#}"));
                }
            }
            Err(_) => r
                .notes
                .push("docker rows skipped: no test container (run via cargo xtask bench)".into()),
        }
    }
    if want("ssh") {
        match std::env::var("EXECKIT_TEST_SSH_URL") {
            Ok(url) => {
                let res = (|| -> Result<()> {
                    if execkit_core::connect(&url).is_err() {
                        bail!("this build has no ssh transport");
                    }
                    let v = rt.block_on(execkit_round_trips(&url, n))?;
                    r.round_trip.push(Latency::from("execkit ssh", v));
                    let args = ssh_oneshot_args(&url)?;
                    let v = (0..n.min(100))
                        .map(|_| baselines::ssh_oneshot(&args))
                        .collect::<Result<Vec<_>>>()?;
                    r.round_trip.push(Latency::from("ssh-oneshot", v));
                    let v = rt.block_on(execkit_starts(&url, starts))?;
                    r.start.push(Latency::from("execkit ssh", v));
                    Ok(())
                })();
                if let Err(e) = res {
                    r.notes.push(format!("ssh rows skipped: {e:#}"));
                }
            }
            Err(_) => r
                .notes
                .push("ssh rows skipped: no test sshd (run via cargo xtask bench)".into()),
        }
    }
}

/// OpenSSH client arguments equivalent to an execkit ssh:// target.
fn ssh_oneshot_args(url: &str) -> Result<Vec<String>> {
    let rest = url.strip_prefix("ssh://").context("not an ssh:// URL")?;
    let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (user_host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p),
        None => (authority, "22"),
    };
    let mut args = vec![
        "-p".to_string(),
        port.to_string(),
        "-o".into(),
        "BatchMode=yes".into(),
    ];
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("identity", v)) => args.extend([
                "-i".to_string(),
                v.to_string(),
                "-o".into(),
                "IdentitiesOnly=yes".into(),
            ]),
            Some(("known_hosts", v)) => {
                args.extend(["-o".to_string(), format!("UserKnownHostsFile={v}")])
            }
            _ => {}
        }
    }
    args.push(user_host.to_string());
    Ok(args)
}

/// The config of every bench session: no observer (no journal, no
/// console), unless `EXECKIT_BENCH_OBSERVER` is set (a profiling aid):
/// then each session gets its own, with the journal off, built as the
/// Python module builds one (a fresh redactor that learns the environment).
pub(crate) fn bench_config() -> SessionConfig {
    let mut c = SessionConfig::default();
    c.spool_dir = std::env::temp_dir().join(format!("execkit-bench-spool-{}", std::process::id()));
    if std::env::var_os("EXECKIT_BENCH_OBSERVER").is_some() {
        let r = execkit_core::redact::Redactor::default();
        let env: Vec<(String, String)> = std::env::vars().collect();
        r.learn_env(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c.observer = Some(std::sync::Arc::new(execkit_core::Observer::new(
            execkit_core::journal::Journal::disabled_with(r),
        )));
    }
    c
}

async fn execkit_round_trips(target: &str, n: usize) -> Result<Vec<Duration>> {
    let mut s = Session::open(target, bench_config()).await?;
    time_true(&mut s, 20).await.context(target.to_string())?; // warm up
    let v = time_true(&mut s, n).await.context(target.to_string())?;
    s.close().await?;
    Ok(v)
}

/// Python's round trips come in blocks of this many between the Rust ones.
pub(crate) const PY_BLOCK: usize = 25;

/// Round trips of the raw PTY floor and of an execkit local session,
/// alternating one command each: on a shared machine whose speed drifts
/// from minute to minute (CPU placement, neighbours), only samples taken
/// side by side give a fair ratio. With `py`, every [`PY_BLOCK`] pairs are
/// followed by as many round trips of `execkit.Session.run` in the Python
/// driver (returned third), so it too sees the same minutes; each block,
/// Python's and Rust's, starts with one untimed round trip (its process
/// was idle during the other's block).
async fn floor_and_local(
    n: usize,
    mut py: Option<&mut python::Served>,
) -> Result<(Vec<Duration>, Vec<Duration>, Vec<Duration>)> {
    let mut floor = floor::RawPty::start()?;
    let mut s = Session::open("local:/bin/bash", bench_config()).await?;
    for _ in 0..20 {
        floor.round_trip("true")?; // warm up
        time_true(&mut s, 1).await?;
    }
    let (mut f, mut e) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut p = Vec::with_capacity(n);
    while f.len() < n {
        let k = PY_BLOCK.min(n - f.len());
        if py.is_some() {
            // Untimed, as the driver does: this process was idle meanwhile.
            floor.round_trip("true")?;
            time_true(&mut s, 1).await?;
        }
        for _ in 0..k {
            f.push(floor.round_trip("true")?.0);
            e.extend(time_true(&mut s, 1).await.context("local:/bin/bash")?);
        }
        if let Some(py) = py.as_deref_mut() {
            p.extend(py.block(k).context("execkit python round trips")?);
        }
    }
    s.close().await?;
    Ok((f, e, p))
}

/// The driver of the Python rows, if `--python` and `--py-script` were
/// given and it runs (the versions it reports go in the report).
fn python_driver(args: &Args, r: &mut Results) -> Option<python::Driver> {
    let (Some(python), Some(script)) = (&args.python, &args.py_script) else {
        r.notes.push(
            "Python rows skipped: no --python / --py-script (cargo xtask bench passes them)".into(),
        );
        return None;
    };
    // Absolute: some modes run in another working directory.
    let (python, script) = match (std::path::absolute(python), std::path::absolute(script)) {
        (Ok(p), Ok(s)) => (p, s),
        (Err(e), _) | (_, Err(e)) => {
            r.notes.push(format!("Python rows skipped: {e}"));
            return None;
        }
    };
    let d = python::Driver { python, script };
    match d.run(&["versions"]) {
        Ok(v) => {
            r.python_versions = Some(v);
            Some(d)
        }
        Err(e) => {
            r.notes.push(format!("Python rows skipped: {e:#}"));
            None
        }
    }
}

/// pexpect with a fixed prompt (its default 50 ms delay before each send,
/// and with that delay off) and SWE-ReX's `LocalRuntime` (in the clean
/// environment its server gets in `swerex.rs`: its shell reads `~/.bashrc`).
fn python_baselines(d: &python::Driver, quick: bool, n: usize, r: &mut Results) {
    let delayed = if quick { 20 } else { 100 };
    let swerex = if quick { 10 } else { 50 };
    println!("pexpect and SWE-ReX round trips…");
    let rows: [(&str, Vec<String>); 3] = [
        (
            "pexpect-prompt",
            vec!["pexpect".into(), delayed.to_string()],
        ),
        (
            "pexpect-prompt-nodelay",
            vec!["pexpect".into(), n.to_string(), "none".into()],
        ),
        ("swe-rex-local", vec!["swerex".into(), swerex.to_string()]),
    ];
    let scratch = swerex::Scratch::new("swerex-local");
    for (system, argv) in rows {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let got = if system == "swe-rex-local" {
            match &scratch {
                Ok(s) => s.make("home").and_then(|home| {
                    d.samples_with(&argv, |c| swerex::sandboxed(c, &home, d.venv_bin()))
                }),
                Err(e) => Err(anyhow::anyhow!("{e:#}")),
            }
        } else {
            d.samples_with(&argv, |_| {})
        };
        match got {
            Ok(v) => r.round_trip.push(Latency::from(system, v)),
            Err(e) => r.notes.push(format!("{system} skipped: {e:#}")),
        }
    }
}

/// [`load::THREADS`] threads × [`load::COMMANDS`] commands in as many
/// sessions: from one Python interpreter, from Rust OS threads and from
/// tokio tasks, in alternating rounds; each row is the median round.
fn threads_load(py: Option<&python::Driver>, quick: bool, r: &mut Results) {
    let rounds = if quick { 1 } else { 3 };
    let (t, c) = (load::THREADS.to_string(), load::COMMANDS.to_string());
    println!(
        "{t} threads × {c} commands ({rounds} round(s): Rust threads, Python threads, Rust tasks)…"
    );
    let mut runs: Vec<Vec<load::Run>> = vec![Vec::new(); 3];
    let mut failed = [false; 3];
    for _ in 0..rounds {
        let tries: [(usize, &str, Result<load::Run>); 3] = [
            (0, "rust os threads", run_child(&["threads", &t, &c])),
            (
                1,
                "python threads",
                match py {
                    Some(d) => d.run(&["threads", &t, &c]),
                    None => Err(anyhow::anyhow!("no Python driver")),
                },
            ),
            (2, "rust tokio tasks", run_child(&["tasks", &t, &c])),
        ];
        for (i, system, res) in tries {
            match res {
                Ok(run) => runs[i].push(run),
                Err(e) if !failed[i] => {
                    failed[i] = true;
                    if py.is_some() || i != 1 {
                        r.notes.push(format!("{system} load: {e:#}"));
                    }
                }
                Err(_) => {}
            }
        }
    }
    for (i, system) in ["rust os threads", "python threads", "rust tokio tasks"]
        .into_iter()
        .enumerate()
    {
        if let Some(row) = load::summary(system, &runs[i]) {
            r.threads.push(row);
        }
    }
}

/// Round trips of `true` in a warm local session, and this process's CPU
/// time (µs) and voluntary context switches per command while they ran.
async fn profiled_round_trips(n: usize) -> Result<(Vec<Duration>, (f64, f64))> {
    fn usage() -> (f64, f64) {
        // SAFETY: getrusage fills a local struct.
        let u = unsafe {
            let mut u: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut u);
            u
        };
        let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
        (us(u.ru_utime) + us(u.ru_stime), u.ru_nvcsw as f64)
    }
    let mut s = Session::open("local:/bin/bash", bench_config()).await?;
    time_true(&mut s, 20).await?;
    let before = usage();
    let v = time_true(&mut s, n).await?;
    let after = usage();
    s.close().await?;
    let per = |a: f64, b: f64| (b - a) / n as f64;
    Ok((v, (per(before.0, after.0), per(before.1, after.1))))
}

async fn execkit_starts(target: &str, n: usize) -> Result<Vec<Duration>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut s = Session::open(target, bench_config()).await?;
        let res = s.run("true", RunOptions::default()).await?;
        v.push(t.elapsed());
        ensure!(res.exit_code == Some(0));
        s.close().await?;
    }
    Ok(v)
}

fn run_child<T: for<'de> Deserialize<'de>>(args: &[&str]) -> Result<T> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("--child")
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "child {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("child {args:?} output"))
}

/// Child modes: one measurement in a fresh process, JSON on stdout.
fn child(args: &[String]) -> Result<()> {
    // Like `execkit exec`: one thread. (The concurrent case builds its own.)
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let value = match args.first().map(String::as_str) {
        Some("throughput") => {
            let system = args.get(1).context("system")?;
            let bytes: u64 = args.get(2).context("bytes")?.parse()?;
            serde_json::to_value(child_throughput(&rt, system, bytes)?)?
        }
        Some("concurrent") => {
            let n: usize = args.get(1).context("n")?.parse()?;
            serde_json::to_value(child_concurrent(n)?)?
        }
        Some(mode @ ("threads" | "tasks")) => {
            let t: usize = args.get(1).context("threads")?.parse()?;
            let c: usize = args.get(2).context("commands")?.parse()?;
            let run = if mode == "threads" {
                load::os_threads(t, c)?
            } else {
                load::tasks(t, c)?
            };
            serde_json::to_value(run)?
        }
        Some("local-pair") => {
            // Profiling aid: only the interleaved floor / execkit local round trips.
            let n = args.get(1).map_or(Ok(2000), |v| v.parse())?;
            let (f, e, _) = rt.block_on(floor_and_local(n, None))?;
            let (f, e) = (
                Latency::from("raw-pty-floor", f),
                Latency::from("execkit local", e),
            );
            serde_json::json!({"floor": f, "local": e, "ratio_p50": e.p50_ms / f.p50_ms})
        }
        Some(mode @ ("local" | "local-mt")) => {
            // Profiling aid: only execkit local round trips, with this
            // process's CPU time (shells excluded) and voluntary context
            // switches per command. `local-mt`: driven as the Python
            // module drives them, `block_on` a multi-thread runtime from a
            // thread of its own.
            let n = args.get(1).map_or(Ok(2000), |v| v.parse())?;
            let (v, used) = if mode == "local" {
                rt.block_on(profiled_round_trips(n))?
            } else {
                let mt = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?;
                std::thread::scope(|s| s.spawn(|| mt.block_on(profiled_round_trips(n))).join())
                    .map_err(|_| anyhow::anyhow!("panicked"))??
            };
            let l = Latency::from(mode, v);
            serde_json::json!({"latency": l, "cpu_us_per_cmd": used.0, "vol_ctx_per_cmd": used.1})
        }
        Some("floor-cmd") => {
            // Profiling aid: the floor running an arbitrary command line.
            let cmd = args.get(1).context("cmd")?;
            let mut p = floor::RawPty::start()?;
            let v = (0..500)
                .map(|_| p.round_trip(cmd).map(|r| r.0))
                .collect::<Result<Vec<_>>>()?;
            serde_json::to_value(Latency::from(cmd, v))?
        }
        other => bail!("unknown child mode {other:?}"),
    };
    let _ = std::fs::remove_dir_all(bench_config().spool_dir);
    println!("{value}");
    Ok(())
}

/// `bytes` of output through `system` (the raw-PTY floor or an execkit
/// local session, whose output is capped and spooled).
fn child_throughput(rt: &tokio::runtime::Runtime, system: &str, bytes: u64) -> Result<Throughput> {
    // Lines of 50 bytes, like real logs.
    let cmd = format!("yes 0123456789012345678901234567890123456789012345678 | head -c {bytes}");
    let secs = match system {
        "raw-pty-floor" => {
            let mut p = floor::RawPty::start()?;
            let (d, got) = p.round_trip(&cmd)?;
            ensure!(got == bytes, "floor got {got} bytes");
            d.as_secs_f64()
        }
        _ => rt.block_on(async {
            let mut s = Session::open("local:/bin/bash", bench_config()).await?;
            let t = Instant::now();
            let res = s.run(&cmd, RunOptions::default()).await?;
            let d = t.elapsed().as_secs_f64();
            ensure!(
                res.exit_code == Some(0) && res.truncated,
                "{:?}",
                res.exit_code
            );
            if let Some(p) = &res.output_path {
                let len = std::fs::metadata(p)?.len();
                ensure!(len == bytes, "spooled {len} bytes");
                std::fs::remove_file(p)?;
            }
            s.close().await?;
            anyhow::Ok(d)
        })?,
    };
    Ok(Throughput {
        system: system.to_string(),
        bytes,
        mb_per_s: bytes as f64 / 1e6 / secs,
        peak_rss_mb: status_kb("VmHWM") as f64 / 1024.0,
    })
}

/// `n` local sessions at once, ten commands each, on two worker threads.
fn child_concurrent(n: usize) -> Result<Concurrent> {
    let before = status_kb("VmRSS");
    let t = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (ok, sessions) = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..n {
            tasks.push(tokio::spawn(async move {
                let mut s = Session::open("local:/bin/bash", bench_config()).await?;
                let mut ok = true;
                for k in 0..10 {
                    let r = s
                        .run(&format!("echo $(({i} + {k}))"), RunOptions::default())
                        .await?;
                    ok &= r.output == (i + k).to_string();
                }
                anyhow::Ok((ok, s))
            }));
        }
        let mut all = true;
        let mut held = Vec::new();
        for t in tasks {
            let (ok, s) = t.await??;
            all &= ok;
            held.push(s);
        }
        anyhow::Ok((all, held))
    })?;
    let wall = t.elapsed().as_secs_f64();
    let after = status_kb("VmRSS");
    rt.block_on(async {
        for s in sessions {
            let _ = s.close().await;
        }
    });
    Ok(Concurrent {
        sessions: n,
        commands_each: 10,
        wall_s: wall,
        all_correct: ok,
        kb_per_session: after.saturating_sub(before) as f64 / n as f64,
    })
}

/// A `/proc/self/status` field in kB.
fn status_kb(field: &str) -> u64 {
    proc_status_kb("self", field)
}

fn proc_status_kb(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of a process, in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf is always safe to call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks * 1000.0 / hz
}

fn serve_idle(bin: &std::path::Path, n: usize) -> Result<ServeIdle> {
    use std::io::{BufRead, BufReader, Write};
    let dir = std::env::temp_dir().join(format!("execkit-bench-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("run/execkit.sock");
    let mut child = std::process::Command::new(bin)
        .args(["serve", "--no-journal", "--socket"])
        .arg(&socket)
        .env("XDG_STATE_HOME", dir.join("state"))
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let result = (|| -> Result<ServeIdle> {
        let t = Instant::now();
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(&socket) {
                Ok(s) => break s,
                Err(_) if t.elapsed() < Duration::from_secs(20) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => bail!("serve did not come up: {e}"),
            }
        };
        let mut w = stream.try_clone()?;
        let mut r = BufReader::new(stream);
        let base = proc_status_kb(&child.id().to_string(), "VmRSS");
        for i in 0..n {
            writeln!(w, "{{\"op\":\"open\",\"name\":\"idle{i}\"}}")?;
            let mut line = String::new();
            r.read_line(&mut line)?;
            ensure!(line.contains("\"ok\":true"), "open failed: {line}");
        }
        std::thread::sleep(Duration::from_secs(1));
        let pid = child.id();
        let rss = proc_status_kb(&pid.to_string(), "VmRSS");
        let c0 = cpu_ms(pid);
        std::thread::sleep(Duration::from_secs(10));
        let c1 = cpu_ms(pid);
        Ok(ServeIdle {
            sessions: n,
            rss_mb: rss as f64 / 1024.0,
            kb_per_session: rss.saturating_sub(base) as f64 / n as f64,
            cpu_ms_over_10s: c1 - c0,
        })
    })();
    // SIGTERM: serve closes every session with cleanup.
    // SAFETY: signalling our own child by PID.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let t = Instant::now();
    while child.try_wait()?.is_none() {
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// 1,000 sessions need more than the usual 1,024 descriptors.
fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}
