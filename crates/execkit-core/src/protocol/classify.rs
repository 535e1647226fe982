//! What a command's text may do to the session (start background jobs,
//! turn on a trace, a trap or a prompt), read from the text alone and
//! conservatively: it picks the encoding of this and later commands.

#[cfg(doc)]
use super::encode_command;

/// Whether `command` could turn on tracing, a prompt or a trap that runs
/// around every command (`set -x`, `PS1=…`, `exec`, …), so it and later
/// commands need the watched or guarded encoding (see [`encode_command`]).
/// Complements [`may_start_jobs`], whose words (`trap`, `.`, `source`,
/// `eval`, …) count too: callers ask both. Conservative, on the text alone.
pub fn may_change_hooks(command: &str) -> bool {
    has_word(
        command,
        &[
            "set",
            "shopt",
            "exec",
            "PS0",
            "PS1",
            "PS2",
            "PS4",
            "PROMPT_COMMAND",
            "TMOUT",
        ],
    )
}

/// Whether a shell word of `command` is one of `words`.
fn has_word(command: &str, words: &[&str]) -> bool {
    words_of(command).any(|(_, w)| words.contains(&w))
}

/// The word-like runs of `command` (letters, digits, `_ . / -`) with their
/// byte offsets: a cheap tokenizer for the conservative checks above.
fn words_of(command: &str) -> impl Iterator<Item = (usize, &str)> {
    let b = command.as_bytes();
    let word_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'/' | b'-');
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() && !word_char(b[i]) {
            i += 1;
        }
        if i == b.len() {
            return None;
        }
        let start = i;
        while i < b.len() && word_char(b[i]) {
            i += 1;
        }
        Some((start, &command[start..i]))
    })
}

/// Whether running `command` through `eval` in an interactive bash could
/// make bash print a job notice (`[1] 12345`), now or in a later command,
/// or behave differently from sourced text.
///
/// Conservative, on the text alone: a background `&` (not `&&`, `|&`, `>&`,
/// `<&`, `&>`); `.` as a command word; or a word that runs or stores code
/// the shell executes itself later (`eval`, `source`, `alias`, `coproc`,
/// `trap`, `mapfile`/`readarray` callbacks, `fc`, `enable`) or that only
/// works in sourced text (`return`, `LINENO`, `BASH_SOURCE`, `caller`).
/// Functions need no rule of their own: one that starts a job was defined
/// by text holding `&`. A false alarm only costs speed; a command that
/// builds these words from escapes can still get a notice printed.
pub fn may_start_jobs(command: &str) -> bool {
    const WORDS: &[&str] = &[
        "eval",
        "source",
        "alias",
        "coproc",
        "trap",
        "mapfile",
        "readarray",
        "fc",
        "enable",
        "return",
        "LINENO",
        "BASH_SOURCE",
        "BASH_LINENO",
        "caller",
    ];
    if has_background_amp(command) {
        return true;
    }
    let b = command.as_bytes();
    words_of(command)
        .any(|(start, w)| WORDS.contains(&w) || (w == "." && dot_in_command_position(b, start)))
}

/// Whether `command` holds a bare `&` (not `&&`, `|&`, `>&`, `<&`, `&>`).
fn has_background_amp(command: &str) -> bool {
    let b = command.as_bytes();
    b.iter().enumerate().any(|(i, &c)| {
        c == b'&' && {
            let prev = i.checked_sub(1).map(|j| b[j]);
            let next = b.get(i + 1).copied();
            !(matches!(prev, Some(b'&' | b'>' | b'<' | b'|')) || matches!(next, Some(b'&' | b'>')))
        }
    })
}

/// Whether bash must run `command` at the top level ([`Via::Eval`]) even
/// where it would otherwise be sourced: sourced text cannot remove a DEBUG
/// trap (bash puts the old one back when the file ends), so text that sets
/// traps is evaluated — unless it starts a job itself, where the job
/// notice `eval` prints would be worse.
pub fn needs_top_level(command: &str) -> bool {
    has_word(command, &["trap"]) && !has_background_amp(command)
}

/// Whether the `.` word at `at` stands where a command name would.
fn dot_in_command_position(b: &[u8], at: usize) -> bool {
    // The text before it, trailing blanks (not newlines) skipped.
    let mut end = at;
    while end > 0 && matches!(b[end - 1], b' ' | b'\t') {
        end -= 1;
    }
    let separator = |c: u8| c.is_ascii_whitespace() || b";&|(){}<>!`'\"".contains(&c);
    match end.checked_sub(1).map(|j| b[j]) {
        None => return true,
        // After an operator, bracket, quote or newline.
        Some(c) if separator(c) => return true,
        _ => {}
    }
    let mut start = end;
    while start > 0 && !separator(b[start - 1]) {
        start -= 1;
    }
    let prev = &b[start..end];
    const LEADERS: &[&[u8]] = &[
        b"then", b"do", b"else", b"elif", b"if", b"while", b"until", b"time", b"command",
        b"builtin", b"exec",
    ];
    let assignment = prev.iter().position(|&c| c == b'=').is_some_and(|eq| {
        eq > 0
            && prev[..eq]
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'_')
    });
    LEADERS.contains(&prev) || prev.starts_with(b"-") || assignment
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_may_start_jobs() {
        for yes in [
            "sleep 5 &",
            "sleep 1 & wait",
            "a&b",
            "f() { sleep 1 & }",
            ". ./venv/bin/activate",
            "cd /x && . env.sh",
            "x=1 . f",
            "if true; then . f; fi",
            "{ . f; }",
            "echo; . f",
            "(. f)",
            "source f",
            "eval \"$c\"",
            "alias ll='ls -l'",
            "coproc cat",
            "trap 'x' INT",
            "mapfile -C cb a",
            "return 3",
            "echo $LINENO",
            "command . f",
            "time -p . f",
            "x=1\n. f",
        ] {
            assert!(may_start_jobs(yes), "{yes:?}");
        }
        for no in [
            "true",
            "cd /tmp && ls -la",
            "a || b && c",
            "cmd 2>&1 | tee log",
            "cmd &>/dev/null",
            "cmd &>>log",
            "cmd >&2",
            "cat <&3",
            "cmd |& grep x",
            "find . -name '*.rs'",
            "git add .",
            "ls ./src ../x",
            "cargo build --release",
            "python3 script.py",
            "echo sourced evaluation returned",
            "echo a.b",
        ] {
            assert!(!may_start_jobs(no), "{no:?}");
        }
    }
}
