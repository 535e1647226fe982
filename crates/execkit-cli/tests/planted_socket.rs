//! Another local user plants a server at the path our clients use by
//! default (`/tmp/execkit-$UID/execkit.sock` when there is no
//! `XDG_RUNTIME_DIR`): the clients must check who answers before they send
//! a byte. Acts as the attacker with uid 65534 (nobody); needs root, else
//! skipped.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Killed by PID when the test ends, whatever happened.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chown_nobody(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: chown(2) on a path we created, NUL-terminated above.
    assert_eq!(unsafe { libc::chown(c.as_ptr(), NOBODY, NOBODY) }, 0);
}

/// Not a test: the attacker's listener, when this binary is re-run as
/// uid 65534 with `EXECKIT_PLANTED_SOCKET` set. One connection at a time,
/// in the order they arrive: every line received goes to stdout; a
/// `publish` request is accepted (so a mirror goes on to send its events),
/// anything else gets an error; a line `END` stops it.
#[test]
#[ignore = "a helper process, run by another test"]
fn planted_listener() {
    let Some(path) = std::env::var_os("EXECKIT_PLANTED_SOCKET") else {
        return;
    };
    use std::io::Write as _;
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    println!("READY");
    for conn in listener.incoming() {
        let mut w = conn.expect("accept");
        let r = BufReader::new(w.try_clone().unwrap());
        for line in r.lines().map_while(Result::ok) {
            println!("GOT {line}");
            if line == "END" {
                return;
            }
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            let reply = if v["request"]["op"] == "publish" || v["op"] == "publish" {
                serde_json::json!({"id": v["id"], "ok": true, "result": {}})
            } else {
                serde_json::json!({"id": v["id"], "ok": false, "error": "planted"})
            };
            let _ = writeln!(w, "{reply}");
        }
    }
}

/// Fails on 8400d69: root's plain `exec` connected to the planted socket
/// and mirrored its command and output there (`publish`, then the console
/// events), and `exec --session` sent its requests there and took the
/// planted answer for the server's. Now both check the server's uid
/// (SO_PEERCRED) and its directory before a byte is sent: the mirror is
/// skipped, the session request fails with exit 69 and says why.
#[test]
fn clients_never_talk_to_another_users_socket() {
    if !is_root() {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    let scratch: PathBuf =
        std::env::temp_dir().join(format!("execkit-planted-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let run = scratch.join("run");
    for d in [&scratch, &run] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    chown_nobody(&run);
    let socket = run.join("execkit.sock");

    // A copy another uid can run: the checkout may be a private directory.
    let exe = scratch.join("helper");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    let mut listener = Command::new(&exe);
    listener
        .args([
            "--exact",
            "planted_listener",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("EXECKIT_PLANTED_SOCKET", &socket)
        .current_dir("/")
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::piped());
    let mut listener = Reaped(listener.spawn().expect("start the planted listener"));
    let (tx, seen) = mpsc::channel::<String>();
    let out = listener.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let next = || {
        seen.recv_timeout(Duration::from_secs(30))
            .expect("the planted listener answers")
    };
    // libtest prints the test's name on the same line.
    while !next().ends_with("READY") {}

    // Root, with the planted directory as its runtime dir.
    let root_state = scratch.join("root-state");
    let root = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_execkit"))
            .args(args)
            .env("XDG_RUNTIME_DIR", &run)
            .env("XDG_STATE_HOME", &root_state)
            .output()
            .unwrap()
    };
    let r = root(&["exec", "echo root-secret-$((6 * 7))"]);
    assert!(r.status.success(), "{r:?}");
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "root-secret-42");
    let r = root(&["exec", "--session", "s", "echo via-session"]);
    assert_eq!(r.status.code(), Some(69), "{r:?}");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("refusing to talk to") && err.contains(&format!("uid {NOBODY}")),
        "{err}"
    );

    // The listener takes connections in the order they came: once it has
    // the END sent now, it has read everything root sent before.
    {
        use std::io::Write as _;
        let mut end = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        writeln!(end, "END").unwrap();
    }
    let mut got = Vec::new();
    loop {
        let l = next();
        if l.contains("GOT END") {
            break;
        }
        if l.contains("GOT ") {
            got.push(l);
        }
    }
    assert!(
        got.is_empty(),
        "root sent these to another user's socket: {got:?}"
    );
    drop(listener);
    let _ = std::fs::remove_dir_all(&scratch);
}
