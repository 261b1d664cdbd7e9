//! One client connection after the upgrade: its socket and the thin shell that performs the
//! writes its [`state`] machine asks for.
//!
//! Writes take the fast path whenever they can: a frame goes straight to the socket with a
//! non-blocking `send(2)` from the shared, already-encoded frame (no copy, no allocation per
//! recipient). Only what the kernel does not take is queued in the outbox, and only then is a
//! writer task spawned to wait for writability and drain it with `sendmsg(2)`. An idle
//! connection therefore owns no buffer and no writer task, just this struct and its reader task.
//!
//! Every decision (queue or write, when to close and with what, what to count) is made by
//! [`state::ConnState`], which does no I/O and is unit- and property-tested; this file only
//! moves bytes between it and the socket (`net::sys`).
//!
//! A wss:// connection differs in one place, decided once per connection: a frame is encrypted
//! for this connection at send time ([`sealed`]) and what the kernel does not take is queued as
//! ciphertext; the outbox, the writer task and every decision above are the same.

pub mod decision;
pub mod sealed;
pub mod state;

use std::{
    cell::{Cell, RefCell, RefMut},
    io::{self, IoSlice},
    net::Shutdown,
    os::fd::BorrowedFd,
    rc::Rc,
    time::Instant,
};

use bytes::Bytes;
use monoio::net::TcpStream;

pub use self::state::Phase;
use self::state::{ConnState, Direct, Flushed, Offer, OutboxLimits, Tally};
use super::{
    Shard,
    shared::Slot,
    socket::{Socket, Tls},
};
use crate::{
    metrics::{DropReason, ErrorType},
    net::sys,
    proto::{close::CloseCode, frame},
};

/// How many queued frames one `sendmsg(2)` hands to the kernel at most.
const MAX_IOVECS: usize = 64;

/// What happened to a frame handed to [`Conn::send`] or [`Conn::deliver`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Fully written to the socket.
    Written,
    /// Partly or not yet written; waits in the outbox.
    Queued,
    /// Not accepted: the connection is closing or closed, or its outbox overflowed (in which case
    /// it is now closing with 1013). A notification was counted as dropped.
    Rejected,
}

/// A connection owned by one shard.
pub struct Conn {
    /// The socket. Owned here, not by a task, so the descriptor stays valid (cannot be closed and
    /// reused) for as long as anything can still reach this connection and write to it.
    pub(in crate::shard) stream: TcpStream,
    /// The authenticated user (shared with the registry's index).
    pub user: Rc<str>,
    /// Slab key in the shard registry, set on insert.
    pub(in crate::shard) key: Cell<u32>,
    /// The TLS session on a wss:// connection (`None`: plain ws://, one null pointer).
    pub(in crate::shard) tls: Option<Tls>,
    /// Phase, outbox and accounting; no I/O.
    state: RefCell<ConnState>,
    /// The connection's slot against `MAX_CONNECTIONS`: given back when the reader ends, or at
    /// once when the connection is evicted (it then no longer counts, though its socket lives
    /// until the reader has seen the teardown).
    slot: Cell<Option<Slot>>,
}

impl Conn {
    /// Wraps an upgraded socket (and its TLS session, if any).
    pub fn new(stream: impl Into<Socket>, user: Rc<str>, now_ms: u64) -> Self {
        let Socket { tcp: stream, tls } = stream.into();
        let state = match tls {
            None => ConnState::new(now_ms),
            Some(_) => ConnState::new_sealed(now_ms),
        };
        Self {
            stream,
            user,
            key: Cell::new(u32::MAX),
            tls,
            state: RefCell::new(state),
            slot: Cell::new(None),
        }
    }

    /// Makes this connection the holder of `slot`.
    pub(in crate::shard) fn hold(&self, slot: Slot) {
        self.slot.set(Some(slot));
    }

    /// Gives the connection's slot back (idempotent).
    pub(in crate::shard) fn release_slot(&self) {
        drop(self.slot.take());
    }

    /// Closes the oldest connection of a user who opened one too many: the 1008 close frame is
    /// written if the socket takes it, then the connection is torn down and its slot given back
    /// at once, without waiting for the client's side of the closing handshake (a client that
    /// never answers must not keep a slot for `CLOSE_TIMEOUT`).
    pub fn evict(self: &Rc<Self>, shard: &Rc<Shard>) {
        let reason = "too many connections for this user; closing the oldest";
        self.close(shard, CloseCode::Policy1008, reason);
        self.abort();
        self.release_slot();
    }

    /// The socket's descriptor, for the non-blocking calls in [`sys`].
    pub(in crate::shard) fn fd(&self) -> BorrowedFd<'_> {
        sys::borrow(&self.stream)
    }

    /// Current life-cycle state.
    pub fn phase(&self) -> Phase {
        self.state.borrow().phase()
    }

    /// Records that the client sent something now.
    pub fn touch(&self, now_ms: u64) {
        self.state.borrow_mut().touch(now_ms);
    }

    /// Shard time of the client's last frame.
    pub fn last_rx_ms(&self) -> u64 {
        self.state.borrow().last_rx_ms()
    }

    /// Whether an idle ping is awaiting an answer.
    pub fn ping_outstanding(&self) -> bool {
        self.state.borrow().ping_outstanding()
    }

    /// Sends a WebSocket ping because the client has been silent.
    pub fn send_idle_ping(self: &Rc<Self>, shard: &Rc<Shard>) {
        self.state.borrow_mut().ping_sent();
        self.send(shard, frame::encode_ping(&[]));
    }

    /// Writes or queues one of the gateway's own frames (greeting, pong, error, ping). Never
    /// blocks; never grows memory past the outbox caps: a connection that would exceed them is
    /// closed with 1013 instead.
    pub fn send(self: &Rc<Self>, shard: &Rc<Shard>, frame: Bytes) -> SendOutcome {
        self.offer(shard, &frame, None, &mut Tally::default())
    }

    /// Writes or queues a notification that reached the gateway at `born`. One written at once
    /// is added to `tally`, which the caller settles once for all recipients.
    pub fn deliver(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        frame: &Bytes,
        born: Instant,
        tally: &mut Tally,
    ) -> SendOutcome {
        self.offer(shard, frame, Some(born), tally)
    }

    /// Starts the closing handshake with one of the gateway's own codes. Unstarted queued
    /// frames are dropped, the close frame goes out after any partly written frame, then the
    /// write side is shut. Idempotent.
    pub fn close(self: &Rc<Self>, shard: &Rc<Shard>, code: CloseCode, reason: &str) {
        let drops = match code {
            CloseCode::TryAgain1013 => DropReason::SlowConsumer,
            CloseCode::GoingAway1001 if shard.draining() => DropReason::ShuttingDown,
            _ => DropReason::ConnectionClosing,
        };
        self.close_with(shard, code.code(), code, reason, drops);
    }

    /// [`Self::close`] with an explicit wire code, metrics label and drop reason (e.g. echoing
    /// a client's application close code).
    pub fn close_with(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        wire: u16,
        label: CloseCode,
        reason: &str,
        drops: DropReason,
    ) {
        let mut st = self.state.borrow_mut();
        let now = shard.now_ms();
        if let Some(close) = st.close(wire, label, reason, drops, now, &shard.stats) {
            self.write_close(st, shard, close);
        }
    }

    /// Records that the client's close frame arrived after we had queued ours (or while ours is
    /// still queued). Returns `true` when our close frame is already out, i.e. the closing
    /// handshake is complete and the caller should tear down now; otherwise the writer does it
    /// once the close frame is written.
    pub fn peer_closed(&self) -> bool {
        self.state.borrow_mut().peer_closed()
    }

    /// Tears the connection down at once (dead peer, write error, close timeout, eviction): both
    /// directions are shut, which wakes the reader task with end of stream; it then unregisters.
    pub fn abort(&self) {
        if self.state.borrow_mut().abort() {
            sys::shutdown(self.fd(), Shutdown::Both);
        }
    }

    /// Final teardown, called once by the reader task as it exits.
    pub(in crate::shard) fn finish(&self, shard: &Shard) {
        self.state.borrow_mut().finish(&shard.stats);
        sys::shutdown(self.fd(), Shutdown::Both);
    }

    /// Runs one frame through the state machine and performs what it decides.
    fn offer(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        frame: &Bytes,
        born: Option<Instant>,
        tally: &mut Tally,
    ) -> SendOutcome {
        let mut st = self.state.borrow_mut();
        let limits = outbox_limits(shard);
        let offer = st.offer(frame.len(), born, &limits, || shard.now_ms(), &shard.stats);
        if let Some(tls) = &self.tls {
            return sealed::offer(self, tls, st, shard, offer, frame, born, tally);
        }
        match offer {
            Offer::Direct => self.write_direct(st, shard, frame, born, tally),
            Offer::Queued => {
                st.enqueue(frame.clone(), born, &shard.stats);
                SendOutcome::Queued
            }
            Offer::Refused => SendOutcome::Rejected,
            Offer::Overflow(close) => {
                self.write_close(st, shard, close);
                SendOutcome::Rejected
            }
        }
    }

    /// Sends a close frame produced by the state machine, behind anything partly written.
    fn write_close(
        self: &Rc<Self>,
        mut st: RefMut<'_, ConnState>,
        shard: &Rc<Shard>,
        close: Bytes,
    ) {
        if let Some(tls) = &self.tls {
            return sealed::write_close(self, tls, st, shard, &close);
        }
        match st.offer_close() {
            Offer::Direct => {
                self.write_direct(st, shard, &close, None, &mut Tally::default());
            }
            Offer::Queued => st.enqueue(close, None, &shard.stats),
            Offer::Refused | Offer::Overflow(_) => {}
        }
    }

    /// The fast path: one non-blocking `send(2)` from the shared frame; the rest, if any, is
    /// queued and a writer task started.
    fn write_direct(
        self: &Rc<Self>,
        mut st: RefMut<'_, ConnState>,
        shard: &Rc<Shard>,
        frame: &Bytes,
        born: Option<Instant>,
        tally: &mut Tally,
    ) -> SendOutcome {
        let written = match sys::send(self.fd(), frame) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                shard.stats.inc_error(ErrorType::SendFailed);
                if st.write_failed(born, &shard.stats) {
                    sys::shutdown(self.fd(), Shutdown::Both);
                }
                return SendOutcome::Rejected;
            }
        };
        match st.direct_written(frame, born, written, tally, &shard.stats) {
            Direct::Complete { shutdown } => {
                if let Some(how) = shutdown {
                    sys::shutdown(self.fd(), how);
                }
                SendOutcome::Written
            }
            Direct::Queued => {
                if st.start_writer() {
                    drop(st);
                    monoio::spawn(writer(self.clone(), shard.clone()));
                }
                SendOutcome::Queued
            }
        }
    }

    /// Writes as much of the outbox as the socket takes. Returns `Ok(true)` once it is empty.
    fn flush(&self, shard: &Shard) -> io::Result<bool> {
        let mut st = self.state.borrow_mut();
        loop {
            if !st.has_queue() {
                return Ok(true);
            }
            let written = {
                let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
                let count = st.slices(&mut slices);
                match sys::send_vectored(self.fd(), &slices[..count]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                }
            };
            if let Flushed::Empty { shutdown } = st.written(written, &shard.stats) {
                if let Some(how) = shutdown {
                    sys::shutdown(self.fd(), how);
                }
                return Ok(true);
            }
        }
    }
}

/// The outbox caps from the shard's limits.
fn outbox_limits(shard: &Shard) -> OutboxLimits {
    OutboxLimits {
        max_messages: shard.limits.outbox_max_messages,
        max_bytes: shard.limits.outbox_max_bytes,
    }
}

/// The writer task: exists only while a connection has queued bytes. Waits for writability,
/// drains, and exits when the queue is empty (or the socket failed).
async fn writer(conn: Rc<Conn>, shard: Rc<Shard>) {
    loop {
        if conn.phase() == Phase::Closed {
            break;
        }
        if conn.stream.writable(false).await.is_err() {
            conn.abort();
            break;
        }
        match conn.flush(&shard) {
            Ok(true) => break,
            Ok(false) => continue,
            Err(_) => {
                shard.stats.inc_error(ErrorType::SendFailed);
                conn.abort();
                break;
            }
        }
    }
    conn.state.borrow_mut().writer_done();
}
