//! Per-command overhead of a local session next to spawning `bash -c true`.
//!
//! `cargo run --release -p execkit-local --example local_overhead [N] [--no-spawn]`

/// `time_true` and `p50_p99_ms`, shared with `execkit-bench`.
#[path = "../../execkit-bench/src/timing.rs"]
mod timing;

use std::time::{Duration, Instant};

use execkit_core::{RunOptions, Session, SessionConfig};
use execkit_local as _;
use timing::{p50_p99_ms, time_true};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);

    let t = Instant::now();
    let mut s = Session::open("local:/bin/bash", SessionConfig::default()).await?;
    let first = s.run("true", RunOptions::default()).await?;
    let start = t.elapsed();
    anyhow::ensure!(first.exit_code == Some(0));

    let cpu0 = self_cpu();
    let rt = time_true(&mut s, n).await?;
    let cpu = self_cpu() - cpu0;
    s.close().await?;

    // `--no-spawn`: skip the baseline (profiling the session alone).
    let spawns = if std::env::args().any(|a| a == "--no-spawn") {
        1
    } else {
        n
    };
    let mut spawn = Vec::with_capacity(spawns);
    for _ in 0..spawns {
        let t = Instant::now();
        let st = std::process::Command::new("bash")
            .args(["-c", "true"])
            .status()?;
        spawn.push(t.elapsed());
        anyhow::ensure!(st.success());
    }

    let (p50, p99) = p50_p99_ms(rt);
    let (s50, s99) = p50_p99_ms(spawn);
    println!(
        "session start to first result: {:.2} ms",
        start.as_secs_f64() * 1000.0
    );
    println!("execkit local (bash), {n} x true: p50 {p50:.3} ms, p99 {p99:.3} ms");
    println!("bash -c true spawn,   {n} x:      p50 {s50:.3} ms, p99 {s99:.3} ms");
    println!(
        "execkit CPU per command (this process, user+sys): {:.1} us",
        cpu.as_secs_f64() * 1e6 / n as f64
    );
    println!("ratio (spawn / execkit p50): {:.1}x", s50 / p50);
    Ok(())
}

/// User + system CPU time of this process (not its children).
fn self_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
