//! `cargo xtask soak [--minutes N]`: a release build of `execkit-bench` and
//! its resource soak of the session engine on the local transport (bash):
//! 10,000 commands in one session, 2,000 session open/close cycles and a
//! 1 GB output flood per round, rounds repeated for N minutes (default 1).
//! Exits non-zero on any growth of descriptors, threads or memory, any
//! wrong result and any process left behind. See `docs/SOAK.md`.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::root;

pub fn soak(args: &[String]) -> Result<bool> {
    let mut minutes = "1".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => minutes = it.next().context("--minutes needs a value")?.clone(),
            other => bail!("unknown argument {other}"),
        }
    }
    match minutes.parse::<f64>() {
        Ok(m) if m > 0.0 => {}
        _ => bail!("--minutes needs a positive number, not {minutes}"),
    }
    let root = root();
    // The soak runs bash only; a bare machine gets it like the test shells.
    if !Path::new("/bin/bash").exists() {
        crate::apt_install(&["bash"]).context("installing bash for the soak")?;
    }
    let st = Command::new("cargo")
        .current_dir(&root)
        .args(["build", "--release", "--quiet", "-p", "execkit-bench"])
        .status()
        .context("cargo build")?;
    if !st.success() {
        bail!("release build of execkit-bench failed");
    }
    // Spool (1 GB at its peak) under target/, not /tmp, which may be small.
    let dir = root.join(format!("target/soak-{}", std::process::id()));
    let st = Command::new(crate::target_dir(&root).join("release/execkit-bench"))
        .args(["soak", "--minutes", &minutes, "--dir"])
        .arg(&dir)
        .status()
        .context("running execkit-bench soak")?;
    // The soak removes it itself; this covers a crash.
    let _ = std::fs::remove_dir_all(&dir);
    Ok(st.success())
}
