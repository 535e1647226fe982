//! `execkit exec --session NAME`: the same contract, through `execkit serve`.

use std::path::PathBuf;
use std::process::ExitCode;

use execkit_core::{ErrorKind, RunResult};

use crate::client::{Client, ClientError};
use crate::proto::{self, Request};
use crate::EXIT_UNREACHABLE;

pub async fn exec(
    target: &str,
    name: &str,
    socket: Option<PathBuf>,
    commands: &[String],
    timeout: Option<std::time::Duration>,
    json: bool,
) -> ExitCode {
    let path = socket.unwrap_or_else(proto::default_socket);
    let mut client = match Client::connect(&path).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("execkit: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let listed = match client.call(Request::List).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("execkit: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let exists = listed
        .as_array()
        .is_some_and(|a| a.iter().any(|s| s["name"] == name));
    if !exists {
        let req = execkit_core::host::OpenRequest {
            name: Some(name.to_string()),
            target: Some(target.to_string()),
            ..Default::default()
        };
        if let Err(e) = client.call(Request::Open(req)).await {
            eprintln!("execkit: {e}");
            return ExitCode::from(match e {
                ClientError::Refused { kind: Some(k), .. }
                    if k == ErrorKind::InvalidTarget.as_str() || k == "target_not_allowed" =>
                {
                    crate::EXIT_USAGE
                }
                _ => EXIT_UNREACHABLE,
            });
        }
    }
    let mut status = ExitCode::SUCCESS;
    for cmd in commands {
        let req = Request::Run {
            session: name.to_string(),
            command: cmd.clone(),
            timeout_secs: Some(timeout.map_or(0.0, |t| t.as_secs_f64())),
            yield_after_secs: None,
        };
        let result: RunResult = match client.call(req).await.map(serde_json::from_value) {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                eprintln!("execkit: bad result from the server: {e}");
                return ExitCode::from(1);
            }
            Err(e) => {
                eprintln!("execkit: {e}");
                return ExitCode::from(match e {
                    ClientError::Refused { kind: Some(k), .. } => match k.as_str() {
                        "invalid_command" => crate::EXIT_USAGE,
                        // Another client's command runs there: try again later.
                        "busy" => EXIT_RUNNING,
                        _ => EXIT_UNREACHABLE,
                    },
                    _ => EXIT_UNREACHABLE,
                });
            }
        };
        crate::exec::print_result(&result, json);
        if result.running {
            // It waits for terminal input (`waiting_for_input`): answer it
            // with `send`, then `poll`; the session is busy until then.
            return ExitCode::from(EXIT_RUNNING);
        }
        match crate::exec::exit_status(&result) {
            Ok(code) => status = code,
            Err(lost) => return lost,
        }
    }
    status
}

/// What `poll`, `send`, `interrupt` and `close` share.
#[derive(Debug, clap::Args)]
pub struct SessionArgs {
    /// The session of the running `execkit serve`.
    #[arg(long, value_name = "NAME")]
    session: String,
    /// One JSON object: for poll and interrupt the run result (as `exec
    /// --json` prints it, plus `running`); for send `{"session","sent"}`,
    /// for close `{"session","closed"}`.
    #[arg(long)]
    json: bool,
    /// Socket of the server [default: ${XDG_RUNTIME_DIR:-/tmp/execkit-$UID}/execkit.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct PollArgs {
    #[command(flatten)]
    common: SessionArgs,
    /// Wait up to this many seconds for the running command to finish
    /// (default 0: return at once with what it printed so far).
    #[arg(
        long,
        value_name = "SECS",
        default_value = "0",
        allow_negative_numbers = true
    )]
    wait: String,
}

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    #[command(flatten)]
    common: SessionArgs,
    /// Send TEXT as it is, without the newline added after it.
    #[arg(long, short = 'n')]
    no_newline: bool,
    /// Text typed into the running command (a newline is added).
    #[arg(value_name = "TEXT")]
    text: String,
}

/// Which of the session verbs.
#[derive(Debug)]
pub enum Verb {
    Poll(PollArgs),
    Send(SendArgs),
    Interrupt(SessionArgs),
    Close(SessionArgs),
}

/// `execkit poll|send|interrupt|close --session NAME`: one request to a
/// running `execkit serve`. Exit status as for `exec` (the command's exit
/// code, 124 timed out, 69 unreachable or lost, 2 usage), plus 66 when the
/// server has no session by that name, 75 when `poll` returns while the
/// command is still running, and 1 when no command is running to poll,
/// feed or interrupt.
pub fn verb(verb: Verb) -> ExitCode {
    let (common, request) = match verb {
        Verb::Poll(a) => match crate::duration::parse("--wait", &a.wait) {
            Ok(wait) => {
                let req = Request::Poll {
                    session: a.common.session.clone(),
                    wait_secs: Some(wait.as_secs_f64()),
                };
                (a.common, req)
            }
            Err(e) => {
                eprintln!("execkit: {e}");
                return ExitCode::from(crate::EXIT_USAGE);
            }
        },
        Verb::Send(a) => {
            let mut text = a.text;
            if !a.no_newline {
                text.push('\n');
            }
            let req = Request::Input {
                session: a.common.session.clone(),
                text,
            };
            (a.common, req)
        }
        Verb::Interrupt(a) => {
            let req = Request::Interrupt {
                session: a.session.clone(),
            };
            (a, req)
        }
        Verb::Close(a) => {
            let req = Request::Close {
                session: a.session.clone(),
            };
            (a, req)
        }
    };
    let rt = match crate::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(call_verb(common, request))
}

async fn call_verb(args: SessionArgs, request: Request) -> ExitCode {
    let path = args.socket.unwrap_or_else(proto::default_socket);
    let name = args.session;
    let kind = match &request {
        Request::Poll { .. } => "poll",
        Request::Input { .. } => "send",
        Request::Interrupt { .. } => "interrupt",
        _ => "close",
    };
    let sent = match &request {
        Request::Input { text, .. } => text.len(),
        _ => 0,
    };
    let mut client = match Client::connect(&path).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("execkit: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let value = match client.call(request).await {
        Ok(v) => v,
        Err(ClientError::Refused { kind: why, message }) => {
            let code = match why.as_deref() {
                Some("no_such_session" | "ended") => EXIT_NO_SESSION,
                Some("idle") => 1,
                Some("invalid_name" | "invalid_command") => crate::EXIT_USAGE,
                _ => EXIT_UNREACHABLE,
            };
            eprintln!("execkit {kind}: {message}");
            return ExitCode::from(code);
        }
        Err(e) => {
            eprintln!("execkit {kind}: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    match kind {
        "send" | "close" => {
            if args.json {
                let done = if kind == "send" {
                    serde_json::json!({"session": name, "sent": sent})
                } else {
                    serde_json::json!({"session": name, "closed": true})
                };
                println!("{done}");
            }
            ExitCode::SUCCESS
        }
        _ => {
            let result: RunResult = match serde_json::from_value(value.clone()) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("execkit {kind}: bad result from the server: {e}");
                    return ExitCode::from(1);
                }
            };
            if result.running {
                print_running(&result, &value, args.json);
                return ExitCode::from(EXIT_RUNNING);
            }
            if args.json {
                println!("{value}");
            } else {
                crate::exec::print_result(&result, false);
            }
            match crate::exec::exit_status(&result) {
                Ok(code) | Err(code) => code,
            }
        }
    }
}

/// A result of a command still running: the output so far exactly as it
/// came (it continues in the next poll), and a note on stderr.
fn print_running(r: &RunResult, value: &serde_json::Value, json: bool) {
    use std::io::Write;
    if json {
        println!("{value}");
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(r.output.as_bytes());
    let _ = out.flush();
    eprintln!(
        "[{}: still running · {} ms — poll again, send input or interrupt]",
        r.command.lines().next().unwrap_or(""),
        r.duration_ms
    );
}

/// Exit status when the server has no session by that name.
pub const EXIT_NO_SESSION: u8 = 66;
/// Exit status of `poll` when the command is still running (EX_TEMPFAIL:
/// try again).
pub const EXIT_RUNNING: u8 = 75;
