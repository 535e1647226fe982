//! Finding and killing processes by an environment entry, via `/proc`.

use std::fs;

use execkit_core::TransportError;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// PIDs of processes whose initial environment holds exactly `entry`.
pub fn find_matching(entry: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needle = entry.as_bytes();
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
        if env.split(|&b| b == 0).any(|e| e == needle) {
            pids.push(pid);
        }
    }
    pids
}

/// SIGKILLs every process whose environment holds `entry` (except `spare`
/// and this process), in rounds until none is left, so children forked
/// during a scan are caught too. Returns how many were killed.
pub fn kill_matching(entry: &str, spare: &[i32]) -> usize {
    let mut killed = 0;
    for _ in 0..10 {
        let pids: Vec<i32> = find_matching(entry)
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
