//! `execkit swerex`: an HTTP server speaking SWE-ReX's remote-runtime
//! protocol (swe-rex 1.4), so SWE-ReX's `RemoteRuntime` and SWE-agent's
//! `remote` deployment run on execkit sessions on any target. The target
//! needs nothing but `/bin/sh` (and `base64` for `execute` and files).
//!
//! One job per file: `http.rs` serving, the API key, replays; `models.rs`
//! the wire format and exceptions; `bash.rs` bash sessions; `syntax.rs`
//! the syntax check; `execute.rs` one-shot commands; `files.rs` files and
//! the seam a native file transfer plugs into; `multipart.rs` the upload
//! form; `target.rs` the server's pool sessions on the target.

mod bash;
mod execute;
mod files;
mod http;
mod models;
mod multipart;
mod syntax;
mod target;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use execkit_core::host::Host;

use crate::observe::JournalArgs;

/// The environment variable that gives the API key instead of
/// `--auth-token` (the process list shows arguments to every user).
pub const TOKEN_VAR: &str = "EXECKIT_SWEREX_TOKEN";

/// Shortest API key accepted when listening on a non-loopback address.
const MIN_REMOTE_TOKEN: usize = 16;

#[derive(Debug, Args)]
pub struct SwerexArgs {
    /// Where the sessions, `execute` and the files are: `local`,
    /// `local:/bin/sh`, `docker:NAME`, `ssh://user@host`.
    #[arg(long, short = 't', default_value = "local")]
    pub target: String,
    /// Address to listen on. Loopback unless told otherwise; any other
    /// address needs an --auth-token of at least 16 characters, and
    /// whoever reaches it with the key runs commands as this user on the
    /// target: remote code execution, by design.
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    pub host: IpAddr,
    /// Port to listen on (0 picks a free one; the address is printed on
    /// stderr).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The API key every request must carry in `X-API-Key` (SWE-ReX's
    /// `auth_token`). Other users can read arguments in the process list:
    /// on a shared machine give it in EXECKIT_SWEREX_TOKEN instead.
    #[arg(long, value_name = "TOKEN")]
    pub auth_token: Option<String>,
    /// Only targets matching one of these patterns may be used (repeatable;
    /// grammar as for `execkit serve`): --target is checked against them.
    #[arg(long = "allow-target", value_name = "PATTERN")]
    pub allow_target: Vec<String>,
    /// Characters of output kept per command (head + tail; the rest is in
    /// the spool file named in the output).
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub output_limit: usize,
    /// Close sessions idle for this many seconds (0: never, as upstream).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub idle_timeout: u64,
    #[command(flatten)]
    pub journal: JournalArgs,
    /// A floor for every session: a request may ask for more containment,
    /// never less (`sandbox=off` is refused), and only local targets open.
    #[command(flatten)]
    pub contain: crate::contain_args::ContainArgs,
}

/// What every request shares.
pub struct Server {
    sessions: bash::Sessions,
    exec: target::Workers,
    files: target::Workers,
    replay: http::Replay,
    tasks: Arc<http::Tasks>,
    token: Vec<u8>,
}

impl Server {
    /// Whether `key` is the API key (compared in constant time).
    fn admits(&self, key: &[u8]) -> bool {
        let want = &self.token;
        let mut diff = key.len() ^ want.len();
        for (i, w) in want.iter().enumerate() {
            diff |= usize::from(key.get(i).copied().unwrap_or(0) ^ w);
        }
        diff == 0
    }

    /// The `close` route: every session, and the pools' idle sessions.
    async fn close_all(&self) {
        self.sessions.close_all().await;
        self.exec.close_idle().await;
        self.files.close_idle().await;
    }
}

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("execkit swerex: {msg}");
    ExitCode::from(crate::EXIT_USAGE)
}

/// Keeps the buffers of a file's trip (its body, its JSON text, its
/// chunks: several × its size) in the heap for the next request: without
/// it glibc maps each afresh and the kernel faults in and zeroes every
/// page of them, a third of a 10 MB `write_file`'s time.
fn keep_big_buffers() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets tunables of glibc's allocator, before any
    // thread of ours allocates.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

pub fn main(args: SwerexArgs) -> ExitCode {
    keep_big_buffers();
    if let Err(code) = crate::check_allow_targets("swerex", &args.allow_target) {
        return code;
    }
    let token = match args
        .auth_token
        .clone()
        .or_else(|| std::env::var(TOKEN_VAR).ok())
    {
        Some(t) if !t.is_empty() => t,
        _ => return usage(format!("--auth-token TOKEN (or {TOKEN_VAR}) is required")),
    };
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return usage("the auth token is printable ASCII without spaces");
    }
    if !args.host.is_loopback() && token.len() < MIN_REMOTE_TOKEN {
        return usage(format!(
            "--host {}: a non-loopback address needs an auth token of at least {MIN_REMOTE_TOKEN} characters (whoever has it runs commands here)",
            args.host
        ));
    }
    let idle = if args.idle_timeout == 0 {
        Duration::from_secs_f64(crate::duration::MAX_SECS)
    } else {
        match crate::duration::secs("--idle-timeout", args.idle_timeout as f64) {
            Ok(d) => d,
            Err(e) => return usage(e),
        }
    };
    let (rt, observer, mut config) = match crate::served_host(
        "swerex",
        &args.journal,
        &args.contain,
        &args.target,
        &args.allow_target,
        args.output_limit,
    ) {
        Ok(setup) => setup,
        Err(code) => return code,
    };
    config.idle_timeout = idle;
    let session = config.session.clone();
    let code = rt.block_on(async move {
        let host = Host::new(config, observer.clone());
        // Held to the floor: the pool sessions and native file transfer
        // use the contained form (a contained local target has none).
        let target = match host.hold_target(&args.target, None) {
            Ok(t) => t,
            Err(e) => return usage(e),
        };
        let addr = SocketAddr::new(args.host, args.port);
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("execkit swerex: cannot listen on {addr}: {e}");
                return ExitCode::from(1);
            }
        };
        let bound = listener.local_addr().unwrap_or(addr);
        let mirror =
            crate::client::ConsoleMirror::start(&observer.console, &crate::proto::default_socket());
        let mut exec_config = session.clone();
        exec_config.observer = Some(observer.clone());
        let server = Arc::new(Server {
            sessions: bash::Sessions::new(host.clone()),
            exec: target::Workers::new(&target, exec_config, "execute"),
            // File contents stay out of the journal and the console.
            files: target::Workers::new(&target, session, "files"),
            replay: http::Replay::default(),
            tasks: Arc::default(),
            token: token.into_bytes(),
        });
        // Before the line that says it is ready: SIGTERM is taken from then on.
        let stop = crate::exec::interrupted();
        eprintln!(
            "execkit swerex: listening on http://{bound} (pid {}), target {}",
            std::process::id(),
            target
        );
        http::serve(listener, server.clone(), stop).await;
        eprintln!(
            "execkit swerex: shutting down, closing {} session(s)",
            host.list().len()
        );
        server.exec.stop_lending();
        server.files.stop_lending();
        server.tasks.stop_all().await;
        host.shutdown().await;
        server.exec.shutdown().await;
        server.files.shutdown().await;
        mirror.finish(Duration::from_secs(1)).await;
        ExitCode::SUCCESS
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    code
}
