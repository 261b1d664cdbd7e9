//! Upgrade request parsing and the answer to it: the CPU a shard spends on every new connection
//! before the JWT check.
//!
//! Simulates the existing Python CLI (`websocket-client`) connecting through a proxy: `GET
//! /notifications?token=<JWT>` with its headers (Host, Origin, Upgrade, Connection,
//! Sec-WebSocket-Key/Version) plus the ones a proxy or library typically adds (User-Agent,
//! Accept-Encoding, Cache-Control, X-Forwarded-For): ten headers, about 600 bytes. Measured:
//!
//! - `parse_request` on the whole request in one read (the common case on loopback and LAN);
//! - the same request arriving in two reads, so the shard parses once to `Partial` and again to
//!   `Complete` (a slow or far client, or a request split by a proxy);
//! - the greeting, built as `ingress::upgrade` builds it: `connected_frame`, then
//!   `write_switching_protocols` and the frame in one buffer sent with one `send(2)`.
//!
//! Why it matters: connects per second (issue 4 targets twice the best peer) and the cost of a
//! reconnect storm, when every client of a restarted gateway goes through this path at once.

use std::hint::black_box;

use bytes::Bytes;
use chat4all_gateway::internals::{
    HandshakeConfig, Parsed, connected_frame, issue_hs256, parse_request, write_switching_protocols,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

// The gateway binary's allocator, so allocation costs match production.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const NOW_MS: u64 = 1_760_000_000_000;

/// The upgrade request the Python CLI sends (through a proxy), with a real HS256 token.
fn cli_request() -> Vec<u8> {
    let token = issue_hs256(SECRET, "user-42", 3600);
    format!(
        "GET /notifications?token={token} HTTP/1.1\r\n\
         Upgrade: websocket\r\n\
         Host: gateway.chat4all.local:8765\r\n\
         Origin: http://gateway.chat4all.local:8765\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\
         Connection: Upgrade\r\n\
         User-Agent: chat4all-cli/1.4 websocket-client/1.8.0 Python/3.12\r\n\
         Accept-Encoding: gzip, deflate\r\n\
         Cache-Control: no-cache\r\n\
         X-Forwarded-For: 203.0.113.7\r\n\
         \r\n"
    )
    .into_bytes()
}

fn parse(c: &mut Criterion) {
    let cfg = HandshakeConfig::default();
    let request = cli_request();
    // Split inside the header block, as a second TCP segment would.
    let split = request.len() / 2;
    assert!(matches!(
        parse_request(&request[..split], &cfg),
        Ok(Parsed::Partial)
    ));
    assert!(matches!(
        parse_request(&request, &cfg),
        Ok(Parsed::Complete { .. })
    ));

    let mut g = c.benchmark_group("handshake/parse_request");
    g.throughput(Throughput::Bytes(request.len() as u64));
    g.bench_function("cli_one_read", |b| {
        b.iter(|| parse_request(black_box(&request), &cfg).unwrap());
    });
    g.bench_function("cli_two_reads", |b| {
        b.iter(|| {
            let first = parse_request(black_box(&request[..split]), &cfg).unwrap();
            assert!(matches!(first, Parsed::Partial));
            parse_request(black_box(&request), &cfg).unwrap()
        });
    });
    g.finish();
}

fn greeting(c: &mut Criterion) {
    let cfg = HandshakeConfig::default();
    let request = cli_request();
    let Ok(Parsed::Complete { request: req, .. }) = parse_request(&request, &cfg) else {
        panic!("the CLI request must parse");
    };
    let accept_key = req.accept_key;
    // As `ingress::upgrade` does it: the 101 and the connected frame in one buffer, one send.
    c.bench_function("handshake/greeting_101_and_connected", |b| {
        b.iter(|| {
            let connected = connected_frame(black_box("user-42"), black_box(NOW_MS));
            let mut greeting = Vec::with_capacity(160 + connected.len());
            write_switching_protocols(black_box(&accept_key), &mut greeting);
            greeting.extend_from_slice(&connected);
            Bytes::from(greeting)
        });
    });
}

criterion_group!(benches, parse, greeting);
criterion_main!(benches);
