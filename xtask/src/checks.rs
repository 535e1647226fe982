//! The checks of `cargo xtask test` that are not tests: formatting, clippy
//! and the API docs, and the CLI built with one transport feature at a time.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{target_dir, Counts};

/// `cargo fmt --check`, `cargo clippy --all-targets -D warnings` and
/// `cargo doc --no-deps` with `-D warnings`: one count each.
pub(crate) fn lints(root: &Path) -> Result<Counts> {
    let has = |c: &str| {
        Command::new("cargo")
            .args([c, "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !(has("clippy") && has("fmt")) {
        // A toolchain installed with a minimal profile lacks them.
        let st = Command::new("rustup")
            .args(["component", "add", "clippy", "rustfmt"])
            .status()
            .context("rustup component add clippy rustfmt")?;
        if !st.success() {
            bail!("installing clippy and rustfmt failed");
        }
    }
    /// A check: its name, cargo's arguments, one environment variable.
    type Check<'a> = (&'a str, &'a [&'a str], Option<(&'a str, &'a str)>);
    let checks: [Check<'_>; 3] = [
        ("cargo fmt --check", &["fmt", "--all", "--check"], None),
        (
            "cargo clippy",
            &[
                "clippy",
                "--quiet",
                "--workspace",
                "--all-targets",
                "--features",
                "execkit-core/testkit",
                "--",
                "-D",
                "warnings",
            ],
            None,
        ),
        (
            "cargo doc",
            &["doc", "--quiet", "--no-deps", "--workspace"],
            Some(("RUSTDOCFLAGS", "-D warnings")),
        ),
    ];
    let mut c = Counts::default();
    for (name, args, env) in checks {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root).args(args);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        if cmd.status().with_context(|| name.to_string())?.success() {
            c.passed += 1;
        } else {
            println!("xtask: {name} FAILED");
            c.failed += 1;
        }
    }
    Ok(c)
}

/// Builds the CLI with one transport feature (and with none) and checks
/// `execkit transports` lists exactly what was linked.
pub(crate) fn feature_builds(root: &Path, out_dir: &Path) -> Result<Counts> {
    let mut c = Counts::default();
    for (features, expect) in [
        ("local", Some("local")),
        ("docker", Some("docker")),
        ("ssh", Some("ssh")),
        ("", None),
    ] {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root).args([
            "build",
            "--quiet",
            "-p",
            "execkit-cli",
            "--no-default-features",
        ]);
        if !features.is_empty() {
            cmd.args(["--features", features]);
        }
        let st = cmd.status().context("cargo build")?;
        if !st.success() {
            bail!("building execkit-cli with features [{features}] failed");
        }
        let bin = out_dir.join(format!(
            "execkit-features-{}",
            if features.is_empty() {
                "none"
            } else {
                features
            }
        ));
        std::fs::copy(target_dir(root).join("debug/execkit"), &bin)?;
        let out = Command::new(&bin).arg("transports").output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let schemes: Vec<&str> = stdout
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let ok = match expect {
            Some(s) => out.status.success() && schemes == [s],
            None => !out.status.success() && schemes.is_empty(),
        };
        let label = if features.is_empty() {
            "no features"
        } else {
            features
        };
        if ok {
            println!("xtask: feature build [{label}]: transports = {schemes:?} ok");
            c.passed += 1;
        } else {
            println!(
                "xtask: feature build [{label}]: FAILED: transports printed {stdout:?} (status {})",
                out.status
            );
            c.failed += 1;
        }
    }
    Ok(c)
}
