//! A shard's side of the history reads (Redis mode): requests to the reader thread over the
//! shared bounded queue, answers back over this shard's ring, matched to the waiting upgrades
//! by the answer task. The ring cannot overflow: a request is sent only while fewer than its
//! capacity are unanswered (see `fanout::redis::history`).

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    future::poll_fn,
    rc::Rc,
    sync::Arc,
    task::Poll,
};

use tokio::sync::oneshot;

use crate::{
    fanout::redis::history::{ReadAnswer, ReadError, ReadRequest, ReadResult, ShardReads},
    net::doorbell::Doorbell,
    proto::history::Resume,
    shard::Shard,
};

/// What a waiting upgrade receives.
pub type Answer = Result<ReadResult, ReadError>;

/// A shard's reads.
pub struct Reads {
    /// This shard's index (for requests).
    shard: usize,
    /// Towards the reader thread.
    requests: tokio::sync::mpsc::Sender<ReadRequest>,
    /// Numbers the next request.
    next_id: Cell<u64>,
    /// Requests sent whose answer has not been taken off the ring yet; never above `limit`.
    outstanding: Cell<usize>,
    /// The answer ring's capacity.
    limit: usize,
    /// Waiting upgrades by request id.
    waits: RefCell<HashMap<u64, oneshot::Sender<Answer>>>,
    /// The answer ring and its doorbell, until the answer task takes them.
    answers: RefCell<Option<(rtrb::Consumer<ReadAnswer>, Arc<Doorbell>)>>,
}

impl Reads {
    /// This shard's ends.
    pub fn new(shard: usize, side: ShardReads) -> Self {
        Self {
            shard,
            requests: side.requests,
            next_id: Cell::new(0),
            outstanding: Cell::new(0),
            limit: side.capacity,
            waits: RefCell::default(),
            answers: RefCell::new(Some((side.answers, side.doorbell))),
        }
    }

    /// Asks for `user`'s history; `None` when too many reads are unanswered or the queue is
    /// full (the caller refuses at once, never waits for room). A wait that gives up just drops
    /// its receiver: the answer still frees its place when it comes.
    pub fn ask(&self, user: &str, resume: Option<Resume>) -> Option<oneshot::Receiver<Answer>> {
        if self.outstanding.get() >= self.limit {
            return None;
        }
        let id = self.next_id.get();
        let request = ReadRequest {
            shard: self.shard,
            id,
            user: user.into(),
            resume,
        };
        self.requests.try_send(request).ok()?;
        self.next_id.set(id + 1);
        self.outstanding.set(self.outstanding.get() + 1);
        let (tx, rx) = oneshot::channel();
        self.waits.borrow_mut().insert(id, tx);
        Some(rx)
    }
}

/// The answer task: hands the reader's answers to the waiting upgrades. Runs until the shard
/// stops.
pub async fn run(shard: Rc<Shard>) {
    let Some(reads) = shard.history.as_ref().and_then(|h| h.reads()) else {
        return;
    };
    let Some((mut answers, doorbell)) = reads.answers.borrow_mut().take() else {
        return;
    };
    loop {
        while let Ok(answer) = answers.pop() {
            reads.outstanding.set(reads.outstanding.get() - 1);
            if let Some(tx) = reads.waits.borrow_mut().remove(&answer.id) {
                let _ = tx.send(answer.result);
            }
        }
        // Sized for a storm's reads: given back once all are answered.
        {
            let mut waits = reads.waits.borrow_mut();
            if waits.is_empty() && waits.capacity() > super::live::SHRINK_ABOVE {
                *waits = HashMap::new();
            }
        }
        poll_fn(|cx| {
            doorbell.register(cx.waker());
            if answers.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        if shard.finished.get() {
            return;
        }
    }
}
