//! HTTP/1.1 WebSocket upgrade request parsing (RFC 6455 §4.2), as pure functions over bytes.
//!
//! The connection task reads bytes from the socket into a buffer and calls [`parse_request`] after
//! each read. The parser either asks for more bytes ([`Parsed::Partial`]), accepts the request
//! ([`Parsed::Complete`], with the number of bytes the request used) or refuses it with a
//! [`HandshakeError`] that knows its HTTP [`Status`] and its label. The task then writes the
//! answer built by [`write_switching_protocols`] or [`write_refusal`]. Nothing here touches a
//! socket, so the parser can be tested and fuzzed from plain byte slices.
//!
//! Checks run in a fixed order, and the first one that fails decides the answer:
//!
//! 1. the request head ends within `max_request_bytes` (431; bytes past the limit are never
//!    looked at), has at most 32 headers (431), parses as HTTP (400), is HTTP/1.1 (400) and has
//!    a `Host` header (400);
//! 2. the path, without its query, is the configured one (404);
//! 3. the method is `GET` (405);
//! 4. `Upgrade: websocket` and `Connection: upgrade` are both present (426);
//! 5. `Sec-WebSocket-Version` is `13` (400) and `Sec-WebSocket-Key` is one base64 encoding of 16
//!    bytes (400).
//!
//! The verdict does not depend on how the request was split across reads: every prefix of a
//! request is either [`Parsed::Partial`] or gets the whole request's answer (tests/parsers).
//!
//! The bearer token is extracted but not judged here: verifying it is [`super::jwt`]'s job, and a
//! missing token is turned into a 401 by the caller. Likewise the `since`/`epoch` pair of a
//! reconnecting client ([`super::history`]) is read and checked here, but only a gateway with
//! history turns a bad pair into a 400; without history it is ignored, as any unknown parameter.

use std::borrow::Cow;

use base64::{Engine as _, engine::general_purpose::STANDARD};

use super::history::{Resume, ResumeError, parse_resume};

/// Most headers a request may carry; one more is answered with 431. Browsers send about 15.
const MAX_HEADERS: usize = 32;

/// The only WebSocket protocol version we speak (RFC 6455 §4.1).
const WEBSOCKET_VERSION: &[u8] = b"13";

/// Where upgrade requests are accepted and how large they may be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeConfig {
    /// The exact request path (without query) that upgrades, e.g. `/notifications`; any other path
    /// is answered with 404.
    pub path: String,
    /// Largest request head, in bytes, we buffer before answering 431. It bounds the memory a
    /// connection can hold before it is authenticated: one buffer of this size per pending
    /// handshake. Must be greater than zero.
    pub max_request_bytes: usize,
}

impl Default for HandshakeConfig {
    /// `/notifications`, 8 KiB.
    fn default() -> Self {
        Self {
            path: "/notifications".to_owned(),
            max_request_bytes: 8192,
        }
    }
}

/// The result of parsing the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// The request head is not complete yet: read more bytes and parse again.
    Partial,
    /// A valid upgrade request.
    Complete {
        /// What the rest of the handshake needs from the request.
        request: UpgradeRequest<'a>,
        /// Bytes of the buffer used by the request head, up to and including the blank line.
        /// Anything after it already belongs to the WebSocket stream.
        consumed: usize,
    },
}

/// What the gateway needs from a valid upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub struct UpgradeRequest<'a> {
    /// The bearer token: the first `token` query parameter (percent-decoded) if it is not empty,
    /// else the credentials of an `Authorization: Bearer` header, else `None`. Not verified.
    pub token: Option<Cow<'a, str>>,
    /// The `Sec-WebSocket-Accept` value derived from the client's `Sec-WebSocket-Key`.
    pub accept_key: String,
    /// The `since`/`epoch` pair of a client asking for a replay (`Ok(None)`: it does not), or why
    /// the pair is unusable.
    pub resume: Result<Option<Resume>, ResumeError>,
}

/// The HTTP statuses a handshake can be refused with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// 400: the request is not valid HTTP/1.1 or not a valid WebSocket upgrade.
    BadRequest,
    /// 401: the bearer token is missing or invalid (decided by the caller).
    Unauthorized,
    /// 404: the path is not the configured one.
    NotFound,
    /// 405: the method is not `GET`.
    MethodNotAllowed,
    /// 426: a request for the path that does not ask for a WebSocket upgrade.
    UpgradeRequired,
    /// 431: the request head is too large or has too many headers.
    HeadersTooLarge,
    /// 429: too many upgrades in progress from the client's address (decided by the caller).
    TooManyRequests,
    /// 503: the gateway is full or draining (decided by the caller).
    ServiceUnavailable,
}

impl Status {
    /// The numeric status code.
    pub fn code(self) -> u16 {
        match self {
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::UpgradeRequired => 426,
            Status::HeadersTooLarge => 431,
            Status::TooManyRequests => 429,
            Status::ServiceUnavailable => 503,
        }
    }

    /// The reason phrase that goes after the code on the status line.
    pub fn reason_phrase(self) -> &'static str {
        match self {
            Status::BadRequest => "Bad Request",
            Status::Unauthorized => "Unauthorized",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::UpgradeRequired => "Upgrade Required",
            Status::HeadersTooLarge => "Request Header Fields Too Large",
            Status::TooManyRequests => "Too Many Requests",
            Status::ServiceUnavailable => "Service Unavailable",
        }
    }
}

/// Why an upgrade request was refused. No variant allocates, so refusing costs no more than
/// accepting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The bytes are not a valid HTTP request.
    #[error("malformed HTTP request: {0}")]
    Parse(httparse::Error),
    /// The request is valid HTTP, but not HTTP/1.1.
    #[error("HTTP version must be 1.1")]
    HttpVersion,
    /// HTTP/1.1 requires a `Host` header (RFC 9112 §3.2).
    #[error("missing Host header")]
    MissingHost,
    /// The request head did not end within the configured size.
    #[error("request head larger than {limit} bytes")]
    RequestTooLarge {
        /// The configured `max_request_bytes`.
        limit: usize,
    },
    /// The request has more headers than the parser has room for.
    #[error("more than {MAX_HEADERS} request headers")]
    TooManyHeaders,
    /// The path is not the configured one.
    #[error("no WebSocket endpoint at this path")]
    WrongPath,
    /// The method is not `GET`.
    #[error("method must be GET")]
    MethodNotAllowed,
    /// `Upgrade: websocket` or `Connection: upgrade` is missing.
    #[error("this endpoint only accepts WebSocket upgrades")]
    NotUpgrade,
    /// `Sec-WebSocket-Version` is missing, repeated or not 13.
    #[error("Sec-WebSocket-Version must be 13")]
    BadVersion,
    /// `Sec-WebSocket-Key` is missing, repeated or not the base64 encoding of 16 bytes.
    #[error("Sec-WebSocket-Key {0}")]
    BadKey(&'static str),
}

impl HandshakeError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> Status {
        match self {
            HandshakeError::Parse(httparse::Error::TooManyHeaders)
            | HandshakeError::RequestTooLarge { .. }
            | HandshakeError::TooManyHeaders => Status::HeadersTooLarge,
            HandshakeError::Parse(_)
            | HandshakeError::HttpVersion
            | HandshakeError::MissingHost
            | HandshakeError::BadVersion
            | HandshakeError::BadKey(_) => Status::BadRequest,
            HandshakeError::WrongPath => Status::NotFound,
            HandshakeError::MethodNotAllowed => Status::MethodNotAllowed,
            HandshakeError::NotUpgrade => Status::UpgradeRequired,
        }
    }

    /// A short static label: the `error` field of the refusal body.
    pub fn kind(&self) -> &'static str {
        match self {
            HandshakeError::Parse(httparse::Error::TooManyHeaders)
            | HandshakeError::RequestTooLarge { .. }
            | HandshakeError::TooManyHeaders => "request_too_large",
            HandshakeError::Parse(_)
            | HandshakeError::HttpVersion
            | HandshakeError::MissingHost => "malformed_request",
            HandshakeError::WrongPath => "wrong_path",
            HandshakeError::MethodNotAllowed => "method_not_allowed",
            HandshakeError::NotUpgrade => "not_upgrade",
            HandshakeError::BadVersion => "bad_websocket_version",
            HandshakeError::BadKey(_) => "bad_websocket_key",
        }
    }
}

/// Parses the request head at the start of `buf`.
///
/// Call it again with the grown buffer after [`Parsed::Partial`]. Bytes after the head are left
/// alone; `consumed` says where they start.
///
/// # Errors
///
/// A [`HandshakeError`] for the first rule the request breaks, in the order of the module docs.
/// Answer it with [`write_refusal`] (its status, kind and message) and close the connection.
pub fn parse_request<'a>(
    buf: &'a [u8],
    cfg: &HandshakeConfig,
) -> Result<Parsed<'a>, HandshakeError> {
    // Only the first `max_request_bytes` may hold the head, so nothing after them is looked at:
    // otherwise a byte past the limit could turn the 431 into a 400, depending on how much of the
    // request one read happened to bring.
    let buf = &buf[..buf.len().min(cfg.max_request_bytes)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= cfg.max_request_bytes => {
            return Err(HandshakeError::RequestTooLarge {
                limit: cfg.max_request_bytes,
            });
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders),
        Err(e) => return Err(HandshakeError::Parse(e)),
    };
    if req.version != Some(1) {
        return Err(HandshakeError::HttpVersion);
    }
    // A complete parse always sets the method, path and version.
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(HandshakeError::Parse(httparse::Error::Token));
    };
    let headers: &[httparse::Header<'a>] = req.headers;
    if !headers.iter().any(|h| h.name.eq_ignore_ascii_case("host")) {
        return Err(HandshakeError::MissingHost);
    }

    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if path != cfg.path {
        return Err(HandshakeError::WrongPath);
    }
    if method != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }

    if !has_token(headers, "upgrade", b"websocket") || !has_token(headers, "connection", b"upgrade")
    {
        return Err(HandshakeError::NotUpgrade);
    }
    match single_header(headers, "sec-websocket-version") {
        Ok(Some(v)) if v.trim_ascii() == WEBSOCKET_VERSION => {}
        _ => return Err(HandshakeError::BadVersion),
    }
    let key = match single_header(headers, "sec-websocket-key") {
        Ok(Some(key)) => key.trim_ascii(),
        Ok(None) => return Err(HandshakeError::BadKey("is missing")),
        Err(()) => return Err(HandshakeError::BadKey("is repeated")),
    };
    // 16 bytes encode to exactly 24 characters; checking first keeps the decode buffer fixed.
    let mut nonce = [0u8; 18];
    if key.len() != 24 || !matches!(STANDARD.decode_slice(key, &mut nonce), Ok(16)) {
        return Err(HandshakeError::BadKey(
            "must be the base64 encoding of 16 bytes",
        ));
    }

    let token = query
        .and_then(query_token)
        .or_else(|| bearer_token(headers).map(Cow::Borrowed));

    let resume = query.map_or(Ok(None), parse_resume);

    Ok(Parsed::Complete {
        request: UpgradeRequest {
            token,
            accept_key: tungstenite::handshake::derive_accept_key(key),
            resume,
        },
        consumed,
    })
}

/// Appends the `101 Switching Protocols` response that completes the handshake.
pub fn write_switching_protocols(accept_key: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept_key.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// Appends a complete refusal response to `out`: `Connection: close`, a JSON body
/// `{"error":"<error>","message":"<message>"}` with both strings JSON-escaped, and the headers
/// some statuses call for: `Sec-WebSocket-Version: 13` on a 400 labelled
/// `bad_websocket_version` (RFC 6455 §4.4), `WWW-Authenticate: Bearer` on 401 (RFC 9110 §15.5.2),
/// `Allow: GET` on 405, `Upgrade: websocket` on 426 (RFC 9110 §15.5.22), `Retry-After: 1` on 503.
pub fn write_refusal(status: Status, error: &str, message: &str, out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(32 + error.len() + message.len());
    body.extend_from_slice(b"{\"error\":");
    push_json_string(&mut body, error);
    body.extend_from_slice(b",\"message\":");
    push_json_string(&mut body, message);
    body.push(b'}');

    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.code().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.reason_phrase().as_bytes());
    out.extend_from_slice(b"\r\nConnection: close\r\nContent-Type: application/json\r\n");
    let extra: &[u8] = match status {
        Status::BadRequest if error == "bad_websocket_version" => b"Sec-WebSocket-Version: 13\r\n",
        Status::Unauthorized => b"WWW-Authenticate: Bearer\r\n",
        Status::MethodNotAllowed => b"Allow: GET\r\n",
        Status::UpgradeRequired => b"Upgrade: websocket\r\n",
        Status::ServiceUnavailable | Status::TooManyRequests => b"Retry-After: 1\r\n",
        _ => b"",
    };
    out.extend_from_slice(extra);
    out.extend_from_slice(b"Content-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&body);
}

/// Appends `s` as a quoted, escaped JSON string.
fn push_json_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("serializing a str into a Vec cannot fail");
}

/// The value of the first header called `name` (lowercase).
fn first_header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// The value of the header called `name` (lowercase), `Ok(None)` if absent, `Err` if repeated.
fn single_header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Result<Option<&'a [u8]>, ()> {
    let mut found = None;
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)) {
        if found.replace(h.value).is_some() {
            return Err(());
        }
    }
    Ok(found)
}

/// Whether any header called `name` lists `token` (lowercase) in its comma-separated value,
/// ignoring case and surrounding whitespace.
fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &[u8]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The first `token` query parameter, percent-decoded, unless it is empty.
fn query_token(query: &str) -> Option<Cow<'_, str>> {
    // Fast path: with no `%` or `+` anywhere, form decoding is the identity (a JWT is base64url
    // and dots), so the first `token` pair can be borrowed as is; this was ~40% of parsing.
    if !query.bytes().any(|b| b == b'%' || b == b'+') {
        return query
            .split('&')
            .find_map(|pair| match pair.split_once('=') {
                Some(("token", value)) => Some(value),
                None if pair == "token" => Some(""),
                _ => None,
            })
            .filter(|value| !value.is_empty())
            .map(Cow::Borrowed);
    }
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

/// The credentials of the first `Authorization` header if its scheme is `Bearer` (any case) and
/// they are non-empty UTF-8.
fn bearer_token<'a>(headers: &[httparse::Header<'a>]) -> Option<&'a str> {
    let value = std::str::from_utf8(first_header(headers, "authorization")?).ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn cfg() -> HandshakeConfig {
        HandshakeConfig::default()
    }

    /// A valid upgrade request for `target`, with `extra` header lines (each ending in CRLF).
    fn request(target: &str, extra: &str) -> Vec<u8> {
        format!(
            "GET {target} HTTP/1.1\r\n\
             Host: gateway.example\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\n\
             Sec-WebSocket-Version: 13\r\n\
             {extra}\r\n"
        )
        .into_bytes()
    }

    /// A request built from exactly the given head lines.
    fn raw(lines: &[&str]) -> Vec<u8> {
        let mut s = lines.join("\r\n");
        s.push_str("\r\n\r\n");
        s.into_bytes()
    }

    fn complete(buf: &[u8]) -> (UpgradeRequest<'_>, usize) {
        match parse_request(buf, &cfg()) {
            Ok(Parsed::Complete { request, consumed }) => (request, consumed),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    fn refused(buf: &[u8]) -> HandshakeError {
        match parse_request(buf, &cfg()) {
            Err(e) => e,
            Ok(other) => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// Splits a response into its head (as a string) and its body.
    fn split_response(out: &[u8]) -> (String, &[u8]) {
        let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (
            String::from_utf8(out[..end].to_vec()).unwrap(),
            &out[end + 4..],
        )
    }

    #[test]
    fn valid_request_derives_rfc_6455_accept_key() {
        let buf = request("/notifications", "");
        let (req, consumed) = complete(&buf);
        assert_eq!(req.accept_key, ACCEPT);
        assert_eq!(consumed, buf.len());
        assert_eq!(req.token, None);
    }

    #[test]
    fn every_split_point_is_partial() {
        let buf = request("/notifications?token=abc", "");
        for end in 0..buf.len() {
            assert_eq!(
                parse_request(&buf[..end], &cfg()),
                Ok(Parsed::Partial),
                "prefix of {end} bytes"
            );
        }
        assert!(matches!(
            parse_request(&buf, &cfg()),
            Ok(Parsed::Complete { .. })
        ));
    }

    #[test]
    fn consumed_stops_at_end_of_head() {
        let head = request("/notifications", "");
        let mut buf = head.clone();
        buf.extend_from_slice(b"\x81\x05hello");
        let (_, consumed) = complete(&buf);
        assert_eq!(consumed, head.len());
        assert_eq!(&buf[consumed - 4..consumed], b"\r\n\r\n");
    }

    #[test]
    fn query_token_is_percent_decoded_and_first_wins() {
        let buf = request("/notifications?x=1&token=a%2Eb%20c&token=second", "");
        let (req, _) = complete(&buf);
        assert_eq!(req.token.as_deref(), Some("a.b c"));
        assert!(matches!(req.token, Some(Cow::Owned(_))));

        let buf = request("/notifications?token=eyJ.abc.def", "");
        let (req, _) = complete(&buf);
        assert_eq!(req.token, Some(Cow::Borrowed("eyJ.abc.def")));
    }

    #[test]
    fn query_token_fast_path_agrees_with_form_decoding() {
        let slow = |q: &str| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(name, _)| name == "token")
                .map(|(_, value)| value.into_owned())
                .filter(|value| !value.is_empty())
        };
        for q in [
            "",
            "token",
            "token=",
            "token=&token=b",
            "x=1&token=eyJ.abc.def&token=2",
            "&&token=a=b",
            "tokens=1&xtoken=2&token=3",
            "a&token&token=4",
            "token=a%2Eb",
            "tok%65n=5",
            "token=a+b",
            "x=%ZZ&token=6",
        ] {
            assert_eq!(query_token(q).map(Cow::into_owned), slow(q), "query {q:?}");
        }
    }

    #[test]
    fn bearer_token_is_used_without_query_token() {
        let buf = request("/notifications", "authorization: bearer  eyJ.abc.def \r\n");
        let (req, _) = complete(&buf);
        assert_eq!(req.token.as_deref(), Some("eyJ.abc.def"));

        let buf = request("/notifications?token=q", "Authorization: Bearer h\r\n");
        assert_eq!(complete(&buf).0.token.as_deref(), Some("q"));

        let buf = request("/notifications?token=", "Authorization: Bearer h\r\n");
        assert_eq!(complete(&buf).0.token.as_deref(), Some("h"));
    }

    #[test]
    fn empty_or_non_bearer_token_is_none() {
        for extra in [
            "Authorization: Bearer \r\n",
            "Authorization: Basic dXNlcjpwYXNz\r\n",
            "Authorization: Bearer\r\n",
        ] {
            let buf = request("/notifications?token=", extra);
            assert_eq!(complete(&buf).0.token, None, "{extra:?}");
        }
    }

    #[test]
    fn header_names_and_tokens_ignore_case() {
        let buf = raw(&[
            "GET /notifications HTTP/1.1",
            "HOST: x",
            "upgrade: WebSocket",
            "CONNECTION: keep-alive, Upgrade",
            "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
            "SEC-WEBSOCKET-VERSION: 13",
        ]);
        assert_eq!(complete(&buf).0.accept_key, ACCEPT);
    }

    #[test]
    fn garbage_is_400() {
        let e = refused(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n");
        assert_eq!(
            (e.status(), e.kind()),
            (Status::BadRequest, "malformed_request")
        );
        let e = refused(b"GET /notifications HTTP/1.1\r\nBad Header: x\r\n\r\n");
        assert_eq!(e.status(), Status::BadRequest);
    }

    #[test]
    fn http_1_0_is_400() {
        let mut buf = request("/notifications", "");
        buf[26] = b'0'; // "HTTP/1.1" -> "HTTP/1.0"
        assert!(buf.starts_with(b"GET /notifications HTTP/1.0\r\n"));
        let e = refused(&buf);
        assert_eq!(e, HandshakeError::HttpVersion);
        assert_eq!(
            (e.status(), e.kind()),
            (Status::BadRequest, "malformed_request")
        );
    }

    #[test]
    fn missing_host_is_400() {
        let buf = raw(&[
            "GET /notifications HTTP/1.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ]);
        assert_eq!(refused(&buf), HandshakeError::MissingHost);
    }

    #[test]
    fn oversized_partial_head_is_431() {
        let small = HandshakeConfig {
            max_request_bytes: 64,
            ..cfg()
        };
        let buf = request("/notifications", "");
        assert_eq!(parse_request(&buf[..63], &small), Ok(Parsed::Partial));
        let e = parse_request(&buf[..64], &small).unwrap_err();
        assert_eq!(
            (e.status(), e.kind()),
            (Status::HeadersTooLarge, "request_too_large")
        );
        // A complete head that arrived in one read is still held to the limit.
        assert_eq!(
            parse_request(&buf, &small),
            Err(HandshakeError::RequestTooLarge { limit: 64 })
        );
    }

    #[test]
    fn bytes_past_the_limit_are_never_looked_at() {
        // Found by tests/parsers: the 65th byte of a 64-byte limit made a 431 into a 400 when
        // one read brought more than the limit.
        let small = HandshakeConfig {
            max_request_bytes: 64,
            ..cfg()
        };
        let mut buf = request("/notifications", "");
        buf.splice(64..64, *b"Bad Header: x\r\n");
        let e = parse_request(&buf, &small).unwrap_err();
        assert_eq!(e, HandshakeError::RequestTooLarge { limit: 64 });
        assert_eq!(parse_request(&buf[..64], &small), Err(e));
    }

    #[test]
    fn too_many_headers_is_431() {
        let extra: String = (0..MAX_HEADERS)
            .map(|i| format!("X-Pad-{i}: 1\r\n"))
            .collect();
        let e = refused(&request("/notifications", &extra));
        assert_eq!(e, HandshakeError::TooManyHeaders);
        assert_eq!(
            (e.status(), e.kind()),
            (Status::HeadersTooLarge, "request_too_large")
        );
    }

    #[test]
    fn wrong_path_is_404() {
        for target in [
            "/",
            "/notifications/",
            "/Notifications",
            "/notificationsx?token=a",
        ] {
            let e = refused(&request(target, ""));
            assert_eq!(
                (e.status(), e.kind()),
                (Status::NotFound, "wrong_path"),
                "{target}"
            );
        }
    }

    #[test]
    fn wrong_method_is_405_after_path() {
        let mut buf = request("/notifications", "");
        buf.splice(..3, *b"POST");
        let e = refused(&buf);
        assert_eq!(
            (e.status(), e.kind()),
            (Status::MethodNotAllowed, "method_not_allowed")
        );

        let mut buf = request("/elsewhere", "");
        buf.splice(..3, *b"POST");
        assert_eq!(refused(&buf), HandshakeError::WrongPath);
    }

    #[test]
    fn plain_get_is_426() {
        let e = refused(b"GET /notifications HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            (e.status(), e.kind()),
            (Status::UpgradeRequired, "not_upgrade")
        );
    }

    #[test]
    fn upgrade_needs_both_headers_426() {
        for (upgrade, connection) in [
            ("websocket", "keep-alive"),
            ("h2c", "Upgrade"),
            ("websockets", "Upgrade"),
            ("websocket", "upgraded"),
        ] {
            let buf = raw(&[
                "GET /notifications HTTP/1.1",
                "Host: x",
                &format!("Upgrade: {upgrade}"),
                &format!("Connection: {connection}"),
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version: 13",
            ]);
            assert_eq!(
                refused(&buf),
                HandshakeError::NotUpgrade,
                "{upgrade} / {connection}"
            );
        }
    }

    /// The valid request with the `Sec-WebSocket-*` lines replaced by `lines`.
    fn with_ws_lines(lines: &[&str]) -> Vec<u8> {
        let mut all = vec![
            "GET /notifications HTTP/1.1",
            "Host: x",
            "Upgrade: websocket",
            "Connection: Upgrade",
        ];
        all.extend_from_slice(lines);
        raw(&all)
    }

    #[test]
    fn bad_version_is_400() {
        let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
        for lines in [
            &[key][..],
            &[key, "Sec-WebSocket-Version: 8"],
            &[key, "Sec-WebSocket-Version: 13, 8"],
            &[
                key,
                "Sec-WebSocket-Version: 13",
                "Sec-WebSocket-Version: 13",
            ],
        ] {
            let e = refused(&with_ws_lines(lines));
            assert_eq!(
                (e.status(), e.kind()),
                (Status::BadRequest, "bad_websocket_version")
            );
        }
    }

    #[test]
    fn bad_key_is_400() {
        let version = "Sec-WebSocket-Version: 13";
        for lines in [
            &[version][..],
            &[version, "Sec-WebSocket-Key: "],
            &[version, "Sec-WebSocket-Key: not base64 at all!!!!!!!"],
            &[version, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ"],
            &[version, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZXg="], // 17 bytes
            &[version, "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA="], // 17 bytes, 24 chars
            &[
                version,
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
            ],
        ] {
            let e = refused(&with_ws_lines(lines));
            assert_eq!(
                (e.status(), e.kind()),
                (Status::BadRequest, "bad_websocket_key")
            );
        }
    }

    #[test]
    fn status_codes_and_phrases() {
        let all = [
            (Status::BadRequest, 400),
            (Status::Unauthorized, 401),
            (Status::NotFound, 404),
            (Status::MethodNotAllowed, 405),
            (Status::UpgradeRequired, 426),
            (Status::HeadersTooLarge, 431),
            (Status::ServiceUnavailable, 503),
        ];
        for (status, code) in all {
            assert_eq!(status.code(), code);
            assert!(!status.reason_phrase().is_empty());
        }
    }

    #[test]
    fn switching_protocols_response() {
        let mut out = Vec::new();
        write_switching_protocols(ACCEPT, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn refusal_body_is_escaped_json_with_correct_length() {
        let mut out = Vec::new();
        let message = "quote \" backslash \\ newline \n tab \t ctl \u{1} é ✓";
        write_refusal(Status::Unauthorized, "invalid_token", message, &mut out);
        let (head, body) = split_response(&out);
        assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
        assert!(head.contains("\r\nConnection: close"));
        assert!(head.contains("\r\nContent-Type: application/json"));
        assert!(head.contains("\r\nWWW-Authenticate: Bearer"));
        assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": "invalid_token", "message": message})
        );
        assert!(!body.contains(&b'\n'));
    }

    #[test]
    fn refusals_parse_as_http_responses() {
        for e in [
            HandshakeError::Parse(httparse::Error::Token),
            HandshakeError::RequestTooLarge { limit: 8192 },
            HandshakeError::WrongPath,
            HandshakeError::MethodNotAllowed,
            HandshakeError::NotUpgrade,
            HandshakeError::BadVersion,
            HandshakeError::BadKey("is missing"),
        ] {
            let mut out = Vec::new();
            write_refusal(e.status(), e.kind(), &e.to_string(), &mut out);
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut resp = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(n) = resp.parse(&out).unwrap() else {
                panic!("incomplete response for {e:?}");
            };
            assert_eq!(resp.code, Some(e.status().code()));
            let length = resp
                .headers
                .iter()
                .find(|h| h.name == "Content-Length")
                .map(|h| {
                    std::str::from_utf8(h.value)
                        .unwrap()
                        .parse::<usize>()
                        .unwrap()
                });
            assert_eq!(length, Some(out.len() - n), "{e:?}");
            let json: serde_json::Value = serde_json::from_slice(&out[n..]).unwrap();
            assert_eq!(json["error"], e.kind());
        }
    }

    #[test]
    fn refusal_extra_headers() {
        let cases = [
            (
                Status::BadRequest,
                "bad_websocket_version",
                Some("Sec-WebSocket-Version: 13"),
            ),
            (Status::BadRequest, "bad_websocket_key", None),
            (
                Status::MethodNotAllowed,
                "method_not_allowed",
                Some("Allow: GET"),
            ),
            (
                Status::UpgradeRequired,
                "not_upgrade",
                Some("Upgrade: websocket"),
            ),
            (
                Status::ServiceUnavailable,
                "overloaded",
                Some("Retry-After: 1"),
            ),
            (Status::NotFound, "wrong_path", None),
        ];
        for (status, label, header) in cases {
            let mut out = Vec::new();
            write_refusal(status, label, "m", &mut out);
            let (head, _) = split_response(&out);
            assert_eq!(
                head.lines().count(),
                4 + usize::from(header.is_some()),
                "{head}"
            );
            if let Some(header) = header {
                assert!(head.contains(&format!("\r\n{header}\r\n")), "{head}");
            }
        }
    }
}
