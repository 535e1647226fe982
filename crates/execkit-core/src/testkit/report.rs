//! The per-fixture JSON report `cargo xtask test` tabulates (written when
//! `EXECKIT_CONFORMANCE_REPORT` names a directory).

use super::Fixture;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Pass,
    Fail,
    Skip,
}

#[derive(Debug)]
pub(super) struct Outcome {
    pub(super) name: &'static str,
    pub(super) status: Status,
    pub(super) ms: u128,
    pub(super) message: String,
}

pub(super) fn write_report(dir: &std::path::Path, fixture: &Fixture, outcomes: &[Outcome]) {
    let slug: String = fixture
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let cases: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            serde_json::json!({
                "name": o.name,
                "status": match o.status { Status::Pass => "pass", Status::Fail => "fail", Status::Skip => "skip" },
                "ms": o.ms as u64,
                "message": o.message,
            })
        })
        .collect();
    let count = |s| outcomes.iter().filter(|o| o.status == s).count();
    let report = serde_json::json!({
        "fixture": fixture.name,
        "target": fixture.target,
        "passed": count(Status::Pass),
        "failed": count(Status::Fail),
        "skipped": count(Status::Skip),
        "cases": cases,
    });
    let _ = std::fs::create_dir_all(dir);
    let path = dir.join(format!("{slug}.json"));
    if let Err(e) = std::fs::write(&path, report.to_string()) {
        eprintln!("cannot write {}: {e}", path.display());
    }
}
