//! A forwarded channel as a local socket: one end of a Unix socket pair
//! is handed out, two threads copy between the other end and the channel.
//! A connection through a jump host runs its SSH session over such a
//! socket; a remote Docker engine's socket is reached the same way.
//!
//! Threads rather than tasks: a connection is established on a plain
//! thread, with no runtime to run tasks on. Backpressure holds both ways:
//! the reader waits for the channel to take each chunk, the writer blocks
//! on a full socket buffer while its channel's output stays queued in the
//! connection thread (which then stops reading that channel).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::actor::{Stream, StreamEvent};

/// How much one read from the local end may forward at once.
const CHUNK: usize = 64 * 1024;

/// Starts relaying `stream`; returns the local end and a count of the
/// bytes delivered into it so far.
pub(crate) fn relay(mut stream: Stream) -> std::io::Result<(UnixStream, Arc<AtomicU64>)> {
    let (near, far) = UnixStream::pair()?;
    let received = Arc::new(AtomicU64::new(0));
    let writer = stream.writer();
    let mut far_in = far.try_clone()?;
    std::thread::Builder::new()
        .name("execkit-ssh relay out".into())
        .spawn(move || {
            let mut buf = vec![0; CHUNK];
            loop {
                match far_in.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if writer.write_blocking(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
            // The local side is done (or the channel is): close the
            // channel, which ends the other thread too.
            writer.close();
        })?;
    let count = received.clone();
    let mut far_out = far;
    std::thread::Builder::new()
        .name("execkit-ssh relay in".into())
        .spawn(move || {
            while let StreamEvent::Stdout(bytes) = stream.next_blocking() {
                if far_out.write_all(&bytes).is_err() {
                    break;
                }
                count.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            // Either way the relay is over: the local side reads EOF, the
            // other thread's read returns.
            let _ = far_out.shutdown(std::net::Shutdown::Both);
            drop(stream);
        })?;
    Ok((near, received))
}
