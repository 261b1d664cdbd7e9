//! WebSocket protocol code, pure (no I/O): `frame` decodes client frames and encodes server
//! frames (RFC 6455); `message` is the gateway's client message protocol (ping/pong, connected,
//! errors).

pub mod frame;
pub mod message;
