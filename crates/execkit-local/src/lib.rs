//! execkit transport `local`: a shell on a PTY on this host.
//!
//! Targets: `local` (bash if installed, else `/bin/sh`) and `local:SHELL`
//! (a path, or a name looked up in `PATH`). The shell runs in its own session
//! on a fresh PTY; exit is detected through a pidfd (a background job may keep
//! the PTY open after the shell died), and kill takes the shell's process
//! group plus every process carrying the session marker. Whole files move
//! through the filesystem itself ([`Transport::files`]).

mod files;
mod procs;
mod pty;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use execkit_core::{
    raw::{FileTransfer, ShellProcess, SpawnSpec, Transport},
    TransportError,
};

pub use procs::kill_matching;

/// The `local` transport for one target.
#[derive(Debug)]
pub struct LocalTransport {
    target: String,
    shell: Option<String>,
}

impl LocalTransport {
    /// Parses `local` or `local:SHELL`.
    pub fn new(target: &str) -> Result<Self, TransportError> {
        let invalid = |reason: &str| TransportError::InvalidTarget {
            target: target.to_string(),
            reason: reason.to_string(),
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
            target: target.to_string(),
            shell,
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
        let shell = pty::PtyShell::spawn(&self.target, &shell, spec).await?;
        Ok(Box::new(shell))
    }

    async fn kill_matching(&self, entry: &str) -> Result<(), TransportError> {
        let entry = entry.to_string();
        tokio::task::spawn_blocking(move || procs::kill_matching(&entry, &[]))
            .await
            .map_err(|e| TransportError::io("marker cleanup", std::io::Error::other(e)))?;
        Ok(())
    }

    /// One `/proc` sweep for all of them (thousands at a host's shutdown).
    async fn kill_sessions(&self, markers: &[String]) -> Result<(), TransportError> {
        let markers = markers.to_vec();
        tokio::task::spawn_blocking(move || procs::kill_sessions(&markers))
            .await
            .map_err(|e| TransportError::io("marker cleanup", std::io::Error::other(e)))?;
        Ok(())
    }

    fn files(&self) -> Option<Arc<dyn FileTransfer>> {
        Some(Arc::new(files::LocalFiles))
    }
}

fn connect(target: &str) -> Result<Arc<dyn Transport>, TransportError> {
    Ok(Arc::new(LocalTransport::new(target)?))
}

execkit_core::register_transport! {
    scheme: "local",
    summary: "a PTY on this host (bash if installed, else /bin/sh)",
    example: "local, local:/bin/dash",
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
    }
}
