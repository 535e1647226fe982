//! `execkit shell`: an interactive REPL for a person on any target, with
//! line editing and history, live output, exit codes and timings. Ctrl-C
//! interrupts the running command; Ctrl-D or `exit` leaves.
//!
//! At a terminal, a command runs as at the target's own terminal: the
//! person's terminal is raw while it runs, every key goes to the
//! session's terminal, the output is shown raw, the window size follows
//! (SIGWINCH), and the terminal is put back on every way out (the
//! command's end, Ctrl-C, a lost target, SIGTERM / SIGHUP / SIGINT to
//! execkit). Without one (a pipe), lines are read and results printed.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use execkit_core::{PersonTerminal, RunOptions, RunOutcome, RunResult, Session, SessionConfig};
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::observe::JournalArgs;
use crate::tty;

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
    #[command(flatten)]
    pub contain: crate::contain_args::ContainArgs,
}

pub fn main(mut args: ShellArgs) -> ExitCode {
    let timeout = match crate::duration::parse_timeout("--timeout", &args.timeout) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("execkit: {e}");
            return ExitCode::from(crate::EXIT_USAGE);
        }
    };
    match args.contain.target(&args.target) {
        Ok(t) => args.target = t,
        Err(e) => {
            eprintln!("execkit: {e}");
            return ExitCode::from(crate::EXIT_USAGE);
        }
    }
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
    let saved = match std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        true => tty::Saved::take(),
        false => None,
    };
    let mut config = SessionConfig::default();
    config.observer = Some(observer);
    if let Some(size) = saved.as_ref().and_then(|_| tty::window_size()) {
        config.size = size;
    }
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
    if let Some(saved) = saved {
        let code = rt.block_on(terminal_loop(
            &mut session,
            editor,
            &history,
            &args.target,
            timeout,
            color,
            saved,
        ));
        let _ = rt.block_on(session.close());
        return code;
    }
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

/// What the signal handlers tell the loop.
#[derive(Default)]
struct Signals {
    /// SIGTERM or SIGHUP (its number): restore, close, leave.
    quit: AtomicI32,
    /// SIGINT from outside: interrupt the running command.
    interrupt: AtomicBool,
    /// SIGWINCH: the window changed.
    resized: AtomicBool,
    /// Wakes whatever waits: the prompt, or the running command.
    wake: Arc<Notify>,
    /// Wakes the prompt on a quit.
    quit_now: Notify,
}

/// Installs the handlers (for the process's life: from now on SIGTERM,
/// SIGHUP and SIGINT no longer kill execkit outright; it puts the terminal
/// back and closes the session first).
fn install_signals(wake: Arc<Notify>) -> std::io::Result<Arc<Signals>> {
    let s = Arc::new(Signals {
        wake,
        ..Default::default()
    });
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut winch = signal(SignalKind::window_change())?;
    let t = s.clone();
    tokio::spawn(async move {
        let sig = tokio::select! {
            _ = term.recv() => libc::SIGTERM,
            _ = hup.recv() => libc::SIGHUP,
        };
        t.quit.store(sig, Ordering::SeqCst);
        t.wake.notify_one();
        t.quit_now.notify_one();
    });
    let t = s.clone();
    tokio::spawn(async move {
        while int.recv().await.is_some() {
            t.interrupt.store(true, Ordering::SeqCst);
            t.wake.notify_one();
        }
    });
    let t = s.clone();
    tokio::spawn(async move {
        while winch.recv().await.is_some() {
            t.resized.store(true, Ordering::SeqCst);
            t.wake.notify_one();
        }
    });
    Ok(s)
}

/// The REPL at a terminal: the line editor between commands (on a thread
/// of its own, so a signal is taken while it waits), each command run with
/// the terminal handed over ([`run_attended`]).
async fn terminal_loop(
    session: &mut Session,
    editor: DefaultEditor,
    history: &Option<std::path::PathBuf>,
    target: &str,
    timeout: Option<Duration>,
    color: bool,
    saved: tty::Saved,
) -> ExitCode {
    let wake = Arc::new(Notify::new());
    let signals = match install_signals(wake.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("execkit: cannot watch signals: {e}");
            return ExitCode::from(1);
        }
    };
    let mut editor = Some(editor);
    let mut size = tty::window_size();
    let code = loop {
        let prompt = format!("{target}:{}$ ", session.cwd());
        let (tx, rx) = oneshot::channel();
        let mut ed = editor.take().expect("editor back");
        std::thread::spawn(move || {
            let line = ed.readline(&prompt);
            let _ = tx.send((ed, line));
        });
        let (ed, line) = tokio::select! {
            got = rx => match got {
                Ok(got) => got,
                Err(_) => break ExitCode::from(1),
            },
            _ = signals.quit_now.notified() => {
                // The line editor had the terminal raw: put it back.
                saved.restore();
                eprintln!();
                break quit_code(&signals);
            }
        };
        editor = Some(ed);
        let ed = editor.as_mut().expect("editor");
        let line = match line {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("execkit: {e}");
                break ExitCode::SUCCESS;
            }
        };
        let cmd = line.trim();
        if cmd.is_empty() {
            continue;
        }
        if cmd == "exit" || cmd == "quit" {
            break ExitCode::SUCCESS;
        }
        let _ = ed.add_history_entry(cmd);
        // The window may have changed at the prompt (the line editor
        // takes SIGWINCH there).
        let now = tty::window_size();
        if now != size {
            if let Some(s) = now {
                let _ = session.resize(s).await;
            }
            size = now;
        }
        signals.resized.store(false, Ordering::SeqCst);
        signals.interrupt.store(false, Ordering::SeqCst);
        match run_attended(session, cmd, timeout, &saved, &signals, &mut size).await {
            Ok(r) => status_line(&r, color),
            Err(e) => eprintln!("execkit: {e}"),
        }
        if signals.quit.load(Ordering::SeqCst) != 0 {
            break quit_code(&signals);
        }
    };
    if let (Some(h), Some(ed)) = (history, editor.as_mut()) {
        let _ = ed.save_history(h);
    }
    code
}

/// 128 + the signal that ended the shell.
fn quit_code(signals: &Signals) -> ExitCode {
    ExitCode::from(128 + signals.quit.load(Ordering::SeqCst) as u8)
}

/// Runs one command with the terminal handed over: raw mode, every key to
/// the session, the raw output to stdout, the window size followed. Every
/// way out of here puts the terminal back (the guards drop).
async fn run_attended(
    session: &mut Session,
    cmd: &str,
    timeout: Option<Duration>,
    saved: &tty::Saved,
    signals: &Signals,
    size: &mut Option<execkit_core::Size>,
) -> Result<RunResult, execkit_core::SessionError> {
    let term = std::env::var("TERM")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "xterm".into());
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (key_tx, mut key_rx) = mpsc::unbounded_channel();
    let person = PersonTerminal::new(term)
        .raw_output(out_tx)
        .wake(signals.wake.clone());
    let mut opts = RunOptions::default().person(person);
    opts.timeout = timeout;
    // Yields when woken (a key, a signal); the hour is only a backstop.
    opts.yield_after = Some(Duration::from_secs(3600));
    let writer = tty::RawWriter::start(out_rx);
    let raw = tty::RawMode::enter(saved).ok();
    let reader = tty::KeyReader::start(key_tx, signals.wake.clone()).ok();
    let mut r = session.run(cmd, opts).await;
    loop {
        let running = matches!(&r, Ok(r) if r.running);
        if !running {
            break;
        }
        if signals.quit.load(Ordering::SeqCst) != 0 {
            // Leaving: what the command started dies with the session.
            r = session.interrupt().await;
            break;
        }
        if signals.interrupt.swap(false, Ordering::SeqCst) {
            r = session.interrupt().await;
            continue;
        }
        if signals.resized.swap(false, Ordering::SeqCst) {
            let now = tty::window_size();
            if now != *size {
                if let Some(s) = now {
                    session.resize(s).await?;
                }
                *size = now;
            }
        }
        while let Ok(keys) = key_rx.try_recv() {
            session.send_keys(&keys).await?;
        }
        r = session.poll(Duration::from_secs(3600)).await;
    }
    drop(reader);
    drop(raw);
    let r = r?;
    // The session dropped its end of the output with the command.
    if !writer.join() {
        println!();
    }
    Ok(r)
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
