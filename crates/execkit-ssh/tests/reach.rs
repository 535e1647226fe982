//! How people already reach their hosts: jump hosts (`jump=`, ProxyJump),
//! `ssh_config` aliases (`config=`, `~/.ssh/config`), ssh-agent keys and
//! encrypted keys — against the test sshd and the jump host `cargo xtask
//! test` provisions (`EXECKIT_TEST_SSH_*`). On testkit's runner: without
//! them every case shows as ignored; under `CI=true` as failed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use execkit_core::testkit;
use execkit_core::{ErrorKind, RunOptions, Session, SessionError, TransportError};
use execkit_ssh as _;
use execkit_ssh::SshTarget;

mod common;
use common::{open, run_alone, run_ok};

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

/// The test sshd by address, with the test key, `kh` and `jump=jump`.
fn url_with_jump(e: &Env, kh: &Path, jump: &str) -> String {
    format!(
        "ssh://{}@127.0.0.1:{}?identity={}&known_hosts={}&jump={jump}",
        e.user(),
        e.port(),
        e.key("user_ed25519").display(),
        kh.display(),
    )
}

/// Fails unless the sshd serving `s` sees its connection come from an
/// sshd process (the jump host's forwarded connection), not from us.
async fn assert_came_through_a_jump_host(s: &mut Session) {
    let from = client_port(s).await;
    let owner = Command::new("ss")
        .args(["-Htnp", "state", "established", &format!("sport = :{from}")])
        .output()
        .unwrap();
    let owner = String::from_utf8_lossy(&owner.stdout);
    assert!(
        owner.contains("sshd"),
        "the connection to the target came from {owner:?}"
    );
}

/// Fails when `jump=` is not honoured (old code: unknown parameter) or
/// the connection does not really go through the jump host, or when
/// megabytes do not pass the relay intact both ways.
async fn a_jump_host_carries_the_connection(e: Env) {
    let kh = e.known_hosts("jump", true);
    let url = url_with_jump(&e, &kh, &format!("{}@127.0.0.1:{}", e.user(), e.jump_port));
    let mut s = open(&url).await.unwrap();
    assert_eq!(run_ok(&mut s, "echo through").await, "through");
    assert_came_through_a_jump_host(&mut s).await;
    // A file up and back down through the relay, byte for byte.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let path = scratch("jump-file").join("f.bin");
    let p = path.to_str().unwrap();
    let files = execkit_core::connect(&url).unwrap().files().unwrap();
    execkit_core::raw::write_file(&*files, p, &data)
        .await
        .unwrap();
    assert_eq!(
        execkit_core::raw::read_file(&*files, p).await.unwrap(),
        data
    );
    let r = s
        .run(
            "head -c 2000000 /dev/zero | tr '\\0' y | wc -c",
            RunOptions::timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!((r.exit_code, r.output.trim()), (Some(0), "2000000"));
    s.close().await.unwrap();
}

/// Fails when a jump host whose key is not in known_hosts is passed
/// through unverified, or the error does not say which hop failed.
async fn a_jump_host_with_an_unknown_key_is_refused(e: Env) {
    let kh = e.known_hosts("jump-unknown", false);
    let url = url_with_jump(&e, &kh, &format!("127.0.0.1:{}", e.jump_port));
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
    let socket = agent.socket.display().to_string();
    run_alone(NAME, ALONE, vec![("SSH_AUTH_SOCK", socket)]).await;
    drop(agent);
}

/// Writes `text` as an ssh_config in a scratch directory of its own.
fn write_config(name: &str, text: &str) -> PathBuf {
    let p = scratch(name).join("ssh_config");
    std::fs::write(&p, text).unwrap();
    p
}

/// Fails when `ssh://ALIAS?config=…` does not take HostName, Port, User,
/// IdentityFile and UserKnownHostsFile from the file — across a wildcard
/// block and an `Include` of a glob — or does not go on to the second
/// identity file when the first is refused.
async fn an_alias_takes_its_settings_from_ssh_config(e: Env) {
    let d = scratch("alias-config");
    let kh = e.known_hosts("alias-config-kh", false);
    std::fs::create_dir_all(d.join("conf.d")).unwrap();
    std::fs::write(
        d.join("conf.d/10-db.conf"),
        format!(
            "Host prod-db\n    HostName 127.0.0.1\n    Port {}\n    IdentitiesOnly yes\n",
            e.port()
        ),
    )
    .unwrap();
    // A block that must not apply: it would send prod-db to a closed port.
    std::fs::write(
        d.join("conf.d/20-other.conf"),
        "Host prod-other\n    Port 1\n",
    )
    .unwrap();
    let config = d.join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "# a user's config\nInclude {}/conf.d/*.conf\n\n\
             Host prod-* !prod-other\n    ServerAliveInterval 20\n    UnknownKeywordExeckitDoesNotKnow yes\n\n\
             Host *\n    User {}\n    IdentityFile {}\n    IdentityFile {}\n    UserKnownHostsFile {}\n",
            d.display(),
            e.user(),
            e.key("wrong_ed25519").display(),
            e.key("user_ed25519").display(),
            kh.display()
        ),
    )
    .unwrap();
    let url = format!("ssh://prod-db?config={}", config.display());
    let t = SshTarget::parse(&url).unwrap().resolved().unwrap();
    assert_eq!(
        (t.host.as_str(), t.port, t.user.as_str()),
        ("127.0.0.1", e.port(), e.user())
    );
    assert_eq!(
        t.identities,
        [e.key("wrong_ed25519"), e.key("user_ed25519")]
    );
    assert_eq!(t.keepalive, Some(Duration::from_secs(20)));
    let mut s = open(&url).await.unwrap();
    assert_eq!(run_ok(&mut s, "echo aliased").await, "aliased");
    s.close().await.unwrap();
    // What the target says wins: its own (wrong) identity, not the file's.
    let url = format!(
        "ssh://prod-db?config={}&identity={}",
        config.display(),
        e.key("wrong_ed25519").display()
    );
    let (kind, reason) = unreachable(open(&url).await);
    assert_eq!(kind, ErrorKind::AuthRefused, "{reason}");
    assert!(!reason.contains("user_ed25519"), "{reason}");
    // A failure names the blocks that applied.
    assert!(
        reason.contains("conf.d/10-db.conf line 1: Host prod-db"),
        "{reason}"
    );
    assert!(
        reason.contains("line 2: Host prod-* !prod-other")
            || reason.contains("Host prod-* !prod-other"),
        "{reason}"
    );
    // An explicit file that does not exist is an error naming it.
    let missing = d.join("nope");
    match open(&format!("ssh://prod-db?config={}", missing.display())).await {
        Err(SessionError::Transport(TransportError::InvalidTarget { reason, .. })) => {
            assert!(reason.contains(&missing.display().to_string()), "{reason}")
        }
        other => panic!("{:?}", other.err()),
    }
}

/// Fails when `StrictHostKeyChecking no` in a config file switches host
/// key checks off (only the target itself may: `host_key=no`), or when
/// `accept-new` from the file is not applied.
async fn host_key_checks_are_not_switched_off_by_a_config_file(e: Env) {
    let empty = scratch("strict-no").join("known_hosts");
    std::fs::write(&empty, "").unwrap();
    let config = write_config(
        "strict-no-config",
        &format!(
            "Host lax\n    HostName 127.0.0.1\n    Port {}\n    User {}\n    IdentityFile {}\n    \
             UserKnownHostsFile {}\n    StrictHostKeyChecking no\n\
             Host newcomer\n    HostName 127.0.0.1\n    Port {}\n    User {}\n    IdentityFile {}\n    \
             UserKnownHostsFile {}\n    StrictHostKeyChecking accept-new\n",
            e.port(),
            e.user(),
            e.key("user_ed25519").display(),
            empty.display(),
            e.port(),
            e.user(),
            e.key("user_ed25519").display(),
            empty.display(),
        ),
    );
    match open(&format!("ssh://lax?config={}", config.display())).await {
        Err(SessionError::Transport(TransportError::InvalidTarget { reason, .. })) => {
            assert!(reason.contains("StrictHostKeyChecking no"), "{reason}");
            assert!(reason.contains("host_key=no"), "{reason}");
            assert!(reason.contains("line 7"), "{reason}");
        }
        other => panic!("{:?}", other.err()),
    }
    // Said by the target, it is the user's call: any key, nothing recorded.
    let mut s = open(&format!(
        "ssh://lax?config={}&host_key=no",
        config.display()
    ))
    .await
    .unwrap();
    assert_eq!(run_ok(&mut s, "echo unchecked").await, "unchecked");
    s.close().await.unwrap();
    assert_eq!(std::fs::read_to_string(&empty).unwrap(), "");
    // accept-new from the file records the key.
    let mut s = open(&format!("ssh://newcomer?config={}", config.display()))
        .await
        .unwrap();
    assert_eq!(run_ok(&mut s, "echo recorded").await, "recorded");
    s.close().await.unwrap();
    let recorded = std::fs::read_to_string(&empty).unwrap();
    assert!(
        recorded.starts_with(&format!("[127.0.0.1]:{} ", e.port())),
        "{recorded}"
    );
}

/// Fails when `ProxyJump` in the config is not followed — one hop, and a
/// chain of two (the jump host reached through itself) — or when each
/// hop is not verified.
async fn proxy_jump_from_ssh_config_one_hop_and_a_chain(e: Env) {
    let kh = e.known_hosts("proxyjump-kh", true);
    let common = format!(
        "Host *\n    User {}\n    IdentityFile {}\n    UserKnownHostsFile {}\n",
        e.user(),
        e.key("user_ed25519").display(),
        kh.display()
    );
    let config = write_config(
        "proxyjump",
        &format!(
            "Host bastion\n    HostName 127.0.0.1\n    Port {jp}\n\
             Host inner\n    HostName 127.0.0.1\n    Port {p}\n    ProxyJump bastion\n\
             Host deep\n    HostName 127.0.0.1\n    Port {p}\n    ProxyJump bastion,127.0.0.1:{jp}\n\
             {common}",
            jp = e.jump_port,
            p = e.port(),
        ),
    );
    for alias in ["inner", "deep"] {
        let url = format!("ssh://{alias}?config={}", config.display());
        let t = SshTarget::parse(&url).unwrap().resolved().unwrap();
        assert_eq!(t.jump.len(), if alias == "deep" { 2 } else { 1 }, "{t:?}");
        let mut s = open(&url).await.unwrap();
        assert_came_through_a_jump_host(&mut s).await;
        assert_eq!(run_ok(&mut s, "echo hop").await, "hop");
        s.close().await.unwrap();
    }
    // Without the jump host's key: refused at the jump host, named.
    let kh_only_target = e.known_hosts("proxyjump-unknown", false);
    let config = write_config(
        "proxyjump-unknown-config",
        &format!(
            "Host bastion\n    HostName 127.0.0.1\n    Port {}\n\
             Host inner\n    HostName 127.0.0.1\n    Port {}\n    ProxyJump bastion\n\
             Host *\n    User {}\n    IdentityFile {}\n    UserKnownHostsFile {}\n",
            e.jump_port,
            e.port(),
            e.user(),
            e.key("user_ed25519").display(),
            kh_only_target.display()
        ),
    );
    let (kind, reason) =
        unreachable(open(&format!("ssh://inner?config={}", config.display())).await);
    assert_eq!(kind, ErrorKind::HostKeyUnknown, "{reason}");
    assert!(reason.starts_with("jump host bastion ("), "{reason}");
}

/// Fails when `IdentityAgent` in the config is not used (the key is held
/// only by an agent no environment variable names), or `IdentityAgent
/// none` still asks it.
async fn identity_agent_from_ssh_config(e: Env) {
    let agent = Agent::start("identity-agent", &[&e.key("user_rsa")]);
    let kh = e.known_hosts("identity-agent-kh", false);
    let config = write_config(
        "identity-agent-config",
        &format!(
            "Host with-agent\n    IdentityAgent {}\n\
             Host no-agent\n    IdentityAgent none\n\
             Host *\n    HostName 127.0.0.1\n    Port {}\n    User {}\n    UserKnownHostsFile {}\n",
            agent.socket.display(),
            e.port(),
            e.user(),
            kh.display()
        ),
    );
    let mut s = open(&format!("ssh://with-agent?config={}", config.display()))
        .await
        .unwrap();
    assert_eq!(run_ok(&mut s, "echo agent").await, "agent");
    s.close().await.unwrap();
    let (kind, reason) =
        unreachable(open(&format!("ssh://no-agent?config={}", config.display())).await);
    assert_eq!(kind, ErrorKind::AuthRefused, "{reason}");
    drop(agent);
}

/// Fails when `ssh://ALIAS` without `config=` does not read
/// `~/.ssh/config`. Runs in a child process whose HOME is a scratch
/// directory with that file.
async fn the_default_config_is_home_ssh_config(e: Env) {
    const ALONE: &str = "EXECKIT_SSH_REACH_HOME";
    const NAME: &str = "the_default_config_is_home_ssh_config";
    if std::env::var_os(ALONE).is_some() {
        let mut s = open("ssh://home-alias").await.unwrap();
        assert_eq!(run_ok(&mut s, "echo home").await, "home");
        s.close().await.unwrap();
        return;
    }
    let home = scratch("home");
    let kh = e.known_hosts("home-kh", false);
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(
        home.join(".ssh/config"),
        format!(
            "Host home-alias\n    HostName 127.0.0.1\n    Port {}\n    User {}\n    \
             IdentityFile {}\n    UserKnownHostsFile {}\n",
            e.port(),
            e.user(),
            e.key("user_ed25519").display(),
            kh.display()
        ),
    )
    .unwrap();
    run_alone(NAME, ALONE, vec![("HOME", home.display().to_string())]).await;
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
        with_sshd!(an_alias_takes_its_settings_from_ssh_config),
        with_sshd!(host_key_checks_are_not_switched_off_by_a_config_file),
        with_sshd!(proxy_jump_from_ssh_config_one_hop_and_a_chain),
        with_sshd!(identity_agent_from_ssh_config),
        with_sshd!(the_default_config_is_home_ssh_config),
    ])
}
