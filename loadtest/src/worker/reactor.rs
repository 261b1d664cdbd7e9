//! Every open client connection of a worker in one epoll set, read by one task.
//!
//! A task per connection would cost the runtime's task, its future (the connect and upgrade
//! states are large) and a runtime registration per socket, about 2.7 KB per connection all told.
//! Here an open connection is a slot in [`Worker::conns`] and an edge-triggered entry in a private
//! epoll instance; the instance's own descriptor is registered with tokio, so the reader task wakes
//! when any connection has data, asks the instance which ones (`epoll_wait` with a zero timeout),
//! and reads each of them into the worker's shared buffer. Connects and upgrades still run as
//! short-lived tasks (at most `--connect-concurrency` at once) and hand the socket over here.
//!
//! Reads (the hot path):
//! - one shared buffer; only a partial frame at the end of a read is copied into the
//!   connection's own [`ReadState`], allocated only then;
//! - one timestamp per read call, shared by every frame in it: the kernel's receive time of the
//!   data (`SO_TIMESTAMPNS`), so batched wake-ups do not inflate latency;
//! - a short read means the socket is drained (edge-triggered: new data makes a new event), so no
//!   second `read` to see `EWOULDBLOCK`;
//! - a notification is recognised by a byte search, not a JSON parse.

use std::{
    io::{self, IoSliceMut, Read, Write},
    net::TcpStream,
    os::fd::{AsFd, AsRawFd, RawFd},
    rc::Rc,
};

use nix::{
    errno::Errno,
    sys::{
        epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout},
        socket::{ControlMessageOwned, MsgFlags, recvmsg},
    },
};
use tokio::io::unix::AsyncFd;

use super::state::{ReadState, Worker, now_us};
use crate::{
    stats::failure::ConnError,
    wire::{
        frame::{self, Assembler, Delivery, opcode},
        message, recovery,
    },
};

/// Events taken per `epoll_wait`; the reader yields to other tasks between batches.
const BATCH: usize = 1024;

/// Reads of one connection per event before it is put back in line (a flood on one socket must
/// not starve the others).
const READS_PER_EVENT: usize = 8;

/// Application-level ping the gateways answer with a pong.
pub const PING: &[u8] = br#"{"type":"ping"}"#;

/// The epoll instance, as tokio sees it.
struct EpollFd(Epoll);

impl AsRawFd for EpollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.0.as_raw_fd()
    }
}

/// The worker's epoll set.
pub struct Reactor {
    /// The epoll instance, registered with tokio for readability (= some connection is ready).
    ready: AsyncFd<EpollFd>,
}

impl Reactor {
    /// A new, empty set, registered with the current runtime.
    pub fn new() -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        // `with_interest` is deprecated because a caller could close the descriptor while it is
        // registered. Here the `AsyncFd` owns the `Epoll`, which owns the descriptor, so it lives
        // exactly as long as the registration (the safe form of `register_with_interest`).
        #[allow(deprecated)]
        let ready = AsyncFd::with_interest(EpollFd(epoll), tokio::io::Interest::READABLE)?;
        Ok(Self { ready })
    }

    fn epoll(&self) -> &Epoll {
        &self.ready.get_ref().0
    }

    /// Adds connection `id`'s socket.
    pub fn add(&self, sock: &TcpStream, id: usize) -> io::Result<()> {
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET;
        self.epoll()
            .add(sock.as_fd(), EpollEvent::new(flags, id as u64))?;
        Ok(())
    }

    /// Removes a socket (before it is closed).
    pub fn remove(&self, sock: &TcpStream) {
        let _ = self.epoll().delete(sock.as_fd());
    }
}

/// Reads every ready connection, forever.
pub async fn run(w: Rc<Worker>) {
    let mut events = vec![EpollEvent::empty(); BATCH];
    let mut again: Vec<usize> = Vec::new();
    loop {
        let Ok(mut guard) = w.reactor.ready.readable().await else {
            return;
        };
        loop {
            let n = match w.reactor.epoll().wait(&mut events, EpollTimeout::ZERO) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(_) => return,
            };
            for ev in &events[..n] {
                let id = ev.data() as usize;
                if !serve(&w, id) {
                    again.push(id);
                }
            }
            // Connections that used their reads: one more turn each, after the others.
            for id in std::mem::take(&mut again) {
                if !serve(&w, id) {
                    again.push(id);
                }
            }
            if n < BATCH && again.is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        // Clears readiness only if no new event arrived since it was reported.
        guard.clear_ready();
    }
}

/// Reads connection `id` until it is drained (true) or used its reads (false).
fn serve(w: &Rc<Worker>, id: usize) -> bool {
    for _ in 0..READS_PER_EVENT {
        match read_once(w, id) {
            Ok(true) => {}
            Ok(false) => return true,
            Err(e) => {
                close(w, id, &e);
                return true;
            }
        }
    }
    false
}

/// One read of connection `id`: Ok(true) if there may be more.
fn read_once(w: &Rc<Worker>, id: usize) -> Result<bool, ConnError> {
    let (fd, tls) = {
        let conns = w.conns.borrow();
        let Some(sock) = conns.get(id).and_then(|c| c.sock.as_ref()) else {
            return Ok(false); // closed since the event was queued
        };
        (sock.as_raw_fd(), conns[id].tls.is_some())
    };
    let mut scratch = w.scratch.borrow_mut();
    let cap = scratch.len();
    let (got, at) = match recv_stamped(fd, &mut scratch) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
        Err(e) => return Err(e.into()),
    };
    if got == 0 {
        return Err(ConnError::Reset);
    }
    let at = at.unwrap_or_else(now_us);
    if tls {
        decrypt_and_feed(w, id, &scratch[..got], at)?;
    } else {
        feed(w, id, &scratch[..got], at)?;
    }
    Ok(got == cap)
}

/// One non-blocking `recvmsg` into `buf`: bytes read, and the kernel's receive time of the last
/// segment read (unix µs) when the socket has `SO_TIMESTAMPNS` on.
fn recv_stamped(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    // Room for one `cmsghdr` with a `timespec` (32 bytes on 64-bit Linux).
    let mut cmsg = [0u8; 64];
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)?;
    let mut at = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmTimestampns(ts) = c {
                let us = ts.tv_sec() as i128 * 1_000_000 + i128::from(ts.tv_nsec() / 1000);
                at = u64::try_from(us).ok();
            }
        }
    }
    Ok((msg.bytes, at))
}

/// `wss://`: feeds ciphertext to the connection's TLS state and the plaintext to [`feed`].
fn decrypt_and_feed(w: &Rc<Worker>, id: usize, mut data: &[u8], at: u64) -> Result<(), ConnError> {
    let mut plain = w.plain.borrow_mut();
    loop {
        let (got, closed) = {
            let mut conns = w.conns.borrow_mut();
            let c = &mut conns[id];
            let Some(tls) = c.tls.as_deref_mut() else {
                return Ok(());
            };
            if !data.is_empty() {
                tls.read_tls(&mut data)?;
            }
            let state = tls.process_new_packets().map_err(ConnError::tls)?;
            let avail = state.plaintext_bytes_to_read().min(plain.len());
            let got = if avail > 0 {
                tls.reader().read(&mut plain[..avail])?
            } else {
                0
            };
            if tls.wants_write() {
                flush_tls(c.sock.as_ref(), tls);
            }
            (got, state.peer_has_closed())
        };
        if got > 0 {
            feed(w, id, &plain[..got], at)?;
        } else if data.is_empty() {
            return if closed {
                Err(ConnError::Reset)
            } else {
                Ok(())
            };
        }
    }
}

/// Writes whatever TLS records are queued, without waiting (small control frames only).
fn flush_tls(sock: Option<&TcpStream>, tls: &mut rustls::ClientConnection) {
    let Some(mut s) = sock else { return };
    while tls.wants_write() {
        if tls.write_tls(&mut s).is_err() {
            return;
        }
    }
}

/// Handles `data` just read (plaintext) at `now`.
pub fn feed(w: &Rc<Worker>, id: usize, data: &[u8], now: u64) -> Result<(), ConnError> {
    let mut rd = w.conns.borrow_mut()[id].rd.take();
    let res = match rd.as_deref_mut() {
        None => {
            let mut asm = Assembler::default();
            let used = frames(&mut asm, w, id, data, now);
            let rest = used.as_ref().map_or(0, |&u| data.len() - u);
            if rest > 0 || asm.in_progress() {
                let mut st = Box::new(ReadState {
                    pending: Vec::new(),
                    asm,
                });
                if let Ok(u) = used {
                    st.pending.extend_from_slice(&data[u..]);
                }
                rd = Some(st);
            }
            used.map(|_| ())
        }
        Some(st) => {
            st.pending.extend_from_slice(data);
            let pending = std::mem::take(&mut st.pending);
            let used = frames(&mut st.asm, w, id, &pending, now);
            st.pending = pending;
            if let Ok(u) = used {
                st.pending.drain(..u);
            }
            if st.pending.is_empty() && !st.asm.in_progress() {
                rd = None;
            }
            used.map(|_| ())
        }
    };
    if let Some(c) = w.conns.borrow_mut().get_mut(id)
        && c.sock.is_some()
    {
        c.rd = rd;
    }
    res
}

/// Handles every complete frame in `buf`; returns the bytes consumed.
fn frames(
    asm: &mut Assembler,
    w: &Rc<Worker>,
    id: usize,
    buf: &[u8],
    now: u64,
) -> Result<usize, ConnError> {
    let mut off = 0;
    while let Some((f, n)) = frame::decode(&buf[off..])? {
        off += n;
        match asm.push(f)? {
            Delivery::Message(payload) => on_message(w, id, payload, now),
            Delivery::Pending => {}
            Delivery::Control(c) => match c.opcode {
                opcode::PING => {
                    send(w, id, opcode::PONG, c.payload);
                }
                opcode::CLOSE => {
                    send(w, id, opcode::CLOSE, c.payload.get(..2).unwrap_or_default());
                    return Err(ConnError::Closed);
                }
                _ => {}
            },
        }
    }
    Ok(off)
}

/// One complete text message.
fn on_message(w: &Rc<Worker>, id: usize, payload: &[u8], now: u64) {
    if let Some(stamp) = message::parse(payload) {
        let marks = w.plan.recover.then(|| recovery::scan(payload));
        w.on_stamp(id, stamp, now, marks);
    } else if let Some(b) = message::parse_bcast(payload) {
        w.on_bcast(id, b, now);
    } else if message::is_pong(payload) {
        w.pongs.set(w.pongs.get() + 1);
        w.pongs_total.set(w.pongs_total.get() + 1);
    } else if w.plan.recover {
        let m = recovery::scan(payload);
        if m.connected {
            w.on_connected(id, m);
        }
    }
}

/// Writes one small masked frame to connection `id` without waiting; returns whether it was
/// written whole.
pub fn send(w: &Worker, id: usize, op: u8, payload: &[u8]) -> bool {
    let mut out = Vec::with_capacity(payload.len() + 14);
    frame::encode_masked(op, payload, (w.rand_u128() as u32).to_be_bytes(), &mut out);
    let mut conns = w.conns.borrow_mut();
    let Some(c) = conns.get_mut(id) else {
        return false;
    };
    let Some(sock) = c.sock.as_ref() else {
        return false;
    };
    match c.tls.as_deref_mut() {
        Some(tls) => {
            if tls.writer().write_all(&out).is_err() {
                return false;
            }
            flush_tls(Some(sock), tls);
            !tls.wants_write()
        }
        None => matches!((&mut &*sock).write(&out), Ok(n) if n == out.len()),
    }
}

/// Closes connection `id` after `err`, and in reconnect mode starts its way back.
pub fn close(w: &Rc<Worker>, id: usize, err: &ConnError) {
    if w.detach(id, err) && w.plan.reconnect.is_some() && !w.stopping.get() {
        tokio::task::spawn_local(super::conn::reconnect(w.clone(), id));
    }
}
