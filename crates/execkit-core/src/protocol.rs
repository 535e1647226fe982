//! The sentinel protocol: how a command is written to the shell and how its
//! end, exit status and cwd are recognised in the output.
//!
//! Every command gets a fresh random nonce. The shell is asked to print
//! `__EK_<nonce>:<status>:<cwd>:<nonce>_EK__\n` after the command; in the
//! shell source the literal is split (`'__EK''_'`) and the nonce passed as an
//! argument, so neither echoed input nor printed command text can contain the
//! sentinel, and a command cannot forge one without knowing the nonce.

use std::fmt::Write as _;

/// Longest physical line written to the shell. A PTY in canonical mode keeps
/// at most 4095 bytes per line; stay well clear of it.
const MAX_LINE: usize = 2048;

/// Variable the long-command path accumulates the text in.
const CMD_VAR: &str = "__ek_c";

/// A fresh random nonce (16 hex digits).
///
/// The bytes come from the OS generator, drawn 512 at a time: a command
/// takes two nonces, and a `getrandom` call each was a measurable part of a
/// round trip.
pub fn nonce() -> String {
    thread_local! {
        static POOL: std::cell::RefCell<(Vec<u8>, usize)> = const { std::cell::RefCell::new((Vec::new(), 0)) };
    }
    let b: [u8; 8] = POOL.with(|p| {
        let (pool, used) = &mut *p.borrow_mut();
        if *used + 8 > pool.len() {
            pool.resize(512, 0);
            *used = 0;
            if getrandom::fill(pool).is_err() {
                // No entropy source: fall back to time and address noise;
                // still unique per call.
                pool.clear();
            }
        }
        if pool.is_empty() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let salt = (&t as *const _ as u64).rotate_left(17);
            return ((t as u64) ^ salt).to_le_bytes();
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&pool[*used..*used + 8]);
        // Never hand the same bytes out twice.
        pool[*used..*used + 8].fill(0);
        *used += 8;
        b
    });
    b.iter().fold(String::with_capacity(16), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
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
/// `status` (a shell expression such as `$__ek_s` or a number).
pub fn sentinel_source(nonce: &str, status: &str) -> String {
    format!("command printf '__EK''_%s:%d:%s:%s_EK__\\n' {nonce} \"{status}\" \"$PWD\" {nonce}")
}

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

/// The bytes to write for one command: the command run in the current
/// shell, then the sentinel. Long commands are sent in chunks into a
/// variable first so no physical line reaches the PTY line limit.
pub fn encode_command(command: &str, nonce: &str, via: Via) -> Vec<u8> {
    // `text`: one shell word holding the command's text.
    let run = |text: &str| match via {
        Via::Eval => format!("command eval {text}"),
        Via::Source => format!(". /dev/fd/9 9<<<{text}"),
    };
    let sentinel = sentinel_source(nonce, "$?");
    let quoted = shell_quote(command);
    if quoted.len() <= MAX_LINE {
        return format!("{}; {sentinel}\n", run(&quoted)).into_bytes();
    }
    let mut out = String::with_capacity(quoted.len() + quoted.len() / 64 + 256);
    let _ = writeln!(out, "{CMD_VAR}=''");
    let mut chunk = String::with_capacity(MAX_LINE + 64);
    for c in command.chars() {
        push_quoted_piece(&mut chunk, c);
        if chunk.len() >= MAX_LINE {
            let _ = writeln!(out, "{CMD_VAR}=${CMD_VAR}'{chunk}'");
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        let _ = writeln!(out, "{CMD_VAR}=${CMD_VAR}'{chunk}'");
    }
    // Cleared after the sentinel: `$?` must still be the command's.
    let run = run(&format!("\"${CMD_VAR}\""));
    let _ = writeln!(out, "{run}; {sentinel}; {CMD_VAR}=");
    out.into_bytes()
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
    let b = command.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'&' {
            let prev = i.checked_sub(1).map(|j| b[j]);
            let next = b.get(i + 1).copied();
            let part_of_other = matches!(prev, Some(b'&' | b'>' | b'<' | b'|'))
                || matches!(next, Some(b'&' | b'>'));
            if !part_of_other {
                return true;
            }
        }
    }
    let word_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'/' | b'-');
    let mut i = 0;
    while i < b.len() {
        if !word_char(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && word_char(b[i]) {
            i += 1;
        }
        let w = &command[start..i];
        if WORDS.contains(&w) || (w == "." && dot_in_command_position(b, start)) {
            return true;
        }
    }
    false
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

/// What the sentinel reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentinel {
    /// `$?` of the command.
    pub status: i32,
    /// The shell's `$PWD` after the command.
    pub cwd: String,
}

/// Finds one nonce's sentinel in a byte stream fed in arbitrary chunks.
///
/// Bytes before the sentinel are command output and are released as soon as
/// they cannot be part of a sentinel; at most a sentinel-prefix-long tail is
/// held back.
#[derive(Debug)]
pub struct SentinelScanner {
    start: Vec<u8>,
    end: Vec<u8>,
    buf: Vec<u8>,
    done: Option<Sentinel>,
    after: Vec<u8>,
}

/// Result of feeding bytes to a [`SentinelScanner`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Bytes that are definitely command output.
    pub output: Vec<u8>,
    /// The sentinel, once complete.
    pub sentinel: Option<Sentinel>,
}

impl SentinelScanner {
    /// A scanner for `nonce`'s sentinel.
    pub fn new(nonce: &str) -> Self {
        SentinelScanner {
            start: format!("__EK_{nonce}:").into_bytes(),
            end: format!(":{nonce}_EK__\n").into_bytes(),
            buf: Vec::new(),
            done: None,
            after: Vec::new(),
        }
    }

    /// Whether the sentinel has been seen.
    pub fn is_done(&self) -> bool {
        self.done.is_some()
    }

    /// Bytes that arrived after the sentinel (none in normal operation).
    pub fn take_after(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.after)
    }

    /// Feeds a chunk; returns output released by it and the sentinel if it
    /// completed in this chunk.
    pub fn push(&mut self, chunk: &[u8]) -> Scan {
        let mut output = Vec::new();
        let sentinel = self.feed(chunk, &mut |b| output.extend_from_slice(b));
        Scan { output, sentinel }
    }

    /// Like [`push`](Self::push), handing output to `sink` without copying
    /// it when the chunk cannot hold a sentinel (the common case).
    pub fn feed(&mut self, chunk: &[u8], sink: &mut dyn FnMut(&[u8])) -> Option<Sentinel> {
        if self.done.is_none() && self.buf.is_empty() && !chunk.contains(&b'_') {
            sink(chunk);
            return None;
        }
        let scan = self.push_slow(chunk);
        if !scan.output.is_empty() {
            sink(&scan.output);
        }
        scan.sentinel
    }

    fn push_slow(&mut self, chunk: &[u8]) -> Scan {
        let mut scan = Scan::default();
        if self.done.is_some() {
            self.after.extend_from_slice(chunk);
            return scan;
        }
        self.buf.extend_from_slice(chunk);
        match find(&self.buf, &self.start) {
            Some(at) => {
                let body_start = at + self.start.len();
                if let Some(rel) = find(&self.buf[body_start..], &self.end) {
                    let body = &self.buf[body_start..body_start + rel];
                    if let Some(s) = parse_body(body) {
                        scan.output = self.buf[..at].to_vec();
                        self.after = self.buf[body_start + rel + self.end.len()..].to_vec();
                        self.buf.clear();
                        scan.sentinel = Some(s.clone());
                        self.done = Some(s);
                        return scan;
                    }
                    // Malformed body after a genuine start: not ours; release it.
                    scan.output = self.buf.drain(..body_start).collect();
                    return scan;
                }
                // Wait for the rest; release what precedes the start.
                scan.output = self.buf.drain(..at).collect();
            }
            None => {
                let keep = partial_suffix(&self.buf, &self.start);
                let release = self.buf.len() - keep;
                scan.output = self.buf.drain(..release).collect();
            }
        }
        scan
    }
}

fn parse_body(body: &[u8]) -> Option<Sentinel> {
    let colon = body.iter().position(|&b| b == b':')?;
    let status = std::str::from_utf8(&body[..colon]).ok()?.parse().ok()?;
    let cwd = String::from_utf8_lossy(&body[colon + 1..]).into_owned();
    Some(Sentinel { status, cwd })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(p) => {
                i += p;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

/// Length of the longest suffix of `hay` that is a proper prefix of `needle`.
fn partial_suffix(hay: &[u8], needle: &[u8]) -> usize {
    let max = needle.len().saturating_sub(1).min(hay.len());
    (1..=max)
        .rev()
        .find(|&n| hay[hay.len() - n..] == needle[..n])
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(nonce: &str, stream: &[u8], split: usize) -> (Vec<u8>, Option<Sentinel>) {
        let mut s = SentinelScanner::new(nonce);
        let mut out = Vec::new();
        let mut found = None;
        for part in stream.chunks(split.max(1)) {
            let r = s.push(part);
            out.extend(r.output);
            if r.sentinel.is_some() {
                found = r.sentinel;
            }
        }
        (out, found)
    }

    #[test]
    fn finds_sentinel_at_every_split() {
        let n = "0123456789abcdef";
        let stream =
            format!("hello_world __EK_ffff:0:/x:ffff_EK__\nabc__EK_{n}:42:/tmp/a b:c:{n}_EK__\n");
        for split in 1..stream.len() {
            let (out, s) = scan_all(n, stream.as_bytes(), split);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "hello_world __EK_ffff:0:/x:ffff_EK__\nabc"
            );
            assert_eq!(
                s,
                Some(Sentinel {
                    status: 42,
                    cwd: "/tmp/a b:c".into()
                })
            );
        }
    }

    #[test]
    fn forged_sentinels_are_output() {
        let n = "00112233aabbccdd";
        let fake = "__EK_00112233aabbccde:0:/:00112233aabbccde_EK__\n__EK''_x";
        let (out, s) = scan_all(n, fake.as_bytes(), 3);
        assert_eq!(s, None);
        assert_eq!(out, fake.as_bytes());
    }

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
            let enc = encode_command(&cmd, "n", via);
            assert!(enc.split(|&b| b == b'\n').all(|l| l.len() < 4000));
        }
    }

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

    #[test]
    fn nul_is_refused() {
        assert_eq!(validate("a\0b"), Err(CommandError::Nul { offset: 1 }));
        assert_eq!(validate("  \n"), Err(CommandError::Empty));
    }
}
