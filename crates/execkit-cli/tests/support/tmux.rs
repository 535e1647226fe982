//! A private tmux server (`tmux -L NAME`, no config) for tests that drive
//! the CLI as a person does: send-keys in, capture-pane out. Killed when
//! dropped.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A private tmux server; its one session is `w`.
pub struct Tmux {
    /// The server's socket name (`-L`): unique per test.
    pub name: String,
}

impl Tmux {
    /// A tmux command on this server; its stdout. Fails the test if tmux
    /// does.
    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.name, "-f", "/dev/null"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A format of the pane (`#{pane_title}`, `#{pane_pid}`, …).
    pub fn format(&self, f: &str) -> String {
        self.run(&["display-message", "-p", "-t", "w", f])
            .trim_end()
            .to_string()
    }

    /// The pane with its scrollback.
    pub fn pane(&self) -> String {
        self.run(&["capture-pane", "-p", "-J", "-S", "-", "-t", "w"])
    }

    /// The pane once it shows `what`.
    pub fn wait_for(&self, what: &str) -> String {
        self.wait_until(what, |pane| pane.contains(what))
    }

    /// The pane once `done` holds for it (polled, 30 s at most).
    pub fn wait_until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let t = Instant::now();
        loop {
            let pane = self.pane();
            if done(&pane) {
                return pane;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{what} never showed in the pane:\n{pane}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types `text` (literally).
    pub fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-t", "w", "-l", text]);
    }

    /// Presses keys by tmux name (`Enter`, `C-c`, `Escape`, `C-]`).
    pub fn press(&self, key: &str) {
        self.run(&["send-keys", "-t", "w", key]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.name, "kill-server"])
            .stderr(Stdio::null())
            .status();
    }
}
