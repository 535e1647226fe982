//! `raw-pty-floor`: a bare persistent bash on a PTY with a fixed marker and
//! no parsing at all — the physical floor any PTY-based tool pays.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::pty::{forkpty, ForkptyResult};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

const MARK: &[u8] = b"__RAW_MARK__\n";

/// A bash on a PTY, echo off.
pub struct RawPty {
    master: File,
    pid: Pid,
    buf: Vec<u8>,
}

impl RawPty {
    pub fn start() -> Result<RawPty> {
        let argv = [
            c"/bin/bash",
            c"--norc",
            c"--noprofile",
            c"--noediting",
            c"-i",
        ];
        // SAFETY: the child only execs (or exits).
        let forked = unsafe { forkpty(None, None) }.context("forkpty")?;
        let (pid, master): (Pid, OwnedFd) = match forked {
            ForkptyResult::Child => {
                // Rust ignores SIGPIPE; a shell must not inherit that.
                // SAFETY: async-signal-safe call in the child.
                unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
                let _ = nix::unistd::execv(argv[0], &argv);
                // SAFETY: leave the child at once if exec failed.
                unsafe { libc::_exit(127) }
            }
            ForkptyResult::Parent { child, master } => (child, master),
        };
        let mut p = RawPty {
            master: File::from(master),
            pid,
            buf: Vec::with_capacity(1 << 16),
        };
        p.master.write_all(
            b"stty -echo -onlcr; PS1=''; PS2=''; set +m; set +o history; echo __RAW_''MARK__\n",
        )?;
        p.until_mark(&mut |_| {})?;
        Ok(p)
    }

    /// Reads until the marker; `sink` sees every byte before it.
    fn until_mark(&mut self, sink: &mut dyn FnMut(&[u8])) -> Result<()> {
        self.buf.clear();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let n = self.master.read(&mut chunk)?;
            if n == 0 {
                bail!("the raw shell closed");
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if self.buf.ends_with(MARK) {
                sink(&self.buf[..self.buf.len() - MARK.len()]);
                return Ok(());
            }
            // Keep only a marker-length tail; hand the rest over.
            if self.buf.len() > MARK.len() {
                let cut = self.buf.len() - MARK.len();
                sink(&self.buf[..cut]);
                self.buf.drain(..cut);
            }
        }
    }

    /// Runs `cmd` and waits for the marker; returns the bytes it printed.
    pub fn round_trip(&mut self, cmd: &str) -> Result<(Duration, u64)> {
        let t = Instant::now();
        self.master
            .write_all(format!("{cmd}; echo __RAW_''MARK__\n").as_bytes())?;
        let mut bytes = 0u64;
        self.until_mark(&mut |b| bytes += b.len() as u64)?;
        Ok((t.elapsed(), bytes))
    }
}

impl Drop for RawPty {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}
