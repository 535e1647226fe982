//! The journal through the real CLI (issue 13): secrets masked in the
//! journal but not in results, `journal --tail` reading only the end,
//! lossy decoding and counted bad lines, rotation with several writer
//! processes, a torn last line, refusing FIFOs and devices, `--output-limit
//! 0`, and the spool's size cap and `gc` pruning.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::Value;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("execkit-cli-journal-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `execkit` with a private state dir and no stdin.
fn execkit(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_execkit"));
    c.env("XDG_STATE_HOME", state)
        .env_remove("EXECKIT_JOURNAL_MAX_BYTES")
        .env_remove("EXECKIT_JOURNAL_FILES")
        .env_remove("EXECKIT_SPOOL_MAX_BYTES")
        .stdin(Stdio::null());
    c
}

/// Runs `cmd`; a run still going after `limit` is killed by its pid and
/// the test fails (these are the cases that used to hang).
fn run_within(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => {
            waiter.join().unwrap();
            out.unwrap()
        }
        Err(_) => {
            // SAFETY: kill of the pid of a child we have not reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let out = rx.recv().unwrap().unwrap();
            waiter.join().unwrap();
            panic!(
                "still running after {limit:?}, killed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_lines(text: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(text)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn secrets_are_masked_in_the_journal_and_not_in_results() {
    let d = scratch("secrets");
    let journal = d.join("journal.jsonl");
    let proj = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7cDe0fGh3iJk6lMn9o";
    let ant = "sk-ant-api03-Zx9yW8vU7tS6rQ5pO4nM3lK2jI1hG0fE-dCbA_9876543210abcdEFG";
    let stripe = "sk_live_51HqLyjWDarjtT1zdp7dcXYZ0123456789";
    let google = "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY";
    let secrets = [
        ("exported", "s3cr3t-exported-value"),
        ("inline", "pg-pass-778899"),
        ("from execkit's environment", "env-secret-0a1b2c"),
        ("in a URL", "url-pass-4455"),
        ("--password flag", "hunter2-flag"),
        ("-p for mysql", "my-pass-6677"),
        ("sk-proj", proj),
        ("sk-ant", ant),
        ("sk_live", stripe),
        ("AIza", google),
    ];
    let commands = [
        "export MY_API_TOKEN=s3cr3t-exported-value".to_string(),
        "echo \"token is $MY_API_TOKEN\"".to_string(),
        "PGPASSWORD=pg-pass-778899 true; echo later pg-pass-778899".to_string(),
        "echo \"deploy $DEPLOY_TOKEN\"".to_string(),
        "echo https://bob:url-pass-4455@git.example.invalid/x.git".to_string(),
        "echo tool --password hunter2-flag; echo mysql -u root -pmy-pass-6677".to_string(),
        format!("echo {proj} {ant}; echo {stripe} {google}"),
        "mkdir -p /tmp/not-a-secret-dir; echo done".to_string(),
    ];
    let out = run_within(
        {
            let mut c = execkit(&d);
            c.env("DEPLOY_TOKEN", "env-secret-0a1b2c")
                .args(["exec", "--json", "--journal"])
                .arg(&journal)
                .args(&commands);
            c
        },
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The agent sees its own output as it was.
    let results = json_lines(&out.stdout);
    let outputs: String = results
        .iter()
        .map(|r| r["output"].as_str().unwrap().to_string() + "\n")
        .collect();
    for (what, secret) in secrets {
        assert!(outputs.contains(secret), "result lost {what}: {outputs}");
    }
    // The journal, raw and through `execkit journal`, never has them.
    let text = std::fs::read_to_string(&journal).unwrap();
    let shown = execkit(&d)
        .args(["journal", "--journal"])
        .arg(&journal)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    for (what, secret) in secrets {
        assert!(
            !text.contains(secret),
            "journal holds {what} in clear: {text}"
        );
        assert!(!shown.contains(secret), "`journal` shows {what}: {shown}");
    }
    assert!(text.contains("mkdir -p /tmp/not-a-secret-dir"), "{text}");
    assert!(text.contains("git.example.invalid"), "{text}");
    let _ = std::fs::remove_dir("/tmp/not-a-secret-dir");
    let _ = std::fs::remove_dir_all(d);
}

/// A valid journal line of about 200 bytes.
fn line(n: u64) -> String {
    format!(
        "{{\"ts\":\"2026-01-01T00:00:00.000Z\",\"event\":\"result\",\"session\":\"s{}\",\"n\":{n},\"output\":\"{}\"}}\n",
        n % 7,
        "x".repeat(120)
    )
}

/// Exit status, stdout, `rchar` (bytes the process read) and peak RSS in
/// KiB of one run: the zombie's `/proc/PID/io` is read before it is reaped.
fn measured(mut cmd: Command) -> (i32, Vec<u8>, Vec<u8>, u64, u64) {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut stdout = Vec::new();
    let mut err = Vec::new();
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let t = std::thread::spawn(move || {
        let mut e = Vec::new();
        err_pipe.read_to_end(&mut e).unwrap();
        e
    });
    out_pipe.read_to_end(&mut stdout).unwrap();
    err.extend(t.join().unwrap());
    // SAFETY: waitid/wait4 on our own child, with zeroed out-structs.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        assert_eq!(
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT
            ),
            0
        );
    }
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let rchar: u64 = io
        .lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .parse()
        .unwrap();
    let mut status = 0;
    // SAFETY: as above; this reaps the child.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::wait4(pid, &mut status, 0, &mut usage), pid);
        usage
    };
    drop(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (code, stdout, err, rchar, usage.ru_maxrss as u64)
}

#[test]
fn tail_reads_only_the_end_of_a_large_journal_and_skips_bad_lines() {
    let d = scratch("tail");
    let path = d.join("journal.jsonl");
    // 128 MiB of whole lines, then an end with a non-UTF-8 line and garbage.
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let block: String = (0..5000).map(line).collect();
    let mut size = 0u64;
    while size < 128 << 20 {
        w.write_all(block.as_bytes()).unwrap();
        size += block.len() as u64;
    }
    w.write_all(line(900_001).as_bytes()).unwrap();
    w.write_all(line(900_002).as_bytes()).unwrap();
    w.write_all(b"{\"ts\":\"2026-01-01T00:00:01.000Z\",\"event\":\"command\",\"command\":\"caf\xe9 \xff\"}\n")
        .unwrap();
    w.write_all(b"this is not json\n").unwrap();
    w.write_all(line(900_003).as_bytes()).unwrap();
    w.write_all(line(900_004).as_bytes()).unwrap();
    w.flush().unwrap();
    drop(w);
    let size = std::fs::metadata(&path).unwrap().len();

    let mut c = execkit(&d);
    c.args(["journal", "--json", "--tail", "5", "--journal"])
        .arg(&path);
    let (code, stdout, err, rchar, maxrss_kib) = measured(c);
    let err = String::from_utf8_lossy(&err);
    eprintln!(
        "journal --tail 5 on {size} bytes: read {rchar} bytes, peak RSS {maxrss_kib} KiB; stderr: {}",
        err.trim()
    );
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&stdout);
    let ns: Vec<Value> = events.iter().map(|e| e["n"].clone()).collect();
    assert_eq!(
        ns,
        [
            900_001.into(),
            900_002.into(),
            Value::Null,
            900_003.into(),
            900_004.into()
        ],
        "{events:?}"
    );
    assert_eq!(events[2]["command"], "caf\u{fffd} \u{fffd}");
    assert!(err.contains("skipped 1 unparseable line(s)"), "{err}");
    assert!(
        err.contains("1 line(s) held invalid UTF-8, shown with U+FFFD"),
        "{err}"
    );
    // Only the end was read, and memory did not follow the file's size.
    assert!(
        rchar < 4 << 20,
        "read {rchar} bytes of a {size}-byte journal"
    );
    assert!(
        maxrss_kib < 64 << 10,
        "peak RSS {maxrss_kib} KiB for a {size}-byte journal"
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_writer_after_a_torn_line_starts_on_a_fresh_line() {
    let d = scratch("torn");
    let journal = d.join("journal.jsonl");
    let torn = r#"{"ts":"2026-01-01T00:00:01.000Z","event":"result","output":"cut off by a cra"#;
    std::fs::write(&journal, torn).unwrap();
    let out = execkit(&d)
        .args(["exec", "--journal"])
        .arg(&journal)
        .arg("echo hi")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(&journal).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], torn, "{text}");
    let events: Vec<Value> = lines[1..]
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}\n{text}")))
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(
        kinds,
        ["session_open", "command", "result", "session_close"],
        "{text}"
    );
    let shown = execkit(&d)
        .args(["journal", "--json", "--journal"])
        .arg(&journal)
        .output()
        .unwrap();
    assert_eq!(json_lines(&shown.stdout).len(), 4);
    assert!(
        stderr(&shown).contains("skipped 1 unparseable line(s)"),
        "{}",
        stderr(&shown)
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn rotation_with_two_writer_processes_loses_nothing_and_journal_reads_across_files() {
    let d = scratch("rotate");
    let journal = d.join("journal.jsonl");
    let per = 40;
    let spawn = |tag: &str| {
        let cmds: Vec<String> = (0..per).map(|n| format!("echo {tag}-{n}")).collect();
        let mut c = execkit(&d);
        c.env("EXECKIT_JOURNAL_MAX_BYTES", "4K")
            .args(["exec", "--journal-files", "1000", "--journal"])
            .arg(&journal)
            .args(cmds)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    let a = spawn("a");
    let b = spawn("b");
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let rotated: Vec<PathBuf> = (1..1000)
        .map(|k| PathBuf::from(format!("{}.{k}", journal.display())))
        .filter(|p| p.exists())
        .collect();
    assert!(rotated.len() >= 5, "{rotated:?}");
    for f in rotated.iter().chain([&journal]) {
        let size = std::fs::metadata(f).unwrap().len();
        assert!(size <= 8192, "{} is {size} bytes", f.display());
    }
    let shown = execkit(&d)
        .args(["journal", "--json", "--journal"])
        .arg(&journal)
        .output()
        .unwrap();
    assert_eq!(shown.status.code(), Some(0), "{}", stderr(&shown));
    assert!(stderr(&shown).is_empty(), "{}", stderr(&shown));
    let events = json_lines(&shown.stdout);
    assert_eq!(events.len(), 2 * (2 + 2 * per), "every event exactly once");
    // Each session's events whole and in order.
    for tag in ["a", "b"] {
        let outputs: Vec<&str> = events
            .iter()
            .filter(|e| e["event"] == "result")
            .filter_map(|e| e["output"].as_str())
            .filter(|o| o.starts_with(&format!("{tag}-")))
            .collect();
        let want: Vec<String> = (0..per).map(|n| format!("{tag}-{n}")).collect();
        assert_eq!(outputs, want);
    }
    // --tail across files is the end of the same listing.
    let tail = execkit(&d)
        .args(["journal", "--json", "--tail", "50", "--journal"])
        .arg(&journal)
        .output()
        .unwrap();
    assert_eq!(json_lines(&tail.stdout), events[events.len() - 50..]);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn fifos_devices_and_directories_are_refused_without_hanging() {
    let d = scratch("kinds");
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    // exec: refused before anything runs, exit 73.
    let ran = d.join("ran");
    let out = run_within(
        {
            let mut c = execkit(&d);
            c.args(["exec", "--journal"])
                .arg(&fifo)
                .arg(format!("touch {}", ran.display()));
            c
        },
        Duration::from_secs(10),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(73), "{err}");
    assert_eq!(
        err,
        format!(
            "execkit: cannot open the journal {}: not a regular file (a FIFO) (use --journal PATH or --no-journal)\n",
            fifo.display()
        )
    );
    assert!(!ran.exists());
    // journal: one line and exit 66 for a FIFO, a device, a directory.
    for (path, kind) in [
        (fifo.clone(), "a FIFO"),
        (PathBuf::from("/dev/zero"), "a character device"),
        (d.clone(), "a directory"),
    ] {
        let out = run_within(
            {
                let mut c = execkit(&d);
                c.args(["journal", "--journal"]).arg(&path);
                c
            },
            Duration::from_secs(10),
        );
        assert_eq!(out.status.code(), Some(66), "{}", stderr(&out));
        assert_eq!(
            stderr(&out),
            format!(
                "execkit journal: cannot read {}: not a regular file ({kind})\n",
                path.display()
            )
        );
        assert!(out.stdout.is_empty());
    }
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn output_limit_zero_returns_no_text_and_spools_everything() {
    let d = scratch("limit0");
    let out = execkit(&d)
        .args(["exec", "--json", "--no-journal", "--output-limit", "0"])
        .args(["seq 1 5", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = json_lines(&out.stdout);
    assert_eq!(r[0]["output"], "", "{:?}", r[0]);
    assert_eq!(r[0]["truncated"], true);
    let spool = r[0]["output_path"].as_str().expect("a spool file");
    assert_eq!(
        std::fs::read_to_string(spool).unwrap().trim_end(),
        "1\n2\n3\n4\n5"
    );
    assert_eq!(r[1]["output"], "");
    assert_eq!(r[1]["truncated"], false);
    assert!(r[1]["output_path"].is_null());
    let _ = std::fs::remove_dir_all(d);
}

/// Creates `dir/name` of `len` bytes last written `age` ago.
fn aged_file(dir: &Path, name: &str, len: u64, age: Duration) {
    std::fs::create_dir_all(dir).unwrap();
    let f = std::fs::File::create(dir.join(name)).unwrap();
    f.set_len(len).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn spool_cap_removes_the_oldest_files_when_spooling() {
    let d = scratch("spool-cap");
    let spool = d.join("execkit/spool");
    let hour = Duration::from_secs(3600);
    for (i, name) in ["a.out", "b.out", "c.out", "d.out"].iter().enumerate() {
        aged_file(&spool, name, 100_000, hour * (10 - i as u32));
    }
    let out = execkit(&d)
        .env("EXECKIT_SPOOL_MAX_BYTES", "300000")
        .args(["exec", "--json", "--no-journal", "--output-limit", "100"])
        .arg("seq 1 40000")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = &json_lines(&out.stdout)[0];
    let path = PathBuf::from(r["output_path"].as_str().expect("spooled"));
    let full: String = (1..=40000).map(|n| format!("{n}\n")).collect();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), full);
    let left = names_in(&spool);
    // Oldest first: what was removed is a, then b, …
    let old: Vec<&str> = ["a.out", "b.out", "c.out", "d.out"]
        .into_iter()
        .filter(|n| left.iter().any(|l| l == n))
        .collect();
    assert!(
        !old.is_empty() && old.len() <= 2 && old.last() == Some(&"d.out"),
        "{left:?}"
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn gc_prunes_the_spool_by_hours_and_by_size() {
    let d = scratch("gc");
    let spool = d.join("execkit/spool");
    let hour = Duration::from_secs(3600);
    aged_file(&spool, "three-hours.out", 1000, hour * 3);
    aged_file(&spool, "one-hour.out", 1000, hour);
    aged_file(&spool, "fresh.out", 1000, Duration::ZERO);
    let out = execkit(&d)
        .args(["gc", "--spool-hours", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", stderr(&out));
    assert!(
        stdout.contains("gc: pruned 1 spool file(s), 1000 bytes, older than 2 hour(s)"),
        "{stdout}"
    );
    assert_eq!(names_in(&spool), ["fresh.out", "one-hour.out"]);
    let out = execkit(&d)
        .args(["gc", "--spool-days", "0", "--spool-max-bytes", "1500"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", stderr(&out));
    assert!(
        stdout.contains("gc: pruned 1 spool file(s), 1000 bytes, oldest first"),
        "{stdout}"
    );
    assert_eq!(names_in(&spool), ["fresh.out"]);
    let _ = std::fs::remove_dir_all(d);
}
