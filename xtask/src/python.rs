//! The Python wheel (`crates/execkit-py`): built with maturin from PyPI
//! in a tool venv, then installed into a fresh venv — so what is tested
//! and measured is the packaging a user gets from `pip install`, not an
//! in-place `maturin develop`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

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

/// Builds the release wheel of `crates/execkit-py` with maturin and returns
/// its path (in `out_dir/wheels`, emptied first).
pub fn build_wheel(root: &Path, out_dir: &Path) -> Result<PathBuf> {
    let maturin_py = tool_venv(
        &out_dir.join("maturin-venv"),
        &["maturin>=1.9,<2"],
        "import maturin",
    )?;
    let wheels = out_dir.join("wheels");
    let _ = std::fs::remove_dir_all(&wheels);
    std::fs::create_dir_all(&wheels)?;
    println!("xtask: building the Python wheel (maturin build --release)");
    let st = Command::new(maturin_py.with_file_name("maturin"))
        .current_dir(root)
        .args(["build", "--release", "--quiet", "-i", "python3", "-m"])
        .arg(root.join("crates/execkit-py/Cargo.toml"))
        .arg("-o")
        .arg(&wheels)
        .status()
        .context("running maturin")?;
    if !st.success() {
        bail!("maturin build failed ({st})");
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(&wheels)?
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
