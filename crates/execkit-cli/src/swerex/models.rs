//! The SWE-ReX wire format: the request and response bodies of swe-rex
//! 1.4's remote runtime, and a failure as its client re-raises it (HTTP
//! 511 with the exception's class path, message and `extra_info`).

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// What the prompt of upstream's shell is: `expect_string` when a
/// command ran to its end (the shell's prompt came back) rather than
/// stopping at one of the `expect` patterns. Clients may compare it.
pub const PROMPT_MATCH: &str = "SHELLPS1PREFIX";

fn default_session() -> String {
    "default".into()
}

fn default_startup_timeout() -> f64 {
    1.0
}

fn default_check() -> Check {
    Check::Raise
}

fn default_interrupt_timeout() -> f64 {
    0.2
}

fn default_retries() -> u32 {
    3
}

/// `POST /create_session`.
#[derive(Debug, Deserialize)]
pub struct CreateSession {
    /// Files sourced before the first command.
    #[serde(default)]
    pub startup_source: Vec<String>,
    #[serde(default = "default_session")]
    pub session: String,
    #[serde(default = "default_startup_timeout")]
    pub startup_timeout: f64,
    #[serde(default)]
    pub session_type: Option<String>,
}

/// How a bash action's exit code is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    /// Reported, never raised; unknown is `null`.
    Silent,
    /// Non-zero (or unknown) raises `NonZeroExitCodeError`.
    Raise,
    /// Not looked at: always `null`.
    Ignore,
}

/// `POST /run_in_session` with `action_type: "bash"`.
#[derive(Debug, Deserialize)]
pub struct BashAction {
    pub command: String,
    #[serde(default = "default_session")]
    pub session: String,
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub is_interactive_command: bool,
    #[serde(default)]
    pub is_interactive_quit: bool,
    #[serde(default = "default_check")]
    pub check: Check,
    #[serde(default)]
    pub error_msg: String,
    #[serde(default)]
    pub expect: Vec<String>,
}

/// `POST /run_in_session` with `action_type: "bash_interrupt"`.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // timeout, n_retry and expect are accepted, not needed
pub struct InterruptAction {
    #[serde(default = "default_session")]
    pub session: String,
    #[serde(default = "default_interrupt_timeout")]
    pub timeout: f64,
    #[serde(default = "default_retries")]
    pub n_retry: u32,
    #[serde(default)]
    pub expect: Vec<String>,
}

/// One of the two actions, told by `action_type` (`bash` when absent).
#[derive(Debug)]
pub enum Action {
    Bash(BashAction),
    Interrupt(InterruptAction),
}

impl Action {
    pub fn parse(v: Value) -> Result<Action, Fail> {
        let kind = v
            .get("action_type")
            .and_then(Value::as_str)
            .unwrap_or("bash")
            .to_string();
        match kind.as_str() {
            "bash" => Ok(Action::Bash(parse(v)?)),
            "bash_interrupt" => Ok(Action::Interrupt(parse(v)?)),
            other => Err(Fail::invalid(
                &["body", "action_type"],
                &format!("action_type must be `bash` or `bash_interrupt`, not `{other}`"),
            )),
        }
    }
}

/// `POST /close_session`.
#[derive(Debug, Deserialize)]
pub struct CloseSession {
    #[serde(default = "default_session")]
    pub session: String,
}

/// `command` of `POST /execute`: an argv or one string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum CommandLine {
    Argv(Vec<String>),
    Text(String),
}

/// `POST /execute`.
#[derive(Debug, Deserialize)]
pub struct Execute {
    pub command: CommandLine,
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub shell: bool,
    #[serde(default)]
    pub check: bool,
    #[serde(default)]
    pub error_msg: String,
    #[serde(default)]
    pub env: Option<HashMap<String, String>>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub merge_output_streams: bool,
}

/// `POST /read_file`.
#[derive(Debug, Deserialize)]
pub struct ReadFile {
    pub path: String,
    #[serde(default)]
    pub encoding: Option<String>,
    #[serde(default)]
    pub errors: Option<String>,
}

/// `POST /write_file`.
#[derive(Debug, Deserialize)]
pub struct WriteFile {
    pub content: String,
    pub path: String,
}

/// A bash session's answer to an action.
#[derive(Debug, Default)]
pub struct Observation {
    pub output: String,
    pub exit_code: Option<i32>,
    pub failure_reason: String,
    pub expect_string: String,
}

impl Observation {
    pub fn to_json(&self) -> Value {
        json!({
            "output": self.output,
            "exit_code": self.exit_code,
            "failure_reason": self.failure_reason,
            "expect_string": self.expect_string,
            "session_type": "bash",
        })
    }
}

/// A request body as the model `T`, or a 422 saying what is wrong.
pub fn parse<T: DeserializeOwned>(v: Value) -> Result<T, Fail> {
    serde_json::from_value(v).map_err(|e| Fail::invalid(&["body"], &e.to_string()))
}

/// Why a request failed.
#[derive(Debug)]
pub enum Fail {
    /// An exception for the client to re-raise (HTTP 511).
    Raised(Raised),
    /// The body does not fit the model (HTTP 422, as FastAPI says it).
    Invalid(Value),
}

impl Fail {
    pub fn invalid(loc: &[&str], msg: &str) -> Fail {
        Fail::Invalid(json!({
            "detail": [{"type": "value_error", "loc": loc, "msg": msg}]
        }))
    }
}

impl From<Raised> for Fail {
    fn from(r: Raised) -> Fail {
        Fail::Raised(r)
    }
}

/// An exception as `RemoteRuntime` rebuilds it: its class (by module path),
/// its message and `extra_info`.
#[derive(Debug, Clone)]
pub struct Raised {
    pub class_path: String,
    pub message: String,
    pub extra_info: Map<String, Value>,
}

impl Raised {
    /// One of `swerex.exceptions`.
    pub fn swerex(class: &str, message: impl Into<String>) -> Raised {
        Raised {
            class_path: format!("swerex.exceptions.{class}"),
            message: message.into(),
            extra_info: Map::new(),
        }
    }

    /// A Python built-in exception (`FileNotFoundError`, `RuntimeError`, …).
    pub fn builtin(class: &str, message: impl Into<String>) -> Raised {
        Raised {
            class_path: format!("builtins.{class}"),
            message: message.into(),
            extra_info: Map::new(),
        }
    }

    /// An `OSError` subclass as Python names it for `errno`, with Python's
    /// message shape (`[Errno 2] No such file or directory: '/x'`).
    pub fn os(errno: i32, path: &str) -> Raised {
        let class = match errno {
            libc::ENOENT => "FileNotFoundError",
            libc::EISDIR => "IsADirectoryError",
            libc::ENOTDIR => "NotADirectoryError",
            libc::EACCES | libc::EPERM => "PermissionError",
            libc::EEXIST => "FileExistsError",
            _ => "OSError",
        };
        let text = std::io::Error::from_raw_os_error(errno).to_string();
        // std appends " (os error N)"; Python does not.
        let text = text.split(" (os error").next().unwrap_or_default();
        Raised::builtin(class, format!("[Errno {errno}] {text}: {}", py_repr(path)))
    }

    pub fn with_extra(mut self, key: &str, value: impl Into<Value>) -> Raised {
        self.extra_info.insert(key.into(), value.into());
        self
    }

    /// The 511 body.
    pub fn to_json(&self) -> Value {
        json!({"swerexception": {
            "message": self.message,
            "class_path": self.class_path,
            "traceback": "",
            "extra_info": self.extra_info,
        }})
    }
}

/// The errno whose strerror text ends a shell tool's error message
/// (`cat: /x: Permission denied`), if any: how a failure on the target
/// becomes the `OSError` subclass Python would raise.
pub fn errno_in(message: &str) -> Option<i32> {
    [
        libc::ENOENT,
        libc::EISDIR,
        libc::ENOTDIR,
        libc::EACCES,
        libc::EPERM,
        libc::ENOSPC,
        libc::EROFS,
        libc::EEXIST,
    ]
    .into_iter()
    .find(|&e| {
        let text = std::io::Error::from_raw_os_error(e).to_string();
        let text = text.split(" (os error").next().unwrap_or_default();
        message.contains(text)
    })
}

/// `repr()` of a Python `str`: single quotes unless the text has `'` and
/// no `"`, backslash escapes for quotes, `\\`, `\n`, `\r`, `\t` and other
/// control characters.
pub fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// `bytes.decode(encoding, errors)` for the encodings a client names in
/// practice (UTF-8, Latin-1, ASCII) and the error handlers `strict`,
/// `replace`, `ignore` and `backslashreplace`.
/// [`decode`] of a whole buffer: valid UTF-8 read as UTF-8 is taken as
/// it is, without a copy.
pub fn decode_owned(
    bytes: Vec<u8>,
    encoding: Option<&str>,
    errors: Option<&str>,
) -> Result<String, Raised> {
    let utf8 = encoding.is_none_or(|e| {
        matches!(
            e.trim().to_ascii_lowercase().replace('_', "-").as_str(),
            "utf-8" | "utf8" | "u8" | "utf"
        )
    });
    let known_handler =
        errors.is_none_or(|h| matches!(h, "strict" | "replace" | "ignore" | "backslashreplace"));
    match String::from_utf8(bytes) {
        Ok(text) if utf8 && known_handler => Ok(text),
        Ok(text) => decode(text.as_bytes(), encoding, errors),
        Err(e) => decode(e.as_bytes(), encoding, errors),
    }
}

pub fn decode(
    bytes: &[u8],
    encoding: Option<&str>,
    errors: Option<&str>,
) -> Result<String, Raised> {
    #[derive(PartialEq)]
    enum Enc {
        Utf8,
        Latin1,
        Ascii,
    }
    let name = encoding.unwrap_or("utf-8");
    let norm = name.trim().to_ascii_lowercase().replace('_', "-");
    let enc = match norm.as_str() {
        "utf-8" | "utf8" | "u8" | "utf" => Enc::Utf8,
        "latin-1" | "latin1" | "iso-8859-1" | "iso8859-1" | "8859" | "cp819" | "l1" | "latin" => {
            Enc::Latin1
        }
        "ascii" | "us-ascii" | "646" => Enc::Ascii,
        _ => {
            return Err(Raised::builtin(
                "LookupError",
                format!("unknown encoding: {name} (execkit swerex reads utf-8, latin-1 and ascii)"),
            ))
        }
    };
    let handler = errors.unwrap_or("strict");
    if !matches!(
        handler,
        "strict" | "replace" | "ignore" | "backslashreplace"
    ) {
        return Err(Raised::builtin(
            "LookupError",
            format!("unknown error handler name '{handler}' (execkit swerex knows strict, replace, ignore and backslashreplace)"),
        ));
    }
    if enc == Enc::Latin1 {
        return Ok(bytes.iter().map(|&b| char::from(b)).collect());
    }
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        let (good, bad, after) = match enc {
            Enc::Utf8 => match std::str::from_utf8(rest) {
                Ok(s) => (s, None, &[][..]),
                Err(e) => {
                    let (ok, tail) = rest.split_at(e.valid_up_to());
                    let n = e.error_len().unwrap_or(tail.len());
                    // SAFETY-free: `ok` is valid UTF-8 by `valid_up_to`.
                    let s = std::str::from_utf8(ok).unwrap_or_default();
                    (s, Some(&tail[..n]), &tail[n..])
                }
            },
            Enc::Ascii | Enc::Latin1 => match rest.iter().position(|b| !b.is_ascii()) {
                None => (std::str::from_utf8(rest).unwrap_or_default(), None, &[][..]),
                Some(i) => (
                    std::str::from_utf8(&rest[..i]).unwrap_or_default(),
                    Some(&rest[i..i + 1]),
                    &rest[i + 1..],
                ),
            },
        };
        out.push_str(good);
        let Some(bad) = bad else { break };
        match handler {
            "strict" => {
                let at = bytes.len() - after.len() - bad.len();
                let codec = if enc == Enc::Utf8 { "utf-8" } else { "ascii" };
                return Err(Raised::builtin(
                    "UnicodeDecodeError",
                    format!(
                        "'{codec}' codec can't decode byte 0x{:02x} in position {at}: invalid data",
                        bad[0]
                    ),
                ));
            }
            "replace" => out.push('\u{FFFD}'),
            "ignore" => {}
            _ => {
                for b in bad {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
        }
        rest = after;
    }
    Ok(out)
}

/// What `Path.read_text` does to line ends (universal newlines): `\r\n`
/// and a lone `\r` read as `\n`.
pub fn universal_newlines(text: String) -> String {
    if !text.contains('\r') {
        return text;
    }
    text.replace("\r\n", "\n").replace('\r', "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_quotes_as_python_does() {
        assert_eq!(py_repr("ls"), "'ls'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("a'b\"c"), "'a\\'b\"c'");
        assert_eq!(py_repr("a\nb\\\x01"), "'a\\nb\\\\\\x01'");
    }

    #[test]
    fn decoding_follows_the_error_handler() {
        let b = b"a\xffb\xc3\xa9";
        assert_eq!(decode(b, None, Some("replace")).unwrap(), "a\u{FFFD}bé");
        assert_eq!(decode(b, None, Some("ignore")).unwrap(), "abé");
        assert_eq!(
            decode(b, None, Some("backslashreplace")).unwrap(),
            "a\\xffbé"
        );
        let e = decode(b, None, None).unwrap_err();
        assert_eq!(e.class_path, "builtins.UnicodeDecodeError");
        assert!(e.message.contains("0xff in position 1"), "{}", e.message);
        let all: Vec<u8> = (0..=255).collect();
        let text = decode(&all, Some("latin-1"), None).unwrap();
        assert_eq!(
            text.chars().map(|c| c as u32).collect::<Vec<_>>(),
            (0..=255).collect::<Vec<_>>()
        );
        assert!(decode(b"x", Some("utf-16"), None).is_err());
    }

    #[test]
    fn os_errors_read_as_python_writes_them() {
        let e = Raised::os(libc::ENOENT, "/nope");
        assert_eq!(e.class_path, "builtins.FileNotFoundError");
        assert_eq!(e.message, "[Errno 2] No such file or directory: '/nope'");
        assert_eq!(errno_in("cat: /x: Permission denied"), Some(libc::EACCES));
        assert_eq!(errno_in("weird"), None);
    }
}
