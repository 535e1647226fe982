//! Size, rotation and retry settings, from defaults, the environment or
//! the command line.

use std::time::Duration;

/// Rotation size when nothing else is configured: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// Files kept when nothing else is configured (`journal.jsonl` + 4 rotated).
pub const DEFAULT_FILES: u32 = 5;
/// How often a failing journal tries again when nothing else is configured.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(1);

/// Environment variable: rotation size in bytes (`K`, `M`, `G` suffixes; `0` never rotates).
pub const ENV_MAX_BYTES: &str = "EXECKIT_JOURNAL_MAX_BYTES";
/// Environment variable: files kept in all, at least 2.
pub const ENV_FILES: &str = "EXECKIT_JOURNAL_FILES";
/// Environment variable: milliseconds between retries after a write failed.
pub const ENV_RETRY_MS: &str = "EXECKIT_JOURNAL_RETRY_MS";

/// Size, rotation and retry settings of a journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalOptions {
    /// Rotate before a line would take the file past this size; 0 never rotates.
    pub max_bytes: u64,
    /// Files kept in all: the live one plus `files - 1` rotated ones (at least 2).
    pub files: u32,
    /// After a failed write, the shortest time before an event tries again.
    pub retry: Duration,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            max_bytes: DEFAULT_MAX_BYTES,
            files: DEFAULT_FILES,
            retry: DEFAULT_RETRY,
        }
    }
}

impl JournalOptions {
    /// The defaults, overridden by `EXECKIT_JOURNAL_MAX_BYTES`,
    /// `EXECKIT_JOURNAL_FILES` and `EXECKIT_JOURNAL_RETRY_MS`; a bad value is
    /// an error naming the variable.
    pub fn from_env() -> Result<JournalOptions, String> {
        let mut o = JournalOptions::default();
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if let Some(v) = var(ENV_MAX_BYTES) {
            o.max_bytes = parse_size(&v).map_err(|e| format!("{ENV_MAX_BYTES}: {e}"))?;
        }
        if let Some(v) = var(ENV_FILES) {
            o.files = parse_files(&v).map_err(|e| format!("{ENV_FILES}: {e}"))?;
        }
        if let Some(v) = var(ENV_RETRY_MS) {
            let ms: u64 = v
                .trim()
                .parse()
                .map_err(|_| format!("{ENV_RETRY_MS}: `{v}` is not a number of milliseconds"))?;
            o.retry = Duration::from_millis(ms);
        }
        Ok(o)
    }
}

/// Parses a file count for rotation: an integer from 2 to 1000.
pub fn parse_files(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (2..=1000).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a file count from 2 to 1000")),
    }
}

/// Parses a size in bytes: `1048576`, `64K`, `64M`, `1G` (also `KiB`,
/// `MiB`, `GiB`, `KB`, …, all binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let bad = || format!("`{s}` is not a size (bytes, or with K, M or G)");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}
