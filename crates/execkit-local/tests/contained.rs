//! Contained local sessions against the real kernel (issue 19): writes
//! outside the workspace, the network, escapes from the kill, and the
//! memory and pids limits. Each test attempts the real escape from inside a
//! session and checks the outcome from outside (the filesystem, a listener
//! the test owns, `/proc`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use execkit_core::{Containment, RunOptions, RunResult, Session, SessionConfig};
use execkit_local as _;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("execkit-contained-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn open(target: &str, cwd: &Path) -> Session {
    let mut c = SessionConfig::default();
    c.cwd = Some(cwd.to_path_buf());
    Session::open(target, c)
        .await
        .unwrap_or_else(|e| panic!("open {target}: {e}"))
}

async fn run(s: &mut Session, cmd: &str) -> RunResult {
    s.run(cmd, RunOptions::timeout(Duration::from_secs(30)))
        .await
        .unwrap()
}

/// Processes on this host whose command line contains `needle`.
fn running(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if cmd.contains(needle) {
            found.push(format!("{} {cmd}", e.file_name().to_string_lossy()));
        }
    }
    found
}

/// Waits (up to 5 s) until no process matches `needle`; returns those left.
async fn gone(needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = running(needle);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn writes_land_only_in_the_workspace_and_the_temp_dir() {
    let root = scratch("writes");
    let ws = root.join("ws");
    let outside = root.join("outside");
    std::fs::create_dir_all(ws.join(".git")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(ws.join(".git/config"), "[core]\n").unwrap();
    std::fs::write(ws.join("moveme"), "m").unwrap();
    let home_file = PathBuf::from(std::env::var("HOME").unwrap())
        .join(format!("execkit-contained-{}", std::process::id()));
    let etc_file = format!("/etc/execkit-contained-{}", std::process::id());
    let target = format!(
        "local:/bin/bash?sandbox=workspace-write&workspace={}",
        ws.display()
    );
    let mut s = open(&target, &ws).await;
    for (cmd, error) in [
        (
            format!("echo x > {}", home_file.display()),
            "Permission denied",
        ),
        (format!("touch {etc_file}"), "Permission denied"),
        (
            format!("mv moveme {}/", outside.display()),
            "Permission denied",
        ),
        (
            format!(
                "ln -s {} link && echo x > link/through-link",
                outside.display()
            ),
            "Permission denied",
        ),
        (
            "echo '[x]' >> .git/config".to_string(),
            "Read-only file system",
        ),
    ] {
        let r = run(&mut s, &cmd).await;
        assert_ne!(r.exit_code, Some(0), "{cmd}: {r:?}");
        assert!(r.output.contains(error), "{cmd}: {:?}", r.output);
    }
    assert!(!home_file.exists() && !Path::new(&etc_file).exists());
    assert!(!outside.join("moveme").exists() && ws.join("moveme").exists());
    assert!(!outside.join("through-link").exists());
    assert_eq!(
        std::fs::read_to_string(ws.join(".git/config")).unwrap(),
        "[core]\n"
    );
    // Allowed: the workspace and the private temp dir; state persists.
    let r = run(
        &mut s,
        "mkdir -p sub && cd sub && echo kept > f && export K=v && echo t > \"$TMPDIR/t\" && cat \"$TMPDIR/t\"",
    )
    .await;
    assert_eq!((r.exit_code, r.output.as_str()), (Some(0), "t"), "{r:?}");
    let r = run(&mut s, "pwd; echo $K; cat f").await;
    assert_eq!(r.output, format!("{}/sub\nv\nkept", ws.display()));
    assert_eq!(std::fs::read_to_string(ws.join("sub/f")).unwrap(), "kept\n");
    s.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn read_only_writes_nothing_but_its_temp_dir() {
    let root = scratch("read-only");
    // Another shell, named in the target with the parameters after it.
    let mut s = open("local:/bin/sh?sandbox=read-only", &root).await;
    let r = run(&mut s, "echo x > f").await;
    assert!(r.output.contains("Permission denied"), "{r:?}");
    assert!(!root.join("f").exists());
    let r = run(
        &mut s,
        "cat /etc/hostname >/dev/null && echo t > $TMPDIR/t && cat $TMPDIR/t",
    )
    .await;
    assert_eq!(r.output, "t", "{r:?}");
    s.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

/// Landlock ABI 6+ (this project's CI kernels): a sandboxed session cannot
/// signal the user's processes outside it.
#[tokio::test]
async fn a_sandbox_cannot_signal_processes_outside_it() {
    let root = scratch("signal");
    let mut outside = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let mut s = open("local?sandbox=read-only", &root).await;
    let r = run(&mut s, &format!("kill -TERM {}; echo rc=$?", outside.id())).await;
    assert!(
        r.output.contains("Operation not permitted") && r.output.ends_with("rc=1"),
        "{r:?}"
    );
    assert!(
        outside.try_wait().unwrap().is_none(),
        "the signal got through"
    );
    // Its own processes it still signals.
    let r = run(&mut s, "sleep 300 & kill -TERM $! && wait $!; echo rc=$?").await;
    assert_eq!(r.output, "rc=143", "{r:?}");
    s.close().await.unwrap();
    outside.kill().unwrap();
    outside.wait().unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn network_off_refuses_every_socket_but_unix_ones() {
    let root = scratch("network");
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let (tport, uport) = (
        tcp.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    );
    let mut s = open("local:/bin/bash?network=off", &root).await;
    let r = run(&mut s, &format!("echo hi > /dev/tcp/127.0.0.1/{tport}")).await;
    assert!(r.output.contains("Permission denied"), "tcp: {r:?}");
    let r = run(&mut s, &format!("echo hi > /dev/udp/127.0.0.1/{uport}")).await;
    assert!(r.output.contains("Permission denied"), "udp: {r:?}");
    for (family, what) in [
        (
            "socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP",
            "raw",
        ),
        ("socket.AF_NETLINK, socket.SOCK_RAW, 0", "netlink"),
        ("socket.AF_INET6, socket.SOCK_STREAM", "inet6"),
    ] {
        let r = run(
            &mut s,
            &format!("python3 -c 'import socket; socket.socket({family})'"),
        )
        .await;
        assert!(r.output.contains("PermissionError"), "{what}: {r:?}");
    }
    // Nothing reached the listeners.
    assert!(tcp.accept().is_err());
    assert!(udp.recv_from(&mut [0u8; 16]).is_err());
    // Unix sockets work.
    let sock = root.join("u.sock");
    let r = run(
        &mut s,
        &format!(
            "python3 -c 'import socket; s=socket.socket(socket.AF_UNIX); s.bind(\"{}\"); print(\"unix ok\")'",
            sock.display()
        ),
    )
    .await;
    assert_eq!(r.output, "unix ok", "{r:?}");
    s.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

/// The escapes from marker cleanup, each with its own sleep length so the
/// test can find what survived.
fn escapes(tag: u32) -> String {
    format!(
        "env -u EXECKIT_SID -u EXECKIT_CMD setsid sleep {tag}1 & \
         ( (sleep {tag}2 &) & ); \
         nohup sleep {tag}3 >/dev/null 2>&1 & \
         sleep {tag}4 & disown; \
         sleep 0.3"
    )
}

#[tokio::test]
async fn nothing_escapes_the_kill_after_a_timeout_or_a_close() {
    let root = scratch("escapes");
    let tag = 7_700_000 + std::process::id() % 10_000;
    let mut s = open("local?pids=256", &root).await;
    // A background job of an earlier command is not the timed-out one's.
    let r = run(&mut s, &format!("sleep {tag}9 &")).await;
    assert_eq!(r.exit_code, Some(0));
    let cmd = format!("{}; sleep 60", escapes(tag));
    let r = s
        .run(&cmd, RunOptions::timeout(Duration::from_secs(2)))
        .await
        .unwrap();
    assert!(r.timed_out, "{r:?}");
    for n in 1..=4 {
        let left = gone(&format!("sleep {tag}{n}")).await;
        assert!(left.is_empty(), "escaped the timeout: {left:?}");
    }
    assert_eq!(
        running(&format!("sleep {tag}9")).len(),
        1,
        "the earlier job was killed"
    );
    assert_eq!(run(&mut s, "echo next").await.output, "next");
    // On close, everything goes, escapes included.
    let r = run(&mut s, &escapes(tag + 1)).await;
    assert_eq!(r.exit_code, Some(0));
    assert!(!running(&format!("sleep {}1", tag + 1)).is_empty());
    s.close().await.unwrap();
    for n in [1, 2, 3, 4] {
        let left = running(&format!("sleep {}{n}", tag + 1));
        assert!(left.is_empty(), "escaped the close: {left:?}");
    }
    assert!(running(&format!("sleep {tag}9")).is_empty());
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn a_shell_that_dies_takes_its_escapes_along_when_replaced() {
    let root = scratch("restart");
    let tag = 7_600_000 + std::process::id() % 10_000;
    let mut s = open("local?pids=256", &root).await;
    let r = run(&mut s, &escapes(tag)).await;
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    assert!(!running(&format!("sleep {tag}1")).is_empty());
    // The shell dies; the next command restarts it.
    let _ = run(&mut s, "kill -9 $$").await;
    let r = run(&mut s, "echo fresh").await;
    assert_eq!(r.output, "fresh", "{r:?}");
    for n in 1..=4 {
        let left = gone(&format!("sleep {tag}{n}")).await;
        assert!(left.is_empty(), "outlived the shell's restart: {left:?}");
    }
    s.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn a_fork_bomb_stops_at_the_pids_limit_and_the_session_recovers() {
    let root = scratch("bomb");
    let mut s = open("local:/bin/bash?pids=64", &root).await;
    // The classic bomb, in the foreground: every level waits for the two
    // below it, so the processes pile up until the limit refuses forks.
    let r = s
        .run(
            "bomb() { bomb | bomb; }; bomb",
            RunOptions::timeout(Duration::from_secs(3)),
        )
        .await
        .unwrap();
    assert!(r.timed_out, "{r:?}");
    assert!(
        r.output.contains("Resource temporarily unavailable"),
        "no fork was refused: {:?}",
        r.output
    );
    let r = run(&mut s, "echo alive").await;
    assert_eq!(r.output, "alive", "{r:?}");
    // Only the shell is left of the session.
    let r = run(&mut s, "cat /proc/self/cgroup | grep '^0::'").await;
    let cg = r.output.trim_start_matches("0::").to_string();
    let procs = std::fs::read_to_string(format!("/sys/fs/cgroup/unified{cg}/cgroup.procs"))
        .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup{cg}/cgroup.procs")))
        .unwrap_or_default();
    assert!(procs.lines().count() <= 1, "left in {cg}: {procs}");
    s.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn a_memory_hog_is_killed_at_the_limit_with_a_clear_result() {
    let root = scratch("memory");
    let mut s = open("local?memory=64M", &root).await;
    let r = run(
        &mut s,
        "python3 -c 'x = bytearray(400 << 20); print(len(x))'",
    )
    .await;
    assert_eq!(r.exit_code, Some(137), "{r:?}");
    let e = r.error.unwrap_or_default();
    assert!(e.contains("memory limit (64M) was reached"), "{e}");
    let r = run(&mut s, "echo after").await;
    assert_eq!((r.output.as_str(), r.error), ("after", None));
    s.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn the_policy_comes_from_the_config_too_and_a_bad_one_is_refused() {
    let root = scratch("config");
    let mut c = SessionConfig::default();
    c.cwd = Some(root.clone());
    c.containment = Containment::parse_query("sandbox=read-only").unwrap();
    let mut s = Session::open("local", c.clone()).await.unwrap();
    let r = run(&mut s, "echo x > f").await;
    assert!(r.output.contains("Permission denied"), "{r:?}");
    s.close().await.unwrap();
    c.containment =
        Containment::parse_query("sandbox=workspace-write&workspace=/nonexistent-execkit").unwrap();
    let e = Session::open("local", c).await.unwrap_err().to_string();
    assert!(
        e.contains("cannot contain the shell") && e.contains("/nonexistent-execkit"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
