//! The `execkit` binary: the whole command is [`execkit_cli::run`].

use std::process::ExitCode;

fn main() -> ExitCode {
    execkit_cli::run(std::env::args_os())
}
