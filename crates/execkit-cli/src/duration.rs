//! Durations given in seconds by a person or a client (`--timeout`,
//! `--wait`, MCP's `timeout_secs`, `yield_after_secs`, `wait_secs`, the
//! socket protocol's fields): every one goes through [`secs`] so no value
//! — negative, NaN, infinite, or too large for a `Duration` or an
//! `Instant` — can panic a worker. The ceiling is [`MAX_SECS`] (one year).

use std::time::Duration;

/// Longest duration accepted anywhere: one year (365 days), in seconds.
/// Far beyond any useful timeout, far below what `Duration` or `Instant`
/// arithmetic can overflow on.
pub const MAX_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// Checks a number of seconds: finite, not negative, at most [`MAX_SECS`].
/// `what` names the field in the error (`--timeout`, `timeout_secs`).
pub fn secs(what: &str, value: f64) -> Result<Duration, String> {
    check(value).map_err(|why| format!("{what} {why}, not {value}"))
}

/// [`secs`] of a command-line value (`--timeout 1.5`); the error quotes
/// the text as given.
pub fn parse(what: &str, value: &str) -> Result<Duration, String> {
    let checked = match value.trim().parse::<f64>() {
        Ok(v) => check(v),
        Err(_) => Err(NOT_A_NUMBER),
    };
    checked.map_err(|why| format!("{what} {why}, not `{}`", value.escape_debug()))
}

const NOT_A_NUMBER: &str = "must be a non-negative number of seconds";

fn check(value: f64) -> Result<Duration, &'static str> {
    if !value.is_finite() || value < 0.0 {
        return Err(NOT_A_NUMBER);
    }
    if value > MAX_SECS {
        return Err("must be at most 31536000 seconds (one year)");
    }
    // In range, so this cannot panic.
    Ok(Duration::from_secs_f64(value))
}

/// [`parse`] where 0 means none.
pub fn parse_timeout(what: &str, value: &str) -> Result<Option<Duration>, String> {
    let d = parse(what, value)?;
    Ok((!d.is_zero()).then_some(d))
}

/// A timeout where 0 means none: `None` for 0, else as [`secs`].
pub fn timeout(what: &str, value: f64) -> Result<Option<Duration>, String> {
    let d = secs(what, value)?;
    Ok((!d.is_zero()).then_some(d))
}

/// [`timeout`] of an optional value, `default` when it is absent.
pub fn optional_timeout(
    what: &str,
    value: Option<f64>,
    default: Option<f64>,
) -> Result<Option<Duration>, String> {
    match value.or(default) {
        None => Ok(None),
        Some(v) => timeout(what, v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_in_words_is_the_constant() {
        assert_eq!(MAX_SECS, 31_536_000.0);
    }

    #[test]
    fn refuses_what_cannot_be_a_duration() {
        for v in [
            -1.0,
            -0.001,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e300,
            99_999_999_999_999_999_999.0,
            MAX_SECS + 1.0,
            f64::MAX,
        ] {
            let e = secs("--timeout", v).unwrap_err();
            assert!(e.starts_with("--timeout must be"), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn accepts_zero_fractions_and_the_ceiling() {
        assert_eq!(secs("x", 0.0), Ok(Duration::ZERO));
        assert_eq!(secs("x", 0.25), Ok(Duration::from_millis(250)));
        assert_eq!(secs("x", MAX_SECS), Ok(Duration::from_secs(31_536_000)));
        assert_eq!(timeout("x", 0.0), Ok(None));
        assert_eq!(timeout("x", 2.0), Ok(Some(Duration::from_secs(2))));
        assert_eq!(optional_timeout("x", None, None), Ok(None));
        assert_eq!(
            optional_timeout("x", None, Some(300.0)),
            Ok(Some(Duration::from_secs(300)))
        );
        assert!(optional_timeout("x", Some(1e300), Some(300.0)).is_err());
        assert_eq!(parse_timeout("x", " 0 "), Ok(None));
        assert_eq!(parse("x", "1.5"), Ok(Duration::from_millis(1500)));
        for bad in [
            "",
            "abc",
            "1e300",
            "99999999999999999999",
            "-1",
            "nan",
            "inf",
            "1s",
        ] {
            assert!(parse("--timeout", bad).is_err(), "{bad}");
        }
        // The ceiling leaves room for Instant arithmetic.
        let _ = std::time::Instant::now() + secs("x", MAX_SECS).unwrap();
    }
}
