//! `execkit attach NAME` (issue 16): a person steps into an agent's served
//! session. An agent runs `read x; echo got:$x` through the serve protocol;
//! the person attaches in a tmux pane, sees the command on the screen,
//! types the answer and detaches with Ctrl-]; the agent's `poll` returns
//! what the command printed, and the journal has the input as the
//! person's. `--read-only` sends no keys; a missing session is exit 66;
//! another uid is refused.
//!
//! On testkit's runner: without tmux the cases are ignored (failed under
//! CI=true); docker and ssh also without the container and sshd `cargo
//! xtask test` provisions.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};

use execkit_core::testkit::{self, libtest_mimic::Trial};
use serde_json::{json, Value};
use support::tmux::Tmux;
use support::{spawn_serve, Conn};

const BIN: &str = env!("CARGO_BIN_EXE_execkit");

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A server of its own, stopped by PID on drop.
struct Server {
    dir: PathBuf,
    socket: PathBuf,
    journal: PathBuf,
    child: Child,
}

impl Server {
    fn start(case: &str) -> Server {
        let dir =
            std::env::temp_dir().join(format!("execkit-attach-{}-{case}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("run/execkit.sock");
        let journal = dir.join("journal.jsonl");
        let child = spawn_serve(&socket, &journal, &dir.join("state"), &[]);
        Server {
            dir,
            socket,
            journal,
            child,
        }
    }

    /// Opens `name` on `target` and starts `read x; echo got:$x` in it
    /// (the agent's side); returns once it waits.
    fn agent_reads(&self, name: &str, target: &str) -> Conn {
        let mut c = Conn::new(&self.socket);
        c.call(json!({"op": "open", "name": name, "target": target}));
        let r = c.call(json!({"op": "run", "session": name,
            "command": "read x; echo got:$x", "yield_after_secs": 0.5}));
        assert_eq!(r["running"], true, "{r}");
        c
    }

    fn journal_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.journal)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `execkit attach` in a private tmux server's pane.
struct Pane {
    tmux: Tmux,
}

impl Pane {
    fn start(case: &str, srv: &Server, args: &str) -> Pane {
        let name = format!("execkit-attach-{}-{case}", std::process::id());
        let pane = Pane {
            tmux: Tmux { name },
        };
        let script = format!(
            "{} attach {args} --socket {}; echo exit:$?; sleep 600",
            sh_quote(BIN),
            sh_quote(srv.socket.to_str().unwrap()),
        );
        pane.tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "w",
            "-x",
            "100",
            "-y",
            "30",
            "sh",
            "-c",
            &script,
        ]);
        pane
    }
}

impl std::ops::Deref for Pane {
    type Target = Tmux;
    fn deref(&self) -> &Tmux {
        &self.tmux
    }
}

/// A name for a case's directory and tmux server: one per case and target
/// (they run at once).
fn case_name(case: &str, target: &str) -> String {
    let kind: String = target
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    format!("{case}-{kind}")
}

fn person_answers_the_agents_read(target: &str) {
    let case = case_name("answer", target);
    let srv = Server::start(&case);
    let mut agent = srv.agent_reads("job", target);
    let pane = Pane::start(&case, &srv, "job");
    // The screen as it is: the command the agent started.
    pane.wait_for("$ read x; echo got:$x");
    pane.type_text("hello");
    pane.press("Enter");
    // The stream: what the command printed after the answer.
    pane.wait_for("got:hello");
    pane.press("C-]");
    let screen = pane.wait_for("exit:0");
    assert!(screen.contains("detached from job"), "{screen}");
    // The agent's next poll has what happened.
    let r = agent.call(json!({"op": "poll", "session": "job", "wait_secs": 20}));
    assert_eq!(r["running"], false, "{r}");
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_eq!(r["output"], "got:hello", "{r}");
    // The session goes on after the detach.
    let r = agent.call(json!({"op": "run", "session": "job", "command": "echo $x"}));
    assert_eq!(r["output"], "hello", "{r}");
    // The journal has the person's input, marked as theirs.
    let lines = srv.journal_lines();
    let input = lines
        .iter()
        .find(|l| l["event"] == "input")
        .unwrap_or_else(|| panic!("no input event: {lines:?}"));
    assert_eq!(input["by"], "person", "{input}");
    assert!(
        input["text"].as_str().unwrap_or("").starts_with("hello"),
        "{input}"
    );
}

fn read_only_sends_no_keys(target: &str) {
    let case = case_name("ro", target);
    let srv = Server::start(&case);
    let mut agent = srv.agent_reads("job", target);
    let pane = Pane::start(&case, &srv, "--read-only job");
    pane.wait_for("$ read x; echo got:$x");
    pane.type_text("nope");
    pane.press("Enter");
    pane.press("C-]");
    pane.wait_for("exit:0");
    // Nothing reached the command: it still waits, and the agent's
    // answer is all it read.
    let r = agent.call(json!({"op": "poll", "session": "job"}));
    assert_eq!(r["running"], true, "{r}");
    agent.call(json!({"op": "input", "session": "job", "text": "yes\n"}));
    let r = agent.call(json!({"op": "poll", "session": "job", "wait_secs": 20}));
    assert_eq!(r["output"], "got:yes", "{r}");
    assert!(
        !srv.journal_lines().iter().any(|l| l["by"] == "person"),
        "a read-only attach journaled input"
    );
}

fn missing_session_is_exit_66(_: ()) {
    let srv = Server::start("missing");
    let out = Command::new(BIN)
        .args(["attach", "nobody", "--socket"])
        .arg(&srv.socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(66), "{err}");
    assert!(err.contains("no session named `nobody`"), "{err}");
}

fn another_uid_is_refused(_: ()) {
    use std::os::unix::process::CommandExt as _;
    let srv = Server::start("uid");
    let _agent = srv.agent_reads("job", "local");
    // Open the path up: only the uid checks stand in the way.
    for p in [
        srv.dir.as_path(),
        srv.socket.parent().unwrap(),
        srv.socket.as_path(),
    ] {
        Command::new("chmod").arg("a+rwx").arg(p).status().unwrap();
    }
    let exe = srv.dir.join("execkit");
    std::fs::copy(BIN, &exe).unwrap();
    let out = Command::new(&exe)
        .args(["attach", "job", "--socket"])
        .arg(&srv.socket)
        .env("HOME", "/")
        .current_dir("/")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert!(err.contains("permission denied"), "{err}");
}

/// tmux is here (`cargo xtask test` installs it).
fn tmux_env() -> Result<(), String> {
    match Command::new("tmux").arg("-V").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("no tmux".into()),
    }
}

fn target(which: &str) -> Result<String, String> {
    tmux_env()?;
    match which {
        "local" => Ok("local".into()),
        "docker" => support::docker_target(),
        _ => support::ssh_target(),
    }
}

type Case = fn(&str);

fn main() -> ExitCode {
    let cases: [(&str, Case); 2] = [
        (
            "person_answers_the_agents_read",
            person_answers_the_agents_read,
        ),
        ("read_only_sends_no_keys", read_only_sends_no_keys),
    ];
    let mut trials: Vec<Trial> = Vec::new();
    for which in ["local", "docker", "ssh"] {
        let env = target(which);
        for (name, case) in cases {
            trials.push(testkit::test_with(
                format!("{which}::{name}"),
                &env,
                move |t: String| case(&t),
            ));
        }
    }
    trials.push(testkit::test_with(
        "missing_session_is_exit_66",
        &Ok(()),
        missing_session_is_exit_66,
    ));
    // SAFETY: geteuid cannot fail.
    let root = match unsafe { libc::geteuid() } {
        0 => Ok(()),
        _ => Err("not root: cannot run as another uid".to_string()),
    };
    trials.push(testkit::test_with(
        "another_uid_is_refused",
        &root,
        another_uid_is_refused,
    ));
    testkit::harness(trials)
}
