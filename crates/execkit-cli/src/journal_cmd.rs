//! `execkit journal`: read the journal, a human view by default.
//!
//! Reads the rotated files (`journal.jsonl.N`, oldest first) then the live
//! one. `--tail N` reads backwards from the end, so it costs the last N
//! events, not the file. Lines are decoded lossily; lines that do not parse
//! (a torn line from a crash, garbage) are skipped and counted on stderr.
//! A path that is not a regular file is refused without blocking, exit 66.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use execkit_core::journal::{self, JournalEvent, ResultEvent};
use execkit_core::term;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Args)]
pub struct JournalCmdArgs {
    /// Only the last N events.
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Only events of this session id (or server session name).
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// Print the raw JSON lines.
    #[arg(long)]
    pub json: bool,
    /// Journal file [default: ${XDG_STATE_HOME:-~/.local/state}/execkit/journal.jsonl].
    #[arg(long, value_name = "PATH")]
    pub journal: Option<PathBuf>,
}

/// Exit status when the journal exists but cannot be read, or is not a
/// regular file (a directory, a FIFO, a device): EX_NOINPUT.
pub const EXIT_NOINPUT: u8 = 66;

/// Lines longer than this are skipped (and counted), so a corrupt file
/// cannot make the reader hold gigabytes.
const MAX_LINE: usize = 64 << 20;

/// Bytes read per step when reading backwards for `--tail`.
const CHUNK: usize = 64 << 10;

pub fn main(args: JournalCmdArgs) -> ExitCode {
    let path = args
        .journal
        .clone()
        .unwrap_or_else(execkit_core::journal::Journal::default_path);
    match run(&args, &path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Missing) => {
            eprintln!("execkit journal: no journal at {} yet", path.display());
            ExitCode::SUCCESS
        }
        Err(Failure::Unreadable(why)) => {
            eprintln!("execkit journal: cannot read {why}");
            ExitCode::from(EXIT_NOINPUT)
        }
    }
}

enum Failure {
    /// Neither the journal nor a rotated file exists.
    Missing,
    /// "PATH: why".
    Unreadable(String),
}

/// Counts of lines not shown as they were.
#[derive(Default)]
struct Skipped {
    unparseable: u64,
    too_long: u64,
    lossy: u64,
}

impl Skipped {
    /// Says on stderr what was skipped or shown lossily, if anything.
    fn report(&self) {
        if self.unparseable + self.too_long > 0 {
            eprintln!(
                "execkit journal: skipped {} unparseable line(s){}",
                self.unparseable + self.too_long,
                if self.too_long > 0 {
                    format!(", {} of them longer than {MAX_LINE} bytes", self.too_long)
                } else {
                    String::new()
                }
            );
        }
        if self.lossy > 0 {
            eprintln!(
                "execkit journal: {} line(s) held invalid UTF-8, shown with U+FFFD",
                self.lossy
            );
        }
    }
}

fn run(args: &JournalCmdArgs, path: &Path) -> Result<(), Failure> {
    // What is at the path itself is checked first: a directory or a FIFO
    // is an error, not an empty journal.
    if let Ok(meta) = std::fs::metadata(path) {
        if !meta.is_file() {
            return Err(Failure::Unreadable(format!(
                "{}: not a regular file ({})",
                path.display(),
                journal::kind_of(meta.file_type())
            )));
        }
    }
    let paths = journal::files_oldest_first(path)
        .map_err(|e| Failure::Unreadable(format!("{}: {e}", path.display())))?;
    if paths.is_empty() {
        return Err(Failure::Missing);
    }
    let mut files = Vec::with_capacity(paths.len());
    for p in &paths {
        let f =
            open_regular(p).map_err(|e| Failure::Unreadable(format!("{}: {e}", p.display())))?;
        files.push((p, f));
    }
    let mut skipped = Skipped::default();
    let mut out = std::io::stdout().lock();
    let mut show = |line: &str, v: &Value| {
        let _ = if args.json {
            writeln!(out, "{}", term::json_safe(line))
        } else {
            writeln!(out, "{}", human(v))
        };
    };
    let result = match args.tail {
        Some(n) => {
            let mut kept: Vec<(String, Value)> = Vec::new();
            for (p, f) in files.iter().rev() {
                if kept.len() >= n {
                    break;
                }
                let long = read_backwards(f, |bytes| {
                    if let Some(ev) = decode(bytes, &args.session, &mut skipped) {
                        kept.push(ev);
                    }
                    kept.len() < n
                })
                .map_err(|e| Failure::Unreadable(format!("{}: {e}", p.display())))?;
                skipped.too_long += long;
            }
            for (line, v) in kept.iter().rev() {
                show(line, v);
            }
            Ok(())
        }
        None => files.iter().try_for_each(|(p, f)| {
            read_forwards(f, &mut skipped, |bytes, skipped| {
                if let Some((line, v)) = decode(bytes, &args.session, skipped) {
                    show(&line, &v);
                }
            })
            .map_err(|e| Failure::Unreadable(format!("{}: {e}", p.display())))
        }),
    };
    skipped.report();
    result
}

/// Opens `path` for reading without blocking (a FIFO or a device would
/// hang a plain open or read) and refuses what is not a regular file.
fn open_regular(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "not a regular file ({})",
                journal::kind_of(meta.file_type())
            ),
        ));
    }
    Ok(f)
}

/// One journal line, or `None` when it is empty, does not parse (counted)
/// or is filtered out. Invalid UTF-8 is decoded lossily (and counted).
fn decode(
    bytes: &[u8],
    session: &Option<String>,
    skipped: &mut Skipped,
) -> Option<(String, Value)> {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if bytes.is_empty() {
        return None; // a writer's fresh start after a torn line
    }
    let line = String::from_utf8_lossy(bytes);
    let lossy = matches!(line, std::borrow::Cow::Owned(_));
    let Ok(v) = serde_json::from_str::<Value>(&line) else {
        skipped.unparseable += 1;
        return None;
    };
    if !v.is_object() {
        skipped.unparseable += 1;
        return None;
    }
    skipped.lossy += u64::from(lossy);
    if let Some(s) = session {
        let s = Some(s.as_str());
        if v["session"].as_str() != s && v["name"].as_str() != s {
            return None;
        }
    }
    Some((line.into_owned(), v))
}

/// Calls `each` with every line of `f` (without its `\n`), in order;
/// lines over [`MAX_LINE`] are counted and skipped, never held.
fn read_forwards(
    f: &File,
    skipped: &mut Skipped,
    mut each: impl FnMut(&[u8], &mut Skipped),
) -> std::io::Result<()> {
    let mut r = BufReader::with_capacity(CHUNK, f);
    let mut line: Vec<u8> = Vec::new();
    let mut too_long = false;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let (part, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if !too_long {
            if line.len() + part.len() > MAX_LINE {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(part);
            }
        }
        let used = end.unwrap_or(part.len());
        r.consume(used);
        if end.is_some() {
            if too_long {
                skipped.too_long += 1;
            } else {
                each(&line, skipped);
            }
            line.clear();
            too_long = false;
        }
    }
    if too_long {
        skipped.too_long += 1;
    } else if !line.is_empty() {
        each(&line, skipped); // a last line without its newline (torn)
    }
    Ok(())
}

/// Calls `each` with the lines of `f`, last first, reading backwards in
/// [`CHUNK`]s, until it returns false or the file's start. Memory: one chunk
/// and one line (at most [`MAX_LINE`]; longer ones are skipped, and
/// counted in the return value).
fn read_backwards(f: &File, mut each: impl FnMut(&[u8]) -> bool) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut pos = f.metadata()?.len();
    // The current line's bytes after the chunk being scanned.
    let mut carry: Vec<u8> = Vec::new();
    let mut too_long = false;
    let mut long_lines = 0u64;
    let mut buf = vec![0u8; CHUNK];
    while pos > 0 {
        let n = CHUNK.min(pos as usize);
        pos -= n as u64;
        let chunk = &mut buf[..n];
        f.read_exact_at(chunk, pos)?;
        let mut end = n;
        while let Some(i) = chunk[..end].iter().rposition(|&b| b == b'\n') {
            let go_on = if too_long {
                long_lines += 1;
                true
            } else if carry.is_empty() {
                each(&chunk[i + 1..end])
            } else {
                let mut line = chunk[i + 1..end].to_vec();
                line.append(&mut carry);
                each(&line)
            };
            carry.clear();
            too_long = false;
            if !go_on {
                return Ok(long_lines);
            }
            end = i;
        }
        if !too_long {
            if carry.len() + end > MAX_LINE {
                too_long = true;
                carry = Vec::new();
            } else {
                let mut joined = chunk[..end].to_vec();
                joined.append(&mut carry);
                carry = joined;
            }
        }
    }
    if too_long {
        long_lines += 1;
    } else if !carry.is_empty() {
        each(&carry);
    }
    Ok(long_lines)
}

/// One event as a line for a person: every field from the journal has its
/// control characters escaped (`\e`, `\r`, `\n`, …), so command text,
/// output or an error cannot erase, recolour or hide what is printed. An
/// event this version does not know (or a line that does not fit its
/// event) shows as its `event` name.
fn human(v: &Value) -> String {
    let ts = term::escape(v["ts"].as_str().unwrap_or("?")).into_owned();
    let id = term::escape(v["session"].as_str().unwrap_or("-")).into_owned();
    let session = match v["name"].as_str() {
        Some(name) => format!("{}({id})", term::escape(name)),
        None => id,
    };
    let detail = match JournalEvent::deserialize(v) {
        Ok(event) => detail(&event, v["target"].as_str().unwrap_or("")),
        Err(_) => term::escape(v["event"].as_str().unwrap_or("?")).into_owned(),
    };
    format!("{ts} {session} {detail}")
}

/// ` (person)` after `<` for input a person typed.
fn by_whom(by: &Option<String>) -> &'static str {
    match by.as_deref() {
        Some("person") => " (person)",
        Some(_) => " (other)",
        None => "",
    }
}

/// What happened, after the time and the session; `target` is the line's
/// (shown on `session_open`).
fn detail(event: &JournalEvent, target: &str) -> String {
    let esc = |s: &str| term::escape(s).into_owned();
    match event {
        JournalEvent::SessionOpen { cwd, contained } => match contained {
            Some(c) => format!(
                "open {} (cwd {}, contained: {})",
                esc(target),
                esc(cwd),
                esc(c)
            ),
            None => format!("open {} (cwd {})", esc(target), esc(cwd)),
        },
        JournalEvent::SessionClose => "close".to_string(),
        JournalEvent::Command { command } => format!("$ {}", esc(command)),
        JournalEvent::Input {
            hidden: true, by, ..
        } => format!("<{} [hidden input]", by_whom(by)),
        JournalEvent::Input { text, by, .. } => {
            format!(
                "<{} \"{}\"",
                by_whom(by),
                esc(text.as_deref().unwrap_or(""))
            )
        }
        JournalEvent::JournalGap {
            skipped,
            since,
            error,
        } => format!(
            "[journal gap: {skipped} event(s) not journaled since {}: {}]",
            esc(since),
            esc(error)
        ),
        JournalEvent::Interrupt => "^C".to_string(),
        JournalEvent::Result(r) => result_detail(r),
    }
}

/// A `result` event: its outcome, its time and where its output is (or
/// the output's first line).
fn result_detail(r: &ResultEvent) -> String {
    let status = match outcome_of(r) {
        execkit_core::RunOutcome::Lost => format!(
            "target lost: {}",
            term::escape(r.error.as_deref().unwrap_or(""))
        ),
        o => o.label(),
    };
    let mut line = format!("→ {status} ({} ms)", r.duration_ms);
    if let Some(p) = &r.output_path {
        line.push_str(&format!(" full output: {}", term::escape(p)));
    } else if let Some(o) = r.output.as_deref().filter(|o| !o.is_empty()) {
        let first = o.lines().next().unwrap_or("");
        let more = o.lines().count().saturating_sub(1);
        line.push_str(&format!(" | {}", term::escape(first)));
        if more > 0 {
            line.push_str(&format!(" (+{more} lines)"));
        }
    }
    line
}

/// A journaled `result` event's outcome, weighed by the engine's own rule
/// (`RunResult::outcome`) from the flags the event carries.
fn outcome_of(r: &ResultEvent) -> execkit_core::RunOutcome {
    execkit_core::RunResult {
        command: String::new(),
        exit_code: r.exit_code,
        output: String::new(),
        timed_out: r.timed_out,
        truncated: false,
        restarted: false,
        session_lost: r.session_lost,
        error: None,
        duration_ms: 0,
        cwd: String::new(),
        output_path: None,
        running: false,
        waiting_for_input: r.waiting_for_input,
    }
    .outcome()
}
