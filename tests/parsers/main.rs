//! The four parsers of the protocol layer (frames, upgrade requests, notification payloads,
//! JWTs), checked three ways: by properties over generated input (proptest), against reference
//! implementations (tungstenite for frames, serde_json for JSON), and by replaying the committed
//! fuzz corpus through the fuzz targets' own checks.
//!
//! The checks are shared with the cargo-fuzz targets: `fuzz/src/lib.rs` is compiled here as
//! [`checks`], so what the fuzzer asserts on nightly is what this suite asserts on stable. Each
//! property runs proptest's default 256 cases (set `PROPTEST_CASES` for more); the fuzzer is
//! where long searches happen (fuzz/README.md).

#[path = "../../fuzz/src/lib.rs"]
mod checks;
mod corpus;
mod frame;
mod jwt;
mod payload;
mod upgrade;
