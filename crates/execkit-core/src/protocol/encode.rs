//! Writing a command for the shell: quoting, the start marker and
//! sentinel sources, the wrapper (`eval` or sourced, guarded or not), and
//! the long-command path that keeps every physical line short.

use std::fmt::Write as _;

#[cfg(doc)]
use super::{may_change_hooks, may_start_jobs, SentinelScanner};

/// Longest physical line written to the shell. A PTY in canonical mode keeps
/// at most 4095 bytes per line; stay well clear of it.
const MAX_LINE: usize = 2048;

/// Variable the long-command path accumulates the text in.
const CMD_VAR: &str = "__ek_c";

/// Appends `text` quoted for a POSIX shell: single quotes, with `'` and
/// control characters (which a terminal line discipline would act on)
/// spliced in through `printf` octal escapes.
fn push_quoted_piece(out: &mut String, c: char) {
    match c {
        '\'' => out.push_str(r"'\''"),
        '\n' | '\t' => out.push(c),
        c if (c as u32) < 0x20 || c == '\u{7f}' => {
            let _ = write!(out, "'\"$(printf '\\{:03o}')\"'", c as u32);
        }
        c => out.push(c),
    }
}

/// Quotes a whole string as one shell word.
pub fn shell_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        push_quoted_piece(&mut out, c);
    }
    out.push('\'');
    out
}

/// Shell source that prints the sentinel for `nonce`, taking the status from
/// `status` (a shell expression such as `$__ek_s` or a number). The shell's
/// option flags (`$-`) ride along so the engine knows when `set -x` is on.
/// Whether the shell's prompt machinery is non-empty (or `TMOUT` may log
/// it out while idle) rides along too: then the next command needs a start
/// marker.
pub fn sentinel_source(nonce: &str, status: &str) -> String {
    sentinel_source_as(nonce, status, true)
}

/// [`sentinel_source`], or with `full` false the short form without flags
/// and prompts (`__EK_<nonce>:<status>:<cwd>:<nonce>_EK__`): three
/// expansions fewer, ~5 µs of bash CPU, for a session that gave no reason to
/// watch them (see [`may_change_hooks`]).
pub fn sentinel_source_as(nonce: &str, status: &str, full: bool) -> String {
    if !full {
        return format!(
            "command printf '__EK''_%s:%d:%s:%s_EK__\\n' {nonce} \"{status}\" \"$PWD\" {nonce}"
        );
    }
    format!(
        "command printf '__EK''_%s:%d:%s:%s:%s:%s_EK__\\n' {nonce} \"{status}\" \"$-\" \
         \"${{PS1:+1}}${{PS2:+1}}${{PS0:+1}}${{PROMPT_COMMAND:+1}}${{TMOUT:+1}}\" \"$PWD\" {nonce}"
    )
}

/// Shell source that prints the start marker for `nonce`.
pub fn start_source(nonce: &str) -> String {
    format!("command printf '__EK''S_%s\\n' {nonce}")
}

/// Name of the shell variable holding [`TRACE_MARK`] (set at start-up).
pub const TRACE_MARK_VAR: &str = "__ek_x";

/// A character put in front of `PS4` while a guarded command runs. bash
/// repeats the first character of `PS4` once per level of `eval` or `.`,
/// so the command's own trace would read `++ echo hi`; with this invisible
/// first character (a C0 control the cleaner removes) it reads `+ echo hi`,
/// as at a terminal.
pub const TRACE_MARK: char = '\u{1f}';

/// How the shell is asked to run a command's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `command eval`: the cheapest. Plain `eval` is a special builtin whose
    /// syntax errors abort the whole input line in dash, busybox ash and
    /// bash's POSIX mode; `command` takes that property away.
    Eval,
    /// bash only: `. /dev/fd/9 9<<<…`. Sourced text runs with bash's
    /// `interactive` flag off, so a background job prints no `[1] PID`
    /// notice, yet state persists. Costs a pipe and an open per command,
    /// so it is used only once [`may_start_jobs`] says it could matter.
    Source,
}

/// How much of execkit's wrapper a command must hide from the shell's own
/// hooks (see [`encode_command`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// No trace, no trap can be on: the cheapest wrapper.
    Off,
    /// The command may turn on `set -x` or a DEBUG trap, or one may be set:
    /// `PS4` gets [`TRACE_MARK`] in front, and the sentinel is printed with
    /// stdout and stderr pointed at `/dev/null` (its trace and trap output
    /// go there) through a copy of the terminal on fd 3. A DEBUG trap fires
    /// once before the `eval` or `.`, after the start marker — as it would
    /// once before a line typed at a terminal (bash runs no DEBUG trap
    /// inside sourced text).
    Hooks,
    /// `set -x` is on: as `Hooks`, and the start marker moves into the
    /// evaluated text, on a line of its own before the command's, so the
    /// trace of the `eval` or `.` itself falls before it. (The command's
    /// line numbers in error messages then count one more.)
    Trace,
}

/// Shell source run before a person's command (`execkit shell`, see
/// `PersonTerminal`): keeps execkit's terminal modes in `__ek_t`, gives
/// the terminal the modes a person expects (echo, line editing, `\n` →
/// `\r\n`) and the command the person's `TERM`, no forced pager, colour
/// allowed.
/// Silent (its trace too, under `set -x`).
fn person_prelude(term: &str) -> String {
    format!(
        "{{ __ek_t=$(stty -g); stty sane; stty susp undef; export TERM={}; \
         unset PAGER GIT_PAGER MANPAGER SYSTEMD_PAGER NO_COLOR LESS; }} >/dev/null 2>&1; ",
        shell_quote(term)
    )
}

/// Shell source that puts back what [`person_prelude`] changed: the
/// terminal modes execkit set up (those kept in `__ek_t`; the start-up
/// ones if none were) and its variables. Prints nothing, keeps `$?`.
pub fn person_restore() -> &'static str {
    "{ stty \"$__ek_t\" || stty -echo -onlcr -ixon; \
     export TERM=dumb PAGER=cat GIT_PAGER=cat MANPAGER=cat SYSTEMD_PAGER= NO_COLOR=1 LESS=-FRX; \
     } >/dev/null 2>&1"
}

/// The bytes to write for one command: the start marker, the command run
/// in the current shell, then the sentinel. Long commands are sent in
/// chunks into a variable first so no physical line reaches the PTY line
/// limit. A guard costs ~15 µs of shell CPU per command, so it is used only
/// when [`may_change_hooks`] or the shell's flags say it could matter.
///
/// `marked`: print the start marker (implied by a guard). Without it the
/// sentinel alone delimits the output — the cheap path, for a shell that
/// prints nothing between commands (no prompts, no background jobs): the
/// marker is a write of its own, and one more wake-up for the reader.
///
/// `full`: the sentinel reports flags and prompts ([`sentinel_source_as`]);
/// the command's scanner must be built to match
/// ([`SentinelScanner::short`] when not).
///
/// `person`: a person's command at a real terminal, with that `TERM`: the
/// terminal gets a person's modes before the command and execkit's back
/// before the sentinel ([`person_restore`]), status kept.
pub fn encode_command(
    command: &str,
    nonce: &str,
    via: Via,
    guard: Guard,
    marked: bool,
    full: bool,
    person: Option<&str>,
) -> Vec<u8> {
    // `text`: one shell word holding the command's text.
    let run = |text: &str| match via {
        Via::Eval => format!("command eval {text}"),
        Via::Source => format!(". /dev/fd/9 9<<<{text}"),
    };
    let start = start_source(nonce);
    let mut sentinel = sentinel_source_as(nonce, "$?", full);
    let mut prefix = String::new();
    // Run after the start marker: the marker must end in a bare `\n`.
    let prelude = person.map(person_prelude).unwrap_or_default();
    if person.is_some() {
        sentinel = format!(
            "{{ __ek_r=$?; {}; }} >/dev/null 2>&1; {}",
            person_restore(),
            sentinel_source_as(nonce, "$__ek_r", full)
        );
    }
    if guard != Guard::Off {
        sentinel = format!("{{ {sentinel} >&3; }} 3>&1 >/dev/null 2>&1");
        let v = TRACE_MARK_VAR;
        let _ = write!(prefix, "PS4=${v}${{PS4#\"${v}\"}}; ");
    }
    let text = if guard == Guard::Trace {
        std::borrow::Cow::Owned(format!("{start}\n{prelude}{command}"))
    } else {
        if marked || guard != Guard::Off {
            let _ = write!(prefix, "{start}; ");
        }
        prefix.push_str(&prelude);
        std::borrow::Cow::Borrowed(command)
    };
    let quoted = shell_quote(&text);
    if quoted.len() <= MAX_LINE {
        return format!("{prefix}{}; {sentinel}\n", run(&quoted)).into_bytes();
    }
    let mut out = String::with_capacity(quoted.len() + quoted.len() / 64 + 256);
    assign_in_pieces(&text, &mut out);
    // Cleared after the sentinel: `$?` must still be the command's.
    let run = run(&format!("\"${CMD_VAR}\""));
    let _ = writeln!(out, "{prefix}{run}; {sentinel}; {CMD_VAR}=");
    out.into_bytes()
}

/// Writes the lines that put `text`, quoted, into `__ek_c` (the
/// long-command path). Each ≤2 KB piece goes into a variable of its own,
/// then groups of [`JOIN`] are joined into one, level by level: every
/// byte is copied once per level (a handful), where appending to one
/// variable copied the whole text again for every piece (quadratic:
/// 8 MB took ~50 s).
fn assign_in_pieces(text: &str, out: &mut String) {
    let mut names: Vec<String> = Vec::new();
    let mut chunk = String::with_capacity(MAX_LINE + 64);
    let flush = |chunk: &mut String, out: &mut String, names: &mut Vec<String>| {
        let name = format!("{CMD_VAR}0_{}", names.len());
        let _ = writeln!(out, "{name}='{chunk}'");
        names.push(name);
        chunk.clear();
    };
    for c in text.chars() {
        push_quoted_piece(&mut chunk, c);
        if chunk.len() >= MAX_LINE {
            flush(&mut chunk, out, &mut names);
        }
    }
    if !chunk.is_empty() {
        flush(&mut chunk, out, &mut names);
    }
    let mut level = 0;
    loop {
        level += 1;
        let last = names.len() <= JOIN;
        let mut next = Vec::new();
        for (j, group) in names.chunks(JOIN).enumerate() {
            let name = if last {
                CMD_VAR.to_string()
            } else {
                format!("{CMD_VAR}{level}_{j}")
            };
            let _ = write!(out, "{name}=\"");
            for n in group {
                let _ = write!(out, "${n}");
            }
            out.push_str("\"; unset");
            for n in group {
                let _ = write!(out, " {n}");
            }
            out.push('\n');
            next.push(name);
        }
        if last {
            break;
        }
        names = next;
    }
}

/// How many variables one line of the long-command path joins: 64 names
/// of ≤12 bytes, twice (the join and the unset), keep the line < 2 KB.
const JOIN: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_round_trips_through_sh() {
        let cmd = "echo 'a' \"b\" \\c $'d\\n' \x01\x7f";
        let q = shell_quote(cmd);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {q}"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), cmd);
    }

    #[test]
    fn long_commands_have_short_lines() {
        let cmd = format!("echo {}", "x'y".repeat(100_000));
        for via in [Via::Eval, Via::Source] {
            for guard in [Guard::Off, Guard::Hooks, Guard::Trace] {
                let enc = encode_command(&cmd, "n", via, guard, true, true, None);
                assert!(enc.split(|&b| b == b'\n').all(|l| l.len() < 4000));
            }
        }
    }
}
