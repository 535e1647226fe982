//! One request of the serve protocol answered from the `Host`: every
//! refusal carries its kind (`HostError::code`) for the client to act on.

use std::sync::Arc;
use std::time::Duration;

use execkit_core::host::{Host, HostError};
use execkit_core::RunOptions;
use serde_json::{json, Value};

use crate::proto::{self, Envelope, Request, Response};

pub(super) async fn handle(host: &Arc<Host>, env: Envelope) -> Response {
    let id = env.id;
    // Which failure it was, for the client to act on.
    let mut kind = None;
    let mut note = |e: &HostError| {
        kind = Some(e.code());
        e.to_string()
    };
    let result: Result<Value, String> = async {
        match env.request {
            Request::Ping => {
                Ok(json!({"pid": std::process::id(), "version": env!("CARGO_PKG_VERSION")}))
            }
            Request::Open(req) => host
                .open(req)
                .await
                .map(|i| to_value(&i))
                .map_err(|e| note(&e)),
            Request::Run {
                session,
                command,
                timeout_secs,
                yield_after_secs,
            } => {
                let mut opts = RunOptions::default();
                opts.timeout = proto::seconds("timeout_secs", timeout_secs)?;
                opts.yield_after = proto::seconds("yield_after_secs", yield_after_secs)?;
                host.run(&session, &command, opts)
                    .await
                    .map(|r| to_value(&r))
                    .map_err(|e| note(&e))
            }
            Request::Poll { session, wait_secs } => {
                let wait = proto::seconds("wait_secs", wait_secs)?.unwrap_or(Duration::ZERO);
                host.poll(&session, wait)
                    .await
                    .map(|r| to_value(&r))
                    .map_err(|e| note(&e))
            }
            Request::Input { session, text } => host
                .send_input(&session, &text)
                .await
                .map(|()| json!({}))
                .map_err(|e| note(&e)),
            Request::Interrupt { session } => host
                .interrupt(&session)
                .await
                .map(|r| to_value(&r))
                .map_err(|e| note(&e)),
            Request::Close { session } => host
                .close(&session)
                .await
                .map(|()| json!({}))
                .map_err(|e| note(&e)),
            Request::List => Ok(to_value(&host.list())),
            Request::Watch | Request::Publish | Request::Attach { .. } => {
                Err("watch, publish and attach take the whole connection; send them first".into())
            }
        }
    }
    .await;
    match result {
        Ok(v) => accept(id, v),
        Err(e) => Response {
            kind: kind.map(str::to_string),
            ..refuse(id, e)
        },
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

pub(super) fn accept(id: Value, result: Value) -> Response {
    Response {
        id,
        ok: true,
        result: Some(result),
        error: None,
        kind: None,
    }
}

pub(super) fn refuse(id: Value, error: String) -> Response {
    Response {
        id,
        ok: false,
        result: None,
        error: Some(error),
        kind: None,
    }
}
