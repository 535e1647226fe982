//! Journal flags shared by every command that runs sessions.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use execkit_core::journal::{self, Journal, JournalOptions};
use execkit_core::redact::Redactor;
use execkit_core::Observer;

/// Where and how runs are journaled (the `--journal`, `--no-journal`,
/// `--redact`, … flags), and the [`Observer`] built from them.
#[derive(Debug, Clone, Default, Args)]
pub struct JournalArgs {
    /// Journal file (JSONL) [default: ${XDG_STATE_HOME:-~/.local/state}/execkit/journal.jsonl].
    #[arg(long, value_name = "PATH", conflicts_with = "no_journal")]
    pub journal: Option<PathBuf>,
    /// Do not journal.
    #[arg(long)]
    pub no_journal: bool,
    /// Also mask text matching REGEX in the journal and console (repeatable).
    #[arg(long, value_name = "REGEX")]
    pub redact: Vec<String>,
    /// Rotate the journal at this size (K, M, G suffixes; 0 never rotates)
    /// [default: $EXECKIT_JOURNAL_MAX_BYTES, else 64M].
    #[arg(long, value_name = "SIZE", value_parser = journal::parse_size)]
    pub journal_max_bytes: Option<u64>,
    /// Journal files kept in all, the live one included (2 or more)
    /// [default: $EXECKIT_JOURNAL_FILES, else 5].
    #[arg(long, value_name = "N", value_parser = journal::parse_files)]
    pub journal_files: Option<u32>,
}

impl JournalArgs {
    /// The path the journal is (or would be) at.
    pub fn path(&self) -> PathBuf {
        self.journal.clone().unwrap_or_else(Journal::default_path)
    }

    /// Builds the observer; errors are one line for the user. A journal
    /// that cannot be created is refused here, before any command runs
    /// (exit 73): running unjournaled must be asked for (`--no-journal`).
    pub fn observer(&self) -> Result<Arc<Observer>, ObserverError> {
        let redactor = Redactor::with_patterns(&self.redact)
            .map_err(|e| ObserverError::Usage(format!("--redact: {e}")))?;
        // Secrets in execkit's own environment reach local shells too.
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        redactor.learn_env(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let journal = if self.no_journal {
            Journal::disabled_with(redactor)
        } else {
            let mut opts = JournalOptions::from_env().map_err(ObserverError::Usage)?;
            if let Some(n) = self.journal_max_bytes {
                opts.max_bytes = n;
            }
            if let Some(n) = self.journal_files {
                opts.files = n;
            }
            let path = self.path();
            let cant = |e: std::io::Error| {
                ObserverError::CantCreate(format!(
                    "cannot open the journal {}: {e} (use --journal PATH or --no-journal)",
                    path.display()
                ))
            };
            if self.journal.is_none() {
                // The default path is in the state directory: private and
                // this user's, or refused (never a shared directory).
                execkit_core::state::private_state_dir().map_err(cant)?;
            }
            Journal::open_with(&path, redactor, opts).map_err(cant)?
        };
        Ok(Arc::new(Observer::new(journal)))
    }
}

/// Why the journal and console could not be set up.
#[derive(Debug)]
pub enum ObserverError {
    /// A bad flag (`--redact` pattern) or journal setting: exit 2.
    Usage(String),
    /// The journal file cannot be created or opened: exit 73 (EX_CANTCREAT).
    CantCreate(String),
}

impl ObserverError {
    /// The process exit status this error maps to.
    pub fn exit_code(&self) -> std::process::ExitCode {
        std::process::ExitCode::from(match self {
            ObserverError::Usage(_) => crate::EXIT_USAGE,
            ObserverError::CantCreate(_) => crate::EXIT_CANTCREAT,
        })
    }
}

impl std::fmt::Display for ObserverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObserverError::Usage(m) | ObserverError::CantCreate(m) => f.write_str(m),
        }
    }
}

impl From<ObserverError> for String {
    fn from(e: ObserverError) -> String {
        e.to_string()
    }
}
