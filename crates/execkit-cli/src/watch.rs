//! `execkit watch`: the live console of a running `execkit serve`,
//! read-only, for a person's terminal: headers and footers with every
//! control character escaped, command output filtered (colours and
//! same-line moves kept, what acts outside the pane dropped) unless
//! `--raw-output`, other processes' sessions tagged with their publisher.

use std::collections::HashMap;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use execkit_core::console::{ConsoleEvent, Renderer};
use serde_json::Value;

use crate::client::Client;
use crate::proto::{self, Request};

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Socket of the server [default: ${XDG_RUNTIME_DIR:-/tmp/execkit-$UID}/execkit.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Pass command output to the terminal as it came, escape sequences
    /// and all. By default only colours and moves on the current line get
    /// through; without the filter a command can set the terminal's title
    /// and clipboard, wipe its scrollback, switch modes, and make it
    /// answer queries into the input of the shell you type in next. Only
    /// for output you trust.
    #[arg(long)]
    pub raw_output: bool,
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
        let mut renderer = Renderer::new(color, args.raw_output);
        loop {
            let mut line = match client.next_line().await {
                Ok(l) => l,
                Err(_) => {
                    eprintln!("execkit watch: the server went away");
                    return ExitCode::SUCCESS;
                }
            };
            names.rename(&mut line).await;
            let shown = match serde_json::from_value::<ConsoleEvent>(line.clone()) {
                Ok(ev) => renderer.render(&ev),
                Err(_) => renderer.note(&format!("[console: {line}]")),
            };
            let _ = out.write_all(&shown);
            let _ = out.flush();
        }
    })
}

/// The names of the server's sessions by engine id: console events carry
/// the id; a person knows the name. Learned from `list` on a second
/// connection when a command starts in a session not seen yet. Events of
/// other processes (`exec`, `mcp`: relayed by `publish`, with an `origin`)
/// keep their namespaced id and are never renamed.
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
        if !event["origin"].is_null() {
            return;
        }
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
