//! Why a client connection failed or dropped, as a small fixed set of labels, and the per-label
//! counts that workers send and the coordinator adds up.

use std::{collections::BTreeMap, io};

use thiserror::Error;

use crate::wire::{frame::FrameError, handshake::HandshakeError};

/// A connection attempt or an established connection failing.
#[derive(Debug, Error)]
pub enum ConnError {
    #[error("connection refused")]
    Refused,
    #[error("timed out while {0}")]
    Timeout(&'static str),
    #[error("connection reset or closed by the server")]
    Reset,
    #[error("out of file descriptors")]
    Emfile,
    #[error("no local address/port available")]
    AddrUnavailable,
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("framing: {0}")]
    Frame(#[from] FrameError),
    #[error("server sent a close frame")]
    Closed,
    #[error("TLS: {0}")]
    Tls(String),
    #[error("i/o: {0}")]
    Io(io::Error),
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        match (e.kind(), e.raw_os_error()) {
            (io::ErrorKind::ConnectionRefused, _) => Self::Refused,
            (
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof,
                _,
            ) => Self::Reset,
            (_, Some(23 | 24)) => Self::Emfile, // ENFILE, EMFILE
            (io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse, _) => {
                Self::AddrUnavailable
            }
            (io::ErrorKind::TimedOut, _) => Self::Timeout("in the kernel"),
            (io::ErrorKind::InvalidData, _)
                if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) =>
            {
                Self::Tls(e.to_string())
            }
            _ => Self::Io(e),
        }
    }
}

impl ConnError {
    /// A TLS failure.
    #[must_use]
    pub fn tls(e: rustls::Error) -> Self {
        Self::Tls(e.to_string())
    }

    /// The failure label: `refused`, `timeout`, `reset`, `emfile`, `addr_unavailable`,
    /// `http_<status>`, `protocol`, `closed`, `tls` or `other`.
    #[must_use]
    pub fn kind(&self) -> String {
        match self {
            Self::Refused => "refused".into(),
            Self::Timeout(_) => "timeout".into(),
            Self::Reset => "reset".into(),
            Self::Emfile => "emfile".into(),
            Self::AddrUnavailable => "addr_unavailable".into(),
            Self::Handshake(h) => h.kind(),
            Self::Frame(f) => f.kind().into(),
            Self::Closed => "closed".into(),
            Self::Tls(_) => "tls".into(),
            Self::Io(_) => "other".into(),
        }
    }
}

/// Counts per failure label.
pub type Failures = BTreeMap<String, u64>;

/// Adds `from` into `into`.
pub fn merge_failures(into: &mut Failures, from: &Failures) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_causes() {
        let kind = |e: io::Error| ConnError::from(e).kind();
        assert_eq!(kind(io::ErrorKind::ConnectionRefused.into()), "refused");
        assert_eq!(kind(io::ErrorKind::ConnectionReset.into()), "reset");
        assert_eq!(kind(io::ErrorKind::UnexpectedEof.into()), "reset");
        assert_eq!(kind(io::Error::from_raw_os_error(24)), "emfile");
        assert_eq!(kind(io::Error::from_raw_os_error(99)), "addr_unavailable");
        assert_eq!(kind(io::ErrorKind::Other.into()), "other");
        assert_eq!(
            ConnError::Handshake(HandshakeError::Status(401)).kind(),
            "http_401"
        );
        let mut a = Failures::new();
        merge_failures(&mut a, &Failures::from([("reset".to_owned(), 2)]));
        merge_failures(&mut a, &Failures::from([("reset".to_owned(), 3)]));
        assert_eq!(a["reset"], 5);
    }
}
