//! What a command is run with ([`RunOptions`], [`InputWait`]) and what it
//! answers ([`RunResult`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

#[cfg(doc)]
use super::Session;

/// Per-command options.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RunOptions {
    /// Hard timeout; `None` waits forever.
    pub timeout: Option<Duration>,
    /// Return with `running: true` and the output so far if the command is
    /// still going after this long; continue with [`Session::poll`].
    pub yield_after: Option<Duration>,
    /// What to do when the command waits for terminal input.
    pub input_wait: InputWait,
    /// A person at a real terminal runs the command (`execkit shell`):
    /// see [`PersonTerminal`]. `None` (agents): the session's terminal
    /// stays as execkit set it up.
    pub person: Option<PersonTerminal>,
    /// Once notified, a [`Session::run`] or [`Session::poll`] waiting on
    /// this command returns at once with `running: true` (the command goes
    /// on): how a caller that stops waiting — a cancelled task, a
    /// Ctrl-C in the calling program — gets the session back to
    /// [`Session::interrupt`] it. A notification before the wait starts
    /// counts (a [`Notify`] keeps one permit).
    pub wake: Option<Arc<Notify>>,
    /// Keep the output's final newline (by default one final `\n` is
    /// trimmed, as `$(…)` does): the exact text, for a client that must
    /// tell `printf x` from `echo x` (the SWE-ReX server).
    pub keep_final_newline: bool,
}

/// How a command typed by a person at a real terminal runs: for its
/// duration the session's terminal has the modes a person expects (echo,
/// line editing, `\n` → `\r\n`, as `stty sane`), `TERM` is the person's
/// and no pager is forced; before its sentinel the shell puts back
/// execkit's own modes and variables (also after a Ctrl-C or a timeout).
/// The result, the journal and the console are the same as for any
/// command; the raw bytes also go to `raw_output` as they arrive.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PersonTerminal {
    /// `TERM` for the command (the person's terminal type).
    pub term: String,
    /// Gets every chunk the command prints, raw (colours, cursor
    /// movement) and as it arrives; the result's `output` is still the
    /// cleaned text.
    pub raw_output: Option<mpsc::UnboundedSender<Vec<u8>>>,
    /// Once notified, a [`Session::run`] or [`Session::poll`] waiting on the
    /// command returns at once with `running: true` (keystrokes to send, a
    /// window to resize).
    pub wake: Option<Arc<Notify>>,
}

impl PersonTerminal {
    /// A person's terminal of type `term` (`$TERM`), raw output and wake-up
    /// not wired.
    pub fn new(term: impl Into<String>) -> Self {
        PersonTerminal {
            term: term.into(),
            raw_output: None,
            wake: None,
        }
    }

    /// Sends the raw output to `sink`.
    pub fn raw_output(mut self, sink: mpsc::UnboundedSender<Vec<u8>>) -> Self {
        self.raw_output = Some(sink);
        self
    }

    /// Yields the command's wait when `wake` is notified.
    pub fn wake(mut self, wake: Arc<Notify>) -> Self {
        self.wake = Some(wake);
        self
    }
}

/// What [`Session::run`] does when the command is found blocked reading
/// the terminal (a prompt, `read`, an editor, a pager) with no new output
/// for a short grace (1.5 s; looked for again less and less
/// often while it waits, never while idle).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum InputWait {
    /// Keep waiting (the default; a person at a terminal answers).
    #[default]
    Ignore,
    /// Stop the command (as a timeout would, keeping the shell) and return
    /// with `waiting_for_input: true` and the prompt in `output`: for a
    /// one-shot run nobody could answer.
    Stop,
    /// Return at once with `running: true, waiting_for_input: true`; the
    /// caller answers with [`Session::send_input`], polls or interrupts.
    Yield,
}

impl RunOptions {
    /// Options with a hard timeout.
    pub fn timeout(timeout: Duration) -> Self {
        RunOptions {
            timeout: Some(timeout),
            yield_after: None,
            input_wait: InputWait::Ignore,
            person: None,
            wake: None,
            keep_final_newline: false,
        }
    }

    /// Runs the command for a person at a real terminal (see
    /// [`PersonTerminal`]).
    pub fn person(mut self, person: PersonTerminal) -> Self {
        self.person = Some(person);
        self
    }

    /// Sets what happens when the command waits for terminal input.
    pub fn input_wait(mut self, what: InputWait) -> Self {
        self.input_wait = what;
        self
    }

    /// Sets `yield_after`.
    pub fn yield_after(mut self, after: Option<Duration>) -> Self {
        self.yield_after = after;
        self
    }

    /// Yields the command's wait when `wake` is notified (see
    /// [`RunOptions::wake`]).
    pub fn wake(mut self, wake: Arc<Notify>) -> Self {
        self.wake = Some(wake);
        self
    }

    /// Keeps the output's final newline (see
    /// [`RunOptions::keep_final_newline`]).
    pub fn keep_final_newline(mut self, keep: bool) -> Self {
        self.keep_final_newline = keep;
        self
    }
}

/// The structured result of one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResult {
    /// The command as given.
    pub command: String,
    /// `$?`, or `None` when the command did not finish (timed out, killed, lost).
    pub exit_code: Option<i32>,
    /// stdout and stderr as the terminal saw them, cleaned and capped, final newline trimmed.
    pub output: String,
    /// The hard timeout fired.
    pub timed_out: bool,
    /// Output was capped; the full text is at `output_path`.
    pub truncated: bool,
    /// The shell died or was killed during this command (or before it) and a
    /// fresh one replaced it: cwd, variables and functions are reset.
    pub restarted: bool,
    /// The target went away; the session cannot go on until it comes back.
    pub session_lost: bool,
    /// What went wrong, when something did besides the command failing.
    pub error: Option<String>,
    /// Wall time of the command in milliseconds.
    pub duration_ms: u64,
    /// Working directory of the shell afterwards.
    pub cwd: String,
    /// Spool file with the full output, when it was capped.
    pub output_path: Option<PathBuf>,
    /// The command is still running (it yielded); `output` is what it printed
    /// since the last read. Continue with `poll`, `send_input` or `interrupt`.
    #[serde(default)]
    pub running: bool,
    /// The command was found blocked reading the terminal, quiet (see
    /// [`InputWait`]): with `running`, it waits for an answer; without, it
    /// was stopped because nobody could give one (`output` ends with the
    /// prompt).
    #[serde(default)]
    pub waiting_for_input: bool,
}

/// A result with nothing happened yet.
pub(crate) fn blank(command: &str, started: Instant, cwd: &str) -> RunResult {
    RunResult {
        command: command.to_string(),
        exit_code: None,
        output: String::new(),
        timed_out: false,
        truncated: false,
        restarted: false,
        session_lost: false,
        error: None,
        duration_ms: started.elapsed().as_millis() as u64,
        cwd: cwd.to_string(),
        output_path: None,
        running: false,
        waiting_for_input: false,
    }
}
