//! What a session keeps between commands and what it reports about them:
//! shell state, exit codes, the environment a shell starts with.

use anyhow::ensure;

use crate::testkit::{ok, run, Ctx};

pub(super) async fn state_persists(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    ok(&mut s, "cd /tmp").await?;
    ok(&mut s, "export EK_A='one two'").await?;
    ok(&mut s, "ek_f() { echo \"f:$1:$EK_A\"; }").await?;
    ok(&mut s, "EK_LOCAL=7").await?;
    let out = ok(&mut s, "ek_f x; pwd; echo $EK_LOCAL").await?;
    ensure!(out == "f:x:one two\n/tmp\n7", "state lost: {out:?}");
    let r = run(&mut s, "cd /", 10).await?;
    ensure!(r.cwd == "/", "cwd not reported: {r:?}");
    s.close().await?;
    Ok(())
}

pub(super) async fn exit_codes(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    for (cmd, code) in [
        ("true", 0),
        ("false", 1),
        ("(exit 42)", 42),
        ("sh -c 'exit 7'", 7),
        ("! true", 1),
    ] {
        let r = run(&mut s, cmd, 10).await?;
        ensure!(
            r.exit_code == Some(code),
            "{cmd}: expected {code}, got {r:?}"
        );
        ensure!(!r.restarted && !r.timed_out, "{cmd}: {r:?}");
    }
    let r = run(&mut s, "no_such_command_ek", 10).await?;
    ensure!(r.exit_code == Some(127), "{r:?}");
    s.close().await?;
    Ok(())
}

pub(super) async fn environment_is_safe(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let out = ok(
        &mut s,
        "echo \"$TERM $PAGER $GIT_PAGER $NO_COLOR ${HISTFILE:-nohist}\"",
    )
    .await?;
    ensure!(out == "dumb cat cat 1 nohist", "{out:?}");
    let out = ok(&mut s, "echo \"$EXECKIT_SID\"").await?;
    ensure!(out == s.marker(), "{out:?}");
    s.close().await?;
    Ok(())
}
