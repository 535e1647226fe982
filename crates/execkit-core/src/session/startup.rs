//! Starting a shell: spawn, the init line, the first sentinel, and what a
//! failed start-up says.

use std::time::Duration;

use tokio::time::Instant;

use super::collector::last_chars;
use super::drive::{pump, Death, WaitEnd, YieldPoint};
use super::Session;
use crate::error::{SessionError, TransportError};
use crate::protocol::{self, SentinelScanner};
use crate::shell;
use crate::transport::{ShellProcess, SpawnSpec};

impl Session {
    fn spawn_spec(&self) -> SpawnSpec {
        let mut spec = SpawnSpec::new(self.marker.clone())
            .shell(self.config.shell.clone())
            .cwd(self.config.cwd.clone())
            .size(self.config.size);
        spec.load_profile = self.config.load_profile;
        spec.containment = self.config.containment.clone();
        for (k, v) in &self.config.env {
            spec = spec.env(k.clone(), v.clone());
        }
        spec
    }

    /// Starts a shell and waits for its first sentinel.
    pub(super) async fn start_shell(&mut self) -> Result<(), SessionError> {
        let spec = self.spawn_spec();
        let nonce = protocol::nonce().map_err(SessionError::NoRandomness)?;
        let shell = self.transport.spawn(&spec).await?;
        let init = shell::init_source(&nonce);
        let mut scanner = SentinelScanner::new(&nonce);
        let mut seen = Vec::new();
        let deadline = Instant::now() + self.config.start_timeout;
        let outcome = pump(
            &*shell,
            Some(&init),
            Some(deadline),
            YieldPoint::default(),
            None,
            &mut false,
            &mut |b| {
                let scan = scanner.push(b);
                // The end matters (the clock line, a start-up error).
                seen.extend_from_slice(&scan.output);
                if seen.len() > 8192 {
                    seen.drain(..seen.len() - 4096);
                }
                scan.sentinel
            },
        )
        .await;
        match outcome {
            WaitEnd::Sentinel(s) => {
                let status = s.status;
                self.take_state(s);
                self.flavor = shell::Flavor::from_status(status);
                self.shell_pid = shell::pid_from_status(status);
                self.clock = shell::parse_uptime(&seen).map(|up| (Instant::now(), up));
                self.jobs_possible = shell::holds_code(status);
                self.plain = !self.xtrace && !self.prompts && !self.jobs_possible;
                self.shell = Some(shell);
                Ok(())
            }
            failed => Err(self.start_error(failed, shell, &seen).await),
        }
    }

    /// Why a start-up that did not reach its sentinel failed, with what
    /// the shell printed; the shell is let go.
    async fn start_error(
        &self,
        outcome: WaitEnd,
        shell: Box<dyn ShellProcess>,
        seen: &[u8],
    ) -> SessionError {
        let target = self.transport.target().to_string();
        match outcome {
            WaitEnd::Deadline => {
                // Bounded: a clean-up that itself waits on the slow start
                // (an rc file runs for every SSH channel) must not double
                // the wait; the transport closes the shell's terminal anyway.
                let _ = tokio::time::timeout(START_CLEANUP, shell.terminate()).await;
                let text = start_excerpt(seen);
                SessionError::StartTimeout {
                    target,
                    secs: self.config.start_timeout.as_secs(),
                    detail: if text.is_empty() {
                        "; it printed nothing: a login script (~/.bashrc, \
                         ~/.profile) that is slow or waits for input?"
                            .into()
                    } else {
                        format!("; it printed: {text}")
                    },
                }
            }
            WaitEnd::Died(Death::TargetRestarted(msg)) => TransportError::Lost(msg).into(),
            WaitEnd::Died(Death::Exited(status)) => {
                let text = start_excerpt(seen);
                SessionError::StartFailed {
                    target,
                    status: status.to_string(),
                    output: if text.is_empty() {
                        String::new()
                    } else {
                        format!(": {text}")
                    },
                }
            }
            WaitEnd::Lost(msg) => TransportError::Lost(msg).into(),
            WaitEnd::Yield
            | WaitEnd::Quiet
            | WaitEnd::InputWait
            | WaitEnd::Interrupted
            | WaitEnd::Suspended(_) => {
                unreachable!("start-up never yields or watches for input")
            }
            WaitEnd::WriteFailed(e) => {
                let _ = shell.terminate().await;
                e.into()
            }
            WaitEnd::Sentinel(_) => unreachable!("a sentinel is a start"),
        }
    }

    /// Kills what is left of the current shell and starts a new one.
    pub(super) async fn restart(&mut self) -> Result<(), SessionError> {
        self.frozen = None;
        if let Some(old) = self.shell.take() {
            self.retire(old).await;
        }
        self.start_shell().await
    }
}

/// How long a failed start-up may spend cleaning up before it reports.
const START_CLEANUP: Duration = Duration::from_secs(1);

/// What a shell printed before it failed to start, as one readable line:
/// the last lines with words in them, runs of blanks folded. A shell that
/// does not speak sh (fish as a login shell) echoes the offending line and
/// marks the spot with a `^~~^` under hundreds of spaces; those marker lines
/// say nothing in a one-line error.
fn start_excerpt(seen: &[u8]) -> String {
    let text = crate::output_clean::clean(seen);
    let raw: Vec<&str> = text.lines().collect();
    let is_marker = |l: &str| {
        let t = l.trim();
        !t.is_empty() && t.chars().all(|c| matches!(c, '^' | '~' | ' '))
    };
    let lines: Vec<String> = raw
        .iter()
        .enumerate()
        // The quoted source line above a `^~~^` marker is execkit's own.
        .filter(|&(i, l)| {
            l.chars().any(char::is_alphanumeric) && !raw.get(i + 1).is_some_and(|n| is_marker(n))
        })
        .map(|(_, l)| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let mut out = String::new();
    for line in lines.iter().rev() {
        let piece = if out.is_empty() {
            line.clone()
        } else {
            format!("{line} / {out}")
        };
        if piece.chars().count() > 300 {
            if out.is_empty() {
                out = last_chars(line, 300).to_string();
            }
            break;
        }
        out = piece;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_excerpt_keeps_the_error_and_drops_marker_lines() {
        let seen = format!(
            "fish: Unsupported use of '||'. In fish, please use 'COMMAND; or COMMAND'.\r\n\
             unset EXECKIT_SID 2>/dev/null; cd /x || exit 1\r\n{}^~~^\r\n",
            " ".repeat(400)
        );
        assert_eq!(
            start_excerpt(seen.as_bytes()),
            "fish: Unsupported use of '||'. In fish, please use 'COMMAND; or COMMAND'."
        );
        assert_eq!(start_excerpt(b"a   b\n\n  c\n"), "a b / c");
        assert_eq!(start_excerpt(b"   \n"), "");
        let long = "x".repeat(500);
        assert_eq!(start_excerpt(long.as_bytes()).len(), 300);
    }
}
