//! A shell in a container: an exec with a TTY whose raw stream we own.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use execkit_core::raw::shell_quote;
use execkit_core::{
    raw::{self, ExitStatus, ShellEvent, ShellProcess, SpawnSpec},
    ErrorKind, Size, TransportError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::engine::{ContainerState, Engine, ExecState, Killed, ReadHalf, WriteHalf};

/// How long `Drop` waits for its cleanup exec before leaving it to run on.
const DROP_WAIT: Duration = Duration::from_secs(10);
/// How long the cleanup of a shell dropped in a paused container waits
/// for the unpause (a thread blocked on the engine's event stream).
const UNPAUSE_WAIT: Duration = Duration::from_secs(24 * 3600);
/// How often a read blocked on a quiet terminal asks whether the shell runs.
const EXIT_POLL: Duration = Duration::from_millis(1000);
/// After the shell exited: the stream counts as drained once quiet this long…
const DRAIN_QUIET: Duration = Duration::from_millis(100);
/// …or this long after the exit, whatever still comes.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// How long a killed-looking shell end waits for the container's state to
/// show a stop (a `docker stop` kills the shell a moment before it shows).
const STOP_SETTLE: Duration = Duration::from_millis(1000);
/// How long a container found stopped after the shell died may take to be
/// running again before the end counts as a stop rather than a restart
/// (`docker restart` is a stop, then a start: ~0.5 s from one to the other
/// on an idle engine).
const RESTART_WAIT: Duration = Duration::from_secs(3);

/// A live shell in a container.
pub(crate) struct DockerShell {
    engine: Arc<Engine>,
    target: String,
    /// Name (or id) as the user wrote it, for messages.
    name: String,
    /// Full container id (pinned: a new container with the same name is
    /// not this session's).
    container_id: String,
    /// When the container started (its `StartedAt`) as the shell did: a
    /// different one later means the container restarted under the shell.
    container_started: String,
    exec_id: String,
    marker_entry: String,
    /// How scripts run out of band: with the session's own shell (a
    /// container may have no `/bin/sh`), see `raw::script_argv`.
    script_sh: Vec<String>,
    reader: tokio::sync::Mutex<Reader>,
    writer: tokio::sync::Mutex<WriteHalf>,
    /// Set once the stream ended and we know why; returned from then on.
    end: Mutex<Option<ShellEvent>>,
    /// The marker cleanup already ran (terminate) or was handed to Drop.
    cleaned: AtomicBool,
}

struct Reader {
    stream: ReadHalf,
    pending: Vec<u8>,
    eof: bool,
    /// When to next ask the engine whether the shell still runs.
    next_poll: Instant,
    /// When the engine said the shell has exited.
    exited_at: Option<Instant>,
    /// Finding out why the stream ended, once it did. Kept here, not in
    /// the read's future: it takes seconds (a stop must stay a stop for
    /// [`RESTART_WAIT`]), and the engine gives up on a read every quiet
    /// spell — restarted each time, it would never finish.
    ending: Option<Pin<Box<dyn Future<Output = ShellEvent> + Send>>>,
}

/// What finding out why a shell's stream ended needs, owned (it outlives
/// a cancelled read).
struct EndProbe {
    engine: Arc<Engine>,
    name: String,
    container_id: String,
    container_started: String,
    exec_id: String,
}

impl EndProbe {
    /// The stream ended: find out whether the shell exited (and how), the
    /// container restarted under it, or the container (or the engine) went
    /// away.
    async fn why_ended(self) -> ShellEvent {
        // The engine may record the exit a moment after the stream closed.
        let mut exec = self.engine.exec_state(&self.exec_id).await;
        for _ in 0..20 {
            match &exec {
                Ok(ExecState { running: true, .. }) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    exec = self.engine.exec_state(&self.exec_id).await;
                }
                _ => break,
            }
        }
        // Killed-looking ends may be the container stopping: give its state
        // a moment to catch up before calling it a dead shell.
        let suspicious = !matches!(
            exec,
            Ok(ExecState {
                running: false,
                exit_code: Some(0..=128)
            })
        );
        let settle = Instant::now()
            + if suspicious {
                STOP_SETTLE
            } else {
                Duration::ZERO
            };
        // Found stopped: since when (a restart starts it again soon).
        let mut stopped_at: Option<Instant> = None;
        loop {
            match self.engine.container_state(&self.container_id).await {
                Ok(
                    ContainerState::Running { started, .. }
                    | ContainerState::Paused { started, .. },
                ) => {
                    // Started again since the shell was: a restart killed
                    // everything in it (the engine reports the shell as
                    // killed by signal 9, which would blame the shell).
                    if started != self.container_started {
                        return ShellEvent::TargetRestarted(format!(
                            "container {} restarted (everything running in it was killed)",
                            self.name
                        ));
                    }
                    if Instant::now() >= settle {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(ContainerState::Missing) => {
                    return ShellEvent::Lost(format!(
                        "container {} is not running (it was removed)",
                        self.name
                    ))
                }
                Ok(ContainerState::NotRunning { status }) => {
                    // `docker restart` is a stop, then a start: a stop is
                    // only final once it stays stopped a moment.
                    let since = *stopped_at.get_or_insert_with(Instant::now);
                    if since.elapsed() >= RESTART_WAIT {
                        return ShellEvent::Lost(format!(
                            "container {} is not running ({status})",
                            self.name
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return ShellEvent::Lost(format!("lost the container {}: {e}", self.name))
                }
            }
        }
        exec_end(&self.name, exec)
    }
}

/// What the exec's state says of a shell whose container is still there
/// and was not restarted.
fn exec_end(name: &str, exec: Result<ExecState, BollardError>) -> ShellEvent {
    match exec {
        Ok(ExecState {
            running: false,
            exit_code: Some(c),
        }) => {
            let c = i32::try_from(c).unwrap_or(-1);
            // The engine reports a signal death as 128 + signal.
            if (129..=128 + 31).contains(&c) {
                ShellEvent::Exited(ExitStatus::Signal(c - 128))
            } else {
                ShellEvent::Exited(ExitStatus::Code(c))
            }
        }
        Ok(ExecState { running: false, .. }) => ShellEvent::Exited(ExitStatus::Unknown),
        Ok(ExecState { running: true, .. }) => ShellEvent::Lost(format!(
            "the connection to the shell in container {} closed",
            name
        )),
        Err(e) => ShellEvent::Lost(format!(
            "lost the shell in container {}: {}",
            name,
            crate::engine::one_line(&e)
        )),
    }
}

impl std::fmt::Debug for DockerShell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerShell")
            .field("target", &self.target)
            .field("container", &self.container_id)
            .field("exec", &self.exec_id)
            .finish_non_exhaustive()
    }
}

/// `argv` as one line of shell source.
fn quote_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The exec's command: the requested shell, or bash if the container has
/// it, else `/bin/sh`, decided inside the container by one `sh -c` that
/// also drops inherited rc hooks from the container's environment.
fn command(spec: &SpawnSpec) -> Vec<String> {
    if let Some(sh) = &spec.shell {
        return raw::startup_argv(sh, spec.load_profile);
    }
    let strip: Vec<&str> = raw::STRIP_ENV
        .iter()
        .copied()
        .filter(|k| !spec.env.iter().any(|(sk, _)| sk == k))
        .collect();
    let bash = raw::startup_argv("/bin/bash", spec.load_profile);
    let sh = raw::startup_argv("/bin/sh", spec.load_profile);
    let script = format!(
        "unset {} 2>/dev/null; if [ -x /bin/bash ]; then exec {}; fi; exec {}",
        strip.join(" "),
        quote_argv(&bash),
        quote_argv(&sh)
    );
    vec!["/bin/sh".into(), "-c".into(), script]
}

/// The error for an exec the engine would not create: a 404 is a removed
/// container, a 409 one that stopped or is paused.
pub(crate) fn create_exec_error(target: &str, name: &str, e: BollardError) -> TransportError {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404, ..
        } => TransportError::unreachable(
            target,
            ErrorKind::NotFound,
            format!("container {name} is not running (it was removed)"),
        ),
        BollardError::DockerResponseServerError {
            status_code: 409,
            message,
        } => TransportError::unreachable(
            target,
            crate::engine::conflict_kind(&message),
            format!("container {name} is not running ({})", message.trim()),
        ),
        e => TransportError::unreachable(
            target,
            crate::engine::chain_kind(&e),
            format!(
                "creating the exec in container {name}: {}",
                crate::engine::one_line(&e)
            ),
        )
        .with_source(e),
    }
}

impl DockerShell {
    pub(crate) async fn spawn(
        engine: Arc<Engine>,
        target: &str,
        name: &str,
        container_id: String,
        container_started: String,
        spec: &SpawnSpec,
    ) -> Result<DockerShell, TransportError> {
        let spawn_err = |reason: String| TransportError::Spawn {
            target: target.to_string(),
            reason,
        };
        let mut env = Vec::with_capacity(spec.env.len());
        for (k, v) in &spec.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(spawn_err(format!("invalid environment variable `{k}`")));
            }
            env.push(format!("{k}={v}"));
        }
        let cmd = command(spec);
        if cmd.iter().any(|a| a.contains('\0')) {
            return Err(spawn_err("the shell path contains a NUL byte".into()));
        }
        let working_dir = match &spec.cwd {
            None => None,
            Some(p) => Some(
                p.to_str()
                    .filter(|s| s.starts_with('/') && !s.contains('\0'))
                    .ok_or_else(|| {
                        spawn_err(format!(
                            "the working directory {} must be an absolute UTF-8 path",
                            p.display()
                        ))
                    })?
                    .to_string(),
            ),
        };
        let exec_id = match engine
            .create_exec(&container_id, cmd, env, true, working_dir, true)
            .await
        {
            Ok(id) => id,
            Err(e) => return Err(create_exec_error(target, name, e)),
        };
        let att = engine.start_raw(&exec_id, true).await?;
        let shell = DockerShell {
            engine,
            target: target.to_string(),
            name: name.to_string(),
            container_id,
            container_started,
            exec_id,
            marker_entry: spec.marker_entry(),
            script_sh: raw::script_argv(spec.shell.as_deref()),
            reader: tokio::sync::Mutex::new(Reader {
                stream: att.read,
                pending: att.initial,
                eof: false,
                next_poll: Instant::now() + EXIT_POLL,
                exited_at: None,
                ending: None,
            }),
            writer: tokio::sync::Mutex::new(att.write),
            end: Mutex::new(None),
            cleaned: AtomicBool::new(false),
        };
        // The exec only has a terminal once started; a failure here (the
        // shell already gone) shows up on the stream.
        if let Err(e) = shell.engine.resize(&shell.exec_id, spec.size).await {
            tracing::debug!("initial resize failed: {e}");
        }
        Ok(shell)
    }

    fn ended(&self) -> Option<ShellEvent> {
        self.end.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_end(&self, ev: ShellEvent) -> ShellEvent {
        let mut end = self.end.lock().unwrap_or_else(|e| e.into_inner());
        end.get_or_insert(ev).clone()
    }

    /// Runs the marker cleanup on a thread of its own (usable from `Drop`,
    /// in or out of a runtime) and waits a bounded time for it. In a paused
    /// container the first attempt cannot run: the caller is released and
    /// the thread waits for the unpause, then kills.
    fn cleanup_detached(&self) {
        let engine = self.engine.clone();
        let id = self.container_id.clone();
        let name = self.name.clone();
        let entry = self.marker_entry.clone();
        let sh = self.script_sh.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("execkit-docker-cleanup".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match rt {
                    Ok(rt) => rt.block_on(async {
                        let deadline = Instant::now() + UNPAUSE_WAIT;
                        loop {
                            match engine.try_kill_matching(&id, &name, &sh, &entry).await {
                                Ok(Killed::Done) => break,
                                Ok(Killed::Paused) => {
                                    let _ = tx.send(());
                                    tracing::debug!(
                                        "container {name} is paused: cleanup waits for the unpause"
                                    );
                                    match engine.wait_unpaused(&id, deadline).await {
                                        Ok(true) => {
                                            tokio::time::sleep(Duration::from_millis(100)).await
                                        }
                                        Ok(false) => {
                                            tracing::warn!("container {name} stayed paused; its session processes were not killed");
                                            break;
                                        }
                                        Err(e) => {
                                            tracing::warn!("waiting for container {name} to be unpaused: {e}");
                                            break;
                                        }
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(
                                        "cleanup of a dropped shell in container {name}: {e}"
                                    );
                                    break;
                                }
                            }
                        }
                    }),
                    Err(e) => tracing::warn!("cleanup of a dropped shell: no runtime: {e}"),
                }
                let _ = tx.send(());
            });
        if spawned.is_ok() {
            let _ = rx.recv_timeout(DROP_WAIT);
        }
    }
}

#[async_trait]
impl ShellProcess for DockerShell {
    async fn write(&self, data: &[u8]) -> Result<(), TransportError> {
        if let Some(ev) = self.ended() {
            return Err(TransportError::Lost(match ev {
                ShellEvent::Lost(m) => m,
                _ => format!("the shell in container {} has ended", self.name),
            }));
        }
        let mut w = self.writer.lock().await;
        let res = async {
            w.write_all(data).await?;
            w.flush().await
        }
        .await;
        res.map_err(|e| {
            TransportError::Lost(format!(
                "writing to the shell in container {} failed: {e}",
                self.name
            ))
        })
    }

    async fn read(&self) -> ShellEvent {
        if let Some(ev) = self.ended() {
            return ev;
        }
        let mut r = self.reader.lock().await;
        if let Some(ev) = self.ended() {
            return ev;
        }
        if !r.pending.is_empty() {
            return ShellEvent::Output(std::mem::take(&mut r.pending));
        }
        let mut buf = vec![0u8; 32 * 1024];
        while !r.eof {
            // Once the shell is known dead, only what is already on its way
            // is read; a background job may hold the terminal open forever.
            let wait_until = match r.exited_at {
                Some(t) if t.elapsed() > DRAIN_LIMIT => break,
                Some(_) => Instant::now() + DRAIN_QUIET,
                None => r.next_poll,
            };
            // `read` on a socket is cancel-safe: nothing is lost if this
            // future is dropped before it completes.
            let got = tokio::select! {
                res = r.stream.read(&mut buf) => Some(res),
                _ = tokio::time::sleep_until(wait_until) => None,
            };
            match got {
                Some(Ok(n)) if n > 0 => {
                    buf.truncate(n);
                    return ShellEvent::Output(buf);
                }
                Some(Ok(_)) => r.eof = true,
                Some(Err(e)) => {
                    tracing::debug!("exec stream of {} failed: {e}", self.name);
                    r.eof = true;
                }
                None if r.exited_at.is_some() => break,
                None => {
                    // The terminal can outlive the shell (a background job
                    // holds it): ask the engine whether the shell still runs.
                    r.next_poll = Instant::now() + EXIT_POLL;
                    match self.engine.exec_state(&self.exec_id).await {
                        Ok(ExecState { running: true, .. }) => {}
                        _ => r.exited_at = Some(Instant::now()),
                    }
                }
            }
        }
        let probe = EndProbe {
            engine: self.engine.clone(),
            name: self.name.clone(),
            container_id: self.container_id.clone(),
            container_started: self.container_started.clone(),
            exec_id: self.exec_id.clone(),
        };
        let ending = r.ending.get_or_insert_with(|| Box::pin(probe.why_ended()));
        let ev = ending.as_mut().await;
        self.set_end(ev)
    }

    async fn resize(&self, size: Size) -> Result<(), TransportError> {
        self.engine.resize(&self.exec_id, size).await
    }

    async fn kill_matching(&self, entry: &str) -> Result<(), TransportError> {
        self.engine
            .kill_matching(&self.container_id, &self.name, &self.script_sh, entry)
            .await
    }

    async fn run_script(&self, script: &str) -> Option<Result<String, TransportError>> {
        Some(
            self.engine
                .run_script(&self.container_id, &self.name, &self.script_sh, script)
                .await,
        )
    }

    async fn suspended(&self) -> Option<String> {
        match self.engine.container_state(&self.container_id).await {
            Ok(ContainerState::Paused { .. }) => Some(format!(
                "container {} is paused (docker unpause {0})",
                self.name
            )),
            _ => None,
        }
    }

    async fn terminate(&self) -> Result<(), TransportError> {
        if !self.cleaned.swap(true, Ordering::SeqCst) {
            if let Err(e) = self
                .engine
                .kill_matching(
                    &self.container_id,
                    &self.name,
                    &self.script_sh,
                    &self.marker_entry,
                )
                .await
            {
                // Leave it to Drop to try once more (after the unpause, if
                // the container is paused).
                self.cleaned.store(false, Ordering::SeqCst);
                return Err(e);
            }
        }
        let _ = self.writer.lock().await.shutdown().await;
        self.set_end(ShellEvent::Exited(ExitStatus::Signal(9)));
        Ok(())
    }
}

impl Drop for DockerShell {
    fn drop(&mut self) {
        // Dropping the attach does not stop anything in the container.
        if !self.cleaned.swap(true, Ordering::SeqCst) {
            self.cleanup_detached();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_prefers_bash_and_keeps_the_marker() {
        let spec = SpawnSpec::new("abc");
        let cmd = command(&spec);
        assert_eq!(cmd[..2], ["/bin/sh", "-c"]);
        assert!(cmd[2].contains("[ -x /bin/bash ]"), "{}", cmd[2]);
        assert!(cmd[2].contains("unset ENV BASH_ENV"), "{}", cmd[2]);
        assert!(!cmd[2].contains("EXECKIT_SID"), "{}", cmd[2]);
        let cmd = command(&spec.shell(Some("/bin/ash".into())));
        assert_eq!(cmd, ["/bin/ash", "-i"]);
    }
}
