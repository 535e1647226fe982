//! The Landlock ruleset of a sandboxed shell: read and execute anywhere,
//! every write right only beneath the writable paths and a few devices.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope, ABI,
};

/// The oldest ABI that controls every way to write: 1 lacks `Refer`
/// (renames across directories) and 2 lacks `Truncate`.
pub(crate) const MIN_ABI: i32 = 3;

/// From this ABI on, a sandbox also keeps its processes from signalling
/// processes outside it and from connecting to abstract Unix sockets
/// bound outside it (Linux 6.12+); below it those stay open (documented).
pub(crate) const SCOPE_ABI: i32 = 6;

/// Devices a shell writes to wherever it runs (its terminal, the bit
/// bucket, …).
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
    "/dev/random",
    "/dev/urandom",
];

/// The kernel's Landlock ABI version, `None` when Landlock is off.
pub(crate) fn abi() -> Option<i32> {
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns a number.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    (v > 0).then_some(v as i32)
}

/// The ruleset's fd, ready for `landlock_restrict_self` in the child.
pub(crate) fn ruleset(writable: &[PathBuf]) -> Result<OwnedFd, String> {
    let missing = |e: &dyn std::fmt::Display| {
        format!(
            "sandbox needs Landlock ABI {MIN_ABI}+ (Linux 6.2+){}: {e}",
            match abi() {
                Some(v) => format!(", this kernel has ABI {v}"),
                None => ", and Landlock is not enabled in this kernel".into(),
            }
        )
    };
    let abi = ABI::V3;
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))
        .map_err(|e| missing(&e))?;
    if self::abi().is_some_and(|v| v >= SCOPE_ABI) {
        ruleset = ruleset
            .scope(Scope::Signal | Scope::AbstractUnixSocket)
            .map_err(|e| missing(&e))?;
    }
    let mut rs = ruleset
        .create()
        .map_err(|e| missing(&e))?
        .add_rule(PathBeneath::new(
            PathFd::new("/").map_err(|e| missing(&e))?,
            AccessFs::from_read(abi),
        ))
        .map_err(|e| missing(&e))?;
    let devices = DEVICES.iter().map(Path::new).filter(|p| p.exists());
    for p in writable.iter().map(PathBuf::as_path).chain(devices) {
        let fd = PathFd::new(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let rights = if p.is_dir() {
            AccessFs::from_all(abi)
        } else {
            AccessFs::from_file(abi)
        };
        rs = rs
            .add_rule(PathBeneath::new(fd, rights))
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let fd: Option<OwnedFd> = rs.into();
    fd.ok_or_else(|| missing(&"no ruleset was created"))
}
