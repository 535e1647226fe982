//! Link-time registration alone (no `register()` call) puts `local` in the
//! registry: referencing the crate is enough.

use execkit_local as _;

#[test]
fn inventory_registers_local_without_register_call() {
    let schemes: Vec<&str> = execkit_core::transports()
        .iter()
        .map(|i| i.scheme)
        .collect();
    assert!(schemes.contains(&"local"), "{schemes:?}");
    assert!(execkit_core::connect("local:/bin/sh").is_ok());
}

/// Callers ask the record whether a target's shells share this host (its
/// files, its `/proc`), never compare the scheme's name.
#[test]
fn local_declares_it_runs_on_this_host() {
    assert!(execkit_core::on_this_host("local"));
    assert!(execkit_core::on_this_host("local:/bin/sh"));
    assert!(!execkit_core::on_this_host("nosuchscheme:x"));
    assert!(!execkit_core::on_this_host("not a target"));
}
