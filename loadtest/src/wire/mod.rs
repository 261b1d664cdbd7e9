//! Protocol code with no socket in it: WebSocket framing and handshake, the notification payload,
//! the RESP publish encoding, the publish API's HTTP requests and the recovery fields. Everything here is a pure function over bytes.

pub mod frame;
pub mod handshake;
pub mod http;
pub mod message;
pub mod recovery;
pub mod resp;
