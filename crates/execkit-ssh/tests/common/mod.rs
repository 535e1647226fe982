//! What the ssh test binaries share: session settings, opening a session,
//! running a command that must succeed, and running one case alone in a
//! child process with an environment of its own.

#![allow(dead_code)]

use std::process::Command;
use std::time::Duration;

use execkit_core::{RunOptions, Session, SessionConfig, SessionError};

pub fn config() -> SessionConfig {
    let mut c = SessionConfig::default();
    c.spool_dir = std::env::temp_dir().join("execkit-ssh-test-spool");
    c
}

pub async fn open(url: &str) -> Result<Session, SessionError> {
    Session::open(url, config()).await
}

pub async fn run_ok(s: &mut Session, cmd: &str) -> String {
    let r = s
        .run(cmd, RunOptions::timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    r.output
}

/// Runs the case `name` of this test binary alone in a child process,
/// with `alone` set (the case checks it to do its part) and `env`
/// besides; fails unless it passed.
pub async fn run_alone(name: &'static str, alone: &'static str, env: Vec<(&'static str, String)>) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads", "1"])
            .env(alone, "1")
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
