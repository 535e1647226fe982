//! Issue 14 item 6: what a command, its output or a same-uid `publish`
//! client can do to the terminal of a person running `execkit watch` or
//! `execkit journal`. Every test acts as the attacker would: real
//! `execkit exec` runs whose command text or output carries escape
//! sequences, and a raw `publish` client posting under a served session's
//! id. The terminal-answer case runs `execkit watch` in a private tmux
//! server and reads what reached the pane's input.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use execkit_core::testkit::{self, libtest_mimic::Trial};
use serde_json::json;

mod support;
use support::tmux::Tmux;
use support::Conn;

const BIN: &str = env!("CARGO_BIN_EXE_execkit");

struct Server {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Server {
    fn start(name: &str) -> Server {
        let dir = std::env::temp_dir().join(format!("execkit-term-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("run/execkit.sock");
        let child = support::spawn_serve(
            &socket,
            &dir.join("serve-journal.jsonl"),
            &dir.join("state"),
            &[],
        );
        Server { child, dir, socket }
    }

    /// `execkit exec` mirrored to this server, journaled to `journal`.
    fn exec(&self, journal: &Path, commands: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(["exec", "--socket"])
            .arg(&self.socket)
            .arg("--journal")
            .arg(journal)
            .args(commands)
            .env("XDG_STATE_HOME", self.dir.join("state"))
            .output()
            .unwrap()
    }

    /// Stops the server (by PID): its watchers see it go away.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `execkit watch` with its stdout piped (not a terminal: no colours of
/// its own), collected by a thread.
struct Watcher {
    child: Child,
    seen: Arc<(Mutex<Vec<u8>>, Condvar)>,
}

impl Watcher {
    fn start(socket: &Path, extra: &[&str]) -> Watcher {
        let mut child = Command::new(BIN)
            .arg("watch")
            .args(extra)
            .arg("--socket")
            .arg(socket)
            .env_remove("NO_COLOR")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Ready once it says it is watching.
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut l = String::new();
        err.read_line(&mut l).unwrap();
        assert!(l.contains("watching"), "execkit watch {extra:?}: {l}");
        let seen = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let mut out = child.stdout.take().unwrap();
        let s = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.0.lock().unwrap().extend_from_slice(&buf[..n]);
                s.1.notify_all();
            }
        });
        Watcher { child, seen }
    }

    /// Everything printed once `done` holds for it (30 s at most).
    fn until(&self, what: &str, done: impl Fn(&str) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (lock, cv) = &*self.seen;
        let mut seen = lock.lock().unwrap();
        loop {
            if done(&String::from_utf8_lossy(&seen)) {
                return seen.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "execkit watch never showed {what}; it printed:\n{}",
                String::from_utf8_lossy(&seen)
            );
            seen = cv.wait_timeout(seen, left).unwrap().0;
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Escape sequences in `bytes`, each from its ESC to its final byte (CSI)
/// or the next 3 bytes (anything else).
fn escapes(bytes: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(at) = bytes[i..].iter().position(|&b| b == 0x1b) {
        let start = i + at;
        let end = if bytes.get(start + 1) == Some(&b'[') {
            bytes[start + 2..]
                .iter()
                .position(|b| (0x40..=0x7e).contains(b))
                .map_or(bytes.len(), |p| start + 2 + p + 1)
        } else {
            (start + 4).min(bytes.len())
        };
        found.push(String::from_utf8_lossy(&bytes[start..end]).into_owned());
        i = start + 1;
    }
    found
}

/// The command text of the issue: it runs `touch evidence`, but printed
/// raw it erases its own line and draws `$ ls` in the header's colours.
fn spoofed_touch(evidence: &Path) -> String {
    format!("touch {} #\x1b[2K\r\x1b[1;36m$ ls", evidence.display())
}

/// How the spoofed text must read: every control character visible.
fn spoofed_touch_shown(evidence: &Path) -> String {
    format!("touch {} #\\e[2K\\r\\e[1;36m$ ls", evidence.display())
}

/// A command whose text hides what it runs shows what it runs, in `watch`
/// (headers) and in `execkit journal`: its control characters are escaped.
/// Before: both printed the text raw, ESC and CR included, so a terminal
/// erased `touch …` and showed only `$ ls`.
fn spoofed_command_text_shows_what_really_ran() {
    let srv = Server::start("header");
    let watch = Watcher::start(&srv.socket, &[]);
    let evidence = srv.dir.join("evidence");
    let journal = srv.dir.join("journal.jsonl");
    let out = srv.exec(&journal, &[&spoofed_touch(&evidence)]);
    assert!(out.status.success(), "{out:?}");
    assert!(evidence.exists(), "the command did not run");

    let shown = watch.until("the footer", |s| s.contains(": exit 0"));
    let text = String::from_utf8_lossy(&shown);
    assert!(
        text.contains(&format!("$ {}", spoofed_touch_shown(&evidence))),
        "{text}"
    );
    assert!(
        !shown.contains(&b'\r'),
        "raw CR reached the watcher: {text:?}"
    );
    assert!(escapes(&shown).is_empty(), "{:?}", escapes(&shown));

    let out = Command::new(BIN)
        .args(["journal", "--journal"])
        .arg(&journal)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("$ {}", spoofed_touch_shown(&evidence))),
        "{text}"
    );
    assert!(
        !out.stdout.contains(&0x1b) && !out.stdout.contains(&b'\r'),
        "{text:?}"
    );
}

/// What the attacker prints, one line per kind: kept (colours, a
/// progress line redrawn with `\r` and erase-in-line, a hyperlink's text)
/// and what acts outside the pane or makes the terminal answer.
const HOSTILE_OUTPUT: &str = concat!(
    r"printf 'A \033[31mred\033[0m B\n';",
    r"printf '50%%\r\033[Kprogress done\n';",
    r"printf 'see \033]8;;http://evil.example/\033\\the docs\033]8;;\033\\ here\n';",
    r"printf 'clip\033]52;c;UFdORUQ=\007 title\033]0;PWNED\007\033]2;PWNED\033\\ end\n';",
    r"printf 'wipe\033c\033[3J\033[2J\033[H\033[2A\033M gone\n';",
    r"printf 'dcs\033P+q544e\033\\ apc\033_Gi=1;QUFB\033\\ pm\033^hidden\033\\ sos\033Xhidden\033\\ strings\n';",
    r"printf 'ask\033[6n\033[5n\033[c\033[>c\033[=c\033[?1$p\033[18t\033[21t\033[?u questions\n';",
    r"printf 'modes\033[?1000h\033[?1006h\033[?2004h\033[?1004h\033[?1049h\033[?1h\033=\033[>4;1m\033[20h\033(0 set\n';",
    r"printf 'c1 \302\233 6n \302\2352;x\007 done\n'",
);

/// Command output reaches `watch` filtered: colours and same-line cursor
/// movement stay, everything else (clipboard, titles, hyperlinks, reset,
/// scrollback and screen wipes, upward moves, DCS/APC/PM/SOS, queries that
/// make the terminal answer, modes that outlive the pane, C1 controls) is
/// dropped; `--raw-output` shows the bytes as they came. Before: every
/// byte went through, and `--raw-output` did not exist (exit 2).
fn watch_drops_what_acts_outside_the_pane() {
    let srv = Server::start("output");
    let watch = Watcher::start(&srv.socket, &[]);
    let out = srv.exec(&srv.dir.join("journal.jsonl"), &[HOSTILE_OUTPUT]);
    assert!(out.status.success(), "{out:?}");

    let shown = watch.until("the footer", |s| s.contains(": exit 0"));
    let text = String::from_utf8_lossy(&shown);
    for kept in [
        "A \x1b[31mred\x1b[m B\n",
        "50%\r\x1b[Kprogress done\n",
        "see the docs here\n",
        "clip title end\n",
        "wipe gone\n",
        "dcs apc pm sos strings\n",
        "ask questions\n",
        "modes set\n",
        // C1 controls dropped; what they would have started is text.
        "c1  6n 2;x done\n",
    ] {
        assert!(text.contains(kept), "{kept:?} not in {text:?}");
    }
    // The only sequences left: the command's colours, its erase in line,
    // and the reset `watch` puts before its own lines.
    for e in escapes(&shown) {
        assert!(
            ["\x1b[31m", "\x1b[m", "\x1b[K", "\x1b[0m"].contains(&e.as_str()),
            "{e:?} reached the watcher: {text:?}"
        );
    }
    assert!(
        !text.contains('\u{9b}') && !text.contains('\u{9d}'),
        "{text:?}"
    );

    let raw = Watcher::start(&srv.socket, &["--raw-output"]);
    let out = srv.exec(&srv.dir.join("journal.jsonl"), &[HOSTILE_OUTPUT]);
    assert!(out.status.success(), "{out:?}");
    let shown = raw.until("the footer", |s| s.contains(": exit 0"));
    let text = String::from_utf8_lossy(&shown);
    for passed in ["\x1b]52;c;UFdORUQ=\x07", "\x1b[6n", "\x1bc", "\x1b[?1049h"] {
        assert!(text.contains(passed), "--raw-output lost {passed:?}");
    }
}

/// A same-uid `publish` client posting a header, output and a footer
/// under a served session's id (and its name), and output in the middle
/// of that session's running command, is shown as what it is: events
/// under its own namespace (`pubN/…`), tagged with its pid, never under
/// the session's name. Before: `watch` printed the fake events as the
/// served session's (`── build @ local ──`, `$ make`, `[build: exit 0 …]`)
/// and the fake output right under the real command's header.
fn a_publisher_cannot_pose_as_a_served_session() {
    let srv = Server::start("publish");
    let mut c = Conn::new(&srv.socket);
    c.call(json!({"op": "open", "name": "build"}));
    let list = c.call(json!({"op": "list"}));
    let id = list[0]["id"].as_str().unwrap().to_string();
    let watch = Watcher::start(&srv.socket, &[]);
    let mut raw = Conn::new(&srv.socket);
    raw.call(json!({"op": "watch"}));

    // A real command in `build`, waiting for its input.
    let r = c.call(json!({"op": "run", "session": "build",
        "command": "read x; echo real-$x", "yield_after_secs": 0.5}));
    assert_eq!(r["running"], true, "{r}");
    watch.until("the real header", |s| s.contains("$ read x; echo real-$x"));

    let me = std::process::id();
    let mut fake = UnixStream::connect(&srv.socket).unwrap();
    let mut r = BufReader::new(fake.try_clone().unwrap());
    writeln!(fake, "{}", json!({"op": "publish"})).unwrap();
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    assert!(l.contains("publishing"), "{l}");
    let forged = json!({"publisher": 0, "pid": 1, "uid": 0, "comm": "execkit serve"});
    for (session, n) in [(id.as_str(), 1), ("build", 2)] {
        for ev in [
            json!({"kind": "header", "session": session, "target": "local",
                "command": format!("make #{n}"), "origin": forged}),
            json!({"kind": "output", "session": session,
                "bytes": format!("fake: all {n} tests passed\n").into_bytes()}),
            json!({"kind": "footer", "session": session, "exit_code": 0,
                "duration_ms": 5, "timed_out": false}),
        ] {
            writeln!(fake, "{ev}").unwrap();
        }
    }
    // Output alone, while the real command runs: as if `build` printed it.
    let ev = json!({"kind": "output", "session": id, "bytes": b"fake: deployed\n".to_vec()});
    writeln!(fake, "{ev}").unwrap();
    watch.until("the injected output", |s| s.contains("fake: deployed"));
    drop(fake);
    c.call(json!({"op": "input", "session": "build", "text": "1\n"}));
    let r = c.call(json!({"op": "poll", "session": "build", "wait_secs": 30}));
    assert_eq!(r["running"], false, "{r}");

    let shown = watch.until("the real footer", |s| s.contains("[build: exit 0"));
    let text = String::from_utf8_lossy(&shown).into_owned();
    let tag = format!("mirrored by pid {me}");
    for n in [1, 2] {
        let header = text
            .lines()
            .position(|l| l == format!("$ make #{n}"))
            .unwrap_or_else(|| panic!("no fake header {n}: {text}"));
        let first = text.lines().nth(header - 1).unwrap();
        assert!(
            first.starts_with("── pub") && first.contains(&tag),
            "fake header {n} not tagged: {first:?}\n{text}"
        );
    }
    // Exactly one `build` header and footer: the real ones.
    assert_eq!(text.matches("── build @ local ──").count(), 1, "{text}");
    assert_eq!(text.matches("[build: ").count(), 1, "{text}");
    // The lone output line is introduced as the publisher's, and the real
    // output as `build`'s again.
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| *l == "fake: deployed").unwrap();
    assert!(
        lines[at - 1].starts_with("── pub") && lines[at - 1].contains(&tag),
        "{text}"
    );
    let at = lines.iter().position(|l| *l == "real-1").unwrap();
    assert_eq!(lines[at - 1], "── build ──", "{text}");

    // On the wire: namespaced ids, the publisher's pid, not the forgery.
    let t = Instant::now();
    let mut fakes = 0;
    while fakes < 7 {
        assert!(t.elapsed() < Duration::from_secs(30), "fake events missing");
        let ev = raw.line();
        if ev["origin"].is_null() {
            assert!(ev["session"] == id.as_str(), "{ev}");
            continue;
        }
        fakes += 1;
        let s = ev["session"].as_str().unwrap();
        assert!(s.starts_with("pub") && s.contains('/'), "{ev}");
        assert_eq!(ev["origin"]["pid"], me, "{ev}");
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A person runs `execkit watch` in a terminal (tmux) while an agent's
/// command prints queries, title, clipboard, reset and mode sequences, and
/// runs spoofed text. Afterwards the terminal's title, clipboard, modes
/// and scrollback are as they were, the real command is on screen, and
/// nothing the terminal answered waits in the pane's input for the
/// person's shell (the issue's `R1;2c` typed before the next command).
/// Before: the title read PWNED, tmux held the clipboard text, the pane
/// was in the alternate screen with mouse reporting on, the scrollback
/// was wiped, and the input held `\e[…R\e[?1;2c…`.
fn a_watchers_terminal_is_never_driven_by_what_runs() {
    let mut srv = Server::start("tmux");
    let tmux = Tmux {
        name: format!("execkit-term-{}", std::process::id()),
    };
    let answers = srv.dir.join("answers");
    let done = srv.dir.join("done");
    // The pane: `watch` in it; once it ends, whatever the terminal typed
    // into the pane's input is read (non-canonical, 0.5 s of quiet) and
    // kept, as the person's shell would have read it.
    let pane = format!(
        "{} watch --socket {} & wait; stty -icanon -echo min 0 time 5; cat > {}; touch {}",
        sh_quote(BIN),
        sh_quote(srv.socket.to_str().unwrap()),
        sh_quote(answers.to_str().unwrap()),
        sh_quote(done.to_str().unwrap()),
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "w",
        "-x",
        "160",
        "-y",
        "50",
        &pane,
    ]);
    tmux.run(&["set-option", "-g", "set-clipboard", "on"]);
    tmux.wait_for("execkit watch: watching");
    let title = tmux.format("#{pane_title}");

    let evidence = srv.dir.join("evidence");
    let out = srv.exec(
        &srv.dir.join("journal.jsonl"),
        &[
            &spoofed_touch(&evidence),
            concat!(
                "echo BEFORE-RESET; ",
                r"printf '\033c\033[3J\033]0;PWNED\007\033]2;PWNED\033\\\033]52;c;UFdORUQ=\007';",
                r"printf '\033[6n\033[c\033[>c\033[5n\033[?1000h\033[?1049h\033[?1h\033=\033[?2004h';",
                "echo; echo AFTER-ALL"
            ),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(evidence.exists(), "the command did not run");
    // Everything before the last footer has been through the terminal.
    let pane = tmux.wait_until("the last footer", |pane| {
        pane.split_once("AFTER-ALL")
            .is_some_and(|(_, after)| after.contains(": exit 0"))
    });
    let mut problems = Vec::new();
    if !pane.contains(&spoofed_touch_shown(&evidence)) {
        problems.push("the real command is not on screen".to_string());
    }
    if !pane.contains("BEFORE-RESET") {
        problems.push("the scrollback was wiped".into());
    }
    let now = tmux.format("#{pane_title}");
    if now != title {
        problems.push(format!("the title changed from {title:?} to {now:?}"));
    }
    let buffers = tmux.run(&["list-buffers"]);
    if !buffers.is_empty() {
        problems.push(format!("the clipboard was set: {buffers:?}"));
    }
    for flag in [
        "alternate_on",
        "mouse_any_flag",
        "keypad_cursor_flag",
        "keypad_flag",
    ] {
        if tmux.format(&format!("#{{{flag}}}")) != "0" {
            problems.push(format!("{flag} is on"));
        }
    }

    // The person's watch ends (the server goes away); what waits in the
    // terminal's input is what their shell would read next.
    srv.stop();
    let t = Instant::now();
    while !done.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the pane never finished:\n{}",
            tmux.pane()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let typed = std::fs::read(&answers).unwrap();
    if !typed.is_empty() {
        problems.push(format!(
            "the terminal answered into the person's input: {:?}",
            String::from_utf8_lossy(&typed)
        ));
    }
    assert!(problems.is_empty(), "{problems:#?}\n{pane}");
}

/// Peak RSS (KiB) of `cmd` once it exited, from `wait4` on its pid.
fn peak_rss_kib(cmd: &mut Command) -> (std::process::ExitStatus, i64) {
    use std::os::unix::process::ExitStatusExt;
    // Reaped below by `wait4`, which also gives its resource usage.
    #[allow(clippy::zombie_processes)]
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain wait4 on our own child, out-pointers valid; `child` is
    // not waited on again (dropping a `Child` does not wait).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    (std::process::ExitStatus::from_raw(status), usage.ru_maxrss)
}

/// Output that opens an OSC string and never ends it (64 MiB of `y`):
/// the terminal parser that strips (and, in `watch`, filters) escapes
/// keeps at most 1 KiB of it. Before: `vte` was built with `std`, whose
/// OSC buffer grows without bound, so the run's memory grew with the
/// output (84 MiB peak, against 21 MiB now) against the invariant that
/// memory per command is bounded whatever it prints.
fn an_unterminated_osc_costs_no_memory() {
    let state = std::env::temp_dir().join(format!("execkit-term-{}-osc", std::process::id()));
    let (status, kib) = peak_rss_kib(
        Command::new(BIN)
            .args(["exec", "--no-journal", "--socket"])
            .arg(state.join("none.sock"))
            .arg(r"printf '\033]'; head -c 67108864 /dev/zero | tr '\0' y; printf '\007'")
            .env("XDG_STATE_HOME", &state),
    );
    let _ = std::fs::remove_dir_all(&state);
    assert!(status.success(), "{status}");
    assert!(kib < 48 * 1024, "peak RSS {kib} KiB for 64 MiB of OSC");
}

/// tmux is here (`cargo xtask test` installs it).
fn tmux_env() -> Result<(), String> {
    match Command::new("tmux").arg("-V").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("no tmux".into()),
    }
}

/// On testkit's runner (`harness = false`): a test whose tool is missing
/// shows as ignored (a failure under `CI=true`), never as a pass.
fn main() -> ExitCode {
    testkit::harness(vec![
        Trial::test("spoofed_command_text_shows_what_really_ran", || {
            spoofed_command_text_shows_what_really_ran();
            Ok(())
        }),
        Trial::test("watch_drops_what_acts_outside_the_pane", || {
            watch_drops_what_acts_outside_the_pane();
            Ok(())
        }),
        Trial::test("a_publisher_cannot_pose_as_a_served_session", || {
            a_publisher_cannot_pose_as_a_served_session();
            Ok(())
        }),
        testkit::test_with(
            "a_watchers_terminal_is_never_driven_by_what_runs",
            &tmux_env(),
            |()| a_watchers_terminal_is_never_driven_by_what_runs(),
        ),
        Trial::test("an_unterminated_osc_costs_no_memory", || {
            an_unterminated_osc_costs_no_memory();
            Ok(())
        }),
    ])
}
