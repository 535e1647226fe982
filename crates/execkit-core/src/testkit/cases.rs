//! The cases. Each asserts real behaviour of a real shell on the target.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};

use super::{ok, run, Capabilities, Case, Ctx, Skip};
use crate::session::last_chars;
use crate::{protocol, RunOptions, RunResult, Session};

/// Cases that load the target enough to disturb others; they run alone.
pub(super) const HEAVY: &[&str] = &[
    "hundred_sessions_concurrently",
    "big_output_is_capped_and_spooled",
    "one_megabyte_command",
];

pub(super) fn all() -> Vec<Case> {
    vec![
        case!(state_persists),
        case!(exit_codes),
        case!(stderr_is_captured),
        case!(output_without_final_newline),
        case!(heredoc_and_multiline),
        case!(quoting_torture),
        case!(ansi_c_quoting, |c: &Capabilities| (!c.ansi_c_quoting)
            .then_some("$'…' quoting")),
        case!(forged_sentinel_is_output),
        case!(exit_restarts_shell),
        case!(set_e_restarts_shell),
        case!(exec_restarts_shell),
        case!(timeout_interrupts_and_keeps_session, proc_fs),
        case!(timeout_escalates_when_sigint_ignored, proc_fs),
        case!(timeout_kills_background_children, proc_fs),
        case!(background_job_returns_at_once),
        case!(no_job_control_noise),
        case!(no_job_notice_from_stored_code),
        case!(stdin_is_staged_on_the_target),
        case!(read_does_not_hang),
        case!(ansi_is_stripped),
        case!(invalid_utf8_and_nul),
        case!(unicode_round_trip),
        case!(environment_is_safe),
        case!(big_output_is_capped_and_spooled),
        case!(one_megabyte_line_of_output),
        case!(one_megabyte_command),
        case!(ten_kilobyte_command),
        case!(syntax_error_is_prompt),
        case!(bad_commands_are_refused),
        case!(killed_shell_is_replaced, proc_fs),
        case!(
            sigint_ignored_parent_still_interrupts,
            |c: &Capabilities| {
                (!c.host_signals).then_some("shells that are children of this process")
            }
        ),
        case!(close_leaves_no_process, proc_fs),
        case!(hundred_sessions_concurrently),
        case!(yield_then_poll),
        case!(send_input_feeds_read),
        case!(interrupt_running_command),
        case!(python_repl_through_input),
        case!(host_drives_yielded_commands),
    ]
}

pub(super) fn proc_fs(c: &Capabilities) -> Option<&'static str> {
    (!c.proc_fs).then_some("/proc on the target")
}

async fn state_persists(ctx: Ctx) -> anyhow::Result<()> {
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

async fn exit_codes(ctx: Ctx) -> anyhow::Result<()> {
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

async fn stderr_is_captured(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let r = run(&mut s, "echo out; echo err >&2; echo out2", 10).await?;
    ensure!(r.output == "out\nerr\nout2", "{r:?}");
    s.close().await?;
    Ok(())
}

async fn output_without_final_newline(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    ensure!(ok(&mut s, "printf abc").await? == "abc");
    ensure!(
        ok(&mut s, "printf 'a\\n\\n'").await? == "a\n",
        "only one final newline is trimmed"
    );
    ensure!(ok(&mut s, "true").await?.is_empty());
    s.close().await?;
    Ok(())
}

async fn heredoc_and_multiline(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let out = ok(
        &mut s,
        "cat <<'EOF'\nline one\n  $HOME stays literal\n\ttab\nEOF",
    )
    .await?;
    ensure!(out == "line one\n  $HOME stays literal\n\ttab", "{out:?}");
    let out = ok(&mut s, "X=5\ncat <<EOF\nx is $X\nEOF").await?;
    ensure!(out == "x is 5", "{out:?}");
    let script = "for i in 1 2 3; do\n  if [ $i -eq 2 ]; then\n    echo two\n  else\n    echo $i\n  fi\ndone";
    ensure!(ok(&mut s, script).await? == "1\ntwo\n3");
    ensure!(
        ok(&mut s, "echo a \\\n  b").await? == "a b",
        "line continuation"
    );
    s.close().await?;
    Ok(())
}

async fn quoting_torture(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let nasty = r#"it's "quoted" \back\\slash $HOME `date` $(id) ; | & > < * ? [ ] { } ~ # ! % ^"#;
    // Through a quoted heredoc the text must arrive byte for byte.
    let out = ok(&mut s, &format!("cat <<'EOF'\n{nasty}\nEOF")).await?;
    ensure!(out == nasty, "heredoc: {out:?}");
    let out = ok(
        &mut s,
        r#"printf '%s|' 'single' "double \"q\" \$x" back\\slash 'it'\''s'"#,
    )
    .await?;
    ensure!(out == r#"single|double "q" $x|back\slash|it's|"#, "{out:?}");
    let out = ok(&mut s, "echo '''' \"\" '\"' \"'\"").await?;
    ensure!(out == "  \" '", "{out:?}");
    // Control characters in the command text must not reach the line discipline.
    let out = ok(
        &mut s,
        "printf '%s' 'a\u{3}b\u{1a}c\u{15}d\u{4}e' | od -An -c | tr -s ' '",
    )
    .await?;
    ensure!(out.contains("a 003 b 032 c 025 d 004 e"), "{out:?}");
    s.close().await?;
    Ok(())
}

async fn ansi_c_quoting(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let out = ok(&mut s, r"printf '[%s]' $'a\tb\nc' $'it\'s'").await?;
    ensure!(out == "[a\tb\nc][it's]", "{out:?}");
    s.close().await?;
    Ok(())
}

async fn forged_sentinel_is_output(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let fake = "__EK_0123456789abcdef:0:/forged:0123456789abcdef_EK__";
    let r = run(
        &mut s,
        &format!("echo '{fake}'; printf '__EK''_%s:0:/x:%s_EK__\\n' \"$EXECKIT_CMD\" \"$EXECKIT_CMD\"; echo after; false"),
        10,
    )
    .await?;
    ensure!(
        r.exit_code == Some(1),
        "a forged sentinel ended the command: {r:?}"
    );
    ensure!(
        r.output.starts_with(fake) && r.output.ends_with("after"),
        "{r:?}"
    );
    ensure!(r.cwd != "/forged" && r.cwd != "/x", "{r:?}");
    s.close().await?;
    Ok(())
}

async fn exit_restarts_shell(ctx: Ctx) -> anyhow::Result<()> {
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

async fn set_e_restarts_shell(ctx: Ctx) -> anyhow::Result<()> {
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

async fn exec_restarts_shell(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let r = run(&mut s, "exec true", 10).await?;
    ensure!(r.exit_code == Some(0) && r.restarted, "{r:?}");
    ensure!(ok(&mut s, "echo ok").await? == "ok");
    s.close().await?;
    Ok(())
}

async fn shell_pid(s: &mut Session) -> anyhow::Result<u32> {
    ok(s, "echo $$").await?.trim().parse().context("parsing $$")
}

async fn timeout_interrupts_and_keeps_session(ctx: Ctx) -> anyhow::Result<()> {
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

async fn timeout_escalates_when_sigint_ignored(ctx: Ctx) -> anyhow::Result<()> {
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

async fn timeout_kills_background_children(ctx: Ctx) -> anyhow::Result<()> {
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

async fn background_job_returns_at_once(ctx: Ctx) -> anyhow::Result<()> {
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

async fn no_job_control_noise(ctx: Ctx) -> anyhow::Result<()> {
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
async fn no_job_notice_from_stored_code(ctx: Ctx) -> anyhow::Result<()> {
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

/// `run_with_stdin`: exact bytes (every value, NUL included) reach the
/// command's stdin, the command runs in the session's shell (state
/// persists), and the staging file is gone before the command ends.
async fn stdin_is_staged_on_the_target(ctx: Ctx) -> anyhow::Result<()> {
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

async fn read_does_not_hang(ctx: Ctx) -> anyhow::Result<()> {
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

async fn ansi_is_stripped(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let out = ok(
        &mut s,
        r"printf '\033[1;31mred\033[0m \033]0;title\007ok\t\033[2Jtab\r\nend\n'",
    )
    .await?;
    ensure!(out == "red ok\ttab\nend", "{out:?}");
    s.close().await?;
    Ok(())
}

async fn invalid_utf8_and_nul(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let out = ok(&mut s, r"printf 'a\377b\000c\303'; printf '\251d\n'").await?;
    ensure!(out == "a\u{FFFD}bcéd", "{out:?}");
    s.close().await?;
    Ok(())
}

async fn unicode_round_trip(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let text = "héllo 世界 🎉 ñ Ωμέγα";
    ensure!(ok(&mut s, &format!("echo '{text}'")).await? == text);
    ok(&mut s, &format!("export EK_U='{text}'")).await?;
    ensure!(ok(&mut s, "printf '%s\\n' \"$EK_U\"").await? == text);
    let dir = format!("/tmp/ek-ü-{}", s.id());
    let r = run(&mut s, &format!("mkdir -p '{dir}' && cd '{dir}'"), 10).await?;
    ensure!(r.cwd == dir, "{r:?}");
    ok(&mut s, &format!("cd / && rmdir '{dir}'")).await?;
    s.close().await?;
    Ok(())
}

async fn environment_is_safe(ctx: Ctx) -> anyhow::Result<()> {
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

async fn big_output_is_capped_and_spooled(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let n = 2_800_000; // ~20 MB
    let r = run(&mut s, &format!("seq 1 {n}"), 120).await?;
    ensure!(
        r.exit_code == Some(0) && r.truncated,
        "{:?}",
        (r.exit_code, r.truncated, r.error)
    );
    let expected: String = (1..=n).map(|i| format!("{i}\n")).collect();
    ensure!(expected.len() > 20_000_000);
    ensure!(
        r.output.chars().count() < 31_000,
        "output not capped: {} chars",
        r.output.len()
    );
    ensure!(r.output.starts_with(&expected[..15_000]), "head wrong");
    ensure!(
        expected
            .trim_end()
            .ends_with(&r.output[r.output.len() - 14_000..]),
        "tail wrong"
    );
    ensure!(r.output.contains("characters elided"), "no elision line");
    let path = r.output_path.clone().context("no output_path")?;
    let spooled = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        spooled == expected.as_bytes(),
        "spool file differs ({} vs {} bytes)",
        spooled.len(),
        expected.len()
    );
    std::fs::remove_file(path)?;
    ensure!(ok(&mut s, "echo after").await? == "after");
    s.close().await?;
    Ok(())
}

async fn one_megabyte_line_of_output(ctx: Ctx) -> anyhow::Result<()> {
    let mut config = ctx.config();
    config.output_limit = 2_000_000;
    let mut s = ctx.open_with(config).await?;
    let out = ok(&mut s, "head -c 1000000 /dev/zero | tr '\\000' x; echo").await?;
    ensure!(
        out.len() == 1_000_000 && out.bytes().all(|b| b == b'x'),
        "got {} bytes",
        out.len()
    );
    s.close().await?;
    Ok(())
}

async fn one_megabyte_command(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let body: String = (0..1_000_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let r = run(&mut s, &format!("printf %s '{body}' | wc -c"), 120).await?;
    ensure!(
        r.exit_code == Some(0) && r.output.trim() == "1000000",
        "{:?}",
        (&r.exit_code, &r.output)
    );
    let r = run(&mut s, &format!("V='{body}'; echo ${{#V}}"), 120).await?;
    ensure!(r.output.trim() == "1000000", "{:?}", r.output);
    s.close().await?;
    Ok(())
}

async fn ten_kilobyte_command(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let line: String = "0123456789".repeat(500);
    let text = format!("{line}\nshort\n{line}'quote'{line}");
    let out = ok(&mut s, &format!("cat <<'EOF'\n{text}\nEOF")).await?;
    ensure!(
        out == text,
        "heredoc of 10 KB came back different ({} vs {} bytes)",
        out.len(),
        text.len()
    );
    let out = ok(&mut s, &format!("echo {line} | wc -c")).await?;
    ensure!(out.trim() == "5001", "{out:?}");
    s.close().await?;
    Ok(())
}

async fn syntax_error_is_prompt(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    for bad in [
        "if then fi",
        "echo 'unterminated",
        "( echo x",
        "done",
        "echo $(",
    ] {
        let t = Instant::now();
        let r = run(&mut s, bad, 20).await?;
        ensure!(
            !r.timed_out && t.elapsed() < Duration::from_secs(5),
            "{bad}: hung: {r:?}"
        );
        ensure!(r.exit_code.is_some_and(|c| c != 0), "{bad}: {r:?}");
    }
    ensure!(ok(&mut s, "echo still-here").await? == "still-here");
    s.close().await?;
    Ok(())
}

async fn bad_commands_are_refused(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    for bad in ["echo a\0b", "", "   "] {
        match s.run(bad, RunOptions::default()).await {
            Err(crate::SessionError::Command(_)) => {}
            other => bail!("{bad:?} was not refused: {other:?}"),
        }
    }
    ensure!(ok(&mut s, "echo fine").await? == "fine");
    s.close().await?;
    Ok(())
}

/// A shell killed from outside on a live target is replaced: the result
/// says so (no exit code, `restarted`, an error naming the signal), state
/// is gone, the session goes on, nothing of the old shell is left.
async fn killed_shell_is_replaced(ctx: Ctx) -> anyhow::Result<()> {
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

async fn sigint_ignored_parent_still_interrupts(ctx: Ctx) -> anyhow::Result<()> {
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

async fn close_leaves_no_process(ctx: Ctx) -> anyhow::Result<()> {
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

async fn hundred_sessions_concurrently(ctx: Ctx) -> anyhow::Result<()> {
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

fn yielding(secs: u64, yield_ms: u64) -> RunOptions {
    RunOptions::timeout(Duration::from_secs(secs))
        .yield_after(Some(Duration::from_millis(yield_ms)))
}

async fn yield_then_poll(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let r = s
        .run("echo first; sleep 1; echo second", yielding(30, 300))
        .await?;
    // Partial outputs are exact deltas (newlines kept), so they concatenate.
    ensure!(
        r.running && r.exit_code.is_none() && r.output == "first\n",
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
    ensure!(out == "second", "poll returned {out:?}");
    ensure!(ok(&mut s, "echo next").await? == "next");
    s.close().await?;
    Ok(())
}

async fn send_input_feeds_read(ctx: Ctx) -> anyhow::Result<()> {
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

async fn interrupt_running_command(ctx: Ctx) -> anyhow::Result<()> {
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

async fn python_repl_through_input(ctx: Ctx) -> anyhow::Result<()> {
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

async fn host_drives_yielded_commands(ctx: Ctx) -> anyhow::Result<()> {
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

pub(super) fn skip(why: &str) -> anyhow::Error {
    Skip(why.to_string()).into()
}
