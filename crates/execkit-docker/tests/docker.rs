//! Long on purpose: one test binary (one link step) for every case that
//! needs the provisioned engine.
//!
//! Docker-only cases, against the engine and container `cargo xtask test`
//! provisions (`DOCKER_HOST`, `EXECKIT_TEST_DOCKER_CONTAINER`,
//! `EXECKIT_TEST_DOCKER_IMAGE`, `EXECKIT_TEST_DOCKER_TCP`), and its TLS
//! engine (`EXECKIT_TEST_DOCKER_TLS_*`, module `tls`).
//!
//! On testkit's runner (`harness = false`): without a test container every
//! case is reported as ignored — or failed under `CI=true` — never passed.

use std::future::Future;
use std::pin::Pin;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use execkit_core::cleanup::{self, SessionRecord};
use execkit_core::testkit;
use execkit_core::{
    raw::{
        file_errno, read_file, write_file, FileTransfer, ShellEvent, ShellProcess, SpawnSpec,
        Transport,
    },
    ErrorKind, RunOptions, Session, SessionConfig, SessionError, TransportError,
};
use execkit_docker as _;
use execkit_docker::DockerTransport;
// Links the ssh transport: its socket forwarder carries DOCKER_HOST=ssh://….
use execkit_ssh as _;

#[path = "docker/tls.rs"]
mod tls;
use tls::{
    a_tunnel_carries_every_connection, an_engine_over_ssh, contexts_select_the_tls_engine,
    tls_engine_not_trusted_by_a_wrong_ca, tls_engine_refuses_a_client_certificate_of_another_ca,
    tls_engine_refuses_no_client_certificate, tls_engine_with_a_trusted_client_certificate,
    tls_files_that_are_missing_are_named, tls_from_docker_host_and_cert_path,
};

#[derive(Debug, Clone)]
struct Env {
    container: String,
    image: Option<String>,
    tcp: Option<String>,
    tls: Option<tls::TlsEnv>,
}

impl Env {
    fn target(&self) -> String {
        format!("docker:{}", self.container)
    }
}

type CaseFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

struct Case {
    name: &'static str,
    /// Why the case cannot run with this environment, if it cannot.
    needs: fn(&Env) -> Option<&'static str>,
    run: fn(Env) -> CaseFuture,
}

macro_rules! case {
    ($name:ident) => {
        case!($name, |_| None)
    };
    ($name:ident, $needs:expr) => {
        Case {
            name: stringify!($name),
            needs: $needs,
            run: |env| Box::pin($name(env)),
        }
    };
}

fn needs_image(e: &Env) -> Option<&'static str> {
    e.image
        .is_none()
        .then_some("EXECKIT_TEST_DOCKER_IMAGE (run cargo xtask test)")
}

fn cases() -> Vec<Case> {
    vec![
        case!(raw_low_bytes_arrive_intact),
        case!(low_bytes_do_not_stall_a_session),
        case!(cwd_round_trip),
        case!(stopped_container_is_session_lost, needs_image),
        case!(removed_container_is_session_lost, needs_image),
        case!(paused_container_fails_fast_and_keeps_the_shell, needs_image),
        case!(restarted_container_is_said_to_have_restarted, needs_image),
        case!(stdin_is_staged_on_a_read_only_root, needs_image),
        case!(drop_leaves_no_process),
        case!(dropped_run_leaves_no_process),
        case!(timed_out_sleep_leaves_no_process),
        case!(busybox_only_container_is_cleaned, needs_image),
        case!(orphaned_session_is_cleaned_by_gc),
        case!(remote_engine_over_tcp, |e: &Env| e.tcp.is_none().then_some(
            "EXECKIT_TEST_DOCKER_TCP (an engine on a loopback TCP port)"
        )),
        case!(unknown_container_is_unreachable),
        case!(stopped_or_paused_container_says_which, needs_image),
        case!(unreachable_engine_is_unreachable),
        case!(files_as_the_containers_user, needs_image),
        case!(files_see_the_containers_mounts, needs_image),
        case!(files_given_up_leave_no_process, needs_image),
        case!(files_without_a_shell_are_unsupported, needs_image),
        case!(files_over_tcp, |e: &Env| e.tcp.is_none().then_some(
            "EXECKIT_TEST_DOCKER_TCP (an engine on a loopback TCP port)"
        )),
        case!(tls_engine_with_a_trusted_client_certificate, tls::needs_tls),
        case!(tls_engine_not_trusted_by_a_wrong_ca, tls::needs_tls),
        case!(tls_engine_refuses_no_client_certificate, tls::needs_tls),
        case!(
            tls_engine_refuses_a_client_certificate_of_another_ca,
            tls::needs_tls
        ),
        case!(tls_files_that_are_missing_are_named, tls::needs_tls),
        case!(tls_from_docker_host_and_cert_path, tls::needs_tls),
        case!(contexts_select_the_tls_engine, tls::needs_tls),
        case!(a_tunnel_carries_every_connection),
        case!(an_engine_over_ssh, tls::needs_sshd),
    ]
}

fn main() -> ExitCode {
    // A child of `tls::child`: one session in the environment it was given.
    if let Some(target) = std::env::var("EXECKIT_DOCKER_TEST_CHILD")
        .ok()
        .filter(|t| !t.is_empty())
    {
        return tls::child_main(&target);
    }
    let env = std::env::var("EXECKIT_TEST_DOCKER_CONTAINER")
        .ok()
        .filter(|c| !c.is_empty())
        .map(|container| Env {
            container,
            image: std::env::var("EXECKIT_TEST_DOCKER_IMAGE")
                .ok()
                .filter(|v| !v.is_empty()),
            tcp: std::env::var("EXECKIT_TEST_DOCKER_TCP")
                .ok()
                .filter(|v| !v.is_empty()),
            tls: tls::TlsEnv::from_env(),
        });
    let trials = cases()
        .into_iter()
        .map(|case| {
            let env = match &env {
                None => Err("no test container; run cargo xtask test".to_string()),
                Some(e) => match (case.needs)(e) {
                    Some(why) => Err(why.to_string()),
                    None => Ok(e.clone()),
                },
            };
            testkit::async_test_with(case.name, &env, move |env| async move {
                match tokio::time::timeout(Duration::from_secs(120), tokio::spawn((case.run)(env)))
                    .await
                {
                    Err(_) => Err(anyhow::anyhow!("did not finish within 120 s")),
                    Ok(Err(join)) => Err(anyhow::anyhow!("panicked: {join}")),
                    Ok(Ok(r)) => r,
                }
            })
        })
        .collect();
    // The cases share the test container: one at a time, as they were.
    testkit::harness_in_order(trials)
}

// ---------------------------------------------------------------- helpers

fn config() -> SessionConfig {
    let mut c = SessionConfig::default();
    c.spool_dir = std::env::temp_dir().join(format!("execkit-docker-tests-{}", std::process::id()));
    c
}

async fn open(target: &str) -> anyhow::Result<Session> {
    Session::open(target, config())
        .await
        .with_context(|| format!("opening {target}"))
}

async fn ok(s: &mut Session, cmd: &str) -> anyhow::Result<String> {
    let r = s
        .run(cmd, RunOptions::timeout(Duration::from_secs(30)))
        .await?;
    ensure!(
        r.exit_code == Some(0) && !r.timed_out && !r.session_lost,
        "{cmd:?} failed: {r:?}"
    );
    Ok(r.output)
}

/// Marked processes in the container, as `(pid, cmdline)`.
async fn marked(target: &str, marker: &str) -> anyhow::Result<Vec<(u32, String)>> {
    let mut probe = open(target).await?;
    let script = format!(
        "for d in /proc/[0-9]*; do if tr '\\000' '\\n' < \"$d/environ\" 2>/dev/null | grep -qxF 'EXECKIT_SID={marker}'; then \
         printf '%s %s\\n' \"${{d#/proc/}}\" \"$(tr '\\000' ' ' < \"$d/cmdline\" 2>/dev/null)\"; fi; done"
    );
    let out = ok(&mut probe, &script).await?;
    probe.close().await?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let (pid, cmd) = l.split_once(' ')?;
            Some((pid.parse().ok()?, cmd.trim().to_string()))
        })
        .collect())
}

/// Waits (briefly) for every marked process but `spare` to be gone;
/// returns survivors.
async fn leaked_but(
    target: &str,
    marker: &str,
    spare: &[u32],
) -> anyhow::Result<Vec<(u32, String)>> {
    let mut left = Vec::new();
    for _ in 0..30 {
        left = marked(target, marker).await?;
        left.retain(|(p, _)| !spare.contains(p));
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(left)
}

async fn leaked(target: &str, marker: &str) -> anyhow::Result<Vec<(u32, String)>> {
    leaked_but(target, marker, &[]).await
}

fn docker_cli(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("running the docker CLI")?;
    if !out.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A throwaway container of the test image, removed on drop.
struct Scratch(String);

impl Scratch {
    fn start(env: &Env, tag: &str) -> anyhow::Result<Scratch> {
        Scratch::start_with(env, tag, &[])
    }

    /// With more `docker run` options (`--read-only`, …).
    fn start_with(env: &Env, tag: &str, options: &[&str]) -> anyhow::Result<Scratch> {
        let name = format!("execkit-{tag}-{}", std::process::id());
        let _ = docker_cli(&["rm", "-f", &name]);
        let image = env.image.as_deref().context("no test image")?;
        let mut args = vec!["run", "-d", "--init", "--network", "none", "--name", &name];
        args.extend_from_slice(options);
        args.extend_from_slice(&[image, "sleep", "infinity"]);
        docker_cli(&args)?;
        Ok(Scratch(name))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = docker_cli(&["rm", "-f", &self.0]);
    }
}

/// Reads from a raw shell until `want` shows up (or `limit` passes).
async fn read_until(
    shell: &dyn ShellProcess,
    seen: &mut Vec<u8>,
    firsts: &mut Vec<u8>,
    want: &[u8],
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    while !seen.windows(want.len()).any(|w| w == want) {
        match tokio::time::timeout_at(deadline, shell.read()).await {
            Err(_) => bail!(
                "no {:?} within {limit:?}; got {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(seen)
            ),
            Ok(ShellEvent::Output(b)) => {
                if let Some(f) = b.first() {
                    firsts.push(*f);
                }
                seen.extend_from_slice(&b);
            }
            Ok(other) => bail!(
                "shell ended: {other:?}; got {:?}",
                String::from_utf8_lossy(seen)
            ),
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ cases

/// bollard's TTY attach decoder takes a chunk starting with 0x00–0x02 for a
/// multiplexed frame header; our raw stream must hand such bytes over as
/// they are, at once.
async fn raw_low_bytes_arrive_intact(env: Env) -> anyhow::Result<()> {
    let transport = DockerTransport::new(&env.target())?;
    let spec = SpawnSpec::new(format!("rawtest{}", std::process::id()));
    let shell = transport.spawn(&spec).await?;
    let mut seen = Vec::new();
    let mut firsts = Vec::new();
    shell
        .write(b"stty -echo -onlcr 2>/dev/null; PS1=''; echo RE''ADY\n")
        .await?;
    read_until(
        &*shell,
        &mut seen,
        &mut firsts,
        b"READY\n",
        Duration::from_secs(10),
    )
    .await?;
    // Each printf runs after a pause, so its bytes start a chunk of their own.
    seen.clear();
    firsts.clear();
    let t = Instant::now();
    shell
        .write(
            b"sleep 0.3; printf '\\001\\002abc'; sleep 0.3; printf '\\002\\000\\001xyz'; \
              sleep 0.3; printf '\\000\\001\\002end'; echo; echo DO''NE\n",
        )
        .await?;
    read_until(
        &*shell,
        &mut seen,
        &mut firsts,
        b"DONE\n",
        Duration::from_secs(10),
    )
    .await?;
    let took = t.elapsed();
    // The engine's terminal passes NUL through; compare without it in case
    // a runtime's line discipline drops it.
    let got: Vec<u8> = seen.iter().copied().filter(|b| *b != 0).collect();
    let want: &[u8] = b"\x01\x02abc\x02\x01xyz\x01\x02end\nDONE\n";
    ensure!(
        got == want,
        "bytes changed on the way: {seen:?} (first bytes of chunks: {firsts:?})"
    );
    ensure!(took < Duration::from_secs(3), "took {took:?}: stalled");
    ensure!(
        firsts.iter().any(|b| *b <= 2),
        "no chunk started with 0x00-0x02, the case proved nothing: {firsts:?}"
    );
    shell.terminate().await?;
    Ok(())
}

async fn low_bytes_do_not_stall_a_session(env: Env) -> anyhow::Result<()> {
    let mut s = open(&env.target()).await?;
    for _ in 0..3 {
        let t = Instant::now();
        let out = ok(&mut s, "printf '\\001\\002abc'; echo def").await?;
        ensure!(out == "abcdef", "{out:?}");
        let out = ok(&mut s, "printf '\\000\\001\\002abc'").await?;
        ensure!(out == "abc", "{out:?}");
        ensure!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
    }
    s.close().await?;
    Ok(())
}

async fn cwd_round_trip(env: Env) -> anyhow::Result<()> {
    let mut s = open(&env.target()).await?;
    ok(&mut s, "cd /tmp").await?;
    let r = s.run("pwd", RunOptions::default()).await?;
    ensure!(r.output == "/tmp" && r.cwd == "/tmp", "{r:?}");
    // No bash in the busybox image: the transport fell back to /bin/sh.
    let out = ok(&mut s, "echo ${BASH_VERSION:-none} $0").await?;
    ensure!(out == "none /bin/sh", "{out:?}");
    s.close().await?;
    Ok(())
}

async fn lost_mid_command(env: Env, tag: &str, action: &[&str]) -> anyhow::Result<()> {
    let scratch = Scratch::start(&env, tag)?;
    let name = scratch.0.clone();
    let mut s = open(&format!("docker:{name}")).await?;
    ensure!(ok(&mut s, "echo up").await? == "up");
    let mut args: Vec<String> = action.iter().map(|a| a.to_string()).collect();
    args.push(name.clone());
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            docker_cli(&args).map(|_| ())
        })
        .await
        .context("join")?
    });
    let t = Instant::now();
    let r = s
        .run(
            "echo started; sleep 60",
            RunOptions::timeout(Duration::from_secs(90)),
        )
        .await?;
    let took = t.elapsed();
    killer.await??;
    ensure!(
        r.session_lost && r.exit_code.is_none() && !r.timed_out,
        "{r:?}"
    );
    let want = format!("container {name} is not running");
    ensure!(
        r.error.as_deref().is_some_and(|e| e.contains(&want)),
        "error should say {want:?}: {r:?}"
    );
    ensure!(took < Duration::from_secs(10), "detected after {took:?}");
    // The next command reports the loss again, quickly, instead of hanging.
    let t = Instant::now();
    let r = s
        .run("echo again", RunOptions::timeout(Duration::from_secs(30)))
        .await?;
    ensure!(r.session_lost && r.error.is_some(), "{r:?}");
    ensure!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    let _ = s.close().await;
    drop(scratch);
    Ok(())
}

async fn stopped_container_is_session_lost(env: Env) -> anyhow::Result<()> {
    lost_mid_command(env, "stop", &["stop", "-t", "1"]).await
}

async fn removed_container_is_session_lost(env: Env) -> anyhow::Result<()> {
    lost_mid_command(env, "rm", &["rm", "-f"]).await
}

/// `docker pause` (issues 9 and 13): nothing runs in a paused container and
/// nothing can be exec'd there. A command sent to it comes back within
/// seconds (not at its timeout) saying the container is paused; while it
/// stays paused the next one is refused as fast; a gc (as if the owner had
/// died) cannot kill anything and keeps the record. After the unpause the
/// SAME shell takes the next command with its state — a command that had
/// not begun never runs, one that had is gone — and nothing of the
/// interrupted commands shows in later output.
async fn paused_container_fails_fast_and_keeps_the_shell(env: Env) -> anyhow::Result<()> {
    let scratch = Scratch::start(&env, "pause")?;
    let name = scratch.0.clone();
    let target = format!("docker:{name}");
    let mut s = open(&target).await?;
    let pid = ok(&mut s, "export KEPT=yes; echo $$").await?;
    let marker = s.marker().to_string();
    let long = || RunOptions::timeout(Duration::from_secs(60));
    let want = format!("container {name} is paused");
    let says_paused = |r: &execkit_core::RunResult| {
        r.session_lost
            && r.exit_code.is_none()
            && r.error.as_deref().is_some_and(|e| e.contains(&want))
    };
    let same_shell = |r: &execkit_core::RunResult, out: &str| {
        r.exit_code == Some(0) && !r.restarted && !r.session_lost && r.output == out
    };

    // 1. Paused between commands: the command never began.
    docker_cli(&["pause", &name])?;
    let t = Instant::now();
    let r = s.run("echo ran > /tmp/ran; echo ran", long()).await?;
    let took = t.elapsed();
    ensure!(
        says_paused(&r) && !r.timed_out && r.output.is_empty(),
        "{r:?}"
    );
    ensure!(took < Duration::from_secs(8), "returned after {took:?}");
    let t = Instant::now();
    let r = s.run("echo second", long()).await?;
    ensure!(
        says_paused(&r) && r.error.as_deref().is_some_and(|e| e.contains("not run")),
        "still paused: {r:?}"
    );
    ensure!(
        t.elapsed() < Duration::from_secs(3),
        "still paused: refused after {:?}",
        t.elapsed()
    );
    let gc_dir =
        std::env::temp_dir().join(format!("execkit-docker-pause-gc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&gc_dir);
    let rec = SessionRecord {
        owner_pid: u32::MAX - 7,
        ..SessionRecord::new(&marker, &target)
    };
    let rec_path = cleanup::write_record_in(&gc_dir, &rec)?;
    let paused_gc = cleanup::gc_in(&gc_dir).await;
    docker_cli(&["unpause", &name])?;
    ensure!(
        paused_gc.cleaned.is_empty()
            && paused_gc.failed.len() == 1
            && paused_gc.failed[0].1.contains("is paused")
            && rec_path.exists(),
        "gc while paused: {paused_gc:?}"
    );
    let _ = std::fs::remove_dir_all(&gc_dir);
    let r = s
        .run(
            "echo $$ $KEPT; cat /tmp/ran 2>/dev/null || echo not-run",
            long(),
        )
        .await?;
    ensure!(
        same_shell(&r, &format!("{pid} yes\nnot-run")),
        "after the unpause: {r:?}"
    );

    // 2. Paused mid-command, long timeout: back within seconds.
    let pausing = name.clone();
    let pauser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        tokio::task::spawn_blocking(move || docker_cli(&["pause", &pausing]).map(|_| ()))
            .await
            .context("join")?
    });
    let t = Instant::now();
    let r = s
        .run("echo started; sleep 60; echo finished", long())
        .await?;
    let took = t.elapsed();
    pauser.await??;
    docker_cli(&["unpause", &name])?;
    ensure!(says_paused(&r) && r.output == "started", "{r:?}");
    ensure!(took < Duration::from_secs(8), "returned after {took:?}");
    let r = s.run("echo $$ $KEPT", long()).await?;
    ensure!(
        same_shell(&r, &format!("{pid} yes")),
        "after the unpause: {r:?}"
    );
    let left = leaked_but(&target, &marker, &[pid.parse()?]).await?;
    ensure!(
        left.is_empty(),
        "the interrupted command lives on: {left:?}"
    );

    // 3. Paused mid-command, a timeout shorter than the quiet spell that
    //    looks for a pause: the recovery finds the container paused.
    docker_cli(&["pause", &name])?;
    let t = Instant::now();
    let r = s
        .run("sleep 30", RunOptions::timeout(Duration::from_millis(500)))
        .await?;
    let took = t.elapsed();
    docker_cli(&["unpause", &name])?;
    ensure!(says_paused(&r) && r.timed_out, "{r:?}");
    ensure!(took < Duration::from_secs(8), "returned after {took:?}");
    for _ in 0..3 {
        let r = s.run("echo $$ $KEPT", long()).await?;
        ensure!(
            same_shell(&r, &format!("{pid} yes")),
            "after the unpause: {r:?}"
        );
    }

    // 4. Paused after the command was quiet a while (the input-wait probe
    //    has backed off to 6 s and more by then): still told within seconds.
    let pausing = name.clone();
    let pauser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(11)).await;
        tokio::task::spawn_blocking(move || {
            docker_cli(&["pause", &pausing]).map(|_| Instant::now())
        })
        .await
        .context("join")?
    });
    let r = s.run("sleep 60", long()).await?;
    let returned = Instant::now();
    let paused_at = pauser.await??;
    docker_cli(&["unpause", &name])?;
    ensure!(says_paused(&r), "{r:?}");
    let late = returned.saturating_duration_since(paused_at);
    ensure!(
        late < Duration::from_secs(4),
        "told {late:?} after the pause"
    );
    let r = s.run("echo $$ $KEPT", long()).await?;
    ensure!(
        same_shell(&r, &format!("{pid} yes")),
        "after the unpause: {r:?}"
    );
    eprintln!("fault docker-pause: between commands and mid-command, each back within seconds; same shell after the unpause");
    s.close().await?;
    ensure!(leaked(&target, &marker).await?.is_empty(), "survived close");
    drop(scratch);
    Ok(())
}

/// `docker restart` kills everything in the container, the shell too (the
/// engine reports it killed by signal 9): the result must say the container
/// restarted, not blame the shell, and a fresh shell carries on — for a
/// restart mid-command and between commands.
async fn restarted_container_is_said_to_have_restarted(env: Env) -> anyhow::Result<()> {
    let scratch = Scratch::start(&env, "restart")?;
    let name = scratch.0.clone();
    let mut s = open(&format!("docker:{name}")).await?;
    ok(&mut s, "export KEPT=yes").await?;
    let want = format!("container {name} restarted");
    let says_restarted = |r: &execkit_core::RunResult| {
        r.restarted
            && !r.session_lost
            && r.exit_code.is_none()
            && r.error
                .as_deref()
                .is_some_and(|e| e.contains(&want) && !e.contains("signal"))
    };
    let restarting = name.clone();
    let restarter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        tokio::task::spawn_blocking(move || {
            docker_cli(&["restart", "-t", "1", &restarting]).map(|_| ())
        })
        .await
        .context("join")?
    });
    let t = Instant::now();
    let r = s
        .run(
            "echo started; sleep 60",
            RunOptions::timeout(Duration::from_secs(60)),
        )
        .await?;
    let took = t.elapsed();
    restarter.await??;
    ensure!(says_restarted(&r), "mid-command: {r:?}");
    ensure!(took < Duration::from_secs(15), "detected after {took:?}");
    ensure!(ok(&mut s, "echo ${KEPT:-reset}").await? == "reset");
    ok(&mut s, "export KEPT=yes").await?;
    // Between commands: the next command finds the shell gone.
    docker_cli(&["restart", "-t", "1", &name])?;
    let r = s
        .run("echo hi", RunOptions::timeout(Duration::from_secs(60)))
        .await?;
    ensure!(says_restarted(&r), "between commands: {r:?}");
    ensure!(ok(&mut s, "echo ${KEPT:-reset}").await? == "reset");
    s.close().await?;
    drop(scratch);
    Ok(())
}

/// `--stdin` on a container with a read-only root filesystem: the staging
/// file cannot go to `/tmp`, so it goes to the first writable place of
/// `$TMPDIR`, `/tmp`, `/var/tmp`, `/dev/shm`; with none of them writable
/// the error says what to mount or set, and that advice works.
async fn stdin_is_staged_on_a_read_only_root(env: Env) -> anyhow::Result<()> {
    let input = b"line one\nline two\n";
    // `--read-only` keeps `/dev/shm` (a tmpfs) writable.
    let ro = Scratch::start_with(&env, "ro", &["--read-only"])?;
    let mut s = open(&format!("docker:{}", ro.0)).await?;
    let r = s
        .run_with_stdin(
            "wc -l; ls /dev/shm",
            input,
            RunOptions::timeout(Duration::from_secs(30)),
        )
        .await?;
    ensure!(
        r.exit_code == Some(0) && r.output.trim() == "2",
        "staged in /dev/shm (and unlinked): {r:?}"
    );
    s.close().await?;
    drop(ro);
    // No /dev/shm either (`--ipc none`): nothing writable.
    let none = Scratch::start_with(
        &env,
        "ro-none",
        &["--read-only", "--ipc", "none", "--tmpfs", "/scratch"],
    )?;
    let target = format!("docker:{}", none.0);
    let mut s = open(&target).await?;
    match s
        .run_with_stdin("cat", input, RunOptions::timeout(Duration::from_secs(30)))
        .await
    {
        Err(SessionError::Stdin { reason, .. }) => ensure!(
            reason.contains("--tmpfs") && reason.contains("TMPDIR") && !reason.contains('\n'),
            "the error should say what to mount or set: {reason}"
        ),
        other => bail!("expected a staging error, got {other:?}"),
    }
    // The session is fine, and no helper variable is left behind.
    ensure!(ok(&mut s, "echo ${__ek_d:-clean}").await? == "clean");
    s.close().await?;
    // The advice: TMPDIR naming a writable place.
    let mut c = config();
    c.env.push(("TMPDIR".into(), "/scratch".into()));
    let mut s = Session::open(&target, c).await?;
    let r = s
        .run_with_stdin(
            "cat; ls /scratch",
            input,
            RunOptions::timeout(Duration::from_secs(30)),
        )
        .await?;
    ensure!(
        r.exit_code == Some(0) && r.output == "line one\nline two",
        "staged under $TMPDIR: {r:?}"
    );
    s.close().await?;
    drop(none);
    Ok(())
}

async fn drop_leaves_no_process(env: Env) -> anyhow::Result<()> {
    let target = env.target();
    let mut s = open(&target).await?;
    ok(
        &mut s,
        "sleep 300 >/dev/null 2>&1 & (sleep 301 >/dev/null 2>&1 &)",
    )
    .await?;
    let marker = s.marker().to_string();
    let before = marked(&target, &marker).await?;
    ensure!(before.len() >= 3, "setup: {before:?}");
    drop(s);
    let left = leaked(&target, &marker).await?;
    ensure!(left.is_empty(), "survived drop: {left:?}");
    Ok(())
}

async fn dropped_run_leaves_no_process(env: Env) -> anyhow::Result<()> {
    let target = env.target();
    let mut s = open(&target).await?;
    let marker = s.marker().to_string();
    // The caller gives up on a running command (its future is dropped),
    // then drops the session.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(800),
        s.run("sleep 30", RunOptions::default()),
    )
    .await;
    ensure!(gave_up.is_err(), "sleep 30 finished? {gave_up:?}");
    ensure!(
        marked(&target, &marker)
            .await?
            .iter()
            .any(|(_, c)| c.starts_with("sleep 30")),
        "setup: sleep 30 not running"
    );
    drop(s);
    let left = leaked(&target, &marker).await?;
    ensure!(left.is_empty(), "survived drop: {left:?}");
    Ok(())
}

async fn timed_out_sleep_leaves_no_process(env: Env) -> anyhow::Result<()> {
    let target = env.target();
    let mut s = open(&target).await?;
    let marker = s.marker().to_string();
    let shell_pid: u32 = ok(&mut s, "echo $$").await?.trim().parse()?;
    let r = s
        .run("sleep 30", RunOptions::timeout(Duration::from_secs(1)))
        .await?;
    ensure!(r.timed_out, "{r:?}");
    let left = leaked_but(&target, &marker, &[shell_pid]).await?;
    ensure!(left.is_empty(), "survived the timeout: {left:?}");
    s.close().await?;
    ensure!(leaked(&target, &marker).await?.is_empty(), "survived close");
    Ok(())
}

/// A container with only `/bin/busybox` (no `/bin/sh`): the session runs
/// on the shell it was given, and every script execkit runs there out of
/// band — stopping a timed-out command, the marker clean-up at close — runs
/// with that shell too (they were hard-coded to `/bin/sh`: the close
/// answered and the shell lived on).
async fn busybox_only_container_is_cleaned(env: Env) -> anyhow::Result<()> {
    let scratch = Scratch::start(&env, "nosh")?;
    docker_cli(&["exec", &scratch.0, "/bin/busybox", "rm", "-f", "/bin/sh"])?;
    let target = format!("docker:{}", scratch.0);
    let mut c = config();
    c.shell = Some("/bin/busybox".into());
    let mut s = Session::open(&target, c.clone()).await?;
    let marker = s.marker().to_string();
    ok(&mut s, "export K=kept; sleep 300 >/dev/null 2>&1 &").await?;
    let r = s
        .run(
            "(while :; do sleep 1; done) & sleep 30",
            RunOptions::timeout(Duration::from_secs(1)),
        )
        .await?;
    ensure!(r.timed_out && !r.restarted && r.error.is_none(), "{r:?}");
    ensure!(ok(&mut s, "echo $K").await? == "kept");
    s.close().await?;
    let mut probe = Session::open(&target, c).await?;
    let script = format!(
        "for d in /proc/[0-9]*; do if tr '\\000' '\\n' < \"$d/environ\" 2>/dev/null | grep -qxF 'EXECKIT_SID={marker}'; then \
         printf '%s %s\\n' \"${{d#/proc/}}\" \"$(tr '\\000' ' ' < \"$d/cmdline\" 2>/dev/null)\"; fi; done"
    );
    let left = ok(&mut probe, &script).await?;
    probe.close().await?;
    ensure!(left.trim().is_empty(), "left running after close: {left}");
    drop(scratch);
    Ok(())
}

/// The owner died without closing (`kill -9`): the shell lives on in the
/// container until gc kills it through the registry by its marker.
async fn orphaned_session_is_cleaned_by_gc(env: Env) -> anyhow::Result<()> {
    let target = env.target();
    let mut s = open(&target).await?;
    ok(&mut s, "sleep 300 >/dev/null 2>&1 &").await?;
    let marker = s.marker().to_string();
    // As if the process had been killed: nothing runs the cleanup.
    std::mem::forget(s);
    ensure!(
        marked(&target, &marker).await?.len() >= 2,
        "setup: the orphaned shell is not running"
    );
    let dir = std::env::temp_dir().join(format!("execkit-docker-gc-{}", std::process::id()));
    let rec = SessionRecord {
        owner_pid: u32::MAX - 7,
        ..SessionRecord::new(&marker, &target)
    };
    cleanup::write_record_in(&dir, &rec)?;
    let report = cleanup::gc_in(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    ensure!(
        report.cleaned.len() == 1 && report.failed.is_empty(),
        "{report:?}"
    );
    let left = leaked(&target, &marker).await?;
    ensure!(left.is_empty(), "survived gc: {left:?}");
    Ok(())
}

async fn remote_engine_over_tcp(env: Env) -> anyhow::Result<()> {
    let tcp = env.tcp.as_deref().context("no tcp")?;
    let target = format!("docker://{tcp}/{}", env.container);
    let mut s = open(&target).await?;
    ok(&mut s, "cd /tmp").await?;
    let r = s.run("pwd", RunOptions::default()).await?;
    ensure!(r.output == "/tmp" && r.cwd == "/tmp", "{r:?}");
    let out = ok(&mut s, "printf '\\001\\002abc'; echo def").await?;
    ensure!(out == "abcdef", "{out:?}");
    ok(&mut s, "sleep 300 >/dev/null 2>&1 &").await?;
    let marker = s.marker().to_string();
    s.close().await?;
    let left = leaked(&env.target(), &marker).await?;
    ensure!(left.is_empty(), "survived close over tcp: {left:?}");
    Ok(())
}

/// The message of an Unreachable error (one line) and the error.
fn unreachable_error(r: Result<Session, SessionError>) -> anyhow::Result<(String, TransportError)> {
    match r {
        Err(SessionError::Transport(e @ TransportError::Unreachable { .. })) => {
            let msg = e.to_string();
            ensure!(!msg.contains('\n'), "not one line: {msg:?}");
            Ok((msg, e))
        }
        other => bail!("expected Unreachable, got {other:?}"),
    }
}

async fn unknown_container_is_unreachable(_env: Env) -> anyhow::Result<()> {
    let name = format!("execkit-no-such-{}", std::process::id());
    let (msg, e) = unreachable_error(Session::open(&format!("docker:{name}"), config()).await)?;
    ensure!(msg.contains(&name), "{msg}");
    ensure!(e.kind() == ErrorKind::NotFound, "{:?}: {msg}", e.kind());
    let t = DockerTransport::new(&format!("docker:{name}"))?;
    // Cleanup of a container that does not exist has nothing to do.
    t.kill_matching("EXECKIT_SID=x").await?;
    Ok(())
}

async fn unreachable_engine_is_unreachable(env: Env) -> anyhow::Result<()> {
    // A loopback port nothing listens on, kept ours for the whole test.
    let reserved = execkit_core::testkit::ReservedPort::new();
    let port = reserved.port;
    let target = format!("docker://127.0.0.1:{port}/{}", env.container);
    let t = Instant::now();
    let (msg, e) = unreachable_error(Session::open(&target, config()).await)?;
    ensure!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    ensure!(
        e.kind() == ErrorKind::ConnectionRefused,
        "{:?}: {msg}",
        e.kind()
    );
    // The client's error is kept underneath, not only its text.
    ensure!(std::error::Error::source(&e).is_some(), "no source: {e:?}");
    ensure!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    let transport: Arc<dyn Transport> = Arc::new(DockerTransport::new(&target)?);
    ensure!(
        matches!(
            transport.kill_matching("EXECKIT_SID=x").await,
            Err(TransportError::Unreachable { .. })
        ),
        "gc must keep records of an unreachable engine"
    );
    Ok(())
}

async fn stopped_or_paused_container_says_which(env: Env) -> anyhow::Result<()> {
    let scratch = Scratch::start(&env, "kinds")?;
    let name = scratch.0.clone();
    let target = format!("docker:{name}");
    docker_cli(&["pause", &name])?;
    let (msg, e) = unreachable_error(Session::open(&target, config()).await)?;
    ensure!(e.kind() == ErrorKind::Paused, "{:?}: {msg}", e.kind());
    ensure!(msg.contains("is paused"), "{msg}");
    docker_cli(&["unpause", &name])?;
    docker_cli(&["kill", &name])?;
    let (msg, e) = unreachable_error(Session::open(&target, config()).await)?;
    ensure!(e.kind() == ErrorKind::NotRunning, "{:?}: {msg}", e.kind());
    ensure!(msg.contains("is not running"), "{msg}");
    Ok(())
}

// ------------------------------------------------------------ file transfer

/// The native file transfer of `target`.
fn files_of(target: &str) -> anyhow::Result<Arc<dyn FileTransfer>> {
    DockerTransport::new(target)?
        .files()
        .context("the docker transport has no native file transfer")
}

/// The errno of a failed transfer (`file_errno`).
fn errno(r: std::io::Result<impl std::fmt::Debug>, what: &str) -> anyhow::Result<i32> {
    match r {
        Ok(v) => bail!("{what}: succeeded ({v:?}), expected an error"),
        Err(e) => file_errno(&e).with_context(|| format!("{what}: no errno in {e:?}")),
    }
}

/// What `docker exec NAME ARGS…` prints on stdout, byte for byte.
fn exec_bytes(name: &str, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("docker")
        .arg("exec")
        .arg(name)
        .args(args)
        .output()
        .context("running the docker CLI")?;
    ensure!(
        out.status.success(),
        "docker exec {name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
}

/// The files run as the container's configured user (`--user 1000:1000`),
/// as its shells do: what that user may not read or write is refused with
/// the errno its shell would get (the engine's archive API would have
/// acted as root), and what it makes is its own.
async fn files_as_the_containers_user(env: Env) -> anyhow::Result<()> {
    let scratch = Scratch::start_with(&env, "files-user", &["--user", "1000:1000"])?;
    let name = scratch.0.clone();
    docker_cli(&[
        "exec",
        "-u",
        "0",
        &name,
        "sh",
        "-c",
        "echo secret > /root-only && chmod 600 /root-only && echo public > /etc/public \
         && mkdir -p /home/u && chown 1000:1000 /home/u",
    ])?;
    let files = files_of(&format!("docker:{name}"))?;

    write_file(&*files, "/home/u/deep/new.txt", b"mine\n").await?;
    let owners = docker_cli(&[
        "exec",
        &name,
        "stat",
        "-c",
        "%u:%g %a",
        "/home/u/deep",
        "/home/u/deep/new.txt",
    ])?;
    ensure!(
        owners == "1000:1000 755\n1000:1000 644",
        "made as the container's user: {owners:?}"
    );
    ensure!(read_file(&*files, "/home/u/deep/new.txt").await? == b"mine\n");
    ensure!(read_file(&*files, "/etc/public").await? == b"public\n");

    let refused = read_file(&*files, "/root-only").await;
    if let Err(e) = &refused {
        ensure!(
            e.to_string().contains("/root-only") && e.to_string().contains(&name),
            "the message names the file and the container: {e}"
        );
    }
    let e = errno(refused, "reading root's 0600 file")?;
    ensure!(e == libc::EACCES, "errno {e}");
    let e = errno(
        write_file(&*files, "/etc/public", b"changed\n").await,
        "writing root's 0644 file",
    )?;
    ensure!(e == libc::EACCES, "errno {e}");
    let e = errno(
        write_file(&*files, "/etc/new", b"x").await,
        "writing into root's directory",
    )?;
    ensure!(e == libc::EACCES, "errno {e}");
    let e = errno(
        write_file(&*files, "/etc/sub/new", b"x").await,
        "making a directory in root's directory",
    )?;
    ensure!(e == libc::EACCES, "errno {e}");
    let left = docker_cli(&[
        "exec",
        &name,
        "sh",
        "-c",
        "cat /etc/public; ls /etc/new /etc/sub 2>&1 | wc -l",
    ])?;
    ensure!(left == "public\n2", "nothing of root's changed: {left:?}");
    Ok(())
}

/// The files see the container as its processes do: a tmpfs mounted in it
/// (Docker 20.10's archive API reads and writes the directory under it,
/// and refuses a `--read-only` root outright), a read-only root (`EROFS`),
/// and an existing file is truncated in place — same inode, hard links
/// see the new bytes, mode kept — rather than replaced.
async fn files_see_the_containers_mounts(env: Env) -> anyhow::Result<()> {
    let scratch = Scratch::start_with(
        &env,
        "files-mounts",
        &["--read-only", "--tmpfs", "/scratch"],
    )?;
    let name = scratch.0.clone();
    let files = files_of(&format!("docker:{name}"))?;

    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    write_file(&*files, "/scratch/sub/all.bin", &bytes).await?;
    ensure!(
        exec_bytes(&name, &["cat", "/scratch/sub/all.bin"])? == bytes,
        "the container reads what was written into its tmpfs"
    );
    docker_cli(&[
        "exec",
        &name,
        "sh",
        "-c",
        "echo from inside > /scratch/in.txt",
    ])?;
    ensure!(read_file(&*files, "/scratch/in.txt").await? == b"from inside\n");

    let e = errno(
        write_file(&*files, "/etc/new", b"x").await,
        "writing on a read-only root",
    )?;
    ensure!(e == libc::EROFS, "errno {e}");

    docker_cli(&[
        "exec",
        &name,
        "sh",
        "-c",
        "cd /scratch && echo old > f && ln f g && chmod 640 f",
    ])?;
    let before = docker_cli(&["exec", &name, "stat", "-c", "%i %a", "/scratch/f"])?;
    write_file(&*files, "/scratch/f", b"new\n").await?;
    let after = docker_cli(&["exec", &name, "stat", "-c", "%i %a", "/scratch/f"])?;
    ensure!(before == after, "inode and mode: {before} then {after}");
    ensure!(
        exec_bytes(&name, &["cat", "/scratch/g"])? == b"new\n",
        "the hard link sees the new bytes"
    );

    // A write that fails before its stream ends says so at once, without
    // waiting for the caller's next chunk.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(Ok(b"x".to_vec())).await?;
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        files.write("/scratch/sub", None, rx),
    )
    .await
    .context("a failed write waited for its stream to end")?;
    ensure!(errno(r, "writing over a directory")? == libc::EISDIR);
    drop(tx);

    // A paused container: an error saying so, at once.
    docker_cli(&["pause", &name])?;
    let t = Instant::now();
    let r = read_file(&*files, "/scratch/f").await;
    docker_cli(&["unpause", &name])?;
    match r {
        Err(e) => ensure!(e.to_string().contains("paused"), "{e}"),
        Ok(_) => bail!("read from a paused container"),
    }
    ensure!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    Ok(())
}

/// `cat` processes in the container, as `ps` lines.
fn cats(name: &str) -> anyhow::Result<Vec<String>> {
    Ok(docker_cli(&["exec", name, "ps", "-o", "pid,args"])?
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("cat"))
        .map(str::to_string)
        .collect())
}

/// Waits (briefly) until no `cat` runs in the container; returns those left.
async fn cats_left(name: &str) -> anyhow::Result<Vec<String>> {
    let mut left = Vec::new();
    for _ in 0..30 {
        left = cats(name)?;
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(left)
}

/// The engine does not stop an exec whose client went away: a transfer
/// given up on — its reader gone, its future dropped mid-read or
/// mid-write — kills its own processes, and what a dropped write had sent
/// stays written.
async fn files_given_up_leave_no_process(env: Env) -> anyhow::Result<()> {
    use tokio::sync::mpsc;
    let scratch = Scratch::start(&env, "files-abandon")?;
    let name = scratch.0.clone();
    let files = files_of(&format!("docker:{name}"))?;

    // The reader goes away after the first chunk of an endless file.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1);
    let first = async move { rx.recv().await.map(|c| c.len()) };
    let (r, got) = tokio::join!(files.read("/dev/zero", tx), first);
    ensure!(got.is_some_and(|n| n > 0), "no first chunk");
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => bail!("expected BrokenPipe, got {other:?}"),
    }
    let left = cats_left(&name).await?;
    ensure!(left.is_empty(), "left after the reader went away: {left:?}");

    // The caller drops the read's future after its first chunk.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1);
    {
        let read = files.read("/dev/zero", tx);
        tokio::pin!(read);
        tokio::select! {
            r = &mut read => bail!("reading /dev/zero ended: {r:?}"),
            c = rx.recv() => ensure!(c.is_some(), "no first chunk"),
        }
        ensure!(!cats(&name)?.is_empty(), "setup: no cat while reading");
    }
    let left = cats_left(&name).await?;
    ensure!(left.is_empty(), "left after a dropped read: {left:?}");

    // A write whose future is dropped while its stream is still open.
    let (tx, rx) = mpsc::channel(2);
    tx.send(Ok(vec![b'x'; 1000])).await?;
    {
        let write = files.write("/tmp/partial", None, rx);
        tokio::pin!(write);
        // Until the container shows the bytes; then the caller gives up.
        let landed = async {
            loop {
                let n = docker_cli(&[
                    "exec",
                    &name,
                    "sh",
                    "-c",
                    "wc -c < /tmp/partial 2>/dev/null || echo 0",
                ])?;
                if n == "1000" {
                    return Ok::<_, anyhow::Error>(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            r = &mut write => bail!("the write ended with its stream open: {r:?}"),
            r = tokio::time::timeout(Duration::from_secs(20), landed) => r.context("the bytes never landed")??,
        }
    }
    drop(tx);
    let left = cats_left(&name).await?;
    ensure!(left.is_empty(), "left after a dropped write: {left:?}");
    ensure!(
        docker_cli(&["exec", &name, "wc", "-c", "/tmp/partial"])?.starts_with("1000 "),
        "what was sent stays"
    );
    Ok(())
}

/// A remote engine (`docker://HOST:PORT/NAME`): the same transfer over TCP.
async fn files_over_tcp(env: Env) -> anyhow::Result<()> {
    let tcp = env.tcp.as_deref().context("no tcp")?;
    let files = files_of(&format!("docker://{tcp}/{}", env.container))?;
    let mut bytes: Vec<u8> = (0..=255u8).cycle().take(256 * 16).collect();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    while bytes.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    let path = format!("/tmp/execkit-files-tcp-{}/x.bin", std::process::id());
    write_file(&*files, &path, &bytes).await?;
    ensure!(
        read_file(&*files, &path).await? == bytes,
        "read back over TCP"
    );
    ensure!(
        exec_bytes(&env.container, &["cat", &path])? == bytes,
        "the container reads what was written over TCP"
    );
    docker_cli(&[
        "exec",
        &env.container,
        "rm",
        "-rf",
        path.rsplit_once('/').map_or("", |p| p.0),
    ])?;
    Ok(())
}

/// A container without `/bin/sh` cannot run the transfer's script: the
/// answer is `Unsupported` (the caller falls back to a session, which runs
/// on the shell it was given), and the engine's error text is not handed
/// on as the file's bytes.
async fn files_without_a_shell_are_unsupported(env: Env) -> anyhow::Result<()> {
    let scratch = Scratch::start(&env, "files-nosh")?;
    docker_cli(&["exec", &scratch.0, "/bin/busybox", "rm", "-f", "/bin/sh"])?;
    let files = files_of(&format!("docker:{}", scratch.0))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let got = async move {
        let mut all = Vec::new();
        while let Some(c) = rx.recv().await {
            all.extend(c);
        }
        all
    };
    let (r, got) = tokio::join!(files.read("/etc/passwd", tx), got);
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            ensure!(e.to_string().contains("/bin/sh"), "{e}")
        }
        other => bail!("reading: expected Unsupported, got {other:?}"),
    }
    ensure!(
        got.is_empty(),
        "handed on as bytes: {:?}",
        String::from_utf8_lossy(&got)
    );
    match write_file(&*files, "/tmp/x", b"x").await {
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {}
        other => bail!("writing: expected Unsupported, got {other:?}"),
    }
    Ok(())
}
