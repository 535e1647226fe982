//! Contained sessions from the outside (issue 19): the flags of `exec`,
//! a server's floor, the journal line, and the refusal a user gets when
//! the machine (here: their privileges) cannot give what they asked for.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::{spawn_serve, terminate, Conn};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "execkit-cli-contained-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn execkit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_execkit"))
}

#[test]
fn exec_flags_contain_and_the_journal_says_how() {
    let dir = scratch("flags");
    let journal = dir.join("j.jsonl");
    let out = execkit()
        .args([
            "exec",
            "--json",
            "--sandbox",
            "workspace-write",
            "--network",
            "off",
        ])
        .args(["--memory", "256M", "--pids", "128", "--journal"])
        .arg(&journal)
        .arg("--workspace")
        .arg(&dir)
        .arg(format!(
            "cd {}; echo in > ok; echo out > /etc/execkit-x; echo done",
            dir.display()
        ))
        .env("XDG_STATE_HOME", &dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Permission denied") && text.contains("done"),
        "{text}"
    );
    assert!(dir.join("ok").exists() && !std::path::Path::new("/etc/execkit-x").exists());
    let j = std::fs::read_to_string(&journal).unwrap();
    let open = j
        .lines()
        .find(|l| l.contains("\"session_open\""))
        .unwrap_or_else(|| panic!("no open line in {j}"));
    let want = format!(
        "\"contained\":\"sandbox=workspace-write&workspace={}&network=off&memory=256M&pids=128\"",
        dir.canonicalize().unwrap().display()
    );
    assert!(open.contains(&want), "{open}");
    // Bad values and non-local targets are usage errors.
    for args in [
        vec!["--sandbox", "tight"],
        vec!["--memory", "lots"],
        vec!["--sandbox", "read-only", "--target", "docker:web"],
    ] {
        let out = execkit()
            .arg("exec")
            .args(&args)
            .arg("true")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_server_floor_fills_in_and_refuses_loosening() {
    let dir = scratch("floor");
    let socket = dir.join("s.sock");
    let mut serve = spawn_serve(
        &socket,
        &dir.join("j.jsonl"),
        &dir,
        &["--sandbox", "read-only", "--pids", "64"],
    );
    let mut c = Conn::new(&socket).timeout(Duration::from_secs(60));
    c.call(json!({"op": "open", "name": "plain", "target": "local"}));
    let r = c.call(json!({"op": "run", "session": "plain", "command": format!("echo x > {}/f", dir.display())}));
    assert!(
        r["output"].as_str().unwrap().contains("Permission denied"),
        "{r}"
    );
    for target in ["local?sandbox=off", "local?network=on", "local?pids=1000"] {
        let e = c.refused(json!({"op": "open", "name": "loose", "target": target}));
        assert!(
            e.contains("looser than this server allows"),
            "{target}: {e}"
        );
    }
    let e = c.refused(json!({"op": "open", "name": "far", "target": "docker:web"}));
    assert!(e.contains("only local targets can be contained"), "{e}");
    terminate(&mut serve, Duration::from_secs(30), "execkit serve");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Not root: no cgroup of its own can be made under root's, so the exact
/// kill cannot be had and the session is refused, saying so (never run
/// uncontained).
#[test]
fn what_the_machine_cannot_give_is_refused_by_name() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test drops root to nobody: run it as root (CI does)");
    }
    let dir = scratch("refused");
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_execkit"))
        .args(["exec", "--sandbox", "read-only", "echo ran"])
        .env("XDG_STATE_HOME", &dir)
        .env("HOME", &dir)
        .current_dir(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains("ran"), "ran uncontained: {stdout}");
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr.contains("cannot contain the shell") && stderr.contains("cgroup"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The owner of a contained session is SIGKILLed: nothing of it runs its
/// drop, and a process that shed the marker (`env -u`, `setsid`) would
/// outlive marker cleanup; `execkit gc` kills the session's cgroup.
#[test]
fn gc_kills_what_a_dead_owner_left_in_its_cgroup() {
    let dir = scratch("gc");
    let tag = format!("77812{}", std::process::id() % 10_000);
    let mut owner = execkit()
        .args(["exec", "--pids", "64", "--no-journal"])
        .arg(format!(
            "env -u EXECKIT_SID -u EXECKIT_CMD setsid sleep {tag} & sleep 300"
        ))
        .env("XDG_STATE_HOME", &dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while running(&tag).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the escape never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    owner.kill().unwrap();
    owner.wait().unwrap();
    assert!(!running(&tag).is_empty(), "the escape died with its owner");
    let out = execkit()
        .arg("gc")
        .env("XDG_STATE_HOME", &dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !running(&tag).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "survived gc: {:?}",
            running(&tag)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Processes whose command line starts with `sleep NEEDLE`.
fn running(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.starts_with(&format!("sleep {needle}"))
                .then(|| format!("{} {cmd}", e.file_name().to_string_lossy()))
        })
        .collect()
}

/// `execkit sandbox-check` on this machine (root, Landlock, cgroups): every
/// protection there; as nobody, the missing cgroup is named and the exit
/// status says so.
#[test]
fn sandbox_check_lists_what_the_machine_gives() {
    let out = execkit().arg("sandbox-check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for what in [
        "sandbox (writes)",
        "network=off",
        "exact kill",
        "memory=",
        "pids=",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok") && l.contains(what)),
            "{what}: {text}"
        );
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_execkit"))
        .arg("sandbox-check")
        .current_dir("/")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("missing") && l.contains("exact kill") && l.contains("cgroup")),
        "{text}"
    );
}

/// `execkit shell --sandbox`: a person's shell contained the same way.
#[test]
fn shell_takes_the_flags_too() {
    use std::io::Write;
    let dir = scratch("shell");
    let target = dir.join("x");
    let mut child = execkit()
        .args(["shell", "--sandbox", "read-only", "--no-journal"])
        .env("XDG_STATE_HOME", &dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(
        child.stdin.take().unwrap(),
        "touch {}; echo rc=$?",
        target.display()
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Permission denied") && text.contains("rc=1"),
        "{text}"
    );
    assert!(!target.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The cgroup2 mount point, from mountinfo.
fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            right.starts_with("cgroup2 ").then(|| PathBuf::from(point))
        })
        .expect("a cgroup2 mount")
}

/// No root needed where the kernel allows it: a user (uid 65534) inside a
/// cgroup v2 subtree delegated to it (as systemd gives each user's
/// services) gets a sandboxed session with `.git` read-only — through a
/// user namespace of its own — and the exact kill.
#[test]
fn a_user_with_a_delegated_cgroup_needs_no_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test delegates a cgroup to nobody: run it as root (CI does)");
    }
    let nobody =
        |p: &std::path::Path| std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    let dir = scratch("delegated");
    nobody(&dir);
    let ws = dir.join("ws");
    std::fs::create_dir_all(ws.join(".git")).unwrap();
    std::fs::write(ws.join(".git/config"), "[core]\n").unwrap();
    for p in [&ws, &ws.join(".git"), &ws.join(".git/config")] {
        nobody(p);
    }
    let cg = cgroup2_mount().join(format!("execkit-delegated-{}", std::process::id()));
    std::fs::create_dir(&cg).unwrap();
    for e in std::iter::once(cg.clone())
        .chain(std::fs::read_dir(&cg).unwrap().flatten().map(|e| e.path()))
    {
        nobody(&e);
    }
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec setpriv --reuid=65534 --regid=65534 --clear-groups -- \"$0\" \"$@\"",
        cg.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_execkit")])
        .args(["exec", "--sandbox", "workspace-write", "--workspace"])
        .arg(&ws)
        .arg(format!(
            "cd {}; echo x >> .git/config; echo ok > f; cat f; env -u EXECKIT_SID setsid sleep 7790{} &",
            ws.display(),
            std::process::id() % 1000
        ))
        .env("XDG_STATE_HOME", &dir)
        .env("HOME", &dir)
        .current_dir(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}{err}");
    assert!(
        text.contains("Read-only file system") && text.contains("ok"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join(".git/config")).unwrap(),
        "[core]\n"
    );
    assert_eq!(std::fs::read_to_string(ws.join("f")).unwrap(), "ok\n");
    // Its cgroup went with it, escape and all.
    let left = running(&format!("7790{}", std::process::id() % 1000));
    assert!(left.is_empty(), "{left:?}");
    let children: Vec<_> = std::fs::read_dir(&cg)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(children.is_empty(), "{children:?}");
    std::fs::remove_dir(&cg).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
