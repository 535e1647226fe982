//! Typed errors of the engine and of transports.

/// Why a transport could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No linked transport handles this scheme.
    #[error("unknown target scheme `{scheme}` in `{target}` (this build knows: {known})")]
    UnknownScheme {
        /// The scheme as written.
        scheme: String,
        /// The whole target.
        target: String,
        /// Schemes this build has, comma-separated.
        known: String,
    },
    /// The target string is malformed.
    #[error("invalid target `{target}`: {reason}")]
    InvalidTarget {
        /// The whole target.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The target exists in principle but cannot be reached now.
    #[error("cannot reach {target}: {reason}")]
    Unreachable {
        /// The whole target.
        target: String,
        /// Why, in words a user can act on.
        reason: String,
    },
    /// The shell could not be started.
    #[error("cannot start a shell on {target}: {reason}")]
    Spawn {
        /// The whole target.
        target: String,
        /// Why.
        reason: String,
    },
    /// The target went away while in use.
    #[error("{0}")]
    Lost(String),
    /// An I/O error with the step that failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl TransportError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        TransportError::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether the error means "the target cannot be reached" (CLI exit 69)
    /// rather than "the request was malformed" (CLI exit 2).
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
