//! The CLI against a Docker engine, end to end. Sessions on disk:
//! `execkit exec` is `kill -9`ed while `sleep 300` runs in a container (a
//! `docker exec` shell outlives its client), and `execkit gc` — or simply
//! the next run — must kill what it left behind, found by the session
//! record and its marker. Exit statuses: a target naming no one container
//! is a usage error.
//!
//! Needs the container `cargo xtask test` provisions
//! (`EXECKIT_TEST_DOCKER_CONTAINER`); without it the case is reported
//! ignored, or failed under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use execkit_core::testkit;

fn execkit(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_execkit"));
    c.env("XDG_STATE_HOME", state).stdin(Stdio::null());
    c
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("execkit-gc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// Marked processes in the container (pid and cmdline), probed by a
/// separate execkit whose state dir is elsewhere (so it cleans nothing).
fn marked(container: &str, marker: &str, probe_state: &Path) -> Result<Vec<String>, String> {
    let script = format!(
        "for d in /proc/[0-9]*; do if tr '\\000' '\\n' < \"$d/environ\" 2>/dev/null | grep -qxF 'EXECKIT_SID={marker}'; then \
         printf '%s %s\\n' \"${{d#/proc/}}\" \"$(tr '\\000' ' ' < \"$d/cmdline\" 2>/dev/null)\"; fi; done"
    );
    let out = execkit(probe_state)
        .args([
            "exec",
            "--json",
            "--target",
            &format!("docker:{container}"),
            &script,
        ])
        .output()
        .map_err(|e| format!("running the probe: {e}"))?;
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "probe output {:?}: {e}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    if line["exit_code"] != 0 {
        return Err(format!("probe failed: {line}"));
    }
    Ok(line["output"]
        .as_str()
        .unwrap_or("")
        .lines()
        .map(str::to_string)
        .collect())
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if t.elapsed() > limit {
            return Err(format!("{what}: not within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn records(state: &Path) -> Vec<(PathBuf, serde_json::Value)> {
    let dir = state.join("execkit/sessions");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| {
            let v = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            Some((e.path(), v))
        })
        .collect()
}

/// Starts `execkit exec ... 'sleep 300'`, waits until the sleep runs in the
/// container, `kill -9`s execkit and checks the shell survived it.
fn orphan(container: &str, state: &Path, probe: &Path) -> Result<(String, PathBuf), String> {
    let mut child: Child = execkit(state)
        .args([
            "exec",
            "--target",
            &format!("docker:{container}"),
            "sleep 300",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting execkit: {e}"))?;
    let found = wait_for("the session record", Duration::from_secs(15), || {
        records(state).into_iter().next()
    });
    let (path, rec) = match found {
        Ok(r) => r,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let marker = rec["marker"].as_str().unwrap_or_default().to_string();
    let running = wait_for(
        "sleep 300 in the container",
        Duration::from_secs(15),
        || {
            marked(container, &marker, probe)
                .ok()
                .filter(|p| p.iter().any(|l| l.contains("sleep 300")))
        },
    );
    // SIGKILL, by PID: no cleanup can run.
    let _ = child.kill();
    let _ = child.wait();
    running?;
    std::thread::sleep(Duration::from_millis(500));
    let left = marked(container, &marker, probe)?;
    if left.is_empty() {
        return Err("setup: nothing survived kill -9, the case proves nothing".into());
    }
    if !path.exists() {
        return Err("the session record vanished with its owner".into());
    }
    Ok((marker, path))
}

fn gone(container: &str, marker: &str, probe: &Path) -> Result<(), String> {
    let mut left = Vec::new();
    for _ in 0..30 {
        left = marked(container, marker, probe)?;
        if left.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("still running in the container: {left:?}"))
}

fn check(out: &Output, what: &str) -> Result<(), String> {
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn kill9_then_gc(container: &str) -> Result<(), String> {
    let state = scratch("state");
    let probe = scratch("probe");
    let (marker, path) = orphan(container, &state, &probe)?;
    let out = execkit(&state)
        .arg("gc")
        .output()
        .map_err(|e| e.to_string())?;
    check(&out, "execkit gc")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.contains(&format!("cleaned session {marker}")) || !stdout.contains("1 cleaned") {
        return Err(format!("gc did not report the session: {stdout}"));
    }
    gone(container, &marker, &probe)?;
    if path.exists() {
        return Err("gc left the session record".into());
    }
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_dir_all(&probe);
    Ok(())
}

fn kill9_then_next_run(container: &str) -> Result<(), String> {
    let state = scratch("state2");
    let probe = scratch("probe2");
    let (marker, path) = orphan(container, &state, &probe)?;
    // Any next run cleans up, whatever its own target.
    let out = execkit(&state)
        .args(["exec", "--target", &format!("docker:{container}"), "true"])
        .output()
        .map_err(|e| e.to_string())?;
    check(&out, "the next execkit run")?;
    gone(container, &marker, &probe)?;
    if path.exists() {
        return Err("the next run left the session record".into());
    }
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_dir_all(&probe);
    Ok(())
}

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("running the docker CLI: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `docker:PREFIX` where the prefix starts the ids of two containers names
/// neither: a usage error (exit 2) that says so, not "unreachable" (69).
fn ambiguous_id_prefix_is_a_usage_error(_container: &str) -> Result<(), String> {
    let image = std::env::var("EXECKIT_TEST_DOCKER_IMAGE")
        .map_err(|_| "no EXECKIT_TEST_DOCKER_IMAGE (run cargo xtask test)".to_string())?;
    let state = scratch("ambiguous");
    // Containers of our own (created, never started) until two ids share
    // their first digit: 17 at most.
    let mut made: Vec<String> = Vec::new();
    let outcome = (|| {
        let prefix = loop {
            let id = docker(&["create", "--network", "none", &image, "true"])?;
            let first = id
                .get(..1)
                .ok_or("docker create printed no id")?
                .to_string();
            let twice = made.iter().any(|m| m.starts_with(&first));
            made.push(id);
            if twice {
                break first;
            }
            if made.len() > 17 {
                return Err("17 ids without a shared first digit?".to_string());
            }
        };
        let out = execkit(&state)
            .args(["exec", "--target", &format!("docker:{prefix}"), "true"])
            .output()
            .map_err(|e| e.to_string())?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(2)
            || !stderr.contains("more than one container")
            || !stderr.contains(&format!("`{prefix}`"))
        {
            return Err(format!(
                "want exit 2 naming the ambiguity, got {}: {stderr}",
                out.status
            ));
        }
        Ok(())
    })();
    for id in &made {
        let _ = docker(&["rm", "-f", id]);
    }
    let _ = std::fs::remove_dir_all(&state);
    outcome
}

type CaseFn = fn(&str) -> Result<(), String>;

fn main() -> ExitCode {
    let container = std::env::var("EXECKIT_TEST_DOCKER_CONTAINER")
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| "no test container; run cargo xtask test".to_string());
    let cases: [(&str, CaseFn); 3] = [
        ("kill9_then_gc", kill9_then_gc),
        ("kill9_then_next_run", kill9_then_next_run),
        (
            "ambiguous_id_prefix_is_a_usage_error",
            ambiguous_id_prefix_is_a_usage_error,
        ),
    ];
    let trials = cases
        .into_iter()
        .map(|(name, case)| testkit::test_with(name, &container, move |c: String| case(&c)))
        .collect();
    // One at a time, as they always ran.
    testkit::harness_in_order(trials)
}
