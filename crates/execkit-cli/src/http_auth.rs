//! Who may talk to `execkit mcp --http`: a request must carry the server's
//! bearer token, and (Linux) its connection must come from a socket of the
//! server's own user. Loopback is not a boundary on a machine that other
//! users share: without these, any local user reaching the port runs
//! commands as the server's user.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// The environment variable that gives the token instead of a file.
pub const TOKEN_VAR: &str = "EXECKIT_MCP_TOKEN";

/// The server's bearer token and, when execkit wrote it, the file to
/// remove at shutdown.
#[derive(Debug)]
pub struct Token {
    value: String,
    /// Where it is (for the start-up line), if in a file.
    pub path: Option<PathBuf>,
    remove: bool,
}

impl Token {
    /// The token: from `EXECKIT_MCP_TOKEN`; else read from `file` when it
    /// exists (a private regular file of this user), or generated into it;
    /// else generated into `default_file` (replacing a stale one of ours)
    /// and removed at shutdown.
    pub fn load(file: Option<&Path>, default_file: &Path) -> Result<Token, String> {
        if let Some(v) = std::env::var(TOKEN_VAR).ok().filter(|v| !v.is_empty()) {
            check_value(&v).map_err(|e| format!("{TOKEN_VAR}: {e}"))?;
            return Ok(Token {
                value: v,
                path: None,
                remove: false,
            });
        }
        if let Some(path) = file {
            match read_private(path) {
                Ok(Some(v)) => {
                    return Ok(Token {
                        value: v,
                        path: Some(path.to_path_buf()),
                        remove: false,
                    })
                }
                Ok(None) => {
                    let value = generate()?;
                    write_new(path, &value)?;
                    return Ok(Token {
                        value,
                        path: Some(path.to_path_buf()),
                        remove: false,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(dir) = default_file.parent() {
            execkit_core::state::private_dir(dir)
                .map_err(|e| format!("the token's directory {}: {e}", dir.display()))?;
        }
        // A stale token of an earlier run on this port: ours to replace.
        if let Ok(m) = std::fs::symlink_metadata(default_file) {
            if m.uid() == crate::proto::nix_uid() || m.file_type().is_symlink() {
                let _ = std::fs::remove_file(default_file);
            }
        }
        let value = generate()?;
        write_new(default_file, &value)?;
        Ok(Token {
            value,
            path: Some(default_file.to_path_buf()),
            remove: true,
        })
    }

    /// Whether an `Authorization` header value carries this token
    /// (compared in constant time).
    pub fn admits(&self, header: Option<&[u8]>) -> bool {
        let Some(h) = header else { return false };
        let Some(given) = h.strip_prefix(b"Bearer ") else {
            return false;
        };
        let want = self.value.as_bytes();
        let mut diff = given.len() ^ want.len();
        for (i, w) in want.iter().enumerate() {
            diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ w);
        }
        diff == 0
    }

    /// Removes the file execkit generated (at shutdown).
    pub fn remove_file(&self) {
        if let (true, Some(p)) = (self.remove, &self.path) {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn check_value(v: &str) -> Result<(), String> {
    if v.len() < 16 {
        return Err("a token needs at least 16 characters".into());
    }
    if !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a token is printable ASCII without spaces".into());
    }
    Ok(())
}

/// 32 random bytes from the kernel, hex.
fn generate() -> Result<String, String> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("cannot make a token: /dev/urandom: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The token in `path`, `None` if there is no such file. Refused: a
/// symlink, not a regular file, another user's file, or one that group or
/// others may read.
fn read_private(path: &Path) -> Result<Option<String>, String> {
    let shown = path.display();
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(format!("token file {shown} is a symlink; refusing it"))
        }
        Err(e) => return Err(format!("token file {shown}: {e}")),
    };
    let m = f
        .metadata()
        .map_err(|e| format!("token file {shown}: {e}"))?;
    if !m.is_file() {
        return Err(format!("token file {shown} is not a regular file"));
    }
    if m.uid() != crate::proto::nix_uid() {
        return Err(format!("token file {shown} belongs to uid {}", m.uid()));
    }
    if m.mode() & 0o077 != 0 {
        return Err(format!(
            "token file {shown} may be read by others (mode {:o}); chmod 600 it",
            m.mode() & 0o777
        ));
    }
    let mut s = String::new();
    f.take(4096)
        .read_to_string(&mut s)
        .map_err(|e| format!("token file {shown}: {e}"))?;
    let v = s.trim().to_string();
    check_value(&v).map_err(|e| format!("token file {shown}: {e}"))?;
    Ok(Some(v))
}

/// Creates `path` (0600, never through a symlink, never an existing file).
fn write_new(path: &Path, value: &str) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("cannot write the token to {}: {e}", path.display()))?;
    writeln!(f, "{value}").map_err(|e| format!("token file {}: {e}", path.display()))
}

/// The uid that owns the socket at the other end of a loopback TCP
/// connection (`peer` as seen by us, `local` our end): the socket whose
/// local address is `peer` and remote address is `local`, asked from the
/// kernel's sock_diag (one lookup by address, however many sockets exist),
/// else read from `/proc/net/tcp` or `tcp6` (which the kernel builds by
/// walking every socket: milliseconds, more with each connection in
/// TIME_WAIT). `None` when neither knows such a socket (a peer on another
/// machine).
pub fn loopback_peer_uid(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    if let Some(answer) = diag::socket_uid(peer, local) {
        return answer;
    }
    let table = match peer.ip() {
        IpAddr::V4(_) => "/proc/net/tcp",
        IpAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table).ok()?;
    peer_uid_in(&text, local, peer)
}

fn peer_uid_in(table: &str, local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (l, r, uid) = (f.get(1)?, f.get(2)?, f.get(7)?);
        (parse_addr(l)? == peer && parse_addr(r)? == local).then(|| uid.parse().ok())?
    })
}

/// `0100007F:1F90` (the kernel prints each 32-bit word of the address in
/// host byte order, the port big-endian) → `127.0.0.1:8080`.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..a.len()).step_by(8) {
        let word = u32::from_str_radix(a.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => {
            let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
            // A v4 peer on a v6 socket shows as ::ffff:a.b.c.d.
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The kernel's sock_diag netlink interface: the owner of one TCP socket.
mod diag {
    use std::net::{IpAddr, SocketAddr};

    /// `struct inet_diag_sockid` (`linux/inet_diag.h`).
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct SockId {
        sport: [u8; 2],
        dport: [u8; 2],
        src: [u8; 16],
        dst: [u8; 16],
        ifindex: u32,
        cookie: [u32; 2],
    }

    /// A netlink header and `struct inet_diag_req_v2`.
    #[repr(C)]
    struct Request {
        nlh: libc::nlmsghdr,
        family: u8,
        protocol: u8,
        ext: u8,
        pad: u8,
        states: u32,
        id: SockId,
    }

    /// `SOCK_DIAG_BY_FAMILY` (`linux/sock_diag.h`).
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    /// Offset of `idiag_uid` in `struct inet_diag_msg`.
    const UID_AT: usize = 4 + std::mem::size_of::<SockId>() + 12;

    /// Closes a descriptor on drop.
    struct Fd(libc::c_int);

    impl Drop for Fd {
        fn drop(&mut self) {
            // SAFETY: our own descriptor, closed once.
            unsafe { libc::close(self.0) };
        }
    }

    /// A v4-mapped v6 address as the v4 one (the socket on the other side
    /// is a v4 socket).
    fn plain(a: SocketAddr) -> SocketAddr {
        match a.ip() {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
                None => a,
            },
            IpAddr::V4(_) => a,
        }
    }

    /// The uid owning the TCP socket bound to `src` and connected to
    /// `dst`: `Some(Some(uid))`, `Some(None)` when the kernel knows no such
    /// socket, `None` when sock_diag cannot be asked (then read
    /// `/proc/net/tcp`).
    pub fn socket_uid(src: SocketAddr, dst: SocketAddr) -> Option<Option<u32>> {
        let (src, dst) = (plain(src), plain(dst));
        let mut id = SockId {
            sport: src.port().to_be_bytes(),
            dport: dst.port().to_be_bytes(),
            src: [0; 16],
            dst: [0; 16],
            ifindex: 0,
            // INET_DIAG_NOCOOKIE: look the socket up by its addresses.
            cookie: [u32::MAX; 2],
        };
        let family = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                id.src[..4].copy_from_slice(&s.octets());
                id.dst[..4].copy_from_slice(&d.octets());
                libc::AF_INET
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                id.src = s.octets();
                id.dst = d.octets();
                libc::AF_INET6
            }
            _ => return Some(None),
        };
        let req = Request {
            nlh: libc::nlmsghdr {
                nlmsg_len: std::mem::size_of::<Request>() as u32,
                nlmsg_type: SOCK_DIAG_BY_FAMILY,
                nlmsg_flags: libc::NLM_F_REQUEST as u16,
                nlmsg_seq: 1,
                nlmsg_pid: 0,
            },
            family: family as u8,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: u32::MAX,
            id,
        };
        // SAFETY: plain socket calls on a descriptor we own; every buffer
        // passed is valid for the length given.
        unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            );
            if fd < 0 {
                return None;
            }
            let fd = Fd(fd);
            let wait = libc::timeval {
                tv_sec: 1,
                tv_usec: 0,
            };
            libc::setsockopt(
                fd.0,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&wait as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
            kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            let sent = libc::sendto(
                fd.0,
                (&req as *const Request).cast(),
                std::mem::size_of::<Request>(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            );
            if sent < 0 {
                return None;
            }
            let mut buf = [0u8; 8192];
            let n = libc::recv(fd.0, buf.as_mut_ptr().cast(), buf.len(), 0);
            if n < 16 {
                return None;
            }
            parse(&buf[..n as usize])
        }
    }

    /// The answer: a message carrying the uid, or an error (`ENOENT`: no
    /// such socket).
    fn parse(buf: &[u8]) -> Option<Option<u32>> {
        let header = std::mem::size_of::<libc::nlmsghdr>();
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let body = buf.get(header..)?;
        if kind == libc::NLMSG_ERROR as u16 {
            let code = i32::from_ne_bytes(body.get(..4)?.try_into().ok()?);
            return (code == -libc::ENOENT).then_some(None);
        }
        if kind != SOCK_DIAG_BY_FAMILY {
            return None;
        }
        let uid = body.get(UID_AT..UID_AT + 4)?;
        Some(Some(u32::from_ne_bytes(uid.try_into().ok()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sock_diag_names_the_owner_of_a_loopback_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let local = server.local_addr().unwrap();
        assert_eq!(client.local_addr().unwrap(), peer);
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        match diag::socket_uid(peer, local) {
            // Where sock_diag is not there, /proc/net/tcp answers.
            None => eprintln!("no sock_diag here"),
            Some(uid) => assert_eq!(uid, Some(me)),
        }
        assert_eq!(loopback_peer_uid(local, peer), Some(me));
        let nobody: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(loopback_peer_uid(local, nobody), None);
    }

    #[test]
    fn peer_rows_are_found_by_both_ends() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000 65534        0 2 1 0000000000000000 20 4 30 10 -1\n\
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1\n";
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(peer_uid_in(table, local, peer), Some(65534));
            assert_eq!(peer_uid_in(table, peer, local), Some(0));
        }
        let other: SocketAddr = "127.0.0.1:50001".parse().unwrap();
        assert_eq!(peer_uid_in(table, local, other), None);
    }

    #[test]
    fn v6_loopback_parses() {
        if cfg!(target_endian = "little") {
            let a = parse_addr("00000000000000000000000001000000:1F90").unwrap();
            assert_eq!(a, "[::1]:8080".parse().unwrap());
        }
    }

    #[test]
    fn tokens_compare_whole() {
        let t = Token {
            value: "0123456789abcdef".into(),
            path: None,
            remove: false,
        };
        assert!(t.admits(Some(b"Bearer 0123456789abcdef")));
        assert!(!t.admits(Some(b"Bearer 0123456789abcde")));
        assert!(!t.admits(Some(b"Bearer 0123456789abcdefg")));
        assert!(!t.admits(Some(b"0123456789abcdef")));
        assert!(!t.admits(None));
    }
}
