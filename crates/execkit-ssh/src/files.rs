//! Whole-file transfer ([`FileTransfer`]) over an exec channel: no terminal,
//! so the bytes pass untouched. A small sh script per file checks the path
//! (so that a refusal is named by its errno) and then `exec`s `cat`, whose
//! stdin or stdout is the file; the connection thread streams it with
//! backpressure both ways (`What::Stream`). The script needs only a POSIX
//! sh, `cat` and `mkdir` (busybox and dropbear hosts too), and no SFTP
//! subsystem.
//!
//! - Errors: the script's own checks write `execkit-files: ENAME` on
//!   stderr; a failure of `cat`, `mkdir` or a redirection is named by the
//!   strerror text that ends its message (`LC_ALL=C`). The errno is turned
//!   into this host's number and wrapped with a message naming the path
//!   (read it with `file_errno`).
//! - A login shell's rc file may print on the channel before the script
//!   runs: reading drops everything before a marker line the script prints
//!   first.

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use execkit_core::raw::{Chunks, ExitStatus, FileTransfer, FILE_CHUNK};
use tokio::sync::mpsc;

use crate::actor::{Stream, StreamEnd, StreamEvent};
use crate::target::SshTarget;
use crate::{login_command, pool};

/// The line the read script prints before the file's bytes.
const DATA_MARK: &[u8] = b"execkit-files-data\n";
/// How much a login shell may print before [`DATA_MARK`].
const MAX_PREAMBLE: usize = 64 * 1024;
/// What the scripts' own error lines start with.
const ERROR_TAG: &str = "execkit-files: ";

/// The `ssh` transport's [`FileTransfer`].
#[derive(Debug)]
pub(crate) struct SshFiles {
    target: String,
    parsed: SshTarget,
}

impl SshFiles {
    pub(crate) fn new(target: String, parsed: SshTarget) -> Arc<SshFiles> {
        Arc::new(SshFiles { target, parsed })
    }

    async fn start(&self, script: &str, op: Op, path: &str) -> io::Result<Stream> {
        pool::stream(&self.parsed, &self.target, &login_command(script))
            .await
            .map_err(|e| {
                let kind = match e.kind() {
                    execkit_core::ErrorKind::ConnectionRefused => io::ErrorKind::ConnectionRefused,
                    execkit_core::ErrorKind::Timeout => io::ErrorKind::TimedOut,
                    execkit_core::ErrorKind::Lost => io::ErrorKind::ConnectionAborted,
                    _ => io::ErrorKind::Other,
                };
                io::Error::new(
                    kind,
                    FileError::plain(op, path, &self.parsed.addr(), e.to_string()),
                )
            })
    }
}

/// Which way a transfer goes (for messages).
#[derive(Debug, Clone, Copy)]
enum Op {
    Read,
    Write,
}

/// A failed transfer: what, which file, where, why; its source is the
/// errno's `io::Error` when the target named one.
#[derive(Debug)]
struct FileError {
    op: Op,
    path: String,
    host: String,
    reason: String,
    errno: Option<io::Error>,
}

impl FileError {
    fn plain(op: Op, path: &str, host: &str, reason: String) -> FileError {
        FileError {
            op,
            path: path.to_string(),
            host: host.to_string(),
            reason,
            errno: None,
        }
    }

    fn into_io(self, fallback: io::ErrorKind) -> io::Error {
        let kind = self.errno.as_ref().map_or(fallback, io::Error::kind);
        io::Error::new(kind, self)
    }
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.op {
            Op::Read => "reading",
            Op::Write => "writing",
        };
        write!(f, "{op} {} on {}: {}", self.path, self.host, self.reason)
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.errno.as_ref().map(|e| e as _)
    }
}

/// `path` must be absolute and free of NUL bytes.
fn check_path(path: &str) -> io::Result<()> {
    if !path.starts_with('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{path:?}: the path of a file on the target must be absolute"),
        ));
    }
    if path.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{path:?}: a path cannot hold a NUL byte"),
        ));
    }
    Ok(())
}

/// `p=PATH` for the scripts. A path with control characters (a newline
/// would end a line in tcsh's quotes) is spelt in `printf` octal escapes.
fn assign_path(path: &str) -> String {
    if !path.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return format!("p={}", execkit_core::raw::shell_quote(path));
    }
    let mut fmt = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"/._-".contains(&b) {
            fmt.push(b as char);
        } else {
            fmt.push_str(&format!("\\{b:03o}"));
        }
    }
    // The `x` keeps a trailing newline from being stripped.
    format!("p=$(printf '{fmt}x'); p=${{p%x}}")
}

/// The script's shared start: C messages, the error helper `die ENAME
/// [TEXT]`, and `missing`, which names why `$p` does not exist as open(2)
/// would (a file where a directory should be, an unsearchable directory,
/// or just missing).
fn preamble(path: &str) -> String {
    format!(
        "export LC_ALL=C; {}; \
         die() {{ printf '{ERROR_TAG}%s %s\\n' \"$1\" \"$2\" >&2; exit 1; }}; \
         missing() {{ a=$p; while a=${{a%/*}}; [ -n \"$a\" ] && [ ! -e \"$a\" ]; do :; done; \
         [ -n \"$a\" ] || a=/; [ -d \"$a\" ] || die ENOTDIR; [ -x \"$a\" ] || die EACCES; die ENOENT; }}; ",
        assign_path(path)
    )
}

/// Prints the marker, then the file.
fn read_script(path: &str) -> String {
    format!(
        "{}[ -d \"$p\" ] && die EISDIR; [ -e \"$p\" ] || missing; \
         [ -f \"$p\" ] || die EINVAL 'not a regular file'; \
         printf 'execkit-files-data\\n'; exec cat -- \"$p\"",
        preamble(path)
    )
}

/// Makes the missing parents, then writes stdin to the file. The umask
/// gains `022` first: `cat >` then creates 0644 less the umask, `mkdir -p`
/// 0755 less the umask.
fn write_script(path: &str) -> String {
    format!(
        "{}u=$(umask); case $u in 0*) ;; *) u=0$u;; esac; \
         umask \"$(printf %o \"$(( $u | 18 ))\")\" || exit 1; \
         [ -d \"$p\" ] && die EISDIR; \
         if [ -e \"$p\" ]; then [ -f \"$p\" ] || die EINVAL 'not a regular file'; \
         else d=${{p%/*}}; [ -n \"$d\" ] || d=/; \
         if [ ! -d \"$d\" ]; then a=$d; while [ ! -e \"$a\" ]; do a=${{a%/*}}; [ -n \"$a\" ] || a=/; done; \
         [ -d \"$a\" ] || die ENOTDIR; mkdir -p -- \"$d\" || exit 1; fi; fi; \
         exec cat > \"$p\"",
        preamble(path)
    )
}

/// errno names the scripts use, as this host's numbers.
fn errno_named(name: &str) -> Option<i32> {
    Some(match name {
        "ENOENT" => libc::ENOENT,
        "ENOTDIR" => libc::ENOTDIR,
        "EISDIR" => libc::EISDIR,
        "EACCES" => libc::EACCES,
        "EINVAL" => libc::EINVAL,
        _ => return None,
    })
}

/// strerror texts (glibc's and musl's, as `cat`, `mkdir` and sh end their
/// messages with them under `LC_ALL=C`) and their errno.
const STRERROR: &[(&str, i32)] = &[
    ("No such file or directory", libc::ENOENT),
    ("Not a directory", libc::ENOTDIR),
    ("Is a directory", libc::EISDIR),
    ("Permission denied", libc::EACCES),
    ("Operation not permitted", libc::EPERM),
    ("No space left on device", libc::ENOSPC),
    ("Read-only file system", libc::EROFS),
    ("Disk quota exceeded", libc::EDQUOT),
    ("Quota exceeded", libc::EDQUOT),
    ("File too large", libc::EFBIG),
    ("Text file busy", libc::ETXTBSY),
    ("Too many levels of symbolic links", libc::ELOOP),
    ("Symbolic link loop", libc::ELOOP),
    ("File name too long", libc::ENAMETOOLONG),
    ("Filename too long", libc::ENAMETOOLONG),
    ("Input/output error", libc::EIO),
    ("I/O error", libc::EIO),
    ("File exists", libc::EEXIST),
];

/// Why a script failed, from what it wrote on stderr: its own error line,
/// else the strerror text ending the last line, else that line as it is.
fn failure(op: Op, path: &str, host: &str, end: &StreamEnd) -> FileError {
    let text = String::from_utf8_lossy(&end.stderr);
    let (errno, reason) = if let Some(own) = text.lines().find_map(|l| l.strip_prefix(ERROR_TAG)) {
        let (name, words) = own.split_once(' ').unwrap_or((own, ""));
        let errno = errno_named(name.trim());
        let words = words.trim();
        match errno {
            Some(n) if words.is_empty() => (Some(n), strerror(n)),
            _ => (errno, words.to_string()),
        }
    } else {
        let last = text
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("");
        let errno = STRERROR
            .iter()
            .find(|(msg, _)| last.ends_with(msg))
            .map(|&(_, n)| n);
        let reason = match (errno, last.is_empty()) {
            (Some(n), _) => strerror(n),
            (None, false) => last.to_string(),
            (None, true) => format!("the transfer script {}", end.status),
        };
        (errno, reason)
    };
    FileError {
        op,
        path: path.to_string(),
        host: host.to_string(),
        reason,
        errno: errno.map(io::Error::from_raw_os_error),
    }
}

/// This host's text for `errno`, without std's " (os error N)".
fn strerror(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// What a read's stdout holds before [`DATA_MARK`]: whatever a login
/// shell's rc file printed, dropped.
#[derive(Debug, Default)]
struct Preamble(Vec<u8>);

impl Preamble {
    /// Takes the next stdout bytes: the file's first bytes once the marker
    /// has passed (maybe none yet), `None` before.
    fn push(&mut self, chunk: &[u8]) -> Result<Option<Vec<u8>>, String> {
        // Only the tail that could still end in the marker is searched again.
        let from = self.0.len().saturating_sub(DATA_MARK.len() - 1);
        self.0.extend_from_slice(chunk);
        match self.0[from..]
            .windows(DATA_MARK.len())
            .position(|w| w == DATA_MARK)
        {
            Some(at) => Ok(Some(self.0.split_off(from + at + DATA_MARK.len()))),
            None if self.0.len() > MAX_PREAMBLE => Err(format!(
                "the login shell printed over {MAX_PREAMBLE} bytes before the file"
            )),
            None => Ok(None),
        }
    }
}

/// Waits for the stream's end, dropping stdout (a write has none of its
/// own; a login shell may have printed some).
/// Ends the input of a write given up on and waits until the remote
/// command has ended, so the target does not change after the error is
/// returned.
async fn settle(stream: &mut Stream) {
    if stream.eof().is_ok() {
        let _ = end_of(stream).await;
    }
}

async fn end_of(stream: &mut Stream) -> Result<StreamEnd, String> {
    loop {
        if let StreamEvent::End(end) = stream.next().await {
            return end;
        }
    }
}

#[async_trait]
impl FileTransfer for SshFiles {
    async fn read(&self, path: &str, to: mpsc::Sender<Vec<u8>>) -> io::Result<u64> {
        check_path(path)?;
        let mut stream = self.start(&read_script(path), Op::Read, path).await?;
        let host = stream.label().to_string();
        let error = |kind: io::ErrorKind, m: String| {
            FileError::plain(Op::Read, path, &host, m).into_io(kind)
        };
        let _ = stream.eof();
        let mut preamble = Some(Preamble::default());
        let mut total = 0u64;
        loop {
            let mut chunk = match stream.next().await {
                StreamEvent::Stdout(b) => b,
                StreamEvent::End(Err(m)) => return Err(error(io::ErrorKind::ConnectionAborted, m)),
                StreamEvent::End(Ok(end)) => {
                    if end.status != ExitStatus::Code(0) {
                        return Err(
                            failure(Op::Read, path, &host, &end).into_io(io::ErrorKind::Other)
                        );
                    }
                    if preamble.is_some() {
                        return Err(error(
                            io::ErrorKind::InvalidData,
                            "the transfer script printed no data marker".into(),
                        ));
                    }
                    return Ok(total);
                }
            };
            if let Some(head) = &mut preamble {
                match head
                    .push(&chunk)
                    .map_err(|m| error(io::ErrorKind::InvalidData, m))?
                {
                    Some(first) => {
                        chunk = first;
                        preamble = None;
                    }
                    None => continue,
                }
            }
            while !chunk.is_empty() {
                let rest = if chunk.len() > FILE_CHUNK {
                    chunk.split_off(FILE_CHUNK)
                } else {
                    Vec::new()
                };
                total += chunk.len() as u64;
                if to.send(chunk).await.is_err() {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        format!("reading {path}: the receiver went away"),
                    ));
                }
                chunk = rest;
            }
        }
    }

    async fn write(&self, path: &str, len: Option<u64>, mut from: Chunks) -> io::Result<u64> {
        check_path(path)?;
        let mut stream = self.start(&write_script(path), Op::Write, path).await?;
        let host = stream.label().to_string();
        let failed = |end: Result<StreamEnd, String>| match end {
            Ok(end) => failure(Op::Write, path, &host, &end).into_io(io::ErrorKind::Other),
            Err(m) => FileError::plain(Op::Write, path, &host, m)
                .into_io(io::ErrorKind::ConnectionAborted),
        };
        let mut total = 0u64;
        loop {
            let chunk = tokio::select! {
                biased;
                end = end_of(&mut stream) => {
                    // The script ended before its input did: a refusal.
                    return Err(match end {
                        Ok(e) if e.status == ExitStatus::Code(0) => failed(Err(
                            "the remote command ended before the file was written".into(),
                        )),
                        other => failed(other),
                    });
                }
                chunk = from.recv() => chunk,
            };
            let chunk = match chunk {
                None => break,
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    // `cat` ends with what it got; returned once it has,
                    // so nothing on the target changes afterwards.
                    settle(&mut stream).await;
                    return Err(io::Error::new(
                        e.kind(),
                        format!("writing {path} on {host}: the data stopped: {e}"),
                    ));
                }
            };
            total += chunk.len() as u64;
            if let Some(n) = len.filter(|&n| total > n) {
                settle(&mut stream).await;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("writing {path} on {host}: more than the {n} bytes announced"),
                ));
            }
            if chunk.is_empty() {
                continue;
            }
            if stream.write(chunk).await.is_err() {
                return Err(failed(end_of(&mut stream).await));
            }
        }
        if let Some(n) = len.filter(|&n| total != n) {
            settle(&mut stream).await;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("writing {path} on {host}: {total} of the {n} bytes announced arrived"),
            ));
        }
        if let Err(m) = stream.eof() {
            return Err(failed(Err(m)));
        }
        match end_of(&mut stream).await {
            Ok(end) if end.status == ExitStatus::Code(0) => Ok(total),
            other => Err(failed(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> std::process::Output {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(login_command(script))
            .output()
            .unwrap()
    }

    #[test]
    fn paths_with_any_byte_reach_the_script_intact() {
        for path in ["/tmp/a b/it's\\$x`", "/tmp/new\nline\n", "/tmp/tab\there%s"] {
            let out = sh(&format!("{}; printf %s \"$p\"", assign_path(path)));
            assert_eq!(String::from_utf8_lossy(&out.stdout), path);
        }
    }

    /// The scripts under each sh this machine has (dash, bash, busybox
    /// ash): bytes both ways, modes, and the errno of each refusal.
    #[test]
    fn scripts_work_under_every_sh() {
        use std::io::Write as _;
        use std::os::unix::fs::PermissionsExt;
        let shells: Vec<Vec<&str>> = [
            vec!["/bin/dash"],
            vec!["/bin/bash", "--posix"],
            vec!["/usr/bin/busybox", "sh"],
        ]
        .into_iter()
        .filter(|argv| std::path::Path::new(argv[0]).exists())
        .collect();
        let run = |argv: &[&str], script: &str, stdin: &[u8]| {
            let mut child = std::process::Command::new(argv[0])
                .args(&argv[1..])
                .arg("-c")
                .arg(script)
                .env("LANG", "de_DE.UTF-8")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut input = child.stdin.take().unwrap();
            let _ = input.write_all(stdin); // a refusal reads nothing
            drop(input);
            child.wait_with_output().unwrap()
        };
        let errno_of = |out: &std::process::Output| {
            let end = StreamEnd {
                status: ExitStatus::Code(out.status.code().unwrap_or(-1)),
                stderr: out.stderr.clone(),
            };
            failure(Op::Write, "/x", "h", &end)
                .errno
                .and_then(|e| e.raw_os_error())
        };
        let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        for argv in shells {
            let dir = std::env::temp_dir().join(format!(
                "execkit-files-{}-{}",
                std::process::id(),
                argv.join("-").replace('/', "_")
            ));
            let d = dir.to_str().unwrap();
            let file = format!("{d}/new/sub/f.bin");
            let out = run(&argv, &write_script(&file), &bytes);
            assert!(out.status.success(), "{argv:?}: {out:?}");
            assert_eq!(std::fs::read(&file).unwrap(), bytes, "{argv:?}");
            let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode(&file), 0o644, "{argv:?}");
            assert_eq!(mode(&format!("{d}/new")), 0o755, "{argv:?}");
            let out = run(&argv, &read_script(&file), b"");
            assert!(out.status.success(), "{argv:?}: {out:?}");
            assert_eq!(out.stdout[..DATA_MARK.len()], *DATA_MARK, "{argv:?}");
            assert_eq!(out.stdout[DATA_MARK.len()..], bytes[..], "{argv:?}");
            // Existing: truncated, mode kept.
            std::fs::set_permissions(&file, PermissionsExt::from_mode(0o600)).unwrap();
            let out = run(&argv, &write_script(&file), b"short");
            assert!(out.status.success(), "{argv:?}: {out:?}");
            assert_eq!(std::fs::read(&file).unwrap(), b"short");
            assert_eq!(mode(&file), 0o600, "{argv:?}");
            for (script, errno) in [
                (read_script(&format!("{d}/new")), libc::EISDIR),
                (write_script(&format!("{d}/new")), libc::EISDIR),
                (read_script(&format!("{d}/missing")), libc::ENOENT),
                (read_script(&format!("{d}/no/such/dir/f")), libc::ENOENT),
                (read_script(&format!("{file}/x")), libc::ENOTDIR),
                (write_script(&format!("{file}/x/y")), libc::ENOTDIR),
                (read_script("/dev/null"), libc::EINVAL),
            ] {
                let out = run(&argv, &script, b"x");
                assert!(!out.status.success(), "{argv:?} {script}");
                assert_eq!(errno_of(&out), Some(errno), "{argv:?} {script}: {out:?}");
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn what_a_login_shell_prints_before_the_marker_is_dropped() {
        let mut p = Preamble::default();
        assert_eq!(p.push(b"Welcome!\nexeckit-fil").unwrap(), None);
        assert_eq!(p.push(b"es-data\n\x00\x01").unwrap().unwrap(), b"\x00\x01");
        let mut p = Preamble::default();
        assert_eq!(p.push(DATA_MARK).unwrap().unwrap(), b"");
        let mut p = Preamble::default();
        assert!(p.push(&vec![b'x'; MAX_PREAMBLE + 1]).is_err());
    }

    #[test]
    fn a_failure_is_named_by_its_errno() {
        let end = |stderr: &str| StreamEnd {
            status: ExitStatus::Code(1),
            stderr: stderr.as_bytes().to_vec(),
        };
        let e = failure(Op::Read, "/x", "h:22", &end("execkit-files: ENOENT \n"));
        assert_eq!(
            e.errno.as_ref().and_then(io::Error::raw_os_error),
            Some(libc::ENOENT)
        );
        let io = e.into_io(io::ErrorKind::Other);
        assert_eq!(execkit_core::raw::file_errno(&io), Some(libc::ENOENT));
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
        assert!(
            io.to_string()
                .starts_with("reading /x on h:22: No such file"),
            "{io}"
        );
        for (line, errno) in [
            ("sh: 1: cannot create /d/x: Permission denied", libc::EACCES),
            ("sh: can't create /x: Read-only file system", libc::EROFS),
            ("cat: write error: No space left on device", libc::ENOSPC),
            (
                "mkdir: can't create directory '/a': Permission denied",
                libc::EACCES,
            ),
        ] {
            let e = failure(Op::Write, "/x", "h", &end(&format!("noise\n{line}\n")));
            assert_eq!(
                e.errno.and_then(|e| e.raw_os_error()),
                Some(errno),
                "{line}"
            );
        }
        let e = failure(Op::Write, "/x", "h", &end("something odd\n"));
        assert!(e.errno.is_none());
        assert_eq!(e.reason, "something odd");
    }
}
