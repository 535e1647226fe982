//! Transports are found by URL scheme. Each transport crate submits one
//! [`TransportInfo`] with `inventory::submit!` (through
//! [`register_transport!`](crate::register_transport)); linking the crate is
//! the whole registration — a program that names it once
//! (`use execkit_docker as _;`) has it.

use std::sync::Arc;

use crate::error::TransportError;
use crate::raw::Transport;

/// A registered transport: its scheme and how to build it for a target.
#[derive(Debug)]
pub struct TransportInfo {
    /// URL scheme this transport handles (`local`, `docker`, `ssh`).
    pub scheme: &'static str,
    /// One line for `execkit transports`.
    pub summary: &'static str,
    /// Example target.
    pub example: &'static str,
    /// Parses a target of this scheme; must not touch the network.
    pub connect: fn(&str) -> Result<Arc<dyn Transport>, TransportError>,
    /// Its shells run on this host: they share its filesystem and `/proc`
    /// (a local FIFO can be their stdin; one sweep of this host's `/proc`
    /// reaches their processes). Callers ask this, never the scheme's name.
    pub on_this_host: bool,
    /// Its opaque target form names the shell (`local:/bin/dash`): a shell
    /// an open request names replaces it, also for the allow list.
    pub shell_in_target: bool,
}

inventory::collect!(TransportInfo);

/// Declares a transport crate's registration: a `pub static INFO` and its
/// link-time `inventory` record (see [`crate::raw`]).
///
/// ```text
/// execkit_core::register_transport! {
///     scheme: "local",
///     summary: "a PTY on this host",
///     example: "local, local:/bin/dash",
///     connect: connect,
///     on_this_host: true,    // optional, default false
///     shell_in_target: true, // optional, default false
/// }
/// ```
#[macro_export]
macro_rules! register_transport {
    (scheme: $scheme:expr, summary: $summary:expr, example: $example:expr, connect: $connect:expr $(, on_this_host: $here:expr)? $(, shell_in_target: $sh:expr)? $(,)?) => {
        const __EXECKIT_TRANSPORT: $crate::TransportInfo = $crate::TransportInfo {
            scheme: $scheme,
            summary: $summary,
            example: $example,
            connect: $connect,
            on_this_host: false $(|| $here)?,
            shell_in_target: false $(|| $sh)?,
        };

        /// Registration record of this transport.
        pub static INFO: $crate::TransportInfo = __EXECKIT_TRANSPORT;

        $crate::inventory::submit!(__EXECKIT_TRANSPORT);
    };
}

/// Every linked transport, sorted by scheme, one per scheme.
pub fn transports() -> Vec<&'static TransportInfo> {
    let mut all: Vec<&'static TransportInfo> =
        inventory::iter::<TransportInfo>.into_iter().collect();
    all.sort_by_key(|i| i.scheme);
    all.dedup_by_key(|i| i.scheme);
    all
}

/// The scheme of a target: `local`, `local:/bin/sh`, `local?sandbox=…`
/// → `local`; `ssh://u@h` → `ssh`.
pub fn scheme_of(target: &str) -> Result<&str, TransportError> {
    let scheme = target.split([':', '?']).next().unwrap_or(target);
    let valid = !scheme.is_empty()
        && scheme.as_bytes()[0].is_ascii_alphabetic()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !valid {
        return Err(TransportError::InvalidTarget {
            target: target.to_string(),
            reason:
                "a target starts with a scheme such as `local`, `docker:NAME` or `ssh://user@host`"
                    .into(),
        });
    }
    Ok(scheme)
}

/// The registered transport for `target`'s scheme, if any.
pub fn info_of(target: &str) -> Option<&'static TransportInfo> {
    let scheme = scheme_of(target).ok()?;
    transports()
        .into_iter()
        .find(|i| i.scheme.eq_ignore_ascii_case(scheme))
}

/// Whether `target`'s shells run on this host
/// ([`TransportInfo::on_this_host`]); false for an unknown scheme.
pub fn on_this_host(target: &str) -> bool {
    info_of(target).is_some_and(|i| i.on_this_host)
}

/// Builds the transport for `target`, chosen by its scheme.
pub fn connect(target: &str) -> Result<Arc<dyn Transport>, TransportError> {
    let scheme = scheme_of(target)?;
    let all = transports();
    match all.iter().find(|i| i.scheme.eq_ignore_ascii_case(scheme)) {
        Some(info) => (info.connect)(target),
        None => Err(TransportError::UnknownScheme {
            scheme: scheme.to_string(),
            target: target.to_string(),
            known: if all.is_empty() {
                "none — it was built without transports".to_string()
            } else {
                all.iter().map(|i| i.scheme).collect::<Vec<_>>().join(", ")
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert_eq!(scheme_of("local").unwrap(), "local");
        assert_eq!(scheme_of("local:/bin/sh").unwrap(), "local");
        assert_eq!(scheme_of("ssh://u@h:22").unwrap(), "ssh");
        assert!(scheme_of("").is_err());
        assert!(scheme_of(":x").is_err());
        assert!(scheme_of("-rf:x").is_err());
    }

    #[test]
    fn unknown_scheme_names_the_known_ones() {
        let e = connect("nosuch:thing").unwrap_err();
        assert!(matches!(e, TransportError::UnknownScheme { .. }), "{e}");
        assert!(e.to_string().contains("nosuch"));
    }
}

/// A transport's way to reach a Unix socket on the host its targets name,
/// offered to other crates: a Docker engine over SSH
/// (`DOCKER_HOST=ssh://…`) is `execkit-docker` asking the `ssh` entry for
/// a stream to the remote `/var/run/docker.sock`. Registered with
/// `inventory::submit!` like [`TransportInfo`]; linking the crate that
/// submits it is the whole registration.
#[derive(Debug)]
pub struct SocketForwarder {
    /// URL scheme of the targets it takes (`ssh`).
    pub scheme: &'static str,
    /// A fresh stream to the socket at `path` on `target`'s host.
    pub connect: fn(target: String, path: String) -> ForwardFuture,
}

/// What [`SocketForwarder::connect`] returns.
pub type ForwardFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<tokio::net::UnixStream, TransportError>> + Send>,
>;

inventory::collect!(SocketForwarder);

/// The forwarder for targets of `scheme`, if a linked crate offers one.
pub fn socket_forwarder(scheme: &str) -> Option<&'static SocketForwarder> {
    inventory::iter::<SocketForwarder>
        .into_iter()
        .find(|f| f.scheme == scheme)
}
