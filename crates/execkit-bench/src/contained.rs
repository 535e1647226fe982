//! Contained sessions next to uncontained ones (issue 19): round trips of
//! `true` alternating one each between a plain and a contained local
//! session, and session starts alternating the same way, so both rows see
//! the same minutes of a shared machine.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use execkit_core::{RunOptions, Session};

use crate::{bench_config, time_true, Latency, Results};

/// Every protection at once (the workspace is the bench's directory).
pub(crate) const TARGET: &str =
    "local:/bin/bash?sandbox=workspace-write&network=off&memory=1G&pids=1024";
pub(crate) const PLAIN: &str = "execkit local, paired";
pub(crate) const CONTAINED: &str = "execkit local contained";

pub(crate) async fn rows(n: usize, starts: usize, r: &mut Results) -> Result<()> {
    println!("contained vs plain local sessions ({n} round trips, {starts} starts each)…");
    let mut plain = Session::open("local:/bin/bash", bench_config()).await?;
    let mut boxed = Session::open(TARGET, bench_config()).await?;
    for _ in 0..20 {
        time_true(&mut plain, 1).await?;
        time_true(&mut boxed, 1).await?;
    }
    let (mut p, mut c) = (Vec::with_capacity(n), Vec::with_capacity(n));
    while p.len() < n {
        p.extend(time_true(&mut plain, 1).await?);
        c.extend(time_true(&mut boxed, 1).await?);
    }
    plain.close().await?;
    boxed.close().await?;
    r.round_trip.push(Latency::from(PLAIN, p));
    r.round_trip.push(Latency::from(CONTAINED, c));
    let (mut p, mut c) = (Vec::with_capacity(starts), Vec::with_capacity(starts));
    for _ in 0..starts {
        p.push(start("local:/bin/bash").await?);
        c.push(start(TARGET).await?);
    }
    r.start.push(Latency::from(PLAIN, p));
    r.start.push(Latency::from(CONTAINED, c));
    Ok(())
}

/// Open, first result, close; the time to the first result.
async fn start(target: &str) -> Result<Duration> {
    let t = Instant::now();
    let mut s = Session::open(target, bench_config()).await?;
    let res = s.run("true", RunOptions::default()).await?;
    let took = t.elapsed();
    ensure!(res.exit_code == Some(0), "{target}: {res:?}");
    s.close().await?;
    Ok(took)
}
