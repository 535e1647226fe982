//! The raw layer under the connection thread: libssh2's error codes by
//! name, the eventfd that wakes the thread, and socket syscalls (peek for a
//! dead peer, bytes received for stall detection, poll).

use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ssh2::ErrorCode;

/// libssh2 error codes (`LIBSSH2_ERROR_*` in libssh2.h) execkit tells apart.
pub(super) const BANNER_RECV: i32 = -2;
pub(super) const BANNER_SEND: i32 = -3;
pub(super) const INVALID_MAC: i32 = -4;
pub(super) const KEX_FAILURE: i32 = -5;
pub(super) const ALLOC: i32 = -6;
pub(super) const SOCKET_SEND: i32 = -7;
pub(super) const KEY_EXCHANGE_FAILURE: i32 = -8;
pub(super) const DECRYPT: i32 = -12;
pub(super) const SOCKET_DISCONNECT: i32 = -13;
pub(super) const PROTO: i32 = -14;
pub(super) const CHANNEL_FAILURE: i32 = -21;
pub(super) const EAGAIN: i32 = -37;
pub(super) const OUT_OF_BOUNDARY: i32 = -41;
pub(super) const SOCKET_RECV: i32 = -43;
pub(super) const ENCRYPT: i32 = -44;
pub(super) const BAD_SOCKET: i32 = -45;
pub(super) const MAC_FAILURE: i32 = -52;

/// The byte stream a connection runs over: a TCP socket, or one end of a
/// socket pair relayed through a jump host's forwarded channel.
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(TcpStream),
    Relay {
        end: UnixStream,
        /// Bytes the relay has delivered into `end` (the kernel keeps no
        /// such count for a Unix socket).
        received: Arc<AtomicU64>,
    },
}

impl Socket {
    pub(crate) fn fd(&self) -> RawFd {
        match self {
            Socket::Tcp(s) => s.as_raw_fd(),
            Socket::Relay { end, .. } => end.as_raw_fd(),
        }
    }

    /// Bytes received so far, for the stall check (`None`: unknown).
    pub(super) fn received(&self) -> Option<u64> {
        match self {
            Socket::Tcp(s) => bytes_received(s.as_raw_fd()),
            Socket::Relay { received, .. } => Some(received.load(Ordering::Relaxed)),
        }
    }

    pub(super) fn shutdown(&self) {
        let _ = match self {
            Socket::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Socket::Relay { end, .. } => end.shutdown(std::net::Shutdown::Both),
        };
    }
}

/// A failure of the whole connection.
pub(super) struct Lost(pub(super) String);

pub(super) fn code(e: &ssh2::Error) -> i32 {
    match e.code() {
        ErrorCode::Session(c) => c,
        ErrorCode::SFTP(c) => c,
    }
}

/// An eventfd the thread polls so requests wake it at once.
#[derive(Debug)]
pub(crate) struct Wake(pub(super) RawFd);

impl Wake {
    pub(super) fn new() -> std::io::Result<Wake> {
        // SAFETY: plain syscall; the fd is owned by the returned value.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Wake(fd))
    }

    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
        unsafe {
            libc::write(self.0, (&one as *const u64).cast(), 8);
        }
    }

    pub(super) fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a valid u64 from our non-blocking eventfd.
        unsafe {
            libc::read(self.0, (&mut v as *mut u64).cast(), 8);
        }
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe {
            libc::close(self.0);
        }
    }
}

/// libssh2 errors after which the session is unusable: socket failures,
/// a peer that went away, a broken or undecryptable stream.
pub(super) fn fatal(code: i32) -> bool {
    matches!(
        code,
        BANNER_RECV
            | BANNER_SEND
            | INVALID_MAC
            | KEX_FAILURE
            | ALLOC
            | SOCKET_SEND
            | KEY_EXCHANGE_FAILURE
            | DECRYPT
            | SOCKET_DISCONNECT
            | PROTO
            | OUT_OF_BOUNDARY
            | SOCKET_RECV
            | ENCRYPT
            | BAD_SOCKET
            | MAC_FAILURE
    )
}

/// After a failed channel step: the connection is lost when the error is
/// fatal or the socket is dead; otherwise only this channel failed.
pub(super) fn give_up_if_lost(
    e: &ssh2::Error,
    fd: RawFd,
    label: &str,
    what: &str,
) -> Result<(), Lost> {
    if fatal(code(e)) || dead(fd) {
        return Err(lost(label, fd, what, e.message()));
    }
    Ok(())
}

/// The message for a connection that failed: plain when the peer closed
/// the socket, with libssh2's reason when the stream itself broke.
pub(super) fn lost(label: &str, fd: RawFd, what: &str, detail: &str) -> Lost {
    tracing::debug!("ssh connection {label} lost while {what}: {detail}");
    if dead(fd) {
        Lost(format!("connection to {label} closed"))
    } else {
        Lost(format!(
            "connection to {label} failed while {what}: {detail}"
        ))
    }
}

/// After an error that is not EAGAIN: is the whole connection gone?
pub(super) fn dead(fd: RawFd) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: non-blocking peek of one byte into a valid buffer.
    let n = unsafe {
        libc::recv(
            fd,
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n == 0 {
        return true;
    }
    if n < 0 {
        let e = std::io::Error::last_os_error();
        trace!("peek on fd {fd}: {e}");
        return e.kind() != std::io::ErrorKind::WouldBlock
            && e.kind() != std::io::ErrorKind::Interrupted;
    }
    false
}

/// Bytes the kernel has received on the socket so far (`TCP_INFO`), whether
/// or not libssh2 has read them; `None` where that cannot be known (then no
/// stall is ever declared).
#[cfg(target_os = "linux")]
fn bytes_received(fd: RawFd) -> Option<u64> {
    // SAFETY: tcp_info is plain old data; getsockopt writes at most `len`
    // bytes into it and reports how many.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: as above; `info` and `len` outlive the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // Kernels before 4.1 do not fill in the counter.
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_received) + 8;
    (rc == 0 && len as usize >= needed).then_some(info.tcpi_bytes_received)
}

#[cfg(not(target_os = "linux"))]
pub(super) fn bytes_received(_fd: RawFd) -> Option<u64> {
    None
}

pub(super) fn poll_fd(fd: RawFd, events: libc::c_short, timeout_ms: libc::c_int) -> bool {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: polling one valid fd.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    n > 0 && (p.revents & events) != 0
}
