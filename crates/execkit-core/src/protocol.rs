//! The sentinel protocol: how a command is written to the shell and how its
//! end, exit status and cwd are recognised in the output.
//!
//! Every command gets a fresh random nonce. The shell is asked to print
//! `__EK_<nonce>:<status>:<cwd>:<nonce>_EK__\n` after the command; in the
//! shell source the literal is split (`'__EK''_'`) and the nonce passed as an
//! argument, so neither echoed input nor printed command text can contain the
//! sentinel, and a command cannot forge one without knowing the nonce.

use std::fmt::Write as _;

pub use crate::shell::Flavor;

/// Longest physical line written to the shell. A PTY in canonical mode keeps
/// at most 4095 bytes per line; stay well clear of it.
const MAX_LINE: usize = 2048;

/// Variable the long-command path accumulates the text in.
const CMD_VAR: &str = "__ek_c";

/// A fresh random nonce (16 hex digits).
pub fn nonce() -> String {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // No entropy source: fall back to time and address noise; still unique.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b = ((t as u64) ^ (&b as *const _ as u64).rotate_left(17)).to_le_bytes();
    }
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

/// The bytes to write for one command: the command run in the current
/// shell, then the sentinel. Long commands are sent in chunks into a
/// variable first so no physical line reaches the PTY line limit.
///
/// POSIX shells get `command eval` (plain `eval` is a special builtin whose
/// syntax errors abort the whole input line in dash and busybox ash). bash
/// gets `. /dev/fd/9 9<<<…`: sourced text runs non-interactively, so bash
/// prints no `[1] PID` notice for background jobs, yet state persists.
pub fn encode_command(command: &str, nonce: &str, flavor: Flavor) -> Vec<u8> {
    let tail = format!(
        "__ek_s=$?; {CMD_VAR}=; {}\n",
        sentinel_source(nonce, "$__ek_s")
    );
    let run = match flavor {
        Flavor::Bash => format!(". /dev/fd/9 9<<<\"${CMD_VAR}\"; "),
        Flavor::Posix => format!("command eval \"${CMD_VAR}\"; "),
    };
    let quoted = shell_quote(command);
    if quoted.len() <= MAX_LINE {
        return format!("{CMD_VAR}={quoted}; {run}{tail}").into_bytes();
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
    let _ = write!(out, "{run}{tail}");
    out.into_bytes()
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
        let enc = encode_command(&cmd, "n", Flavor::Posix);
        assert!(enc.split(|&b| b == b'\n').all(|l| l.len() < 4000));
    }

    #[test]
    fn nul_is_refused() {
        assert_eq!(validate("a\0b"), Err(CommandError::Nul { offset: 1 }));
        assert_eq!(validate("  \n"), Err(CommandError::Empty));
    }
}
