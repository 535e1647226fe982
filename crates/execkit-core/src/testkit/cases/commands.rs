//! Command text reaches the shell intact, whatever its size or quoting,
//! and text that is not a command is refused or answered, never hangs.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};

use crate::testkit::{ok, run, Ctx};
use crate::RunOptions;

pub(super) async fn heredoc_and_multiline(ctx: Ctx) -> anyhow::Result<()> {
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

pub(super) async fn quoting_torture(ctx: Ctx) -> anyhow::Result<()> {
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

pub(super) async fn ansi_c_quoting(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let out = ok(&mut s, r"printf '[%s]' $'a\tb\nc' $'it\'s'").await?;
    ensure!(out == "[a\tb\nc][it's]", "{out:?}");
    s.close().await?;
    Ok(())
}

pub(super) async fn one_megabyte_command(ctx: Ctx) -> anyhow::Result<()> {
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

pub(super) async fn ten_kilobyte_command(ctx: Ctx) -> anyhow::Result<()> {
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

pub(super) async fn syntax_error_is_prompt(ctx: Ctx) -> anyhow::Result<()> {
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

pub(super) async fn bad_commands_are_refused(ctx: Ctx) -> anyhow::Result<()> {
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
