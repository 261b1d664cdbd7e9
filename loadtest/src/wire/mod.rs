//! Protocol code with no socket in it: WebSocket framing and handshake, the notification payload,
//! and the RESP publish encoding. Everything here is a pure function over bytes.

pub mod frame;
pub mod handshake;
pub mod message;
pub mod resp;
