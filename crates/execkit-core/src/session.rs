//! A live shell session speaking the sentinel protocol.
//!
//! [`Session::run`] writes one command, reads until that command's sentinel
//! and returns a [`RunResult`]. Around that core: a hard timeout (Ctrl-C,
//! resync on a fresh sentinel, else kill and restart), detection of a dying
//! shell (restart), of a lost target (reported), of a frozen one (reported
//! at once, the shell kept for after the thaw), and output cleaning and
//! capping.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::clean::OutputCleaner;
use crate::console::{ConsoleEvent, LineBuffer};
use crate::error::{SessionError, TransportError};
use crate::journal::{JournalEvent, SessionRef};
use crate::observer::Observer;
use crate::output_cap::OutputCap;
use crate::protocol::{self, Sentinel, SentinelScanner};
use crate::shell;
use crate::transport::{ExitStatus, ShellEvent, ShellProcess, Size, SpawnSpec, Transport};

/// Variable exported for each command so its processes can be found and
/// killed after a timeout without touching earlier background jobs.
pub const COMMAND_VAR: &str = "EXECKIT_CMD";

/// How a session's shells are started and its output handled.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Shell path; `None` lets the transport choose.
    pub shell: Option<String>,
    /// Load the user's rc/profile files.
    pub load_profile: bool,
    /// Initial working directory.
    pub cwd: Option<PathBuf>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Terminal size.
    pub size: Size,
    /// Characters of output returned before head+tail capping.
    pub output_limit: usize,
    /// Where capped outputs are spooled in full.
    pub spool_dir: PathBuf,
    /// How long a shell may take to start.
    pub start_timeout: Duration,
    /// How long to wait for the shell after Ctrl-C before killing it.
    pub interrupt_grace: Duration,
    /// Journal and console to report to.
    pub observer: Option<Arc<Observer>>,
    /// A name the session is known by (e.g. `execkit serve`'s session
    /// name), journaled as `name` next to the engine id.
    pub name: Option<String>,
}

impl SessionConfig {
    /// Checks what will be handed to a shell: environment names are
    /// portable names (`[A-Za-z_][A-Za-z0-9_]*`) and never execkit's own
    /// markers, and no value, path or name holds a NUL byte. Every transport
    /// gets the same answer before anything is started.
    pub fn validate(&self) -> Result<(), String> {
        for (k, v) in &self.env {
            let mut chars = k.chars();
            let name_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !name_ok {
                return Err(format!(
                    "`{}` is not an environment variable name (letters, digits and `_`, not starting with a digit)",
                    k.escape_debug()
                ));
            }
            if k == shell::MARKER_VAR || k == COMMAND_VAR {
                return Err(format!("`{k}` is set by execkit itself"));
            }
            if v.contains('\0') {
                return Err(format!("the value of `{k}` contains a NUL byte"));
            }
        }
        if self.shell.as_deref().is_some_and(|s| s.contains('\0')) {
            return Err("the shell path contains a NUL byte".into());
        }
        if self
            .cwd
            .as_deref()
            .is_some_and(|c| c.as_os_str().as_encoded_bytes().contains(&0))
        {
            return Err("the working directory contains a NUL byte".into());
        }
        Ok(())
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            shell: None,
            load_profile: false,
            cwd: None,
            env: Vec::new(),
            size: Size::default(),
            output_limit: 30_000,
            spool_dir: crate::paths::spool_dir(),
            start_timeout: Duration::from_secs(20),
            interrupt_grace: Duration::from_secs(2),
            observer: None,
            name: None,
        }
    }
}

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

/// Where [`Session::run_with_stdin`] stages its input on the target when
/// `$TMPDIR` is unset or not writable, in this order.
const STAGING_DIRS: &str = "/tmp /var/tmp /dev/shm";

/// What staging says when no place is writable (one line, no `'`).
const NO_STAGING_DIR: &str = "no writable place for the input: $TMPDIR, /tmp, /var/tmp and \
    /dev/shm are read-only or missing (a read-only root filesystem?): mount a tmpfs on one \
    (docker run --tmpfs /tmp) or set TMPDIR to a writable directory in the session environment";

/// How long [`ShellProcess::suspended`] may take to answer before it
/// counts as a no.
const SUSPENDED_PROBE: Duration = Duration::from_secs(5);

/// How long a command must be quiet before execkit looks whether it waits
/// for terminal input.
pub const INPUT_WAIT_GRACE: Duration = Duration::from_millis(1500);

impl RunOptions {
    /// Options with a hard timeout.
    pub fn timeout(timeout: Duration) -> Self {
        RunOptions {
            timeout: Some(timeout),
            yield_after: None,
            input_wait: InputWait::Ignore,
        }
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

/// How a wait on the shell ended.
enum Outcome {
    Sentinel(Sentinel),
    Died(Death),
    Lost(String),
    Deadline,
    Yield,
    /// Quiet for the probe interval: look whether it waits for input.
    Quiet,
    /// Found waiting for input, to be stopped ([`InputWait::Stop`]).
    InputWait,
    /// The target is frozen (a paused container): says so.
    Suspended(String),
    WriteFailed(TransportError),
}

/// How a shell ended while the target lives on (a fresh one can start).
enum Death {
    /// The shell process ended.
    Exited(ExitStatus),
    /// The target restarted under it (the transport's words).
    TargetRestarted(String),
}

/// A command interrupted because the target was frozen
/// ([`ShellProcess::suspended`]): its shell is kept; before the next
/// command, once the target runs again, what it left is killed.
#[derive(Debug)]
struct Frozen {
    cid: String,
    started: Instant,
}

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
}

impl Session {
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
        s.record(JournalEvent::SessionOpen { cwd: s.cwd.clone() });
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

    /// The shell's working directory after the last command.
    pub fn cwd(&self) -> &str {
        &self.cwd
    }

    /// Whether a live shell is attached (false after the target was lost).
    pub fn is_alive(&self) -> bool {
        self.shell.is_some()
    }

    fn spawn_spec(&self) -> SpawnSpec {
        let mut spec = SpawnSpec::new(self.marker.clone())
            .shell(self.config.shell.clone())
            .cwd(self.config.cwd.clone())
            .size(self.config.size);
        spec.load_profile = self.config.load_profile;
        for (k, v) in &self.config.env {
            spec = spec.env(k.clone(), v.clone());
        }
        spec
    }

    /// Starts a shell and waits for its first sentinel.
    async fn start_shell(&mut self) -> Result<(), SessionError> {
        let spec = self.spawn_spec();
        let nonce = protocol::nonce().map_err(SessionError::NoRandomness)?;
        let shell = self.transport.spawn(&spec).await?;
        let init = shell::init_source(&nonce);
        let mut scanner = SentinelScanner::new(&nonce);
        let mut seen = Vec::new();
        let deadline = Instant::now() + self.config.start_timeout;
        let outcome = pump(
            &*shell,
            Some(&init),
            Some(deadline),
            None,
            None,
            &mut false,
            &mut |b| {
                let scan = scanner.push(b);
                // The end matters (the clock line, a start-up error).
                seen.extend_from_slice(&scan.output);
                if seen.len() > 8192 {
                    seen.drain(..seen.len() - 4096);
                }
                scan.sentinel
            },
        )
        .await;
        let target = self.transport.target().to_string();
        match outcome {
            Outcome::Sentinel(s) => {
                let status = s.status;
                self.take_state(s);
                self.flavor = shell::Flavor::from_status(status);
                self.shell_pid = shell::pid_from_status(status);
                self.clock = shell::parse_uptime(&seen).map(|up| (Instant::now(), up));
                self.jobs_possible = shell::holds_code(status);
                self.plain = !self.xtrace && !self.prompts && !self.jobs_possible;
                self.shell = Some(shell);
                Ok(())
            }
            Outcome::Deadline => {
                // Bounded: a clean-up that itself waits on the slow start
                // (an rc file runs for every SSH channel) must not double
                // the wait; the transport closes the shell's terminal anyway.
                let _ = tokio::time::timeout(START_CLEANUP, shell.terminate()).await;
                let text = start_excerpt(&seen);
                Err(SessionError::StartTimeout {
                    target,
                    secs: self.config.start_timeout.as_secs(),
                    detail: if text.is_empty() {
                        "; it printed nothing: a login script (~/.bashrc, \
                         ~/.profile) that is slow or waits for input?"
                            .into()
                    } else {
                        format!("; it printed: {text}")
                    },
                })
            }
            Outcome::Died(Death::TargetRestarted(msg)) => Err(TransportError::Lost(msg).into()),
            Outcome::Died(Death::Exited(status)) => {
                let text = start_excerpt(&seen);
                Err(SessionError::StartFailed {
                    target,
                    status: status.to_string(),
                    output: if text.is_empty() {
                        String::new()
                    } else {
                        format!(": {text}")
                    },
                })
            }
            Outcome::Lost(msg) => Err(TransportError::Lost(msg).into()),
            Outcome::Yield | Outcome::Quiet | Outcome::InputWait | Outcome::Suspended(_) => {
                unreachable!("start-up never yields or watches for input")
            }
            Outcome::WriteFailed(e) => {
                let _ = shell.terminate().await;
                Err(e.into())
            }
        }
    }

    /// Kills what is left of the current shell and starts a new one.
    async fn restart(&mut self) -> Result<(), SessionError> {
        self.frozen = None;
        if let Some(old) = self.shell.take() {
            self.retire(old).await;
        }
        self.start_shell().await
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

    /// Runs `command` with `input` as its standard input, on any target.
    ///
    /// The bytes are staged first in a private file on the target (mode
    /// 0600 in the first writable place of `$TMPDIR`, `/tmp`, `/var/tmp`,
    /// `/dev/shm`; none writable is an error that says what to mount or
    /// set), sent base64-encoded through the
    /// command channel in chunks by commands that are neither journaled nor
    /// mirrored; the command then reads that file, which is unlinked before
    /// the command starts, so nothing is left behind even after a timeout.
    /// Needs `base64` on the target. The result, journal and console show
    /// `command` as given.
    pub async fn run_with_stdin(
        &mut self,
        command: &str,
        input: &[u8],
        opts: RunOptions,
    ) -> Result<RunResult, SessionError> {
        protocol::validate(command)?;
        if self.pending.is_some() {
            return Err(SessionError::Busy);
        }
        let var = self.stage_input(input).await?;
        let wrapped = format!("{{ rm -f \"${var}\"; {command}\n}} < \"${var}\"");
        // Its input is the staged bytes: it never waits on the terminal.
        let opts = opts.input_wait(InputWait::Ignore);
        self.run_shown(Some(command), &wrapped, opts).await
    }

    /// Writes `input` to a fresh private file on the target, in the first
    /// writable place of `$TMPDIR` and [`STAGING_DIRS`]; returns the name
    /// of the shell variable holding its path.
    async fn stage_input(&mut self, input: &[u8]) -> Result<&'static str, SessionError> {
        const VAR: &str = "__ek_in";
        /// Base64 characters per staging command (~36 KB of input).
        const CHUNK: usize = 48 * 1024;
        // What a failed staging command said, else `otherwise`.
        let fail = |target: &str, r: RunResult, otherwise: String| SessionError::Stdin {
            target: target.to_string(),
            reason: if r.output.is_empty() {
                r.error.unwrap_or(otherwise)
            } else {
                r.output
            },
        };
        let name = format!(
            "execkit-in-{}",
            protocol::nonce().map_err(SessionError::NoRandomness)?
        );
        // The first of these where a private file can be created: a
        // read-only root (`docker run --read-only`) has no writable `/tmp`,
        // but usually a tmpfs on `/dev/shm`. Created by `true`, not `:`: a
        // failed redirection of a special builtin makes busybox ash's
        // forked subshell jump back to the interactive loop and go on
        // reading the terminal as if it were the session's shell.
        let setup = format!(
            "command -v base64 >/dev/null 2>&1 || {{ echo 'base64 is not installed'; false; }} && \
             {{ {VAR}=; for __ek_d in \"${{TMPDIR:-}}\" {STAGING_DIRS}; do \
             [ -n \"$__ek_d\" ] && (umask 077 && true > \"$__ek_d/{name}\") 2>/dev/null && \
             {{ {VAR}=\"$__ek_d/{name}\"; break; }}; done; unset __ek_d; [ -n \"${VAR}\" ] || \
             {{ echo '{NO_STAGING_DIR}'; false; }}; }}"
        );
        let r = self
            .run_shown(None, &setup, RunOptions::timeout(Duration::from_secs(20)))
            .await?;
        if r.exit_code != Some(0) {
            let otherwise = "the staging file cannot be created".to_string();
            return Err(fail(self.target(), r, otherwise));
        }
        let encoded = base64(input);
        for chunk in encoded.as_bytes().chunks(CHUNK) {
            let chunk = std::str::from_utf8(chunk).expect("base64 is ASCII");
            let cmd = format!("printf %s '{chunk}' | base64 -d >> \"${VAR}\"");
            let r = self
                .run_shown(None, &cmd, RunOptions::timeout(Duration::from_secs(60)))
                .await?;
            if r.exit_code != Some(0) {
                let rm = format!("rm -f \"${VAR}\"");
                let _ = self
                    .run_shown(None, &rm, RunOptions::timeout(Duration::from_secs(20)))
                    .await;
                let otherwise = format!("exit {:?}", r.exit_code);
                return Err(fail(self.target(), r, otherwise));
            }
        }
        Ok(VAR)
    }

    /// Runs `command`, journaled and mirrored as `shown`; `None`: one of
    /// execkit's own commands, neither journaled nor mirrored.
    async fn run_shown(
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
        let mut restarted = false;
        if self.shell.is_none() {
            // The previous command lost the shell; try a fresh one.
            if let Err(e) = self.restart().await {
                let mut r = self.blank_result(shown.unwrap_or(command), started);
                r.session_lost = true;
                r.error = Some(e.to_string());
                if shown.is_some() {
                    self.report(&r);
                }
                return Ok(r);
            }
            restarted = true;
        }
        if let Some(frozen) = self.frozen.take() {
            if let Some(why) = self.suspended().await {
                // Still frozen: nothing could run it; say so at once.
                self.frozen = Some(frozen);
                let mut r = self.blank_result(shown.unwrap_or(command), started);
                r.session_lost = true;
                r.error = Some(format!("{why}; the command was not run"));
                if shown.is_some() {
                    self.report(&r);
                }
                return Ok(r);
            }
            // Running again: the interrupted command took its Ctrl-C at the
            // thaw; whatever of it ignored that is killed now. (This command
            // is marked: its late output or sentinel falls before our start.)
            if let Err(e) = self.kill_command(&frozen.cid, frozen.started).await {
                tracing::warn!("cleanup of a command interrupted while frozen failed: {e}");
            }
        }
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
            input_wait: if shown.is_some() {
                opts.input_wait
            } else {
                InputWait::Ignore
            },
            last_activity: started,
            input_probe_at: started + INPUT_WAIT_GRACE,
            probe_every: INPUT_WAIT_GRACE,
            waiting: false,
        };
        pending.collector.restarted = restarted;
        pending.collector.track_delta =
            opts.yield_after.is_some() || opts.input_wait == InputWait::Yield;
        let mut line = format!("export {COMMAND_VAR}={cid}; ").into_bytes();
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
            || self.prompts
            || self.jobs_possible
            || std::mem::take(&mut self.noise_pending);
        let full = !self.plain;
        if marked {
            pending.scanner = SentinelScanner::with_start(&nonce);
        }
        if !full {
            pending.scanner = pending.scanner.short();
        }
        line.extend(protocol::encode_command(
            command, &nonce, via, guard, marked, full,
        ));
        self.pending = Some(pending);
        let yield_at = opts.yield_after.map(|y| started + y);
        self.drive(Some(line), yield_at).await
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

    /// Interrupts the running command (Ctrl-C, then resync; the shell is
    /// restarted if it does not come back) and returns its final result.
    pub async fn interrupt(&mut self) -> Result<RunResult, SessionError> {
        if self.pending.is_none() {
            return Err(SessionError::Idle);
        }
        self.record(JournalEvent::Interrupt);
        let mut r = self.finish(Outcome::Deadline).await;
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

    /// Writes `input` (if any) and reads until the command ends, its
    /// deadline passes, or `yield_at` passes (after the input was written).
    async fn drive(
        &mut self,
        mut input: Option<Vec<u8>>,
        yield_at: Option<Instant>,
    ) -> Result<RunResult, SessionError> {
        let outcome = loop {
            let outcome = {
                let Session {
                    shell,
                    pending,
                    config,
                    console_line,
                    id,
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
                    ..
                } = p;
                if input.is_none() {
                    *sent = true;
                }
                // Quiet spells are looked at whatever `input_wait` says, every
                // grace period: a frozen target is never quiet for a good
                // reason, and is told within seconds however long the
                // command was quiet before.
                let quiet = Some((*last_activity + INPUT_WAIT_GRACE, INPUT_WAIT_GRACE));
                pump(
                    shell,
                    input.take().as_deref(),
                    *deadline,
                    yield_at,
                    quiet,
                    sent,
                    &mut |b| {
                        let scan = scanner.push(b);
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
                .await
            };
            if !matches!(outcome, Outcome::Quiet) {
                break outcome;
            }
            if let Some(why) = self.suspended().await {
                break Outcome::Suspended(why);
            }
            let now = Instant::now();
            let p = self.pending.as_mut().expect("pending");
            p.last_activity = now;
            if p.input_wait == InputWait::Ignore || p.waiting || now < p.input_probe_at {
                continue;
            }
            let found = self.waits_for_input().await;
            let p = self.pending.as_mut().expect("pending");
            p.last_activity = Instant::now();
            p.probe_every = (p.probe_every * 2).min(Duration::from_secs(30));
            p.input_probe_at = p.last_activity + p.probe_every;
            if found {
                p.waiting = true;
                match p.input_wait {
                    InputWait::Stop => break Outcome::InputWait,
                    InputWait::Yield => break Outcome::Yield,
                    InputWait::Ignore => {}
                }
            }
        };
        if let Outcome::Yield = outcome {
            let p = self.pending.as_mut().expect("pending");
            let mut r = blank(&p.command, p.started, &self.cwd);
            r.running = true;
            r.waiting_for_input = p.waiting;
            r.output = p.collector.take_delta();
            return Ok(r);
        }
        Ok(self.finish(outcome).await)
    }

    /// A write failed: did the shell die (while idle, so nobody read its
    /// end yet)? Its end event says, once what it printed before is read.
    async fn death_behind_write_failure(&self) -> Option<Death> {
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

    /// Whether the target is frozen (see [`ShellProcess::suspended`]). A
    /// question that finds no answer soon (a stalled engine) is a no: the
    /// command's own deadline is not kept while it is asked.
    async fn suspended(&self) -> Option<String> {
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

    /// Ends the pending command according to `outcome` and builds its result.
    async fn finish(&mut self, outcome: Outcome) -> RunResult {
        let mut p = self.pending.take().expect("pending command");
        let mut result = blank(&p.command, p.started, &self.cwd);
        result.restarted = p.collector.restarted;
        match outcome {
            Outcome::Sentinel(s) => {
                result.exit_code = Some(s.status);
                self.take_state(s);
            }
            Outcome::Deadline => {
                result.timed_out = true;
                self.recover_from_timeout(&mut p, &mut result).await;
            }
            Outcome::InputWait => {
                // Nobody can answer: stop it as a timeout would, keep the shell.
                self.recover_from_timeout(&mut p, &mut result).await;
                result.waiting_for_input = true;
            }
            Outcome::Died(death) => {
                let started = p.scanner.started();
                self.after_death(death, started, &mut result).await
            }
            Outcome::Suspended(why) => self.after_suspend(&p, why, &mut result).await,
            Outcome::Lost(msg) => self.after_loss(msg, &mut result).await,
            Outcome::WriteFailed(e) => match self.death_behind_write_failure().await {
                // It died while idle (a container restart): a line that
                // could not be written did not run.
                Some(death) => self.after_death(death, false, &mut result).await,
                None => self.after_loss(e.to_string(), &mut result).await,
            },
            Outcome::Yield | Outcome::Quiet => unreachable!("handled by drive"),
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
        if result.output.ends_with('\n') {
            result.output.pop();
        }
        result.truncated = capped.truncated;
        result.output_path = capped.spool_path;
        if let (Some(e), None) = (capped.spool_error, &result.error) {
            result.error = Some(e);
        }
        result.cwd = self.cwd.clone();
        result.duration_ms = p.started.elapsed().as_millis() as u64;
        if !internal {
            self.report(&result);
        }
        result
    }

    fn blank_result(&self, command: &str, started: Instant) -> RunResult {
        let mut r = blank(command, started, &self.cwd);
        r.duration_ms = started.elapsed().as_millis() as u64;
        r
    }

    fn record(&self, event: JournalEvent) {
        if let Some(o) = &self.config.observer {
            let session = SessionRef {
                session: self.id.clone(),
                name: self.config.name.clone(),
                target: self.target().into(),
            };
            o.record(session, event);
        }
    }

    fn publish(&self, event: ConsoleEvent) {
        if let Some(o) = &self.config.observer {
            o.console.publish(event);
        }
    }

    /// Journals and mirrors the end of a command.
    fn report(&self, r: &RunResult) {
        self.record(JournalEvent::Result(r.into()));
        self.publish(ConsoleEvent::Footer {
            session: self.id.clone(),
            exit_code: r.exit_code,
            duration_ms: r.duration_ms,
            timed_out: r.timed_out,
            origin: None,
        });
    }

    /// What a sentinel says of the shell: its cwd, whether it traces, whether
    /// it prints prompts between commands. (A short sentinel, in a plain
    /// session, reports no flags: none could have changed.)
    fn take_state(&mut self, s: Sentinel) {
        self.xtrace = s.xtrace();
        self.prompts = s.prompts;
        self.cwd = s.cwd;
    }

    /// Sends `signal` to what the pending command started (never the shell;
    /// see [`shell::signal_command_script`]) and returns how many processes
    /// got it; `None` when the transport cannot run scripts or the shell's
    /// pid or clock is unknown; `Some(Err)` when the script could not run
    /// (the target is unreachable from here: a stalled connection, a
    /// paused container).
    async fn signal_command(
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
    async fn recover_from_timeout(&mut self, p: &mut Pending, result: &mut RunResult) {
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
                let o = pump(shell, None, Some(slice), None, None, &mut true, &mut |b| {
                    let scan = scanner.push(b);
                    collector.push(&scan.output);
                    scan.sentinel
                })
                .await;
                match o {
                    Outcome::Sentinel(s) => {
                        // The command ended under our signal: still a timeout.
                        self.take_state(s);
                        self.kill_rest(p, result).await;
                        return;
                    }
                    Outcome::Died(death) => {
                        let started = p.scanner.started();
                        return self.after_death(death, started, result).await;
                    }
                    // The way to the shell broke (a stalled connection) while
                    // the target answers scripts: a fresh shell, if it can.
                    Outcome::Lost(_) | Outcome::WriteFailed(_) => {
                        return self.start_over(p, result).await
                    }
                    Outcome::Deadline
                    | Outcome::Yield
                    | Outcome::Quiet
                    | Outcome::InputWait
                    | Outcome::Suspended(_) => {}
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
    }

    /// KILLs whatever of the command `cid` (begun at `started`) still runs.
    async fn kill_command(&self, cid: &str, started: Instant) -> Result<(), String> {
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
        let mut fresh = SentinelScanner::new(&nonce);
        // A leading blank: dash's interrupted `read` may still take one byte.
        let resync = format!(" {}\n", protocol::sentinel_source(&nonce, "130"));
        let Pending {
            scanner: old,
            collector,
            ..
        } = p;
        let grace = self.config.interrupt_grace;
        let outcome = match shell.interrupt().await {
            Err(e) => Outcome::WriteFailed(e),
            Ok(()) => {
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
                let mut o = pump(shell, None, soon(150), None, None, &mut true, &mut feed).await;
                // Typed again if it was dropped anyway (a slow shell); a late
                // copy's sentinel falls before the next command's start marker.
                for _ in 0..3 {
                    if !matches!(o, Outcome::Deadline) || Instant::now() >= deadline {
                        break;
                    }
                    self.noise_pending = true;
                    o = pump(
                        shell,
                        Some(resync.as_bytes()),
                        soon(600),
                        None,
                        None,
                        &mut false,
                        &mut feed,
                    )
                    .await;
                }
                if let (Outcome::Sentinel(_), Some(s)) = (&o, finished_late) {
                    // It completed after all: report its real status.
                    result.exit_code = Some(s.status);
                    result.timed_out = false;
                }
                o
            }
        };
        match outcome {
            Outcome::Sentinel(s) => {
                self.take_state(s);
                // Whatever the command left running dies with it.
                self.kill_rest(p, result).await;
            }
            Outcome::Died(death) => {
                let started = p.scanner.started();
                self.after_death(death, started, result).await
            }
            Outcome::Lost(msg) => self.after_loss(msg, result).await,
            Outcome::WriteFailed(e) => self.after_loss(e.to_string(), result).await,
            Outcome::Deadline
            | Outcome::Yield
            | Outcome::Quiet
            | Outcome::InputWait
            | Outcome::Suspended(_) => {
                // The shell is wedged (raw-mode program, SIGINT ignored):
                // kill the marked tree and start over.
                self.start_over(p, result).await
            }
        }
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
        self.report_leftovers(result);
    }

    /// Adds to `error` that a replaced shell's processes could not be
    /// killed (its record stays for `gc`), if so.
    fn report_leftovers(&mut self, result: &mut RunResult) {
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
    async fn after_death(&mut self, death: Death, started: bool, result: &mut RunResult) {
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
        self.report_leftovers(result);
    }

    /// The target is frozen (a paused container): nothing there runs, so
    /// the command cannot finish and neither a script nor the shell can
    /// answer. Return now instead of at the timeout, and keep the shell:
    /// a Ctrl-C written now is taken by the terminal's line discipline, not
    /// by the frozen shell — it drops a command line the shell has not read
    /// yet and queues SIGINT, which the command (or the shell) takes at the
    /// thaw. The next command first kills what is left of this one
    /// ([`Frozen`]) and is marked, so a late sentinel falls outside it.
    async fn after_suspend(&mut self, p: &Pending, why: String, result: &mut RunResult) {
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
    async fn after_loss(&mut self, msg: String, result: &mut RunResult) {
        if let Some(old) = self.shell.take() {
            self.retire(old).await;
        }
        result.session_lost = true;
        result.exit_code = None;
        result.error = Some(msg);
        self.report_leftovers(result);
    }

    /// Kills a shell that is being replaced or was lost. If its processes
    /// cannot be killed now, the record stays for `gc` (see `close`).
    async fn retire(&mut self, old: Box<dyn ShellProcess>) {
        if let Err(e) = old.terminate().await {
            tracing::debug!("cleanup of a replaced shell failed: {e}");
            self.cleanup_pending = true;
            self.leftovers = Some(e.to_string());
        }
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

/// Raw bytes → clean, capped text (whole output, plus what arrived since
/// the last read for yielded commands).
#[derive(Debug)]
struct Collector {
    cleaner: OutputCleaner,
    cap: OutputCap,
    delta: OutputCap,
    limit: usize,
    text: String,
    /// The end of the last line printed (a prompt waiting for input).
    last_line: String,
    /// The shell was replaced before this command ran.
    restarted: bool,
    /// Partial output was handed out; the final result carries the rest only.
    yielded: bool,
    /// Keep the unread-delta copy (only commands that may yield need it).
    track_delta: bool,
}

impl Collector {
    fn new(limit: usize, spool: PathBuf) -> Self {
        Collector {
            cleaner: OutputCleaner::default(),
            cap: OutputCap::new(limit, spool),
            delta: OutputCap::memory_only(limit),
            limit,
            text: String::new(),
            last_line: String::new(),
            restarted: false,
            yielded: false,
            track_delta: true,
        }
    }

    /// What arrived since the last call (capped), final newline kept.
    fn take_delta(&mut self) -> String {
        self.yielded = true;
        let fresh = std::mem::replace(&mut self.delta, OutputCap::memory_only(self.limit));
        fresh.finish().text
    }

    fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.text.clear();
        self.cleaner.push(bytes, &mut self.text);
        match self.text.rfind('\n') {
            Some(at) => {
                self.last_line.clear();
                self.last_line
                    .push_str(last_chars(&self.text[at + 1..], 200));
            }
            None if self.last_line.len() < 400 => self.last_line.push_str(&self.text),
            None => {}
        }
        self.cap.push(&self.text);
        if self.track_delta {
            self.delta.push(&self.text);
        }
    }

    /// The whole capped output and the unread rest.
    fn finish(mut self) -> (crate::output_cap::CappedOutput, String) {
        self.text.clear();
        self.cleaner.finish(&mut self.text);
        self.cap.push(&self.text);
        self.delta.push(&self.text);
        (self.cap.finish(), self.delta.finish().text)
    }
}

/// Writes `input` (if any) while reading, feeding output to `feed` until it
/// reports a sentinel, the shell ends, or `deadline` passes.
///
/// `quiet`: when to report [`Outcome::Quiet`] (first at the given instant,
/// then the given time after the latest output), once the input is out.
async fn pump(
    shell: &dyn ShellProcess,
    input: Option<&[u8]>,
    deadline: Option<Instant>,
    yield_at: Option<Instant>,
    quiet: Option<(Instant, Duration)>,
    sent: &mut bool,
    feed: &mut (dyn FnMut(&[u8]) -> Option<Sentinel> + Send),
) -> Outcome {
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
                        return Outcome::Sentinel(s);
                    }
                    if let Some((_, after)) = quiet {
                        quiet_sleep.as_mut().reset(Instant::now() + after);
                    }
                }
                ShellEvent::Exited(st) => return Outcome::Died(Death::Exited(st)),
                ShellEvent::TargetRestarted(m) => return Outcome::Died(Death::TargetRestarted(m)),
                ShellEvent::Lost(m) => return Outcome::Lost(m),
            },
            r = maybe(&mut write) => {
                write = None;
                *sent = true;
                if let Err(e) = r {
                    return Outcome::WriteFailed(e);
                }
            }
            _ = &mut sleep, if deadline.is_some() => return Outcome::Deadline,
            _ = &mut quiet_sleep, if quiet.is_some() && *sent => return Outcome::Quiet,
            // A half-written command line cannot be resumed: yield only after it is out.
            _ = &mut yield_sleep, if yield_at.is_some() && *sent => return Outcome::Yield,
        }
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

/// Standard base64 (RFC 4648, padded), as `base64 -d` reads it.
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for k in 0..4 {
            if k <= group.len() {
                out.push(ABC[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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

/// How long a failed start-up may spend cleaning up before it reports.
const START_CLEANUP: Duration = Duration::from_secs(1);

/// What a shell printed before it failed to start, as one readable line:
/// the last lines with words in them, runs of blanks folded. A shell that
/// does not speak sh (fish as a login shell) echoes the offending line and
/// marks the spot with a `^~~^` under hundreds of spaces; those marker lines
/// say nothing in a one-line error.
fn start_excerpt(seen: &[u8]) -> String {
    let text = crate::clean::clean(seen);
    let raw: Vec<&str> = text.lines().collect();
    let is_marker = |l: &str| {
        let t = l.trim();
        !t.is_empty() && t.chars().all(|c| matches!(c, '^' | '~' | ' '))
    };
    let lines: Vec<String> = raw
        .iter()
        .enumerate()
        // The quoted source line above a `^~~^` marker is execkit's own.
        .filter(|&(i, l)| {
            l.chars().any(char::is_alphanumeric) && !raw.get(i + 1).is_some_and(|n| is_marker(n))
        })
        .map(|(_, l)| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let mut out = String::new();
    for line in lines.iter().rev() {
        let piece = if out.is_empty() {
            line.clone()
        } else {
            format!("{line} / {out}")
        };
        if piece.chars().count() > 300 {
            if out.is_empty() {
                out = last_chars(line, 300).to_string();
            }
            break;
        }
        out = piece;
    }
    out
}

pub(crate) fn last_chars(s: &str, n: usize) -> &str {
    let count = s.chars().count();
    if count <= n {
        return s;
    }
    let idx = s.char_indices().nth(count - n).map_or(0, |(i, _)| i);
    &s[idx..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_excerpt_keeps_the_error_and_drops_marker_lines() {
        let seen = format!(
            "fish: Unsupported use of '||'. In fish, please use 'COMMAND; or COMMAND'.\r\n\
             unset EXECKIT_SID 2>/dev/null; cd /x || exit 1\r\n{}^~~^\r\n",
            " ".repeat(400)
        );
        assert_eq!(
            start_excerpt(seen.as_bytes()),
            "fish: Unsupported use of '||'. In fish, please use 'COMMAND; or COMMAND'."
        );
        assert_eq!(start_excerpt(b"a   b\n\n  c\n"), "a b / c");
        assert_eq!(start_excerpt(b"   \n"), "");
        let long = "x".repeat(500);
        assert_eq!(start_excerpt(long.as_bytes()).len(), 300);
    }

    fn with_env(k: &str, v: &str) -> SessionConfig {
        let mut c = SessionConfig::default();
        c.env.push((k.into(), v.into()));
        c
    }

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

    #[test]
    fn staging_failure_message_fits_in_single_quotes() {
        assert!(!NO_STAGING_DIR.contains('\''));
        assert!(!NO_STAGING_DIR.contains('\n'));
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
        assert_eq!(base64(&[0, 0xff, 0x80]), "AP+A");
    }

    #[test]
    fn settings_a_shell_cannot_take_are_refused() {
        for (k, v, why) in [
            ("", "x", "not an environment variable name"),
            ("1A", "x", "not an environment variable name"),
            ("A=B", "x", "not an environment variable name"),
            ("A B", "x", "not an environment variable name"),
            ("A;id", "x", "not an environment variable name"),
            ("$(id)", "x", "not an environment variable name"),
            ("A\0", "x", "not an environment variable name"),
            ("A", "x\0y", "NUL"),
            ("EXECKIT_SID", "x", "set by execkit"),
            ("EXECKIT_CMD", "x", "set by execkit"),
        ] {
            let e = with_env(k, v).validate().unwrap_err();
            assert!(e.contains(why), "{k:?}={v:?}: {e}");
        }
        let c = SessionConfig {
            cwd: Some(PathBuf::from("/tmp/a\0b")),
            ..SessionConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("NUL"));
        // Values may hold anything else: they are quoted, never interpreted.
        assert!(with_env("_A1", "$(id); `x` 'q' \"d\" \n é")
            .validate()
            .is_ok());
    }
}
