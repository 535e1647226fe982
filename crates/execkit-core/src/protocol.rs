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
pub fn encode_command(
    command: &str,
    nonce: &str,
    via: Via,
    guard: Guard,
    marked: bool,
    full: bool,
) -> Vec<u8> {
    // `text`: one shell word holding the command's text.
    let run = |text: &str| match via {
        Via::Eval => format!("command eval {text}"),
        Via::Source => format!(". /dev/fd/9 9<<<{text}"),
    };
    let start = start_source(nonce);
    let mut sentinel = sentinel_source_as(nonce, "$?", full);
    let mut prefix = String::new();
    if guard != Guard::Off {
        sentinel = format!("{{ {sentinel} >&3; }} 3>&1 >/dev/null 2>&1");
        let v = TRACE_MARK_VAR;
        let _ = write!(prefix, "PS4=${v}${{PS4#\"${v}\"}}; ");
    }
    let text = if guard == Guard::Trace {
        std::borrow::Cow::Owned(format!("{start}\n{command}"))
    } else {
        if marked || guard != Guard::Off {
            let _ = write!(prefix, "{start}; ");
        }
        std::borrow::Cow::Borrowed(command)
    };
    let quoted = shell_quote(&text);
    if quoted.len() <= MAX_LINE {
        return format!("{prefix}{}; {sentinel}\n", run(&quoted)).into_bytes();
    }
    // Each ≤2 KB piece goes into a variable of its own, then groups of
    // [`JOIN`] are joined into one, level by level, into `__ek_c`: every
    // byte is copied once per level (a handful), where appending to one
    // variable copied the whole text again for every piece (quadratic:
    // 8 MB took ~50 s).
    let mut out = String::with_capacity(quoted.len() + quoted.len() / 64 + 256);
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
            flush(&mut chunk, &mut out, &mut names);
        }
    }
    if !chunk.is_empty() {
        flush(&mut chunk, &mut out, &mut names);
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
    // Cleared after the sentinel: `$?` must still be the command's.
    let run = run(&format!("\"${CMD_VAR}\""));
    let _ = writeln!(out, "{prefix}{run}; {sentinel}; {CMD_VAR}=");
    out.into_bytes()
}

/// How many variables one line of the long-command path joins: 64 names
/// of ≤12 bytes, twice (the join and the unset), keep the line < 2 KB.
const JOIN: usize = 64;

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

/// What the sentinel reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentinel {
    /// `$?` of the command.
    pub status: i32,
    /// The shell's option flags (`$-`) after the command.
    pub flags: String,
    /// `PS1`, `PS2`, `PS0`, `PROMPT_COMMAND` or `TMOUT` is set: the shell
    /// prints something between commands.
    pub prompts: bool,
    /// The shell's `$PWD` after the command.
    pub cwd: String,
}

impl Sentinel {
    /// Whether the shell traces commands (`set -x`).
    pub fn xtrace(&self) -> bool {
        self.flags.contains('x')
    }
}

/// Most bytes kept from before a start marker, for a command whose marker
/// never came (a syntax error on its first line stops it being printed).
const MAX_BEFORE_START: usize = 64 * 1024;

/// Finds one nonce's sentinel in a byte stream fed in arbitrary chunks and,
/// for a command, its start marker first.
///
/// Bytes before the start marker are not the command's and are dropped
/// (kept, bounded, only in case the marker never comes: then the sentinel
/// alone delimits the output). Bytes between marker and sentinel are command
/// output and are released as soon as they cannot be part of a sentinel; at
/// most a sentinel-prefix-long tail is held back.
#[derive(Debug)]
pub struct SentinelScanner {
    /// The start marker, until it has been seen.
    marker: Option<Vec<u8>>,
    /// Bytes that preceded the start marker so far.
    before_start: Vec<u8>,
    start: Vec<u8>,
    end: Vec<u8>,
    buf: Vec<u8>,
    done: Option<Sentinel>,
    after: Vec<u8>,
    /// The sentinel carries flags and prompts (else only status and cwd).
    full: bool,
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
    /// A scanner for `nonce`'s sentinel alone (start-up, resync): every
    /// byte before it is output.
    pub fn new(nonce: &str) -> Self {
        SentinelScanner {
            marker: None,
            before_start: Vec::new(),
            start: format!("__EK_{nonce}:").into_bytes(),
            end: format!(":{nonce}_EK__\n").into_bytes(),
            buf: Vec::new(),
            done: None,
            after: Vec::new(),
            full: true,
        }
    }

    /// Expects the short sentinel ([`sentinel_source_as`] with `full`
    /// false): it reports no flags and no prompts.
    pub fn short(mut self) -> Self {
        self.full = false;
        self
    }

    /// A scanner for a command encoded by [`encode_command`]: output starts
    /// after `nonce`'s start marker.
    pub fn with_start(nonce: &str) -> Self {
        SentinelScanner {
            marker: Some(format!("__EKS_{nonce}\n").into_bytes()),
            ..SentinelScanner::new(nonce)
        }
    }

    /// Whether the sentinel has been seen.
    pub fn is_done(&self) -> bool {
        self.done.is_some()
    }

    /// Whether the command has started (its start marker was seen, or the
    /// scanner expects none).
    pub fn started(&self) -> bool {
        self.marker.is_none()
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
        if self.marker.is_some() && self.done.is_none() {
            let rest = self.seek_start(chunk)?;
            return self.feed(&rest, sink);
        }
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

    /// Before the start marker: drops what precedes it. Returns the bytes
    /// to scan as output once the command has started — what follows the
    /// marker, or, when the sentinel comes first (no marker was printed),
    /// everything seen so far.
    fn seek_start(&mut self, chunk: &[u8]) -> Option<Vec<u8>> {
        let marker = self.marker.as_deref().expect("seeking the start");
        self.buf.extend_from_slice(chunk);
        let m = find(&self.buf, marker);
        let e = find(&self.buf, &self.start);
        match (m, e) {
            (Some(m), e) if e.is_none_or(|e| m < e) => {
                let rest = self.buf.split_off(m + marker.len());
                self.buf.clear();
                self.before_start = Vec::new();
                self.marker = None;
                Some(rest)
            }
            (_, Some(_)) => {
                // The sentinel came first: no marker was printed.
                let mut all = std::mem::take(&mut self.before_start);
                all.append(&mut self.buf);
                self.marker = None;
                Some(all)
            }
            _ => {
                let keep =
                    partial_suffix(&self.buf, marker).max(partial_suffix(&self.buf, &self.start));
                let release = self.buf.len() - keep;
                self.before_start.extend(self.buf.drain(..release));
                if self.before_start.len() > MAX_BEFORE_START {
                    let excess = self.before_start.len() - MAX_BEFORE_START;
                    self.before_start.drain(..excess);
                }
                None
            }
        }
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
                    if let Some(s) = parse_body(body, self.full) {
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

/// `status:flags:prompts:cwd`, or `status:cwd` when not `full` (the cwd
/// may hold colons).
fn parse_body(body: &[u8], full: bool) -> Option<Sentinel> {
    if !full {
        let colon = body.iter().position(|&b| b == b':')?;
        return Some(Sentinel {
            status: std::str::from_utf8(&body[..colon]).ok()?.parse().ok()?,
            flags: String::new(),
            prompts: false,
            cwd: String::from_utf8_lossy(&body[colon + 1..]).into_owned(),
        });
    }
    let mut parts = body.splitn(4, |&b| b == b':');
    let status = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let flags = std::str::from_utf8(parts.next()?).ok()?;
    let prompts = parts.next()?;
    if !flags.bytes().all(|b| b.is_ascii_alphanumeric()) || !prompts.iter().all(|&b| b == b'1') {
        return None;
    }
    let cwd = String::from_utf8_lossy(parts.next()?).into_owned();
    Some(Sentinel {
        status,
        flags: flags.to_string(),
        prompts: !prompts.is_empty(),
        cwd,
    })
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
        let stream = format!(
            "hello_world __EK_ffff:0:i::/x:ffff_EK__\nabc__EK_{n}:42:hB:1:/tmp/a b:c:{n}_EK__\n"
        );
        for split in 1..stream.len() {
            let (out, s) = scan_all(n, stream.as_bytes(), split);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "hello_world __EK_ffff:0:i::/x:ffff_EK__\nabc"
            );
            assert_eq!(
                s,
                Some(Sentinel {
                    status: 42,
                    flags: "hB".into(),
                    prompts: true,
                    cwd: "/tmp/a b:c".into()
                })
            );
        }
    }

    fn scan_command(nonce: &str, stream: &[u8], split: usize) -> (Vec<u8>, Option<Sentinel>) {
        let mut s = SentinelScanner::with_start(nonce);
        let mut out = Vec::new();
        let mut found = None;
        for part in stream.chunks(split.max(1)) {
            let r = s.push(part);
            out.extend(r.output);
            found = found.or(r.sentinel);
        }
        (out, found)
    }

    #[test]
    fn output_is_what_lies_between_start_and_sentinel() {
        let n = "0123456789abcdef";
        // A prompt, a PS0, a stale sentinel and a forged marker before the
        // start; the real start; output; the sentinel; a prompt after it.
        let stream = format!(
            "(venv) ps0__EK_ffff:0:i::/old:ffff_EK__\n__EKS_ffff\n__EKS_{n}\nhi\n__EKS_x\n__EK_{n}:0:i::/tmp:{n}_EK__\n(venv) "
        );
        for split in 1..stream.len() {
            let (out, s) = scan_command(n, stream.as_bytes(), split);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "hi\n__EKS_x\n",
                "split {split}"
            );
            assert_eq!(s.map(|s| s.cwd), Some("/tmp".into()));
        }
    }

    #[test]
    fn without_a_start_marker_the_sentinel_alone_delimits() {
        let n = "0123456789abcdef";
        let stream = format!("bash: syntax error\n__EK_{n}:2:i::/tmp:{n}_EK__\n");
        for split in 1..stream.len() {
            let (out, s) = scan_command(n, stream.as_bytes(), split);
            assert_eq!(String::from_utf8(out).unwrap(), "bash: syntax error\n");
            assert_eq!(s.map(|s| s.status), Some(2));
        }
    }

    #[test]
    fn forged_sentinels_are_output() {
        let n = "00112233aabbccdd";
        let fake = "__EK_00112233aabbccde:0:i::/:00112233aabbccde_EK__\n__EK''_x";
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
            for guard in [Guard::Off, Guard::Hooks, Guard::Trace] {
                let enc = encode_command(&cmd, "n", via, guard, true, true);
                assert!(enc.split(|&b| b == b'\n').all(|l| l.len() < 4000));
            }
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
