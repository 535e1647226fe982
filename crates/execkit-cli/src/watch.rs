//! `execkit watch`: the live console of a running `execkit serve`,
//! read-only, colours kept for the person watching.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use execkit_core::console::{render, ConsoleEvent};
use serde_json::Value;

use crate::client::Client;
use crate::proto::{self, Request};

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Socket of the server [default: ${XDG_RUNTIME_DIR:-/tmp/execkit-$UID}/execkit.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

pub fn main(args: WatchArgs) -> ExitCode {
    let rt = match crate::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let path = args.socket.unwrap_or_else(proto::default_socket);
        let path = &path;
        let mut client = match Client::connect(path).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("execkit watch: {e}");
                return ExitCode::from(crate::EXIT_UNREACHABLE);
            }
        };
        if let Err(e) = client.call(Request::Watch).await {
            eprintln!("execkit watch: {e}");
            return ExitCode::from(1);
        }
        eprintln!("execkit watch: watching {}", path.display());
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let mut out = std::io::stdout();
        let mut names = Names::new(path.clone());
        loop {
            let mut line = match client.next_line().await {
                Ok(l) => l,
                Err(_) => {
                    eprintln!("execkit watch: the server went away");
                    return ExitCode::SUCCESS;
                }
            };
            names.rename(&mut line).await;
            match serde_json::from_value::<ConsoleEvent>(line.clone()) {
                Ok(ev) => {
                    let _ = out.write_all(&render(&ev, color));
                }
                Err(_) => {
                    let _ = writeln!(out, "[console: {line}]");
                }
            }
            let _ = out.flush();
        }
    })
}

/// The names of the server's sessions by engine id: console events carry
/// the id; a person knows the name. Learned from `list` on a second
/// connection when a command starts in a session not seen yet (sessions
/// of `exec` and `mcp`, which the server does not hold, keep their id).
struct Names {
    socket: PathBuf,
    client: Option<Client>,
    by_id: HashMap<String, String>,
}

impl Names {
    fn new(socket: PathBuf) -> Names {
        Names {
            socket,
            client: None,
            by_id: HashMap::new(),
        }
    }

    /// Puts the session's name in place of its id, when it has one.
    async fn rename(&mut self, event: &mut Value) {
        let Some(id) = event["session"].as_str().map(str::to_string) else {
            return;
        };
        if event["kind"] == "header" && !self.by_id.contains_key(&id) {
            self.learn().await;
        }
        if let Some(name) = self.by_id.get(&id) {
            event["session"] = Value::from(name.clone());
        }
    }

    /// Asks the server for its sessions (best effort).
    async fn learn(&mut self) {
        if self.client.is_none() {
            self.client = Client::connect(&self.socket).await.ok();
        }
        let Some(client) = &mut self.client else {
            return;
        };
        match client.call(Request::List).await {
            Ok(Value::Array(list)) => {
                for s in list {
                    if let (Some(id), Some(name)) = (s["id"].as_str(), s["name"].as_str()) {
                        self.by_id.insert(id.to_string(), name.to_string());
                    }
                }
            }
            _ => self.client = None,
        }
    }
}
