//! The Python wheel (`crates/execkit-py`): built with maturin from PyPI
//! in a tool venv, then installed into a fresh venv — so what is tested
//! and measured is the packaging a user gets from `pip install`, not an
//! in-place `maturin develop`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::Counts;

/// A venv at `dir` with `packages` installed from PyPI (made once, reused
/// while `check` imports).
pub fn tool_venv(dir: &Path, packages: &[&str], check: &str) -> Result<PathBuf> {
    let python = dir.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", check])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ready {
        return Ok(python);
    }
    println!(
        "xtask: creating {} with {}",
        dir.display(),
        packages.join(" ")
    );
    new_venv(dir)?;
    pip_install(&python, packages)?;
    Ok(python)
}

/// A new, empty venv at `dir` (whatever was there is removed).
pub fn new_venv(dir: &Path) -> Result<PathBuf> {
    let _ = std::fs::remove_dir_all(dir);
    let st = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(dir)
        .status()
        .context("python3 -m venv")?;
    if !st.success() {
        bail!("python3 -m venv failed ({st}); install python3-venv");
    }
    Ok(dir.join("bin/python"))
}

/// `pip install` into the venv of `python` (quiet; `args` are package
/// names or wheel paths).
pub fn pip_install(python: &Path, args: &[&str]) -> Result<()> {
    let st = Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(args)
        .status()
        .context("pip install")?;
    if !st.success() {
        bail!("pip install {} failed ({st})", args.join(" "));
    }
    Ok(())
}

/// Builds the release wheel of `crates/execkit-py` with maturin (from a
/// tool venv in `out_dir`) and returns its path in `wheels` (emptied
/// first).
pub fn build_wheel(root: &Path, out_dir: &Path, wheels: &Path) -> Result<PathBuf> {
    let maturin_py = tool_venv(
        &out_dir.join("maturin-venv"),
        &["maturin>=1.9,<2"],
        "import maturin",
    )?;
    let _ = std::fs::remove_dir_all(wheels);
    std::fs::create_dir_all(wheels)?;
    println!("xtask: building the Python wheel (maturin build --release)");
    let st = Command::new(maturin_py.with_file_name("maturin"))
        .current_dir(root)
        .args(["build", "--release", "--quiet", "-i", "python3", "-m"])
        .arg(root.join("crates/execkit-py/Cargo.toml"))
        .arg("-o")
        .arg(wheels)
        .status()
        .context("running maturin")?;
    if !st.success() {
        bail!("maturin build failed ({st})");
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(wheels)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        n => bail!("maturin left {n} wheels in {}", wheels.display()),
    }
}

/// A fresh venv at `dir` with the wheel and `extra` packages installed
/// (`--only-binary :all:` for the wheel's own install: it must need no
/// compiler). Returns the venv's python.
pub fn venv_with_wheel(dir: &Path, wheel: &Path, extra: &[&str]) -> Result<PathBuf> {
    let python = new_venv(dir)?;
    let wheel = wheel.to_str().context("wheel path is not UTF-8")?;
    pip_install(&python, &["--only-binary", ":all:", wheel])?;
    if !extra.is_empty() {
        pip_install(&python, extra)?;
    }
    Ok(python)
}

/// The wheel's pytest suite (`crates/execkit-py/tests`): builds the wheel
/// with maturin, installs it and pytest into a fresh venv, and runs pytest
/// once against every target whose variables are in `env` (what the
/// provisions set: `EXECKIT_TEST_DOCKER_CONTAINER`, `EXECKIT_TEST_SSH_URL`,
/// …), passing `args` on. `partial`: only some transports were
/// provisioned, so `CI` is removed and the others' cases skip (as the Rust
/// tests of a `--transport` run do). A build or install failure is an
/// error; a pytest run that fails without a failing test (a crash, nothing
/// collected) counts as one failure.
pub fn pytest_suite(
    root: &Path,
    out_dir: &Path,
    env: &[(String, String)],
    partial: bool,
    args: &[String],
) -> Result<Counts> {
    // Per run, so two runs at once cannot wipe each other's wheel or venv.
    let run_dir = out_dir.join(format!("wheel-{}", std::process::id()));
    let r = pytest_in(root, out_dir, &run_dir, env, partial, args);
    let _ = std::fs::remove_dir_all(&run_dir);
    r
}

fn pytest_in(
    root: &Path,
    out_dir: &Path,
    run_dir: &Path,
    env: &[(String, String)],
    partial: bool,
    args: &[String],
) -> Result<Counts> {
    let t = Instant::now();
    let wheel = build_wheel(root, out_dir, &run_dir.join("wheels"))?;
    println!(
        "xtask: built {} in {:.0} s; installing it with pytest into a fresh venv",
        wheel.file_name().unwrap_or_default().to_string_lossy(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let python = venv_with_wheel(&run_dir.join("venv"), &wheel, &["pytest"])?;
    println!("xtask: venv ready in {:.0} s", t.elapsed().as_secs_f64());
    let counts_file = run_dir.join("pytest-counts.json");
    let tests = root.join("crates/execkit-py/tests");
    let t = Instant::now();
    let mut cmd = Command::new(&python);
    // From the tests' directory, so the source package (`python/execkit`)
    // is never on the path: what is imported is the installed wheel.
    cmd.current_dir(&tests)
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-ra"])
        .arg(&tests)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("EXECKIT_PYTEST_COUNTS", &counts_file)
        .envs(env.iter().map(|(k, v)| (k, v)));
    if partial {
        cmd.env_remove("CI");
    }
    let status = cmd.status().context("running pytest")?;
    println!("xtask: pytest took {:.0} s", t.elapsed().as_secs_f64());
    let text = std::fs::read_to_string(&counts_file)
        .with_context(|| format!("pytest ({status}) wrote no counts"))?;
    let v: serde_json::Value = serde_json::from_str(&text).context("parsing pytest's counts")?;
    let mut counts = Counts {
        passed: v["passed"].as_u64().unwrap_or(0),
        failed: v["failed"].as_u64().unwrap_or(0),
        skipped: v["skipped"].as_u64().unwrap_or(0),
    };
    if !status.success() && counts.failed == 0 {
        println!("xtask: pytest failed ({status}) without a failing test");
        counts.failed += 1;
    }
    Ok(counts)
}
