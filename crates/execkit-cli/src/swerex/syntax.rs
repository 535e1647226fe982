//! The syntax check before a bash action runs: text that does not parse
//! is refused with `BashIncorrectSyntaxError` and nothing of it runs (the
//! shell would otherwise run the lines before the error).
//!
//! The check is `bash -n` on this host, as upstream does it where its
//! shell is — here the shell may be a container's busybox, whose grammar
//! bash's covers. Starting bash costs a few milliseconds, so text that
//! cannot fail to parse (plain words only) skips it; so does everything
//! when this host has no bash (the shell then reports the error itself).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::models::{py_repr, Raised};

/// Words that make a line more than a simple command.
const RESERVED: &[&str] = &[
    "case", "coproc", "do", "done", "elif", "else", "esac", "fi", "for", "function", "if", "in",
    "select", "then", "time", "until", "while",
];

/// Whether `text` is simple commands of plain words only (letters, digits
/// and `_./,:=+@%~-`), one per line: such text always parses.
pub fn plainly_valid(text: &str) -> bool {
    text.split('\n').all(|line| {
        line.split([' ', '\t']).filter(|w| !w.is_empty()).all(|w| {
            w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_./,:=+@%~-".contains(&b))
                && !RESERVED.contains(&w)
        })
    })
}

/// Refuses `text` that bash cannot parse.
pub async fn check(text: &str) -> Result<(), Raised> {
    if plainly_valid(text) {
        return Ok(());
    }
    let child = tokio::process::Command::new("bash")
        .arg("-n")
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else {
        // No bash here: the target's shell reports a syntax error itself.
        return Ok(());
    };
    if let Some(mut stdin) = child.stdin.take() {
        let mut input = text.as_bytes().to_vec();
        input.push(b'\n');
        // bash reads all of it before it answers; a write error means it
        // is gone, which `wait` tells.
        let _ = stdin.write_all(&input).await;
    }
    let out = match tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        // A check that cannot run does not stop the command.
        _ => return Ok(()),
    };
    if out.status.success() {
        return Ok(());
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code().unwrap_or(-1);
    Err(Raised::swerex(
        "BashIncorrectSyntaxError",
        format!(
            "bash -n found a syntax error (exit code {code}) in the command {}; it was not run.\n---- Stderr ----\n{stderr}\n---- Stdout ----\n{stdout}",
            py_repr(text)
        ),
    )
    .with_extra("bash_stdout", stdout)
    .with_extra("bash_stderr", stderr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_skip_the_check() {
        for t in [
            "true",
            "",
            "ls -la /tmp",
            "cd /repo\npython3 x.py --n=1",
            "a=b",
        ] {
            assert!(plainly_valid(t), "{t:?}");
        }
        for t in [
            "if",
            "echo 'x",
            "a | b",
            "done",
            "echo $(x)",
            "a;",
            "f() {",
            "# c",
        ] {
            assert!(!plainly_valid(t), "{t:?}");
        }
    }
}
