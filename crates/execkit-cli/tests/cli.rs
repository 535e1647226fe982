//! The CLI contract (DESIGN.md), tested from outside against the real binary.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

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

#[test]
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

#[test]
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

#[test]
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

#[test]
fn human_output_and_status_line() {
    let out = execkit(&["exec", "echo hi"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    let out = execkit(&["exec", "echo no; false"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no\n");
    assert!(stderr(&out).contains("exit 1"), "{}", stderr(&out));
}

#[test]
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

#[test]
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

#[test]
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

#[test]
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

#[test]
fn transports_lists_local() {
    let out = execkit(&["transports"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l.starts_with("local ")), "{stdout}");
}

#[test]
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

#[test]
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

#[test]
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

#[test]
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

#[test]
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
#[test]
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
