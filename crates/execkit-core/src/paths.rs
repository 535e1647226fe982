//! Where execkit keeps its files on this host, and how its private
//! directories are made.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `${XDG_STATE_HOME:-~/.local/state}/execkit`.
pub fn state_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        })
        .unwrap_or_else(|| std::env::temp_dir().join("execkit-state"));
    base.join("execkit")
}

/// Where capped outputs are spooled: `<state>/spool`.
pub fn spool_dir() -> PathBuf {
    state_dir().join("spool")
}

fn my_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Makes `dir` a private directory of this user: created 0700 when
/// missing (missing parents too), an existing one with group or other
/// bits is tightened to 0700. Refused (never followed, never chmod'ed):
/// a symlink owned by another user, or a directory (reached directly or
/// through our own symlink) owned by another user. The mode is fixed on an
/// open descriptor, so a path swapped meanwhile is not what gets changed.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    let me = my_uid();
    let link = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            std::fs::symlink_metadata(dir)?
        }
        Err(e) => return Err(e),
    };
    let follow = if link.file_type().is_symlink() {
        if link.uid() != me {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is a symlink owned by uid {}, not by this user; refusing to use it",
                    dir.display(),
                    link.uid()
                ),
            ));
        }
        0
    } else {
        libc::O_NOFOLLOW
    };
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC | follow)
        .open(dir)?;
    let meta = f.metadata()?;
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to another user (uid {}); refusing to use it",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn private_dirs_are_made_and_tightened() {
        let base = std::env::temp_dir().join(format!("execkit-paths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let deep = base.join("a/b");
        private_dir(&deep).unwrap();
        assert_eq!((mode(&base.join("a")), mode(&deep)), (0o700, 0o700));
        std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&deep).unwrap();
        assert_eq!(mode(&deep), 0o700);
        // Our own symlink to our own directory is followed.
        let own = base.join("own-link");
        std::os::unix::fs::symlink(&deep, &own).unwrap();
        std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o777)).unwrap();
        private_dir(&own).unwrap();
        assert_eq!(mode(&deep), 0o700);
        let _ = std::fs::remove_dir_all(&base);
    }

    /// A symlink someone else planted, or a directory that is not ours, is
    /// refused and left as it is.
    #[test]
    fn foreign_dirs_and_links_are_refused() {
        let base = std::env::temp_dir().join(format!("execkit-paths-f-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let target = base.join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = base.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        if my_uid() == 0 {
            // As root: the link and its target belong to `nobody`.
            let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: valid C strings.
            unsafe {
                assert_eq!(libc::lchown(c(&link).as_ptr(), 65534, 65534), 0);
                assert_eq!(libc::chown(c(&target).as_ptr(), 65534, 65534), 0);
            }
            let e = private_dir(&link).unwrap_err();
            assert!(e.to_string().contains("symlink owned by uid 65534"), "{e}");
            let e = private_dir(&target).unwrap_err();
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
}
