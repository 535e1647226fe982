//! execkit-core: stateful, structured, safe shell sessions.
//!
//! A [`Session`] keeps one live shell on a target and answers each command
//! with a [`RunResult`]. Targets are reached through [`Transport`]s found in
//! the [`registry`] by URL scheme; a transport only moves bytes and knows how
//! to spawn and kill — the sentinel protocol lives here alone.

pub mod allow;
pub mod cap;
pub mod clean;
pub mod console;
mod error;
pub mod host;
pub mod journal;
pub mod observer;
mod outcome;
pub mod paths;
pub mod protocol;
pub mod redact;
pub mod registry;
mod session;
pub mod sessions;
pub mod shell;
pub mod term;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod transport;

pub use error::{SessionError, TransportError};
pub use observer::Observer;
pub use outcome::RunOutcome;
pub use registry::{connect, register, registry, TransportInfo};
pub use session::{
    InputWait, RunOptions, RunResult, Session, SessionConfig, COMMAND_VAR, INPUT_WAIT_GRACE,
};
pub use transport::{ExitStatus, ShellEvent, ShellProcess, Size, SpawnSpec, Transport};

#[doc(hidden)]
pub use inventory;
