//! `execkit mcp --http`: the MCP server over streamable HTTP (rmcp's tower
//! service on hyper) at `/mcp`, loopback only, for this user only, behind a
//! bearer token (`http_auth.rs`).

use std::process::ExitCode;
use std::sync::Arc;

use execkit_core::Host;
use hyper_util::rt::TokioIo;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use crate::mcp::{ExecKitMcp, Names};

/// MCP over streamable HTTP (rmcp's tower service on hyper) at `/mcp`,
/// until SIGTERM or SIGINT.
pub(crate) async fn serve_http(
    addr: std::net::SocketAddr,
    token_file: Option<&std::path::Path>,
    host: Arc<Host>,
) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("execkit mcp: cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    let default_file =
        crate::proto::default_socket().with_file_name(format!("mcp-{}.token", bound.port()));
    let token = match crate::http_auth::Token::load(token_file, &default_file) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            eprintln!("execkit mcp: {e}");
            return ExitCode::from(2);
        }
    };
    let me = crate::proto::nix_uid();
    // rmcp checks the Host header against loopback names (DNS rebinding).
    let config = StreamableHttpServerConfig::default();
    let max_body = config.max_request_body_bytes;
    let stop = config.cancellation_token.clone();
    let factory_host = host.clone();
    let names = Arc::<Names>::default();
    let service = StreamableHttpService::new(
        move || Ok(ExecKitMcp::new(factory_host.clone(), names.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let stop_signal = crate::exec::interrupted();
    tokio::pin!(stop_signal);
    let told = match &token.path {
        Some(p) => format!("bearer token in {}", p.display()),
        None => format!("bearer token from {}", crate::http_auth::TOKEN_VAR),
    };
    eprintln!(
        "execkit mcp: listening on http://{bound}/mcp (pid {}); {told}",
        std::process::id()
    );
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((stream, peer)) = conn else { continue };
                // Another user's socket is refused whatever it sends.
                let stranger = stream
                    .local_addr()
                    .ok()
                    .and_then(|local| crate::http_auth::loopback_peer_uid(local, peer))
                    .filter(|&uid| uid != me);
                let service = service.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        answer(service.clone(), token.clone(), stranger, max_body, req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
            _ = &mut stop_signal => break,
        }
    }
    stop.cancel();
    token.remove_file();
    eprintln!(
        "execkit mcp: shutting down, closing {} session(s)",
        host.list().len()
    );
    ExitCode::SUCCESS
}

/// rmcp's service over HTTP, as [`serve_http`] builds it.
type McpService = StreamableHttpService<ExecKitMcp, LocalSessionManager>;

/// One HTTP request: another user's connection is refused (403), a missing
/// or wrong bearer token too (401), a path other than `/mcp` is 404, and a
/// POST body must be JSON (else JSON-RPC's -32700) before rmcp sees it.
async fn answer(
    mut service: McpService,
    token: Arc<crate::http_auth::Token>,
    stranger: Option<u32>,
    max_body: usize,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<HttpResponse, std::convert::Infallible> {
    use tower_service::Service as _;
    if let Some(uid) = stranger {
        return Ok(refused(
            hyper::StatusCode::FORBIDDEN,
            &format!("execkit mcp serves its own user only; this connection is uid {uid}'s\n"),
        ));
    }
    let auth = req.headers().get(hyper::header::AUTHORIZATION);
    if !token.admits(auth.map(|v| v.as_bytes())) {
        let mut r = refused(
            hyper::StatusCode::UNAUTHORIZED,
            "execkit mcp needs `Authorization: Bearer TOKEN` (see the start-up line for where the token is)\n",
        );
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return Ok(r);
    }
    if req.uri().path() != "/mcp" {
        return Ok(not_found());
    }
    if req.method() != hyper::Method::POST {
        return service.call(req).await;
    }
    // rmcp answers a body that is not JSON with a plain-text 415; JSON-RPC
    // says -32700.
    let (parts, body) = req.into_parts();
    let body = match checked_body(body, max_body).await {
        Ok(b) => b,
        Err(refusal) => return Ok(refusal),
    };
    service.call(hyper::Request::from_parts(parts, body)).await
}

type HttpResponse =
    hyper::Response<http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>>;

/// A POST body read whole (at most `max` bytes) for rmcp, or the answer
/// when it is not JSON: 400 with JSON-RPC's parse error (-32700).
async fn checked_body(
    body: hyper::body::Incoming,
    max: usize,
) -> Result<http_body_util::Full<bytes::Bytes>, HttpResponse> {
    use http_body_util::BodyExt as _;
    let refuse = |status: hyper::StatusCode, code: i64, message: String| {
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "error": {"code": code, "message": message},
        });
        let mut r = hyper::Response::new(
            http_body_util::Full::new(bytes::Bytes::from(body.to_string())).boxed(),
        );
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        r
    };
    let bytes = match http_body_util::Limited::new(body, max).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return Err(refuse(
                hyper::StatusCode::PAYLOAD_TOO_LARGE,
                -32600,
                format!("request body not read: {e}"),
            ))
        }
    };
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
        return Err(refuse(
            hyper::StatusCode::BAD_REQUEST,
            -32700,
            format!("parse error: {e}"),
        ));
    }
    Ok(http_body_util::Full::new(bytes))
}

fn not_found() -> HttpResponse {
    refused(
        hyper::StatusCode::NOT_FOUND,
        "execkit mcp serves /mcp only\n",
    )
}

fn refused(status: hyper::StatusCode, text: &str) -> HttpResponse {
    use http_body_util::BodyExt as _;
    let mut r = hyper::Response::new(
        http_body_util::Full::new(bytes::Bytes::from(text.to_string())).boxed(),
    );
    *r.status_mut() = status;
    r
}
