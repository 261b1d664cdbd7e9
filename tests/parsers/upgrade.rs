//! The upgrade parser (`proto::upgrade`) on real clients' requests (captured byte for byte, see
//! fuzz/README.md) and on mutations of them: it never panics, never looks past its size limit,
//! reaches the same verdict however the request is split across reads, and refuses each class
//! of defect with the status docs/protocol.md names for it.

use chat4all_gateway::internals::{HandshakeConfig, Parsed, parse_request};
use proptest::{collection::vec, prelude::*, sample::select};

use crate::checks::upgrade::assert_upgrade_properties;

/// Requests captured from real clients (the fuzz seeds, without their two config bytes). curl
/// has no WebSocket support in this version: the request is the common recipe of `-H` options,
/// with the RFC 6455 sample key.
const REAL: [&[u8]; 4] = [
    include_bytes!("../../fuzz/corpus/upgrade/seed-python-websocket-client-1.9.2"),
    include_bytes!("../../fuzz/corpus/upgrade/seed-chromium-156"),
    include_bytes!("../../fuzz/corpus/upgrade/seed-firefox-esr-153"),
    include_bytes!("../../fuzz/corpus/upgrade/seed-curl-7.88.1"),
];

/// The token every captured request carries.
const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjo0MTAyNDQ0ODAwfQ.UyW0UyX84I-SwkK8_h2cq06BtJz0iM5YgXtfhfHlkRY";

fn real(i: usize) -> &'static [u8] {
    &REAL[i][2..]
}

/// A request as its lines, so defects can be applied by meaning.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn parse(raw: &[u8]) -> Self {
        let text = std::str::from_utf8(raw).unwrap();
        let mut lines = text.trim_end().split("\r\n");
        let mut start = lines.next().unwrap().split(' ');
        let (method, target, version) = (start.next(), start.next(), start.next());
        Request {
            method: method.unwrap().to_owned(),
            target: target.unwrap().to_owned(),
            version: version.unwrap().to_owned(),
            headers: lines
                .map(|l| {
                    let (n, v) = l.split_once(": ").unwrap();
                    (n.to_owned(), v.to_owned())
                })
                .collect(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} {}\r\n", self.method, self.target, self.version);
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    fn remove(&mut self, name: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    fn set(&mut self, name: &str, value: &str) {
        self.remove(name);
        self.headers.push((name.to_owned(), value.to_owned()));
    }
}

/// A defect found while parsing the head itself; at most one per request, as which of two comes
/// first depends on where each sits.
#[derive(Debug, Clone)]
enum HeadDefect {
    BadHeaderName,
    Http10,
    NoHost,
    TooManyHeaders,
    TooLong,
}

impl HeadDefect {
    fn status(&self) -> u16 {
        match self {
            Self::TooManyHeaders | Self::TooLong => 431,
            _ => 400,
        }
    }

    fn apply(&self, r: &mut Request) {
        match self {
            Self::BadHeaderName => r.headers.insert(1, ("Bad Header".into(), "x".into())),
            Self::Http10 => r.version = "HTTP/1.0".into(),
            Self::NoHost => r.remove("host"),
            Self::TooManyHeaders => {
                r.headers
                    .extend((0..32).map(|i| (format!("X-Pad-{i}"), "1".into())));
            }
            Self::TooLong => r.headers.push(("X-Pad".into(), "a".repeat(8192))),
        }
    }
}

/// The defects judged once the head is parsed, in the order the parser checks them; each with a
/// way to introduce it (a choice among several).
#[derive(Debug, Clone, Default)]
struct Defects {
    path: Option<&'static str>,
    method: Option<&'static str>,
    upgrade: Option<u8>,
    version: Option<u8>,
    key: Option<u8>,
}

impl Defects {
    /// The status of the first defect in check order (docs/protocol.md), if any.
    fn status(&self) -> Option<u16> {
        [
            self.path.map(|_| 404),
            self.method.map(|_| 405),
            self.upgrade.map(|_| 426),
            self.version.map(|_| 400),
            self.key.map(|_| 400),
        ]
        .into_iter()
        .flatten()
        .next()
    }

    fn apply(&self, r: &mut Request) {
        if let Some(path) = self.path {
            let query = r.target.split_once('?').map(|(_, q)| q.to_owned());
            r.target = match query {
                Some(q) => format!("{path}?{q}"),
                None => path.to_owned(),
            };
        }
        if let Some(method) = self.method {
            r.method = method.to_owned();
        }
        match self.upgrade {
            Some(0) => r.remove("upgrade"),
            Some(1) => r.set("Upgrade", "h2c"),
            Some(2) => r.set("Connection", "keep-alive"),
            Some(_) => r.remove("connection"),
            None => {}
        }
        match self.version {
            Some(0) => r.remove("sec-websocket-version"),
            Some(1) => r.set("Sec-WebSocket-Version", "8"),
            Some(2) => r.set("Sec-WebSocket-Version", "13, 8"),
            Some(_) => r
                .headers
                .push(("Sec-WebSocket-Version".into(), "13".into())),
            None => {}
        }
        match self.key {
            Some(0) => r.remove("sec-websocket-key"),
            Some(1) => r.set("Sec-WebSocket-Key", "not base64 at all!!!!!!!"),
            Some(2) => r.set("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAAA="), // 17 bytes
            Some(_) => r.headers.push((
                "Sec-WebSocket-Key".into(),
                "dGhlIHNhbXBsZSBub25jZQ==".into(),
            )),
            None => {}
        }
    }
}

fn defects() -> impl Strategy<Value = Defects> {
    (
        proptest::option::weighted(
            0.25,
            select(vec![
                "/",
                "/notification",
                "/notifications/",
                "/Notifications",
                "/other",
            ]),
        ),
        proptest::option::weighted(0.25, select(vec!["POST", "PUT", "HEAD", "OPTIONS", "get"])),
        proptest::option::weighted(0.25, 0u8..4),
        proptest::option::weighted(0.25, 0u8..4),
        proptest::option::weighted(0.25, 0u8..4),
    )
        .prop_map(|(path, method, upgrade, version, key)| Defects {
            path,
            method,
            upgrade,
            version,
            key,
        })
}

fn head_defect() -> impl Strategy<Value = Option<HeadDefect>> {
    proptest::option::weighted(
        0.3,
        prop_oneof![
            Just(HeadDefect::BadHeaderName),
            Just(HeadDefect::Http10),
            Just(HeadDefect::NoHost),
            Just(HeadDefect::TooManyHeaders),
            Just(HeadDefect::TooLong),
        ],
    )
}

/// Byte-level damage: replace, insert or delete bytes at random places.
#[derive(Debug, Clone)]
enum Edit {
    Replace(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Replace(i, b)),
        (
            any::<prop::sample::Index>(),
            select(b"\r\n :,?&=%+\t\0\xff".to_vec())
        )
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Edit::Delete),
    ];
    vec(edit, 1..6)
}

fn apply_edits(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for edit in edits {
        match edit {
            Edit::Replace(i, b) if !bytes.is_empty() => {
                let i = i.index(bytes.len());
                bytes[i] = *b;
            }
            Edit::Insert(i, b) => {
                let i = i.index(bytes.len() + 1);
                bytes.insert(i, *b);
            }
            Edit::Delete(i) if !bytes.is_empty() => {
                bytes.remove(i.index(bytes.len()));
            }
            _ => {}
        }
    }
}

#[test]
fn real_requests_are_accepted_with_their_token() {
    for (i, raw) in REAL.iter().enumerate() {
        let raw = &raw[2..];
        match parse_request(raw, &HandshakeConfig::default()) {
            Ok(Parsed::Complete { request, consumed }) => {
                assert_eq!(consumed, raw.len(), "client {i}");
                assert_eq!(request.token.as_deref(), Some(TOKEN), "client {i}");
            }
            other => panic!("client {i}: {other:?}"),
        }
        assert_upgrade_properties(
            raw,
            &HandshakeConfig::default(),
            &(0..raw.len()).collect::<Vec<_>>(),
        );
    }
}

/// The key of the curl recipe found in most tutorials, "SGVsbG8sIHdvcmxkIQ==", is "Hello,
/// world!": 13 bytes, where RFC 6455 §4.2.1 requires 16. It is refused, as docs/protocol.md says.
#[test]
fn the_common_curl_recipe_key_is_refused() {
    let raw = &include_bytes!("../../fuzz/corpus/upgrade/seed-curl-7.88.1-13-byte-key")[2..];
    let e = parse_request(raw, &HandshakeConfig::default()).unwrap_err();
    assert_eq!((e.status().code(), e.kind()), (400, "bad_websocket_key"));
}

proptest! {
    /// Each class of defect gets the status docs/protocol.md names; with several, the first in
    /// the documented check order decides.
    #[test]
    fn defects_get_their_documented_status(
        client in 0usize..REAL.len(),
        head in head_defect(),
        defects in defects(),
    ) {
        let mut request = Request::parse(real(client));
        defects.apply(&mut request);
        if let Some(head) = &head {
            head.apply(&mut request);
        }
        let bytes = request.bytes();
        let cfg = HandshakeConfig::default();
        let expected = head.as_ref().map(HeadDefect::status).or(defects.status());
        let result = parse_request(&bytes, &cfg);
        match (expected, &result) {
            (None, Ok(Parsed::Complete { consumed, .. })) => prop_assert_eq!(*consumed, bytes.len()),
            (Some(status), Err(e)) => prop_assert_eq!(e.status().code(), status, "{:?}", e),
            _ => prop_assert!(false, "expected {:?}, got {:?}", expected, result),
        }
        let cuts: Vec<usize> = (0..=64).map(|i| bytes.len() * i / 64).collect();
        assert_upgrade_properties(&bytes, &cfg, &cuts);
    }

    /// Byte-level mutations of real requests, under random size limits: never a panic, never a
    /// look past the limit, the same verdict however split, only documented statuses.
    #[test]
    fn mutated_requests_keep_the_properties(
        client in 0usize..REAL.len(),
        edits in edits(),
        limit in prop_oneof![Just(8192usize), 1usize..800],
        cuts in vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut bytes = real(client).to_vec();
        apply_edits(&mut bytes, &edits);
        let cfg = HandshakeConfig { max_request_bytes: limit, ..HandshakeConfig::default() };
        let cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        assert_upgrade_properties(&bytes, &cfg, &cuts);
    }

    /// A request followed by more bytes (the client's first frames, or garbage): the head's
    /// verdict does not change, and `consumed` points at the first byte after it.
    #[test]
    fn bytes_after_the_head_are_left_alone(
        client in 0usize..REAL.len(),
        tail in vec(any::<u8>(), 1..64),
    ) {
        let head = real(client);
        let bytes = [head, &tail].concat();
        let result = parse_request(&bytes, &HandshakeConfig::default());
        let is_complete_at_head = matches!(&result, Ok(Parsed::Complete { consumed, .. }) if *consumed == head.len());
        prop_assert!(is_complete_at_head, "{:?}", result);
    }
}
