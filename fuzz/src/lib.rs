//! The properties the fuzz targets check, as plain functions over arbitrary bytes that panic when
//! a property breaks.
//!
//! One file serves three users: the cargo-fuzz targets in `fuzz_targets/` (libFuzzer, nightly),
//! the stable corpus replay in `tests/parsers/corpus.rs`, which includes this file with `#[path]`
//! and runs every committed corpus file through the same function, and the property tests in
//! `tests/parsers/`, which reuse the oracles (the tungstenite reference, the serde_json shape).
//! It depends only on the gateway's `internals` and on crates the gateway already depends on.
//! One file per target: `frame`, `upgrade`, `payload`, `jwt`.
//!
//! Input formats (so that seeds can be written by hand; see `fuzz/README.md`):
//! - [`frame`]: `[cut_a, cut_b, limit, stream...]`: two split points (as fractions of 255) and
//!   a message-size limit selector, then the client byte stream.
//! - [`upgrade`]: `[limit_hi, limit_lo, request...]`: `0x00 0x00` is the default 8192-byte
//!   limit; anything else is a limit of `1 + (hi << 8 | lo) % 9000`.
//! - [`payload`]: the notification payload itself.
//! - [`jwt`]: `[mode, rest...]`; see [`jwt`].

pub mod frame;
pub mod jwt;
pub mod payload;
pub mod upgrade;

pub use frame::frame;
pub use jwt::jwt;
pub use payload::payload;
pub use upgrade::upgrade;
