use std::time::Duration;

use super::*;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("execkit-journal-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn at() -> SessionRef {
    SessionRef {
        session: "s1".into(),
        name: None,
        target: "local".into(),
    }
}

/// Event `n` of writer `w`; [`seq_of`] reads it back from its line.
fn tick(w: u64, n: u64) -> JournalEvent {
    JournalEvent::Command {
        command: format!("{w}:{n}"),
    }
}

fn seq(n: u64) -> JournalEvent {
    tick(0, n)
}

/// (writer, n) of a line [`tick`] made.
fn seq_of(v: &Value) -> (u64, u64) {
    let text = v["command"].as_str().unwrap_or_else(|| panic!("{v}"));
    let (w, n) = text.split_once(':').unwrap();
    (w.parse().unwrap(), n.parse().unwrap())
}

#[test]
fn formats_known_instants() {
    let at = |s: u64| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(s));
    assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(at(951_782_400_123), "2000-02-29T00:00:00.123Z");
    assert_eq!(at(1_795_449_906_000), "2026-11-23T16:05:06.000Z");
}

#[test]
fn parses_sizes_and_counts() {
    assert_eq!(parse_size("1048576"), Ok(1 << 20));
    assert_eq!(parse_size("64M"), Ok(64 << 20));
    assert_eq!(parse_size(" 2 GiB"), Ok(2 << 30));
    assert_eq!(parse_size("0"), Ok(0));
    assert!(parse_size("12X").is_err() && parse_size("").is_err());
    assert!(parse_size("99999999999999999999G").is_err());
    assert_eq!(parse_files("5"), Ok(5));
    assert!(parse_files("1").is_err() && parse_files("x").is_err());
}

#[test]
fn appends_parseable_redacted_lines() {
    let d = scratch("append");
    let path = d.join("journal.jsonl");
    let j = Journal::open(&path, Redactor::default()).unwrap();
    let command = JournalEvent::Command {
        command: "curl -H 'Authorization: Bearer abc.def-123' x".into(),
    };
    j.append(at(), command).unwrap();
    j.append(at(), JournalEvent::SessionClose).unwrap();
    let lines = events(&path);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["event"], "command");
    assert!(!lines[0]["command"]
        .as_str()
        .unwrap()
        .contains("abc.def-123"));
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_writer_after_a_torn_line_starts_on_a_fresh_line() {
    let d = scratch("torn");
    let path = d.join("journal.jsonl");
    let whole = r#"{"ts":"2026-01-01T00:00:00.000Z","event":"command","command":"a"}"#;
    let torn = r#"{"ts":"2026-01-01T00:00:01.000Z","event":"result","outp"#;
    std::fs::write(&path, format!("{whole}\n{torn}")).unwrap();
    let j = Journal::open(&path, Redactor::default()).unwrap();
    j.append(at(), seq(1)).unwrap();
    j.append(at(), seq(2)).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0], whole);
    assert_eq!(lines[1], torn);
    for (l, n) in [(lines[2], 1), (lines[3], 2)] {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
        assert_eq!(seq_of(&v).1, n);
    }
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn rotates_by_size_keeping_n_files_in_order() {
    let d = scratch("rotate");
    let path = d.join("journal.jsonl");
    let opts = JournalOptions {
        max_bytes: 2000,
        files: 3,
        retry: DEFAULT_RETRY,
    };
    let j = Journal::open_with(&path, Redactor::default(), opts).unwrap();
    for n in 0..200 {
        j.append(at(), seq(n)).unwrap();
    }
    let files = files_oldest_first(&path).unwrap();
    assert_eq!(
        files,
        [rotated(&path, 2), rotated(&path, 1), path.clone()],
        "{files:?}"
    );
    assert!(!rotated(&path, 3).exists());
    let mut all = Vec::new();
    for f in &files {
        let size = std::fs::metadata(f).unwrap().len();
        assert!(size <= 2000, "{} is {size} bytes", f.display());
        all.extend(events(f).into_iter().map(|v| seq_of(&v).1));
    }
    // The newest events, contiguous and in order; older ones rotated away.
    assert_eq!(*all.last().unwrap(), 199);
    assert!(all.windows(2).all(|w| w[1] == w[0] + 1), "{all:?}");
    assert!(all.len() > 40 && all[0] > 0, "{all:?}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn concurrent_writers_rotating_lose_and_duplicate_nothing() {
    // Separate `Journal`s have separate open file descriptions, so they
    // lock and rotate exactly as separate processes do.
    let d = scratch("rotate-concurrent");
    let path = d.join("journal.jsonl");
    let opts = JournalOptions {
        max_bytes: 4096,
        files: 1000,
        retry: DEFAULT_RETRY,
    };
    let writers = 4u64;
    let per = 400u64;
    std::thread::scope(|s| {
        for w in 0..writers {
            let path = &path;
            s.spawn(move || {
                let j = Journal::open_with(path, Redactor::default(), opts).unwrap();
                for n in 0..per {
                    j.append(at(), tick(w, n)).unwrap();
                }
            });
        }
    });
    let files = files_oldest_first(&path).unwrap();
    assert!(files.len() > 10, "{files:?}");
    let mut last = vec![None::<u64>; writers as usize];
    let mut count = 0;
    for f in &files {
        let size = std::fs::metadata(f).unwrap().len();
        assert!(size <= 2 * 4096, "{} is {size} bytes", f.display());
        for v in events(f) {
            let (w, n) = seq_of(&v);
            let prev = last[w as usize].replace(n);
            assert_eq!(prev.map_or(0, |p| p + 1), n, "writer {w} out of order");
            count += 1;
        }
    }
    assert_eq!(count, writers * per);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn failing_writes_are_counted_and_a_gap_event_is_written_on_resume() {
    for (retry, skipped) in [(Duration::ZERO, 2), (Duration::from_secs(3600), 3)] {
        let d = scratch("gap");
        let dir = d.join("logs");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("journal.jsonl");
        let opts = JournalOptions {
            retry,
            ..JournalOptions::default()
        };
        let j = Journal::open_with(&path, Redactor::default(), opts).unwrap();
        j.append(at(), seq(1)).unwrap();
        // The directory goes away and a file takes its place: the path
        // cannot be opened (ENOTDIR) whoever runs this.
        let aside = d.join("aside");
        std::fs::rename(&dir, &aside).unwrap();
        std::fs::write(&dir, b"").unwrap();
        assert!(j.append(at(), seq(2)).is_err());
        assert!(j.stopped());
        let third = j.append(at(), seq(3));
        assert_eq!(third.is_err(), retry.is_zero());
        std::fs::remove_file(&dir).unwrap();
        std::fs::rename(&aside, &dir).unwrap();
        let fourth = j.append(at(), seq(4));
        let v = events(&path);
        if retry.is_zero() {
            fourth.unwrap();
            assert!(!j.stopped());
            assert_eq!(v.len(), 3, "{v:?}");
            assert_eq!(seq_of(&v[0]).1, 1);
            assert_eq!(v[1]["event"], "journal_gap");
            assert_eq!(v[1]["skipped"], skipped);
            assert!(v[1]["error"].as_str().unwrap().contains("Not a directory"));
            assert_eq!(seq_of(&v[2]).1, 4);
        } else {
            // Within the retry interval nothing is tried: counted only.
            fourth.unwrap();
            assert!(j.stopped());
            assert_eq!(v.len(), 1, "{v:?}");
            let st = lock(&j.sink.as_ref().unwrap().state);
            assert_eq!(st.failing.as_ref().unwrap().skipped, skipped);
        }
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn refuses_what_is_not_a_regular_file_without_blocking() {
    let d = scratch("kinds");
    let fifo = d.join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (path, kind) in [
        (fifo.clone(), "a FIFO"),
        (d.clone(), "a directory"),
        (PathBuf::from("/dev/null"), "a character device"),
    ] {
        let e = Journal::open(&path, Redactor::default()).unwrap_err();
        assert_eq!(e.to_string(), format!("not a regular file ({kind})"));
    }
    // Our own link is followed (and rotation renames the real file);
    // a link through to a FIFO is refused.
    let real = d.join("real.jsonl");
    let link = d.join("link.jsonl");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let j = Journal::open(&link, Redactor::default()).unwrap();
    j.append(at(), seq(1)).unwrap();
    assert_eq!(
        j.path(),
        Some(std::fs::canonicalize(&real).unwrap().as_path())
    );
    assert_eq!(events(&real).len(), 1);
    let to_fifo = d.join("to-fifo");
    std::os::unix::fs::symlink(&fifo, &to_fifo).unwrap();
    let e = Journal::open(&to_fifo, Redactor::default()).unwrap_err();
    assert_eq!(e.to_string(), "not a regular file (a FIFO)");
    // Another user's link is not followed (only root can make one here).
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let theirs = d.join("theirs.jsonl");
        std::os::unix::fs::symlink(&real, &theirs).unwrap();
        let c = std::ffi::CString::new(theirs.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: lchown with a valid C string.
        assert_eq!(unsafe { libc::lchown(c.as_ptr(), 4242, 4242) }, 0);
        let e = Journal::open(&theirs, Redactor::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a symbolic link owned by uid 4242, not followed"
        );
    }
    std::fs::remove_dir_all(d).unwrap();
}

/// Issue 14 item 3: the journal is only ever the user's own file, 0600:
/// a loose existing one is tightened, another user's file is refused
/// however the path reaches it (directly, through the user's own link,
/// through a directory link), and it is left as it was.
#[test]
fn only_the_users_own_file_is_journaled_and_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let d = scratch("own");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let loose = d.join("loose.jsonl");
    std::fs::write(&loose, b"").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o666)).unwrap();
    let j = Journal::open(&loose, Redactor::default()).unwrap();
    j.append(at(), seq(1)).unwrap();
    assert_eq!(mode(&loose), 0o600);
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let nobody = |p: &Path| std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
        let theirs_dir = d.join("theirs");
        std::fs::create_dir(&theirs_dir).unwrap();
        let theirs = theirs_dir.join("j.jsonl");
        std::fs::write(&theirs, b"theirs\n").unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o644)).unwrap();
        nobody(&theirs);
        nobody(&theirs_dir);
        let my_link = d.join("my-link.jsonl");
        std::os::unix::fs::symlink(&theirs, &my_link).unwrap();
        let dir_link = d.join("dir-link");
        std::os::unix::fs::symlink(&theirs_dir, &dir_link).unwrap();
        for path in [theirs.clone(), my_link, dir_link.join("j.jsonl")] {
            let e = Journal::open(&path, Redactor::default()).unwrap_err();
            assert!(
                e.to_string()
                    .contains("belongs to another user (uid 65534)"),
                "{}: {e}",
                path.display()
            );
        }
        assert_eq!(std::fs::read(&theirs).unwrap(), b"theirs\n");
        assert_eq!(mode(&theirs), 0o644);
        // A writer whose file is swapped for another user's between
        // lines does not write into it.
        let mine = d.join("mine.jsonl");
        let j = Journal::open(&mine, Redactor::default()).unwrap();
        j.append(at(), seq(1)).unwrap();
        std::fs::rename(&theirs, &mine).unwrap();
        assert!(j.append(at(), seq(2)).is_err());
        assert_eq!(std::fs::read(&mine).unwrap(), b"theirs\n");
    }
    std::fs::remove_dir_all(d).unwrap();
}

/// Lines as execkit wrote them before events were a type, one of each
/// shape: each reads into a [`JournalLine`] and is written back byte for
/// byte (keys in alphabetical order, `null` exit codes, no `error` or
/// `output` key when there is none).
const WRITTEN: &[&str] = &[
    r#"{"cwd":"/tmp","event":"session_open","name":"web","session":"3f561c101a81","target":"local","ts":"2026-12-01T21:54:07.524Z"}"#,
    r#"{"command":"echo hi","event":"command","session":"fdc34eb12895","target":"local","ts":"2026-12-01T21:54:04.892Z"}"#,
    r#"{"chars":13,"event":"input","hidden":true,"name":"web","session":"3f561c101a81","target":"local","ts":"2026-12-01T21:54:09.126Z"}"#,
    r#"{"event":"input","name":"web","session":"3f561c101a81","target":"local","text":"bob\n","ts":"2026-12-01T21:54:10.789Z"}"#,
    r#"{"event":"interrupt","name":"web","session":"3f561c101a81","target":"local","ts":"2026-12-01T21:54:11.877Z"}"#,
    r#"{"command":"seq 1 100","cwd":"/tmp","duration_ms":14,"event":"result","exit_code":0,"output_path":"/tmp/spool/1d0eaad26fb9-1.out","restarted":false,"session":"1d0eaad26fb9","session_lost":false,"target":"local","timed_out":false,"truncated":true,"ts":"2026-12-01T21:54:05.151Z","waiting_for_input":false}"#,
    r#"{"command":"sleep 30","cwd":"/tmp","duration_ms":1299,"error":"interrupted","event":"result","exit_code":null,"name":"web","output":"","restarted":false,"session":"3f561c101a81","session_lost":false,"target":"local","timed_out":false,"truncated":false,"ts":"2026-12-01T21:54:12.142Z","waiting_for_input":false}"#,
    r#"{"event":"session_close","name":"web","session":"3f561c101a81","target":"local","ts":"2026-12-01T21:54:12.168Z"}"#,
    r#"{"error":"No space left on device (os error 28)","event":"journal_gap","since":"2026-01-01T00:00:03.000Z","skipped":7,"ts":"2026-01-01T00:00:04.000Z"}"#,
];

#[test]
fn lines_read_and_are_written_back_byte_for_byte() {
    let j = Journal::disabled();
    for line in WRITTEN {
        let parsed: JournalLine =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let written = String::from_utf8(j.render(&parsed).unwrap()).unwrap();
        assert_eq!(written, format!("{line}\n"));
    }
    let gap: JournalLine = serde_json::from_str(WRITTEN[WRITTEN.len() - 1]).unwrap();
    assert_eq!(gap.session, None);
}

#[test]
fn the_session_and_every_event_field_are_masked_not_ts_and_event() {
    let r = Redactor::with_patterns(["s3cr3t-[0-9]+"]).unwrap();
    let j = Journal::disabled_with(r);
    let session = SessionRef {
        session: "s3cr3t-1".into(),
        name: Some("s3cr3t-2".into()),
        target: "ssh://s3cr3t-3@host".into(),
    };
    let result = JournalEvent::Result(ResultEvent {
        command: "echo s3cr3t-4".into(),
        error: Some("s3cr3t-5".into()),
        output: Some("s3cr3t-6".into()),
        ..ResultEvent::default()
    });
    let line = JournalLine {
        ts: "s3cr3t-7".into(),
        session: Some(session),
        event: result,
    };
    let written = String::from_utf8(j.render(&line).unwrap()).unwrap();
    assert_eq!(written.matches("s3cr3t").count(), 1, "{written}");
    assert!(written.contains(r#""ts":"s3cr3t-7""#), "{written}");
}

#[test]
fn older_lines_read_and_unknown_events_do_not() {
    // Before `name` and `waiting_for_input` were written.
    let old = r#"{"command":"echo hi","cwd":"/home/u","duration_ms":3,"event":"result","exit_code":0,"output":"hi","restarted":false,"session":"fab4d3e9691b","session_lost":false,"target":"local","timed_out":false,"truncated":false,"ts":"2026-12-01T18:17:21.609Z"}"#;
    let line: JournalLine = serde_json::from_str(old).unwrap();
    assert_eq!(line.session.as_ref().unwrap().name, None);
    let JournalEvent::Result(r) = &line.event else {
        panic!("{line:?}")
    };
    assert_eq!((r.exit_code, r.waiting_for_input), (Some(0), false));
    assert_eq!(r.output.as_deref(), Some("hi"));
    // A field from a newer version is ignored; an event it adds is not
    // one of these (`execkit journal` shows its name).
    let newer = r#"{"event":"interrupt","session":"s","target":"local","ts":"t","why":"user"}"#;
    let line: JournalLine = serde_json::from_str(newer).unwrap();
    assert_eq!(line.event, JournalEvent::Interrupt);
    let unknown = r#"{"event":"snapshot","session":"s","target":"local","ts":"t"}"#;
    assert!(serde_json::from_str::<JournalLine>(unknown).is_err());
}

#[test]
fn input_says_who_typed_it_and_old_lines_still_read() {
    // A line written before `by` existed reads as an agent's input.
    let old: JournalEvent = serde_json::from_str(r#"{"event":"input","text":"y\n"}"#).unwrap();
    assert_eq!(old, JournalEvent::input("y\n", false));
    // A person's input carries `"by": "person"`; an agent's none.
    let typed =
        serde_json::to_value(JournalEvent::input_by("hi\r", false, Some("person"))).unwrap();
    assert_eq!(typed["by"], "person", "{typed}");
    let sent = serde_json::to_value(JournalEvent::input("hi\n", false)).unwrap();
    assert!(sent.get("by").is_none(), "{sent}");
}
