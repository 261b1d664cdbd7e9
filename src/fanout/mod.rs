//! Fan-out: from a published notification to the shard that owns its user.
//!
//! `payload` (pure) validates and normalises a notification into one encoded frame; `route`
//! picks the owner shard; `dispatch` pushes it onto that shard's single-producer ring; `local` is
//! the single-node broker (a dispatcher thread fed by the publish API); `broker` is what the
//! control plane publishes through, whatever the backend.

pub mod broker;
pub mod dispatch;
pub mod local;
pub mod payload;
pub mod redis;
pub mod route;

use std::time::Instant;

use bytes::Bytes;

/// One notification for one user, on its way to the owner shard.
pub struct Delivery {
    /// The recipient user.
    pub user: Box<str>,
    /// The encoded text frame, shared by every recipient connection.
    pub frame: Bytes,
    /// When the broker received it (for the delivery latency histogram).
    pub received: Instant,
    /// Where to report how many connections it was queued to (publish API only).
    pub reply: Option<tokio::sync::oneshot::Sender<u32>>,
}
