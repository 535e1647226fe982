//! `execkit exec --session NAME`: the same contract, through `execkit serve`.

use std::path::PathBuf;
use std::process::ExitCode;

use execkit_core::RunResult;

use crate::client::{Client, ClientError};
use crate::proto::{self, Request};
use crate::EXIT_UNREACHABLE;

pub async fn exec(
    target: &str,
    name: &str,
    socket: Option<PathBuf>,
    commands: &[String],
    timeout: f64,
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
                ClientError::Refused(m)
                    if m.contains("not allowed")
                        || m.contains("unknown target scheme")
                        || m.contains("invalid target") =>
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
            timeout_secs: Some(timeout),
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
                    ClientError::Refused(m) if m.contains("NUL") || m.contains("empty") => {
                        crate::EXIT_USAGE
                    }
                    _ => EXIT_UNREACHABLE,
                });
            }
        };
        crate::exec::print_result(&result, json);
        match crate::exec::exit_status(&result) {
            Ok(code) => status = code,
            Err(lost) => return lost,
        }
    }
    status
}
