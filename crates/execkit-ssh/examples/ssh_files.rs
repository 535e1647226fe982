//! Whole-file transfer (`Transport::files`) next to OpenSSH's client
//! piping through `cat` (its connection set-up taken off): write and read
//! times for files of a few sizes, the CPU this process spent, and its
//! peak memory after them (it streams: the peak stays a few MiB above the
//! start whatever the size).
//!
//! `cargo run --release -p execkit-ssh --example ssh_files -- URL [MiB...]`
//! (URL as `EXECKIT_TEST_SSH_URL`, defaults to that variable; sizes
//! default to 10 and 100).

use std::io::Write as _;
use std::time::{Duration, Instant};

use execkit_core::raw::{Transport, FILE_CHUNK};
use tokio::sync::mpsc;

/// Transfers per size (the median is shown).
const ROUNDS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Peak resident memory of this process (`VmHWM`), in MiB.
fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time this process (every thread, no children) has used.
fn cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `u` outlives the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// One MiB of pseudo-random bytes (xorshift).
fn block() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(FILE_CHUNK);
    while out.len() < FILE_CHUNK {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn ssh(t: &execkit_ssh::SshTarget) -> std::process::Command {
    let mut c = std::process::Command::new("ssh");
    c.arg("-i")
        .arg(t.identity.clone().unwrap_or_default())
        .arg("-p")
        .arg(t.port.to_string())
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            t.known_hosts_path().unwrap_or_default().display()
        ))
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
        .arg(format!("{}@{}", t.user, t.host));
    c
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = match args.next() {
        Some(u) => u,
        None => std::env::var("EXECKIT_TEST_SSH_URL")?,
    };
    let mut sizes: Vec<usize> = args.filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![10, 100];
    }
    let t = execkit_ssh::SshTarget::parse(&url)?;
    let transport = execkit_ssh::SshTransport::new(&url)?;
    let files = transport.files().expect("ssh has native files");
    let path = format!("/tmp/execkit-ssh-files-{}.bin", std::process::id());
    let block = block();
    // Warm the connection (the pool keeps it while a session is open).
    let mut keep = execkit_core::Session::open(&url, Default::default()).await?;
    println!("start: peak memory {:.1} MiB", peak_mib());

    // One-shot `ssh`'s own cost (connect, authenticate, start a command),
    // taken off its transfer times below.
    let mut setup = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        anyhow::ensure!(ssh(&t).arg("true").status()?.success());
        setup.push(t0.elapsed());
    }
    let setup = median(setup);
    println!("one-shot ssh set-up (ssh host true): {:.3} s", secs(setup));

    for mib in sizes {
        let bytes = (mib * FILE_CHUNK) as u64;
        let (mut writes, mut reads, mut cpu_w, mut cpu_r) = (vec![], vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            let (tx, rx) = mpsc::channel(2);
            let feed = async {
                for i in 0..mib {
                    let mut c = block.clone();
                    c[..8].copy_from_slice(&(i as u64).to_le_bytes());
                    if tx.send(Ok(c)).await.is_err() {
                        break;
                    }
                }
                drop(tx);
            };
            let (t0, c0) = (Instant::now(), cpu());
            let (written, ()) = tokio::join!(files.write(&path, Some(bytes), rx), feed);
            writes.push(t0.elapsed());
            cpu_w.push(cpu() - c0);
            anyhow::ensure!(written? == bytes);

            let (tx, mut rx) = mpsc::channel::<Vec<u8>>(2);
            let count = async {
                let mut n = 0u64;
                while let Some(c) = rx.recv().await {
                    n += c.len() as u64;
                }
                n
            };
            let (t0, c0) = (Instant::now(), cpu());
            let (read, got) = tokio::join!(files.read(&path, tx), count);
            reads.push(t0.elapsed());
            cpu_r.push(cpu() - c0);
            anyhow::ensure!(read? == got && got == bytes);
        }

        // OpenSSH's client, the same bytes through `cat` both ways.
        let local =
            std::env::temp_dir().join(format!("execkit-ssh-files-{}.bin", std::process::id()));
        {
            let mut f = std::fs::File::create(&local)?;
            for _ in 0..mib {
                f.write_all(&block)?;
            }
        }
        let (mut ssh_w, mut ssh_r) = (vec![], vec![]);
        for _ in 0..ROUNDS {
            let t0 = Instant::now();
            let st = ssh(&t)
                .arg(format!("cat > {path}"))
                .stdin(std::fs::File::open(&local)?)
                .status()?;
            ssh_w.push(t0.elapsed().saturating_sub(setup));
            anyhow::ensure!(st.success());
            let t0 = Instant::now();
            let st = ssh(&t)
                .arg(format!("cat {path}"))
                .stdin(std::process::Stdio::null())
                .stdout(std::fs::File::create(&local)?)
                .status()?;
            ssh_r.push(t0.elapsed().saturating_sub(setup));
            anyhow::ensure!(st.success());
        }
        std::fs::remove_file(&local)?;

        let (w, r) = (median(writes), median(reads));
        let rate = |d: Duration| mib as f64 / secs(d);
        println!(
            "{mib:4} MiB (median of {ROUNDS})  write {:6.3} s ({:4.0} MiB/s, CPU {:5.3} s)  \
             read {:6.3} s ({:4.0} MiB/s, CPU {:5.3} s)  | ssh cat less set-up: write {:6.3} s  \
             read {:6.3} s  | peak memory {:.1} MiB",
            secs(w),
            rate(w),
            secs(median(cpu_w)),
            secs(r),
            rate(r),
            secs(median(cpu_r)),
            secs(median(ssh_w)),
            secs(median(ssh_r)),
            peak_mib()
        );
    }
    keep.run(&format!("rm -f {path}"), Default::default())
        .await?;
    keep.close().await?;
    Ok(())
}
