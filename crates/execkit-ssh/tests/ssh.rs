//! Long on purpose: one test binary (one link step) for every case that
//! needs the provisioned sshd.
//!
//! SSH-only cases against the test sshd that `cargo xtask test` provisions
//! (`EXECKIT_TEST_SSH_*`). On testkit's runner (`harness = false`): without
//! it every case shows as ignored; under `CI=true` a missing sshd is a
//! failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use execkit_core::testkit::libtest_mimic::{Completion, Failed};
use execkit_core::testkit::{self, marked_here, Tmpfs};
use execkit_core::{ErrorKind, RunOptions, Session, SessionError, TransportError};
use execkit_ssh as _;
use execkit_ssh::SshTarget;

mod common;
use common::{open, run_alone, run_ok};

#[derive(Clone)]
struct Env {
    url: String,
    target: SshTarget,
    dir: PathBuf,
}

/// The test sshd, or why there is none.
fn env() -> Result<Env, String> {
    let url = std::env::var("EXECKIT_TEST_SSH_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .ok_or("no test sshd; run cargo xtask test")?;
    let dir = PathBuf::from(std::env::var("EXECKIT_TEST_SSH_DIR").expect("EXECKIT_TEST_SSH_DIR"));
    let target = SshTarget::parse(&url).expect("test URL parses");
    Ok(Env { url, target, dir })
}

impl Env {
    fn url_with(&self, identity: &Path, known_hosts: &Path, extra: &str) -> String {
        format!(
            "ssh://{}@{}:{}?identity={}&known_hosts={}{extra}",
            self.target.user,
            self.target.host,
            self.target.port,
            identity.display(),
            known_hosts.display()
        )
    }

    fn key(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A private copy of known_hosts, so the pool gives this test its own
    /// connection.
    fn own_known_hosts(&self, name: &str) -> PathBuf {
        let p = scratch(name).join("known_hosts");
        std::fs::copy(self.key("known_hosts"), &p).unwrap();
        p
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("execkit-ssh-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn unreachable_reason(r: Result<Session, SessionError>) -> String {
    unreachable_error(r).1
}

/// The kind and reason of an Unreachable error, and the error itself (its
/// source is the library's error underneath).
fn unreachable_error(r: Result<Session, SessionError>) -> (ErrorKind, String, TransportError) {
    match r {
        Err(SessionError::Transport(e)) => match &e {
            TransportError::Unreachable { kind, reason, .. } => {
                assert_eq!(*kind, e.kind());
                (*kind, reason.clone(), e)
            }
            _ => panic!("expected Unreachable, got {e:?}"),
        },
        Err(e) => panic!("expected Unreachable, got {e:?}"),
        Ok(_) => panic!("expected Unreachable, got a session"),
    }
}

/// The I/O error a transport error keeps as its source.
fn io_source(e: &TransportError) -> &std::io::Error {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .unwrap_or_else(|| panic!("no io::Error source in {e:?}"))
}

/// `SHA256:…` of a public key file, as OpenSSH prints it.
fn fingerprint(pubkey: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(pubkey)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .unwrap_or_else(|| panic!("no fingerprint in {text:?}"))
        .to_string()
}

async fn ed25519_and_rsa_keys_work(e: Env) {
    let mut s = open(&e.url).await.unwrap();
    assert_eq!(run_ok(&mut s, "echo ed25519").await, "ed25519");
    s.close().await.unwrap();
    let url = e.url_with(&e.key("user_rsa"), &e.own_known_hosts("rsa"), "");
    let mut s = open(&url).await.unwrap();
    assert_eq!(run_ok(&mut s, "echo rsa").await, "rsa");
    s.close().await.unwrap();
}

async fn wrong_key_is_refused(e: Env) {
    let url = e.url_with(&e.key("wrong_ed25519"), &e.key("known_hosts"), "");
    let (kind, reason, _) = unreachable_error(open(&url).await);
    assert_eq!(kind, ErrorKind::AuthRefused, "{reason}");
    assert!(reason.contains("authentication failed"), "{reason}");
    assert!(reason.contains("wrong_ed25519"), "{reason}");
}

async fn missing_identity_is_a_clear_error(e: Env) {
    let url = e.url_with(Path::new("/nonexistent/key"), &e.key("known_hosts"), "");
    let reason = unreachable_reason(open(&url).await);
    assert!(
        reason.contains("/nonexistent/key") && reason.contains("does not exist"),
        "{reason}"
    );
}

async fn changed_host_key_is_refused_with_its_fingerprint(e: Env) {
    // known_hosts claims another key for this host:port.
    let dir = scratch("mismatch");
    let kh = dir.join("known_hosts");
    let other = std::fs::read_to_string(e.key("wrong_ed25519.pub")).unwrap();
    let mut f = other.split_whitespace();
    std::fs::write(
        &kh,
        format!(
            "[127.0.0.1]:{} {} {}\n",
            e.target.port,
            f.next().unwrap(),
            f.next().unwrap()
        ),
    )
    .unwrap();
    let expected = fingerprint(&e.key("host_ed25519.pub"));
    for extra in ["", "&host_key=accept_new"] {
        let url = e.url_with(&e.key("user_ed25519"), &kh, extra);
        let (kind, reason, _) = unreachable_error(open(&url).await);
        assert_eq!(kind, ErrorKind::HostKeyMismatch, "{reason}");
        assert!(reason.contains("CHANGED"), "{reason}");
        assert!(reason.contains(&expected), "{reason} lacks {expected}");
        assert!(
            reason.contains(&format!("[127.0.0.1]:{}", e.target.port)),
            "{reason}"
        );
    }
    // Nothing was recorded.
    assert_eq!(std::fs::read_to_string(&kh).unwrap().lines().count(), 1);
}

async fn unknown_host_is_refused_unless_accept_new(e: Env) {
    let dir = scratch("accept-new");
    let kh = dir.join("sub/known_hosts");
    let expected = fingerprint(&e.key("host_ed25519.pub"));
    let strict = e.url_with(&e.key("user_ed25519"), &kh, "");
    let (kind, reason, _) = unreachable_error(open(&strict).await);
    assert_eq!(kind, ErrorKind::HostKeyUnknown, "{reason}");
    assert!(
        reason.contains("is not in") && reason.contains(&expected),
        "{reason}"
    );
    assert!(reason.contains("host_key=accept_new"), "{reason}");
    assert!(!kh.exists(), "a refused key must not be recorded");

    let url = e.url_with(&e.key("user_ed25519"), &kh, "&host_key=accept_new");
    let mut s = open(&url).await.unwrap();
    assert_eq!(run_ok(&mut s, "echo trusted").await, "trusted");
    s.close().await.unwrap();
    let text = std::fs::read_to_string(&kh).unwrap();
    let host_pub = std::fs::read_to_string(e.key("host_ed25519.pub")).unwrap();
    let key_b64 = host_pub.split_whitespace().nth(1).unwrap();
    assert!(
        text.contains(&format!(
            "[127.0.0.1]:{} ssh-ed25519 {key_b64}",
            e.target.port
        )),
        "{text}"
    );
    // Now known: a strict open succeeds with the same file.
    let mut s = open(&strict).await.unwrap();
    assert_eq!(run_ok(&mut s, "echo known").await, "known");
    s.close().await.unwrap();
}

async fn connection_refused_and_dns_failure_are_clear(e: Env) {
    let reserved = execkit_core::testkit::ReservedPort::new();
    let port = reserved.port;
    // The port stays ours: a concurrently started sshd cannot take it.
    let taken = std::net::TcpListener::bind(("127.0.0.1", port));
    assert!(taken.is_err(), "port {port} was not reserved");
    let url = format!(
        "ssh://{}@127.0.0.1:{port}?identity={}",
        e.target.user,
        e.key("user_ed25519").display()
    );
    let t = Instant::now();
    let (kind, reason, err) = unreachable_error(open(&url).await);
    assert!(reason.contains("connection refused"), "{reason}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(kind, ErrorKind::ConnectionRefused, "{reason}");
    // The OS error is kept, not only its text.
    assert_eq!(
        io_source(&err).kind(),
        std::io::ErrorKind::ConnectionRefused
    );

    let url = format!(
        "ssh://{}@no-such-host.invalid:22?identity={}",
        e.target.user,
        e.key("user_ed25519").display()
    );
    let (kind, reason, err) = unreachable_error(open(&url).await);
    assert!(
        reason.contains("cannot resolve host `no-such-host.invalid`"),
        "{reason}"
    );
    assert_eq!(kind, ErrorKind::NotFound, "{reason}");
    io_source(&err);
}

async fn sessions_share_one_connection_that_closes_with_the_last(e: Env) {
    let kh = e.own_known_hosts("share");
    let url = e.url_with(&e.key("user_ed25519"), &kh, "");
    let t = SshTarget::parse(&url).unwrap();
    let t0 = Instant::now();
    let mut a = open(&url).await.unwrap();
    let first = t0.elapsed();
    let t1 = Instant::now();
    let mut b = open(&url).await.unwrap();
    let second = t1.elapsed();
    eprintln!("first session open {first:?}, second (shared connection) {second:?}");
    assert_eq!(execkit_ssh::live_connections(&t), 1);
    assert_eq!(run_ok(&mut a, "echo a").await, "a");
    assert_eq!(run_ok(&mut b, "echo b").await, "b");
    // Both shells hang off the same sshd connection process.
    let pa: u32 = run_ok(&mut a, "echo $PPID").await.parse().unwrap();
    let pb: u32 = run_ok(&mut b, "echo $PPID").await.parse().unwrap();
    assert_eq!(parent_of(pa), parent_of(pb), "different sshd connections");
    a.close().await.unwrap();
    assert_eq!(execkit_ssh::live_connections(&t), 1);
    b.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while execkit_ssh::live_connections(&t) != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(execkit_ssh::live_connections(&t), 0);
}

/// Parent pid from /proc (the test sshd runs on this host).
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

async fn dropped_session_leaves_no_process(e: Env) {
    let mut s = open(&e.url).await.unwrap();
    run_ok(
        &mut s,
        "sleep 300 >/dev/null 2>&1 & (sleep 301 >/dev/null 2>&1 &)",
    )
    .await;
    let marker = s.marker().to_string();
    let deadline = Instant::now() + Duration::from_secs(3);
    while marked_here(&marker).len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        marked_here(&marker).len() >= 3,
        "setup: {:?}",
        marked_here(&marker)
    );
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marked_here(&marker).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        marked_here(&marker).is_empty(),
        "survived drop: {:?}",
        marked_here(&marker)
    );
}

async fn twenty_megabytes_out_and_one_megabyte_in_do_not_deadlock(e: Env) {
    // Regression: with a canonical remote PTY, sshd answered each PTY write
    // with an SSH_MSG_IGNORE as large as the write, and libssh2 dropped the
    // connection on the first one over 35,000 bytes (1 run in ~10).
    let mut s = open(&e.url).await.unwrap();
    let payload = "y".repeat(1 << 20);
    let cmd = format!(
        "printf %s '{payload}' | wc -c; head -c 20000000 /dev/zero | tr '\\000' x; echo; echo end"
    );
    let t = Instant::now();
    let r = s
        .run(&cmd, RunOptions::timeout(Duration::from_secs(120)))
        .await
        .unwrap();
    eprintln!("1 MB in + 20 MB out: {:?}", t.elapsed());
    assert_eq!(
        r.exit_code,
        Some(0),
        "{:?}",
        (r.timed_out, r.session_lost, &r.error, r.output.len())
    );
    assert!(r.truncated);
    assert!(
        r.output.trim_start().starts_with("1048576"),
        "{}",
        &r.output[..80]
    );
    assert!(r.output.ends_with("end"));
    let full = std::fs::metadata(r.output_path.as_ref().unwrap())
        .unwrap()
        .len();
    assert!(full >= 20_000_000, "spooled {full} bytes");
    assert_eq!(run_ok(&mut s, "echo still-alive").await, "still-alive");
    s.close().await.unwrap();
}

/// A second, private sshd (same keys, own port and pidfile), stopped by PID.
struct PrivateSshd {
    child: Child,
    port: u16,
    known_hosts: PathBuf,
}

impl PrivateSshd {
    fn start(e: &Env) -> PrivateSshd {
        let base = std::env::var("EXECKIT_TEST_SSH_CONFIG").expect("EXECKIT_TEST_SSH_CONFIG");
        let text = std::fs::read_to_string(base).unwrap();
        let port = execkit_core::testkit::daemon_port();
        let dir = scratch("private-sshd");
        let config: String = text
            .lines()
            .map(|l| {
                if l.starts_with("Port ") {
                    format!("Port {port}")
                } else if l.starts_with("PidFile ") {
                    format!("PidFile {}", dir.join("sshd.pid").display())
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let cfg = dir.join("sshd_config");
        std::fs::write(&cfg, config + "\n").unwrap();
        let mut known = String::new();
        for k in ["host_ed25519.pub", "host_rsa.pub"] {
            let p = std::fs::read_to_string(e.key(k)).unwrap();
            let mut f = p.split_whitespace();
            known.push_str(&format!(
                "[127.0.0.1]:{port} {} {}\n",
                f.next().unwrap(),
                f.next().unwrap()
            ));
        }
        let known_hosts = dir.join("known_hosts");
        std::fs::write(&known_hosts, known).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "private sshd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        PrivateSshd {
            child,
            port,
            known_hosts,
        }
    }
}

impl Drop for PrivateSshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn sshd_killed_mid_command_is_reported_promptly(e: Env) {
    let mut daemon = PrivateSshd::start(&e);
    let url = format!(
        "ssh://{}@127.0.0.1:{}?identity={}&known_hosts={}",
        e.target.user,
        daemon.port,
        e.key("user_ed25519").display(),
        daemon.known_hosts.display()
    );
    let mut s = open(&url).await.unwrap();
    let shell: u32 = run_ok(&mut s, "echo $$").await.parse().unwrap();
    // The sshd processes between the shell and our daemon serve this
    // connection: kill them and the daemon, as a crashing server would go.
    let listener = daemon.child.id();
    let mut victims = vec![listener];
    let mut p = parent_of(shell);
    while p != listener {
        assert!(
            p > 1 && victims.len() < 5,
            "shell {shell} is not under our sshd"
        );
        victims.push(p);
        p = parent_of(p);
    }
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for pid in victims {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
    let t = Instant::now();
    let r = s
        .run("sleep 30", RunOptions::timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    killer.await.unwrap();
    let took = t.elapsed();
    let _ = daemon.child.wait();
    assert!(r.session_lost && r.exit_code.is_none(), "{r:?}");
    let msg = r.error.clone().unwrap_or_default();
    assert_eq!(
        msg,
        format!("connection to 127.0.0.1:{} closed", daemon.port)
    );
    assert!(took < Duration::from_secs(5), "detected after {took:?}");
    // The next command reports the loss again, quickly and clearly.
    let t = Instant::now();
    let r = s
        .run("echo again", RunOptions::timeout(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(r.session_lost, "{r:?}");
    assert!(r.error.unwrap_or_default().contains("connection refused"));
    assert!(t.elapsed() < Duration::from_secs(5));
    let _ = s.close().await;
}

/// A SIGSTOPped process, SIGCONTed on drop (a failing test never leaves
/// it stopped).
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        let ok = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot SIGSTOP {pid}");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

fn cmdlines(pids: &[u32]) -> Vec<String> {
    pids.iter()
        .map(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default()
        })
        .collect()
}

/// Issue 9's fault matrix: the connection's server-side process is
/// SIGSTOPped mid-command (a network stall: TCP still acknowledges, the
/// server says nothing). Session A runs `sleep 30` with a 2 s timeout,
/// session B `sleep 60` with none, on the same connection. Both must come
/// back within the stall limit plus a bounded escalation; what they ran
/// must be killed even before the server resumes.
async fn stalled_connection_mid_command_is_given_up_promptly(e: Env) {
    // A connection of its own: stopping its server process must not stall
    // the other tests' sessions.
    let kh = e.own_known_hosts("stall");
    let url = e.url_with(&e.key("user_ed25519"), &kh, "");
    let mut a = open(&url).await.unwrap();
    let mut b = open(&url).await.unwrap();
    let (marker_a, marker_b) = (a.marker().to_string(), b.marker().to_string());
    let server: u32 = run_ok(&mut a, "echo $PPID").await.parse().unwrap();
    let server_b: u32 = run_ok(&mut b, "echo $PPID").await.parse().unwrap();
    assert_eq!(server, server_b, "the sessions do not share a connection");
    let comm = std::fs::read_to_string(format!("/proc/{server}/comm")).unwrap_or_default();
    assert!(comm.starts_with("sshd"), "the shells' parent is {comm:?}");
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Stopped::stop(server)
    });
    let timeout = Duration::from_secs(2);
    let t = Instant::now();
    // A regression must fail, not hang: the whole exchange is bounded.
    let both = tokio::time::timeout(Duration::from_secs(90), async {
        tokio::join!(
            async {
                let r = a.run("sleep 30", RunOptions::timeout(timeout)).await;
                (r.unwrap(), t.elapsed())
            },
            async {
                let r = b
                    .run("sleep 60", RunOptions::timeout(Duration::from_secs(120)))
                    .await;
                (r.unwrap(), t.elapsed())
            },
        )
    })
    .await;
    let stopped = stopper.await.unwrap();
    let Ok((ra, rb)) = both else {
        drop(stopped);
        panic!("a stalled connection hung the runs for 90 s");
    };
    let ((ra, took_a), (rb, took_b)) = (ra, rb);
    // Killed through a fresh connection while the old server is still
    // stopped: nothing of either command is left.
    let sleeping: Vec<String> = cmdlines(&marked_here(&marker_a))
        .into_iter()
        .chain(cmdlines(&marked_here(&marker_b)))
        .filter(|c| c.starts_with("sleep"))
        .collect();
    drop(stopped);
    let bound = timeout + Duration::from_secs(20);
    // A: its timeout fired; the shell did not answer the Ctrl-C, so it was
    // killed and a new one started on a new connection.
    assert!(
        ra.timed_out && ra.exit_code.is_none() && ra.restarted && !ra.session_lost,
        "{ra:?}"
    );
    assert!(took_a < bound, "A returned after {took_a:?}");
    // B: no timeout of its own; the stall is what ends it.
    assert!(rb.session_lost && rb.exit_code.is_none(), "{rb:?}");
    assert_eq!(
        rb.error.as_deref(),
        Some(
            format!(
                "connection to 127.0.0.1:{} stalled: the server sent nothing for 10 s while an answer was due",
                e.target.port
            )
            .as_str()
        )
    );
    assert!(took_b < bound, "B returned after {took_b:?}");
    assert!(sleeping.is_empty(), "survived the stall: {sleeping:?}");
    // Both sessions go on; the resumed server process finds its peer gone.
    assert_eq!(run_ok(&mut a, "echo a-next").await, "a-next");
    let r = b
        .run("echo b-next", RunOptions::timeout(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(r.output == "b-next" && r.restarted, "{r:?}");
    a.close().await.unwrap();
    b.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while (!marked_here(&marker_a).is_empty() || !marked_here(&marker_b).is_empty())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left: Vec<u32> = marked_here(&marker_a)
        .into_iter()
        .chain(marked_here(&marker_b))
        .collect();
    let server_gone = {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(format!("/proc/{server}")).is_ok() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::fs::metadata(format!("/proc/{server}")).is_err()
    };
    eprintln!(
        "fault ssh-stall: A (timeout {timeout:?}) returned in {took_a:?}, B (no timeout) in {took_b:?}; leaked processes: {}; stalled sshd exited after SIGCONT: {server_gone}; A: timed_out={} restarted={}; B error: {:?}",
        left.len(),
        ra.timed_out,
        ra.restarted,
        rb.error
    );
    assert!(left.is_empty(), "survived: {:?}", cmdlines(&left));
    assert!(
        server_gone,
        "the stalled sshd process {server} lingers after SIGCONT"
    );
}

/// A host that accepts TCP connections and never says anything (no SSH
/// banner): a hung sshd, a tarpit. It keeps every connection open for the
/// life of the test's runtime and counts them.
struct StalledHost {
    port: u16,
    connections: tokio::sync::watch::Receiver<usize>,
}

impl StalledHost {
    async fn start() -> StalledHost {
        StalledHost::saying(b"").await
    }

    /// One that writes `first` on every connection, then nothing more.
    async fn saying(first: &'static [u8]) -> StalledHost {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (count, connections) = tokio::sync::watch::channel(0);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                if !first.is_empty() {
                    let _ = stream.write_all(first).await;
                }
                held.push(stream);
                count.send_replace(held.len());
            }
        });
        StalledHost { port, connections }
    }

    /// A target on it; `extra` is appended to the query.
    fn url(&self, extra: &str) -> String {
        let kh = scratch(&format!("stalled-{}", self.port)).join("known_hosts");
        format!(
            "ssh://nobody@127.0.0.1:{}?known_hosts={}{extra}",
            self.port,
            kh.display()
        )
    }

    /// Waits until at least `n` connections have arrived.
    async fn connected(&self, n: usize) -> usize {
        let mut rx = self.connections.clone();
        let got = *rx.wait_for(|c| *c >= n).await.unwrap();
        got
    }
}

/// Issue 13: three opens to a host that accepts TCP but never sends a
/// banner used to queue behind one another (10, 20 and 30 s). They now
/// share one connection attempt and all fail with its error, at once,
/// after the target's connect_timeout.
async fn concurrent_opens_to_a_stalled_host_share_one_attempt() {
    // No sshd needed: the stalled host is the test's own listener.
    let host = StalledHost::start().await;
    let timeout = Duration::from_secs(2);
    let url = host.url("&connect_timeout=2");
    let t0 = Instant::now();
    let timed = || {
        let url = url.clone();
        async move {
            let (kind, reason, _) = unreachable_error(open(&url).await);
            // Every waiter of the shared attempt gets its kind.
            assert_eq!(kind, ErrorKind::Timeout, "{reason}");
            (reason, t0.elapsed())
        }
    };
    // A regression must fail, not hang.
    let (a, b, c) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(timed(), timed(), timed())
    })
    .await
    .expect("three opens to a stalled host hung for 60 s");
    let took: Vec<Duration> = [&a, &b, &c].iter().map(|r| r.1).collect();
    eprintln!("three opens to a stalled host failed after {took:?}");
    let expected = format!("no SSH banner from 127.0.0.1:{} within 2 s", host.port);
    for (reason, _) in [&a, &b, &c] {
        assert_eq!(reason, &expected);
    }
    let fastest = *took.iter().min().unwrap();
    let slowest = *took.iter().max().unwrap();
    // The timeout is honoured (libssh2's deadline is never before ours)…
    assert!(fastest >= timeout.mul_f64(0.95), "failed early: {took:?}");
    // …and all three end together, well before a second timeout could
    // have run.
    assert!(slowest < timeout.mul_f64(1.75), "took {took:?}");
    assert!(slowest < fastest.mul_f64(1.5), "not together: {took:?}");
    // One TCP connection for the three opens.
    assert_eq!(host.connected(1).await, 1, "connections made");
}

/// Opens to different hosts never wait for each other: a healthy sshd
/// answers while three opens to a stalled host are still waiting for its
/// banner (default connect timeout, 10 s).
async fn a_stalled_host_does_not_delay_another(e: Env) {
    let host = StalledHost::start().await;
    let stalled_url = host.url("");
    let t0 = Instant::now();
    let stalled: Vec<_> = (0..3)
        .map(|_| {
            let url = stalled_url.clone();
            tokio::spawn(async move { (open(&url).await, t0.elapsed()) })
        })
        .collect();
    // The stalled attempt is under way before the healthy open starts.
    host.connected(1).await;
    // A connection of its own, so the open really connects.
    let kh = e.own_known_hosts("beside-stalled");
    let url = e.url_with(&e.key("user_ed25519"), &kh, "");
    let t = Instant::now();
    let mut s = open(&url).await.unwrap();
    let took = t.elapsed();
    let pending = stalled.iter().filter(|h| !h.is_finished()).count();
    eprintln!("healthy open beside a stalled host: {took:?}");
    assert_eq!(
        pending, 3,
        "the healthy open finished only after the stalled ones ({took:?})"
    );
    assert_eq!(run_ok(&mut s, "echo healthy").await, "healthy");
    s.close().await.unwrap();
    let expected = format!("no SSH banner from 127.0.0.1:{} within 10 s", host.port);
    let mut ends = Vec::new();
    for h in stalled {
        let (r, at) = tokio::time::timeout(Duration::from_secs(60), h)
            .await
            .expect("an open to a stalled host hung for 60 s")
            .unwrap();
        assert_eq!(unreachable_reason(r), expected);
        ends.push(at);
    }
    let (first, last) = (ends.iter().min().unwrap(), ends.iter().max().unwrap());
    assert!(*last < first.mul_f64(1.5), "not together: {ends:?}");
    assert_eq!(host.connected(1).await, 1, "connections made");
}

/// `connect_timeout` must be a positive number of seconds, at most a
/// year: anything else is an invalid target (CLI exit 2), refused before
/// any connection is tried.
async fn connect_timeout_must_be_a_positive_duration() {
    let host = StalledHost::start().await;
    for bad in ["0", "-2", "nan", "inf", "1e300", "31536001", "2s", ""] {
        let url = host.url(&format!("&connect_timeout={bad}"));
        match open(&url).await {
            Err(SessionError::Transport(e @ TransportError::InvalidTarget { .. })) => {
                assert!(e.is_usage());
                assert_eq!(e.kind(), ErrorKind::InvalidTarget);
                let text = e.to_string();
                assert!(
                    text.contains(&format!("connect_timeout={bad} is not a duration")),
                    "{text}"
                );
            }
            Err(e) => panic!("connect_timeout={bad}: expected InvalidTarget, got {e:?}"),
            Ok(_) => panic!("connect_timeout={bad}: opened a session"),
        }
    }
    assert_eq!(
        *host.connections.borrow(),
        0,
        "a bad target was connected to"
    );
}

/// The other side of a shared attempt: concurrent opens to a healthy
/// sshd make one connection, and each gets its own shell on it.
async fn concurrent_opens_share_one_new_connection(e: Env) {
    let kh = e.own_known_hosts("concurrent");
    let url = e.url_with(&e.key("user_ed25519"), &kh, "&connect_timeout=30");
    let t = SshTarget::parse(&url).unwrap();
    let (a, b, c) = tokio::join!(open(&url), open(&url), open(&url));
    let mut sessions = [a.unwrap(), b.unwrap(), c.unwrap()];
    assert_eq!(execkit_ssh::live_connections(&t), 1);
    let mut parents = Vec::new();
    let mut shells = Vec::new();
    for s in sessions.iter_mut() {
        let pid: u32 = run_ok(s, "echo $$").await.parse().unwrap();
        shells.push(pid);
        parents.push(parent_of(run_ok(s, "echo $PPID").await.parse().unwrap()));
    }
    shells.sort_unstable();
    shells.dedup();
    assert_eq!(shells.len(), 3, "three shells");
    assert!(
        parents.iter().all(|p| *p == parents[0] && *p != 0),
        "different sshd connections: {parents:?}"
    );
    for s in sessions {
        s.close().await.unwrap();
    }
}

/// A timeout names the stage that stalled: a server that sends its banner
/// and then nothing stalls the key exchange; a host whose TCP accept queue
/// is full (SYNs dropped, as for a blackholed address) never connects.
async fn a_connect_timeout_names_the_stage() {
    let host = StalledHost::saying(b"SSH-2.0-OpenSSH_9.6 stalled\r\n").await;
    let t = Instant::now();
    let (kind, reason, _) = unreachable_error(open(&host.url("&connect_timeout=1")).await);
    let took = t.elapsed();
    assert_eq!(kind, ErrorKind::Timeout, "{reason}");
    assert_eq!(
        reason,
        format!(
            "SSH key exchange with 127.0.0.1:{} did not finish within 1 s",
            host.port
        )
    );
    assert!(took >= Duration::from_millis(950), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    let full = FullAcceptQueue::new();
    let t = Instant::now();
    let url = format!("ssh://nobody@127.0.0.1:{}?connect_timeout=1.5", full.port);
    let (kind, reason, _) = unreachable_error(open(&url).await);
    let took = t.elapsed();
    assert_eq!(kind, ErrorKind::Timeout, "{reason}");
    assert_eq!(
        reason,
        format!("no TCP connection to 127.0.0.1:{} within 1.5 s", full.port)
    );
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// A loopback listener with a backlog of 0 whose one queue place is taken
/// and never accepted: the kernel drops further SYNs, so a connect to it
/// hangs as to a blackholed address.
struct FullAcceptQueue {
    port: u16,
    _listener: std::os::fd::OwnedFd,
    _queued: std::net::TcpStream,
}

impl FullAcceptQueue {
    fn new() -> FullAcceptQueue {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: plain socket calls on a descriptor this function owns;
        // every pointer is to a local of the right type and size.
        let (listener, port) = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let listener = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let p = (&addr as *const libc::sockaddr_in).cast();
            assert_eq!(libc::bind(listener.as_raw_fd(), p, len), 0, "bind");
            assert_eq!(libc::listen(listener.as_raw_fd(), 0), 0, "listen");
            let mut len = len;
            let p = (&mut addr as *mut libc::sockaddr_in).cast();
            assert_eq!(libc::getsockname(listener.as_raw_fd(), p, &mut len), 0);
            (listener, u16::from_be(addr.sin_port))
        };
        let queued = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        FullAcceptQueue {
            port,
            _listener: listener,
            _queued: queued,
        }
    }
}

/// The process of this host that has `path` open, and on which fd (the
/// test sshd runs here, so the transfer's `cat` is a local process).
fn opener_of(path: &Path) -> Option<(u32, String)> {
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t == path) {
                return Some((pid, fd.file_name().to_string_lossy().into_owned()));
            }
        }
    }
    None
}

/// How far process `pid` has read through its fd `fd` (`pos` in fdinfo).
fn file_position(pid: u32, fd: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("pos:"))?
        .trim()
        .parse()
        .ok()
}

/// Fails without backpressure: the transfer reads the whole 64 MiB into
/// memory while its consumer has taken one chunk (the remote `cat` reaches
/// the end of the file); and without a clean abort: the remote `cat` lives
/// on after the consumer went away, or the shared connection breaks.
/// Size of the file [`big_read`] reads.
const BIG: u64 = 64 << 20;

/// A read of a [`BIG`] sparse file through the transfer on a connection
/// of its own, into a channel of one chunk.
struct BigRead {
    url: String,
    dir: PathBuf,
    path: PathBuf,
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    reader: tokio::task::JoinHandle<std::io::Result<u64>>,
}

fn big_read(e: &Env, name: &str) -> BigRead {
    let kh = e.own_known_hosts(name);
    let url = e.url_with(&e.key("user_ed25519"), &kh, "");
    let dir = scratch(&format!("{name}-data"));
    let path = dir.join("big.bin");
    std::fs::File::create(&path).unwrap().set_len(BIG).unwrap();
    let files = execkit_core::connect(&url).unwrap().files().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let p = path.to_str().unwrap().to_string();
    let reader = tokio::spawn(async move { files.read(&p, tx).await });
    BigRead {
        url,
        dir,
        path,
        rx,
        reader,
    }
}

async fn a_slow_reader_holds_a_transfer_back_and_dropping_it_ends_it(e: Env) {
    const SIZE: u64 = BIG;
    let BigRead {
        url,
        dir,
        path,
        mut rx,
        reader,
    } = big_read(&e, "slow-reader");
    let mut s = open(&url).await.unwrap();
    let first = rx.recv().await.expect("a first chunk");
    let (pid, fd) = opener_of(&path).expect("the remote cat has the file open");
    // Let the pipeline fill up: until cat stops moving through the file.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pos = file_position(pid, &fd).unwrap_or(SIZE);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = file_position(pid, &fd).unwrap_or(SIZE);
        if now == pos || Instant::now() > deadline {
            break;
        }
        pos = now;
    }
    eprintln!(
        "consumer took {} bytes; cat read {pos} of {SIZE}",
        first.len()
    );
    assert!(
        pos < 32 << 20,
        "cat read {pos} bytes for a consumer that took {}",
        first.len()
    );
    drop(rx);
    let err = reader.await.unwrap().expect_err("the consumer went away");
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe, "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "the remote cat ({pid}) lives on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(run_ok(&mut s, "echo still").await, "still");
    s.close().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Pins `pid` (a thread or process) to CPU 0.
fn pin_to_cpu0(pid: u32) {
    let ok = Command::new("taskset")
        .args(["-p", "-c", "0", &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cannot pin {pid} to CPU 0");
}

/// Fails when a keepalive's answer that arrives before the stall clock
/// takes its baseline counts as silence: an idle connection is then
/// declared stalled 10 s after a keepalive. On one CPU the server's answer
/// comes at once (waking sshd preempts the thread that sent it), which is
/// how a loaded machine hit it.
///
/// Runs in a process of its own (this test binary again, filtered to this
/// test): the pinning takes every ssh connection thread of the process to
/// the busy CPU, which must not slow the other tests running beside it.
async fn an_idle_connection_survives_its_keepalives(e: Env) {
    const ALONE: &str = "EXECKIT_SSH_TEST_ALONE";
    const NAME: &str = "an_idle_connection_survives_its_keepalives";
    if std::env::var_os(ALONE).is_some() {
        return idle_connection_on_a_busy_cpu(e).await;
    }
    run_alone(NAME, ALONE, Vec::new()).await;
}

async fn idle_connection_on_a_busy_cpu(e: Env) {
    let kh = e.own_known_hosts("keepalive");
    let url = e.url_with(&e.key("user_ed25519"), &kh, "");
    let mut s = open(&url).await.unwrap();
    let server: u32 = run_ok(&mut s, "echo $PPID").await.parse().unwrap();
    pin_to_cpu0(server);
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("execkit-ssh") {
            pin_to_cpu0(task.file_name().to_string_lossy().parse().unwrap());
        }
    }
    // A busy CPU, as on a loaded machine: the scheduler then runs the
    // woken sshd on the sending thread's CPU, ahead of it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let me = std::fs::read_link("/proc/thread-self").unwrap();
            pin_to_cpu0(me.file_name().unwrap().to_string_lossy().parse().unwrap());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        })
    };
    // Two keepalive intervals (15 s each), the stall limit (10 s) after each.
    tokio::time::sleep(Duration::from_secs(42)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spinner.join().unwrap();
    let r = s
        .run("echo alive", RunOptions::timeout(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    assert_eq!(r.output.trim(), "alive", "{r:?}");
    assert!(!r.restarted, "{r:?}");
    s.close().await.unwrap();
}

/// Fails when a consumer that pauses longer than a keepalive interval plus
/// the stall limit gets the connection declared stalled: the transfer is
/// alone on its connection and held back, so nothing reads the socket, the
/// keepalive's answer queues behind file data the server cannot send, and
/// the silence is ours, not the server's.
async fn a_reader_paused_past_the_stall_limit_still_gets_the_file(e: Env) {
    const SIZE: u64 = BIG;
    let BigRead {
        url,
        dir,
        mut rx,
        reader,
        ..
    } = big_read(&e, "paused-reader");
    let Some(first) = rx.recv().await else {
        panic!("no first chunk: {:?}", reader.await.unwrap());
    };
    let mut got = first.len() as u64;
    // One keepalive interval (15 s) plus the stall limit (10 s), and some.
    tokio::time::sleep(Duration::from_secs(28)).await;
    while let Some(chunk) = rx.recv().await {
        got += chunk.len() as u64;
    }
    let total = reader.await.unwrap().expect("the transfer completes");
    assert_eq!((got, total), (SIZE, SIZE));
    let mut s = open(&url).await.unwrap();
    assert_eq!(run_ok(&mut s, "echo still").await, "still");
    s.close().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Fails when a write the target cannot finish (its disk fills up
/// mid-file) hangs, passes, or loses the errno and the path.
async fn a_disk_full_mid_write_is_enospc_naming_the_path(e: Env) -> Result<Completion, Failed> {
    let fs = match Tmpfs::mount(&scratch("disk-full").join("fs"), "size=1m,mode=0755") {
        Ok(fs) => fs,
        Err(why) => return testkit::unprovisioned(format!("cannot mount a tmpfs ({why})")),
    };
    let files = execkit_core::connect(&e.url).unwrap().files().unwrap();
    let path = fs.dir.join("f.bin");
    let p = path.to_str().unwrap();
    let err = execkit_core::raw::write_file(&*files, p, &vec![7u8; 3 << 20])
        .await
        .expect_err("3 MiB do not fit in 1 MiB");
    assert_eq!(
        execkit_core::raw::file_errno(&err),
        Some(libc::ENOSPC),
        "{err}"
    );
    assert!(err.to_string().contains(p), "{err}");
    // What fitted stays.
    assert!(std::fs::metadata(&path).unwrap().len() > 0);
    drop(fs);
    Ok(Completion::Completed)
}

fn main() -> ExitCode {
    let env = env();
    // The async fn of that name, given the test sshd (ignored without one).
    macro_rules! with_sshd {
        ($name:ident) => {
            testkit::async_test_with(stringify!($name), &env, $name)
        };
    }
    // The async fn of that name, which needs no sshd.
    macro_rules! no_sshd {
        ($name:ident) => {
            testkit::async_test_with(stringify!($name), &Ok(()), |()| $name())
        };
    }
    testkit::harness(vec![
        with_sshd!(ed25519_and_rsa_keys_work),
        with_sshd!(wrong_key_is_refused),
        with_sshd!(missing_identity_is_a_clear_error),
        with_sshd!(changed_host_key_is_refused_with_its_fingerprint),
        with_sshd!(unknown_host_is_refused_unless_accept_new),
        with_sshd!(connection_refused_and_dns_failure_are_clear),
        with_sshd!(sessions_share_one_connection_that_closes_with_the_last),
        with_sshd!(dropped_session_leaves_no_process),
        with_sshd!(twenty_megabytes_out_and_one_megabyte_in_do_not_deadlock),
        with_sshd!(sshd_killed_mid_command_is_reported_promptly),
        with_sshd!(stalled_connection_mid_command_is_given_up_promptly),
        no_sshd!(concurrent_opens_to_a_stalled_host_share_one_attempt),
        with_sshd!(a_stalled_host_does_not_delay_another),
        no_sshd!(connect_timeout_must_be_a_positive_duration),
        with_sshd!(concurrent_opens_share_one_new_connection),
        no_sshd!(a_connect_timeout_names_the_stage),
        with_sshd!(a_slow_reader_holds_a_transfer_back_and_dropping_it_ends_it),
        with_sshd!(a_disk_full_mid_write_is_enospc_naming_the_path),
        with_sshd!(a_reader_paused_past_the_stall_limit_still_gets_the_file),
        with_sshd!(an_idle_connection_survives_its_keepalives),
    ])
}
