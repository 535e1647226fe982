//! `execkit attach NAME`: a person's view of a served session — its screen
//! as it is now, then as it changes — with the person's keys going to the
//! running command until Ctrl-] detaches (the session goes on).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};

use crate::client::{Client, ClientError};
use crate::proto::{self, Request};
use crate::remote::EXIT_NO_SESSION;
use crate::tty;
use crate::EXIT_UNREACHABLE;

/// The detach key: Ctrl-] (as telnet's).
const DETACH: u8 = 0x1d;
/// Exit status when the server's socket is not this user's to use
/// (EX_NOPERM).
const EXIT_NOPERM: u8 = 77;

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// The session of the running `execkit serve`.
    #[arg(value_name = "NAME")]
    name: String,
    /// Only watch: keys are not sent (Ctrl-] or Ctrl-C leaves).
    #[arg(long)]
    read_only: bool,
    /// Socket of the server [default: ${XDG_RUNTIME_DIR:-/tmp/execkit-$UID}/execkit.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

/// Exit status: 0 after a detach or when the session ended, 66 when the
/// server has no session by that name, 77 when the server's socket is
/// not this user's, 69 when the server is unreachable or goes away.
pub fn main(args: AttachArgs) -> ExitCode {
    let rt = match crate::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(run(args))
}

async fn run(args: AttachArgs) -> ExitCode {
    let path = args.socket.unwrap_or_else(proto::default_socket);
    let name = args.name;
    let mut client = match Client::connect(&path).await {
        Ok(c) => c,
        Err(ClientError::NotRunning(p, e)) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!(
                "execkit attach: permission denied: the server at {} is not yours",
                p.display()
            );
            return ExitCode::from(EXIT_NOPERM);
        }
        Err(e @ ClientError::Untrusted(_)) => {
            eprintln!("execkit attach: permission denied: {e}");
            return ExitCode::from(EXIT_NOPERM);
        }
        Err(e) => {
            eprintln!("execkit attach: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let req = Request::Attach {
        session: name.clone(),
        read_only: args.read_only,
    };
    let first = match client.call(req).await {
        Ok(v) => v,
        Err(ClientError::Refused { kind, message }) => {
            eprintln!("execkit attach: {message}");
            let code = match kind.as_deref() {
                Some("no_such_session" | "ended") => EXIT_NO_SESSION,
                Some("invalid_name") => crate::EXIT_USAGE,
                _ if message.starts_with("permission denied") => EXIT_NOPERM,
                _ => EXIT_UNREACHABLE,
            };
            return ExitCode::from(code);
        }
        Err(e) => {
            eprintln!("execkit attach: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let (mut reader, mut writer) = client.into_parts();
    let saved = tty::Saved::take();
    let raw = match &saved {
        Some(s) => match tty::RawMode::enter(s) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("execkit attach: cannot put the terminal in raw mode: {e}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    let mut out = std::io::stdout();
    let screen = first["screen"].as_str().unwrap_or("");
    let _ = out.write_all(b"\x1b[H\x1b[2J");
    let _ = out.write_all(screen.as_bytes());
    let _ = out.flush();
    let (keys_tx, mut keys_rx) = mpsc::unbounded_channel();
    let keys = tty::KeyReader::start(keys_tx, Arc::new(Notify::new())).ok();
    let (mut term, mut hup) = match (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()),
    ) {
        (Ok(t), Ok(h)) => (t, h),
        _ => {
            drop(raw);
            eprintln!("execkit attach: cannot install signal handlers");
            return ExitCode::from(1);
        }
    };
    // `read_until` keeps a partial line in `line` when another branch wins.
    let mut line = Vec::new();
    let (note, code) = loop {
        tokio::select! {
            k = keys_rx.recv() => {
                let Some(k) = k else {
                    // stdin closed: nothing more will be typed; keep
                    // watching.
                    keys_rx = mpsc::unbounded_channel().1;
                    continue;
                };
                let leave = k.iter().position(|&b| b == DETACH || (args.read_only && b == 0x03));
                let typed = &k[..leave.unwrap_or(k.len())];
                if !args.read_only && !typed.is_empty() {
                    let mut l = serde_json::to_vec(&json!({"keys": typed})).unwrap_or_default();
                    l.push(b'\n');
                    if writer.write_all(&l).await.is_err() {
                        break ("the server closed the connection".to_string(), EXIT_UNREACHABLE);
                    }
                }
                if leave.is_some() {
                    break (format!("detached from {name}; it goes on"), 0);
                }
            }
            got = reader.read_until(b'\n', &mut line) => {
                match got {
                    Ok(0) | Err(_) => break ("the server closed the connection".to_string(), EXIT_UNREACHABLE),
                    Ok(_) => {}
                }
                let v: Value = serde_json::from_slice(&line).unwrap_or(Value::Null);
                line.clear();
                if let Some(s) = v["output"].as_str() {
                    let _ = out.write_all(s.as_bytes());
                } else if let Some(s) = v["screen"].as_str() {
                    let _ = out.write_all(b"\x1b[H\x1b[2J");
                    let _ = out.write_all(s.as_bytes());
                } else if v.get("refused").is_some() {
                    // Keys nobody takes (no command runs): a bell.
                    let _ = out.write_all(b"\x07");
                } else if let Some(s) = v["ended"].as_str() {
                    break (s.to_string(), 0);
                }
                let _ = out.flush();
            }
            _ = term.recv() => break ("terminated".to_string(), 143),
            _ = hup.recv() => break ("hung up".to_string(), 129),
        }
    };
    drop(keys);
    drop(raw);
    eprintln!(
        "\r\n[execkit attach: {}]",
        execkit_core::term::escape(&note)
    );
    ExitCode::from(code)
}
