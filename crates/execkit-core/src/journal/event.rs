//! What a journal line says: one [`JournalEvent`] per line, in a
//! [`JournalLine`] with when (`ts`) and which session. The writer
//! ([`Journal::append`](super::Journal::append)) and `execkit journal` both
//! go through these types, so the format is written down once.
//!
//! A line is one JSON object with its keys in alphabetical order (the
//! writer goes through `serde_json::Value`), for example
//! `{"command":"ls","event":"command","session":"4f2a…","target":"local","ts":"2026-01-01T00:00:00.000Z"}`.
//! `event` names the variant in snake case; the variant's fields sit next
//! to it, and so do the session's (`session`, `name` when the session has
//! one, `target`). A reader meets lines from older and newer versions: a
//! field it does not know is ignored, an event it does not know does not
//! deserialize (`execkit journal` shows its name).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::RunResult;

/// One journal line: when, which session (none for `journal_gap`), what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalLine {
    /// When it was written: RFC 3339, UTC, milliseconds ([`rfc3339`]).
    pub ts: String,
    /// The session the event is about; `None` for the journal's own events.
    #[serde(flatten)]
    pub session: Option<SessionRef>,
    /// What happened (the `event` key and its fields).
    #[serde(flatten)]
    pub event: JournalEvent,
}

/// The session an event is about: the `session`, `name` and `target` keys
/// of its line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRef {
    /// The engine's session id.
    pub session: String,
    /// The name a `serve` session was given, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The target URI as given.
    #[serde(default)]
    pub target: String,
}

/// What happened: the `event` key of a line and the fields that go with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JournalEvent {
    /// A session started its shell.
    SessionOpen {
        /// The shell's working directory.
        cwd: String,
        /// The containment policy the shell runs under, as target
        /// parameters (`sandbox=read-only&network=off`); absent when
        /// uncontained.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        contained: Option<String>,
    },
    /// A command was sent (as shown to people: masked before writing).
    Command {
        /// The command text.
        command: String,
    },
    /// Input was typed into a running command. Input typed at a password
    /// prompt is `{"hidden": true, "chars": N}`, without its text; other
    /// input is `{"text": …}`.
    Input {
        /// What was typed, unless hidden.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// Typed at a password prompt: the text is not journaled.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hidden: bool,
        /// How many characters hidden input had.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chars: Option<usize>,
        /// Who typed it: `"person"` for keys a person typed at a terminal
        /// (`execkit shell`, `execkit attach`); absent for input an agent
        /// sent (and on lines written before this field existed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// The running command was interrupted (Ctrl-C).
    Interrupt,
    /// A command ended (or yielded, or was stopped).
    Result(ResultEvent),
    /// A session was closed.
    SessionClose,
    /// Events were not journaled for a while (the disk was full, …);
    /// written before the first line that got through again.
    JournalGap {
        /// How many events were not journaled.
        skipped: u64,
        /// When the gap began ([`rfc3339`]).
        since: String,
        /// Why writes failed.
        error: String,
    },
}

impl JournalEvent {
    /// Input typed into a running command: with its text, or (typed at a
    /// password prompt) only its length.
    pub fn input(text: &str, hidden: bool) -> JournalEvent {
        Self::input_by(text, hidden, None)
    }

    /// [`JournalEvent::input`] typed by `by` (`Some("person")`: keys a
    /// person typed at a terminal).
    pub fn input_by(text: &str, hidden: bool, by: Option<&str>) -> JournalEvent {
        let by = by.map(str::to_string);
        if hidden {
            JournalEvent::Input {
                text: None,
                hidden: true,
                chars: Some(text.chars().count()),
                by,
            }
        } else {
            JournalEvent::Input {
                text: Some(text.to_string()),
                hidden: false,
                chars: None,
                by,
            }
        }
    }
}

/// The fields of a `result` event. Every field has a default, so lines
/// from versions that wrote fewer fields (no `waiting_for_input`) read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResultEvent {
    /// The command as given.
    pub command: String,
    /// `$?` (`null` when the command did not finish).
    pub exit_code: Option<i32>,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// The hard timeout fired.
    pub timed_out: bool,
    /// Output was capped.
    pub truncated: bool,
    /// The shell was replaced during the command.
    pub restarted: bool,
    /// The target went away.
    pub session_lost: bool,
    /// The command was found waiting for input.
    pub waiting_for_input: bool,
    /// The shell's working directory afterwards.
    pub cwd: String,
    /// What went wrong besides the command failing, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The spool file with the full output, when it was capped (then
    /// `output` is absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_path: Option<String>,
    /// The output, when it was not capped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl From<&RunResult> for ResultEvent {
    fn from(r: &RunResult) -> ResultEvent {
        let (output_path, output) = match &r.output_path {
            Some(p) => (Some(p.display().to_string()), None),
            None => (None, Some(r.output.clone())),
        };
        ResultEvent {
            command: r.command.clone(),
            exit_code: r.exit_code,
            duration_ms: r.duration_ms,
            timed_out: r.timed_out,
            truncated: r.truncated,
            restarted: r.restarted,
            session_lost: r.session_lost,
            waiting_for_input: r.waiting_for_input,
            cwd: r.cwd.clone(),
            error: r.error.clone(),
            output_path,
            output,
        }
    }
}

/// Formats a time as RFC 3339 in UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}
