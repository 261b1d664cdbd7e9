//! Opening client connections: bind to a source address, connect, optionally TLS, upgrade; then
//! hand the socket to the worker's [`super::reactor`]. Each open or reconnect is a short-lived
//! task holding one of the worker's handshake slots; an established connection has no task.

use std::{
    io::{self, Read},
    net::SocketAddr,
    rc::Rc,
    time::Duration,
};

use nix::sys::socket::{
    setsockopt,
    sockopt::{IpBindAddressNoPort, ReceiveTimestampns},
};
use rustls::{ClientConnection, HandshakeKind};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpSocket,
    sync::OwnedSemaphorePermit,
    time::timeout,
};

use super::{
    reactor,
    state::{Worker, now_us},
};
use crate::{
    stats::{failure::ConnError, hist},
    wire::{handshake, recovery},
};

/// An upgraded connection, ready for the reactor.
pub struct Opened {
    /// The socket, non-blocking.
    pub sock: std::net::TcpStream,
    /// TLS state for `wss://`.
    pub tls: Option<Box<ClientConnection>>,
    /// Bytes the server sent after its response head (already WebSocket frames, plaintext).
    pub first: Vec<u8>,
    /// The TLS handshake resumed a session.
    pub resumed: bool,
}

/// A socket bound to `src`: its explicit port if it has one and it is free, else the address with
/// the port left to connect().
fn bound(src: SocketAddr) -> io::Result<TcpSocket> {
    let sock = TcpSocket::new_v4()?;
    // Lets a source port in TIME_WAIT be bound again (reconnects, short-lived churn connections).
    sock.set_reuseaddr(true)?;
    if src.port() != 0 && sock.bind(src).is_ok() {
        return Ok(sock);
    }
    let sock = TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    // The port is chosen at connect() for the full 4-tuple, not at bind() for the address alone:
    // each source address then serves ~28k connections per destination, not ~28k in total.
    setsockopt(&sock, IpBindAddressNoPort, &true).map_err(io::Error::from)?;
    sock.bind(SocketAddr::new(src.ip(), 0))?;
    Ok(sock)
}

/// Opens a connection from `src` (port 0: the kernel picks) to the worker's target with request
/// target `target` (path and query) and upgrades it.
pub async fn open(w: &Worker, src: SocketAddr, target: &str) -> Result<Opened, ConnError> {
    let limit = Duration::from_millis(w.plan.connect_timeout_ms);
    let sock = bound(src)?;
    let stream = timeout(limit, sock.connect(w.plan.addr))
        .await
        .map_err(|_| ConnError::Timeout("connecting"))??;
    stream.set_nodelay(true)?;
    setsockopt(&stream, ReceiveTimestampns, &true).map_err(io::Error::from)?;
    let key = handshake::key_from(w.rand_u128());
    let mut req = Vec::with_capacity(256 + target.len());
    handshake::write_request(&w.plan.host, target, &key, &mut req);
    match &w.tls {
        None => {
            let mut stream = stream;
            let first = timeout(limit, upgrade(&mut stream, &req, &key))
                .await
                .map_err(|_| ConnError::Timeout("upgrading"))??;
            Ok(Opened {
                sock: stream.into_std()?,
                tls: None,
                first,
                resumed: false,
            })
        }
        Some(t) => {
            let tls = async {
                let mut s = t
                    .connector
                    .connect(t.server_name.clone(), stream)
                    .await
                    .map_err(ConnError::from)?;
                let first = upgrade(&mut s, &req, &key).await?;
                Ok::<_, ConnError>((s, first))
            };
            let (s, mut first) = timeout(limit, tls)
                .await
                .map_err(|_| ConnError::Timeout("upgrading"))??;
            let (tcp, mut conn) = s.into_inner();
            // Plaintext rustls decrypted but nobody read yet.
            let mut buf = [0u8; 4096];
            loop {
                match conn.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => first.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                }
            }
            let resumed = conn.handshake_kind() == Some(HandshakeKind::Resumed);
            Ok(Opened {
                sock: tcp.into_std()?,
                tls: Some(Box::new(conn)),
                first,
                resumed,
            })
        }
    }
}

/// Sends the upgrade request and reads the response head; returns the bytes after it.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    req: &[u8],
    key: &str,
) -> Result<Vec<u8>, ConnError> {
    s.write_all(req).await?;
    s.flush().await?;
    let mut buf = Vec::with_capacity(512);
    loop {
        if s.read_buf(&mut buf).await? == 0 {
            return Err(ConnError::Reset);
        }
        if let Some(n) = handshake::parse_response(&buf, key)? {
            return Ok(buf.split_off(n));
        }
    }
}

/// Source address (and, with `--source-ports`, port) of connection `id`.
#[must_use]
pub fn source_for(w: &Worker, id: usize) -> SocketAddr {
    let ips = &w.plan.source_ips;
    let Some((lo, hi)) = w.plan.source_ports else {
        return SocketAddr::new(ips[id % ips.len()].into(), 0);
    };
    // The global index: users are spread over workers, each user's connections are consecutive.
    let per_user = w.plan.conns_per_user as usize;
    let user = w.plan.users[id / per_user] as usize;
    let g = user * per_user + id % per_user;
    let ports = usize::from(hi - lo) + 1;
    let ip = ips[(g / ports) % ips.len()];
    SocketAddr::new(ip.into(), lo + (g % ports) as u16)
}

/// Source address of the `k`-th short-lived (churn) connection: the kernel picks the port.
#[must_use]
pub fn churn_source(w: &Worker, k: usize) -> SocketAddr {
    let ips = &w.plan.source_ips;
    SocketAddr::new(ips[k % ips.len()].into(), 0)
}

/// The request target of connection `id`: path, token and, for a recovering client that has
/// seen an offset and an epoch, `since` and `epoch`. Returns whether it asks for a replay.
fn target_for(w: &Worker, id: usize) -> (String, bool) {
    let user = w.conns.borrow()[id].user as usize;
    let mut t = format!("{}?token={}", w.plan.path, w.token(user));
    let since = w.conns.borrow()[id]
        .resume
        .as_deref()
        .and_then(|r| r.since());
    if let Some((offset, epoch)) = since {
        recovery::push_since(&mut t, offset, &w.epochs.borrow()[epoch as usize]);
    }
    (t, since.is_some())
}

/// Puts an opened connection in the reactor and feeds it what already arrived.
pub(super) fn install(w: &Rc<Worker>, id: usize, o: Opened, asked: bool) -> Result<(), ConnError> {
    w.reactor.add(&o.sock, id)?;
    if o.resumed {
        w.tls_resumed.set(w.tls_resumed.get() + 1);
    }
    w.attach(id, o.sock, o.tls, asked);
    if !o.first.is_empty()
        && let Err(e) = reactor::feed(w, id, &o.first, now_us())
    {
        reactor::close(w, id, &e);
    }
    Ok(())
}

/// One of the worker's main connections during the ramp: opens it (holding a handshake slot) and
/// hands it to the reactor.
pub async fn start(w: Rc<Worker>, id: usize, slot: OwnedSemaphorePermit) {
    let src = source_for(&w, id);
    let (target, asked) = target_for(&w, id);
    let t0 = now_us();
    let res = open(&w, src, &target).await;
    drop(slot);
    let res = res.and_then(|o| install(&w, id, o, asked));
    let done = now_us();
    let mut ramp = w.ramp.borrow_mut();
    ramp.done += 1;
    ramp.last_done_us = done;
    match res {
        Ok(()) => {
            ramp.established += 1;
            hist::record(&mut ramp.handshake, done - t0);
        }
        Err(e) => {
            *ramp.failures.entry(e.kind()).or_default() += 1;
            w.failed.set(w.failed.get() + 1);
        }
    }
    if ramp.done == ramp.attempted {
        w.ramp_done.notify_one();
    }
}

/// Brings connection `id` back after it dropped: jittered exponential backoff until it is open
/// again or the worker stops.
pub async fn reconnect(w: Rc<Worker>, id: usize) {
    let Some(backoff) = w.plan.reconnect else {
        return;
    };
    // The kernel picks the port: an explicit one would be the same 4-tuple as the connection
    // that just ended, and the server side may hold it in TIME_WAIT for a minute (measured: after
    // a gateway was killed, reconnects from their old ports kept failing). Explicit ports come from
    // outside the ephemeral range, so the two never collide.
    let src = SocketAddr::new(source_for(&w, id).ip(), 0);
    let mut delay = backoff.min_ms;
    loop {
        // Jitter in [delay/2, delay] spreads the herd without starving anyone.
        let wait = delay / 2 + w.rand_below(delay as usize / 2 + 1) as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if w.stopping.get() {
            return;
        }
        let Ok(slot) = w.connect_slots.clone().acquire_owned().await else {
            return;
        };
        let (target, asked) = target_for(&w, id);
        let t0 = now_us();
        let res = open(&w, src, &target).await;
        drop(slot);
        let now = now_us();
        let res = res.and_then(|o| install(&w, id, o, asked));
        match res {
            Ok(()) => {
                let mut storm = w.storm.borrow_mut();
                if storm.active {
                    storm.reconnected += 1;
                    if storm.first_reconnect_us == 0 {
                        storm.first_reconnect_us = now;
                    }
                    storm.last_reconnect_us = now;
                    hist::record(&mut storm.handshake, now - t0);
                }
                drop(storm);
                let user = {
                    let mut conns = w.conns.borrow_mut();
                    conns[id].reconnected_us = now;
                    conns[id].user as usize
                };
                w.probe_queue.borrow_mut().push(user);
                w.wake_prober.notify_one();
                return;
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
