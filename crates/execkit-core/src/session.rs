//! A live shell session speaking the sentinel protocol.
//!
//! [`Session::run`] writes one command, reads until that command's sentinel
//! and returns a [`RunResult`]. Around that core: a hard timeout (Ctrl-C,
//! resync on a fresh sentinel, else kill and restart), detection of a dying
//! shell (restart), of a lost target (reported), and output cleaning and
//! capping.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::cap::OutputCap;
use crate::clean::OutputCleaner;
use crate::error::{SessionError, TransportError};
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
        }
    }
}

/// Per-command options.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RunOptions {
    /// Hard timeout; `None` waits forever.
    pub timeout: Option<Duration>,
}

impl RunOptions {
    /// Options with a hard timeout.
    pub fn timeout(timeout: Duration) -> Self {
        RunOptions {
            timeout: Some(timeout),
        }
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
}

/// How a wait on the shell ended.
enum Outcome {
    Sentinel(Sentinel),
    Exited(ExitStatus),
    Lost(String),
    Deadline,
    WriteFailed(TransportError),
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
    leftover: Vec<u8>,
    flavor: shell::Flavor,
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
        let mut s = Session {
            id: protocol::nonce()[..12].to_string(),
            marker: protocol::nonce(),
            transport,
            config,
            shell: None,
            cwd: String::new(),
            seq: 0,
            leftover: Vec::new(),
            flavor: shell::Flavor::Posix,
        };
        s.start_shell().await?;
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
        let shell = self.transport.spawn(&spec).await?;
        let nonce = protocol::nonce();
        let init = shell::init_source(&nonce);
        let mut scanner = SentinelScanner::new(&nonce);
        let mut seen = Vec::new();
        let deadline = Instant::now() + self.config.start_timeout;
        let outcome = pump(&*shell, Some(&init), Some(deadline), &mut |b| {
            let scan = scanner.push(b);
            if seen.len() < 4096 {
                seen.extend_from_slice(&scan.output);
            }
            scan.sentinel
        })
        .await;
        let target = self.transport.target().to_string();
        match outcome {
            Outcome::Sentinel(s) => {
                self.cwd = s.cwd;
                self.flavor = shell::Flavor::from_status(s.status);
                self.leftover = scanner.take_after();
                self.shell = Some(shell);
                Ok(())
            }
            Outcome::Deadline => {
                let _ = shell.terminate().await;
                Err(SessionError::StartTimeout {
                    target,
                    secs: self.config.start_timeout.as_secs(),
                })
            }
            Outcome::Exited(status) => {
                let text = crate::clean::clean(&seen);
                let text = text.trim();
                Err(SessionError::StartFailed {
                    target,
                    status: status.to_string(),
                    output: if text.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", last_chars(text, 300))
                    },
                })
            }
            Outcome::Lost(msg) => Err(TransportError::Lost(msg).into()),
            Outcome::WriteFailed(e) => {
                let _ = shell.terminate().await;
                Err(e.into())
            }
        }
    }

    /// Kills what is left of the current shell and starts a new one.
    async fn restart(&mut self) -> Result<(), SessionError> {
        if let Some(old) = self.shell.take() {
            let _ = old.terminate().await;
        }
        self.leftover.clear();
        self.start_shell().await
    }

    /// Runs one command to completion (or timeout) and returns its result.
    ///
    /// Errors are reserved for requests that cannot be attempted (a command
    /// with a NUL byte); everything that happens to the command or the target
    /// is reported in the [`RunResult`].
    pub async fn run(
        &mut self,
        command: &str,
        opts: RunOptions,
    ) -> Result<RunResult, SessionError> {
        protocol::validate(command)?;
        let started = Instant::now();
        self.seq += 1;
        let mut result = RunResult {
            command: command.to_string(),
            exit_code: None,
            output: String::new(),
            timed_out: false,
            truncated: false,
            restarted: false,
            session_lost: false,
            error: None,
            duration_ms: 0,
            cwd: self.cwd.clone(),
            output_path: None,
        };
        if self.shell.is_none() {
            // The previous command lost the shell; try a fresh one.
            if let Err(e) = self.restart().await {
                result.session_lost = true;
                result.error = Some(e.to_string());
                result.duration_ms = started.elapsed().as_millis() as u64;
                return Ok(result);
            }
            result.restarted = true;
        }

        let spool = self
            .config
            .spool_dir
            .join(format!("{}-{}.out", self.id, self.seq));
        let mut collector = Collector::new(self.config.output_limit, spool);
        let nonce = protocol::nonce();
        let cid = protocol::nonce();
        let mut line = format!("export {COMMAND_VAR}={cid}; ").into_bytes();
        line.extend(protocol::encode_command(command, &nonce, self.flavor));
        let mut scanner = SentinelScanner::new(&nonce);
        let deadline = opts.timeout.map(|t| started + t);

        let leftover = std::mem::take(&mut self.leftover);
        let mut outcome = None;
        if !leftover.is_empty() {
            let scan = scanner.push(&leftover);
            collector.push(&scan.output);
            outcome = scan.sentinel.map(Outcome::Sentinel);
        }
        let shell = self.shell.as_deref().expect("shell present");
        let outcome = match outcome {
            Some(o) => o,
            None => {
                pump(shell, Some(&line), deadline, &mut |b| {
                    let scan = scanner.push(b);
                    collector.push(&scan.output);
                    scan.sentinel
                })
                .await
            }
        };

        match outcome {
            Outcome::Sentinel(s) => {
                result.exit_code = Some(s.status);
                self.cwd = s.cwd;
                self.leftover = scanner.take_after();
            }
            Outcome::Deadline => {
                result.timed_out = true;
                self.recover_from_timeout(&mut scanner, &mut collector, &cid, &mut result)
                    .await;
            }
            Outcome::Exited(status) => self.after_death(status, &mut result).await,
            Outcome::Lost(msg) => self.after_loss(msg, &mut result).await,
            Outcome::WriteFailed(e) => self.after_loss(e.to_string(), &mut result).await,
        }

        let capped = collector.finish();
        result.output = capped.text;
        if result.output.ends_with('\n') {
            result.output.pop();
        }
        result.truncated = capped.truncated;
        result.output_path = capped.spool_path;
        if let (Some(e), None) = (capped.spool_error, &result.error) {
            result.error = Some(e);
        }
        result.cwd = self.cwd.clone();
        result.duration_ms = started.elapsed().as_millis() as u64;
        Ok(result)
    }

    /// Ctrl-C, then wait for a fresh sentinel; if the shell does not answer,
    /// kill everything it started and restart it.
    async fn recover_from_timeout(
        &mut self,
        old: &mut SentinelScanner,
        collector: &mut Collector,
        cid: &str,
        result: &mut RunResult,
    ) {
        let shell = self.shell.as_deref().expect("shell present");
        let nonce = protocol::nonce();
        let mut fresh = SentinelScanner::new(&nonce);
        let resync = format!("{}\n", protocol::sentinel_source(&nonce, "130"));
        let outcome = match shell.interrupt().await {
            Err(e) => Outcome::WriteFailed(e),
            Ok(()) => {
                let deadline = Instant::now() + self.config.interrupt_grace;
                let mut finished_late = None;
                let o = pump(shell, Some(resync.as_bytes()), Some(deadline), &mut |b| {
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
                })
                .await;
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
                self.cwd = s.cwd;
                self.leftover = fresh.take_after();
                // Whatever the command left running dies with it.
                let entry = format!("{COMMAND_VAR}={cid}");
                if let Err(e) = shell.kill_matching(&entry).await {
                    tracing::warn!("cleanup after timeout failed: {e}");
                }
            }
            Outcome::Exited(status) => self.after_death(status, result).await,
            Outcome::Lost(msg) => self.after_loss(msg, result).await,
            Outcome::WriteFailed(e) => self.after_loss(e.to_string(), result).await,
            Outcome::Deadline => {
                // The shell is wedged (raw-mode program, SIGINT ignored):
                // kill the marked tree and start over.
                match self.restart().await {
                    Ok(()) => result.restarted = true,
                    Err(e) => {
                        result.session_lost = true;
                        result.error = Some(format!("shell did not recover after timeout: {e}"));
                    }
                }
            }
        }
    }

    /// The shell ended during a command: report how, and replace it.
    async fn after_death(&mut self, status: ExitStatus, result: &mut RunResult) {
        match status {
            ExitStatus::Code(code) => {
                if !result.timed_out {
                    result.exit_code = Some(code);
                }
                match self.restart().await {
                    Ok(()) => result.restarted = true,
                    Err(e) => {
                        result.session_lost = true;
                        result.error =
                            Some(format!("shell exited and could not be restarted: {e}"));
                    }
                }
            }
            ExitStatus::Signal(_) | ExitStatus::Unknown => {
                // Killed from outside: report the loss; the next command
                // gets a fresh shell.
                if let Some(old) = self.shell.take() {
                    let _ = old.terminate().await;
                }
                result.session_lost = true;
                result.error = Some(format!("the shell on {} {status}", self.transport.target()));
            }
        }
    }

    /// The target went away during a command.
    async fn after_loss(&mut self, msg: String, result: &mut RunResult) {
        if let Some(old) = self.shell.take() {
            let _ = old.terminate().await;
        }
        result.session_lost = true;
        result.exit_code = None;
        result.error = Some(msg);
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
        if let Some(shell) = self.shell.take() {
            shell.terminate().await?;
        }
        Ok(())
    }
}

/// Raw bytes → clean, capped text.
struct Collector {
    cleaner: OutputCleaner,
    cap: OutputCap,
    text: String,
    /// Bytes at the very start held back while they may be idle noise.
    head: Option<Vec<u8>>,
}

impl Collector {
    fn new(limit: usize, spool: PathBuf) -> Self {
        Collector {
            cleaner: OutputCleaner::default(),
            cap: OutputCap::new(limit, spool),
            text: String::new(),
            head: Some(Vec::new()),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(mut head) = self.head.take() {
            head.extend_from_slice(bytes);
            let noise = shell::IGNOREEOF_NOISE;
            let mut start = 0;
            while head[start..].starts_with(noise) {
                start += noise.len();
            }
            let rest = &head[start..];
            if !rest.is_empty() && noise.starts_with(rest) {
                // Could still become noise: wait for more.
                self.head = Some(rest.to_vec());
                return;
            }
            let rest = rest.to_vec();
            self.clean(&rest);
            return;
        }
        self.clean(bytes);
    }

    fn clean(&mut self, bytes: &[u8]) {
        self.text.clear();
        self.cleaner.push(bytes, &mut self.text);
        self.cap.push(&self.text);
    }

    fn finish(mut self) -> crate::cap::CappedOutput {
        if let Some(head) = self.head.take() {
            self.clean(&head);
        }
        self.text.clear();
        self.cleaner.finish(&mut self.text);
        self.cap.push(&self.text);
        self.cap.finish()
    }
}

/// Writes `input` (if any) while reading, feeding output to `feed` until it
/// reports a sentinel, the shell ends, or `deadline` passes.
async fn pump(
    shell: &dyn ShellProcess,
    input: Option<&[u8]>,
    deadline: Option<Instant>,
    feed: &mut (dyn FnMut(&[u8]) -> Option<Sentinel> + Send),
) -> Outcome {
    let mut write = input.map(|d| shell.write(d));
    let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(far_future));
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            biased;
            ev = shell.read() => match ev {
                ShellEvent::Output(b) => { if std::env::var_os("EK_DEBUG").is_some() { eprintln!("<< {:?}", String::from_utf8_lossy(&b)); }
                    if let Some(s) = feed(&b) {
                        return Outcome::Sentinel(s);
                    }
                }
                ShellEvent::Exited(st) => return Outcome::Exited(st),
                ShellEvent::Lost(m) => return Outcome::Lost(m),
            },
            r = maybe(&mut write) => {
                write = None;
                if let Err(e) = r {
                    return Outcome::WriteFailed(e);
                }
            }
            _ = &mut sleep, if deadline.is_some() => return Outcome::Deadline,
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

fn last_chars(s: &str, n: usize) -> &str {
    let count = s.chars().count();
    if count <= n {
        return s;
    }
    let idx = s.char_indices().nth(count - n).map_or(0, |(i, _)| i);
    &s[idx..]
}
