//! The client side of the WebSocket opening handshake (RFC 6455 section 4.1): building the upgrade
//! request and parsing the server's answer. Pure functions over byte slices, no I/O.

use base64::{Engine, engine::general_purpose::STANDARD};
use sha1::{Digest, Sha1};
use thiserror::Error;

/// GUID appended to the key to compute `Sec-WebSocket-Accept`.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest response head accepted before the blank line (the servers send about 150 bytes).
pub const MAX_RESPONSE_HEAD: usize = 8192;

/// Why an upgrade did not succeed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// The server answered with a status other than 101 (401 for a bad token).
    #[error("server answered HTTP {0}")]
    Status(u16),
    #[error("malformed HTTP response")]
    Malformed,
    #[error("response head longer than {MAX_RESPONSE_HEAD} bytes")]
    TooLong,
    #[error("Sec-WebSocket-Accept missing or wrong")]
    BadAccept,
}

impl HandshakeError {
    /// Failure-count label: `http_<status>` for a status, else `protocol`.
    #[must_use]
    pub fn kind(&self) -> String {
        match self {
            Self::Status(s) => format!("http_{s}"),
            _ => "protocol".to_owned(),
        }
    }
}

/// A fresh random `Sec-WebSocket-Key` from 16 random bytes.
#[must_use]
pub fn key_from(random: u128) -> String {
    STANDARD.encode(random.to_le_bytes())
}

/// The `Sec-WebSocket-Accept` value a server must answer to `key`.
#[must_use]
pub fn accept_for(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(WS_GUID.as_bytes());
    STANDARD.encode(h.finalize())
}

/// Appends the upgrade request for `path_and_query` (e.g. `/notifications?token=...`) to `out`.
pub fn write_request(host: &str, path_and_query: &str, key: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(
        b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: ",
    );
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// Parses the response head at the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete, `Ok(Some(head_len))` for a valid 101 answer (the
/// bytes after `head_len` are already WebSocket frames), or the reason the upgrade failed.
pub fn parse_response(buf: &[u8], key: &str) -> Result<Option<usize>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
            return Err(HandshakeError::TooLong);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HandshakeError::Malformed),
    };
    let code = resp.code.ok_or(HandshakeError::Malformed)?;
    if code != 101 {
        return Err(HandshakeError::Status(code));
    }
    let expected = accept_for(key);
    let ok = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("sec-websocket-accept") && h.value == expected.as_bytes()
    });
    if !ok {
        return Err(HandshakeError::BadAccept);
    }
    Ok(Some(head_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_example_accept() {
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_101_401_and_partial() {
        let key = key_from(7);
        let ok = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n\x01\x00",
            accept_for(&key)
        );
        let n = parse_response(ok.as_bytes(), &key).unwrap().unwrap();
        assert_eq!(&ok.as_bytes()[n..], b"\x01\x00");
        assert_eq!(parse_response(&ok.as_bytes()[..20], &key), Ok(None));
        let denied = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
        let err = parse_response(denied, &key).unwrap_err();
        assert_eq!(err, HandshakeError::Status(401));
        assert_eq!(err.kind(), "http_401");
        let wrong = "HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert_eq!(
            parse_response(wrong.as_bytes(), &key),
            Err(HandshakeError::BadAccept)
        );
    }

    #[test]
    fn request_shape() {
        let mut out = Vec::new();
        write_request("127.0.0.1:1", "/notifications?token=t", "k", &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("GET /notifications?token=t HTTP/1.1\r\nHost: 127.0.0.1:1\r\n"));
        assert!(s.ends_with("Sec-WebSocket-Key: k\r\n\r\n"));
    }
}
