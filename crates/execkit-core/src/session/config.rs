//! [`SessionConfig`]: how a session's shells are started, and the check
//! of what it would hand to a shell.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::COMMAND_VAR;
use crate::contain::Containment;
use crate::observer::Observer;
use crate::shell;
use crate::transport::Size;

/// How a session's shells are started and its output handled.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Shell path; `None` lets the transport choose.
    pub shell: Option<String>,
    /// Load the user's rc/profile files.
    pub load_profile: bool,
    /// Initial working directory.
    pub cwd: Option<PathBuf>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Terminal size.
    pub size: Size,
    /// Characters of output returned before head+tail capping.
    pub output_limit: usize,
    /// Where capped outputs are spooled in full.
    pub spool_dir: PathBuf,
    /// How long a shell may take to start.
    pub start_timeout: Duration,
    /// How long to wait for the shell after Ctrl-C before killing it.
    pub interrupt_grace: Duration,
    /// Journal and console to report to.
    pub observer: Option<Arc<Observer>>,
    /// A name the session is known by (e.g. `execkit serve`'s session
    /// name), journaled as `name` next to the engine id.
    pub name: Option<String>,
    /// How the shell is contained (local targets; merged with the
    /// target's own `?sandbox=…` parameters, these winning). A transport
    /// that cannot contain refuses a session that asks for it.
    pub containment: Containment,
}

impl SessionConfig {
    /// Checks what will be handed to a shell: environment names are
    /// portable names (`[A-Za-z_][A-Za-z0-9_]*`) and never execkit's own
    /// markers, and no value, path or name holds a NUL byte. Every transport
    /// gets the same answer before anything is started.
    pub fn validate(&self) -> Result<(), String> {
        for (k, v) in &self.env {
            let mut chars = k.chars();
            let name_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !name_ok {
                return Err(format!(
                    "`{}` is not an environment variable name (letters, digits and `_`, not starting with a digit)",
                    k.escape_debug()
                ));
            }
            if k == shell::MARKER_VAR || k == COMMAND_VAR {
                return Err(format!("`{k}` is set by execkit itself"));
            }
            if v.contains('\0') {
                return Err(format!("the value of `{k}` contains a NUL byte"));
            }
        }
        if self.shell.as_deref().is_some_and(|s| s.contains('\0')) {
            return Err("the shell path contains a NUL byte".into());
        }
        if self
            .cwd
            .as_deref()
            .is_some_and(|c| c.as_os_str().as_encoded_bytes().contains(&0))
        {
            return Err("the working directory contains a NUL byte".into());
        }
        Ok(())
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            shell: None,
            load_profile: false,
            cwd: None,
            env: Vec::new(),
            size: Size::default(),
            output_limit: 30_000,
            spool_dir: crate::paths::spool_dir(),
            start_timeout: Duration::from_secs(20),
            interrupt_grace: Duration::from_secs(2),
            observer: None,
            name: None,
            containment: Containment::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_env(k: &str, v: &str) -> SessionConfig {
        let mut c = SessionConfig::default();
        c.env.push((k.into(), v.into()));
        c
    }

    #[test]
    fn settings_a_shell_cannot_take_are_refused() {
        for (k, v, why) in [
            ("", "x", "not an environment variable name"),
            ("1A", "x", "not an environment variable name"),
            ("A=B", "x", "not an environment variable name"),
            ("A B", "x", "not an environment variable name"),
            ("A;id", "x", "not an environment variable name"),
            ("$(id)", "x", "not an environment variable name"),
            ("A\0", "x", "not an environment variable name"),
            ("A", "x\0y", "NUL"),
            ("EXECKIT_SID", "x", "set by execkit"),
            ("EXECKIT_CMD", "x", "set by execkit"),
        ] {
            let e = with_env(k, v).validate().unwrap_err();
            assert!(e.contains(why), "{k:?}={v:?}: {e}");
        }
        let c = SessionConfig {
            cwd: Some(PathBuf::from("/tmp/a\0b")),
            ..SessionConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("NUL"));
        // Values may hold anything else: they are quoted, never interpreted.
        assert!(with_env("_A1", "$(id); `x` 'q' \"d\" \n é")
            .validate()
            .is_ok());
    }
}
