//! One client connection after the upgrade: its socket, its bounded outbox and its close state.
//!
//! Writes take the fast path whenever they can: a frame goes straight to the socket with a
//! non-blocking `send(2)` from the shared, already-encoded frame (no copy, no allocation per
//! recipient). Only what the kernel does not take is queued in the outbox, and only then is a
//! writer task spawned to wait for writability and drain it. An idle connection therefore owns
//! no buffer and no writer task, just this struct and its reader task.
//!
//! Closing follows RFC 6455 §7: the close frame is queued behind any frame already partly written
//! (never in the middle of one), unstarted frames are dropped, the write side is shut once the
//! close frame is out, and the reader waits for the client's close or end of stream. The shard's
//! sweep aborts connections whose closing handshake outlives `close_timeout`.

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    io::{self, IoSlice},
    net::Shutdown,
    os::fd::BorrowedFd,
    rc::Rc,
    sync::atomic::Ordering::Relaxed,
};

use bytes::Bytes;
use monoio::net::TcpStream;

use super::Shard;
use crate::{
    metrics::{DropReason, ErrorType},
    net::sys,
    proto::{close::CloseCode, frame},
};

/// How many queued frames one `sendmsg(2)` hands to the kernel at most.
const MAX_IOVECS: usize = 64;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Exchanging messages.
    Open,
    /// A close frame has been queued (by either side) at this shard time in ms; no more data
    /// frames go out.
    Closing { since_ms: u64 },
    /// Torn down; waiting for the last reference to drop the socket.
    Closed,
}

/// What happened to a frame handed to [`Conn::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Fully written to the socket.
    Written,
    /// Partly or not yet written; waits in the outbox.
    Queued,
    /// Not accepted: the connection is closing or closed, or its outbox overflowed (in which case
    /// it is now closing with 1013).
    Rejected,
}

/// Frames waiting for the socket to take them.
#[derive(Default)]
struct Outbox {
    /// Shared frames in send order; the front one may be partly written.
    frames: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    head_written: usize,
    /// Unwritten bytes across `frames` (for the byte cap and the gauge).
    bytes: usize,
    /// A writer task is draining the queue. Invariant: `frames` is non-empty only while true.
    writer_active: bool,
    /// Shut the write side once the queue drains: the close frame is the last one in it.
    fin_after_flush: bool,
    /// The client's close frame has arrived too: once ours is out, the closing handshake is
    /// complete and the connection is torn down (RFC 6455 §5.5.1) rather than half-closed.
    peer_closed: bool,
}

/// A connection owned by one shard.
pub struct Conn {
    /// The socket. Owned here, not by a task, so the descriptor stays valid (cannot be closed and
    /// reused) for as long as anything can still reach this connection and write to it.
    pub(super) stream: TcpStream,
    /// The authenticated user (shared with the registry's index).
    pub user: Rc<str>,
    /// Slab key in the shard registry, set on insert.
    pub(super) key: Cell<u32>,
    /// Shard time (ms) when the client last sent anything; drives the idle ping and timeout.
    last_rx_ms: Cell<u64>,
    /// A server ping went out and no frame has arrived since.
    ping_outstanding: Cell<bool>,
    /// Life-cycle state.
    phase: Cell<Phase>,
    /// Pending writes; empty (no heap) on an idle connection.
    outbox: RefCell<Outbox>,
}

impl Conn {
    /// Wraps an upgraded socket.
    pub fn new(stream: TcpStream, user: Rc<str>, now_ms: u64) -> Self {
        Self {
            stream,
            user,
            key: Cell::new(u32::MAX),
            last_rx_ms: Cell::new(now_ms),
            ping_outstanding: Cell::new(false),
            phase: Cell::new(Phase::Open),
            outbox: RefCell::new(Outbox::default()),
        }
    }

    /// The socket's descriptor, for the non-blocking calls in [`sys`].
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        sys::borrow(&self.stream)
    }

    /// Current life-cycle state.
    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    /// Records that the client sent something now.
    pub fn touch(&self, now_ms: u64) {
        self.last_rx_ms.set(now_ms);
        self.ping_outstanding.set(false);
    }

    /// Shard time of the client's last frame.
    pub fn last_rx_ms(&self) -> u64 {
        self.last_rx_ms.get()
    }

    /// Whether an idle ping is awaiting an answer.
    pub fn ping_outstanding(&self) -> bool {
        self.ping_outstanding.get()
    }

    /// Sends a WebSocket ping because the client has been silent.
    pub fn send_idle_ping(self: &Rc<Self>, shard: &Rc<Shard>) {
        self.ping_outstanding.set(true);
        self.send(shard, frame::encode_ping(&[]));
    }

    /// Writes or queues a data or control frame. Never blocks; never grows memory past the
    /// outbox caps: a connection that would exceed them is closed with 1013 instead.
    pub fn send(self: &Rc<Self>, shard: &Rc<Shard>, frame: Bytes) -> SendOutcome {
        if self.phase.get() != Phase::Open {
            return SendOutcome::Rejected;
        }
        {
            let ob = self.outbox.borrow();
            let limits = &shard.limits;
            if ob.writer_active
                && (ob.frames.len() >= limits.outbox_max_messages
                    || ob.bytes + frame.len() > limits.outbox_max_bytes)
            {
                drop(ob);
                shard.stats.slow_consumers_closed.fetch_add(1, Relaxed);
                shard.stats.inc_drop(DropReason::SlowConsumer, 1);
                self.close(shard, CloseCode::TryAgain1013, "slow consumer: outbox full");
                return SendOutcome::Rejected;
            }
        }
        self.write_or_queue(shard, frame)
    }

    /// Starts the closing handshake with `code`. Unstarted queued frames are dropped (counted as
    /// `reason` drops when the close is for a slow consumer), the close frame goes out after any
    /// partly written frame, then the write side is shut. Idempotent.
    pub fn close(self: &Rc<Self>, shard: &Rc<Shard>, code: CloseCode, reason: &str) {
        if self.phase.get() != Phase::Open {
            return;
        }
        self.phase.set(Phase::Closing {
            since_ms: shard.now_ms(),
        });
        {
            let mut ob = self.outbox.borrow_mut();
            let keep = usize::from(ob.head_written > 0).min(ob.frames.len());
            let dropped: usize = ob.frames.iter().skip(keep).map(Bytes::len).sum();
            let dropped_frames = ob.frames.len() - keep;
            ob.frames.truncate(keep);
            ob.bytes -= dropped;
            shard.stats.outbox_bytes.fetch_sub(dropped as i64, Relaxed);
            if dropped_frames > 0 {
                let reason = if code == CloseCode::TryAgain1013 {
                    DropReason::SlowConsumer
                } else {
                    DropReason::ShuttingDown
                };
                shard.stats.inc_drop(reason, dropped_frames as u64);
            }
            ob.fin_after_flush = true;
        }
        shard.stats.inc_close(code);
        self.write_or_queue(shard, frame::encode_close(code.code(), reason));
    }

    /// Records that the client's close frame arrived after we had queued ours (or while ours is
    /// still queued). Returns `true` when our close frame is already out, i.e. the closing
    /// handshake is complete and the caller should tear down now; otherwise the writer does it
    /// once the close frame is written.
    pub fn peer_closed(&self) -> bool {
        let mut ob = self.outbox.borrow_mut();
        if ob.frames.is_empty() {
            return true;
        }
        ob.peer_closed = true;
        false
    }

    /// Tears the connection down at once (dead peer, write error, close timeout): both directions
    /// are shut, which wakes the reader task with end of stream; it then unregisters.
    pub fn abort(&self) {
        if self.phase.get() == Phase::Closed {
            return;
        }
        self.phase.set(Phase::Closed);
        sys::shutdown(self.fd(), Shutdown::Both);
    }

    /// Final teardown, called once by the reader task as it exits.
    pub(super) fn finish(&self, shard: &Shard) {
        self.phase.set(Phase::Closed);
        sys::shutdown(self.fd(), Shutdown::Both);
        let mut ob = self.outbox.borrow_mut();
        shard.stats.outbox_bytes.fetch_sub(ob.bytes as i64, Relaxed);
        ob.frames.clear();
        ob.bytes = 0;
    }

    /// The fast path: write directly when nothing is queued, else append to the queue.
    fn write_or_queue(self: &Rc<Self>, shard: &Rc<Shard>, frame: Bytes) -> SendOutcome {
        let mut ob = self.outbox.borrow_mut();
        if ob.writer_active {
            ob.bytes += frame.len();
            shard
                .stats
                .outbox_bytes
                .fetch_add(frame.len() as i64, Relaxed);
            ob.frames.push_back(frame);
            return SendOutcome::Queued;
        }
        let written = match sys::send(self.fd(), &frame) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                drop(ob);
                shard.stats.inc_error(ErrorType::SendFailed);
                self.abort();
                return SendOutcome::Rejected;
            }
        };
        if written == frame.len() {
            if ob.fin_after_flush {
                sys::shutdown(self.fd(), Shutdown::Write);
            }
            return SendOutcome::Written;
        }
        let rest = frame.len() - written;
        ob.bytes += rest;
        shard.stats.outbox_bytes.fetch_add(rest as i64, Relaxed);
        ob.head_written = written;
        ob.frames.push_back(frame);
        ob.writer_active = true;
        drop(ob);
        monoio::spawn(drain(self.clone(), shard.clone()));
        SendOutcome::Queued
    }

    /// Writes as much of the queue as the socket takes. Returns `Ok(true)` once it is empty.
    fn flush(&self, shard: &Shard) -> io::Result<bool> {
        let mut ob = self.outbox.borrow_mut();
        loop {
            if ob.frames.is_empty() {
                return Ok(true);
            }
            let written = {
                let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
                let mut count = 0;
                for (i, f) in ob.frames.iter().take(MAX_IOVECS).enumerate() {
                    let start = if i == 0 { ob.head_written } else { 0 };
                    slices[i] = IoSlice::new(&f[start..]);
                    count += 1;
                }
                match sys::send_vectored(self.fd(), &slices[..count]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                }
            };
            ob.bytes -= written;
            shard.stats.outbox_bytes.fetch_sub(written as i64, Relaxed);
            let mut left = written + ob.head_written;
            ob.head_written = 0;
            while let Some(front) = ob.frames.front() {
                if left >= front.len() {
                    left -= front.len();
                    ob.frames.pop_front();
                } else {
                    ob.head_written = left;
                    break;
                }
            }
        }
    }
}

/// The writer task: exists only while a connection has queued bytes. Waits for writability,
/// drains, and exits when the queue is empty (or the socket failed).
async fn drain(conn: Rc<Conn>, shard: Rc<Shard>) {
    loop {
        if conn.phase.get() == Phase::Closed {
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
    let mut ob = conn.outbox.borrow_mut();
    ob.writer_active = false;
    if ob.frames.is_empty() && ob.fin_after_flush && conn.phase.get() != Phase::Closed {
        // With the client's close already received the handshake is complete: shut both ways,
        // which wakes the reader to tear down. Otherwise half-close and await the client's.
        let how = if ob.peer_closed {
            Shutdown::Both
        } else {
            Shutdown::Write
        };
        sys::shutdown(conn.fd(), how);
    }
}
