//! Native file transfer on this host: the filesystem itself, on a
//! blocking thread, one [`FILE_CHUNK`] at a time (the bounded channel
//! holds the rest back), as this process's user — the user the local
//! shells run as.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use execkit_core::raw::{Chunks, FileTransfer, FILE_CHUNK};
use tokio::sync::mpsc;

/// [`FileTransfer`] for `local` targets.
#[derive(Debug)]
pub(crate) struct LocalFiles;

fn absolute(path: &str) -> io::Result<PathBuf> {
    if !path.starts_with('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not an absolute path: {path:?}"),
        ));
    }
    Ok(PathBuf::from(path))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

/// Fills `buf` unless the file ends first; the bytes read.
fn fill(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn read(path: &Path, to: &mpsc::Sender<Vec<u8>>) -> io::Result<u64> {
    let mut f = File::open(path)?;
    if f.metadata()?.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
    }
    let mut total = 0u64;
    loop {
        let mut buf = vec![0; FILE_CHUNK];
        let n = fill(&mut f, &mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        buf.truncate(n);
        total += n as u64;
        to.blocking_send(buf)
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
    }
}

fn write(path: &Path, len: Option<u64>, mut from: Chunks) -> io::Result<u64> {
    if let Some(parent) = path.parent() {
        match DirBuilder::new().recursive(true).mode(0o755).create(parent) {
            // A regular file in the way: opening below says ENOTDIR.
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)?;
    let mut total = 0u64;
    while let Some(chunk) = from.blocking_recv() {
        let chunk = chunk?;
        f.write_all(&chunk)?;
        total += chunk.len() as u64;
    }
    match len {
        Some(len) if len != total => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{total} bytes arrived of the {len} announced"),
        )),
        _ => Ok(total),
    }
}

#[async_trait]
impl FileTransfer for LocalFiles {
    async fn read(&self, path: &str, to: mpsc::Sender<Vec<u8>>) -> io::Result<u64> {
        let path = absolute(path)?;
        blocking(move || read(&path, &to)).await
    }

    async fn write(&self, path: &str, len: Option<u64>, from: Chunks) -> io::Result<u64> {
        let path = absolute(path)?;
        blocking(move || write(&path, len, from)).await
    }
}
