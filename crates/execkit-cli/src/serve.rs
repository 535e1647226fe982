//! `execkit serve`: the per-user daemon holding named sessions behind a Unix
//! socket. The directory is 0700, the socket 0600, and every connection's
//! peer uid is checked (SO_PEERCRED): another user is refused. SIGTERM or
//! SIGINT closes every session with cleanup.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use execkit_core::console::ConsoleEvent;
use execkit_core::host::{Host, HostConfig};
use execkit_core::{RunOptions, SessionConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::observe::JournalArgs;
use crate::proto::{self, Envelope, Request, Response, MAX_REQUEST};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Socket path [default: ${XDG_RUNTIME_DIR:-/tmp/execkit-$UID}/execkit.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Target for sessions opened without one.
    #[arg(long, short = 't', default_value = "local")]
    pub target: String,
    /// Only targets matching one of these globs may be opened (repeatable).
    #[arg(long = "allow-target", value_name = "PATTERN")]
    pub allow_target: Vec<String>,
    /// Close sessions idle for this many seconds.
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    pub idle_timeout: u64,
    /// Characters of output kept per command before capping.
    #[arg(long, default_value_t = 30_000, value_name = "N")]
    pub output_limit: usize,
    #[command(flatten)]
    pub journal: JournalArgs,
}

pub fn main(args: ServeArgs) -> ExitCode {
    let rt = match crate::runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("execkit serve: {e}");
            ExitCode::from(1)
        }
    }
}

/// Prepares the socket's directory (0700, ours) and clears a stale socket.
fn prepare_socket(path: &Path) -> Result<(), String> {
    let dir = path.parent().ok_or("the socket path has no directory")?;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if meta.uid() != proto::nix_uid() {
        return Err(format!(
            "{} belongs to another user; refusing to serve there",
            dir.display()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot make {} private: {e}", dir.display()))?;
    }
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(format!(
                    "already running (socket {} answers)",
                    path.display()
                ))
            }
            Err(_) => std::fs::remove_file(path)
                .map_err(|e| format!("cannot remove the stale socket {}: {e}", path.display()))?,
        }
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let path = args.socket.clone().unwrap_or_else(proto::default_socket);
    prepare_socket(&path)?;
    let observer = args.journal.observer()?;
    let mut session = SessionConfig::default();
    session.output_limit = args.output_limit;
    let mut config = HostConfig::default();
    config.default_target = args.target.clone();
    config.allow_targets = args.allow_target.clone();
    config.idle_timeout = Duration::from_secs(args.idle_timeout.max(1));
    config.session = session;
    let host = Host::new(config, observer);

    let listener = UnixListener::bind(&path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    eprintln!(
        "execkit serve: listening on {} (pid {})",
        path.display(),
        std::process::id()
    );

    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let me = proto::nix_uid();
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let host = host.clone();
                tokio::spawn(async move { connection(stream, host, me).await });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    eprintln!(
        "execkit serve: shutting down, closing {} session(s)",
        host.list().len()
    );
    host.shutdown().await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn connection(stream: UnixStream, host: Arc<Host>, me: u32) {
    let peer = stream.peer_cred().map(|c| c.uid());
    let (read, mut write) = stream.into_split();
    if peer.as_ref().ok() != Some(&me) {
        let who = peer.map_or("unknown".to_string(), |u| u.to_string());
        let _ = send(
            &mut write,
            &refuse(
                Value::Null,
                format!("permission denied: uid {who} is not the owner of this server"),
            ),
        )
        .await;
        return;
    }
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line(&mut reader, &mut line).await {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => {
                let _ = send(&mut write, &refuse(Value::Null, e)).await;
                return;
            }
        }
        let env: Envelope = match serde_json::from_slice(&line) {
            Ok(e) => e,
            Err(e) => {
                let id = serde_json::from_slice::<Value>(&line)
                    .ok()
                    .and_then(|v| v.get("id").cloned())
                    .unwrap_or(Value::Null);
                if send(&mut write, &refuse(id, format!("malformed request: {e}")))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
        };
        if let Request::Watch = env.request {
            if send(&mut write, &accept(env.id, json!({"watching": true})))
                .await
                .is_ok()
            {
                watch(&host, &mut write).await;
            }
            return;
        }
        if let Request::Publish = env.request {
            if send(&mut write, &accept(env.id, json!({"publishing": true})))
                .await
                .is_ok()
            {
                relay(&host, reader).await;
            }
            return;
        }
        let resp = handle(&host, env).await;
        if send(&mut write, &resp).await.is_err() {
            return;
        }
    }
}

/// Reads one line (without the newline) up to MAX_REQUEST; false at EOF.
async fn read_line(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    line: &mut Vec<u8>,
) -> Result<bool, String> {
    loop {
        let buf = reader.fill_buf().await.map_err(|e| e.to_string())?;
        if buf.is_empty() {
            return Ok(!line.is_empty());
        }
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&buf[..i]);
            reader.consume(i + 1);
            return Ok(true);
        }
        let n = buf.len();
        line.extend_from_slice(buf);
        reader.consume(n);
        if line.len() > MAX_REQUEST {
            return Err(format!("request longer than {MAX_REQUEST} bytes"));
        }
    }
}

/// Mirrors the console events a publisher sends (one JSON line each) to
/// this server's watchers, until it hangs up. A line that is not an event
/// ends the stream: the publisher is ours (same uid) but confused.
async fn relay(host: &Host, mut reader: BufReader<tokio::net::unix::OwnedReadHalf>) {
    let console = &host.observer().console;
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line(&mut reader, &mut line).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
        match serde_json::from_slice::<ConsoleEvent>(&line) {
            Ok(ev) => console.publish(ev),
            Err(_) => return,
        }
    }
}

async fn watch(host: &Host, write: &mut tokio::net::unix::OwnedWriteHalf) {
    let mut rx = host.observer().console.subscribe();
    loop {
        match rx.recv().await {
            Ok(ev) => {
                let mut line = serde_json::to_vec(&*ev).unwrap_or_default();
                line.push(b'\n');
                if write.write_all(&line).await.is_err() {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                let note = format!("{{\"kind\":\"lagged\",\"skipped\":{n}}}\n");
                if write.write_all(note.as_bytes()).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

fn secs(v: Option<f64>) -> Result<Option<Duration>, String> {
    match v {
        None => Ok(None),
        Some(s) if s.is_finite() && s >= 0.0 => Ok((s > 0.0).then(|| Duration::from_secs_f64(s))),
        Some(s) => Err(format!("invalid number of seconds: {s}")),
    }
}

async fn handle(host: &Arc<Host>, env: Envelope) -> Response {
    let id = env.id;
    let result: Result<Value, String> = async {
        match env.request {
            Request::Ping => {
                Ok(json!({"pid": std::process::id(), "version": env!("CARGO_PKG_VERSION")}))
            }
            Request::Open(req) => host
                .open(req)
                .await
                .map(|i| to_value(&i))
                .map_err(|e| e.to_string()),
            Request::Run {
                session,
                command,
                timeout_secs,
                yield_after_secs,
            } => {
                let mut opts = RunOptions::default();
                opts.timeout = secs(timeout_secs)?;
                opts.yield_after = secs(yield_after_secs)?;
                host.run(&session, &command, opts)
                    .await
                    .map(|r| to_value(&r))
                    .map_err(|e| e.to_string())
            }
            Request::Poll { session, wait_secs } => {
                let wait = secs(wait_secs)?.unwrap_or(Duration::ZERO);
                host.poll(&session, wait)
                    .await
                    .map(|r| to_value(&r))
                    .map_err(|e| e.to_string())
            }
            Request::Input { session, text } => host
                .send_input(&session, &text)
                .await
                .map(|()| json!({}))
                .map_err(|e| e.to_string()),
            Request::Interrupt { session } => host
                .interrupt(&session)
                .await
                .map(|r| to_value(&r))
                .map_err(|e| e.to_string()),
            Request::Close { session } => host
                .close(&session)
                .await
                .map(|()| json!({}))
                .map_err(|e| e.to_string()),
            Request::List => Ok(to_value(&host.list())),
            Request::Watch | Request::Publish => {
                Err("watch and publish take the whole connection; send them first".into())
            }
        }
    }
    .await;
    match result {
        Ok(v) => accept(id, v),
        Err(e) => refuse(id, e),
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn accept(id: Value, result: Value) -> Response {
    Response {
        id,
        ok: true,
        result: Some(result),
        error: None,
    }
}

fn refuse(id: Value, error: String) -> Response {
    Response {
        id,
        ok: false,
        result: None,
        error: Some(error),
    }
}

async fn send(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    resp: &Response,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(resp).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}
