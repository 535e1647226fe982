//! `execkit.RunResult`: one command's structured result, as the engine
//! reports it.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors;

/// The structured result of one command (see the engine's `RunResult`).
#[pyclass(frozen, get_all, module = "execkit", name = "RunResult")]
#[derive(Debug, Clone)]
pub struct PyRunResult {
    /// The command as given.
    pub command: String,
    /// `$?`; `None` when the command did not finish (timed out, killed,
    /// lost, still running).
    pub exit_code: Option<i32>,
    /// stdout and stderr as the terminal saw them: ANSI stripped, valid
    /// UTF-8, capped head + tail, final newline trimmed. For a command still
    /// running, what it printed since the last read.
    pub output: String,
    /// Working directory of the shell afterwards.
    pub cwd: String,
    /// The hard timeout fired (the command's processes were killed).
    pub timed_out: bool,
    /// The output was capped; the full text is at `output_path`.
    pub truncated: bool,
    /// Spool file with the full output, when it was capped.
    pub output_path: Option<String>,
    /// Wall time of the command in milliseconds.
    pub duration_ms: u64,
    /// The shell died and a fresh one replaced it (state reset).
    pub restarted: bool,
    /// The target went away.
    pub session_lost: bool,
    /// What went wrong besides the command failing, if anything.
    pub error: Option<String>,
    /// The command is still running (it yielded): continue with `poll`,
    /// `send_input` or `interrupt`.
    pub running: bool,
    /// The command was found blocked reading the terminal.
    pub waiting_for_input: bool,
}

impl From<execkit_core::RunResult> for PyRunResult {
    fn from(r: execkit_core::RunResult) -> Self {
        PyRunResult {
            command: r.command,
            exit_code: r.exit_code,
            output: r.output,
            cwd: r.cwd,
            timed_out: r.timed_out,
            truncated: r.truncated,
            output_path: r.output_path.map(|p| p.display().to_string()),
            duration_ms: r.duration_ms,
            restarted: r.restarted,
            session_lost: r.session_lost,
            error: r.error,
            running: r.running,
            waiting_for_input: r.waiting_for_input,
        }
    }
}

#[pymethods]
impl PyRunResult {
    /// True when the command finished with exit code 0.
    #[getter]
    fn ok(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// Returns this result if the command finished with exit code 0;
    /// otherwise raises `CommandTimedOut`, `SessionLost` or
    /// `CommandFailed` (with `.result` set to this result).
    fn check(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        let py = slf.py();
        let r = slf.get();
        if r.exit_code == Some(0) {
            return Ok(slf);
        }
        let (class, code, what) = if r.timed_out {
            ("CommandTimedOut", "timed_out", "timed out".to_string())
        } else if r.session_lost {
            (
                "SessionLost",
                "lost",
                format!("lost its target: {}", r.error.as_deref().unwrap_or("")),
            )
        } else if r.running {
            ("CommandFailed", "running", "is still running".to_string())
        } else {
            let why = match (r.exit_code, r.error.as_deref()) {
                (Some(c), _) => format!("exited with {c}"),
                (None, Some(e)) => format!("did not finish: {e}"),
                (None, None) => "did not finish".to_string(),
            };
            ("CommandFailed", "failed", why)
        };
        let message = format!("`{}` {what}", r.command);
        if class == "SessionLost" {
            return Err(errors::make(py, class, &message, Some(code), None));
        }
        Err(errors::make(
            py,
            class,
            &message,
            Some(code),
            Some(slf.into_any()),
        ))
    }

    /// The result as a plain dict (the same keys as `execkit exec --json`).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("command", &self.command)?;
        d.set_item("exit_code", self.exit_code)?;
        d.set_item("output", &self.output)?;
        d.set_item("cwd", &self.cwd)?;
        d.set_item("timed_out", self.timed_out)?;
        d.set_item("truncated", self.truncated)?;
        d.set_item("output_path", &self.output_path)?;
        d.set_item("duration_ms", self.duration_ms)?;
        d.set_item("restarted", self.restarted)?;
        d.set_item("session_lost", self.session_lost)?;
        d.set_item("error", &self.error)?;
        d.set_item("running", self.running)?;
        d.set_item("waiting_for_input", self.waiting_for_input)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        let mut out = self.output.clone();
        if out.chars().count() > 60 {
            out = out.chars().take(57).collect::<String>() + "...";
        }
        let status = if self.running {
            "running".to_string()
        } else if self.timed_out {
            "timed_out".to_string()
        } else {
            match self.exit_code {
                Some(c) => format!("exit_code={c}"),
                None => "exit_code=None".to_string(),
            }
        };
        format!(
            "RunResult(command={:?}, {status}, output={:?}, cwd={:?}, duration_ms={})",
            self.command, out, self.cwd, self.duration_ms
        )
    }
}
