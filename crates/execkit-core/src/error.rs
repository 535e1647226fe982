//! Typed errors of the engine and of transports.
//!
//! A [`TransportError`] says in words what went wrong (its `Display`, the
//! text the CLI prints) and, through [`TransportError::kind`], which of a
//! fixed set of failures it is, for a program to act on:
//!
//! ```
//! use execkit_core::{ErrorKind, Session, SessionConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let Err(e) = Session::open("nosuch:x", SessionConfig::default()).await else {
//!     panic!("no transport has the scheme `nosuch`")
//! };
//! match e.transport().map(|t| t.kind()) {
//!     Some(ErrorKind::InvalidTarget) => { /* a usage error: fix the target */ }
//!     Some(ErrorKind::HostKeyMismatch | ErrorKind::HostKeyUnknown) => { /* ask a person */ }
//!     Some(ErrorKind::ConnectionRefused | ErrorKind::Timeout) => { /* retry later */ }
//!     _ => { /* report `e` */ }
//! }
//! # assert_eq!(e.transport().unwrap().kind(), ErrorKind::InvalidTarget);
//! # }
//! ```
//!
//! The error underneath (an [`std::io::Error`], the SSH library's or the
//! Docker client's error), where there is one, is its
//! [`source`](std::error::Error::source), so it can be downcast; the
//! message already includes its text, so print one or the other.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// An underlying error kept as the source of a [`TransportError`]; shared,
/// so one failed connection attempt can be reported to every session that
/// waited for it.
pub type ErrorSource = Arc<dyn StdError + Send + Sync + 'static>;

/// Which failure a [`TransportError`] is (see [`TransportError::kind`]).
///
/// New kinds may be added; match with a `_` arm. [`ErrorKind::as_str`]
/// gives a stable snake_case name for protocols and other languages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The target is malformed, or names a scheme this build has no
    /// transport for: a usage error (CLI exit 2), not a failure to reach it.
    InvalidTarget,
    /// What the target names does not exist: the host name does not
    /// resolve, there is no such container.
    NotFound,
    /// Nothing accepts connections where the target points: a closed port,
    /// a Docker socket that refuses connections or is not there.
    ConnectionRefused,
    /// The target's service would not let this user in: e.g. no permission
    /// to open the Docker engine's socket.
    PermissionDenied,
    /// Connecting did not finish in time (TCP, the SSH banner, key
    /// exchange or authentication past the `connect_timeout`; a Docker
    /// engine that did not answer).
    Timeout,
    /// The SSH server offered a host key other than the one recorded in
    /// known_hosts: possibly a man-in-the-middle; nothing was sent.
    HostKeyMismatch,
    /// The SSH server's host key is not in known_hosts (and the target did
    /// not opt in with `host_key=accept_new`).
    HostKeyUnknown,
    /// The SSH server accepted none of the identities offered (the key
    /// given, the agent's, the default keys).
    AuthRefused,
    /// The container exists but is not running (created, exited,
    /// restarting, or removed while the shell was being started).
    NotRunning,
    /// The container is paused (`docker unpause` it).
    Paused,
    /// The target went away while in use ([`TransportError::Lost`]).
    Lost,
    /// The target was reached but the shell could not be started
    /// ([`TransportError::Spawn`]).
    Spawn,
    /// Anything else: an I/O error, an engine or server that failed in a
    /// way none of the kinds above names.
    Other,
}

impl ErrorKind {
    /// A stable snake_case name: `host_key_mismatch`, `not_found`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidTarget => "invalid_target",
            ErrorKind::NotFound => "not_found",
            ErrorKind::ConnectionRefused => "connection_refused",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Timeout => "timeout",
            ErrorKind::HostKeyMismatch => "host_key_mismatch",
            ErrorKind::HostKeyUnknown => "host_key_unknown",
            ErrorKind::AuthRefused => "auth_refused",
            ErrorKind::NotRunning => "not_running",
            ErrorKind::Paused => "paused",
            ErrorKind::Lost => "lost",
            ErrorKind::Spawn => "spawn",
            ErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a transport could not do what was asked.
///
/// The variants say where it failed (before, while or after reaching the
/// target); [`TransportError::kind`] says which failure it is.
#[derive(Debug)]
#[non_exhaustive]
pub enum TransportError {
    /// No linked transport handles this scheme.
    UnknownScheme {
        /// The scheme as written.
        scheme: String,
        /// The whole target.
        target: String,
        /// Schemes this build has, comma-separated.
        known: String,
    },
    /// The target string is malformed.
    InvalidTarget {
        /// The whole target.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The target exists in principle but cannot be reached now. Build it
    /// with [`TransportError::unreachable`] (and
    /// [`with_source`](TransportError::with_source)).
    Unreachable {
        /// The whole target.
        target: String,
        /// Which failure it is.
        kind: ErrorKind,
        /// Why, in words a user can act on.
        reason: String,
        /// The error underneath, if any (its text is already in `reason`).
        source: Option<ErrorSource>,
    },
    /// The shell could not be started.
    Spawn {
        /// The whole target.
        target: String,
        /// Why.
        reason: String,
    },
    /// The target went away while in use.
    Lost(String),
    /// An I/O error with the step that failed.
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::UnknownScheme {
                scheme,
                target,
                known,
            } => write!(
                f,
                "unknown target scheme `{scheme}` in `{target}` (this build knows: {known})"
            ),
            TransportError::InvalidTarget { target, reason } => {
                write!(f, "invalid target `{target}`: {reason}")
            }
            TransportError::Unreachable { target, reason, .. } => {
                write!(f, "cannot reach {target}: {reason}")
            }
            TransportError::Spawn { target, reason } => {
                write!(f, "cannot start a shell on {target}: {reason}")
            }
            TransportError::Lost(m) => f.write_str(m),
            TransportError::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl StdError for TransportError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            // The error itself, not the `Arc` around it, so it downcasts.
            TransportError::Unreachable { source, .. } => {
                source.as_deref().map(|e| e as &(dyn StdError + 'static))
            }
            TransportError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl TransportError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        TransportError::Io {
            context: context.into(),
            source,
        }
    }

    /// An [`Unreachable`](TransportError::Unreachable) error of `kind`.
    pub fn unreachable(
        target: impl Into<String>,
        kind: ErrorKind,
        reason: impl Into<String>,
    ) -> Self {
        TransportError::Unreachable {
            target: target.into(),
            kind,
            reason: reason.into(),
            source: None,
        }
    }

    /// Keeps `source` as the error underneath an
    /// [`Unreachable`](TransportError::Unreachable) one (the other variants
    /// are returned as they are: they carry no source or their own).
    pub fn with_source(mut self, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        if let TransportError::Unreachable { source: slot, .. } = &mut self {
            *slot = Some(Arc::from(source.into()));
        }
        self
    }

    /// Which failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TransportError::UnknownScheme { .. } | TransportError::InvalidTarget { .. } => {
                ErrorKind::InvalidTarget
            }
            TransportError::Unreachable { kind, .. } => *kind,
            TransportError::Spawn { .. } => ErrorKind::Spawn,
            TransportError::Lost(_) => ErrorKind::Lost,
            TransportError::Io { .. } => ErrorKind::Other,
        }
    }

    /// Whether the error means "the request was malformed" (CLI exit 2)
    /// rather than "the target cannot be reached" (CLI exit 69): the kind
    /// is [`ErrorKind::InvalidTarget`].
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            TransportError::UnknownScheme { .. } | TransportError::InvalidTarget { .. }
        )
    }
}

/// Why a session operation failed outright (as opposed to a command failing,
/// which is a normal [`crate::RunResult`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The command cannot be sent to a shell.
    #[error(transparent)]
    Command(#[from] crate::protocol::CommandError),
    /// The shell did not finish its start-up in time.
    #[error("the shell on {target} did not become ready within {secs} s{detail}")]
    StartTimeout {
        /// The target.
        target: String,
        /// How long we waited.
        secs: u64,
        /// What it printed (`: …`), or a hint when it printed nothing.
        detail: String,
    },
    /// The shell ended during start-up.
    #[error("the shell on {target} {status} during start-up{output}")]
    StartFailed {
        /// The target.
        target: String,
        /// How it ended.
        status: String,
        /// What it printed, prefixed with `: `, if anything.
        output: String,
    },
    /// The session settings cannot be passed to a shell safely (an
    /// environment variable name that is not a name, a NUL byte, …).
    #[error("invalid session settings: {0}")]
    InvalidConfig(String),
    /// The session was closed.
    #[error("the session is closed")]
    Closed,
    /// No nonce could be drawn (the OS random generator failed): nothing is
    /// sent without one.
    #[error("no random nonce: {0}")]
    NoRandomness(#[source] std::io::Error),
    /// Another command is still running in this session.
    #[error("a command is still running in this session (poll, send input or interrupt it first)")]
    Busy,
    /// No command is running (nothing to poll, feed or interrupt).
    #[error("no command is running in this session")]
    Idle,
    /// Input for a command's stdin could not be put on the target.
    #[error("cannot stage stdin on {target}: {reason}")]
    Stdin {
        /// The target.
        target: String,
        /// What went wrong.
        reason: String,
    },
}

impl SessionError {
    /// The transport's error, if that is what this is: its
    /// [`kind`](TransportError::kind) says which failure.
    pub fn transport(&self) -> Option<&TransportError> {
        match self {
            SessionError::Transport(e) => Some(e),
            _ => None,
        }
    }

    /// A stable snake_case name of this failure for wire protocols (the
    /// serve protocol's `kind`): the transport's [`ErrorKind::as_str`] for
    /// a transport error, else `invalid_command`, `start_timeout`,
    /// `start_failed`, `invalid_config`, `closed`, `no_randomness`, `busy`,
    /// `idle` or `stdin`.
    pub fn code(&self) -> &'static str {
        match self {
            SessionError::Transport(e) => e.kind().as_str(),
            SessionError::Command(_) => "invalid_command",
            SessionError::StartTimeout { .. } => "start_timeout",
            SessionError::StartFailed { .. } => "start_failed",
            SessionError::InvalidConfig(_) => "invalid_config",
            SessionError::Closed => "closed",
            SessionError::NoRandomness(_) => "no_randomness",
            SessionError::Busy => "busy",
            SessionError::Idle => "idle",
            SessionError::Stdin { .. } => "stdin",
        }
    }
}
