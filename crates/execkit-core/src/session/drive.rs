//! The loop under every command: write the line while reading
//! ([`pump`]: one `select!` over the write, the read, the deadline, the
//! yield point and the quiet probe), and what a quiet spell asks: is the
//! target frozen, does the command wait for terminal input.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::{blank, InputWait, Pending, RunResult, Session};
use crate::console::ConsoleEvent;
use crate::error::{SessionError, TransportError};
use crate::protocol::Sentinel;
use crate::shell;
use crate::transport::{ExitStatus, ShellEvent, ShellProcess};

/// How long [`ShellProcess::suspended`] may take to answer before it
/// counts as a no.
const SUSPENDED_PROBE: Duration = Duration::from_secs(5);

/// How long a command must be quiet before execkit looks whether it waits
/// for terminal input.
pub const INPUT_WAIT_GRACE: Duration = Duration::from_millis(1500);

/// How a wait on the shell ended (what became of the command is
/// `RunOutcome`, built later from the result).
pub(super) enum WaitEnd {
    Sentinel(Sentinel),
    Died(Death),
    Lost(String),
    Deadline,
    Yield,
    /// Quiet for the probe interval: look whether it waits for input.
    Quiet,
    /// Found waiting for input, to be stopped ([`InputWait::Stop`]).
    InputWait,
    /// The person's Ctrl-C ended what the command started, and no
    /// sentinel came (the shell dropped the line): resynchronise.
    Interrupted,
    /// The target is frozen (a paused container): says so.
    Suspended(String),
    WriteFailed(TransportError),
}

/// How a shell ended while the target lives on (a fresh one can start).
pub(super) enum Death {
    /// The shell process ended.
    Exited(ExitStatus),
    /// The target restarted under it (the transport's words).
    TargetRestarted(String),
}

impl Session {
    /// Writes `input` (if any) and reads until the command ends, its
    /// deadline passes, or `yield_at` passes (after the input was written).
    pub(super) async fn drive(
        &mut self,
        mut input: Option<Vec<u8>>,
        yield_at: Option<Instant>,
    ) -> Result<RunResult, SessionError> {
        let outcome = loop {
            let outcome = self.pump_pending(input.take(), yield_at).await?;
            if !matches!(outcome, WaitEnd::Quiet) {
                break outcome;
            }
            if let Some(end) = self.look_at_quiet_spell().await {
                break end;
            }
        };
        if let WaitEnd::Yield = outcome {
            let p = self.pending.as_mut().expect("pending");
            let mut r = blank(&p.command, p.started, &self.cwd);
            r.running = true;
            r.waiting_for_input = p.waiting;
            r.output = p.collector.take_delta();
            return Ok(r);
        }
        self.journal_typed();
        Ok(self.finish(outcome).await)
    }

    /// One [`pump`] of the pending command: writes `input` (if any) and
    /// reads, feeding the scanner, the collector and the console, until
    /// the command ends, a deadline passes or it is quiet for a while.
    async fn pump_pending(
        &mut self,
        input: Option<Vec<u8>>,
        yield_at: Option<Instant>,
    ) -> Result<WaitEnd, SessionError> {
        let Session {
            shell,
            pending,
            config,
            console_line,
            id,
            raw_tap,
            ..
        } = self;
        let observer = &config.observer;
        let (Some(shell), Some(p)) = (shell.as_deref(), pending.as_mut()) else {
            return Err(SessionError::Idle);
        };
        let console = observer
            .as_deref()
            .map(|o| &o.console)
            .filter(|c| !p.internal && c.watched());
        let Pending {
            scanner,
            collector,
            deadline,
            sent,
            last_activity,
            input_probe_at,
            probe_every,
            waiting,
            person,
            ctrl_c_check,
            wake,
            ..
        } = p;
        if input.is_none() {
            *sent = true;
        }
        // Quiet spells are looked at whatever `input_wait` says, every
        // grace period: a frozen target is never quiet for a good
        // reason, and is told within seconds however long the
        // command was quiet before. After a person's Ctrl-C, sooner.
        let quiet = match *ctrl_c_check {
            Some((at, step)) => Some(((*last_activity + INPUT_WAIT_GRACE).min(at), step)),
            None => Some((*last_activity + INPUT_WAIT_GRACE, INPUT_WAIT_GRACE)),
        };
        let raw = person.as_ref().and_then(|p| p.raw_output.as_ref());
        let tap = raw_tap.as_ref().filter(|_| !p.internal);
        let wake = wake.as_deref();
        Ok(pump(
            shell,
            input.as_deref(),
            *deadline,
            YieldPoint { at: yield_at, wake },
            quiet,
            sent,
            &mut |b| {
                let scan = scanner.push(b);
                if let Some(raw) = raw.filter(|_| !scan.output.is_empty()) {
                    // The person may have gone (their end closed): the
                    // result does not depend on it.
                    let _ = raw.send(scan.output.clone());
                }
                if let Some(tap) = tap.filter(|_| !scan.output.is_empty()) {
                    let _ = tap.send(scan.output.clone());
                }
                if !scan.output.is_empty() {
                    // Something happened: it is not (or no longer) stuck.
                    let now = Instant::now();
                    *last_activity = now;
                    *input_probe_at = now + INPUT_WAIT_GRACE;
                    *probe_every = INPUT_WAIT_GRACE;
                    *waiting = false;
                }
                collector.push(&scan.output);
                if let Some(c) = console {
                    if let Some(line) = console_line.push(&scan.output) {
                        c.publish(ConsoleEvent::Output {
                            session: id.clone(),
                            bytes: line,
                            origin: None,
                        });
                    }
                }
                scan.sentinel
            },
        )
        .await)
    }

    /// The command was quiet for [`INPUT_WAIT_GRACE`]: is the target frozen,
    /// and (when due, and wanted) does the command wait for terminal
    /// input? `Some`: how the wait ends; `None`: it goes on.
    async fn look_at_quiet_spell(&mut self) -> Option<WaitEnd> {
        if let Some(why) = self.suspended().await {
            return Some(WaitEnd::Suspended(why));
        }
        if let Some(end) = self.look_after_ctrl_c().await {
            return Some(end);
        }
        let now = Instant::now();
        let p = self.pending.as_mut().expect("pending");
        p.last_activity = now;
        if p.input_wait == InputWait::Ignore || p.waiting || now < p.input_probe_at {
            return None;
        }
        let found = self.waits_for_input().await;
        let p = self.pending.as_mut().expect("pending");
        p.last_activity = Instant::now();
        p.probe_every = (p.probe_every * 2).min(Duration::from_secs(30));
        p.input_probe_at = p.last_activity + p.probe_every;
        if found {
            p.waiting = true;
            match p.input_wait {
                InputWait::Stop => return Some(WaitEnd::InputWait),
                InputWait::Yield => return Some(WaitEnd::Yield),
                InputWait::Ignore => {}
            }
        }
        None
    }

    /// After a person typed Ctrl-C (when due): has it ended everything the
    /// command started? An interactive shell then drops the rest of the
    /// line — the sentinel with it — and reads the terminal again: the
    /// command is over and the session resynchronises
    /// ([`WaitEnd::Interrupted`]). A program that took the Ctrl-C and runs
    /// on (an editor, a REPL) is looked at again, less and less often.
    async fn look_after_ctrl_c(&mut self) -> Option<WaitEnd> {
        let p = self.pending.as_ref().expect("pending");
        let (at, step) = p.ctrl_c_check?;
        if Instant::now() < at {
            return None;
        }
        let (cid, started) = (p.cid.clone(), p.started);
        let left = self.signal_command(&cid, started, "0").await;
        let p = self.pending.as_mut().expect("pending");
        match left {
            Some(Ok(0)) => {
                p.ctrl_c_check = None;
                Some(WaitEnd::Interrupted)
            }
            Some(Ok(_)) => {
                let step = (step * 2).min(Duration::from_secs(5));
                p.ctrl_c_check = Some((Instant::now() + step, step));
                None
            }
            // Nothing can be counted there: the person interrupts as a
            // timeout would, through the ladder.
            None | Some(Err(())) => {
                p.ctrl_c_check = None;
                Some(WaitEnd::Interrupted)
            }
        }
    }

    /// Whether the target is frozen (see [`ShellProcess::suspended`]). A
    /// question that finds no answer soon (a stalled engine) is a no: the
    /// command's own deadline is not kept while it is asked.
    pub(super) async fn suspended(&self) -> Option<String> {
        let shell = self.shell.as_deref()?;
        tokio::time::timeout(SUSPENDED_PROBE, shell.suspended())
            .await
            .ok()
            .flatten()
    }

    /// Whether a process of the session (the shell too: `read`) is blocked
    /// reading the session's terminal (`shell::input_wait_script`). False
    /// when the transport cannot run scripts or the probe fails.
    async fn waits_for_input(&self) -> bool {
        let (Some(shell), Some(pid)) = (self.shell.as_deref(), self.shell_pid) else {
            return false;
        };
        let entry = format!("{}={}", shell::MARKER_VAR, self.marker);
        let got = shell
            .run_script(&shell::input_wait_script(pid, &entry))
            .await;
        match got {
            Some(Ok(out)) => out.lines().last().is_some_and(|l| l.trim() == "1"),
            Some(Err(e)) => {
                tracing::debug!("input-wait probe failed: {e}");
                false
            }
            None => false,
        }
    }
}

/// When a wait yields (see [`pump`]): at an instant, or once woken.
#[derive(Clone, Copy, Default)]
pub(super) struct YieldPoint<'a> {
    pub(super) at: Option<Instant>,
    pub(super) wake: Option<&'a tokio::sync::Notify>,
}

/// Writes `input` (if any) while reading, feeding output to `feed` until it
/// reports a sentinel, the shell ends, or `deadline` passes.
///
/// `quiet`: when to report [`WaitEnd::Quiet`] (first at the given instant,
/// then the given time after the latest output), once the input is out.
/// `wake`: notified, it yields (once the input is out).
pub(super) async fn pump(
    shell: &dyn ShellProcess,
    input: Option<&[u8]>,
    deadline: Option<Instant>,
    yield_to: YieldPoint<'_>,
    quiet: Option<(Instant, Duration)>,
    sent: &mut bool,
    feed: &mut (dyn FnMut(&[u8]) -> Option<Sentinel> + Send),
) -> WaitEnd {
    let YieldPoint { at: yield_at, wake } = yield_to;
    let woken = async {
        match wake {
            Some(w) => w.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(woken);
    let mut write = input.map(|d| shell.write(d));
    let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(far_future));
    tokio::pin!(sleep);
    let yield_sleep = tokio::time::sleep_until(yield_at.unwrap_or_else(far_future));
    tokio::pin!(yield_sleep);
    let quiet_sleep = tokio::time::sleep_until(quiet.map_or_else(far_future, |q| q.0));
    tokio::pin!(quiet_sleep);
    loop {
        tokio::select! {
            biased;
            ev = shell.read() => match ev {
                ShellEvent::Output(b) => {
                    if let Some(s) = feed(&b) {
                        return WaitEnd::Sentinel(s);
                    }
                    if let Some((_, after)) = quiet {
                        quiet_sleep.as_mut().reset(Instant::now() + after);
                    }
                }
                ShellEvent::Exited(st) => return WaitEnd::Died(Death::Exited(st)),
                ShellEvent::TargetRestarted(m) => return WaitEnd::Died(Death::TargetRestarted(m)),
                ShellEvent::Lost(m) => return WaitEnd::Lost(m),
            },
            r = maybe(&mut write) => {
                write = None;
                *sent = true;
                if let Err(e) = r {
                    return WaitEnd::WriteFailed(e);
                }
            }
            _ = &mut sleep, if deadline.is_some() => return WaitEnd::Deadline,
            _ = &mut quiet_sleep, if quiet.is_some() && *sent => return WaitEnd::Quiet,
            // A half-written command line cannot be resumed: yield only after it is out.
            _ = &mut yield_sleep, if yield_at.is_some() && *sent => return WaitEnd::Yield,
            _ = &mut woken, if *sent => return WaitEnd::Yield,
        }
    }
}

/// Awaits the future if there is one, else never completes.
async fn maybe<F: Future + Unpin>(f: &mut Option<F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}
