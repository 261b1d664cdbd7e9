//! History with Redis (issue 10): the script that records and reads users' histories
//! ([`SCRIPT`], `history.lua` beside this file), the keys it is called with ([`Keys`]), and the
//! thread that reads histories for the shards ([`HistoryReader`]).
//!
//! Shards never do Redis I/O. An upgrade with history sends a [`ReadRequest`] over one bounded
//! queue shared by all shards and waits for its [`ReadAnswer`] on its shard's answer ring (rung
//! by a doorbell). The ring cannot overflow: a shard sends a request only while fewer than its
//! ring's capacity are unanswered, and the reader answers every request exactly once, an error
//! included. When the queue is full the shard refuses the upgrade (503) at once.
//!
//! The reader thread batches: whatever requests wait when it takes one (up to [`BATCH`]) go to
//! Redis as one `EVALSHA` (one round trip, one script run for all of them), and up to
//! [`BATCHES_IN_FLIGHT`] such calls are pipelined on its one connection. So a reconnect storm
//! costs Redis one call per batch, not one per client.

use std::{cell::RefCell, rc::Rc, sync::Arc, thread, time::Duration};

use bytes::Bytes;
use redis::Value;
use tokio::sync::{Semaphore, mpsc};

use super::{
    publisher::{Failure, PublishError, Publisher, classify, load_script},
    target::Target,
};
use crate::{
    net::doorbell::Doorbell,
    proto::{history::Resume, user::UserId},
};

/// The history script: records and publishes (`publish`), or reads (`read`).
pub const SCRIPT: &str = include_str!("history.lua");

/// Reads one shard may have unanswered (the capacity of its answer ring). Memory: ~64 B per
/// slot, 256 KiB per shard, plus the entries of answers not yet taken.
pub const READS_PER_SHARD: usize = 4096;
/// Requests read from Redis in one script call at most.
pub const BATCH: usize = 256;
/// Script calls the reader keeps in flight on its connection.
pub const BATCHES_IN_FLIGHT: usize = 16;

/// The history keys and bounds, as the script is called with them.
#[derive(Clone, Debug)]
pub struct Keys {
    /// `HISTORY_KEY_PREFIX`.
    pub prefix: String,
    /// `HISTORY_SIZE`: entries kept per user.
    pub size: usize,
    /// `HISTORY_TTL`.
    pub ttl: Duration,
    /// Most bytes of entries one read returns (`OUTBOX_MAX_BYTES`: a replay must fit an outbox).
    pub max_replay_bytes: usize,
}

impl Keys {
    /// The user's stream: `<prefix>{<user>}:s`.
    pub fn stream(&self, user: &str) -> String {
        format!("{}{{{user}}}:s", self.prefix)
    }

    /// The user's hash (epoch base, top offset): `<prefix>{<user>}:m`.
    pub fn meta(&self, user: &str) -> String {
        format!("{}{{{user}}}:m", self.prefix)
    }

    /// Where an idempotency key's first result is kept: `<prefix>idem:<key>`.
    pub fn idempotency(&self, key: &str) -> String {
        format!("{}idem:{key}", self.prefix)
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    /// Appends the `publish` call's keys and arguments to `cmd` (after the SHA): the payload once
    /// whatever the number of users.
    pub fn publish_command(
        &self,
        cmd: &mut redis::Cmd,
        users: &[UserId],
        payload: &[u8],
        idempotency: Option<&str>,
        channel_prefix: &str,
    ) {
        cmd.arg(1 + 2 * users.len())
            .arg(idempotency.map(|k| self.idempotency(k)).unwrap_or_default());
        for user in users {
            cmd.arg(self.stream(user)).arg(self.meta(user));
        }
        cmd.arg("publish")
            .arg(payload)
            .arg(self.size)
            .arg(self.ttl_ms())
            .arg(0);
        for user in users {
            cmd.arg(format!("{channel_prefix}{user}"));
        }
    }

    /// Appends the `read` call's keys and arguments for `batch` to `cmd` (after the SHA).
    fn read_command(&self, cmd: &mut redis::Cmd, batch: &[ReadRequest]) {
        cmd.arg(2 * batch.len());
        for r in batch {
            cmd.arg(self.stream(&r.user)).arg(self.meta(&r.user));
        }
        cmd.arg("read")
            .arg(self.ttl_ms())
            .arg(self.max_replay_bytes);
        for r in batch {
            match &r.resume {
                Some(resume) => cmd.arg(resume.since).arg(&*resume.epoch),
                None => cmd.arg("").arg(""),
            };
        }
    }
}

/// A shard asks for a user's history.
#[derive(Debug)]
pub struct ReadRequest {
    /// The asking shard (where the answer goes).
    pub shard: usize,
    /// The shard's number for this request.
    pub id: u64,
    /// Whose history.
    pub user: Box<str>,
    /// What the client has, if it asked for a replay.
    pub resume: Option<Resume>,
}

/// The answer to a [`ReadRequest`].
#[derive(Debug)]
pub struct ReadAnswer {
    /// The request's id.
    pub id: u64,
    /// What was read.
    pub result: Result<ReadResult, ReadError>,
}

/// A user's history as read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReadResult {
    /// The user's epoch now.
    pub epoch: Box<str>,
    /// The user's top offset now (0: nothing recorded in this epoch).
    pub top: u64,
    /// The entries after the request's `since` (only when its epoch is this one), oldest first,
    /// as recorded (JSON text with `offset` and `epoch`).
    pub entries: Vec<(u64, Bytes)>,
}

/// Why a read has no result.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    /// Redis could not be reached, refused, or did not answer in time.
    #[error("history unavailable: {0}")]
    Unavailable(String),
}

/// A shard's ends of the read queues.
pub struct ShardReads {
    /// Towards the reader (shared by all shards).
    pub requests: mpsc::Sender<ReadRequest>,
    /// Answers to this shard's requests.
    pub answers: rtrb::Consumer<ReadAnswer>,
    /// Rung after answers are pushed.
    pub doorbell: Arc<Doorbell>,
    /// The answer ring's capacity: the most requests this shard may have unanswered.
    pub capacity: usize,
}

/// The reader's ends.
pub struct ReaderSide {
    /// From every shard.
    requests: mpsc::Receiver<ReadRequest>,
    /// `answers[i]` feeds shard `i`.
    answers: Vec<rtrb::Producer<ReadAnswer>>,
    /// `doorbells[i]` wakes shard `i`'s answer task.
    doorbells: Vec<Arc<Doorbell>>,
}

impl ReaderSide {
    /// Delivers an answer; never fails (see the module doc), a full ring would be a bug.
    fn answer(&mut self, shard: usize, answer: ReadAnswer) {
        if self.answers[shard].push(answer).is_err() {
            tracing::error!(
                shard,
                "history answer ring full: a shard exceeded its reads"
            );
            debug_assert!(false, "history answer ring full");
        }
        self.doorbells[shard].ring();
    }
}

/// Builds the read queues for `shards` shards, `per_shard` outstanding reads each.
pub fn channels(shards: usize, per_shard: usize) -> (Vec<ShardReads>, ReaderSide) {
    let (tx, rx) = mpsc::channel(per_shard * shards);
    let mut sides = Vec::with_capacity(shards);
    let (mut answers, mut doorbells) = (Vec::new(), Vec::new());
    for _ in 0..shards {
        let (p, c) = rtrb::RingBuffer::new(per_shard);
        let bell = Arc::new(Doorbell::default());
        answers.push(p);
        doorbells.push(bell.clone());
        sides.push(ShardReads {
            requests: tx.clone(),
            answers: c,
            doorbell: bell,
            capacity: per_shard,
        });
    }
    let reader = ReaderSide {
        requests: rx,
        answers,
        doorbells,
    };
    (sides, reader)
}

/// The history reader thread: one Redis connection (through a [`Publisher`] configured for
/// history, which loads the script and follows failovers), fed by every shard.
pub struct HistoryReader {
    /// Connects, loads the script, bounds each call by `HISTORY_READ_TIMEOUT`.
    pub redis: Publisher,
    /// Keys and bounds.
    pub keys: Keys,
    /// The queues.
    pub side: ReaderSide,
}

impl HistoryReader {
    /// A reader of `target`'s histories whose calls take at most `timeout`.
    pub fn new(target: Target, keys: Keys, timeout: Duration, side: ReaderSide) -> Self {
        let redis = Publisher::new(target, String::new(), timeout, Some(keys.clone()));
        Self { redis, keys, side }
    }

    /// Starts the thread.
    pub fn spawn(self) -> std::io::Result<thread::JoinHandle<()>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        thread::Builder::new()
            .name("redis-history".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, self.run());
            })
    }

    async fn run(self) {
        let Self {
            redis,
            keys,
            mut side,
        } = self;
        let mut requests = std::mem::replace(&mut side.requests, mpsc::channel(1).1);
        let (redis, keys, side) = (Rc::new(redis), Rc::new(keys), Rc::new(RefCell::new(side)));
        let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
        while let Some(first) = requests.recv().await {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match requests.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let permit = in_flight.clone().acquire_owned().await;
            let (redis, keys, side) = (redis.clone(), keys.clone(), side.clone());
            tokio::task::spawn_local(async move {
                let results = redis.read(&keys, &batch).await;
                let mut side = side.borrow_mut();
                match results {
                    Ok(results) => {
                        for (r, result) in batch.into_iter().zip(results) {
                            side.answer(r.shard, ReadAnswer { id: r.id, result });
                        }
                    }
                    Err(err) => {
                        for r in batch {
                            let result = Err(err.clone());
                            side.answer(r.shard, ReadAnswer { id: r.id, result });
                        }
                    }
                }
                drop(permit);
            });
        }
    }
}

impl Publisher {
    /// Reads the histories `batch` asks for, in one script call within the publisher's
    /// timeout. One result per request, in order (a user whose reply is malformed gets an
    /// error of its own).
    ///
    /// # Errors
    ///
    /// [`ReadError`] for the whole batch when the call failed.
    pub async fn read(
        &self,
        keys: &Keys,
        batch: &[ReadRequest],
    ) -> Result<Vec<Result<ReadResult, ReadError>>, ReadError> {
        let unavailable = |e: PublishError| ReadError::Unavailable(e.to_string());
        let deadline = tokio::time::Instant::now() + self.timeout();
        let mut loaded = self.connection(deadline).await.map_err(unavailable)?;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&loaded.sha);
        keys.read_command(&mut cmd, batch);
        let (mut reloaded, mut reconnected) = (false, false);
        loop {
            let reply =
                tokio::time::timeout_at(deadline, cmd.query_async::<Value>(&mut loaded.con)).await;
            let err = match reply {
                Ok(Ok(value)) => return parse_reply(value, batch.len()),
                Ok(Err(err)) => err,
                Err(_) => {
                    self.forget().await;
                    return Err(ReadError::Unavailable(format!(
                        "Redis did not answer within {}",
                        humantime::format_duration(self.timeout())
                    )));
                }
            };
            match classify(&err) {
                Failure::NoScript if !reloaded => {
                    reloaded = true;
                    tokio::time::timeout_at(deadline, load_script(&mut loaded.con, SCRIPT))
                        .await
                        .map_err(|_| ReadError::Unavailable("Redis did not answer in time".into()))?
                        .map_err(|e| ReadError::Unavailable(e.to_string()))?;
                }
                // The cached connection died (Redis restarted, or a failover moved the
                // master): a read changes nothing a second run would not, so it is sent once
                // more on a fresh connection (which follows the failover) within the deadline.
                Failure::Broken if !reconnected => {
                    reconnected = true;
                    self.forget().await;
                    loaded = self.connection(deadline).await.map_err(unavailable)?;
                }
                Failure::Broken => {
                    self.forget().await;
                    return Err(ReadError::Unavailable(err.to_string()));
                }
                Failure::NoScript | Failure::Refused => {
                    return Err(ReadError::Unavailable(format!("Redis refused it: {err}")));
                }
            }
        }
    }
}

/// Splits the script's reply into one result per request.
fn parse_reply(value: Value, n: usize) -> Result<Vec<Result<ReadResult, ReadError>>, ReadError> {
    let malformed = || ReadError::Unavailable("malformed history reply".into());
    let Value::Array(users) = value else {
        return Err(malformed());
    };
    if users.len() != n {
        return Err(malformed());
    }
    Ok(users
        .into_iter()
        .map(|user| parse_user(user).ok_or_else(malformed))
        .collect())
}

fn parse_user(value: Value) -> Option<ReadResult> {
    let Value::Array(items) = value else {
        return None;
    };
    let mut items = items.into_iter();
    let epoch = match items.next()? {
        Value::BulkString(b) => String::from_utf8(b).ok()?.into_boxed_str(),
        _ => return None,
    };
    let top = int(items.next()?)?;
    let mut entries = Vec::with_capacity(items.len() / 2);
    while let Some(offset) = items.next() {
        let offset = int(offset)?;
        let Value::BulkString(text) = items.next()? else {
            return None;
        };
        entries.push((offset, Bytes::from(text)));
    }
    Some(ReadResult {
        epoch,
        top,
        entries,
    })
}

fn int(value: Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(n).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys {
            prefix: "h:".into(),
            size: 10,
            ttl: Duration::from_secs(60),
            max_replay_bytes: 1000,
        }
    }

    #[test]
    fn keys_share_the_user_hash_tag() {
        let k = keys();
        assert_eq!(k.stream("u1"), "h:{u1}:s");
        assert_eq!(k.meta("u1"), "h:{u1}:m");
        assert_eq!(k.idempotency("abc"), "h:idem:abc");
    }

    #[test]
    fn publish_command_carries_the_payload_once() {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg("sha");
        let users = [UserId::new("a").unwrap(), UserId::new("b").unwrap()];
        keys().publish_command(&mut cmd, &users, b"{\"p\":1}", Some("k1"), "n:");
        let args: Vec<String> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8(b.to_vec()).unwrap(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            args,
            [
                "EVALSHA",
                "sha",
                "5",
                "h:idem:k1",
                "h:{a}:s",
                "h:{a}:m",
                "h:{b}:s",
                "h:{b}:m",
                "publish",
                "{\"p\":1}",
                "10",
                "60000",
                "0",
                "n:a",
                "n:b"
            ]
        );
    }

    #[test]
    fn replies_are_split_per_user() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            Value::Array(vec![bulk("e-1"), Value::Int(0)]),
            Value::Array(vec![
                bulk("e-2"),
                Value::Int(5),
                Value::Int(4),
                bulk("{\"offset\":4}"),
                Value::Int(5),
                bulk("{\"offset\":5}"),
            ]),
            Value::Array(vec![Value::Int(3)]),
        ]);
        let results = parse_reply(reply, 3).unwrap();
        assert_eq!(
            results[0],
            Ok(ReadResult {
                epoch: "e-1".into(),
                top: 0,
                entries: vec![]
            })
        );
        let second = results[1].as_ref().unwrap();
        assert_eq!((second.top, second.entries.len()), (5, 2));
        assert_eq!(
            second.entries[1],
            (5, Bytes::from_static(b"{\"offset\":5}"))
        );
        assert!(results[2].is_err(), "a malformed user fails alone");
        assert!(parse_reply(Value::Array(vec![]), 1).is_err());
    }
}
