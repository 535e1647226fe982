//! Fault matrix (issue 9), through the CLI on the `local` transport:
//! `execkit` itself `kill -9`ed mid-command, a journal that cannot be
//! created, and a journal whose disk fills up mid-run (and resumes with a
//! `journal_gap` event when space returns). Each case prints
//! how long the run took to come back and how many marked processes were
//! left (always required to be 0).
//!
//! The disk-full case mounts a 1 MiB tmpfs (root only); it shows as ignored
//! (testkit's runner) when that cannot be done, except under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use execkit_core::testkit::libtest_mimic::{Completion, Failed};
use execkit_core::testkit::{self, ci, Tmpfs};
use serde_json::Value;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("execkit-cli-faults-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `execkit` with a private state dir and a tag in its environment that
/// every shell it starts inherits, so this run's processes can be counted.
fn execkit(state: &Path, tag: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_execkit"));
    c.env("XDG_STATE_HOME", state)
        .env("EXECKIT_FAULT_TAG", tag)
        .stdin(Stdio::null());
    c
}

/// Pids whose environment holds every one of `entries`.
fn with_env(entries: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    for d in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = d.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(d.path().join("environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        if entries.iter().all(|e| vars.contains(&e.as_bytes())) {
            out.push(pid);
        }
    }
    out
}

/// Session processes (they carry `EXECKIT_SID`) of the run tagged `tag`.
fn tagged_session_processes(tag: &str) -> Vec<u32> {
    let entry = format!("EXECKIT_FAULT_TAG={tag}");
    with_env(&[&entry])
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|v| v.starts_with(b"EXECKIT_SID="))
            })
        })
        .collect()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// Waits up to `limit` for `f` to hold.
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Every line of the journal parses as JSON and the file ends with a
/// newline (no torn last line); returns the events.
fn parse_journal(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "torn last line: {:?}",
        &text[text.len().saturating_sub(200)..]
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn journal line {l:?}: {e}")))
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// The session records of a state dir, as (file, marker).
fn records(state: &Path) -> Vec<(PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir(state.join("execkit/sessions")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| {
            let v: Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            Some((e.path(), v["marker"].as_str()?.to_string()))
        })
        .collect()
}

fn kill_9_of_execkit_mid_command_then_gc_cleans_and_journal_parses() {
    let state = scratch("kill9");
    let journal = state.join("journal.jsonl");
    let tag = format!("kill9-{}", std::process::id());
    // A HUP-immune background job too: the terminal's hangup alone must
    // not be what cleans up, so the case proves gc does.
    let mut child = execkit(&state, &tag)
        .args(["exec", "--timeout", "0", "--journal"])
        .arg(&journal)
        .arg("(trap '' HUP; exec sleep 299) >/dev/null 2>&1 & sleep 300")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let found = wait_for(Duration::from_secs(20), || {
        let recs = records(&state);
        recs.len() == 1 && {
            let entry = format!("EXECKIT_SID={}", recs[0].1);
            with_env(&[&entry])
                .iter()
                .any(|p| cmdline(*p) == "sleep 300")
        }
    });
    if !found {
        let _ = child.kill();
        let _ = child.wait();
        panic!("setup: sleep 300 never ran in a recorded session");
    }
    let (record, marker) = records(&state).remove(0);
    let entry = format!("EXECKIT_SID={marker}");
    // SIGKILL, by pid: no cleanup of any kind can run.
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let orphans = with_env(&[&entry]);
    assert!(
        orphans.iter().any(|p| cmdline(*p) == "sleep 299"),
        "setup: nothing survived kill -9, the case proves nothing: {orphans:?}"
    );
    assert!(
        record.exists(),
        "the session record vanished with its owner"
    );

    // The journal: every line whole, the command there, no result for it.
    let events = parse_journal(&journal);
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds, ["session_open", "command"], "{events:?}");

    let t = Instant::now();
    let out = execkit(&state, &tag).arg("gc").output().unwrap();
    let took = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", stderr(&out));
    assert!(
        stdout.contains(&format!("cleaned session {marker} on local"))
            && stdout.contains("1 cleaned"),
        "{stdout}"
    );
    wait_for(Duration::from_secs(5), || with_env(&[&entry]).is_empty());
    let left = with_env(&[&entry]);
    eprintln!(
        "fault kill-9-execkit (local): {} orphans after kill -9; execkit gc returned in {took:?}; leaked processes: {}",
        orphans.len(),
        left.len()
    );
    assert!(
        left.is_empty(),
        "survived gc: {:?}",
        left.iter().map(|p| cmdline(*p)).collect::<Vec<_>>()
    );
    assert!(!record.exists(), "gc left the session record");
    assert!(took < Duration::from_secs(15), "gc took {took:?}");
    let _ = std::fs::remove_dir_all(state);
}

/// Asserts that `execkit exec --journal journal` refuses up front: exit
/// 73, one stderr line naming the path, `os_error` and `--no-journal`,
/// and no command ran.
fn refused_up_front(state: &Path, journal: &Path, os_error: &str, label: &str) {
    let tag = format!("{label}-{}", std::process::id());
    let ran = state.join("command-ran");
    let t = Instant::now();
    let out = execkit(state, &tag)
        .args(["exec", "--journal"])
        .arg(journal)
        .arg(format!("touch {}", ran.display()))
        .output()
        .unwrap();
    let took = t.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(73), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "execkit: cannot open the journal {}: ",
            journal.display()
        )) && err.contains(os_error)
            && err.contains("--no-journal"),
        "{err}"
    );
    assert!(!ran.exists(), "the command ran despite the refused journal");
    assert!(records(state).is_empty(), "a session was opened");
    let left = tagged_session_processes(&tag);
    eprintln!(
        "fault journal-unwritable ({label}): refused in {took:?}, exit 73; leaked processes: {}; stderr: {}",
        left.len(),
        err.trim()
    );
    assert!(left.is_empty(), "{left:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // Asked for explicitly, running without a journal works.
    let out = execkit(state, &tag)
        .args(["exec", "--no-journal"])
        .arg(format!("touch {}", ran.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(ran.exists());
    std::fs::remove_file(&ran).unwrap();
}

fn unwritable_journal_is_refused_before_any_command_runs() {
    let state = scratch("journal-unwritable");
    // Root ignores permissions; nobody can create a directory under a file.
    let blocker = state.join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    refused_up_front(
        &state,
        &blocker.join("logs/journal.jsonl"),
        "Not a directory (os error 20)",
        "parent-is-a-file",
    );
    // A read-only filesystem, where root is refused too.
    match Tmpfs::mount(&state.join("ro"), "size=64k,ro") {
        Ok(ro) => refused_up_front(
            &state,
            &ro.dir.join("journal.jsonl"),
            "Read-only file system (os error 30)",
            "read-only-mount",
        ),
        Err(why) if ci() => panic!("cannot mount a read-only tmpfs under CI=true: {why}"),
        Err(why) => eprintln!("read-only mount case skipped: {why}"),
    }
    let _ = std::fs::remove_dir_all(state);
}

fn disk_full_journal_warns_once_results_are_unaffected_and_it_resumes_with_a_gap(
) -> Result<Completion, Failed> {
    let base = scratch("disk-full");
    let fs = match Tmpfs::mount(&base.join("disk"), "size=1m,mode=0700") {
        Ok(fs) => fs,
        Err(why) => {
            return testkit::unprovisioned(format!("cannot mount a tmpfs ({why}); run as root"))
        }
    };
    // Journal, spool and session records all on the 1 MiB disk.
    let state = fs.dir.join("state");
    let journal = fs.dir.join("journal.jsonl");
    let fill = fs.dir.join("fill");
    let tag = format!("disk-full-{}", std::process::id());
    let t = Instant::now();
    let out = execkit(&state, &tag)
        // Every event may retry (the default is once a second): the case
        // does not depend on timing.
        .env("EXECKIT_JOURNAL_RETRY_MS", "0")
        .args(["exec", "--json", "--timeout", "60", "--journal"])
        .arg(&journal)
        .args([
            "echo before".to_string(),
            // The command itself fills the disk.
            format!(
                "head -c 2000000 /dev/zero > {} 2>/dev/null; echo fill status $?",
                fill.display()
            ),
            // 4.8 MB: its result line no longer fits in the journal, and its
            // spool file cannot be written either.
            "seq 1 700000".to_string(),
            "echo after".to_string(),
            // Space comes back: journaling resumes.
            format!("rm {}", fill.display()),
            "echo resumed".to_string(),
        ])
        .output()
        .unwrap();
    let took = t.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    // Results are unaffected.
    let results = json_lines(&out);
    assert_eq!(results.len(), 6, "{results:?}");
    assert_eq!(results[0]["output"], "before");
    assert_eq!(results[1]["output"], "fill status 1");
    let seq = &results[2];
    assert_eq!(seq["exit_code"], 0);
    assert_eq!(seq["truncated"], true);
    assert!(seq["output_path"].is_null(), "{}", seq["output_path"]);
    let spool_err = seq["error"].as_str().unwrap_or_default();
    assert!(
        spool_err.contains("spool") && spool_err.contains("No space left on device"),
        "{spool_err}"
    );
    let output = seq["output"].as_str().unwrap();
    assert!(output.starts_with("1\n2\n3\n") && output.ends_with("\n699999\n700000"));
    assert_eq!(results[3]["output"], "after");
    assert_eq!(results[3]["exit_code"], 0);
    assert_eq!(results[5]["output"], "resumed");
    // One warning line on stderr naming the journal and the OS error, and
    // one when it first resumes (later gaps are in the journal only).
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("journal")).collect();
    assert_eq!(warnings.len(), 2, "{err}");
    assert_eq!(
        warnings[0],
        format!(
            "execkit: warning: cannot write the journal {}: No space left on device (os error 28); journaling paused (retried as events come), commands go on",
            journal.display()
        ),
        "{err}"
    );
    // The journal: whole lines only, up to the point the disk filled.
    let events = parse_journal(&journal);
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert!(
        kinds.len() >= 3 && kinds[..3] == ["session_open", "command", "result"],
        "{kinds:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "result" && e["command"] == "seq 1 700000"),
        "the seq result cannot have fitted: {kinds:?}"
    );
    // Journaling resumed (small lines fit again as soon as a page has
    // room, and everything fits once the file is removed): each gap is a
    // journal_gap event counting what was not journaled, so nothing goes
    // missing silently.
    let gaps: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "journal_gap")
        .collect();
    assert!(!gaps.is_empty(), "no journal_gap: {kinds:?}");
    for g in &gaps {
        assert!(
            g["error"]
                .as_str()
                .is_some_and(|e| e.contains("No space left on device"))
                && g["since"].is_string()
                && g["skipped"].as_u64().is_some_and(|n| n > 0),
            "{g:?}"
        );
    }
    let skipped: u64 = gaps.iter().map(|g| g["skipped"].as_u64().unwrap()).sum();
    let journaled = (events.len() - gaps.len()) as u64;
    // 1 open + 6 commands + 6 results + 1 close.
    assert_eq!(journaled + skipped, 14, "{kinds:?}");
    let tail: Vec<&str> = kinds[kinds.len() - 3..].to_vec();
    assert_eq!(tail, ["command", "result", "session_close"], "{kinds:?}");
    assert_eq!(events[events.len() - 2]["output"], "resumed");
    assert_eq!(
        warnings[1],
        format!(
            "execkit: the journal {} is writable again; {} event(s) were not journaled (see its journal_gap event)",
            journal.display(),
            gaps[0]["skipped"]
        ),
        "{err}"
    );
    let left = tagged_session_processes(&tag);
    eprintln!(
        "fault journal-disk-full: run returned in {took:?}; journal kept {} whole lines; leaked processes: {}; stderr: {}",
        events.len(),
        left.len(),
        err.trim()
    );
    assert!(left.is_empty(), "{left:?}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    drop(fs);
    let _ = std::fs::remove_dir_all(base);
    Ok(Completion::Completed)
}

fn main() -> ExitCode {
    let none: Result<(), String> = Ok(());
    macro_rules! trial {
        ($name:ident) => {
            testkit::test_with(stringify!($name), &none, |()| $name())
        };
    }
    testkit::harness(vec![
        trial!(kill_9_of_execkit_mid_command_then_gc_cleans_and_journal_parses),
        trial!(unwritable_journal_is_refused_before_any_command_runs),
        trial!(disk_full_journal_warns_once_results_are_unaffected_and_it_resumes_with_a_gap),
    ])
}
