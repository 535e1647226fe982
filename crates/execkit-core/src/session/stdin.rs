//! A command's stdin on any target: the bytes staged base64-encoded into a
//! private file on the target by commands of execkit's own (no workspace
//! crate provides base64, hence the small encoder here).

use std::time::Duration;

use super::{InputWait, RunOptions, RunResult, Session};
use crate::error::SessionError;
use crate::protocol;

/// Where [`Session::run_with_stdin`] stages its input on the target when
/// `$TMPDIR` is unset or not writable, in this order.
const STAGING_DIRS: &str = "/tmp /var/tmp /dev/shm";

/// What staging says when no place is writable (one line, no `'`).
const NO_STAGING_DIR: &str = "no writable place for the input: $TMPDIR, /tmp, /var/tmp and \
    /dev/shm are read-only or missing (a read-only root filesystem?): mount a tmpfs on one \
    (docker run --tmpfs /tmp) or set TMPDIR to a writable directory in the session environment";

impl Session {
    /// Runs `command` with `input` as its standard input, on any target.
    ///
    /// The bytes are staged first in a private file on the target (mode
    /// 0600 in the first writable place of `$TMPDIR`, `/tmp`, `/var/tmp`,
    /// `/dev/shm`; none writable is an error that says what to mount or
    /// set), sent base64-encoded through the
    /// command channel in chunks by commands that are neither journaled nor
    /// mirrored; the command then reads that file, which is unlinked before
    /// the command starts, so nothing is left behind even after a timeout.
    /// Needs `base64` on the target. The result, journal and console show
    /// `command` as given.
    pub async fn run_with_stdin(
        &mut self,
        command: &str,
        input: &[u8],
        opts: RunOptions,
    ) -> Result<RunResult, SessionError> {
        protocol::validate(command)?;
        if self.pending.is_some() {
            return Err(SessionError::Busy);
        }
        let var = self.stage_input(input).await?;
        let wrapped = format!("{{ rm -f \"${var}\"; {command}\n}} < \"${var}\"");
        // Its input is the staged bytes: it never waits on the terminal.
        let opts = opts.input_wait(InputWait::Ignore);
        self.run_shown(Some(command), &wrapped, opts).await
    }

    /// Writes `input` to a fresh private file on the target, in the first
    /// writable place of `$TMPDIR` and [`STAGING_DIRS`]; returns the name
    /// of the shell variable holding its path.
    async fn stage_input(&mut self, input: &[u8]) -> Result<&'static str, SessionError> {
        const VAR: &str = "__ek_in";
        /// Base64 characters per staging command (~36 KB of input).
        const CHUNK: usize = 48 * 1024;
        // What a failed staging command said, else `otherwise`.
        let fail = |target: &str, r: RunResult, otherwise: String| SessionError::Stdin {
            target: target.to_string(),
            reason: if r.output.is_empty() {
                r.error.unwrap_or(otherwise)
            } else {
                r.output
            },
        };
        let name = format!(
            "execkit-in-{}",
            protocol::nonce().map_err(SessionError::NoRandomness)?
        );
        // The first of these where a private file can be created: a
        // read-only root (`docker run --read-only`) has no writable `/tmp`,
        // but usually a tmpfs on `/dev/shm`. Created by `true`, not `:`: a
        // failed redirection of a special builtin makes busybox ash's
        // forked subshell jump back to the interactive loop and go on
        // reading the terminal as if it were the session's shell.
        let setup = format!(
            "command -v base64 >/dev/null 2>&1 || {{ echo 'base64 is not installed'; false; }} && \
             {{ {VAR}=; for __ek_d in \"${{TMPDIR:-}}\" {STAGING_DIRS}; do \
             [ -n \"$__ek_d\" ] && (umask 077 && true > \"$__ek_d/{name}\") 2>/dev/null && \
             {{ {VAR}=\"$__ek_d/{name}\"; break; }}; done; unset __ek_d; [ -n \"${VAR}\" ] || \
             {{ echo '{NO_STAGING_DIR}'; false; }}; }}"
        );
        let r = self
            .run_shown(None, &setup, RunOptions::timeout(Duration::from_secs(20)))
            .await?;
        if r.exit_code != Some(0) {
            let otherwise = "the staging file cannot be created".to_string();
            return Err(fail(self.target(), r, otherwise));
        }
        let encoded = base64(input);
        for chunk in encoded.as_bytes().chunks(CHUNK) {
            let chunk = std::str::from_utf8(chunk).expect("base64 is ASCII");
            let cmd = format!("printf %s '{chunk}' | base64 -d >> \"${VAR}\"");
            let r = self
                .run_shown(None, &cmd, RunOptions::timeout(Duration::from_secs(60)))
                .await?;
            if r.exit_code != Some(0) {
                let rm = format!("rm -f \"${VAR}\"");
                let _ = self
                    .run_shown(None, &rm, RunOptions::timeout(Duration::from_secs(20)))
                    .await;
                let otherwise = format!("exit {:?}", r.exit_code);
                return Err(fail(self.target(), r, otherwise));
            }
        }
        Ok(VAR)
    }
}

/// Standard base64 (RFC 4648, padded), as `base64 -d` reads it.
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for k in 0..4 {
            if k <= group.len() {
                out.push(ABC[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_failure_message_fits_in_single_quotes() {
        assert!(!NO_STAGING_DIR.contains('\''));
        assert!(!NO_STAGING_DIR.contains('\n'));
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
        assert_eq!(base64(&[0, 0xff, 0x80]), "AP+A");
    }
}
