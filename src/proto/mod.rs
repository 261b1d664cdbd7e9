//! The protocol layer: pure functions over bytes, no I/O and no dependency on the rest of the
//! crate, so each piece can be unit-tested, property-tested and fuzzed from plain slices.
//!
//! - [`upgrade`]: the HTTP/1.1 upgrade request (RFC 6455 §4.2), its refusals and the 101.
//! - [`frame`]: client frame decoding and server frame encoding (RFC 6455 §5).
//! - [`close`]: the close codes the gateway sends.
//! - [`message`]: what a client text message means, and the gateway's own JSON frames.
//! - [`jwt`]: bearer-token verification, down to a [`UserId`](user::UserId).
//! - [`user`]: the one definition of a valid user id.
//! - [`payload`]: notification validation and normalisation into a finished text frame.
//! - [`history`]: recovery on reconnect: the `since`/`epoch` query, the `offset`/`epoch` fields
//!   of recorded notifications, the rule that decides whether a replay closes a gap.

pub mod close;
pub mod frame;
pub mod history;
pub mod jwt;
pub mod message;
pub mod payload;
pub mod upgrade;
pub mod user;
