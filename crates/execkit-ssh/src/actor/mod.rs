//! One OS thread per SSH connection. It owns the `ssh2::Session` in
//! non-blocking mode and multiplexes every channel of the connection: libssh2
//! serialises all I/O of a session, so a blocking read would stall writes
//! from other threads. Tokio talks to it through a request queue (plus an
//! eventfd to wake it) and gets output through one event channel per shell
//! or stream.
//!
//! libssh2's non-blocking contract is kept: an operation that returned
//! EAGAIN is retried with the same arguments (pending input stays at the
//! front of its queue until written), only one channel open is in flight at a
//! time, and keepalives are sent only while nothing else is half-sent.
//!
//! Layout: `handle` is the tokio side (the `Conn` handle and its requests),
//! `setup` opens channels (one in flight at a time), `channels` serves open
//! ones, `sys` holds the raw syscalls and libssh2's error codes; this file
//! is the loop that ties them together.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use execkit_core::raw::ShellEvent;
use ssh2::{BlockDirections, Channel, Session};

macro_rules! trace {
    ($($arg:tt)*) => {
        if $crate::actor::tracing_on() {
            eprintln!("[ssh {:?}] {}", std::thread::current().name(), format!($($arg)*));
        }
    };
}

/// `EXECKIT_SSH_TRACE=1` prints the connection thread's steps on stderr.
pub(crate) fn tracing_on() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("EXECKIT_SSH_TRACE").is_some())
}

mod channels;
mod handle;
mod setup;
mod sys;

use channels::{fail_input, ExecChan, Input, ShellChan, StreamChan};
use handle::{reject, Shared};
pub(crate) use handle::{
    Conn, ExecOutput, OpenError, Req, Start, Stream, StreamEnd, StreamEvent, What,
};
use setup::Pending;
pub(crate) use sys::Socket;
use sys::{code, dead, lost, poll_fd, Lost, Wake, EAGAIN};

/// Output bytes handed to tokio but not yet consumed, per shell, above which
/// the thread stops reading that channel (the SSH window then throttles the
/// server).
pub(crate) const HIGH_WATER: usize = 4 << 20;
/// The same for a stream (a file being read): stdout handed to tokio and
/// not yet consumed, above which its channel is left unread.
pub(crate) const STREAM_HIGH_WATER: usize = 2 << 20;
const READ_CHUNK: usize = 64 * 1024;
/// A stream's read buffer: one read takes what libssh2 holds for it, up to this.
const STREAM_READ: usize = 256 * 1024;
/// How long to wait for the server's close (carrying the exit status) after EOF.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
const IDLE_POLL: Duration = Duration::from_millis(250);
/// Keepalive interval (sent with want-reply, so the server answers) when
/// the target does not set one (`ServerAliveInterval`).
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(15);
/// How long the server may stay silent while it owes us an answer (to a
/// keepalive, sent every 15 s, or to a channel set-up) before the
/// connection counts as stalled and is given up. TCP alone cannot tell: a
/// stopped or wedged sshd still has its kernel acknowledge our packets.
pub(crate) const STALL_LIMIT: Duration = Duration::from_secs(10);

struct Actor {
    sess: Session,
    stream: Socket,
    /// How often to send a keepalive.
    keepalive: Duration,
    wake: Arc<Wake>,
    rx: Receiver<Req>,
    shared: Arc<Shared>,
    label: String,
    pending: Vec<Pending>,
    shells: HashMap<u64, ShellChan>,
    execs: Vec<ExecChan>,
    streams: HashMap<u64, StreamChan>,
    /// Where streams read into (one buffer for all of them).
    read_buf: Vec<u8>,
    closing: Vec<(Channel, Instant)>,
    /// When the last handle went away (then: finish cleanups, close).
    shutdown: Option<Instant>,
    next_keepalive: Instant,
    /// Since when the server owes us an answer, and how many bytes the
    /// socket had received then (see [`STALL_LIMIT`]).
    expect: Option<(Instant, u64)>,
}

impl Actor {
    fn new(
        sess: Session,
        stream: Socket,
        keepalive: Duration,
        wake: Arc<Wake>,
        rx: Receiver<Req>,
        shared: Arc<Shared>,
        label: String,
    ) -> Actor {
        Actor {
            sess,
            stream,
            keepalive,
            wake,
            rx,
            shared,
            label,
            pending: Vec::new(),
            shells: HashMap::new(),
            execs: Vec::new(),
            streams: HashMap::new(),
            read_buf: vec![0; STREAM_READ],
            closing: Vec::new(),
            shutdown: None,
            next_keepalive: Instant::now() + keepalive,
            expect: None,
        }
    }

    fn run(mut self) {
        let result = self.main_loop();
        let msg = match result {
            Ok(()) => format!("connection to {} closed", self.label),
            Err(Lost(m)) => m,
        };
        let _ = self.shared.lost.set(msg.clone());
        self.fail_everything(&msg);
        // Free channels, then say goodbye; never block on a dead peer.
        self.closing.clear();
        self.execs.clear();
        self.streams.clear();
        self.shells.clear();
        self.pending.clear();
        let _ = self.sess.disconnect(None, "execkit session closed", None);
        self.stream.shutdown();
    }

    fn fail_everything(&mut self, msg: &str) {
        for (_, sh) in self.shells.drain() {
            for input in sh.input {
                if let Some(d) = input.done {
                    let _ = d.send(Err(msg.to_string()));
                }
            }
            let _ = sh.events.send(ShellEvent::Lost(msg.to_string()));
        }
        for p in self.pending.drain(..) {
            p.fail(OpenError::Lost(msg.to_string()));
        }
        for mut e in self.execs.drain(..) {
            if let Some(r) = e.reply.take() {
                let _ = r.send(Err(OpenError::Lost(msg.to_string())));
            }
        }
        for (_, mut st) in self.streams.drain() {
            fail_input(&mut st.input, msg);
            let _ = st.events.send(StreamEvent::End(Err(msg.to_string())));
        }
        while let Ok(req) = self.rx.try_recv() {
            reject(req, msg);
        }
    }

    fn lost(&self, what: &str, detail: &str) -> Lost {
        lost(&self.label, self.stream.fd(), what, detail)
    }

    fn connection_dead(&self) -> bool {
        dead(self.stream.fd())
    }

    fn main_loop(&mut self) -> Result<(), Lost> {
        loop {
            let mut progress = self.take_requests();
            if let Some(since) = self.shutdown {
                let idle = self.shells.is_empty()
                    && self.execs.is_empty()
                    && self.streams.is_empty()
                    && self.pending.is_empty()
                    && self.closing.is_empty();
                if idle || since.elapsed() > Duration::from_secs(10) {
                    return Ok(());
                }
            }
            progress |= self.service_shells()?;
            progress |= self.service_execs()?;
            progress |= self.service_streams()?;
            progress |= self.service_closing();
            // Last: the replies it waits for may have just been pulled off
            // the socket by the reads above.
            progress |= self.advance_pending()?;
            self.keepalive()?;
            self.check_stall()?;
            if progress {
                continue;
            }
            if self.data_buffered() {
                continue;
            }
            self.wait();
        }
    }

    /// Moves queued requests into the state. Returns whether any came.
    fn take_requests(&mut self) -> bool {
        let mut any = false;
        loop {
            match self.rx.try_recv() {
                Ok(req) => {
                    any = true;
                    self.accept(req);
                }
                Err(TryRecvError::Empty) => return any,
                Err(TryRecvError::Disconnected) => {
                    if self.shutdown.is_none() {
                        self.shutdown = Some(Instant::now());
                        // No handle left: no one can read these shells.
                        let ids: Vec<u64> = self.shells.keys().copied().collect();
                        for id in ids {
                            self.close_shell(id);
                        }
                        let ids: Vec<u64> = self.streams.keys().copied().collect();
                        for id in ids {
                            self.close_stream(id);
                        }
                    }
                    return any;
                }
            }
        }
    }

    fn accept(&mut self, req: Req) {
        match req {
            Req::Open(what) => {
                // Not sent yet: the count now is from before the request.
                self.expect_answer(self.stream.received());
                self.pending.push(Pending::new(what));
            }
            Req::Write { id, data, done } => {
                if let Some(sh) = self.shells.get_mut(&id) {
                    if sh.eof_at.is_none() {
                        sh.input.push_back(Input::data(data, done));
                        return;
                    }
                } else if let Some(st) = self.streams.get_mut(&id) {
                    if st.eof_at.is_none() {
                        st.input.push_back(Input::data(data, done));
                        return;
                    }
                }
                let _ = done.send(Err("the remote command has ended".into()));
            }
            Req::Eof { id } => {
                if let Some(st) = self.streams.get_mut(&id) {
                    st.input.push_back(Input::eof());
                }
            }
            Req::Resize { id, size, done } => match self.shells.get_mut(&id) {
                Some(sh) => match &mut sh.resize {
                    Some((s, waiters)) => {
                        *s = size;
                        waiters.push(done);
                    }
                    None => sh.resize = Some((size, vec![done])),
                },
                None => {
                    let _ = done.send(Ok(()));
                }
            },
            Req::Close { id } => {
                self.close_shell(id);
                self.close_stream(id);
            }
        }
    }

    /// Sends a channel off to be closed and freed; it no longer counts
    /// against the server's session limit.
    fn retire(&mut self, chan: Channel) {
        let _ = self
            .shared
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        self.closing.push((chan, Instant::now()));
    }

    fn close_shell(&mut self, id: u64) {
        if let Some(mut sh) = self.shells.remove(&id) {
            self.shared.release();
            fail_input(&mut sh.input, "the session was closed");
            self.retire(sh.chan);
        }
    }

    fn close_stream(&mut self, id: u64) {
        if let Some(mut st) = self.streams.remove(&id) {
            self.shared.release();
            fail_input(&mut st.input, "the transfer was closed");
            self.retire(st.chan);
        }
    }

    fn keepalive(&mut self) -> Result<(), Lost> {
        let now = Instant::now();
        if now < self.next_keepalive {
            return Ok(());
        }
        // A keepalive must never be the packet left half-sent (libssh2 would
        // then refuse every other packet): only send when nothing is queued
        // and the socket has room. A stream's input stays queued through an
        // upload, but while the server's window is shut no packet of it can
        // be under way (libssh2 shrinks the window once a packet is sent
        // whole), so an upload held back by the server does not hold back
        // keepalives and the stall check. Its EOF always counts as queued.
        let busy = self.shells.values().any(|s| !s.input.is_empty())
            || self.streams.values().any(|s| match s.input.front() {
                Some(front) => front.eof || s.chan.write_window().remaining > 0,
                None => false,
            })
            || matches!(
                self.sess.block_directions(),
                BlockDirections::Outbound | BlockDirections::Both
            )
            || !poll_fd(self.stream.fd(), libc::POLLOUT, 0);
        if busy {
            self.next_keepalive = now + Duration::from_secs(1);
            return Ok(());
        }
        // Counted before sending: on a busy machine the woken server can
        // answer before this thread runs again, and an answer inside the
        // baseline would pass for silence.
        let before = self.stream.received();
        match self.sess.keepalive_send() {
            Ok(secs) => {
                self.next_keepalive = now + Duration::from_secs(u64::from(secs.max(1)));
                // libssh2 sends only when its interval has passed, and then
                // reports the full interval; sent with want-reply, the
                // server answers it.
                if u64::from(secs) >= self.keepalive.as_secs() {
                    self.expect_answer(before);
                }
                Ok(())
            }
            Err(e) if code(&e) == EAGAIN => {
                self.next_keepalive = now + Duration::from_secs(1);
                Ok(())
            }
            Err(e) => Err(self.lost("sending a keepalive", e.message())),
        }
    }

    /// Starts the stall clock, unless it already runs. `baseline`: what
    /// the socket had received before the request that is owed an answer
    /// went out (`None`: the kernel cannot say; no clock).
    fn expect_answer(&mut self, baseline: Option<u64>) {
        if self.expect.is_none() {
            if let Some(bytes) = baseline {
                self.expect = Some((Instant::now(), bytes));
            }
        }
    }

    /// Gives the connection up when the server has sent nothing for
    /// [`STALL_LIMIT`] while it owes us an answer.
    fn check_stall(&mut self) -> Result<(), Lost> {
        let Some((since, before)) = self.expect else {
            return Ok(());
        };
        let Some(now_bytes) = self.stream.received() else {
            self.expect = None;
            return Ok(());
        };
        if now_bytes != before {
            // It spoke. Channel set-ups still waiting restart the clock.
            self.expect = (!self.pending.is_empty()).then(|| (Instant::now(), now_bytes));
            return Ok(());
        }
        if !self.reads_wanted() && poll_fd(self.stream.fd(), libc::POLLIN, 0) {
            // We hold the server back (every channel waits for a slow
            // consumer, so the socket is left unread): once our receive
            // buffer is full its answer queues behind channel data it
            // cannot send. The silence is ours; judge it once we read again.
            self.expect = Some((Instant::now(), now_bytes));
            return Ok(());
        }
        if since.elapsed() > STALL_LIMIT {
            return Err(Lost(format!(
                "connection to {} stalled: the server sent nothing for {} s while an answer was due",
                self.label,
                STALL_LIMIT.as_secs()
            )));
        }
        Ok(())
    }

    /// Whether libssh2 already holds unread data for a channel we would read
    /// (it reads the socket on behalf of every channel).
    fn data_buffered(&self) -> bool {
        self.shells.values().any(|s| {
            s.inflight.load(Ordering::Relaxed) < HIGH_WATER
                && (s.chan.read_window().available > 0 || (s.eof_at.is_none() && s.chan.eof()))
        }) || self
            .execs
            .iter()
            .any(|e| e.chan.read_window().available > 0)
            || self.streams.values().any(|s| {
                !s.throttled()
                    && (s.chan.read_window().available > 0 || (s.eof_at.is_none() && s.chan.eof()))
            })
    }

    /// Whether a readable socket would be read: something other than a
    /// channel left unread for its slow consumer waits for the server. When
    /// nothing does, the socket is not polled for input (it would stay
    /// readable and spin the loop); the consumer's wake resumes reading.
    fn reads_wanted(&self) -> bool {
        let channels = self.shells.len() + self.streams.len();
        let throttled = self
            .shells
            .values()
            .filter(|s| s.inflight.load(Ordering::Relaxed) >= HIGH_WATER)
            .count()
            + self.streams.values().filter(|s| s.throttled()).count();
        channels == 0
            || throttled < channels
            || !self.pending.is_empty()
            || !self.execs.is_empty()
            || !self.closing.is_empty()
    }

    fn wait(&mut self) {
        trace!(
            "idle: pending={} shells={} execs={} streams={} closing={} channels={} limit={} dirs={:?}",
            self.pending.len(),
            self.shells.len(),
            self.execs.len(),
            self.streams.len(),
            self.closing.len(),
            self.shared.channels.load(Ordering::Relaxed),
            self.shared.limit.load(Ordering::Relaxed),
            match self.sess.block_directions() {
                BlockDirections::None => 0,
                BlockDirections::Inbound => 1,
                BlockDirections::Outbound => 2,
                BlockDirections::Both => 3,
            }
        );
        let outbound = matches!(
            self.sess.block_directions(),
            BlockDirections::Outbound | BlockDirections::Both
        );
        let inbound = self.reads_wanted()
            || self.shells.values().any(|s| !s.input.is_empty())
            || self.streams.values().any(|s| !s.input.is_empty())
            || matches!(
                self.sess.block_directions(),
                BlockDirections::Inbound | BlockDirections::Both
            );
        let mut timeout = IDLE_POLL;
        let until_keepalive = self
            .next_keepalive
            .saturating_duration_since(Instant::now());
        timeout = timeout.min(until_keepalive.max(Duration::from_millis(10)));
        // Shells waiting on the close grace period need a timely re-check.
        if self.shells.values().any(|s| s.eof_at.is_some())
            || self.execs.iter().any(|e| e.eof_at.is_some())
            || self.streams.values().any(|s| s.eof_at.is_some())
            || !self.closing.is_empty()
        {
            timeout = timeout.min(Duration::from_millis(20));
        }
        let mut fds = [
            libc::pollfd {
                fd: self.stream.fd(),
                events: if inbound { libc::POLLIN } else { 0 }
                    | if outbound { libc::POLLOUT } else { 0 },
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.0,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: polling two valid fds with a correctly sized array.
        unsafe {
            libc::poll(fds.as_mut_ptr(), 2, timeout.as_millis() as libc::c_int);
        }
        if fds[1].revents != 0 {
            self.wake.drain();
        }
    }
}
