//! Tests of `output_cap.rs`.

use super::*;

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("execkit-cap-{}-{name}", std::process::id()))
}

#[test]
fn small_output_is_untouched() {
    let mut c = OutputCap::new(100, tmp("small"));
    c.push("hello ");
    c.push("world");
    let out = c.finish();
    assert_eq!(out.text, "hello world");
    assert!(!out.truncated);
    assert!(out.spool_path.is_none());
}

#[test]
fn caps_head_and_tail_exactly_and_spools_everything() {
    let path = tmp("big");
    let full: String = (0..5000).map(|i| format!("{i}é\n")).collect();
    let mut c = OutputCap::new(1000, path.clone());
    let chars: Vec<char> = full.chars().collect();
    for piece in chars.chunks(37) {
        c.push(&piece.iter().collect::<String>());
    }
    let out = c.finish();
    assert!(out.truncated);
    let head: String = chars[..500].iter().collect();
    let tail: String = chars[chars.len() - 500..].iter().collect();
    assert!(out.text.starts_with(&head));
    assert!(out.text.ends_with(&tail));
    assert!(out.text.contains("characters elided"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), full);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn unwritable_spool_keeps_head_and_tail_and_says_why() {
    // A directory under a regular file cannot exist, even for root.
    let file = tmp("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let dir = file.join("spool");
    let full: String = (0..3000).map(|i| format!("{i}\n")).collect();
    let mut c = OutputCap::new(200, dir.join("a.out"));
    c.push(&full);
    let out = c.finish();
    assert!(out.truncated);
    assert_eq!(out.spool_path, None);
    let why = out.spool_error.unwrap();
    assert!(
        why.starts_with(&format!(
            "cannot create the spool directory {}: ",
            dir.display()
        )) && why.contains("Not a directory")
            && why.ends_with("the full output was not kept"),
        "{why}"
    );
    assert!(out.text.starts_with(&full[..100]), "{}", out.text);
    assert!(
        out.text.ends_with(&full[full.len() - 100..]),
        "{}",
        out.text
    );
    assert!(out.text.contains("full output not kept"), "{}", out.text);
    std::fs::remove_file(file).unwrap();
}

#[test]
fn prune_removes_only_old_spool_files() {
    let d = tmp("prune");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let day = std::time::Duration::from_secs(86_400);
    let old = std::time::SystemTime::now() - 8 * day;
    for (name, age) in [
        ("a-1.out", Some(old)),
        ("b-2.out", None),
        ("notes.txt", Some(old)),
    ] {
        let f = std::fs::File::create(d.join(name)).unwrap();
        f.set_len(10).unwrap();
        if let Some(t) = age {
            f.set_modified(t).unwrap();
        }
    }
    let r = prune_spool_by_age(&d, 7 * day).unwrap();
    assert_eq!(
        r,
        PruneReport {
            removed: 1,
            bytes: 10
        }
    );
    assert!(!d.join("a-1.out").exists());
    assert!(d.join("b-2.out").exists() && d.join("notes.txt").exists());
    assert_eq!(
        prune_spool_by_age(&d.join("missing"), day).unwrap(),
        PruneReport::default()
    );
}

#[test]
fn limit_zero_returns_no_text_and_spools_everything() {
    let path = tmp("zero");
    let mut c = OutputCap::new(0, path.clone());
    c.push("hello\n");
    c.push("world");
    let out = c.finish();
    assert_eq!(out.text, "");
    assert!(out.truncated);
    assert_eq!(out.spool_path.as_deref(), Some(path.as_path()));
    assert_eq!(out.total_chars, 11);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\nworld");
    std::fs::remove_file(path).unwrap();
    // Nothing printed: nothing truncated, no file.
    let out = OutputCap::new(0, tmp("zero-empty")).finish();
    assert_eq!((out.text.as_str(), out.truncated), ("", false));
    assert!(out.spool_path.is_none() && !tmp("zero-empty").exists());
    // A limit of 1 keeps one char of tail, not two.
    let mut c = OutputCap::memory_only(1);
    c.push("abc");
    let out = c.finish();
    assert!(out.truncated);
    assert!(
        out.text.starts_with("[… 2 of 3") && out.text.ends_with("]\nc"),
        "{}",
        out.text
    );
}

fn spool_files(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn spool_directory_cap_removes_oldest_first() {
    let d = tmp("spool-cap");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let now = std::time::SystemTime::now();
    for (i, name) in ["a.out", "b.out", "c.out", "d.out"].iter().enumerate() {
        let f = std::fs::File::create(d.join(name)).unwrap();
        f.set_len(100_000).unwrap();
        f.set_modified(now - std::time::Duration::from_secs(100 - i as u64))
            .unwrap();
    }
    std::fs::write(d.join("notes.txt"), vec![b'x'; 500_000]).unwrap();
    // A new spool file of 140 KB under a 300 KB cap, checked when it
    // starts (a goes) and after 75 KB (64 KB flushed: b goes).
    let mut c = OutputCap::new(10, d.join("new.out")).with_spool_cap(300_000);
    let line = "x".repeat(99) + "\n";
    for _ in 0..1400 {
        c.push(&line);
    }
    let out = c.finish();
    assert!(out.spool_error.is_none(), "{:?}", out.spool_error);
    assert_eq!(
        spool_files(&d),
        ["c.out", "d.out", "new.out", "notes.txt"],
        "{:?}",
        spool_files(&d)
    );
    let r = prune_spool_by_size(&d, 150_000, None).unwrap();
    assert_eq!(r.removed, 2);
    assert_eq!(spool_files(&d), ["new.out", "notes.txt"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn an_output_alone_past_the_spool_cap_is_not_kept() {
    let d = tmp("spool-cap-own");
    let _ = std::fs::remove_dir_all(&d);
    let path = d.join("big.out");
    let mut c = OutputCap::new(100, path.clone()).with_spool_cap(200_000);
    let line = "y".repeat(99) + "\n";
    for _ in 0..5000 {
        c.push(&line);
    }
    let out = c.finish();
    assert!(out.truncated && out.spool_path.is_none());
    assert_eq!(
        out.spool_error.as_deref(),
        Some("the full output passed the spool cap of 200000 bytes (EXECKIT_SPOOL_MAX_BYTES); the full output was not kept")
    );
    assert!(out.text.ends_with(&line[50..]), "{}", out.text);
    assert!(!path.exists());
    std::fs::remove_dir_all(&d).unwrap();
}

/// Issue 14 item 3: a spool file is created fresh and never through a
/// symlink: what is planted at its name (a link to a file of someone
/// else, or a file) is neither written through nor truncated.
#[test]
fn a_planted_spool_name_is_not_written_through() {
    let d = tmp("planted");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let victim = d.join("victim");
    std::fs::write(&victim, b"keep me\n").unwrap();
    let link = d.join("s-1.out");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let planted = d.join("s-2.out");
    std::fs::write(&planted, b"planted\n").unwrap();
    for path in [&link, &planted] {
        let mut c = OutputCap::new(10, path.clone()).with_spool_cap(0);
        for i in 0..1000 {
            c.push(&format!("{i}\n"));
        }
        let out = c.finish();
        assert!(out.truncated && out.spool_path.is_none(), "{out:?}");
        let why = out.spool_error.unwrap_or_default();
        assert!(why.contains("cannot create the spool file"), "{why}");
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me\n");
    assert_eq!(std::fs::read(&planted).unwrap(), b"planted\n");
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    std::fs::remove_dir_all(&d).unwrap();
}
