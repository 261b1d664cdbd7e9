//! chat4all-gateway: a thread-per-core WebSocket push gateway.
//!
//! # Layout: the two data paths
//!
//! ```text
//!  A client connecting                          A notification going out
//!  -------------------                          ------------------------
//!  TCP accept on any shard's SO_REUSEPORT       POST /v1/publish (control::routes, body
//!  listener (shard::accept)                     parsed by control::publish) or Redis
//!        |                                      PUBLISH notifications:{user}
//!  count the address's handshakes                     |
//!  (shard::handshake_limit), reserve a slot     publish API, single node: validate +
//!  against MAX_CONNECTIONS (shard::shared),     normalise once into one text frame
//!  read + parse the upgrade request             (fanout::broker -> proto::payload); with
//!  (shard::admission -> proto::upgrade),        Redis: one EVALSHA fans the raw payload out
//!  verify the JWT (proto::jwt ->                (fanout::redis::publisher), and the
//!  proto::user; the verifier is swapped on      subscriber (fanout::redis::subscriber) only
//!  SIGHUP, gateway::keys)                       routes the raw payload
//!        |                                            |
//!  owner shard = hash(user) (fanout::route)     one producer thread (local dispatcher or
//!        |-- other shard: hand the socket and   Redis subscriber): route by user hash
//!        |   its slot over (shard::handoff ->   (fanout::route, fanout::dispatch)
//!        |   shard::inbox -> shard::session)          |
//!        |                                      lock-free SPSC ring + doorbell (net::doorbell)
//!  per-user Redis mode: wait for the user's     to the owner shard (shard::inbox); a raw Redis
//!  channel (shard::subscription), then          payload is normalised there, once, and only
//!  register (shard::registry), THEN send 101    if the user has connections on this shard
//!  + {"type":"connected"} (shard::session),           |
//!  start the reader (shard::reader: frames      every connection of that user on the shard:
//!  proto::frame, messages proto::message)       non-blocking send of the shared frame, else
//!                                               the bounded outbox and a writer task
//!                                               (shard::conn: decisions in conn::state,
//!                                               raw calls in net::sys)
//! ```
//!
//! # Layers
//!
//! Dependencies point down only: `gateway` (wiring) -> `control` -> `shard` -> `fanout` ->
//! `metrics`, `config`, `telemetry` -> `proto`, `net`, `reload`. [`proto`] is pure (no I/O,
//! nothing else from this crate); [`net`] is the thin OS layer and the only module allowed
//! `unsafe`; `reload` is the SIGHUP contract any layer can implement.
//!
//! Each shard is one thread pinned to one core running a monoio runtime (io_uring, or epoll where
//! io_uring is unavailable), and owns its connections outright. Idle connections hold no buffer:
//! they wait for readiness and read into the shard's one scratch buffer. Every loop fed from
//! outside (inbox, readers, accept) works on a budget per turn and then waits for a turn of the
//! driver ([`net::turn`]), so timers and I/O keep running under any load.
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
pub(crate) mod reload;
pub(crate) mod shard;
pub(crate) mod telemetry;
pub(crate) mod tls;

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
    // The conformance echo server (examples/autobahn_echo.rs): the gateway's connection code
    // with an echo message handler; never started by the gateway.
    pub use crate::shard::{Driver, echo::serve as serve_echo};
    // Benchmarks (bench/tls.rs): the server side of a wss:// session, in memory.
    pub use crate::tls::{
        Acceptor, Session,
        acceptor::Files as TlsFiles,
        session::{MAX_PENDING, Received},
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
