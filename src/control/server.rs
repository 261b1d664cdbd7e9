//! HTTP server of the control plane.

use std::{
    convert::Infallible,
    net::TcpListener as StdListener,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::publish::{self, PublishRequest};
use crate::{clock, fanout::broker::Broker, metrics::Metrics, proto::payload};

/// Time a client gets to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers need.
pub struct State {
    /// Rendered at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Publishes for `/v1/publish`.
    pub broker: Broker,
    /// Required `Authorization: Bearer` value for `/v1/publish`, if set.
    pub api_key: Option<String>,
    /// Largest accepted publish body.
    pub max_publish_bytes: usize,
    /// Set when the process starts draining: `/readyz` fails at once.
    pub draining: Arc<AtomicBool>,
}

/// Starts the control-plane thread serving `listener`.
pub fn spawn(listener: StdListener, state: State) -> std::io::Result<thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    thread::Builder::new()
        .name("control".into())
        .spawn(move || runtime.block_on(serve(listener, Arc::new(state))))
}

async fn serve(listener: StdListener, state: Arc<State>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(err) => {
            tracing::error!(error = %err, "control listener unusable");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "control accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(req, &state).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn route(req: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if state.draining.load(Ordering::Acquire) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if !state.broker.is_ready() {
                text(StatusCode::SERVICE_UNAVAILABLE, "broker not ready\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        (&Method::GET, "/metrics") => Response::builder()
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)
            .body(Full::new(Bytes::from(state.metrics.render())))
            .expect("static response parts are valid"),
        (&Method::POST, "/v1/publish") => publish_handler(req, state).await,
        (_, "/healthz" | "/readyz" | "/metrics" | "/v1/publish") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed for this path",
        ),
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    }
}

async fn publish_handler(req: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    state
        .metrics
        .global()
        .publish_requests
        .fetch_add(1, Ordering::Relaxed);
    if let Some(key) = &state.api_key {
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong Authorization: Bearer key",
            );
        }
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_publish_bytes as u64) {
        return too_large(state.max_publish_bytes);
    }
    let body = match Limited::new(req.into_body(), state.max_publish_bytes)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return too_large(state.max_publish_bytes);
        }
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                "could not read the body",
            );
        }
    };
    let PublishRequest { user_ids, payload } = match publish::parse_publish(&body) {
        Ok(req) => req,
        Err(err) => return error(StatusCode::BAD_REQUEST, err.kind(), &err.to_string()),
    };
    let frame =
        match payload::normalize_to_frame(&payload, clock::unix_ms(), state.max_publish_bytes) {
            Ok(frame) => frame,
            Err(err) => return error(StatusCode::BAD_REQUEST, err.kind(), &err.to_string()),
        };
    match state.broker.publish(user_ids, &payload, frame).await {
        Ok(recipients) => json(
            StatusCode::OK,
            serde_json::json!({ "recipients": recipients }).to_string(),
        ),
        Err(err) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            err.kind(),
            &err.to_string(),
        ),
    }
}

fn too_large(max: usize) -> Response<Full<Bytes>> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        &format!("the body exceeds {max} bytes"),
    )
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static response parts are valid")
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn error(status: StatusCode, label: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({ "error": label, "message": message }).to_string(),
    )
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(constant_time_eq(b"", b""));
    }
}
