//! PUBLISH from the control plane's publish API when Redis is configured, so that whichever
//! gateway instance holds the user delivers it.
//!
//! One request is one Redis command: `EVALSHA` of [`SCRIPT`], which PUBLISHes its one payload
//! argument on every channel it is given. Why a script rather than a pipeline of PUBLISH:
//! - **Memory.** A pipeline carries the payload once per user: a 900 KB notification to 100
//!   users was ~90 MB of command buffers (and more in copies), 2.7 GB for 1,000. The script
//!   carries it once, so a request costs about its body whatever the number of users (the
//!   command is built once and packed once: about two bodies at the peak).
//! - **An exact outcome.** A script runs whole or not at all, so the answer is either Redis's
//!   reply (published, or refused before anything was published) or no reply in time (unknown:
//!   the command may have run). A pipeline that breaks half-way leaves some users published and
//!   others not, with no way to tell which.
//!
//! The price: Redis runs the fan-out in one go and only then writes to subscribers, so a pattern
//! subscriber's output buffer receives payload x users at once. `PUBLISH_MAX_FANOUT_BYTES` keeps
//! that under Redis's `client-output-buffer-limit pubsub` (32 MB by default), beyond which Redis
//! would disconnect the gateways' subscribers.
//!
//! Every wait is bounded by `PUBLISH_TIMEOUT` in total (connecting, loading the script, the
//! reply); redis-rs's own response timeout (500 ms by default) is switched off so the
//! documented value is the real one.
//!
//! With history (issue 10) the script is the history script instead
//! ([`history::SCRIPT`](super::history::SCRIPT)): still one call per request with the payload
//! once, it records the notification for every user (giving it its offset and epoch) and
//! PUBLISHes it, atomically. An `Idempotency-Key` is checked and stored by the same call, so a
//! retry after a 504 records and publishes nothing twice.

use std::time::Duration;

use bytes::Bytes;
use redis::{
    AsyncConnectionConfig, ErrorKind, RedisError, ServerErrorKind, aio::MultiplexedConnection,
};
use thiserror::Error;
use tokio::{sync::Mutex, time::Instant};

use super::{history::Keys, target::Target};
use crate::proto::user::UserId;

/// The fan-out script (history off). `ARGV[1]` is the payload, `ARGV[2..]` the channels.
/// `redis.pcall` so that a channel Redis refuses (an ACL without that channel) does not abort the
/// others half-way; returns `{receivers, refused channels, first refusal, 0}` (the last is the
/// history script's "repeated", never set here).
const SCRIPT: &str = "\
local receivers, refused, first = 0, 0, ''
for i = 2, #ARGV do
  local r = redis.pcall('PUBLISH', ARGV[i], ARGV[1])
  if type(r) == 'table' and r.err then
    refused = refused + 1
    if first == '' then first = r.err end
  else
    receivers = receivers + r
  end
end
return {receivers, refused, first, 0}";

/// How a publish failed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PublishError {
    /// Nothing was published: Redis could not be reached in time, or refused the command.
    #[error("{0}")]
    NotSent(String),
    /// The command was sent but no reply came in time (or the connection broke): Redis may or
    /// may not have published it.
    #[error("{0}")]
    Unknown(String),
    /// Redis refused some channels and published the others.
    #[error(
        "Redis refused {refused} of {total} channels ({first}); the other users were published"
    )]
    Partial {
        /// Subscribers that received it on the channels Redis accepted.
        receivers: u32,
        /// Channels refused.
        refused: u32,
        /// Channels in the request.
        total: u32,
        /// Redis's first refusal message.
        first: String,
    },
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Redis subscribers that received it, summed over users.
    pub receivers: u32,
    /// History: the idempotency key was used already; this is the first call's result and
    /// nothing was recorded or published now.
    pub repeated: bool,
}

/// Publishes notifications to Redis.
pub struct Publisher {
    /// Where Redis is.
    target: Target,
    /// Channel prefix.
    prefix: String,
    /// The whole budget of one publish.
    timeout: Duration,
    /// With history: the keys and bounds the history script is called with.
    history: Option<Keys>,
    /// The connection and the script's SHA1 on it, once made.
    conn: Mutex<Option<Loaded>>,
}

/// A connection with the script loaded.
#[derive(Clone)]
pub(super) struct Loaded {
    /// Multiplexed: concurrent publishes share it.
    pub(super) con: MultiplexedConnection,
    /// `SCRIPT LOAD`'s answer.
    pub(super) sha: String,
}

impl Publisher {
    /// A publisher that connects on first use and gives each publish `timeout` in total; with
    /// `history`, every publish is recorded.
    pub fn new(target: Target, prefix: String, timeout: Duration, history: Option<Keys>) -> Self {
        Self {
            target,
            prefix,
            timeout,
            history,
            conn: Mutex::new(None),
        }
    }

    /// The whole budget of one call.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether publishes are recorded in history.
    pub fn history(&self) -> bool {
        self.history.is_some()
    }

    /// The script this publisher runs.
    fn script(&self) -> &'static str {
        match self.history {
            Some(_) => super::history::SCRIPT,
            None => SCRIPT,
        }
    }

    /// PUBLISHes `payload` on each user's channel, in one command. Returns the number of Redis
    /// subscribers that received it, summed (gateway instances, in pattern mode).
    ///
    /// # Errors
    ///
    /// [`PublishError`]: whether the notification was not sent, may have been, or was for some
    /// users only.
    pub async fn publish(
        &self,
        users: &[UserId],
        payload: Bytes,
        idempotency: Option<&str>,
    ) -> Result<Published, PublishError> {
        let deadline = Instant::now() + self.timeout;
        let mut loaded = self.connection(deadline).await?;
        // The script's SHA1 depends only on its text, so the command is built once (one copy
        // of the payload) and survives a reload of the script.
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&loaded.sha);
        match &self.history {
            None => {
                cmd.arg(0).arg(&payload[..]);
                for user in users {
                    cmd.arg(format!("{}{user}", self.prefix));
                }
            }
            Some(keys) => {
                keys.publish_command(&mut cmd, users, &payload, idempotency, &self.prefix)
            }
        }
        drop(payload);
        let mut reloaded = false;
        loop {
            let reply = tokio::time::timeout_at(
                deadline,
                cmd.query_async::<(u32, u32, String, Option<u32>)>(&mut loaded.con),
            )
            .await;
            let err = match reply {
                Ok(Ok((receivers, 0, _, repeated))) => {
                    return Ok(Published {
                        receivers,
                        repeated: repeated == Some(1),
                    });
                }
                Ok(Ok((receivers, refused, first, _))) => {
                    let total = users.len() as u32;
                    return Err(if refused >= total {
                        PublishError::NotSent(format!("Redis refused every channel: {first}"))
                    } else {
                        PublishError::Partial {
                            receivers,
                            refused,
                            total,
                            first,
                        }
                    });
                }
                Ok(Err(err)) => err,
                Err(_) => {
                    self.forget().await;
                    return Err(PublishError::Unknown(format!(
                        "Redis did not answer within {}",
                        humantime::format_duration(self.timeout)
                    )));
                }
            };
            match classify(&err) {
                // The script cache was flushed (SCRIPT FLUSH, a failover to a replica that
                // never loaded it): load it again and retry, once. Nothing ran the first time.
                Failure::NoScript if !reloaded => {
                    reloaded = true;
                    tokio::time::timeout_at(deadline, load_script(&mut loaded.con, self.script()))
                        .await
                        .map_err(|_| PublishError::NotSent("Redis did not answer in time".into()))?
                        .map_err(|e| PublishError::NotSent(e.to_string()))?;
                }
                Failure::NoScript | Failure::Refused => {
                    return Err(PublishError::NotSent(format!("Redis refused it: {err}")));
                }
                Failure::Broken => {
                    self.forget().await;
                    return Err(PublishError::Unknown(format!(
                        "the Redis connection failed after the command was handed to it: {err}"
                    )));
                }
            }
        }
    }

    /// The cached connection, or a new one with the script loaded; any failure here means
    /// nothing was sent.
    pub(super) async fn connection(&self, deadline: Instant) -> Result<Loaded, PublishError> {
        let late = || PublishError::NotSent("timed out connecting to Redis".into());
        let mut slot = tokio::time::timeout_at(deadline, self.conn.lock())
            .await
            .map_err(|_| late())?;
        if let Some(loaded) = slot.as_ref() {
            return Ok(loaded.clone());
        }
        let not_sent = |e: &dyn std::fmt::Display| PublishError::NotSent(e.to_string());
        // Sentinel discovery is blocking I/O: keep it off the control plane's event loop.
        let target = self.target.clone();
        let client = tokio::time::timeout_at(
            deadline,
            tokio::task::spawn_blocking(move || target.client()),
        )
        .await
        .map_err(|_| late())?
        .map_err(|e| not_sent(&e))?
        .map_err(|e| not_sent(&e))?;
        // No response timeout of redis-rs's own (500 ms by default): the deadline is ours.
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(None);
        let mut con = tokio::time::timeout_at(
            deadline,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| late())?
        .map_err(|e| not_sent(&e))?;
        let sha = tokio::time::timeout_at(deadline, load_script(&mut con, self.script()))
            .await
            .map_err(|_| late())?
            .map_err(|e| not_sent(&e))?;
        let loaded = Loaded { con, sha };
        *slot = Some(loaded.clone());
        Ok(loaded)
    }

    /// Drops the cached connection, so the next publish connects afresh.
    pub(super) async fn forget(&self) {
        *self.conn.lock().await = None;
    }
}

/// `SCRIPT LOAD`s `script`; its SHA1.
pub(super) async fn load_script(
    con: &mut MultiplexedConnection,
    script: &str,
) -> redis::RedisResult<String> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query_async(con)
        .await
}

/// What a failed command means for its outcome.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// `NOSCRIPT`: the script is not loaded; nothing ran.
    NoScript,
    /// Any other error reply: Redis refused the command before running it (a script runs whole
    /// or not at all, and this one catches PUBLISH errors itself).
    Refused,
    /// No reply: the connection broke after the command was handed to it, so it may have run.
    Broken,
}

pub(super) fn classify(err: &RedisError) -> Failure {
    match err.kind() {
        ErrorKind::Server(ServerErrorKind::NoScript) => Failure::NoScript,
        _ if err.code().is_some() => Failure::Refused,
        _ => Failure::Broken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_whether_redis_answered() {
        let reply = |text: &str| {
            redis::parse_redis_value(format!("-{text}\r\n").as_bytes())
                .unwrap()
                .extract_error()
                .unwrap_err()
        };
        assert_eq!(
            classify(&reply("NOSCRIPT No matching script")),
            Failure::NoScript
        );
        assert_eq!(classify(&reply("BUSY Redis is busy")), Failure::Refused);
        assert_eq!(
            classify(&reply("OOM command not allowed")),
            Failure::Refused
        );
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(classify(&io), Failure::Broken);
    }
}
