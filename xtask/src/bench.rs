//! `cargo xtask bench [--quick] [--transport local|docker|ssh|all]
//! [--no-python] [--only swerex|contained]`: release builds of the bench and the
//! CLI, the release Python wheel in a fresh venv with pexpect and SWE-ReX
//! (for the Python rows, driven by `crates/execkit-py/bench/bench.py`,
//! and the SWE-ReX server rows: upstream's `swerex-remote` comes with
//! `swe-rex`, its client `RemoteRuntime` needs `aiohttp`), the same
//! dockerd/sshd provisioning as the tests, one run of `execkit-bench`, and
//! (for full runs) `docs/BENCHMARKS.md` regenerated. `--only swerex`: the
//! SWE-ReX server rows alone (no wheel, no dockerd/sshd), reported in
//! `target/xtask/bench`; `--only contained`: contained local sessions next
//! to plain ones, alone (no Python, no daemons).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{provision_all, python, root, teardown_all, BUILT, TRANSPORTS};

/// The baselines of the Python rows, pinned so runs compare the same code
/// (`aiohttp`: SWE-ReX's `RemoteRuntime` imports it without declaring it).
const PY_BASELINES: &[&str] = &["pexpect==4.9.0", "swe-rex==1.4.0", "aiohttp==3.14.5"];

pub fn bench(args: &[String]) -> Result<bool> {
    let mut quick = false;
    let mut with_python = true;
    let mut which = "all".to_string();
    let mut only: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--only" => match it.next().map(String::as_str) {
                Some(o @ ("swerex" | "contained")) => only = Some(o.into()),
                other => bail!("--only takes `swerex` or `contained`, not {other:?}"),
            },
            "--no-python" => with_python = false,
            "--transport" => which = it.next().context("--transport needs a value")?.clone(),
            other => bail!("unknown argument {other}"),
        }
    }
    let selected: Vec<&str> = match which.as_str() {
        _ if only.is_some() => vec!["local"],
        "all" => TRANSPORTS.to_vec(),
        t if TRANSPORTS.contains(&t) => vec![t],
        t => bail!("unknown transport {t}"),
    };
    let started = Instant::now();
    let root = root();
    let out_dir = root.join("target/xtask");
    if only.is_none() && Command::new("tmux").arg("-V").output().is_err() {
        if let Err(e) = crate::apt_install(&["tmux"]) {
            eprintln!("xtask: warning: no tmux, its baselines will be skipped: {e:#}");
        }
    }
    let remote = selected
        .iter()
        .copied()
        .filter(|t| *t != "local" && BUILT.contains(t));
    let provisions = provision_all(remote, &out_dir)?;
    let result = (|| -> Result<bool> {
        let st = Command::new("cargo")
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "execkit-bench",
                "-p",
                "execkit-cli",
            ])
            .status()?;
        if !st.success() {
            bail!("release build failed");
        }
        // The Python rows: a missing python3-venv or PyPI is a note in
        // the report, not a failed bench.
        let py = if with_python && only.as_deref() != Some("contained") {
            let venv = if only.is_some() {
                baselines_venv(&out_dir).map(|py| (py, None))
            } else {
                python_venv(&root, &out_dir).map(|(py, wheel)| (py, Some(wheel)))
            };
            match venv {
                Ok(py) => Some(py),
                Err(e) => {
                    eprintln!("xtask: warning: no Python rows: {e:#}");
                    None
                }
            }
        } else {
            None
        };
        let report_dir = if quick || only.is_some() {
            out_dir.join("bench")
        } else {
            root.join("docs")
        };
        let mut cmd = Command::new(crate::target_dir(&root).join("release/execkit-bench"));
        cmd.arg("--transport")
            .arg(&which)
            .arg("--execkit")
            .arg(crate::target_dir(&root).join("release/execkit"))
            .arg("--out")
            .arg(&report_dir);
        if quick {
            cmd.arg("--quick");
        }
        if let Some(only) = &only {
            cmd.arg("--only").arg(only);
        }
        if let Some((python, wheel)) = &py {
            cmd.arg("--python")
                .arg(python)
                .arg("--py-script")
                .arg(root.join("crates/execkit-py/bench/bench.py"));
            if let Some(wheel) = wheel {
                cmd.arg("--wheel").arg(wheel);
            }
        }
        for p in &provisions {
            cmd.envs(p.env.iter().map(|(k, v)| (k, v)));
        }
        let ran = Instant::now();
        let st = cmd.status().context("running execkit-bench")?;
        println!(
            "xtask: bench ran {:.0} s ({:.0} s with provisioning and the release build); report in {}",
            ran.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64(),
            display(&report_dir)
        );
        Ok(st.success())
    })();
    teardown_all(provisions);
    result
}

/// The release wheel, and the python of a fresh venv holding it and the
/// baselines.
fn python_venv(root: &Path, out_dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let wheel = python::build_wheel(root, out_dir, &out_dir.join("bench-wheel"))?;
    println!(
        "xtask: a fresh venv with the wheel, {}",
        PY_BASELINES.join(" ")
    );
    let python = python::venv_with_wheel(&out_dir.join("bench-venv"), &wheel, PY_BASELINES)?;
    Ok((python, wheel))
}

/// The python of a fresh venv holding the baselines only (for
/// `--only swerex`, which needs no wheel).
fn baselines_venv(out_dir: &Path) -> Result<PathBuf> {
    println!("xtask: a fresh venv with {}", PY_BASELINES.join(" "));
    let python = python::new_venv(&out_dir.join("bench-venv"))?;
    python::pip_install(&python, PY_BASELINES)?;
    Ok(python)
}

fn display(p: &Path) -> String {
    p.join("BENCHMARKS.md").display().to_string()
}
