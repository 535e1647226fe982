//! When a command does not end by itself: the timeout ladder (signals out
//! of band, then Ctrl-C and a fresh sentinel, then a restart), a shell
//! that died, a target that went away, a target that is frozen.

use std::time::Duration;

use tokio::time::Instant;

use super::drive::{pump, Death, WaitEnd, YieldPoint};
use super::{Pending, RunResult, Session, COMMAND_VAR};
use crate::protocol::{self, SentinelScanner};
use crate::shell;
use crate::transport::{ExitStatus, ShellEvent, ShellProcess};

/// A command interrupted because the target was frozen
/// ([`ShellProcess::suspended`]): its shell is kept; before the next
/// command, once the target runs again, what it left is killed.
#[derive(Debug)]
pub(super) struct Frozen {
    pub(super) cid: String,
    pub(super) started: Instant,
}

impl Session {
    /// A write failed: did the shell die (while idle, so nobody read its
    /// end yet)? Its end event says, once what it printed before is read.
    pub(super) async fn death_behind_write_failure(&self) -> Option<Death> {
        let shell = self.shell.as_deref()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, shell.read()).await {
                Ok(ShellEvent::Output(_)) => {}
                Ok(ShellEvent::Exited(status)) => return Some(Death::Exited(status)),
                Ok(ShellEvent::TargetRestarted(why)) => return Some(Death::TargetRestarted(why)),
                Ok(ShellEvent::Lost(_)) | Err(_) => return None,
            }
        }
    }

    /// Sends `signal` to what the pending command started (never the shell;
    /// see [`shell::signal_command_script`]) and returns how many processes
    /// got it; `None` when the transport cannot run scripts or the shell's
    /// pid or clock is unknown; `Some(Err)` when the script could not run
    /// (the target is unreachable from here: a stalled connection, a
    /// paused container).
    pub(super) async fn signal_command(
        &self,
        cid: &str,
        started: Instant,
        signal: &str,
    ) -> Option<Result<usize, ()>> {
        let shell = self.shell.as_deref()?;
        // When the command started, by the target's clock (learnt at start-up:
        // a script's own start lags by an exec's latency).
        let (at, up) = self.clock?;
        let since = up + (started.saturating_duration_since(at).as_millis() / 10) as u64;
        let script = shell::signal_command_script(
            signal,
            self.shell_pid?,
            &format!("{}={}", shell::MARKER_VAR, self.marker),
            &format!("{COMMAND_VAR}={cid}"),
            since,
        );
        match shell.run_script(&script).await? {
            Ok(out) => match out.lines().last().and_then(|l| l.trim().parse().ok()) {
                Some(n) => Some(Ok(n)),
                // It ran but could not finish (no count line: a process
                // limit stops its forks, a read-only /proc): nothing was
                // signalled for sure.
                None => {
                    tracing::warn!("the signal script failed: {}", out.trim());
                    Some(Err(()))
                }
            },
            Err(e) => {
                tracing::warn!("signalling a timed-out command failed: {e}");
                Some(Err(()))
            }
        }
    }

    /// Stops a timed-out command (the recovery ladder, in this order):
    /// 1. SIGINT, then SIGTERM, then SIGKILL to what the command started,
    ///    never typing into the terminal while a program of it may read
    ///    there. The shell carries on after its child ended and prints the
    ///    command's own sentinel: the session is back, state kept.
    /// 2. Once nothing of the command runs and no sentinel came (an
    ///    interactive shell drops the rest of a line whose child died of
    ///    SIGINT; or the shell itself was busy: `read`, a loop), the shell
    ///    owns the terminal: Ctrl-C, and a fresh sentinel typed.
    /// 3. If the shell does not answer that, kill everything it started and
    ///    start a new one (`restarted`).
    pub(super) async fn recover_from_timeout(&mut self, p: &mut Pending, result: &mut RunResult) {
        let grace = self.config.interrupt_grace;
        for (signal, wait) in [("INT", grace), ("TERM", grace / 2), ("KILL", grace / 2)] {
            match self.signal_command(&p.cid, p.started, signal).await {
                Some(Ok(0)) | None => break,
                Some(Ok(_)) => {}
                // Nothing can be run there: neither can the shell be trusted
                // to answer. Start over (the restart kills what is left) —
                // unless the target is only frozen (see `start_over`).
                Some(Err(())) => return self.start_over(p, result).await,
            }
            let until = Instant::now() + wait;
            loop {
                let slice = (Instant::now() + Duration::from_millis(250)).min(until);
                let shell = self.shell.as_deref().expect("shell present");
                let Pending {
                    scanner, collector, ..
                } = p;
                let o = pump(
                    shell,
                    None,
                    Some(slice),
                    YieldPoint::default(),
                    None,
                    &mut true,
                    &mut |b| {
                        let scan = scanner.push(b);
                        collector.push(&scan.output);
                        scan.sentinel
                    },
                )
                .await;
                match o {
                    WaitEnd::Sentinel(s) => {
                        // The command ended under our signal: still a timeout.
                        self.take_state(s);
                        self.kill_rest(p, result).await;
                        return;
                    }
                    WaitEnd::Died(death) => {
                        let started = p.scanner.started();
                        return self.after_death(death, started, result).await;
                    }
                    // The way to the shell broke (a stalled connection) while
                    // the target answers scripts: a fresh shell, if it can.
                    WaitEnd::Lost(_) | WaitEnd::WriteFailed(_) => {
                        return self.start_over(p, result).await
                    }
                    WaitEnd::Deadline
                    | WaitEnd::Yield
                    | WaitEnd::Quiet
                    | WaitEnd::InputWait
                    | WaitEnd::Interrupted
                    | WaitEnd::Suspended(_) => {}
                }
                if Instant::now() >= until
                    || self.signal_command(&p.cid, p.started, "0").await == Some(Ok(0))
                {
                    break;
                }
            }
        }
        self.resync(p, result).await;
    }

    /// KILLs whatever of the command is still running (a background job it
    /// started, a forked subshell); says so in `error` if that failed.
    async fn kill_rest(&mut self, p: &Pending, result: &mut RunResult) {
        if let Err(e) = self.kill_command(&p.cid, p.started).await {
            tracing::warn!("cleanup after timeout failed: {e}");
            result.error = Some(e);
        }
        // A contained shell knows every process the command started, also
        // those that shed the marker (`env -u`, `setsid`).
        let shell = self.shell.as_deref().expect("shell present");
        if let Some(Err(e)) = shell.kill_since_command_began().await {
            tracing::warn!("cleanup of the session's cgroup failed: {e}");
            result.error = Some(format!("what the command started could not be killed: {e}"));
        }
    }

    /// KILLs whatever of the command `cid` (begun at `started`) still runs.
    pub(super) async fn kill_command(&self, cid: &str, started: Instant) -> Result<(), String> {
        if let Some(Ok(n)) = self.signal_command(cid, started, "KILL").await {
            if n == 0 {
                return Ok(());
            }
            // SIGKILLed processes are gone within moments unless something
            // holds them (uninterruptible sleep, another user's process):
            // look once more, after a moment, and say what survived.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return match self.signal_command(cid, started, "0").await {
                Some(Ok(0)) | None => Ok(()),
                Some(Ok(left)) => Err(format!(
                    "{left} process(es) the command started survived SIGKILL"
                )),
                Some(Err(())) => Err("could not check that what the command started was \
                     killed (the signal script failed on the target)"
                    .into()),
            };
        }
        // No script: at least what carries the command's id.
        let shell = self.shell.as_deref().expect("shell present");
        shell
            .kill_matching(&format!("{COMMAND_VAR}={cid}"))
            .await
            .map_err(|e| format!("what the command started could not be killed: {e}"))
    }

    /// Ctrl-C, then wait for a fresh sentinel; if the shell does not answer,
    /// kill everything it started and restart it.
    async fn resync(&mut self, p: &mut Pending, result: &mut RunResult) {
        let shell = self.shell.as_deref().expect("shell present");
        let Ok(nonce) = protocol::nonce() else {
            // Nothing can be typed without a fresh nonce.
            return self.start_over(p, result).await;
        };
        let outcome = match shell.interrupt().await {
            Err(e) => WaitEnd::WriteFailed(e),
            Ok(()) => self.type_fresh_sentinel(p, &nonce, result).await,
        };
        match outcome {
            WaitEnd::Sentinel(s) => {
                self.take_state(s);
                // Whatever the command left running dies with it.
                self.kill_rest(p, result).await;
            }
            WaitEnd::Died(death) => {
                let started = p.scanner.started();
                self.after_death(death, started, result).await
            }
            WaitEnd::Lost(msg) => self.after_loss(msg, result).await,
            WaitEnd::WriteFailed(e) => self.after_loss(e.to_string(), result).await,
            WaitEnd::Deadline
            | WaitEnd::Yield
            | WaitEnd::Quiet
            | WaitEnd::InputWait
            | WaitEnd::Interrupted
            | WaitEnd::Suspended(_) => {
                // The shell is wedged (raw-mode program, SIGINT ignored):
                // kill the marked tree and start over.
                self.start_over(p, result).await
            }
        }
    }

    /// After the Ctrl-C: types a fresh sentinel once the shell took it
    /// (again if it was dropped) and reads until one answers or
    /// `interrupt_grace` passes. A command that printed its own sentinel
    /// meanwhile gets its real status in `result`.
    async fn type_fresh_sentinel(
        &mut self,
        p: &mut Pending,
        nonce: &str,
        result: &mut RunResult,
    ) -> WaitEnd {
        let shell = self.shell.as_deref().expect("shell present");
        let mut fresh = SentinelScanner::new(nonce);
        // A leading blank: dash's interrupted `read` may still take one byte.
        let mut resync = format!(" {}\n", protocol::sentinel_source(nonce, "130"));
        if p.person.is_some() {
            // A person's command left the terminal echoing what is typed:
            // execkit's modes first, and a start marker, so the echo of
            // this very line falls outside the result.
            fresh = SentinelScanner::with_start(nonce);
            resync = format!(
                " {}; {}; {}\n",
                protocol::person_restore(),
                protocol::start_source(nonce),
                protocol::sentinel_source(nonce, "130")
            );
        }
        let Pending {
            scanner: old,
            collector,
            ..
        } = p;
        let grace = self.config.interrupt_grace;
        let deadline = Instant::now() + grace;
        let mut finished_late = None;
        let mut feed = |b: &[u8]| {
            // The command may still print its own sentinel (it ended
            // just as we interrupted); what precedes the fresh one is
            // still this command's output.
            let first = if old.is_done() {
                crate::protocol::Scan {
                    output: b.to_vec(),
                    sentinel: None,
                }
            } else {
                old.push(b)
            };
            if let Some(s) = first.sentinel {
                finished_late = Some(s);
                let mut bytes = first.output;
                bytes.extend(old.take_after());
                let scan = fresh.push(&bytes);
                collector.push(&scan.output);
                return scan.sentinel;
            }
            let scan = fresh.push(&first.output);
            collector.push(&scan.output);
            scan.sentinel
        };
        // Let the shell take the Ctrl-C first: bash and busybox drop
        // input typed along with it.
        let soon = |ms| Some((Instant::now() + Duration::from_millis(ms)).min(deadline));
        let mut o = pump(
            shell,
            None,
            soon(150),
            YieldPoint::default(),
            None,
            &mut true,
            &mut feed,
        )
        .await;
        // Typed again if it was dropped anyway (a slow shell); a late
        // copy's sentinel falls before the next command's start marker.
        for _ in 0..3 {
            if !matches!(o, WaitEnd::Deadline) || Instant::now() >= deadline {
                break;
            }
            self.noise_pending = true;
            o = pump(
                shell,
                Some(resync.as_bytes()),
                soon(600),
                YieldPoint::default(),
                None,
                &mut false,
                &mut feed,
            )
            .await;
        }
        if let (WaitEnd::Sentinel(_), Some(s)) = (&o, finished_late) {
            // It completed after all: report its real status.
            result.exit_code = Some(s.status);
            result.timed_out = false;
        }
        o
    }

    /// Kills the marked tree and starts a new shell (`restarted`), or says
    /// the session is lost when none can be started. A frozen target (a
    /// paused container) is neither: its shell did not answer because
    /// nothing runs there, and it will once thawed — kept.
    async fn start_over(&mut self, p: &Pending, result: &mut RunResult) {
        if let Some(why) = self.suspended().await {
            return self.after_suspend(p, why, result).await;
        }
        match self.restart().await {
            Ok(()) => result.restarted = true,
            Err(e) => {
                result.session_lost = true;
                result.error = Some(format!("shell did not recover after timeout: {e}"));
            }
        }
        self.note_leftovers(result);
    }

    /// Adds to `error` that a replaced shell's processes could not be
    /// killed (its record stays for `gc`), if so.
    fn note_leftovers(&mut self, result: &mut RunResult) {
        if let Some(e) = self.leftovers.take() {
            let what = format!(
                "what the old shell started could not be killed ({e}); `execkit gc` retries"
            );
            result.error = Some(match result.error.take() {
                Some(prev) => format!("{prev}; {what}"),
                None => what,
            });
        }
    }

    /// The shell ended during a command: report how, and replace it. A
    /// dead shell on a live target is replaced at once; only a target that
    /// cannot give a fresh one is lost. `started`: the command's start
    /// marker was seen — else the shell died before the command ran (an
    /// idle auto-logout, `TMOUT`), and the result says it did not run.
    pub(super) async fn after_death(
        &mut self,
        death: Death,
        started: bool,
        result: &mut RunResult,
    ) {
        let target = self.transport.target().to_string();
        let status = match death {
            Death::Exited(status) => status,
            Death::TargetRestarted(msg) => {
                // Nothing of the command survived it.
                result.exit_code = None;
                let why = if started {
                    msg
                } else {
                    format!("{msg} before the command ran; the command did not run")
                };
                return self.replace_dead_shell(Some(why), result).await;
            }
        };
        let why = match status {
            ExitStatus::Code(code) if started => {
                if !result.timed_out {
                    result.exit_code = Some(code);
                }
                None
            }
            ExitStatus::Code(code) => Some(format!(
                "the shell on {target} exited (code {code}) before the command ran; \
                 the command did not run"
            )),
            ExitStatus::Signal(_) | ExitStatus::Unknown => {
                Some(format!("the shell on {target} {status}"))
            }
        };
        self.replace_dead_shell(why, result).await
    }

    /// Starts a fresh shell for one that died (`why`: what to tell, if
    /// anything); the session is lost when none can be started.
    async fn replace_dead_shell(&mut self, why: Option<String>, result: &mut RunResult) {
        match self.restart().await {
            Ok(()) => {
                result.restarted = true;
                result.error = why.map(|w| format!("{w}; a fresh shell replaced it"));
            }
            Err(e) => {
                result.session_lost = true;
                result.error = Some(match why {
                    Some(w) => format!("{w}; no fresh shell could be started: {e}"),
                    None => format!("shell exited and could not be restarted: {e}"),
                });
            }
        }
        self.note_leftovers(result);
    }

    /// The target is frozen (a paused container): nothing there runs, so
    /// the command cannot finish and neither a script nor the shell can
    /// answer. Return now instead of at the timeout, and keep the shell:
    /// a Ctrl-C written now is taken by the terminal's line discipline, not
    /// by the frozen shell — it drops a command line the shell has not read
    /// yet and queues SIGINT, which the command (or the shell) takes at the
    /// thaw. The next command first kills what is left of this one
    /// ([`Frozen`]) and is marked, so a late sentinel falls outside it.
    pub(super) async fn after_suspend(&mut self, p: &Pending, why: String, result: &mut RunResult) {
        let shell = self.shell.as_deref().expect("shell present");
        match tokio::time::timeout(Duration::from_secs(2), shell.interrupt()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!("Ctrl-C to a frozen shell failed: {e}"),
            Err(_) => tracing::debug!("Ctrl-C to a frozen shell did not go out"),
        }
        self.frozen = Some(Frozen {
            cid: p.cid.clone(),
            started: p.started,
        });
        self.noise_pending = true;
        result.session_lost = true;
        result.exit_code = None;
        result.error = Some(format!(
            "{why}; the command was interrupted (if it had not begun, it will not run); \
             once the target runs again, the next command runs in the same shell, state kept"
        ));
    }

    /// The target went away during a command.
    pub(super) async fn after_loss(&mut self, msg: String, result: &mut RunResult) {
        if let Some(old) = self.shell.take() {
            self.retire(old).await;
        }
        result.session_lost = true;
        result.exit_code = None;
        result.error = Some(msg);
        self.note_leftovers(result);
    }

    /// Kills a shell that is being replaced or was lost. If its processes
    /// cannot be killed now, the record stays for `gc` (see `close`).
    pub(super) async fn retire(&mut self, old: Box<dyn ShellProcess>) {
        if let Err(e) = old.terminate().await {
            tracing::debug!("cleanup of a replaced shell failed: {e}");
            self.cleanup_pending = true;
            self.leftovers = Some(e.to_string());
        }
    }
}
