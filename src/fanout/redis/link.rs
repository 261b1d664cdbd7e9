//! The subscriber's own connection to Redis: a socket (TCP, TLS or Unix) with a bounded read
//! buffer decoded by [`resp`](super::resp).
//!
//! Why not the `redis` crate's `PubSub`: its reads of command replies (`subscribe`,
//! `unsubscribe`, `ping`) go through `Connection::recv_response`, which, when the socket's read
//! timeout expires before the reply, counts the reply as "to skip" and later throws away the
//! next non-push value it reads. With RESP2 every published message is such a value, so a reply
//! slower than the read timeout silently costs a notification even on a connection that stays
//! up; and `get_message` hides the replies, so per-channel confirmations cannot be observed
//! while messages keep flowing. Here a read is only ever "no bytes yet": whatever arrived stays
//! in the buffer until a whole frame can be decoded, and the caller decides about liveness.
//!
//! The `redis` crate still parses URLs and asks the sentinels where the master is (see
//! [`Target`](super::target::Target)); this module only uses the resulting address and
//! credentials.

use std::{
    io,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use redis::{ConnectionAddr, ConnectionInfo};
use thiserror::Error;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UnixStream},
};

use super::resp::{self, Decoded, Frame, Item, RespError};

/// Read buffer held while frames are small.
const BASE_BUFFER: usize = 64 * 1024;

/// Why the connection failed or was given up.
#[derive(Debug, Error)]
pub enum LinkError {
    /// A socket error, or the peer closed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Redis sent something a subscriber cannot receive.
    #[error(transparent)]
    Resp(#[from] RespError),
    /// The TLS settings cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// Redis refused a command (e.g. AUTH, or SUBSCRIBE under an ACL).
    #[error("Redis answered with an error: {0}")]
    Refused(String),
    /// Nothing arrived for the liveness timeout while a reply was due.
    #[error("Redis sent nothing for {0:?} while a reply was due")]
    Silent(Duration),
    /// Replies that do not match the commands sent.
    #[error(transparent)]
    Mismatch(#[from] super::replies::Mismatch),
    /// The sentinels name another master.
    #[error("the sentinels moved the master from {from} to {to}")]
    Moved {
        /// The master this connection is to.
        from: String,
        /// The one the sentinels name now.
        to: String,
    },
    /// Finding the master failed (Sentinel or URL).
    #[error("{0}")]
    Discovery(#[from] redis::RedisError),
}

/// A socket of any of the kinds Redis is reached over.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What [`Link::next`] decoded.
pub enum Next<'a> {
    /// A whole frame.
    Frame(Frame<'a>),
    /// A message whose payload exceeds the limit (the payload is skipped).
    Oversized,
}

/// One connection to Redis.
pub struct Link {
    io: Box<dyn Io>,
    /// Received bytes; `buf[start..end]` is not decoded yet.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes of an oversized payload still to discard.
    skip: usize,
    /// Largest bulk string buffered (a payload over it is skipped and counted).
    max_bulk: usize,
    /// The buffer never grows beyond this (two bulks of `max_bulk` plus headers).
    max_buffer: usize,
    /// When the last bytes arrived.
    pub last_rx: Instant,
}

impl Link {
    /// Connects to `info`'s address, within `timeout` per step.
    pub async fn connect(
        info: &ConnectionInfo,
        max_bulk: usize,
        timeout: Duration,
    ) -> Result<Link, LinkError> {
        let io: Box<dyn Io> = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Box::new(tcp(host, *port, timeout).await?),
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                ..
            } => {
                if *insecure {
                    return Err(LinkError::Tls(
                        "certificate checks cannot be switched off (#insecure)".into(),
                    ));
                }
                let stream = tcp(host, *port, timeout).await?;
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| LinkError::Tls(e.to_string()))?;
                let connector = tokio_rustls::TlsConnector::from(tls_config()?);
                Box::new(within(timeout, connector.connect(name, stream)).await?)
            }
            ConnectionAddr::Unix(path) => Box::new(unix(path.clone(), timeout).await?),
            other => {
                let msg = format!("unsupported Redis address {other}");
                return Err(io::Error::new(io::ErrorKind::Unsupported, msg).into());
            }
        };
        Ok(Link {
            io,
            buf: vec![0; BASE_BUFFER],
            start: 0,
            end: 0,
            skip: 0,
            max_bulk,
            max_buffer: 2 * max_bulk + BASE_BUFFER,
            last_rx: Instant::now(),
        })
    }

    /// Writes `bytes` whole, within `timeout`.
    pub async fn send(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), LinkError> {
        within(timeout, self.io.write_all(bytes)).await
    }

    /// Reads what has arrived (waiting for at least one byte). Cancel-safe: a read either
    /// completes into the buffer or has not happened.
    pub async fn fill(&mut self) -> Result<(), LinkError> {
        if self.end == self.buf.len() {
            self.make_room()?;
        }
        let n = self.io.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "Redis closed the connection",
            )
            .into());
        }
        self.end += n;
        self.last_rx = Instant::now();
        Ok(())
    }

    /// The next whole frame in the buffer, if any.
    pub fn next(&mut self) -> Result<Option<Next<'_>>, LinkError> {
        if self.skip > 0 {
            let n = self.skip.min(self.end - self.start);
            self.start += n;
            self.skip -= n;
            if self.skip > 0 {
                return Ok(None);
            }
        }
        let start = self.start;
        match resp::decode(&self.buf[start..self.end], self.max_bulk)? {
            Decoded::Incomplete => Ok(None),
            Decoded::Frame { frame, used } => {
                self.start += used;
                Ok(Some(Next::Frame(frame)))
            }
            Decoded::Oversized { used, skip, .. } => {
                self.start += used;
                self.skip = skip;
                Ok(Some(Next::Oversized))
            }
        }
    }

    /// Makes room at the end of a full buffer: drop what was decoded, else grow (a frame
    /// bigger than the buffer), never beyond the bound.
    fn make_room(&mut self) -> Result<(), LinkError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == 0 && self.buf.len() > BASE_BUFFER {
                // A large frame has gone: give its memory back.
                self.buf.truncate(BASE_BUFFER);
                self.buf.shrink_to_fit();
            }
            if self.end < self.buf.len() {
                return Ok(());
            }
        }
        if self.buf.len() >= self.max_buffer {
            return Err(RespError::TooLarge("a frame larger than the read buffer").into());
        }
        let len = (self.buf.len() * 2).min(self.max_buffer);
        self.buf.resize(len, 0);
        Ok(())
    }

    /// Sends one command and waits for its `+OK` (used before subscribing, e.g. AUTH).
    pub async fn command_ok<A: AsRef<[u8]>>(
        &mut self,
        args: &[A],
        timeout: Duration,
    ) -> Result<(), LinkError> {
        let mut out = Vec::new();
        resp::encode_command(args, &mut out);
        self.send(&out, timeout).await?;
        within(timeout, async {
            loop {
                let reply = match self.next()? {
                    Some(Next::Frame(f)) => Some(match f.items.first() {
                        Some(Item::Status(_)) => Ok(()),
                        Some(Item::Error(e)) => {
                            Err(LinkError::Refused(String::from_utf8_lossy(e).into_owned()))
                        }
                        _ => Err(RespError::Malformed("unexpected reply").into()),
                    }),
                    Some(Next::Oversized) => {
                        Some(Err(RespError::Malformed("unexpected reply").into()))
                    }
                    None => None,
                };
                match reply {
                    Some(reply) => return reply,
                    None => self.fill().await?,
                }
            }
        })
        .await
    }
}

/// Runs `fut` for at most `timeout`.
async fn within<T, E: Into<LinkError>>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => {
            Err(io::Error::new(io::ErrorKind::TimedOut, "Redis did not answer in time").into())
        }
    }
}

async fn tcp(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, LinkError> {
    let stream = within(timeout, TcpStream::connect((host, port))).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn unix(path: PathBuf, timeout: Duration) -> Result<UnixStream, LinkError> {
    within(timeout, UnixStream::connect(path)).await
}

/// rustls with the system's root certificates (what the `redis` crate's `tls-rustls` uses).
fn tls_config() -> Result<Arc<rustls::ClientConfig>, LinkError> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        // A certificate the store cannot use is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(LinkError::Tls(
            "no usable root certificate on this system".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LinkError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link over an in-memory pipe, to drive the buffer logic without Redis.
    fn piped(max_bulk: usize) -> (Link, tokio::io::DuplexStream) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let link = Link {
            io: Box::new(a),
            buf: vec![0; 16],
            start: 0,
            end: 0,
            skip: 0,
            max_bulk,
            max_buffer: 2 * max_bulk + 16,
            last_rx: Instant::now(),
        };
        (link, b)
    }

    fn count(link: &mut Link) -> (usize, usize) {
        let (mut frames, mut oversized) = (0, 0);
        while let Some(n) = link.next().unwrap() {
            match n {
                Next::Frame(_) => frames += 1,
                Next::Oversized => oversized += 1,
            }
        }
        (frames, oversized)
    }

    #[tokio::test]
    async fn frames_split_across_reads_grow_the_buffer_then_skip_oversized_payloads() {
        let (mut link, mut peer) = piped(64);
        let small = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$5\r\nhello\r\n";
        let big = format!(
            "*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$60\r\n{}\r\n",
            "x".repeat(60)
        );
        let huge = format!(
            "*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$500\r\n{}\r\n",
            "y".repeat(500)
        );
        let mut all = Vec::new();
        all.extend_from_slice(small);
        all.extend_from_slice(big.as_bytes());
        all.extend_from_slice(huge.as_bytes());
        all.extend_from_slice(small);
        let (mut frames, mut oversized) = (0, 0);
        for chunk in all.chunks(7) {
            peer.write_all(chunk).await.unwrap();
            link.fill().await.unwrap();
            let (f, o) = count(&mut link);
            frames += f;
            oversized += o;
        }
        assert_eq!((frames, oversized), (3, 1));
        assert!(link.buf.len() <= link.max_buffer);
    }

    #[tokio::test]
    async fn eof_is_an_error() {
        let (mut link, peer) = piped(64);
        drop(peer);
        assert!(matches!(link.fill().await, Err(LinkError::Io(_))));
    }
}
