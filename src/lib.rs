//! chat4all-gateway: a thread-per-core WebSocket push gateway.
//!
//! # Layout: the two data paths
//!
//! ```text
//!  A client connecting                          A notification going out
//!  -------------------                          ------------------------
//!  TCP accept on any shard's SO_REUSEPORT       POST /v1/publish (control::server)
//!  listener (ingress::accept)                   or Redis PUBLISH notifications:{user}
//!        |                                            |
//!  read + parse the upgrade request             validate + normalise once, encode one
//!  (ingress::upgrade -> ingress::handshake)     text frame (fanout::payload)
//!        |                                            |
//!  verify the JWT (ingress::auth)               one dispatcher thread: route by user hash
//!        |                                      (fanout::route, fanout::dispatch)
//!  owner shard = hash(user) (fanout::route)           |
//!        |-- other shard: hand the socket over  lock-free SPSC ring + doorbell to the
//!        |   (ingress::handoff -> shard::inbox) owner shard (shard::inbox)
//!        |                                            |
//!  register (shard::registry), send 101 +       every connection of that user on the
//!  {"type":"connected"}, start the reader       shard: non-blocking send of the shared
//!  (shard::reader) and its frames (ws::frame,   frame, else the bounded outbox and a
//!  ws::message)                                 writer task (shard::conn)
//! ```
//!
//! Each shard is one thread pinned to one core running a monoio runtime (io_uring, or epoll where
//! io_uring is unavailable), and owns its connections outright (`shard`). Idle connections hold
//! no buffer: they wait for readiness and read into the shard's one scratch buffer
//! (`shard::sys`). The control plane (`control`) serves health, readiness, Prometheus `metrics`
//! and the publish API on its own thread. `config` is the one configuration struct; `gateway`
//! binds and starts everything; `main.rs` only wires.

pub mod clock;
pub mod config;
pub mod control;
pub mod dev;
pub mod fanout;
pub mod gateway;
pub mod ingress;
pub mod metrics;
pub mod shard;
pub mod telemetry;
pub mod ws;
