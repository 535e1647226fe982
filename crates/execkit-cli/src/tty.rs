//! The person's terminal under `execkit shell`: raw mode while a command
//! runs (restored on drop), its size, and a reader of what is typed that
//! runs only while a command does (the line editor reads the rest of the
//! time).

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use execkit_core::Size;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, SetArg, Termios};
use tokio::sync::{mpsc, Notify};

/// The terminal's modes as found: what every exit puts back.
#[derive(Clone)]
pub struct Saved(Termios);

impl Saved {
    /// The modes of stdin, if it is a terminal.
    pub fn take() -> Option<Saved> {
        termios::tcgetattr(std::io::stdin().as_fd()).ok().map(Saved)
    }

    /// Puts the modes back.
    pub fn restore(&self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.0);
    }
}

/// Raw mode for the duration of a command: every key is a byte for the
/// session, nothing is echoed or translated here. Dropped, the saved modes
/// are back.
pub struct RawMode(Saved);

impl RawMode {
    pub fn enter(saved: &Saved) -> nix::Result<RawMode> {
        let mut raw = saved.0.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(RawMode(saved.clone()))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        self.0.restore();
    }
}

/// The person's window size (stdout's terminal), if it has one.
pub fn window_size() -> Option<Size> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills the winsize it is given; the pointer is valid.
    let r = unsafe { libc::ioctl(std::io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some(Size {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// Reads what the person types while a command runs and hands it to the
/// session's loop (`keys`, then `wake`). Stopped (and joined) on drop, so
/// the line editor alone reads between commands.
pub struct KeyReader {
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl KeyReader {
    pub fn start(keys: mpsc::UnboundedSender<Vec<u8>>, wake: Arc<Notify>) -> std::io::Result<Self> {
        let (stop_rx, stop_tx) = nix::unistd::pipe()?;
        let thread = std::thread::spawn(move || {
            let stdin = std::io::stdin();
            let mut buf = [0u8; 4096];
            loop {
                let mut fds = [
                    PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
                    PollFd::new(stop_rx.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => return,
                }
                if fds[1].any().unwrap_or(true) {
                    return;
                }
                let ready = fds[0].revents().unwrap_or(PollFlags::empty());
                if ready.is_empty() {
                    continue;
                }
                // The fd itself, not `Stdin`'s buffer: what is not taken
                // here stays for the line editor.
                match nix::unistd::read(stdin.as_fd(), &mut buf) {
                    Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if keys.send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                        wake.notify_one();
                    }
                }
            }
        });
        Ok(KeyReader {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for KeyReader {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = nix::unistd::write(&stop, b"x");
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes a command's raw output to stdout as it comes; ends when the
/// session drops its end (the command ended). `join` says whether the
/// last byte written ended a line.
pub struct RawWriter(JoinHandle<bool>);

impl RawWriter {
    pub fn start(mut rx: mpsc::UnboundedReceiver<Vec<u8>>) -> RawWriter {
        RawWriter(std::thread::spawn(move || {
            let mut out = std::io::stdout();
            let mut at_line_start = true;
            while let Some(b) = rx.blocking_recv() {
                if let Some(&last) = b.last() {
                    at_line_start = last == b'\n';
                }
                let _ = out.write_all(&b);
                let _ = out.flush();
            }
            at_line_start
        }))
    }

    pub fn join(self) -> bool {
        self.0.join().unwrap_or(true)
    }
}
