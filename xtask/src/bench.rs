//! `cargo xtask bench [--quick] [--transport local|docker|ssh|all]`:
//! release builds of the bench and the CLI, the same dockerd/sshd
//! provisioning as the tests, one run of `execkit-bench`, and (for full
//! runs) `docs/BENCHMARKS.md` regenerated.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{provision_all, root, teardown_all, BUILT, TRANSPORTS};

pub fn bench(args: &[String]) -> Result<bool> {
    let mut quick = false;
    let mut which = "all".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--transport" => which = it.next().context("--transport needs a value")?.clone(),
            other => bail!("unknown argument {other}"),
        }
    }
    let selected: Vec<&str> = match which.as_str() {
        "all" => TRANSPORTS.to_vec(),
        t if TRANSPORTS.contains(&t) => vec![t],
        t => bail!("unknown transport {t}"),
    };
    let started = Instant::now();
    let root = root();
    let out_dir = root.join("target/xtask");
    if Command::new("tmux").arg("-V").output().is_err() {
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
        let report_dir = if quick {
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

fn display(p: &Path) -> String {
    p.join("BENCHMARKS.md").display().to_string()
}
