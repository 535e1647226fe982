//! What several CLI test files share: a raw client of `execkit serve`'s
//! line protocol. Each test binary uses part of it.
#![allow(dead_code)]

pub mod tmux;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One connection to a server: a JSON request per line, a JSON answer per
/// line (reads time out after 60 s, so a missing answer fails the test).
pub struct Conn {
    pub r: BufReader<UnixStream>,
    pub w: UnixStream,
}

impl Conn {
    pub fn new(socket: &Path) -> Conn {
        let s = UnixStream::connect(socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Conn {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    /// The same connection with another read timeout.
    pub fn timeout(self, d: Duration) -> Self {
        self.w.set_read_timeout(Some(d)).unwrap();
        self
    }

    /// The next line, as JSON.
    pub fn line(&mut self) -> Value {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}"))
    }

    /// Sends a request and returns the whole response line.
    pub fn raw(&mut self, req: Value) -> Value {
        let mut line = serde_json::to_vec(&req).unwrap();
        line.push(b'\n');
        self.w.write_all(&line).unwrap();
        self.line()
    }

    /// Sends a request that must succeed; returns its result.
    pub fn call(&mut self, req: Value) -> Value {
        let resp = self.raw(req.clone());
        assert_eq!(resp["ok"], true, "{req} -> {resp}");
        resp["result"].clone()
    }

    /// Sends a request that must be refused; returns the error text.
    pub fn refused(&mut self, req: Value) -> String {
        let resp = self.raw(req.clone());
        assert_eq!(resp["ok"], false, "{req} -> {resp}");
        resp["error"].as_str().unwrap_or_default().to_string()
    }
}

/// Starts `execkit serve` on `socket`, journaling to `journal`, with its
/// state under `state` and `extra` arguments; returns once the socket
/// accepts (at most 20 s). The caller stops the child by PID.
pub fn spawn_serve(socket: &Path, journal: &Path, state: &Path, extra: &[&str]) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_execkit"))
        .args(["serve", "--socket"])
        .arg(socket)
        .arg("--journal")
        .arg(journal)
        .args(extra)
        .env("XDG_STATE_HOME", state)
        .stderr(Stdio::null())
        .spawn()
        .expect("start execkit serve");
    let t = Instant::now();
    while UnixStream::connect(socket).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "serve did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// The test container `cargo xtask test` provisions, as a target
/// (`docker:NAME`), or why there is none.
pub fn docker_target() -> Result<String, String> {
    std::env::var("EXECKIT_TEST_DOCKER_CONTAINER")
        .map(|n| format!("docker:{n}"))
        .map_err(|_| "no test container (EXECKIT_TEST_DOCKER_CONTAINER)".to_string())
}

/// The test sshd's target URL `cargo xtask test` provisions, or why there
/// is none.
pub fn ssh_target() -> Result<String, String> {
    std::env::var("EXECKIT_TEST_SSH_URL")
        .map_err(|_| "no test sshd (EXECKIT_TEST_SSH_URL)".to_string())
}

/// Sends SIGTERM to `child` (a server the test started) and returns its
/// exit status; fails the test if it has not exited within `within`
/// (`what` names it in the message).
pub fn terminate(child: &mut Child, within: Duration, what: &str) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        assert!(t.elapsed() < within, "{what} ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
