//! Client connections: open (bind to a source address, connect, upgrade), then read frames until
//! the connection ends. This is the harness's hot path, so it is built to be cheap per message:
//!
//! - every connection reads into one shared buffer; only a partial frame at the end of a read is
//!   copied into the connection's own (usually empty) buffer;
//! - one timestamp per read call, shared by every frame in it: the kernel's receive time of the
//!   data (`SO_TIMESTAMPNS`), so batched wake-ups do not inflate latency;
//! - a short read clears the socket's readiness at once instead of costing a second `read` that
//!   would return `EWOULDBLOCK`;
//! - a notification is recognised by a byte search for `"seq":`, not a JSON parse.

use std::{
    io::{self, IoSliceMut},
    net::{Ipv4Addr, SocketAddr},
    os::fd::{AsRawFd, RawFd},
    rc::Rc,
    time::Duration,
};

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt::ReceiveTimestampns,
};
use tokio::{
    io::{AsyncWriteExt, Interest},
    net::{TcpSocket, TcpStream},
    time::timeout,
};

use super::state::{Worker, now_us};
use crate::{
    stats::{failure::ConnError, hist},
    wire::{
        frame::{self, Assembler, Delivery, opcode},
        handshake, message,
    },
};

/// Application-level ping the gateways answer with a pong.
pub const PING: &[u8] = br#"{"type":"ping"}"#;

/// Opens a connection from `src` for a user with `token` and upgrades it. Returns the socket and
/// any bytes the server sent after its response head (already WebSocket frames).
pub async fn open(
    w: &Worker,
    src: Ipv4Addr,
    token: &str,
) -> Result<(TcpStream, Vec<u8>), ConnError> {
    let limit = Duration::from_millis(w.plan.connect_timeout_ms);
    let sock = TcpSocket::new_v4()?;
    // Lets a source port in TIME_WAIT be bound again (many short-lived churn connections).
    sock.set_reuseaddr(true)?;
    // An explicit source address spreads clients over many 4-tuple spaces; the kernel picks the port.
    sock.bind(SocketAddr::new(src.into(), 0))?;
    let mut stream = timeout(limit, sock.connect(w.plan.addr))
        .await
        .map_err(|_| ConnError::Timeout("connecting"))??;
    stream.set_nodelay(true)?;
    setsockopt(&stream, ReceiveTimestampns, &true).map_err(io::Error::from)?;
    let key = handshake::key_from(w.rand_u128());
    let mut req = Vec::with_capacity(256 + token.len());
    let target = format!("{}?token={token}", w.plan.path);
    handshake::write_request(&w.plan.host, &target, &key, &mut req);
    let head = async {
        stream.write_all(&req).await?;
        let mut buf = Vec::with_capacity(512);
        loop {
            stream.readable().await?;
            match stream.try_read_buf(&mut buf) {
                Ok(0) => return Err(ConnError::Reset),
                Ok(_) => {
                    if let Some(n) = handshake::parse_response(&buf, &key)? {
                        return Ok(buf.split_off(n));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
    };
    let rest = timeout(limit, head)
        .await
        .map_err(|_| ConnError::Timeout("upgrading"))??;
    Ok((stream, rest))
}

/// Source address for the `i`-th connection.
#[must_use]
pub fn source_for(w: &Worker, i: usize) -> Ipv4Addr {
    let ips = &w.plan.source_ips;
    ips[i % ips.len()]
}

/// Per-connection read state.
struct Reader {
    /// Bytes of an incomplete frame carried to the next read.
    pending: Vec<u8>,
    /// Fragmented-message reassembly.
    asm: Assembler,
}

/// Reads connection `id` until it ends; returns why it ended.
pub async fn pump(w: &Worker, id: usize, stream: &TcpStream, first: Vec<u8>) -> ConnError {
    let mut r = Reader {
        pending: Vec::new(),
        asm: Assembler::default(),
    };
    if !first.is_empty()
        && let Err(e) = r.feed(w, id, stream, &first, now_us())
    {
        return e;
    }
    loop {
        if let Err(e) = stream.readable().await {
            return e.into();
        }
        let mut scratch = w.scratch.borrow_mut();
        let cap = scratch.len();
        let (mut got, mut at) = (0, None);
        let res = stream.try_io(Interest::READABLE, || {
            (got, at) = recv_stamped(stream.as_raw_fd(), &mut scratch)?;
            if got > 0 && got < cap {
                // A short read drained the socket: report WouldBlock so readiness is cleared now.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(got)
        });
        match res {
            _ if got > 0 => {
                let at = at.unwrap_or_else(now_us);
                if let Err(e) = r.feed(w, id, stream, &scratch[..got], at) {
                    return e;
                }
            }
            Ok(_) => return ConnError::Reset, // end of stream
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return e.into(),
        }
    }
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

impl Reader {
    /// Handles `data` just read at `now`.
    fn feed(
        &mut self,
        w: &Worker,
        id: usize,
        stream: &TcpStream,
        data: &[u8],
        now: u64,
    ) -> Result<(), ConnError> {
        if self.pending.is_empty() {
            let used = frames(&mut self.asm, w, id, stream, data, now)?;
            self.pending.extend_from_slice(&data[used..]);
        } else {
            self.pending.extend_from_slice(data);
            let used = frames(&mut self.asm, w, id, stream, &self.pending, now)?;
            self.pending.drain(..used);
        }
        Ok(())
    }
}

/// Handles every complete frame in `buf`; returns the bytes consumed.
fn frames(
    asm: &mut Assembler,
    w: &Worker,
    id: usize,
    stream: &TcpStream,
    buf: &[u8],
    now: u64,
) -> Result<usize, ConnError> {
    let mut off = 0;
    while let Some((f, n)) = frame::decode(&buf[off..])? {
        off += n;
        match asm.push(f)? {
            Delivery::Message(payload) => {
                if let Some(stamp) = message::parse(payload) {
                    w.on_stamp(id, stamp, now);
                } else if message::is_pong(payload) {
                    w.pongs.set(w.pongs.get() + 1);
                }
            }
            Delivery::Pending => {}
            Delivery::Control(c) => match c.opcode {
                opcode::PING => {
                    send(w, stream, opcode::PONG, c.payload);
                }
                opcode::CLOSE => {
                    send(
                        w,
                        stream,
                        opcode::CLOSE,
                        c.payload.get(..2).unwrap_or_default(),
                    );
                    return Err(ConnError::Closed);
                }
                _ => {}
            },
        }
    }
    Ok(off)
}

/// Writes one small masked frame without waiting; returns whether it was written whole.
pub fn send(w: &Worker, stream: &TcpStream, op: u8, payload: &[u8]) -> bool {
    let mut out = Vec::with_capacity(payload.len() + 14);
    frame::encode_masked(op, payload, (w.rand_u128() as u32).to_be_bytes(), &mut out);
    matches!(stream.try_write(&out), Ok(n) if n == out.len())
}

/// One of the worker's main connections: opens it (holding a handshake slot), then reads until it
/// ends; in reconnect mode it comes back with jittered exponential backoff until shutdown.
pub async fn run_main(w: Rc<Worker>, id: usize, slot: tokio::sync::OwnedSemaphorePermit) {
    let src = source_for(&w, id);
    let user = w.conns.borrow()[id].user;
    let token = w.users.borrow()[user].token.clone();
    let t0 = now_us();
    let res = open(&w, src, &token).await;
    drop(slot);
    let done = now_us();
    let opened = {
        let mut ramp = w.ramp.borrow_mut();
        ramp.done += 1;
        ramp.last_done_us = done;
        let opened = match res {
            Ok(s) => {
                ramp.established += 1;
                hist::record(&mut ramp.handshake, done - t0);
                Some(s)
            }
            Err(e) => {
                *ramp.failures.entry(e.kind()).or_default() += 1;
                w.failed.set(w.failed.get() + 1);
                None
            }
        };
        if ramp.done == ramp.attempted {
            w.ramp_done.notify_one();
        }
        opened
    };
    let Some((stream, first)) = opened else {
        return;
    };
    let mut session = Some((stream, first));
    let mut delay = w.plan.reconnect.map_or(0, |b| b.min_ms);
    loop {
        if let Some((stream, first)) = session.take() {
            let stream = Rc::new(stream);
            w.attach(id, stream.clone());
            let err = pump(&w, id, &stream, first).await;
            w.detach(id, &err);
        }
        let Some(backoff) = w.plan.reconnect else {
            return;
        };
        if w.stopping.get() {
            return;
        }
        // Jitter in [delay/2, delay] spreads the herd without starving anyone.
        let wait = delay / 2 + w.rand_below(delay as usize / 2 + 1) as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let Ok(slot) = w.connect_slots.clone().acquire_owned().await else {
            return;
        };
        let t0 = now_us();
        let res = open(&w, src, &token).await;
        drop(slot);
        let now = now_us();
        match res {
            Ok(s) => {
                delay = backoff.min_ms;
                {
                    let mut storm = w.storm.borrow_mut();
                    if storm.active {
                        storm.reconnected += 1;
                        if storm.first_reconnect_us == 0 {
                            storm.first_reconnect_us = now;
                        }
                        storm.last_reconnect_us = now;
                        hist::record(&mut storm.handshake, now - t0);
                    }
                }
                w.conns.borrow_mut()[id].reconnected_us = now;
                w.probe_queue.borrow_mut().push(user);
                w.wake_prober.notify_one();
                session = Some(s);
            }
            Err(e) => {
                *w.storm
                    .borrow_mut()
                    .retry_failures
                    .entry(e.kind())
                    .or_default() += 1;
                w.failed.set(w.failed.get() + 1);
                delay = (delay * 2).min(backoff.max_ms);
            }
        }
    }
}
