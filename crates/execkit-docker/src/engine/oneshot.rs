//! One-shot execs in the container (the marker kill of a cleanup, a
//! script run out of band) and waiting for a paused container to go on.

use std::io;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use execkit_core::{ErrorKind, TransportError};
use tokio::io::AsyncReadExt;

use super::{ContainerState, Engine, ExecState};

/// How long a marker cleanup may run in the container (a loaded engine
/// with a hundred sessions closing at once is slow to start execs).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);
/// While waiting for an unpause on the event stream, how often the
/// container's state is checked again anyway.
const UNPAUSE_RECHECK: Duration = Duration::from_secs(30);

impl Engine {
    /// Kills every process in the container whose environment holds
    /// exactly `entry`, by a one-shot exec of the portable marker-kill
    /// script; waits until it finished. A container that stopped or went
    /// away runs nothing, so that counts as done; a paused one is an error
    /// ([`paused_error`]): its processes live on, frozen.
    pub async fn kill_matching(
        &self,
        container_id: &str,
        name: &str,
        sh: &[String],
        entry: &str,
    ) -> Result<(), TransportError> {
        match self
            .try_kill_matching(container_id, name, sh, entry)
            .await?
        {
            Killed::Done => Ok(()),
            Killed::Paused => Err(paused_error(&self.target, name)),
        }
    }

    /// [`Engine::kill_matching`], telling a paused container apart.
    pub async fn try_kill_matching(
        &self,
        container_id: &str,
        name: &str,
        sh: &[String],
        entry: &str,
    ) -> Result<Killed, TransportError> {
        let script = execkit_core::raw::kill_matching_script(entry);
        let what = format!("marker cleanup in container {name}");
        Ok(self.oneshot(container_id, &what, sh, &script).await?.0)
    }

    /// Runs `script` with `/bin/sh` in the container, out of band, and
    /// returns its output (at most 64 KiB). A paused container is an error.
    pub async fn run_script(
        &self,
        container_id: &str,
        name: &str,
        sh: &[String],
        script: &str,
    ) -> Result<String, TransportError> {
        let what = format!("a script in container {name}");
        match self.oneshot(container_id, &what, sh, script).await? {
            (Killed::Done, out) => Ok(String::from_utf8_lossy(&out).into_owned()),
            (Killed::Paused, _) => Err(paused_error(&self.target, name)),
        }
    }

    /// A one-shot `SH… SCRIPT` exec (`sh`: e.g. `/bin/sh -c`, see
    /// `shell::script_argv`): waits until it finished and returns its
    /// output (bounded). A container that stopped or went away runs
    /// nothing, which counts as done; a paused one is told apart.
    async fn oneshot(
        &self,
        container_id: &str,
        what: &str,
        sh: &[String],
        script: &str,
    ) -> Result<(Killed, Vec<u8>), TransportError> {
        const MAX_OUTPUT: usize = 64 * 1024;
        let mut cmd = sh.to_vec();
        cmd.push(script.to_string());
        let exec_id = match self
            .create_exec(container_id, cmd, Vec::new(), false, None, false)
            .await
        {
            Ok(id) => id,
            Err(BollardError::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => return Ok((self.why_no_exec(container_id).await?, Vec::new())),
            Err(e) => return Err(self.error(what, e)),
        };
        let run = async {
            let mut att = self.start_raw(&exec_id, false).await?;
            // The stream ends when the script does. Without a TTY it is
            // multiplexed: 8-byte frame headers, kept out of the output.
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match att.read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) if raw.len() < MAX_OUTPUT + 8 * 1024 => raw.extend_from_slice(&buf[..n]),
                    Ok(_) => {}
                }
            }
            Ok::<_, TransportError>(demux_stdout(&raw, MAX_OUTPUT))
        };
        let failed = |why: String| TransportError::io(what.to_string(), io::Error::other(why));
        let output = match tokio::time::timeout(CLEANUP_TIMEOUT, run).await {
            Err(_) => {
                return Err(failed(format!(
                    "did not finish within {} s",
                    CLEANUP_TIMEOUT.as_secs()
                )))
            }
            // The engine's 409 on start: the container stopped or paused.
            Ok(Err(e)) if matches!(e.kind(), ErrorKind::NotRunning | ErrorKind::Paused) => {
                return Ok((self.why_no_exec(container_id).await?, Vec::new()))
            }
            Ok(r) => r?,
        };
        // The stream can end a moment before the engine records the exit.
        for _ in 0..50 {
            match self.exec_state(&exec_id).await {
                Ok(ExecState {
                    running: false,
                    exit_code,
                }) => {
                    return match exit_code {
                        Some(0) | None => Ok((Killed::Done, output)),
                        Some(c) => Err(failed(format!("the script exited with code {c}"))),
                    }
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Ok((Killed::Done, output)),
                Err(e) => return Err(self.error(what, e)),
            }
        }
        Ok((Killed::Done, output))
    }

    /// The engine refused an exec (404/409): a stopped or removed
    /// container runs nothing, so that counts as done; a paused one does not.
    async fn why_no_exec(&self, container_id: &str) -> Result<Killed, TransportError> {
        match self.container_state(container_id).await? {
            ContainerState::Paused { .. } => Ok(Killed::Paused),
            _ => Ok(Killed::Done),
        }
    }

    /// Waits until the container is no longer paused (unpaused, stopped or
    /// removed) or `deadline` passes, by following the engine's event
    /// stream for it; the state is checked again every
    /// [`UNPAUSE_RECHECK`] in case an event was missed (a remote engine's
    /// clock off by more than the replay margin). Returns whether it left
    /// the paused state.
    pub async fn wait_unpaused(
        &self,
        container_id: &str,
        deadline: tokio::time::Instant,
    ) -> Result<bool, TransportError> {
        if !container_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.spawn_err("a container id is not hexadecimal"));
        }
        loop {
            // Events since a moment before the state check are replayed, so
            // an unpause between the check and the subscription counts.
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .saturating_sub(1);
            if !matches!(
                self.container_state(container_id).await?,
                ContainerState::Paused { .. }
            ) {
                return Ok(true);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let until = deadline.min(now + UNPAUSE_RECHECK);
            match tokio::time::timeout_at(until, self.next_event(container_id, since)).await {
                Ok(Ok(())) => return Ok(true),
                Ok(Err(e)) => return Err(e),
                Err(_) => {}
            }
        }
    }
}

/// Whether a marker cleanup ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Killed {
    /// Done (or nothing to do: the container is stopped or gone).
    Done,
    /// The container is paused: nothing can run in it, its processes live on.
    Paused,
}

/// The error for a cleanup that has to wait for an unpause.
pub(crate) fn paused_error(target: &str, name: &str) -> TransportError {
    TransportError::unreachable(
        target,
        ErrorKind::Paused,
        format!("container {name} is paused; its session processes are killed once it is unpaused"),
    )
}

/// The stdout frames of a multiplexed (non-TTY) attach stream: each frame
/// is an 8-byte header (stream type, 3 zero bytes, big-endian length) and
/// its payload. At most `max` bytes are kept; a torn last frame is cut.
fn demux_stdout(raw: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = raw;
    while rest.len() >= 8 {
        let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let end = (8 + len).min(rest.len());
        if rest[0] == 1 {
            let take = (end - 8).min(max.saturating_sub(out.len()));
            out.extend_from_slice(&rest[8..8 + take]);
        }
        rest = &rest[end..];
    }
    out
}
