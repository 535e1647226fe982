//! Per-command overhead of a docker session next to a one-shot
//! `docker exec NAME true`, measured in the same run.
//!
//! `cargo run --release -p execkit-docker --example docker_overhead -- CONTAINER [N]`
//! (the engine is `DOCKER_HOST`'s, else `/var/run/docker.sock`).

/// `time_true` and `p50_p99_ms`, shared with `execkit-bench`.
#[path = "../../execkit-bench/src/timing.rs"]
mod timing;

use std::time::Instant;

use execkit_core::{RunOptions, Session, SessionConfig};
use execkit_docker as _;
use timing::{p50_p99_ms, time_true};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let container = args
        .next()
        .or_else(|| std::env::var("EXECKIT_TEST_DOCKER_CONTAINER").ok())
        .ok_or_else(|| anyhow::anyhow!("usage: docker_overhead CONTAINER [N]"))?;
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let target = format!("docker:{container}");

    let t = Instant::now();
    let mut s = Session::open(&target, SessionConfig::default()).await?;
    let first = s.run("true", RunOptions::default()).await?;
    let start = t.elapsed();
    anyhow::ensure!(first.exit_code == Some(0), "{first:?}");

    let rt = time_true(&mut s, n).await?;
    let t = Instant::now();
    s.close().await?;
    let close = t.elapsed();

    let mut oneshot = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let st = std::process::Command::new("docker")
            .args(["exec", &container, "true"])
            .status()?;
        oneshot.push(t.elapsed());
        anyhow::ensure!(st.success());
    }

    let (p50, p99) = p50_p99_ms(rt);
    let (d50, d99) = p50_p99_ms(oneshot);
    println!(
        "session open to first result: {:.1} ms, close (marker cleanup): {:.1} ms",
        start.as_secs_f64() * 1000.0,
        close.as_secs_f64() * 1000.0
    );
    println!("execkit {target}, {n} x true: p50 {p50:.3} ms, p99 {p99:.3} ms");
    println!("docker exec {container} true, {n} x: p50 {d50:.3} ms, p99 {d99:.3} ms");
    println!("ratio (docker exec / execkit p50): {:.1}x", d50 / p50);
    Ok(())
}
