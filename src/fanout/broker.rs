//! What the control plane publishes through. Without Redis, the single-node [`LocalBroker`]
//! delivers in process; with Redis, the [`Publisher`] PUBLISHes so that whichever gateway
//! instance holds the user delivers it (through its subscriber).
//!
//! The answer is exact about delivery: `Overloaded`, `Unavailable` and `Redis` errors mean
//! nothing was delivered (a retry cannot duplicate), [`BrokerError::Unknown`] that it may have
//! been, [`BrokerError::Partial`] that it was for some users only.
//!
//! With history (issue 10) every notification is recorded for its user as it is published:
//! single node on the user's owner shard, with Redis by the history script, atomically with the
//! PUBLISH. A publish with an `Idempotency-Key` already used within HISTORY_TTL records nothing
//! and answers the first result, which makes retrying after [`BrokerError::Unknown`] safe.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use thiserror::Error;

use super::{
    Body, Record,
    local::{LocalBroker, LocalError, Outcome},
    redis::publisher::{PublishError, Published, Publisher},
};
use crate::proto::{
    payload::{self, PayloadError},
    user::UserId,
};

/// Why a publish failed.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// Every recipient's shard queue was full: the notification was dropped, nowhere delivered.
    #[error("the gateway is overloaded: shard queues are full")]
    Overloaded,
    /// The local dispatcher did not take it: nothing was delivered.
    #[error("the broker is not available: {0}")]
    Unavailable(&'static str),
    /// Redis could not be reached in time, or refused the command: nothing was published.
    #[error("Redis is not available: {0}")]
    Redis(String),
    /// It may or may not have been delivered.
    #[error("{0}; the notification may or may not have been delivered")]
    Unknown(String),
    /// Redis published it for some users and refused the others' channels.
    #[error(
        "Redis refused {refused} of {total} channels ({first}); the other users were published"
    )]
    Partial {
        /// Subscribers that received it.
        receivers: u32,
        /// Channels refused.
        refused: u32,
        /// Channels in the request.
        total: u32,
        /// Redis's first refusal.
        first: String,
    },
}

impl BrokerError {
    /// Metrics/JSON label.
    pub fn kind(&self) -> &'static str {
        match self {
            BrokerError::Overloaded => "overloaded",
            BrokerError::Unavailable(_) => "unavailable",
            BrokerError::Redis(_) => "redis_unavailable",
            BrokerError::Unknown(_) => "outcome_unknown",
            BrokerError::Partial { .. } => "partially_published",
        }
    }
}

/// A notification ready for [`Broker::publish`], in the form its broker sends.
pub struct Prepared {
    /// What the broker sends.
    body: Body,
    /// The request's `Idempotency-Key` (history only).
    idempotency: Option<Arc<str>>,
}

/// A publish that went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Connections reached (local), or Redis subscribers that received it (Redis).
    pub recipients: u32,
    /// The idempotency key had been used already: this is the first publish's result, and
    /// nothing was recorded or sent now (for every user, with Redis; single node, for every
    /// user that had it).
    pub repeated: bool,
}

/// The publish backend.
#[derive(Clone)]
pub enum Broker {
    /// In-process delivery on this gateway only.
    Local {
        /// The dispatcher thread's handle.
        broker: LocalBroker,
        /// How long a publish waits for the shards (`PUBLISH_TIMEOUT`).
        timeout: Duration,
        /// Record each notification in its user's history (on its owner shard).
        history: bool,
    },
    /// Through Redis, to every gateway instance.
    Redis {
        /// PUBLISHes for the API.
        publisher: Arc<Publisher>,
        /// The subscriber's "subscribed" flag.
        subscribed: Arc<AtomicBool>,
    },
}

impl Broker {
    /// Whether notifications are recorded in history (and may carry an `Idempotency-Key`).
    pub fn history(&self) -> bool {
        match self {
            Broker::Local { history, .. } => *history,
            Broker::Redis { publisher, .. } => publisher.history(),
        }
    }

    /// Validates a payload (JSON object text, as published) for publishing. The local broker delivers
    /// a finished frame, so it normalises here, once per request; Redis carries the payload as
    /// is and each gateway's owner shard normalises it, so here it is only checked against the
    /// limit the shards apply (building a frame would be wasted work). With history, both
    /// normalise here into JSON text (what history stores, so a replay is byte for byte what was
    /// sent live) and refuse payloads that already carry `offset` or `epoch`.
    ///
    /// # Errors
    ///
    /// [`PayloadError`]: the payload is not a publishable notification.
    pub fn prepare(
        &self,
        payload: Vec<u8>,
        now_ms: u64,
        max_bytes: usize,
        idempotency: Option<Arc<str>>,
    ) -> Result<Prepared, PayloadError> {
        debug_assert!(idempotency.is_none() || self.history());
        let body = match self {
            Broker::Local { history: true, .. } => {
                let text = payload::normalize_for_history(&payload, now_ms, max_bytes)?;
                Body::Record(Arc::new(Record {
                    text: Bytes::from(text),
                    idempotency: idempotency.clone(),
                }))
            }
            Broker::Local { .. } => {
                Body::Frame(payload::normalize_to_frame(&payload, now_ms, max_bytes)?)
            }
            Broker::Redis { publisher, .. } if publisher.history() => Body::Raw(Bytes::from(
                payload::normalize_for_history(&payload, now_ms, max_bytes)?,
            )),
            Broker::Redis { .. } if payload.len() > max_bytes => {
                return Err(PayloadError::TooLarge {
                    len: payload.len(),
                    max: max_bytes,
                });
            }
            Broker::Redis { .. } => Body::Raw(Bytes::from(payload)),
        };
        Ok(Prepared { body, idempotency })
    }

    /// Publishes a notification [`prepare`](Self::prepare)d by this broker to `users`. Returns
    /// the connections reached (local) or the Redis subscribers that received it, summed over
    /// users (Redis: gateway instances, whose shards then deliver).
    ///
    /// # Errors
    ///
    /// [`BrokerError`], exact about whether anything was delivered.
    pub async fn publish(
        &self,
        users: Vec<UserId>,
        prepared: Prepared,
    ) -> Result<Delivered, BrokerError> {
        let Prepared { body, idempotency } = prepared;
        match (self, body) {
            (
                Broker::Local {
                    broker, timeout, ..
                },
                body @ (Body::Frame(_) | Body::Record(_)),
            ) => {
                let count = users.len() as u32;
                let deadline = tokio::time::Instant::now() + *timeout;
                let Outcome {
                    recipients,
                    dropped_users,
                    repeated_users,
                } = broker
                    .publish(users, body, deadline)
                    .await
                    .map_err(|e| match e {
                        LocalError::NotQueued(why) => BrokerError::Unavailable(why),
                        LocalError::Unanswered => BrokerError::Unknown(format!(
                            "the shards did not answer within {}",
                            humantime::format_duration(*timeout)
                        )),
                    })?;
                if dropped_users > 0 && dropped_users == count {
                    return Err(BrokerError::Overloaded);
                }
                Ok(Delivered {
                    recipients,
                    repeated: repeated_users > 0 && repeated_users + dropped_users == count,
                })
            }
            (Broker::Redis { publisher, .. }, Body::Raw(payload)) => publisher
                .publish(&users, payload, idempotency.as_deref())
                .await
                .map(
                    |Published {
                         receivers,
                         repeated,
                     }| Delivered {
                        recipients: receivers,
                        repeated,
                    },
                )
                .map_err(|e| match e {
                    PublishError::NotSent(why) => BrokerError::Redis(why),
                    PublishError::Unknown(why) => BrokerError::Unknown(why),
                    PublishError::Partial {
                        receivers,
                        refused,
                        total,
                        first,
                    } => BrokerError::Partial {
                        receivers,
                        refused,
                        total,
                        first,
                    },
                }),
            // `prepare` makes the form its broker sends; a broker never changes kind.
            _ => unreachable!("a notification prepared by another kind of broker"),
        }
    }

    /// Whether the broker can deliver now: always for the local broker; while subscribed for
    /// Redis.
    pub fn is_ready(&self) -> bool {
        match self {
            Broker::Local { .. } => true,
            Broker::Redis { subscribed, .. } => subscribed.load(Ordering::Acquire),
        }
    }
}
