//! `execkit mcp` driven by the official MCP Python client (`pip install
//! mcp`, in a venv `cargo xtask test` makes and names in
//! EXECKIT_TEST_MCP_PYTHON). Without it the test says it was skipped, and
//! fails under CI=true.

use std::process::Command;

#[test]
fn official_python_client_drives_execkit_mcp() {
    let Some(python) = std::env::var_os("EXECKIT_TEST_MCP_PYTHON") else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "EXECKIT_TEST_MCP_PYTHON is not set; run `cargo xtask test`"
        );
        eprintln!("skipped: EXECKIT_TEST_MCP_PYTHON not set (run `cargo xtask test`)");
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/client.py");
    let report = std::env::temp_dir().join(format!("execkit-mcp-{}.json", std::process::id()));
    let out = Command::new(python)
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_execkit"))
        .arg(&report)
        .env(
            "XDG_STATE_HOME",
            std::env::temp_dir().join("execkit-mcp-tests"),
        )
        .output()
        .expect("run the python client");
    assert!(
        out.status.success(),
        "client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let numbers = std::fs::read_to_string(&report).expect("report");
    println!("mcp latency: {numbers}");
    let _ = std::fs::remove_file(report);
}
