//! `execkit swerex` driven by SWE-ReX's official client (`swe-rex` 1.4 from
//! PyPI: `RemoteRuntime`, `RemoteDeployment`), in the venv `cargo xtask
//! test` makes and names in EXECKIT_TEST_SWEREX_PYTHON, on local, docker
//! (the busybox test container: no Python inside) and ssh targets. On
//! testkit's runner (`harness = false`): without the venv, the container or
//! the sshd a case shows as ignored, and fails under CI=true.
//!
//! The client side is `tests/swerex/client.py` (every route, the error
//! classes, auth, retries, files of every byte value, interrupt, timeouts
//! leaving nothing behind); this side starts the server, SIGTERMs it and
//! looks at the target afterwards.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use execkit_core::testkit;

mod support;

const TOKEN: &str = "swerex-test-token-0123456789";

/// The venv's python and the target, or why there are none.
#[derive(Clone)]
struct Env {
    python: std::ffi::OsString,
    target: String,
}

fn env(target: Result<String, String>) -> Result<Env, String> {
    let python = std::env::var_os("EXECKIT_TEST_SWEREX_PYTHON")
        .ok_or_else(|| "EXECKIT_TEST_SWEREX_PYTHON not set (run `cargo xtask test`)".to_string())?;
    Ok(Env {
        python,
        target: target?,
    })
}

fn state_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("execkit-swerex-tests")
}

/// `execkit swerex` on a free loopback port; killed by PID on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_execkit"))
            .arg("swerex")
            .args(["--port", "0", "--auth-token", TOKEN])
            .args(args)
            .env("XDG_STATE_HOME", state_dir())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start execkit swerex");
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        err.read_line(&mut line).expect("first stderr line");
        let port = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut err, &mut std::io::stderr());
        });
        Server { child, port }
    }

    /// SIGTERM, then its exit status (within 30 s).
    fn stop(mut self) -> std::process::ExitStatus {
        support::terminate(&mut self.child, Duration::from_secs(30), "execkit swerex")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes on `target` carrying `marker`, seen from a session of its own.
fn marked_on(target: &str, marker: &str) -> Vec<String> {
    let script = format!(
        "for p in /proc/[0-9]*; do if tr '\\0' '\\n' 2>/dev/null < \"$p/environ\" | grep -qx 'EXECKIT_SID={marker}'; then echo \"${{p#/proc/}}\"; fi; done; true"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_execkit"))
        .args([
            "exec",
            "--no-journal",
            "--json",
            "--target",
            target,
            &script,
        ])
        .env("XDG_STATE_HOME", state_dir())
        .output()
        .expect("execkit exec");
    assert!(out.status.success(), "probe failed: {out:?}");
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(line.lines().last().unwrap_or("{}")).expect("probe JSON");
    v["output"]
        .as_str()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn official_client(e: Env) {
    let journal = std::env::temp_dir().join(format!(
        "execkit-swerex-journal-{}-{}.jsonl",
        std::process::id(),
        e.target.len()
    ));
    let _ = std::fs::remove_file(&journal);
    let server = Server::start(&[
        "--target",
        &e.target,
        "--journal",
        journal.to_str().expect("utf-8 path"),
    ]);
    let report = std::env::temp_dir().join(format!(
        "execkit-swerex-report-{}-{}.json",
        std::process::id(),
        server.port
    ));
    let script = format!("{}/tests/swerex/client.py", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(&e.python)
        .arg(&script)
        .arg(server.port.to_string())
        .arg(TOKEN)
        .arg(&e.target)
        .arg(env!("CARGO_BIN_EXE_execkit"))
        .arg(&report)
        .env("XDG_STATE_HOME", state_dir())
        .output()
        .expect("run the python client");
    assert!(
        out.status.success(),
        "client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let left: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("JSON");
    let _ = std::fs::remove_file(&report);
    let marker = left["sid"].as_str().expect("sid").to_string();
    assert!(
        !marked_on(&e.target, &marker).is_empty(),
        "the session left open is not on the target"
    );

    // SIGTERM closes every session: nothing of it is left on the target.
    let status = server.stop();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let left = marked_on(&e.target, &marker);
    assert!(left.is_empty(), "left running after SIGTERM: {left:?}");

    // Sessions are journaled like any other.
    let lines = std::fs::read_to_string(&journal).expect("journal");
    let _ = std::fs::remove_file(&journal);
    assert!(
        lines.contains("echo journal-marker-5f3a"),
        "the command is not in the journal"
    );
}

/// Flags a server refuses before it listens (exit 2).
fn refusals() {
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_execkit"))
            .arg("swerex")
            .args(args)
            .env_remove("EXECKIT_SWEREX_TOKEN")
            .envs(envs.iter().copied())
            .env("XDG_STATE_HOME", state_dir())
            .output()
            .expect("execkit swerex")
    };
    let out = run(&["--port", "0"], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("--auth-token"), "{text}");
    let out = run(
        &["--port", "0", "--host", "0.0.0.0", "--auth-token", "short"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("at least 16"), "{text}");
    let out = run(
        &[
            "--port",
            "0",
            "--auth-token",
            TOKEN,
            "--target",
            "local",
            "--allow-target",
            "docker:*",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let help = Command::new(env!("CARGO_BIN_EXE_execkit"))
        .args(["swerex", "--help"])
        .output()
        .expect("help");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("16 characters") && text.contains("remote code execution"),
        "{text}"
    );
}

/// The token may come from the environment instead of the argument list.
fn token_from_the_environment() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_execkit"))
        .args(["swerex", "--port", "0", "--no-journal"])
        .env("EXECKIT_SWEREX_TOKEN", TOKEN)
        .env("XDG_STATE_HOME", state_dir())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    err.read_line(&mut line).expect("line");
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("listening on http://127.0.0.1:"), "{line}");
}

/// The status line of `GET /is_alive` with `key`, sent as `uid` (root
/// only) from bash's `/dev/tcp`.
fn is_alive_as(port: u16, uid: Option<u32>, key: &str) -> String {
    use std::os::unix::process::CommandExt as _;
    let request = format!(
        "GET /is_alive HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-API-Key: {key}\r\n\r\n"
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(r#"exec 3<>"/dev/tcp/127.0.0.1/$1" && printf '%s' "$2" >&3 && head -n1 <&3"#)
        .args(["bash", &port.to_string(), &request])
        .current_dir("/");
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().expect("run bash");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no HTTP status: {out:?}"))
        .to_string()
}

/// Another user's loopback connection is refused even with the key (it
/// may have read it in the process list).
fn another_uid_is_refused() {
    let server = Server::start(&["--no-journal"]);
    assert_eq!(is_alive_as(server.port, None, TOKEN), "200");
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(is_alive_as(server.port, Some(65534), TOKEN), "403");
    } else {
        eprintln!("not root: the other-uid half is skipped");
    }
    let st = server.stop();
    assert!(st.success(), "{st}");
}

fn main() -> ExitCode {
    let local = env(Ok("local".to_string()));
    let docker = env(std::env::var("EXECKIT_TEST_DOCKER_CONTAINER")
        .map(|c| format!("docker:{c}"))
        .map_err(|_| "no test container (EXECKIT_TEST_DOCKER_CONTAINER)".to_string()));
    let ssh = env(std::env::var("EXECKIT_TEST_SSH_URL")
        .map_err(|_| "no test sshd (EXECKIT_TEST_SSH_URL)".to_string()));
    testkit::harness_in_order(vec![
        libtest_mimic_trial("refusals", refusals),
        libtest_mimic_trial("token_from_the_environment", token_from_the_environment),
        libtest_mimic_trial("another_uid_is_refused", another_uid_is_refused),
        libtest_mimic_trial(
            "a_sandbox_floor_holds_every_route",
            a_sandbox_floor_holds_every_route,
        ),
        testkit::test_with("official_client_on_local", &local, official_client),
        testkit::test_with("official_client_on_docker", &docker, official_client),
        testkit::test_with("official_client_on_ssh", &ssh, official_client),
    ])
}

/// `POST path` with a JSON body and the key; (status, body).
fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-API-Key: {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// `--sandbox read-only` on the server: sessions, `execute` and the file
/// routes all run contained (a native file transfer would write past the
/// sandbox), and the server refuses to start on a target it cannot
/// contain.
fn a_sandbox_floor_holds_every_route() {
    let dir = std::env::temp_dir().join(format!("execkit-swerex-floor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let server = Server::start(&["--no-journal", "--sandbox", "read-only"]);
    let outside = dir.join("written.txt");
    let (status, body) = post(
        server.port,
        "/write_file",
        &format!(r#"{{"path": "{}", "content": "x"}}"#, outside.display()),
    );
    assert_ne!(status, 200, "{body}");
    assert!(!outside.exists(), "write_file wrote past the sandbox");
    let (status, body) = post(
        server.port,
        "/execute",
        &format!(
            r#"{{"command": "touch {}", "shell": true}}"#,
            outside.display()
        ),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Permission denied"), "{body}");
    assert!(!outside.exists(), "execute wrote past the sandbox");
    server.stop();
    let out = Command::new(env!("CARGO_BIN_EXE_execkit"))
        .args(["swerex", "--port", "0", "--auth-token", TOKEN])
        .args(["--sandbox", "read-only", "--target", "docker:web"])
        .env("XDG_STATE_HOME", state_dir())
        .output()
        .expect("execkit swerex");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("only local targets can be contained"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A test that needs nothing provisioned.
fn libtest_mimic_trial(name: &str, body: fn()) -> testkit::libtest_mimic::Trial {
    testkit::test_with(name, &Ok::<(), String>(()), move |()| body())
}
