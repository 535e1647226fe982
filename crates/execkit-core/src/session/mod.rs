//! A live shell session speaking the sentinel protocol.
//!
//! [`Session::run`] writes one command, reads until that command's sentinel
//! and returns a [`RunResult`]. Around that core: a hard timeout (Ctrl-C,
//! resync on a fresh sentinel, else kill and restart), detection of a dying
//! shell (restart), of a lost target (reported), of a frozen one (reported
//! at once, the shell kept for after the thaw), and output cleaning and
//! capping.
//!
//! One job per file: `config.rs` (what a session is opened with),
//! `result.rs` (what a command is run with and answers), `startup.rs`
//! (starting a shell), `command.rs` (a command from its text to the wire),
//! `stdin.rs` (a command's stdin staged on the target), `drive.rs` (the
//! read/write loop and the quiet-spell probes), `collector.rs` (raw bytes
//! to clean, capped text), `recovery.rs` (timeout ladder, a dead, lost or
//! frozen shell), `report.rs` (a command's end: result, journal, console).

mod collector;
mod command;
mod config;
mod drive;
mod recovery;
mod report;
mod result;
mod startup;
mod stdin;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::console::LineBuffer;
use crate::error::SessionError;
use crate::journal::JournalEvent;
use crate::protocol::{self, Sentinel, SentinelScanner};
use crate::shell;
use crate::transport::{ShellProcess, Size, Transport};

#[cfg(feature = "testkit")]
pub(crate) use collector::last_chars;
use collector::Collector;
pub use config::SessionConfig;
use drive::{WaitEnd, INPUT_WAIT_GRACE};
use recovery::Frozen;
pub(crate) use result::blank;
pub use result::{InputWait, PersonTerminal, RunOptions, RunResult};

/// Variable exported for each command so its processes can be found and
/// killed after a timeout without touching earlier background jobs.
pub const COMMAND_VAR: &str = "EXECKIT_CMD";

/// A command in flight.
#[derive(Debug)]
struct Pending {
    command: String,
    started: Instant,
    deadline: Option<Instant>,
    cid: String,
    scanner: SentinelScanner,
    collector: Collector,
    /// The command line was fully written.
    sent: bool,
    /// One of execkit's own (stdin staging): neither journaled nor mirrored.
    internal: bool,
    /// Its output keeps its final newline ([`RunOptions::keep_final_newline`]).
    keep_newline: bool,
    /// What to do when it waits for terminal input.
    input_wait: InputWait,
    /// Last output, input or quiet-spell look: the next look is
    /// [`INPUT_WAIT_GRACE`] later (is the target frozen?).
    last_activity: Instant,
    /// When the input-wait probe is next due, and the step to the one
    /// after (doubling up to 30 s while it stays quiet).
    input_probe_at: Instant,
    probe_every: Duration,
    /// Found waiting for input and nothing happened since.
    waiting: bool,
    /// A person's command (see [`PersonTerminal`]).
    person: Option<PersonTerminal>,
    /// Yields a wait once notified ([`RunOptions::wake`], or the
    /// person's [`PersonTerminal::wake`]).
    wake: Option<Arc<tokio::sync::Notify>>,
    /// The person typed Ctrl-C: when it is next looked whether anything of
    /// the command still runs, and the step to the look after (see
    /// [`Session::send_keys`]).
    ctrl_c_check: Option<(Instant, Duration)>,
    /// Keys typed since the last journaled line.
    typed: Vec<u8>,
}

/// A stateful shell on one target.
#[derive(Debug)]
pub struct Session {
    id: String,
    marker: String,
    transport: Arc<dyn Transport>,
    config: SessionConfig,
    shell: Option<Box<dyn ShellProcess>>,
    cwd: String,
    seq: u64,
    flavor: shell::Flavor,
    /// The last sentinel reported `set -x` on: commands are guarded (see
    /// [`protocol::encode_command`]).
    xtrace: bool,
    /// The last sentinel reported prompt machinery set (`PS1`, …): the
    /// shell prints between commands, so commands get a start marker.
    prompts: bool,
    /// The shell may hold or be sent code that starts background jobs:
    /// their output may come between commands, so commands get a start
    /// marker, and bash's are sourced rather than `eval`ed (see
    /// [`protocol::Via`]). Set for good once true; reset with the shell.
    jobs_possible: bool,
    /// Nothing so far could have turned on a trace, a trap, a prompt or a
    /// job: commands take the cheapest encoding (no start marker, the short
    /// sentinel). Cleared for good by text [`protocol::may_start_jobs`] or
    /// [`protocol::may_change_hooks`]
    /// flags; set again by a fresh shell that reports none of them.
    plain: bool,
    /// The shell's pid on its target (from the start-up sentinel).
    shell_pid: Option<u32>,
    /// The target's clock: its uptime in centiseconds when the start-up
    /// line answered, and when that was here.
    clock: Option<(Instant, u64)>,
    /// A recovery line may still print a stale sentinel: the next command
    /// gets a start marker.
    noise_pending: bool,
    pending: Option<Pending>,
    console_line: LineBuffer,
    /// A replaced or lost shell's processes could not be killed (a paused
    /// container…): `close` keeps the record on disk for `gc`.
    cleanup_pending: bool,
    /// Why a replaced shell's processes could not be killed, until a
    /// result reports it.
    leftovers: Option<String>,
    /// The last command was interrupted on a frozen target.
    frozen: Option<Frozen>,
    /// Gets every command's raw output (see [`Session::tap_raw`]).
    raw_tap: Option<tokio::sync::mpsc::UnboundedSender<Vec<u8>>>,
}

impl Session {
    /// Sends the raw bytes every later command prints (between its start
    /// and its end, as they arrive: colours, cursor movement, bare `\n`
    /// as the session's terminal has no `onlcr` outside a person's
    /// command) to `sink` too, besides a person's
    /// [`raw_output`](PersonTerminal::raw_output); `None` stops it.
    /// execkit's own out-of-band work (stdin staging) is not sent. What
    /// `Host` keeps a session's screen with, for `execkit attach`.
    pub fn tap_raw(&mut self, sink: Option<tokio::sync::mpsc::UnboundedSender<Vec<u8>>>) {
        self.raw_tap = sink;
    }

    /// Opens a session on `target` (any registered scheme).
    pub async fn open(target: &str, config: SessionConfig) -> Result<Session, SessionError> {
        let transport = crate::registry::connect(target)?;
        Session::open_with(transport, config).await
    }

    /// Opens a session on an already built transport.
    pub async fn open_with(
        transport: Arc<dyn Transport>,
        config: SessionConfig,
    ) -> Result<Session, SessionError> {
        config.validate().map_err(SessionError::InvalidConfig)?;
        let mut s = Session {
            id: protocol::nonce().map_err(SessionError::NoRandomness)?[..12].to_string(),
            marker: protocol::nonce().map_err(SessionError::NoRandomness)?,
            transport,
            config,
            shell: None,
            cwd: String::new(),
            seq: 0,
            flavor: shell::Flavor::Posix,
            xtrace: false,
            prompts: false,
            jobs_possible: false,
            plain: false,
            shell_pid: None,
            clock: None,
            noise_pending: false,
            pending: None,
            console_line: LineBuffer::default(),
            cleanup_pending: false,
            leftovers: None,
            frozen: None,
            raw_tap: None,
        };
        // Recorded before the shell starts: a kill -9 at any later point
        // leaves a record for `gc` to clean up by.
        crate::cleanup::write_record(&s.marker, s.transport.target());
        if let Err(e) = s.start_shell().await {
            crate::cleanup::remove_record(&s.marker);
            return Err(e);
        }
        if let Some(o) = &s.config.observer {
            // Values of secret-named settings are masked wherever they show.
            o.learn_env(&s.config.env);
        }
        let contained = s.shell.as_deref().and_then(|sh| sh.containment());
        s.record(JournalEvent::SessionOpen {
            cwd: s.cwd.clone(),
            contained,
        });
        Ok(s)
    }

    /// Short id of this session.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Value of `EXECKIT_SID` carried by every process of this session.
    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// The target as the user wrote it.
    pub fn target(&self) -> &str {
        self.transport.target()
    }

    /// The transport the session's shells are started with.
    pub(crate) fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    /// The shell's working directory after the last command.
    pub fn cwd(&self) -> &str {
        &self.cwd
    }

    /// Whether a live shell is attached (false after the target was lost).
    pub fn is_alive(&self) -> bool {
        self.shell.is_some()
    }

    /// Runs one command and returns its result: when it finishes, times out,
    /// or — with `yield_after` — as soon as that passes, with `running: true`
    /// and the output so far (then continue with [`Session::poll`]).
    ///
    /// Errors are reserved for requests that cannot be attempted (a command
    /// with a NUL byte, another command still running); everything that
    /// happens to the command or the target is reported in the [`RunResult`].
    pub async fn run(
        &mut self,
        command: &str,
        opts: RunOptions,
    ) -> Result<RunResult, SessionError> {
        self.run_shown(Some(command), command, opts).await
    }

    /// Continues a yielded command for up to `wait`; returns what it printed
    /// since the last read and, once it ended, its exit code and status.
    pub async fn poll(&mut self, wait: Duration) -> Result<RunResult, SessionError> {
        if self.pending.is_none() {
            return Err(SessionError::Idle);
        }
        self.drive(None, Some(Instant::now() + wait)).await
    }

    /// Sends `text` as typed input to the running command (answers a
    /// prompt, feeds `read`, drives a REPL). Include the newline. A line
    /// over 4,095 bytes is refused: a terminal would
    /// silently cut it.
    pub async fn send_input(&mut self, text: &str) -> Result<(), SessionError> {
        if self.pending.is_none() {
            return Err(SessionError::Idle);
        }
        protocol::validate_input(text)?;
        if let Some(o) = self.config.observer.clone() {
            // The terminal's echo is off for every command here, so a
            // password prompt is told by its text.
            let hidden = self
                .pending
                .as_ref()
                .is_some_and(|p| asks_for_secret(&p.collector.last_line));
            self.record(o.input_record(text, hidden));
            self.publish(o.input_event(self.id.clone(), text, hidden));
        }
        if let Some(p) = self.pending.as_mut() {
            let now = Instant::now();
            p.waiting = false;
            p.last_activity = now;
            p.input_probe_at = now + INPUT_WAIT_GRACE;
            p.probe_every = INPUT_WAIT_GRACE;
        }
        let shell = self.shell.as_deref().ok_or(SessionError::Idle)?;
        shell.write(text.as_bytes()).await?;
        Ok(())
    }

    /// Writes `keys` as typed at the running command's terminal, as they
    /// are: a person's keystrokes (`execkit shell`: Ctrl-C, Ctrl-D, arrow
    /// keys, escape sequences). Journaled as input a line at a time (when
    /// Enter is typed, and what is left when the command ends), masked as
    /// [`Session::send_input`] masks. A Ctrl-C that ends everything the
    /// command started ends the command: the shell drops the rest of its
    /// line, and the session resynchronises (exit code 130); a program
    /// that takes the Ctrl-C and runs on (an editor) is left to run.
    pub async fn send_keys(&mut self, keys: &[u8]) -> Result<(), SessionError> {
        let Some(p) = self.pending.as_mut() else {
            return Err(SessionError::Idle);
        };
        if keys.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        p.waiting = false;
        p.last_activity = now;
        p.input_probe_at = now + INPUT_WAIT_GRACE;
        p.probe_every = INPUT_WAIT_GRACE;
        if keys.contains(&0x03) {
            let step = Duration::from_millis(200);
            p.ctrl_c_check = Some((now + step, step));
        }
        p.typed.extend_from_slice(keys);
        if keys.iter().any(|&b| b == b'\r' || b == b'\n') || p.typed.len() > 4096 {
            self.journal_typed();
        }
        let shell = self.shell.as_deref().ok_or(SessionError::Idle)?;
        shell.write(keys).await?;
        Ok(())
    }

    /// Whether the running command's last, unfinished line asks for a
    /// secret (`Password:`): what is typed now is journaled hidden, and a
    /// front end that echoes keys itself (`execkit attach`) does not.
    pub fn asks_for_secret(&self) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|p| asks_for_secret(&p.collector.last_line))
    }

    /// Journals (and mirrors) what the person typed since the last line.
    fn journal_typed(&mut self) {
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        if p.typed.is_empty() {
            return;
        }
        let typed = std::mem::take(&mut p.typed);
        let hidden = asks_for_secret(&p.collector.last_line);
        if let Some(o) = self.config.observer.clone() {
            let text = String::from_utf8_lossy(&typed);
            self.record(o.person_input_record(&text, hidden, true));
            self.publish(o.input_event(self.id.clone(), &text, hidden));
        }
    }

    /// Interrupts the running command (Ctrl-C, then resync; the shell is
    /// restarted if it does not come back) and returns its final result.
    pub async fn interrupt(&mut self) -> Result<RunResult, SessionError> {
        if self.pending.is_none() {
            return Err(SessionError::Idle);
        }
        self.record(JournalEvent::Interrupt);
        let mut r = self.finish(WaitEnd::Deadline).await;
        r.timed_out = false;
        if r.exit_code.is_none() && r.error.is_none() {
            r.error = Some("interrupted".into());
        }
        Ok(r)
    }

    /// Whether a command is in flight (it yielded and has not ended).
    pub fn is_running(&self) -> bool {
        self.pending.is_some()
    }

    /// What a sentinel says of the shell: its cwd, whether it traces, whether
    /// it prints prompts between commands. (A short sentinel, in a plain
    /// session, reports no flags: none could have changed.)
    fn take_state(&mut self, s: Sentinel) {
        self.xtrace = s.xtrace();
        self.prompts = s.prompts;
        self.cwd = s.cwd;
    }

    /// Resizes the terminal.
    pub async fn resize(&mut self, size: Size) -> Result<(), SessionError> {
        self.config.size = size;
        match &self.shell {
            Some(s) => Ok(s.resize(size).await?),
            None => Ok(()),
        }
    }

    /// Closes the session: the shell and every process it started are killed.
    pub async fn close(mut self) -> Result<(), SessionError> {
        self.pending = None;
        self.record(JournalEvent::SessionClose);
        if let Some(shell) = self.shell.take() {
            shell.terminate().await?;
        }
        if !self.cleanup_pending {
            crate::cleanup::remove_record(&self.marker);
        }
        Ok(())
    }
}

/// Whether `prompt` (the last, unfinished line a command printed) asks for
/// a secret: `Password:`, `[sudo] password for x:`, `Enter passphrase for
/// key '…':`, `Token:`, `PIN:`.
fn asks_for_secret(prompt: &str) -> bool {
    let p = prompt.trim_end().to_ascii_lowercase();
    p.ends_with(':')
        && [
            "password",
            "passphrase",
            "passcode",
            "token",
            "secret",
            "pin:",
            "otp",
        ]
        .iter()
        .any(|w| p.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_prompts_are_told_by_their_text() {
        for yes in [
            "Password: ",
            "[sudo] password for bob: ",
            "Enter passphrase for key '/root/.ssh/id_ed25519': ",
            "GitHub token:",
            "Enter PIN:",
        ] {
            assert!(asks_for_secret(yes), "{yes:?}");
        }
        for no in ["name? ", "Continue? [Y/n] ", "password reset done", ">>> "] {
            assert!(!asks_for_secret(no), "{no:?}");
        }
    }
}
