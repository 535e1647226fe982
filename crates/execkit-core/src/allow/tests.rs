//! Tests of `allow.rs`.

use super::*;

fn admits(pattern: &str, target: &str) -> bool {
    TargetPattern::parse(pattern).unwrap_or_else(|e| panic!("{e}"));
    matches(pattern, target)
}

fn admits_shell(pattern: &str, target: &str, shell: &str) -> bool {
    // `local:SHELL` names the shell (the local transport declares it).
    let shell_in_target = target.starts_with("local");
    check(&[pattern.to_string()], target, Some(shell), shell_in_target).is_ok()
}

/// The reproductions of issue 14 item 5, each refused.
#[test]
fn the_reported_bypasses_are_refused() {
    // A remote engine is not `docker:NAME`.
    assert!(admits("docker:*", "docker:web"));
    assert!(!admits("docker:*", "docker://127.0.0.1:2375/x"));
    // An `@` in the user name: the host is what follows the last `@`.
    let p = "ssh://deploy@prod.example.com*";
    assert!(admits(p, "ssh://deploy@prod.example.com"));
    assert!(!admits(p, "ssh://deploy@prod.example.com@127.0.0.1"));
    // More labels after the host.
    assert!(!admits(p, "ssh://deploy@prod.example.com.evil.net"));
    // Parameters that weaken host verification.
    assert!(!admits(
        p,
        "ssh://deploy@prod.example.com?known_hosts=/dev/null&host_key=accept_new"
    ));
    assert!(!admits(p, "ssh://deploy@prod.example.com?identity=/tmp/k"));
    // A shell parameter does not escape a pattern that names a shell.
    assert!(admits_shell(
        "local:/bin/dash",
        "local:/bin/dash",
        "/bin/dash"
    ));
    assert!(!admits_shell(
        "local:/bin/dash",
        "local:/bin/dash",
        "/bin/bash"
    ));
    assert!(!admits_shell("local:/bin/dash", "local", "/bin/bash"));
    assert!(!admits("local:/bin/dash", "local"));
}

#[test]
fn refusals_say_why() {
    let why = |p: &str, t: &str, sh: Option<&str>| {
        check(&[p.to_string()], t, sh, t.starts_with("local"))
            .unwrap_err()
            .to_string()
    };
    let e = why(
        "ssh://deploy@h",
        "ssh://deploy@h?known_hosts=/dev/null&host_key=accept_new",
        None,
    );
    assert!(e.contains("parameter `known_hosts`"), "{e}");
    let e = why("ssh://deploy@h", "ssh://deploy@h@127.0.0.1", None);
    assert!(e.contains("more than one `@`"), "{e}");
    let e = why("docker:*", "docker://127.0.0.1:2375/x", None);
    assert!(e.contains("no pattern admits it"), "{e}");
    let e = why("docker:web?shell=/bin/sh", "docker:web", Some("/bin/bash"));
    assert!(e.contains("shell"), "{e}");
}

#[test]
fn components_never_bleed_into_each_other() {
    // `*` in the user stops at `@`, in the host at `.` and `:`.
    assert!(admits("ssh://*@127.0.0.1:*", "ssh://root@127.0.0.1:2222"));
    assert!(admits("ssh://*@127.0.0.1:*", "ssh://127.0.0.1"));
    assert!(!admits("ssh://*@127.0.0.1", "ssh://root@127.0.0.1:2222"));
    assert!(!admits("ssh://dep*@h", "ssh://dep@x@h"));
    assert!(admits(
        "ssh://deploy@*.example.com",
        "ssh://deploy@a.example.com"
    ));
    assert!(!admits(
        "ssh://deploy@*.example.com",
        "ssh://deploy@a.b.example.com"
    ));
    assert!(!admits(
        "ssh://deploy@*.example.com",
        "ssh://deploy@example.com"
    ));
    assert!(!admits(
        "ssh://deploy@*.example.com",
        "ssh://deploy@a.example.com.evil"
    ));
    assert!(admits("ssh://deploy@*", "ssh://deploy@a.b.example.com"));
    assert!(admits(
        "ssh://deploy@WEB.example.com",
        "ssh://deploy@web.EXAMPLE.com"
    ));
    assert!(!admits("ssh://Deploy@h", "ssh://deploy@h"));
    assert!(admits("SSH://u@h", "ssh://u@h"));
    assert!(admits("ssh://u@h", "SSH://u@h"));
    // A part the pattern leaves out is absent from the target.
    assert!(!admits("ssh://deploy@h", "ssh://h"));
    assert!(!admits("ssh://deploy@h", "ssh://deploy@h:22"));
    assert!(!admits("ssh://deploy@h", "ssh://deploy@h/"));
    assert!(!admits("ssh://h", "ssh://deploy@h"));
    // IPv6 in brackets; an unbracketed one cannot be read.
    assert!(admits("ssh://u@[::1]:*", "ssh://u@[::1]:2200"));
    assert!(!admits("ssh://u@*", "ssh://u@::1"));
    // Ports are a part of their own.
    assert!(!admits("ssh://u@h:22*", "ssh://u@h:22.evil"));
    assert!(admits("ssh://u@h:22*", "ssh://u@h:2200"));
    assert!(!admits("ssh://u@h.*", "ssh://u@h.x%2Eevil"));
}

#[test]
fn docker_forms_are_distinct() {
    assert!(admits("docker:web-*", "docker:web-1"));
    assert!(!admits("docker:web-*", "docker:db"));
    assert!(!admits("docker:web-*", "docker:/web-1"));
    assert!(admits("docker:*", "docker:/web"));
    assert!(!admits("docker:*", "docker:///web"));
    assert!(admits(
        "docker://127.0.0.1:2375/*",
        "docker://127.0.0.1:2375/web"
    ));
    assert!(!admits(
        "docker://127.0.0.1:2375/*",
        "docker://127.0.0.1:2375/a/b"
    ));
    assert!(!admits(
        "docker://127.0.0.1:2375/*",
        "docker://127.0.0.1:2376/web"
    ));
    assert!(!admits(
        "docker://127.0.0.1:2375/*",
        "docker://10.0.0.1:2375/web"
    ));
    assert!(admits("docker*", "docker://10.0.0.1:2375/web"));
    assert!(!admits("docker*", "docker://h/web?x=1"));
    // A Docker context is another engine: only a pattern naming it admits it.
    assert!(!admits("docker:*", "docker:///web?context=prod"));
    assert!(!admits("docker*", "docker:///web?context=prod"));
    assert!(!admits("docker:///*", "docker:///web?context=prod"));
    assert!(admits(
        "docker:///*?context=staging",
        "docker:///web?context=staging"
    ));
    assert!(!admits(
        "docker:///*?context=staging",
        "docker:///web?context=prod"
    ));
}

#[test]
fn local_shells() {
    assert!(admits("local", "local"));
    assert!(!admits("local", "local:/bin/sh"));
    assert!(admits("local*", "local"));
    assert!(admits("local*", "local:/bin/sh"));
    assert!(!admits("local*", "localhost:x"));
    assert!(admits("local:*", "local"));
    assert!(admits("local:*", "local:/opt/my shells/sh"));
    assert!(admits("local:/usr/bin/*", "local:/usr/bin/zsh"));
    assert!(!admits("local:/usr/bin/*", "local:/usr/bin/../../tmp/sh"));
    assert!(!admits("local:/usr/bin/*", "local:/usr/bin/.."));
    assert!(!admits("local:/usr/bin/*", "local:/usr/bin/x/sh"));
    // A `?` in a local path is part of the path.
    assert!(!admits("local:/bin/sh", "local:/bin/sh?"));
    // The requested shell replaces the target's on local.
    assert!(admits_shell("local:*", "local", "/bin/zsh"));
    assert!(admits_shell("local*", "local:/bin/dash", "/bin/bash"));
    assert!(!admits_shell("local", "local", "/bin/zsh"));
    assert!(admits_shell("local:/bin/dash", "local", "/bin/dash"));
    // Elsewhere a pattern may name the shells it admits.
    assert!(admits_shell("docker:web", "docker:web", "/bin/bash"));
    assert!(admits_shell(
        "docker:web?shell=/bin/sh",
        "docker:web",
        "/bin/sh"
    ));
    assert!(!admits_shell(
        "docker:web?shell=/bin/sh",
        "docker:web",
        "/bin/bash"
    ));
    assert!(admits("docker:web?shell=/bin/sh", "docker:web"));
    assert!(!admits_shell(
        "ssh://u@h?shell=/bin/*",
        "ssh://u@h",
        "/usr/bin/bash"
    ));
}

#[test]
fn parameters_must_be_named() {
    let p = "ssh://u@h?connect_timeout=*&host_key=accept_new";
    assert!(admits(p, "ssh://u@h"));
    assert!(admits(p, "ssh://u@h?connect_timeout=5"));
    assert!(admits(p, "ssh://u@h?host_key=accept_new&connect_timeout=5"));
    assert!(admits(p, "ssh://u@h?host_key=accept%5Fnew"));
    assert!(!admits(p, "ssh://u@h?host_key=strict&connect_timeout=5"));
    assert!(!admits(
        p,
        "ssh://u@h?connect_timeout=5&known_hosts=/dev/null"
    ));
    assert!(!admits(p, "ssh://u@h?connect_timeout=5&&"));
    assert!(!admits(p, "ssh://u@h?"));
    assert!(!admits("ssh://u@h", "ssh://u@h?"));
    // Values compare decoded, segment by segment.
    let p = "ssh://u@h?known_hosts=/etc/ssh/*";
    assert!(admits(p, "ssh://u@h?known_hosts=/etc/ssh/kh"));
    assert!(!admits(
        p,
        "ssh://u@h?known_hosts=/etc/ssh/%2E%2E%2F%2E%2E%2Ftmp%2Fkh"
    ));
    assert!(!admits(p, "ssh://u@h?known_hosts=/etc/ssh/.."));
    assert!(!admits(p, "ssh://u@h?known_hosts=/etc/ssh/%ZZ"));
    // A target is its own pattern, parameters and all.
    let t = "ssh://root@127.0.0.1:2222?identity=/tmp/k%20ey&known_hosts=/tmp/kh";
    assert!(admits(t, t));
}

#[test]
fn everything_and_nothing() {
    assert!(admits("*", "ssh://u@h?known_hosts=/dev/null"));
    assert!(check(&[], "anything:at all", Some("/bin/x"), false).is_ok());
    assert!(!admits("docker:*", "elsewhere:x"));
    assert!(!admits("docker:*", "ssh://x"));
    assert!(!admits("local", "local\n"));
}

#[test]
fn bad_patterns_are_errors() {
    for bad in [
        "",
        "*docker*",
        "loc*:x",
        "ssh://a@b@c",
        "ssh://@h",
        "ssh://u@",
        "ssh://u@h?known_hosts",
        "ssh://u@h?*=1",
        "ssh://u@::1",
        "ssh://u@[::1",
        "local*:x",
        "local\0",
    ] {
        assert!(TargetPattern::parse(bad).is_err(), "{bad:?}");
    }
    // An invalid pattern admits nothing.
    assert!(!matches("ssh://a@b@c", "ssh://a@b@c"));
}
