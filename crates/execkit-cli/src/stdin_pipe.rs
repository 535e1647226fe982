//! `execkit exec --stdin`: a command's stdin fed through a FIFO while its
//! output still comes through the terminal (local targets; remote ones use
//! `Session::run_with_stdin`).

use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The bytes to feed, loaded once and replayed to every command.
#[derive(Debug)]
pub struct StdinSource {
    data: Arc<Vec<u8>>,
}

impl StdinSource {
    /// Reads `src` (a file, or `-` for our own stdin).
    pub fn load(src: &str) -> io::Result<Self> {
        let mut data = Vec::new();
        if src == "-" {
            io::stdin().lock().read_to_end(&mut data)?;
        } else {
            data = std::fs::read(src)?;
        }
        Ok(StdinSource {
            data: Arc::new(data),
        })
    }

    /// The bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// A fresh FIFO with a writer thread feeding it.
    pub fn pipe(&self) -> io::Result<StdinPipe> {
        let dir = std::env::temp_dir().join(format!(
            "execkit-stdin-{}-{}",
            std::process::id(),
            execkit_core::raw::nonce()?
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("stdin");
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: mkfifo on a NUL-terminated path we own.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            let e = io::Error::last_os_error();
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (data, p, s) = (self.data.clone(), path.clone(), stop.clone());
        std::thread::spawn(move || feed(&p, &data, &s));
        Ok(StdinPipe { dir, path, stop })
    }
}

/// Waits for the command to open the FIFO, writes everything, closes it.
fn feed(path: &std::path::Path, data: &[u8], stop: &AtomicBool) {
    let file = loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        // Non-blocking open fails with ENXIO until a reader is there.
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => break f,
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    // Back to blocking writes; a reader that quits early gives EPIPE.
    // SAFETY: fcntl on an fd we own.
    unsafe {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    let mut file = file;
    let _ = file.write_all(data);
}

/// One command's FIFO; removed (and its writer told to stop) on drop.
#[derive(Debug)]
pub struct StdinPipe {
    dir: PathBuf,
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl StdinPipe {
    /// The command with its stdin redirected from the FIFO.
    pub fn wrap(&self, command: &str) -> String {
        let p = execkit_core::raw::shell_quote(&self.path.to_string_lossy());
        format!("{{ {command}\n}} < {p}")
    }
}

impl Drop for StdinPipe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}
