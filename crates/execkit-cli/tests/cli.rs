//! Long on purpose: one test binary (one link step) for the whole CLI
//! contract, which reads best in one place.
//!
//! The CLI contract (README.md), tested from outside against the real binary.

use std::process::{Command, ExitCode, Output};
use std::time::{Duration, Instant};

use execkit_core::testkit::{self, libtest_mimic::Trial};

fn execkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_execkit"))
        .args(args)
        .env(
            "XDG_STATE_HOME",
            std::env::temp_dir().join("execkit-cli-tests"),
        )
        .output()
        .expect("run execkit")
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_results_share_one_session() {
    let out = execkit(&[
        "exec",
        "--json",
        "cd /tmp",
        "export A=1",
        "echo $A; pwd",
        "false",
    ]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 4, "{lines:?}");
    let codes: Vec<i64> = lines
        .iter()
        .map(|l| l["exit_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [0, 0, 0, 1]);
    assert_eq!(lines[2]["output"], "1\n/tmp");
    for l in &lines {
        assert_eq!(l["cwd"], "/tmp");
        for field in [
            "command",
            "output",
            "timed_out",
            "truncated",
            "restarted",
            "duration_ms",
            "output_path",
        ] {
            assert!(l.get(field).is_some(), "missing {field} in {l}");
        }
    }
    assert_eq!(out.status.code(), Some(1));
}

fn sleeping(arg: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if cmd == format!("sleep\0{arg}\0").as_bytes() {
                pids.push(pid);
            }
        }
    }
    pids
}

fn timeout_returns_quickly_and_leaves_nothing() {
    let t = Instant::now();
    let out = execkit(&["exec", "--json", "--timeout", "1", "sleep 31.7", "echo ok"]);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let lines = json_lines(&out);
    assert_eq!(lines[0]["timed_out"], true);
    assert!(lines[0]["exit_code"].is_null());
    assert_eq!(lines[1]["output"], "ok");
    assert_eq!(out.status.code(), Some(0));
    assert!(sleeping("31.7").is_empty(), "sleep survived");
}

fn exit_status_is_the_last_commands() {
    assert_eq!(
        execkit(&["exec", "false", "(exit 5)"]).status.code(),
        Some(5)
    );
    assert_eq!(execkit(&["exec", "false", "true"]).status.code(), Some(0));
    assert_eq!(
        execkit(&["exec", "--timeout", "0.5", "true", "sleep 9.3"])
            .status
            .code(),
        Some(124)
    );
}

fn human_output_and_status_line() {
    let out = execkit(&["exec", "echo hi"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    let out = execkit(&["exec", "echo no; false"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no\n");
    assert!(stderr(&out).contains("exit 1"), "{}", stderr(&out));
}

fn usage_errors_exit_2() {
    let out = execkit(&["exec"]);
    assert_eq!(out.status.code(), Some(2));
    let out = execkit(&["exec", "--target", "nosuch:thing", "true"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("nosuch") && !err.contains("panicked"), "{err}");
    let out = execkit(&["exec", "--timeout", "-1", "true"]);
    assert_eq!(out.status.code(), Some(2));
    let out = execkit(&["exec", "echo a\u{1}b", ""]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

fn hostile_targets_and_bytes_are_usage_errors() {
    for target in [
        "docker:web;rm -rf /",
        "docker:-H",
        "docker:$(id)",
        "ssh://-oProxyCommand=id@h",
        "ssh://us;er@h",
        "ssh://u@-h",
        "ssh://u@h`id`",
        "local:-i",
    ] {
        let out = execkit(&["exec", "--target", target, "true"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{target}: {err}");
        assert_eq!(err.lines().count(), 1, "{target}: {err}");
        assert!(err.contains("invalid target"), "{target}: {err}");
    }
    // Arguments that are not UTF-8 never reach a shell.
    use std::os::unix::ffi::OsStrExt;
    let out = Command::new(env!("CARGO_BIN_EXE_execkit"))
        .arg("exec")
        .arg(std::ffi::OsStr::from_bytes(b"echo \xff\xfe"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("UTF-8"), "{}", stderr(&out));
}

/// An `@` in the user part of an ssh target (`deploy@prod.example.com@
/// 127.0.0.1` reads as prod.example.com and connects to 127.0.0.1) is a
/// usage error naming the host it would have reached; nothing connects.
fn an_at_sign_in_an_ssh_user_name_is_a_usage_error() {
    let wire = execkit_core::testkit::Tripwire::new();
    let target = format!("ssh://deploy@prod.example.com@127.0.0.1:{}", wire.port);
    let out = execkit(&["exec", "--target", &target, "true"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("`@` in the user name"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{}", wire.port)), "{err}");
    assert_eq!(wire.connections(), 0, "{err}");
}

/// `connect_timeout` on an ssh target: a bad value is a usage error; a
/// host that accepts TCP and never sends a banner is unreachable after it,
/// with the host and the stage in the message.
fn ssh_connect_timeout_is_checked_and_honoured() {
    // A listener that never accepts: the kernel completes the TCP
    // handshake, nobody ever writes.
    let stalled = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = stalled.local_addr().unwrap().port();
    for bad in ["0", "-1", "nan", "1e300", "soon"] {
        let target = format!("ssh://nobody@127.0.0.1:{port}?connect_timeout={bad}");
        let out = execkit(&["exec", "--target", &target, "true"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert_eq!(err.lines().count(), 1, "{bad}: {err}");
        assert!(
            err.contains("invalid target")
                && err.contains(&format!("connect_timeout={bad} is not a duration")),
            "{bad}: {err}"
        );
    }
    let target = format!("ssh://nobody@127.0.0.1:{port}?connect_timeout=1.5");
    let t = Instant::now();
    let out = execkit(&["exec", "--target", &target, "true"]);
    let took = t.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(
        err.contains(&format!("no SSH banner from 127.0.0.1:{port} within 1.5 s")),
        "{err}"
    );
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    drop(stalled);
}

fn unreachable_target_exits_69() {
    let out = execkit(&["exec", "--target", "local:/nonexistent/shell", "true"]);
    assert_eq!(out.status.code(), Some(69));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("/nonexistent/shell") && err.contains("No such file"),
        "{err}"
    );
}

fn output_cap_spools_full_text() {
    let out = execkit(&["exec", "--json", "--output-limit", "100", "seq 1 10000"]);
    let l = &json_lines(&out)[0];
    assert_eq!(l["truncated"], true);
    let path = l["output_path"].as_str().expect("output_path");
    let full = std::fs::read_to_string(path).unwrap();
    let expected: String = (1..=10000).map(|i| format!("{i}\n")).collect();
    assert_eq!(full, expected);
    let _ = std::fs::remove_file(path);
}

fn transports_lists_local() {
    let out = execkit(&["transports"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l.starts_with("local ")), "{stdout}");
}

fn fresh_carries_no_state() {
    let out = execkit(&[
        "exec",
        "--json",
        "--fresh",
        "export Y=5; cd /",
        "echo ${Y:-unset}; pwd",
    ]);
    let lines = json_lines(&out);
    assert_eq!(
        lines[1]["output"],
        format!("unset\n{}", std::env::current_dir().unwrap().display())
    );
}

fn stdin_is_fed_through_a_pipe() {
    let dir = std::env::temp_dir().join(format!("execkit-stdin-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.txt");
    std::fs::write(&input, "b\na\nc\n").unwrap();
    let out = execkit(&[
        "exec",
        "--json",
        "--stdin",
        input.to_str().unwrap(),
        "sort",
        "wc -l",
    ]);
    let lines = json_lines(&out);
    assert_eq!(lines[0]["output"], "a\nb\nc");
    assert_eq!(lines[0]["command"], "sort");
    assert_eq!(lines[1]["output"].as_str().unwrap().trim(), "3");
    // Output still comes through the terminal while stdin is the pipe.
    let out = execkit(&[
        "exec",
        "--json",
        "--stdin",
        input.to_str().unwrap(),
        "[ -t 1 ] && ! [ -t 0 ] && echo tty-out-pipe-in",
    ]);
    assert_eq!(json_lines(&out)[0]["output"], "tty-out-pipe-in");
    let _ = std::fs::remove_dir_all(dir);
}

fn journal_records_and_reads_back() {
    let dir = std::env::temp_dir().join(format!("execkit-journal-test-{}", std::process::id()));
    let journal = dir.join("j.jsonl");
    let j = journal.to_str().unwrap();
    let out = execkit(&["exec", "--journal", j, "echo token=hunter2secret", "false"]);
    assert_eq!(out.status.code(), Some(1));
    let text = std::fs::read_to_string(&journal).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "session_open",
            "command",
            "result",
            "command",
            "result",
            "session_close"
        ]
    );
    assert!(!text.contains("hunter2secret"), "secret journaled: {text}");
    assert_eq!(events[4]["exit_code"], 1);
    let out = execkit(&["journal", "--journal", j, "--tail", "2"]);
    let human = String::from_utf8_lossy(&out.stdout);
    assert_eq!(human.lines().count(), 2, "{human}");
    assert!(human.contains("exit 1"), "{human}");
    let out = execkit(&["exec", "--no-journal", "--journal", j, "true"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--journal and --no-journal conflict"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn shell_repl_without_a_terminal() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_execkit"))
        .args(["shell", "--no-journal"])
        .env(
            "XDG_STATE_HOME",
            std::env::temp_dir().join("execkit-cli-tests"),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"cd /tmp\npwd\nfalse\nexit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/tmp\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[exit 0") && err.contains("[exit 1"), "{err}");
}

fn gc_prunes_spool_files_past_their_age() {
    let state = std::env::temp_dir().join(format!("execkit-cli-prune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_execkit"))
            .args(args)
            .env("XDG_STATE_HOME", &state)
            .output()
            .unwrap()
    };
    // A real spool file from a capped command, then one aged by 30 days.
    let out = run(&["exec", "--json", "--output-limit", "100", "seq 1 10000"]);
    let fresh = json_lines(&out)[0]["output_path"]
        .as_str()
        .expect("spooled")
        .to_string();
    let old = std::path::Path::new(&fresh).with_file_name("old-1.out");
    let f = std::fs::File::create(&old).unwrap();
    f.set_len(1234).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(30 * 86_400))
        .unwrap();
    let out = run(&["gc"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout.contains("pruned 1 spool file(s), 1234 bytes"),
        "{stdout}"
    );
    assert!(!old.exists());
    assert!(std::path::Path::new(&fresh).exists());
    // --spool-days 0 keeps everything.
    let out = run(&["gc", "--spool-days", "0"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("pruned"));
    assert!(std::path::Path::new(&fresh).exists());
    let _ = std::fs::remove_dir_all(&state);
}

/// A bash that starts with functions already defined (here exported from
/// the environment) may start background jobs from code no command sent:
/// the engine must see that at start-up and print no `[1] PID` notice.
fn inherited_bash_function_starting_a_job_prints_no_notice() {
    let out = Command::new(env!("CARGO_BIN_EXE_execkit"))
        .args([
            "exec",
            "--json",
            "--target",
            "local:/bin/bash",
            "bgx",
            "echo x",
        ])
        .env("BASH_FUNC_bgx%%", "() { sleep 0.3 & }")
        .env(
            "XDG_STATE_HOME",
            std::env::temp_dir().join("execkit-cli-tests"),
        )
        .output()
        .expect("run execkit");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "{lines:?} {}", stderr(&out));
    assert_eq!(lines[0]["output"], "", "{lines:?}");
    assert_eq!(lines[0]["exit_code"], 0, "{lines:?}");
    assert_eq!(lines[1]["output"], "x", "{lines:?}");
}

/// `shell` and `exec` agree on what a target that cannot work means: a
/// target that does not parse is the user's mistake (exit 2), an
/// unreachable one is the target's (exit 69).
fn shell_and_exec_give_the_same_status_for_a_bad_target() {
    for verb in ["exec", "shell"] {
        let mut args = vec![verb, "--no-journal", "--target", "nosuchscheme:x"];
        if verb == "exec" {
            args.push("true");
        }
        let out = execkit(&args);
        assert_eq!(out.status.code(), Some(2), "{verb}: {}", stderr(&out));
        assert!(stderr(&out).contains("nosuchscheme"), "{}", stderr(&out));
        let mut args = vec![verb, "--no-journal", "--target", "local:/nonexistent/shell"];
        if verb == "exec" {
            args.push("true");
        }
        let out = execkit(&args);
        assert_eq!(out.status.code(), Some(69), "{verb}: {}", stderr(&out));
    }
}

/// Every duration the CLI takes is checked: huge, negative or not-a-number
/// seconds are one line on stderr and exit 2, never a panic (exit 101).
fn huge_and_bad_durations_are_one_line_usage_errors() {
    for bad in [
        "1e300",
        "99999999999999999999",
        "-1",
        "nan",
        "inf",
        "31536001",
    ] {
        for args in [
            vec!["exec", "--timeout", bad, "true"],
            vec!["exec", "--session", "s", "--timeout", bad, "true"],
            vec!["shell", "--timeout", bad],
            vec!["poll", "--session", "s", "--wait", bad],
        ] {
            let out = execkit(&args);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
            assert!(
                err.contains("seconds") && !err.contains("panicked"),
                "{args:?}: {err}"
            );
        }
    }
    // The ceiling itself is fine.
    let out = execkit(&["exec", "--timeout", "31536000", "echo ok"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// `--file`: commands from a file or stdin, as long as they come — here
/// 2.4 MB in eight commands of 300 KB, beyond what argv can carry (one
/// argument at most 128 KiB, all of them about 2 MB).
fn file_commands_beyond_the_argument_limit() {
    let dir = std::env::temp_dir().join(format!("execkit-file-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let big = "x".repeat(300_000);
    let one = format!("printf %s '{big}' | wc -c");
    let file = dir.join("commands.sh");
    let mut text = String::new();
    for i in 0..8 {
        text.push_str(&format!("echo start {i}\n{one}\n\n\n"));
    }
    assert!(text.len() > 2_400_000);
    std::fs::write(&file, &text).unwrap();
    let out = execkit(&["exec", "--json", "--file", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 8);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["output"], format!("start {i}\n300000"), "command {i}");
    }

    // From stdin, NUL-separated: a command may hold blank lines.
    let mut child = Command::new(env!("CARGO_BIN_EXE_execkit"))
        .args(["exec", "--json", "--file", "-"])
        .env(
            "XDG_STATE_HOME",
            std::env::temp_dir().join("execkit-cli-tests"),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = format!("cd /tmp\0printf 'a\\n\\nb'\n\n\0{one}\0(exit 4)\0");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(input.as_bytes()).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let lines = json_lines(&out);
    let outputs: Vec<&str> = lines
        .iter()
        .map(|l| l["output"].as_str().unwrap())
        .collect();
    assert_eq!(outputs, ["", "a\n\nb", "300000", ""], "{}", stderr(&out));
    assert_eq!(lines[2]["cwd"], "/tmp");
    assert_eq!(out.status.code(), Some(4));

    // Nothing to run, unreadable, or both --file and CMD: usage errors.
    std::fs::write(&file, "\n  \n").unwrap();
    for args in [
        vec!["exec", "--file", file.to_str().unwrap()],
        vec!["exec", "--file", "/nonexistent/commands"],
        vec!["exec", "--file", file.to_str().unwrap(), "true"],
        vec!["exec", "--file", "-", "--stdin", "-"],
    ] {
        let out = execkit(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `execkit serve` on a socket of its own, stopped by PID on drop.
struct Serve {
    child: std::process::Child,
    dir: std::path::PathBuf,
    socket: std::path::PathBuf,
}

impl Serve {
    /// Starts it and returns once it listens (its first stderr line).
    fn start(name: &str) -> Serve {
        use std::io::BufRead;
        let dir = std::env::temp_dir().join(format!("execkit-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("run/execkit.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_execkit"))
            .args(["serve", "--no-journal", "--socket"])
            .arg(&socket)
            .env("XDG_STATE_HOME", dir.join("state"))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start execkit serve");
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        assert!(line.contains("listening"), "{line}");
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut err, &mut std::io::sink());
        });
        Serve { child, dir, socket }
    }

    fn sock(&self) -> &str {
        self.socket.to_str().unwrap()
    }

    /// `execkit ARGS… --socket S`.
    fn execkit(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_execkit"))
            .args(args)
            .args(["--socket", self.sock()])
            .env("XDG_STATE_HOME", self.dir.join("state"))
            .output()
            .unwrap()
    }

    /// One request on a new connection; the response.
    fn call(&self, req: serde_json::Value) -> serde_json::Value {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).unwrap();
        writeln!(s, "{req}").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn json_line(out: &Output) -> serde_json::Value {
    let lines = json_lines(out);
    assert_eq!(lines.len(), 1, "{lines:?} {}", stderr(out));
    lines[0].clone()
}

/// `poll`, `send`, `interrupt` and `close` reach a session of a running
/// server, with `exec`'s exit codes, 75 while the command still runs, 66
/// for a session the server does not have, 69 without a server.
/// In a served session a program waiting for terminal input keeps
/// running: `exec --session` returns at once with `running` and
/// `waiting_for_input` (exit 75), the answer goes in with `send`, the
/// result comes with `poll`.
fn a_served_prompt_is_reported_and_answered() {
    let srv = Serve::start("prompt");
    let t = Instant::now();
    let out = srv.execkit(&[
        "exec",
        "--session",
        "p",
        "--json",
        "printf 'name? '; read -r n; echo \"hi $n\"",
    ]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    let r = json_line(&out);
    assert_eq!(r["running"], true, "{r}");
    assert_eq!(r["waiting_for_input"], true, "{r}");
    assert_eq!(r["output"], "name? ", "{r}");
    let out = srv.execkit(&["send", "--session", "p", "bob"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = srv.execkit(&["poll", "--session", "p", "--wait", "30", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = json_line(&out);
    assert_eq!(r["output"], "hi bob", "{r}");
    assert_eq!(r["waiting_for_input"], false, "{r}");
}

fn session_verbs_reach_a_served_session() {
    let srv = Serve::start("verbs");
    let out = srv.execkit(&["exec", "--session", "w", "cd /tmp"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // A command that waits for input, started by another client.
    let r = srv.call(serde_json::json!({"op": "run", "session": "w",
        "command": "echo asking; read x; echo got $x; exit_with() { return $1; }; exit_with 3",
        "yield_after_secs": 0.2}));
    assert_eq!(r["result"]["running"], true, "{r}");

    let out = srv.execkit(&["poll", "--session", "w", "--json"]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert_eq!(json_line(&out)["running"], true);

    let out = srv.execkit(&["send", "--session", "w", "--json", "hello"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json_line(&out)["sent"], 6);

    let out = srv.execkit(&["poll", "--session", "w", "--wait", "30"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    // The parts concatenate to the whole output: the first read ended at
    // `asking` (its newline held back), so this one starts with it.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "\ngot hello\n");

    // Nothing runs now: poll and interrupt say so, exit 1.
    for verb in ["poll", "interrupt"] {
        let out = srv.execkit(&[verb, "--session", "w"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{verb}: {err}");
        assert!(err.contains("no command is running"), "{verb}: {err}");
    }

    // interrupt: the command's final result, the session stays.
    let r = srv.call(serde_json::json!({"op": "run", "session": "w",
        "command": "sleep 60.9", "yield_after_secs": 0.2}));
    assert_eq!(r["result"]["running"], true, "{r}");
    let out = srv.execkit(&["interrupt", "--session", "w", "--json"]);
    let r = json_line(&out);
    assert_eq!(r["running"], false, "{r}");
    assert_ne!(out.status.code(), Some(0), "{r}");
    let out = srv.execkit(&["exec", "--session", "w", "pwd"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/tmp\n");

    let out = srv.execkit(&["close", "--session", "w", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json_line(&out)["closed"], true);

    // A session the server does not have: one line, exit 66.
    for args in [
        vec!["poll", "--session", "w"],
        vec!["send", "--session", "nosuch", "x"],
        vec!["interrupt", "--session", "nosuch"],
        vec!["close", "--session", "nosuch"],
    ] {
        let out = srv.execkit(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(66), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("no session named"), "{args:?}: {err}");
    }
    drop(srv);

    // No server: 69.
    let out = execkit(&["poll", "--session", "w", "--socket", "/nonexistent/s.sock"]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

/// `execkit watch` names a served session by its name, not its engine id.
fn watch_shows_session_names() {
    use std::io::BufRead;
    let srv = Serve::start("watchnames");
    let mut watch = Command::new(env!("CARGO_BIN_EXE_execkit"))
        .args(["watch", "--socket", srv.sock()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its first stderr line says it is subscribed (read on a thread: a
    // watch that never says so fails the test instead of hanging it).
    let mut err = std::io::BufReader::new(watch.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = err.read_line(&mut line);
        let _ = tx.send(line);
        let _ = std::io::copy(&mut err, &mut std::io::sink());
    });
    let first = rx.recv_timeout(Duration::from_secs(30));
    let ready = matches!(&first, Ok(l) if l.contains("watching"));
    if !ready {
        let _ = watch.kill();
        let _ = watch.wait();
        panic!("watch did not say it is watching: {first:?}");
    }
    let out = srv.execkit(&["exec", "--session", "build", "echo from-build"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = srv.call(serde_json::json!({"op": "list"}))["result"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut stdout = std::io::BufReader::new(watch.stdout.take().unwrap());
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.starts_with("[build: exit 0"))
    {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push(line);
    }
    let _ = watch.kill();
    let _ = watch.wait();
    let text = seen.concat();
    assert!(text.contains("── build @ local ──"), "{text}");
    assert!(text.contains("from-build"), "{text}");
    assert!(!text.contains(&id), "{text}");
}

/// A stopped server (SIGSTOP: the kernel still accepts connections, nobody
/// answers) must not slow `exec` down: its console mirror connects in the
/// background and is not waited for at the end. Compared with the same
/// `exec` when no server runs at all, in the same test, interleaved.
fn stopped_server_does_not_delay_exec() {
    let srv = Serve::start("stopped");
    srv.signal(libc::SIGSTOP);
    let time = |socket: &str| {
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_execkit"))
            .args(["exec", "--no-journal", "--socket", socket, "true"])
            .env("XDG_STATE_HOME", srv.dir.join("state"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        t.elapsed()
    };
    let none = srv.dir.join("no-server.sock");
    let (mut stopped, mut absent) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..4 {
        stopped += time(srv.sock());
        absent += time(none.to_str().unwrap());
    }
    // SIGKILL ends a stopped process; Drop reaps it.
    srv.signal(libc::SIGKILL);
    eprintln!("4 × exec true: stopped server {stopped:?}, no server {absent:?}");
    assert!(
        stopped < absent * 2 + Duration::from_millis(400),
        "a stopped server slowed exec: {stopped:?} against {absent:?}"
    );
}

/// The end of a run does not wait on a server that stopped while the run
/// mirrored to it: the command stops the server (SIGSTOP) once its mirror
/// is flowing (the test sees it on a watcher, then lets the command go on
/// through a FIFO), then prints 3 MB, which fills the mirror's socket. The
/// time from the go to exec's exit is compared with the same run when no
/// server runs (stopping an idle `sleep` instead).
fn server_stopped_mid_run_does_not_delay_the_end() {
    use std::io::{BufRead, Write};
    let srv = Serve::start("stopmid");
    let fifo = srv.dir.join("go");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut dummy = Command::new("sleep").arg("60").spawn().unwrap();
    let flood = "head -c 3000000 /dev/zero | tr '\\0' x | fold -w 100";
    let run = |socket: &str, stop_pid: u32, ready: Option<&str>| {
        Command::new(env!("CARGO_BIN_EXE_execkit"))
            .args(["exec", "--no-journal", "--socket", socket])
            .arg(format!("echo {}", ready.unwrap_or("no-watcher")))
            .arg(format!(
                "read _ < {}; kill -STOP {stop_pid}; {flood}",
                fifo.display()
            ))
            .env("XDG_STATE_HOME", srv.dir.join("state"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let go = || {
        let t = Instant::now();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .unwrap()
            .write_all(b"go\n")
            .unwrap();
        t
    };
    let (mut stopped, mut absent) = (Duration::ZERO, Duration::ZERO);
    for round in 0..2 {
        // A watcher on the live server: once it sees this run's first
        // command, the mirror is connected and publishing.
        let w = std::os::unix::net::UnixStream::connect(&srv.socket).unwrap();
        writeln!(&w, "{}", serde_json::json!({"op": "watch"})).unwrap();
        let mut watcher = std::io::BufReader::new(w);
        let ready = format!("mirror-ready-{round}");
        let mut exec = run(srv.sock(), srv.child.id(), Some(&ready));
        let mut line = String::new();
        loop {
            line.clear();
            assert!(watcher.read_line(&mut line).unwrap() > 0, "watcher closed");
            if line.contains("header") && line.contains(&ready) {
                break;
            }
        }
        let t = go();
        assert!(exec.wait().unwrap().success());
        stopped += t.elapsed();
        srv.signal(libc::SIGCONT);

        let none = srv.dir.join("no-server.sock");
        let mut exec = run(none.to_str().unwrap(), dummy.id(), None);
        let t = go();
        assert!(exec.wait().unwrap().success());
        absent += t.elapsed();
    }
    let _ = dummy.kill();
    let _ = dummy.wait();
    eprintln!("2 × run: server stopped mid-run {stopped:?}, no server {absent:?}");
    assert!(
        stopped < absent + absent / 2 + Duration::from_millis(700),
        "a server stopped mid-run delayed exec's end: {stopped:?} against {absent:?}"
    );
}

// Reproductions from agent workflows in the wild (issue 13).

/// The first reproduction: `exec '. venv/bin/activate' 'echo hi'`
/// with a real venv printed `(venv) hi`, and every later result carried
/// the prefix.
fn a_real_venv_prompt_never_reaches_results() {
    let dir = std::env::temp_dir().join(format!("execkit-wild-venv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let made = Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(dir.join("venv"))
        .status();
    assert!(made.is_ok_and(|s| s.success()), "python3 -m venv failed");
    let cd = format!("cd {}", dir.display());
    let out = execkit(&[
        "exec",
        "--no-journal",
        "--json",
        &cd,
        ". venv/bin/activate",
        "echo hi",
        "echo $VIRTUAL_ENV_PROMPT",
        "deactivate",
        "echo hi",
    ]);
    let lines = json_lines(&out);
    let outputs: Vec<&str> = lines
        .iter()
        .map(|l| l["output"].as_str().unwrap())
        .collect();
    assert_eq!(outputs[2], "hi", "{lines:?}");
    assert!(outputs[3].contains("venv"), "{lines:?}");
    assert_eq!(outputs[5], "hi", "{lines:?}");
    assert_eq!(out.status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `kill -9 $$` used to end the run with 69 and skip the rest, while
/// `exit 3` restarted and went on: a dead shell on a live target restarts.
fn a_killed_shell_restarts_and_the_run_goes_on() {
    let out = execkit(&[
        "exec",
        "--no-journal",
        "--json",
        "export A=1",
        "kill -9 $$",
        "echo after:${A:-unset}",
    ]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[1]["restarted"], true, "{lines:?}");
    assert_eq!(lines[1]["session_lost"], false, "{lines:?}");
    assert!(lines[1]["error"]
        .as_str()
        .is_some_and(|e| e.contains("signal 9")));
    assert_eq!(lines[2]["output"], "after:unset");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `exec` runs with nobody to answer: a command waiting for terminal input
/// is stopped and reported (`waiting_for_input`), the prompt in its output,
/// and the next command runs in the same shell.
fn a_prompt_nobody_can_answer_is_reported_and_the_run_goes_on() {
    let out = execkit(&[
        "exec",
        "--no-journal",
        "--json",
        "export K=kept",
        "printf 'Proceed? [Y/n] '; read -r a",
        "echo next:$K",
    ]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[1]["waiting_for_input"], true, "{lines:?}");
    assert_eq!(lines[1]["timed_out"], false, "{lines:?}");
    assert!(lines[1]["exit_code"].is_null(), "{lines:?}");
    assert!(lines[1]["output"]
        .as_str()
        .unwrap()
        .starts_with("Proceed? [Y/n]"));
    assert_eq!(lines[2]["output"], "next:kept");
    assert_eq!(lines[0]["waiting_for_input"], false);
}

/// `python3 -m venv` works here (the CI machine's setup installs it).
fn venv_env() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("execkit-venv-probe-{}", std::process::id()));
    let made = Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&dir)
        .status();
    let _ = std::fs::remove_dir_all(&dir);
    match made {
        Ok(s) if s.success() => Ok(()),
        _ => Err("no `python3 -m venv`".into()),
    }
}

/// On testkit's runner (`harness = false`): a test whose tool is missing
/// shows as ignored (a failure under `CI=true`), never as a pass.
fn main() -> ExitCode {
    testkit::harness(vec![
        Trial::test("json_results_share_one_session", || {
            json_results_share_one_session();
            Ok(())
        }),
        Trial::test("timeout_returns_quickly_and_leaves_nothing", || {
            timeout_returns_quickly_and_leaves_nothing();
            Ok(())
        }),
        Trial::test("exit_status_is_the_last_commands", || {
            exit_status_is_the_last_commands();
            Ok(())
        }),
        Trial::test("human_output_and_status_line", || {
            human_output_and_status_line();
            Ok(())
        }),
        Trial::test("usage_errors_exit_2", || {
            usage_errors_exit_2();
            Ok(())
        }),
        Trial::test("hostile_targets_and_bytes_are_usage_errors", || {
            hostile_targets_and_bytes_are_usage_errors();
            Ok(())
        }),
        Trial::test("an_at_sign_in_an_ssh_user_name_is_a_usage_error", || {
            an_at_sign_in_an_ssh_user_name_is_a_usage_error();
            Ok(())
        }),
        Trial::test("ssh_connect_timeout_is_checked_and_honoured", || {
            ssh_connect_timeout_is_checked_and_honoured();
            Ok(())
        }),
        Trial::test("unreachable_target_exits_69", || {
            unreachable_target_exits_69();
            Ok(())
        }),
        Trial::test("output_cap_spools_full_text", || {
            output_cap_spools_full_text();
            Ok(())
        }),
        Trial::test("transports_lists_local", || {
            transports_lists_local();
            Ok(())
        }),
        Trial::test("fresh_carries_no_state", || {
            fresh_carries_no_state();
            Ok(())
        }),
        Trial::test("stdin_is_fed_through_a_pipe", || {
            stdin_is_fed_through_a_pipe();
            Ok(())
        }),
        Trial::test("journal_records_and_reads_back", || {
            journal_records_and_reads_back();
            Ok(())
        }),
        Trial::test("shell_repl_without_a_terminal", || {
            shell_repl_without_a_terminal();
            Ok(())
        }),
        Trial::test("gc_prunes_spool_files_past_their_age", || {
            gc_prunes_spool_files_past_their_age();
            Ok(())
        }),
        Trial::test(
            "inherited_bash_function_starting_a_job_prints_no_notice",
            || {
                inherited_bash_function_starting_a_job_prints_no_notice();
                Ok(())
            },
        ),
        Trial::test(
            "shell_and_exec_give_the_same_status_for_a_bad_target",
            || {
                shell_and_exec_give_the_same_status_for_a_bad_target();
                Ok(())
            },
        ),
        Trial::test("huge_and_bad_durations_are_one_line_usage_errors", || {
            huge_and_bad_durations_are_one_line_usage_errors();
            Ok(())
        }),
        Trial::test("file_commands_beyond_the_argument_limit", || {
            file_commands_beyond_the_argument_limit();
            Ok(())
        }),
        Trial::test("a_served_prompt_is_reported_and_answered", || {
            a_served_prompt_is_reported_and_answered();
            Ok(())
        }),
        Trial::test("session_verbs_reach_a_served_session", || {
            session_verbs_reach_a_served_session();
            Ok(())
        }),
        Trial::test("watch_shows_session_names", || {
            watch_shows_session_names();
            Ok(())
        }),
        Trial::test("stopped_server_does_not_delay_exec", || {
            stopped_server_does_not_delay_exec();
            Ok(())
        }),
        Trial::test("server_stopped_mid_run_does_not_delay_the_end", || {
            server_stopped_mid_run_does_not_delay_the_end();
            Ok(())
        }),
        testkit::test_with(
            "a_real_venv_prompt_never_reaches_results",
            &venv_env(),
            |()| a_real_venv_prompt_never_reaches_results(),
        ),
        Trial::test("a_killed_shell_restarts_and_the_run_goes_on", || {
            a_killed_shell_restarts_and_the_run_goes_on();
            Ok(())
        }),
        Trial::test(
            "a_prompt_nobody_can_answer_is_reported_and_the_run_goes_on",
            || {
                a_prompt_nobody_can_answer_is_reported_and_the_run_goes_on();
                Ok(())
            },
        ),
    ])
}
