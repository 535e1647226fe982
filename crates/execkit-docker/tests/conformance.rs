//! The shared conformance suite against the `docker` transport, in the
//! busybox container `cargo xtask test` provisions (its name is in
//! `EXECKIT_TEST_DOCKER_CONTAINER`, the engine in `DOCKER_HOST`).

use std::process::ExitCode;

use execkit_core::testkit::{self, Capabilities, Fixture};
use execkit_docker as _;

fn main() -> ExitCode {
    // Shells in a container are not children of this process; busybox ash
    // lets Ctrl-C reach background jobs.
    let caps = Capabilities::full()
        .host_signals(false)
        .background_ignores_sigint(false);
    let name = "docker (busybox sh)";
    let fixture = match std::env::var("EXECKIT_TEST_DOCKER_CONTAINER") {
        Ok(c) if !c.is_empty() => Fixture::new(name, format!("docker:{c}"), caps),
        _ => Fixture::new(name, "docker:unset", caps)
            .unavailable("no test container; run cargo xtask test"),
    };
    testkit::main(vec![fixture])
}
