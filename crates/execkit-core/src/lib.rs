//! Stateful, structured, safe shell sessions for AI agents.
//!
//! A [`Session`] keeps one live shell on a target — a PTY on this host, a
//! shell in a Docker container, a shell on a machine over SSH — and answers
//! each command with a [`RunResult`]: exit code, clean output (ANSI
//! stripped, valid UTF-8, capped head + tail with the full text spooled to
//! a file), working directory, duration, and whether it timed out. `cd`,
//! `export`, functions and virtualenvs persist between commands; a timeout
//! kills the command's whole process tree and the session goes on.
//!
//! # Open, run, close
//!
//! ```
//! use execkit_core::{RunOptions, Session, SessionConfig};
//! use execkit_local as _; // link the transports you want, one line each
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), execkit_core::SessionError> {
//! let mut s = Session::open("local", SessionConfig::default()).await?;
//! s.run("cd /tmp", RunOptions::default()).await?;
//! let r = s.run("pwd; false", RunOptions::default()).await?;
//! assert_eq!((r.exit_code, r.output.as_str(), r.cwd.as_str()), (Some(1), "/tmp", "/tmp"));
//! s.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Transports
//!
//! A target names its transport by URL scheme: `local`, `local:/bin/dash`,
//! `docker:NAME`, `ssh://user@host`. Each transport is its own crate that
//! registers itself through [`inventory`] when it is linked; a program links
//! only the ones it needs by naming them once (`use execkit_docker as _;`).
//! [`transports`] lists what is linked, [`connect`] builds one for a target.
//! The transport-author API (the traits a new backend implements and the
//! shell snippets it may run) is in [`raw`].
//!
//! # Many sessions
//!
//! A [`Host`] holds named sessions for a daemon or an MCP server: open by
//! name, run, poll a command still running, send input, interrupt, close;
//! every limit a shared server needs (sessions, pending commands, allowed
//! targets) is in its [`HostConfig`].
//!
//! ```
//! use std::sync::Arc;
//! use execkit_core::{Host, HostConfig, Observer, OpenRequest, RunOptions};
//! use execkit_local as _;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), execkit_core::HostError> {
//! // The Observer journals and mirrors every run; its default does neither.
//! let host = Host::new(HostConfig::default(), Arc::new(Observer::default()));
//! let req = OpenRequest {
//!     name: Some("build".into()),
//!     target: Some("local".into()),
//!     ..Default::default()
//! };
//! host.open(req).await?;
//! let r = host.run("build", "echo hi", RunOptions::default()).await?;
//! assert_eq!(r.output, "hi");
//! host.close("build").await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`Session`] (`session/`): one shell, the command loop, recovery.
//! - [`Host`] ([`host`]): named sessions, limits, polling.
//! - [`journal`], [`console`], [`Observer`]: every run written to JSONL and
//!   mirrored to a live console; [`redact`] masks secrets on the way.
//! - [`cleanup`]: session records on disk and the gc that kills what a dead
//!   owner left behind; spool pruning. [`state`]: where the files live.
//! - [`term`]: showing untrusted text on a person's terminal.
//! - [`raw`]: for transport authors.
//! - [`TransportError::kind`]: an [`ErrorKind`] to match on (host key mismatch, …).
//!
//! Only this crate knows the sentinel protocol (the encoder, the scanner,
//! the output cleaner and cap are private): a transport moves bytes and
//! knows how to spawn and kill, nothing more.

mod allow;
pub mod cleanup;
pub mod console;
pub mod contain;
mod error;
pub mod host;
pub mod journal;
mod observer;
mod osc_limit;
mod outcome;
mod output_cap;
mod output_clean;
mod paths;
#[cfg(test)]
mod properties;
mod protocol;
pub mod raw;
pub mod redact;
mod registry;
mod session;
mod shell;
pub mod state;
pub mod term;
#[cfg(feature = "testkit")]
pub mod testkit;
mod transport;

pub use allow::TargetPattern;
pub use contain::{Containment, Sandbox};
pub use error::{ErrorKind, ErrorSource, SessionError, TransportError};
pub use host::{Host, HostConfig, HostError, OpenRequest};
pub use observer::Observer;
pub use outcome::RunOutcome;
pub use registry::{
    connect, on_this_host, socket_forwarder, transports, ForwardFuture, SocketForwarder,
    TransportInfo,
};
pub use session::{InputWait, PersonTerminal, RunOptions, RunResult, Session, SessionConfig};
pub use transport::Size;

#[doc(hidden)]
pub use inventory;
