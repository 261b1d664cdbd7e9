//! The commands the subscriber has sent and not yet seen answered, and the liveness rule built
//! on them (pure logic, no I/O).
//!
//! Redis answers a connection's commands in order, one reply per channel for (UN)SUBSCRIBE,
//! interleaved with the messages it pushes, so matching a reply to its command is a FIFO.
//!
//! Liveness: a slow Redis is not a dead Redis. The connection is declared dead only when a
//! reply is due and *nothing at all* has arrived for the whole liveness timeout (not a reply,
//! not a message), i.e. Redis has been silent for seconds while owing an answer. Silence with
//! nothing due is probed with a PING after a quarter of the timeout. A stall shorter than the
//! timeout therefore never drops the connection, and so never loses what Redis queued on it.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// What a sent command is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// One `subscribe` reply per channel; the command's number.
    Subscribe(u64),
    /// One `unsubscribe` reply per channel.
    Unsubscribe,
    /// One `psubscribe` reply.
    PSubscribe,
    /// `pong`.
    Pong,
}

/// A reply as the connection received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A status line (`+OK`): never due on a subscribed connection.
    Status,
    /// `subscribe` confirmation.
    Subscribe,
    /// `unsubscribe` confirmation.
    Unsubscribe,
    /// `psubscribe` confirmation.
    PSubscribe,
    /// `pong`.
    Pong,
}

/// Replies that do not match the commands sent: the connection's state is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Redis sent a {got:?} reply while {expected:?} was due")]
pub struct Mismatch {
    /// What was due (`None`: nothing was).
    pub expected: Option<Expect>,
    /// What came.
    pub got: Reply,
}

/// Commands in flight on one connection.
#[derive(Debug, Default)]
pub struct InFlight {
    /// (what answers it, replies still due, when it was sent), oldest first.
    queue: VecDeque<(Expect, usize, Instant)>,
    /// Numbers the next SUBSCRIBE.
    next_seq: u64,
}

impl InFlight {
    /// A new SUBSCRIBE's number (to record with [`Self::sent`]).
    pub fn next_subscribe(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Records a command sent at `now` that `replies` replies will answer.
    pub fn sent(&mut self, expect: Expect, replies: usize, now: Instant) {
        if replies > 0 {
            self.queue.push_back((expect, replies, now));
        }
    }

    /// Matches a reply to the oldest command due: what it answers.
    pub fn on_reply(&mut self, got: Reply) -> Result<Expect, Mismatch> {
        let Some((expect, due, _)) = self.queue.front_mut() else {
            return Err(Mismatch {
                expected: None,
                got,
            });
        };
        let matches = matches!(
            (*expect, got),
            (Expect::Subscribe(_), Reply::Subscribe)
                | (Expect::Unsubscribe, Reply::Unsubscribe)
                | (Expect::PSubscribe, Reply::PSubscribe)
                | (Expect::Pong, Reply::Pong)
        );
        if !matches {
            return Err(Mismatch {
                expected: Some(*expect),
                got,
            });
        }
        let expect = *expect;
        *due -= 1;
        if *due == 0 {
            self.queue.pop_front();
        }
        Ok(expect)
    }
}

/// The liveness rule for one connection.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// How long Redis may stay silent while a reply is due.
    pub timeout: Duration,
}

/// What the liveness rule asks for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do.
    Alive,
    /// Silent with nothing due: send a PING.
    Probe,
    /// A reply has been due for the whole timeout and nothing arrived meanwhile.
    Dead,
}

impl Liveness {
    /// Silence after which an idle connection is probed: a quarter of the timeout, at most 5 s.
    pub fn probe_after(&self) -> Duration {
        (self.timeout / 4).min(Duration::from_secs(5))
    }

    /// The verdict at `now`, given the commands in flight and when the last byte arrived.
    pub fn check(&self, inflight: &InFlight, last_rx: Instant, now: Instant) -> Verdict {
        let silent = now.saturating_duration_since(last_rx);
        match inflight.queue.front() {
            Some(&(_, _, sent)) => {
                let due_for = now.saturating_duration_since(sent);
                if due_for >= self.timeout && silent >= self.timeout {
                    Verdict::Dead
                } else {
                    Verdict::Alive
                }
            }
            None if silent >= self.probe_after() => Verdict::Probe,
            None => Verdict::Alive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn replies_match_commands_in_order() {
        let t0 = Instant::now();
        let mut f = InFlight::default();
        let seq = f.next_subscribe();
        f.sent(Expect::Subscribe(seq), 2, t0);
        f.sent(Expect::Unsubscribe, 0, t0);
        f.sent(Expect::Pong, 1, t0);
        assert_eq!(f.on_reply(Reply::Subscribe), Ok(Expect::Subscribe(seq)));
        assert!(
            f.on_reply(Reply::Pong).is_err(),
            "one subscribe reply still due"
        );
        assert_eq!(f.on_reply(Reply::Subscribe), Ok(Expect::Subscribe(seq)));
        assert_eq!(f.on_reply(Reply::Pong), Ok(Expect::Pong));
        assert!(f.queue.is_empty());
        assert_eq!(
            f.on_reply(Reply::Status),
            Err(Mismatch {
                expected: None,
                got: Reply::Status
            })
        );
    }

    #[test]
    fn slow_is_not_dead() {
        let live = Liveness { timeout: 10 * S };
        let t0 = Instant::now();
        let mut f = InFlight::default();
        // Idle: probed after a quarter of the timeout.
        assert_eq!(live.check(&f, t0, t0 + 2 * S), Verdict::Alive);
        assert_eq!(live.check(&f, t0, t0 + 3 * S), Verdict::Probe);
        // A PING due for 9 s of silence: still alive.
        f.sent(Expect::Pong, 1, t0 + 3 * S);
        assert_eq!(live.check(&f, t0, t0 + 12 * S), Verdict::Alive);
        // Due for 10 s and silent for 13 s: dead.
        assert_eq!(live.check(&f, t0, t0 + 13 * S), Verdict::Dead);
        // Bytes arriving (messages) while the reply is late keep it alive.
        assert_eq!(live.check(&f, t0 + 12 * S, t0 + 13 * S), Verdict::Alive);
        // Answered: alive again.
        f.on_reply(Reply::Pong).unwrap();
        assert_eq!(live.check(&f, t0 + 13 * S, t0 + 13 * S), Verdict::Alive);
    }

    #[test]
    fn probe_interval_is_capped() {
        let live = Liveness { timeout: 60 * S };
        assert_eq!(live.probe_after(), 5 * S);
        let live = Liveness { timeout: S };
        assert_eq!(live.probe_after(), S / 4);
    }
}
