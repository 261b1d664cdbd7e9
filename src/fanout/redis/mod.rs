//! The Redis backend: the existing deployment's publisher (`PUBLISH notifications:{user}`)
//! reaches users through any number of gateway instances.
//!
//! `target` finds the master (fixed or via Sentinel); `subscriber` is the one thread that reads
//! the subscription and feeds the shards; `membership` decides per-user SUBSCRIBE/UNSUBSCRIBE;
//! `publisher` serves the publish API by PUBLISHing.

pub mod membership;
pub mod publisher;
pub mod subscriber;
pub mod target;
