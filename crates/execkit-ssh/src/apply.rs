//! Applying the OpenSSH client configuration (`config`) to a target: what
//! the target says wins, the configuration fills in the rest. Keywords
//! execkit does not use are named in one debug line, never an error.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{self, Ctx, Destination, Proxy, StrictHostKeyChecking};
use crate::target::{
    home, local_user, parse_jumps, valid_host, valid_user, AgentSource, ConfigSource,
    HostKeyPolicy, SshTarget,
};

/// Which settings the configuration supplied (a jump host takes the rest
/// from the target it serves).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Applied {
    identity: bool,
    known_hosts: bool,
    host_key: bool,
    connect_timeout: bool,
    agent: bool,
}

/// Applies the configuration `t.config` names to `t` (found by its
/// alias). The error is one line naming the file and line at fault.
pub(crate) fn apply(t: &mut SshTarget) -> Result<Applied, String> {
    let mut applied = Applied::default();
    let file = match &t.config {
        ConfigSource::None => return Ok(applied),
        ConfigSource::Default => None,
        ConfigSource::File(p) => Some(p.as_path()),
    };
    let ctx = Ctx::for_user(
        local_user().unwrap_or_default(),
        home().unwrap_or_else(|| PathBuf::from("/")),
    );
    let dest = Destination {
        alias: t.alias.clone(),
        user: t.given.user.then(|| t.user.clone()),
        port: t.given.port.then_some(t.port),
    };
    let hc = config::resolve_for(&dest, file, &ctx).map_err(|e| e.to_string())?;
    let at = |key: &str| {
        hc.origins
            .get(key)
            .map_or_else(String::new, |s| format!("{s}: "))
    };
    if let Some(h) = &hc.host_name {
        if !valid_host(h) {
            return Err(format!(
                "{}`{h}` is not a host name or address",
                at("HostName")
            ));
        }
        t.host = h.clone();
    }
    if let (false, Some(u)) = (t.given.user, &hc.user) {
        if !valid_user(u) {
            return Err(format!("{}`{u}` is not a user name", at("User")));
        }
        t.user = u.clone();
    }
    if let (false, Some(p)) = (t.given.port, hc.port) {
        t.port = p;
    }
    if t.identity.is_none() && !hc.identity_files.is_empty() {
        t.identities = hc.identity_files.clone();
        applied.identity = true;
    }
    match hc.identity_agent.as_deref() {
        Some("none") => t.agent = AgentSource::None,
        Some("SSH_AUTH_SOCK") => t.agent = AgentSource::Env,
        Some(path) => t.agent = AgentSource::Socket(PathBuf::from(path)),
        None => {}
    }
    applied.agent = hc.identity_agent.is_some();
    if hc.identities_only == Some(true) {
        // Only the files named: an agent could offer any key it holds.
        t.agent = AgentSource::None;
        applied.agent = true;
    }
    if let (None, Some(files)) = (&t.known_hosts, &hc.user_known_hosts_files) {
        // `none`: no file at all, so every key is unknown.
        let mut files = files.iter().cloned();
        t.known_hosts = Some(files.next().unwrap_or_else(|| PathBuf::from("/dev/null")));
        t.more_known_hosts = files.collect();
        applied.known_hosts = true;
    }
    if let (false, Some(strict)) = (t.given.host_key, hc.strict_host_key_checking) {
        t.host_key = match strict {
            // No terminal to ask on: as `yes`.
            StrictHostKeyChecking::Yes | StrictHostKeyChecking::Ask => HostKeyPolicy::Strict,
            StrictHostKeyChecking::AcceptNew => HostKeyPolicy::AcceptNew,
            StrictHostKeyChecking::No => {
                return Err(format!(
                    "{}execkit does not turn host key checks off from a config file; \
                     write host_key=no in the target to accept any key for this host",
                    at("StrictHostKeyChecking")
                ))
            }
        };
        applied.host_key = true;
    }
    if let (false, Some(d)) = (t.given.connect_timeout, hc.connect_timeout) {
        // 0: the system's TCP timeout in ssh; execkit always has a deadline.
        if d > Duration::ZERO {
            t.connect_timeout = d;
            applied.connect_timeout = true;
        }
    }
    if let Some(d) = hc.server_alive_interval.filter(|d| !d.is_zero()) {
        t.keepalive = Some(d);
    }
    let mut ignored = hc.ignored.clone();
    match &hc.proxy {
        Some(Proxy::Jump(hops)) if t.jump.is_empty() => {
            let list: Vec<String> = hops.iter().map(ToString::to_string).collect();
            t.jump = parse_jumps(&list.join(",")).map_err(|e| format!("{}{e}", at("ProxyJump")))?;
        }
        Some(Proxy::Command(_)) => ignored.push("ProxyCommand (write ProxyJump)".into()),
        _ => {}
    }
    if !hc.certificate_files.is_empty() {
        ignored.push("CertificateFile".into());
    }
    if hc.host_key_alias.is_some() {
        ignored.push("HostKeyAlias".into());
    }
    if !ignored.is_empty() {
        tracing::debug!(
            "ssh config for {}: not used by execkit: {}",
            t.alias,
            ignored.join(", ")
        );
    }
    t.origin = blocks_used(&hc);
    Ok(applied)
}

/// The `Host`/`Match` lines of the blocks that set a value execkit used
/// (each value's line, under the nearest block line above it in its
/// file), for messages; a block that applied but set nothing used (a
/// system `Host *` with `SendEnv`) is left out.
fn blocks_used(hc: &config::HostConfig) -> Vec<String> {
    const USED: &[&str] = &[
        "HostName",
        "User",
        "Port",
        "IdentityFile",
        "IdentitiesOnly",
        "IdentityAgent",
        "UserKnownHostsFile",
        "StrictHostKeyChecking",
        "ConnectTimeout",
        "ServerAliveInterval",
        "ProxyJump",
    ];
    let mut out: Vec<String> = Vec::new();
    for key in USED {
        let Some(at) = hc.origins.get(key) else {
            continue;
        };
        let block = hc
            .sources
            .iter()
            .filter(|s| s.file == at.file && s.line <= at.line)
            .max_by_key(|s| s.line)
            .unwrap_or(at)
            .to_string();
        if !out.contains(&block) {
            out.push(block);
        }
    }
    out
}

impl Applied {
    /// Fills in what neither `hop` itself nor its configuration said, from
    /// the target `outer` it is a jump host for.
    pub(crate) fn inherit(&self, outer: &SshTarget, hop: &mut SshTarget) {
        if !self.identity && hop.identity.is_none() {
            hop.identity = outer.identity.clone();
            hop.identities = outer.identities.clone();
        }
        if !self.known_hosts && hop.known_hosts.is_none() {
            hop.known_hosts = outer.known_hosts.clone();
            hop.more_known_hosts = outer.more_known_hosts.clone();
        }
        if !self.host_key && !hop.given.host_key {
            hop.host_key = outer.host_key;
        }
        if !self.connect_timeout && !hop.given.connect_timeout {
            hop.connect_timeout = outer.connect_timeout;
        }
        if hop.passphrase_env.is_none() {
            hop.passphrase_env = outer.passphrase_env.clone();
        }
        if !self.agent {
            hop.agent = outer.agent.clone();
        }
    }
}
