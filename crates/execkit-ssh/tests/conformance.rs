//! The shared conformance suite against the `ssh` transport, on the test
//! sshd that `cargo xtask test` provisions (`EXECKIT_TEST_SSH_URL`).

use std::process::ExitCode;

use execkit_core::testkit::{self, Capabilities, Fixture};
use execkit_ssh as _;

fn main() -> ExitCode {
    // The shell is not our child: no host signal dispositions to inherit.
    let caps = Capabilities::full().host_signals(false);
    let fixture = match std::env::var("EXECKIT_TEST_SSH_URL") {
        Ok(url) if !url.is_empty() => Fixture::new("ssh (bash)", url, caps),
        _ => Fixture::new("ssh (bash)", "ssh://nobody@127.0.0.1", caps)
            .unavailable("no test sshd; run cargo xtask test"),
    };
    testkit::main(vec![fixture])
}
