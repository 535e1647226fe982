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

/// `sha256sum` of the file on the target, by the target's own tool
/// (coreutils and busybox both have it; Debian's busybox has no `cksum`).
async fn shell_digest(s: &mut Session, path: &str) -> anyhow::Result<String> {
    let out = ok(
        s,
        &format!("sha256sum < {}", crate::protocol::shell_quote(path)),
    )
    .await?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

fn digest(bytes: &[u8]) -> String {
    let mut c = Sha256::new();
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
        shell_digest(&mut s, &path).await? == digest(&bytes),
        "the target's sha256sum differs"
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

/// SHA-256 (FIPS 180-4), streamed, to compare with the target's
/// `sha256sum` (coreutils and busybox both have it; Debian's busybox has
/// no `cksum`).
struct Sha256 {
    state: [u32; 8],
    block: Vec<u8>,
    len: u64,
}

const SHA256_K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

impl Sha256 {
    fn new() -> Sha256 {
        Sha256 {
            state: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            block: Vec::with_capacity(64),
            len: 0,
        }
    }

    fn compress(state: &mut [u32; 8], block: &[u8]) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(SHA256_K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.block.is_empty() {
            let take = (64 - self.block.len()).min(data.len());
            self.block.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.block.len() < 64 {
                return;
            }
            let block = std::mem::take(&mut self.block);
            Self::compress(&mut self.state, &block);
        }
        let mut blocks = data.chunks_exact(64);
        for b in &mut blocks {
            Self::compress(&mut self.state, b);
        }
        self.block.extend_from_slice(blocks.remainder());
    }

    /// The digest in hex, as `sha256sum` prints it.
    fn finish(mut self) -> String {
        let bits = self.len.wrapping_mul(8);
        let mut tail = std::mem::take(&mut self.block);
        tail.push(0x80);
        while tail.len() % 64 != 56 {
            tail.push(0);
        }
        tail.extend_from_slice(&bits.to_be_bytes());
        for b in tail.chunks_exact(64) {
            Self::compress(&mut self.state, b);
        }
        self.state.iter().map(|v| format!("{v:08x}")).collect()
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
    let mut sum = Sha256::new();
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
    let shell = shell_digest(&mut s, &path).await?;
    ensure!(
        shell == expected,
        "sha256sum on the target: {shell:?}, sent {expected:?}"
    );

    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(2);
    let check = async {
        let mut sum = Sha256::new();
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
    fn sha256_matches_sha256sum() {
        // `printf 'hello\n' | sha256sum`
        let mut c = Sha256::new();
        c.update(b"hello\n");
        assert_eq!(
            c.finish(),
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        // In pieces across block boundaries: `head -c 1000 /dev/zero | sha256sum`
        let mut c = Sha256::new();
        for piece in [0usize, 1, 63, 64, 65, 200, 607] {
            c.update(&vec![0u8; piece]);
        }
        assert_eq!(
            c.finish(),
            "541b3e9daa09b20bf85fa273e5cbd3e80185aa4ec298e765db87742b70138a53"
        );
    }
}
