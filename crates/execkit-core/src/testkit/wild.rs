//! Cases from agent workflows in the wild: what venvs, prompts, tracing
//! and traps do to a shell, and results must not show.

use std::time::{Duration, Instant};

use anyhow::ensure;

use super::cases::skip;
use super::{ok, run, Case, Ctx};
use crate::{protocol, RunResult};

pub(super) fn all() -> Vec<Case> {
    vec![
        case!(prompts_never_leak),
        case!(xtrace_shows_only_the_command),
        case!(debug_trap_fires_as_at_a_terminal),
        case!(idle_logout_is_not_a_success),
        case!(long_input_lines_are_refused),
        case!(timeout_never_types_into_the_program, super::cases::proc_fs),
        case!(timeout_of_a_builtin_read_keeps_state),
        case!(timeout_kills_forked_subshells, super::cases::proc_fs),
        case!(input_waits_are_reported, super::cases::proc_fs),
    ]
}

/// Nothing of execkit's own machinery may show in a result.
fn clean_of_machinery(r: &RunResult) -> anyhow::Result<()> {
    for needle in [
        "__EK",
        "EXECKIT_CMD",
        "command eval",
        "/dev/fd/9",
        "command printf",
    ] {
        ensure!(!r.output.contains(needle), "{needle:?} leaked: {r:?}");
    }
    Ok(())
}

async fn expect(s: &mut crate::Session, cmd: &str, want: &str) -> anyhow::Result<()> {
    let r = run(s, cmd, 20).await?;
    clean_of_machinery(&r)?;
    ensure!(
        r.output == want && r.exit_code == Some(0),
        "{cmd:?}: expected {want:?}, got {r:?}"
    );
    Ok(())
}

/// A venv's activate script, `PS1`/`PS2`, bash's `PROMPT_COMMAND` and
/// `PS0`, and a background job printing while the shell is idle: none of
/// it is any command's output.
async fn prompts_never_leak(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    // What `python3 -m venv`'s bin/activate does to the prompt.
    let dir = format!(
        "/tmp/execkit-venv-{}",
        protocol::nonce().expect("random bytes")
    );
    ok(
        &mut s,
        &format!(
            "mkdir -p {dir} && cat > {dir}/activate <<'EOF'\n\
             _OLD_PS1=\"${{PS1-}}\"\n\
             PS1=\"(venv) ${{PS1-}}\"\n\
             export PS1\n\
             deactivate() {{ PS1=\"$_OLD_PS1\"; export PS1; unset -f deactivate; }}\n\
             EOF"
        ),
    )
    .await?;
    expect(&mut s, &format!(". {dir}/activate"), "").await?;
    expect(&mut s, "echo hi", "hi").await?;
    expect(&mut s, "echo again", "again").await?;
    expect(&mut s, "deactivate", "").await?;
    expect(&mut s, "echo hi", "hi").await?;
    expect(&mut s, "PS1='XYZ> '; PS2='more> '", "").await?;
    expect(&mut s, "echo one", "one").await?;
    expect(&mut s, "for i in 1 2\ndo echo $i\ndone", "1\n2").await?;
    expect(&mut s, "cat <<EOF\na\nb\nEOF", "a\nb").await?;
    // bash runs these around every command; other shells ignore them.
    expect(&mut s, "PROMPT_COMMAND='echo pc'; PS0='ps0'", "").await?;
    expect(&mut s, "echo two", "two").await?;
    let long = "y".repeat(5000);
    expect(&mut s, &format!("echo {long}"), &long).await?;
    // Output of a background job while nothing runs belongs to no command.
    expect(&mut s, "(sleep 0.2; echo late) &", "").await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    expect(&mut s, "echo three", "three").await?;
    ok(&mut s, &format!("rm -rf {dir}")).await?;
    s.close().await?;
    Ok(())
}

/// Under `set -x` a result shows the command's own trace, as a terminal
/// would — never execkit's wrapper or its nonce.
async fn xtrace_shows_only_the_command(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    expect(&mut s, "set -x", "").await?;
    expect(&mut s, "echo hi", "+ echo hi\nhi").await?;
    expect(&mut s, "cd /tmp", "+ cd /tmp").await?;
    let r = run(&mut s, "false", 10).await?;
    clean_of_machinery(&r)?;
    ensure!(r.output == "+ false" && r.exit_code == Some(1), "{r:?}");
    // A syntax error is reported, with nothing of the wrapper in it.
    let r = run(&mut s, "echo (", 10).await?;
    clean_of_machinery(&r)?;
    ensure!(r.exit_code == Some(2), "{r:?}");
    expect(&mut s, "set +x", "+ set +x").await?;
    expect(&mut s, "echo plain", "plain").await?;
    // Turned on and used in one command.
    expect(&mut s, "set -x; echo b", "+ echo b\nb").await?;
    expect(&mut s, "set +x; echo c", "+ set +x\nc").await?;
    expect(&mut s, "echo d", "d").await?;
    s.close().await?;
    Ok(())
}

/// bash's DEBUG trap runs before each command a person types: once before
/// `echo hi`, never around execkit's own commands; and it can be removed.
async fn debug_trap_fires_as_at_a_terminal(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    if ok(&mut s, "echo ${BASH_VERSION:+bash}").await? != "bash" {
        s.close().await?;
        return Err(skip("DEBUG traps (bash only)"));
    }
    expect(&mut s, "trap 'echo dbg' DEBUG", "").await?;
    expect(&mut s, "echo hi", "dbg\nhi").await?;
    expect(&mut s, "f() { echo inf; }", "dbg").await?;
    expect(&mut s, "f", "dbg\ninf").await?;
    let r = run(&mut s, "false", 10).await?;
    clean_of_machinery(&r)?;
    ensure!(r.output == "dbg" && r.exit_code == Some(1), "{r:?}");
    // Removed for good (sourced text could not remove it).
    let r = run(&mut s, "trap - DEBUG", 10).await?;
    clean_of_machinery(&r)?;
    ensure!(r.exit_code == Some(0), "{r:?}");
    expect(&mut s, "echo bye", "bye").await?;
    s.close().await?;
    Ok(())
}

/// bash logs an idle shell out after `TMOUT` seconds. A command written to
/// a shell that died while idle did not run, and the result says so.
async fn idle_logout_is_not_a_success(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    if ok(&mut s, "echo ${BASH_VERSION:+bash}").await? != "bash" {
        s.close().await?;
        return Err(skip("TMOUT (bash only)"));
    }
    // An inherited TMOUT is scrubbed at start.
    ensure!(ok(&mut s, "echo ${TMOUT:-unset}").await? == "unset");
    let file = format!(
        "/tmp/execkit-tmout-{}",
        protocol::nonce().expect("random bytes")
    );
    ok(&mut s, "TMOUT=1").await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = run(&mut s, &format!("touch {file}; exit 3"), 20).await?;
    clean_of_machinery(&r)?;
    ensure!(
        r.exit_code.is_none()
            && r.restarted
            && !r.session_lost
            && r.error
                .as_deref()
                .is_some_and(|e| e.contains("did not run")),
        "{r:?}"
    );
    ensure!(!r.output.contains("auto-logout"), "{r:?}");
    let r = run(&mut s, &format!("test -e {file}"), 10).await?;
    ensure!(r.exit_code == Some(1), "the command ran after all: {r:?}");
    s.close().await?;
    Ok(())
}

/// A terminal keeps 4095 bytes of a line: a longer typed line is refused
/// with a reason, not cut short and reported as sent.
async fn long_input_lines_are_refused(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let opts = crate::RunOptions::timeout(Duration::from_secs(20))
        .yield_after(Some(Duration::from_millis(200)));
    let r = s.run("read -r x; echo ${#x}", opts).await?;
    ensure!(r.running, "{r:?}");
    let long = format!("{}\n", "z".repeat(5000));
    match s.send_input(&long).await {
        Err(crate::SessionError::Command(protocol::CommandError::LineTooLong { len: 5000 })) => {}
        other => anyhow::bail!("a 5000-byte line was not refused: {other:?}"),
    }
    s.send_input(&format!("{}\n", "z".repeat(4000))).await?;
    let r = s.poll(Duration::from_secs(10)).await?;
    ensure!(r.output.trim() == "4000" && r.exit_code == Some(0), "{r:?}");
    s.close().await?;
    Ok(())
}

/// A timed-out program that ignores SIGINT and reads its input is stopped
/// with signals: nothing is typed into it (it could learn a nonce and
/// forge a result), the shell keeps its state, the next result is clean.
async fn timeout_never_types_into_the_program(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    ok(&mut s, "export EK_V=kept; cd /tmp").await?;
    let t = Instant::now();
    let r = run(
        &mut s,
        "sh -c 'trap \"\" INT; while read -r l; do echo \"got:$l\"; done'",
        1,
    )
    .await?;
    clean_of_machinery(&r)?;
    ensure!(
        r.timed_out && r.exit_code.is_none() && !r.restarted,
        "{r:?}"
    );
    ensure!(
        !r.output.contains("got:"),
        "input was typed into the program: {r:?}"
    );
    ensure!(r.cwd == "/tmp", "{r:?}");
    ensure!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
    expect(&mut s, "echo $EK_V; pwd", "kept\n/tmp").await?;
    let pid: u32 = ok(&mut s, "echo $$").await?.parse()?;
    let left = ctx.leaked(s.marker(), &[pid]).await?;
    ensure!(left.is_empty(), "left running: {left:?}");
    s.close().await?;
    Ok(())
}

/// `read` is the shell itself waiting on the terminal: a timeout stops
/// it (the shell owns the terminal, so Ctrl-C and a fresh sentinel are
/// safe), and nothing is lost — on every shell.
async fn timeout_of_a_builtin_read_keeps_state(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    ok(&mut s, "export K=1").await?;
    // Typed at once with the Ctrl-C, the recovery line raced the shell's
    // handling of SIGINT (8400d69 lost it, and the state, in 4 of 6 runs
    // on bash): several rounds.
    for _ in 0..3 {
        let r = run(&mut s, "read x", 1).await?;
        clean_of_machinery(&r)?;
        ensure!(r.timed_out && !r.restarted, "{r:?}");
        expect(&mut s, "echo ${K:-lost}", "1").await?;
    }
    let r = run(&mut s, "while :; do :; done", 1).await?;
    ensure!(r.timed_out && !r.restarted, "{r:?}");
    expect(&mut s, "echo ${K:-lost}", "1").await?;
    s.close().await?;
    Ok(())
}

/// A forked subshell never exec's, so it carries no per-command marker;
/// a timeout still kills it (and what it starts), while a job an earlier
/// command left running on purpose lives on.
async fn timeout_kills_forked_subshells(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let pid: u32 = ok(&mut s, "echo $$").await?.parse()?;
    ok(&mut s, "sleep 300 >/dev/null 2>&1 &").await?;
    let r = run(
        &mut s,
        "(while :; do sleep 1; echo tick; done) & sleep 66",
        2,
    )
    .await?;
    ensure!(r.timed_out, "{r:?}");
    let left = ctx.leaked(s.marker(), &[pid]).await?;
    let cmds: Vec<&str> = left.iter().map(|(_, c)| c.as_str()).collect();
    ensure!(
        !cmds
            .iter()
            .any(|c| c.contains("66") || c.contains("sleep 1")),
        "the timed-out command's processes survived: {left:?}"
    );
    ensure!(
        left.iter().all(|(_, c)| c.contains("300")) && !left.is_empty(),
        "the earlier job should live, nothing else: {left:?}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    expect(&mut s, "echo quiet", "quiet").await?;
    s.close().await?;
    Ok(())
}

/// A command blocked reading the terminal is told apart from one that is
/// merely quiet: stopped and reported for a one-shot run (nobody could
/// answer), reported while running for a caller that can answer, never for
/// a command given its input, never for a quiet `sleep`.
async fn input_waits_are_reported(ctx: Ctx) -> anyhow::Result<()> {
    use crate::{InputWait, RunOptions};
    let mut s = ctx.open().await?;
    ok(&mut s, "export K=kept").await?;
    let stop = || RunOptions::timeout(Duration::from_secs(60)).input_wait(InputWait::Stop);
    for cmd in ["read x", "printf 'Continue? [Y/n] '; read -r a", "cat"] {
        let t = Instant::now();
        let r = s.run(cmd, stop()).await?;
        clean_of_machinery(&r)?;
        ensure!(
            r.waiting_for_input && !r.timed_out && !r.restarted && r.exit_code.is_none(),
            "{cmd:?}: {r:?}"
        );
        ensure!(
            t.elapsed() < Duration::from_secs(20),
            "{cmd:?} took {:?}",
            t.elapsed()
        );
        expect(&mut s, "echo $K", "kept").await?;
    }
    let r = s
        .run("printf 'Continue? [Y/n] '; read -r a", stop())
        .await?;
    ensure!(
        r.output.starts_with("Continue? [Y/n]"),
        "the prompt is in the output: {r:?}"
    );
    // Quiet is not waiting.
    let r = s.run("sleep 3; echo slept", stop()).await?;
    ensure!(!r.waiting_for_input && r.output == "slept", "{r:?}");
    // Its input given, it does not wait on the terminal.
    let r = s
        .run_with_stdin("sleep 2; read -r x; echo got:$x", b"fed\n", stop())
        .await?;
    ensure!(!r.waiting_for_input && r.output == "got:fed", "{r:?}");
    // A caller that can answer hears at once, answers, and gets the result.
    let ask = RunOptions::timeout(Duration::from_secs(60)).input_wait(InputWait::Yield);
    let t = Instant::now();
    let r = s
        .run("printf 'name? '; read -r n; echo \"hi $n\"", ask)
        .await?;
    ensure!(
        r.running && r.waiting_for_input && r.output == "name? ",
        "{r:?}"
    );
    ensure!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    s.send_input("bob\n").await?;
    let r = s.poll(Duration::from_secs(20)).await?;
    ensure!(
        !r.running && !r.waiting_for_input && r.exit_code == Some(0) && r.output == "hi bob",
        "{r:?}"
    );
    s.close().await?;
    Ok(())
}
