//! How people already reach their hosts: jump hosts (`jump=`, ProxyJump),
//! `ssh_config` aliases (`config=`, `~/.ssh/config`), ssh-agent keys and
//! encrypted keys — against the test sshd and the jump host `cargo xtask
//! test` provisions (`EXECKIT_TEST_SSH_*`). On testkit's runner: without
//! them every case shows as ignored; under `CI=true` as failed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use execkit_core::testkit;
use execkit_core::{ErrorKind, RunOptions, Session, SessionConfig, SessionError, TransportError};
use execkit_ssh as _;
use execkit_ssh::SshTarget;

#[derive(Clone)]
struct Env {
    target: SshTarget,
    dir: PathBuf,
    jump_port: u16,
    jump_known_hosts: PathBuf,
}

/// The test sshd and its jump host, or why there are none.
fn env() -> Result<Env, String> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("no {name}; run cargo xtask test"))
    };
    let url = var("EXECKIT_TEST_SSH_URL")?;
    Ok(Env {
        target: SshTarget::parse(&url).expect("test URL parses"),
        dir: PathBuf::from(var("EXECKIT_TEST_SSH_DIR")?),
        jump_port: var("EXECKIT_TEST_SSH_JUMP_PORT")?.parse().expect("a port"),
        jump_known_hosts: PathBuf::from(var("EXECKIT_TEST_SSH_JUMP_KNOWN_HOSTS")?),
    })
}

impl Env {
    fn key(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A known_hosts file with the test sshd's keys and, if `jump`, the
    /// jump host's: a file of the test's own, so the pool gives it its own
    /// connections.
    fn known_hosts(&self, name: &str, jump: bool) -> PathBuf {
        let mut text = std::fs::read_to_string(self.key("known_hosts")).unwrap();
        if jump {
            text.push_str(&std::fs::read_to_string(&self.jump_known_hosts).unwrap());
        }
        let p = scratch(name).join("known_hosts");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn user(&self) -> &str {
        &self.target.user
    }

    fn port(&self) -> u16 {
        self.target.port
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("execkit-ssh-reach-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config() -> SessionConfig {
    let mut c = SessionConfig::default();
    c.spool_dir = std::env::temp_dir().join("execkit-ssh-test-spool");
    c
}

async fn open(url: &str) -> Result<Session, SessionError> {
    Session::open(url, config()).await
}

async fn run_ok(s: &mut Session, cmd: &str) -> String {
    let r = s
        .run(cmd, RunOptions::timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    r.output
}

/// The kind and reason of an Unreachable error.
fn unreachable(r: Result<Session, SessionError>) -> (ErrorKind, String) {
    match r {
        Err(SessionError::Transport(TransportError::Unreachable { kind, reason, .. })) => {
            (kind, reason)
        }
        Err(e) => panic!("expected Unreachable, got {e:?}"),
        Ok(_) => panic!("expected Unreachable, got a session"),
    }
}

/// The port the sshd serving this shell's connection sees it come from,
/// and so which host dialled it: `SSH_CONNECTION` is "client port server
/// port".
async fn client_port(s: &mut Session) -> u16 {
    let conn = run_ok(s, "echo $SSH_CONNECTION").await;
    conn.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("SSH_CONNECTION={conn:?}"))
}

/// The PIDs of sshd processes serving connections from `port` (the jump
/// host's forwarded connection shows as its client).
fn jump_sessions(jump_port: u16) -> usize {
    let out = Command::new("ss")
        .args(["-Htn", "state", "established"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("127.0.0.1:{jump_port} ")))
        .count()
}

/// Fails when `jump=` is not honoured (old code: unknown parameter) or
/// the connection does not really go through the jump host: the test
/// sshd must see it coming from the jump sshd's process, not from us.
async fn a_jump_host_carries_the_connection(e: Env) {
    let kh = e.known_hosts("jump", true);
    let url = format!(
        "ssh://{}@127.0.0.1:{}?identity={}&known_hosts={}&jump={}@127.0.0.1:{}",
        e.user(),
        e.port(),
        e.key("user_ed25519").display(),
        kh.display(),
        e.user(),
        e.jump_port
    );
    let mut s = open(&url).await.unwrap();
    assert_eq!(run_ok(&mut s, "echo through").await, "through");
    // The final sshd's peer is a local port the jump sshd opened; we hold
    // a connection to the jump host.
    let from = client_port(&mut s).await;
    assert!(
        jump_sessions(e.jump_port) >= 1,
        "no connection to the jump host"
    );
    let owner = Command::new("ss")
        .args(["-Htnp", "state", "established", &format!("sport = :{from}")])
        .output()
        .unwrap();
    let owner = String::from_utf8_lossy(&owner.stdout);
    assert!(
        owner.contains("sshd"),
        "the connection to the target came from {owner:?}"
    );
    // Big output both ways works through the relay.
    let big = run_ok(&mut s, "head -c 3000000 /dev/zero | tr '\\0' x | wc -c").await;
    assert_eq!(big.trim(), "3000000");
    let r = s
        .run(
            "head -c 2000000 /dev/zero | tr '\\0' y",
            RunOptions::timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, Some(0));
    assert!(
        r.output.len() >= 2_000_000 || r.truncated,
        "{}",
        r.output.len()
    );
    s.close().await.unwrap();
}

/// Fails when a jump host whose key is not in known_hosts is passed
/// through unverified, or the error does not say which hop failed.
async fn a_jump_host_with_an_unknown_key_is_refused(e: Env) {
    let kh = e.known_hosts("jump-unknown", false);
    let url = format!(
        "ssh://{}@127.0.0.1:{}?identity={}&known_hosts={}&jump=127.0.0.1:{}",
        e.user(),
        e.port(),
        e.key("user_ed25519").display(),
        kh.display(),
        e.jump_port
    );
    let (kind, reason) = unreachable(open(&url).await);
    assert_eq!(kind, ErrorKind::HostKeyUnknown, "{reason}");
    assert!(
        reason.starts_with(&format!("jump host {}@127.0.0.1:{}", e.user(), e.jump_port)),
        "{reason}"
    );
    assert!(reason.contains("is not in"), "{reason}");
}

/// Fails when `passphrase_env=` is not honoured (old code: unknown
/// parameter), or the key opens without its passphrase.
async fn an_encrypted_key_opens_with_its_passphrase_from_the_environment(e: Env) {
    let key = std::env::var("EXECKIT_TEST_SSH_ENC_KEY").unwrap();
    let kh = e.known_hosts("encrypted", false);
    let base = format!(
        "ssh://{}@127.0.0.1:{}?identity={key}&known_hosts={}&config=none",
        e.user(),
        e.port(),
        kh.display()
    );
    let mut s = open(&format!("{base}&passphrase_env=EXECKIT_TEST_SSH_ENC_PASS"))
        .await
        .unwrap();
    assert_eq!(run_ok(&mut s, "echo unlocked").await, "unlocked");
    s.close().await.unwrap();
    // A variable that is not set: the key stays locked, the error says how
    // to give the passphrase.
    let (kind, reason) =
        unreachable(open(&format!("{base}&passphrase_env=EXECKIT_TEST_NO_SUCH_VAR")).await);
    assert_eq!(kind, ErrorKind::AuthRefused, "{reason}");
    assert!(reason.contains(&key), "{reason}");
    assert!(reason.contains("passphrase_env"), "{reason}");
}

/// Fails when a key only the agent `SSH_AUTH_SOCK` names holds is not
/// used: no identity in the target, no config, none of the default key
/// files authorized. Runs in a child process of its own, the only one
/// whose environment names the agent.
async fn an_agent_held_key_logs_in(e: Env) {
    const ALONE: &str = "EXECKIT_SSH_REACH_AGENT";
    const NAME: &str = "an_agent_held_key_logs_in";
    let kh = e.known_hosts("agent-env", false);
    let url = format!(
        "ssh://{}@127.0.0.1:{}?known_hosts={}&config=none",
        e.user(),
        e.port(),
        kh.display()
    );
    if std::env::var_os(ALONE).is_some() {
        let mut s = open(&url).await.unwrap();
        assert_eq!(run_ok(&mut s, "echo agent").await, "agent");
        s.close().await.unwrap();
        return;
    }
    // Without the agent the same target is refused, and says it tried one.
    let (kind, reason) = unreachable(open(&url).await);
    assert_eq!(kind, ErrorKind::AuthRefused, "{reason}");
    assert!(reason.contains("ssh-agent"), "{reason}");
    let agent = Agent::start("agent-env", &[&e.key("user_rsa")]);
    let socket = agent.socket.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--test-threads", "1"])
            .env(ALONE, "1")
            .env("SSH_AUTH_SOCK", socket)
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
    drop(agent);
}

/// An `ssh-agent` of the test's own, stopped by PID.
struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Agent {
    fn start(name: &str, keys: &[&Path]) -> Agent {
        use std::io::BufRead as _;
        let socket = scratch(name).join("agent.sock");
        let mut child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent");
        // Readiness: it prints where it listens once the socket is bound.
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("SSH_AUTH_SOCK"), "ssh-agent said {line:?}");
        let agent = Agent { child, socket };
        for key in keys {
            let out = Command::new("ssh-add")
                .arg(key)
                .env("SSH_AUTH_SOCK", &agent.socket)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ssh-add {}: {}",
                key.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        agent
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() -> ExitCode {
    let env = env();
    macro_rules! with_sshd {
        ($name:ident) => {
            testkit::async_test_with(stringify!($name), &env, $name)
        };
    }
    testkit::harness(vec![
        with_sshd!(a_jump_host_carries_the_connection),
        with_sshd!(a_jump_host_with_an_unknown_key_is_refused),
        with_sshd!(an_encrypted_key_opens_with_its_passphrase_from_the_environment),
        with_sshd!(an_agent_held_key_logs_in),
    ])
}
