//! A running command driven between calls: yield and poll, input,
//! interrupt, a REPL, `Host` driving in the background, staged stdin.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};

use super::skip;
use crate::testkit::{ok, run, Ctx};
use crate::{session::last_chars, RunOptions};

/// `run_with_stdin`: exact bytes (every value, NUL included) reach the
/// command's stdin, the command runs in the session's shell (state
/// persists), and the staging file is gone before the command ends.
pub(super) async fn stdin_is_staged_on_the_target(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let opts = || RunOptions::timeout(Duration::from_secs(60));
    let data: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let r = s
        .run_with_stdin("cd /tmp && od -An -v -tx1", &data, opts())
        .await?;
    ensure!(r.exit_code == Some(0), "{r:?}");
    ensure!(r.command == "cd /tmp && od -An -v -tx1", "{:?}", r.command);
    let got: Vec<u8> = r
        .output
        .split_whitespace()
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("od output: {:?}", last_chars(&r.output, 200)))?;
    ensure!(
        got == data,
        "{} bytes came back, not the 4096 sent",
        got.len()
    );
    ensure!(ok(&mut s, "pwd").await? == "/tmp", "state did not persist");
    let gone = ok(&mut s, "[ -e \"$__ek_in\" ] && echo left || echo gone").await?;
    ensure!(gone == "gone", "staging file: {gone}");

    // Big input, `read`, and empty input.
    let big = vec![b'x'; 1_000_000];
    let r = s.run_with_stdin("wc -c", &big, opts()).await?;
    ensure!(r.output.trim() == "1000000", "{r:?}");
    let r = s
        .run_with_stdin("read a; echo \"got $a\"", b"line1\nline2\n", opts())
        .await?;
    ensure!(r.output == "got line1", "{r:?}");
    let r = s.run_with_stdin("wc -c", b"", opts()).await?;
    ensure!(r.output.trim() == "0", "{r:?}");
    s.close().await?;
    Ok(())
}

fn yielding(secs: u64, yield_ms: u64) -> RunOptions {
    RunOptions::timeout(Duration::from_secs(secs))
        .yield_after(Some(Duration::from_millis(yield_ms)))
}

pub(super) async fn yield_then_poll(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let r = s
        .run("echo first; sleep 1; echo second", yielding(30, 300))
        .await?;
    // Partial outputs are exact deltas that concatenate to the whole
    // output: a final newline waits until more follows (it may be the one
    // the end trims).
    ensure!(
        r.running && r.exit_code.is_none() && r.output == "first",
        "{r:?}"
    );
    match s.run("echo no", RunOptions::default()).await {
        Err(crate::SessionError::Busy) => {}
        other => bail!("a second command was accepted while one runs: {other:?}"),
    }
    let mut out = String::new();
    let mut last = r;
    for _ in 0..20 {
        last = s.poll(Duration::from_millis(500)).await?;
        out.push_str(&last.output);
        if !last.running {
            break;
        }
    }
    ensure!(!last.running && last.exit_code == Some(0), "{last:?}");
    ensure!(out == "\nsecond", "poll returned {out:?}");
    ensure!(ok(&mut s, "echo next").await? == "next");
    s.close().await?;
    Ok(())
}

/// Wherever the reads fall, the parts of a yielded command add up to
/// exactly what one `run` returns: here the last line arrives a second
/// before the end, in a part of its own, and its newline is still the one
/// the end trims.
pub(super) async fn partial_outputs_add_up_to_the_whole(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let cmd = "echo one; sleep 1; echo two; sleep 1";
    let mut last = s.run(cmd, yielding(30, 300)).await?;
    let mut parts = vec![last.output.clone()];
    while last.running {
        last = s.poll(Duration::from_millis(300)).await?;
        parts.push(last.output.clone());
    }
    ensure!(last.exit_code == Some(0), "{last:?}");
    let whole = ok(&mut s, cmd).await?;
    ensure!(whole == "one\ntwo", "{whole:?}");
    ensure!(parts.concat() == whole, "parts {parts:?}");
    s.close().await?;
    Ok(())
}

pub(super) async fn send_input_feeds_read(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let r = s.run("read x; echo got $x", yielding(30, 300)).await?;
    ensure!(r.running, "{r:?}");
    s.send_input("hello world\n").await?;
    let r = s.poll(Duration::from_secs(10)).await?;
    ensure!(!r.running && r.exit_code == Some(0), "{r:?}");
    ensure!(r.output == "got hello world", "{r:?}");
    match s.send_input("stray\n").await {
        Err(crate::SessionError::Idle) => {}
        other => bail!("input accepted with no command running: {other:?}"),
    }
    s.close().await?;
    Ok(())
}

pub(super) async fn interrupt_running_command(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    ok(&mut s, "cd /tmp").await?;
    let r = s.run("sleep 30", yielding(60, 200)).await?;
    ensure!(r.running, "{r:?}");
    let t = Instant::now();
    let r = s.interrupt().await?;
    ensure!(
        !r.running && !r.timed_out && r.exit_code.is_none() && !r.restarted,
        "{r:?}"
    );
    ensure!(
        t.elapsed() < Duration::from_secs(10),
        "interrupt took {:?}",
        t.elapsed()
    );
    ensure!(ok(&mut s, "pwd").await? == "/tmp", "session state lost");
    s.close().await?;
    Ok(())
}

/// [`RunOptions::wake`]: a notification during the wait, or one given
/// before it starts, returns the command as still running (what a
/// cancelled caller gets back); `interrupt` then ends it with every
/// process it started, and the session goes on.
pub(super) async fn wake_yields_then_interrupt_cleans_up(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    ok(&mut s, "cd /tmp").await?;
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let opts = RunOptions::timeout(Duration::from_secs(60)).wake(wake.clone());
    // Notified while the wait is under way (the result is the same if
    // the notification came first).
    let notify = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        wake.notify_one();
        std::future::pending::<()>().await
    };
    let r = tokio::select! {
        r = s.run("sleep 300 & echo started; sleep 300", opts) => r?,
        () = notify => unreachable!("never ends"),
    };
    ensure!(r.running && r.exit_code.is_none(), "{r:?}");
    let r = s.interrupt().await?;
    ensure!(!r.running && !r.timed_out && r.exit_code.is_none(), "{r:?}");
    let shell = s.run("echo $$", RunOptions::default()).await?.output;
    let spare: Vec<u32> = shell.trim().parse().into_iter().collect();
    let left = ctx.leaked(s.marker(), &spare).await?;
    ensure!(
        left.is_empty(),
        "left running after the interrupt: {left:?}"
    );

    // Notified before the run: it yields as soon as the command is out.
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    wake.notify_one();
    let opts = RunOptions::timeout(Duration::from_secs(60)).wake(wake);
    let r = s.run("sleep 300", opts).await?;
    ensure!(r.running, "{r:?}");
    let r = s.interrupt().await?;
    ensure!(!r.running && r.exit_code.is_none(), "{r:?}");
    ensure!(ok(&mut s, "pwd").await? == "/tmp", "session state lost");
    s.close().await?;
    Ok(())
}

pub(super) async fn python_repl_through_input(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    if run(&mut s, "command -v python3", 10).await?.exit_code != Some(0) {
        s.close().await?;
        return Err(skip("python3 is not installed on the target"));
    }
    let r = s.run("python3 -i -q", yielding(60, 1000)).await?;
    ensure!(r.running, "{r:?}");
    s.send_input("1+1\n").await?;
    let mut out = String::new();
    for _ in 0..20 {
        let r = s.poll(Duration::from_millis(250)).await?;
        out.push_str(&r.output);
        if out
            .lines()
            .any(|l| l.trim().trim_start_matches(">>>").trim() == "2")
        {
            break;
        }
    }
    ensure!(
        out.lines()
            .any(|l| l.trim().trim_start_matches(">>>").trim() == "2"),
        "REPL said {out:?}"
    );
    s.send_input("exit()\n").await?;
    let r = s.poll(Duration::from_secs(10)).await?;
    ensure!(!r.running && r.exit_code == Some(0), "{r:?}");
    ensure!(ok(&mut s, "echo back").await? == "back");
    s.close().await?;
    Ok(())
}

pub(super) async fn host_drives_yielded_commands(ctx: Ctx) -> anyhow::Result<()> {
    use crate::host::{Host, HostConfig, OpenRequest};
    let mut config = HostConfig::default();
    config.session = ctx.config();
    config.allow_targets = vec![ctx.target().to_string()];
    let host = Host::new(config, std::sync::Arc::new(crate::Observer::default()));
    match host
        .open(OpenRequest {
            target: Some("elsewhere:x".into()),
            ..Default::default()
        })
        .await
    {
        Err(crate::host::HostError::TargetNotAllowed { .. }) => {}
        other => bail!("a target outside the allow list was opened: {other:?}"),
    }
    let open = |name: &str| OpenRequest {
        name: Some(name.into()),
        target: Some(ctx.target().into()),
        ..Default::default()
    };
    host.open(open("a")).await?;
    host.open(open("b")).await?;
    ensure!(host.list().len() == 2);
    // Output and the result arrive while nobody polls.
    let first = host
        .run("a", "echo one; sleep 0.5; echo two", yielding(30, 100))
        .await?;
    ensure!(first.running, "{first:?}");
    // The hard timeout fires without a poll, too.
    let r = host.run("b", "sleep 30", yielding(1, 100)).await?;
    ensure!(r.running, "{r:?}");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let a = host.poll("a", Duration::from_millis(10)).await?;
    ensure!(!a.running && a.exit_code == Some(0), "{a:?}");
    let all = format!("{}{}", first.output, a.output);
    ensure!(
        all == "one\ntwo",
        "output split as {:?} + {:?}",
        first.output,
        a.output
    );
    let b = host.poll("b", Duration::from_millis(10)).await?;
    ensure!(!b.running && b.timed_out, "{b:?}");
    ensure!(
        host.run("a", "echo again", RunOptions::default())
            .await?
            .output
            == "again"
    );
    host.shutdown().await;
    ensure!(host.list().is_empty());
    Ok(())
}
