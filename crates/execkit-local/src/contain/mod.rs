//! Contained shells: everything a [`Containment`] asks for is prepared in
//! the parent ([`Prepared::new`]: the cgroup made, the Landlock ruleset
//! built, the seccomp program compiled, paths turned into C strings) and
//! applied in the child between fork and exec with raw syscalls only
//! ([`Prepared::apply_in_child`]), so the shell and everything it starts
//! inherit it. What the machine cannot give is an error before the fork:
//! a session is never run less contained than asked.
//!
//! - writes: Landlock (ABI 3+: reads and execution anywhere, every write
//!   right only beneath the workspace, the private temp dir and a few
//!   devices; on ABI 6+ also no signal to, and no abstract Unix socket of,
//!   a process outside the sandbox); `.git` and `readonly=` paths inside a writable workspace
//!   are bind-mounted read-only in a mount namespace of the shell's own
//!   (Landlock cannot take back a right below a granted directory);
//! - network: a seccomp filter failing `socket(2)` for every family but
//!   `AF_UNIX` (and `io_uring_setup`, which could open sockets past it)
//!   with `EACCES`;
//! - kill and limits: a cgroup per shell ([`cgroup`]).

pub(crate) mod cgroup;
mod filter;
mod rules;

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use execkit_core::{Containment, Sandbox};

pub(crate) use cgroup::Cgroup;

/// Prefix of the private temp dirs' names (then the marker and the shell's
/// number).
pub(crate) const TMP_PREFIX: &str = "execkit-sandbox-";

/// Stages a contained child reports through the error pipe.
pub(crate) const STAGE_CGROUP: u32 = 10;
pub(crate) const STAGE_MOUNT: u32 = 11;
pub(crate) const STAGE_LANDLOCK: u32 = 12;
pub(crate) const STAGE_SECCOMP: u32 = 13;

/// What the child applies, built before the fork.
pub(crate) struct Prepared {
    cgroup_fds: Vec<i32>,
    /// Paths to bind read-only onto themselves in a new mount namespace.
    read_only: Vec<CString>,
    /// For a user without CAP_SYS_ADMIN: the `uid_map` and `gid_map` lines
    /// of a user namespace of its own (its ids mapped to themselves), made
    /// with the mount namespace.
    id_maps: Option<(CString, CString)>,
    landlock: Option<OwnedFd>,
    seccomp: Option<seccompiler::BpfProgram>,
}

/// What a contained shell keeps: its cgroup, its private temp dir, the
/// policy, and the processes that existed when the last command began.
#[derive(Debug)]
pub(crate) struct Contained {
    pub(crate) cgroup: Cgroup,
    tmp: PathBuf,
    policy: Containment,
    before_command: Mutex<Vec<i32>>,
}

impl Contained {
    /// The policy as target parameters.
    pub(crate) fn describe(&self) -> String {
        self.policy.to_string()
    }

    pub(crate) fn command_begins(&self) {
        *self
            .before_command
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = self.cgroup.pids();
    }

    /// Kills what appeared since the command began (not the shell).
    pub(crate) fn kill_since_command_began(&self, shell: i32) -> usize {
        let mut keep = self
            .before_command
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        keep.push(shell);
        self.cgroup.kill_except(&keep)
    }

    pub(crate) fn limit_note(&self) -> Option<String> {
        let (oom, refused) = self.cgroup.limit_events();
        let mut notes = Vec::new();
        if oom > 0 {
            notes.push(format!(
                "the session's memory limit ({}) was reached: the kernel killed {oom} process(es)",
                execkit_core::contain::format_size(self.policy.memory.unwrap_or(0))
            ));
        }
        if refused > 0 {
            notes.push(format!(
                "the session's process limit ({}) was reached: {refused} fork(s) refused",
                self.policy.pids.unwrap_or(0)
            ));
        }
        (!notes.is_empty()).then(|| notes.join("; "))
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        self.cgroup.kill_all();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

impl Prepared {
    /// Prepares `policy` for a shell of session `marker` starting in `cwd`:
    /// returns what the child applies, what the shell object keeps, and the
    /// temp dir to hand the shell as `TMPDIR`. Errors name what is missing.
    pub(crate) fn new(
        policy: &Containment,
        marker: &str,
        cwd: &Path,
    ) -> Result<(Prepared, Contained, PathBuf), String> {
        static SHELLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SHELLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut policy = policy.clone();
        let sandbox = policy.sandbox.unwrap_or(Sandbox::Off);
        if sandbox == Sandbox::WorkspaceWrite {
            let ws = policy.workspace_or(cwd).to_path_buf();
            let ws = ws
                .canonicalize()
                .map_err(|e| format!("workspace {}: {e}", ws.display()))?;
            if !ws.is_dir() {
                return Err(format!("workspace {} is not a directory", ws.display()));
            }
            policy.workspace = Some(ws);
        }
        // Recorded as in force: the network rule a sandbox implies.
        policy.network = Some(policy.network_allowed());
        let cgroup = Cgroup::create(marker, n, policy.memory, policy.pids)?;
        let tmp = std::env::temp_dir().join(format!("{TMP_PREFIX}{marker}-{n}"));
        std::fs::create_dir(&tmp)
            .map_err(|e| format!("private temp dir {}: {e}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| format!("private temp dir {}: {e}", tmp.display()))?;
        let contained = Contained {
            cgroup,
            tmp: tmp.clone(),
            policy: policy.clone(),
            before_command: Mutex::new(Vec::new()),
        };
        let mut read_only = Vec::new();
        let mut id_maps = None;
        let landlock = match sandbox {
            Sandbox::Off => None,
            _ => {
                let mut writable = vec![tmp.clone()];
                if let Some(ws) = policy
                    .workspace
                    .as_ref()
                    .filter(|_| sandbox == Sandbox::WorkspaceWrite)
                {
                    writable.push(ws.clone());
                    let mut keep = vec![PathBuf::from(".git")];
                    keep.extend(policy.read_only.iter().cloned());
                    for p in keep {
                        let full = ws.join(&p);
                        if let Ok(real) = full.canonicalize() {
                            read_only.push(
                                CString::new(real.as_os_str().as_bytes())
                                    .map_err(|_| format!("{} holds a NUL byte", real.display()))?,
                            );
                        }
                    }
                    if !read_only.is_empty() {
                        id_maps = own_user_namespace();
                        if let Some(why) = mount_ns_missing() {
                            return Err(format!(
                                "keeping {} read-only inside the workspace needs a mount namespace: {why}",
                                read_only
                                    .iter()
                                    .map(|c| c.to_string_lossy().into_owned())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ));
                        }
                    }
                }
                Some(rules::ruleset(&writable)?)
            }
        };
        let seccomp = if policy.network_allowed() {
            None
        } else {
            Some(filter::no_network()?)
        };
        let prepared = Prepared {
            cgroup_fds: contained.cgroup.join_fds(),
            read_only,
            id_maps,
            landlock,
            seccomp,
        };
        Ok((prepared, contained, tmp))
    }

    /// Applies everything in the forked child; `Err((stage, errno))` on
    /// the first step that fails.
    ///
    /// # Safety
    /// Only in the child between fork and exec: makes raw syscalls on
    /// memory prepared before the fork, allocates nothing.
    pub(crate) unsafe fn apply_in_child(&self) -> Result<(), (u32, i32)> {
        let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        // SAFETY: plain syscalls on fds and C strings made before the fork.
        unsafe {
            for &fd in &self.cgroup_fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err((STAGE_CGROUP, errno()));
                }
            }
            if !self.read_only.is_empty() {
                match &self.id_maps {
                    None => {
                        if libc::unshare(libc::CLONE_NEWNS) != 0 {
                            return Err((STAGE_MOUNT, errno()));
                        }
                    }
                    Some((uid_map, gid_map)) => {
                        // Its own ids mapped to themselves: nothing gained
                        // outside, enough to mount inside.
                        if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0
                            || !write_all(c"/proc/self/setgroups", c"deny")
                            || !write_all(c"/proc/self/uid_map", uid_map)
                            || !write_all(c"/proc/self/gid_map", gid_map)
                        {
                            return Err((STAGE_MOUNT, errno()));
                        }
                    }
                }
                let root = c"/";
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err((STAGE_MOUNT, errno()));
                }
                for p in &self.read_only {
                    if libc::mount(
                        p.as_ptr(),
                        p.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ) != 0
                        || libc::mount(
                            std::ptr::null(),
                            p.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                            std::ptr::null(),
                        ) != 0
                    {
                        return Err((STAGE_MOUNT, errno()));
                    }
                }
            }
            if let Some(fd) = &self.landlock {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0u32) != 0
                {
                    return Err((STAGE_LANDLOCK, errno()));
                }
            }
            if let Some(prog) = &self.seccomp {
                if seccompiler::apply_filter(prog).is_err() {
                    return Err((STAGE_SECCOMP, errno()));
                }
            }
        }
        Ok(())
    }
}

/// Writes all of `text` to the file at `path` (open, write, close: async-
/// signal-safe); false on any failure, errno set.
///
/// # Safety
/// Raw syscalls on NUL-terminated strings.
unsafe fn write_all(path: &std::ffi::CStr, text: &std::ffi::CStr) -> bool {
    // SAFETY: the caller passes valid C strings; the fd is closed here.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let bytes = text.to_bytes();
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        libc::close(fd);
        n == bytes.len() as isize
    }
}

/// For a user without CAP_SYS_ADMIN, the id maps of a user namespace of
/// its own; `None` for root (it mounts in a plain mount namespace).
fn own_user_namespace() -> Option<(CString, CString)> {
    // SAFETY: getuid, geteuid and getgid cannot fail.
    let (euid, uid, gid) = unsafe { (libc::geteuid(), libc::getuid(), libc::getgid()) };
    if euid == 0 {
        return None;
    }
    let line = |id: u32| CString::new(format!("{id} {id} 1")).expect("digits have no NUL");
    Some((line(uid), line(gid)))
}

/// Why this process cannot give a shell its own mount namespace, if so:
/// root can; another user needs unprivileged user namespaces (probed in a
/// child, which is how a distribution's switch or an LSM rule shows).
fn mount_ns_missing() -> Option<String> {
    // Root: a plain mount namespace, nothing missing.
    own_user_namespace()?;
    use std::os::unix::process::CommandExt;
    let mut probe = std::process::Command::new("/bin/sh");
    probe.args(["-c", "exit 0"]);
    // SAFETY: unshare(2) in the forked child, before exec; nothing else.
    unsafe {
        probe.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match probe.status() {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("the user namespace probe {s}")),
        Err(e) => Some(format!(
            "unprivileged user namespaces are not allowed here ({e}); run as root, or leave .git out of the workspace"
        )),
    }
}

/// Text for a stage a contained child failed at.
pub(crate) fn stage_text(stage: u32) -> Option<&'static str> {
    Some(match stage {
        STAGE_CGROUP => "joining the session's cgroup",
        STAGE_MOUNT => "making paths read-only in a mount namespace",
        STAGE_LANDLOCK => "entering the Landlock sandbox",
        STAGE_SECCOMP => "installing the network filter",
        _ => return None,
    })
}

/// What this machine supports, one line per protection (for
/// `execkit sandbox-check`): (name, Ok(how) or Err(what is missing)).
pub fn support() -> Vec<(&'static str, Result<String, String>)> {
    let landlock = match rules::abi() {
        Some(v) if v >= rules::SCOPE_ABI => Ok(format!(
            "Landlock ABI {v} (signals and abstract Unix sockets kept inside too)"
        )),
        Some(v) if v >= rules::MIN_ABI => Ok(format!(
            "Landlock ABI {v} (signals to outside processes not scoped: ABI {} needed)",
            rules::SCOPE_ABI
        )),
        Some(v) => Err(format!(
            "Landlock ABI {v}; sandbox=read-only|workspace-write need ABI {} (Linux 6.2+)",
            rules::MIN_ABI
        )),
        None => Err("Landlock is not enabled in this kernel (lsm= boot parameter)".into()),
    };
    let seccomp = filter::no_network().map(|_| {
        "seccomp filter (socket families other than AF_UNIX fail with EACCES)".to_string()
    });
    let kill = match cgroup::exact_kill_missing() {
        None => Ok("a cgroup v2 per session, cgroup.kill".to_string()),
        Some(why) => Err(why),
    };
    let limit = |c: &str| cgroup::controller(c).map(|v| format!("{c} controller (cgroup {v})"));
    let ro = match mount_ns_missing() {
        None => Ok(match own_user_namespace() {
            None => ".git kept read-only by a bind mount in a private mount namespace",
            Some(_) => ".git kept read-only by a bind mount in a private user and mount namespace",
        }
        .to_string()),
        Some(why) => Err(why),
    };
    vec![
        ("sandbox (writes)", landlock),
        ("network=off", seccomp),
        ("exact kill", kill),
        ("memory=", limit("memory")),
        ("pids=", limit("pids")),
        ("read-only .git", ro),
    ]
}
