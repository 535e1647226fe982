//! The warm round trip: `true` run `n` times in a live session, and its
//! percentiles. Used by the bench and, through `#[path]`, by the transports'
//! `*_overhead` examples (a transport crate cannot depend on this one:
//! it depends on every transport).

use std::time::{Duration, Instant};

use anyhow::bail;
use execkit_core::{RunOptions, Session};

/// Times `n` runs of `true` in `s` (each must exit 0): the warm round trip
/// the transports' `overhead` examples report.
pub async fn time_true(s: &mut Session, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = s.run("true", RunOptions::default()).await?;
        v.push(t.elapsed());
        if r.exit_code != Some(0) {
            bail!("`true` did not succeed: {r:?}");
        }
    }
    Ok(v)
}

/// The 50th and 99th percentile of `samples`, in milliseconds.
#[allow(dead_code)] // the bench has its own percentiles; the examples use this
pub fn p50_p99_ms(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match samples.len() {
        0 => (f64::NAN, f64::NAN),
        n => (ms(samples[n / 2]), ms(samples[(n * 99 / 100).min(n - 1)])),
    }
}
