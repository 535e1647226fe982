//! `execkit.Session` (blocking, the GIL released while it waits) and
//! `execkit.AsyncSession` (awaitables on the module's tokio runtime).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use execkit_core::{InputWait, RunOptions, Size};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use tokio::sync::Notify;

use crate::engine::{self, rt, CancelOnDrop, Inner, JournalArg, Stop, Wait};
use crate::errors::{self, Failure};
use crate::result::PyRunResult;

/// The options of one `run`, checked.
fn run_options(
    timeout: Option<f64>,
    yield_after: Option<f64>,
    input_wait: &str,
) -> PyResult<RunOptions> {
    let mut opts = RunOptions::default();
    opts.timeout = timeout.map(|t| engine::seconds("timeout", t)).transpose()?;
    opts.yield_after = yield_after
        .map(|t| engine::seconds("yield_after", t))
        .transpose()?;
    opts.input_wait = match input_wait {
        "ignore" => InputWait::Ignore,
        "stop" => InputWait::Stop,
        "yield" => InputWait::Yield,
        other => {
            return Err(PyValueError::new_err(format!(
                "input_wait must be \"ignore\", \"stop\" or \"yield\", not {other:?}"
            )))
        }
    };
    Ok(opts)
}

/// `stdin=`: bytes as they are, a str as UTF-8.
fn stdin_bytes(stdin: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<u8>>> {
    let Some(ob) = stdin else { return Ok(None) };
    if ob.is_none() {
        return Ok(None);
    }
    if let Ok(b) = ob.cast::<PyBytes>() {
        return Ok(Some(b.as_bytes().to_vec()));
    }
    if let Ok(s) = ob.cast::<PyString>() {
        return Ok(Some(s.to_cow()?.as_bytes().to_vec()));
    }
    if let Ok(v) = ob.extract::<Vec<u8>>() {
        return Ok(Some(v));
    }
    Err(PyTypeError::new_err("stdin must be bytes, str or None"))
}

fn poll_wait(wait: f64) -> PyResult<std::time::Duration> {
    if wait == 0.0 {
        return Ok(std::time::Duration::ZERO);
    }
    engine::seconds("wait", wait)
}

/// Runs `fut` on the runtime from this thread with the GIL released.
fn block<T: Send>(
    py: Python<'_>,
    fut: impl Future<Output = Result<T, Failure>> + Send,
) -> PyResult<T> {
    py.detach(|| rt().block_on(fut))
        .map_err(|e| e.into_pyerr(py))
}

/// A Python awaitable for `work`, run as a task on the runtime: cancelling
/// the awaiting Python task stops the work (`Stop::Token`), which then
/// interrupts the command it waits on.
fn awaitable<'py, T, F>(
    py: Python<'py>,
    work: impl FnOnce(Stop) -> F,
) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Result<T, Failure>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let cancel = Arc::new(Notify::new());
    let guard = CancelOnDrop(cancel.clone());
    let task = rt().spawn(work(Stop::Token(cancel)));
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        let _guard = guard;
        let done = match task.await {
            Ok(r) => r,
            Err(e) => Err(Failure::Crashed(e.to_string())),
        };
        errors::raise(done)
    })
}

/// The constructor both classes share (the same keyword arguments), as
/// its own `#[pymethods]` block (pyo3's `multiple-pymethods`).
#[rustfmt::skip]
macro_rules! session_constructor {
    ($class:ty) => {
        #[pymethods]
        impl $class {
            /// Checks the arguments; `Session` opens at once, `AsyncSession`
            /// when entered or awaited `open()`.
            #[new]
            #[pyo3(signature = (
                    target = "local".to_string(),
                    *,
                    env = None,
                    cwd = None,
                    shell = None,
                    load_profile = false,
                    output_limit = 30_000,
                    start_timeout = 20.0,
                    size = (24, 80),
                    journal = JournalArg::Default,
                    redact = Vec::new(),
                    console = true,
                    name = None,
                ))]
            #[allow(clippy::too_many_arguments)]
            fn new(
                py: Python<'_>,
                target: String,
                env: Option<BTreeMap<String, String>>,
                cwd: Option<PathBuf>,
                shell: Option<String>,
                load_profile: bool,
                output_limit: usize,
                start_timeout: f64,
                size: (u16, u16),
                journal: JournalArg,
                redact: Vec<String>,
                console: bool,
                name: Option<String>,
            ) -> PyResult<Self> {
                let spec = engine::spec(
                    target,
                    env,
                    cwd,
                    shell,
                    load_profile,
                    output_limit,
                    start_timeout,
                    size,
                    journal,
                    redact,
                    console,
                    name,
                )?;
                Self::create(py, Inner::new(spec))
            }
        }
    };
}

/// What both classes tell without waiting (their own `#[pymethods]`
/// block): the target, the ids, the cwd, whether a command runs, whether
/// the session is closed, and the repr.
macro_rules! session_properties {
    ($class:ty, $name:literal) => {
        #[pymethods]
        impl $class {
            /// The target as given.
            #[getter]
            fn target(&self) -> String {
                self.inner.target().to_string()
            }

            /// The session's short id (as in the journal; empty until opened).
            #[getter]
            fn id(&self) -> String {
                self.inner.info().id
            }

            /// The value of `EXECKIT_SID` every process of the session carries.
            #[getter]
            fn marker(&self) -> String {
                self.inner.info().marker
            }

            /// The shell's working directory after the last command.
            #[getter]
            fn cwd(&self) -> String {
                self.inner.info().cwd
            }

            /// A command is running (it yielded and has not ended).
            #[getter]
            fn running(&self) -> bool {
                self.inner.info().running
            }

            /// The session is not open (not yet, no longer, or its opening
            /// failed).
            #[getter]
            fn closed(&self) -> bool {
                !self.inner.info().open
            }

            fn __repr__(&self) -> String {
                let info = self.inner.info();
                let state = if info.open { "open" } else { "closed" };
                format!(
                    "{}({:?}, id={:?}, cwd={:?}, {state})",
                    $name,
                    self.inner.target(),
                    info.id,
                    info.cwd
                )
            }
        }
    };
}

/// A stateful shell on one target, used from blocking code. See the
/// package documentation.
#[pyclass(frozen, module = "execkit", name = "Session")]
#[derive(Debug)]
pub struct PySession {
    inner: Arc<Inner>,
}

impl PySession {
    fn create(py: Python<'_>, inner: Arc<Inner>) -> PyResult<Self> {
        let opening = inner.clone();
        block(py, async move { opening.open().await })?;
        Ok(PySession { inner })
    }
}

session_constructor!(PySession);
session_properties!(PySession, "Session");

#[pymethods]
impl PySession {
    /// Runs one command in the session's shell and returns its RunResult:
    /// when it finishes, when `timeout` seconds pass (`None`: never; the
    /// command and all it started are killed, `timed_out` is set), or with
    /// `yield_after` as soon as that passes, still running (continue with
    /// `poll`, `send_input`, `interrupt`). `input_wait`: "ignore", "stop"
    /// or "yield" when the command blocks reading the terminal. `stdin`:
    /// bytes (or str) fed to its stdin. On the main thread, Ctrl-C
    /// interrupts the command, then raises KeyboardInterrupt.
    #[pyo3(
        signature = (command, *, timeout = Some(300.0), yield_after = None, input_wait = "ignore", stdin = None),
        text_signature = "(self, /, command, *, timeout=300.0, yield_after=None, input_wait='ignore', stdin=None)"
    )]
    fn run(
        &self,
        py: Python<'_>,
        command: String,
        timeout: Option<f64>,
        yield_after: Option<f64>,
        input_wait: &str,
        stdin: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyRunResult> {
        let opts = run_options(timeout, yield_after, input_wait)?;
        let stdin = stdin_bytes(stdin)?;
        let inner = self.inner.clone();
        let stop = Stop::for_this_thread();
        block(py, async move {
            let what = Wait::Run {
                command,
                stdin,
                opts,
            };
            inner.wait(what, stop).await.map(PyRunResult::from)
        })
    }

    /// Continues a command that is still running for up to `wait` seconds:
    /// what it printed since the last read, and its result once it ended.
    #[pyo3(signature = (wait = 1.0))]
    fn poll(&self, py: Python<'_>, wait: f64) -> PyResult<PyRunResult> {
        let wait = poll_wait(wait)?;
        let inner = self.inner.clone();
        let stop = Stop::for_this_thread();
        block(py, async move {
            inner
                .wait(Wait::Poll(wait), stop)
                .await
                .map(PyRunResult::from)
        })
    }

    /// Types `text` into the running command (include the newline).
    fn send_input(&self, py: Python<'_>, text: String) -> PyResult<()> {
        let inner = self.inner.clone();
        block(py, async move { inner.send_input(text).await })
    }

    /// Interrupts the running command (Ctrl-C; its processes are killed if
    /// they do not stop) and returns its final result.
    fn interrupt(&self, py: Python<'_>) -> PyResult<PyRunResult> {
        let inner = self.inner.clone();
        block(
            py,
            async move { inner.interrupt().await.map(PyRunResult::from) },
        )
    }

    /// Resizes the session's terminal.
    fn resize(&self, py: Python<'_>, rows: u16, cols: u16) -> PyResult<()> {
        if rows == 0 || cols == 0 {
            return Err(PyValueError::new_err("rows and cols must be > 0"));
        }
        let inner = self.inner.clone();
        block(py, async move { inner.resize(Size { rows, cols }).await })
    }

    /// Closes the session: the shell and every process it started are
    /// killed. Closing again does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let inner = self.inner.clone();
        block(py, async move { inner.close().await })
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }
}

/// A stateful shell on one target, used from asyncio code.
#[pyclass(frozen, module = "execkit", name = "AsyncSession")]
#[derive(Debug)]
pub struct PyAsyncSession {
    inner: Arc<Inner>,
}

impl PyAsyncSession {
    fn create(_py: Python<'_>, inner: Arc<Inner>) -> PyResult<Self> {
        Ok(PyAsyncSession { inner })
    }
}

session_constructor!(PyAsyncSession);
session_properties!(PyAsyncSession, "AsyncSession");

#[pymethods]
impl PyAsyncSession {
    /// Opens the session (`async with` does it); returns the session.
    fn open<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let inner = slf.get().inner.clone();
        let me: Py<Self> = slf.unbind();
        awaitable(py, move |_stop| async move {
            inner.open().await?;
            Ok(me)
        })
    }

    fn __aenter__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Self::open(slf)
    }

    #[pyo3(signature = (*_exc))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        _exc: &Bound<'py, pyo3::types::PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        awaitable(py, move |_stop| async move {
            inner.close().await?;
            Ok(false)
        })
    }

    /// Runs one command (see `Session.run`). Cancelling the awaiting task
    /// interrupts the command: nothing it started is left running.
    #[pyo3(
        signature = (command, *, timeout = Some(300.0), yield_after = None, input_wait = "ignore", stdin = None),
        text_signature = "(self, /, command, *, timeout=300.0, yield_after=None, input_wait='ignore', stdin=None)"
    )]
    fn run<'py>(
        &self,
        py: Python<'py>,
        command: String,
        timeout: Option<f64>,
        yield_after: Option<f64>,
        input_wait: &str,
        stdin: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = run_options(timeout, yield_after, input_wait)?;
        let stdin = stdin_bytes(stdin)?;
        let inner = self.inner.clone();
        awaitable(py, move |stop| async move {
            let what = Wait::Run {
                command,
                stdin,
                opts,
            };
            inner.wait(what, stop).await.map(PyRunResult::from)
        })
    }

    /// Continues a running command for up to `wait` seconds (see
    /// `Session.poll`). Cancelling the awaiting task interrupts it.
    #[pyo3(signature = (wait = 1.0))]
    fn poll<'py>(&self, py: Python<'py>, wait: f64) -> PyResult<Bound<'py, PyAny>> {
        let wait = poll_wait(wait)?;
        let inner = self.inner.clone();
        awaitable(py, move |stop| async move {
            inner
                .wait(Wait::Poll(wait), stop)
                .await
                .map(PyRunResult::from)
        })
    }

    /// Types `text` into the running command.
    fn send_input<'py>(&self, py: Python<'py>, text: String) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        awaitable(py, move |_stop| async move { inner.send_input(text).await })
    }

    /// Interrupts the running command and returns its final result.
    fn interrupt<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        awaitable(py, move |_stop| async move {
            inner.interrupt().await.map(PyRunResult::from)
        })
    }

    /// Resizes the session's terminal.
    fn resize<'py>(&self, py: Python<'py>, rows: u16, cols: u16) -> PyResult<Bound<'py, PyAny>> {
        if rows == 0 || cols == 0 {
            return Err(PyValueError::new_err("rows and cols must be > 0"));
        }
        let inner = self.inner.clone();
        awaitable(py, move |_stop| async move {
            inner.resize(Size { rows, cols }).await
        })
    }

    /// Closes the session (see `Session.close`).
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        awaitable(py, move |_stop| async move { inner.close().await })
    }
}
