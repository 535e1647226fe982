//! Connection sharing: sessions to the same user@host:port (with the same
//! identity and host-key settings) share one authenticated connection, one
//! channel each, like OpenSSH's ControlMaster. The registry holds weak
//! references; a connection closes with its last session.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use execkit_core::TransportError;

use crate::actor::{Conn, ExecOutput, OpenError};
use crate::connect;
use crate::target::{HostKeyPolicy, SshTarget};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    user: String,
    host: String,
    port: u16,
    identity: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
    host_key: HostKeyPolicy,
}

impl Key {
    fn of(t: &SshTarget) -> Key {
        Key {
            user: t.user.clone(),
            host: t.host.to_ascii_lowercase(),
            port: t.port,
            identity: t.identity.clone(),
            known_hosts: t.known_hosts.clone(),
            host_key: t.host_key,
        }
    }
}

#[derive(Default)]
struct Slot {
    conns: Vec<Weak<Conn>>,
    /// Serialises handshakes to one host so a burst of sessions shares
    /// the first connection instead of each making its own.
    connecting: Arc<tokio::sync::Mutex<()>>,
}

static POOL: Mutex<Option<HashMap<Key, Slot>>> = Mutex::new(None);

fn with_pool<R>(f: impl FnOnce(&mut HashMap<Key, Slot>) -> R) -> R {
    let mut g = POOL.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(HashMap::new))
}

fn find_live(key: &Key) -> Option<Arc<Conn>> {
    with_pool(|pool| {
        let slot = pool.get_mut(key)?;
        slot.conns
            .retain(|w| w.upgrade().is_some_and(|c| !c.is_lost()));
        slot.conns
            .iter()
            .filter_map(Weak::upgrade)
            .find(|c| c.shared.has_room())
    })
}

/// How many live connections the pool holds for `t` (for tests and stats).
pub fn live_connections(t: &SshTarget) -> usize {
    let key = Key::of(t);
    with_pool(|pool| {
        pool.get(&key).map_or(0, |s| {
            s.conns
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|c| !c.is_lost())
                .count()
        })
    })
}

/// A live connection with room for another channel, connecting if needed.
pub(crate) async fn get(t: &SshTarget, target: &str) -> Result<Arc<Conn>, TransportError> {
    let key = Key::of(t);
    if let Some(c) = find_live(&key) {
        return Ok(c);
    }
    let lock = with_pool(|pool| pool.entry(key.clone()).or_default().connecting.clone());
    let _guard = lock.lock().await;
    if let Some(c) = find_live(&key) {
        return Ok(c);
    }
    let t2 = t.clone();
    let target2 = target.to_string();
    let est = tokio::task::spawn_blocking(move || connect::establish(&t2, &target2))
        .await
        .map_err(|e| TransportError::io("connecting", std::io::Error::other(e.to_string())))??;
    adopt(key, t, est)
}

/// Blocking variant of [`get`] for threads outside the runtime; never
/// waits for another task's handshake.
pub(crate) fn get_blocking(t: &SshTarget, target: &str) -> Result<Arc<Conn>, TransportError> {
    let key = Key::of(t);
    if let Some(c) = find_live(&key) {
        return Ok(c);
    }
    let est = connect::establish(t, target)?;
    adopt(key, t, est)
}

/// Starts the thread of a fresh connection and lists it in the pool.
fn adopt(key: Key, t: &SshTarget, est: connect::Established) -> Result<Arc<Conn>, TransportError> {
    let conn = Conn::start(t.addr(), est.session, est.stream)
        .map_err(|e| TransportError::io("starting the ssh connection thread", e))?;
    with_pool(|pool| {
        pool.entry(key)
            .or_default()
            .conns
            .push(Arc::downgrade(&conn))
    });
    Ok(conn)
}

fn exec_err(target: &str, e: OpenError) -> TransportError {
    match e {
        OpenError::Lost(m) => TransportError::Lost(m),
        OpenError::Refused(m) | OpenError::Failed(m) => TransportError::Spawn {
            target: target.to_string(),
            reason: m,
        },
    }
}

/// Runs a one-shot command on the target: on `first` if given and it has
/// room, else on a pooled or new connection.
pub(crate) async fn exec(
    t: &SshTarget,
    target: &str,
    first: Option<&Arc<Conn>>,
    command: &str,
) -> Result<ExecOutput, TransportError> {
    let mut last = None;
    if let Some(c) = first.filter(|c| !c.is_lost()) {
        match c.exec(command.to_string()).await {
            Ok(o) => return Ok(o),
            Err(OpenError::Refused(m)) => {
                c.shared.refused();
                last = Some(OpenError::Refused(m));
            }
            Err(e @ OpenError::Failed(_)) => return Err(exec_err(target, e)),
            Err(e) => last = Some(e),
        }
    }
    for _ in 0..32 {
        let c = get(t, target).await?;
        match c.exec(command.to_string()).await {
            Ok(o) => return Ok(o),
            Err(OpenError::Refused(m)) => {
                last = Some(OpenError::Refused(m));
                if !c.shared.refused() {
                    break;
                }
            }
            Err(e @ OpenError::Failed(_)) => return Err(exec_err(target, e)),
            Err(e) => last = Some(e),
        }
    }
    Err(exec_err(
        target,
        last.unwrap_or(OpenError::Failed("no connection".into())),
    ))
}

/// Blocking variant of [`exec`] (for cleanup from `Drop`).
pub(crate) fn exec_blocking(
    t: &SshTarget,
    target: &str,
    first: &Arc<Conn>,
    command: &str,
) -> Result<ExecOutput, TransportError> {
    if !first.is_lost() {
        match first.exec_blocking(command.to_string()) {
            Ok(o) => return Ok(o),
            Err(OpenError::Refused(_)) => {
                first.shared.refused();
            }
            Err(e) => return Err(exec_err(target, e)),
        }
    }
    let c = get_blocking(t, target)?;
    c.exec_blocking(command.to_string())
        .map_err(|e| exec_err(target, e))
}
