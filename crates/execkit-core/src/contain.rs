//! Containment policies for sessions on this host: what a session may
//! write, whether it may use the network, and its memory and process
//! limits. The policy is data; the `local` transport enforces it (Landlock,
//! seccomp, a cgroup per session) and refuses a session it cannot contain.
//!
//! Written as target parameters — `local?sandbox=workspace-write&network=off`
//! — or set in [`SessionConfig::containment`](crate::SessionConfig). Every
//! field is optional: unset means "not asked for", so a server's floor
//! ([`Containment::within`]) can fill in what a request left open and
//! refuse what it would loosen.

use std::fmt;
use std::path::{Path, PathBuf};

/// What a contained session may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sandbox {
    /// No filesystem restriction.
    Off,
    /// Writes to the workspace and a private temp dir; `.git` and the
    /// other read-only paths stay read-only.
    WorkspaceWrite,
    /// Reads anywhere the user can; writes only to a private temp dir.
    ReadOnly,
}

impl Sandbox {
    /// The name used in targets and flags.
    pub fn name(self) -> &'static str {
        match self {
            Sandbox::Off => "off",
            Sandbox::WorkspaceWrite => "workspace-write",
            Sandbox::ReadOnly => "read-only",
        }
    }

    fn parse(s: &str) -> Result<Sandbox, String> {
        match s {
            "off" => Ok(Sandbox::Off),
            "workspace-write" => Ok(Sandbox::WorkspaceWrite),
            "read-only" => Ok(Sandbox::ReadOnly),
            _ => Err(format!(
                "sandbox `{s}`: expected read-only, workspace-write or off"
            )),
        }
    }
}

/// A containment policy; `None` fields were not asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Containment {
    /// What the session may write.
    pub sandbox: Option<Sandbox>,
    /// The directory `workspace-write` opens for writing (default: the
    /// session's working directory, else the current one).
    pub workspace: Option<PathBuf>,
    /// `Some(false)`: no sockets but Unix ones.
    pub network: Option<bool>,
    /// Memory limit of the whole session, in bytes.
    pub memory: Option<u64>,
    /// Limit on the session's processes and threads.
    pub pids: Option<u64>,
    /// Paths under the workspace kept read-only besides `.git`.
    pub read_only: Vec<PathBuf>,
}

/// The parameter names, in the order they are written.
pub const PARAMS: &[&str] = &[
    "sandbox",
    "workspace",
    "network",
    "memory",
    "pids",
    "readonly",
];

impl Containment {
    /// Whether anything is asked for (an uncontained session otherwise).
    pub fn is_contained(&self) -> bool {
        self.sandbox.is_some_and(|s| s != Sandbox::Off)
            || self.network == Some(false)
            || self.memory.is_some()
            || self.pids.is_some()
    }

    /// The network rule in force: off unless asked for, once a sandbox is.
    pub fn network_allowed(&self) -> bool {
        match self.network {
            Some(on) => on,
            None => self.sandbox.unwrap_or(Sandbox::Off) == Sandbox::Off,
        }
    }

    /// Sets one parameter from its target/flag form.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "sandbox" => self.sandbox = Some(Sandbox::parse(value)?),
            "workspace" => {
                if !value.starts_with('/') {
                    return Err(format!("workspace `{value}` is not an absolute path"));
                }
                self.workspace = Some(PathBuf::from(value));
            }
            "network" => {
                self.network = Some(match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("network `{value}`: expected on or off")),
                })
            }
            "memory" => self.memory = Some(parse_size(value)?),
            "pids" => {
                let n: u64 =
                    value.parse().ok().filter(|&n| n >= 2).ok_or_else(|| {
                        format!("pids `{value}`: expected a number of at least 2")
                    })?;
                self.pids = Some(n);
            }
            "readonly" => {
                if value.is_empty() || value.contains('\0') {
                    return Err(format!("readonly `{value}`: expected a path"));
                }
                self.read_only.push(PathBuf::from(value));
            }
            _ => {
                return Err(format!(
                    "unknown parameter `{key}` (expected one of: {})",
                    PARAMS.join(", ")
                ))
            }
        }
        Ok(())
    }

    /// Parses `key=value&…` (a target's query, values not escaped).
    pub fn parse_query(query: &str) -> Result<Containment, String> {
        let mut c = Containment::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not key=value"))?;
            c.set(k, v)?;
        }
        Ok(c)
    }

    /// `self` with each field it leaves open taken from `other`.
    pub fn or(mut self, other: &Containment) -> Containment {
        self.sandbox = self.sandbox.or(other.sandbox);
        self.workspace = self.workspace.or_else(|| other.workspace.clone());
        self.network = self.network.or(other.network);
        self.memory = self.memory.or(other.memory);
        self.pids = self.pids.or(other.pids);
        for p in &other.read_only {
            if !self.read_only.contains(p) {
                self.read_only.push(p.clone());
            }
        }
        self
    }

    /// This request held to `floor` (a server's `--sandbox …` flags): what
    /// it leaves open comes from the floor; what it would loosen is an
    /// error naming the parameter.
    pub fn within(self, floor: &Containment) -> Result<Containment, String> {
        let loosens = |what: &str, asked: String, floor: String| {
            Err(format!(
                "{what}={asked} is looser than this server allows ({what}={floor})"
            ))
        };
        let c = self.or(floor);
        if let (Some(asked), Some(min)) = (c.sandbox, floor.sandbox) {
            if asked < min {
                return loosens("sandbox", asked.name().into(), min.name().into());
            }
        }
        if let (Some(ws), Some(min_ws), Some(Sandbox::WorkspaceWrite)) =
            (&c.workspace, &floor.workspace, c.sandbox)
        {
            if !ws.starts_with(min_ws) {
                return loosens(
                    "workspace",
                    ws.display().to_string(),
                    min_ws.display().to_string(),
                );
            }
        }
        if !floor.network_allowed() && c.network_allowed() {
            return loosens("network", "on".into(), "off".into());
        }
        if let (Some(asked), Some(max)) = (c.memory, floor.memory) {
            if asked > max {
                return loosens("memory", asked.to_string(), max.to_string());
            }
        }
        if let (Some(asked), Some(max)) = (c.pids, floor.pids) {
            if asked > max {
                return loosens("pids", asked.to_string(), max.to_string());
            }
        }
        Ok(c)
    }

    /// The workspace in force: the one asked for, else `cwd`.
    pub fn workspace_or<'a>(&'a self, cwd: &'a Path) -> &'a Path {
        self.workspace.as_deref().unwrap_or(cwd)
    }
}

/// The parameters as they are written in a target (`sandbox=…&network=…`),
/// also what journal lines record.
impl fmt::Display for Containment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(s) = self.sandbox {
            parts.push(format!("sandbox={}", s.name()));
        }
        if let Some(w) = &self.workspace {
            parts.push(format!("workspace={}", w.display()));
        }
        if let Some(n) = self.network {
            parts.push(format!("network={}", if n { "on" } else { "off" }));
        }
        if let Some(m) = self.memory {
            parts.push(format!("memory={}", format_size(m)));
        }
        if let Some(p) = self.pids {
            parts.push(format!("pids={p}"));
        }
        for p in &self.read_only {
            parts.push(format!("readonly={}", p.display()));
        }
        f.write_str(&parts.join("&"))
    }
}

/// `target` held to a server's `floor`: a local target gets its own
/// parameters [within](Containment::within) the floor, written back into
/// it; any other target is refused (execkit contains local shells only).
/// No floor: the target as it is.
pub fn hold_target(target: &str, floor: &Containment) -> Result<String, String> {
    if !floor.is_contained() {
        return Ok(target.to_string());
    }
    let (base, query) = target.split_once('?').unwrap_or((target, ""));
    if !is_local(base) {
        return Err(format!(
            "this server contains its sessions ({floor}) and only local targets can be contained"
        ));
    }
    let held = Containment::parse_query(query)?.within(floor)?;
    Ok(format!("{base}?{held}"))
}

/// `target` without the containment parameters of a local target (what an
/// allow-list pattern is matched against: the parameters only restrict).
pub fn without_params(target: &str) -> &str {
    match target.split_once('?') {
        Some((base, _)) if is_local(base) => base,
        _ => target,
    }
}

fn is_local(base: &str) -> bool {
    base.split(':')
        .next()
        .is_some_and(|s| s.eq_ignore_ascii_case("local"))
}

/// `512M`, `2G`, `1048576`, `64K` (powers of 1024) as bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("size `{s}`: expected a number with an optional K, M or G suffix");
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let bytes = n.checked_mul(mult).ok_or_else(bad)?;
    if bytes < 1 << 20 {
        return Err(format!(
            "size `{s}`: at least 1M is needed to start a shell"
        ));
    }
    Ok(bytes)
}

/// Bytes in the largest unit that divides them (`512M`).
pub fn format_size(bytes: u64) -> String {
    for (unit, m) in [("G", 1u64 << 30), ("M", 1 << 20), ("K", 1 << 10)] {
        if bytes % m == 0 {
            return format!("{}{unit}", bytes / m);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_writes_back() {
        let c = Containment::parse_query(
            "sandbox=workspace-write&workspace=/w&network=off&memory=512M&pids=64",
        )
        .unwrap();
        assert_eq!(c.sandbox, Some(Sandbox::WorkspaceWrite));
        assert_eq!(c.memory, Some(512 << 20));
        assert!(c.is_contained() && !c.network_allowed());
        assert_eq!(
            c.to_string(),
            "sandbox=workspace-write&workspace=/w&network=off&memory=512M&pids=64"
        );
        for bad in [
            "sandbox=strict",
            "network=maybe",
            "memory=12Q",
            "memory=10",
            "pids=1",
            "workspace=rel",
            "colour=red",
            "sandbox",
        ] {
            assert!(Containment::parse_query(bad).is_err(), "{bad}");
        }
        assert!(!Containment::parse_query("sandbox=off")
            .unwrap()
            .is_contained());
        // A sandbox without a network word means no network.
        assert!(!Containment::parse_query("sandbox=read-only")
            .unwrap()
            .network_allowed());
    }

    #[test]
    fn a_floor_fills_in_and_refuses_loosening() {
        let floor =
            Containment::parse_query("sandbox=workspace-write&workspace=/w&memory=1G").unwrap();
        let got = Containment::default().within(&floor).unwrap();
        assert_eq!(got.sandbox, Some(Sandbox::WorkspaceWrite));
        assert!(!got.network_allowed());
        let stricter = Containment::parse_query("sandbox=read-only&memory=512M")
            .unwrap()
            .within(&floor)
            .unwrap();
        assert_eq!(stricter.sandbox, Some(Sandbox::ReadOnly));
        for loose in [
            "sandbox=off",
            "network=on",
            "memory=2G",
            "sandbox=workspace-write&workspace=/",
        ] {
            let e = Containment::parse_query(loose)
                .unwrap()
                .within(&floor)
                .unwrap_err();
            assert!(e.contains("looser than this server allows"), "{loose}: {e}");
        }
        assert_eq!(
            hold_target("local:/bin/sh", &floor).unwrap(),
            "local:/bin/sh?sandbox=workspace-write&workspace=/w&memory=1G"
        );
        assert!(hold_target("docker:web", &floor).is_err());
        assert!(hold_target("local?sandbox=off", &floor).is_err());
        assert_eq!(
            hold_target("docker:web", &Containment::default()).unwrap(),
            "docker:web"
        );
        assert_eq!(without_params("local?sandbox=off"), "local");
    }
}
