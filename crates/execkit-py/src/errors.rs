//! Engine errors as Python exceptions. The classes live in
//! `execkit/_errors.py` (multiple inheritance: `InvalidTarget` is both an
//! `execkit.Error` and a `ValueError`); here each engine error picks its
//! class by the engine's code.

use execkit_core::{ErrorKind, SessionError, TransportError};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Why a call failed, carried without the GIL (from a runtime thread)
/// until it is raised.
#[derive(Debug)]
pub enum Failure {
    /// The engine refused or failed.
    Session(SessionError),
    /// A Python error to raise as it is (a `KeyboardInterrupt` that
    /// interrupted the command).
    Python(PyErr),
    /// The task running the call ended without an answer (a panic).
    Crashed(String),
    /// The awaiting task was cancelled (nobody receives this).
    Cancelled,
    /// The journal cannot be created or opened.
    Journal(String),
    /// An `AsyncSession` used before it was opened.
    NotOpened,
}

impl From<SessionError> for Failure {
    fn from(e: SessionError) -> Self {
        Failure::Session(e)
    }
}

impl From<TransportError> for Failure {
    fn from(e: TransportError) -> Self {
        Failure::Session(SessionError::Transport(e))
    }
}

impl Failure {
    /// The Python exception for this failure.
    pub fn into_pyerr(self, py: Python<'_>) -> PyErr {
        match self {
            Failure::Session(e) => session_error(py, &e),
            Failure::Python(e) => e,
            Failure::Crashed(m) => PyRuntimeError::new_err(format!("execkit: internal error: {m}")),
            Failure::Cancelled => make(py, "Error", "cancelled", Some("cancelled"), None),
            Failure::Journal(m) => make(py, "Error", &m, Some("journal"), None),
            Failure::NotOpened => make(
                py,
                "SessionClosed",
                "the session is not open yet: use `async with AsyncSession(...)` or `await session.open()`",
                Some("not_open"),
                None,
            ),
        }
    }
}

/// Converts on the way out of a `Python::attach` (async results).
pub fn raise<T>(r: Result<T, Failure>) -> PyResult<T> {
    r.map_err(|e| Python::attach(|py| e.into_pyerr(py)))
}

/// The `execkit._errors` class an engine error maps to.
fn class_of(e: &SessionError) -> &'static str {
    match e {
        SessionError::Transport(t) => match t.kind() {
            ErrorKind::InvalidTarget => "InvalidTarget",
            ErrorKind::HostKeyMismatch | ErrorKind::HostKeyUnknown => "HostKeyRefused",
            ErrorKind::AuthRefused => "AuthenticationFailed",
            ErrorKind::Lost => "SessionLost",
            ErrorKind::Spawn => "ShellStartFailed",
            _ => "TargetUnreachable",
        },
        SessionError::Command(_) => "InvalidCommand",
        SessionError::StartTimeout { .. } | SessionError::StartFailed { .. } => "ShellStartFailed",
        SessionError::InvalidConfig(_) => "InvalidConfig",
        SessionError::Closed => "SessionClosed",
        SessionError::Busy => "SessionBusy",
        SessionError::Idle => "NoCommandRunning",
        _ => "Error",
    }
}

/// A Python exception for an engine error: its class by kind, the engine's
/// message, `code` set to the engine's code.
pub fn session_error(py: Python<'_>, e: &SessionError) -> PyErr {
    make(py, class_of(e), &e.to_string(), Some(e.code()), None)
}

/// An instance of `execkit._errors.<class>(message, …)` as a `PyErr`;
/// `result` is set for `CommandFailed` and its subclasses.
pub fn make(
    py: Python<'_>,
    class: &str,
    message: &str,
    code: Option<&str>,
    result: Option<Bound<'_, PyAny>>,
) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let cls = py.import("execkit._errors")?.getattr(class)?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("code", code)?;
        if let Some(r) = result {
            kwargs.set_item("result", r)?;
        }
        let obj = cls.call((message,), Some(&kwargs))?;
        Ok(PyErr::from_value(obj))
    };
    build().unwrap_or_else(|e| e)
}
