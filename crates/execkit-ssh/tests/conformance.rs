//! The shared conformance suite against the `ssh` transport, on the test
//! sshd that `cargo xtask test` provisions (`EXECKIT_TEST_SSH_URL`), and
//! once more through its jump host by an `ssh_config` alias
//! (`EXECKIT_TEST_SSH_ALIAS_URL`: `ssh://execkit-target?config=…`, whose
//! `ProxyJump` names the second sshd).

use std::process::ExitCode;

use execkit_core::testkit::{self, Capabilities, Fixture};
use execkit_ssh as _;

fn main() -> ExitCode {
    // The shell is not our child: no host signal dispositions to inherit.
    let caps = Capabilities::full().host_signals(false);
    let fixture = match std::env::var("EXECKIT_TEST_SSH_URL") {
        Ok(url) if !url.is_empty() => Fixture::new("ssh (bash)", url, caps.clone()),
        _ => Fixture::new("ssh (bash)", "ssh://nobody@127.0.0.1", caps.clone())
            .unavailable("no test sshd; run cargo xtask test"),
    };
    let name = "ssh via ssh_config alias + ProxyJump (bash)";
    let jumped = match std::env::var("EXECKIT_TEST_SSH_ALIAS_URL") {
        Ok(url) if !url.is_empty() => Fixture::new(name, url, caps),
        _ => Fixture::new(name, "ssh://execkit-target", caps)
            .unavailable("no test sshd with a jump host; run cargo xtask test"),
    };
    testkit::main(vec![fixture, jumped])
}
