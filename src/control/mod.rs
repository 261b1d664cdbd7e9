//! The control plane on the internal port (`METRICS_PORT`): `/healthz`, `/readyz`, `/metrics`
//! and `POST /v1/publish`. It runs on its own thread with a small tokio runtime and hyper: it is
//! not on the per-connection hot path, so it uses the most proven HTTP stack rather than a
//! hand-written one.
//!
//! Secure by default: it binds loopback unless `METRICS_BIND_HOST` says otherwise, and then only
//! with a `PUBLISH_API_KEY` (`config` refuses to start without one). It cannot be exhausted: a
//! bounded connection table, read timeouts, and a byte budget for publish bodies.
//!
//! `server` accepts and runs connections; `conns` decides which may stay open; `routes` answers
//! requests; `publish` parses publish bodies (pure); `api_key` and `budget` are the key check and
//! the in-flight byte budget; `idempotency` checks the `Idempotency-Key` header.

pub mod api_key;
pub mod budget;
pub mod conns;
pub mod idempotency;
pub mod publish;
pub mod routes;
pub mod server;
