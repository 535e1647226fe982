//! Where execkit keeps its files on this host, and how its directories are
//! made and checked.
//!
//! **State.** `${XDG_STATE_HOME:-$HOME/.local/state}/execkit`. With neither
//! variable set there is no home to use, and execkit never falls back to a
//! shared directory: it uses `$TMPDIR/execkit-state-$UID/execkit`, both
//! levels created 0700 and verified to be this user's (another user who
//! made `execkit-state-$UID` first gets a refusal, not our files).
//! [`private_state_dir`] makes and verifies the state directory; every
//! writer goes through it (the journal at its default path, the spool,
//! session records, the shell history).
//!
//! **Checks.** A directory execkit uses for its own files ([`private_dir`])
//! is created 0700, tightened to 0700 when looser (execkit's own
//! directories only), and refused when it belongs to another user or is
//! reached through another user's symlink. Its parent must not let another
//! user replace it: owned by this user or root, and not world-writable
//! unless sticky (`/tmp` is fine). A directory given for a socket
//! ([`socket_dir`]) is never changed unless execkit created it just now: an
//! existing one that others can write, or that is sticky, is refused.
//! [`verified_dir`] checks without creating or changing anything (what gc
//! reads from).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The base of the state directory: `$XDG_STATE_HOME`, else
/// `$HOME/.local/state`; `None` when neither is set (or both are empty).
fn home_base() -> Option<PathBuf> {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        })
}

/// `$TMPDIR/execkit-state-$UID`: this user's own directory when there is no
/// home, never a name another user shares.
fn fallback_base() -> PathBuf {
    std::env::temp_dir().join(format!("execkit-state-{}", my_uid()))
}

/// `${XDG_STATE_HOME:-~/.local/state}/execkit`, or
/// `$TMPDIR/execkit-state-$UID/execkit` when neither `XDG_STATE_HOME` nor
/// `HOME` is set. Only the path: [`private_state_dir`] makes it.
pub fn state_dir() -> PathBuf {
    home_base().unwrap_or_else(fallback_base).join("execkit")
}

/// Where capped outputs are spooled: `<state>/spool`.
pub fn spool_dir() -> PathBuf {
    state_dir().join("spool")
}

/// Makes the state directory (see [`state_dir`]) this user's private
/// directory and returns it: created 0700 when missing, tightened when
/// looser, refused when it (or, without a home, `$TMPDIR/execkit-state-$UID`)
/// belongs to another user, is another user's symlink, or sits in a
/// directory another user could replace it in. The error names the
/// directory and says why.
pub fn private_state_dir() -> io::Result<PathBuf> {
    let state = state_dir();
    if home_base().is_none() {
        private_dir(&fallback_base()).map_err(|e| no_home(&fallback_base(), e))?;
    }
    private_dir(&state)?;
    Ok(state)
}

/// `<state>/<name>`, made private like [`private_state_dir`] (the state
/// directory first).
pub fn private_state_subdir(name: &str) -> io::Result<PathBuf> {
    let dir = private_state_dir()?.join(name);
    private_dir(&dir)?;
    Ok(dir)
}

fn no_home(base: &Path, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "{e} (neither XDG_STATE_HOME nor HOME is set, so execkit keeps its state in {}; set XDG_STATE_HOME to a directory of yours)",
            base.display()
        ),
    )
}

fn my_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

fn refused(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, msg)
}

/// Opens `dir` as a directory: a symlink is followed only when it belongs
/// to this user (another user's is refused, never followed). `None` when
/// nothing is there.
fn open_dir(dir: &Path) -> io::Result<Option<File>> {
    let link = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let follow = if link.file_type().is_symlink() {
        if link.uid() != my_uid() {
            return Err(refused(format!(
                "{} is a symlink owned by uid {}, not by this user; refusing to use it",
                dir.display(),
                link.uid()
            )));
        }
        0
    } else {
        libc::O_NOFOLLOW
    };
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC | follow)
        .open(dir)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOTDIR) {
                io::Error::new(e.kind(), format!("{} is not a directory", dir.display()))
            } else {
                e
            }
        })?;
    Ok(Some(f))
}

/// Refuses a directory (open as `f`) that is not this user's.
fn check_owner(dir: &Path, f: &File) -> io::Result<std::fs::Metadata> {
    let meta = f.metadata()?;
    if meta.uid() != my_uid() {
        return Err(refused(format!(
            "{} belongs to another user (uid {}); refusing to use it",
            dir.display(),
            meta.uid()
        )));
    }
    Ok(meta)
}

/// Refuses `dir` when its parent would let another user replace it
/// (rename it away and put their own in its place): a parent owned by
/// someone other than this user or root, or one everybody may write that
/// is not sticky.
fn check_parent(dir: &Path) -> io::Result<()> {
    let parent = match dir.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return Ok(()),
    };
    let meta = std::fs::metadata(parent)?;
    let me = my_uid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(refused(format!(
            "{} is in {}, which belongs to another user (uid {}) who could replace it; refusing to use it",
            dir.display(),
            parent.display(),
            meta.uid()
        )));
    }
    let mode = meta.mode();
    if mode & 0o002 != 0 && mode & libc::S_ISVTX == 0 {
        return Err(refused(format!(
            "{} is in {}, which everybody may write and which is not sticky (mode {:o}), so anyone could replace it; refusing to use it",
            dir.display(),
            parent.display(),
            mode & 0o7777
        )));
    }
    Ok(())
}

/// Makes `dir` a private directory of this user, for execkit's own files:
/// created 0700 when missing (missing parents too), an existing one with
/// group or other bits is tightened to 0700. Refused (never followed, never
/// chmod'ed): a symlink owned by another user, a directory (reached
/// directly or through our own symlink) owned by another user, and a
/// directory whose parent another user could replace it in (see the
/// module docs). The mode is fixed on an open descriptor, so a path
/// swapped meanwhile is not what gets changed. Not for a directory the
/// user chose and may share: see [`socket_dir`].
pub fn private_dir(dir: &Path) -> io::Result<()> {
    let f = match open_dir(dir)? {
        Some(f) => f,
        None => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            open_dir(dir)?.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?
        }
    };
    let meta = check_owner(dir, &f)?;
    check_parent(dir)?;
    if meta.mode() & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Whether `dir` is a directory execkit may read its own records from:
/// `Ok(false)` when it does not exist; `Ok(true)` when it is this user's
/// (directly or through this user's symlink), nobody else may write it and
/// its parent is safe (see the module docs); an error saying why not
/// otherwise. Creates and changes nothing.
pub fn verified_dir(dir: &Path) -> io::Result<bool> {
    let Some(f) = open_dir(dir)? else {
        return Ok(false);
    };
    let meta = check_owner(dir, &f)?;
    if meta.mode() & 0o022 != 0 {
        return Err(refused(format!(
            "{} may be written by other users (mode {:o}); refusing to use it",
            dir.display(),
            meta.mode() & 0o7777
        )));
    }
    check_parent(dir)?;
    Ok(true)
}

/// Prepares `dir` to hold a socket that only this user can replace:
/// a missing directory is created 0700 (missing parents too) and is the
/// only thing tightened; an existing directory is used as it is when it is
/// this user's and nobody else may write it, and refused otherwise — a
/// shared or sticky directory such as `/tmp` included. A directory
/// execkit did not create is never changed. The parent must be safe too
/// (see the module docs).
pub fn socket_dir(dir: &Path) -> io::Result<()> {
    let mut created = false;
    let f = match open_dir(dir)? {
        Some(f) => f,
        None => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => created = true,
                // Made by someone else meanwhile: checked as an existing one.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            open_dir(dir)?.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?
        }
    };
    let meta = check_owner(dir, &f)?;
    check_parent(dir)?;
    let mode = meta.mode() & 0o7777;
    if created {
        if mode != 0o700 {
            f.set_permissions(std::fs::Permissions::from_mode(0o700))?;
        }
        return Ok(());
    }
    let why = if mode & 0o022 != 0 {
        "other users may write it"
    } else if mode & libc::S_ISVTX != 0 {
        "it is sticky, the mark of a directory shared with other users"
    } else {
        return Ok(());
    };
    Err(refused(format!(
        "{} is shared (mode {mode:o}: {why}), so another user could replace a socket there, and execkit does not change a directory it did not create; use a directory only you can write, e.g. {} (execkit creates it 0700)",
        dir.display(),
        dir.join(format!("execkit-{}", my_uid())).join("execkit.sock").display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    fn chmod(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    fn scratch(name: &str) -> PathBuf {
        let base =
            std::env::temp_dir().join(format!("execkit-paths-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        chmod(&base, 0o755);
        base
    }

    /// As root: gives `p` (not following a symlink) to `nobody`.
    fn give_to_nobody(p: &Path) {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::lchown(c.as_ptr(), 65534, 65534) }, 0);
    }

    #[test]
    fn private_dirs_are_made_and_tightened() {
        let base = scratch("made");
        let deep = base.join("a/b");
        private_dir(&deep).unwrap();
        assert_eq!((mode(&base.join("a")), mode(&deep)), (0o700, 0o700));
        chmod(&deep, 0o755);
        private_dir(&deep).unwrap();
        assert_eq!(mode(&deep), 0o700);
        // Our own symlink to our own directory is followed.
        let own = base.join("own-link");
        std::os::unix::fs::symlink(&deep, &own).unwrap();
        chmod(&deep, 0o777);
        private_dir(&own).unwrap();
        assert_eq!(mode(&deep), 0o700);
        assert!(verified_dir(&own).unwrap());
        let _ = std::fs::remove_dir_all(&base);
    }

    /// A symlink someone else planted, or a directory that is not ours, is
    /// refused and left as it is.
    #[test]
    fn foreign_dirs_and_links_are_refused() {
        let base = scratch("foreign");
        let target = base.join("target");
        std::fs::create_dir(&target).unwrap();
        chmod(&target, 0o755);
        let link = base.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        if my_uid() == 0 {
            give_to_nobody(&link);
            give_to_nobody(&target);
            for check in [private_dir, socket_dir] {
                let e = check(&link).unwrap_err();
                assert!(e.to_string().contains("symlink owned by uid 65534"), "{e}");
                let e = check(&target).unwrap_err();
                assert!(e.to_string().contains("another user"), "{e}");
            }
            let e = verified_dir(&target).unwrap_err();
            assert!(e.to_string().contains("another user"), "{e}");
            assert_eq!(mode(&target), 0o755);
        } else {
            // Not root: our own link to a directory root owns.
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink("/", &link).unwrap();
            let e = private_dir(&link).unwrap_err();
            assert!(e.to_string().contains("another user"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&base);
    }

    /// Issue 14 item 3: a directory of ours in a parent where another user
    /// could swap it (world-writable and not sticky, or owned by someone
    /// else) is refused; a sticky parent like `/tmp` is fine.
    #[test]
    fn a_replaceable_parent_is_refused() {
        let base = scratch("parent");
        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        let e = private_dir(&open.join("state")).unwrap_err();
        assert!(e.to_string().contains("not sticky"), "{e}");
        assert!(verified_dir(&open.join("state")).is_err());
        chmod(&open, 0o1777);
        private_dir(&open.join("state")).unwrap();
        assert_eq!(mode(&open.join("state")), 0o700);
        assert!(verified_dir(&open.join("state")).unwrap());
        if my_uid() == 0 {
            let theirs = base.join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            chmod(&theirs, 0o755);
            give_to_nobody(&theirs);
            let e = private_dir(&theirs.join("state")).unwrap_err();
            assert!(e.to_string().contains("uid 65534"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&base);
    }

    /// Issue 14 item 4: a socket directory execkit did not create is never
    /// changed; a shared or sticky one is refused; a missing one is made
    /// 0700.
    #[test]
    fn socket_dirs_are_never_changed_and_shared_ones_refused() {
        let base = scratch("socket");
        for (name, m) in [
            ("sticky", 0o1777),
            ("open", 0o777),
            ("group", 0o770),
            ("t", 0o1700),
        ] {
            let d = base.join(name);
            std::fs::create_dir(&d).unwrap();
            chmod(&d, m);
            let e = socket_dir(&d).unwrap_err();
            assert!(e.to_string().contains("is shared"), "{name}: {e}");
            assert_eq!(mode(&d), m, "{name}");
        }
        // Ours and nobody else may write it: used as it is.
        let mine = base.join("mine");
        std::fs::create_dir(&mine).unwrap();
        chmod(&mine, 0o755);
        socket_dir(&mine).unwrap();
        assert_eq!(mode(&mine), 0o755);
        // Missing (parents too): created 0700; in a sticky parent that is fine.
        let fresh = base.join("sticky/execkit-x/run");
        socket_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&base.join("sticky/execkit-x")), 0o700);
        assert_eq!(mode(&base.join("sticky")), 0o1777);
        let _ = std::fs::remove_dir_all(&base);
    }

    /// Checking creates and changes nothing.
    #[test]
    fn verifying_changes_nothing() {
        let base = scratch("verify");
        assert!(!verified_dir(&base.join("missing")).unwrap());
        assert!(!base.join("missing").exists());
        let loose = base.join("loose");
        std::fs::create_dir(&loose).unwrap();
        chmod(&loose, 0o777);
        let e = verified_dir(&loose).unwrap_err();
        assert!(e.to_string().contains("other users"), "{e}");
        assert_eq!(mode(&loose), 0o777);
        chmod(&loose, 0o755);
        assert!(verified_dir(&loose).unwrap());
        let _ = std::fs::remove_dir_all(&base);
    }
}
