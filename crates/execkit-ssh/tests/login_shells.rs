//! Sessions start under whatever login shell the remote user has: sshd runs
//! every channel's command as `$SHELL -c …`, so execkit's start-up and its
//! out-of-band scripts must read the same to fish and tcsh as to sh, and a
//! slow rc file must cost its own time, not twice that. The users come from
//! `cargo xtask test` (`EXECKIT_TEST_SSH_FISH_USER`, `…_SLOWRC_USER`);
//! without them the cases show as ignored (testkit's runner), under
//! `CI=true` that is a failure.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use execkit_core::testkit;
use execkit_core::{RunOptions, Session, SessionConfig, SessionError};
use execkit_ssh as _;

/// The test URL with its user swapped for the one in `var`, or why there
/// is none.
fn url_for(var: &str) -> Result<String, String> {
    let (Ok(url), Ok(user)) = (std::env::var("EXECKIT_TEST_SSH_URL"), std::env::var(var)) else {
        return Err(format!("no test sshd or no {var}; run cargo xtask test"));
    };
    let rest = url.strip_prefix("ssh://").expect("ssh URL");
    let (_, host) = rest.split_once('@').expect("URL names a user");
    Ok(format!("ssh://{user}@{host}"))
}

fn timeout(secs: u64) -> RunOptions {
    let mut o = RunOptions::default();
    o.timeout = Some(Duration::from_secs(secs));
    o
}

/// Fails on a start-up line written for sh only: fish answered it with a
/// parse error (`^~~^` under ~400 spaces) and the session never started.
async fn a_fish_login_shell_runs_sessions_and_scripts(url: String) {
    let mut s = Session::open(&url, SessionConfig::default())
        .await
        .expect("a session starts under a fish login shell");
    let r = s
        .run("cd /tmp && export K='a\\b c' && echo \"$K\"", timeout(30))
        .await
        .unwrap();
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    assert_eq!(r.output, "a\\b c");
    assert_eq!(r.cwd, "/tmp");
    // The timeout ladder runs scripts out of band through the login shell.
    let r = s.run("sleep 30", timeout(1)).await.unwrap();
    assert!(r.timed_out && !r.restarted, "{r:?}");
    let r = s.run("echo \"$K\"; pwd", timeout(30)).await.unwrap();
    assert_eq!(r.output, "a\\b c\n/tmp", "state kept: {r:?}");
    s.close().await.unwrap();
}

/// Fails when a start-up that times out then waits for a clean-up script
/// that itself sits behind the same rc file (20 s of `.bashrc` answered
/// after 35 s): the answer comes at the start timeout, and says why.
async fn a_slow_rc_file_fails_at_the_start_timeout_and_says_why(url: String) {
    let mut config = SessionConfig::default();
    config.start_timeout = Duration::from_secs(2);
    let t = Instant::now();
    let err = Session::open(&url, config)
        .await
        .expect_err("an 8 s rc file cannot start within 2 s");
    let took = t.elapsed();
    let msg = err.to_string();
    assert!(matches!(err, SessionError::StartTimeout { .. }), "{err:?}");
    assert!(
        msg.contains("within 2 s") && msg.contains("login script"),
        "{msg}"
    );
    // The rc file sleeps 8 s: an answer before that did not wait for it.
    assert!(took < Duration::from_secs(6), "answered after {took:?}");
}

/// Kills every process of `user` by PID (the test's own leftovers: the
/// point of the case is that execkit could not).
fn kill_all_of(user: &str) -> usize {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let uid = passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&user)).then(|| f[2].to_string())
        })
        .expect("test user exists");
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let owner = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1));
        if owner == Some(uid.as_str()) {
            let ok = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            n += usize::from(ok);
        }
    }
    n
}

/// Fails when leftovers that could not be killed go unreported (`error`
/// null while the command's `sleep`s live on): the user's process limit
/// (16, from the login shell's rc) is filled by the command, so no clean-up
/// script can start on the host.
async fn leftovers_that_cannot_be_killed_are_named_in_error(url: String) {
    let user = std::env::var("EXECKIT_TEST_SSH_NPROC_USER").unwrap();
    kill_all_of(&user);
    let mut s = Session::open(&url, SessionConfig::default())
        .await
        .expect("a session starts under the limit");
    let r = s
        .run(
            "i=0; while [ $i -lt 30 ]; do sleep 60 & i=$((i + 1)); done 2>/dev/null; wait",
            timeout(3),
        )
        .await
        .unwrap();
    let left = kill_all_of(&user);
    assert!(r.timed_out, "{r:?}");
    assert!(left > 0, "the case needs leftovers: {r:?}");
    let error = r.error.clone().unwrap_or_default();
    assert!(
        error.contains("could not be killed"),
        "{left} left, error: {r:?}"
    );
    drop(s);
}

/// Fails when files cannot move for a user whose login shell is fish (the
/// transfer script is sh; fish must pass it on intact), when they land
/// with another owner, or when a refusal for a user who is not root is not
/// `EACCES`.
async fn files_move_for_a_non_root_user_under_fish(url: String) {
    use execkit_core::raw::{file_errno, read_file, write_file};
    use std::os::unix::fs::MetadataExt as _;
    let files = execkit_core::connect(&url).unwrap().files().unwrap();
    let user = std::env::var("EXECKIT_TEST_SSH_FISH_USER").unwrap();
    let home = std::path::PathBuf::from("/home").join(&user);
    let dir = home.join(format!("execkit-files-{}", std::process::id()));
    let path = format!("{}/sub/it's \\ $x.bin", dir.display());
    let bytes: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    write_file(&*files, &path, &bytes).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let owner = std::fs::metadata(&home).unwrap().uid();
    assert_eq!(std::fs::metadata(&path).unwrap().uid(), owner);
    assert_eq!(read_file(&*files, &path).await.unwrap(), bytes);
    let refusals = [
        (
            "reading /etc/shadow",
            read_file(&*files, "/etc/shadow").await.map(drop),
        ),
        (
            "writing into /root",
            write_file(&*files, "/root/execkit-x", b"x").await,
        ),
        (
            "making a directory in /etc",
            write_file(&*files, "/etc/execkit-x/y", b"x").await,
        ),
        (
            "reading through /root",
            read_file(&*files, "/root/missing").await.map(drop),
        ),
    ];
    for (what, r) in refusals {
        let err = r.expect_err(what);
        assert_eq!(file_errno(&err), Some(libc::EACCES), "{what}: {err}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

fn main() -> ExitCode {
    testkit::harness(vec![
        testkit::async_test_with(
            stringify!(a_fish_login_shell_runs_sessions_and_scripts),
            &url_for("EXECKIT_TEST_SSH_FISH_USER"),
            a_fish_login_shell_runs_sessions_and_scripts,
        ),
        testkit::async_test_with(
            stringify!(a_slow_rc_file_fails_at_the_start_timeout_and_says_why),
            &url_for("EXECKIT_TEST_SSH_SLOWRC_USER"),
            a_slow_rc_file_fails_at_the_start_timeout_and_says_why,
        ),
        testkit::async_test_with(
            stringify!(leftovers_that_cannot_be_killed_are_named_in_error),
            &url_for("EXECKIT_TEST_SSH_NPROC_USER"),
            leftovers_that_cannot_be_killed_are_named_in_error,
        ),
        testkit::async_test_with(
            stringify!(files_move_for_a_non_root_user_under_fish),
            &url_for("EXECKIT_TEST_SSH_FISH_USER"),
            files_move_for_a_non_root_user_under_fish,
        ),
    ])
}
