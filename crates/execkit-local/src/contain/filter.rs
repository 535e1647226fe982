//! The seccomp program of `network=off`: `socket(2)` fails with `EACCES`
//! for every family but `AF_UNIX`, and so does `io_uring_setup` (an
//! io_uring can open sockets without the `socket` syscall). The filter
//! checks the architecture first: a syscall through another ABI (32-bit
//! `int 0x80` on x86-64) kills the process instead of slipping past.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The compiled filter.
pub(crate) fn no_network() -> Result<BpfProgram, String> {
    let fail = |e: &dyn std::fmt::Display| format!("network=off: building the seccomp filter: {e}");
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| fail(&e))?;
    let not_unix = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Ne,
        libc::AF_UNIX as u64,
    )
    .map_err(|e| fail(&e))?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    rules.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(vec![not_unix]).map_err(|e| fail(&e))?],
    );
    rules.insert(libc::SYS_io_uring_setup, Vec::new());
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        arch,
    )
    .map_err(|e| fail(&e))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| fail(&e))
}
