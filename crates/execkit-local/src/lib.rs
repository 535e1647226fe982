//! execkit transport `local`: a shell on a PTY on this host.
//!
//! Targets: `local` (bash if installed, else `/bin/sh`) and `local:SHELL`
//! (a path, or a name looked up in `PATH`). The shell runs in its own session
//! on a fresh PTY; exit is detected through a pidfd (a background job may keep
//! the PTY open after the shell died), and kill takes the shell's process
//! group plus every process carrying the session marker. Whole files move
//! through the filesystem itself ([`Transport::files`]).
//!
//! Contained targets (`local?sandbox=workspace-write&network=off&memory=1G&pids=256`,
//! or [`SessionConfig::containment`](execkit_core::SessionConfig)) run the
//! shell under Landlock, a seccomp filter and a cgroup of its own; see
//! `docs/containment.md` for what each parameter does and [`support`] for
//! what this machine can give.

mod contain;
mod files;
mod procs;
mod pty;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use execkit_core::{
    raw::{FileTransfer, ShellProcess, SpawnSpec, Transport},
    Containment, TransportError,
};

pub use contain::support;
pub use procs::kill_matching;

/// The `local` transport for one target.
#[derive(Debug)]
pub struct LocalTransport {
    target: String,
    shell: Option<String>,
    containment: Containment,
}

impl LocalTransport {
    /// Parses `local` or `local:SHELL`, either with `?PARAMS` of a
    /// containment policy (`sandbox`, `workspace`, `network`, `memory`,
    /// `pids`, `readonly`).
    pub fn new(full: &str) -> Result<Self, TransportError> {
        let invalid = |reason: &str| TransportError::InvalidTarget {
            target: full.to_string(),
            reason: reason.to_string(),
        };
        let (target, containment) = match full.split_once('?') {
            None => (full, Containment::default()),
            Some((t, q)) => (t, Containment::parse_query(q).map_err(|e| invalid(&e))?),
        };
        let shell = match target.split_once(':') {
            None if target.eq_ignore_ascii_case("local") => None,
            None => return Err(invalid("expected `local` or `local:SHELL`")),
            Some((_, rest)) => {
                let rest = rest.strip_prefix("//").unwrap_or(rest);
                if rest.is_empty() {
                    return Err(invalid("no shell after `local:` (try `local:/bin/sh`)"));
                }
                if rest.contains('\0') {
                    return Err(invalid("the shell path contains a NUL byte"));
                }
                if rest.starts_with('-') {
                    return Err(invalid(
                        "the shell starts with `-` (a path or a name, not an option)",
                    ));
                }
                if rest.chars().any(char::is_control) {
                    return Err(invalid("the shell path contains a control character"));
                }
                Some(rest.to_string())
            }
        };
        Ok(LocalTransport {
            target: full.to_string(),
            shell,
            containment,
        })
    }

    fn resolve_shell(&self, spec: &SpawnSpec) -> Result<PathBuf, TransportError> {
        let wanted = spec.shell.as_deref().or(self.shell.as_deref());
        let Some(wanted) = wanted else {
            for p in ["/bin/bash", "/usr/bin/bash", "/bin/sh"] {
                if Path::new(p).exists() {
                    return Ok(PathBuf::from(p));
                }
            }
            return Err(self.spawn_err("no shell found (looked for bash and /bin/sh)"));
        };
        if wanted.contains('/') {
            return Ok(PathBuf::from(wanted));
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join(wanted))
            .find(|p| p.is_file())
            .ok_or_else(|| self.spawn_err(&format!("shell `{wanted}` not found in PATH")))
    }

    fn spawn_err(&self, reason: &str) -> TransportError {
        TransportError::Spawn {
            target: self.target.clone(),
            reason: reason.to_string(),
        }
    }
}

#[async_trait]
impl Transport for LocalTransport {
    fn target(&self) -> &str {
        &self.target
    }

    async fn spawn(&self, spec: &SpawnSpec) -> Result<Box<dyn ShellProcess>, TransportError> {
        let shell = self.resolve_shell(spec)?;
        let policy = spec.containment.clone().or(&self.containment);
        let policy = policy.is_contained().then_some(policy);
        let shell = pty::PtyShell::spawn(&self.target, &shell, spec, policy.as_ref()).await?;
        Ok(Box::new(shell))
    }

    async fn kill_matching(&self, entry: &str) -> Result<(), TransportError> {
        let entry = entry.to_string();
        tokio::task::spawn_blocking(move || {
            if let Some(marker) = entry.strip_prefix(&format!("{}=", execkit_core::raw::MARKER_VAR))
            {
                contain::cgroup::kill_session(marker);
            }
            procs::kill_matching(&entry, &[])
        })
        .await
        .map_err(|e| TransportError::io("marker cleanup", std::io::Error::other(e)))?;
        Ok(())
    }

    /// One `/proc` sweep for all of them (thousands at a host's shutdown).
    async fn kill_sessions(&self, markers: &[String]) -> Result<(), TransportError> {
        let markers = markers.to_vec();
        tokio::task::spawn_blocking(move || {
            for m in &markers {
                contain::cgroup::kill_session(m);
            }
            procs::kill_sessions(&markers)
        })
        .await
        .map_err(|e| TransportError::io("marker cleanup", std::io::Error::other(e)))?;
        Ok(())
    }

    /// None for a contained target: the filesystem API would write past
    /// the sandbox.
    fn files(&self) -> Option<Arc<dyn FileTransfer>> {
        if self.containment.is_contained() {
            return None;
        }
        Some(Arc::new(files::LocalFiles))
    }
}

fn connect(target: &str) -> Result<Arc<dyn Transport>, TransportError> {
    Ok(Arc::new(LocalTransport::new(target)?))
}

execkit_core::register_transport! {
    scheme: "local",
    summary: "a PTY on this host (bash if installed, else /bin/sh)",
    example: "local, local:/bin/dash, local?sandbox=workspace-write&network=off",
    connect: connect,
    on_this_host: true,
    shell_in_target: true,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert!(LocalTransport::new("local").unwrap().shell.is_none());
        assert_eq!(
            LocalTransport::new("local:/bin/dash")
                .unwrap()
                .shell
                .as_deref(),
            Some("/bin/dash")
        );
        assert!(LocalTransport::new("local:").is_err());
        assert!(LocalTransport::new("local:-i").is_err());
        assert!(LocalTransport::new("local:/bin/sh\n").is_err());
        // Never handed to a shell: a path with spaces is just a path.
        assert!(LocalTransport::new("local:/opt/my shells/sh").is_ok());
        assert!(LocalTransport::new("localhost").is_err());
        let t = LocalTransport::new("local:/bin/dash?sandbox=read-only&pids=64").unwrap();
        assert_eq!(t.shell.as_deref(), Some("/bin/dash"));
        assert_eq!(t.containment.pids, Some(64));
        assert!(t.files().is_none());
        let e = LocalTransport::new("local?sandbox=tight").unwrap_err();
        assert!(
            e.to_string().contains("read-only, workspace-write or off"),
            "{e}"
        );
    }
}
