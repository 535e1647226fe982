//! Issue 14 items 3 and 4: execkit on a machine shared with other users.
//! The tests run as root and act as the other user (uid 65534, through
//! `setpriv`): they plant directories, symlinks and records where execkit
//! would look, run the real binary, and check that nothing of the other
//! user's was written through, connected to or changed.
//!
//! No test touches `/tmp` itself: each works in a scratch directory it
//! makes (sticky and world-writable where it stands in for `/tmp`).

use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

/// A scratch directory standing in for `/tmp`: root's, mode 1777.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        assert_eq!(
            // SAFETY: geteuid cannot fail.
            unsafe { libc::geteuid() },
            0,
            "these tests act as another user (setpriv): run them as root"
        );
        let d = std::env::temp_dir().join(format!("execkit-shared-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        chmod(&d, 0o1777);
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

/// Runs a shell script as uid 65534 (the other user).
fn as_nobody(script: &str) {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-ec",
        ])
        .arg(script)
        .output()
        .expect("run setpriv");
    assert!(
        out.status.success(),
        "as nobody: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The execkit binary with no `HOME`, `XDG_STATE_HOME` or
/// `XDG_RUNTIME_DIR`, and `TMPDIR` set to `tmp`.
fn execkit(tmp: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_execkit"));
    c.env_remove("HOME")
        .env_remove("XDG_STATE_HOME")
        .env_remove("XDG_RUNTIME_DIR")
        .env("TMPDIR", tmp);
    c
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A file of root's the other user would like execkit to write into.
fn victim(dir: &Path) -> PathBuf {
    let v = dir.join("victim");
    std::fs::write(&v, b"root's own file\n").unwrap();
    chmod(&v, 0o644);
    v
}

/// Fails when `file` no longer holds `was` (said briefly: it may now hold
/// a large output).
fn untouched(file: &Path, was: &str, stderr: &str) {
    let now = std::fs::read(file).unwrap();
    assert!(
        now == was.as_bytes(),
        "{} was written through: {} bytes now, starting {:?}; stderr: {stderr}",
        file.display(),
        now.len(),
        String::from_utf8_lossy(&now[..now.len().min(80)])
    );
}

/// A loopback port standing in for a Docker engine the other user runs;
/// `connected` says whether anything connected to it.
struct Lure(TcpListener);

impl Lure {
    fn new() -> Lure {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        Lure(l)
    }

    fn target(&self) -> String {
        format!("docker://{}/x", self.0.local_addr().unwrap())
    }

    /// A connection, once made, waits in the backlog: no waiting needed.
    fn connected(&self) -> bool {
        self.0.accept().is_ok()
    }
}

/// A session record of a dead owner, pointing gc at `target`.
fn forged_record(target: &str) -> String {
    serde_json::json!({
        "marker": "forged0000000000",
        "target": target,
        "owner_pid": u32::MAX - 1,
        "owner_start": 1,
        "created": 1,
    })
    .to_string()
}

/// Every path under `dir` with its owner and mode (a link: its target).
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else {
                format!("{:o} {} bytes", m.mode() & 0o7777, m.len())
            };
            out.push(format!("{} uid {} {what}", p.display(), m.uid()));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// Issue 14 item 3: with no `HOME` and no `XDG_STATE_HOME`, state never
/// goes to the shared `$TMPDIR/execkit-state` another user prepared (a
/// journal link to root's file, 0777 `spool/` and `sessions/`, a forged
/// record, spool links planted as soon as a spool file shows up): execkit
/// uses its own 0700 `$TMPDIR/execkit-state-0`, and nothing of the other
/// user's is written through, connected to or changed.
#[test]
fn no_home_never_uses_a_shared_state_dir() {
    let s = Scratch::new("nohome");
    let tmp = &s.0;
    let victim = victim(tmp);
    let lure = Lure::new();
    let shared = tmp.join("execkit-state/execkit");
    let record = tmp.join("forged.json");
    std::fs::write(&record, forged_record(&lure.target())).unwrap();
    chmod(&record, 0o644);
    as_nobody(&format!(
        "mkdir -p {shared}/spool {shared}/sessions
         chmod 0777 {tmp}/execkit-state {shared} {shared}/spool {shared}/sessions
         ln -s {victim} {shared}/journal.jsonl
         cp {record} {shared}/sessions/forged0000000000.json",
        shared = shared.display(),
        tmp = tmp.display(),
        victim = victim.display(),
        record = record.display(),
    ));
    // The other user watching the spool: once a spool file of the session
    // shows up, its next names are planted as links to root's file.
    let plant = format!(
        "for f in {spool}/*.out; do [ -e \"$f\" ] || continue; id=${{f##*/}}; id=${{id%-*}}; \
         for k in 1 2 3 4 5 6 7 8 9 10 11 12; do \
         setpriv --reuid=65534 --regid=65534 --clear-groups ln -s {victim} {spool}/$id-$k.out 2>/dev/null || true; \
         done; done",
        spool = shared.join("spool").display(),
        victim = victim.display()
    );
    let before = tree(&shared);
    // Without the journal first: spool files and records are what is left
    // to attack (a journal link of another user was already refused).
    let out = execkit(tmp)
        .args([
            "exec",
            "--no-journal",
            "--json",
            "seq 1 20000",
            &plant,
            "seq 1 20000",
        ])
        .output()
        .unwrap();
    let err = stderr(&out);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    untouched(&victim, "root's own file\n", &err);
    assert!(!lure.connected(), "gc connected where a forged record said");
    assert_eq!(tree(&shared), before, "the shared directory was changed");
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(lines.len(), 3, "{lines:?}");
    // Its own directory instead: 0700, root's, the spool inside.
    let own = tmp.join("execkit-state-0");
    for d in [own.clone(), own.join("execkit"), own.join("execkit/spool")] {
        let m = std::fs::symlink_metadata(&d).unwrap();
        assert!(m.is_dir(), "{}", d.display());
        assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o700), "{}", d.display());
    }
    for l in [&lines[0], &lines[2]] {
        let spooled = PathBuf::from(l["output_path"].as_str().expect("spooled"));
        assert!(
            spooled.starts_with(own.join("execkit/spool")),
            "{spooled:?}"
        );
        assert_eq!(std::fs::read(&spooled).unwrap().len(), 108_894);
    }
    // With the default journal: written in the private directory, 0600.
    let out = execkit(tmp).args(["exec", "echo hi"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let journal = own.join("execkit/journal.jsonl");
    assert_eq!(mode(&journal), 0o600);
    assert!(std::fs::read_to_string(&journal)
        .unwrap()
        .contains("echo hi"));
    untouched(&victim, "root's own file\n", "");
    assert!(!lure.connected(), "gc connected where a forged record said");
    assert_eq!(tree(&shared), before, "the shared directory was changed");
}

/// Issue 14 item 3: another user who made `$TMPDIR/execkit-state-0` first
/// gets a refusal, not root's state: one clear line, exit 73, nothing
/// written into their directory.
#[test]
fn a_squatted_private_state_dir_is_refused() {
    let s = Scratch::new("squat");
    let tmp = &s.0;
    let squat = tmp.join("execkit-state-0");
    as_nobody(&format!(
        "mkdir -p {squat}/execkit && chmod -R 0777 {squat}",
        squat = squat.display()
    ));
    let before = tree(tmp);
    let out = execkit(tmp).args(["exec", "echo hi"]).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(73), "{err}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.contains("belongs to another user (uid 65534)") && err.contains("XDG_STATE_HOME"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(tree(tmp), before);
}

/// Issue 14 item 3: `--journal` never writes into another user's file,
/// however the path reaches it — through root's own link to it, or
/// through a link to the other user's directory — and an existing
/// journal others may read becomes 0600.
#[test]
fn journal_is_only_roots_own_private_file() {
    let s = Scratch::new("journal");
    let tmp = &s.0;
    let theirs_dir = tmp.join("theirs");
    as_nobody(&format!(
        "mkdir {d} && echo theirs > {d}/log.jsonl && chmod 0644 {d}/log.jsonl && ln -s {d} {tmp}/their-link",
        d = theirs_dir.display(),
        tmp = tmp.display()
    ));
    let theirs = theirs_dir.join("log.jsonl");
    let my_link = tmp.join("my-link.jsonl");
    std::os::unix::fs::symlink(&theirs, &my_link).unwrap();
    let state = tmp.join("state");
    for journal in [my_link, tmp.join("their-link/log.jsonl")] {
        let out = execkit(tmp)
            .env("XDG_STATE_HOME", &state)
            .arg("exec")
            .arg("--journal")
            .arg(&journal)
            .arg("echo root-secret")
            .output()
            .unwrap();
        let err = stderr(&out);
        untouched(&theirs, "theirs\n", &err);
        assert_eq!(out.status.code(), Some(73), "{}: {err}", journal.display());
        assert!(err.contains("belongs to another user (uid 65534)"), "{err}");
    }
    assert_eq!(mode(&theirs), 0o644);
    // Root's own journal, left world-readable and writable: made 0600.
    let loose = tmp.join("loose.jsonl");
    std::fs::write(&loose, b"").unwrap();
    chmod(&loose, 0o666);
    let out = execkit(tmp)
        .env("XDG_STATE_HOME", &state)
        .arg("exec")
        .arg("--journal")
        .arg(&loose)
        .arg("echo hi")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(mode(&loose), 0o600);
    assert!(std::fs::read_to_string(&loose).unwrap().contains("echo hi"));
}

/// Issue 14 item 3: gc reads records only from a directory of root's that
/// nobody else may write, and only root's own: a `sessions/` the other
/// user made, or a record they left in root's directory (before it was
/// tightened), never points gc at a target.
#[test]
fn gc_follows_no_record_of_another_user() {
    let s = Scratch::new("gc");
    let tmp = &s.0;
    let lure = Lure::new();
    let state = tmp.join("state");
    let dir = state.join("execkit");
    std::fs::create_dir_all(&dir).unwrap();
    chmod(&state, 0o755);
    chmod(&dir, 0o700);
    let record = tmp.join("forged.json");
    std::fs::write(&record, forged_record(&lure.target())).unwrap();
    chmod(&record, 0o644);
    // 1. `sessions/` is the other user's (made while `execkit/` was open).
    let sessions = dir.join("sessions");
    std::fs::create_dir(&sessions).unwrap();
    chmod(&sessions, 0o777);
    let planted = sessions.join("forged0000000000.json");
    std::fs::copy(&record, &planted).unwrap();
    for p in [&sessions, &planted] {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let gc = || {
        execkit(tmp)
            .env("XDG_STATE_HOME", &state)
            .args(["gc", "--spool-days", "0"])
            .output()
            .unwrap()
    };
    let out = gc();
    let err = stderr(&out);
    assert!(!lure.connected(), "gc followed a forged record: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not reading session records") && err.contains("another user"),
        "{err}"
    );
    assert!(planted.exists());
    // 2. `sessions/` is root's and private, but holds the other user's record.
    std::os::unix::fs::chown(&sessions, Some(0), Some(0)).unwrap();
    chmod(&sessions, 0o700);
    let out = gc();
    let err = stderr(&out);
    assert!(!lure.connected(), "gc followed a forged record: {err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 cleaned, 0 failed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // 3. The background gc of `exec` ignores it too.
    let out = execkit(tmp)
        .env("XDG_STATE_HOME", &state)
        .args(["exec", "--no-journal", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!lure.connected(), "exec's gc followed a forged record");
    assert!(planted.exists());
}

/// Issue 14 item 4: `serve --socket DIR/X.sock` with DIR shared (sticky
/// and world-writable like `/tmp`, or just world-writable) refuses with a
/// clear error and leaves DIR's mode as it was; a directory execkit
/// creates itself inside it is fine.
#[test]
fn serve_refuses_a_shared_socket_dir_and_changes_nothing() {
    let s = Scratch::new("serve");
    let sticky = &s.0;
    let open = sticky.join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    for (dir, m) in [(sticky.clone(), 0o1777), (open.clone(), 0o777)] {
        let sock = dir.join("X.sock");
        let mut child = execkit(sticky)
            .args(["serve", "--no-journal", "--socket"])
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if t.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "serve is serving in {} (mode now {:o})",
                    dir.display(),
                    mode(&dir)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
        assert_eq!(mode(&dir), m, "{}: {err}", dir.display());
        assert_eq!(status.code(), Some(1), "{err}");
        assert!(
            err.contains("is shared") && err.contains("does not change a directory"),
            "{err}"
        );
        assert!(!sock.exists());
    }
    // Its own directory in the shared one: created 0700, serving.
    let own = sticky.join("execkit-0/X.sock");
    let mut child = execkit(sticky)
        .args(["serve", "--no-journal", "--socket"])
        .arg(&own)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(&own).is_err() {
        if t.elapsed() > Duration::from_secs(20) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve did not come up in its own directory");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let modes = (
        mode(own.parent().unwrap()),
        mode(&own) & 0o777,
        mode(sticky),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(modes, (0o700, 0o600, 0o1777));
}
