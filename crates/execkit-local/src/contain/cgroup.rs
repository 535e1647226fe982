//! One cgroup per contained shell: every process the shell starts stays in
//! it whatever it does to its environment, session or process group, so
//! `cgroup.kill` (cgroup v2, Linux 5.14+) ends them all at once, and
//! `cgroup.procs` lists exactly what is left after a timed-out command.
//! Memory and pids limits go on the same v2 cgroup when its parent hands
//! those controllers down, else on a cgroup of the same name in the v1
//! `memory` / `pids` hierarchies (a machine with v1 controllers beside an
//! empty v2 tree, like this project's CI hosts).
//!
//! The shell joins between fork and exec by writing `0` to `cgroup.procs`
//! files opened before the fork (one `write(2)` each: async-signal-safe).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Prefix of the session cgroups' directory names (then the marker).
const PREFIX: &str = "execkit-";

/// A mounted hierarchy: where, and this process's place in it.
#[derive(Debug, Clone)]
struct Hierarchy {
    mount: PathBuf,
    own: PathBuf,
}

impl Hierarchy {
    /// Where this process's cgroup is in the filesystem.
    fn here(&self) -> PathBuf {
        self.mount
            .join(self.own.strip_prefix("/").unwrap_or(&self.own))
    }
}

/// The cgroup2 mount, if any.
fn v2() -> Option<Hierarchy> {
    let mount = mounts().into_iter().find(|(fs, _, _)| fs == "cgroup2")?.1;
    let own = own_path(None)?;
    Some(Hierarchy { mount, own })
}

/// The v1 hierarchy carrying `controller`, if mounted.
fn v1(controller: &str) -> Option<Hierarchy> {
    let mount = mounts()
        .into_iter()
        .find(|(fs, _, opts)| fs == "cgroup" && opts.split(',').any(|o| o == controller))?
        .1;
    let own = own_path(Some(controller))?;
    Some(Hierarchy { mount, own })
}

/// (fstype, mount point, super options) of the cgroup mounts.
fn mounts() -> Vec<(String, PathBuf, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let opts = r.nth(1).unwrap_or("");
            fstype.starts_with("cgroup").then(|| {
                (
                    fstype.to_string(),
                    PathBuf::from(unescape(point)),
                    opts.to_string(),
                )
            })
        })
        .collect()
}

/// mountinfo escapes spaces and the like as `\NNN` (octal).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let n = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(n);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's cgroup path from `/proc/self/cgroup`: the v2 line
/// (`0::PATH`), or the v1 line of `controller`.
fn own_path(controller: Option<&str>) -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let id = parts.next()?;
        let ctrls = parts.next()?;
        let path = parts.next()?;
        let ok = match controller {
            None => id == "0",
            Some(c) => id != "0" && ctrls.split(',').any(|x| x == c),
        };
        ok.then(|| PathBuf::from(path))
    })
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

/// Why the machine cannot give a session its own v2 cgroup with
/// `cgroup.kill`, or `None` when it can (checked by making one).
pub(crate) fn exact_kill_missing() -> Option<String> {
    let Some(h) = v2() else {
        return Some("no cgroup v2 hierarchy is mounted".into());
    };
    // What a session does: make a cgroup here, and find cgroup.kill in it.
    let probe = h
        .here()
        .join(format!("{PREFIX}probe-{}", std::process::id()));
    let made = fs::create_dir(&probe);
    let has = probe.join("cgroup.kill").exists();
    let _ = fs::remove_dir(&probe);
    match made {
        Err(e) => Some(format!(
            "cannot create a cgroup in {}: {e}",
            h.here().display()
        )),
        Ok(()) if !has => Some("this kernel has no cgroup.kill (Linux 5.14+)".into()),
        Ok(()) => None,
    }
}

/// Where a controller can be had: `"v2"`, `"v1"`, or why not.
pub(crate) fn controller(name: &str) -> Result<&'static str, String> {
    if let Some(h) = v2() {
        let avail = fs::read_to_string(h.here().join("cgroup.subtree_control")).unwrap_or_default();
        if avail.split_whitespace().any(|c| c == name) {
            return Ok("v2");
        }
    }
    match v1(name) {
        Some(h) if h.here().is_dir() => Ok("v1"),
        _ => Err(format!(
            "no {name} controller: not handed down in cgroup v2 here, no v1 {name} hierarchy mounted"
        )),
    }
}

/// A session's cgroup(s), removed on drop once empty.
#[derive(Debug)]
pub(crate) struct Cgroup {
    /// The v2 cgroup: membership and the kill.
    dir: PathBuf,
    /// v1 cgroups holding limits the v2 one cannot.
    v1_dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each, open for the child to join.
    join: Vec<OwnedFd>,
    /// The v2 `cgroup.procs`, open for reading (re-read from offset 0:
    /// each read lists the members anew, without an open per command).
    procs: std::fs::File,
    /// Where the kernel counts OOM kills in this session.
    oom_counter: Option<(PathBuf, &'static str)>,
    /// Where the kernel counts forks refused at the pids limit.
    pids_counter: Option<(PathBuf, &'static str)>,
    oom_seen: AtomicU64,
    pids_seen: AtomicU64,
}

impl Cgroup {
    /// Makes the cgroup(s) for a shell of session `marker` (`n`: its
    /// how-manieth shell) with the limits asked for.
    pub(crate) fn create(
        marker: &str,
        n: u64,
        memory: Option<u64>,
        pids: Option<u64>,
    ) -> Result<Cgroup, String> {
        let h = v2().ok_or("exact kill needs cgroup v2, and none is mounted")?;
        let name = format!("{PREFIX}{marker}-{n}");
        let dir = h.here().join(&name);
        fs::create_dir(&dir).map_err(|e| {
            format!(
                "exact kill needs a cgroup of its own: cannot create {}: {e}",
                dir.display()
            )
        })?;
        let procs = fs::File::open(dir.join("cgroup.procs"))
            .map_err(|e| format!("cannot read {}: {e}", dir.join("cgroup.procs").display()))?;
        let mut cg = Cgroup {
            procs,
            dir,
            v1_dirs: Vec::new(),
            join: Vec::new(),
            oom_counter: None,
            pids_counter: None,
            oom_seen: AtomicU64::new(0),
            pids_seen: AtomicU64::new(0),
        };
        if !cg.dir.join("cgroup.kill").exists() {
            return Err(
                "exact kill needs cgroup.kill (Linux 5.14+), which this kernel lacks".into(),
            );
        }
        let controllers = fs::read_to_string(cg.dir.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if let Some(bytes) = memory {
            if has("memory") {
                write(&cg.dir.join("memory.max"), &bytes.to_string())?;
                let swap = cg.dir.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
                cg.oom_counter = Some((cg.dir.join("memory.events"), "oom_kill"));
            } else {
                let d = cg.v1_cgroup("memory", &name)?;
                write(&d.join("memory.limit_in_bytes"), &bytes.to_string())?;
                let memsw = d.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &bytes.to_string())?;
                }
                cg.oom_counter = Some((d.join("memory.oom_control"), "oom_kill"));
            }
        }
        if let Some(n) = pids {
            if has("pids") {
                write(&cg.dir.join("pids.max"), &n.to_string())?;
                cg.pids_counter = Some((cg.dir.join("pids.events"), "max"));
            } else {
                let d = cg.v1_cgroup("pids", &name)?;
                write(&d.join("pids.max"), &n.to_string())?;
                cg.pids_counter = Some((d.join("pids.events"), "max"));
            }
        }
        let mut dirs = vec![cg.dir.clone()];
        dirs.extend(cg.v1_dirs.iter().cloned());
        for d in dirs {
            let procs = d.join("cgroup.procs");
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&procs)
                .map_err(|e| format!("cannot open {}: {e}", procs.display()))?;
            cg.join.push(f.into());
        }
        cg.oom_seen
            .store(cg.count(&cg.oom_counter), Ordering::Relaxed);
        cg.pids_seen
            .store(cg.count(&cg.pids_counter), Ordering::Relaxed);
        Ok(cg)
    }

    fn v1_cgroup(&mut self, controller: &str, name: &str) -> Result<PathBuf, String> {
        let h = v1(controller).ok_or_else(|| {
            format!(
                "the {controller} limit needs the {controller} controller: cgroup v2 does not hand it down here and no v1 {controller} hierarchy is mounted"
            )
        })?;
        let d = h.here().join(name);
        fs::create_dir(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        self.v1_dirs.push(d.clone());
        Ok(d)
    }

    /// The fds the child writes `0` to, in order.
    pub(crate) fn join_fds(&self) -> Vec<i32> {
        self.join.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// The pids in the session's cgroup now.
    pub(crate) fn pids(&self) -> Vec<i32> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 4096];
        let mut len = 0;
        loop {
            match self.procs.read_at(&mut buf[len..], len as u64) {
                Ok(0) => break,
                Ok(n) => {
                    len += n;
                    if len == buf.len() {
                        buf.resize(len * 2, 0);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        buf[..len]
            .split(|&b| b == b'\n')
            .filter_map(|l| std::str::from_utf8(l).ok()?.trim().parse().ok())
            .collect()
    }

    fn count(&self, counter: &Option<(PathBuf, &'static str)>) -> u64 {
        let Some((file, key)) = counter else { return 0 };
        fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == *key).then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0)
    }

    /// New OOM kills and refused forks since the last call.
    pub(crate) fn limit_events(&self) -> (u64, u64) {
        let oom = self.count(&self.oom_counter);
        let pids = self.count(&self.pids_counter);
        let oom_new = oom.saturating_sub(self.oom_seen.swap(oom, Ordering::Relaxed));
        let pids_new = pids.saturating_sub(self.pids_seen.swap(pids, Ordering::Relaxed));
        (oom_new, pids_new)
    }

    /// SIGKILLs every process of the session but those in `keep`, round
    /// after round until none is left (one forking while it is swept dies
    /// in the next round). Returns how many it killed.
    pub(crate) fn kill_except(&self, keep: &[i32]) -> usize {
        let mut killed = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left: Vec<i32> = self
                .pids()
                .into_iter()
                .filter(|p| !keep.contains(p))
                .collect();
            if left.is_empty() || Instant::now() > deadline {
                return killed;
            }
            for pid in left {
                // SAFETY: kill(2) on a pid read from our own cgroup.
                if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                    killed += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Kills everything in the cgroup and waits (up to 5 s) until it is
    /// empty.
    pub(crate) fn kill_all(&self) {
        let _ = fs::write(self.dir.join("cgroup.kill"), "1");
        wait_empty(&self.dir);
    }
}

/// Waits until `dir`'s cgroup has no process left (at most 5 s).
fn wait_empty(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let events = fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
        if !events.lines().any(|l| l == "populated 1") {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.join.clear();
        self.kill_all();
        for d in self.v1_dirs.iter().chain(std::iter::once(&self.dir)) {
            if let Err(e) = fs::remove_dir(d) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove cgroup {}: {e}", d.display());
                }
            }
        }
    }
}

/// Kills and removes the cgroups of session `marker` left by a process
/// that died or exits without dropping its shells (found by name under
/// this process's place in each hierarchy), and their private temp dirs.
pub(crate) fn kill_session(marker: &str) {
    let tmp_prefix = format!("{}{marker}-", super::TMP_PREFIX);
    for e in fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with(&tmp_prefix) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    let prefix = format!("{PREFIX}{marker}-");
    let mut v1s: Vec<PathBuf> = ["memory", "pids"]
        .iter()
        .filter_map(|c| v1(c))
        .map(|h| h.here())
        .collect();
    if let Some(h) = v2() {
        let here = h.here();
        for e in fs::read_dir(&here).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let d = e.path();
                let _ = fs::write(d.join("cgroup.kill"), "1");
                wait_empty(&d);
                let _ = fs::remove_dir(&d);
            }
        }
    }
    for here in v1s.drain(..) {
        for e in fs::read_dir(&here).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_dir(e.path());
            }
        }
    }
}
