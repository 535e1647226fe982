//! `cargo xtask`: the project's own automation.
//!
//! `cargo xtask test [--transport local|docker|ssh|all]` provisions what the
//! tests need (installing system packages when missing), checks that a CLI
//! built with only one transport feature lists exactly that transport, runs
//! `cargo test --workspace` with conformance reports switched on, builds the
//! Python wheel and runs its pytest suite against the same targets (before
//! they are torn down), prints a table per transport and ends with
//! `N passed, N failed, N skipped`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context, Result};

mod bench;
mod checks;
mod docker;
mod python;
mod soak;
mod ssh;

const TRANSPORTS: &[&str] = &["local", "docker", "ssh"];
/// Transports whose crates exist yet; the others show as "not built yet".
const BUILT: &[&str] = &["local", "docker", "ssh"];

/// What provisioning a transport's test infrastructure produced: variables
/// telling its `tests/conformance.rs` where the target is, and how to tear
/// the infrastructure down again (by PID, only what we started).
#[derive(Default)]
struct Provision {
    /// Set for `cargo test` (e.g. `EXECKIT_TEST_DOCKER_CONTAINER`).
    env: Vec<(String, String)>,
    /// Runs after the tests, pass or fail.
    teardown: Option<Box<dyn FnOnce()>>,
}

/// Provisions the infrastructure of one transport (daemons, images, keys).
/// Under `CI=true` a failure is fatal; otherwise the transport's fixtures
/// report themselves unavailable and are skipped.
fn provision(transport: &str, out_dir: &Path) -> Result<Provision> {
    match transport {
        "local" => {
            provision_local_shells()?;
            Ok(Provision::default())
        }
        "docker" => docker::provision(out_dir),
        "ssh" => ssh::provision(out_dir),
        _ => {
            let _ = out_dir;
            Ok(Provision::default())
        }
    }
}

/// Provisions each transport in turn. A failure is a warning, except under
/// `CI=true`, where what was already provisioned is torn down and the run
/// fails.
fn provision_all<'a>(
    transports: impl IntoIterator<Item = &'a str>,
    out_dir: &Path,
) -> Result<Vec<Provision>> {
    let mut done = Vec::new();
    for t in transports {
        match provision(t, out_dir) {
            Ok(p) => done.push(p),
            Err(e) if !ci() => eprintln!("xtask: warning: cannot provision {t}: {e:#}"),
            Err(e) => {
                teardown_all(done);
                return Err(e.context(format!("provisioning {t} (required under CI=true)")));
            }
        }
    }
    Ok(done)
}

/// Stops (by PID) everything the provisions started.
fn teardown_all(provisions: Vec<Provision>) {
    for p in provisions {
        if let Some(t) = p.teardown {
            t();
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("bench") => bench::bench(&args[1..]),
        Some("soak") => soak::soak(&args[1..]),
        Some("with") => with(&args[1..]),
        Some("wheel") => wheel(),
        Some("pytest") => pytest(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask test [--transport local|docker|ssh|all]
       cargo xtask bench [--quick] [--transport local|docker|ssh|all] [--no-python] [--only swerex]
       cargo xtask soak [--minutes N]
       cargo xtask with local|docker|ssh|all -- COMMAND...
       cargo xtask wheel
       cargo xtask pytest [--transport local|docker|ssh|all] [-- PYTEST-ARGS...]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask with ssh -- cargo test -p execkit-ssh NAME`: provisions a
/// transport's infrastructure, runs one command with its variables set, and
/// tears it down again (by PID). For debugging one test against real daemons.
fn with(args: &[String]) -> Result<bool> {
    let (which, rest) = args.split_first().context("with needs a transport")?;
    let cmd = match rest.split_first() {
        Some((dash, cmd)) if dash == "--" && !cmd.is_empty() => cmd,
        _ => bail!("usage: cargo xtask with TRANSPORT -- COMMAND..."),
    };
    let selected: Vec<&str> = match which.as_str() {
        "all" => TRANSPORTS.to_vec(),
        t if TRANSPORTS.contains(&t) => vec![t],
        t => bail!("unknown transport {t} (local, docker, ssh or all)"),
    };
    let out_dir = root().join("target/xtask");
    let mut provisions = provision_all(selected, &out_dir)?;
    match swerex_client(&out_dir) {
        Ok(p) => provisions.push(p),
        Err(e) => eprintln!("xtask: warning: no SWE-ReX Python client: {e:#}"),
    }
    let mut c = Command::new(&cmd[0]);
    c.args(&cmd[1..]);
    for p in &provisions {
        c.envs(p.env.iter().map(|(k, v)| (k, v)));
    }
    let status = c.status();
    teardown_all(provisions);
    Ok(status
        .with_context(|| format!("running {}", cmd[0]))?
        .success())
}

/// `cargo xtask wheel`: builds the Python wheel (release) and prints its
/// path, for `pip install`.
fn wheel() -> Result<bool> {
    let root = root();
    let out_dir = root.join("target/xtask");
    let wheel = python::build_wheel(&root, &out_dir, &out_dir.join("wheels"))?;
    println!("{}", wheel.display());
    Ok(true)
}

/// Where cargo puts its builds: `CARGO_TARGET_DIR` when set.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root.join(d),
        _ => root.join("target"),
    }
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    passed: u64,
    failed: u64,
    skipped: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.skipped += o.skipped;
    }
}

/// `--transport local|docker|ssh|all` (the only argument): its value and
/// the transports it selects.
fn transport_arg(args: &[String]) -> Result<(String, Vec<&'static str>)> {
    let mut which = "all".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--transport" => which = it.next().context("--transport needs a value")?.clone(),
            s if s.starts_with("--transport=") => which = s["--transport=".len()..].to_string(),
            other => bail!("unknown argument {other}"),
        }
    }
    let selected: Vec<&'static str> = match which.as_str() {
        "all" => TRANSPORTS.to_vec(),
        t => match TRANSPORTS.iter().find(|x| **x == t) {
            Some(x) => vec![*x],
            None => bail!("unknown transport {t} (local, docker, ssh or all)"),
        },
    };
    Ok((which, selected))
}

/// `cargo xtask pytest [--transport T] [-- PYTEST ARGS…]`: only the Python
/// wheel's suite (build, fresh venv, pytest with `ARGS`, e.g. `-k gil -x`)
/// against freshly provisioned targets, torn down after.
fn pytest(args: &[String]) -> Result<bool> {
    let (opts, extra) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let (which, selected) = transport_arg(opts)?;
    let root = root();
    let out_dir = root.join("target/xtask");
    let provisions = provision_all(selected, &out_dir)?;
    let env: Vec<(String, String)> = provisions.iter().flat_map(|p| p.env.clone()).collect();
    let r = python::pytest_suite(&root, &out_dir, &env, which != "all", extra);
    teardown_all(provisions);
    let c = r?;
    println!("\npython wheel (pytest): {}", fmt_counts(c));
    Ok(c.failed == 0)
}

// One function on purpose: the whole run in order (provision, checks,
// tests, teardown, tally), read top to bottom.
fn test(args: &[String]) -> Result<bool> {
    let (which, selected) = transport_arg(args)?;
    for t in &selected {
        if !BUILT.contains(t) && which != "all" {
            bail!("the {t} transport is not built yet");
        }
    }

    let root = root();
    let out_dir = root.join("target/xtask");
    // Per run, so two runs at once cannot wipe each other's reports.
    let report_dir = out_dir.join(format!("conformance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&report_dir);
    std::fs::create_dir_all(&report_dir)?;

    let built = selected.iter().copied().filter(|t| BUILT.contains(t));
    let mut provisions = provision_all(built, &out_dir)?;

    match mcp_client(&out_dir) {
        Ok(p) => provisions.push(p),
        Err(e) if !ci() => eprintln!("xtask: warning: no MCP Python client: {e:#}"),
        Err(e) => {
            teardown_all(provisions);
            return Err(e.context("installing the MCP Python client (required under CI=true)"));
        }
    }
    match swerex_client(&out_dir) {
        Ok(p) => provisions.push(p),
        Err(e) if !ci() => eprintln!("xtask: warning: no SWE-ReX Python client: {e:#}"),
        Err(e) => {
            teardown_all(provisions);
            return Err(e.context("installing the SWE-ReX Python client (required under CI=true)"));
        }
    }

    let mut total = Counts::default();
    let mut rows: Vec<(String, String)> = Vec::new();

    // execkit-ssh links the system OpenSSL: every build needs its headers.
    ssh::ensure_build_deps()?;

    // 0. The code's own checks: formatting, clippy, and the API docs (every
    // public item documented, no broken or private links).
    let lints = checks::lints(&root)?;
    total += lints;
    rows.push(("fmt, clippy, doc".into(), fmt_counts(lints)));

    // 1. Single-feature builds list exactly what they were built with.
    let features = checks::feature_builds(&root, &out_dir)?;
    total += features;
    rows.push(("cli feature builds".into(), fmt_counts(features)));

    // 2. Unit, integration and conformance tests.
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .args(["test", "--workspace", "--no-fail-fast"])
        .env("EXECKIT_CONFORMANCE_REPORT", &report_dir);
    if which != "all" {
        // Only the chosen transport was provisioned (and failing to do so
        // already failed the run); the others' tests skip instead of
        // treating their missing infrastructure as a CI failure.
        cmd.env_remove("CI");
    }
    for p in &provisions {
        cmd.envs(p.env.iter().map(|(k, v)| (k, v)));
    }
    let unit = run_cargo_test(cmd);

    // 3. The Python wheel: built, installed into a fresh venv and its
    // pytest suite run against the same targets, while they are up.
    let env: Vec<(String, String)> = provisions.iter().flat_map(|p| p.env.clone()).collect();
    let pytest = python::pytest_suite(&root, &out_dir, &env, which != "all", &[]);
    teardown_all(provisions);
    let unit = unit?;

    let conformance = conformance_rows(&selected, &report_dir, &mut rows)?;
    let _ = std::fs::remove_dir_all(&report_dir);
    // Unit tests count from libtest's lines, conformance from its reports
    // (`run_cargo_test` leaves the conformance suites' libtest lines out).
    total += unit.libtest;
    total += conformance;
    if !unit.success && total.failed == 0 {
        // cargo failed without a failing test: a build error or a crash.
        println!("xtask: cargo test failed without a failing test (build error?)");
        total.failed += 1;
    }
    rows.insert(
        1,
        ("unit + integration tests".into(), fmt_counts(unit.libtest)),
    );
    match pytest {
        Ok(c) => {
            total += c;
            rows.push(("python wheel (pytest)".into(), fmt_counts(c)));
        }
        Err(e) => {
            println!("xtask: the Python wheel's suite did not run: {e:#}");
            total.failed += 1;
            rows.push((
                "python wheel (pytest)".into(),
                format!("FAILED: {e:#}").chars().take(200).collect(),
            ));
        }
    }

    print_table(&rows, total);
    Ok(total.failed == 0 && unit.success)
}

/// One row per conformance fixture of the selected transports, from the
/// JSON reports the suites wrote; a transport without a report fails.
fn conformance_rows(
    selected: &[&str],
    report_dir: &Path,
    rows: &mut Vec<(String, String)>,
) -> Result<Counts> {
    let mut conformance = Counts::default();
    for t in TRANSPORTS {
        if !selected.contains(t) {
            continue;
        }
        if !BUILT.contains(t) {
            rows.push((t.to_string(), "not built yet".into()));
            continue;
        }
        let mut found = false;
        for report in reports(report_dir)? {
            let name = report["fixture"].as_str().unwrap_or("?").to_string();
            if !name.starts_with(t) {
                continue;
            }
            found = true;
            let c = Counts {
                passed: report["passed"].as_u64().unwrap_or(0),
                failed: report["failed"].as_u64().unwrap_or(0),
                skipped: report["skipped"].as_u64().unwrap_or(0),
            };
            conformance += c;
            rows.push((name, fmt_counts(c)));
        }
        if !found {
            rows.push((t.to_string(), "FAILED: no conformance report".into()));
            conformance.failed += 1;
        }
    }
    Ok(conformance)
}

fn print_table(rows: &[(String, String)], total: Counts) {
    println!("\n{:<28} result", "suite");
    println!("{}", "-".repeat(60));
    for (name, res) in rows {
        println!("{name:<28} {res}");
    }
    println!();
    println!(
        "{} passed, {} failed, {} skipped",
        total.passed, total.failed, total.skipped
    );
}

fn fmt_counts(c: Counts) -> String {
    format!(
        "{} passed, {} failed, {} skipped",
        c.passed, c.failed, c.skipped
    )
}

/// A venv with the official MCP Python client (`pip install mcp`), for the
/// `execkit mcp` integration test.
fn mcp_client(out_dir: &Path) -> Result<Provision> {
    let python = python::tool_venv(
        &out_dir.join("mcp-venv"),
        &["mcp"],
        "import mcp.client.stdio",
    )?;
    Ok(Provision {
        env: vec![(
            "EXECKIT_TEST_MCP_PYTHON".into(),
            python.display().to_string(),
        )],
        teardown: None,
    })
}

/// A venv with SWE-ReX's official client (`swe-rex` 1.4 from PyPI; its
/// `RemoteRuntime` needs `aiohttp`, which the package does not declare),
/// for the `execkit swerex` integration test.
fn swerex_client(out_dir: &Path) -> Result<Provision> {
    let python = python::tool_venv(
        &out_dir.join("swerex-venv"),
        &["swe-rex==1.4.0", "aiohttp"],
        "import swerex.runtime.remote, swerex.deployment.remote, aiohttp",
    )?;
    Ok(Provision {
        env: vec![(
            "EXECKIT_TEST_SWEREX_PYTHON".into(),
            python.display().to_string(),
        )],
        teardown: None,
    })
}

/// Installs what the local tests need: dash and busybox for the matrix,
/// tmux for the terminal a person watches in (`execkit-cli/tests/terminal.rs`).
fn provision_local_shells() -> Result<()> {
    let missing: Vec<&str> = [
        ("dash", "/bin/dash"),
        ("busybox-static", "/bin/busybox"),
        ("tmux", "/usr/bin/tmux"),
    ]
    .into_iter()
    .filter(|(_, p)| !Path::new(p).exists())
    .map(|(pkg, _)| pkg)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing {} with apt-get", missing.join(" "));
    if let Err(e) = apt_install(&missing) {
        if ci() {
            return Err(e.context("provisioning the local shells (required under CI=true)"));
        }
        eprintln!("xtask: warning: {e:#}; their conformance columns will be skipped");
    }
    Ok(())
}

pub(crate) fn apt_install(pkgs: &[&str]) -> Result<()> {
    let sudo: &[&str] = if nix_is_root() { &[] } else { &["sudo", "-n"] };
    let run = |args: &[&str]| -> Result<()> {
        let mut all: Vec<&str> = sudo.to_vec();
        all.extend_from_slice(args);
        let st = Command::new(all[0])
            .args(&all[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("running {}", all.join(" ")))?;
        if !st.success() {
            bail!("`{}` failed with {st}", all.join(" "));
        }
        Ok(())
    };
    run(&["apt-get", "update", "-qq"])?;
    let mut args = vec!["apt-get", "install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(pkgs);
    run(&args)
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

struct CargoTest {
    libtest: Counts,
    success: bool,
}

/// What the conformance runner (`execkit_core::testkit::main`) prints
/// before its libtest output: the `test result:` line that follows is
/// counted from the per-fixture reports instead.
const CONFORMANCE_BANNER: &str = "conformance suite on";

/// Runs `cargo test`, streaming its output, and sums libtest result lines
/// (an ignored test counts as skipped), but for the conformance suites'.
fn run_cargo_test(mut cmd: Command) -> Result<CargoTest> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut counts = Counts::default();
    let mut conformance_next = false;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if line.starts_with(CONFORMANCE_BANNER) {
            conformance_next = true;
        }
        if let Some(rest) = line.strip_prefix("test result: ") {
            if std::mem::take(&mut conformance_next) {
                continue;
            }
            // test result: ok. 15 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; ...
            for part in rest.split(';') {
                let words: Vec<&str> = part.split_whitespace().collect();
                let n = words
                    .iter()
                    .find_map(|w| w.parse::<u64>().ok())
                    .unwrap_or(0);
                if part.contains(" passed") {
                    counts.passed += n;
                } else if part.contains(" failed") {
                    counts.failed += n;
                } else if part.contains(" ignored") {
                    counts.skipped += n;
                }
            }
        }
    }
    let status = child.wait()?;
    Ok(CargoTest {
        libtest: counts,
        success: status.success(),
    })
}

fn reports(dir: &Path) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let text = std::fs::read_to_string(e.path())?;
        out.push(
            serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", e.path().display()))?,
        );
    }
    Ok(out)
}

/// A free loopback port for a daemon we start (`sshd`, `dockerd`'s TCP
/// host), below the kernel's ephemeral range (see `execkit_ports`).
fn daemon_port() -> Result<u16> {
    execkit_ports::daemon_port().with_context(|| {
        format!(
            "no free loopback port below {}",
            execkit_ports::ephemeral_low()
        )
    })
}
