//! Whole-file transfer in a container ([`FileTransfer`]), outside any
//! session: one exec per file, without a terminal, running a short
//! `/bin/sh` script as the container's user — `cat FILE` to read,
//! `cat > FILE` (after `mkdir -p` of a missing parent) to write. The
//! bytes travel on the exec's own stdin and its multiplexed stdout over
//! the raw HTTP stream (`engine::http`), which is binary-safe; nothing is
//! encoded, nothing goes through a terminal.
//!
//! Why an exec and not the engine's archive API (`GET`/`PUT
//! /containers/ID/archive`): the archive API works on the container's root
//! filesystem from the daemon, as root. It does not see a tmpfs mounted in
//! the running container (Docker 20.10 writes under it, unseen, and
//! cannot read what the container wrote there), it replaces an existing
//! file by a new inode instead of truncating it (hard links part, a
//! bind-mounted file cannot be written at all: `EBUSY`), it refuses a
//! `--read-only` root even for a path on a writable mount, it ignores the
//! umask, and it would read and write with root's rights where the
//! container's user has fewer. The exec is the container's user with its
//! groups, umask and mounts: exactly what the session's shell would do,
//! and what [`FileTransfer`] promises.
//!
//! Errors: the script tells what it found on stderr with status lines
//! carrying a fresh nonce (`NONCE start`, `NONCE ok`, `NONCE fail`,
//! `NONCE EISDIR`…); a failed `cat` or `mkdir` is read back from its
//! message, whose end is the C library's `strerror` text of the errno.
//! Reads put the nonce on stdout before the file, so nothing that is not
//! the file (the engine's own error text when the exec could not start)
//! is ever handed on as its bytes.
//!
//! An exec outlives its HTTP connection (the engine does not stop it when
//! the client goes away), so each transfer's processes carry a marker of
//! their own in their environment and a transfer given up on — the
//! reader gone, the future dropped — kills them by it.

use std::fmt;
use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use execkit_core::raw::{self, Chunks, FileTransfer, FILE_CHUNK};
use execkit_core::TransportError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::engine::{Engine, ReadHalf, WriteHalf};
use crate::EngineCell;

/// How much of the script's stderr is kept (its tail: the status is last).
const MAX_STDERR: usize = 64 * 1024;
/// Size of one read from the engine's stream.
const READ_BUF: usize = 256 * 1024;

/// Reads `$1`; `$2` is the nonce. The nonce line on stdout comes first.
const READ_SCRIPT: &str = r#"p=$1 m=$2
s() { printf '\n%s %s\n' "$m" "$1" >&2; }
s start
printf '%s\n' "$m"
if [ -d "$p" ]; then s EISDIR; exit 0; fi
command -v cat >/dev/null 2>&1 || { s unsupported; exit 0; }
if cat "$p"; then s ok; else s fail; fi
"#;

/// Writes stdin to `$1`; `$2` is the nonce. A made directory gets 0755, a
/// new file 0644, less the umask (`umask go-w` adds 022 to it).
const WRITE_SCRIPT: &str = r#"p=$1 m=$2
s() { printf '\n%s %s\n' "$m" "$1" >&2; }
s start
umask go-w
if [ -d "$p" ]; then s EISDIR; exit 0; fi
command -v cat >/dev/null 2>&1 || { s unsupported; exit 0; }
d=${p%/*}
if [ -n "$d" ] && [ ! -d "$d" ]; then
  a=$d
  while [ -n "$a" ] && [ ! -e "$a" ]; do a=${a%/*}; done
  if [ -n "$a" ] && [ ! -d "$a" ]; then s ENOTDIR; exit 0; fi
  command -v mkdir >/dev/null 2>&1 || { s unsupported; exit 0; }
  mkdir -p "$d" || { s fail; exit 0; }
fi
if cat > "$p"; then s ok; else s fail; fi
"#;

/// Native file transfer of one `docker` target.
pub(crate) struct DockerFiles {
    pub(crate) target: String,
    pub(crate) container: String,
    pub(crate) engine: EngineCell,
}

impl fmt::Debug for DockerFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerFiles")
            .field("target", &self.target)
            .field("container", &self.container)
            .finish_non_exhaustive()
    }
}

/// One started transfer exec.
struct Exec {
    nonce: String,
    read: ReadHalf,
    write: WriteHalf,
    /// Stream bytes that came with the response head.
    initial: Vec<u8>,
    reaper: Reaper,
}

/// Kills a transfer's processes by their marker unless disarmed: on
/// [`Reaper::reap`], or from `Drop` (a future dropped mid-transfer) on a
/// task of the current runtime.
struct Reaper {
    engine: Arc<Engine>,
    container: String,
    entry: String,
    armed: bool,
}

impl Reaper {
    async fn reap(mut self) {
        self.armed = false;
        kill(&self.engine, &self.container, &self.entry).await;
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (engine, container, entry) = (
            self.engine.clone(),
            self.container.clone(),
            self.entry.clone(),
        );
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { kill(&engine, &container, &entry).await });
            }
            Err(_) => tracing::warn!(
                "a file transfer in container {container} was dropped outside a runtime; \
                 its processes ({entry}) are left to end on their own"
            ),
        }
    }
}

async fn kill(engine: &Engine, container: &str, entry: &str) {
    if let Err(e) = engine
        .kill_matching(container, container, &raw::script_argv(None), entry)
        .await
    {
        tracing::warn!("stopping an abandoned file transfer in container {container}: {e}");
    }
}

/// A transport failure as an I/O error (the transport's error kept as its
/// source, for a caller who wants its [`execkit_core::ErrorKind`]).
fn transport_io(e: TransportError) -> io::Error {
    io::Error::other(e)
}

impl DockerFiles {
    /// Creates and starts the exec of `script` for `path`.
    async fn start(&self, script: &str, path: &str, stdin: bool) -> io::Result<Exec> {
        if !path.starts_with('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path:?} is not an absolute path"),
            ));
        }
        if path.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a path with a NUL byte",
            ));
        }
        let engine = self.engine.get().await.map_err(transport_io)?;
        let nonce = raw::nonce()?;
        let entry = format!("{}=files-{nonce}", raw::MARKER_VAR);
        let mut cmd = raw::script_argv(None);
        cmd.extend([
            script.to_string(),
            "execkit-files".into(),
            path.to_string(),
            nonce.clone(),
        ]);
        let exec_id = engine
            .create_exec(
                &self.container,
                cmd,
                // The tools' messages end in the C library's words for
                // the errno, which is how a failure is named.
                vec![entry.clone(), "LC_ALL=C".into()],
                false,
                None,
                stdin,
            )
            .await
            .map_err(|e| {
                transport_io(crate::shell::create_exec_error(
                    &self.target,
                    &self.container,
                    e,
                ))
            })?;
        let reaper = Reaper {
            engine: engine.clone(),
            container: self.container.clone(),
            entry,
            armed: true,
        };
        let att = engine
            .start_raw(&exec_id, false)
            .await
            .map_err(transport_io)?;
        Ok(Exec {
            nonce,
            read: att.read,
            write: att.write,
            initial: att.initial,
            reaper,
        })
    }

    /// The error of a transfer whose script did not say `ok`.
    /// `stdout` is what came there instead of the script's (the engine's
    /// words when the exec could not start).
    fn failure(
        &self,
        what: &str,
        path: &str,
        nonce: &str,
        stderr: &[u8],
        stdout: &[u8],
    ) -> io::Error {
        let status = Status::parse(stderr, nonce);
        let container = &self.container;
        match status.last.as_deref() {
            None => {
                let engine = String::from_utf8_lossy(&stdout[..stdout.len().min(1024)]);
                let engine = engine.trim();
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "{what} {path} in container {container}: /bin/sh did not run there{}{}",
                        if engine.is_empty() { "" } else { ": " },
                        engine.replace(['\r', '\n'], " ")
                    ),
                )
            }
            Some("unsupported") => io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{what} {path} in container {container}: it has no `cat` or `mkdir`"),
            ),
            Some("EISDIR") => errno_error(what, path, container, libc::EISDIR),
            Some("ENOTDIR") => errno_error(what, path, container, libc::ENOTDIR),
            Some("fail") => match status.messages.last().and_then(|m| errno_of(m)) {
                Some(errno) => errno_error(what, path, container, errno),
                None => io::Error::other(format!(
                    "{what} {path} in container {container} failed{}",
                    status.said()
                )),
            },
            Some(_) => io::Error::other(format!(
                "{what} {path} in container {container}: the transfer ended before it finished{}",
                status.said()
            )),
        }
    }
}

#[async_trait]
impl FileTransfer for DockerFiles {
    async fn read(&self, path: &str, to: mpsc::Sender<Vec<u8>>) -> io::Result<u64> {
        let Exec {
            nonce,
            mut read,
            write,
            initial,
            reaper,
        } = self.start(READ_SCRIPT, path, false).await?;
        drop(write);
        let header = format!("{nonce}\n");
        let mut demux = Demux::default();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        // Whether the nonce line opened stdout: only then is stdout the file.
        let mut opened = false;
        let mut total = 0u64;
        let mut buf = vec![0u8; READ_BUF];
        demux.feed(&initial, &mut out, &mut err);
        loop {
            if !opened && out.len() >= header.len() {
                if !out.starts_with(header.as_bytes()) {
                    // Not our script speaking (the engine's error text).
                    break;
                }
                out.drain(..header.len());
                opened = true;
            }
            while opened && out.len() >= FILE_CHUNK {
                let rest = out.split_off(FILE_CHUNK);
                let chunk = std::mem::replace(&mut out, rest);
                total += chunk.len() as u64;
                if to.send(chunk).await.is_err() {
                    reaper.reap().await;
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        format!("reading {path}: the receiver went away"),
                    ));
                }
            }
            let n = read.read(&mut buf).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "reading {path} in container {}: the engine's stream broke: {e}",
                        self.container
                    ),
                )
            })?;
            if n == 0 {
                break;
            }
            demux.feed(&buf[..n], &mut out, &mut err);
        }
        if !opened || Status::parse(&err, &nonce).last.as_deref() != Some("ok") {
            reaper.disarm();
            let engine = if opened { &[][..] } else { &out[..] };
            return Err(self.failure("reading", path, &nonce, &err, engine));
        }
        reaper.disarm();
        if !out.is_empty() {
            total += out.len() as u64;
            if to.send(out).await.is_err() {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("reading {path}: the receiver went away"),
                ));
            }
        }
        Ok(total)
    }

    async fn write(&self, path: &str, len: Option<u64>, mut from: Chunks) -> io::Result<u64> {
        let Exec {
            nonce,
            mut read,
            mut write,
            initial,
            reaper,
        } = self.start(WRITE_SCRIPT, path, true).await?;
        // Told when the script's stream ends (it exited): no more chunks
        // are waited for.
        let ended = tokio::sync::Notify::new();
        // Feeds the chunks to the script's stdin, then ends it (EOF): what
        // was sent is written whatever ends the stream.
        let send = async {
            let mut sent = 0u64;
            let why: io::Result<()> = loop {
                let next = tokio::select! {
                    biased;
                    () = ended.notified() => None,
                    c = from.recv() => Some(c),
                };
                let chunk = match next {
                    None => {
                        break Err(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            "the script in the container ended",
                        ))
                    }
                    Some(None) => break Ok(()),
                    Some(Some(Err(e))) => break Err(e),
                    Some(Some(Ok(c))) => c,
                };
                let room = len.map_or(u64::MAX, |l| l - sent);
                let take = chunk.len().min(usize::try_from(room).unwrap_or(usize::MAX));
                if let Err(e) = write.write_all(&chunk[..take]).await {
                    // The script ended early: its status says why.
                    break Err(e);
                }
                sent += take as u64;
                if take < chunk.len() {
                    break Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("more than the {} bytes announced", len.unwrap_or(0)),
                    ));
                }
            };
            drop(from);
            let _ = write.shutdown().await;
            (sent, why)
        };
        let receive = async {
            let mut demux = Demux::default();
            let (mut out, mut err) = (Vec::new(), Vec::new());
            demux.feed(&initial, &mut out, &mut err);
            let mut buf = vec![0u8; 64 * 1024];
            let broke = loop {
                // The script prints nothing there; the engine might (why
                // the exec could not start): its first KiB is kept.
                out.truncate(1024);
                match read.read(&mut buf).await {
                    Ok(0) => break None,
                    Ok(n) => demux.feed(&buf[..n], &mut out, &mut err),
                    Err(e) => break Some(e),
                }
            };
            ended.notify_one();
            (out, err, broke)
        };
        let ((sent, why), (out, err, broke)) = tokio::join!(send, receive);
        reaper.disarm();
        if Status::parse(&err, &nonce).last.as_deref() != Some("ok") {
            return Err(match broke {
                Some(e) if Status::parse(&err, &nonce).last.is_none() => io::Error::new(
                    e.kind(),
                    format!(
                        "writing {path} in container {}: the engine's stream broke: {e}",
                        self.container
                    ),
                ),
                _ => self.failure("writing", path, &nonce, &err, &out),
            });
        }
        why?;
        match len {
            Some(l) if l != sent => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("writing {path}: {sent} bytes arrived of the {l} announced"),
            )),
            _ => Ok(sent),
        }
    }
}

/// A refusal the container named by its errno: the errno's kind, a
/// message naming the file, and the errno's own `io::Error` as its source
/// (`execkit_core::raw::file_errno` finds it there).
fn errno_error(what: &str, path: &str, container: &str, errno: i32) -> io::Error {
    let cause = io::Error::from_raw_os_error(errno);
    io::Error::new(
        cause.kind(),
        ErrnoError {
            message: format!("{what} {path} in container {container}"),
            cause,
        },
    )
}

/// See [`errno_error`].
#[derive(Debug)]
struct ErrnoError {
    message: String,
    cause: io::Error,
}

impl fmt::Display for ErrnoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // std's text without its " (os error N)".
        let text = self.cause.to_string();
        let text = text.split(" (os error").next().unwrap_or_default();
        write!(f, "{}: {text}", self.message)
    }
}

impl std::error::Error for ErrnoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.cause)
    }
}

/// What the script said on stderr.
#[derive(Debug, Default, PartialEq, Eq)]
struct Status {
    /// The last status word (`start`, `ok`, `fail`, `EISDIR`…).
    last: Option<String>,
    /// Its other non-empty lines (the tools' messages).
    messages: Vec<String>,
}

impl Status {
    fn parse(stderr: &[u8], nonce: &str) -> Status {
        let mut s = Status::default();
        for line in String::from_utf8_lossy(stderr).lines() {
            let line = line.trim_end_matches('\r');
            match line
                .strip_prefix(nonce)
                .and_then(|rest| rest.strip_prefix(' '))
            {
                Some(word) => s.last = Some(word.to_string()),
                None if !line.trim().is_empty() => s.messages.push(line.trim().to_string()),
                None => {}
            }
        }
        s
    }

    /// `: MESSAGE` of the last message, if any.
    fn said(&self) -> String {
        self.messages
            .last()
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    }
}

/// The errno whose `strerror` text (glibc's or musl's, or the words of
/// dash and busybox ash for a redirection) ends a tool's message.
fn errno_of(message: &str) -> Option<i32> {
    const TEXTS: &[(&str, i32)] = &[
        ("no such file or directory", libc::ENOENT),
        ("no such file", libc::ENOENT),
        ("directory nonexistent", libc::ENOENT),
        ("nonexistent directory", libc::ENOENT),
        ("permission denied", libc::EACCES),
        ("operation not permitted", libc::EPERM),
        ("is a directory", libc::EISDIR),
        ("not a directory", libc::ENOTDIR),
        ("read-only file system", libc::EROFS),
        ("no space left on device", libc::ENOSPC),
        ("disk quota exceeded", libc::EDQUOT),
        ("quota exceeded", libc::EDQUOT),
        ("too many levels of symbolic links", libc::ELOOP),
        ("symbolic link loop", libc::ELOOP),
        ("file name too long", libc::ENAMETOOLONG),
        ("filename too long", libc::ENAMETOOLONG),
        ("file exists", libc::EEXIST),
        ("text file busy", libc::ETXTBSY),
        ("file too large", libc::EFBIG),
        ("input/output error", libc::EIO),
        ("i/o error", libc::EIO),
        ("device or resource busy", libc::EBUSY),
        ("resource busy", libc::EBUSY),
        ("no such device or address", libc::ENXIO),
    ];
    let m = message.trim().to_ascii_lowercase();
    TEXTS
        .iter()
        .find(|(text, _)| m.ends_with(text))
        .map(|&(_, errno)| errno)
}

/// Splits the engine's multiplexed stream (frames of an 8-byte header —
/// stream, three zero bytes, big-endian length — and the payload) as it
/// arrives, in whatever pieces.
#[derive(Debug, Default)]
struct Demux {
    /// A header read in part.
    head: Vec<u8>,
    /// Which stream the current frame is (1 stdout, 2 stderr).
    stream: u8,
    /// Payload bytes of the current frame still to come.
    left: usize,
}

impl Demux {
    /// Appends stdout payload to `out`, stderr to `err` (its last
    /// [`MAX_STDERR`] bytes).
    fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>, err: &mut Vec<u8>) {
        while !data.is_empty() {
            if self.left == 0 {
                let take = (8 - self.head.len()).min(data.len());
                self.head.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.head.len() == 8 {
                    self.stream = self.head[0];
                    self.left = u32::from_be_bytes([
                        self.head[4],
                        self.head[5],
                        self.head[6],
                        self.head[7],
                    ]) as usize;
                    self.head.clear();
                }
                continue;
            }
            let n = self.left.min(data.len());
            match self.stream {
                1 => out.extend_from_slice(&data[..n]),
                2 => {
                    err.extend_from_slice(&data[..n]);
                    if err.len() > MAX_STDERR {
                        err.drain(..err.len() - MAX_STDERR);
                    }
                }
                _ => {}
            }
            data = &data[n..];
            self.left -= n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stream: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![stream, 0, 0, 0];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn demux_in_any_pieces() {
        let mut wire = frame(1, b"\x00\x01\x02hello");
        wire.extend(frame(2, b"oops\n"));
        wire.extend(frame(1, b""));
        wire.extend(frame(1, &[7u8; 300]));
        for piece in [1, 3, 7, 8, 9, 64, wire.len()] {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let mut d = Demux::default();
            for c in wire.chunks(piece) {
                d.feed(c, &mut out, &mut err);
            }
            let mut want = b"\x00\x01\x02hello".to_vec();
            want.extend([7u8; 300]);
            assert_eq!(out, want, "pieces of {piece}");
            assert_eq!(err, b"oops\n");
        }
    }

    #[test]
    fn a_refusal_names_the_file_and_carries_the_errno() {
        let e = errno_error("reading", "/x/y", "web", libc::EACCES);
        assert_eq!(execkit_core::raw::file_errno(&e), Some(libc::EACCES));
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(
            e.to_string(),
            "reading /x/y in container web: Permission denied"
        );
    }

    #[test]
    fn status_lines_and_errno() {
        let err = b"\nN1 start\ncat: can't open '/x': Permission denied\n\nN1 fail\n";
        let s = Status::parse(err, "N1");
        assert_eq!(s.last.as_deref(), Some("fail"));
        assert_eq!(
            s.messages.last().and_then(|m| errno_of(m)),
            Some(libc::EACCES)
        );
        // Another nonce is not a status.
        assert_eq!(Status::parse(b"N2 ok\n", "N1").last, None);
        assert_eq!(
            errno_of("sh: 1: cannot create /a/b: Directory nonexistent"),
            Some(libc::ENOENT)
        );
        assert_eq!(
            errno_of("cat: /x: No such file or directory"),
            Some(libc::ENOENT)
        );
        assert_eq!(
            errno_of("cat: write error: No space left on device"),
            Some(libc::ENOSPC)
        );
        assert_eq!(
            errno_of("sh: can't create /x: Read-only file system"),
            Some(libc::EROFS)
        );
        assert_eq!(errno_of("something else"), None);
    }
}
