//! `execkit._execkit`: the Python extension module of the `execkit` wheel.
//!
//! Thin bindings over the engine's public API: `Session` (blocking, the
//! GIL released while a command runs), `AsyncSession` (asyncio, on the
//! module's tokio runtime), `RunResult`, `transports()`, and the whole
//! `execkit` command ([`execkit_cli::run`]) for the wheel's console
//! script. The Python package (`python/execkit/`) re-exports them with the
//! exception classes and type stubs.

mod engine;
mod errors;
mod result;
mod session;

use std::ffi::OsString;
use std::time::Duration;

use pyo3::prelude::*;

// The transports the wheel carries: naming a crate links it.
use execkit_docker as _;
use execkit_local as _;
use execkit_ssh as _;

/// One transport this build carries.
#[pyclass(frozen, get_all, module = "execkit", name = "TransportInfo")]
#[derive(Debug, Clone)]
struct TransportInfo {
    /// URL scheme (`local`, `docker`, `ssh`).
    scheme: String,
    /// What it reaches.
    summary: String,
    /// An example target.
    example: String,
}

#[pymethods]
impl TransportInfo {
    fn __repr__(&self) -> String {
        format!(
            "TransportInfo(scheme={:?}, example={:?})",
            self.scheme, self.example
        )
    }
}

/// The transports this build carries (as `execkit transports` lists them).
#[pyfunction]
fn transports() -> Vec<TransportInfo> {
    execkit_core::transports()
        .into_iter()
        .map(|t| TransportInfo {
            scheme: t.scheme.to_string(),
            summary: t.summary.to_string(),
            example: t.example.to_string(),
        })
        .collect()
}

/// Runs the `execkit` command with `argv` (program name first) and returns
/// its exit status: the console script's body.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<OsString>) -> u8 {
    // The process is the command now: Ctrl-C ends it as it ends the
    // binary, not by way of Python's handler (which would only run once
    // the command returned).
    // SAFETY: restoring the default disposition of SIGINT is async-signal
    // safe and affects no Rust state.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
    py.detach(|| execkit_cli::exit_status(execkit_cli::run(argv)))
}

/// Closes every session still open (the interpreter is exiting), waiting
/// at most `limit` seconds.
#[pyfunction]
#[pyo3(signature = (limit = 10.0))]
fn close_all(py: Python<'_>, limit: f64) -> PyResult<()> {
    let limit = engine::seconds("limit", limit)?;
    py.detach(|| engine::rt().block_on(engine::close_all(limit)));
    Ok(())
}

#[pymodule]
fn _execkit(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Async calls run on the same runtime as blocking ones.
    let _ = pyo3_async_runtimes::tokio::init_with_runtime(engine::rt());
    m.add_class::<session::PySession>()?;
    m.add_class::<session::PyAsyncSession>()?;
    m.add_class::<result::PyRunResult>()?;
    m.add_class::<TransportInfo>()?;
    m.add_function(wrap_pyfunction!(transports, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(close_all, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    let _ = Duration::ZERO;
    Ok(())
}
