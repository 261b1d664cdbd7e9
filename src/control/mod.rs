//! The control plane on the internal port (`METRICS_PORT`): `/healthz`, `/readyz`, `/metrics`
//! and `POST /v1/publish`. It runs on its own thread with a small tokio runtime and hyper: it is
//! not on the per-connection hot path, so it uses the most proven HTTP stack rather than a
//! hand-written one.

pub mod publish;
pub mod server;
