//! The connection as a state machine with no I/O: its phase, its outbox (frames waiting for the
//! socket, the front one possibly partly written), and the accounting that goes with them
//! (outbox bytes, notifications written or dropped and why, close codes).
//!
//! The shell ([`super::Conn`]) performs the writes and feeds the results back:
//!
//! | input | method | output |
//! | --- | --- | --- |
//! | a frame to send | [`ConnState::offer`] | write it directly, queue it, or refuse it (counted) |
//! | the kernel took `n` bytes of a direct write | [`ConnState::direct_written`] | done, or the rest queued (start a writer) |
//! | the socket is writable | [`ConnState::slices`] | the queued bytes, in order, head offset applied |
//! | the kernel took `n` queued bytes | [`ConnState::written`] | more to write, or empty (and how to shut the socket) |
//! | would block | nothing changes | |
//! | our close (any reason, incl. drain and timeouts) | [`ConnState::close`] | the close frame to send |
//! | the peer's close | [`ConnState::peer_closed`] | tear down now, or after our close frame is out |
//! | dead peer, write error, close timeout | [`ConnState::abort`] | shut both ways |
//! | the reader exits | [`ConnState::finish`] | queue emptied, every count settled |
//!
//! Invariants (unit- and property-tested below): every queued byte is handed to the kernel once
//! and in order; a close frame is queued only behind a frame already partly written (on a
//! wss:// connection, whose outbox is ciphertext, behind every queued frame), never in the
//! middle of one; after [`ConnState::finish`] the outbox holds nothing and the outbox gauge
//! has been given back every byte it was charged; every notification offered is counted exactly
//! once, as written (`notifications_sent`) or as dropped with one reason.

use std::{collections::VecDeque, io::IoSlice, net::Shutdown, time::Instant};

use bytes::Bytes;

pub use super::decision::{Direct, Flushed, Offer, OutboxLimits, Tally};
use crate::{
    metrics::{DropReason, ShardStats},
    proto::close::CloseCode,
};

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Exchanging messages.
    Open,
    /// A close frame has been queued (by either side) at this shard time in ms; no more data
    /// frames go out.
    Closing {
        /// When the close started (shard ms), for the close timeout.
        since_ms: u64,
    },
    /// Torn down; waiting for the reader to unregister and drop the socket.
    Closed,
}

/// [`Phase`] without its timestamp (which lives in [`ConnState::stamp_ms`]), so the state
/// stays one word smaller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Open,
    Closing,
    Closed,
}

/// One frame in the outbox.
struct Queued {
    /// The shared frame (a reference, not a copy).
    frame: Bytes,
    /// When the notification it carries reached the gateway; `None` for the gateway's own
    /// frames (greeting, pongs, pings, errors, close), which are not notifications.
    born: Option<Instant>,
}

/// The connection's state, with no socket in it.
pub struct ConnState {
    /// Life-cycle state.
    stage: Stage,
    /// Shard time (ms): while open, when the client last sent anything (drives the idle ping
    /// and timeout); once closing, when the close started (drives the close timeout).
    stamp_ms: u64,
    /// Frames waiting for the socket, in send order; the front one may be partly written.
    /// Empty (no heap) on an idle connection. A writer task exists while it is non-empty.
    queue: VecDeque<Queued>,
    /// Bytes of the front frame already written.
    head_written: usize,
    /// Unwritten bytes across `queue` (for the byte cap and the gauge).
    bytes: usize,
    /// Why notifications offered from now on are dropped (set when the close starts).
    drop_reason: DropReason,
    /// A server ping went out and no frame has arrived since.
    ping_outstanding: bool,
    /// Shut the write side once the queue drains: the close frame is the last one in it.
    fin_after_flush: bool,
    /// The client's close frame has arrived too: once ours is out, the closing handshake is
    /// complete and the connection is torn down (RFC 6455 §5.5.1) rather than half-closed.
    peer_closed: bool,
    /// A writer task exists (it drains `queue` when the socket is writable).
    writer: bool,
    /// The outbox holds ciphertext (a wss:// connection): every queued frame was encrypted when
    /// it was offered and took its place in the TLS record sequence, so a close keeps them all
    /// (the close frame goes after them) instead of dropping the unstarted ones.
    sealed: bool,
}

impl ConnState {
    /// A freshly upgraded connection at shard time `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self {
            stage: Stage::Open,
            stamp_ms: now_ms,
            queue: VecDeque::new(),
            head_written: 0,
            bytes: 0,
            drop_reason: DropReason::ConnectionClosing,
            ping_outstanding: false,
            fin_after_flush: false,
            peer_closed: false,
            writer: false,
            sealed: false,
        }
    }

    /// A freshly upgraded wss:// connection: its outbox holds ciphertext (see `sealed`).
    pub fn new_sealed(now_ms: u64) -> Self {
        Self {
            sealed: true,
            ..Self::new(now_ms)
        }
    }

    /// Current life-cycle state.
    pub fn phase(&self) -> Phase {
        match self.stage {
            Stage::Open => Phase::Open,
            Stage::Closing => Phase::Closing {
                since_ms: self.stamp_ms,
            },
            Stage::Closed => Phase::Closed,
        }
    }

    /// Records that the client sent something at `now_ms` (while open: once closing, nothing
    /// the client sends delays the close timeout).
    pub fn touch(&mut self, now_ms: u64) {
        if self.stage == Stage::Open {
            self.stamp_ms = now_ms;
            self.ping_outstanding = false;
        }
    }

    /// Shard time of the client's last frame (meaningful while open).
    pub fn last_rx_ms(&self) -> u64 {
        self.stamp_ms
    }

    /// Whether an idle ping is awaiting an answer.
    pub fn ping_outstanding(&self) -> bool {
        self.ping_outstanding
    }

    /// Records that an idle ping is being sent.
    pub fn ping_sent(&mut self) {
        self.ping_outstanding = true;
    }

    /// Unwritten bytes held in the outbox.
    #[cfg(test)]
    pub fn queued_bytes(&self) -> usize {
        self.bytes
    }

    /// Whether frames wait in the outbox (and so a writer task exists or must exist).
    pub fn has_queue(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Offers a frame of `len` bytes; `born` is `Some` for a notification (when it reached the
    /// gateway), `None` for the gateway's own frames. `now_ms` gives shard time (read only when
    /// the offer starts a close, so the common path reads no clock) (for a close this
    /// may start).
    pub fn offer(
        &mut self,
        len: usize,
        born: Option<Instant>,
        limits: &OutboxLimits,
        now_ms: impl FnOnce() -> u64,
        stats: &ShardStats,
    ) -> Offer {
        if self.stage != Stage::Open {
            if born.is_some() {
                stats.inc_drop(self.drop_reason, 1);
            }
            return Offer::Refused;
        }
        if self.queue.is_empty() {
            return Offer::Direct;
        }
        if self.queue.len() >= limits.max_messages || self.bytes + len > limits.max_bytes {
            stats.inc_slow_consumer_closed();
            if born.is_some() {
                stats.inc_drop(DropReason::SlowConsumer, 1);
            }
            let close = self.close(
                CloseCode::TryAgain1013.code(),
                CloseCode::TryAgain1013,
                "slow consumer: outbox full",
                DropReason::SlowConsumer,
                now_ms(),
                stats,
            );
            return Offer::Overflow(close.expect("an open connection starts closing"));
        }
        Offer::Queued
    }

    /// Appends a frame the shell was told to queue ([`Offer::Queued`]).
    pub fn enqueue(&mut self, frame: Bytes, born: Option<Instant>, stats: &ShardStats) {
        self.charge(frame.len(), stats);
        self.queue.push_back(Queued { frame, born });
    }

    /// Reports a direct write ([`Offer::Direct`], or a close frame) of which the kernel took
    /// `written` bytes (0 when it would have blocked). A notification written whole is added to
    /// `tally` (the caller settles it); the rest of a partly written frame is queued (a
    /// reference to the shared frame, not a copy).
    pub fn direct_written(
        &mut self,
        frame: &Bytes,
        born: Option<Instant>,
        written: usize,
        tally: &mut Tally,
        stats: &ShardStats,
    ) -> Direct {
        debug_assert!(self.queue.is_empty() && written <= frame.len());
        if written == frame.len() {
            if born.is_some() {
                tally.written += 1;
            }
            return Direct::Complete {
                shutdown: self.shutdown_when_flushed(),
            };
        }
        self.charge(frame.len() - written, stats);
        self.head_written = written;
        self.queue.push_back(Queued {
            frame: frame.clone(),
            born,
        });
        Direct::Queued
    }

    /// A write failed (the peer is gone): the connection is torn down, and a notification being
    /// written is counted as dropped. Returns `true` when the shell must shut the socket.
    pub fn write_failed(&mut self, born: Option<Instant>, stats: &ShardStats) -> bool {
        if born.is_some() {
            stats.inc_drop(self.drop_reason, 1);
        }
        self.abort()
    }

    /// Claims the writer role: `true` when no writer task exists yet and the shell must spawn
    /// one (the outbox just became non-empty).
    pub fn start_writer(&mut self) -> bool {
        !std::mem::replace(&mut self.writer, true)
    }

    /// The writer task ends (the outbox is empty or the connection closed).
    pub fn writer_done(&mut self) {
        self.writer = false;
    }

    /// Fills `out` with the unwritten bytes of the outbox, in order (the front frame from its
    /// first unwritten byte). Returns how many slices were filled.
    pub fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut count = 0;
        for (slot, (i, queued)) in out.iter_mut().zip(self.queue.iter().enumerate()) {
            let start = if i == 0 { self.head_written } else { 0 };
            *slot = IoSlice::new(&queued.frame[start..]);
            count += 1;
        }
        count
    }

    /// Reports that the kernel took `n` queued bytes (from [`Self::slices`]). Frames completed
    /// by it are released; notifications among them are counted as sent, with their latency.
    pub fn written(&mut self, n: usize, stats: &ShardStats) -> Flushed {
        debug_assert!(n <= self.bytes);
        self.discharge(n, stats);
        let mut left = n + self.head_written;
        self.head_written = 0;
        while let Some(front) = self.queue.front() {
            if left < front.frame.len() {
                self.head_written = left;
                break;
            }
            left -= front.frame.len();
            if let Some(born) = front.born {
                stats.add_sent(1);
                stats
                    .delivery_latency
                    .observe_us(born.elapsed().as_micros() as u64);
            }
            self.queue.pop_front();
        }
        if self.queue.is_empty() {
            Flushed::Empty {
                shutdown: self.shutdown_when_flushed(),
            }
        } else {
            Flushed::More
        }
    }

    /// Starts the closing handshake with close code `wire` (counted under `label`): unstarted
    /// queued frames are dropped (notifications among them counted as `drops`, which also
    /// becomes the reason for notifications offered from now on), and the close frame to send
    /// is returned; the shell writes it like any frame (directly when nothing is queued, else it
    /// queues behind the partly written head). `None` when already closing or closed.
    pub fn close(
        &mut self,
        wire: u16,
        label: CloseCode,
        reason: &str,
        drops: DropReason,
        now_ms: u64,
        stats: &ShardStats,
    ) -> Option<Bytes> {
        if self.stage != Stage::Open {
            return None;
        }
        self.stage = Stage::Closing;
        self.stamp_ms = now_ms;
        self.drop_reason = drops;
        let keep = if self.sealed {
            self.queue.len()
        } else {
            usize::from(self.head_written > 0).min(self.queue.len())
        };
        let mut freed = 0;
        let mut lost = 0;
        for dropped in self.queue.drain(keep..) {
            freed += dropped.frame.len();
            lost += u64::from(dropped.born.is_some());
        }
        self.discharge(freed, stats);
        if lost > 0 {
            stats.inc_drop(drops, lost);
        }
        self.fin_after_flush = true;
        stats.inc_close(label);
        Some(crate::proto::frame::encode_close(wire, reason))
    }

    /// The close frame produced by [`Self::close`] is offered to the socket: like
    /// [`Self::offer`] for a frame that may be sent while closing.
    pub fn offer_close(&self) -> Offer {
        if self.stage == Stage::Closed {
            Offer::Refused
        } else if self.queue.is_empty() {
            Offer::Direct
        } else {
            Offer::Queued
        }
    }

    /// The client's close frame arrived after we had queued ours (or while ours is still
    /// queued). Returns `true` when our close frame is already out, i.e. the closing handshake
    /// is complete and the connection should be torn down now; otherwise the writer does it
    /// once the close frame is written.
    pub fn peer_closed(&mut self) -> bool {
        if self.queue.is_empty() {
            return true;
        }
        self.peer_closed = true;
        false
    }

    /// Tears the connection down (dead peer, write error, close timeout, eviction). Returns
    /// `true` the first time, when the shell must shut the socket both ways.
    pub fn abort(&mut self) -> bool {
        if self.stage == Stage::Closed {
            return false;
        }
        self.stage = Stage::Closed;
        true
    }

    /// Final teardown, once, as the reader exits: everything still queued is released and its
    /// notifications are counted as dropped. Afterwards the outbox is empty and the gauge has
    /// been given back every byte this connection was charged.
    pub fn finish(&mut self, stats: &ShardStats) {
        self.stage = Stage::Closed;
        let lost = self.queue.iter().filter(|q| q.born.is_some()).count() as u64;
        if lost > 0 {
            stats.inc_drop(self.drop_reason, lost);
        }
        self.discharge(self.bytes, stats);
        self.queue = VecDeque::new();
        self.head_written = 0;
    }

    /// How to shut the socket once the outbox is empty: only after our close frame, and both
    /// ways when the peer's close has arrived too.
    fn shutdown_when_flushed(&self) -> Option<Shutdown> {
        match (self.fin_after_flush, self.stage, self.peer_closed) {
            (_, Stage::Closed, _) | (false, _, _) => None,
            (true, _, true) => Some(Shutdown::Both),
            (true, _, false) => Some(Shutdown::Write),
        }
    }

    /// Adds `n` queued bytes (to the connection and the shard gauge).
    fn charge(&mut self, n: usize, stats: &ShardStats) {
        self.bytes += n;
        stats.add_outbox_bytes(n as i64);
    }

    /// Removes `n` queued bytes (written or freed).
    fn discharge(&mut self, n: usize, stats: &ShardStats) {
        self.bytes -= n;
        stats.add_outbox_bytes(-(n as i64));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use proptest::prelude::*;

    use super::*;
    use crate::proto::frame::encode_text;

    const LIMITS: OutboxLimits = OutboxLimits {
        max_messages: 4,
        max_bytes: 1000,
    };

    /// A shell without a socket: what the kernel "accepts" is appended to `out`, and the
    /// shutdowns asked for are recorded, exactly as `Conn` would perform them.
    struct Sim {
        st: ConnState,
        stats: ShardStats,
        limits: OutboxLimits,
        out: Vec<u8>,
        shut: Option<Shutdown>,
        now_ms: u64,
    }

    impl Sim {
        fn new(limits: OutboxLimits) -> Self {
            Self {
                st: ConnState::new(0),
                stats: ShardStats::default(),
                limits,
                out: Vec::new(),
                shut: None,
                now_ms: 0,
            }
        }

        /// The kernel takes up to `accept` bytes of `bytes`.
        fn kernel(&mut self, bytes: &[u8], accept: usize) -> usize {
            let n = accept.min(bytes.len());
            assert!(
                n == 0 || self.shut.is_none(),
                "bytes written after the write side was shut"
            );
            self.out.extend_from_slice(&bytes[..n]);
            n
        }

        fn offer(&mut self, frame: Bytes, born: Option<Instant>, accept: usize) -> Offer {
            let offer = self
                .st
                .offer(frame.len(), born, &self.limits, || self.now_ms, &self.stats);
            match &offer {
                Offer::Direct => self.direct(&frame, born, accept),
                Offer::Queued => self.st.enqueue(frame, born, &self.stats),
                Offer::Refused => {}
                Offer::Overflow(close) => self.write_close(close.clone(), accept),
            }
            offer
        }

        fn direct(&mut self, frame: &Bytes, born: Option<Instant>, accept: usize) {
            let n = self.kernel(frame, accept);
            let mut tally = Tally::default();
            match self
                .st
                .direct_written(frame, born, n, &mut tally, &self.stats)
            {
                Direct::Complete { shutdown } => self.shut = self.shut.or(shutdown),
                Direct::Queued => {
                    self.st.start_writer();
                }
            }
            if let Some(born) = born {
                tally.settle(&self.stats, born);
            }
        }

        fn write_close(&mut self, close: Bytes, accept: usize) {
            match self.st.offer_close() {
                Offer::Direct => self.direct(&close, None, accept),
                Offer::Queued => self.st.enqueue(close, None, &self.stats),
                _ => {}
            }
        }

        fn close(&mut self, code: CloseCode, drops: DropReason, accept: usize) {
            let close = self
                .st
                .close(code.code(), code, "", drops, self.now_ms, &self.stats);
            if let Some(close) = close {
                self.write_close(close, accept);
            }
        }

        /// The writer runs once: the socket takes up to `accept` bytes of the outbox.
        fn flush(&mut self, accept: usize) {
            if !self.st.has_queue() || self.st.phase() == Phase::Closed {
                return;
            }
            let mut pending = Vec::new();
            {
                let mut slices = [IoSlice::new(&[]); 64];
                let count = self.st.slices(&mut slices);
                for s in &slices[..count] {
                    pending.extend_from_slice(s);
                }
            }
            assert_eq!(pending.len(), self.st.queued_bytes());
            let n = self.kernel(&pending, accept);
            if n == 0 {
                return; // would block
            }
            if let Flushed::Empty { shutdown } = self.st.written(n, &self.stats) {
                self.shut = self.shut.or(shutdown);
                self.st.writer_done();
            }
        }

        fn drops(&self, reason: DropReason) -> u64 {
            self.stats.notifications_dropped[reason as usize].load(Relaxed)
        }

        fn all_drops(&self) -> u64 {
            DropReason::ALL.iter().map(|r| self.drops(*r)).sum()
        }

        fn sent(&self) -> u64 {
            self.stats.notifications_sent.load(Relaxed)
        }

        fn gauge(&self) -> i64 {
            self.stats.outbox_bytes.load(Relaxed)
        }
    }

    /// A notification frame whose payload names it, so the output can be checked frame by frame.
    fn note(i: usize, pad: usize) -> Bytes {
        encode_text(format!("{{\"n\":{i},\"p\":\"{}\"}}", "x".repeat(pad)).as_bytes())
    }

    /// Splits server frames: (opcode, payload) of each complete frame, and whether a truncated
    /// frame follows.
    fn frames(mut out: &[u8]) -> (Vec<(u8, Vec<u8>)>, bool) {
        let mut found = Vec::new();
        loop {
            if out.is_empty() {
                return (found, false);
            }
            if out.len() < 2 {
                return (found, true);
            }
            let (len, head) = match out[1] & 0x7F {
                126 if out.len() >= 4 => (usize::from(u16::from_be_bytes([out[2], out[3]])), 4),
                126 => return (found, true),
                127 => panic!("no frame this large in these tests"),
                n => (usize::from(n), 2),
            };
            if out.len() < head + len {
                return (found, true);
            }
            found.push((out[0] & 0x0F, out[head..head + len].to_vec()));
            out = &out[head + len..];
        }
    }

    #[test]
    fn writes_directly_when_nothing_is_queued() {
        let mut sim = Sim::new(LIMITS);
        assert_eq!(
            sim.offer(note(0, 10), Some(Instant::now()), 1000),
            Offer::Direct
        );
        assert!(!sim.st.has_queue());
        assert_eq!(sim.sent(), 1);
        assert_eq!(sim.stats.delivery_latency.count(), 1);
        assert_eq!(sim.gauge(), 0);
    }

    #[test]
    fn queues_the_rest_of_a_partial_write_and_what_follows_it() {
        let mut sim = Sim::new(LIMITS);
        let a = note(0, 20);
        assert_eq!(sim.offer(a.clone(), Some(Instant::now()), 5), Offer::Direct);
        assert!(sim.st.has_queue());
        assert_eq!(sim.gauge(), (a.len() - 5) as i64);
        assert_eq!(
            sim.offer(note(1, 20), Some(Instant::now()), 0),
            Offer::Queued
        );
        assert_eq!(sim.sent(), 0, "nothing is sent until it is written whole");
        sim.flush(7);
        sim.flush(10_000);
        assert!(!sim.st.has_queue());
        assert_eq!(sim.sent(), 2);
        assert_eq!(sim.gauge(), 0);
        let (found, truncated) = frames(&sim.out);
        assert!(!truncated);
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn over_limit_closes_1013_and_counts_each_lost_notification_once() {
        let mut sim = Sim::new(LIMITS);
        // The first frame is partly written; four more fill the outbox (max 4 messages).
        sim.offer(note(0, 50), Some(Instant::now()), 3);
        for i in 1..4 {
            assert_eq!(
                sim.offer(note(i, 50), Some(Instant::now()), 0),
                Offer::Queued
            );
        }
        let over = sim.offer(note(4, 50), Some(Instant::now()), 0);
        assert!(matches!(over, Offer::Overflow(_)));
        assert_eq!(sim.st.phase(), Phase::Closing { since_ms: 0 });
        // The overflowing one and the three unstarted ones are lost as slow_consumer, once each;
        // the partly written head is kept and completed.
        assert_eq!(sim.drops(DropReason::SlowConsumer), 4);
        assert_eq!(sim.all_drops(), 4);
        assert_eq!(sim.stats.slow_consumers_closed.load(Relaxed), 1);
        assert_eq!(
            sim.stats.close_codes_sent[CloseCode::TryAgain1013 as usize].load(Relaxed),
            1
        );
        // Later notifications are refused with the same reason.
        assert_eq!(
            sim.offer(note(5, 5), Some(Instant::now()), 100),
            Offer::Refused
        );
        assert_eq!(sim.drops(DropReason::SlowConsumer), 5);
        sim.flush(10_000);
        assert_eq!(sim.shut, Some(Shutdown::Write));
        let (found, truncated) = frames(&sim.out);
        assert!(!truncated);
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].0, 8);
        assert_eq!(&found[1].1[..2], &1013u16.to_be_bytes());
        assert_eq!(sim.sent(), 1);
        sim.st.finish(&sim.stats);
        assert_eq!(sim.gauge(), 0);
    }

    #[test]
    fn close_waits_behind_a_partly_written_frame_and_drops_the_rest() {
        let mut sim = Sim::new(LIMITS);
        sim.offer(note(0, 30), Some(Instant::now()), 10);
        sim.offer(note(1, 30), Some(Instant::now()), 0);
        sim.offer(encode_text(b"{\"type\":\"pong\"}"), None, 0);
        sim.close(CloseCode::GoingAway1001, DropReason::ShuttingDown, 1000);
        // One notification and the pong were unstarted: only the notification is a lost
        // delivery.
        assert_eq!(sim.drops(DropReason::ShuttingDown), 1);
        assert_eq!(sim.all_drops(), 1);
        sim.flush(10_000);
        let (found, _) = frames(&sim.out);
        assert_eq!(found.iter().map(|f| f.0).collect::<Vec<_>>(), vec![1, 8]);
        assert_eq!(sim.shut, Some(Shutdown::Write));
    }

    #[test]
    fn peer_close_after_ours_is_out_tears_down_at_once() {
        let mut sim = Sim::new(LIMITS);
        sim.close(CloseCode::Normal1000, DropReason::ConnectionClosing, 1000);
        assert_eq!(sim.shut, Some(Shutdown::Write));
        assert!(sim.st.peer_closed());
    }

    #[test]
    fn peer_close_while_ours_is_queued_shuts_both_ways_when_it_is_out() {
        let mut sim = Sim::new(LIMITS);
        sim.close(CloseCode::Normal1000, DropReason::ConnectionClosing, 1);
        assert!(!sim.st.peer_closed());
        sim.flush(10_000);
        assert_eq!(sim.shut, Some(Shutdown::Both));
    }

    #[test]
    fn abort_and_finish_settle_every_count() {
        let mut sim = Sim::new(LIMITS);
        sim.offer(note(0, 30), Some(Instant::now()), 10);
        sim.offer(note(1, 30), Some(Instant::now()), 0);
        assert!(sim.st.abort());
        assert!(!sim.st.abort(), "abort is idempotent");
        assert_eq!(
            sim.offer(note(2, 1), Some(Instant::now()), 100),
            Offer::Refused
        );
        sim.st.finish(&sim.stats);
        assert_eq!(sim.gauge(), 0);
        assert_eq!(sim.drops(DropReason::ConnectionClosing), 3);
        assert_eq!(sim.sent(), 0);
    }

    #[test]
    fn a_failed_write_counts_the_notification_and_aborts() {
        let mut sim = Sim::new(LIMITS);
        assert!(sim.st.write_failed(Some(Instant::now()), &sim.stats));
        assert_eq!(sim.st.phase(), Phase::Closed);
        assert_eq!(sim.drops(DropReason::ConnectionClosing), 1);
    }

    #[test]
    fn touch_and_ping_state() {
        let mut st = ConnState::new(5);
        assert_eq!(st.last_rx_ms(), 5);
        st.ping_sent();
        assert!(st.ping_outstanding());
        st.touch(9);
        assert!(!st.ping_outstanding());
        assert_eq!(st.last_rx_ms(), 9);
    }

    #[test]
    fn nothing_the_client_sends_delays_the_close_timeout() {
        let mut sim = Sim::new(LIMITS);
        sim.now_ms = 100;
        sim.close(
            CloseCode::GoingAway1001,
            DropReason::ConnectionClosing,
            1000,
        );
        sim.st.touch(900);
        assert_eq!(sim.st.phase(), Phase::Closing { since_ms: 100 });
    }

    /// One step of a connection's life, as the shell would drive it.
    #[derive(Debug, Clone)]
    enum Step {
        /// Offer a notification (or one of the gateway's own frames) with `pad` bytes of
        /// padding; the kernel takes up to `accept` bytes if it is written directly.
        Offer {
            notification: bool,
            pad: usize,
            accept: usize,
        },
        /// The socket became writable and took up to `accept` bytes.
        Writable { accept: usize },
        /// The server closes (idle, drain, eviction...).
        Close { drain: bool, accept: usize },
        /// The client's close frame arrives.
        PeerClose,
        /// Dead peer, write error or close timeout.
        Abort,
    }

    fn step() -> impl Strategy<Value = Step> {
        let accept = prop_oneof![Just(0usize), 1usize..40, Just(100_000usize)];
        prop_oneof![
            6 => (any::<bool>(), 0usize..120, accept.clone())
                .prop_map(|(notification, pad, accept)| Step::Offer { notification, pad, accept }),
            4 => accept.clone().prop_map(|accept| Step::Writable { accept }),
            1 => (any::<bool>(), accept).prop_map(|(drain, accept)| Step::Close { drain, accept }),
            1 => Just(Step::PeerClose),
            1 => Just(Step::Abort),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the kernel accepts each time and whatever happens to the connection: the
        /// bytes on the wire are the accepted frames, whole and in offer order (only the very
        /// last one may be cut short by a teardown), nothing follows the close frame (which
        /// therefore never lands inside another frame), every notification is counted exactly
        /// once as sent or as dropped, over-limit closes are 1013 with `slow_consumer` drops,
        /// and the outbox gauge returns to zero.
        #[test]
        fn every_byte_once_in_order_and_every_count_settles(
            steps in prop::collection::vec(step(), 1..60),
            max_messages in 1usize..6,
            max_bytes in 40usize..600,
        ) {
            let mut sim = Sim::new(OutboxLimits { max_messages, max_bytes });
            let mut offered: Vec<Bytes> = Vec::new();
            let mut notifications = 0u64;
            let mut overflowed = false;
            let mut peer_done = false;
            for (i, step) in steps.into_iter().enumerate() {
                sim.now_ms = i as u64;
                match step {
                    Step::Offer { notification, pad, accept } => {
                        let frame = note(i, pad);
                        offered.push(frame.clone());
                        let born = notification.then(Instant::now);
                        notifications += u64::from(notification);
                        if matches!(sim.offer(frame, born, accept), Offer::Overflow(_)) {
                            overflowed = true;
                        }
                    }
                    Step::Writable { accept } => sim.flush(accept),
                    Step::Close { drain, accept } => {
                        let (code, drops) = if drain {
                            (CloseCode::GoingAway1001, DropReason::ShuttingDown)
                        } else {
                            (CloseCode::Policy1008, DropReason::ConnectionClosing)
                        };
                        sim.close(code, drops, accept);
                    }
                    Step::PeerClose if !peer_done && sim.st.phase() != Phase::Open => {
                        peer_done = true;
                        if sim.st.peer_closed() {
                            sim.st.abort();
                        }
                    }
                    Step::PeerClose => {}
                    Step::Abort => {
                        sim.st.abort();
                    }
                }
                prop_assert!(sim.gauge() >= 0);
                prop_assert_eq!(sim.gauge() as usize, sim.st.queued_bytes());
            }
            // The reader exits.
            sim.st.finish(&sim.stats);
            prop_assert_eq!(sim.gauge(), 0);
            prop_assert!(!sim.st.has_queue());

            let (found, _truncated) = frames(&sim.out);
            // Data frames: a subsequence of the offered frames, in order, each once.
            let mut next = 0;
            let mut closes = 0;
            let mut data_written = 0u64;
            for (k, (opcode, payload)) in found.iter().enumerate() {
                if *opcode == 8 {
                    closes += 1;
                    prop_assert_eq!(k, found.len() - 1, "nothing may follow the close frame");
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    if overflowed {
                        prop_assert_eq!(code, 1013);
                    }
                    continue;
                }
                let pos = offered[next..].iter().position(|f| f[2..] == payload[..] || f[4..] == payload[..]);
                prop_assert!(pos.is_some(), "a frame that was not offered, or out of order");
                next += pos.unwrap() + 1;
                data_written += 1;
            }
            prop_assert!(closes <= 1);
            prop_assert!(data_written <= offered.len() as u64);
            // Every notification is counted exactly once.
            prop_assert_eq!(sim.sent() + sim.all_drops(), notifications);
            prop_assert_eq!(sim.stats.delivery_latency.count(), sim.sent());
            prop_assert_eq!(sim.drops(DropReason::SlowConsumer) > 0 && !overflowed, false);
            prop_assert_eq!(sim.drops(DropReason::NotLocal), 0);
        }
    }

    #[test]
    fn a_sealed_outbox_keeps_every_queued_frame_when_closing() {
        // On a wss:// connection every queued frame is already encrypted in sequence: dropping
        // one would break the TLS stream, so the close frame goes after all of them.
        let stats = ShardStats::default();
        let mut st = ConnState::new_sealed(0);
        let frame = encode_text(b"{}");
        let mut tally = Tally::default();
        assert_eq!(
            st.offer(frame.len(), None, &LIMITS, || 0, &stats),
            Offer::Direct
        );
        st.direct_written(&frame, None, 0, &mut tally, &stats);
        st.enqueue(frame.clone(), Some(Instant::now()), &stats);
        let close = st
            .close(
                1000,
                CloseCode::Normal1000,
                "",
                DropReason::ConnectionClosing,
                1,
                &stats,
            )
            .unwrap();
        assert_eq!(st.offer_close(), Offer::Queued);
        st.enqueue(close.clone(), None, &stats);
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(
            st.slices(&mut slices),
            3,
            "both frames, then the close frame"
        );
        let dropped: u64 = DropReason::ALL
            .iter()
            .map(|r| stats.notifications_dropped[*r as usize].load(Relaxed))
            .sum();
        assert_eq!(dropped, 0);
        let total = 2 * frame.len() + close.len();
        assert_eq!(
            st.written(total, &stats),
            Flushed::Empty {
                shutdown: Some(Shutdown::Write)
            }
        );
        assert_eq!(stats.notifications_sent.load(Relaxed), 1);
    }
}
