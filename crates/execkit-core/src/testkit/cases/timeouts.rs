//! A timeout interrupts what the command started and keeps the session:
//! Ctrl-C first, escalation when it is ignored.

use std::time::{Duration, Instant};

use anyhow::ensure;

use super::shell_pid;
use crate::testkit::{ok, run, Ctx};

pub(super) async fn timeout_interrupts_and_keeps_session(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    ok(&mut s, "export EK_KEEP=kept; cd /tmp").await?;
    let pid = shell_pid(&mut s).await?;
    let t = Instant::now();
    let r = run(&mut s, "echo started; sleep 30", 1).await?;
    let took = t.elapsed();
    ensure!(
        r.timed_out && r.exit_code.is_none() && !r.restarted,
        "{r:?}"
    );
    ensure!(
        r.output.starts_with("started"),
        "partial output kept: {r:?}"
    );
    ensure!(took < Duration::from_secs(10), "took {took:?}");
    let leaked = ctx.leaked(s.marker(), &[pid]).await?;
    ensure!(
        leaked.is_empty(),
        "processes survived the timeout: {leaked:?}"
    );
    let r = run(&mut s, "echo $EK_KEEP; pwd", 10).await?;
    ensure!(
        r.output == "kept\n/tmp" && !r.restarted,
        "session state lost: {r:?}"
    );
    s.close().await?;
    Ok(())
}

pub(super) async fn timeout_escalates_when_sigint_ignored(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let t = Instant::now();
    ok(&mut s, "export EK_KEEP=kept").await?;
    let r = run(&mut s, "trap '' INT; sleep 60", 1).await?;
    let took = t.elapsed();
    // SIGTERM ends `sleep`; the shell carries on: no restart, state kept.
    ensure!(
        r.timed_out && !r.restarted && r.exit_code.is_none(),
        "{r:?}"
    );
    ensure!(ok(&mut s, "echo $EK_KEEP").await? == "kept");
    // Bounded well below the 60 s the command would take: no hang.
    ensure!(took < Duration::from_secs(30), "took {took:?}");
    let pid = shell_pid(&mut s).await?;
    let leaked = ctx.leaked(s.marker(), &[pid]).await?;
    ensure!(
        leaked.is_empty(),
        "processes survived escalation: {leaked:?}"
    );
    s.close().await?;
    Ok(())
}

pub(super) async fn timeout_kills_background_children(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let pid = shell_pid(&mut s).await?;
    // An earlier background job must survive; the timed-out command's must not.
    ok(&mut s, "sleep 300 >/dev/null 2>&1 &").await?;
    let r = run(&mut s, "sleep 301 >/dev/null 2>&1 & sleep 30", 1).await?;
    ensure!(r.timed_out, "{r:?}");
    let left = ctx.leaked(s.marker(), &[pid]).await;
    let left = left?;
    let cmds: Vec<&str> = left.iter().map(|(_, c)| c.as_str()).collect();
    ensure!(
        !cmds.iter().any(|c| c.contains("301")),
        "timed-out command's child survived: {left:?}"
    );
    if ctx.caps().background_ignores_sigint {
        ensure!(
            cmds.iter().any(|c| c.contains("300")),
            "earlier background job was killed: {left:?}"
        );
    }
    s.close().await?;
    Ok(())
}

pub(super) async fn read_does_not_hang(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let t = Instant::now();
    let r = run(&mut s, "read x; echo got $x", 1).await?;
    ensure!(
        r.timed_out && t.elapsed() < Duration::from_secs(10),
        "{r:?} after {:?}",
        t.elapsed()
    );
    ensure!(ok(&mut s, "echo fine").await? == "fine");
    s.close().await?;
    Ok(())
}

pub(super) async fn sigint_ignored_parent_still_interrupts(ctx: Ctx) -> anyhow::Result<()> {
    // As if execkit had been started from a background job: SIGINT ignored.
    // SAFETY: setting a signal disposition; nothing in this process relies on SIGINT.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let mut s = ctx.open().await?;
    let t = Instant::now();
    let r = run(&mut s, "sleep 30", 1).await?;
    ensure!(
        r.timed_out && !r.restarted,
        "Ctrl-C did not work, the shell had to be killed: {r:?}"
    );
    ensure!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    let out = ok(&mut s, "grep SigIgn /proc/$$/status").await?;
    ensure!(
        out.ends_with("0000000000000000") || !out.ends_with('2'),
        "shell inherited ignored signals: {out}"
    );
    s.close().await?;
    Ok(())
}
