//! WebSocket frames and messages on both data paths (`ws::frame`, `ws::message`,
//! `fanout::payload`).
//!
//! Simulates:
//!
//! - a notification going out: `encode_text` of 100 B / 1 KiB / 16 KiB payloads, and
//!   `normalize_to_frame` as the publish path runs it once per notification, on a ~230 B payload
//!   that already has `type` and `timestamp` (passed through byte for byte) and on one that has
//!   neither (both inserted);
//! - fan-out "for one and for many recipients": the frame is encoded once and every recipient
//!   connection gets a `Bytes::clone` of it (a reference count, no copy). Measured as one
//!   `encode_text` + N clones (each dropped, as after a completed `send(2)`) for N = 1, 10, 100,
//!   1000, beside the naive alternative of one encode per recipient, per element so the two
//!   lines read as cost per recipient;
//! - a client message coming in: `Decoder::feed` on the Python CLI's masked text frame
//!   `{"type": "ping"}` and on 64 such frames in one read (a burst, or a client catching up), and
//!   `classify_text` on the CLI's ping text. The decoder unmasks in place and the classifier
//!   parses in place, so each iteration gets a fresh copy of the input made outside the timing.
//!
//! Why it matters: per-notification CPU (issue 4's CPU per 1,000 deliveries and flat-out msg/s)
//! is encode once + clone per connection; per-client CPU of the 30 s keep-alive pings across
//! hundreds of thousands of idle clients is decode + classify.

use std::hint::black_box;

use bytes::Bytes;
use chat4all_gateway::internals::{
    ClientMessage, Decoder, Event, Limits, classify_text, encode_text, normalize_to_frame,
    text_header_len,
};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

// The gateway binary's allocator, so allocation costs match production.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW_MS: u64 = 1_760_000_000_000;
/// The publish API's default `MAX_PUBLISH_BYTES`.
const MAX_PUBLISH_BYTES: usize = 1_048_576;
/// What the Python CLI sends every 30 s: `json.dumps({"type": "ping"})`.
const CLI_PING: &[u8] = br#"{"type": "ping"}"#;

/// A JSON payload of exactly `len` bytes (a notification with a padded body).
fn json_payload(len: usize) -> Vec<u8> {
    const HEAD: &[u8] = br#"{"type":"notification","body":""#;
    const TAIL: &[u8] = br#""}"#;
    let mut out = HEAD.to_vec();
    out.resize(len - TAIL.len(), b'x');
    out.extend_from_slice(TAIL);
    out
}

/// A masked client text frame carrying `payload` (< 126 bytes), as a browser or
/// `websocket-client` sends it.
fn masked_text(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![0x81, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frames/encode_text");
    for len in [100, 1024, 16 * 1024] {
        let payload = json_payload(len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::from_parameter(len), &payload, |b, p| {
            b.iter(|| encode_text(black_box(p)));
        });
    }
    g.finish();
}

fn normalize(c: &mut Criterion) {
    // A chat notification as the API service publishes it: ~190 B of fields (~230 B with both
    // `type` and `timestamp`).
    const FIELDS: &str = concat!(
        r#""conversationId":"c-7f3a","messageId":"m-000123","#,
        r#""from":{"id":"user-17","name":"Ana"},"#,
        r#""preview":"See you at 5? I'll bring the slides.","unread":3}"#,
    );
    let complete = format!(r#"{{"type":"message","timestamp":1760000000000,{FIELDS}"#).into_bytes();
    let bare = format!("{{{FIELDS}").into_bytes();
    let (complete, bare) = (complete.as_slice(), bare.as_slice());
    let out = normalize_to_frame(complete, NOW_MS, MAX_PUBLISH_BYTES).unwrap();
    let header = text_header_len(complete.len());
    assert_eq!(&out[header..], complete, "passthrough keeps the bytes");

    let mut g = c.benchmark_group("frames/normalize_to_frame");
    g.throughput(Throughput::Bytes(complete.len() as u64));
    g.bench_function("passthrough", |b| {
        b.iter(|| normalize_to_frame(black_box(complete), NOW_MS, MAX_PUBLISH_BYTES).unwrap());
    });
    g.throughput(Throughput::Bytes(bare.len() as u64));
    g.bench_function("insert_type_and_timestamp", |b| {
        b.iter(|| normalize_to_frame(black_box(bare), NOW_MS, MAX_PUBLISH_BYTES).unwrap());
    });
    g.finish();
}

fn fanout(c: &mut Criterion) {
    let payload = json_payload(1024);
    let frame = encode_text(&payload);
    let copy: Bytes = frame.clone();
    assert_eq!(
        copy.as_ptr(),
        frame.as_ptr(),
        "a clone shares the encoded frame"
    );
    let mut g = c.benchmark_group("frames/fanout_1KiB");
    for recipients in [1u64, 10, 100, 1000] {
        g.throughput(Throughput::Elements(recipients));
        g.bench_with_input(
            BenchmarkId::new("encode_once_clone_per_recipient", recipients),
            &recipients,
            |b, &n| {
                b.iter(|| {
                    let frame = encode_text(black_box(&payload));
                    for _ in 0..n {
                        black_box(frame.clone());
                    }
                });
            },
        );
        g.bench_with_input(
            BenchmarkId::new("encode_per_recipient", recipients),
            &recipients,
            |b, &n| {
                b.iter(|| {
                    for _ in 0..n {
                        black_box(encode_text(black_box(&payload)));
                    }
                });
            },
        );
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let limits = Limits::new();
    let one = masked_text(CLI_PING, [0x37, 0xFA, 0x21, 0x3D]);
    let burst: Vec<u8> = (0u8..64)
        .flat_map(|i| masked_text(CLI_PING, [i, 0xFA ^ i, 0x21, 0x3D]))
        .collect();
    let count_texts = |input: &mut Vec<u8>| {
        let mut decoder = Decoder::default();
        let mut texts = 0u32;
        decoder
            .feed(input, &limits, |event| {
                if let Event::Text(t) = event {
                    black_box(t);
                    texts += 1;
                }
            })
            .unwrap();
        texts
    };
    assert_eq!(count_texts(&mut one.clone()), 1);
    assert_eq!(count_texts(&mut burst.clone()), 64);

    let mut g = c.benchmark_group("frames/decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("cli_ping_1_frame", |b| {
        b.iter_batched_ref(|| one.clone(), count_texts, BatchSize::SmallInput);
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function("cli_ping_64_frames_one_read", |b| {
        b.iter_batched_ref(|| burst.clone(), count_texts, BatchSize::SmallInput);
    });
    g.finish();
}

fn classify(c: &mut Criterion) {
    assert_eq!(classify_text(&mut CLI_PING.to_vec()), ClientMessage::Ping);
    c.bench_function("frames/classify_text/cli_ping", |b| {
        b.iter_batched_ref(
            || CLI_PING.to_vec(),
            |text| classify_text(black_box(text)),
            BatchSize::SmallInput,
        );
    });
}

criterion_group!(benches, encode, normalize, fanout, decode, classify);
criterion_main!(benches);
