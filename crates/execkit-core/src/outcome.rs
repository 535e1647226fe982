//! What became of a command, as one value: every front end (the CLI's exit
//! status and status lines, the MCP text view, the journal reader) asks
//! [`RunResult::outcome`] instead of weighing the flags itself.

use serde::{Deserialize, Serialize};

use crate::RunResult;

/// The outcome of one command, from its [`RunResult`] flags.
///
/// Precedence, first match wins: still running (waiting for input or not),
/// the target lost, the timeout, stopped at a prompt nobody could answer,
/// then the exit code (none: see [`RunResult::error`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunOutcome {
    /// It yielded and still runs: `poll` for the rest.
    Running,
    /// It still runs and is blocked reading the terminal: answer it
    /// (`send_input`), `poll` or `interrupt`.
    AwaitingInput,
    /// The target went away; the session cannot run more commands.
    Lost,
    /// The hard timeout fired; what it started was killed.
    TimedOut,
    /// It was stopped at a prompt nobody could answer (`InputWait::Stop`).
    StoppedAtPrompt,
    /// It exited 0.
    Succeeded,
    /// It exited with this non-zero code.
    Failed(i32),
    /// It ended without an exit code (interrupted, its shell died, it did
    /// not run); `error` says why.
    NoExitCode,
}

impl RunOutcome {
    /// A short human label: `exit 0`, `exit 3`, `timed out`, `target lost`, ….
    pub fn label(self) -> String {
        match self {
            RunOutcome::Running => "running".into(),
            RunOutcome::AwaitingInput => "waiting for input".into(),
            RunOutcome::Lost => "target lost".into(),
            RunOutcome::TimedOut => "timed out".into(),
            RunOutcome::StoppedAtPrompt => "stopped at a prompt".into(),
            RunOutcome::Succeeded => "exit 0".into(),
            RunOutcome::Failed(c) => format!("exit {c}"),
            RunOutcome::NoExitCode => "no exit code".into(),
        }
    }

    /// Whether the command is over (not `Running`/`AwaitingInput`).
    pub fn is_final(self) -> bool {
        !matches!(self, RunOutcome::Running | RunOutcome::AwaitingInput)
    }
}

impl RunResult {
    /// What became of the command (see [`RunOutcome`] for the precedence).
    pub fn outcome(&self) -> RunOutcome {
        if self.running {
            if self.waiting_for_input {
                RunOutcome::AwaitingInput
            } else {
                RunOutcome::Running
            }
        } else if self.session_lost {
            RunOutcome::Lost
        } else if self.timed_out {
            RunOutcome::TimedOut
        } else if self.waiting_for_input {
            RunOutcome::StoppedAtPrompt
        } else {
            match self.exit_code {
                Some(0) => RunOutcome::Succeeded,
                Some(c) => RunOutcome::Failed(c),
                None => RunOutcome::NoExitCode,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> RunResult {
        let mut r = crate::session::blank("x", tokio::time::Instant::now(), "/");
        r.exit_code = Some(0);
        r
    }

    #[test]
    fn precedence_is_one_place() {
        let mut r = result();
        assert_eq!(r.outcome(), RunOutcome::Succeeded);
        r.exit_code = Some(3);
        assert_eq!(r.outcome(), RunOutcome::Failed(3));
        r.exit_code = None;
        assert_eq!(r.outcome(), RunOutcome::NoExitCode);
        r.waiting_for_input = true;
        assert_eq!(r.outcome(), RunOutcome::StoppedAtPrompt);
        r.timed_out = true;
        assert_eq!(r.outcome(), RunOutcome::TimedOut);
        // A timeout after which no shell could be started is a lost target.
        r.session_lost = true;
        assert_eq!(r.outcome(), RunOutcome::Lost);
        r.running = true;
        assert_eq!(r.outcome(), RunOutcome::AwaitingInput);
        r.waiting_for_input = false;
        assert_eq!(r.outcome(), RunOutcome::Running);
        assert!(!r.outcome().is_final());
        assert_eq!(RunOutcome::Failed(2).label(), "exit 2");
    }
}
