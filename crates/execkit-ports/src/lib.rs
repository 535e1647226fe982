//! One rule for the loopback ports of daemons that execkit's tests, `cargo
//! xtask` and the bench start (`sshd`, `dockerd`'s TCP host, SWE-ReX
//! servers): a port below the kernel's ephemeral range. Ports handed out
//! by `bind(…:0)` — reserved ports, client sockets — come from that range,
//! so they cannot take a daemon's port between the check and its start.
//! Candidates start at an offset from the pid, so concurrent processes
//! spread out, and step through the range; each is checked free by
//! binding it.
//!
//! A crate of its own so the bench can use it without turning on
//! `execkit-core`'s `testkit` feature in the binary it measures.

use std::sync::atomic::{AtomicU16, Ordering};

/// The first port of the kernel's ephemeral range (32768 when unknown).
pub fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768)
}

/// A free loopback port from 10000 up to below [`ephemeral_low`], a
/// different one on each call of this process; `None` when all are taken.
pub fn daemon_port() -> Option<u16> {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let (start, span) = (10_000u16, ephemeral_low().saturating_sub(10_000).max(1000));
    let base = (std::process::id() % u32::from(span)) as u16;
    for _ in 0..span {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = start + (base.wrapping_add(k.wrapping_mul(7919)) % span);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Some(port);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_free_below_the_ephemeral_range_and_differ() {
        let (a, b) = (super::daemon_port().unwrap(), super::daemon_port().unwrap());
        assert_ne!(a, b);
        for p in [a, b] {
            assert!(
                (10_000..super::ephemeral_low().max(11_000)).contains(&p),
                "{p}"
            );
            std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }
}
