//! The sentinel protocol: how a command is written to the shell and how its
//! end, exit status and cwd are recognised in the output.
//!
//! Every command gets a fresh random nonce. The shell is asked to print a
//! start marker `__EKS_<nonce>\n` right before the command's text runs and
//! `__EK_<nonce>:<status>:<flags>:<cwd>:<nonce>_EK__\n` after it; in the
//! shell source the literals are split (`'__EK''_'`) and the nonce passed as
//! an argument, so neither echoed input nor printed command text can contain
//! them, and a command cannot forge one without knowing the nonce.
//!
//! The output of a command is exactly what lies between the two: whatever
//! the shell prints around a command — prompts (`PS1`, `PS2`, `PS0`),
//! `PROMPT_COMMAND` output, a background job's late output, the trace of
//! execkit's own wrapper under `set -x` — falls before the start marker or
//! after the sentinel and is dropped.
//!
//! `encode.rs` writes a command (quoting, the wrapper, the long-command
//! path), `classify.rs` reads its text for what it may turn on, `scan.rs`
//! finds the start marker and the sentinel in the output; this file has the
//! nonce and the checks a command passes before any of that.

mod classify;
mod encode;
mod scan;

use std::fmt::Write as _;

pub use classify::{may_change_hooks, may_start_jobs, needs_top_level};
pub use encode::{
    encode_command, person_restore, sentinel_source, shell_quote, start_source, Guard, Via,
    TRACE_MARK, TRACE_MARK_VAR,
};
pub use scan::{Scan, Sentinel, SentinelScanner};

/// A fresh random nonce (16 hex digits).
///
/// The bytes come from the OS generator, drawn 512 at a time: a command
/// takes two nonces, and a `getrandom` call each was a measurable part of a
/// round trip. Fails closed: without the OS generator there is no nonce (a
/// guessable one would let output forge a command's end).
pub fn nonce() -> Result<String, std::io::Error> {
    thread_local! {
        static POOL: std::cell::RefCell<(Vec<u8>, usize)> = const { std::cell::RefCell::new((Vec::new(), 0)) };
    }
    let b: [u8; 8] = POOL.with(|p| -> Result<[u8; 8], std::io::Error> {
        let (pool, used) = &mut *p.borrow_mut();
        if *used + 8 > pool.len() {
            pool.resize(512, 0);
            *used = 0;
            if let Err(e) = getrandom::fill(pool) {
                pool.clear();
                return Err(std::io::Error::other(format!(
                    "the OS random generator failed: {e}"
                )));
            }
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&pool[*used..*used + 8]);
        // Never hand the same bytes out twice.
        pool[*used..*used + 8].fill(0);
        *used += 8;
        Ok(b)
    })?;
    Ok(b.iter().fold(String::with_capacity(16), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    }))
}

/// Why a command cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// Shell strings cannot hold NUL bytes.
    #[error("command contains a NUL byte at offset {offset}; shells cannot pass NUL in text")]
    Nul {
        /// Byte offset of the first NUL.
        offset: usize,
    },
    /// The command is empty or only whitespace.
    #[error("command is empty")]
    Empty,
    /// Typed input with a line a terminal cannot pass whole.
    #[error(
        "a line of input is {len} bytes; a terminal in canonical mode passes at most \
         {MAX_INPUT_LINE} bytes per line (the rest would be dropped): send shorter lines, \
         or the data through a file or --stdin"
    )]
    LineTooLong {
        /// Length of the longest line.
        len: usize,
    },
}

/// Longest line of typed input a canonical-mode terminal passes whole
/// (the kernel's line buffer holds 4095 bytes plus the newline).
pub const MAX_INPUT_LINE: usize = 4095;

/// Checks text to be typed into a running command.
pub fn validate_input(text: &str) -> Result<(), CommandError> {
    if let Some(offset) = text.bytes().position(|b| b == 0) {
        return Err(CommandError::Nul { offset });
    }
    let len = text.split('\n').map(str::len).max().unwrap_or(0);
    if len > MAX_INPUT_LINE {
        return Err(CommandError::LineTooLong { len });
    }
    Ok(())
}

/// Checks a command before it goes near a shell.
pub fn validate(command: &str) -> Result<(), CommandError> {
    if let Some(offset) = command.bytes().position(|b| b == 0) {
        return Err(CommandError::Nul { offset });
    }
    if command.trim().is_empty() {
        return Err(CommandError::Empty);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_refused() {
        assert_eq!(validate("a\0b"), Err(CommandError::Nul { offset: 1 }));
        assert_eq!(validate("  \n"), Err(CommandError::Empty));
    }
}
