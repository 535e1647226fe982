//! Where execkit keeps its files on this host.

use std::path::PathBuf;

/// `${XDG_STATE_HOME:-~/.local/state}/execkit`.
pub fn state_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        })
        .unwrap_or_else(|| std::env::temp_dir().join("execkit-state"));
    base.join("execkit")
}

/// Where capped outputs are spooled: `<state>/spool`.
pub fn spool_dir() -> PathBuf {
    state_dir().join("spool")
}
