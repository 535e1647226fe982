//! Channel set-up: open a session channel, request a PTY (shells only),
//! start the command. Strictly one set-up at a time per connection: libssh2
//! keeps one channel open in flight per session, and its wait for a
//! request's reply fails when a reply for another channel arrives meanwhile.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use ssh2::{Channel, ExtendedData, PtyModeOpcode, PtyModes};

use super::channels::{ExecChan, ShellChan, StreamChan};
use super::handle::{OpenError, Start, What};
use super::sys::{code, give_up_if_lost, Lost, CHANNEL_FAILURE, EAGAIN};
use super::Actor;

/// Terminal modes for the remote PTY: sane defaults, never copied from a
/// local terminal. No echo, no `\n` → `\r\n`, no XON/XOFF; signals kept so
/// Ctrl-C interrupts the foreground command.
///
/// Not canonical, unlike the local and Docker PTYs: with ECHO off and ICANON
/// on, OpenSSH's sshd answers every write into the PTY with an
/// `SSH_MSG_IGNORE` as long as the data written ("simulated echo" against
/// traffic analysis). A large input becomes one such packet per PTY write,
/// up to ~64 KB, and libssh2 drops the connection on any packet over 35,000
/// bytes (seen as "packet length out of bounds"). Without ICANON no IGNORE
/// is sent, and no 4095-byte line limit applies either. The cost: `^D` is
/// passed through as a byte, not turned into end-of-file.
fn pty_modes() -> PtyModes {
    let mut m = PtyModes::new();
    m.set_character(PtyModeOpcode::VINTR, Some('\x03'));
    m.set_character(PtyModeOpcode::VQUIT, Some('\x1c'));
    m.set_character(PtyModeOpcode::VERASE, Some('\x7f'));
    m.set_character(PtyModeOpcode::VKILL, Some('\x15'));
    m.set_character(PtyModeOpcode::VEOF, Some('\x04'));
    m.set_character(PtyModeOpcode::VSUSP, Some('\x1a'));
    m.set_boolean(PtyModeOpcode::ICANON, false);
    m.set_boolean(PtyModeOpcode::ISIG, true);
    m.set_boolean(PtyModeOpcode::IEXTEN, true);
    m.set_boolean(PtyModeOpcode::ECHO, false);
    m.set_boolean(PtyModeOpcode::ECHOE, false);
    m.set_boolean(PtyModeOpcode::ECHOK, false);
    m.set_boolean(PtyModeOpcode::ECHONL, false);
    m.set_boolean(PtyModeOpcode::ICRNL, true);
    m.set_boolean(PtyModeOpcode::INLCR, false);
    m.set_boolean(PtyModeOpcode::IGNCR, false);
    m.set_boolean(PtyModeOpcode::IXON, false);
    m.set_boolean(PtyModeOpcode::IXOFF, false);
    m.set_boolean(PtyModeOpcode::IXANY, false);
    m.set_boolean(PtyModeOpcode::OPOST, true);
    m.set_boolean(PtyModeOpcode::ONLCR, false);
    m.set_boolean(PtyModeOpcode::OCRNL, false);
    m.set_boolean(PtyModeOpcode::CS8, true);
    m
}

/// Where a set-up stands.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Open,
    Pty,
    Start,
}

/// A channel being set up, and whom to answer.
pub(super) struct Pending {
    chan: Option<Channel>,
    stage: Stage,
    what: What,
}

impl Pending {
    pub(super) fn new(what: What) -> Pending {
        Pending {
            chan: None,
            stage: Stage::Open,
            what,
        }
    }

    /// Fails the request (the connection is gone).
    pub(super) fn fail(self, e: OpenError) {
        self.what.fail(e);
    }
}

/// What one step of a set-up did.
enum Step {
    /// Moved to the next stage: try the next one at once.
    Advanced,
    /// The command started: the channel is ready.
    Started,
    /// libssh2 said EAGAIN: try again when the socket moves.
    Wait,
}

impl Actor {
    /// Advances the set-up at the head of the queue as far as it goes
    /// without blocking. Returns whether anything moved.
    pub(super) fn advance_pending(&mut self) -> Result<bool, Lost> {
        let mut progress = false;
        while !self.pending.is_empty() {
            let step = self.setup_step();
            trace!(
                "pending head stage={:?} result={:?} queue={}",
                self.pending[0].stage,
                step.as_ref()
                    .ok()
                    .map(|r| r.as_ref().map(|s| matches!(s, Step::Started)).ok()),
                self.pending.len()
            );
            match step? {
                Ok(Step::Advanced) => progress = true,
                Ok(Step::Wait) => break,
                Ok(Step::Started) => {
                    let p = self.pending.remove(0);
                    let chan = p.chan.expect("channel after start");
                    self.ready(chan, p.what);
                    progress = true;
                }
                Err(e) => {
                    let p = self.pending.remove(0);
                    if let Some(c) = p.chan {
                        self.retire(c);
                    }
                    self.shared.release();
                    p.what.fail(e);
                    progress = true;
                }
            }
        }
        Ok(progress)
    }

    /// One step of the head set-up: the outer error loses the connection,
    /// the inner one fails only this request.
    fn setup_step(&mut self) -> Result<Result<Step, OpenError>, Lost> {
        let fd = self.stream.fd();
        let label = self.label.clone();
        let p = &mut self.pending[0];
        match p.stage {
            Stage::Open => {
                let direct = match &p.what {
                    What::Stream {
                        start: Start::Tcp { host, port },
                        ..
                    } => Some(self.sess.channel_direct_tcpip(host, *port, None)),
                    What::Stream {
                        start: Start::Unix(path),
                        ..
                    } => Some(self.sess.channel_direct_streamlocal(path, None)),
                    _ => None,
                };
                if let Some(opened) = direct {
                    // A forwarded connection: open is all there is to it.
                    return match opened {
                        Ok(chan) => {
                            self.shared.open.fetch_add(1, Ordering::Relaxed);
                            p.chan = Some(chan);
                            Ok(Ok(Step::Started))
                        }
                        Err(e) if code(&e) == EAGAIN => Ok(Ok(Step::Wait)),
                        Err(e) => {
                            give_up_if_lost(&e, fd, &label, "opening a forwarded connection")?;
                            let to = match &p.what {
                                What::Stream { start, .. } => start.describe(),
                                _ => String::new(),
                            };
                            Ok(Err(OpenError::Failed(format!(
                                "{label} did not open a connection to {to}: {}",
                                forward_refusal(&e)
                            ))))
                        }
                    };
                }
                match self.sess.channel_session() {
                    Ok(mut chan) => {
                        self.shared.open.fetch_add(1, Ordering::Relaxed);
                        // A stream keeps stderr apart: its stdout is a file's bytes.
                        if !matches!(p.what, What::Stream { .. }) {
                            let _ = chan.handle_extended_data(ExtendedData::Merge);
                        }
                        p.chan = Some(chan);
                        p.stage = match p.what {
                            What::Shell { .. } => Stage::Pty,
                            What::Exec { .. } | What::Stream { .. } => Stage::Start,
                        };
                        Ok(Ok(Step::Advanced))
                    }
                    Err(e) if code(&e) == EAGAIN => Ok(Ok(Step::Wait)),
                    Err(e) if code(&e) == CHANNEL_FAILURE => {
                        Ok(Err(OpenError::Refused(e.message().to_string())))
                    }
                    Err(e) => {
                        give_up_if_lost(&e, fd, &label, "opening a channel")?;
                        Ok(Err(OpenError::Refused(e.message().to_string())))
                    }
                }
            }
            Stage::Pty => {
                let (chan, size) = match (&mut p.chan, &p.what) {
                    (Some(c), What::Shell { size, .. }) => (c, *size),
                    _ => unreachable!("PTY stage without a shell channel"),
                };
                match chan.request_pty(
                    "dumb",
                    Some(pty_modes()),
                    Some((u32::from(size.cols), u32::from(size.rows), 0, 0)),
                ) {
                    Ok(()) => {
                        p.stage = Stage::Start;
                        Ok(Ok(Step::Advanced))
                    }
                    Err(e) if code(&e) == EAGAIN => Ok(Ok(Step::Wait)),
                    Err(e) => {
                        give_up_if_lost(&e, fd, &label, "requesting a PTY")?;
                        Ok(Err(OpenError::Failed(format!(
                            "the server refused a terminal: {}",
                            e.message()
                        ))))
                    }
                }
            }
            Stage::Start => {
                let command = match &p.what {
                    What::Shell { command, .. }
                    | What::Exec { command, .. }
                    | What::Stream {
                        start: Start::Command(command),
                        ..
                    } => command,
                    What::Stream { .. } => unreachable!("a forwarded connection has no command"),
                };
                let chan = p.chan.as_mut().expect("channel after open");
                match chan.exec(command) {
                    Ok(()) => Ok(Ok(Step::Started)),
                    Err(e) if code(&e) == EAGAIN => Ok(Ok(Step::Wait)),
                    Err(e) => {
                        give_up_if_lost(&e, fd, &label, "starting a command")?;
                        Ok(Err(OpenError::Failed(format!(
                            "the server refused to run the shell: {}",
                            e.message()
                        ))))
                    }
                }
            }
        }
    }

    /// A started channel goes to the shells, the one-shot commands or the
    /// streams; a shell or stream whose caller gave up meanwhile is closed
    /// again.
    fn ready(&mut self, chan: Channel, what: What) {
        match what {
            What::Shell {
                id,
                events,
                inflight,
                reply,
                ..
            } => {
                if reply.send(Ok(())).is_err() {
                    self.shared.release();
                    self.retire(chan);
                } else {
                    self.shells.insert(
                        id,
                        ShellChan {
                            chan,
                            events,
                            inflight,
                            input: VecDeque::new(),
                            resize: None,
                            eof_at: None,
                        },
                    );
                }
            }
            What::Exec { reply, .. } => self.execs.push(ExecChan {
                chan,
                output: Vec::new(),
                reply: Some(reply),
                eof_at: None,
            }),
            What::Stream {
                id,
                events,
                inflight,
                reply,
                ..
            } => {
                if reply.send(Ok(())).is_err() {
                    self.shared.release();
                    self.retire(chan);
                } else {
                    self.streams
                        .insert(id, StreamChan::new(chan, events, inflight));
                }
            }
        }
    }
}

/// Why the server would not forward a connection: libssh2's message,
/// which names the server's reason ("administratively prohibited",
/// "connect failed") where it has one.
fn forward_refusal(e: &ssh2::Error) -> String {
    let m = e.message();
    if code(e) == CHANNEL_FAILURE && !m.contains('(') {
        format!(
            "{m} (forwarding disabled by the server's configuration, or the \
             destination refused the connection)"
        )
    } else {
        m.to_string()
    }
}
