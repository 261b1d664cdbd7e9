//! The single-node broker, used when no Redis is configured: a dispatcher thread that takes
//! publish commands from the control plane (over a bounded channel) and routes each recipient's
//! notification to its owner shard.

use std::{thread, time::Instant};

use tokio::{
    sync::{mpsc, oneshot},
    time::Instant as Deadline,
};

use super::{Body, Delivery, Reached, dispatch::Dispatcher};
use crate::proto::user::UserId;

/// Publish commands buffered between the control plane and the dispatcher thread.
const COMMAND_QUEUE: usize = 1024;

/// One publish request: a frame (or, with history, a payload to record) for several users, and
/// where to report each user's count.
struct Command {
    /// Recipients, each with the channel its shard answers on.
    users: Vec<(UserId, oneshot::Sender<Reached>)>,
    /// The encoded frame, or the payload to record.
    body: Body,
}

/// Handle to the dispatcher thread.
#[derive(Clone)]
pub struct LocalBroker {
    tx: mpsc::Sender<Command>,
}

/// How a local publish went.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Connections the frame was queued or written to.
    pub recipients: u32,
    /// Users whose owner shard's queue was full (the notification was dropped for them).
    pub dropped_users: u32,
    /// Users whose history already held the request's idempotency key (nothing recorded).
    pub repeated_users: u32,
}

impl LocalBroker {
    /// Starts the dispatcher thread, which owns `dispatcher` from now on.
    pub fn start(mut dispatcher: Dispatcher) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Command>(COMMAND_QUEUE);
        thread::Builder::new()
            .name("dispatcher".into())
            .spawn(move || {
                while let Some(cmd) = rx.blocking_recv() {
                    let received = Instant::now();
                    for (user, reply) in cmd.users {
                        // A full queue drops the delivery (counted); its reply sender is dropped
                        // with it, which the publisher sees as a dropped user.
                        let _ = dispatcher.dispatch(Delivery {
                            user: user.into_boxed_str(),
                            body: cmd.body.clone(),
                            received,
                            reply: Some(reply),
                        });
                    }
                }
            })?;
        Ok(Self { tx })
    }

    /// Publishes `body` (a frame, or with history a payload to record) to every connection of
    /// `users` on this gateway and reports how many connections it reached. Waits for room in
    /// the dispatcher's queue and then for the shards' answers until `deadline`.
    ///
    /// # Errors
    ///
    /// [`LocalError`]: whether the notification was never queued, or queued without an answer.
    pub async fn publish(
        &self,
        users: Vec<UserId>,
        body: Body,
        deadline: Deadline,
    ) -> Result<Outcome, LocalError> {
        let mut replies = Vec::with_capacity(users.len());
        let users = users
            .into_iter()
            .map(|u| {
                let (tx, rx) = oneshot::channel();
                replies.push(rx);
                (u, tx)
            })
            .collect();
        match tokio::time::timeout_at(deadline, self.tx.send(Command { users, body })).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(LocalError::NotQueued("the dispatcher has stopped")),
            Err(_) => return Err(LocalError::NotQueued("the dispatcher's queue stayed full")),
        }
        let mut outcome = Outcome::default();
        let collect = async {
            for rx in replies {
                match rx.await {
                    Ok(reached) => {
                        outcome.recipients += reached.recipients;
                        outcome.repeated_users += u32::from(reached.repeated);
                    }
                    Err(_) => outcome.dropped_users += 1,
                }
            }
        };
        // Shards answer within microseconds; the deadline only guards against a wedged shard,
        // which may still deliver later.
        tokio::time::timeout_at(deadline, collect)
            .await
            .map_err(|_| LocalError::Unanswered)?;
        Ok(outcome)
    }
}

/// Why a local publish has no complete answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocalError {
    /// The command never reached the dispatcher: nothing was delivered.
    #[error("{0}")]
    NotQueued(&'static str),
    /// Queued, but not every shard answered in time: some connections may still receive it.
    #[error("the shards did not answer in time")]
    Unanswered,
}
