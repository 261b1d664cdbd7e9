//! chat4all-loadtest: the load-test harness for chat4all-gateway and the peers it is compared
//! with.
//!
//! # Layout
//!
//! ```text
//!  main.rs ── cli ──> coord (one coordinator process)
//!                      ├─ fleet: spawns N workers (this binary, `worker` subcommand),
//!                      │         talks JSON lines over their stdin/stdout (proto)
//!                      ├─ scenarios: idle, fanout, ramp, reconnect-storm, churn
//!                      ├─ server: /proc readings of the target (stats::sysstats)
//!                      └─ progress: indicatif on a terminal, plain lines otherwise
//!              ──> worker (one per ~10k connections; one current_thread runtime each)
//!                      ├─ conn: bind 127.x.y.z, connect, upgrade (wire::handshake),
//!                      │        read frames (wire::frame) -> state::on_stamp
//!                      ├─ publisher: pipelined PUBLISH to its own users (wire::resp,
//!                      │             wire::message), open or closed loop (stats::pacer)
//!                      ├─ churn: short-lived connections
//!                      └─ state: users, connections, trackers (stats::accounting),
//!                                histograms (stats::hist)
//!  report: merged results -> JSON, human summary, SVG plot
//! ```
//!
//! A notification's path: a worker writes `PUBLISH notifications:u7 {"seq":..,"sent_us":..}` to
//! Redis, the target forwards it to u7's connections, and the worker that owns u7 reads it on each,
//! checks the sequence number against what it published (loss, duplicates, reordering) and records
//! now − `sent_us` in its histograms. Workers send their counters and histograms to the coordinator,
//! which merges them.

#![forbid(unsafe_code)]

pub mod cli;
pub mod clock;
pub mod coord;
pub mod proto;
pub mod report;
pub mod rng;
pub mod stats;
pub mod token;
pub mod wire;
pub mod worker;
