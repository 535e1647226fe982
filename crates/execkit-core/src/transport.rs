//! The boundary between the engine and a backend: a [`Transport`] starts
//! shells, a [`ShellProcess`] moves bytes and knows how to kill. Nothing here
//! knows the sentinel protocol.

use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;

use crate::error::TransportError;

/// Terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

impl Default for Size {
    fn default() -> Self {
        Size { rows: 24, cols: 80 }
    }
}

/// What to start: the shell, its environment and terminal size.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SpawnSpec {
    /// Shell to run; `None` lets the transport pick (bash if present, else sh).
    pub shell: Option<String>,
    /// Load the user's rc/profile files (off by default: slow, nondeterministic).
    pub load_profile: bool,
    /// Variables to set; they override the transport's inherited environment.
    pub env: Vec<(String, String)>,
    /// Initial working directory, if the caller wants one.
    pub cwd: Option<PathBuf>,
    /// Initial terminal size.
    pub size: Size,
    /// Value of `EXECKIT_SID` for every process of this shell.
    pub marker: String,
    /// How to contain the shell ([`SessionConfig::containment`](crate::SessionConfig)).
    /// A transport that cannot contain a shell refuses a spec that asks.
    pub containment: crate::contain::Containment,
}

impl SpawnSpec {
    /// A spec for a shell carrying `marker`, with the protocol's base environment.
    pub fn new(marker: impl Into<String>) -> Self {
        let marker = marker.into();
        let mut env: Vec<(String, String)> = crate::shell::BASE_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push((crate::shell::MARKER_VAR.to_string(), marker.clone()));
        SpawnSpec {
            shell: None,
            load_profile: false,
            env,
            cwd: None,
            size: Size::default(),
            marker,
            containment: crate::contain::Containment::default(),
        }
    }

    /// Sets the shell path.
    pub fn shell(mut self, shell: Option<String>) -> Self {
        self.shell = shell;
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, cwd: Option<PathBuf>) -> Self {
        self.cwd = cwd;
        self
    }

    /// Sets the terminal size.
    pub fn size(mut self, size: Size) -> Self {
        self.size = size;
        self
    }

    /// Adds or replaces a variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.into()));
        self
    }

    /// For transports that cannot contain a shell: an error when the spec
    /// asks for containment (never run a shell less contained than asked).
    pub fn refuse_containment(&self, target: &str) -> Result<(), TransportError> {
        if !self.containment.is_contained() {
            return Ok(());
        }
        Err(TransportError::Spawn {
            target: target.to_string(),
            reason: format!(
                "containment ({}) is enforced on local targets only; this target's shells run elsewhere",
                self.containment
            ),
        })
    }

    /// The `EXECKIT_SID=<marker>` entry as it appears in `/proc/PID/environ`.
    pub fn marker_entry(&self) -> String {
        format!("{}={}", crate::shell::MARKER_VAR, self.marker)
    }
}

/// How a shell process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Ended, but the transport cannot say how.
    Unknown,
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exited with code {c}"),
            ExitStatus::Signal(s) => write!(f, "was killed by signal {s}"),
            ExitStatus::Unknown => write!(f, "ended"),
        }
    }
}

/// One thing a shell did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellEvent {
    /// Bytes the terminal printed.
    Output(Vec<u8>),
    /// The shell process ended (all output it wrote was delivered before).
    Exited(ExitStatus),
    /// The target went away (container stopped, connection dropped).
    Lost(String),
    /// The target itself restarted (`docker restart`): the shell and
    /// everything it started are gone, but a fresh shell can be started.
    /// Says so in words ("container web restarted …").
    TargetRestarted(String),
}

/// Starts shells on one target.
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug {
    /// The target this transport was built for, as the user wrote it.
    fn target(&self) -> &str;

    /// Starts a shell on a terminal.
    async fn spawn(&self, spec: &SpawnSpec) -> Result<Box<dyn ShellProcess>, TransportError>;

    /// Kills every process on the target whose environment holds exactly
    /// `entry` (`KEY=VALUE`). Used for cleanup of sessions whose owner died.
    async fn kill_matching(&self, entry: &str) -> Result<(), TransportError>;

    /// Ends whole sessions at once: kills every process on the target
    /// carrying one of `markers` (their `EXECKIT_SID` values) and, where
    /// the target has process groups to signal, their groups (a child that
    /// cleared its environment stays in its shell's group).
    /// [`Host::shutdown`](crate::Host::shutdown) calls it once per scheme
    /// for all the sessions whose shells run on this host
    /// ([`TransportInfo::on_this_host`](crate::TransportInfo::on_this_host)),
    /// on one of their transports, so a transport that can should do it in
    /// one pass. Default: [`kill_matching`](Transport::kill_matching) for
    /// each marker (no groups), the first error returned after all were
    /// tried.
    async fn kill_sessions(&self, markers: &[String]) -> Result<(), TransportError> {
        let mut first_err = None;
        for m in markers {
            let entry = format!("{}={m}", crate::shell::MARKER_VAR);
            if let Err(e) = self.kill_matching(&entry).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Whole-file transfer on the target outside any shell
    /// ([`FileTransfer`]), if this transport has one; `None` (the default)
    /// and callers move files through a session. A transport whose
    /// sessions are contained (a sandbox the shell runs under) must return
    /// `None`, or the transfer would bypass the containment.
    fn files(&self) -> Option<std::sync::Arc<dyn FileTransfer>> {
        None
    }
}

/// Chunks handed to [`FileTransfer::write`]; an `Err` abandons the write.
pub type Chunks = tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>;

/// Largest chunk a [`FileTransfer`] sends or should expect.
pub const FILE_CHUNK: usize = 1 << 20;

/// Moves whole files to and from a target natively (the filesystem, an
/// archive API, a second channel) — binary-safe, streamed in chunks of at
/// most [`FILE_CHUNK`] bytes, never holding a whole file. Paths are
/// absolute (a relative one is `InvalidInput`); a symlink is followed, as
/// `open(2)` does. Files are read and written as the user the target's
/// shells run as. An error carries the target's errno where it reported
/// one (`ENOENT`, `EACCES`, `EISDIR`, `ENOTDIR`, …; read it with
/// [`file_errno`]) and a message naming the path. `ErrorKind::Unsupported`
/// means this transfer cannot serve the request correctly (e.g. it would
/// act with other rights than the shell's user): the caller falls back to
/// moving the bytes through a session.
#[async_trait]
pub trait FileTransfer: Send + Sync + fmt::Debug {
    /// Sends the regular file at `path` to `to` in order; returns its
    /// size. Stops with `BrokenPipe` if `to` is closed.
    async fn read(
        &self,
        path: &str,
        to: tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> std::io::Result<u64>;

    /// Writes what arrives on `from` to `path`: missing parent directories
    /// are made (mode 0755 less the umask), an existing file is truncated
    /// first (its mode kept), a new one gets mode 0644 less the umask.
    /// `len`, when known, is the total the chunks add up to (a transport
    /// may need it before the first byte; a different total is an error).
    /// Returns the bytes written. On an `Err` chunk or an error, what was
    /// written so far stays.
    async fn write(&self, path: &str, len: Option<u64>, from: Chunks) -> std::io::Result<u64>;
}

/// The target's errno a [`FileTransfer`] error carries: its own
/// (`io::Error::raw_os_error`) or that of an `io::Error` in its source
/// chain. An `io::Error` holding an errno has no room for a message, so an
/// error that names the path wraps one (`io::Error::new(kind, E)` where
/// `E::source` is the errno's `io::Error`).
pub fn file_errno(e: &std::io::Error) -> Option<i32> {
    if let Some(n) = e.raw_os_error() {
        return Some(n);
    }
    let mut next = e
        .get_ref()
        .map(|inner| inner as &(dyn std::error::Error + 'static));
    while let Some(err) = next {
        if let Some(n) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            return Some(n);
        }
        next = err.source();
    }
    None
}

/// Reads the whole file at `path` through `files`.
pub async fn read_file(files: &dyn FileTransfer, path: &str) -> std::io::Result<Vec<u8>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let collect = async move {
        let mut all = Vec::new();
        while let Some(chunk) = rx.recv().await {
            if all.is_empty() {
                all = chunk;
            } else {
                all.extend_from_slice(&chunk);
            }
        }
        all
    };
    let (read, all) = tokio::join!(files.read(path, tx), collect);
    read.map(|_| all)
}

/// Writes `bytes` to `path` through `files` (see [`FileTransfer::write`]).
pub async fn write_file(files: &dyn FileTransfer, path: &str, bytes: &[u8]) -> std::io::Result<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let feed = async move {
        for chunk in bytes.chunks(FILE_CHUNK) {
            if tx.send(Ok(chunk.to_vec())).await.is_err() {
                break;
            }
        }
    };
    let (written, ()) = tokio::join!(files.write(path, Some(bytes.len() as u64), rx), feed);
    written.map(drop)
}

/// A live shell on a terminal. Methods take `&self` so reading and writing can
/// proceed at once; `read` must be cancel-safe (no bytes lost when the future
/// is dropped).
#[async_trait]
pub trait ShellProcess: Send + Sync + fmt::Debug {
    /// Writes all of `data` to the terminal.
    async fn write(&self, data: &[u8]) -> Result<(), TransportError>;

    /// The next output chunk or the end of the shell. After `Exited` or
    /// `Lost`, further calls return the same event again.
    async fn read(&self) -> ShellEvent;

    /// Resizes the terminal.
    async fn resize(&self, size: Size) -> Result<(), TransportError>;

    /// Interrupts the foreground command (Ctrl-C).
    async fn interrupt(&self) -> Result<(), TransportError> {
        self.write(&[0x03]).await
    }

    /// Kills every process on the target whose environment holds exactly
    /// `entry` (`KEY=VALUE`).
    async fn kill_matching(&self, entry: &str) -> Result<(), TransportError>;

    /// Kills the shell and every process carrying its marker, and reaps it.
    async fn terminate(&self) -> Result<(), TransportError>;

    /// Runs `script` with `/bin/sh` on the target, out of band (not in the
    /// session's shell, not through its terminal), and returns what it
    /// printed on stdout. The engine stops a timed-out command's processes
    /// this way (a `/proc` sweep by marker). `None`: this
    /// transport cannot; the engine then only types at the terminal.
    async fn run_script(&self, script: &str) -> Option<Result<String, TransportError>> {
        let _ = script;
        None
    }

    /// Whether the target is frozen (a paused container): its processes
    /// exist but none runs, so neither the shell nor a script can answer
    /// until it is thawed. `Some` says so in words with the way out
    /// ("container web is paused (docker unpause web)"). The engine asks
    /// while a command is quiet and when a script cannot run; it then
    /// returns at once instead of waiting out the timeout, and keeps the
    /// shell. Default: never frozen.
    async fn suspended(&self) -> Option<String> {
        None
    }

    /// The containment policy this shell runs under, as target parameters
    /// (`sandbox=read-only&network=off…`); journaled when the session opens.
    /// `None`: not contained.
    fn containment(&self) -> Option<String> {
        None
    }

    /// Called just before a command is typed: a contained shell notes which
    /// of its processes already exist.
    fn command_begins(&self) {}

    /// After a timed-out command: kills every process of the session that
    /// appeared since [`command_begins`](ShellProcess::command_begins) but
    /// the shell, whatever it did to its environment or process group, and
    /// returns how many it killed. `None`: this shell cannot tell (the
    /// engine's marker cleanup is all there is).
    async fn kill_since_command_began(&self) -> Option<Result<usize, TransportError>> {
        None
    }

    /// After a command that did not succeed: what the containment did to
    /// it that its output may not say (a process killed at the memory
    /// limit, forks refused at the process limit) since the last call.
    fn limit_note(&self) -> Option<String> {
        None
    }
}
