//! `execkit mcp`: an MCP server on stdio (built on `rmcp`) exposing
//! execkit sessions as tools for any agent that speaks the Model Context
//! Protocol. Sessions live in an [`execkit_core::Host`], so they keep
//! running between tool calls; everything is journaled and mirrored to the
//! console exactly like the CLI.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use execkit_core::host::{Host, HostError, OpenRequest};
use execkit_core::{RunOptions, RunOutcome, RunResult};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{tool, tool_handler, tool_router, ServerHandler, ServiceExt};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::duration::optional_timeout;
use crate::observe::JournalArgs;

/// Name of the session `run` uses when no `session_id` is given.
const DEFAULT_SESSION: &str = "default";

#[derive(Debug, Args)]
pub struct McpArgs {
    /// Target for sessions opened without one (and for the default session).
    #[arg(long, short = 't', default_value = "local")]
    pub target: String,
    /// Only targets matching one of these patterns may be opened
    /// (repeatable): a target with `*` in its parts, e.g. `local`,
    /// `local:/bin/dash`, `docker:web-*`, `ssh://deploy@*.example.com:*`.
    /// Parts compare separately; parameters (`?known_hosts=…`) only when
    /// the pattern names them. Without it every target is allowed.
    #[arg(long = "allow-target", value_name = "PATTERN")]
    pub allow_target: Vec<String>,
    /// Characters of output returned per command before capping.
    #[arg(long, default_value_t = 30_000, value_name = "N")]
    pub output_limit: usize,
    /// Serve MCP over streamable HTTP at `http://ADDR/mcp` instead of stdio.
    /// Loopback addresses only (port 0 picks a free port; the address is
    /// printed on stderr). Every client shares the server's sessions.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    /// With --http: the bearer token every request must carry
    /// (`Authorization: Bearer TOKEN`) is read from this file (0600, ours),
    /// or generated into it when missing. Default: a fresh token in
    /// `${XDG_RUNTIME_DIR:-/tmp/execkit-$UID}/mcp-PORT.token`, removed at
    /// exit; `EXECKIT_MCP_TOKEN` gives it directly.
    #[arg(long, value_name = "PATH", requires = "http")]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub journal: JournalArgs,
    /// A floor for every session: a request may ask for more containment,
    /// never less (`sandbox=off` is refused), and only local targets open.
    #[command(flatten)]
    pub contain: crate::contain_args::ContainArgs,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct OpenParams {
    /// Where to run: `local`, `local:/bin/sh`, `docker:CONTAINER`, `ssh://user@host`. Defaults to the server's target.
    #[serde(default)]
    pub target: Option<String>,
    /// Shell to start on the target (default: bash if present, else sh). The server's allow list may limit it.
    #[serde(default)]
    pub shell: Option<String>,
    /// Initial working directory.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: HashMap<String, String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunParams {
    /// Session to run in; omit to use the default session on the default target.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Shell command text (any length, multi-line and heredocs allowed).
    pub command: String,
    /// Hard timeout in seconds (default 300). On timeout the command and everything it started are killed; the session survives.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Return after this many seconds with `running: true` and the output so far, while the command keeps running. Use for servers, long builds, prompts and REPLs; then call `poll`, `send_input` or `interrupt`.
    #[serde(default)]
    pub yield_after_secs: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct InputParams {
    /// Session whose running command receives the text.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Text to type, e.g. "y\n" or "print(1+1)\n" (include the newline).
    pub text: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct PollParams {
    /// Session to poll.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Wait up to this many seconds for the command to finish (default 1).
    #[serde(default)]
    pub wait_secs: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SessionParams {
    /// The session.
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ExecKitMcp {
    host: Arc<Host>,
    names: Arc<Names>,
    tool_router: ToolRouter<Self>,
}

/// Names for `session_open` (`s1`, `s2`, …), shared by every client of one
/// server. A number is spent only by an open that succeeded: a failed open
/// gives its number back, so the names an agent sees never skip.
#[derive(Debug, Default)]
pub struct Names {
    state: std::sync::Mutex<(u64, std::collections::BTreeSet<u64>)>,
}

impl Names {
    /// The lowest number given back, else the next new one.
    fn take(&self) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = s.1.pop_first() {
            return n;
        }
        s.0 += 1;
        s.0
    }

    /// A number whose open failed.
    fn give_back(&self, n: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.1.insert(n);
    }
}

fn tool_error(msg: impl std::fmt::Display) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(msg.to_string())])
}

/// The result for the model: a short text view plus the structured result.
fn run_result(r: &RunResult) -> CallToolResult {
    let mut text = String::new();
    let status = match r.outcome() {
        RunOutcome::Running | RunOutcome::AwaitingInput => {
            "still running — call poll for more output, send_input to answer it, or interrupt"
                .to_string()
        }
        RunOutcome::TimedOut => {
            "timed out: the command and everything it started were killed; the session is still usable"
                .to_string()
        }
        RunOutcome::Lost => format!(
            "target lost: {}",
            r.error.as_deref().unwrap_or("unknown reason")
        ),
        RunOutcome::NoExitCode | RunOutcome::StoppedAtPrompt => format!(
            "no exit code ({})",
            r.error.as_deref().unwrap_or("interrupted")
        ),
        o => o.label(),
    };
    text.push_str(&format!(
        "[{status} · {} ms · cwd {}]",
        r.duration_ms, r.cwd
    ));
    if r.restarted {
        text.push_str("\n[the shell was restarted: cwd, variables and functions were reset]");
    }
    if let Some(p) = &r.output_path {
        text.push_str(&format!(
            "\n[output was capped; the full output is in {}]",
            p.display()
        ));
    }
    if !r.output.is_empty() {
        text.push('\n');
        text.push_str(&r.output);
    }
    let mut result = CallToolResult::structured(serde_json::to_value(r).unwrap_or_default());
    result.content = vec![ContentBlock::text(text)];
    result
}

#[tool_router]
impl ExecKitMcp {
    pub fn new(host: Arc<Host>, names: Arc<Names>) -> Self {
        ExecKitMcp {
            host,
            names,
            tool_router: Self::tool_router(),
        }
    }

    async fn session(&self, id: Option<String>) -> Result<String, HostError> {
        let name = id.unwrap_or_else(|| DEFAULT_SESSION.to_string());
        if name == DEFAULT_SESSION && !self.host.list().iter().any(|s| s.name == name) {
            let req = OpenRequest {
                name: Some(name.clone()),
                ..Default::default()
            };
            match self.host.open(req).await {
                Ok(_) | Err(HostError::NameTaken(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(name)
    }

    #[tool(
        description = "Open a persistent shell session on a target (this host, a Docker container, or an SSH host). State persists between commands in a session: cd, export, shell functions, activated virtualenvs. Returns the session_id to pass to the other tools. Optional: `run` without session_id uses a default session."
    )]
    async fn session_open(&self, Parameters(p): Parameters<OpenParams>) -> CallToolResult {
        let opened = loop {
            let n = self.names.take();
            let req = OpenRequest {
                name: Some(format!("s{n}")),
                target: p.target.clone(),
                shell: p.shell.clone(),
                cwd: p.cwd.clone(),
                env: p.env.clone(),
            };
            match self.host.open(req).await {
                // Only the default session is named otherwise; never loops
                // more than once per session that holds an `sN` name.
                Err(HostError::NameTaken(_)) => continue,
                Err(e) => {
                    self.names.give_back(n);
                    break Err(e);
                }
                Ok(info) => break Ok(info),
            }
        };
        match opened {
            Ok(info) => {
                let mut r = CallToolResult::structured(
                    serde_json::json!({"session_id": info.name, "target": info.target}),
                );
                r.content = vec![ContentBlock::text(format!(
                    "session_id: {} (target {})",
                    info.name, info.target
                ))];
                r
            }
            Err(e) => tool_error(e),
        }
    }

    #[tool(
        description = "Run a shell command in a session and return its exit code, output (stdout and stderr interleaved, ANSI removed), cwd and duration. State persists between runs. Output longer than the cap is cut to head + tail; the full text is saved to the file named in output_path. A hard timeout (default 300 s) kills the command and everything it started. For long or interactive commands (servers, builds, prompts, REPLs like python3 -i) set yield_after_secs: you get the output so far with running=true, then use poll, send_input or interrupt. Without session_id a default session on the default target is used."
    )]
    async fn run(&self, Parameters(p): Parameters<RunParams>) -> CallToolResult {
        let mut opts = RunOptions::default();
        match (
            optional_timeout("timeout_secs", p.timeout_secs, Some(300.0)),
            optional_timeout("yield_after_secs", p.yield_after_secs, None),
        ) {
            (Ok(t), Ok(y)) => {
                opts.timeout = t;
                opts.yield_after = y;
            }
            (Err(e), _) | (_, Err(e)) => return tool_error(e),
        }
        let name = match self.session(p.session_id).await {
            Ok(n) => n,
            Err(e) => return tool_error(e),
        };
        match self.host.run(&name, &p.command, opts).await {
            Ok(r) => run_result(&r),
            Err(e) => tool_error(e),
        }
    }

    #[tool(
        description = "Type text into the command running in a session (it must have been started with yield_after_secs and still be running): answer a prompt, feed `read`, drive a REPL. Include the trailing newline. Then call poll to see the reaction."
    )]
    async fn send_input(&self, Parameters(p): Parameters<InputParams>) -> CallToolResult {
        let name = p.session_id.unwrap_or_else(|| DEFAULT_SESSION.to_string());
        match self.host.send_input(&name, &p.text).await {
            Ok(()) => CallToolResult::success(vec![ContentBlock::text("sent")]),
            Err(e) => tool_error(e),
        }
    }

    #[tool(
        description = "Get the output a yielded command printed since the last read, waiting up to wait_secs (default 1) for it to finish. When it has finished the result has running=false and the exit code."
    )]
    async fn poll(&self, Parameters(p): Parameters<PollParams>) -> CallToolResult {
        let name = p.session_id.unwrap_or_else(|| DEFAULT_SESSION.to_string());
        let wait = match crate::duration::secs("wait_secs", p.wait_secs.unwrap_or(1.0)) {
            Ok(w) => w,
            Err(e) => return tool_error(e),
        };
        match self.host.poll(&name, wait).await {
            Ok(r) => run_result(&r),
            Err(e) => tool_error(e),
        }
    }

    #[tool(
        description = "Interrupt the command running in a session (Ctrl-C; if it ignores that, the shell is restarted). Returns its final result. The session stays usable."
    )]
    async fn interrupt(&self, Parameters(p): Parameters<SessionParams>) -> CallToolResult {
        let name = p.session_id.unwrap_or_else(|| DEFAULT_SESSION.to_string());
        match self.host.interrupt(&name).await {
            Ok(r) => run_result(&r),
            Err(e) => tool_error(e),
        }
    }

    #[tool(description = "Close a session: its shell and every process it started are killed.")]
    async fn session_close(&self, Parameters(p): Parameters<SessionParams>) -> CallToolResult {
        let name = p.session_id.unwrap_or_else(|| DEFAULT_SESSION.to_string());
        match self.host.close(&name).await {
            Ok(()) => CallToolResult::success(vec![ContentBlock::text(format!("closed {name}"))]),
            Err(e) => tool_error(e),
        }
    }

    #[tool(description = "List the open sessions with their targets.")]
    async fn session_list(&self) -> CallToolResult {
        let list = self.host.list();
        let text = if list.is_empty() {
            "no sessions".to_string()
        } else {
            list.iter()
                .map(|s| format!("{} on {}", s.name, s.target))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let mut r = CallToolResult::structured(serde_json::json!({"sessions": list}));
        r.content = vec![ContentBlock::text(text)];
        r
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for ExecKitMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("execkit", env!("CARGO_PKG_VERSION")))
            .with_instructions(
            "execkit runs shell commands in persistent sessions on this host, in Docker containers or over SSH. \
             Use `run` (state persists between calls), `yield_after_secs` + `poll`/`send_input`/`interrupt` for long or interactive commands.",
        )
    }
}

pub fn main(args: McpArgs) -> ExitCode {
    if let Err(code) = crate::check_allow_targets("mcp", &args.allow_target) {
        return code;
    }
    if let Some(addr) = args.http {
        if !addr.ip().is_loopback() {
            // A shell server reachable from the network is remote code
            // execution for anyone who can connect.
            eprintln!(
                "execkit mcp: --http {addr}: only loopback addresses (127.0.0.1, ::1) are served"
            );
            return ExitCode::from(2);
        }
    }
    let (rt, observer, config) = match crate::served_host(
        "mcp",
        &args.journal,
        &args.contain,
        &args.target,
        &args.allow_target,
        args.output_limit,
    ) {
        Ok(setup) => setup,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let mirror =
            crate::client::ConsoleMirror::start(&observer.console, &crate::proto::default_socket());
        let host = Host::new(config, observer);
        let code = if let Some(addr) = args.http {
            let code =
                crate::mcp_http::serve_http(addr, args.token_file.as_deref(), host.clone()).await;
            host.shutdown().await;
            code
        } else {
            serve_stdio(host).await
        };
        mirror.finish(Duration::from_secs(1)).await;
        code
    })
}

/// MCP on stdin/stdout until the client hangs up.
async fn serve_stdio(host: Arc<Host>) -> ExitCode {
    let server = ExecKitMcp::new(host.clone(), Arc::default());
    let transport = crate::mcp_stdio::LineTransport::new(tokio::io::stdin(), tokio::io::stdout());
    let running = match server.serve(transport).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("execkit mcp: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let _ = running.waiting().await;
    host.shutdown().await;
    ExitCode::SUCCESS
}
