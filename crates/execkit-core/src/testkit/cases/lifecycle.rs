//! A shell's life: replaced when it exits or is killed, background jobs
//! that neither block nor chatter, nothing left after close, many at once.

use std::time::{Duration, Instant};

use anyhow::ensure;

use super::shell_pid;
use crate::testkit::{ok, run, Ctx};
use crate::{protocol, RunResult};

pub(super) async fn exit_restarts_shell(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    ok(&mut s, "export EK_GONE=1; cd /").await?;
    let r = run(&mut s, "echo bye; exit 3", 10).await?;
    ensure!(
        r.exit_code == Some(3) && r.restarted && !r.session_lost,
        "{r:?}"
    );
    // bash adds its own "exit" line when an interactive shell exits.
    ensure!(r.output == "bye" || r.output == "bye\nexit", "{r:?}");
    let r = run(&mut s, "echo alive:${EK_GONE:-unset}", 10).await?;
    ensure!(
        r.output == "alive:unset" && r.exit_code == Some(0) && !r.restarted,
        "{r:?}"
    );
    s.close().await?;
    Ok(())
}

pub(super) async fn set_e_restarts_shell(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    ok(&mut s, "set -e").await?;
    let r = run(&mut s, "false", 10).await?;
    ensure!(r.exit_code == Some(1) && r.restarted, "{r:?}");
    let r = run(&mut s, "false; echo set-e-is-off", 10).await?;
    ensure!(
        r.output == "set-e-is-off" && r.exit_code == Some(0),
        "{r:?}"
    );
    s.close().await?;
    Ok(())
}

pub(super) async fn exec_restarts_shell(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let r = run(&mut s, "exec true", 10).await?;
    ensure!(r.exit_code == Some(0) && r.restarted, "{r:?}");
    ensure!(ok(&mut s, "echo ok").await? == "ok");
    s.close().await?;
    Ok(())
}

pub(super) async fn background_job_returns_at_once(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let t = Instant::now();
    let r = run(&mut s, "sleep 5 & echo done", 20).await?;
    ensure!(
        t.elapsed() < Duration::from_millis(4500),
        "waited for the background job: {:?}",
        t.elapsed()
    );
    ensure!(r.output == "done" && r.exit_code == Some(0), "{r:?}");
    ok(&mut s, "kill $! 2>/dev/null; true").await?;
    s.close().await?;
    Ok(())
}

pub(super) async fn no_job_control_noise(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let r = run(&mut s, "sleep 1 &", 10).await?;
    ensure!(r.output.is_empty(), "job notice: {r:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..3 {
        let r = run(&mut s, "echo next", 10).await?;
        ensure!(r.output == "next", "job-control noise leaked: {r:?}");
    }
    let r = run(&mut s, "sleep 0.2 & wait; echo waited", 10).await?;
    ensure!(r.output == "waited", "{r:?}");
    s.close().await?;
    Ok(())
}

/// Background jobs started by code the shell stored earlier (a function,
/// a sourced file) print no notice either, and `return` ends a command the
/// same way on every path the engine may send it by.
pub(super) async fn no_job_notice_from_stored_code(ctx: Ctx) -> anyhow::Result<()> {
    let quiet = |r: &RunResult, what: &str| {
        ensure!(
            r.output.is_empty() && r.exit_code == Some(0),
            "{what}: {r:?}"
        );
        Ok(())
    };
    // A function defined with `&`, called later by a command without one.
    let mut s = ctx.open().await?;
    ok(&mut s, "bgf() { sleep 0.3 & }").await?;
    ensure!(ok(&mut s, "echo plain").await? == "plain");
    quiet(&run(&mut s, "bgf", 10).await?, "function")?;
    ok(&mut s, "wait").await?;
    ensure!(ok(&mut s, "echo next").await? == "next");
    s.close().await?;
    // A function loaded from a file.
    let mut s = ctx.open().await?;
    let file = format!(
        "/tmp/execkit-jobs-{}",
        protocol::nonce().expect("random bytes")
    );
    ok(
        &mut s,
        &format!("printf 'bgg() {{ sleep 0.3 \\046 }}\\n' > {file}; . {file}; rm -f {file}"),
    )
    .await?;
    quiet(&run(&mut s, "bgg", 10).await?, "sourced function")?;
    ok(&mut s, "wait").await?;
    ensure!(ok(&mut s, "echo next").await? == "next");
    // `return` outside a function ends the command with its status.
    let r = run(&mut s, "return 3", 10).await?;
    ensure!(r.exit_code == Some(3) && r.output.is_empty(), "{r:?}");
    s.close().await?;
    let mut s = ctx.open().await?;
    let r = run(&mut s, "echo before; return 4; echo after", 10).await?;
    ensure!(r.exit_code == Some(4) && r.output == "before", "{r:?}");
    s.close().await?;
    Ok(())
}

/// A shell killed from outside on a live target is replaced: the result
/// says so (no exit code, `restarted`, an error naming the signal), state
/// is gone, the session goes on, nothing of the old shell is left.
pub(super) async fn killed_shell_is_replaced(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let pid = shell_pid(&mut s).await?;
    let killer = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            ctx.kill_from_outside(pid).await
        })
    };
    let t = Instant::now();
    let r = run(&mut s, "sleep 30", 60).await?;
    killer.await??;
    ensure!(
        r.restarted && !r.session_lost && r.exit_code.is_none() && r.error.is_some(),
        "{r:?}"
    );
    ensure!(
        t.elapsed() < Duration::from_secs(10),
        "detected after {:?}",
        t.elapsed()
    );
    let new_pid = shell_pid(&mut s).await?;
    let leaked = ctx.leaked(s.marker(), &[new_pid]).await?;
    ensure!(leaked.is_empty(), "left behind: {leaked:?}");
    let r = run(&mut s, "echo back", 10).await?;
    ensure!(r.output == "back" && !r.restarted, "{r:?}");
    // The shell killing itself is the same.
    let r = run(&mut s, "export EK_V=1; kill -9 $$", 10).await?;
    ensure!(
        r.restarted && !r.session_lost && r.exit_code.is_none(),
        "{r:?}"
    );
    ensure!(ok(&mut s, "echo ${EK_V:-gone}").await? == "gone");
    s.close().await?;
    Ok(())
}

pub(super) async fn close_leaves_no_process(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    ok(
        &mut s,
        "sleep 300 >/dev/null 2>&1 & (sleep 301 >/dev/null 2>&1 &)",
    )
    .await?;
    let marker = s.marker().to_string();
    ensure!(
        ctx.marked(&marker).await?.len() >= 3,
        "setup: background jobs not found"
    );
    s.close().await?;
    let leaked = ctx.leaked(&marker, &[]).await?;
    ensure!(leaked.is_empty(), "survived close: {leaked:?}");
    Ok(())
}

pub(super) async fn hundred_sessions_concurrently(ctx: Ctx) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for i in 0..100u32 {
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = ctx.open().await?;
            ok(&mut s, &format!("N={i}")).await?;
            let out = ok(&mut s, "echo $((N * 2))").await?;
            s.close().await?;
            ensure!(out == (i * 2).to_string(), "session {i} got {out:?}");
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}
