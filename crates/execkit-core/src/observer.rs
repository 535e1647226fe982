//! What watches sessions: the journal and the shared console, bundled so a
//! host (CLI, `serve`, MCP) hands one `Arc<Observer>` to all its sessions.

use serde_json::{Map, Value};

use crate::console::Console;
use crate::journal::Journal;

/// The journal and console every session of one host reports to.
#[derive(Debug)]
pub struct Observer {
    /// Where events are recorded.
    pub journal: Journal,
    /// Where raw output is mirrored.
    pub console: Console,
}

impl Default for Observer {
    fn default() -> Self {
        Observer {
            journal: Journal::disabled(),
            console: Console::default(),
        }
    }
}

impl Observer {
    /// An observer writing to `journal`.
    pub fn new(journal: Journal) -> Self {
        Observer {
            journal,
            console: Console::default(),
        }
    }

    /// Records an event; a journal that cannot be written is reported once
    /// per event through `tracing` and never fails the command.
    pub fn record(&self, event: &str, fields: Map<String, Value>) {
        if let Err(e) = self.journal.append(event, fields) {
            tracing::warn!("journal write failed: {e}");
        }
    }
}

/// Builds a JSON object from `key => value` pairs.
#[macro_export]
#[doc(hidden)]
macro_rules! fields {
    ($($k:expr => $v:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut m = ::serde_json::Map::new();
        $( m.insert($k.to_string(), ::serde_json::json!($v)); )*
        m
    }};
}
