//! The internal port's endpoints: `/healthz`, `/readyz`, `/metrics` (no key: they change
//! nothing) and `POST /v1/publish`.
//!
//! A publish is checked in this order, each failure with its own status: API key (401), declared
//! size (413), the in-flight byte budget (429), the body read within `CONTROL_READ_TIMEOUT`
//! (408), its JSON (400), the number of user ids (413), the payload (400), the fan-out size
//! (413); then delivery: 200, or 503 (not delivered: a retry is safe), 504 (outcome unknown),
//! 502 (published for some users only). With history an `Idempotency-Key` header is checked
//! with the body (400), and a repeat of a key answers the first result with
//! `Idempotent-Replayed: true`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER},
};

use super::{
    api_key::ApiKey,
    budget::Budget,
    conns::BusyGuard,
    idempotency,
    publish::{self, PublishError, PublishRequest},
};
use crate::{
    clock,
    fanout::broker::{Broker, BrokerError, Delivered},
    metrics::{Metrics, PublishStatus},
};

/// What the handlers need.
pub struct State {
    /// Rendered at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Publishes for `/v1/publish`.
    pub broker: Broker,
    /// Required `Authorization: Bearer` key for `/v1/publish`, if set.
    pub api_key: Option<ApiKey>,
    /// Caps on one publish request.
    pub limits: PublishLimits,
    /// Body bytes all publish requests in progress share.
    pub in_flight: Arc<Budget>,
    /// Time for a request's headers, and then for its whole body.
    pub read_timeout: Duration,
    /// Set when the process starts draining: `/readyz` fails at once.
    pub draining: Arc<AtomicBool>,
}

/// Caps on one publish request.
#[derive(Clone, Copy, Debug)]
pub struct PublishLimits {
    /// Largest body, and largest payload (`MAX_PUBLISH_BYTES`).
    pub max_body: usize,
    /// Most user ids (`PUBLISH_MAX_USERS`).
    pub max_users: usize,
    /// Most payload bytes x user ids (`PUBLISH_MAX_FANOUT_BYTES`).
    pub max_fanout: usize,
}

type Answer = Response<Full<Bytes>>;

/// Answers one request. `busy` marks the connection as delivering a publish (see
/// [`Conns`](super::conns::Conns)).
pub async fn route(req: Request<Incoming>, state: &State, busy: &Arc<AtomicBool>) -> Answer {
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
        (&Method::POST, "/v1/publish") => {
            let global = state.metrics.global();
            global.publish_requests.fetch_add(1, Ordering::Relaxed);
            let (status, answer) = publish(req, state, busy).await;
            global.inc_publish_response(status);
            answer
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/v1/publish") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed for this path",
        ),
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    }
}

/// `POST /v1/publish`, with the status label for the metrics.
async fn publish(
    req: Request<Incoming>,
    state: &State,
    busy: &Arc<AtomicBool>,
) -> (PublishStatus, Answer) {
    use PublishStatus as S;
    let limits = state.limits;
    if let Some(key) = &state.api_key
        && !key.accepts(req.headers().get(AUTHORIZATION).map(|v| v.as_bytes()))
    {
        return (
            S::Unauthorized,
            error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong Authorization: Bearer key",
            ),
        );
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return (S::TooLarge, body_too_large(limits.max_body));
    }
    // What the body may hold: its declared length, or the most allowed when undeclared.
    let reserve = declared.map_or(limits.max_body, |n| n as usize);
    let Some(_taken) = state.in_flight.try_take(reserve) else {
        let mut answer = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_in_flight",
            "publish requests in progress hold PUBLISH_MAX_INFLIGHT_BYTES; retry shortly",
        );
        answer
            .headers_mut()
            .insert(RETRY_AFTER, "1".parse().expect("valid header"));
        return (S::TooMany, answer);
    };
    let req_key = req.headers().get(idempotency::HEADER).cloned();
    let read = Limited::new(req.into_body(), limits.max_body).collect();
    let body = match tokio::time::timeout(state.read_timeout, read).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
            return (S::TooLarge, body_too_large(limits.max_body));
        }
        Ok(Err(_)) => {
            let answer = error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                "could not read the body",
            );
            return (S::BadRequest, answer);
        }
        Err(_) => {
            state
                .metrics
                .global()
                .inc_control_drop(crate::metrics::ControlDrop::ReadTimeout);
            let mut answer = error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                &format!(
                    "the body did not arrive within {}",
                    humantime::format_duration(state.read_timeout)
                ),
            );
            // The rest of the body may still come: never read it as a next request.
            answer
                .headers_mut()
                .insert(CONNECTION, "close".parse().expect("valid header"));
            return (S::Timeout, answer);
        }
    };
    let key = match idempotency::key(
        req_key.as_ref().map(|v| v.as_bytes()),
        state.broker.history(),
    ) {
        Ok(key) => key,
        Err(err) => {
            let answer = error(StatusCode::BAD_REQUEST, err.kind(), &err.to_string());
            return (S::BadRequest, answer);
        }
    };
    let parsed = publish::parse_publish(&body, limits.max_users);
    drop(body);
    let PublishRequest { user_ids, payload } = match parsed {
        Ok(req) => req,
        Err(err @ PublishError::TooManyUsers { .. }) => {
            let answer = error(StatusCode::PAYLOAD_TOO_LARGE, err.kind(), &err.to_string());
            return (S::TooLarge, answer);
        }
        Err(err) => {
            let answer = error(StatusCode::BAD_REQUEST, err.kind(), &err.to_string());
            return (S::BadRequest, answer);
        }
    };
    let fanout = payload.len().saturating_mul(user_ids.len());
    if fanout > limits.max_fanout {
        let message = format!(
            "{} payload bytes x {} users = {fanout} bytes exceeds PUBLISH_MAX_FANOUT_BYTES ({}); \
             split the users over several requests",
            payload.len(),
            user_ids.len(),
            limits.max_fanout
        );
        let answer = error(StatusCode::PAYLOAD_TOO_LARGE, "fanout_too_large", &message);
        return (S::TooLarge, answer);
    }
    let prepared = match state
        .broker
        .prepare(payload, clock::unix_ms(), limits.max_body, key)
    {
        Ok(prepared) => prepared,
        Err(err) => {
            let answer = error(StatusCode::BAD_REQUEST, err.kind(), &err.to_string());
            return (S::BadRequest, answer);
        }
    };
    // From here the gateway acts on the request: the connection must not be evicted.
    let _busy = BusyGuard::new(busy);
    match state.broker.publish(user_ids, prepared).await {
        Ok(Delivered {
            recipients,
            repeated,
        }) => {
            let mut answer = json(
                StatusCode::OK,
                serde_json::json!({ "recipients": recipients }).to_string(),
            );
            if repeated {
                let global = state.metrics.global();
                global.history_repeats.fetch_add(1, Ordering::Relaxed);
                answer
                    .headers_mut()
                    .insert(idempotency::REPLAYED, "true".parse().expect("valid header"));
            }
            (S::Ok, answer)
        }
        Err(err) => delivery_error(&err),
    }
}

/// The answer to a failed delivery, by what is known of the outcome.
fn delivery_error(err: &BrokerError) -> (PublishStatus, Answer) {
    let (label, message) = (err.kind(), err.to_string());
    match err {
        BrokerError::Overloaded | BrokerError::Unavailable(_) | BrokerError::Redis(_) => (
            PublishStatus::NotDelivered,
            error(StatusCode::SERVICE_UNAVAILABLE, label, &message),
        ),
        BrokerError::Unknown(_) => (
            PublishStatus::Unknown,
            error(StatusCode::GATEWAY_TIMEOUT, label, &message),
        ),
        BrokerError::Partial {
            receivers,
            refused,
            total,
            ..
        } => (
            PublishStatus::Partial,
            json(
                StatusCode::BAD_GATEWAY,
                serde_json::json!({
                    "error": label,
                    "message": message,
                    "recipients": receivers,
                    "refused_users": refused,
                    "users": total,
                })
                .to_string(),
            ),
        ),
    }
}

fn body_too_large(max: usize) -> Answer {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        &format!("the body exceeds {max} bytes"),
    )
}

fn text(status: StatusCode, body: &'static str) -> Answer {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static response parts are valid")
}

fn json(status: StatusCode, body: String) -> Answer {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn error(status: StatusCode, label: &str, message: &str) -> Answer {
    json(
        status,
        serde_json::json!({ "error": label, "message": message }).to_string(),
    )
}
