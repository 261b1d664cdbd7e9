//! Ingress: from an accepted socket to an authenticated connection on its owner shard.
//!
//! `accept` (I/O) -> `upgrade` (I/O: read the request, refuse or upgrade) using `handshake`
//! (pure HTTP parsing) and `auth` (pure JWT checks) -> `handoff` when the user belongs to another
//! shard.

pub mod accept;
pub mod auth;
pub mod handoff;
pub mod handshake;
pub mod upgrade;
