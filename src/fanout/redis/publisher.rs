//! PUBLISH from the control plane's publish API when Redis is configured, so that whichever
//! gateway instance holds the user delivers it. One multiplexed connection, re-established on
//! the next request after a failure.

use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

use super::target::Target;
use crate::proto::user::UserId;

/// How long a publish may wait for Redis.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Publishes notifications to Redis.
pub struct Publisher {
    /// Where Redis is.
    target: Target,
    /// Channel prefix.
    prefix: String,
    /// The connection, once made.
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl Publisher {
    /// A publisher that connects on first use.
    pub fn new(target: Target, prefix: String) -> Self {
        Self {
            target,
            prefix,
            conn: Mutex::new(None),
        }
    }

    /// PUBLISHes `payload` on each user's channel (pipelined). Returns the number of Redis
    /// subscribers that received it, summed (gateway instances, in pattern mode).
    pub async fn publish(&self, users: &[UserId], payload: &[u8]) -> Result<u32, String> {
        let mut con = self.connection().await?;
        let mut pipe = redis::pipe();
        for user in users {
            pipe.cmd("PUBLISH")
                .arg(format!("{}{user}", self.prefix))
                .arg(payload);
        }
        match tokio::time::timeout(TIMEOUT, pipe.query_async::<Vec<u32>>(&mut con)).await {
            Ok(Ok(counts)) => Ok(counts.iter().sum()),
            Ok(Err(e)) => {
                *self.conn.lock().await = None;
                Err(e.to_string())
            }
            Err(_) => {
                *self.conn.lock().await = None;
                Err("Redis did not answer in time".into())
            }
        }
    }

    async fn connection(&self) -> Result<MultiplexedConnection, String> {
        let mut slot = self.conn.lock().await;
        if let Some(con) = slot.as_ref() {
            return Ok(con.clone());
        }
        // Sentinel discovery is blocking I/O: keep it off the control plane's event loop.
        let target = self.target.clone();
        let client = tokio::task::spawn_blocking(move || target.client())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let con = tokio::time::timeout(TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| "timed out connecting to Redis".to_string())?
            .map_err(|e| e.to_string())?;
        *slot = Some(con.clone());
        Ok(con)
    }
}
