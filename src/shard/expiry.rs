//! Token expiry on established connections (`TOKEN_EXPIRY_CLOSE`), and the client's way to
//! extend it: `{"type":"refresh","token":"<JWT>"}`.
//!
//! When enabled, each connection whose token has an `exp` is tracked here by slab key with its
//! deadline (`exp` + `JWT_LEEWAY`), in deadline order; the shard's sweep closes those whose
//! deadline passed with 4001. Nothing is added to [`Conn`]: a connection costs an entry here
//! only when the option is on, and idle connections keep their size.
//!
//! A refresh is answered on every gateway, whether or not expiry is enforced: a token for the
//! same user that verifies replaces the deadline and is answered with `refreshed`; any other
//! token is answered with an error and leaves the connection and its deadline as they were.

use std::{
    collections::{BTreeSet, HashMap},
    rc::Rc,
};

use super::{Shard, conn::Conn};
use crate::{
    clock,
    metrics::DropReason,
    proto::{close::CloseCode, message},
};

/// Deadlines of the tracked connections.
#[derive(Default)]
pub struct Expiries {
    /// (deadline in Unix seconds, slab key), earliest first.
    order: BTreeSet<(u64, u32)>,
    /// Slab key -> its deadline, to replace or drop an entry.
    by_key: HashMap<u32, u64>,
}

impl Expiries {
    /// Tracks (or re-tracks) connection `key` with `deadline`.
    pub fn set(&mut self, key: u32, deadline: u64) {
        if let Some(old) = self.by_key.insert(key, deadline) {
            self.order.remove(&(old, key));
        }
        self.order.insert((deadline, key));
    }

    /// Stops tracking connection `key` (it ended, or its new token does not expire).
    pub fn remove(&mut self, key: u32) {
        if let Some(old) = self.by_key.remove(&key) {
            self.order.remove(&(old, key));
        }
    }

    /// Takes the connections whose deadline is at or before `now` (Unix seconds).
    pub fn take_expired(&mut self, now: u64) -> Vec<u32> {
        let mut expired = Vec::new();
        while let Some(&(deadline, key)) = self.order.first() {
            if deadline > now {
                break;
            }
            self.order.pop_first();
            self.by_key.remove(&key);
            expired.push(key);
        }
        expired
    }

    /// Connections tracked.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }
}

/// The deadline for a token expiring at `exp`, or `None` when expiry is not enforced or the
/// token has no `exp`.
pub fn deadline(shard: &Shard, exp: Option<u64>) -> Option<u64> {
    shard
        .limits
        .token_expiry_close
        .then_some(exp)
        .flatten()
        .map(|exp| exp.saturating_add(shard.limits.jwt_leeway_secs))
}

/// Starts tracking a newly registered connection whose token expires at `exp`.
pub fn track(shard: &Shard, conn: &Conn, exp: Option<u64>) {
    if let Some(deadline) = deadline(shard, exp) {
        shard.expiries.borrow_mut().set(conn.key.get(), deadline);
    }
}

/// Closes (4001) every connection whose token deadline has passed. Called by the sweep.
pub fn close_expired(shard: &Rc<Shard>) {
    if !shard.limits.token_expiry_close {
        return;
    }
    let expired = shard
        .expiries
        .borrow_mut()
        .take_expired(clock::unix_ms() / 1000);
    for key in expired {
        let conn = shard.registry.borrow().get(key).cloned();
        if let Some(conn) = conn {
            let code = CloseCode::TokenExpired4001;
            let drops = DropReason::ConnectionClosing;
            conn.close_with(shard, code.code(), code, "token expired", drops);
        }
    }
}

/// Answers `{"type":"refresh","token":...}` on `conn`.
pub fn refresh(conn: &Rc<Conn>, shard: &Rc<Shard>, token: &str) {
    let now = clock::unix_ms();
    let reply = match shard.shared.auth.verify_claims(token) {
        Err(_) => message::error_frame(message::reason::INVALID_TOKEN, now),
        Ok(v) if v.user.as_str() != &*conn.user => {
            message::error_frame(message::reason::WRONG_USER, now)
        }
        Ok(v) => {
            if shard.limits.token_expiry_close {
                let mut expiries = shard.expiries.borrow_mut();
                match deadline(shard, v.expires_at) {
                    Some(deadline) => expiries.set(conn.key.get(), deadline),
                    None => expiries.remove(conn.key.get()),
                }
            }
            message::refreshed_frame(v.expires_at, now)
        }
    };
    conn.send(shard, reply);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_deadline_order_and_follows_refreshes() {
        let mut e = Expiries::default();
        e.set(1, 100);
        e.set(2, 50);
        e.set(3, 200);
        e.set(1, 300); // refreshed
        assert_eq!(e.take_expired(49), Vec::<u32>::new());
        assert_eq!(e.take_expired(150), vec![2]);
        e.remove(3);
        assert_eq!(e.len(), 1);
        assert_eq!(e.take_expired(1_000), vec![1]);
        assert_eq!(e.len(), 0);
        e.remove(9); // unknown: nothing happens
    }
}
