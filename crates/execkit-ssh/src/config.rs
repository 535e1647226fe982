//! OpenSSH `ssh_config(5)` for one destination: which files are read,
//! which `Host`/`Match` blocks apply and which values ssh would take —
//! without running anything or touching the network.
//!
//! Files: `~/.ssh/config` then `/etc/ssh/ssh_config` (a missing one is
//! skipped), or one file given like `ssh -F FILE` (missing: an error;
//! `none`: no file at all). For each keyword the first value obtained wins;
//! `IdentityFile` and `CertificateFile` accumulate. Bad values of the
//! keywords below are errors naming file and line, in every block (ssh
//! checks them all too); every other keyword is collected in
//! [`HostConfig::ignored`], never an error.
//!
//! Understood:
//! - `Host` patterns (`*`, `?`, `!negation`, several per line; matched
//!   case-sensitively against the alias as typed, like ssh).
//! - `Match` with `all`, `host` (the `HostName` as set so far, `%h`
//!   expanded), `originalhost` (the alias), `user` (the remote user as
//!   set so far, else the local one), `localuser`, `tagged` (`Tag`),
//!   `canonical`/`final` (match only on the second pass that `Match final`
//!   asks for: `Host` then matches the host name, as in ssh; host names
//!   are never canonicalized); comma lists and `!` on criteria and
//!   patterns. `exec` is never run, and `localnetwork`, `command`,
//!   `version`, `sessiontype` cannot be decided: such a block never
//!   applies, negated or not, and the criterion is listed in `ignored`
//!   when the rest of its line matched. An unknown criterion is an error
//!   (as in ssh).
//! - `Include` (several arguments, globs `*` `?` `[...]` in lexical order,
//!   `~`; relative paths in `~/.ssh`, or `/etc/ssh` for the system file;
//!   inside `Host`/`Match` it applies only when the block does; nesting
//!   deeper than 16 is an error). Included files, like `~/.ssh/config`,
//!   must be owned by the user or root and not writable by group or
//!   others (ssh refuses them likewise).
//! - `HostName` (`%h`, `%%`), `User`, `Port`, `IdentityFile`,
//!   `CertificateFile`, `IdentitiesOnly`, `UserKnownHostsFile` (several,
//!   or `none`), `StrictHostKeyChecking`, `ConnectTimeout` and
//!   `ServerAliveInterval` (ssh's times: `30`, `1m30s`, `2h`), `ProxyJump`
//!   (`[user@]host[:port]` or `ssh://[user@]host[:port]`, comma separated,
//!   or `none`), `ProxyCommand` (kept raw), `HostKeyAlias`, `Tag`.
//! - Syntax: keywords in any case, `Keyword value` / `Keyword=value`,
//!   `"` and `'` quotes, `\` escapes, `#` comments.
//! - In `IdentityFile`, `CertificateFile` and `UserKnownHostsFile`: a
//!   leading `~`, `${VAR}`, and the tokens `%%` `%d` `%h` `%i` `%j` `%k`
//!   `%L` `%l` `%n` `%p` `%r` `%T` `%u`, expanded with the final values
//!   (`%C` is an error: not supported).

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How deep `Include` may nest (OpenSSH's limit).
pub const MAX_INCLUDE_DEPTH: usize = 16;
/// ssh's limits on accumulated files.
const MAX_IDENTITY_FILES: usize = 100;
const MAX_KNOWN_HOSTS_FILES: usize = 16;

/// The local facts a config refers to: `~`, `%d`, `%u`, `%i`, `%l`, and
/// where the system file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctx {
    /// The local login name (`%u`, `Match localuser`, the default remote user).
    pub local_user: String,
    /// The home directory (`~`, `%d`, `~/.ssh/config`).
    pub home: PathBuf,
    /// The user id: included files must be owned by it or by root (`%i`).
    pub uid: u32,
    /// The local host name (`%l`; `%L` is its first label).
    pub local_host: String,
    /// Where `ssh_config` lives and relative system `Include`s point:
    /// `/etc/ssh`.
    pub system_dir: PathBuf,
}

impl Ctx {
    /// From `$HOME`, `$USER` (or `$LOGNAME`) and the process; `None`
    /// without a home or a user name.
    pub fn from_env() -> Option<Ctx> {
        let home = crate::target::home()?;
        let local_user = ["USER", "LOGNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))?;
        Some(Ctx::for_user(local_user, home))
    }

    /// For `local_user` at `home`, with this process's uid and host name.
    pub fn for_user(local_user: String, home: PathBuf) -> Ctx {
        Ctx {
            local_user,
            home,
            uid: current_uid(),
            local_host: local_hostname(),
            system_dir: PathBuf::from("/etc/ssh"),
        }
    }

    /// `~/.ssh/config`.
    pub fn user_config(&self) -> PathBuf {
        self.home.join(".ssh").join("config")
    }

    /// `/etc/ssh/ssh_config`.
    pub fn system_config(&self) -> PathBuf {
        self.system_dir.join("ssh_config")
    }
}

fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

fn local_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for writes of its whole length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// What is being connected to: the alias as typed, and a user and port
/// given with it (`user@alias:port`), which win over the config as on
/// ssh's command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destination {
    /// The host as typed (`Host` patterns, `%n`).
    pub alias: String,
    /// A user given with the alias.
    pub user: Option<String>,
    /// A port given with the alias.
    pub port: Option<u16>,
}

impl Destination {
    /// Just an alias.
    pub fn new(alias: impl Into<String>) -> Destination {
        Destination {
            alias: alias.into(),
            ..Destination::default()
        }
    }
}

/// `StrictHostKeyChecking`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StrictHostKeyChecking {
    /// `yes`/`true`: unknown and changed keys are refused.
    Yes,
    /// `accept-new`: unknown keys are recorded, changed ones refused.
    AcceptNew,
    /// `no`/`off`/`false`: ssh records unknown keys and connects to
    /// changed ones with restrictions.
    No,
    /// `ask`: ssh asks on its terminal; without one a caller treats it
    /// like [`StrictHostKeyChecking::Yes`].
    Ask,
}

/// One hop of `ProxyJump`, as written (itself an alias to resolve).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpHost {
    /// The user, if given.
    pub user: Option<String>,
    /// The host or alias (IPv6 without brackets).
    pub host: String,
    /// The port, if given.
    pub port: Option<u16>,
}

impl fmt::Display for JumpHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        match (self.host.contains(':'), self.port) {
            (true, Some(p)) => write!(f, "[{}]:{p}", self.host),
            (false, Some(p)) => write!(f, "{}:{p}", self.host),
            (_, None) => f.write_str(&self.host),
        }
    }
}

/// How to reach the host: the first `ProxyJump` or `ProxyCommand` that
/// applies wins over the other (as in ssh).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proxy {
    /// `ProxyJump none` or `ProxyCommand none`: explicitly direct.
    None,
    /// `ProxyJump`: through these hosts, first to last.
    Jump(Vec<JumpHost>),
    /// `ProxyCommand`, raw: tokens not expanded.
    Command(String),
}

/// A line of a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The file.
    pub file: PathBuf,
    /// The line number, from 1.
    pub line: usize,
    /// The line, trimmed.
    pub text: String,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} line {}: {}",
            self.file.display(),
            self.line,
            self.text
        )
    }
}

/// What the config says for one destination. `None` and empty mean the
/// config does not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// The alias resolved.
    pub alias: String,
    /// `HostName`, `%h` expanded, lowercased (as ssh uses it).
    pub host_name: Option<String>,
    /// `User` (or the destination's user).
    pub user: Option<String>,
    /// `Port` (or the destination's port).
    pub port: Option<u16>,
    /// Every `IdentityFile` that applied, in order, expanded.
    pub identity_files: Vec<PathBuf>,
    /// Every `CertificateFile` that applied, in order, expanded.
    pub certificate_files: Vec<PathBuf>,
    /// `IdentitiesOnly`.
    pub identities_only: Option<bool>,
    /// `UserKnownHostsFile`, expanded; `Some(vec![])` for `none`.
    pub user_known_hosts_files: Option<Vec<PathBuf>>,
    /// `StrictHostKeyChecking`.
    pub strict_host_key_checking: Option<StrictHostKeyChecking>,
    /// `ConnectTimeout`; zero means none (the system's TCP timeout).
    pub connect_timeout: Option<Duration>,
    /// `ServerAliveInterval`; zero means off.
    pub server_alive_interval: Option<Duration>,
    /// `ProxyJump` or `ProxyCommand`, whichever came first.
    pub proxy: Option<Proxy>,
    /// `HostKeyAlias`: the name to look the host key up by.
    pub host_key_alias: Option<String>,
    /// `IdentityAgent`: the agent's socket, expanded; `none` and
    /// `SSH_AUTH_SOCK` are kept as written.
    pub identity_agent: Option<String>,
    /// The `Host`/`Match` lines that applied, in order.
    pub sources: Vec<Source>,
    /// Where each value above was set (by keyword as ssh spells it:
    /// `"Port"`, `"IdentityFile"` for the first one, …). Values from the
    /// destination have none.
    pub origins: BTreeMap<&'static str, Source>,
    /// Keywords (as written) and `Match` criteria (`"Match exec"`) that
    /// applied but are not understood here.
    pub ignored: Vec<String>,
}

impl HostConfig {
    /// The host to connect to: `HostName`, else the alias (lowercased).
    pub fn host(&self) -> String {
        self.host_name
            .clone()
            .unwrap_or_else(|| self.alias.to_ascii_lowercase())
    }
}

/// A config that ssh would refuse, or a file that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The line, when one is at fault.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(n) => write!(f, "{} line {n}: {}", self.file.display(), self.reason),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}

fn err_at(file: &Path, line: usize, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        line: Some(line),
        reason: reason.into(),
    }
}

/// [`resolve_for`] an alias alone.
pub fn resolve(alias: &str, config: Option<&Path>, ctx: &Ctx) -> Result<HostConfig, ConfigError> {
    resolve_for(&Destination::new(alias), config, ctx)
}

/// What the config files say for `dest`. `config`: `None` reads
/// `~/.ssh/config` then the system file, skipping missing ones; a path
/// reads only that file (`ssh -F`: missing is an error, `none` reads
/// nothing).
pub fn resolve_for(
    dest: &Destination,
    config: Option<&Path>,
    ctx: &Ctx,
) -> Result<HostConfig, ConfigError> {
    let mut r = Resolver {
        ctx,
        dest,
        final_pass: false,
        want_final: false,
        pinned_host: None,
        f: Found::default(),
    };
    if let Some(u) = &dest.user {
        r.f.user = Some(Located::given(u.clone()));
    }
    if let Some(p) = dest.port {
        r.f.port = Some(Located::given(p));
    }
    r.read_all(config)?;
    if r.want_final {
        // As ssh: the host name is fixed before the second pass, whose
        // HostName lines then change nothing.
        r.pinned_host = Some(r.current_host()?.to_ascii_lowercase());
        r.final_pass = true;
        r.read_all(config)?;
    }
    r.finish()
}

/// A value and the line that set it (`None`: the destination).
#[derive(Debug)]
struct Located<T> {
    value: T,
    at: Option<Source>,
}

impl<T> Located<T> {
    fn given(value: T) -> Self {
        Located { value, at: None }
    }
}

#[derive(Debug)]
enum RawProxy {
    None,
    Jump(Vec<JumpHost>, String),
    Command(String),
}

/// Values as found (paths still raw: they are expanded with the final
/// host, port and user).
#[derive(Debug, Default)]
struct Found {
    host_name: Option<Located<String>>,
    user: Option<Located<String>>,
    port: Option<Located<u16>>,
    identity_files: Vec<Located<String>>,
    certificate_files: Vec<Located<String>>,
    identities_only: Option<Located<bool>>,
    known_hosts: Option<Located<Vec<String>>>,
    strict: Option<Located<StrictHostKeyChecking>>,
    connect_timeout: Option<Located<Duration>>,
    server_alive_interval: Option<Located<Duration>>,
    proxy: Option<Located<RawProxy>>,
    host_key_alias: Option<Located<String>>,
    identity_agent: Option<Located<String>>,
    tag: Option<String>,
    sources: Vec<Source>,
    ignored: Vec<String>,
}

/// How a file is read.
#[derive(Debug, Clone, Copy)]
struct Flags {
    /// A user file: `Include` may use `~` and is relative to `~/.ssh`.
    user: bool,
    /// Included from a block that did not apply: no block in it applies.
    never_match: bool,
}

struct Resolver<'a> {
    ctx: &'a Ctx,
    dest: &'a Destination,
    final_pass: bool,
    want_final: bool,
    /// The host name during the final pass.
    pinned_host: Option<String>,
    f: Found,
}

const KEYWORDS: &[&str] = &[
    "host",
    "match",
    "include",
    "hostname",
    "user",
    "port",
    "identityfile",
    "certificatefile",
    "identitiesonly",
    "userknownhostsfile",
    "stricthostkeychecking",
    "connecttimeout",
    "serveraliveinterval",
    "proxyjump",
    "proxycommand",
    "hostkeyalias",
    "identityagent",
    "tag",
    "ignoreunknown",
];

impl Resolver<'_> {
    fn read_all(&mut self, config: Option<&Path>) -> Result<(), ConfigError> {
        let user = Flags {
            user: true,
            never_match: false,
        };
        match config {
            Some(p) if p == Path::new("none") => Ok(()),
            Some(p) => {
                let bytes = match std::fs::read(p) {
                    Ok(b) => b,
                    Err(e) => {
                        return Err(ConfigError {
                            file: p.to_path_buf(),
                            line: None,
                            reason: format!("cannot read the config file: {e}"),
                        })
                    }
                };
                self.read_lines(p, &bytes, user, &mut true, 0)
            }
            None => {
                // Like ssh, a default file that cannot be opened is skipped.
                let path = self.ctx.user_config();
                if let Ok(bytes) = std::fs::read(&path) {
                    check_perm(&path, self.ctx.uid)?;
                    self.read_lines(&path, &bytes, user, &mut true, 0)?;
                }
                let path = self.ctx.system_config();
                if let Ok(bytes) = std::fs::read(&path) {
                    let flags = Flags {
                        user: false,
                        ..user
                    };
                    self.read_lines(&path, &bytes, flags, &mut true, 0)?;
                }
                Ok(())
            }
        }
    }

    fn read_lines(
        &mut self,
        path: &Path,
        bytes: &[u8],
        flags: Flags,
        active: &mut bool,
        depth: usize,
    ) -> Result<(), ConfigError> {
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let n = i + 1;
            let line = std::str::from_utf8(raw).map_err(|_| err_at(path, n, "not UTF-8"))?;
            self.line(path, n, line, flags, active, depth)?;
        }
        Ok(())
    }

    /// One line (ssh's `process_config_line`).
    fn line(
        &mut self,
        path: &Path,
        n: usize,
        line: &str,
        flags: Flags,
        active: &mut bool,
        depth: usize,
    ) -> Result<(), ConfigError> {
        let text = line.trim_end_matches([' ', '\t', '\r', '\x0c']);
        let Some((kw, rest)) = split_keyword(text) else {
            return Ok(());
        };
        let key = kw.to_ascii_lowercase();
        if !KEYWORDS.contains(&key.as_str()) {
            if *active {
                push_unique(&mut self.f.ignored, kw);
            }
            return Ok(());
        }
        let e = |reason: String| err_at(path, n, reason);
        if rest.is_empty() {
            return Err(e(format!("no argument after {kw}")));
        }
        let here = || {
            Some(Source {
                file: path.to_path_buf(),
                line: n,
                text: text.trim().to_string(),
            })
        };
        if key == "proxycommand" {
            // The rest of the line, unparsed: it is a shell command.
            let cmd = rest.trim_start_matches([' ', '\t', '=']);
            if *active && self.f.proxy.is_none() {
                let value = match cmd {
                    "none" => RawProxy::None,
                    c => RawProxy::Command(c.to_string()),
                };
                self.f.proxy = Some(Located { value, at: here() });
            }
            return Ok(());
        }
        let args = split_args(rest).map_err(|r| e(format!("{kw}: {r}")))?;
        let one = || -> Result<&str, ConfigError> {
            match args.as_slice() {
                [] => Err(e(format!("{kw}: missing argument"))),
                [a] if a.is_empty() => Err(e(format!("{kw}: empty argument"))),
                [a] => Ok(a.as_str()),
                [_, extra, ..] => Err(e(format!("{kw}: unexpected argument `{extra}`"))),
            }
        };
        /// Sets a first-wins slot when the block applies.
        fn first<T>(slot: &mut Option<Located<T>>, active: bool, value: T, at: Option<Source>) {
            if active && slot.is_none() {
                *slot = Some(Located { value, at });
            }
        }
        let on = *active;
        match key.as_str() {
            "host" => {
                if args.is_empty() {
                    return Err(e("Host: missing pattern".into()));
                }
                if args.iter().any(String::is_empty) {
                    return Err(e("Host: empty pattern".into()));
                }
                let host = self.host_for_host_lines()?;
                let mut hit = false;
                if !flags.never_match {
                    for a in &args {
                        let (negated, p) = match a.strip_prefix('!') {
                            Some(p) => (true, p),
                            None => (false, a.as_str()),
                        };
                        if wildmatch(&host, p) {
                            if negated {
                                hit = false;
                                break;
                            }
                            hit = true;
                        }
                    }
                }
                *active = hit;
                if hit {
                    self.applied(here());
                }
            }
            "match" => {
                let hit = self.match_line(&args, flags, &e)?;
                *active = hit && !flags.never_match;
                if *active {
                    self.applied(here());
                }
            }
            "include" => {
                if args.is_empty() {
                    return Err(e("Include: missing argument".into()));
                }
                for a in &args {
                    self.include(path, n, a, flags, active, depth)?;
                }
            }
            "hostname" => {
                let v = one()?.to_string();
                first(&mut self.f.host_name, on && !self.final_pass, v, here());
            }
            "user" => first(&mut self.f.user, on, one()?.to_string(), here()),
            "hostkeyalias" => first(&mut self.f.host_key_alias, on, one()?.to_string(), here()),
            "identityagent" => first(&mut self.f.identity_agent, on, one()?.to_string(), here()),
            "tag" => {
                let v = one()?;
                if on && self.f.tag.is_none() {
                    self.f.tag = Some(v.to_string());
                }
            }
            "port" => {
                let v = one()?;
                let port = v
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| e(format!("Port: `{v}` is not a port number (1-65535)")))?;
                first(&mut self.f.port, on, port, here());
            }
            "identityfile" | "certificatefile" => {
                let v = one()?.to_string();
                let list = if key == "identityfile" {
                    &mut self.f.identity_files
                } else {
                    &mut self.f.certificate_files
                };
                // ssh skips a repeated file (the second pass repeats them all).
                if on && !list.iter().any(|l| l.value == v) {
                    if list.len() >= MAX_IDENTITY_FILES {
                        return Err(e(format!("{kw}: more than {MAX_IDENTITY_FILES} files")));
                    }
                    list.push(Located {
                        value: v,
                        at: here(),
                    });
                }
            }
            "identitiesonly" => {
                let v = one()?;
                let b = parse_flag(v).ok_or_else(|| e(format!("{kw}: `{v}` is not yes or no")))?;
                first(&mut self.f.identities_only, on, b, here());
            }
            "stricthostkeychecking" => {
                let v = one()?;
                let s = match v.to_ascii_lowercase().as_str() {
                    "yes" | "true" => StrictHostKeyChecking::Yes,
                    "no" | "false" | "off" => StrictHostKeyChecking::No,
                    "accept-new" => StrictHostKeyChecking::AcceptNew,
                    "ask" => StrictHostKeyChecking::Ask,
                    _ => {
                        return Err(e(format!(
                            "{kw}: `{v}` is not yes, accept-new, no, off or ask"
                        )))
                    }
                };
                first(&mut self.f.strict, on, s, here());
            }
            "connecttimeout" | "serveraliveinterval" => {
                let v = one()?;
                let secs = parse_time(v).ok_or_else(|| {
                    e(format!(
                        "{kw}: `{v}` is not a time (seconds, or like 1m30s)"
                    ))
                })?;
                let slot = if key == "connecttimeout" {
                    &mut self.f.connect_timeout
                } else {
                    &mut self.f.server_alive_interval
                };
                first(slot, on, Duration::from_secs(secs), here());
            }
            "userknownhostsfile" => {
                if args.iter().any(String::is_empty) || args.is_empty() {
                    return Err(e(format!("{kw}: empty argument")));
                }
                if args.len() > MAX_KNOWN_HOSTS_FILES {
                    return Err(e(format!("{kw}: more than {MAX_KNOWN_HOSTS_FILES} files")));
                }
                first(&mut self.f.known_hosts, on, args.clone(), here());
            }
            "proxyjump" => {
                let v = one()?;
                let value = parse_jump(v).map_err(|r| e(format!("ProxyJump `{v}`: {r}")))?;
                let value = match value {
                    None => RawProxy::None,
                    Some(hops) => RawProxy::Jump(hops, v.to_string()),
                };
                first(&mut self.f.proxy, on, value, here());
            }
            // Everything unknown is ignored already.
            _ => {}
        }
        Ok(())
    }

    /// A `Match` line's criteria (ssh's `match_cfg_line`).
    fn match_line(
        &mut self,
        args: &[String],
        flags: Flags,
        e: &dyn Fn(String) -> ConfigError,
    ) -> Result<bool, ConfigError> {
        let mut result = true;
        let mut attributes = 0;
        let mut undecided = Vec::new();
        let mut it = args.iter();
        while let Some(oattr) = it.next() {
            let (negate, attr) = match oattr.strip_prefix('!') {
                Some(a) => (true, a),
                None => (false, oattr.as_str()),
            };
            let lower = attr.to_ascii_lowercase();
            if lower == "all" {
                if attributes > 1 || it.next().is_some() {
                    return Err(e(format!(
                        "Match: `{oattr}` cannot be combined with other criteria"
                    )));
                }
                if result {
                    result = !negate;
                }
                break;
            }
            attributes += 1;
            if lower == "canonical" || lower == "final" {
                if lower == "final" && !negate {
                    self.want_final = true;
                }
                if self.final_pass == negate {
                    result = false;
                }
                continue;
            }
            let Some(arg) = it.next().filter(|a| !a.is_empty()) else {
                return Err(e(format!("Match: missing argument after `{attr}`")));
            };
            let hit = match lower.as_str() {
                "host" => {
                    let host = self.current_host()?;
                    match_list(&host, arg, true) == ListMatch::Yes
                }
                "originalhost" => match_list(&self.dest.alias, arg, true) == ListMatch::Yes,
                "user" => {
                    let user = match &self.f.user {
                        Some(u) => u.value.as_str(),
                        None => self.ctx.local_user.as_str(),
                    };
                    match_list(user, arg, false) == ListMatch::Yes
                }
                "localuser" => match_list(&self.ctx.local_user, arg, false) == ListMatch::Yes,
                "tagged" => {
                    let tag = self.f.tag.as_deref().unwrap_or("");
                    match_list(tag, arg, false) == ListMatch::Yes
                }
                // exec is never run; the others need facts not known here.
                "exec" | "localnetwork" | "command" | "version" | "sessiontype" => {
                    undecided.push(format!("Match {lower}"));
                    continue;
                }
                _ => return Err(e(format!("Match: unsupported criterion `{attr}`"))),
            };
            if hit == negate {
                result = false;
            }
        }
        if attributes == 0 && !args.iter().any(|a| a.eq_ignore_ascii_case("all")) {
            return Err(e("Match: no criteria".into()));
        }
        if !undecided.is_empty() {
            if result && !flags.never_match {
                for u in &undecided {
                    push_unique(&mut self.f.ignored, u);
                }
            }
            return Ok(false);
        }
        Ok(result)
    }

    /// One `Include` argument: its files, read with the includer's block
    /// state, which they cannot change for the includer.
    fn include(
        &mut self,
        path: &Path,
        n: usize,
        arg: &str,
        flags: Flags,
        active: &mut bool,
        depth: usize,
    ) -> Result<(), ConfigError> {
        let e = |reason: String| err_at(path, n, reason);
        if arg.is_empty() {
            return Err(e("Include: empty argument".into()));
        }
        let pattern = if let Some(rest) = arg.strip_prefix('~') {
            if !flags.user {
                return Err(e(format!(
                    "Include {arg}: `~` is only allowed in user config files"
                )));
            }
            match rest {
                "" => self.ctx.home.clone(),
                r if r.starts_with('/') => self.ctx.home.join(&r[1..]),
                _ => return Err(e(format!("Include {arg}: `~user` is not supported"))),
            }
        } else if arg.starts_with('/') {
            PathBuf::from(arg)
        } else if flags.user {
            self.ctx.home.join(".ssh").join(arg)
        } else {
            self.ctx.system_dir.join(arg)
        };
        let before = *active;
        for file in glob(&pattern) {
            if file.is_dir() {
                continue;
            }
            let bytes = match std::fs::read(&file) {
                Ok(b) => b,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(e(format!("Include: cannot read {}: {err}", file.display())))
                }
            };
            if depth + 1 > MAX_INCLUDE_DEPTH {
                return Err(e(format!(
                    "Include {arg}: nested more than {MAX_INCLUDE_DEPTH} deep \
                     (does a file include itself?)"
                )));
            }
            check_perm(&file, self.ctx.uid)?;
            let inner = Flags {
                never_match: flags.never_match || !before,
                ..flags
            };
            self.read_lines(&file, &bytes, inner, active, depth + 1)?;
            *active = before;
        }
        Ok(())
    }

    fn applied(&mut self, at: Option<Source>) {
        if let Some(at) = at {
            if !self.f.sources.contains(&at) {
                self.f.sources.push(at);
            }
        }
    }

    /// `HostName` with `%h` expanded, or the alias (what `Match host` sees).
    fn current_host(&self) -> Result<String, ConfigError> {
        if let Some(h) = &self.pinned_host {
            return Ok(h.clone());
        }
        match &self.f.host_name {
            Some(h) => expand_host_name(&h.value, &self.dest.alias).map_err(|r| {
                let (file, line) =
                    h.at.as_ref()
                        .map(|s| (s.file.clone(), Some(s.line)))
                        .unwrap_or_default();
                ConfigError {
                    file,
                    line,
                    reason: format!("HostName {}: {r}", h.value),
                }
            }),
            None => Ok(self.dest.alias.clone()),
        }
    }

    /// The alias; on the final pass the host name, lowercased (as ssh).
    fn host_for_host_lines(&self) -> Result<String, ConfigError> {
        if self.final_pass {
            Ok(self.current_host()?.to_ascii_lowercase())
        } else {
            Ok(self.dest.alias.clone())
        }
    }

    fn finish(self) -> Result<HostConfig, ConfigError> {
        let host = self.current_host()?.to_ascii_lowercase();
        let f = self.f;
        let ctx = self.ctx;
        let alias = self.dest.alias.clone();
        let port = f.port.as_ref().map_or(22, |p| p.value).to_string();
        let user = f
            .user
            .as_ref()
            .map_or(ctx.local_user.as_str(), |u| u.value.as_str())
            .to_string();
        let jump = match &f.proxy {
            Some(Located {
                value: RawProxy::Jump(_, raw),
                ..
            }) => raw.clone(),
            _ => String::new(),
        };
        let key_alias = f
            .host_key_alias
            .as_ref()
            .map_or(alias.clone(), |k| k.value.clone());
        let short_host = ctx.local_host.split('.').next().unwrap_or("").to_string();
        let token = |c: char| -> Option<String> {
            Some(match c {
                'd' => ctx.home.to_string_lossy().into_owned(),
                'h' => host.clone(),
                'i' => ctx.uid.to_string(),
                'j' => jump.clone(),
                'k' => key_alias.clone(),
                'L' => short_host.clone(),
                'l' => ctx.local_host.clone(),
                'n' => alias.clone(),
                'p' => port.clone(),
                'r' => user.clone(),
                'T' => "NONE".into(),
                'u' => ctx.local_user.clone(),
                _ => return None,
            })
        };
        let path = |kw: &str, l: &Located<String>| -> Result<PathBuf, ConfigError> {
            expand_path(&l.value, &ctx.home, &token).map_err(|r| {
                let (file, line) =
                    l.at.as_ref()
                        .map(|s| (s.file.clone(), Some(s.line)))
                        .unwrap_or_default();
                ConfigError {
                    file,
                    line,
                    reason: format!("{kw} {}: {r}", l.value),
                }
            })
        };
        let identity_files = f
            .identity_files
            .iter()
            .map(|l| path("IdentityFile", l))
            .collect::<Result<Vec<_>, _>>()?;
        let certificate_files = f
            .certificate_files
            .iter()
            .map(|l| path("CertificateFile", l))
            .collect::<Result<Vec<_>, _>>()?;
        let identity_agent = match &f.identity_agent {
            None => None,
            Some(l) if l.value == "none" || l.value == "SSH_AUTH_SOCK" => Some(l.value.clone()),
            Some(l) => Some(path("IdentityAgent", l)?.to_string_lossy().into_owned()),
        };
        let user_known_hosts_files = match &f.known_hosts {
            None => None,
            Some(l) if l.value.len() == 1 && l.value[0] == "none" => Some(Vec::new()),
            Some(l) => Some(
                l.value
                    .iter()
                    .map(|v| {
                        path(
                            "UserKnownHostsFile",
                            &Located {
                                value: v.clone(),
                                at: l.at.clone(),
                            },
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };

        let mut origins = BTreeMap::new();
        let mut origin = |name: &'static str, at: Option<&Source>| {
            if let Some(at) = at {
                origins.insert(name, at.clone());
            }
        };
        origin("HostName", f.host_name.as_ref().and_then(|l| l.at.as_ref()));
        origin("User", f.user.as_ref().and_then(|l| l.at.as_ref()));
        origin("Port", f.port.as_ref().and_then(|l| l.at.as_ref()));
        origin(
            "IdentityFile",
            f.identity_files.first().and_then(|l| l.at.as_ref()),
        );
        origin(
            "CertificateFile",
            f.certificate_files.first().and_then(|l| l.at.as_ref()),
        );
        origin(
            "IdentitiesOnly",
            f.identities_only.as_ref().and_then(|l| l.at.as_ref()),
        );
        origin(
            "UserKnownHostsFile",
            f.known_hosts.as_ref().and_then(|l| l.at.as_ref()),
        );
        origin(
            "StrictHostKeyChecking",
            f.strict.as_ref().and_then(|l| l.at.as_ref()),
        );
        origin(
            "ConnectTimeout",
            f.connect_timeout.as_ref().and_then(|l| l.at.as_ref()),
        );
        origin(
            "ServerAliveInterval",
            f.server_alive_interval.as_ref().and_then(|l| l.at.as_ref()),
        );
        origin(
            "HostKeyAlias",
            f.host_key_alias.as_ref().and_then(|l| l.at.as_ref()),
        );
        origin(
            "IdentityAgent",
            f.identity_agent.as_ref().and_then(|l| l.at.as_ref()),
        );
        if let Some(p) = &f.proxy {
            let name = match p.at.as_ref().map(|s| s.text.to_ascii_lowercase()) {
                Some(t) if t.starts_with("proxycommand") => "ProxyCommand",
                _ => "ProxyJump",
            };
            origin(name, p.at.as_ref());
        }

        Ok(HostConfig {
            alias: alias.clone(),
            host_name: f.host_name.as_ref().map(|_| host.clone()),
            user: f.user.map(|u| u.value),
            port: f.port.map(|p| p.value),
            identity_files,
            certificate_files,
            identities_only: f.identities_only.map(|l| l.value),
            user_known_hosts_files,
            strict_host_key_checking: f.strict.map(|l| l.value),
            connect_timeout: f.connect_timeout.map(|l| l.value),
            server_alive_interval: f.server_alive_interval.map(|l| l.value),
            proxy: f.proxy.map(|p| match p.value {
                RawProxy::None => Proxy::None,
                RawProxy::Jump(hops, _) => Proxy::Jump(hops),
                RawProxy::Command(c) => Proxy::Command(c),
            }),
            host_key_alias: f.host_key_alias.map(|l| l.value),
            identity_agent,
            sources: f.sources,
            origins,
            ignored: f.ignored,
        })
    }
}

fn push_unique(list: &mut Vec<String>, item: &str) {
    if !list.iter().any(|i| i.eq_ignore_ascii_case(item)) {
        list.push(item.to_string());
    }
}

/// ssh refuses a user or included config file that someone else could
/// have written.
fn check_perm(path: &Path, uid: u32) -> Result<(), ConfigError> {
    let meta = std::fs::metadata(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        reason: format!("cannot read: {e}"),
    })?;
    if (meta.uid() != 0 && meta.uid() != uid) || meta.mode() & 0o022 != 0 {
        return Err(ConfigError {
            file: path.to_path_buf(),
            line: None,
            reason: format!(
                "bad owner or permissions: a config file must be owned by you or root and \
                 not writable by group or others, as OpenSSH requires (chmod go-w {})",
                path.display()
            ),
        });
    }
    Ok(())
}

/// `Keyword value`, `Keyword=value`, `Keyword = value` → the keyword and
/// the rest; `None` for a blank or comment line.
fn split_keyword(line: &str) -> Option<(&str, &str)> {
    let s = line.trim_start_matches([' ', '\t']);
    if s.is_empty() || s.starts_with('#') {
        return None;
    }
    let end = s.find([' ', '\t', '=']).unwrap_or(s.len());
    let (kw, rest) = s.split_at(end);
    let rest = rest.trim_start_matches([' ', '\t']);
    let rest = rest.strip_prefix('=').unwrap_or(rest);
    Some((kw, rest.trim_start_matches([' ', '\t'])))
}

/// Arguments as ssh splits them: whitespace separated, `"` and `'`
/// quotes anywhere in a word, `\` before a quote, `\` or (unquoted) space
/// escaping it, and a `#` starting a word ends the line.
fn split_args(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(' ' | '\t')) {
            chars.next();
        }
        match chars.peek() {
            None | Some('#') => break,
            Some(_) => {}
        }
        let mut arg = String::new();
        let mut quote = None;
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.peek().copied() {
                    Some(n @ ('\'' | '"' | '\\')) => {
                        arg.push(n);
                        chars.next();
                    }
                    Some(' ') if quote.is_none() => {
                        arg.push(' ');
                        chars.next();
                    }
                    _ => arg.push('\\'),
                },
                ' ' | '\t' if quote.is_none() => break,
                '"' | '\'' if quote.is_none() => quote = Some(c),
                c if Some(c) == quote => quote = None,
                c => arg.push(c),
            }
        }
        if quote.is_some() {
            return Err("unterminated quote".into());
        }
        out.push(arg);
    }
    Ok(out)
}

fn parse_flag(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" => Some(true),
        "no" | "false" => Some(false),
        _ => None,
    }
}

/// ssh's time format: `90`, `90s`, `1m30s`, `2h`, `1d`, `1w` (units in
/// any case), at most 2^31-1 seconds.
fn parse_time(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: u64 = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return None;
        }
        let n: u64 = s[start..i].parse().ok()?;
        let unit = match b.get(i) {
            None => 1,
            Some(c) => {
                i += 1;
                match c.to_ascii_lowercase() {
                    b's' => 1,
                    b'm' => 60,
                    b'h' => 3600,
                    b'd' => 86_400,
                    b'w' => 604_800,
                    _ => return None,
                }
            }
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
        if total > i32::MAX as u64 {
            return None;
        }
    }
    Some(total)
}

/// `ProxyJump`: `none` (→ `None`) or comma-separated hops.
fn parse_jump(s: &str) -> Result<Option<Vec<JumpHost>>, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    s.split(',')
        .map(parse_jump_host)
        .collect::<Result<_, _>>()
        .map(Some)
}

/// `[user@]host[:port]` (the user up to the last `@`) or
/// `ssh://[user@]host[:port][/]` (the user percent-encoded).
fn parse_jump_host(s: &str) -> Result<JumpHost, String> {
    if s.is_empty() {
        return Err("an empty hop".into());
    }
    let (user, hostport) = match s
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case("ssh://"))
        .map(|_| &s[6..])
    {
        Some(rest) => {
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            if rest.contains('/') {
                return Err(format!("`{s}`: a path is not allowed"));
            }
            match rest.split_once('@') {
                Some((u, h)) => {
                    // `;` starts connection parameters, which ssh drops.
                    let u = u.split(';').next().unwrap_or("");
                    if u.is_empty() {
                        return Err(format!("`{s}`: empty user name"));
                    }
                    (Some(execkit_core::raw::percent_decode(u)?), h)
                }
                None => (None, rest),
            }
        }
        None => match s.rsplit_once('@') {
            Some(("", _)) => return Err(format!("`{s}`: empty user name")),
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, s),
        },
    };
    let (host, port) = if let Some(after) = hostport.strip_prefix('[') {
        let (h, tail) = after
            .split_once(']')
            .ok_or_else(|| format!("`{s}`: unclosed `[`"))?;
        match tail {
            "" => (h, None),
            t => (
                h,
                Some(
                    t.strip_prefix(':')
                        .ok_or_else(|| format!("`{s}`: unexpected `{t}`"))?,
                ),
            ),
        }
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{s}`: no host"));
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("`{s}`: `{p}` is not a port number"))?,
        ),
    };
    Ok(JumpHost {
        user,
        host: host.to_string(),
        port,
    })
}

fn expand_host_name(raw: &str, alias: &str) -> Result<String, String> {
    expand_tokens(raw, &|c| (c == 'h').then(|| alias.to_string()), false)
}

/// A path value: a leading `~`, then `${VAR}` and `%` tokens.
fn expand_path(
    raw: &str,
    home: &Path,
    token: &dyn Fn(char) -> Option<String>,
) -> Result<PathBuf, String> {
    let (base, rest) = match raw.strip_prefix('~') {
        Some("") => (Some(home), ""),
        Some(r) if r.starts_with('/') => (Some(home), &r[1..]),
        Some(_) => return Err("`~user` paths are not supported".into()),
        None => (None, raw),
    };
    let rest = expand_tokens(rest, token, true)?;
    Ok(match base {
        Some(h) if rest.is_empty() => h.to_path_buf(),
        Some(h) => h.join(rest),
        None => PathBuf::from(rest),
    })
}

fn expand_tokens(
    s: &str,
    token: &dyn Fn(char) -> Option<String>,
    dollar: bool,
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '%' => match chars.next() {
                None => return Err("a `%` at the end".into()),
                Some('%') => out.push('%'),
                Some('C') => return Err("the token %C (a connection hash) is not supported".into()),
                Some(t) => match token(t) {
                    Some(v) => out.push_str(&v),
                    None => return Err(format!("unknown token %{t}")),
                },
            },
            '$' if dollar && chars.peek() == Some(&'{') => {
                chars.next();
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(n) => name.push(n),
                        None => return Err("unterminated `${`".into()),
                    }
                }
                match std::env::var(&name) {
                    Ok(v) => out.push_str(&v),
                    Err(_) => return Err(format!("environment variable {name} is not set")),
                }
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// ssh's `match_pattern`: `*` any run, `?` any one character.
fn wildmatch(text: &str, pattern: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    let (mut ti, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            ti += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[derive(Debug, PartialEq, Eq)]
enum ListMatch {
    Yes,
    No,
    Negated,
}

/// ssh's `match_pattern_list`: comma-separated patterns; a matching
/// `!pattern` wins over everything.
fn match_list(s: &str, list: &str, fold: bool) -> ListMatch {
    let s = if fold {
        s.to_ascii_lowercase()
    } else {
        s.to_string()
    };
    let mut got = ListMatch::No;
    for sub in list.split(',') {
        let sub = if fold {
            sub.to_ascii_lowercase()
        } else {
            sub.to_string()
        };
        let (negated, p) = match sub.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, sub.as_str()),
        };
        if wildmatch(&s, p) {
            if negated {
                return ListMatch::Negated;
            }
            got = ListMatch::Yes;
        }
    }
    got
}

/// The files a path pattern names (`*`, `?`, `[...]` per component, a
/// leading `.` only matched by a `.`), in lexical order.
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let s = pattern.to_string_lossy();
    let mut found = vec![if s.starts_with('/') {
        PathBuf::from("/")
    } else {
        PathBuf::new()
    }];
    for part in s.split('/').filter(|p| !p.is_empty()) {
        if !part.contains(['*', '?', '[']) {
            for f in &mut found {
                f.push(part);
            }
            continue;
        }
        let pat: Vec<char> = part.chars().collect();
        let mut next = Vec::new();
        for dir in &found {
            let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.starts_with('.') && !part.starts_with('.') {
                    continue;
                }
                let name_chars: Vec<char> = name.chars().collect();
                if fnmatch(&pat, &name_chars) {
                    next.push(dir.join(name));
                }
            }
        }
        found = next;
    }
    found.sort_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
    found
}

/// One glob component against one name.
fn fnmatch(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') => (0..=t.len()).any(|i| fnmatch(&p[1..], &t[i..])),
        Some('?') => !t.is_empty() && fnmatch(&p[1..], &t[1..]),
        Some('[') => match (class(&p[1..]), t.first()) {
            (Some((set_matches, len)), Some(&c)) => {
                set_matches(c) && fnmatch(&p[1 + len..], &t[1..])
            }
            (Some(_), None) => false,
            // No closing `]`: a literal `[`.
            (None, first) => first == Some(&'[') && fnmatch(&p[1..], &t[1..]),
        },
        Some('\\') if p.len() > 1 => t.first() == Some(&p[1]) && fnmatch(&p[2..], &t[1..]),
        Some(&c) => t.first() == Some(&c) && fnmatch(&p[1..], &t[1..]),
    }
}

/// A bracket class after its `[`: a matcher and its length up to and
/// including `]`; `None` when it is not closed.
#[allow(clippy::type_complexity)]
fn class(p: &[char]) -> Option<(Box<dyn Fn(char) -> bool + '_>, usize)> {
    let mut i = 0;
    let negate = matches!(p.first(), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let start = i;
    // A `]` right after the opening (or the negation) is a member.
    let mut end = None;
    let mut j = start;
    while j < p.len() {
        if p[j] == ']' && j > start {
            end = Some(j);
            break;
        }
        j += 1;
    }
    let end = end?;
    let members = &p[start..end];
    let f = move |c: char| {
        let mut k = 0;
        let mut hit = false;
        while k < members.len() {
            if k + 2 < members.len() && members[k + 1] == '-' {
                if members[k] <= c && c <= members[k + 2] {
                    hit = true;
                }
                k += 3;
            } else {
                if members[k] == c {
                    hit = true;
                }
                k += 1;
            }
        }
        hit != negate
    };
    Some((Box::new(f), end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A temporary root with `home/` and `etc/`, removed when dropped.
    struct Fixture {
        root: PathBuf,
    }

    impl Fixture {
        fn new() -> Fixture {
            static N: AtomicUsize = AtomicUsize::new(0);
            let root = std::env::temp_dir().join(format!(
                "execkit-sshcfg-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("home/.ssh")).unwrap();
            std::fs::create_dir_all(root.join("etc")).unwrap();
            Fixture { root }
        }

        fn home(&self) -> PathBuf {
            self.root.join("home")
        }

        /// Writes a file (relative to the root) with mode 0644.
        fn write(&self, rel: &str, text: &str) -> PathBuf {
            let p = self.root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            p
        }

        fn ctx(&self) -> Ctx {
            Ctx {
                local_user: "alice".into(),
                home: self.home(),
                uid: current_uid(),
                local_host: "box.example.org".into(),
                system_dir: self.root.join("etc"),
            }
        }

        /// Resolves `alias` with the default files.
        fn resolve(&self, alias: &str) -> HostConfig {
            resolve(alias, None, &self.ctx()).unwrap_or_else(|e| panic!("{alias}: {e}"))
        }

        fn user_config(&self, text: &str) -> PathBuf {
            self.write("home/.ssh/config", text)
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn err_of(r: Result<HostConfig, ConfigError>) -> ConfigError {
        match r {
            Err(e) => e,
            Ok(c) => panic!("expected an error, got {c:?}"),
        }
    }

    #[test]
    fn alias_with_host_name_user_port_and_syntax_variants() {
        let fx = Fixture::new();
        let cfg = fx.user_config(
            "# personal hosts\n\
             \n\
             Host prod   # the main one\n\
             \tHOSTNAME=Prod.Example.COM\n\
             \tuser = deploy\n\
             \tPort\t2222\n\
             \tConnectTimeout 1m30s\n\
             \tServerAliveInterval 0\n\
             \tIdentitiesOnly=yes\n\
             \tStrictHostKeyChecking accept-new\r\n",
        );
        let c = fx.resolve("prod");
        assert_eq!(c.host_name.as_deref(), Some("prod.example.com"));
        assert_eq!(c.host(), "prod.example.com");
        assert_eq!(c.user.as_deref(), Some("deploy"));
        assert_eq!(c.port, Some(2222));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(90)));
        assert_eq!(c.server_alive_interval, Some(Duration::ZERO));
        assert_eq!(c.identities_only, Some(true));
        assert_eq!(
            c.strict_host_key_checking,
            Some(StrictHostKeyChecking::AcceptNew)
        );
        assert_eq!(c.sources.len(), 1);
        assert_eq!(
            c.sources[0].to_string(),
            format!("{} line 3: Host prod   # the main one", cfg.display())
        );
        assert_eq!(c.origins["Port"].line, 6);
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);

        // Another alias gets nothing, and its host is the alias.
        let c = fx.resolve("Other");
        assert_eq!(c.host_name, None);
        assert_eq!(c.host(), "other");
        assert!(c.sources.is_empty());
        // Host patterns are case-sensitive, as in ssh.
        assert_eq!(fx.resolve("PROD").port, None);
    }

    #[test]
    fn first_value_wins_and_host_star_defaults_come_last() {
        let fx = Fixture::new();
        fx.user_config(
            "Host db1\n  User dba\n  IdentityFile ~/.ssh/db\n\
             Host db*\n  User ops\n  Port 2200\n\
             Host *\n  User nobody\n  Port 22\n  ServerAliveInterval 15\n  IdentityFile ~/.ssh/id_ed25519\n",
        );
        let c = fx.resolve("db1");
        assert_eq!(c.user.as_deref(), Some("dba"));
        assert_eq!(c.port, Some(2200));
        assert_eq!(c.server_alive_interval, Some(Duration::from_secs(15)));
        assert_eq!(
            c.identity_files,
            vec![fx.home().join(".ssh/db"), fx.home().join(".ssh/id_ed25519")]
        );
        let lines: Vec<_> = c.sources.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(lines, ["Host db1", "Host db*", "Host *"]);
        let c = fx.resolve("web");
        assert_eq!((c.user.as_deref(), c.port), (Some("nobody"), Some(22)));
    }

    #[test]
    fn a_negated_pattern_excludes_the_block() {
        let fx = Fixture::new();
        fx.user_config(
            "Host *.corp.example !bastion.corp.example\n  ProxyJump bastion.corp.example\n\
             Host !nothing-matches-this-alone\n  User never\n",
        );
        let c = fx.resolve("db.corp.example");
        assert_eq!(
            c.proxy,
            Some(Proxy::Jump(vec![JumpHost {
                user: None,
                host: "bastion.corp.example".into(),
                port: None
            }]))
        );
        let c = fx.resolve("bastion.corp.example");
        assert_eq!(c.proxy, None);
        // A line of negations alone matches nothing.
        assert_eq!(c.user, None);
    }

    #[test]
    fn match_host_sees_the_host_name_and_originalhost_the_alias() {
        let fx = Fixture::new();
        fx.user_config(
            "Host web\n  HostName %h.internal.example\n\
             Match host *.internal.example !originalhost other\n  User ops\n\
             Match originalhost web\n  Port 2201\n\
             Match host web\n  IdentityFile ~/never\n\
             Match user ops localuser alice\n  IdentitiesOnly yes\n\
             Match !user root,ops\n  ConnectTimeout 3\n\
             Match all\n  ServerAliveInterval 7\n",
        );
        let c = fx.resolve("web");
        assert_eq!(c.host_name.as_deref(), Some("web.internal.example"));
        assert_eq!(c.user.as_deref(), Some("ops"));
        assert_eq!(c.port, Some(2201));
        assert!(c.identity_files.is_empty(), "{:?}", c.identity_files);
        assert_eq!(c.identities_only, Some(true));
        assert_eq!(c.connect_timeout, None);
        assert_eq!(c.server_alive_interval, Some(Duration::from_secs(7)));
        // Without HostName, `Match host` sees the alias; `Match user` the local user.
        let c = fx.resolve("db.internal.example");
        assert_eq!(c.user.as_deref(), Some("ops"));
        let c = fx.resolve("plain");
        assert_eq!(c.user, None);
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(3)));
    }

    #[test]
    fn the_destination_user_and_port_win_and_feed_match_user() {
        let fx = Fixture::new();
        fx.user_config(
            "Match user root\n  IdentityFile ~/.ssh/root_key\n\
             Host h\n  User someone\n  Port 1\n",
        );
        let dest = Destination {
            alias: "h".into(),
            user: Some("root".into()),
            port: Some(2022),
        };
        let c = resolve_for(&dest, None, &fx.ctx()).unwrap();
        assert_eq!((c.user.as_deref(), c.port), (Some("root"), Some(2022)));
        assert_eq!(c.identity_files, vec![fx.home().join(".ssh/root_key")]);
        assert!(!c.origins.contains_key("User"));
    }

    #[test]
    fn final_pass_matches_host_lines_against_the_host_name() {
        let fx = Fixture::new();
        fx.user_config(
            "Host web\n  HostName WEB.Internal.example\n\
             Host *.internal.example\n  User deploy\n\
             Match final host *.internal.example\n  Port 2022\n\
             Match canonical\n  IdentityFile ~/.ssh/%h\n",
        );
        let c = fx.resolve("web");
        assert_eq!(c.user.as_deref(), Some("deploy"));
        assert_eq!(c.port, Some(2022));
        assert_eq!(
            c.identity_files,
            vec![fx.home().join(".ssh/web.internal.example")]
        );
        // The first pass matches the alias as typed; the second the host
        // name, fixed by then: `HostName` lines change nothing there
        // (checked against `ssh -G`).
        let c = fx.resolve("WEB");
        assert_eq!(c.host_name, None);
        assert_eq!(c.host(), "web");
        assert_eq!((c.user.as_deref(), c.port), (None, None));
        fx.user_config(
            "Host web\n  HostName h.example\n  Port 1\n\
             Match final\n  User u\n",
        );
        let c = fx.resolve("WEB");
        assert_eq!(
            (c.host(), c.port, c.user.as_deref()),
            ("web".into(), Some(1), Some("u"))
        );
        // Without `Match final` there is no second pass.
        let fx = Fixture::new();
        fx.user_config(
            "Host web\n  HostName web.internal.example\n\
             Host *.internal.example\n  User deploy\n\
             Match canonical\n  Port 1\n",
        );
        let c = fx.resolve("web");
        assert_eq!((c.user, c.port), (None, None));
    }

    #[test]
    fn include_globs_relative_paths_and_blocks() {
        let fx = Fixture::new();
        fx.user_config(
            "Include config.d/*.conf\n\
             Host inc\n  Include hosts/inc\n  ConnectTimeout 5\n\
             Host other\n  Include hosts/other\n\
             Host *\n  Port 22\n",
        );
        // Lexical order: 10 before 20, and 20's Port is not taken.
        fx.write(
            "home/.ssh/config.d/20-b.conf",
            "Host a\n  Port 2020\n  User b\n",
        );
        fx.write("home/.ssh/config.d/10-a.conf", "Host a\n  Port 1010\n");
        fx.write("home/.ssh/config.d/.hidden.conf", "Host a\n  User hidden\n");
        fx.write("home/.ssh/config.d/ignored.txt", "Host a\n  User txt\n");
        // Inside `Host inc`: a Match that fails must not end the includer's block.
        fx.write(
            "home/.ssh/hosts/inc",
            "User from-include\nMatch host nope\n  Port 1\n",
        );
        // Included from a block that does not apply: its Host lines never match.
        fx.write(
            "home/.ssh/hosts/other",
            "Host inc\n  IdentityFile ~/never\n",
        );
        let c = fx.resolve("a");
        assert_eq!((c.port, c.user.as_deref()), (Some(1010), Some("b")));
        let c = fx.resolve("inc");
        assert_eq!(c.user.as_deref(), Some("from-include"));
        assert_eq!(c.port, Some(22));
        // The included Match ended only its own file's block.
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(5)));
        assert!(c.identity_files.is_empty(), "{:?}", c.identity_files);
        let texts: Vec<_> = c.sources.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts, ["Host inc", "Host *"]);
    }

    #[test]
    fn system_config_follows_and_its_includes_are_relative_to_etc_ssh() {
        let fx = Fixture::new();
        fx.user_config("Host h\n  User mine\n");
        fx.write(
            "etc/ssh_config",
            "Include ssh_config.d/*.conf\nHost *\n  User sys\n  Port 2\n",
        );
        fx.write("etc/ssh_config.d/a.conf", "Host h\n  Port 3\n");
        let c = fx.resolve("h");
        assert_eq!((c.user.as_deref(), c.port), (Some("mine"), Some(3)));
        // `~` is not allowed in a system Include.
        fx.write("etc/ssh_config", "Include ~/x\n");
        let e = err_of(resolve("h", None, &fx.ctx()));
        assert_eq!(e.line, Some(1));
        assert!(e.reason.contains("only allowed in user"), "{e}");
        // Neither file: fine.
        let fx = Fixture::new();
        assert_eq!(
            fx.resolve("h"),
            HostConfig {
                alias: "h".into(),
                ..HostConfig::default()
            }
        );
    }

    #[test]
    fn include_nesting_is_limited_to_16() {
        let fx = Fixture::new();
        fx.user_config("Include loop\n");
        fx.write("home/.ssh/loop", "Include loop\n");
        let e = err_of(resolve("h", None, &fx.ctx()));
        assert_eq!(e.file, fx.home().join(".ssh/loop"));
        assert_eq!(e.line, Some(1));
        assert!(e.reason.contains("more than 16 deep"), "{e}");

        // Sixteen levels are fine.
        fx.user_config("Include n1\n");
        for i in 1..=16 {
            let next = if i < 16 {
                format!("Include n{}\n", i + 1)
            } else {
                "Port 1616\n".into()
            };
            fx.write(&format!("home/.ssh/n{i}"), &next);
        }
        assert_eq!(fx.resolve("h").port, Some(1616));
    }

    #[test]
    fn identity_files_accumulate_with_tokens() {
        let fx = Fixture::new();
        fx.user_config(
            "Host git\n  HostName GitHub.com\n  User git\n  Port 443\n\
             \x20 IdentityFile ~/.ssh/%h_%r\n\
             \x20 IdentityFile %d/keys/%n-%p-%u-%l-%L-%%\n\
             \x20 IdentityFile \"/keys/with space/%k\"\n\
             \x20 IdentityFile ${HOME}/from-env\n\
             Host *\n  IdentityFile ~/.ssh/%h_%r\n  IdentityFile ~\n  CertificateFile ~/.ssh/%r-cert.pub\n",
        );
        let c = fx.resolve("git");
        let home = fx.home();
        let env_home = std::env::var("HOME").unwrap_or_default();
        assert_eq!(
            c.identity_files,
            vec![
                home.join(".ssh/github.com_git"),
                home.join("keys/git-443-alice-box.example.org-box-%"),
                PathBuf::from("/keys/with space/git"),
                PathBuf::from(format!("{env_home}/from-env")),
                home.clone(),
            ]
        );
        assert_eq!(c.certificate_files, vec![home.join(".ssh/git-cert.pub")]);
        assert_eq!(c.origins["IdentityFile"].line, 5);

        for (bad, why) in [
            ("%C", "%C"),
            ("%Z", "unknown token %Z"),
            ("x%", "at the end"),
            ("${EXECKIT_SURELY_UNSET_VAR_42}", "is not set"),
            ("~bob/k", "~user"),
        ] {
            fx.user_config(&format!("\n\nIdentityFile {bad}\n"));
            let e = err_of(resolve("git", None, &fx.ctx()));
            assert_eq!(e.line, Some(3), "{bad}: {e}");
            assert!(e.reason.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn user_known_hosts_files_several_or_none() {
        let fx = Fixture::new();
        fx.user_config(
            "Host a\n  UserKnownHostsFile ~/.ssh/known_hosts ~/.ssh/known_hosts2 /etc/kh/%h\n\
             Host b\n  UserKnownHostsFile none\n",
        );
        assert_eq!(
            fx.resolve("a").user_known_hosts_files,
            Some(vec![
                fx.home().join(".ssh/known_hosts"),
                fx.home().join(".ssh/known_hosts2"),
                PathBuf::from("/etc/kh/a"),
            ])
        );
        assert_eq!(fx.resolve("b").user_known_hosts_files, Some(vec![]));
        assert_eq!(fx.resolve("c").user_known_hosts_files, None);
    }

    #[test]
    fn proxy_jump_chains_and_uris() {
        let j = |user: Option<&str>, host: &str, port: Option<u16>| JumpHost {
            user: user.map(Into::into),
            host: host.into(),
            port,
        };
        assert_eq!(
            parse_jump("a,b:2222,user@c").unwrap(),
            Some(vec![
                j(None, "a", None),
                j(None, "b", Some(2222)),
                j(Some("user"), "c", None)
            ])
        );
        assert_eq!(
            parse_jump("ssh://u@h:22").unwrap(),
            Some(vec![j(Some("u"), "h", Some(22))])
        );
        assert_eq!(
            parse_jump("SSH://u%40corp;fp=x@[::1]:2200/,me@corp@[fe80::1]").unwrap(),
            Some(vec![
                j(Some("u@corp"), "::1", Some(2200)),
                j(Some("me@corp"), "fe80::1", None)
            ])
        );
        assert_eq!(parse_jump("None").unwrap(), None);
        for bad in [
            "",
            "a,",
            ",a",
            "@h",
            "h:0",
            "h:x",
            "h:99999",
            "[::1",
            "[::1]x",
            "::1",
            "ssh://h/path",
            "ssh://@h",
            "ssh://",
        ] {
            assert!(parse_jump(bad).is_err(), "{bad}");
        }
        assert_eq!(j(Some("u"), "::1", Some(2)).to_string(), "u@[::1]:2");
        assert_eq!(j(None, "h", Some(2)).to_string(), "h:2");

        let fx = Fixture::new();
        fx.user_config(
            "Host direct\n  ProxyJump none\n\
             Host nope\n  ProxyJump bad:port\n",
        );
        // A bad ProxyJump is an error even in a block that does not apply.
        let e = err_of(resolve("direct", None, &fx.ctx()));
        assert_eq!(e.line, Some(4));
        assert!(e.reason.contains("ProxyJump `bad:port`"), "{e}");
        fx.user_config(
            "Host direct\n  ProxyJump none\n\
             Host *\n  ProxyJump jump1,ops@jump2:2222\n",
        );
        assert_eq!(fx.resolve("direct").proxy, Some(Proxy::None));
        assert_eq!(
            fx.resolve("x").proxy,
            Some(Proxy::Jump(vec![
                j(None, "jump1", None),
                j(Some("ops"), "jump2", Some(2222))
            ]))
        );
    }

    #[test]
    fn the_first_of_proxy_command_and_proxy_jump_wins() {
        let fx = Fixture::new();
        fx.user_config(
            "Host legacy\n  ProxyCommand=ssh -W %h:%p \"gw\" # raw\n\
             Host nocmd\n  ProxyCommand none\n\
             Host *\n  ProxyJump gw2\n  ProxyCommand nc %h %p\n",
        );
        let c = fx.resolve("legacy");
        assert_eq!(
            c.proxy,
            Some(Proxy::Command("ssh -W %h:%p \"gw\" # raw".into()))
        );
        assert_eq!(c.origins["ProxyCommand"].line, 2);
        assert_eq!(fx.resolve("nocmd").proxy, Some(Proxy::None));
        let c = fx.resolve("other");
        assert!(matches!(c.proxy, Some(Proxy::Jump(_))), "{:?}", c.proxy);
        assert_eq!(c.origins["ProxyJump"].line, 6);
    }

    #[test]
    fn unknown_keywords_and_undecidable_matches_are_ignored() {
        let fx = Fixture::new();
        fx.user_config(
            "ForwardAgent yes\nCompression yes\nforwardagent no\nNoSuchKeyword\n\
             Host elsewhere\n  ControlMaster auto\n\
             Match exec \"test -e /tmp\"\n  User from-exec\n\
             Match !exec \"false\"\n  User from-not-exec\n\
             Match host nope exec true\n  User never\n\
             Match localnetwork 10.0.0.0/8\n  Port 1\n",
        );
        let c = fx.resolve("h");
        assert_eq!(
            c.ignored,
            [
                "ForwardAgent",
                "Compression",
                "NoSuchKeyword",
                "Match exec",
                "Match localnetwork"
            ]
        );
        assert_eq!((c.user, c.port), (None, None));
    }

    #[test]
    fn an_explicit_file_must_exist_and_none_reads_nothing() {
        let fx = Fixture::new();
        fx.user_config("Host *\n  User fromdefault\n");
        let missing = fx.root.join("nope/config");
        let e = err_of(resolve("h", Some(&missing), &fx.ctx()));
        assert_eq!((e.file.as_path(), e.line), (missing.as_path(), None));
        assert!(
            e.to_string()
                .starts_with(&format!("{}: cannot read", missing.display())),
            "{e}"
        );
        let c = resolve("h", Some(Path::new("none")), &fx.ctx()).unwrap();
        assert_eq!(c.user, None);
        // An explicit file replaces both defaults; relative Includes are in ~/.ssh.
        fx.write("home/.ssh/extra", "User extra\n");
        let f = fx.write("elsewhere/cfg", "Include extra\n");
        let c = resolve("h", Some(&f), &fx.ctx()).unwrap();
        assert_eq!(c.user.as_deref(), Some("extra"));
    }

    #[test]
    fn bad_values_name_file_and_line() {
        let fx = Fixture::new();
        for (text, why) in [
            ("Host x\n  Port 0", "not a port number"),
            ("Host x\n  Port 65536", "not a port number"),
            ("Host x\n  Port ssh", "not a port number"),
            ("Host x\n  Port 22 23", "unexpected argument `23`"),
            ("Host x\n  Port", "no argument after Port"),
            ("Host x\n  Port # none", "missing argument"),
            ("Host x\n  HostName \"unterminated", "unterminated quote"),
            ("Host x\n  IdentitiesOnly maybe", "not yes or no"),
            ("Host x\n  StrictHostKeyChecking sometimes", "accept-new"),
            ("Host x\n  ConnectTimeout 10x", "not a time"),
            ("Host x\n  ConnectTimeout 99999999999", "not a time"),
            ("Host x\n  User \"\"", "empty argument"),
            ("Match\n  User x", "no argument"),
            ("Match # only a comment\n  User x", "no criteria"),
            ("Match host", "missing argument after `host`"),
            ("Match all host x", "cannot be combined"),
            ("Host \"\"", "empty pattern"),
            ("Match foo bar\n  User x", "unsupported criterion `foo`"),
        ] {
            let cfg = fx.user_config(&format!("# header\n{text}\n"));
            let e = err_of(resolve("h", None, &fx.ctx()));
            assert_eq!(e.file, cfg, "{text}");
            assert!(e.line.is_some_and(|n| n >= 2), "{text}: {e}");
            assert!(e.reason.contains(why), "{text}: {e}");
        }
        // The time format and host key checking words.
        assert_eq!(parse_time("90"), Some(90));
        assert_eq!(parse_time("1h2M3s"), Some(3723));
        assert_eq!(parse_time("1w"), Some(604_800));
        for bad in ["", "s", "1x", "-1", " 1", "1 "] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
        for (v, want) in [
            ("yes", StrictHostKeyChecking::Yes),
            ("True", StrictHostKeyChecking::Yes),
            ("off", StrictHostKeyChecking::No),
            ("no", StrictHostKeyChecking::No),
            ("ASK", StrictHostKeyChecking::Ask),
        ] {
            fx.user_config(&format!("StrictHostKeyChecking {v}\n"));
            assert_eq!(fx.resolve("h").strict_host_key_checking, Some(want), "{v}");
        }
    }

    #[test]
    fn config_files_others_could_write_are_refused() {
        let fx = Fixture::new();
        let cfg = fx.user_config("Include inc\n");
        let inc = fx.write("home/.ssh/inc", "User x\n");
        std::fs::set_permissions(&inc, std::fs::Permissions::from_mode(0o664)).unwrap();
        let e = err_of(resolve("h", None, &fx.ctx()));
        assert_eq!((e.file.as_path(), e.line), (inc.as_path(), None));
        assert!(e.reason.contains("bad owner or permissions"), "{e}");
        std::fs::set_permissions(&inc, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o646)).unwrap();
        let e = err_of(resolve("h", None, &fx.ctx()));
        assert_eq!(e.file, cfg);
        // Owned by someone else (neither us nor root).
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut ctx = fx.ctx();
        ctx.uid = ctx.uid.wrapping_add(1).max(1);
        if current_uid() != 0 {
            assert!(resolve("h", None, &ctx).is_err());
        }
        assert_eq!(fx.resolve("h").user.as_deref(), Some("x"));
    }

    #[test]
    fn tags_and_quoting() {
        let fx = Fixture::new();
        fx.user_config(
            "Tag work\n\
             Match tagged work\n  User 'it''s' \n\
             Host \"spaced\\ name\" q\n  IdentityFile \"a b\"/c\\ d\n",
        );
        assert_eq!(fx.resolve("h").user.as_deref(), Some("its"));
        assert_eq!(
            fx.resolve("q").identity_files,
            vec![PathBuf::from("a b/c d")]
        );
        assert_eq!(
            split_args(r#"a "b c" d\ e 'f"g' \"h # comment"#).unwrap(),
            ["a", "b c", "d e", "f\"g", "\"h"]
        );
        assert_eq!(split_args("x#y z").unwrap(), ["x#y", "z"]);
    }

    #[test]
    fn patterns() {
        for (t, p, want) in [
            ("web1", "web?", true),
            ("web10", "web?", false),
            ("a.b.example", "*.example", true),
            ("example", "*.example", false),
            ("", "*", true),
            ("abc", "a*c*", true),
            ("abc", "a*b", false),
            ("x", "", false),
        ] {
            assert_eq!(wildmatch(t, p), want, "{t} ~ {p}");
        }
        assert_eq!(match_list("Web", "db,WEB", true), ListMatch::Yes);
        assert_eq!(match_list("web", "*,!web", true), ListMatch::Negated);
        assert_eq!(match_list("Web", "web", false), ListMatch::No);
        let m = |p: &str, t: &str| {
            fnmatch(
                &p.chars().collect::<Vec<_>>(),
                &t.chars().collect::<Vec<_>>(),
            )
        };
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[!a-c]x", "bx"));
        assert!(m("[]]", "]"));
        assert!(m("[x", "[x"));
        assert!(m("*.conf", "10-a.conf"));
        assert!(!m("*.conf", "a.conff"));
        assert!(m("\\*", "*"));
    }
}
