//! How agents run commands today, implemented here so they run in the same
//! process and the same minute as execkit: a new `bash -c` per command,
//! tmux send-keys + capture-pane polling, `docker exec`, a new ssh per
//! command.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One `bash -c true`.
pub fn fresh_bash_c() -> Result<Duration> {
    let t = Instant::now();
    let st = Command::new("bash").args(["-c", "true"]).status()?;
    if !st.success() {
        bail!("bash -c true failed");
    }
    Ok(t.elapsed())
}

/// A private tmux server (`-L`), driven like tmux-based agents drive it.
pub struct Tmux {
    socket: String,
    counter: u64,
}

impl Tmux {
    pub fn start() -> Result<Tmux> {
        let socket = format!("execkit-bench-{}", std::process::id());
        let st = Command::new("tmux")
            .args([
                "-L",
                &socket,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                "b",
                "-x",
                "200",
                "-y",
                "50",
            ])
            .args(["bash", "--norc", "--noprofile"])
            .status()
            .context("tmux (install it: apt-get install tmux)")?;
        if !st.success() {
            bail!("tmux new-session failed");
        }
        Ok(Tmux { socket, counter: 0 })
    }

    fn tmux(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .stderr(Stdio::null())
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// send-keys, then capture-pane every `interval` until the marker shows.
    pub fn round_trip(&mut self, cmd: &str, interval: Duration) -> Result<Duration> {
        self.counter += 1;
        let mark = format!("__TM_{}__", self.counter);
        let typed = format!("{cmd}; echo __TM_\"\"{}__", self.counter);
        let t = Instant::now();
        self.tmux(&["send-keys", "-t", "b", &typed, "Enter"])?;
        loop {
            std::thread::sleep(interval);
            let pane = self.tmux(&["capture-pane", "-p", "-t", "b"])?;
            if pane.lines().any(|l| l.trim() == mark) {
                let elapsed = t.elapsed();
                self.tmux(&["send-keys", "-t", "b", "clear", "Enter"])?;
                return Ok(elapsed);
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("tmux never showed the marker");
            }
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Our private server only (its own socket), not anyone else's tmux.
        let _ = self.tmux(&["kill-server"]);
    }
}

/// One `docker exec C sh -c true`.
pub fn docker_exec_oneshot(container: &str) -> Result<Duration> {
    let t = Instant::now();
    let st = Command::new("docker")
        .args(["exec", container, "sh", "-c", "true"])
        .stderr(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("docker exec failed");
    }
    Ok(t.elapsed())
}

/// One `ssh … true` with a new connection.
pub fn ssh_oneshot(args: &[String]) -> Result<Duration> {
    let t = Instant::now();
    let st = Command::new("ssh")
        .args(args)
        .arg("true")
        .stdin(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("ssh failed");
    }
    Ok(t.elapsed())
}
