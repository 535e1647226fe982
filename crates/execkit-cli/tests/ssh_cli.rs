//! The CLI against an `ssh://` target, from outside: state persists across
//! the commands of one call, and every connection fault is one clear line on
//! stderr with exit status 69, promptly. Needs the test sshd that
//! `cargo xtask test` provisions (`EXECKIT_TEST_SSH_*`); without it the cases
//! show as ignored (testkit's runner), and under `CI=true` that is a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output};
use std::time::{Duration, Instant};

use execkit_core::testkit;

#[derive(Clone)]
struct Env {
    url: String,
    dir: PathBuf,
    user: String,
    port: u16,
}

/// The test sshd, or why there is none.
fn env() -> Result<Env, String> {
    let url = std::env::var("EXECKIT_TEST_SSH_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .ok_or("no test sshd; run cargo xtask test")?;
    let dir = PathBuf::from(std::env::var("EXECKIT_TEST_SSH_DIR").expect("EXECKIT_TEST_SSH_DIR"));
    // ssh://USER@127.0.0.1:PORT?...
    let rest = url.strip_prefix("ssh://").expect("ssh URL");
    let (user, rest) = rest.split_once('@').expect("user in URL");
    let port = rest
        .split_once(':')
        .and_then(|(_, p)| p.split('?').next())
        .and_then(|p| p.parse().ok())
        .expect("port in URL");
    Ok(Env {
        user: user.to_string(),
        url,
        dir,
        port,
    })
}

impl Env {
    fn url_with(&self, host: &str, port: u16, identity: &Path, known_hosts: &Path) -> String {
        format!(
            "ssh://{}@{host}:{port}?identity={}&known_hosts={}",
            self.user,
            identity.display(),
            known_hosts.display()
        )
    }
}

fn execkit(args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_execkit"))
        .args(args)
        .env(
            "XDG_STATE_HOME",
            std::env::temp_dir().join("execkit-cli-ssh-tests"),
        )
        .output()
        .expect("run execkit");
    (out, t.elapsed())
}

/// Exit 69, exactly one line on stderr containing `needle`, no panic, fast.
fn assert_unavailable(args: &[&str], needle: &str) {
    let (out, took) = execkit(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: want {needle:?} in {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(took < Duration::from_secs(15), "{args:?} took {took:?}");
}

fn state_persists_within_one_call(e: Env) {
    let (out, _) = execkit(&[
        "exec",
        "--target",
        &e.url,
        "cd /tmp",
        "export A=42",
        "echo $A; pwd",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("42\n/tmp"), "{stdout}");
}

/// `--stdin` on a remote target: each command reads the file's bytes, the
/// session's state carries over, and the journal shows the commands as
/// typed, not the staging around them.
fn stdin_reaches_each_command_on_an_ssh_target(e: Env) {
    let dir = std::env::temp_dir().join(format!("execkit-ssh-stdin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in");
    std::fs::write(&input, "alpha\nbeta\n").unwrap();
    let journal = dir.join("journal.jsonl");
    let (out, _) = execkit(&[
        "exec",
        "--json",
        "--journal",
        journal.to_str().unwrap(),
        "--target",
        &e.url,
        "--stdin",
        input.to_str().unwrap(),
        "cd /tmp && wc -l",
        "read a; echo \"$a in $PWD\"",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["output"].as_str().unwrap().trim(), "2", "{stdout}");
    assert_eq!(lines[1]["output"], "alpha in /tmp", "{stdout}");
    let journal = std::fs::read_to_string(&journal).unwrap();
    let commands: Vec<String> = journal
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "command")
        .map(|v| v["command"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        commands,
        ["cd /tmp && wc -l", "read a; echo \"$a in $PWD\""]
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn connection_faults_exit_69_with_one_line(e: Env) {
    let key = e.dir.join("user_ed25519");
    let known = e.dir.join("known_hosts");

    // Nothing listens on a port bound but never listening, and nothing
    // else can take it while the test runs.
    let reserved = execkit_core::testkit::ReservedPort::new();
    let closed = reserved.port;
    let url = e.url_with("127.0.0.1", closed, &key, &known);
    assert_unavailable(&["exec", "--target", &url, "true"], "connection refused");

    // `.invalid` never resolves (RFC 2606).
    let url = e.url_with("no-such-host.invalid", 22, &key, &known);
    assert_unavailable(&["exec", "--target", &url, "true"], "cannot resolve");

    // A key the server does not authorise.
    let url = e.url_with("127.0.0.1", e.port, &e.dir.join("wrong_ed25519"), &known);
    assert_unavailable(&["exec", "--target", &url, "true"], "wrong_ed25519");

    // known_hosts names another key for this host: refused, fingerprint shown.
    let scratch = std::env::temp_dir().join(format!("execkit-cli-ssh-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let forged = scratch.join("known_hosts");
    let other = std::fs::read_to_string(e.dir.join("wrong_ed25519.pub")).unwrap();
    let mut f = other.split_whitespace();
    let (alg, blob) = (f.next().unwrap(), f.next().unwrap());
    std::fs::write(&forged, format!("[127.0.0.1]:{} {alg} {blob}\n", e.port)).unwrap();
    let url = e.url_with("127.0.0.1", e.port, &key, &forged);
    assert_unavailable(&["exec", "--target", &url, "true"], "SHA256:");
    let _ = std::fs::remove_dir_all(&scratch);
}

fn main() -> ExitCode {
    let env = env();
    testkit::harness(vec![
        testkit::test_with(
            stringify!(state_persists_within_one_call),
            &env,
            state_persists_within_one_call,
        ),
        testkit::test_with(
            stringify!(stdin_reaches_each_command_on_an_ssh_target),
            &env,
            stdin_reaches_each_command_on_an_ssh_target,
        ),
        testkit::test_with(
            stringify!(connection_faults_exit_69_with_one_line),
            &env,
            connection_faults_exit_69_with_one_line,
        ),
    ])
}
