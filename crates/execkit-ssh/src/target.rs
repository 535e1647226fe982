//! Parsing `ssh://[user@]host[:port][?identity=PATH&known_hosts=PATH&host_key=accept_new&connect_timeout=SECS&jump=HOPS&passphrase_env=VAR&config=PATH]`.
//!
//! Parsing is pure; what `~/.ssh/config` adds for the host is applied when
//! the target connects ([`SshTarget::resolved`]).

use std::path::PathBuf;
use std::time::Duration;

use execkit_core::TransportError;

/// What to do with a host key that is not in `known_hosts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostKeyPolicy {
    /// Unknown and changed keys are refused.
    Strict,
    /// Unknown keys are recorded and trusted; changed keys are refused.
    AcceptNew,
    /// Every key is accepted and nothing is recorded (`host_key=no`, only
    /// ever from the target itself: a config file cannot switch checks off).
    Off,
}

/// Which OpenSSH client configuration applies (`config=`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum ConfigSource {
    /// `~/.ssh/config`, then `/etc/ssh/ssh_config` (as `ssh` reads them).
    #[default]
    Default,
    /// Only this file (`config=PATH`, like `ssh -F PATH`).
    File(PathBuf),
    /// None at all (`config=none`).
    None,
}

/// Which ssh-agent to ask for keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum AgentSource {
    /// The one `SSH_AUTH_SOCK` names.
    #[default]
    Env,
    /// The agent listening on this socket (`IdentityAgent PATH`).
    Socket(PathBuf),
    /// No agent (`IdentityAgent none`, or `IdentitiesOnly yes`).
    None,
}

/// Which settings the target spelled out: those win over the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Given {
    /// `user@` was written.
    pub user: bool,
    /// `:port` was written.
    pub port: bool,
    /// `host_key=` was given.
    pub host_key: bool,
    /// `connect_timeout=` was given.
    pub connect_timeout: bool,
}

/// How long establishing a connection may take when the target does not
/// say (`connect_timeout=SECS`): TCP connect, the server's banner, key
/// exchange and authentication together.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest `connect_timeout` accepted: one year, the ceiling of every
/// duration execkit takes from a user.
pub const MAX_CONNECT_TIMEOUT_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// A parsed `ssh://` target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SshTarget {
    /// Login name.
    pub user: String,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Private key to authenticate with.
    pub identity: Option<PathBuf>,
    /// known_hosts file (default `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
    /// Host key policy.
    pub host_key: HostKeyPolicy,
    /// Deadline for establishing a connection, all stages together
    /// (default 10 s).
    pub connect_timeout: Duration,
    /// The host as the target names it (an alias `~/.ssh/config` may map
    /// to another `HostName`).
    pub alias: String,
    /// What the target spelled out (wins over the config file).
    pub given: Given,
    /// Which client configuration applies.
    pub config: ConfigSource,
    /// Jump hosts, in the order they are passed (the first is dialled
    /// directly; each next hop is reached through the one before).
    pub jump: Vec<SshTarget>,
    /// More identity files to try after `identity` (from the config file).
    pub identities: Vec<PathBuf>,
    /// Which agent to ask.
    pub agent: AgentSource,
    /// More known_hosts files to read (after the first; from the config
    /// file's `UserKnownHostsFile`).
    pub more_known_hosts: Vec<PathBuf>,
    /// Keepalive interval (`ServerAliveInterval`; default 15 s).
    pub keepalive: Option<Duration>,
    /// Environment variable holding the passphrase of an encrypted
    /// identity (`passphrase_env=VAR`).
    pub passphrase_env: Option<String>,
    /// Where the config file's settings came from, for messages ("Host
    /// prod-* in /home/u/.ssh/config line 4"); empty when none applied.
    pub origin: Vec<String>,
    /// Whether [`SshTarget::resolved`] made this (it is then final).
    resolved: bool,
}

impl SshTarget {
    /// Parses a target; never touches the network or the file system.
    pub fn parse(target: &str) -> Result<Self, TransportError> {
        Self::parse_parts(target).map_err(|reason| TransportError::InvalidTarget {
            target: target.to_string(),
            reason,
        })
    }

    /// [`SshTarget::parse`], failing with the reason alone.
    fn parse_parts(target: &str) -> Result<Self, String> {
        let rest = match target.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("ssh") => rest,
            _ => {
                return Err(
                    "expected ssh://[user@]host[:port][?identity=PATH&known_hosts=PATH&host_key=accept_new&connect_timeout=SECS&jump=HOPS&passphrase_env=VAR&config=PATH]"
                        .into(),
                )
            }
        };
        if rest.contains('\0') {
            return Err("the target contains a NUL byte".into());
        }
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        if authority.contains('/') {
            return Err("a path after the host is not supported".into());
        }
        let (given_user, hostport) = split_user(authority)?;
        let (host, given_port) = split_host_port(hostport)?;
        let user = match given_user.clone() {
            Some(u) => u,
            None => local_user().unwrap_or_default(),
        };
        let port = given_port.unwrap_or(22);
        if !valid_user(&user) {
            return Err(format!(
                "`{user}` is not a user name (letters, digits, `.`, `_`, `-`, and `@` written as %40; not starting with `-`)"
            ));
        }
        if !valid_host(&host) {
            return Err(format!(
                "`{host}` is not a host name or address (letters, digits, `.`, `-`, `_`, or [IPv6]; not starting with `-`)"
            ));
        }
        let mut t = SshTarget {
            user,
            alias: host.clone(),
            host,
            port,
            identity: None,
            known_hosts: None,
            host_key: HostKeyPolicy::Strict,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            given: Given {
                user: given_user.is_some(),
                port: given_port.is_some(),
                ..Given::default()
            },
            config: ConfigSource::Default,
            jump: Vec::new(),
            identities: Vec::new(),
            agent: AgentSource::Env,
            more_known_hosts: Vec::new(),
            keepalive: None,
            passphrase_env: None,
            origin: Vec::new(),
            resolved: false,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            t.apply_param(k, &execkit_core::raw::percent_decode(v)?)?;
        }
        Ok(t)
    }

    /// One `?name=value` parameter (the value percent-decoded).
    fn apply_param(&mut self, name: &str, v: &str) -> Result<(), String> {
        match name {
            "identity" | "identity_file" => {
                if v.is_empty() {
                    return Err("identity= needs a path".into());
                }
                self.identity = Some(expand_home(v));
            }
            "known_hosts" => {
                if v.is_empty() {
                    return Err("known_hosts= needs a path".into());
                }
                self.known_hosts = Some(expand_home(v));
            }
            "host_key" => {
                self.given.host_key = true;
                self.host_key = match v {
                    "accept_new" | "accept-new" => HostKeyPolicy::AcceptNew,
                    "strict" | "yes" => HostKeyPolicy::Strict,
                    "no" | "off" => HostKeyPolicy::Off,
                    other => {
                        return Err(format!(
                            "host_key={other} is not supported (use host_key=accept_new, or host_key=no to accept any key)"
                        ))
                    }
                }
            }
            "connect_timeout" => {
                self.given.connect_timeout = true;
                self.connect_timeout = connect_timeout(v)?;
            }
            "jump" => {
                if v.is_empty() || v == "none" {
                    return Err("jump= needs one or more hosts: [user@]host[:port][,…]".into());
                }
                self.jump = parse_jumps(v)?;
            }
            "passphrase_env" => {
                if v.is_empty()
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!(
                        "passphrase_env={v} is not an environment variable name (letters, digits, `_`)",
                        v = v.escape_debug()
                    ));
                }
                self.passphrase_env = Some(v.to_string());
            }
            "config" => {
                self.config = match v {
                    "" => return Err("config= needs a path, or `none`".into()),
                    "none" => ConfigSource::None,
                    p => ConfigSource::File(expand_home(p)),
                };
            }
            other => {
                return Err(format!(
                    "unknown parameter `{other}` (known: identity, known_hosts, host_key, connect_timeout, jump, passphrase_env, config)"
                ))
            }
        }
        Ok(())
    }

    /// `host:port` for messages.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The target as it connects: the client configuration applied for
    /// its alias (what the target itself says wins), and each jump host
    /// resolved the same way. A jump host takes what its own entry in the
    /// configuration does not say — identities, known_hosts, host-key
    /// policy, connect timeout, passphrase variable — from this target.
    /// Reads the configuration files; never touches the network.
    pub fn resolved(&self) -> Result<SshTarget, TransportError> {
        let invalid = |reason: String| TransportError::InvalidTarget {
            target: format!("ssh://{}", self.alias),
            reason,
        };
        if self.resolved {
            return Ok(self.clone());
        }
        let mut t = self.clone();
        crate::apply::apply(&mut t).map_err(invalid)?;
        if t.user.is_empty() {
            return Err(invalid(
                "no user name (write ssh://USER@HOST, or set User in ~/.ssh/config)".into(),
            ));
        }
        let mut hops = Vec::with_capacity(t.jump.len());
        for hop in &t.jump {
            let mut hop = hop.clone();
            hop.config = t.config.clone();
            hop.jump.clear();
            let hop_set = crate::apply::apply(&mut hop).map_err(invalid)?;
            // The chain is the target's: a hop's own ProxyJump is not
            // followed (its hops would come before it in the list).
            hop.jump.clear();
            hop_set.inherit(&t, &mut hop);
            if hop.user.is_empty() {
                return Err(invalid(format!("no user name for jump host {}", hop.alias)));
            }
            hop.resolved = true;
            hops.push(hop);
        }
        t.jump = hops;
        t.resolved = true;
        Ok(t)
    }

    /// `user@host:port` for messages, with the alias it came from when
    /// the config file mapped one.
    pub fn describe(&self) -> String {
        if self.alias.eq_ignore_ascii_case(&self.host) {
            format!("{}@{}", self.user, self.addr())
        } else {
            format!("{} ({}@{})", self.alias, self.user, self.addr())
        }
    }

    /// The host as known_hosts names it: `host`, or `[host]:port` off port 22.
    pub fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }

    /// The known_hosts file in use.
    pub fn known_hosts_path(&self) -> Option<PathBuf> {
        self.known_hosts
            .clone()
            .or_else(|| home().map(|h| h.join(".ssh/known_hosts")))
    }
}

/// `connect_timeout=SECS`: seconds, fractions allowed, more than 0 and at
/// most one year.
pub(crate) fn connect_timeout(v: &str) -> Result<Duration, String> {
    match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= MAX_CONNECT_TIMEOUT_SECS => {
            Ok(Duration::from_secs_f64(s))
        }
        _ => Err(format!(
            "connect_timeout={v} is not a duration: give seconds, more than 0 \
             and at most 31536000 (one year)",
            v = v.escape_debug()
        )),
    }
}

pub(crate) fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), home()) {
        (Some(rest), Some(h)) => h.join(rest),
        _ => PathBuf::from(p),
    }
}

/// `jump=` and `ProxyJump`: `[ssh://][user@]host[:port]` hops, comma
/// separated, each validated like a target's authority.
pub(crate) fn parse_jumps(v: &str) -> Result<Vec<SshTarget>, String> {
    v.split(',')
        .map(|hop| {
            let hop = hop.trim();
            let hop = hop.strip_prefix("ssh://").unwrap_or(hop);
            if hop.is_empty() || hop.contains(['/', '?', '&']) {
                return Err(format!("`{hop}` is not a jump host ([user@]host[:port])"));
            }
            SshTarget::parse_parts(&format!("ssh://{hop}"))
                .map_err(|e| format!("jump host `{hop}`: {e}"))
        })
        .collect()
}

/// The name of the user running execkit (`$USER`, else the password
/// database).
pub(crate) fn local_user() -> Option<String> {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            // SAFETY: getpwuid returns a pointer into static storage or null;
            // the name is copied out at once.
            unsafe {
                let pw = libc::getpwuid(libc::geteuid());
                if pw.is_null() || (*pw).pw_name.is_null() {
                    return None;
                }
                std::ffi::CStr::from_ptr((*pw).pw_name)
                    .to_str()
                    .ok()
                    .map(str::to_string)
            }
        })
}

/// `[user@]host[:port]` → the user if written (percent-decoded) and the
/// rest.
fn split_user(authority: &str) -> Result<(Option<String>, &str), String> {
    let (user, hostport) = match authority.split_once('@') {
        // `ssh://deploy@prod.example.com@10.0.0.1` reads as a user at
        // prod.example.com, yet connects to 10.0.0.1: refused.
        Some((u, h)) if h.contains('@') => {
            return Err(format!(
                "`@` in the user name `{u}@{}`: the host is what follows the last `@` \
                 ({}), which is easy to misread; write an `@` in a user name as %40",
                h.rsplit_once('@').map_or(h, |(a, _)| a),
                h.rsplit_once('@').map_or(h, |(_, b)| b),
            ))
        }
        Some((u, h)) => (Some(execkit_core::raw::percent_decode(u)?), h),
        None => (None, authority),
    };
    if user.as_deref() == Some("") {
        return Err("empty user name before `@`".into());
    }
    Ok((user, hostport))
}

/// `host[:port]` or `[v6]:port` → host and the port if written.
fn split_host_port(hostport: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(after) = hostport.strip_prefix('[') {
        let (h, tail) = after
            .split_once(']')
            .ok_or_else(|| "unclosed `[` in the host".to_string())?;
        let port = match tail {
            "" => None,
            t => Some(
                t.strip_prefix(':')
                    .ok_or_else(|| format!("unexpected `{t}` after the host"))?,
            ),
        };
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err("no host name".into());
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(format!("`{p}` is not a port number")),
        },
    };
    Ok((host, port))
}

/// Login names: portable POSIX names plus `@` (directory accounts). Never
/// starting with `-`, so no tool could read one as an option.
pub(crate) fn valid_user(u: &str) -> bool {
    !u.starts_with('-')
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// DNS names and IPv4 addresses (letters, digits, `.`, `-`, `_`), or IPv6
/// addresses as written inside brackets (hex digits, `:`, `.`, `%zone`).
pub(crate) fn valid_host(h: &str) -> bool {
    if h.starts_with('-') || h.is_empty() {
        return false;
    }
    if h.contains(':') {
        let (addr, zone) = h.split_once('%').unwrap_or((h, ""));
        return addr
            .chars()
            .all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.'))
            && zone
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    }
    h.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_targets() {
        let t = SshTarget::parse(
            "ssh://root@127.0.0.1:2222?identity=/tmp/k%20ey&known_hosts=/tmp/kh&host_key=accept_new",
        )
        .unwrap();
        assert_eq!(t.user, "root");
        assert_eq!(t.host, "127.0.0.1");
        assert_eq!(t.port, 2222);
        assert_eq!(
            t.identity.as_deref(),
            Some(std::path::Path::new("/tmp/k ey"))
        );
        assert_eq!(
            t.known_hosts.as_deref(),
            Some(std::path::Path::new("/tmp/kh"))
        );
        assert_eq!(t.host_key, HostKeyPolicy::AcceptNew);
        assert_eq!(t.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(t.known_hosts_name(), "[127.0.0.1]:2222");
        assert_eq!(t.addr(), "127.0.0.1:2222");
    }

    #[test]
    fn defaults_and_ipv6() {
        let t = SshTarget::parse("ssh://u@example.com").unwrap();
        assert_eq!((t.port, t.host_key), (22, HostKeyPolicy::Strict));
        assert_eq!(t.known_hosts_name(), "example.com");
        let t = SshTarget::parse("ssh://u@[::1]:2200").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 2200));
        assert_eq!(t.addr(), "[::1]:2200");
    }

    #[test]
    fn connect_timeout_is_seconds_within_bounds() {
        let at = |v: &str| SshTarget::parse(&format!("ssh://u@h?connect_timeout={v}"));
        assert_eq!(at("2").unwrap().connect_timeout, Duration::from_secs(2));
        assert_eq!(
            at("0.5").unwrap().connect_timeout,
            Duration::from_millis(500)
        );
        assert_eq!(
            at("31536000").unwrap().connect_timeout,
            Duration::from_secs(31_536_000)
        );
        assert_eq!(
            SshTarget::parse("ssh://u@h?identity=/k&connect_timeout=30&host_key=accept_new")
                .unwrap()
                .connect_timeout,
            Duration::from_secs(30)
        );
        for bad in [
            "", "0", "0.0", "-1", "-0.5", "nan", "inf", "-inf", "1e300", "31536001", "2s", "ten",
            "%20",
        ] {
            match at(bad) {
                Err(TransportError::InvalidTarget { reason, .. }) => {
                    assert!(reason.starts_with("connect_timeout="), "{bad}: {reason}");
                    assert!(reason.contains("more than 0"), "{bad}: {reason}");
                }
                other => panic!("connect_timeout={bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn accepts_real_names() {
        for good in [
            "ssh://deploy@build-01.example.com",
            "ssh://first.last@10.0.0.7:2222",
            "ssh://svc_account@my_host",
            "ssh://u@[fe80::1%eth0]:22",
            "ssh://user%40corp@h",
        ] {
            assert!(SshTarget::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn an_at_sign_in_the_user_part_is_refused_with_its_reason() {
        match SshTarget::parse("ssh://deploy@prod.example.com@127.0.0.1:2222") {
            Err(TransportError::InvalidTarget { reason, .. }) => {
                assert!(reason.contains("`@` in the user name"), "{reason}");
                assert!(reason.contains("(127.0.0.1:2222)"), "{reason}");
                assert!(reason.contains("%40"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Written as %40 it is unambiguous: a directory account.
        let t = SshTarget::parse("ssh://user%40corp@h").unwrap();
        assert_eq!((t.user.as_str(), t.host.as_str()), ("user@corp", "h"));
    }

    #[test]
    fn rejects_bad_targets() {
        for bad in [
            "ssh://",
            "ssh://u@",
            "ssh://@h",
            "ssh://u@h:0",
            "ssh://u@h:99999",
            "ssh://u@h:x",
            "ssh://u@h/path",
            "ssh://u@h?nope=1",
            "ssh://u@h?host_key=trust_all",
            "ssh://u@h?identity=",
            "ssh://u@[::1",
            "ssh:u@h",
            // Metacharacters and option look-alikes, in user and host.
            "ssh://-oProxyCommand=id@h",
            "ssh://us;er@h",
            "ssh://u%20x@h",
            "ssh://$(id)@h",
            "ssh://u@-h",
            "ssh://u@h;id",
            "ssh://u@ho$st",
            "ssh://u@h%0a",
            "ssh://u@[::1;id]",
            // An `@` in the user part: the host would be what follows the
            // last one.
            "ssh://deploy@prod.example.com@127.0.0.1",
            "ssh://a@b@c@h",
        ] {
            let e = SshTarget::parse(bad);
            assert!(
                matches!(e, Err(TransportError::InvalidTarget { .. })),
                "{bad}: {e:?}"
            );
        }
    }
}
