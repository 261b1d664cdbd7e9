//! The Redis backend: the existing deployment's publisher (`PUBLISH notifications:{user}`)
//! reaches users through any number of gateway instances.
//!
//! `target` finds the master (fixed or via Sentinel); `subscriber` is the one thread that reads
//! the subscription and feeds the shards, over its own connection (`link`, decoding `resp`,
//! matching replies and judging liveness with `replies`), handling what arrives in `incoming`; `membership` decides per-user
//! SUBSCRIBE/UNSUBSCRIBE and answers the shards' wants, which travel over `requests`;
//! `publisher` serves the publish API by PUBLISHing; with history, `history` holds the script
//! that records and reads users' histories and the thread that reads them for the shards.

pub mod history;
pub mod incoming;
pub mod link;
pub mod membership;
pub mod publisher;
pub mod replies;
pub mod requests;
pub mod resp;
pub mod subscriber;
pub mod target;
