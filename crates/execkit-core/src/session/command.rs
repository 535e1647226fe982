//! One command from its text to the wire: the shell made ready, the
//! command's state ([`Pending`]) and the cheapest safe encoding.

use std::ops::ControlFlow;

use tokio::time::Instant;

use super::{
    blank, Collector, InputWait, Pending, RunOptions, RunResult, Session, COMMAND_VAR,
    INPUT_WAIT_GRACE,
};
use crate::console::ConsoleEvent;
use crate::error::SessionError;
use crate::journal::JournalEvent;
use crate::protocol::{self, SentinelScanner};
use crate::shell;

impl Session {
    /// Runs `command`, journaled and mirrored as `shown`; `None`: one of
    /// execkit's own commands, neither journaled nor mirrored.
    pub(super) async fn run_shown(
        &mut self,
        shown: Option<&str>,
        command: &str,
        opts: RunOptions,
    ) -> Result<RunResult, SessionError> {
        protocol::validate(command)?;
        if self.pending.is_some() {
            return Err(SessionError::Busy);
        }
        let started = Instant::now();
        self.seq += 1;
        if let Some(shown) = shown {
            self.record(JournalEvent::Command {
                command: shown.to_string(),
            });
            self.publish(ConsoleEvent::Header {
                session: self.id.clone(),
                target: self.target().to_string(),
                command: shown.to_string(),
                origin: None,
            });
        }
        let restarted = match self.ready_shell(shown, command, started).await {
            ControlFlow::Continue(restarted) => restarted,
            ControlFlow::Break(refused) => return Ok(refused),
        };
        let spool = self
            .config
            .spool_dir
            .join(format!("{}-{}.out", self.id, self.seq));
        let nonce = protocol::nonce().map_err(SessionError::NoRandomness)?;
        let cid = protocol::nonce().map_err(SessionError::NoRandomness)?;
        let mut pending = Pending {
            command: shown.unwrap_or(command).to_string(),
            started,
            deadline: opts.timeout.map(|t| started + t),
            cid: cid.clone(),
            scanner: SentinelScanner::new(&nonce),
            collector: Collector::new(self.config.output_limit, spool),
            sent: false,
            internal: shown.is_none(),
            keep_newline: opts.keep_final_newline,
            input_wait: if shown.is_some() {
                opts.input_wait
            } else {
                InputWait::Ignore
            },
            last_activity: started,
            input_probe_at: started + INPUT_WAIT_GRACE,
            probe_every: INPUT_WAIT_GRACE,
            waiting: false,
            wake: opts
                .wake
                .or_else(|| opts.person.as_ref().and_then(|p| p.wake.clone())),
            person: if shown.is_some() { opts.person } else { None },
            ctrl_c_check: None,
            typed: Vec::new(),
        };
        pending.collector.restarted = restarted;
        pending.collector.track_delta =
            opts.yield_after.is_some() || opts.input_wait == InputWait::Yield;
        let mut line = format!("export {COMMAND_VAR}={cid}; ").into_bytes();
        let term = pending.person.as_ref().map(|p| p.term.clone());
        let (scanner, encoded) = self.encode(command, &nonce, term.as_deref());
        pending.scanner = scanner;
        line.extend(encoded);
        self.pending = Some(pending);
        if let Some(shell) = self.shell.as_deref() {
            shell.command_begins();
        }
        let yield_at = opts.yield_after.map(|y| started + y);
        self.drive(Some(line), yield_at).await
    }

    /// Makes sure a shell can take the command: a lost one is replaced
    /// (`Continue(true)`: the result says `restarted`); after a command
    /// interrupted on a frozen target, a target still frozen refuses it
    /// (`Break`: its result), one running again first has what is left of
    /// that command killed.
    async fn ready_shell(
        &mut self,
        shown: Option<&str>,
        command: &str,
        started: Instant,
    ) -> ControlFlow<RunResult, bool> {
        let mut restarted = false;
        if self.shell.is_none() {
            // The previous command lost the shell; try a fresh one.
            if let Err(e) = self.restart().await {
                let mut r = blank(shown.unwrap_or(command), started, &self.cwd);
                r.session_lost = true;
                r.error = Some(e.to_string());
                if shown.is_some() {
                    self.report(&r);
                }
                return ControlFlow::Break(r);
            }
            restarted = true;
        }
        if let Some(frozen) = self.frozen.take() {
            if let Some(why) = self.suspended().await {
                // Still frozen: nothing could run it; say so at once.
                self.frozen = Some(frozen);
                let mut r = blank(shown.unwrap_or(command), started, &self.cwd);
                r.session_lost = true;
                r.error = Some(format!("{why}; the command was not run"));
                if shown.is_some() {
                    self.report(&r);
                }
                return ControlFlow::Break(r);
            }
            // Running again: the interrupted command took its Ctrl-C at the
            // thaw; whatever of it ignored that is killed now. (This command
            // is marked: its late output or sentinel falls before our start.)
            if let Err(e) = self.kill_command(&frozen.cid, frozen.started).await {
                tracing::warn!("cleanup of a command interrupted while frozen failed: {e}");
            }
        }
        ControlFlow::Continue(restarted)
    }

    /// The cheapest wire form that is safe for `command` in this session
    /// (start marker, guard, sourced or `eval`ed, short sentinel; see
    /// [`protocol::encode_command`]): the scanner for its output and the
    /// encoded text. Notes what the text may turn on for later commands.
    ///
    /// A person's command (`person`: its `TERM`) is always marked: what the
    /// person typed ahead and the shell read as commands of its own falls
    /// outside it.
    fn encode(
        &mut self,
        command: &str,
        nonce: &str,
        person: Option<&str>,
    ) -> (SentinelScanner, Vec<u8>) {
        let starts_jobs = protocol::may_start_jobs(command);
        let changes_hooks = starts_jobs || protocol::may_change_hooks(command);
        self.jobs_possible |= starts_jobs;
        self.plain &= !changes_hooks;
        let via = match self.flavor {
            shell::Flavor::Bash => {
                if self.jobs_possible && !protocol::needs_top_level(command) {
                    protocol::Via::Source
                } else {
                    protocol::Via::Eval
                }
            }
            shell::Flavor::Posix => protocol::Via::Eval,
        };
        // bash code that may start jobs may as well hold a DEBUG trap.
        let guard = if self.xtrace {
            protocol::Guard::Trace
        } else if changes_hooks || (self.flavor == shell::Flavor::Bash && self.jobs_possible) {
            protocol::Guard::Hooks
        } else {
            protocol::Guard::Off
        };
        let marked = guard != protocol::Guard::Off
            || person.is_some()
            || self.prompts
            || self.jobs_possible
            || std::mem::take(&mut self.noise_pending);
        let full = !self.plain;
        let mut scanner = if marked {
            SentinelScanner::with_start(nonce)
        } else {
            SentinelScanner::new(nonce)
        };
        if !full {
            scanner = scanner.short();
        }
        let line = protocol::encode_command(command, nonce, via, guard, marked, full, person);
        (scanner, line)
    }
}
