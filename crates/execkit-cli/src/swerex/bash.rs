//! SWE-ReX bash sessions on execkit sessions: `create_session`,
//! `run_in_session` (a command, an interactive step, an interrupt) and
//! `close_session`, with upstream's semantics on top of
//! [`execkit_core::Host`].
//!
//! A SWE-ReX session is a named session of the server's `Host` (its name
//! when that is a valid execkit name, else `swerex-N`), so it gets the
//! timeouts, the marker clean-up, the journal and the console of every
//! execkit session. Actions on one session take turns (upstream's server
//! answers one request at a time); an interrupt or a close does not wait
//! for its turn.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use execkit_core::host::{Host, HostError, OpenRequest};
use execkit_core::{RunOptions, RunResult, SessionError};
use regex::Regex;
use tokio::time::Instant;

use super::models::{
    py_repr, BashAction, Check, CreateSession, InterruptAction, Observation, Raised, PROMPT_MATCH,
};

/// How often a command is looked at while an action waits for one of its
/// `expect` patterns.
const EXPECT_POLL: Duration = Duration::from_millis(30);
/// How long a first slice of an interactive program runs before its
/// output is looked at.
const FIRST_LOOK: Duration = Duration::from_millis(50);

/// One SWE-ReX session.
struct Bash {
    /// Its name in the host.
    host_name: String,
    /// Actions take turns.
    turn: tokio::sync::Mutex<()>,
    /// Output of the running program read past the last `expect` match:
    /// the next interactive step sees it first (as pexpect's buffer).
    carry: Mutex<String>,
}

/// The SWE-ReX sessions of a server.
pub struct Sessions {
    host: Arc<Host>,
    /// By SWE-ReX name; `None` while it opens.
    map: Mutex<HashMap<String, Option<Arc<Bash>>>>,
    counter: AtomicU64,
}

/// A host error as the client's exception.
fn host_error(e: HostError) -> Raised {
    match e {
        HostError::TargetNotAllowed { .. } => Raised::builtin("PermissionError", e.to_string()),
        other => Raised::builtin("RuntimeError", other.to_string()),
    }
}

fn no_session(name: &str) -> Raised {
    Raised::swerex(
        "SessionDoesNotExistError",
        format!("session {} does not exist", py_repr(name)),
    )
}

/// `timeout` of an action: `None` waits for ever.
fn timeout_of(t: Option<f64>) -> Result<Option<Duration>, Raised> {
    t.map(|t| crate::duration::secs("timeout", t.max(0.0)))
        .transpose()
        .map_err(|e| Raised::builtin("ValueError", e))
}

fn shown_secs(t: Option<f64>) -> String {
    t.map_or_else(|| "None".to_string(), |t| format!("{t}"))
}

/// What waiting on a running program came to.
enum Waited {
    /// One of the patterns: the text before it, and which.
    Matched(String, usize),
    /// The program ended: all it printed, and its result.
    Ended(String, RunResult),
    /// The wait ran out: the text so far is kept for the next step.
    TimedOut,
}

impl Sessions {
    pub fn new(host: Arc<Host>) -> Sessions {
        Sessions {
            host,
            map: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
        }
    }

    fn get(&self, name: &str) -> Result<Arc<Bash>, Raised> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(name) {
            Some(Some(b)) => Ok(b.clone()),
            _ => Err(no_session(name)),
        }
    }

    /// `create_session`: a new execkit session, then the startup files
    /// sourced.
    pub async fn create(&self, req: CreateSession) -> Result<String, Raised> {
        if req.session_type.as_deref().is_some_and(|t| t != "bash") {
            return Err(Raised::builtin(
                "ValueError",
                "only bash sessions exist (session_type `bash`)",
            ));
        }
        {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            if map.contains_key(&req.session) {
                return Err(Raised::swerex(
                    "SessionExistsError",
                    format!("session {} already exists", req.session),
                ));
            }
            map.insert(req.session.clone(), None);
        }
        let opened = self.open(&req).await;
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match opened {
            Ok((bash, output)) => {
                map.insert(req.session.clone(), Some(Arc::new(bash)));
                Ok(output)
            }
            Err(e) => {
                map.remove(&req.session);
                Err(e)
            }
        }
    }

    async fn open(&self, req: &CreateSession) -> Result<(Bash, String), Raised> {
        let mut name = req.session.clone();
        let info = loop {
            let open = OpenRequest {
                name: Some(name.clone()),
                ..Default::default()
            };
            match self.host.open(open).await {
                Ok(info) => break info,
                // Not a name execkit takes, or one a session of another
                // SWE-ReX name already holds.
                Err(HostError::InvalidName(_) | HostError::NameTaken(_)) => {
                    let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
                    name = format!("swerex-{n}");
                }
                Err(e) => return Err(host_error(e)),
            }
        };
        let bash = Bash {
            host_name: info.name,
            turn: tokio::sync::Mutex::new(()),
            carry: Mutex::new(String::new()),
        };
        if req.startup_source.is_empty() {
            return Ok((bash, String::new()));
        }
        let text: Vec<String> = req
            .startup_source
            .iter()
            .map(|f| format!(". {f}"))
            .collect();
        let timeout = crate::duration::secs("startup_timeout", req.startup_timeout.max(0.0))
            .map_err(|e| Raised::builtin("ValueError", e))?;
        let opts = RunOptions::timeout(timeout).keep_final_newline(true);
        let ran = self.host.run(&bash.host_name, &text.join("\n"), opts).await;
        match ran {
            Ok(r) if !r.timed_out && !r.running => Ok((bash, r.output)),
            other => {
                let _ = self.host.close(&bash.host_name).await;
                Err(match other {
                    Err(e) => host_error(e),
                    Ok(_) => Raised::swerex(
                        "CommandTimeoutError",
                        format!(
                            "sourcing the startup files took longer than startup_timeout ({} s)",
                            req.startup_timeout
                        ),
                    ),
                })
            }
        }
    }

    /// `close_session`: the session's shell and everything it started end,
    /// even mid-command.
    pub async fn close(&self, name: &str) -> Result<(), Raised> {
        let bash = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(name) {
                Some(Some(_)) => map.remove(name).flatten(),
                _ => None,
            }
        };
        let Some(bash) = bash else {
            return Err(no_session(name));
        };
        match self.host.close(&bash.host_name).await {
            Ok(()) | Err(HostError::NoSuchSession(_)) => Ok(()),
            Err(e) => Err(host_error(e)),
        }
    }

    /// `close`: every session.
    pub async fn close_all(&self) {
        let names: Vec<String> = {
            let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .filter(|(_, b)| b.is_some())
                .map(|(n, _)| n.clone())
                .collect()
        };
        for n in names {
            let _ = self.close(&n).await;
        }
    }

    /// The interrupt action: what runs gets Ctrl-C (and, if it holds on,
    /// the recovery ladder); a session with nothing running answers at
    /// once.
    pub async fn interrupt(&self, a: InterruptAction) -> Result<Observation, Raised> {
        let bash = self.get(&a.session)?;
        let carried = std::mem::take(&mut *bash.carry.lock().unwrap_or_else(|e| e.into_inner()));
        let output = match self.host.interrupt(&bash.host_name).await {
            Ok(r) => carried + &r.output,
            Err(HostError::Session(SessionError::Idle)) => carried,
            Err(HostError::NoSuchSession(_) | HostError::Ended(_)) => {
                return Err(no_session(&a.session))
            }
            Err(e) => return Err(host_error(e)),
        };
        Ok(Observation {
            output: output.trim().to_string(),
            exit_code: Some(0),
            failure_reason: String::new(),
            expect_string: PROMPT_MATCH.into(),
        })
    }

    /// A bash action.
    pub async fn run(&self, a: BashAction) -> Result<Observation, Raised> {
        let bash = self.get(&a.session)?;
        let _turn = bash.turn.lock().await;
        let timeout = timeout_of(a.timeout)?;
        let expect = a
            .expect
            .iter()
            .map(|p| Regex::new(p).or_else(|_| Regex::new(&regex::escape(p))))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Raised::builtin("ValueError", format!("expect: {e}")))?;
        if a.is_interactive_command || a.is_interactive_quit {
            return self.interactive(&bash, &a, timeout, &expect).await;
        }
        let running = self.is_running(&bash).await;
        let ended = if running {
            // Upstream types it into whatever runs: so do we, and wait for
            // that to end.
            self.type_line(&bash, &a.command).await?;
            let deadline = timeout.map(|t| Instant::now() + t);
            match self.wait(&bash, None, &expect, deadline).await? {
                Waited::Matched(before, i) => return Ok(matched(before, &a.expect[i])),
                Waited::Ended(text, r) => (text, r),
                Waited::TimedOut => {
                    // What runs is stopped: a timed-out action leaves
                    // nothing running.
                    let _ = self.host.interrupt(&bash.host_name).await;
                    bash.carry.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    return Err(timed_out(&a));
                }
            }
        } else if a.command.trim().is_empty() {
            // Nothing to run (the engine refuses empty text).
            let r = RunResult {
                exit_code: Some(0),
                error: None,
                ..blank_result()
            };
            (String::new(), r)
        } else {
            super::syntax::check(&a.command).await?;
            let mut opts = RunOptions::default().keep_final_newline(true);
            opts.timeout = timeout;
            if !expect.is_empty() {
                opts.yield_after = Some(FIRST_LOOK);
            }
            let first = self
                .host
                .run(&bash.host_name, &a.command, opts)
                .await
                .map_err(|e| self.gone(e, &a.session))?;
            if first.running {
                // Only the engine's timeout ends it: no deadline here.
                match self.wait(&bash, Some(first), &expect, None).await? {
                    Waited::Matched(before, i) => return Ok(matched(before, &a.expect[i])),
                    Waited::Ended(text, r) => (text, r),
                    Waited::TimedOut => unreachable!("no deadline"),
                }
            } else {
                (first.output.clone(), first)
            }
        };
        let (output, r) = ended;
        if r.timed_out {
            return Err(timed_out(&a));
        }
        finish(&a, output, &r)
    }

    /// An interactive step: start a program, or type a line into the one
    /// running, and wait until one of `expect` appears (or the program
    /// ends); `is_interactive_quit` waits for it to end.
    async fn interactive(
        &self,
        bash: &Bash,
        a: &BashAction,
        timeout: Option<Duration>,
        expect: &[Regex],
    ) -> Result<Observation, Raised> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let first = if self.is_running(bash).await {
            self.type_line(bash, &a.command).await?;
            None
        } else {
            let opts = RunOptions::default()
                .keep_final_newline(true)
                .yield_after(Some(FIRST_LOOK));
            let r = self
                .host
                .run(&bash.host_name, &a.command, opts)
                .await
                .map_err(|e| self.gone(e, &a.session))?;
            Some(r)
        };
        let (before, expect_string) = match self.wait(bash, first, expect, deadline).await? {
            Waited::Matched(before, i) => (before, a.expect[i].clone()),
            Waited::Ended(text, _) => (text, PROMPT_MATCH.to_string()),
            Waited::TimedOut => return Err(timed_out(a)),
        };
        let output = if a.is_interactive_quit {
            before
        } else {
            // A program that echoes what it reads (readline) shows the line
            // first.
            let t = before.trim_start();
            t.strip_prefix(a.command.as_str())
                .unwrap_or(t)
                .trim()
                .to_string()
        };
        Ok(Observation {
            output,
            exit_code: Some(0),
            failure_reason: String::new(),
            expect_string,
        })
    }

    async fn is_running(&self, bash: &Bash) -> bool {
        // A poll that returns at once: `Idle` when nothing runs.
        match self.host.poll(&bash.host_name, Duration::ZERO).await {
            Ok(r) => {
                if r.running {
                    bash.carry
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&r.output);
                }
                r.running
            }
            Err(_) => false,
        }
    }

    async fn type_line(&self, bash: &Bash, line: &str) -> Result<(), Raised> {
        let mut text = line.to_string();
        text.push('\n');
        self.host
            .send_input(&bash.host_name, &text)
            .await
            .map_err(host_error)
    }

    fn gone(&self, e: HostError, name: &str) -> Raised {
        match e {
            HostError::NoSuchSession(_) | HostError::Ended(_) => no_session(name),
            other => host_error(other),
        }
    }

    /// Follows a running program's output (`first`: the result that
    /// started it) until a pattern matches, it ends or `deadline` passes.
    async fn wait(
        &self,
        bash: &Bash,
        first: Option<RunResult>,
        expect: &[Regex],
        deadline: Option<Instant>,
    ) -> Result<Waited, Raised> {
        let mut text = std::mem::take(&mut *bash.carry.lock().unwrap_or_else(|e| e.into_inner()));
        let mut last = first;
        loop {
            if let Some(r) = &last {
                text.push_str(&r.output);
            }
            let found = expect
                .iter()
                .enumerate()
                .filter_map(|(i, re)| re.find(&text).map(|m| (m.start(), m.end(), i)))
                .min();
            if let Some((start, end, i)) = found {
                *bash.carry.lock().unwrap_or_else(|e| e.into_inner()) = text[end..].to_string();
                text.truncate(start);
                return Ok(Waited::Matched(text, i));
            }
            if let Some(r) = last.take() {
                if !r.running {
                    return Ok(Waited::Ended(text, r));
                }
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| d <= now) {
                *bash.carry.lock().unwrap_or_else(|e| e.into_inner()) = text;
                return Ok(Waited::TimedOut);
            }
            let wait = deadline.map_or(EXPECT_POLL, |d| (d - now).min(EXPECT_POLL));
            // With no pattern to look for, only the end matters.
            let wait = if expect.is_empty() && deadline.is_none() {
                Duration::from_secs(3600)
            } else {
                wait
            };
            match self.host.poll(&bash.host_name, wait).await {
                Ok(r) => {
                    if r.running && r.waiting_for_input && r.output.is_empty() {
                        // The engine answers at once while a program
                        // waits on the terminal: look again a little
                        // later.
                        tokio::time::sleep(wait.min(EXPECT_POLL)).await;
                    }
                    last = Some(r);
                }
                Err(HostError::Session(SessionError::Idle)) => {
                    // It ended and its result went to another waiter (an
                    // interrupt).
                    let r = blank_result();
                    return Ok(Waited::Ended(text, r));
                }
                Err(e) => {
                    *bash.carry.lock().unwrap_or_else(|e| e.into_inner()) = text;
                    return Err(host_error(e));
                }
            }
        }
    }
}

/// A finished command's result with no exit code (it ended unseen).
fn blank_result() -> RunResult {
    RunResult {
        command: String::new(),
        exit_code: None,
        output: String::new(),
        timed_out: false,
        truncated: false,
        restarted: false,
        session_lost: false,
        error: Some("the command ended while nobody waited for it".into()),
        duration_ms: 0,
        cwd: String::new(),
        output_path: None,
        running: false,
        waiting_for_input: false,
    }
}

fn timed_out(a: &BashAction) -> Raised {
    Raised::swerex(
        "CommandTimeoutError",
        format!(
            "command {} timed out after {} s; it and everything it started were stopped",
            py_repr(&a.command),
            shown_secs(a.timeout)
        ),
    )
}

/// A command that stopped at one of its `expect` patterns while running:
/// no exit code yet.
fn matched(before: String, pattern: &str) -> Observation {
    Observation {
        output: before,
        exit_code: None,
        failure_reason: String::new(),
        expect_string: pattern.to_string(),
    }
}

/// The observation of a finished command, or the exception `check` asks
/// for.
fn finish(a: &BashAction, output: String, r: &RunResult) -> Result<Observation, Raised> {
    let mut failure = Vec::new();
    if r.session_lost {
        failure.push(format!(
            "the target was lost: {}",
            r.error.as_deref().unwrap_or("no reason given")
        ));
    } else if r.restarted {
        failure.push(format!(
            "the shell was restarted, its state (cwd, variables, functions) reset: {}",
            r.error.as_deref().unwrap_or("no reason given")
        ));
    } else if let Some(e) = &r.error {
        failure.push(e.clone());
    }
    let failure_reason = failure.join("; ");
    let exit_code = match a.check {
        Check::Ignore => None,
        _ => r.exit_code,
    };
    if a.check == Check::Raise && r.exit_code != Some(0) {
        let prefix = if a.error_msg.is_empty() {
            String::new()
        } else {
            format!("{}: ", a.error_msg)
        };
        let Some(code) = r.exit_code else {
            return Err(Raised::swerex(
                "NoExitCodeError",
                format!(
                    "{prefix}no exit code for {}: {}",
                    py_repr(&a.command),
                    if failure_reason.is_empty() {
                        "unknown"
                    } else {
                        &failure_reason
                    }
                ),
            ));
        };
        return Err(Raised::swerex(
            "NonZeroExitCodeError",
            format!(
                "{prefix}command {} exited with {code}; its output:\n{}",
                py_repr(&a.command),
                py_repr(&output)
            ),
        ));
    }
    Ok(Observation {
        output,
        exit_code,
        failure_reason,
        expect_string: PROMPT_MATCH.into(),
    })
}
