//! Helpers on *this* machine for any test: marked processes, a tmpfs,
//! loopback ports and a tripwire.

use std::path::PathBuf;
use std::sync::Arc;

/// Pids on *this* machine whose environment holds `EXECKIT_SID=<marker>`
/// (local shells, and remote ones when the test sshd runs here).
pub fn marked_here(marker: &str) -> Vec<u32> {
    let entry = format!("{}={marker}", crate::shell::MARKER_VAR);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|d| {
            let pid: u32 = d.file_name().to_str()?.parse().ok()?;
            let env = std::fs::read(d.path().join("environ")).ok()?;
            env.split(|&b| b == 0)
                .any(|e| e == entry.as_bytes())
                .then_some(pid)
        })
        .collect()
}

/// A tmpfs mounted on a directory (created if missing), unmounted on drop —
/// also when the test fails. Needs root.
#[derive(Debug)]
pub struct Tmpfs {
    /// Where it is mounted.
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs with `options` (e.g. `size=1m,mode=0700`) on `dir`, or
    /// says why it cannot be done here (not root, mount refused).
    pub fn mount(dir: &std::path::Path, options: &str) -> Result<Tmpfs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(dir);
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it: detach now, freed when released.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .status();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A loopback port reserved for a test's whole life: a TCP socket bound to
/// it that never listens. A connect to it is refused (RST), and no other
/// socket can bind it meanwhile — not even one with `SO_REUSEADDR`, which
/// shares a port only when both sockets set it. (A port bound and dropped
/// is free for the next comer, e.g. an `sshd` another test starts.)
#[derive(Debug)]
pub struct ReservedPort {
    _fd: std::os::fd::OwnedFd,
    /// The reserved port.
    pub port: u16,
}

impl ReservedPort {
    /// Binds a fresh loopback port and keeps it.
    #[allow(clippy::new_without_default)]
    pub fn new() -> ReservedPort {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: plain socket calls on a descriptor this function owns;
        // the address structs are fully initialised and sized correctly.
        unsafe {
            let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(raw);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
                len,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let mut got = len;
            let rc = libc::getsockname(
                fd.as_raw_fd(),
                std::ptr::addr_of_mut!(addr).cast::<libc::sockaddr>(),
                &mut got,
            );
            assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
            ReservedPort {
                _fd: fd,
                port: u16::from_be(addr.sin_port),
            }
        }
    }
}

/// A loopback listener that counts the connections it gets, for tests that
/// must prove nothing connected (a refused target never reached its host).
/// Each connection is accepted and closed at once, so a client that does
/// connect fails fast instead of waiting for a banner or a reply; the count
/// is raised before the close, so it is up to date by the time that client
/// has seen the close. Dropping it stops its thread.
#[derive(Debug)]
pub struct Tripwire {
    /// The loopback port it listens on.
    pub port: u16,
    count: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tripwire {
    /// Listens on a fresh loopback port.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Tripwire {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind a tripwire");
        let port = listener.local_addr().expect("tripwire address").port();
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                if conn.is_ok() {
                    c.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Tripwire {
            port,
            count,
            stop,
            thread: Some(thread),
        }
    }

    /// Connections seen so far.
    pub fn connections(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Tripwire {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept; the thread sees `stop` and ends.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A free loopback port for a daemon a test starts (an `sshd`), below the
/// ports [`ReservedPort`]s and client sockets get (see `execkit_ports`).
pub fn daemon_port() -> u16 {
    execkit_ports::daemon_port().unwrap_or_else(|| {
        panic!(
            "no free loopback port below {}",
            execkit_ports::ephemeral_low()
        )
    })
}
