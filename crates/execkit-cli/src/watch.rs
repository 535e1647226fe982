//! `execkit watch`: the live console of a running `execkit serve`,
//! read-only, colours kept for the person watching.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use execkit_core::console::{render, ConsoleEvent};

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
        let mut client = match Client::connect(&path).await {
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
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let mut out = std::io::stdout();
        loop {
            let line = match client.next_line().await {
                Ok(l) => l,
                Err(_) => {
                    eprintln!("execkit watch: the server went away");
                    return ExitCode::SUCCESS;
                }
            };
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
