//! For transport authors: what a new backend implements and may use.
//!
//! A transport moves bytes and knows how to spawn and kill; the sentinel
//! protocol stays in this crate. A backend crate:
//!
//! 1. implements [`Transport`] (parse a target, spawn a shell, kill every
//!    process carrying a marker) and [`ShellProcess`] (write, resize,
//!    signal, and a stream of [`ShellEvent`]s);
//! 2. starts shells with [`startup_argv`] and the environment of the
//!    [`SpawnSpec`], dropping [`STRIP_ENV`];
//! 3. kills by marker with [`kill_matching_script`], run by
//!    [`script_argv`] on the target;
//! 4. registers itself once with [`register_transport!`](crate::register_transport):
//!
//! ```text
//! execkit_core::register_transport! {
//!     scheme: "local",
//!     summary: "a PTY on this host",
//!     example: "local, local:/bin/dash",
//!     connect: connect,        // fn(&str) -> Result<Arc<dyn Transport>, TransportError>
//!     on_this_host: true,      // optional: its shells share this host's files and /proc
//!     shell_in_target: true,   // optional: `local:/bin/dash` names the shell
//! }
//! ```
//!
//! The conformance suite (`testkit`, feature `testkit`) then runs every
//! case of the engine's contract against it.

pub use crate::allow::percent_decode;
pub use crate::error::TransportError;
pub use crate::protocol::{nonce, shell_quote};
pub use crate::registry::{scheme_of, TransportInfo};
pub use crate::shell::{kill_matching_script, script_argv, startup_argv, MARKER_VAR, STRIP_ENV};
pub use crate::transport::{
    file_errno, read_file, write_file, Chunks, ExitStatus, FileTransfer, ShellEvent, ShellProcess,
    Size, SpawnSpec, Transport, FILE_CHUNK,
};
