//! `--sandbox --workspace --network --memory --pids`: a containment policy
//! from flags. On `exec` and `shell` it is the session's policy (written
//! into the local target as parameters); on `serve`, `mcp` and `swerex` it
//! is a floor no request can loosen. And `execkit sandbox-check`.

use std::process::ExitCode;

use clap::Args;
use execkit_core::Containment;

/// The flags, shared by every command that opens sessions.
#[derive(Debug, Args, Default, Clone)]
pub struct ContainArgs {
    /// Contain local sessions: `read-only` (writes only to a private temp
    /// dir), `workspace-write` (also the workspace; `.git` stays
    /// read-only) or `off`.
    #[arg(long, value_name = "MODE")]
    sandbox: Option<String>,
    /// The directory `workspace-write` opens for writing [default: the
    /// session's working directory].
    #[arg(long, value_name = "PATH")]
    workspace: Option<std::path::PathBuf>,
    /// `off`: no sockets but Unix ones [default: off under a sandbox].
    #[arg(long, value_name = "on|off")]
    network: Option<String>,
    /// Memory limit of the whole session (`512M`, `2G`).
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Most processes and threads the session may have at once.
    #[arg(long, value_name = "N")]
    pids: Option<String>,
}

impl ContainArgs {
    /// The policy the flags ask for (empty when none is given).
    pub fn policy(&self) -> Result<Containment, String> {
        let mut c = Containment::default();
        if let Some(v) = &self.sandbox {
            c.set("sandbox", v)?;
        }
        if let Some(w) = &self.workspace {
            let abs = std::path::absolute(w).map_err(|e| format!("--workspace: {e}"))?;
            c.set("workspace", &abs.to_string_lossy())?;
        }
        if let Some(v) = &self.network {
            c.set("network", v)?;
        }
        if let Some(v) = &self.memory {
            c.set("memory", v)?;
        }
        if let Some(v) = &self.pids {
            c.set("pids", v)?;
        }
        Ok(c)
    }

    /// `target` with the flags' policy written in (the flags win over the
    /// target's own parameters), or why that cannot be.
    pub fn target(&self, target: &str) -> Result<String, String> {
        let flags = self.policy()?;
        if flags == Containment::default() {
            return Ok(target.to_string());
        }
        let (base, query) = target.split_once('?').unwrap_or((target, ""));
        if !base
            .split(':')
            .next()
            .is_some_and(|s| s.eq_ignore_ascii_case("local"))
        {
            return Err(format!(
                "--sandbox, --network, --memory and --pids contain local sessions only, not {target}"
            ));
        }
        let policy = flags.or(&Containment::parse_query(query)?);
        Ok(format!("{base}?{policy}"))
    }
}

/// `execkit sandbox-check`: what this machine can contain, one line each;
/// exit 0 when everything is there, 1 otherwise.
#[cfg(feature = "local")]
pub fn check() -> ExitCode {
    let mut all = true;
    for (what, how) in execkit_local::support() {
        match how {
            Ok(how) => println!("ok       {what:<18} {how}"),
            Err(why) => {
                all = false;
                println!("missing  {what:<18} {why}");
            }
        }
    }
    ExitCode::from(if all { 0 } else { 1 })
}

#[cfg(not(feature = "local"))]
pub fn check() -> ExitCode {
    eprintln!("execkit: this build has no local transport (feature `local`): nothing to contain");
    ExitCode::from(1)
}
