//! `execkit mcp` driven by the official MCP Python client (`pip install
//! mcp`, in a venv `cargo xtask test` makes and names in
//! EXECKIT_TEST_MCP_PYTHON). Without it the test says it was skipped, and
//! fails under CI=true.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The venv's python, or `None` (skip) outside `cargo xtask test`; a
/// failure under CI=true.
fn mcp_python() -> Option<std::ffi::OsString> {
    let python = std::env::var_os("EXECKIT_TEST_MCP_PYTHON");
    if python.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "EXECKIT_TEST_MCP_PYTHON is not set; run `cargo xtask test`"
        );
        eprintln!("skipped: EXECKIT_TEST_MCP_PYTHON not set (run `cargo xtask test`)");
    }
    python
}

/// Runs `tests/mcp/SCRIPT ARG REPORT` with the venv's python, asserts it
/// succeeded and returns the latency report it wrote.
fn run_client(python: &std::ffi::OsStr, script: &str, arg: &str) -> String {
    let script = format!("{}/tests/mcp/{script}", env!("CARGO_MANIFEST_DIR"));
    let report = std::env::temp_dir().join(format!(
        "execkit-{script_name}-{}.json",
        std::process::id(),
        script_name = script.rsplit('/').next().unwrap_or("mcp"),
    ));
    let out = Command::new(python)
        .arg(&script)
        .arg(arg)
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
    let _ = std::fs::remove_file(report);
    numbers
}

#[test]
fn official_python_client_drives_execkit_mcp() {
    let Some(python) = mcp_python() else { return };
    let numbers = run_client(&python, "client.py", env!("CARGO_BIN_EXE_execkit"));
    println!("mcp latency: {numbers}");
}

/// `execkit mcp --http` on a free loopback port; stopped by PID on drop.
struct HttpServer {
    child: std::process::Child,
    addr: String,
}

impl HttpServer {
    fn start() -> HttpServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_execkit"))
            .args(["mcp", "--http", "127.0.0.1:0", "--no-journal"])
            .args(["--allow-target", "local*"])
            .env(
                "XDG_STATE_HOME",
                std::env::temp_dir().join("execkit-mcp-tests"),
            )
            .stderr(Stdio::piped())
            .spawn()
            .expect("start execkit mcp --http");
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        err.read_line(&mut line).expect("first stderr line");
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split("/mcp").next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut err, &mut std::io::sink());
        });
        HttpServer { child, addr }
    }

    /// SIGTERM; the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "mcp --http ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn official_python_client_over_streamable_http() {
    let Some(python) = mcp_python() else { return };
    let server = HttpServer::start();
    let url = format!("http://{}/mcp", server.addr);
    let numbers = run_client(&python, "http_client.py", &url);
    println!("mcp over http latency: {numbers}");

    // Other paths are not served.
    let mut conn = std::net::TcpStream::connect(&server.addr).expect("connect");
    write!(
        conn,
        "GET /other HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut reply = String::new();
    conn.read_to_string(&mut reply).expect("reply");
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");

    let st = server.stop();
    assert!(st.success(), "mcp --http exited with {st} on SIGTERM");
}

#[test]
fn http_refuses_addresses_off_loopback() {
    let out = Command::new(env!("CARGO_BIN_EXE_execkit"))
        .args(["mcp", "--http", "0.0.0.0:0", "--no-journal"])
        .output()
        .expect("run execkit");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only loopback"), "{err}");
}
