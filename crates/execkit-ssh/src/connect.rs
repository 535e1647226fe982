//! Establishing one authenticated SSH connection (blocking; runs on a
//! thread of its own): TCP connect, handshake, host-key verification
//! against known_hosts, key and agent authentication — all under one
//! deadline, the target's `connect_timeout`.

use std::io::Write as _;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use execkit_core::{ErrorKind, TransportError};
use ssh2::{CheckResult, HashType, HostKeyType, KnownHostFileKind, MethodType, Session};

use crate::actor::{Socket, Start, Stream};
use crate::target::{home, AgentSource, HostKeyPolicy, SshTarget};

/// Host key algorithms in OpenSSH's default order, so the key we verify is
/// the one OpenSSH would have recorded in known_hosts.
const HOST_KEY_PREFS: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
];

/// Environment variable holding the passphrase of an encrypted identity.
pub const PASSPHRASE_VAR: &str = "EXECKIT_SSH_PASSPHRASE";

/// A connected, verified and authenticated session (still blocking).
pub(crate) struct Established {
    pub session: Session,
    pub socket: Socket,
    /// The keepalive interval libssh2 was set to (the connection thread
    /// sends them at this pace).
    pub keepalive: std::time::Duration,
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established").finish_non_exhaustive()
    }
}

/// The session's view of the socket: the fd without ownership (the
/// connection thread keeps the `TcpStream` and closes it last).
struct BorrowedSocket(std::os::fd::RawFd);

impl AsRawFd for BorrowedSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

pub(crate) fn unreachable(
    target: &str,
    kind: ErrorKind,
    reason: impl Into<String>,
) -> TransportError {
    TransportError::unreachable(target, kind, reason)
}

/// The stage of establishing a connection a deadline can end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Tcp,
    Banner,
    KeyExchange,
    Auth,
}

/// The target's `connect_timeout` as one deadline over every stage: each
/// blocking step gets what is left of it, not a fresh allowance.
struct Deadline {
    end: Instant,
    total: Duration,
}

impl Deadline {
    fn new(total: Duration) -> Deadline {
        Deadline {
            end: Instant::now() + total,
            total,
        }
    }

    fn remaining(&self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }

    fn expired(&self) -> bool {
        self.remaining().is_zero()
    }

    /// Bounds the next blocking libssh2 call (libssh2 applies its timeout
    /// to a whole call) by what is left, rounded up to a millisecond
    /// (0 would mean no limit at all).
    fn arm(&self, session: &Session) {
        let ms = self.remaining().as_micros().div_ceil(1000);
        session.set_timeout(ms.clamp(1, u128::from(u32::MAX)) as u32);
    }

    /// The error for `stage` not finishing in time.
    fn missed(&self, stage: Stage, t: &SshTarget, target: &str) -> TransportError {
        let addr = t.addr();
        // Whole seconds print without a fraction: "2", "0.5".
        let secs = self.total.as_secs_f64();
        unreachable(
            target,
            ErrorKind::Timeout,
            match stage {
                Stage::Tcp => format!("no TCP connection to {addr} within {secs} s"),
                Stage::Banner => format!("no SSH banner from {addr} within {secs} s"),
                Stage::KeyExchange => {
                    format!("SSH key exchange with {addr} did not finish within {secs} s")
                }
                Stage::Auth => {
                    format!("authentication to {addr} did not finish within {secs} s")
                }
            },
        )
    }
}

/// libssh2's LIBSSH2_ERROR_TIMEOUT: a blocking call ran out of time.
fn timed_out(e: &ssh2::Error) -> bool {
    e.code() == ssh2::ErrorCode::Session(-9)
}

/// Connects, verifies the host key and authenticates. A failure names
/// the `Host`/`Match` blocks of the client configuration that applied.
pub(crate) fn establish(t: &SshTarget, target: &str) -> Result<Established, TransportError> {
    establish_inner(t, target).map_err(|e| match e {
        TransportError::Unreachable {
            target,
            kind,
            reason,
            source,
        } if !t.origin.is_empty() && !reason.contains(" [ssh config: ") => {
            TransportError::Unreachable {
                target,
                kind,
                reason: format!("{reason} [ssh config: {}]", t.origin.join("; ")),
                source,
            }
        }
        e => e,
    })
}

fn establish_inner(t: &SshTarget, target: &str) -> Result<Established, TransportError> {
    if let Some(id) = &t.identity {
        if !id.is_file() {
            return Err(unreachable(
                target,
                ErrorKind::Other,
                format!("identity file {} does not exist", id.display()),
            ));
        }
    }
    let deadline = Deadline::new(t.connect_timeout);
    let socket = match t.jump.last() {
        None => Socket::Tcp(tcp_connect(t, target, &deadline)?),
        Some(_) => through_jump(t, target)?,
    };
    let mut session = Session::new().map_err(|e| {
        unreachable(
            target,
            ErrorKind::Other,
            format!("cannot create an SSH session: {e}"),
        )
        .with_source(e)
    })?;
    // libssh2 uses the same fd; `socket` owns it and outlives the session.
    session.set_tcp_stream(BorrowedSocket(socket.fd()));
    if let Ok(supported) = session.supported_algs(MethodType::HostKey) {
        let prefs: Vec<&str> = HOST_KEY_PREFS
            .iter()
            .copied()
            .filter(|a| supported.contains(a))
            .collect();
        if !prefs.is_empty() {
            let _ = session.method_pref(MethodType::HostKey, &prefs.join(","));
        }
    }
    if deadline.expired() {
        return Err(deadline.missed(Stage::Banner, t, target));
    }
    deadline.arm(&session);
    session.handshake().map_err(|e| {
        if timed_out(&e) || deadline.expired() {
            // The banner is the first thing a server sends: without it
            // this is a host that accepted the connection and stalled.
            let stage = match session.banner_bytes() {
                None => Stage::Banner,
                Some(_) => Stage::KeyExchange,
            };
            return deadline.missed(stage, t, target).with_source(e);
        }
        unreachable(
            target,
            ErrorKind::Other,
            format!("SSH handshake with {} failed: {}", t.addr(), e.message()),
        )
        .with_source(e)
    })?;
    tracing::debug!(
        "ssh {}: cipher {:?}, kex {:?}",
        t.addr(),
        session.methods(MethodType::CryptSc),
        session.methods(MethodType::Kex)
    );
    verify_host_key(&session, t, target)?;
    authenticate(&session, t, target, &deadline)?;
    let keepalive = t.keepalive.unwrap_or(crate::actor::KEEPALIVE);
    session.set_keepalive(
        true,
        keepalive.as_secs().clamp(1, u64::from(u32::MAX)) as u32,
    );
    Ok(Established {
        session,
        socket,
        keepalive,
    })
}

/// The last jump host's connection (itself reached through the hops
/// before it), asked to forward a connection to `t`: its channel relayed
/// to a local socket this connection runs over. Every hop is verified
/// against its own known_hosts entry, as the final host is.
fn through_jump(t: &SshTarget, target: &str) -> Result<Socket, TransportError> {
    let (last, before) = t.jump.split_last().expect("a jump host");
    let mut hop = last.clone();
    hop.jump = before.to_vec();
    let hop_url = format!("ssh://{}@{}", hop.user, hop.addr());
    let about = |e: TransportError| -> TransportError {
        let (kind, reason, source) = match e {
            TransportError::Unreachable {
                kind,
                reason,
                source,
                ..
            } => (kind, reason, source),
            other => (other.kind(), other.to_string(), None),
        };
        TransportError::Unreachable {
            target: target.to_string(),
            kind,
            reason: format!("jump host {}: {reason}", hop.describe()),
            source,
        }
    };
    let conn = crate::pool::get_blocking(&hop, &hop_url).map_err(about)?;
    let stream = Stream::open_blocking(
        &conn,
        Start::Tcp {
            host: t.host.clone(),
            port: t.port,
        },
    )
    .map_err(|e| {
        let (crate::actor::OpenError::Refused(m)
        | crate::actor::OpenError::Lost(m)
        | crate::actor::OpenError::Failed(m)) = e;
        unreachable(
            target,
            ErrorKind::ConnectionRefused,
            format!("through jump host {}: {m}", hop.describe()),
        )
    })?;
    let (end, received) = crate::relay::relay(stream)
        .map_err(|e| TransportError::io("relaying through a jump host", e))?;
    Ok(Socket::Relay { end, received })
}

fn tcp_connect(
    t: &SshTarget,
    target: &str,
    deadline: &Deadline,
) -> Result<TcpStream, TransportError> {
    let addrs: Vec<_> = match (t.host.as_str(), t.port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            return Err(unreachable(
                target,
                ErrorKind::NotFound,
                format!("cannot resolve host `{}`: {}", t.host, dns_reason(&e)),
            )
            .with_source(e))
        }
    };
    if addrs.is_empty() {
        return Err(unreachable(
            target,
            ErrorKind::NotFound,
            format!("cannot resolve host `{}`: no addresses", t.host),
        ));
    }
    let mut last = None;
    for addr in addrs {
        let left = deadline.remaining();
        if left.is_zero() {
            return Err(deadline.missed(Stage::Tcp, t, target));
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                tune_socket(&s);
                return Ok(s);
            }
            Err(e) => {
                let err = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => unreachable(
                        target,
                        ErrorKind::ConnectionRefused,
                        format!("connection refused by {}", t.addr()),
                    ),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                        deadline.missed(Stage::Tcp, t, target)
                    }
                    _ => unreachable(
                        target,
                        ErrorKind::Other,
                        format!("cannot connect to {}: {e}", t.addr()),
                    ),
                };
                last = Some(err.with_source(e));
            }
        }
    }
    Err(last.unwrap_or_else(|| deadline.missed(Stage::Tcp, t, target)))
}

fn dns_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    // "failed to lookup address information: Name or service not known"
    s.strip_prefix("failed to lookup address information: ")
        .unwrap_or(&s)
        .to_string()
}

/// TCP keepalive and a user timeout, so a peer that vanished without a FIN
/// is noticed in about a minute even while we are only sending.
fn tune_socket(s: &TcpStream) {
    let fd = s.as_raw_fd();
    let set = |level: libc::c_int, opt: libc::c_int, val: libc::c_int| {
        // SAFETY: setsockopt on a valid socket with a c_int option value.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                opt,
                (&val as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    #[cfg(target_os = "linux")]
    {
        set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 30);
        set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10);
        set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3);
        set(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 60_000);
    }
}

/// `SHA256:<base64>` as OpenSSH prints host key fingerprints.
pub(crate) fn fingerprint(session: &Session) -> String {
    match session.host_key_hash(HashType::Sha256) {
        Some(h) => format!("SHA256:{}", base64(h, false)),
        None => "SHA256:?".to_string(),
    }
}

fn key_kind(kind: HostKeyType) -> &'static str {
    match kind {
        HostKeyType::Rsa => "RSA",
        HostKeyType::Dss => "DSA",
        HostKeyType::Ecdsa256 | HostKeyType::Ecdsa384 | HostKeyType::Ecdsa521 => "ECDSA",
        HostKeyType::Ed25519 => "ED25519",
        _ => "unknown",
    }
}

/// The algorithm name at the start of an SSH public key blob.
fn key_algorithm(blob: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4 + len)?).ok()
}

fn verify_host_key(session: &Session, t: &SshTarget, target: &str) -> Result<(), TransportError> {
    let (key, kind) = session
        .host_key()
        .ok_or_else(|| unreachable(target, ErrorKind::Other, "the server sent no host key"))?;
    let fp = fingerprint(session);
    let kind = key_kind(kind);
    let name = t.known_hosts_name();
    let path = t.known_hosts_path();
    let mut kh = session.known_hosts().map_err(|e| {
        unreachable(
            target,
            ErrorKind::Other,
            format!("cannot check host keys: {e}"),
        )
        .with_source(e)
    })?;
    let shown = path
        .as_ref()
        .map_or_else(|| "known_hosts".to_string(), |p| p.display().to_string());
    if let Some(p) = &path {
        load_known_hosts(&mut kh, p);
    }
    for p in &t.more_known_hosts {
        load_known_hosts(&mut kh, p);
    }
    let shown = if t.more_known_hosts.is_empty() {
        shown
    } else {
        let more: Vec<String> = t
            .more_known_hosts
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!("{shown} (or {})", more.join(", "))
    };
    let check = kh.check_port(&t.host, t.port, key);
    if t.host_key == HostKeyPolicy::Off && !matches!(check, CheckResult::Match) {
        tracing::warn!(
            "host key checks are off for {name} (host_key=no): accepting {kind} key {fp} unverified"
        );
        return Ok(());
    }
    match check {
        CheckResult::Match => Ok(()),
        CheckResult::Mismatch => Err(unreachable(
            target,
            ErrorKind::HostKeyMismatch,
            format!(
                "host key for {name} has CHANGED: the server offered {kind} key {fp}, \
                 which does not match the one in {shown}; refusing to connect \
                 (possible man-in-the-middle; remove the old entry if the change is expected)"
            ),
        )),
        CheckResult::NotFound | CheckResult::Failure => match (t.host_key, &path) {
            (HostKeyPolicy::AcceptNew, Some(p)) => {
                let alg = key_algorithm(key).ok_or_else(|| {
                    unreachable(
                        target,
                        ErrorKind::Other,
                        "the server's host key is malformed",
                    )
                })?;
                let line = format!("{name} {alg} {}\n", base64(key, true));
                append_known_host(p, &line).map_err(|e| {
                    unreachable(
                        target,
                        ErrorKind::Other,
                        format!("cannot record the host key of {name} in {shown}: {e}"),
                    )
                    .with_source(e)
                })?;
                tracing::info!("recorded {kind} host key {fp} of {name} in {shown}");
                Ok(())
            }
            _ => Err(unreachable(
                target,
                ErrorKind::HostKeyUnknown,
                format!(
                    "host {name} is not in {shown}: the server offered {kind} key {fp}; \
                     refusing to connect (verify the fingerprint and add the key to \
                     known_hosts, or opt in with host_key=accept_new)"
                ),
            )),
        },
    }
}

/// Loads known_hosts line by line so one line libssh2 cannot parse (an
/// unsupported key type, a marker) does not hide the others.
fn load_known_hosts(kh: &mut ssh2::KnownHosts, path: &Path) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('@') {
            continue;
        }
        let _ = kh.read_str(line, KnownHostFileKind::OpenSSH);
    }
}

fn append_known_host(path: &Path, line: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
            }
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(line.as_bytes())
}

fn authenticate(
    session: &Session,
    t: &SshTarget,
    target: &str,
    deadline: &Deadline,
) -> Result<(), TransportError> {
    let user = &t.user;
    let passphrase_var = t.passphrase_env.as_deref().unwrap_or(PASSPHRASE_VAR);
    let passphrase = std::env::var(passphrase_var).ok().filter(|p| !p.is_empty());
    let mut tried: Vec<String> = Vec::new();
    let late = || deadline.missed(Stage::Auth, t, target);
    let try_key = |path: &Path, tried: &mut Vec<String>| -> Result<bool, TransportError> {
        if deadline.expired() {
            return Err(late());
        }
        deadline.arm(session);
        Ok(
            match session.userauth_pubkey_file(user, None, path, passphrase.as_deref()) {
                Ok(()) if session.authenticated() => true,
                Ok(()) => {
                    tried.push(format!("key {} (not accepted)", path.display()));
                    false
                }
                Err(e) if timed_out(&e) || deadline.expired() => return Err(late().with_source(e)),
                Err(e) => {
                    let why = match e.code() {
                        ssh2::ErrorCode::Session(-18) | ssh2::ErrorCode::Session(-19) => {
                            "not accepted by the server".to_string()
                        }
                        ssh2::ErrorCode::Session(-16) | ssh2::ErrorCode::Session(-48)
                            if passphrase.is_none() =>
                        {
                            format!(
                                "cannot read it ({}; if it is encrypted, name the variable \
                                 holding its passphrase with passphrase_env=VAR)",
                                e.message()
                            )
                        }
                        _ => e.message().to_string(),
                    };
                    tried.push(format!("key {}: {why}", path.display()));
                    false
                }
            },
        )
    };
    if let Some(id) = &t.identity {
        if try_key(id, &mut tried)? {
            return Ok(());
        }
    }
    // The config file's identities: as ssh, files that do not exist are
    // passed over (a `Host *` default need not exist for every user).
    for id in &t.identities {
        if id.is_file() && try_key(id, &mut tried)? {
            return Ok(());
        }
    }
    if t.agent != AgentSource::None {
        if deadline.expired() {
            return Err(late());
        }
        deadline.arm(session);
        match try_agent(session, user, &t.agent) {
            Ok(true) => return Ok(()),
            _ if deadline.expired() => return Err(late()),
            Ok(false) => tried.push("ssh-agent: no identity accepted".into()),
            Err(e) => tried.push(format!("ssh-agent: {e}")),
        }
    }
    if t.identity.is_none() && t.identities.is_empty() {
        for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
            let Some(p) = home().map(|h| h.join(".ssh").join(name)) else {
                break;
            };
            if p.is_file() && try_key(&p, &mut tried)? {
                return Ok(());
            }
        }
    }
    Err(unreachable(
        target,
        ErrorKind::AuthRefused,
        format!(
            "authentication failed for {user}@{} (tried {})",
            t.addr(),
            tried.join("; ")
        ),
    ))
}

fn try_agent(session: &Session, user: &str, source: &AgentSource) -> Result<bool, String> {
    let mut agent = session.agent().map_err(|e| e.message().to_string())?;
    let at = match source {
        AgentSource::Socket(path) => {
            agent
                .set_identity_path(path)
                .map_err(|e| e.message().to_string())?;
            path.display().to_string()
        }
        _ => match std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()) {
            Some(s) => std::path::PathBuf::from(s).display().to_string(),
            None => return Err("not running (SSH_AUTH_SOCK is unset)".into()),
        },
    };
    agent
        .connect()
        .map_err(|e| format!("cannot reach the agent at {at}: {}", e.message()))?;
    agent
        .list_identities()
        .map_err(|e| e.message().to_string())?;
    let ids = agent.identities().map_err(|e| e.message().to_string())?;
    if ids.is_empty() {
        let _ = agent.disconnect();
        return Err(format!("the agent at {at} holds no keys"));
    }
    let mut ok = false;
    for id in &ids {
        if agent.userauth(user, id).is_ok() && session.authenticated() {
            ok = true;
            break;
        }
    }
    let _ = agent.disconnect();
    Ok(ok)
}

/// Standard base64 (with or without `=` padding).
pub(crate) fn base64(data: &[u8], pad: bool) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = [
            T[(n >> 18) as usize & 63],
            T[(n >> 12) as usize & 63],
            T[(n >> 6) as usize & 63],
            T[n as usize & 63],
        ];
        let keep = chunk.len() + 1;
        for (i, c) in chars.iter().enumerate() {
            if i < keep {
                out.push(*c as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b"", true), "");
        assert_eq!(base64(b"f", true), "Zg==");
        assert_eq!(base64(b"fo", true), "Zm8=");
        assert_eq!(base64(b"foo", true), "Zm9v");
        assert_eq!(base64(b"foob", false), "Zm9vYg");
        assert_eq!(base64(b"fooba", false), "Zm9vYmE");
    }

    #[test]
    fn key_algorithm_from_blob() {
        let mut blob = vec![0, 0, 0, 11];
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&[0, 0, 0, 32]);
        assert_eq!(key_algorithm(&blob), Some("ssh-ed25519"));
        assert_eq!(key_algorithm(&[0, 0, 1]), None);
        assert_eq!(key_algorithm(&[0, 0, 0, 9, b'x']), None);
    }
}
