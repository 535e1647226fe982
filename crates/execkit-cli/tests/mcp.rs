//! `execkit mcp` driven by the official MCP Python client (`pip install
//! mcp`, in a venv `cargo xtask test` makes and names in
//! EXECKIT_TEST_MCP_PYTHON). On testkit's runner (`harness = false`):
//! without it the tests that need it show as ignored, and fail under
//! CI=true.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use execkit_core::testkit;

mod support;

/// The venv's python, or why there is none (outside `cargo xtask test`).
fn mcp_python() -> Result<std::ffi::OsString, String> {
    std::env::var_os("EXECKIT_TEST_MCP_PYTHON")
        .ok_or_else(|| "EXECKIT_TEST_MCP_PYTHON not set (run `cargo xtask test`)".to_string())
}

/// Runs `tests/mcp/SCRIPT ARG REPORT` with the venv's python, asserts it
/// succeeded and returns the latency report it wrote.
fn run_client(python: &std::ffi::OsStr, script: &str, arg: &str, token: Option<&str>) -> String {
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
        .envs(token.map(|t| ("EXECKIT_MCP_TOKEN", t)))
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

fn official_python_client_drives_execkit_mcp(python: std::ffi::OsString) {
    let numbers = run_client(&python, "client.py", env!("CARGO_BIN_EXE_execkit"), None);
    println!("mcp latency: {numbers}");
}

/// `execkit mcp --http` on a free loopback port; stopped by PID on drop.
struct HttpServer {
    child: std::process::Child,
    addr: String,
    /// The bearer token (read from the file the start-up line names).
    token: String,
    token_file: std::path::PathBuf,
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
        let token_file = std::path::PathBuf::from(
            line.split("bearer token in ")
                .nth(1)
                .unwrap_or_else(|| panic!("no token file in {line:?}"))
                .trim(),
        );
        let token = std::fs::read_to_string(&token_file)
            .expect("token file")
            .trim()
            .to_string();
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut err, &mut std::io::sink());
        });
        HttpServer {
            child,
            addr,
            token,
            token_file,
        }
    }

    /// SIGTERM; the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        support::terminate(&mut self.child, Duration::from_secs(15), "mcp --http")
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn official_python_client_over_streamable_http(python: std::ffi::OsString) {
    let server = HttpServer::start();
    let url = format!("http://{}/mcp", server.addr);
    let numbers = run_client(&python, "http_client.py", &url, Some(&server.token));
    println!("mcp over http latency: {numbers}");

    // Other paths are not served.
    let mut conn = std::net::TcpStream::connect(&server.addr).expect("connect");
    write!(
        conn,
        "GET /other HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\n\r\n",
        server.token
    )
    .expect("request");
    let mut reply = String::new();
    conn.read_to_string(&mut reply).expect("reply");
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");

    let st = server.stop();
    assert!(st.success(), "mcp --http exited with {st} on SIGTERM");
}

fn http_refuses_addresses_off_loopback() {
    let out = Command::new(env!("CARGO_BIN_EXE_execkit"))
        .args(["mcp", "--http", "0.0.0.0:0", "--no-journal"])
        .output()
        .expect("run execkit");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only loopback"), "{err}");
}

/// `execkit mcp` on stdio, spoken to line by line (no MCP client library:
/// these are the wire-level promises). Replies are read on a thread, so a
/// reply that never comes fails the test instead of hanging it.
struct McpStdio {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    replies: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl McpStdio {
    fn start() -> McpStdio {
        McpStdio::start_with(&["--allow-target", "local*"])
    }

    fn start_with(extra: &[&str]) -> McpStdio {
        let mut child = Command::new(env!("CARGO_BIN_EXE_execkit"))
            .args(["mcp", "--no-journal"])
            .args(extra)
            .env(
                "XDG_STATE_HOME",
                std::env::temp_dir().join("execkit-mcp-tests"),
            )
            // No server to mirror to.
            .env(
                "XDG_RUNTIME_DIR",
                std::env::temp_dir().join("execkit-mcp-tests/no-server"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start execkit mcp");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, replies) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { return };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON from execkit mcp: {line:?}: {e}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        McpStdio {
            child,
            stdin,
            replies,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to execkit mcp");
    }

    fn next(&self) -> serde_json::Value {
        self.replies
            .recv_timeout(Duration::from_secs(60))
            .expect("execkit mcp did not answer within 60 s")
    }

    /// The reply to request `id`, skipping others.
    fn reply(&self, id: i64) -> serde_json::Value {
        loop {
            let v = self.next();
            if v["id"] == id {
                return v;
            }
        }
    }

    fn initialize(&mut self) -> serde_json::Value {
        self.send(
            &serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "execkit-test", "version": "0"}}})
            .to_string(),
        );
        let init = self.reply(1);
        self.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        init
    }

    fn call(&mut self, id: i64, tool: &str, args: &str) -> serde_json::Value {
        self.send(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{args}}}}}"#
        ));
        self.reply(id)
    }
}

impl Drop for McpStdio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A line that is not JSON gets JSON-RPC's parse error (-32700) — the
/// first line back, before the reply to the request sent after it — and
/// `serverInfo` names execkit and its version, not the MCP library.
fn malformed_json_is_answered_and_server_info_is_execkit() {
    let mut mcp = McpStdio::start();
    mcp.send("{this is not json");
    mcp.send(
        &serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "execkit-test", "version": "0"}}})
        .to_string(),
    );
    let first = mcp.next();
    assert_eq!(first["error"]["code"], -32700, "{first}");
    assert!(first["id"].is_null(), "{first}");
    let init = mcp.next();
    assert_eq!(init["id"], 1, "{init}");
    let info = &init["result"]["serverInfo"];
    assert_eq!(info["name"], "execkit", "{init}");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"), "{init}");
    mcp.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);

    // Once running too; a number JSON cannot hold is a parse error; a JSON
    // line that is no request is an invalid request, with its id.
    mcp.send("not json either");
    assert_eq!(mcp.next()["error"]["code"], -32700);
    mcp.send(r#"{"jsonrpc":"2.0","id":5,"method":"ping","params":{"n":1e999}}"#);
    assert_eq!(mcp.next()["error"]["code"], -32700);
    mcp.send(r#"{"jsonrpc":"2.0","id":6,"bogus":true}"#);
    let v = mcp.next();
    assert_eq!(
        (v["id"].clone(), v["error"]["code"].clone()),
        (6.into(), (-32600).into()),
        "{v}"
    );
    // And the server still works.
    let v = mcp.call(7, "run", r#"{"command":"echo alive"}"#);
    assert_eq!(v["result"]["structuredContent"]["output"], "alive", "{v}");
}

/// Every duration a tool takes is checked: a huge, negative or
/// out-of-range number of seconds is a tool error, never a panic that
/// leaves the call unanswered.
fn huge_durations_are_tool_errors() {
    let mut mcp = McpStdio::start();
    mcp.initialize();
    let mut id = 10;
    for (tool, args, field) in [
        (
            "run",
            r#"{"command":"true","timeout_secs":1e300}"#,
            "timeout_secs",
        ),
        (
            "run",
            r#"{"command":"true","timeout_secs":99999999999999999999}"#,
            "timeout_secs",
        ),
        (
            "run",
            r#"{"command":"true","timeout_secs":-1}"#,
            "timeout_secs",
        ),
        (
            "run",
            r#"{"command":"true","yield_after_secs":1e300}"#,
            "yield_after_secs",
        ),
        (
            "run",
            r#"{"command":"true","yield_after_secs":-0.5}"#,
            "yield_after_secs",
        ),
        ("poll", r#"{"wait_secs":1e300}"#, "wait_secs"),
        ("poll", r#"{"wait_secs":-1}"#, "wait_secs"),
    ] {
        id += 1;
        let v = mcp.call(id, tool, args);
        assert_eq!(v["result"]["isError"], true, "{tool} {args}: {v}");
        let text = v["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default();
        assert!(text.contains(field), "{tool} {args}: {v}");
    }
    // The worker is alive and the ceiling is accepted.
    let v = mcp.call(
        99,
        "run",
        r#"{"command":"echo ok","timeout_secs":31536000}"#,
    );
    assert_eq!(v["result"]["structuredContent"]["output"], "ok", "{v}");
}

/// `session_open` names count successful opens only: after a failed open
/// the next session is still `s1`.
fn session_open_names_count_successful_opens_only() {
    let mut mcp = McpStdio::start();
    mcp.initialize();
    let v = mcp.call(2, "session_open", r#"{"shell":"/nonexistent/shell"}"#);
    assert_eq!(v["result"]["isError"], true, "{v}");
    let v = mcp.call(3, "session_open", "{}");
    assert_eq!(v["result"]["structuredContent"]["session_id"], "s1", "{v}");
    let v = mcp.call(4, "session_open", r#"{"cwd":"/nonexistent/dir"}"#);
    assert_eq!(v["result"]["isError"], true, "{v}");
    let v = mcp.call(5, "session_open", "{}");
    assert_eq!(v["result"]["structuredContent"]["session_id"], "s2", "{v}");
}

/// Issue 14.5 through MCP: an agent's `session_open` with the crafted
/// targets of the report, each admitted by a pattern when matched as a
/// string, is a tool error saying it is not allowed, and nothing connects
/// to the loopback listener they name; `shell` cannot swap the shell a
/// pattern names.
fn crafted_targets_and_shells_are_refused_over_mcp() {
    let wire = execkit_core::testkit::Tripwire::new();
    let port = wire.port;
    let near = format!("ssh://deploy@127.0.0.1:{port}*");
    let mut mcp = McpStdio::start_with(&[
        "--target",
        "local:/bin/dash",
        "--allow-target",
        "docker:*",
        "--allow-target",
        "ssh://deploy@prod.example.com*",
        "--allow-target",
        &near,
        "--allow-target",
        "local:/bin/dash",
    ]);
    mcp.initialize();
    let mut id = 10;
    let mut refused = |args: serde_json::Value| {
        id += 1;
        let v = mcp.call(id, "session_open", &args.to_string());
        assert_eq!(v["result"]["isError"], true, "{args}: {v}");
        let text = v["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(text.contains("not allowed"), "{args}: {text}");
        text
    };
    for target in [
        format!("docker://127.0.0.1:{port}/x"),
        format!("ssh://deploy@prod.example.com@127.0.0.1:{port}"),
        "ssh://deploy@prod.example.com.evil.invalid".to_string(),
        format!("ssh://deploy@127.0.0.1:{port}?known_hosts=/dev/null&host_key=accept_new"),
        format!("ssh://deploy@127.0.0.1:{port}?identity=/tmp/other-key"),
    ] {
        refused(serde_json::json!({"target": target}));
    }
    let text = refused(serde_json::json!({"target": "local:/bin/dash", "shell": "/bin/bash"}));
    assert!(text.contains("with shell `/bin/bash`"), "{text}");
    refused(serde_json::json!({"shell": "/bin/bash"}));
    assert_eq!(wire.connections(), 0, "a refused target was connected to");
    // The default session runs the shell the pattern names.
    let v = mcp.call(
        99,
        "run",
        r#"{"command":"echo \"bash=${BASH_VERSION:-none}\""}"#,
    );
    assert_eq!(
        v["result"]["structuredContent"]["output"], "bash=none",
        "{v}"
    );
}

/// Over streamable HTTP too, a body that is not JSON gets JSON-RPC's parse
/// error (-32700, with a 400), not a plain-text 415.
fn http_malformed_json_is_a_parse_error() {
    let server = HttpServer::start();
    let body = "{this is not json";
    let mut conn = std::net::TcpStream::connect(&server.addr).expect("connect");
    write!(
        conn,
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Content-Length: {}\r\n\r\n{body}",
        server.token,
        body.len()
    )
    .expect("request");
    let mut reply = String::new();
    conn.read_to_string(&mut reply).expect("reply");
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    let json = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {reply}"));
    assert_eq!(v["error"]["code"], -32700, "{reply}");
    let st = server.stop();
    assert!(st.success(), "mcp --http exited with {st} on SIGTERM");
}

/// An MCP `initialize` posted to the server by `bash` (its `/dev/tcp`), as
/// `uid` when given (another user: the attacker), with `token`; the HTTP
/// status code.
fn initialize_as(server: &HttpServer, uid: Option<u32>, token: Option<&str>) -> String {
    use std::os::unix::process::CommandExt as _;
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}"#;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (host, port) = server.addr.rsplit_once(':').expect("host:port");
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(r#"exec 3<>"/dev/tcp/$1/$2" && printf '%s' "$3" >&3 && head -n1 <&3"#)
        .args(["bash", host, port, &request])
        .current_dir("/");
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().expect("run bash");
    let status = String::from_utf8_lossy(&out.stdout);
    status
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no HTTP status: {out:?}"))
        .to_string()
}

/// Fails on 8400d69, where any local user initialized a session and ran
/// commands as the server's user (no token; loopback was the only check):
/// a request needs the bearer token, and a connection from another uid is
/// refused even with it (a leaked token is not enough).
fn http_serves_only_its_user_with_the_token() {
    let server = HttpServer::start();
    let meta = std::fs::metadata(&server.token_file).expect("token file");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    assert_eq!(initialize_as(&server, None, Some(&server.token)), "200");
    assert_eq!(initialize_as(&server, None, None), "401");
    assert_eq!(
        initialize_as(&server, None, Some("0123456789abcdef0123")),
        "401"
    );
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(
            initialize_as(&server, Some(65534), Some(&server.token)),
            "403"
        );
        assert_eq!(initialize_as(&server, Some(65534), None), "403");
    } else {
        eprintln!("not root: the other-uid half is skipped");
    }
    let file = server.token_file.clone();
    let st = server.stop();
    assert!(st.success(), "mcp --http exited with {st} on SIGTERM");
    assert!(!file.exists(), "the generated token is removed at exit");
}

fn main() -> ExitCode {
    let python = mcp_python();
    let none: Result<(), String> = Ok(());
    testkit::harness(vec![
        testkit::test_with(
            stringify!(official_python_client_drives_execkit_mcp),
            &python,
            official_python_client_drives_execkit_mcp,
        ),
        testkit::test_with(
            stringify!(official_python_client_over_streamable_http),
            &python,
            official_python_client_over_streamable_http,
        ),
        testkit::test_with(
            stringify!(http_refuses_addresses_off_loopback),
            &none,
            |()| http_refuses_addresses_off_loopback(),
        ),
        testkit::test_with(
            stringify!(malformed_json_is_answered_and_server_info_is_execkit),
            &none,
            |()| malformed_json_is_answered_and_server_info_is_execkit(),
        ),
        testkit::test_with(stringify!(huge_durations_are_tool_errors), &none, |()| {
            huge_durations_are_tool_errors()
        }),
        testkit::test_with(
            stringify!(session_open_names_count_successful_opens_only),
            &none,
            |()| session_open_names_count_successful_opens_only(),
        ),
        testkit::test_with(
            stringify!(crafted_targets_and_shells_are_refused_over_mcp),
            &none,
            |()| crafted_targets_and_shells_are_refused_over_mcp(),
        ),
        testkit::test_with(
            stringify!(http_malformed_json_is_a_parse_error),
            &none,
            |()| http_malformed_json_is_a_parse_error(),
        ),
        testkit::test_with(
            stringify!(http_serves_only_its_user_with_the_token),
            &none,
            |()| http_serves_only_its_user_with_the_token(),
        ),
    ])
}
