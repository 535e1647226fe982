//! Journal flags shared by every command that runs sessions.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use execkit_core::journal::Journal;
use execkit_core::redact::Redactor;
use execkit_core::Observer;

#[derive(Debug, Clone, Args)]
pub struct JournalArgs {
    /// Journal file (JSONL) [default: ${XDG_STATE_HOME:-~/.local/state}/execkit/journal.jsonl].
    #[arg(long, value_name = "PATH", conflicts_with = "no_journal")]
    pub journal: Option<PathBuf>,
    /// Do not journal.
    #[arg(long)]
    pub no_journal: bool,
    /// Also mask text matching REGEX in the journal (repeatable).
    #[arg(long, value_name = "REGEX")]
    pub redact: Vec<String>,
}

impl JournalArgs {
    /// The path the journal is (or would be) at.
    pub fn path(&self) -> PathBuf {
        self.journal.clone().unwrap_or_else(Journal::default_path)
    }

    /// Builds the observer; errors are one line for the user.
    pub fn observer(&self) -> Result<Arc<Observer>, String> {
        let redactor =
            Redactor::with_patterns(&self.redact).map_err(|e| format!("--redact: {e}"))?;
        let journal = if self.no_journal {
            Journal::disabled()
        } else {
            let path = self.path();
            Journal::open(&path, redactor).map_err(|e| {
                format!(
                    "cannot open the journal {}: {e} (use --journal PATH or --no-journal)",
                    path.display()
                )
            })?
        };
        Ok(Arc::new(Observer::new(journal)))
    }
}
