//! Tests of the host's own checks.

use super::{target_matches, valid_name};

#[test]
fn session_names() {
    for ok in ["s1", "build", "web-01", "a.b_c", &"x".repeat(64)] {
        assert!(valid_name(ok), "{ok}");
    }
    for bad in [
        "",
        "-rf",
        "a b",
        "a;b",
        "$(id)",
        "a/b",
        "é",
        &"x".repeat(65),
    ] {
        assert!(!valid_name(bad), "{bad}");
    }
}

/// The patterns in use before the allow list compared parts keep
/// their meaning (the grammar's own tests are in `allow.rs`).
#[test]
fn globs() {
    assert!(target_matches("local", "local"));
    assert!(!target_matches("local", "local:/bin/sh"));
    assert!(target_matches("local*", "local:/bin/sh"));
    assert!(target_matches("docker:*", "docker:web"));
    assert!(!target_matches("docker:*", "ssh://x"));
    assert!(target_matches(
        "ssh://*@127.0.0.1:*",
        "ssh://root@127.0.0.1:2222"
    ));
    assert!(!target_matches("docker:a*b*c", "docker:acb"));
}
