//! chat4all-gateway: a thread-per-core WebSocket push gateway.
//!
//! # Layout: the two data paths
//!
//! ```text
//!  A client connecting                          A notification going out
//!  -------------------                          ------------------------
//!  TCP accept on any shard's SO_REUSEPORT       POST /v1/publish (control::server, body
//!  listener (shard::accept)                     parsed by control::publish) or Redis
//!        |                                      PUBLISH notifications:{user}
//!  reserve a slot against MAX_CONNECTIONS             |
//!  (shard::shared), read + parse the upgrade    publish API: validate + normalise once into
//!  request (shard::admission ->                 one text frame (proto::payload); Redis: the
//!  proto::upgrade), verify the JWT              subscriber (fanout::redis::subscriber) only
//!  (proto::jwt -> proto::user)                  routes the raw payload
//!        |                                            |
//!  owner shard = hash(user) (fanout::route)     one producer thread (local dispatcher or
//!        |-- other shard: hand the socket and   Redis subscriber): route by user hash
//!        |   its slot over (shard::handoff ->   (fanout::route, fanout::dispatch)
//!        |   shard::inbox -> shard::session)          |
//!        |                                      lock-free SPSC ring + doorbell (net::doorbell)
//!  register (shard::registry), THEN send 101    to the owner shard (shard::inbox); a raw Redis
//!  + {"type":"connected"} (shard::session),     payload is normalised there, once, and only
//!  start the reader (shard::reader: frames      if the user has connections on this shard
//!  proto::frame, messages proto::message)             |
//!                                               every connection of that user on the shard:
//!                                               non-blocking send of the shared frame, else
//!                                               the bounded outbox and a writer task
//!                                               (shard::conn; raw calls in net::sys)
//! ```
//!
//! # Layers
//!
//! Dependencies point down only: `gateway` (wiring) -> `control` -> `shard` -> `fanout` ->
//! `metrics`, `config` -> `proto`, `net`. [`proto`] is pure (no I/O, nothing else from this
//! crate); [`net`] is the thin OS layer and the only module allowed `unsafe`.
//!
//! Each shard is one thread pinned to one core running a monoio runtime (io_uring, or epoll where
//! io_uring is unavailable), and owns its connections outright. Idle connections hold no buffer:
//! they wait for readiness and read into the shard's one scratch buffer.
//!
//! # Public surface
//!
//! Only what the binary, the integration tests, the benchmarks and the fuzz targets need is
//! public: [`config`] and [`gateway`] (the binary and `tests/`), [`metrics`] (the docs test lists
//! its families), [`proto`] (benchmarks, fuzz targets, property tests, and tests that sign
//! tokens). Internals that benchmarks and the conformance echo server drive directly are
//! re-exported from the hidden [`internals`] module; everything else is crate-private, so the
//! compiler reports dead code.

#![deny(unsafe_code, unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub(crate) mod clock;
pub mod config;
pub(crate) mod control;
pub(crate) mod dev;
pub(crate) mod fanout;
pub mod gateway;
pub(crate) mod metrics;
#[allow(unsafe_code)]
pub(crate) mod net;
pub(crate) mod proto;
pub(crate) mod shard;
pub(crate) mod telemetry;

/// Internals for benchmarks, fuzz targets, property tests and test-only binaries; not a stable
/// API. Each line says who needs it.
#[doc(hidden)]
pub mod internals {
    // Benchmarks (bench/dispatch.rs, bench/registry.rs).
    pub use crate::{
        fanout::{Body, Delivery, dispatch::Dispatcher, route::owner_shard},
        metrics::GlobalStats,
        net::doorbell::Doorbell,
        shard::{conn::Conn, registry::Registry},
    };
    // The docs test lists the exported metric families.
    pub use crate::metrics::Metrics;
    // The pure protocol layer: benchmarks, fuzz targets and tests that sign tokens.
    pub use crate::proto::{
        frame::{Decoder, Event, Limits, encode_text, text_header_len},
        jwt::{Algorithm, AuthConfig, AuthError, Authenticator, KeySource, issue_hs256},
        message::{ClientMessage, classify_text, connected_frame},
        payload::normalize_to_frame,
        upgrade::{
            HandshakeConfig, Parsed, parse_request, write_refusal, write_switching_protocols,
        },
    };
}
