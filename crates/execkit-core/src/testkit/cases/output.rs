//! What comes back: stdout and stderr in order, cleaned (ANSI, UTF-8,
//! NUL), never ended by a forged sentinel, capped and spooled when big.

use anyhow::{ensure, Context as _};

use crate::testkit::{ok, run, Ctx};
use crate::RunOptions;

pub(super) async fn stderr_is_captured(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let r = run(&mut s, "echo out; echo err >&2; echo out2", 10).await?;
    ensure!(r.output == "out\nerr\nout2", "{r:?}");
    s.close().await?;
    Ok(())
}

pub(super) async fn output_without_final_newline(ctx: Ctx) -> anyhow::Result<()> {
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

pub(super) async fn final_newline_kept_on_request(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let keep = |secs: u64| {
        RunOptions::timeout(std::time::Duration::from_secs(secs)).keep_final_newline(true)
    };
    for (cmd, want) in [
        ("printf abc", "abc"),
        ("echo abc", "abc\n"),
        ("printf 'a\\n\\n'", "a\n\n"),
        ("true", ""),
    ] {
        let r = s.run(cmd, keep(10)).await?;
        ensure!(r.output == want, "{cmd}: {r:?}");
    }
    // Driven in slices too: the parts add up to the exact text.
    let cmd = "echo one; sleep 1; echo two";
    let mut last = s
        .run(
            cmd,
            keep(30).yield_after(Some(std::time::Duration::from_millis(300))),
        )
        .await?;
    let mut parts = vec![last.output.clone()];
    while last.running {
        last = s.poll(std::time::Duration::from_millis(300)).await?;
        parts.push(last.output.clone());
    }
    ensure!(parts.concat() == "one\ntwo\n", "parts {parts:?}");
    s.close().await?;
    Ok(())
}

pub(super) async fn forged_sentinel_is_output(ctx: Ctx) -> anyhow::Result<()> {
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

pub(super) async fn ansi_is_stripped(ctx: Ctx) -> anyhow::Result<()> {
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

pub(super) async fn invalid_utf8_and_nul(ctx: Ctx) -> anyhow::Result<()> {
    let mut s = ctx.open().await?;
    let out = ok(&mut s, r"printf 'a\377b\000c\303'; printf '\251d\n'").await?;
    ensure!(out == "a\u{FFFD}bcéd", "{out:?}");
    s.close().await?;
    Ok(())
}

pub(super) async fn unicode_round_trip(ctx: Ctx) -> anyhow::Result<()> {
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

pub(super) async fn big_output_is_capped_and_spooled(ctx: Ctx) -> anyhow::Result<()> {
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

pub(super) async fn one_megabyte_line_of_output(ctx: Ctx) -> anyhow::Result<()> {
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
