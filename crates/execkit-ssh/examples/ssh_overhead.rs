//! Costs of an SSH session next to one-shot `ssh`: connect + first command,
//! a second session on the shared connection, the warm round trip, and
//! close.
//!
//! `cargo run --release -p execkit-ssh --example ssh_overhead -- URL [N]`
//! (URL as `EXECKIT_TEST_SSH_URL`; defaults to that variable).

/// `time_true` and `p50_p99_ms`, shared with `execkit-bench`.
#[path = "../../execkit-bench/src/timing.rs"]
mod timing;

use std::time::{Duration, Instant};

use execkit_core::{RunOptions, Session, SessionConfig};
use execkit_ssh as _;
use timing::{p50_p99_ms, time_true};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = match args.next() {
        Some(u) => u,
        None => std::env::var("EXECKIT_TEST_SSH_URL")?,
    };
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let t = execkit_ssh::SshTarget::parse(&url)?;

    let t0 = Instant::now();
    let mut s = Session::open(&url, SessionConfig::default()).await?;
    let first = s.run("true", RunOptions::default()).await?;
    let connect_first = t0.elapsed();
    anyhow::ensure!(first.exit_code == Some(0), "{first:?}");

    let t1 = Instant::now();
    let mut s2 = Session::open(&url, SessionConfig::default()).await?;
    let second_open = t1.elapsed();
    let conns = execkit_ssh::live_connections(&t);
    let r = s2.run("true", RunOptions::default()).await?;
    anyhow::ensure!(r.exit_code == Some(0), "{r:?}");

    let rt = time_true(&mut s, n).await?;
    let t2 = Instant::now();
    s2.close().await?;
    let close = t2.elapsed();
    s.close().await?;

    // One-shot OpenSSH client, same host, key and known_hosts (or the
    // same config file and alias, jump hosts included).
    let identity = t.identity.clone().unwrap_or_default();
    let known = t.known_hosts_path().unwrap_or_default();
    let mut oneshot = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let mut cmd = std::process::Command::new("ssh");
        match &t.config {
            execkit_ssh::ConfigSource::File(f) if t.identity.is_none() => {
                cmd.arg("-F").arg(f).arg(&t.alias);
            }
            _ => {
                cmd.arg("-i")
                    .arg(&identity)
                    .arg("-p")
                    .arg(t.port.to_string())
                    .arg("-o")
                    .arg(format!("UserKnownHostsFile={}", known.display()))
                    .args(["-o", "StrictHostKeyChecking=yes"])
                    .arg(format!("{}@{}", t.user, t.host));
            }
        }
        let st = cmd
            .args(["-o", "BatchMode=yes"])
            .arg("true")
            .stdin(std::process::Stdio::null())
            .status()?;
        oneshot.push(t0.elapsed());
        anyhow::ensure!(st.success(), "ssh exited with {st}");
    }

    println!(
        "connect + first command:            {:8.2} ms",
        ms(connect_first)
    );
    println!(
        "second session open (shared conn):  {:8.2} ms  (live connections: {conns})",
        ms(second_open)
    );
    println!(
        "warm round trip, {n} x true, median: {:8.3} ms",
        p50_p99_ms(rt).0
    );
    println!("session close (marker cleanup):     {:8.2} ms", ms(close));
    println!(
        "one-shot `ssh host true`, 20 x, median: {:8.2} ms",
        p50_p99_ms(oneshot).0
    );
    Ok(())
}
