//! execkit transport `ssh`: a shell on a remote host over SSH (libssh2 via
//! the `ssh2` crate).
//!
//! Target: `ssh://user@host[:port][?identity=PATH&known_hosts=PATH&host_key=accept_new&connect_timeout=SECS]`.
//!
//! - `connect_timeout` (default 10 s) bounds connecting as a whole: TCP
//!   connect, the server's banner, key exchange and authentication; a
//!   host that misses it is unreachable, with the stage in the message.
//! - Host keys are verified against known_hosts (default
//!   `~/.ssh/known_hosts`); an unknown or changed key is refused with its
//!   SHA256 fingerprint, unless `host_key=accept_new` (unknown keys only are
//!   then recorded). Authentication: the identity file (passphrase from
//!   `EXECKIT_SSH_PASSPHRASE`), then ssh-agent, then the default keys.
//! - Each session is a PTY channel running `env EXECKIT_SID=… SHELL -i`
//!   (servers refuse `setenv` without AcceptEnv). Sessions to the same
//!   user@host:port share one authenticated connection, driven by one OS
//!   thread (see `actor`); it closes with its last session. Opens made
//!   while it is being established wait for that one attempt (`pool`).
//! - Cleanup runs the portable marker-kill script on a second channel.

mod actor;
mod apply;
pub mod config;
mod connect;
mod files;
mod pool;
mod relay;
mod target;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use execkit_core::raw::shell_quote;
use execkit_core::{
    raw::{FileTransfer, ShellEvent, ShellProcess, SpawnSpec, Transport},
    Size, TransportError,
};
use tokio::sync::{mpsc, oneshot};

use actor::{Conn, OpenError, Req, What, HIGH_WATER};
pub use connect::PASSPHRASE_VAR;
pub use pool::live_connections;
pub use target::{AgentSource, ConfigSource, Given, HostKeyPolicy, SshTarget};

/// A byte stream to the Unix socket `path` on the host `target` names
/// (`ssh://…`), as `ssh -L /local.sock:/remote.sock` forwards one: the
/// server connects to it (`direct-streamlocal`) over the pooled
/// connection, with the target's host-key checks and authentication. A
/// remote Docker engine is reached this way (`DOCKER_HOST=ssh://…`).
pub async fn connect_remote_socket(
    target: &str,
    path: &str,
) -> Result<tokio::net::UnixStream, TransportError> {
    let t = SshTarget::parse(target)?;
    let stream = pool::forward(&t, target, actor::Start::Unix(path.to_string())).await?;
    let (end, _) = relay::relay(stream)
        .map_err(|e| TransportError::io("relaying a forwarded connection", e))?;
    end.set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(end))
        .map_err(|e| TransportError::io("relaying a forwarded connection", e))
}

execkit_core::inventory::submit! {
    execkit_core::SocketForwarder {
        scheme: "ssh",
        connect: |target, path| Box::pin(async move { connect_remote_socket(&target, &path).await }),
    }
}

/// How long marker cleanup may take before `terminate` gives up on it.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(15);

/// The `ssh` transport for one target.
#[derive(Debug)]
pub struct SshTransport {
    target: String,
    parsed: SshTarget,
}

impl SshTransport {
    /// Parses an `ssh://` target (no network access).
    pub fn new(target: &str) -> Result<Self, TransportError> {
        Ok(SshTransport {
            target: target.to_string(),
            parsed: SshTarget::parse(target)?,
        })
    }

    /// The parsed target.
    pub fn parsed(&self) -> &SshTarget {
        &self.parsed
    }
}

/// A command for the user's login shell (sshd runs every channel's command
/// as `$SHELL -c COMMAND`) that runs `script` under `/bin/sh`, whatever the
/// login shell is: fish and csh do not speak sh, so the script travels as
/// one single-quoted word built to read the same in all three — `'` and `\`
/// are written outside the quotes (`'\''`, `'\\'`), where each of them
/// means itself, and inside fish's single quotes `\` would be an escape.
fn login_command(script: &str) -> String {
    let mut out = String::with_capacity(script.len() + 24);
    out.push_str("exec /bin/sh -c '");
    for c in script.chars() {
        match c {
            '\'' => out.push_str("'\\''"),
            '\\' => out.push_str("'\\\\'"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The script that starts the session shell (run through [`login_command`]).
fn shell_command(spec: &SpawnSpec) -> String {
    let mut s = String::new();
    s.push_str("unset");
    for v in execkit_core::raw::STRIP_ENV {
        s.push(' ');
        s.push_str(v);
    }
    s.push_str(" 2>/dev/null; ");
    if let Some(cwd) = &spec.cwd {
        s.push_str(&format!(
            "cd {} || exit 1; ",
            shell_quote(&cwd.to_string_lossy())
        ));
    }
    let mut env = String::from("env");
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            continue;
        }
        env.push(' ');
        env.push_str(&shell_quote(&format!("{k}={v}")));
    }
    let argv = |shell: &str| -> String {
        execkit_core::raw::startup_argv(shell, spec.load_profile)
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    };
    match &spec.shell {
        Some(sh) => s.push_str(&format!("exec {env} {}", argv(sh))),
        None => s.push_str(&format!(
            "if command -v bash >/dev/null 2>&1; then exec {env} {}; else exec {env} {}; fi",
            argv("bash"),
            argv("/bin/sh")
        )),
    }
    s
}

/// The kill script always ends with `exit 0`: anything else means it could
/// not run (the login shell failed, a process limit stopped its forks).
fn cleanup_outcome(label: &str, out: &actor::ExecOutput) -> Result<(), TransportError> {
    if out.status == execkit_core::raw::ExitStatus::Code(0) {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.output);
    tracing::warn!("marker cleanup {}: {}", out.status, text.trim());
    let last = text.lines().rev().map(str::trim).find(|l| !l.is_empty());
    Err(TransportError::Lost(format!(
        "the marker-kill script on {label} {}: {}",
        out.status,
        last.unwrap_or("no output")
    )))
}

/// The marker-kill command run on a second channel (core's portable
/// script, under `sh` whatever the login shell is).
fn kill_command(entry: &str) -> String {
    login_command(&format!(
        "exec 2>&1; {}",
        execkit_core::raw::kill_matching_script(entry)
    ))
}

#[async_trait]
impl Transport for SshTransport {
    fn target(&self) -> &str {
        &self.target
    }

    async fn spawn(&self, spec: &SpawnSpec) -> Result<Box<dyn ShellProcess>, TransportError> {
        spec.refuse_containment(&self.target)?;
        let command = login_command(&shell_command(spec));
        let mut last = String::new();
        for _ in 0..32 {
            let conn = pool::get(&self.parsed, &self.target).await?;
            let (events_tx, events_rx) = mpsc::unbounded_channel();
            let inflight = Arc::new(AtomicUsize::new(0));
            let id = conn.next_id();
            let (reply, rx) = oneshot::channel();
            let sent = conn.send(Req::Open(What::Shell {
                id,
                command: command.clone(),
                size: spec.size,
                events: events_tx,
                inflight: inflight.clone(),
                reply,
            }));
            let result = match sent {
                Ok(()) => rx
                    .await
                    .unwrap_or_else(|_| Err(OpenError::Lost(conn.lost_message()))),
                Err(m) => Err(OpenError::Lost(m)),
            };
            match result {
                Ok(()) => {
                    return Ok(Box::new(SshShell {
                        target: self.target.clone(),
                        parsed: self.parsed.clone(),
                        conn,
                        id,
                        events: tokio::sync::Mutex::new(events_rx),
                        end: Mutex::new(None),
                        inflight,
                        marker_entry: spec.marker_entry(),
                        closed: AtomicBool::new(false),
                    }))
                }
                Err(OpenError::Refused(m)) => {
                    last = format!("the server refused a new session channel: {m}");
                    // MaxSessions reached: the next try gets another connection.
                    if !conn.shared.refused() {
                        break;
                    }
                }
                Err(OpenError::Lost(m)) => last = m,
                Err(OpenError::Failed(m)) => {
                    return Err(TransportError::Spawn {
                        target: self.target.clone(),
                        reason: m,
                    })
                }
            }
        }
        Err(TransportError::Spawn {
            target: self.target.clone(),
            reason: last,
        })
    }

    async fn kill_matching(&self, entry: &str) -> Result<(), TransportError> {
        let cmd = kill_command(entry);
        let out = pool::exec(&self.parsed, &self.target, None, &cmd).await?;
        cleanup_outcome(&self.target, &out)
    }

    /// Files move over an exec channel of the shared connection (`files.rs`).
    fn files(&self) -> Option<Arc<dyn FileTransfer>> {
        Some(files::SshFiles::new(
            self.target.clone(),
            self.parsed.clone(),
        ))
    }
}

/// A shell on a PTY channel of a shared connection.
#[derive(Debug)]
pub struct SshShell {
    target: String,
    parsed: SshTarget,
    conn: Arc<Conn>,
    id: u64,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<ShellEvent>>,
    /// The final event (`Exited`/`Lost`), repeated once seen.
    end: Mutex<Option<ShellEvent>>,
    inflight: Arc<AtomicUsize>,
    marker_entry: String,
    closed: AtomicBool,
}

impl SshShell {
    fn ended(&self) -> Option<ShellEvent> {
        self.end.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_end(&self, e: ShellEvent) -> ShellEvent {
        let mut g = self.end.lock().unwrap_or_else(|e| e.into_inner());
        g.get_or_insert(e).clone()
    }

    async fn request(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Req,
    ) -> Result<(), TransportError> {
        let (done, rx) = oneshot::channel();
        self.conn.send(make(done)).map_err(TransportError::Lost)?;
        match rx.await {
            Ok(r) => r.map_err(TransportError::Lost),
            Err(_) => Err(TransportError::Lost(self.conn.lost_message())),
        }
    }

    async fn cleanup(&self, entry: &str) -> Result<(), TransportError> {
        let cmd = kill_command(entry);
        match tokio::time::timeout(
            CLEANUP_TIMEOUT,
            pool::exec(&self.parsed, &self.target, Some(&self.conn), &cmd),
        )
        .await
        {
            Ok(r) => r.and_then(|out| cleanup_outcome(&self.conn.label, &out)),
            Err(_) => Err(TransportError::Lost(format!(
                "marker cleanup on {} did not finish within {} s",
                self.conn.label,
                CLEANUP_TIMEOUT.as_secs()
            ))),
        }
    }
}

#[async_trait]
impl ShellProcess for SshShell {
    async fn write(&self, data: &[u8]) -> Result<(), TransportError> {
        if data.is_empty() {
            return Ok(());
        }
        let id = self.id;
        let data = data.to_vec();
        self.request(|done| Req::Write { id, data, done }).await
    }

    async fn read(&self) -> ShellEvent {
        if let Some(e) = self.ended() {
            return e;
        }
        let mut rx = self.events.lock().await;
        if let Some(e) = self.ended() {
            return e;
        }
        match rx.recv().await {
            Some(ShellEvent::Output(b)) => {
                let before = self.inflight.fetch_sub(b.len(), Ordering::Relaxed);
                if before >= HIGH_WATER && before - b.len() < HIGH_WATER {
                    self.conn.wake();
                }
                ShellEvent::Output(b)
            }
            Some(e) => self.set_end(e),
            None => self.set_end(ShellEvent::Lost(self.conn.lost_message())),
        }
    }

    async fn resize(&self, size: Size) -> Result<(), TransportError> {
        let id = self.id;
        self.request(|done| Req::Resize { id, size, done }).await
    }

    async fn kill_matching(&self, entry: &str) -> Result<(), TransportError> {
        self.cleanup(entry).await
    }

    async fn run_script(&self, script: &str) -> Option<Result<String, TransportError>> {
        let cmd = login_command(script);
        let run = pool::exec(&self.parsed, &self.target, Some(&self.conn), &cmd);
        Some(match tokio::time::timeout(CLEANUP_TIMEOUT, run).await {
            Ok(Ok(out)) => Ok(String::from_utf8_lossy(&out.output).into_owned()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(TransportError::Lost(format!(
                "a script on {} did not finish within {} s",
                self.conn.label,
                CLEANUP_TIMEOUT.as_secs()
            ))),
        })
    }

    async fn terminate(&self) -> Result<(), TransportError> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // The channel closes (its terminal hangs up) even when the caller
        // gives up on the clean-up below.
        let _close = CloseOnDrop {
            conn: &self.conn,
            id: self.id,
        };
        let entry = self.marker_entry.clone();
        let r = if self.conn.is_lost() {
            // The processes may still run if only the connection dropped:
            // try once on a fresh connection, briefly.
            match tokio::time::timeout(Duration::from_secs(5), self.cleanup(&entry)).await {
                Ok(Err(e)) => tracing::debug!("cleanup after loss failed: {e}"),
                Err(_) => tracing::debug!("cleanup after loss timed out"),
                Ok(Ok(())) => {}
            }
            Ok(())
        } else {
            self.cleanup(&entry).await
        };
        r
    }
}

/// Closes one channel of a connection when dropped.
struct CloseOnDrop<'a> {
    conn: &'a Conn,
    id: u64,
}

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.conn.send(Req::Close { id: self.id });
    }
}

impl Drop for SshShell {
    fn drop(&mut self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        // Best effort, without blocking the caller: a thread runs the
        // cleanup and then closes the channel (it holds the connection open
        // until then).
        let conn = self.conn.clone();
        let parsed = self.parsed.clone();
        let target = self.target.clone();
        let id = self.id;
        let cmd = kill_command(&self.marker_entry);
        let spawned = std::thread::Builder::new()
            .name("execkit-ssh cleanup".into())
            .spawn(move || {
                if let Err(e) = pool::exec_blocking(&parsed, &target, &conn, &cmd) {
                    tracing::debug!("cleanup of a dropped ssh session failed: {e}");
                }
                let _ = conn.send(Req::Close { id });
            });
        if spawned.is_err() {
            let _ = self.conn.send(Req::Close { id: self.id });
        }
    }
}

fn connect(target: &str) -> Result<Arc<dyn Transport>, TransportError> {
    Ok(Arc::new(SshTransport::new(target)?))
}

execkit_core::register_transport! {
    scheme: "ssh",
    summary: "a shell on a remote host over SSH (host keys verified, key/agent auth)",
    example: "ssh://user@host:22?identity=~/.ssh/id_ed25519",
    connect: connect,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_quotes_env_and_picks_a_shell() {
        let spec = SpawnSpec::new("m1").env("A", "it's");
        let c = shell_command(&spec);
        assert!(c.starts_with("unset ENV BASH_ENV"), "{c}");
        assert!(c.contains("'EXECKIT_SID=m1'"), "{c}");
        assert!(c.contains(r#"'A=it'\''s'"#), "{c}");
        assert!(
            c.contains("'bash' '--norc' '--noprofile' '--noediting' '-i'"),
            "{c}"
        );
        assert!(c.contains("'/bin/sh' '-i'"), "{c}");
        let c = shell_command(&SpawnSpec::new("m").shell(Some("/bin/dash".into())));
        assert!(c.ends_with("'/bin/dash' '-i'"), "{c}");
    }

    /// The one word reads the same to sh, fish and tcsh (those installed).
    #[test]
    fn login_command_survives_every_login_shell() {
        let script = r#"printf '%s|' "it's" 'a\b' "x\"y"; echo"#;
        let cmd = login_command(script);
        for shell in ["/bin/sh", "/bin/bash", "/usr/bin/fish", "/usr/bin/tcsh"] {
            if !std::path::Path::new(shell).exists() {
                continue;
            }
            let out = std::process::Command::new(shell)
                .arg("-c")
                .arg(&cmd)
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "it's|a\\b|x\"y|\n",
                "{shell}: {out:?}"
            );
        }
    }

    #[test]
    fn kill_command_kills_marked_processes() {
        let marker = format!("EXECKIT_SID=killtest{}", std::process::id());
        let (k, v) = marker.split_once('=').unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .env(k, v)
            .spawn()
            .unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(kill_command(&marker))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let st = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(9), "{st:?}");
    }

    #[test]
    fn connect_parses_only() {
        assert!(connect("ssh://u@h.invalid:2222").is_ok());
        assert!(connect("ssh://u@h?bogus=1").is_err());
    }
}
