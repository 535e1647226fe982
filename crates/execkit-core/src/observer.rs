//! What watches sessions: the journal and the shared console, bundled so a
//! host (CLI, `serve`, MCP) hands one `Arc<Observer>` to all its sessions.
//!
//! Both are masked by the same [`Redactor`] (clones share what it learns):
//! every event recorded teaches it the secret values assigned in it
//! (`export GH_TOKEN=…`) before it is masked, and the console masks every
//! event it publishes. Results handed to the agent are never masked.

use std::ops::Deref;

use serde_json::Value;

use crate::console::{Console, ConsoleEvent};
use crate::journal::{Journal, JournalEvent, SessionRef};
use crate::redact::Redactor;

/// The journal and console every session of one host reports to.
#[derive(Debug)]
pub struct Observer {
    /// Where events are recorded.
    pub journal: Journal,
    /// Where raw output is mirrored (masked).
    pub console: MaskedConsole,
}

impl Default for Observer {
    fn default() -> Self {
        Observer::new(Journal::disabled())
    }
}

impl Observer {
    /// An observer writing to `journal`; the console masks with the
    /// journal's redactor.
    pub fn new(journal: Journal) -> Self {
        let redactor = journal.redactor().clone();
        Observer {
            journal,
            console: MaskedConsole {
                inner: Console::default(),
                redactor,
            },
        }
    }

    /// The redactor shared by the journal and the console.
    pub fn redactor(&self) -> &Redactor {
        self.journal.redactor()
    }

    /// Records an event; a journal that cannot be written is reported
    /// through `tracing` and never fails the command. Secret values
    /// assigned in the event's text are learned first, so they are masked
    /// here and wherever they show up later.
    pub fn record(&self, session: SessionRef, event: JournalEvent) {
        for fields in [serde_json::to_value(&session), serde_json::to_value(&event)] {
            if let Ok(Value::Object(fields)) = fields {
                let fields = fields.iter().filter(|(k, _)| *k != "event");
                fields.for_each(|(_, v)| learn_value(self.redactor(), v));
            }
        }
        if let Err(e) = self.journal.append(session, event) {
            tracing::warn!("journal write failed: {e}");
        }
    }

    /// Learns the secret-named variables of a session's configured
    /// environment (`SessionConfig::env`).
    pub fn learn_env(&self, env: &[(String, String)]) -> usize {
        self.redactor()
            .learn_env(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// The journal event for input typed into a running command. Input
    /// typed while the terminal's echo is off (a password prompt) is
    /// `{"hidden": true, "chars": N}`, without its text, and its value is
    /// learned so it is masked if it shows up later; other input is
    /// `{"text": …}` (masked as usual).
    pub fn input_record(&self, text: &str, hidden: bool) -> JournalEvent {
        self.person_input_record(text, hidden, false)
    }

    /// [`Observer::input_record`], marked as typed by a person at a
    /// terminal when `person` (`"by": "person"`).
    pub fn person_input_record(&self, text: &str, hidden: bool, person: bool) -> JournalEvent {
        if hidden {
            self.redactor().learn_secret(text);
        }
        JournalEvent::input_by(text, hidden, person.then_some("person"))
    }

    /// The console event for input typed into a running command; hidden
    /// input shows as `[hidden input]`.
    pub fn input_event(&self, session: String, text: &str, hidden: bool) -> ConsoleEvent {
        ConsoleEvent::Input {
            session,
            text: if hidden {
                HIDDEN_INPUT.to_string()
            } else {
                text.to_string()
            },
            origin: None,
        }
    }
}

/// What the console shows for input typed with echo off.
pub const HIDDEN_INPUT: &str = "[hidden input]";

fn learn_value(r: &Redactor, v: &Value) {
    match v {
        Value::String(s) => {
            r.learn_from_assignment(s);
        }
        Value::Array(a) => a.iter().for_each(|v| learn_value(r, v)),
        Value::Object(o) => o.values().for_each(|v| learn_value(r, v)),
        _ => {}
    }
}

/// The shared console, masking every event before it is published. It
/// dereferences to the [`Console`] for subscribing.
#[derive(Debug, Clone)]
pub struct MaskedConsole {
    inner: Console,
    redactor: Redactor,
}

impl MaskedConsole {
    /// Masks `event` and publishes it (dropped when nobody watches).
    /// Command text teaches the redactor first, like the journal.
    pub fn publish(&self, event: ConsoleEvent) {
        if self.inner.watched() {
            self.inner.publish(self.mask(event));
        }
    }

    /// `event` as the console shows it: every text masked.
    pub fn mask(&self, event: ConsoleEvent) -> ConsoleEvent {
        let r = &self.redactor;
        match event {
            ConsoleEvent::Header {
                session,
                target,
                command,
                origin,
            } => {
                r.learn_from_assignment(&command);
                ConsoleEvent::Header {
                    session,
                    target,
                    command: r.redact(&command).into_owned(),
                    origin,
                }
            }
            ConsoleEvent::Output {
                session,
                bytes,
                origin,
            } => {
                let bytes = match r.redact_bytes(&bytes) {
                    std::borrow::Cow::Borrowed(_) => bytes,
                    std::borrow::Cow::Owned(b) => b,
                };
                ConsoleEvent::Output {
                    session,
                    bytes,
                    origin,
                }
            }
            ConsoleEvent::Input {
                session,
                text,
                origin,
            } => ConsoleEvent::Input {
                session,
                text: r.redact(&text).into_owned(),
                origin,
            },
            footer @ ConsoleEvent::Footer { .. } => footer,
        }
    }

    /// The unmasked broadcast underneath (subscribe to it).
    pub fn inner(&self) -> &Console {
        &self.inner
    }
}

impl Deref for MaskedConsole {
    type Target = Console;
    fn deref(&self) -> &Console {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn console_is_masked_and_learns_like_the_journal() {
        let o = Observer::default();
        let mut rx = o.console.subscribe();
        o.console.publish(ConsoleEvent::Header {
            session: "s".into(),
            target: "local".into(),
            command: "export DEPLOY_TOKEN=tok-0123456789".into(),
            origin: None,
        });
        o.console.publish(ConsoleEvent::Output {
            session: "s".into(),
            bytes: b"got tok-0123456789 and sk_live_51HqLyjWDarjtT1zdp7dc\n".to_vec(),
            origin: None,
        });
        o.console
            .publish(o.input_event("s".into(), "hunter2-secret\n", true));
        let header = rx.recv().await.unwrap();
        assert_eq!(
            *header,
            ConsoleEvent::Header {
                session: "s".into(),
                target: "local".into(),
                command: "export DEPLOY_TOKEN=[REDACTED]".into(),
                origin: None,
            }
        );
        let out = rx.recv().await.unwrap();
        let ConsoleEvent::Output { bytes, .. } = &*out else {
            panic!("{out:?}")
        };
        assert_eq!(bytes, b"got [REDACTED] and [REDACTED]\n");
        let input = rx.recv().await.unwrap();
        assert!(matches!(&*input, ConsoleEvent::Input { text, .. } if text == HIDDEN_INPUT));
    }

    #[test]
    fn hidden_input_has_no_text_and_is_learned() {
        let o = Observer::default();
        let json = |e: JournalEvent| serde_json::to_value(e).unwrap();
        let f = o.input_record("correct-horse\n", true);
        assert_eq!(
            json(f),
            serde_json::json!({"event": "input", "hidden": true, "chars": 14})
        );
        assert_eq!(o.redactor().redact("pw correct-horse"), "pw [REDACTED]");
        let f = o.input_record("yes\n", false);
        assert_eq!(
            json(f),
            serde_json::json!({"event": "input", "text": "yes\n"})
        );
        let env = [("GH_TOKEN".to_string(), "ghx-env-secret".to_string())];
        assert_eq!(o.learn_env(&env), 1);
        assert_eq!(o.redactor().redact("ghx-env-secret"), "[REDACTED]");
    }
}
