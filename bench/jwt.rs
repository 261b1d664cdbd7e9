//! JWT verification: the one cryptographic step of every connect (`ingress::auth`).
//!
//! Simulates what a shard does with the token of each upgrade request: the gateway's default
//! configuration (HS256 shared secret, `exp` required) verifying tokens of the shape the API
//! service issues (`sub`, `user_id`, `iat`, `exp`; made here with `issue_hs256`). Measured:
//!
//! - a valid token (the accepted path: base64url, HMAC-SHA256, claims JSON, user id checks);
//! - a token signed with another secret (rejected at the signature);
//! - an expired token (signature verifies, then `exp` fails). The authenticator for this case has
//!   0 s leeway instead of the default 30 s, so the token can expire within a second of setup;
//!   leeway is one subtraction and does not change the cost.
//!
//! Why it matters: connects per second and reconnect storms, and refusal cost under a flood of
//! bad or stale tokens (a refusal must not cost more than an acceptance).

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use chat4all_gateway::internals::{
    Algorithm, AuthConfig, AuthError, Authenticator, KeySource, issue_hs256,
};
use criterion::{Criterion, criterion_group, criterion_main};

// The gateway binary's allocator, so allocation costs match production.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const OTHER_SECRET: &[u8] = b"fedcba9876543210fedcba9876543210";

fn authenticator(leeway_seconds: u64) -> Authenticator {
    Authenticator::new(&AuthConfig {
        algorithm: Algorithm::HS256,
        key: KeySource::Secret(SECRET.to_vec()),
        require_exp: true,
        leeway_seconds,
    })
    .expect("valid HS256 configuration")
}

/// A token whose `exp` has passed: issued with a zero lifetime, then waited out (at most ~2 s).
fn expired_token(auth: &Authenticator) -> String {
    let token = issue_hs256(SECRET, "user-42", 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while auth.verify(&token) != Err(AuthError::Expired) {
        assert!(Instant::now() < deadline, "token did not expire");
        std::thread::sleep(Duration::from_millis(100));
    }
    token
}

fn verify(c: &mut Criterion) {
    let auth = authenticator(30);
    let strict = authenticator(0);
    let valid = issue_hs256(SECRET, "user-42", 3600);
    let forged = issue_hs256(OTHER_SECRET, "user-42", 3600);
    let expired = expired_token(&strict);
    assert_eq!(auth.verify(&valid).as_deref(), Ok("user-42"));
    assert_eq!(auth.verify(&forged), Err(AuthError::BadSignature));

    let mut g = c.benchmark_group("jwt/verify_hs256");
    g.bench_function("valid", |b| {
        b.iter(|| auth.verify(black_box(&valid)).unwrap());
    });
    g.bench_function("bad_signature", |b| {
        b.iter(|| auth.verify(black_box(&forged)).unwrap_err());
    });
    g.bench_function("expired", |b| {
        b.iter(|| strict.verify(black_box(&expired)).unwrap_err());
    });
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
