//! Link-time registration alone (no `register()` call) puts `local` in the
//! registry: referencing the crate is enough.

use execkit_local as _;

#[test]
fn inventory_registers_local_without_register_call() {
    let schemes: Vec<&str> = execkit_core::registry().iter().map(|i| i.scheme).collect();
    assert!(schemes.contains(&"local"), "{schemes:?}");
    assert!(execkit_core::connect("local:/bin/sh").is_ok());
}
