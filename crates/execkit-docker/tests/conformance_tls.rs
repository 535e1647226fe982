//! The shared conformance suite once more, on the TLS engine `cargo xtask
//! test` provisions (`dockerd --tlsverify` on a loopback port): every byte
//! of the API, the exec streams and the event stream over TLS with a
//! client certificate.
//!
//! The target is `docker://127.0.0.1:PORT/NAME` with `DOCKER_TLS_VERIFY`
//! and `DOCKER_CERT_PATH` set, as `docker -H tcp://… --tlsverify` takes
//! them. They are set here, for this process only, before anything else
//! runs (the other test binaries talk to the plain engine).

use std::process::ExitCode;

use execkit_core::testkit::{self, Capabilities, Fixture};
use execkit_docker as _;

fn main() -> ExitCode {
    // As in conformance.rs: shells in a container are not children of this
    // process; busybox ash lets Ctrl-C reach background jobs.
    let caps = Capabilities::full()
        .host_signals(false)
        .background_ignores_sigint(false);
    let name = "docker TLS (busybox sh)";
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let fixture = match (
        var("EXECKIT_TEST_DOCKER_TLS_HOST"),
        var("EXECKIT_TEST_DOCKER_TLS_CERTS"),
        var("EXECKIT_TEST_DOCKER_TLS_CONTAINER"),
    ) {
        (Some(host), Some(certs), Some(container)) => {
            // Single-threaded still: no other thread reads the environment.
            std::env::set_var("DOCKER_TLS_VERIFY", "1");
            std::env::set_var("DOCKER_CERT_PATH", certs);
            let addr = host.trim_start_matches("tcp://");
            Fixture::new(name, format!("docker://{addr}/{container}"), caps)
        }
        _ => Fixture::new(name, "docker:unset", caps)
            .unavailable("no TLS Docker engine; run cargo xtask test"),
    };
    testkit::main(vec![fixture])
}
