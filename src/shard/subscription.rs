//! Per-user Redis mode: a user's upgrade is answered (`101` + `connected`) only once Redis has
//! confirmed the subscription of the user's channel, so that everything published after the
//! client saw `connected` reaches it, as in pattern mode.
//!
//! - Covered: when the user already has a connection on this shard (its channel is subscribed,
//!   all of a user's connections live on its owner shard), the upgrade is answered at once.
//! - Otherwise the shard sends a want to the subscriber and the connection waits, in its own
//!   task (the shard serves everyone else meanwhile), for the answer, at most `SUBSCRIBE_WAIT`.
//!   The subscriber answers at once when the channel is still subscribed (also during its
//!   unsubscribe grace period), else when Redis confirms it.
//! - Refused with 503 and `Retry-After`: not confirmed in time (`subscribe_timeout`), too many
//!   waits on this shard or the queue to the subscriber full (`overloaded`), or the gateway
//!   started draining (`draining`).
//!
//! Departures: the subscriber is told a user left only when it has neither a connection nor a
//! waiting upgrade here. A departure that finds the queue full is kept here, in order, and sent
//! before anything else (memory: one user id per departed user, only while the subscriber is
//! behind; it never blocks the shard).

use std::{
    cell::{Cell, RefCell},
    collections::{HashMap, VecDeque},
    future::poll_fn,
    rc::Rc,
    sync::{Arc, atomic::Ordering::Relaxed},
    task::Poll,
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

use super::{Shard, refusal, socket::Socket};
use crate::{
    fanout::redis::{
        membership::{Answer, Event, Ticket},
        requests::ShardSide,
    },
    metrics::SubscribeWait,
    net::doorbell::Doorbell,
    proto::upgrade::Status,
};

/// How often departures kept by a full queue are offered again.
const RETRY: Duration = Duration::from_millis(20);

/// How a wait ended, when it did not end with the channel subscribed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    TimedOut,
    Full,
    Draining,
}

/// What a waiting upgrade is told.
#[derive(Debug)]
enum Verdict {
    Subscribed(bool),
    Draining,
}

/// A shard's side of the per-user subscriptions.
pub struct Gate {
    /// This shard's index (for tickets).
    shard: usize,
    /// Towards the subscriber.
    events: mpsc::Sender<Event>,
    /// The longest wait (`SUBSCRIBE_WAIT`).
    wait: Duration,
    /// Numbers the next ticket.
    next_id: Cell<u64>,
    /// Tickets sent whose answer has not been taken off the answer ring yet; never above
    /// `limit`, the answer ring's capacity, which is what keeps that ring from overflowing.
    outstanding: Cell<usize>,
    /// The answer ring's capacity.
    limit: usize,
    /// Waiting upgrades by ticket.
    waits: RefCell<HashMap<u64, oneshot::Sender<Verdict>>>,
    /// Waiting upgrades per user.
    waiting_users: RefCell<HashMap<Box<str>, u32>>,
    /// Departures the queue had no room for, oldest first.
    deferred: RefCell<VecDeque<Event>>,
    /// Answer ring and its doorbell, until the answer task takes them.
    answers: RefCell<Option<(rtrb::Consumer<Answer>, Arc<Doorbell>)>>,
}

impl Gate {
    /// The gate of shard `shard`.
    pub fn new(shard: usize, side: ShardSide, wait: Duration) -> Self {
        Self {
            shard,
            events: side.events,
            wait,
            next_id: Cell::new(0),
            outstanding: Cell::new(0),
            limit: side.answer_capacity,
            waits: RefCell::default(),
            waiting_users: RefCell::default(),
            deferred: RefCell::default(),
            answers: RefCell::new(Some((side.answers, side.doorbell))),
        }
    }

    /// The user's last connection here is gone.
    pub fn left(&self, user: &str) {
        if !self.waiting_users.borrow().contains_key(user) {
            self.send_left(user);
        }
    }

    fn send_left(&self, user: &str) {
        self.deferred
            .borrow_mut()
            .push_back(Event::Left(user.into()));
        self.flush();
    }

    /// Sends kept departures, in order; whether none is left.
    fn flush(&self) -> bool {
        let mut deferred = self.deferred.borrow_mut();
        while let Some(event) = deferred.pop_front() {
            if let Err(err) = self.events.try_send(event) {
                let event = match err {
                    mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e) => e,
                };
                deferred.push_front(event);
                return false;
            }
        }
        true
    }

    /// Sends a want for `user`; the receiver of its verdict.
    fn want(&self, user: &str) -> Result<(u64, oneshot::Receiver<Verdict>), Refusal> {
        if self.outstanding.get() >= self.limit || !self.flush() {
            return Err(Refusal::Full);
        }
        let id = self.next_id.get();
        let ticket = Ticket {
            shard: self.shard,
            id,
        };
        let event = Event::Want {
            user: user.into(),
            ticket,
        };
        if self.events.try_send(event).is_err() {
            return Err(Refusal::Full);
        }
        self.next_id.set(id + 1);
        self.outstanding.set(self.outstanding.get() + 1);
        let (tx, rx) = oneshot::channel();
        self.waits.borrow_mut().insert(id, tx);
        *self
            .waiting_users
            .borrow_mut()
            .entry(user.into())
            .or_insert(0) += 1;
        Ok((id, rx))
    }

    /// A wait for `user` is over (whatever its outcome).
    fn done(&self, id: u64, user: &str) {
        self.waits.borrow_mut().remove(&id);
        let mut users = self.waiting_users.borrow_mut();
        if let Some(n) = users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                users.remove(user);
            }
        }
    }
}

/// Runs `then` with the stream once `user`'s channel is subscribed: at once when there is
/// nothing to wait for, else in a task of its own after the wait; or answers 503 (dropping
/// `then`, and with it the connection's slot).
pub fn when_subscribed<F>(shard: &Rc<Shard>, user: Rc<str>, stream: Socket, then: F)
where
    F: FnOnce(Socket, Rc<str>) + 'static,
{
    let Some(gate) = &shard.subscription else {
        return then(stream, user);
    };
    if shard.registry.borrow().user(&user).next().is_some() {
        shard.stats.inc_subscribe_wait(SubscribeWait::Covered);
        return then(stream, user);
    }
    let started = if shard.draining() {
        Err(Refusal::Draining)
    } else {
        gate.want(&user)
    };
    let sent = started.is_ok();
    let shard = shard.clone();
    monoio::spawn(async move {
        let outcome = match started {
            Ok((id, verdict)) => {
                let gate = shard.subscription.as_ref().expect("checked above");
                shard.stats.subscribe_waiting.fetch_add(1, Relaxed);
                let outcome = wait(verdict, gate.wait).await;
                shard.stats.subscribe_waiting.fetch_sub(1, Relaxed);
                gate.done(id, &user);
                outcome
            }
            Err(refusal) => Err(refusal),
        };
        match outcome {
            Ok(()) => {
                shard.stats.inc_subscribe_wait(SubscribeWait::Confirmed);
                then(stream, user);
            }
            Err(refusal) => {
                drop(then);
                let gate = shard.subscription.as_ref().expect("checked above");
                let alone = shard.registry.borrow().user(&user).next().is_none()
                    && !gate.waiting_users.borrow().contains_key(&*user);
                if alone && sent {
                    // Nothing of this user is left here: let its channel go after the grace.
                    gate.send_left(&user);
                }
                refuse(&shard, stream, refusal).await;
            }
        }
    });
}

async fn wait(verdict: oneshot::Receiver<Verdict>, limit: Duration) -> Result<(), Refusal> {
    match monoio::time::timeout(limit, verdict).await {
        Ok(Ok(Verdict::Subscribed(true))) => Ok(()),
        Ok(Ok(Verdict::Draining)) => Err(Refusal::Draining),
        // Not subscribed (the subscriber gave up on it), or the gate went away.
        Ok(Ok(Verdict::Subscribed(false)) | Err(_)) => Err(Refusal::TimedOut),
        Err(_) => Err(Refusal::TimedOut),
    }
}

async fn refuse(shard: &Shard, stream: Socket, refusal: Refusal) {
    let (metric, label, message) = match refusal {
        Refusal::TimedOut => (
            SubscribeWait::TimedOut,
            "subscribe_timeout",
            "the notification subscription is not ready yet; retry shortly",
        ),
        Refusal::Full => (
            SubscribeWait::Full,
            "overloaded",
            "the gateway is overloaded; retry with backoff",
        ),
        Refusal::Draining => (
            SubscribeWait::Draining,
            "draining",
            "the gateway is shutting down; reconnect to another instance",
        ),
    };
    shard.stats.inc_subscribe_wait(metric);
    refusal::refuse(shard, stream, Status::ServiceUnavailable, label, message).await;
}

/// The shard's answer task: hands the subscriber's answers to the waiting upgrades, tells them
/// when the gateway drains, and offers kept departures again. Runs until the shard stops.
pub async fn run(shard: Rc<Shard>) {
    let Some(gate) = &shard.subscription else {
        return;
    };
    let Some((mut answers, doorbell)) = gate.answers.borrow_mut().take() else {
        return;
    };
    loop {
        while let Ok(answer) = answers.pop() {
            gate.outstanding.set(gate.outstanding.get() - 1);
            if let Some(tx) = gate.waits.borrow_mut().remove(&answer.id) {
                let _ = tx.send(Verdict::Subscribed(answer.subscribed));
            }
        }
        if shard.draining() {
            for (_, tx) in gate.waits.borrow_mut().drain() {
                let _ = tx.send(Verdict::Draining);
            }
        }
        let pending_departures = !gate.flush();
        let parked = poll_fn(|cx| {
            doorbell.register(cx.waker());
            if !answers.is_empty() || (shard.draining() && !gate.waits.borrow().is_empty()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        if pending_departures {
            let _ = monoio::time::timeout(RETRY, parked).await;
        } else {
            parked.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::redis::requests::channels_sized;

    fn gate(
        events: usize,
        answers: usize,
    ) -> (Gate, crate::fanout::redis::requests::SubscriberSide) {
        let (mut sides, subscriber) = channels_sized(1, events, answers);
        let gate = Gate::new(0, sides.pop().unwrap(), Duration::from_secs(1));
        (gate, subscriber)
    }

    fn want_of(e: Event) -> (Box<str>, u64) {
        match e {
            Event::Want { user, ticket } => (user, ticket.id),
            other => panic!("not a want: {other:?}"),
        }
    }

    #[test]
    fn a_full_queue_refuses_wants_and_keeps_departures_in_order() {
        let (gate, mut sub) = gate(2, 16);
        let _a = gate.want("a").unwrap();
        let _b = gate.want("b").unwrap();
        assert_eq!(
            gate.want("c").unwrap_err(),
            Refusal::Full,
            "queue full: refused at once"
        );
        gate.left("x");
        gate.left("y");
        assert_eq!(
            gate.deferred.borrow().len(),
            2,
            "departures kept, not dropped"
        );
        // Room again: the kept departures go first, in order, then new wants.
        assert_eq!(want_of(sub.events.try_recv().unwrap()), ("a".into(), 0));
        assert_eq!(want_of(sub.events.try_recv().unwrap()), ("b".into(), 1));
        let _d = gate.want("d").unwrap_err();
        assert_eq!(sub.events.try_recv().unwrap(), Event::Left("x".into()));
        assert_eq!(sub.events.try_recv().unwrap(), Event::Left("y".into()));
        let _e = gate.want("e").unwrap();
        assert_eq!(want_of(sub.events.try_recv().unwrap()), ("e".into(), 2));
    }

    #[test]
    fn unanswered_wants_are_capped_by_the_answer_ring() {
        let (gate, mut sub) = gate(64, 2);
        let a = gate.want("a").unwrap();
        let _b = gate.want("b").unwrap();
        assert_eq!(gate.want("c").unwrap_err(), Refusal::Full);
        // A timed-out wait does not free its place: only its answer does.
        gate.done(a.0, "a");
        assert_eq!(gate.want("c").unwrap_err(), Refusal::Full);
        sub.answer(
            0,
            Answer {
                id: a.0,
                subscribed: true,
            },
        );
        let (mut answers, _) = gate.answers.borrow_mut().take().unwrap();
        answers.pop().unwrap();
        gate.outstanding.set(gate.outstanding.get() - 1);
        assert!(gate.want("c").is_ok());
    }

    #[test]
    fn no_departure_while_an_upgrade_of_that_user_waits() {
        let (gate, mut sub) = gate(64, 16);
        let (id, _rx) = gate.want("a").unwrap();
        sub.events.try_recv().unwrap();
        gate.left("a");
        assert!(
            sub.events.try_recv().is_err(),
            "a waiting upgrade still wants the channel"
        );
        gate.done(id, "a");
        gate.left("a");
        assert_eq!(sub.events.try_recv().unwrap(), Event::Left("a".into()));
    }
}
