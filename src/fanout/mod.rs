//! Fan-out: from a published notification to the shard that owns its user.
//!
//! `route` picks the owner shard; `dispatch` pushes it onto that shard's single-producer ring; `local` is
//! the single-node broker (a dispatcher thread fed by the publish API); `broker` is what the
//! control plane publishes through, whatever the backend.

pub mod broker;
pub mod dispatch;
pub mod local;
pub mod redis;
pub mod route;

use std::time::Instant;

use bytes::Bytes;

/// A notification's content on its way to the owner shard.
pub enum Body {
    /// Already validated, normalised and encoded (the publish API does this once per request).
    Frame(Bytes),
    /// A payload exactly as Redis delivered it. The owner shard validates and normalises it
    /// (once, not per recipient) and only when the user has connections there, which keeps the
    /// subscriber thread's per-message work minimal and skips parsing altogether for other
    /// gateways' users in pattern mode.
    Raw(Bytes),
}

/// One notification for one user, on its way to the owner shard.
pub struct Delivery {
    /// The recipient user.
    pub user: Box<str>,
    /// What to send, encoded or raw.
    pub body: Body,
    /// When the broker received it (for the delivery latency histogram).
    pub received: Instant,
    /// Where to report how many connections it was queued to (publish API only).
    pub reply: Option<tokio::sync::oneshot::Sender<u32>>,
}
