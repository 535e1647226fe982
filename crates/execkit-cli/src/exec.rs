//! `execkit exec`: run commands in one session, print results, map the
//! outcome to an exit status (the CLI contract in README.md).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use std::path::PathBuf;

use clap::Args;
use execkit_core::{
    InputWait, RunOptions, RunOutcome, RunResult, Session, SessionConfig, SessionError,
};

use crate::observe::JournalArgs;
use crate::{EXIT_TIMEOUT, EXIT_UNREACHABLE, EXIT_USAGE};

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Where to run: `local`, `local:/bin/sh`, `docker:NAME`, `ssh://user@host`.
    #[arg(long, short = 't', default_value = "local")]
    target: String,
    /// Hard timeout per command in seconds (0: none; at most one year).
    #[arg(
        long,
        default_value = "300",
        value_name = "SECS",
        allow_negative_numbers = true
    )]
    timeout: String,
    /// One JSON object per line per command.
    #[arg(long)]
    json: bool,
    /// Characters of output kept per command (head + tail) before capping.
    #[arg(long, default_value_t = 30_000, value_name = "N")]
    output_limit: usize,
    /// Run in the named session of a running `execkit serve` (opened on
    /// --target if it does not exist yet; it stays open afterwards).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["fresh", "stdin"])]
    session: Option<String>,
    /// Socket of the server: for --session, and otherwise to mirror the
    /// console to its watchers when it runs [default:
    /// ${XDG_RUNTIME_DIR:-/tmp/execkit-$UID}/execkit.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Run each command in its own new shell: no state carried over.
    #[arg(long)]
    fresh: bool,
    /// Feed this file (`-`: our stdin) to each command's stdin; output
    /// still comes through the terminal. Local targets get a pipe (FIFO);
    /// docker and ssh targets a private file staged on the target and
    /// unlinked before the command starts (needs `base64` there).
    #[arg(long, value_name = "FILE|-")]
    stdin: Option<String>,
    #[command(flatten)]
    journal: JournalArgs,
    #[command(flatten)]
    contain: crate::contain_args::ContainArgs,
    /// Read the commands from this file (`-`: stdin) instead of CMD
    /// arguments, for commands of any length (beyond the OS argument
    /// limit). Commands are separated by NUL bytes; when the input has no
    /// NUL, by blank lines (then a command cannot contain a blank line).
    #[arg(long, value_name = "PATH|-", conflicts_with = "commands")]
    file: Option<String>,
    /// Commands, run in order in one shell.
    #[arg(required_unless_present = "file", value_name = "CMD", num_args = 1..)]
    commands: Vec<String>,
}

pub fn main(mut args: ExecArgs) -> ExitCode {
    let timeout = match crate::duration::parse_timeout("--timeout", &args.timeout) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("execkit: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match args.contain.target(&args.target) {
        Ok(t) => args.target = t,
        Err(e) => {
            eprintln!("execkit: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    if let Some(file) = &args.file {
        if file == "-" && args.stdin.as_deref() == Some("-") {
            eprintln!("execkit: --file - and --stdin - cannot both read stdin");
            return ExitCode::from(EXIT_USAGE);
        }
        match read_commands(file) {
            Ok(c) => args.commands = c,
            Err(e) => {
                eprintln!("execkit: --file {file}: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let rt = match crate::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(crate::gc::alongside(run(args, timeout)))
}

/// The commands in `path` (`-`: stdin), as `--file` documents.
fn read_commands(path: &str) -> Result<Vec<String>, String> {
    let bytes = if path == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut b).map(|_| b)
    } else {
        std::fs::read(path)
    }
    .map_err(|e| e.to_string())?;
    let text = String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_string())?;
    let commands = split_commands(&text);
    if commands.is_empty() {
        return Err("holds no command".into());
    }
    Ok(commands)
}

/// Splits at NUL bytes (empty pieces dropped, text kept exactly), or,
/// without any NUL, at runs of blank lines (lines of only whitespace).
fn split_commands(text: &str) -> Vec<String> {
    if text.contains('\0') {
        return text
            .split('\0')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
    }
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in text.split('\n') {
        if line.trim().is_empty() {
            if !current.is_empty() {
                commands.push(std::mem::take(&mut current));
            }
            continue;
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(line);
    }
    if !current.is_empty() {
        commands.push(current);
    }
    commands
}

async fn run(args: ExecArgs, timeout: Option<Duration>) -> ExitCode {
    if let Some(name) = &args.session {
        return crate::remote::exec(
            &args.target,
            name,
            args.socket.clone(),
            &args.commands,
            timeout,
            args.json,
        )
        .await;
    }
    let observer = match args.journal.observer() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("execkit: {e}");
            return e.exit_code();
        }
    };
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(crate::proto::default_socket);
    let mirror = crate::client::ConsoleMirror::start(&observer.console, &socket);
    let code = run_local(args, timeout, observer).await;
    mirror.finish(Duration::from_secs(1)).await;
    code
}

/// `--stdin`'s bytes, read before anything starts; `Err` is the usage error
/// already reported.
fn load_stdin(args: &ExecArgs) -> Result<Option<crate::stdin_pipe::StdinSource>, ExitCode> {
    let Some(src) = &args.stdin else {
        return Ok(None);
    };
    crate::stdin_pipe::StdinSource::load(src)
        .map(Some)
        .map_err(|e| {
            eprintln!("execkit: --stdin {src}: {e}");
            ExitCode::from(EXIT_USAGE)
        })
}

/// How `exec` runs each command. Nobody can answer a prompt of a one-shot
/// run: a command found waiting for terminal input is stopped and says so.
/// One given `--stdin` reads that instead.
fn command_options(timeout: Option<Duration>, has_stdin: bool) -> RunOptions {
    let opts = match timeout {
        Some(t) => RunOptions::timeout(t),
        None => RunOptions::default(),
    };
    if has_stdin {
        opts
    } else {
        opts.input_wait(InputWait::Stop)
    }
}

/// `exec` in sessions of its own (not through a server).
async fn run_local(
    args: ExecArgs,
    timeout: Option<Duration>,
    observer: std::sync::Arc<execkit_core::Observer>,
) -> ExitCode {
    let stdin = match load_stdin(&args) {
        Ok(s) => s,
        Err(code) => return code,
    };
    // Local shells read --stdin from a FIFO; other targets get it staged.
    let local = execkit_core::on_this_host(&args.target);
    let mut config = SessionConfig::default();
    config.output_limit = args.output_limit;
    config.observer = Some(observer);
    let mut session = match Session::open(&args.target, config.clone()).await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let mut status = ExitCode::SUCCESS;
    let mut first = true;
    for cmd in &args.commands {
        let opts = command_options(timeout, stdin.is_some());
        if args.fresh && !first {
            let fresh = match Session::open(&args.target, config.clone()).await {
                Ok(s) => s,
                Err(e) => return fail(&e),
            };
            let _ = std::mem::replace(&mut session, fresh).close().await;
        }
        first = false;
        let pipe = match &stdin {
            Some(src) if local => match src.pipe() {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("execkit: cannot set up --stdin: {e}");
                    let _ = session.close().await;
                    return ExitCode::from(1);
                }
            },
            _ => None,
        };
        let text = match &pipe {
            Some(p) => p.wrap(cmd),
            None => cmd.clone(),
        };
        let run = async {
            match (&stdin, &pipe) {
                (Some(src), None) => session.run_with_stdin(&text, src.data(), opts).await,
                _ => session.run(&text, opts).await,
            }
        };
        let result = tokio::select! {
            r = run => r,
            _ = interrupted() => {
                let _ = session.close().await;
                eprintln!("execkit: interrupted; session closed");
                return ExitCode::from(130);
            }
        };
        drop(pipe);
        let result = match result {
            Ok(mut r) => {
                r.command = cmd.clone();
                r
            }
            Err(e) => {
                let _ = session.close().await;
                return fail(&e);
            }
        };
        print_result(&result, args.json);
        match exit_status(&result) {
            Ok(code) => status = code,
            Err(lost) => {
                let _ = session.close().await;
                return lost;
            }
        }
    }
    if let Err(e) = session.close().await {
        eprintln!("execkit: closing the session: {e}");
    }
    status
}

/// The process exit status a result maps to (CLI contract): its exit code,
/// 124 on timeout; `Err(69)` when the target was lost, after saying why on
/// stderr — the caller stops there.
pub fn exit_status(r: &RunResult) -> Result<ExitCode, ExitCode> {
    Ok(match r.outcome() {
        RunOutcome::Lost => {
            eprintln!(
                "execkit: {}",
                r.error.as_deref().unwrap_or("the target was lost")
            );
            return Err(ExitCode::from(EXIT_UNREACHABLE));
        }
        RunOutcome::TimedOut => ExitCode::from(EXIT_TIMEOUT),
        RunOutcome::Succeeded => ExitCode::SUCCESS,
        RunOutcome::Failed(c) => ExitCode::from(c.clamp(0, 255) as u8),
        // Stopped at a prompt, interrupted, not run (a running result is
        // never final here).
        _ => ExitCode::from(1),
    })
}

/// Resolves on SIGINT or SIGTERM (never, if they cannot be caught). The
/// handlers are installed when this is called, not when the future is
/// first polled: a server calls it before it says it is ready, so a
/// SIGTERM right after that is taken, never the default action. Must be
/// called inside the runtime.
pub(crate) fn interrupted() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(mut int), Ok(mut term)) = handlers else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

/// Says why a session failed and maps it to the CLI's exit status: 2 for
/// what the user wrote (target, command, config), 69 for the target.
pub(crate) fn fail(e: &SessionError) -> ExitCode {
    eprintln!("execkit: {e}");
    match e {
        SessionError::Transport(t) if t.is_usage() => ExitCode::from(EXIT_USAGE),
        SessionError::Command(_) | SessionError::InvalidConfig(_) => ExitCode::from(EXIT_USAGE),
        _ => ExitCode::from(EXIT_UNREACHABLE),
    }
}

pub fn print_result(r: &RunResult, json: bool) {
    let mut out = std::io::stdout().lock();
    if json {
        let line = serde_json::to_string(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        return;
    }
    if !r.output.is_empty() {
        let _ = writeln!(out, "{}", r.output);
    }
    let _ = out.flush();
    let mut notes = Vec::new();
    match r.outcome() {
        RunOutcome::TimedOut => notes.push(format!(
            "timed out after {:.1} s",
            r.duration_ms as f64 / 1000.0
        )),
        RunOutcome::StoppedAtPrompt => {
            notes.push("stopped: it waited for terminal input".to_string())
        }
        RunOutcome::Failed(c) => notes.push(format!("exit {c}")),
        _ => {}
    }
    if r.restarted {
        notes.push("shell restarted, state reset".to_string());
    }
    if notes.is_empty() {
        return;
    }
    notes.push(format!("{} ms", r.duration_ms));
    let line = format!(
        "[{}: {}]",
        r.command.lines().next().unwrap_or(""),
        notes.join(" · ")
    );
    let err = std::io::stderr();
    if err.is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        eprintln!("\x1b[2m{line}\x1b[0m");
    } else {
        eprintln!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::split_commands;

    #[test]
    fn commands_split_at_nul_or_blank_lines() {
        assert_eq!(
            split_commands("echo a\n\n\n  \ncat <<E\nx\nE\n\necho b"),
            ["echo a", "cat <<E\nx\nE", "echo b"]
        );
        assert_eq!(
            split_commands("printf 'a\n\nb'\0echo c\n\0\0"),
            ["printf 'a\n\nb'", "echo c\n"]
        );
        assert!(split_commands("\n \n").is_empty());
    }
}
