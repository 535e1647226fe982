//! Size rotation under `flock`, and finding the rotated files again.

use std::path::{Path, PathBuf};

use super::file::{names, open_file};
use super::sink::{Sink, State};

impl Sink {
    /// Rotates the file this writer holds, unless another writer is doing
    /// it right now or already did.
    pub(super) fn rotate(&self, st: &mut State, len: u64) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let o = st.file.as_ref().expect("open");
        // SAFETY: flock on an fd we own. The lock goes with the open file
        // description, so it is released when the old file is closed. A
        // writer rotating it holds it for a few renames only.
        if unsafe { libc::flock(o.file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if !names(&self.path, o.id) {
            // Another writer rotated it between our check and the lock.
            st.file = Some(open_file(&self.path)?);
            return Ok(());
        }
        if o.file.metadata()?.len() + len < self.opts.max_bytes {
            // SAFETY: as above.
            unsafe { libc::flock(o.file.as_raw_fd(), libc::LOCK_UN) };
            return Ok(());
        }
        // Shift .1, .2, … up to the first free slot (a crash may have left
        // a gap) or onto the oldest kept one, which is dropped.
        let oldest = self.opts.files - 1;
        let free = (1..oldest)
            .find(|k| std::fs::symlink_metadata(rotated(&self.path, *k)).is_err())
            .unwrap_or(oldest);
        for k in (1..free).rev() {
            match std::fs::rename(rotated(&self.path, k), rotated(&self.path, k + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))?;
        // Dropping the old file releases the lock, after the new one exists.
        st.file = Some(open_file(&self.path)?);
        Ok(())
    }
}

/// `journal.jsonl.K`.
pub fn rotated(path: &Path, k: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{k}"));
    PathBuf::from(s)
}

/// The journal files at `path`, oldest first: the rotated ones
/// (`path.N`, highest N first, regular files only) then `path` itself if it
/// exists. A symbolic link at `path` is followed to find the siblings.
pub fn files_oldest_first(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let path = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(vec![path]);
    };
    let mut numbered: Vec<(u32, PathBuf)> = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for e in entries.flatten() {
                let file = e.file_name();
                let file = file.to_string_lossy();
                let Some(k) = file
                    .strip_prefix(name.as_str())
                    .and_then(|r| r.strip_prefix('.'))
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    numbered.push((k, e.path()));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    numbered.sort_by_key(|n| std::cmp::Reverse(n.0));
    let mut out: Vec<PathBuf> = numbered.into_iter().map(|(_, p)| p).collect();
    if std::fs::symlink_metadata(&path).is_ok() {
        out.push(path);
    }
    Ok(out)
}
