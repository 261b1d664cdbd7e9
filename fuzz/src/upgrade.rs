//! The upgrade parser's properties: no look past the limit, split invariance, documented
//! statuses and well-formed refusals.

use chat4all_gateway::internals::{HandshakeConfig, Parsed, parse_request, write_refusal};

/// The statuses docs/protocol.md lists for a refused upgrade request (401 and 503 are decided
/// after parsing, by the caller).
pub const UPGRADE_REFUSALS: [u16; 5] = [400, 404, 405, 426, 431];

/// The handshake limits a fuzz input asks for (see the module docs).
pub fn upgrade_config(hi: u8, lo: u8) -> HandshakeConfig {
    let mut cfg = HandshakeConfig::default();
    if (hi, lo) != (0, 0) {
        cfg.max_request_bytes = 1 + (usize::from(hi) << 8 | usize::from(lo)) % 9000;
    }
    cfg
}

/// The upgrade parser never panics, never looks past `max_request_bytes`, reaches the same
/// verdict however the request is split across reads, and refuses only with a documented status
/// and a well-formed response.
pub fn upgrade(data: &[u8]) {
    let [hi, lo, request @ ..] = data else {
        return;
    };
    let cfg = upgrade_config(*hi, *lo);
    let cuts: Vec<usize> = (1..8).map(|i| request.len() * i / 8).collect();
    assert_upgrade_properties(request, &cfg, &cuts);
}

/// The properties of [`upgrade`], for one request, limit and set of read boundaries.
pub fn assert_upgrade_properties(request: &[u8], cfg: &HandshakeConfig, cuts: &[usize]) {
    let max = cfg.max_request_bytes;
    let result = parse_request(request, cfg);
    // Never reads past the limit: the verdict depends only on the first `max` bytes.
    let seen = &request[..request.len().min(max)];
    assert_eq!(
        parse_request(seen, cfg),
        result,
        "bytes past the limit changed the verdict"
    );
    // The same verdict whatever the reads: every prefix is undecided or already says the same.
    for &cut in cuts.iter().filter(|&&c| c <= request.len()) {
        let early = parse_request(&request[..cut], cfg);
        assert!(
            early == Ok(Parsed::Partial) || early == result,
            "prefix of {cut} bytes: {early:?}, whole: {result:?}"
        );
    }
    match &result {
        Ok(Parsed::Partial) => assert!(request.len() < max),
        Ok(Parsed::Complete {
            request: upgrade,
            consumed,
        }) => {
            assert!(*consumed <= seen.len());
            assert_eq!(parse_request(&request[..*consumed], cfg), result);
            assert_eq!(upgrade.accept_key.len(), 28);
            assert!(upgrade.token.as_deref().is_none_or(|t| !t.is_empty()));
        }
        Err(e) => {
            let status = e.status().code();
            assert!(
                UPGRADE_REFUSALS.contains(&status),
                "undocumented status {status}"
            );
            let mut out = Vec::new();
            write_refusal(e.status(), e.kind(), &e.to_string(), &mut out);
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut response = httparse::Response::new(&mut headers);
            let Ok(httparse::Status::Complete(head)) = response.parse(&out) else {
                panic!("refusal is not an HTTP response: {out:?}");
            };
            assert_eq!(response.code, Some(status));
            let body: serde_json::Value =
                serde_json::from_slice(&out[head..]).expect("refusal body is JSON");
            assert_eq!(body["error"], e.kind());
        }
    }
}
