//! `execkit journal`: read the journal, a human view by default.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
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

pub fn main(args: JournalCmdArgs) -> ExitCode {
    let path = args
        .journal
        .clone()
        .unwrap_or_else(execkit_core::journal::Journal::default_path);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("execkit journal: no journal at {} yet", path.display());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("execkit journal: cannot read {}: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    let mut events: Vec<(String, Value)> = Vec::new();
    let mut bad = 0usize;
    for line in BufReader::new(file).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Value>(&line) {
            Ok(v) => {
                if let Some(s) = &args.session {
                    let s = Some(s.as_str());
                    if v["session"].as_str() != s && v["name"].as_str() != s {
                        continue;
                    }
                }
                events.push((line, v));
            }
            Err(_) => bad += 1,
        }
    }
    let skip = args.tail.map_or(0, |n| events.len().saturating_sub(n));
    let mut out = std::io::stdout().lock();
    for (raw, v) in &events[skip..] {
        let _ = if args.json {
            writeln!(out, "{raw}")
        } else {
            writeln!(out, "{}", human(v))
        };
    }
    if bad > 0 {
        eprintln!("execkit journal: skipped {bad} unparseable line(s)");
    }
    ExitCode::SUCCESS
}

fn human(v: &Value) -> String {
    let ts = v["ts"].as_str().unwrap_or("?");
    let id = v["session"].as_str().unwrap_or("-");
    let session = match v["name"].as_str() {
        Some(name) => format!("{name}({id})"),
        None => id.to_string(),
    };
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let detail = match v["event"].as_str().unwrap_or("?") {
        "session_open" => format!("open {} (cwd {})", s("target"), s("cwd")),
        "session_close" => "close".to_string(),
        "command" => format!("$ {}", s("command")),
        "input" => format!("< {:?}", s("text")),
        "interrupt" => "^C".to_string(),
        "result" => {
            let status = if v["timed_out"] == Value::Bool(true) {
                "timed out".to_string()
            } else if v["session_lost"] == Value::Bool(true) {
                format!("target lost: {}", s("error"))
            } else {
                match v["exit_code"].as_i64() {
                    Some(c) => format!("exit {c}"),
                    None => "no exit code".to_string(),
                }
            };
            let mut line = format!("→ {status} ({} ms)", v["duration_ms"].as_u64().unwrap_or(0));
            if let Some(p) = v["output_path"].as_str() {
                line.push_str(&format!(" full output: {p}"));
            } else if let Some(o) = v["output"].as_str().filter(|o| !o.is_empty()) {
                let first = o.lines().next().unwrap_or("");
                let more = o.lines().count().saturating_sub(1);
                line.push_str(&format!(" | {first}"));
                if more > 0 {
                    line.push_str(&format!(" (+{more} lines)"));
                }
            }
            line
        }
        other => other.to_string(),
    };
    format!("{ts} {session} {detail}")
}
