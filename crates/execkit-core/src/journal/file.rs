//! Opening the journal file: only a regular file of the user's, private,
//! without blocking and without following another user's link.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The file a writer holds open.
#[derive(Debug)]
pub(super) struct Open {
    pub(super) file: File,
    /// (device, inode): whether the path still names this file.
    pub(super) id: (u64, u64),
    /// The file did not end in `\n` when opened: start with one.
    pub(super) needs_newline: bool,
}

/// What kind of file a non-regular file is, for messages.
pub fn kind_of(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

fn not_regular(ft: std::fs::FileType) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("not a regular file ({})", kind_of(ft)),
    )
}

/// The path to open: `path` itself, or where the user's own symbolic link
/// points. Another user's link is not followed; an existing path that is
/// not a regular file is refused.
pub(super) fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(path.to_path_buf()),
        Err(e) => return Err(e),
    };
    let ft = meta.file_type();
    if ft.is_file() {
        return Ok(path.to_path_buf());
    }
    if !ft.is_symlink() {
        return Err(not_regular(ft));
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("a symbolic link owned by uid {}, not followed", meta.uid()),
        ));
    }
    match std::fs::canonicalize(path) {
        Ok(real) => match std::fs::symlink_metadata(&real) {
            Ok(m) if !m.is_file() => Err(not_regular(m.file_type())),
            _ => Ok(real),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A dangling link of ours: create what it points to.
            let target = std::fs::read_link(path)?;
            Ok(match path.parent() {
                Some(dir) if target.is_relative() => dir.join(target),
                _ => target,
            })
        }
        Err(e) => Err(e),
    }
}

/// Opens (creating 0600) `path` for appending, without blocking and
/// without following a link; refuses what is not a regular file.
pub(super) fn open_file(path: &Path) -> std::io::Result<Open> {
    use std::os::fd::AsRawFd;
    let mut opts = OpenOptions::new();
    opts.read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC);
    let file = match opts.open(path) {
        Ok(f) => f,
        // A FIFO nobody reads (O_NONBLOCK turns the hang into ENXIO), or a
        // link swapped in since `resolve`.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENXIO) | Some(libc::ELOOP)) => {
            return Err(match std::fs::symlink_metadata(path) {
                Ok(m) => not_regular(m.file_type()),
                Err(_) => e,
            })
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "the file belongs to another user (uid {}); the journal is only written into a file of this user",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        // On the descriptor: what is tightened is what was checked.
        file.set_permissions(
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
        )?;
    }
    // SAFETY: fcntl on an fd we own; clears O_NONBLOCK (meaningless on a
    // regular file, but nothing should inherit it).
    unsafe {
        let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
    let mut needs_newline = false;
    if meta.len() > 0 {
        let mut last = [0u8];
        file.read_exact_at(&mut last, meta.len() - 1)?;
        needs_newline = last[0] != b'\n';
    }
    Ok(Open {
        file,
        id: (meta.dev(), meta.ino()),
        needs_newline,
    })
}

/// Whether `path` still names the file `id` (not rotated away, not removed).
pub(super) fn names(path: &Path, id: (u64, u64)) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == id)
}

/// Reserves `len` bytes past `end` of `file` without changing its size,
/// so a full disk fails the line before any of it is written. Filesystems
/// without `fallocate` just go on to the write.
pub(super) fn reserve(file: &File, end: u64, len: usize) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(end), Ok(len)) = (libc::off_t::try_from(end), libc::off_t::try_from(len)) else {
            return Ok(());
        };
        // SAFETY: fallocate on an open fd we own; KEEP_SIZE leaves the
        // file's length (and so O_APPEND's offset) as it is.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, end, len) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
                return Err(e);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, end, len);
    Ok(())
}
