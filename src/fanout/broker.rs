//! What the control plane publishes through. Without Redis, the single-node [`LocalBroker`]
//! delivers in process; with Redis, the [`Publisher`] PUBLISHes so that whichever gateway
//! instance holds the user delivers it (through its subscriber).

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
    local::{LocalBroker, Outcome},
    redis::publisher::Publisher,
};
use crate::proto::user::UserId;

/// How long a publish waits for the shards' answers.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a publish failed.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// Every recipient's shard queue was full: the notification was dropped.
    #[error("the gateway is overloaded: shard queues are full")]
    Overloaded,
    /// The broker is not running or did not answer.
    #[error("the broker is not available")]
    Unavailable,
    /// Redis refused or did not answer.
    #[error("Redis is not available: {0}")]
    Redis(String),
}

impl BrokerError {
    /// Metrics/JSON label.
    pub fn kind(&self) -> &'static str {
        match self {
            BrokerError::Overloaded => "overloaded",
            BrokerError::Unavailable => "unavailable",
            BrokerError::Redis(_) => "redis_unavailable",
        }
    }
}

/// The publish backend.
#[derive(Clone)]
pub enum Broker {
    /// In-process delivery on this gateway only.
    Local(LocalBroker),
    /// Through Redis, to every gateway instance.
    Redis {
        /// PUBLISHes for the API.
        publisher: Arc<Publisher>,
        /// The subscriber's "subscribed" flag.
        subscribed: Arc<AtomicBool>,
    },
}

impl Broker {
    /// Publishes a validated notification to `users`. `payload` is its compact JSON text (what
    /// Redis carries) and `frame` the same notification normalised and encoded (what the local
    /// broker delivers). Returns the connections reached (local) or the Redis subscribers that
    /// received it, summed over users (Redis: gateway instances, whose shards then deliver).
    pub async fn publish(
        &self,
        users: Vec<UserId>,
        payload: &[u8],
        frame: Bytes,
    ) -> Result<u32, BrokerError> {
        match self {
            Broker::Local(local) => {
                let count = users.len() as u32;
                let Outcome {
                    recipients,
                    dropped_users,
                } = local
                    .publish(users, frame, PUBLISH_TIMEOUT)
                    .await
                    .map_err(|_| BrokerError::Unavailable)?;
                if dropped_users > 0 && dropped_users == count {
                    return Err(BrokerError::Overloaded);
                }
                Ok(recipients)
            }
            Broker::Redis { publisher, .. } => publisher
                .publish(&users, payload)
                .await
                .map_err(BrokerError::Redis),
        }
    }

    /// Whether the broker can deliver now: always for the local broker; while subscribed for
    /// Redis.
    pub fn is_ready(&self) -> bool {
        match self {
            Broker::Local(_) => true,
            Broker::Redis { subscribed, .. } => subscribed.load(Ordering::Acquire),
        }
    }
}
