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

use std::{sync::Arc, time::Instant};

use bytes::Bytes;

/// A notification's content on its way to the owner shard.
#[derive(Clone)]
pub enum Body {
    /// Already validated, normalised and encoded (the publish API does this once per request).
    Frame(Bytes),
    /// A payload exactly as Redis delivered it. The owner shard validates and normalises it
    /// (once, not per recipient) and only when the user has connections there, which keeps the
    /// subscriber thread's per-message work minimal and skips parsing altogether for other
    /// gateways' users in pattern mode.
    Raw(Bytes),
    /// Single node with history: a normalised payload for the owner shard to record in the
    /// user's history (which gives it its offset and epoch) and then deliver. Shared by every
    /// user of one publish request.
    Record(Arc<Record>),
    /// From the Redis subscriber to every shard, in order with the notifications: the
    /// subscription was lost, so notifications may have been missed between the one before this
    /// and the one after. History (Redis) then checks each user's next offset strictly.
    Blind,
}

/// A notification to record (single node with history).
pub struct Record {
    /// The payload, validated and normalised, without `offset`/`epoch` (spliced in per user).
    pub text: Bytes,
    /// The publish request's `Idempotency-Key`: a user whose history already holds it is not
    /// recorded again; the first result is reported instead.
    pub idempotency: Option<Arc<str>>,
}

/// What the owner shard reports to the publish API about one user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reached {
    /// Connections the notification was written or queued to.
    pub recipients: u32,
    /// The idempotency key was already in the user's history: nothing was recorded or sent, and
    /// `recipients` is the first publish's count.
    pub repeated: bool,
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
    pub reply: Option<tokio::sync::oneshot::Sender<Reached>>,
}
