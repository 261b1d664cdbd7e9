//! What the control plane publishes through. Without Redis, the single-node [`LocalBroker`]
//! delivers in process; the Redis backend plugs in here as another variant.

use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;

use super::local::{LocalBroker, Outcome};

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
}

impl BrokerError {
    /// Metrics/JSON label.
    pub fn kind(&self) -> &'static str {
        match self {
            BrokerError::Overloaded => "overloaded",
            BrokerError::Unavailable => "unavailable",
        }
    }
}

/// The publish backend.
#[derive(Clone)]
pub enum Broker {
    /// In-process delivery on this gateway only.
    Local(LocalBroker),
}

impl Broker {
    /// Publishes an encoded frame to `users`; returns the number of connections reached.
    pub async fn publish(&self, users: Vec<String>, frame: Bytes) -> Result<u32, BrokerError> {
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
        }
    }

    /// Whether the broker can deliver now (the local broker always can).
    pub fn is_ready(&self) -> bool {
        match self {
            Broker::Local(_) => true,
        }
    }
}
