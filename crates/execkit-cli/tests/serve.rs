//! `execkit serve` against real clients on a temp socket: concurrency, the
//! console, the journal, crash cleanup and the peer-uid check.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use execkit_core::testkit::marked_here;
use serde_json::{json, Value};

struct Server {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    journal: PathBuf,
}

impl Server {
    fn start(name: &str) -> Server {
        Server::start_with(name, &[])
    }

    fn start_with(name: &str, extra: &[&str]) -> Server {
        let dir = std::env::temp_dir().join(format!("execkit-serve-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("run/execkit.sock");
        let journal = dir.join("journal.jsonl");
        let child = Command::new(env!("CARGO_BIN_EXE_execkit"))
            .args(["serve", "--socket"])
            .arg(&socket)
            .arg("--journal")
            .arg(&journal)
            .args(extra)
            .env("XDG_STATE_HOME", dir.join("state"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start execkit serve");
        let t = Instant::now();
        while UnixStream::connect(&socket).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "serve did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            dir,
            socket,
            journal,
        }
    }

    fn execkit(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_execkit"))
            .args(args)
            .env("XDG_STATE_HOME", self.dir.join("state"))
            .output()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Conn {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Conn {
    fn new(socket: &Path) -> Conn {
        let s = UnixStream::connect(socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Conn {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    fn line(&mut self) -> Value {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}"))
    }

    /// Sends a request that must be refused; returns the error text.
    fn refused(&mut self, req: Value) -> String {
        let mut line = serde_json::to_vec(&req).unwrap();
        line.push(b'\n');
        self.w.write_all(&line).unwrap();
        let resp = self.line();
        assert_eq!(resp["ok"], false, "{req} -> {resp}");
        resp["error"].as_str().unwrap_or_default().to_string()
    }

    fn call(&mut self, req: Value) -> Value {
        let mut line = serde_json::to_vec(&req).unwrap();
        line.push(b'\n');
        self.w.write_all(&line).unwrap();
        let resp = self.line();
        assert_eq!(resp["ok"], true, "{req} -> {resp}");
        resp["result"].clone()
    }
}

#[test]
fn two_clients_two_sessions_watch_and_journal() {
    let srv = Server::start("pair");
    let mut watcher = Conn::new(&srv.socket);
    watcher.call(json!({"op": "watch"}));
    let clients: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let socket = srv.socket.clone();
            std::thread::spawn(move || {
                let mut c = Conn::new(&socket);
                c.call(json!({"op": "open", "name": name}));
                let mut outs = Vec::new();
                for i in 0..3 {
                    let r = c.call(json!({"op": "run", "session": name, "command": format!("sleep 0.1; echo {name}{i}")}));
                    outs.push(r["output"].as_str().unwrap().to_string());
                }
                outs
            })
        })
        .collect();
    for (t, name) in clients.into_iter().zip(["a", "b"]) {
        assert_eq!(t.join().unwrap(), [0, 1, 2].map(|i| format!("{name}{i}")));
    }
    // Both sessions' headers, each session's in order.
    let mut headers = Vec::new();
    while headers.len() < 6 {
        let ev = watcher.line();
        if ev["kind"] == "header" {
            headers.push(ev["command"].as_str().unwrap().to_string());
        }
    }
    for name in ["a", "b"] {
        let mine: Vec<&String> = headers
            .iter()
            .filter(|h| {
                h.ends_with(&format!("echo {name}0")) || h.contains(&format!("echo {name}"))
            })
            .collect();
        let expect: Vec<String> = (0..3)
            .map(|i| format!("sleep 0.1; echo {name}{i}"))
            .collect();
        assert_eq!(mine, expect.iter().collect::<Vec<_>>(), "{headers:?}");
    }
    let text = std::fs::read_to_string(&srv.journal).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.iter().filter(|e| e["event"] == "result").count(), 6);
    assert!(events
        .iter()
        .all(|e| e["ts"].is_string() && e["session"].is_string()));
    // Served sessions are journaled under their names too, and
    // `execkit journal --session NAME` finds them.
    assert!(events.iter().all(|e| e["name"] == "a" || e["name"] == "b"));
    let out = Command::new(env!("CARGO_BIN_EXE_execkit"))
        .args(["journal", "--json", "--session", "a", "--journal"])
        .arg(&srv.journal)
        .output()
        .unwrap();
    let picked: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(picked.iter().all(|e| e["name"] == "a"), "{picked:?}");
    assert_eq!(
        picked.iter().filter(|e| e["event"] == "result").count(),
        3,
        "{picked:?}"
    );
}

#[test]
fn python_repl_through_the_server() {
    if Command::new("python3").arg("-V").output().is_err() {
        eprintln!("skipped: no python3");
        return;
    }
    let srv = Server::start("py");
    let mut c = Conn::new(&srv.socket);
    c.call(json!({"op": "open", "name": "py"}));
    let r = c.call(
        json!({"op": "run", "session": "py", "command": "python3 -i -q", "yield_after_secs": 1.0}),
    );
    assert_eq!(r["running"], true, "{r}");
    c.call(json!({"op": "input", "session": "py", "text": "1+1\n"}));
    let mut out = String::new();
    for _ in 0..20 {
        let r = c.call(json!({"op": "poll", "session": "py", "wait_secs": 0.25}));
        out.push_str(r["output"].as_str().unwrap());
        if out
            .lines()
            .any(|l| l.trim().trim_start_matches(">>>").trim() == "2")
        {
            break;
        }
    }
    assert!(
        out.lines()
            .any(|l| l.trim().trim_start_matches(">>>").trim() == "2"),
        "{out:?}"
    );
    let r = c.call(json!({"op": "interrupt", "session": "py"}));
    assert_eq!(r["running"], false);
}

#[test]
fn malformed_requests_get_errors_and_a_second_server_refuses() {
    let srv = Server::start("bad");
    let mut c = Conn::new(&srv.socket);
    c.w.write_all(b"not json\n{\"id\":3,\"op\":\"nope\"}\n")
        .unwrap();
    let a = c.line();
    let b = c.line();
    assert_eq!(
        (a["ok"].clone(), b["ok"].clone(), b["id"].clone()),
        (json!(false), json!(false), json!(3))
    );
    let r = c.call(json!({"op": "ping"}));
    assert!(r["pid"].is_u64());
    let out = Command::new(env!("CARGO_BIN_EXE_execkit"))
        .args(["serve", "--socket"])
        .arg(&srv.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));
}

#[test]
fn hostile_requests_are_refused_and_serving_goes_on() {
    let srv = Server::start_with("hostile", &["--allow-target", "local*"]);
    let mut c = Conn::new(&srv.socket);
    // Outside the allow list, whatever the scheme.
    for target in [
        "docker:web",
        "ssh://root@127.0.0.1:22",
        "docker://127.0.0.1:2375/web",
    ] {
        let e = c.refused(json!({"op": "open", "target": target}));
        assert!(e.contains("not allowed"), "{target}: {e}");
    }
    // Names and settings a shell or a CLI could misread.
    let e = c.refused(json!({"op": "open", "name": "-rf"}));
    assert!(e.contains("not a session name"), "{e}");
    let e = c.refused(json!({"op": "open", "name": "a;b"}));
    assert!(e.contains("not a session name"), "{e}");
    let e = c.refused(json!({"op": "open", "env": {"A;id": "1"}}));
    assert!(e.contains("not an environment variable name"), "{e}");
    let e = c.refused(json!({"op": "open", "env": {"A": "x\u{0}y"}}));
    assert!(e.contains("NUL"), "{e}");
    let e = c.refused(json!({"op": "open", "env": {"EXECKIT_SID": "x"}}));
    assert!(e.contains("set by execkit"), "{e}");
    // Allowed target; a NUL in a command is refused, a 1 MB command runs.
    c.call(json!({"op": "open", "name": "ok", "target": "local"}));
    let e = c.refused(json!({"op": "run", "session": "ok", "command": "echo a\u{0}b"}));
    assert!(e.contains("NUL"), "{e}");
    let big = format!("printf %s '{}' | wc -c", "z".repeat(1 << 20));
    let r = c.call(json!({"op": "run", "session": "ok", "command": big}));
    assert_eq!(r["output"].as_str().unwrap().trim(), "1048576");
    // Bytes that are not UTF-8 are a malformed request, not a crash.
    c.w.write_all(b"{\"op\":\"ping\",\"x\":\"\xff\xfe\"}\n")
        .unwrap();
    let resp = c.line();
    assert_eq!(resp["ok"], false, "{resp}");
    assert!(
        resp["error"].as_str().unwrap().contains("malformed"),
        "{resp}"
    );
    // A request over the size limit (8 MiB) ends that connection with an
    // error; the server itself serves the next client.
    let mut huge = Conn::new(&srv.socket);
    let mut line = br#"{"op":"run","session":"ok","command":""#.to_vec();
    line.extend(std::iter::repeat_n(b'q', 9 << 20));
    line.extend_from_slice(b"\"}\n");
    let _ = huge.w.write_all(&line);
    let resp = huge.line();
    assert!(
        resp["error"]
            .as_str()
            .unwrap_or_default()
            .contains("longer than"),
        "{resp}"
    );
    let mut next = Conn::new(&srv.socket);
    assert!(next.call(json!({"op": "ping"}))["pid"].is_u64());
    let r = next.call(json!({"op": "run", "session": "ok", "command": "echo still"}));
    assert_eq!(r["output"], "still");
}

#[test]
fn kill_9_of_serve_leaves_parseable_journal_and_gc_cleans() {
    let mut srv = Server::start("crash");
    let mut c = Conn::new(&srv.socket);
    c.call(json!({"op": "open", "name": "k"}));
    let r = c.call(json!({"op": "run", "session": "k", "command": "echo $EXECKIT_SID"}));
    let marker = r["output"].as_str().unwrap().to_string();
    // A process that survives the terminal hang-up a dead server causes
    // (the shell itself gets SIGHUP when the PTY master closes).
    c.call(json!({"op": "run", "session": "k", "command": "setsid sleep 300 >/dev/null 2>&1 < /dev/null &"}));
    let r = c.call(
        json!({"op": "run", "session": "k", "command": "sleep 300", "yield_after_secs": 0.3}),
    );
    assert_eq!(r["running"], true);
    assert!(
        marked_here(&marker).len() >= 3,
        "{:?}",
        marked_here(&marker)
    );
    srv.child.kill().unwrap(); // SIGKILL, mid-command
    srv.child.wait().unwrap();
    let text = std::fs::read_to_string(&srv.journal).unwrap();
    for l in text.lines() {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("torn journal line {l:?}: {e}"));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !marked_here(&marker).is_empty(),
        "the setsid'd process should outlive the server"
    );
    let out = srv.execkit(&["gc"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Instant::now();
    while !marked_here(&marker).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "gc left {:?}",
            marked_here(&marker)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn socket_journal_and_spool_are_private() {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let srv = Server::start("perm");
    assert_eq!(mode(srv.socket.parent().unwrap()), 0o700);
    assert_eq!(mode(&srv.socket), 0o600);
    // A socket directory someone left world-writable is tightened first.
    let loose = srv.dir.join("loose");
    std::fs::DirBuilder::new()
        .mode(0o777)
        .create(&loose)
        .unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut second = Command::new(env!("CARGO_BIN_EXE_execkit"))
        .args(["serve", "--no-journal", "--socket"])
        .arg(loose.join("s.sock"))
        .env("XDG_STATE_HOME", srv.dir.join("state2"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while UnixStream::connect(loose.join("s.sock")).is_err()
        && t.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (dir_mode, sock_mode) = (mode(&loose), mode(&loose.join("s.sock")));
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!((dir_mode, sock_mode), (0o700, 0o600));
    let mut c = Conn::new(&srv.socket);
    c.call(json!({"op": "open", "name": "p"}));
    let r = c.call(json!({"op": "run", "session": "p", "command": "seq 1 100000"}));
    let spool = PathBuf::from(r["output_path"].as_str().expect("spooled"));
    assert_eq!(mode(&spool), 0o600);
    assert_eq!(mode(&srv.journal), 0o600);
    let _ = std::fs::remove_file(spool);
}

#[test]
fn another_uid_is_refused() {
    let srv = Server::start("uid");
    // Open the path up so only the server's own SO_PEERCRED check stands
    // between another user and the sessions.
    let dir = srv.socket.parent().unwrap();
    for p in [srv.dir.as_path(), dir, srv.socket.as_path()] {
        Command::new("chmod").arg("a+rwx").arg(p).status().unwrap();
    }
    // The client, where user 65534 can run it.
    let bin = srv.dir.join("execkit");
    std::fs::copy(env!("CARGO_BIN_EXE_execkit"), &bin).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["exec", "--session", "intruder", "--socket"])
        .arg(&srv.socket)
        .arg("id -u")
        .env("XDG_STATE_HOME", srv.dir.join("nobody-state"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(
        err.contains("permission denied") && err.contains("uid 65534"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn idle_sessions_expire_and_sigterm_cleans_up() {
    let dir = std::env::temp_dir().join(format!("execkit-serve-{}-idle", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("run/execkit.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_execkit"))
        .args(["serve", "--no-journal", "--idle-timeout", "1", "--socket"])
        .arg(&socket)
        .env("XDG_STATE_HOME", dir.join("state"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while UnixStream::connect(&socket).is_err() {
        assert!(t.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = Conn::new(&socket);
    c.call(json!({"op": "open", "name": "idle"}));
    let idle_marker = c
        .call(json!({"op": "run", "session": "idle", "command": "echo $EXECKIT_SID"}))["output"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        c.call(json!({"op": "list"})),
        json!([]),
        "idle session not expired"
    );
    assert!(
        marked_here(&idle_marker).is_empty(),
        "expired session left processes"
    );

    c.call(json!({"op": "open", "name": "busy"}));
    let marker = c.call(json!({"op": "run", "session": "busy", "command": "echo $EXECKIT_SID"}))
        ["output"]
        .as_str()
        .unwrap()
        .to_string();
    c.call(
        json!({"op": "run", "session": "busy", "command": "sleep 300", "yield_after_secs": 0.2}),
    );
    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "serve did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(marked_here(&marker).is_empty(), "SIGTERM left processes");
    assert!(!socket.exists(), "socket not removed");
    let _ = std::fs::remove_dir_all(dir);
}

/// Reads console events until a header for `command` and its output line;
/// panics after 30 s.
fn wait_for_command(watcher: &mut Conn, command: &str, output: &str) {
    let t = Instant::now();
    let (mut header, mut printed) = (false, false);
    while !(header && printed) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no {command:?} on the console"
        );
        let ev = watcher.line();
        header |= ev["kind"] == "header" && ev["command"] == command;
        let bytes: Vec<u8> = ev["bytes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|b| b.as_u64())
                    .map(|b| b as u8)
                    .collect()
            })
            .unwrap_or_default();
        printed |= header && String::from_utf8_lossy(&bytes).contains(output);
    }
}

/// `execkit exec` and `execkit mcp` sessions do not live in the server,
/// yet a person watching the server's console sees what they run.
#[test]
fn exec_and_mcp_are_mirrored_to_the_watchers() {
    let srv = Server::start("mirror");
    let mut watcher = Conn::new(&srv.socket);
    watcher.call(json!({"op": "watch"}));

    let out = srv.execkit(&[
        "exec",
        "--no-journal",
        "--socket",
        srv.socket.to_str().unwrap(),
        "echo mirrored-from-exec",
    ]);
    assert!(out.status.success(), "{out:?}");
    wait_for_command(
        &mut watcher,
        "echo mirrored-from-exec",
        "mirrored-from-exec",
    );

    // The MCP server finds the server at the default socket.
    let mut mcp = Command::new(env!("CARGO_BIN_EXE_execkit"))
        .args(["mcp", "--no-journal"])
        .env("XDG_STATE_HOME", srv.dir.join("state"))
        .env("XDG_RUNTIME_DIR", srv.socket.parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = mcp.stdin.take().unwrap();
    let mut stdout = BufReader::new(mcp.stdout.take().unwrap());
    for msg in [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "serve-test", "version": "0"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "run", "arguments": {"command": "echo mirrored-from-mcp"}}}),
    ] {
        writeln!(stdin, "{msg}").unwrap();
    }
    let t = Instant::now();
    loop {
        assert!(t.elapsed() < Duration::from_secs(30), "mcp did not answer");
        let mut l = String::new();
        assert!(stdout.read_line(&mut l).unwrap() > 0, "mcp closed stdout");
        let v: Value = serde_json::from_str(&l).unwrap();
        if v["id"] == 2 {
            assert_eq!(
                v["result"]["structuredContent"]["output"], "mirrored-from-mcp",
                "{v}"
            );
            break;
        }
    }
    wait_for_command(&mut watcher, "echo mirrored-from-mcp", "mirrored-from-mcp");
    drop(stdin);
    let st = mcp.wait().unwrap();
    assert!(st.success(), "mcp exited with {st}");
}
