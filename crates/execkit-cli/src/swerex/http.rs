//! HTTP for `execkit swerex`: hyper on the listening socket, the API key
//! on every route, `X-Request-ID` replays, and each request's work on a
//! task of its own — a client that hangs up mid-request does not cancel
//! it, so its retry (same `X-Request-ID`) gets the result.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::models::{self, Action, Fail};
use super::Server;

/// Largest JSON body (a `write_file` carries the whole file).
const MAX_JSON_BODY: usize = 1 << 30;

/// A response as sent and as replayed.
#[derive(Debug, Clone)]
pub struct Stored {
    status: StatusCode,
    body: Bytes,
}

impl Stored {
    fn json(status: StatusCode, v: &Value) -> Stored {
        Stored {
            status,
            // `to_vec`, not `to_string`: a 10 MB file's text is not
            // pushed through `fmt::Write` piece by piece.
            body: Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
        }
    }

    fn to_response(&self) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(self.body.clone()));
        *r.status_mut() = self.status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        r
    }
}

/// The last `X-Request-ID` and its response (upstream keeps exactly one):
/// a request carrying it again gets that response — once it is there, if
/// the first is still being answered.
#[derive(Default)]
pub struct Replay {
    last: Mutex<Option<(String, watch::Receiver<Option<Stored>>)>>,
}

enum Claim {
    /// Answered before: the same answer.
    Answered(Stored),
    /// Being answered: wait for it.
    Pending(watch::Receiver<Option<Stored>>),
    /// New: answer it, and keep the answer.
    Mine(watch::Sender<Option<Stored>>),
}

impl Replay {
    fn claim(&self, id: &str) -> Claim {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, rx)) = &*last {
            if seen == id {
                if let Some(s) = rx.borrow().clone() {
                    return Claim::Answered(s);
                }
                return Claim::Pending(rx.clone());
            }
        }
        let (tx, rx) = watch::channel(None);
        *last = Some((id.to_string(), rx));
        Claim::Mine(tx)
    }
}

/// The request tasks in flight, so a shutdown can stop them.
#[derive(Default)]
pub struct Tasks {
    next: AtomicU64,
    running: Mutex<HashMap<u64, AbortHandle>>,
}

impl Tasks {
    /// Runs `fut` on a task of its own; `None` if it was stopped.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let tasks = self.clone();
        // Listed before it can end (it takes the lock to leave the list).
        let handle = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let handle = tokio::spawn(async move {
                let out = fut.await;
                tasks
                    .running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                out
            });
            running.insert(id, handle.abort_handle());
            handle
        };
        handle.await.ok()
    }

    /// Stops every task in flight and waits until they are gone.
    pub async fn stop_all(&self) {
        let all: Vec<AbortHandle> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, h)| h)
            .collect();
        for h in &all {
            h.abort();
        }
        for h in all {
            while !h.is_finished() {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Serves `listener` until `stop` resolves.
pub async fn serve(listener: tokio::net::TcpListener, server: Arc<Server>, stop: impl Future) {
    let me = crate::proto::nix_uid();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((stream, peer)) = conn else {
                    // Out of descriptors: let some close.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                // A loopback connection from another user's socket is
                // refused whatever it sends: loopback is no boundary on a
                // shared machine, and a key can leak (the process list).
                let stranger = stream
                    .local_addr()
                    .ok()
                    .and_then(|local| crate::http_auth::loopback_peer_uid(local, peer))
                    .filter(|&uid| uid != me);
                let server = server.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        answer(server.clone(), stranger, req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            _ = &mut stop => break,
        }
    }
}

/// The routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Root,
    IsAlive,
    CreateSession,
    RunInSession,
    CloseSession,
    Execute,
    ReadFile,
    WriteFile,
    Upload,
    Close,
}

fn route(method: &Method, path: &str) -> Result<Route, Stored> {
    let (want, r) = match path {
        "/" => (Method::GET, Route::Root),
        "/is_alive" => (Method::GET, Route::IsAlive),
        "/create_session" => (Method::POST, Route::CreateSession),
        "/run_in_session" => (Method::POST, Route::RunInSession),
        "/close_session" => (Method::POST, Route::CloseSession),
        "/execute" => (Method::POST, Route::Execute),
        "/read_file" => (Method::POST, Route::ReadFile),
        "/write_file" => (Method::POST, Route::WriteFile),
        "/upload" => (Method::POST, Route::Upload),
        "/close" => (Method::POST, Route::Close),
        _ => {
            return Err(Stored::json(
                StatusCode::NOT_FOUND,
                &json!({"detail": "Not Found"}),
            ))
        }
    };
    if *method != want {
        return Err(Stored::json(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"detail": "Method Not Allowed"}),
        ));
    }
    Ok(r)
}

/// One HTTP request.
async fn answer(
    server: Arc<Server>,
    stranger: Option<u32>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(uid) = stranger {
        return Ok(Stored::json(
            StatusCode::FORBIDDEN,
            &json!({"detail": format!("execkit swerex serves its own user only; this connection is uid {uid}'s")}),
        )
        .to_response());
    }
    // The key before anything else (upstream replays before it checks).
    match req.headers().get("x-api-key") {
        None => {
            return Ok(Stored::json(
                StatusCode::FORBIDDEN,
                &json!({"detail": "Not authenticated"}),
            )
            .to_response())
        }
        Some(k) if !server.admits(k.as_bytes()) => {
            return Ok(Stored::json(
                StatusCode::UNAUTHORIZED,
                &json!({"detail": "Invalid API Key"}),
            )
            .to_response())
        }
        Some(_) => {}
    }
    let r = match route(req.method(), req.uri().path()) {
        Ok(r) => r,
        Err(refusal) => return Ok(refusal.to_response()),
    };
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let keep = match id.as_deref().map(|id| server.replay.claim(id)) {
        Some(Claim::Answered(s)) => return Ok(s.to_response()),
        Some(Claim::Pending(mut rx)) => {
            let s = match rx.wait_for(Option::is_some).await {
                Ok(s) => s.clone().expect("waited for it"),
                Err(_) => stopped(),
            };
            return Ok(s.to_response());
        }
        Some(Claim::Mine(tx)) => Some(tx),
        None => None,
    };
    let work = server.clone();
    let stored = server
        .tasks
        .run(async move { dispatch(&work, r, req).await })
        .await
        .unwrap_or_else(stopped);
    if let Some(tx) = keep {
        let _ = tx.send(Some(stored.clone()));
    }
    Ok(stored.to_response())
}

fn stopped() -> Stored {
    Stored::json(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"detail": "the server is shutting down"}),
    )
}

/// A route's answer.
async fn dispatch(server: &Server, r: Route, req: Request<Incoming>) -> Stored {
    let result = match r {
        Route::Root => Ok(
            json!({"message": "execkit swerex: the SWE-ReX remote runtime API on execkit sessions"}),
        ),
        Route::IsAlive => Ok(json!({"is_alive": true, "message": ""})),
        Route::Upload => {
            let ct = req
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            super::files::upload(&server.files, &ct, req.into_body()).await
        }
        Route::Close => {
            server.close_all().await;
            Ok(json!({}))
        }
        _ => match json_body(req).await {
            Ok(v) => json_route(server, r, v).await,
            Err(f) => Err(f),
        },
    };
    match result {
        Ok(v) => Stored::json(StatusCode::OK, &v),
        Err(Fail::Invalid(v)) => Stored::json(StatusCode::UNPROCESSABLE_ENTITY, &v),
        Err(Fail::Raised(e)) => Stored::json(
            StatusCode::from_u16(511).expect("511 is a status"),
            &e.to_json(),
        ),
    }
}

async fn json_body(req: Request<Incoming>) -> Result<Value, Fail> {
    let bytes = match Limited::new(req.into_body(), MAX_JSON_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return Err(Fail::invalid(&["body"], &format!("body not read: {e}"))),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| Fail::invalid(&["body"], &format!("JSON decode error: {e}")))
}

async fn json_route(server: &Server, r: Route, v: Value) -> Result<Value, Fail> {
    Ok(match r {
        Route::CreateSession => {
            let output = server.sessions.create(models::parse(v)?).await?;
            json!({"output": output, "session_type": "bash"})
        }
        Route::RunInSession => match Action::parse(v)? {
            Action::Bash(a) => server.sessions.run(a).await?.to_json(),
            Action::Interrupt(a) => server.sessions.interrupt(a).await?.to_json(),
        },
        Route::CloseSession => {
            let req: models::CloseSession = models::parse(v)?;
            server.sessions.close(&req.session).await?;
            json!({"session_type": "bash"})
        }
        Route::Execute => super::execute::execute(&server.exec, models::parse(v)?).await?,
        Route::ReadFile => super::files::read_file(&server.files, models::parse(v)?).await?,
        Route::WriteFile => super::files::write_file(&server.files, models::parse(v)?).await?,
        Route::Root | Route::IsAlive | Route::Upload | Route::Close => {
            unreachable!("answered in dispatch")
        }
    })
}
