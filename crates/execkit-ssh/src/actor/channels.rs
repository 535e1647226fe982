//! Serving open channels: input written in order, resizes, output read
//! up to the high-water mark, and the end (EOF, then the close carrying the
//! exit status). Shells stream their output; one-shot commands collect it;
//! streams (whole-file transfers) move bytes both ways with backpressure.

use std::collections::VecDeque;
use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use execkit_core::{
    raw::{ExitStatus, ShellEvent},
    Size,
};
use ssh2::Channel;
use tokio::sync::{mpsc::UnboundedSender, oneshot};

use super::handle::{Done, ExecOutput, OpenError, StreamEnd, StreamEvent, STDERR_KEPT};
use super::sys::{code, dead, fatal, lost, Lost, EAGAIN};
use super::{Actor, CLOSE_GRACE, HIGH_WATER, READ_CHUNK, STREAM_HIGH_WATER};

/// Input queued for a shell or a stream; the front stays put until written.
pub(super) struct Input {
    pub(super) data: Vec<u8>,
    pub(super) off: usize,
    pub(super) done: Option<Done>,
    /// End of input: sends the channel's EOF once everything before it is
    /// written (streams only).
    pub(super) eof: bool,
}

impl Input {
    pub(super) fn data(data: Vec<u8>, done: Done) -> Input {
        Input {
            data,
            off: 0,
            done: Some(done),
            eof: false,
        }
    }

    pub(super) fn eof() -> Input {
        Input {
            data: Vec::new(),
            off: 0,
            done: None,
            eof: true,
        }
    }
}

/// Answers every queued write with `msg` (the channel ended or closed).
pub(super) fn fail_input(input: &mut VecDeque<Input>, msg: &str) {
    for i in input.drain(..) {
        if let Some(d) = i.done {
            let _ = d.send(Err(msg.to_string()));
        }
    }
}

/// An interactive shell on a PTY channel.
pub(super) struct ShellChan {
    pub(super) chan: Channel,
    pub(super) events: UnboundedSender<ShellEvent>,
    pub(super) inflight: Arc<AtomicUsize>,
    pub(super) input: VecDeque<Input>,
    pub(super) resize: Option<(Size, Vec<Done>)>,
    pub(super) eof_at: Option<Instant>,
}

/// A streamed command (whole-file transfer): stdin written in order from
/// `input`, stdout sent to `events` while the consumer keeps up, stderr
/// kept apart (its start only), then the end.
pub(super) struct StreamChan {
    pub(super) chan: Channel,
    pub(super) events: UnboundedSender<StreamEvent>,
    /// Stdout bytes sent to `events` and not yet taken by the consumer.
    pub(super) inflight: Arc<AtomicUsize>,
    pub(super) input: VecDeque<Input>,
    pub(super) stderr: Vec<u8>,
    pub(super) eof_at: Option<Instant>,
}

impl StreamChan {
    pub(super) fn new(
        chan: Channel,
        events: UnboundedSender<StreamEvent>,
        inflight: Arc<AtomicUsize>,
    ) -> StreamChan {
        StreamChan {
            chan,
            events,
            inflight,
            input: VecDeque::new(),
            stderr: Vec::new(),
            eof_at: None,
        }
    }

    /// Whether the consumer is far enough behind that the channel is left
    /// unread: libssh2 then keeps the server's window shut once it holds a
    /// window's worth (it widens the window only as data is read).
    pub(super) fn throttled(&self) -> bool {
        self.inflight.load(Ordering::Relaxed) >= STREAM_HIGH_WATER
    }
}

/// A one-shot command (clean-up and out-of-band scripts).
pub(super) struct ExecChan {
    pub(super) chan: Channel,
    pub(super) output: Vec<u8>,
    pub(super) reply: Option<oneshot::Sender<Result<ExecOutput, OpenError>>>,
    pub(super) eof_at: Option<Instant>,
}

impl Actor {
    pub(super) fn service_shells(&mut self) -> Result<bool, Lost> {
        let mut progress = false;
        let mut ended: Vec<u64> = Vec::new();
        let mut buf = vec![0u8; READ_CHUNK];
        let ids: Vec<u64> = self.shells.keys().copied().collect();
        for id in ids {
            let dead = {
                let sh = self.shells.get_mut(&id).expect("shell by id");
                match service_shell(sh, &mut buf) {
                    Ok((p, end)) => {
                        progress |= p;
                        if end {
                            ended.push(id);
                        }
                        None
                    }
                    Err(detail) => Some(detail),
                }
            };
            if let Some(detail) = dead {
                let last = ssh2::Error::last_session_error(&self.sess).map(|e| code(&e));
                trace!("shell {id} error {detail}: last={last:?}");
                let detail = match last {
                    Some(c) => format!("{detail} (libssh2 error {c})"),
                    None => detail,
                };
                if last.is_some_and(fatal) || self.connection_dead() {
                    return Err(self.lost("serving a shell", &detail));
                }
                if let Some(sh) = self.shells.get(&id) {
                    let _ = sh.events.send(ShellEvent::Lost(format!(
                        "ssh channel to {} failed: {detail}",
                        self.label
                    )));
                }
                ended.push(id);
            }
        }
        for id in ended {
            self.close_shell(id);
            progress = true;
        }
        Ok(progress)
    }

    pub(super) fn service_execs(&mut self) -> Result<bool, Lost> {
        let mut progress = false;
        let mut buf = vec![0u8; READ_CHUNK];
        let mut i = 0;
        let fd = self.stream.fd();
        while i < self.execs.len() {
            let e = &mut self.execs[i];
            let mut finished = None;
            loop {
                match e.chan.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        progress = true;
                        if e.output.len() < 64 * 1024 {
                            e.output.extend_from_slice(&buf[..n]);
                        }
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(err) => {
                        let detail = err.to_string();
                        let last = ssh2::Error::last_session_error(&self.sess).map(|e| code(&e));
                        if last.is_some_and(fatal) || dead(fd) {
                            return Err(lost(&self.label, fd, "running a command", &detail));
                        }
                        finished = Some(Err(OpenError::Failed(detail)));
                        break;
                    }
                }
            }
            let e = &mut self.execs[i];
            if finished.is_none() && e.chan.eof() {
                let since = *e.eof_at.get_or_insert_with(Instant::now);
                match e.chan.wait_close() {
                    Ok(()) => finished = Some(Ok(exit_of(&e.chan, true))),
                    Err(err) if code(&err) == EAGAIN && since.elapsed() < CLOSE_GRACE => {}
                    Err(_) => finished = Some(Ok(exit_of(&e.chan, false))),
                }
            }
            match finished {
                None => i += 1,
                Some(r) => {
                    trace!("exec finished: {:?}", r.as_ref().map(|s| *s));
                    let mut e = self.execs.remove(i);
                    self.shared.release();
                    if let Some(reply) = e.reply.take() {
                        let _ = reply.send(r.map(|status| ExecOutput {
                            status,
                            output: std::mem::take(&mut e.output),
                        }));
                    }
                    self.retire(e.chan);
                    progress = true;
                }
            }
        }
        Ok(progress)
    }

    pub(super) fn service_streams(&mut self) -> Result<bool, Lost> {
        let mut progress = false;
        let fd = self.stream.fd();
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        for id in ids {
            let st = self.streams.get_mut(&id).expect("stream by id");
            let end = match service_stream(st, &mut self.read_buf) {
                Ok((p, None)) => {
                    progress |= p;
                    continue;
                }
                Ok((_, Some(end))) => Ok(end),
                Err(detail) => {
                    let last = ssh2::Error::last_session_error(&self.sess).map(|e| code(&e));
                    if last.is_some_and(fatal) || dead(fd) {
                        return Err(lost(&self.label, fd, "streaming a command", &detail));
                    }
                    Err(format!("ssh channel to {} failed: {detail}", self.label))
                }
            };
            trace!("stream {id} ended: {end:?}");
            if let Some(st) = self.streams.get_mut(&id) {
                let msg = match &end {
                    Ok(_) => "the remote command has ended".to_string(),
                    Err(m) => m.clone(),
                };
                fail_input(&mut st.input, &msg);
                let _ = st.events.send(StreamEvent::End(end));
            }
            self.close_stream(id);
            progress = true;
        }
        Ok(progress)
    }

    /// Sends our close for finished channels, then frees them.
    pub(super) fn service_closing(&mut self) -> bool {
        let before = self.closing.len();
        self.closing.retain_mut(|(chan, since)| {
            matches!(chan.close(), Err(e) if code(&e) == EAGAIN && since.elapsed() < Duration::from_secs(5))
        });
        before != self.closing.len()
    }
}

/// Writes queued input in order until the channel takes no more; the front
/// stays put until written (EAGAIN contract). Returns whether any went out.
fn write_input(chan: &mut Channel, input: &mut VecDeque<Input>) -> Result<bool, String> {
    let mut progress = false;
    while let Some(front) = input.front_mut() {
        if front.eof {
            match chan.send_eof() {
                Ok(()) => {
                    progress = true;
                    input.pop_front();
                    continue;
                }
                Err(e) if code(&e) == EAGAIN => break,
                Err(e) => return Err(format!("sending end of input failed: {e}")),
            }
        }
        match chan.write(&front.data[front.off..]) {
            Ok(0) => break,
            Ok(n) => {
                progress = true;
                front.off += n;
                if front.off >= front.data.len() {
                    if let Some(d) = front.done.take() {
                        let _ = d.send(Ok(()));
                    }
                    input.pop_front();
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(format!("write failed: {e}")),
        }
    }
    Ok(progress)
}

/// Writes pending input, applies a pending resize, reads output, and
/// detects the end of one shell. Returns (progress, ended) or an error text.
fn service_shell(sh: &mut ShellChan, buf: &mut [u8]) -> Result<(bool, bool), String> {
    let mut progress = write_input(&mut sh.chan, &mut sh.input)?;
    if let Some((size, _)) = &sh.resize {
        match sh
            .chan
            .request_pty_size(u32::from(size.cols), u32::from(size.rows), None, None)
        {
            Ok(()) => {
                if let Some((_, waiters)) = sh.resize.take() {
                    for w in waiters {
                        let _ = w.send(Ok(()));
                    }
                }
                progress = true;
            }
            Err(e) if code(&e) == EAGAIN => {}
            Err(e) => {
                if let Some((_, waiters)) = sh.resize.take() {
                    for w in waiters {
                        let _ = w.send(Err(format!("resize refused: {}", e.message())));
                    }
                }
            }
        }
    }
    // Output, unless tokio is far behind.
    while sh.inflight.load(Ordering::Relaxed) < HIGH_WATER {
        match sh.chan.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                progress = true;
                sh.inflight.fetch_add(n, Ordering::Relaxed);
                if sh
                    .events
                    .send(ShellEvent::Output(buf[..n].to_vec()))
                    .is_err()
                {
                    // Nobody reads any more; drop output until closed.
                    sh.inflight.store(0, Ordering::Relaxed);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
    // End: EOF with nothing left to read, then the close that follows the
    // exit status (bounded wait).
    if sh.inflight.load(Ordering::Relaxed) < HIGH_WATER && sh.chan.eof() {
        let since = *sh.eof_at.get_or_insert_with(Instant::now);
        let status = match sh.chan.wait_close() {
            Ok(()) => Some(exit_of(&sh.chan, true)),
            Err(e) if code(&e) == EAGAIN && since.elapsed() < CLOSE_GRACE => None,
            Err(_) => Some(exit_of(&sh.chan, false)),
        };
        if let Some(status) = status {
            fail_input(&mut sh.input, "the remote shell has ended");
            let _ = sh.events.send(ShellEvent::Exited(status));
            return Ok((true, true));
        }
    }
    Ok((progress, false))
}

/// Writes pending input, reads stdout (while the consumer keeps up) and
/// stderr, and detects the end of one stream: EOF with nothing left to
/// read, then the close carrying the exit status. Returns (progress, end)
/// or an error text.
fn service_stream(
    st: &mut StreamChan,
    buf: &mut [u8],
) -> Result<(bool, Option<StreamEnd>), String> {
    let mut progress = write_input(&mut st.chan, &mut st.input)?;
    if st.throttled() {
        return Ok((progress, None));
    }
    // Stdout up to the high-water mark, in chunks as large as libssh2 has.
    while !st.throttled() {
        match st.chan.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                progress = true;
                st.inflight.fetch_add(n, Ordering::Relaxed);
                if st
                    .events
                    .send(StreamEvent::Stdout(buf[..n].to_vec()))
                    .is_err()
                {
                    // Nobody reads any more; drop output until closed.
                    st.inflight.store(0, Ordering::Relaxed);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
    let mut errbuf = [0u8; 4096];
    loop {
        match st.chan.stderr().read(&mut errbuf) {
            Ok(0) => break,
            Ok(n) => {
                progress = true;
                let room = STDERR_KEPT.saturating_sub(st.stderr.len());
                st.stderr.extend_from_slice(&errbuf[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
    if !st.throttled() && st.chan.eof() {
        // The command's output ended (it exits): input it did not take is
        // never written.
        fail_input(&mut st.input, "the remote command has ended");
        let since = *st.eof_at.get_or_insert_with(Instant::now);
        let status = match st.chan.wait_close() {
            Ok(()) => Some(exit_of(&st.chan, true)),
            Err(e) if code(&e) == EAGAIN && since.elapsed() < CLOSE_GRACE => None,
            Err(_) => Some(exit_of(&st.chan, false)),
        };
        if let Some(status) = status {
            let end = StreamEnd {
                status,
                stderr: std::mem::take(&mut st.stderr),
            };
            return Ok((true, Some(end)));
        }
    }
    Ok((progress, None))
}

fn signal_number(name: &str) -> Option<i32> {
    let n = match name.trim_start_matches("SIG") {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "ABRT" => libc::SIGABRT,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "SEGV" => libc::SIGSEGV,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "BUS" => libc::SIGBUS,
        "TRAP" => libc::SIGTRAP,
        _ => return None,
    };
    Some(n)
}

/// How the remote process ended, from the channel's exit-signal/exit-status.
pub(super) fn exit_of(chan: &Channel, closed: bool) -> ExitStatus {
    if let Ok(sig) = chan.exit_signal() {
        if let Some(name) = sig.exit_signal {
            return signal_number(&name).map_or(ExitStatus::Unknown, ExitStatus::Signal);
        }
    }
    match chan.exit_status() {
        Ok(c) if closed || c != 0 => ExitStatus::Code(c),
        _ => ExitStatus::Unknown,
    }
}
