//! Native file transfer ([`FileTransfer`]): bytes arrive exactly, in both
//! directions, checked against the target's own shell tools; errors are
//! the target's errno; 100 MiB stream through in bounded memory.

use anyhow::{bail, ensure, Context as _};
use tokio::sync::mpsc;

use crate::testkit::{ok, Ctx};
use crate::transport::{file_errno, read_file, write_file, FileTransfer, FILE_CHUNK};
use crate::Session;

/// The fixture's native file transfer (its capability says it has one).
fn files_of(ctx: &Ctx) -> anyhow::Result<std::sync::Arc<dyn FileTransfer>> {
    crate::registry::connect(ctx.target())
        .with_context(|| format!("connecting to {}", ctx.target()))?
        .files()
        .context("the transport offers no native file transfer (Transport::files is None)")
}

/// A fresh directory on the target, from the session.
async fn scratch(s: &mut Session) -> anyhow::Result<String> {
    let dir = ok(s, "mktemp -d").await?.trim().to_string();
    ensure!(dir.starts_with('/'), "mktemp -d printed {dir:?}");
    Ok(dir)
}

/// Pseudo-random bytes (xorshift), reproducible from `seed`.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `cksum` of the file on the target, by the target's own tool.
async fn shell_cksum(s: &mut Session, path: &str) -> anyhow::Result<String> {
    let out = ok(
        s,
        &format!("cksum < {}", crate::protocol::shell_quote(path)),
    )
    .await?;
    Ok(out.trim().to_string())
}

fn cksum(bytes: &[u8]) -> String {
    let mut c = Cksum::new();
    c.update(bytes);
    c.finish()
}

/// `stat` of `path` on the target: octal permission bits and owner uid.
async fn mode_and_owner(s: &mut Session, path: &str) -> anyhow::Result<(u32, String)> {
    let out = ok(
        s,
        &format!("stat -c '%a %u' {}", crate::protocol::shell_quote(path)),
    )
    .await?;
    let (mode, uid) = out.trim().split_once(' ').context("stat output")?;
    Ok((u32::from_str_radix(mode, 8)?, uid.to_string()))
}

/// The errno (through [`file_errno`]: an `io::Error` cannot carry both an
/// errno and a message naming the path) and the message of an error.
fn errno_of(r: std::io::Result<impl std::fmt::Debug>, what: &str) -> anyhow::Result<(i32, String)> {
    match r {
        Ok(v) => bail!("{what}: succeeded ({v:?}), expected an error"),
        Err(e) => Ok((file_errno(&e).unwrap_or(0), e.to_string())),
    }
}

pub(in crate::testkit) async fn files_every_byte_round_trip(ctx: Ctx) -> anyhow::Result<()> {
    let files = files_of(&ctx)?;
    let mut s = ctx.open().await?;
    let dir = scratch(&mut s).await?;
    let uid = ok(&mut s, "id -u").await?.trim().to_string();
    let umask = u32::from_str_radix(ok(&mut s, "umask").await?.trim(), 8)?;

    // Here → target, into directories that do not exist yet.
    let mut bytes: Vec<u8> = (0..=255u8).cycle().take(256 * 64).collect();
    bytes.extend(noise(7, 3 * FILE_CHUNK + 17));
    let path = format!("{dir}/new/sub/all.bin");
    write_file(&*files, &path, &bytes).await?;
    ensure!(
        shell_cksum(&mut s, &path).await? == cksum(&bytes),
        "the target's cksum differs"
    );
    ensure!(
        read_file(&*files, &path).await? == bytes,
        "read back other bytes"
    );
    ensure!(
        mode_and_owner(&mut s, &path).await? == (0o644 & !umask, uid.clone()),
        "a new file: mode 0644 less the umask, owned by the shell's user"
    );
    ensure!(
        mode_and_owner(&mut s, &format!("{dir}/new")).await? == (0o755 & !umask, uid.clone()),
        "a made directory: mode 0755 less the umask, owned by the shell's user"
    );

    // Target → here: every byte value written by the shell's printf.
    let mut printf = String::from("printf '");
    for b in 0..=255u8 {
        printf.push_str(&format!("\\{b:03o}"));
    }
    printf.push_str(&format!("' > {dir}/printf.bin"));
    ok(&mut s, &printf).await?;
    let all: Vec<u8> = (0..=255u8).collect();
    ensure!(read_file(&*files, &format!("{dir}/printf.bin")).await? == all);

    // An existing file is truncated and keeps its mode; empty works.
    ok(&mut s, &format!("chmod 600 {dir}/printf.bin")).await?;
    write_file(&*files, &format!("{dir}/printf.bin"), b"short\n").await?;
    ensure!(ok(&mut s, &format!("cat {dir}/printf.bin")).await? == "short");
    ensure!(
        mode_and_owner(&mut s, &format!("{dir}/printf.bin"))
            .await?
            .0
            == 0o600
    );
    write_file(&*files, &format!("{dir}/empty"), b"").await?;
    ensure!(ok(&mut s, &format!("wc -c < {dir}/empty")).await?.trim() == "0");
    ensure!(read_file(&*files, &format!("{dir}/empty"))
        .await?
        .is_empty());

    ok(&mut s, &format!("rm -rf {dir}")).await?;
    s.close().await?;
    Ok(())
}

pub(in crate::testkit) async fn files_follow_links_and_name_errors(ctx: Ctx) -> anyhow::Result<()> {
    let files = files_of(&ctx)?;
    let mut s = ctx.open().await?;
    let dir = scratch(&mut s).await?;
    ok(
        &mut s,
        &format!("cd {dir} && echo old > real && ln -s real link && mkdir d"),
    )
    .await?;

    write_file(&*files, &format!("{dir}/link"), b"through the link\n").await?;
    ensure!(
        ok(&mut s, "cat real").await? == "through the link",
        "the link's target was written"
    );
    ensure!(
        ok(&mut s, "[ -L link ] && echo still").await? == "still",
        "the link stays a link"
    );
    ensure!(read_file(&*files, &format!("{dir}/link")).await? == b"through the link\n");

    let missing = format!("{dir}/missing");
    let (errno, msg) = errno_of(read_file(&*files, &missing).await, "reading a missing file")?;
    ensure!(errno == libc::ENOENT, "{errno} {msg}");
    let (errno, msg) = errno_of(
        read_file(&*files, &format!("{dir}/d")).await,
        "reading a directory",
    )?;
    ensure!(errno == libc::EISDIR, "{errno} {msg}");
    let (errno, msg) = errno_of(
        write_file(&*files, &format!("{dir}/d"), b"x").await,
        "writing over a directory",
    )?;
    ensure!(errno == libc::EISDIR, "{errno} {msg}");
    let (errno, msg) = errno_of(
        write_file(&*files, &format!("{dir}/real/x"), b"x").await,
        "writing under a regular file",
    )?;
    ensure!(errno == libc::ENOTDIR, "{errno} {msg}");
    match read_file(&*files, "relative/path").await {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {}
        other => bail!("a relative path: {other:?}"),
    }

    // A total that does not add up, and an aborted stream, are errors.
    let (tx, rx) = mpsc::channel(2);
    tx.send(Ok(b"12345".to_vec())).await?;
    drop(tx);
    ensure!(
        files
            .write(&format!("{dir}/short"), Some(10), rx)
            .await
            .is_err(),
        "5 of 10 bytes"
    );
    let (tx, rx) = mpsc::channel(2);
    tx.send(Ok(b"12345".to_vec())).await?;
    tx.send(Err(std::io::Error::other("the upload broke")))
        .await?;
    drop(tx);
    ensure!(
        files
            .write(&format!("{dir}/aborted"), None, rx)
            .await
            .is_err(),
        "an Err chunk"
    );

    if ok(&mut s, "id -u").await?.trim() != "0" {
        ok(
            &mut s,
            "echo secret > locked && chmod 000 locked && chmod 555 d",
        )
        .await?;
        let (errno, msg) = errno_of(
            read_file(&*files, &format!("{dir}/locked")).await,
            "reading mode 000",
        )?;
        ensure!(errno == libc::EACCES, "{errno} {msg}");
        let (errno, msg) = errno_of(
            write_file(&*files, &format!("{dir}/d/x"), b"x").await,
            "writing into a read-only directory",
        )?;
        ensure!(errno == libc::EACCES, "{errno} {msg}");
        ok(&mut s, "chmod 755 d").await?;
    }
    ok(&mut s, &format!("cd / && rm -rf {dir}")).await?;
    s.close().await?;
    Ok(())
}

/// POSIX `cksum`: CRC-32 (polynomial 0x04C11DB7) of the bytes and then of
/// their length.
struct Cksum {
    table: [u32; 256],
    crc: u32,
    len: u64,
}

impl Cksum {
    fn new() -> Cksum {
        let mut table = [0u32; 256];
        for (i, t) in table.iter_mut().enumerate() {
            let mut c = (i as u32) << 24;
            for _ in 0..8 {
                c = if c & 0x8000_0000 != 0 {
                    (c << 1) ^ 0x04C1_1DB7
                } else {
                    c << 1
                };
            }
            *t = c;
        }
        Cksum {
            table,
            crc: 0,
            len: 0,
        }
    }

    fn byte(&mut self, b: u8) {
        self.crc = (self.crc << 8) ^ self.table[usize::from((self.crc >> 24) as u8 ^ b)];
    }

    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.byte(b);
        }
        self.len += data.len() as u64;
    }

    fn finish(mut self) -> String {
        let mut n = self.len;
        while n != 0 {
            self.byte(n as u8);
            n >>= 8;
        }
        format!("{} {}", !self.crc, self.len)
    }
}

pub(in crate::testkit) async fn files_hundred_megabytes_streamed(ctx: Ctx) -> anyhow::Result<()> {
    const CHUNKS: usize = 100;
    let files = files_of(&ctx)?;
    let mut s = ctx.open().await?;
    let dir = scratch(&mut s).await?;
    let path = format!("{dir}/big.bin");
    // Chunk i: one noise block with i in its first bytes; never all at once.
    let block = noise(42, FILE_CHUNK);
    let chunk = |i: usize| {
        let mut c = block.clone();
        c[..8].copy_from_slice(&(i as u64).to_le_bytes());
        c
    };
    let mut sum = Cksum::new();
    let (tx, rx) = mpsc::channel(2);
    let feed = async {
        for i in 0..CHUNKS {
            let c = chunk(i);
            sum.update(&c);
            if tx.send(Ok(c)).await.is_err() {
                break;
            }
        }
        drop(tx);
    };
    let total = (CHUNKS * FILE_CHUNK) as u64;
    let (written, ()) = tokio::join!(files.write(&path, Some(total), rx), feed);
    ensure!(written? == total);
    let expected = sum.finish();
    let shell = shell_cksum(&mut s, &path).await?;
    ensure!(
        shell == expected,
        "cksum on the target: {shell:?}, sent {expected:?}"
    );

    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(2);
    let check = async {
        let mut sum = Cksum::new();
        let mut biggest = 0;
        while let Some(c) = rx.recv().await {
            biggest = biggest.max(c.len());
            sum.update(&c);
        }
        (sum.finish(), biggest)
    };
    let (read, (got, biggest)) = tokio::join!(files.read(&path, tx), check);
    ensure!(read? == total);
    ensure!(got == expected, "read back: {got}, written {expected}");
    ensure!(biggest <= FILE_CHUNK, "a chunk of {biggest} bytes");
    ok(&mut s, &format!("rm -rf {dir}")).await?;
    s.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cksum_matches_posix() {
        // `printf 'hello\n' | cksum` → 3015617425 6
        let mut c = Cksum::new();
        c.update(b"hello\n");
        assert_eq!(c.finish(), "3015617425 6");
    }
}
