//! Tests of session records and gc.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::gc::{backoff, lock};
use super::records::{now_secs, store};
use super::*;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "execkit-sessions-test-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn own_start_time_is_known() {
    let rec = SessionRecord::new("m", "local");
    assert!(rec.owner_start > 0);
    assert!(rec.owner_alive());
    // Same pid, other start time: a recycled pid is not the owner.
    let recycled = SessionRecord {
        owner_start: rec.owner_start + 1,
        ..rec.clone()
    };
    assert!(!recycled.owner_alive());
    let gone = SessionRecord {
        owner_pid: u32::MAX - 1,
        ..rec
    };
    assert!(!gone.owner_alive());
}

#[test]
fn records_round_trip() {
    let dir = scratch("roundtrip");
    let rec = SessionRecord::new("abc123", "docker:web");
    let path = write_record_in(&dir, &rec).unwrap();
    std::fs::write(dir.join("torn.json"), b"{\"marker\":").unwrap();
    let all = list_in(&dir);
    assert_eq!(all, vec![(path, rec)]);
    assert!(!dir.join("torn.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn gc_keeps_live_and_unreachable_sessions() {
    let dir = scratch("gc");
    let live = SessionRecord::new("live1", "nosuchscheme:x");
    write_record_in(&dir, &live).unwrap();
    let dead = SessionRecord {
        marker: "dead1".into(),
        owner_pid: u32::MAX - 1,
        ..live.clone()
    };
    write_record_in(&dir, &dead).unwrap();
    let r = gc_in(&dir).await;
    assert_eq!(r.live, 1);
    assert!(r.cleaned.is_empty());
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert!(r.failed[0].1.contains("nosuchscheme"), "{r:?}");
    // Kept for a later try.
    assert_eq!(list_in(&dir).len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 13 item 10: one failed attempt per target per gc, the attempt
/// recorded for back-off, which the background gc respects.
#[tokio::test]
async fn gc_tries_a_failing_target_once_and_backs_off() {
    let dir = scratch("backoff");
    for m in ["b1", "b2", "b3"] {
        let rec = SessionRecord {
            marker: m.into(),
            owner_pid: u32::MAX - 1,
            ..SessionRecord::new(m, "nosuchscheme:x")
        };
        write_record_in(&dir, &rec).unwrap();
    }
    let r = gc_in(&dir).await;
    assert_eq!(r.failed.len(), 3, "{r:?}");
    let not_tried = r
        .failed
        .iter()
        .filter(|(_, w)| w.starts_with("not tried"))
        .count();
    assert_eq!(not_tried, 2, "{r:?}");
    let tried: Vec<SessionRecord> = list_in(&dir)
        .into_iter()
        .map(|(_, rec)| rec)
        .filter(|rec| rec.failures == 1)
        .collect();
    assert_eq!(tried.len(), 1);
    assert!(tried[0].retry_after >= now_secs() + BACKOFF.as_secs() - 1);
    // The background gc leaves the whole target alone while one of its
    // records is in back-off.
    let flag = Arc::new(AtomicBool::new(false));
    let r = gc_with(&dir, GcOptions::background(flag.clone())).await;
    assert_eq!((r.deferred, r.failed.len()), (3, 0), "{r:?}");
    assert!(!flag.load(Ordering::SeqCst));
    // Another target is tried meanwhile.
    let other = SessionRecord {
        owner_pid: u32::MAX - 1,
        ..SessionRecord::new("o1", "otherscheme:y")
    };
    write_record_in(&dir, &other).unwrap();
    let r = gc_with(&dir, GcOptions::background(flag.clone())).await;
    assert_eq!((r.deferred, r.failed.len()), (3, 1), "{r:?}");
    assert!(flag.load(Ordering::SeqCst));
    assert_eq!(backoff(1), BACKOFF);
    assert_eq!(backoff(2), BACKOFF * 2);
    assert_eq!(backoff(40), MAX_BACKOFF);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 13 item 12: gcs take turns (the lock), the second does nothing.
#[tokio::test]
async fn a_second_gc_returns_at_once() {
    let dir = scratch("lock");
    let rec = SessionRecord {
        owner_pid: u32::MAX - 1,
        ..SessionRecord::new("l1", "nosuchscheme:x")
    };
    write_record_in(&dir, &rec).unwrap();
    let held = lock(&dir).unwrap();
    assert!(held.is_some());
    let r = gc_in(&dir).await;
    assert!(r.busy && r.failed.is_empty(), "{r:?}");
    drop(held);
    assert!(!gc_in(&dir).await.busy);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Records are 0600 in a 0700 directory, also one that was looser.
#[test]
fn records_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("private");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = write_record_in(&dir, &SessionRecord::new("p1", "local")).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&dir), mode(&path)), (0o700, 0o600));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 14 item 3: gc reads records only from a directory nobody
/// else may write, and only regular files of this user — never through
/// a symlink, never blocking on a FIFO.
#[tokio::test]
async fn gc_reads_only_own_records_from_a_verified_dir() {
    use std::os::unix::fs::PermissionsExt;
    let dead = |m: &str, target: &str| SessionRecord {
        owner_pid: u32::MAX - 1,
        ..SessionRecord::new(m, target)
    };
    let dir = scratch("verified");
    write_record_in(&dir, &dead("mine", "nosuchscheme:mine")).unwrap();
    // Elsewhere: a record the link below points at.
    let outside = scratch("verified-outside");
    let planted = write_record_in(&outside, &dead("p1", "nosuchscheme:planted")).unwrap();
    std::os::unix::fs::symlink(&planted, dir.join("link.json")).unwrap();
    let fifo = std::ffi::CString::new(dir.join("fifo.json").into_os_string().into_encoded_bytes())
        .unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let theirs = store(&dir, &dead("p2", "nosuchscheme:planted")).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    }
    // Listing must not block on the FIFO: on a thread, bounded.
    let (tx, rx) = std::sync::mpsc::channel();
    let d = dir.clone();
    std::thread::spawn(move || tx.send(list_in(&d)).unwrap());
    let listed = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("listing blocked on a FIFO");
    let markers: Vec<&str> = listed.iter().map(|(_, r)| r.marker.as_str()).collect();
    assert_eq!(markers, ["mine"]);
    let r = gc_in(&dir).await;
    let tried: Vec<&str> = r
        .failed
        .iter()
        .map(|(rec, _)| rec.target.as_str())
        .collect();
    assert_eq!(tried, ["nosuchscheme:mine"], "{r:?}");
    // What was not ours is left as it was.
    assert!(dir.join("link.json").symlink_metadata().is_ok());
    assert!(planted.exists());
    // A directory others may write is not read at all (and not changed).
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let r = gc_in(&dir).await;
    assert!(r.failed.is_empty() && r.cleaned.is_empty(), "{r:?}");
    assert!(
        r.refused
            .as_deref()
            .is_some_and(|w| w.contains("other users")),
        "{r:?}"
    );
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o777);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&outside);
}
