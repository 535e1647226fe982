//! `execkit shell`: an interactive REPL for a person on any target, with
//! line editing and history, live output, exit codes and timings. Ctrl-C
//! interrupts the running command; Ctrl-D or `exit` leaves.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use execkit_core::{RunOptions, RunOutcome, RunResult, Session, SessionConfig};
use rustyline::error::ReadlineError;

use crate::observe::JournalArgs;

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// Where to run: `local`, `local:/bin/sh`, `docker:NAME`, `ssh://user@host`.
    #[arg(long, short = 't', default_value = "local")]
    pub target: String,
    /// Hard timeout per command in seconds (0: none; at most one year).
    #[arg(
        long,
        default_value = "0",
        value_name = "SECS",
        allow_negative_numbers = true
    )]
    pub timeout: String,
    #[command(flatten)]
    pub journal: JournalArgs,
}

pub fn main(args: ShellArgs) -> ExitCode {
    let timeout = match crate::duration::parse_timeout("--timeout", &args.timeout) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("execkit: {e}");
            return ExitCode::from(crate::EXIT_USAGE);
        }
    };
    let rt = match crate::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let observer = match args.journal.observer() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("execkit: {e}");
            return e.exit_code();
        }
    };
    let mut config = SessionConfig::default();
    config.observer = Some(observer);
    let mut session = match rt.block_on(Session::open(&args.target, config)) {
        Ok(s) => s,
        // The same exit status as `exec`: 2 for a bad target, else 69.
        Err(e) => return crate::exec::fail(&e),
    };
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("execkit: cannot start line editing: {e}");
            return ExitCode::from(1);
        }
    };
    // Only in the private state directory (else no history is kept).
    let history = execkit_core::state::private_state_dir()
        .ok()
        .map(|d| d.join("shell_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    eprintln!(
        "execkit shell on {} — Ctrl-C interrupts, Ctrl-D leaves",
        args.target
    );
    loop {
        let prompt = format!("{}:{}$ ", args.target, session.cwd());
        let line = match editor.readline(&prompt) {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("execkit: {e}");
                break;
            }
        };
        let cmd = line.trim();
        if cmd.is_empty() {
            continue;
        }
        if cmd == "exit" || cmd == "quit" {
            break;
        }
        let _ = editor.add_history_entry(cmd);
        match rt.block_on(run_live(&mut session, cmd, timeout)) {
            Ok(r) => status_line(&r, color),
            Err(e) => eprintln!("execkit: {e}"),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    let _ = rt.block_on(session.close());
    ExitCode::SUCCESS
}

/// Runs a command, printing its output as it arrives; Ctrl-C interrupts.
async fn run_live(
    session: &mut Session,
    cmd: &str,
    timeout: Option<Duration>,
) -> Result<RunResult, execkit_core::SessionError> {
    let mut opts = RunOptions::default();
    opts.timeout = timeout;
    opts.yield_after = Some(Duration::from_millis(50));
    let mut r = session.run(cmd, opts).await?;
    let mut out = std::io::stdout();
    loop {
        let _ = out.write_all(r.output.as_bytes());
        if !r.running {
            if !r.output.is_empty() {
                let _ = out.write_all(b"\n");
            }
            let _ = out.flush();
            return Ok(r);
        }
        let _ = out.flush();
        r = tokio::select! {
            r = session.poll(Duration::from_millis(100)) => r?,
            _ = tokio::signal::ctrl_c() => session.interrupt().await?,
        };
    }
}

fn status_line(r: &RunResult, color: bool) {
    let status = match r.outcome() {
        RunOutcome::Lost => format!("target lost: {}", r.error.as_deref().unwrap_or("")),
        RunOutcome::NoExitCode => "interrupted".to_string(),
        o => o.label(),
    };
    let mut line = format!("[{status} · {} ms", r.duration_ms);
    if r.restarted {
        line.push_str(" · shell restarted");
    }
    if let Some(p) = &r.output_path {
        line.push_str(&format!(" · full output: {}", p.display()));
    }
    line.push(']');
    if color {
        let tint = if r.exit_code == Some(0) { "2" } else { "2;31" };
        eprintln!("\x1b[{tint}m{line}\x1b[0m");
    } else {
        eprintln!("{line}");
    }
}
