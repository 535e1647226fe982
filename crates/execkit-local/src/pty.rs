//! Spawning a shell on a fresh PTY and moving bytes to and from it.
//!
//! Everything the child needs (argv, envp, cwd) is built before the fork; the
//! child only makes async-signal-safe calls: reset signal dispositions and
//! mask (a parent started from a background job has SIGINT ignored, and Rust
//! ignores SIGPIPE), set terminal modes, chdir, close stray fds, exec. A
//! failed exec is reported through a CLOEXEC pipe as (stage, errno).

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use execkit_core::{
    raw::{self, ExitStatus, ShellEvent, ShellProcess, SpawnSpec},
    Size, TransportError,
};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::pty::{forkpty, ForkptyResult, Winsize};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::contain::{self, Contained, Prepared};

const STAGE_CHDIR: u32 = 1;
const STAGE_EXEC: u32 = 2;

/// Bytes asked of the pty per read.
const READ_CHUNK: usize = 16 * 1024;

/// A shell process on a PTY master we own.
#[derive(Debug)]
pub struct PtyShell {
    target: String,
    pid: Pid,
    master: AsyncFd<OwnedFd>,
    pidfd: AsyncFd<OwnedFd>,
    marker_entry: String,
    state: Mutex<State>,
    /// The cgroup, temp dir and policy of a contained shell.
    contained: Option<Contained>,
}

#[derive(Debug, Default)]
struct State {
    /// Set once the shell was reaped.
    exit: Option<ExitStatus>,
    /// No more output will come from the master.
    drained: bool,
}

fn cstring(bytes: &[u8], what: &str) -> Result<CString, TransportError> {
    CString::new(bytes).map_err(|_| TransportError::Spawn {
        target: "local".into(),
        reason: format!("{what} contains a NUL byte"),
    })
}

impl PtyShell {
    // Long on purpose: argv, envp and cwd are all built here, before the
    // fork, so the child only makes async-signal-safe calls.
    pub async fn spawn(
        target: &str,
        shell_path: &Path,
        spec: &SpawnSpec,
        policy: Option<&execkit_core::Containment>,
    ) -> Result<Self, TransportError> {
        let shell_str = shell_path.to_string_lossy().into_owned();
        let argv: Vec<CString> = raw::startup_argv(&shell_str, spec.load_profile)
            .iter()
            .map(|a| cstring(a.as_bytes(), "shell argument"))
            .collect::<Result<_, _>>()?;
        let path = cstring(shell_path.as_os_str().as_bytes(), "shell path")?;

        let mut env: Vec<CString> = Vec::new();
        for (k, v) in std::env::vars_os() {
            let key = k.as_bytes();
            if raw::STRIP_ENV.iter().any(|s| s.as_bytes() == key)
                || spec.env.iter().any(|(sk, _)| sk.as_bytes() == key)
            {
                continue;
            }
            let mut kv = key.to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            if let Ok(c) = CString::new(kv) {
                env.push(c);
            }
        }
        for (k, v) in &spec.env {
            if k.is_empty() || k.contains('=') {
                return Err(TransportError::Spawn {
                    target: target.into(),
                    reason: format!("invalid environment variable name `{k}`"),
                });
            }
            env.push(cstring(format!("{k}={v}").as_bytes(), "environment")?);
        }
        let cwd = match &spec.cwd {
            Some(c) => Some(cstring(
                OsStr::as_bytes(c.as_os_str()),
                "working directory",
            )?),
            None => None,
        };
        let refuse = |reason: String| TransportError::Spawn {
            target: target.into(),
            reason,
        };
        let (prepared, contained) = match policy {
            None => (None, None),
            Some(policy) => {
                let cwd = match &spec.cwd {
                    Some(c) => c.clone(),
                    None => std::env::current_dir()
                        .map_err(|e| refuse(format!("the current directory: {e}")))?,
                };
                let (prepared, contained, tmp) = Prepared::new(policy, &spec.marker, &cwd)
                    .map_err(|e| refuse(format!("cannot contain the shell: {e}")))?;
                env.retain(|kv| !kv.as_bytes().starts_with(b"TMPDIR="));
                env.push(cstring(
                    format!("TMPDIR={}", tmp.display()).as_bytes(),
                    "environment",
                )?);
                (Some(prepared), Some(contained))
            }
        };
        let winsize = Winsize {
            ws_row: spec.size.rows,
            ws_col: spec.size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };

        let child = ChildSpec {
            path,
            argv,
            env,
            cwd,
            prepared,
        };
        let target_s = target.to_string();
        let (pid, master) = tokio::task::spawn_blocking(move || fork_shell(&child, &winsize))
            .await
            .map_err(|e| TransportError::io("spawn", io::Error::other(e)))?
            .map_err(|(stage, err)| TransportError::Spawn {
                target: target_s.clone(),
                reason: match stage {
                    STAGE_CHDIR => format!(
                        "cannot change to the working directory {}: {err}",
                        spec.cwd.as_deref().unwrap_or(Path::new("?")).display()
                    ),
                    STAGE_EXEC => format!("cannot execute {shell_str}: {err}"),
                    s => match contain::stage_text(s) {
                        Some(what) => format!("cannot contain the shell ({what}): {err}"),
                        None => format!("cannot create a pty: {err}"),
                    },
                },
            })?;

        let pidfd =
            pidfd_open(pid).map_err(|e| TransportError::io("pidfd_open (needs Linux 5.3+)", e))?;
        // Readable only: a master registered for writing too wakes the
        // runtime every time the shell drains its input (an EPOLLOUT edge
        // per command). Writes go straight out and register only when the
        // pty is full (see `write`).
        let master = register(master, Interest::READABLE, "registering the pty")?;
        let pidfd = register(pidfd, Interest::READABLE, "registering the pidfd")?;
        Ok(PtyShell {
            target: target.to_string(),
            pid,
            master,
            pidfd,
            marker_entry: spec.marker_entry(),
            state: Mutex::new(State::default()),
            contained,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reaps the shell if it has exited.
    fn try_reap(&self) -> Option<ExitStatus> {
        let mut st = self.lock();
        if st.exit.is_some() {
            return st.exit;
        }
        let status = match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => ExitStatus::Code(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => ExitStatus::Signal(sig as i32),
            Ok(_) => return None,
            Err(Errno::ECHILD) => ExitStatus::Unknown,
            Err(_) => return None,
        };
        st.exit = Some(status);
        Some(status)
    }

    /// One non-blocking read of the master. `Ok(None)`: would block.
    fn read_now(&self) -> io::Result<Option<Vec<u8>>> {
        let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        // SAFETY: read(2) writes at most READ_CHUNK bytes into the spare
        // capacity; the length is set to what it reports, no more.
        let n = unsafe {
            libc::read(
                self.master.get_ref().as_raw_fd(),
                buf.as_mut_ptr().cast(),
                READ_CHUNK,
            )
        };
        if n < 0 {
            return match Errno::last() {
                Errno::EAGAIN => Ok(None),
                Errno::EIO => Ok(Some(Vec::new())), // slave closed everywhere
                e => Err(e.into()),
            };
        }
        // SAFETY: the kernel initialised the first n bytes.
        unsafe { buf.set_len(n as usize) };
        Ok(Some(buf))
    }

    fn kill_all(&self) {
        let _ = killpg(self.pid, Signal::SIGKILL);
        if let Some(c) = &self.contained {
            c.cgroup.kill_all();
        }
        crate::procs::kill_matching(&self.marker_entry, &[]);
    }
}

#[async_trait]
impl ShellProcess for PtyShell {
    async fn write(&self, data: &[u8]) -> Result<(), TransportError> {
        let fd = self.master.get_ref();
        let mut off = 0;
        // Registered for writing only while the pty is full (long commands).
        let mut writer: Option<AsyncFd<OwnedFd>> = None;
        while off < data.len() {
            match nix::unistd::write(fd, &data[off..]) {
                Ok(n) => off += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    if writer.is_none() {
                        let dup = fd
                            .try_clone()
                            .map_err(|e| TransportError::io("duplicating the pty", e))?;
                        writer = Some(register(dup, Interest::WRITABLE, "registering the pty")?);
                    }
                    let w = writer.as_ref().expect("registered above");
                    let mut guard = w
                        .writable()
                        .await
                        .map_err(|e| TransportError::io("waiting for the pty", e))?;
                    // Readiness is re-armed by the next EAGAIN, not trusted.
                    guard.clear_ready();
                }
                Err(Errno::EIO) => {
                    return Err(TransportError::Lost(format!(
                        "the shell on {} has gone",
                        self.target
                    )))
                }
                Err(e) => return Err(TransportError::io("writing to the pty", e.into())),
            }
        }
        Ok(())
    }

    async fn read(&self) -> ShellEvent {
        loop {
            {
                let st = self.lock();
                if let (Some(exit), true) = (st.exit, st.drained) {
                    return ShellEvent::Exited(exit);
                }
                if st.exit.is_some() {
                    drop(st);
                    // The shell is gone: hand over what it left in the pty,
                    // without waiting for background jobs holding it open.
                    match self.read_now() {
                        Ok(Some(b)) if !b.is_empty() => return ShellEvent::Output(b),
                        _ => {
                            self.lock().drained = true;
                            continue;
                        }
                    }
                }
            }
            let master_open = !self.lock().drained;
            tokio::select! {
                guard = self.master.readable(), if master_open => {
                    let Ok(mut guard) = guard else { continue };
                    match guard.try_io(|_| self.read_now().and_then(|r| r.ok_or_else(|| io::ErrorKind::WouldBlock.into()))) {
                        Ok(Ok(b)) if b.is_empty() => {
                            // EOF on the master: only exit is left to report.
                            self.lock().drained = true;
                        }
                        Ok(Ok(b)) => {
                            // A short read drained the pty: skip the read
                            // that would only say EAGAIN (new output is a
                            // new readiness event).
                            if b.len() < READ_CHUNK {
                                guard.clear_ready();
                            }
                            return ShellEvent::Output(b);
                        }
                        Ok(Err(e)) => return ShellEvent::Lost(format!("reading the pty of {} failed: {e}", self.target)),
                        Err(_would_block) => {}
                    }
                }
                guard = self.pidfd.readable() => {
                    if let Ok(mut g) = guard {
                        if self.try_reap().is_none() {
                            g.clear_ready();
                        }
                    }
                }
            }
        }
    }

    async fn resize(&self, size: Size) -> Result<(), TransportError> {
        let ws = libc::winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        let r = unsafe { libc::ioctl(self.master.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if r < 0 {
            return Err(TransportError::io(
                "resizing the pty",
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    async fn kill_matching(&self, entry: &str) -> Result<(), TransportError> {
        let entry = entry.to_string();
        tokio::task::spawn_blocking(move || crate::procs::kill_matching(&entry, &[]))
            .await
            .map_err(|e| TransportError::io("cleanup", io::Error::other(e)))?;
        Ok(())
    }

    async fn run_script(&self, script: &str) -> Option<Result<String, TransportError>> {
        Some(crate::procs::run_script(script).await)
    }

    fn containment(&self) -> Option<String> {
        self.contained.as_ref().map(Contained::describe)
    }

    fn command_begins(&self) {
        if let Some(c) = &self.contained {
            c.command_begins();
        }
    }

    async fn kill_since_command_began(&self) -> Option<Result<usize, TransportError>> {
        let c = self.contained.as_ref()?;
        Some(Ok(c.kill_since_command_began(self.pid.as_raw())))
    }

    fn limit_note(&self) -> Option<String> {
        self.contained.as_ref()?.limit_note()
    }

    async fn terminate(&self) -> Result<(), TransportError> {
        if self.lock().exit.is_none() {
            let _ = killpg(self.pid, Signal::SIGKILL);
        }
        if let Some(c) = &self.contained {
            c.cgroup.kill_all();
        }
        let entry = self.marker_entry.clone();
        let _ = tokio::task::spawn_blocking(move || crate::procs::kill_matching(&entry, &[])).await;
        let wait = async {
            while self.try_reap().is_none() {
                if let Ok(mut g) = self.pidfd.readable().await {
                    if self.try_reap().is_none() {
                        g.clear_ready();
                    }
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .is_err()
        {
            return Err(TransportError::io(
                "terminating the shell",
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the shell did not die after SIGKILL",
                ),
            ));
        }
        self.lock().drained = true;
        Ok(())
    }
}

impl Drop for PtyShell {
    fn drop(&mut self) {
        if self.lock().exit.is_some() {
            return;
        }
        self.kill_all();
        for _ in 0..200 {
            if self.try_reap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        tracing::warn!(pid = self.pid.as_raw(), "shell not reaped after SIGKILL");
    }
}

/// What the child execs, prepared before the fork.
struct ChildSpec {
    path: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: Option<CString>,
    prepared: Option<Prepared>,
}

/// Forks the shell onto a new PTY; returns its pid and the master, or the
/// stage and error that stopped it.
fn fork_shell(spec: &ChildSpec, winsize: &Winsize) -> Result<(Pid, OwnedFd), (u32, io::Error)> {
    let mut argv: Vec<*const libc::c_char> = spec.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = spec.env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let cwd = spec.cwd.as_ref().map(|c| c.as_ptr());

    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| (0, e.into()))?;
    let err_w_raw = err_w.as_raw_fd();

    // SAFETY: the child only calls async-signal-safe functions on memory
    // prepared above, then execs or _exits.
    let forked = unsafe { forkpty(Some(winsize), None) }.map_err(|e| (0, io::Error::from(e)))?;
    match forked {
        // SAFETY: in the forked child; child_exec only makes
        // async-signal-safe calls on the argv/envp prepared before the fork.
        ForkptyResult::Child => unsafe {
            child_exec(
                spec.path.as_ptr(),
                &argv,
                &envp,
                cwd,
                spec.prepared.as_ref(),
                err_w_raw,
            )
        },
        ForkptyResult::Parent { child, master } => {
            drop(err_w);
            let _ = fcntl(&master, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
            let flags = fcntl(&master, FcntlArg::F_GETFL).map_err(|e| (0, e.into()))?;
            fcntl(
                &master,
                FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
            )
            .map_err(|e| (0, e.into()))?;
            let mut report = [0u8; 8];
            let mut got = 0;
            while got < report.len() {
                match nix::unistd::read(&err_r, &mut report[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(Errno::EINTR) => continue,
                    Err(_) => break,
                }
            }
            if got == report.len() {
                let stage = u32::from_ne_bytes(report[..4].try_into().unwrap_or_default());
                let errno = i32::from_ne_bytes(report[4..].try_into().unwrap_or_default());
                let _ = waitpid(child, None);
                return Err((stage, io::Error::from_raw_os_error(errno)));
            }
            Ok((child, master))
        }
    }
}

/// Runs in the forked child: never returns.
unsafe fn child_exec(
    path: *const libc::c_char,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    cwd: Option<*const libc::c_char>,
    prepared: Option<&Prepared>,
    err_fd: RawFd,
) -> ! {
    // SAFETY: the caller is the forked child (see `spawn_child`); every
    // call below is async-signal-safe and every pointer was prepared (and
    // NUL-terminated) by the parent before the fork.
    unsafe {
        // Signal dispositions and mask back to defaults.
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());

        // Terminal: no echo, byte-exact output, no XON/XOFF; keep ICANON
        // and ISIG so Ctrl-C reaches the foreground command.
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut t) == 0 {
            t.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK | libc::ECHONL | libc::ECHOCTL);
            t.c_oflag &= !libc::ONLCR;
            t.c_iflag &= !(libc::IXON | libc::IXOFF);
            t.c_iflag |= libc::IUTF8;
            libc::tcsetattr(0, libc::TCSANOW, &t);
        }

        // Contained: cgroup, mounts, Landlock, seccomp (in that order: the
        // cgroup first, so nothing escapes its count).
        if let Some(p) = prepared {
            if let Err((stage, errno)) = p.apply_in_child() {
                *libc::__errno_location() = errno;
                report(err_fd, stage);
            }
        }

        if let Some(dir) = cwd {
            if libc::chdir(dir) != 0 {
                report(err_fd, STAGE_CHDIR);
            }
        }

        // Close every inherited fd but stdio and the error pipe.
        if err_fd > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, (err_fd - 1) as u32, 0u32);
        }
        if libc::syscall(libc::SYS_close_range, (err_fd + 1) as u32, u32::MAX, 0u32) != 0 {
            for fd in (err_fd + 1)..4096 {
                libc::close(fd);
            }
        }

        libc::execve(path, argv.as_ptr(), envp.as_ptr());
        report(err_fd, STAGE_EXEC);
    }
}

/// Writes (stage, errno) to the error pipe and exits the child.
unsafe fn report(err_fd: RawFd, stage: u32) -> ! {
    // SAFETY: errno is this thread's; write and _exit are async-signal-safe
    // and `buf` lives on this stack.
    unsafe {
        let errno = *libc::__errno_location();
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&stage.to_ne_bytes());
        buf[4..].copy_from_slice(&errno.to_ne_bytes());
        libc::write(err_fd, buf.as_ptr().cast(), buf.len());
        libc::_exit(127);
    }
}

fn register(
    fd: OwnedFd,
    interest: Interest,
    what: &str,
) -> Result<AsyncFd<OwnedFd>, TransportError> {
    // SAFETY: an OwnedFd is a valid open fd that stays the same until dropped.
    unsafe { AsyncFd::register_with_interest(fd, interest) }
        .map_err(|e| TransportError::io(what, io::Error::other(e.to_string())))
}

fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success it returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by the kernel and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
