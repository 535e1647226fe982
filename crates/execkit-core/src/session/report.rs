//! A command's end: its [`RunResult`] built from how the wait ended, and
//! what the journal and the console are told.

use super::drive::WaitEnd;
use super::{blank, RunResult, Session};
use crate::console::ConsoleEvent;
use crate::journal::{JournalEvent, SessionRef};

impl Session {
    /// Ends the pending command according to `outcome` and builds its result.
    pub(super) async fn finish(&mut self, outcome: WaitEnd) -> RunResult {
        let mut p = self.pending.take().expect("pending command");
        let mut result = blank(&p.command, p.started, &self.cwd);
        result.restarted = p.collector.restarted;
        match outcome {
            WaitEnd::Sentinel(s) => {
                result.exit_code = Some(s.status);
                self.take_state(s);
            }
            WaitEnd::Deadline => {
                result.timed_out = true;
                self.recover_from_timeout(&mut p, &mut result).await;
            }
            WaitEnd::Interrupted => {
                self.recover_from_timeout(&mut p, &mut result).await;
                // Back in the same shell: what a shell says of a command
                // a Ctrl-C ended.
                if result.exit_code.is_none() && !result.restarted && !result.session_lost {
                    result.exit_code = Some(130);
                }
            }
            WaitEnd::InputWait => {
                // Nobody can answer: stop it as a timeout would, keep the shell.
                self.recover_from_timeout(&mut p, &mut result).await;
                result.waiting_for_input = true;
            }
            WaitEnd::Died(death) => {
                let started = p.scanner.started();
                self.after_death(death, started, &mut result).await
            }
            WaitEnd::Suspended(why) => self.after_suspend(&p, why, &mut result).await,
            WaitEnd::Lost(msg) => self.after_loss(msg, &mut result).await,
            WaitEnd::WriteFailed(e) => match self.death_behind_write_failure().await {
                // It died while idle (a container restart): a line that
                // could not be written did not run.
                Some(death) => self.after_death(death, false, &mut result).await,
                None => self.after_loss(e.to_string(), &mut result).await,
            },
            WaitEnd::Yield | WaitEnd::Quiet => unreachable!("handled by drive"),
        }
        if let Some(bytes) = self.console_line.flush() {
            self.publish(ConsoleEvent::Output {
                session: self.id.clone(),
                bytes,
                origin: None,
            });
        }
        let internal = p.internal;
        let yielded = p.collector.yielded;
        let (capped, delta) = p.collector.finish();
        result.output = if yielded { delta } else { capped.text };
        if !p.keep_newline && result.output.ends_with('\n') {
            result.output.pop();
        }
        result.truncated = capped.truncated;
        result.output_path = capped.spool_path;
        if let (Some(e), None) = (capped.spool_error, &result.error) {
            result.error = Some(e);
        }
        // Asked only of a command that did not succeed: a limit it ran
        // into shows there, and a success costs no look.
        let failed = result.exit_code != Some(0);
        if let Some(note) = self
            .shell
            .as_deref()
            .filter(|_| failed)
            .and_then(|s| s.limit_note())
        {
            result.error = Some(match result.error.take() {
                Some(e) => format!("{note}; {e}"),
                None => note,
            });
        }
        result.cwd = self.cwd.clone();
        result.duration_ms = p.started.elapsed().as_millis() as u64;
        if !internal {
            self.report(&result);
        }
        result
    }

    pub(super) fn record(&self, event: JournalEvent) {
        if let Some(o) = &self.config.observer {
            let session = SessionRef {
                session: self.id.clone(),
                name: self.config.name.clone(),
                target: self.target().into(),
            };
            o.record(session, event);
        }
    }

    pub(super) fn publish(&self, event: ConsoleEvent) {
        if let Some(o) = &self.config.observer {
            o.console.publish(event);
        }
    }

    /// Journals and mirrors the end of a command.
    pub(super) fn report(&self, r: &RunResult) {
        self.record(JournalEvent::Result(r.into()));
        self.publish(ConsoleEvent::Footer {
            session: self.id.clone(),
            exit_code: r.exit_code,
            duration_ms: r.duration_ms,
            timed_out: r.timed_out,
            origin: None,
        });
    }
}
