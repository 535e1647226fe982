//! The `execkit serve` wire protocol: one JSON object per line each way
//! (documented in docs/protocol.md).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest request line accepted (a 1 MB command, quoted, fits easily).
pub const MAX_REQUEST: usize = 8 * 1024 * 1024;

/// Longest duration a request may carry (`timeout_secs`, `yield_after_secs`,
/// `wait_secs`): a year.
pub const MAX_SECS: f64 = 365.0 * 86_400.0;

/// A request's number of seconds as a duration: `None` when absent or 0;
/// an error naming the field for anything negative, not finite, or over
/// [`MAX_SECS`] (a huge value must be a refused request, not a panic).
pub fn seconds(field: &str, v: Option<f64>) -> Result<Option<std::time::Duration>, String> {
    match v {
        None => Ok(None),
        Some(s) if s.is_finite() && (0.0..=MAX_SECS).contains(&s) => {
            Ok((s > 0.0).then(|| std::time::Duration::from_secs_f64(s)))
        }
        Some(s) => Err(format!(
            "invalid {field}: {s} (a number of seconds from 0 to {MAX_SECS})"
        )),
    }
}

/// A request from a client.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness and version.
    Ping,
    /// Opens a named session.
    Open(execkit_core::host::OpenRequest),
    /// Runs a command.
    Run {
        session: String,
        command: String,
        #[serde(default)]
        timeout_secs: Option<f64>,
        #[serde(default)]
        yield_after_secs: Option<f64>,
    },
    /// New output and, once finished, the result.
    Poll {
        session: String,
        #[serde(default)]
        wait_secs: Option<f64>,
    },
    /// Types text into the running command.
    Input { session: String, text: String },
    /// Ctrl-C to the running command.
    Interrupt { session: String },
    /// Closes a session.
    Close { session: String },
    /// Lists sessions.
    List,
    /// Turns this connection into a read-only console stream.
    Watch,
    /// Turns this connection into an inbound console stream: every later
    /// line is a console event that the server mirrors to its watchers
    /// (how `execkit exec` and `execkit mcp` show up in `execkit watch`).
    Publish,
    /// Turns this connection into a person's view of one session
    /// (`execkit attach`): its screen, then its updates; the client's
    /// later lines are keys (`{"keys": [bytes]}`) unless `read_only`.
    Attach {
        session: String,
        #[serde(default)]
        read_only: bool,
    },
}

/// A request with the client's correlation id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Value,
    /// The request.
    #[serde(flatten)]
    pub request: Request,
}

/// A response line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// The request's id.
    #[serde(default)]
    pub id: Value,
    /// Whether it worked.
    pub ok: bool,
    /// The result when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// One line saying what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the target failed: which failure (`ErrorKind::as_str` of
    /// execkit-core: `invalid_target`, `host_key_mismatch`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// `${XDG_RUNTIME_DIR:-/tmp/execkit-$UID}/execkit.sock`.
pub fn default_socket() -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/execkit-{}", nix_uid())));
    dir.join("execkit.sock")
}

/// This process's effective uid.
pub fn nix_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_validated() {
        assert_eq!(seconds("t", None), Ok(None));
        assert_eq!(seconds("t", Some(0.0)), Ok(None));
        assert_eq!(
            seconds("t", Some(1.5)),
            Ok(Some(std::time::Duration::from_millis(1500)))
        );
        assert!(seconds("t", Some(MAX_SECS)).unwrap().is_some());
        for bad in [1e300, 99999999999999999999.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = seconds("timeout_secs", Some(bad)).unwrap_err();
            assert!(e.contains("invalid timeout_secs"), "{e}");
        }
    }
}
