//! `execkit`: the command-line face of execkit. Thin glue over the library
//! crates: argument parsing, transport linking, output and exit codes.
//!
//! The whole command is [`run`]: the `execkit` binary calls it with its
//! arguments, and so does the Python package's `execkit` console script,
//! so both behave the same. [`ConsoleMirror`] and [`JournalArgs`] are the
//! journal and console set-up the CLI uses, for a program that embeds the
//! engine and wants the CLI's defaults.

mod attach;
mod client;
mod contain_args;
mod duration;
mod exec;
mod gc;
mod http_auth;
mod journal_cmd;
mod mcp;
mod mcp_http;
mod mcp_stdio;
mod observe;
mod proto;
mod remote;
mod repl;
mod serve;
mod stdin_pipe;
mod swerex;
mod tty;
mod watch;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use client::ConsoleMirror;
pub use observe::{JournalArgs, ObserverError};
pub use proto::default_socket;

/// Exit status when the target cannot be reached or was lost.
pub const EXIT_UNREACHABLE: u8 = 69;
/// Exit status for usage errors.
pub const EXIT_USAGE: u8 = 2;
/// Exit status when the last command timed out.
pub const EXIT_TIMEOUT: u8 = 124;
/// Exit status when a file execkit must write (the journal) cannot be
/// created (sysexits' EX_CANTCREAT).
pub const EXIT_CANTCREAT: u8 = 73;

#[derive(Debug, Parser)]
#[command(
    name = "execkit",
    version,
    about = "Stateful, structured, safe shell sessions for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run commands in order in one session and report each result.
    Exec(exec::ExecArgs),
    /// List the transports this build knows.
    Transports,
    /// Interactive shell for a person on any target.
    Shell(repl::ShellArgs),
    /// Per-user daemon holding named sessions (Unix socket).
    Serve(serve::ServeArgs),
    /// Watch the live console of a running `execkit serve`.
    Watch(watch::WatchArgs),
    /// Show a served session's live terminal and type into its running
    /// command (Ctrl-] detaches; the session goes on).
    Attach(attach::AttachArgs),
    /// Read the journal.
    Journal(journal_cmd::JournalCmdArgs),
    /// MCP server on stdio exposing sessions as tools.
    Mcp(mcp::McpArgs),
    /// SWE-ReX remote-runtime server (HTTP) for SWE-ReX and SWE-agent.
    ///
    /// Speaks SWE-ReX's remote-runtime protocol (swe-rex 1.4), so SWE-ReX's
    /// RemoteRuntime and SWE-agent's `remote` deployment run on execkit
    /// sessions on --target. Loopback by default; another --host only with
    /// an --auth-token of at least 16 characters: anyone with the token
    /// runs commands as this user (remote code execution by design).
    Swerex(swerex::SwerexArgs),
    /// Clean up sessions whose owner died (kill their marked processes)
    /// and prune old spool files.
    Gc(gc::GcArgs),
    /// What this machine can contain (`--sandbox`, `--network off`,
    /// `--memory`, `--pids`, the exact kill): one line per protection;
    /// exit 1 when one is missing.
    SandboxCheck,
    /// Output of the command running in a session of `execkit serve`
    /// since the last read; its result once it finished.
    ///
    /// Exit status (also of send, interrupt and close): as for exec (the
    /// command's exit code, 124 timed out, 69 no server or target lost, 2
    /// usage); 75 while the command still runs; 66 when the server has no
    /// session by that name; 1 when no command runs to poll, feed or
    /// interrupt.
    Poll(remote::PollArgs),
    /// Type text into the command running in a session of `execkit serve`.
    #[command(name = "send")]
    SendInput(remote::SendArgs),
    /// Interrupt the command running in a session of `execkit serve`
    /// (Ctrl-C) and print its result.
    Interrupt(remote::SessionArgs),
    /// Close a session of `execkit serve` (its shell and everything it
    /// started are killed).
    Close(remote::SessionArgs),
}

/// A tokio runtime for one command (`multi`: two workers, for servers), or
/// the exit code after telling the user why there is none.
pub fn runtime(multi: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let built = if multi {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    built.map_err(|e| {
        eprintln!("execkit: cannot start the runtime: {e}");
        ExitCode::from(1)
    })
}

/// What a server of named sessions (`mcp`, `swerex`) starts with: a
/// multi-thread runtime, the journal and console from its flags, and a
/// host config for its default target, allow-list and output limit. On
/// failure, the exit code after telling the user why (prefixed `execkit
/// COMMAND:`).
pub(crate) fn served_host(
    command: &str,
    journal: &JournalArgs,
    contain: &contain_args::ContainArgs,
    target: &str,
    allow_targets: &[String],
    output_limit: usize,
) -> Result<
    (
        tokio::runtime::Runtime,
        std::sync::Arc<execkit_core::Observer>,
        execkit_core::HostConfig,
    ),
    ExitCode,
> {
    let floor = contain.policy().map_err(|e| {
        eprintln!("execkit {command}: {e}");
        ExitCode::from(EXIT_USAGE)
    })?;
    let rt = runtime(true)?;
    let observer = journal.observer().map_err(|e| {
        eprintln!("execkit {command}: {e}");
        e.exit_code()
    })?;
    let mut config = execkit_core::HostConfig::default();
    config.default_target = target.to_string();
    config.allow_targets = allow_targets.to_vec();
    config.session.output_limit = output_limit;
    config.containment_floor = floor;
    Ok((rt, observer, config))
}

/// Checks every `--allow-target` pattern before a server starts: a pattern
/// that does not parse would admit nothing, silently. Exit 2 naming it.
pub fn check_allow_targets(command: &str, patterns: &[String]) -> Result<(), ExitCode> {
    for p in patterns {
        if let Err(e) = execkit_core::TargetPattern::parse(p) {
            eprintln!("execkit {command}: --allow-target {e}");
            return Err(ExitCode::from(EXIT_USAGE));
        }
    }
    Ok(())
}

// The transports chosen by cargo features: naming a crate links it, and
// linking it registers its scheme.
#[cfg(feature = "docker")]
use execkit_docker as _;
#[cfg(feature = "local")]
use execkit_local as _;
#[cfg(feature = "ssh")]
use execkit_ssh as _;

/// Runs the `execkit` command with `args` (the program name first, as
/// `std::env::args_os` gives them) and returns its exit status; what it
/// prints goes to this process's stdout and stderr.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Exec(args) => exec::main(args),
        Command::Gc(args) => gc::main(args),
        Command::SandboxCheck => contain_args::check(),
        Command::Shell(args) => repl::main(args),
        Command::Serve(args) => serve::main(args),
        Command::Watch(args) => watch::main(args),
        Command::Attach(args) => attach::main(args),
        Command::Journal(args) => journal_cmd::main(args),
        Command::Mcp(args) => mcp::main(args),
        Command::Swerex(args) => swerex::main(args),
        Command::Poll(args) => remote::verb(remote::Verb::Poll(args)),
        Command::SendInput(args) => remote::verb(remote::Verb::Send(args)),
        Command::Interrupt(args) => remote::verb(remote::Verb::Interrupt(args)),
        Command::Close(args) => remote::verb(remote::Verb::Close(args)),
        Command::Transports => {
            let all = execkit_core::transports();
            if all.is_empty() {
                eprintln!("execkit: this build has no transports (enable the `local`, `docker` or `ssh` feature)");
                return ExitCode::from(1);
            }
            for t in all {
                println!("{:<8} {}  (e.g. {})", t.scheme, t.summary, t.example);
            }
            ExitCode::SUCCESS
        }
    }
}

/// The number an [`ExitCode`] stands for (std has no stable way to read it
/// back): what a caller that must exit by itself (the Python console
/// script) exits with.
pub fn exit_status(code: ExitCode) -> u8 {
    (0..=u8::MAX)
        .find(|&n| ExitCode::from(n) == code)
        .unwrap_or(1)
}
