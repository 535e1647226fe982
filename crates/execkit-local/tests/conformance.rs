//! The shared conformance suite against the `local` transport, once per
//! shell: bash, dash and busybox sh.

use std::path::Path;
use std::process::ExitCode;

use execkit_core::testkit::{self, Capabilities, Fixture};
use execkit_local as _;

fn find(candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .find(|p| Path::new(p).exists())
        .map(|p| p.to_string())
}

fn main() -> ExitCode {
    let caps = Capabilities::full().host_signals(true);
    let mut fixtures = Vec::new();
    // (name, where the shell may live, $'…' quoting, POSIX background SIGINT)
    for (name, paths, ansi_c, bg_sigint) in [
        (
            "local (bash)",
            &["/bin/bash", "/usr/bin/bash"][..],
            true,
            true,
        ),
        (
            "local (dash)",
            &["/bin/dash", "/usr/bin/dash"][..],
            false,
            true,
        ),
        (
            "local (busybox sh)",
            &["/bin/busybox", "/usr/bin/busybox"][..],
            true,
            false,
        ),
    ] {
        let caps = caps
            .clone()
            .ansi_c_quoting(ansi_c)
            .background_ignores_sigint(bg_sigint);
        fixtures.push(match find(paths) {
            Some(p) => Fixture::new(name, format!("local:{p}"), caps),
            None => Fixture::new(name, "local", caps)
                .unavailable(format!("{} is not installed", paths[0])),
        });
    }
    testkit::main(fixtures)
}
