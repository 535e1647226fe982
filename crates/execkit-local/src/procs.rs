//! Finding and killing processes by an environment entry, via `/proc`.

use std::collections::HashSet;
use std::fs;

use execkit_core::raw::MARKER_VAR;
use execkit_core::TransportError;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{getpgid, getpgrp, Pid};

/// PIDs of processes (not this one) whose initial environment holds one
/// of `entries` exactly: one pass over `/proc` for all of them.
fn find_matching_any(entries: &HashSet<&[u8]>) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for d in dir.flatten() {
        let Some(pid) = d.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(env) = fs::read(d.path().join("environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|e| entries.contains(e)) {
            pids.push(pid);
        }
    }
    pids
}

/// SIGKILLs every process whose environment holds `entry` (except `spare`
/// and this process), in rounds until none is left, so children forked
/// during a scan are caught too. Returns how many were killed.
pub fn kill_matching(entry: &str, spare: &[i32]) -> usize {
    sweep(&[entry.to_string()], spare, false)
}

/// Ends whole sessions: SIGKILLs every process on this host whose
/// environment carries one of `markers` (`EXECKIT_SID`), and their process
/// groups (a child that cleared its environment stays in its shell's
/// group) — one `/proc` scan per round for all of them. Used when a host
/// shuts down thousands of local sessions at once.
pub fn kill_sessions(markers: &[String]) -> usize {
    let entries: Vec<String> = markers
        .iter()
        .map(|m| format!("{MARKER_VAR}={m}"))
        .collect();
    sweep(&entries, &[], true)
}

/// SIGKILLs every process (except `spare` and this process) whose
/// environment holds one of `entries` and, with `groups`, their process
/// groups (never this process's own), in rounds until none is left (at
/// most 10). Returns how many matching processes were killed.
fn sweep(entries: &[String], spare: &[i32], groups: bool) -> usize {
    let wanted: HashSet<&[u8]> = entries.iter().map(|e| e.as_bytes()).collect();
    let mut killed = 0;
    for _ in 0..10 {
        let pids: Vec<i32> = find_matching_any(&wanted)
            .into_iter()
            .filter(|p| !spare.contains(p))
            .collect();
        if pids.is_empty() {
            break;
        }
        // Stop them all first so none can fork a replacement mid-sweep.
        for &p in &pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGSTOP);
        }
        for &p in &pids {
            if groups {
                if let Ok(pgid) = getpgid(Some(Pid::from_raw(p))) {
                    if pgid.as_raw() > 1 && pgid != getpgrp() {
                        let _ = killpg(pgid, Signal::SIGKILL);
                    }
                }
            }
            if kill(Pid::from_raw(p), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    killed
}

/// Runs `script` with `/bin/sh` on this host (stdin closed, stderr
/// discarded, in its own process group so nothing of it outlives a drop)
/// and returns its stdout.
pub async fn run_script(script: &str) -> Result<String, TransportError> {
    let out = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .process_group(0)
        .output()
        .await
        .map_err(|e| TransportError::io("running a script with /bin/sh", e))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// One sweep kills every marked process and its process group (a child
    /// that cleared its environment included).
    #[test]
    fn sweep_kills_marked_processes_and_their_groups() {
        use std::os::unix::process::CommandExt;
        let marker = format!("sweep{}", std::process::id());
        let mut child = std::process::Command::new("sh")
            .args(["-c", "env -i sleep 301 & sleep 300 & wait"])
            .env(MARKER_VAR, &marker)
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id() as i32;
        // The processes of the group.
        let members = || -> Vec<i32> {
            std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|d| d.file_name().to_str()?.parse::<i32>().ok())
                // SAFETY: getpgid takes a plain pid and touches no memory.
                .filter(|&p| unsafe { libc::getpgid(p) } == pgid)
                .collect()
        };
        // Ready once both sleeps have been exec'd (a child still between
        // fork and exec may not show its environment yet): then the shell
        // and `sleep 300` carry the marker, and the `env -i` one does not.
        let sleeps = || {
            members()
                .into_iter()
                .filter(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim_end() == "sleep")
                })
                .count()
        };
        let t = std::time::Instant::now();
        while sleeps() < 2 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "sleeps did not start"
            );
            std::thread::yield_now();
        }
        assert!(kill_sessions(std::slice::from_ref(&marker)) >= 2);
        child.wait().unwrap();
        let t = std::time::Instant::now();
        while !members().is_empty() {
            assert!(t.elapsed() < Duration::from_secs(10), "group survived");
            std::thread::yield_now();
        }
    }
}
