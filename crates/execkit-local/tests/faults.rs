//! Fault matrix (issue 9), engine level, on the `local` transport: the
//! spool directory cannot be created, and the spool's disk fills up
//! mid-command. Either way the command runs to its end, the result keeps
//! head + tail in memory, `output_path` is null and `error` says why in one
//! sentence; the session goes on and leaves no marked process behind.
//!
//! The disk-full case mounts a 1 MiB tmpfs (root only). Without root, or if
//! the mount fails, it shows as ignored (testkit's runner) — except under
//! `CI=true`, where it must run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use execkit_core::testkit::libtest_mimic::{Completion, Failed};
use execkit_core::testkit::{self, marked_here, Tmpfs};
use execkit_core::{RunOptions, RunResult, Session, SessionConfig};
use execkit_local as _;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("execkit-faults-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(spool_dir: &Path) -> SessionConfig {
    let mut c = SessionConfig::default();
    c.spool_dir = spool_dir.to_path_buf();
    c
}

/// Marked processes still there after a short settle.
async fn leaked(marker: &str) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = marked_here(marker);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `seq 1 N` as the terminal prints it.
fn seq(n: u32) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

/// The result is `full` capped head + tail at the default 30,000 chars,
/// with the note that the full output was not kept.
fn assert_head_and_tail(r: &RunResult, full: &str) {
    let limit = SessionConfig::default().output_limit;
    let full = full.strip_suffix('\n').unwrap_or(full);
    let head = &full[..limit / 2];
    let tail = &full[full.len() - (limit - limit / 2 - 1)..];
    assert!(r.output.starts_with(head), "head differs");
    assert!(r.output.ends_with(tail), "tail differs");
    assert!(
        r.output.contains("elided; full output not kept"),
        "no elision note"
    );
    assert!(r.output.len() < limit + 200, "{} chars", r.output.len());
}

const BIG: u32 = 700_000; // `seq 1 700000` prints 4.8 MB

async fn spool_dir_that_cannot_be_created_keeps_head_and_tail() {
    let dir = scratch("spool-unwritable");
    // Root ignores permissions: a directory under a regular file cannot be
    // made by anyone.
    let blocker = dir.join("a-file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let spool = blocker.join("spool");
    let mut s = Session::open("local", config(&spool)).await.unwrap();
    let marker = s.marker().to_string();
    let t = Instant::now();
    let r = s
        .run(
            &format!("seq 1 {BIG}"),
            RunOptions::timeout(Duration::from_secs(120)),
        )
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(r.exit_code, Some(0), "{:?}", r.error);
    assert!(!r.timed_out && !r.session_lost && r.truncated);
    assert_eq!(r.output_path, None);
    assert_eq!(
        r.error.as_deref(),
        Some(
            format!(
                "cannot create the spool directory {}: Not a directory (os error 20); the full output was not kept",
                spool.display()
            )
            .as_str()
        )
    );
    assert_head_and_tail(&r, &seq(BIG));
    // The session goes on; small outputs never touch the spool.
    let r2 = s
        .run(
            "echo still-here",
            RunOptions::timeout(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(
        (r2.output.as_str(), r2.error.as_deref()),
        ("still-here", None)
    );
    s.close().await.unwrap();
    let left = leaked(&marker).await;
    eprintln!(
        "fault spool-unwritable: returned in {took:?} (4.8 MB output); leaked processes: {}; error: {:?}",
        left.len(),
        r.error
    );
    assert!(left.is_empty(), "survived: {left:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A tmpfs of `size`, or why there is none (not root, mount refused).
fn tmpfs(name: &str, size: &str) -> Result<Tmpfs, String> {
    Tmpfs::mount(&scratch(name), &format!("size={size},mode=0700"))
        .map_err(|why| format!("cannot mount a tmpfs ({why}); run as root"))
}

async fn disk_full_spool_keeps_head_and_tail_and_frees_the_space() -> Result<Completion, Failed> {
    let fs = match tmpfs("spool-full", "1m") {
        Ok(fs) => fs,
        Err(why) => return testkit::unprovisioned(why),
    };
    let spool = fs.dir.join("spool");
    let mut s = Session::open("local", config(&spool)).await.unwrap();
    let marker = s.marker().to_string();
    let t = Instant::now();
    let r = s
        .run(
            &format!("seq 1 {BIG}"),
            RunOptions::timeout(Duration::from_secs(120)),
        )
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(r.exit_code, Some(0), "{:?}", r.error);
    assert!(!r.timed_out && !r.session_lost && r.truncated);
    assert_eq!(r.output_path, None);
    let err = r.error.clone().unwrap_or_default();
    assert!(
        err.starts_with(&format!("cannot write the spool file {}/", spool.display()))
            && err.contains("No space left on device")
            && err.ends_with("the full output was not kept"),
        "{err}"
    );
    assert_head_and_tail(&r, &seq(BIG));
    // The partial spool file is gone: the space is free again, and the
    // next capped output spools in full.
    let files: Vec<_> = std::fs::read_dir(&spool).unwrap().flatten().collect();
    assert!(files.is_empty(), "partial spool left: {files:?}");
    let r2 = s
        .run("seq 1 50000", RunOptions::timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!((r2.exit_code, r2.error.as_deref()), (Some(0), None));
    let path = r2.output_path.clone().expect("spooled");
    assert!(path.starts_with(&fs.dir), "{path:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), seq(50_000));
    s.close().await.unwrap();
    let left = leaked(&marker).await;
    eprintln!(
        "fault spool-disk-full: returned in {took:?} (4.8 MB output, 1 MiB tmpfs); leaked processes: {}; error: {err:?}",
        left.len()
    );
    assert!(left.is_empty(), "survived: {left:?}");
    drop(fs);
    Ok(Completion::Completed)
}

fn main() -> ExitCode {
    let none: Result<(), String> = Ok(());
    testkit::harness(vec![
        testkit::async_test_with(
            "spool_dir_that_cannot_be_created_keeps_head_and_tail",
            &none,
            |()| spool_dir_that_cannot_be_created_keeps_head_and_tail(),
        ),
        testkit::async_test_with(
            "disk_full_spool_keeps_head_and_tail_and_frees_the_space",
            &none,
            |()| disk_full_spool_keeps_head_and_tail_and_frees_the_space(),
        ),
    ])
}
