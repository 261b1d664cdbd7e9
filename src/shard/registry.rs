//! The shard's connections: a slab of connections and an index from user id to that user's
//! connections, oldest first (a user may be connected from several devices).
//!
//! Lives on its shard's thread only (`Rc`, no locks). Removal is done by the connection's reader
//! task when it exits, so every inserted connection is removed exactly once.

use std::{collections::HashMap, rc::Rc};

use slab::Slab;
use smallvec::SmallVec;

use super::conn::Conn;

/// A user's connections in arrival order. Two inline slots cover the common phone + laptop case
/// without a heap allocation.
type UserConns = SmallVec<[u32; 2]>;

/// What [`Registry::insert`] did.
pub struct Inserted {
    /// The user's oldest connection, evicted to respect the per-user cap.
    pub evicted: Option<Rc<Conn>>,
    /// This is the user's first connection on the shard.
    pub first_for_user: bool,
}

/// Connections of one shard.
#[derive(Default)]
pub struct Registry {
    /// Every live connection, by key.
    conns: Slab<Rc<Conn>>,
    /// User id -> keys of that user's connections, oldest first.
    users: HashMap<Rc<str>, UserConns>,
}

impl Registry {
    /// Inserts `conn`. When the user then has more than `per_user_cap` connections, the oldest is
    /// returned so the caller can close it (1008): a reconnecting device always gets in.
    pub fn insert(&mut self, conn: Rc<Conn>, per_user_cap: usize) -> Inserted {
        let user = conn.user.clone();
        let key = self.conns.insert(conn.clone());
        let key = u32::try_from(key).expect("more than u32::MAX connections on one shard");
        conn.key.set(key);
        let list = self.users.entry(user).or_default();
        list.push(key);
        let first_for_user = list.len() == 1;
        let evicted = if list.len() > per_user_cap {
            let oldest = list.remove(0);
            // The evicted connection stays in the slab until its reader exits and calls
            // `remove`, but it no longer receives notifications.
            self.conns.get(oldest as usize).cloned()
        } else {
            None
        };
        Inserted {
            evicted,
            first_for_user,
        }
    }

    /// Removes a connection (idempotent). Returns `true` when it was its user's last one.
    pub fn remove(&mut self, conn: &Conn) -> bool {
        let key = conn.key.get();
        match self.conns.get(key as usize) {
            Some(c) if std::ptr::eq(Rc::as_ptr(c), conn) => {}
            _ => return false,
        }
        self.conns.remove(key as usize);
        if let Some(list) = self.users.get_mut(&*conn.user) {
            list.retain(|k| *k != key);
            if list.is_empty() {
                self.users.remove(&*conn.user);
                return true;
            }
        }
        false
    }

    /// The connections currently subscribed to `user`'s notifications, oldest first.
    pub fn user(&self, user: &str) -> impl Iterator<Item = &Rc<Conn>> {
        self.users
            .get(user)
            .into_iter()
            .flat_map(|keys| keys.iter().filter_map(|k| self.conns.get(*k as usize)))
    }

    /// The connection with slab key `key`, if any.
    pub fn get(&self, key: u32) -> Option<&Rc<Conn>> {
        self.conns.get(key as usize)
    }

    /// Every connection (for the idle sweep and drain).
    pub fn iter(&self) -> impl Iterator<Item = &Rc<Conn>> {
        self.conns.iter().map(|(_, c)| c)
    }

    /// Number of connections held.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether the shard holds no connection.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::testing::{Sockets, block_on};

    /// Runs `f` inside a monoio runtime (connections register their sockets with its driver),
    /// with a factory of real loopback connections for any user.
    fn with_conns(f: impl FnOnce(&mut dyn FnMut(&str) -> Rc<Conn>)) {
        block_on(async {
            let mut sockets = Sockets::new();
            f(&mut |user| sockets.conn(user, 0));
        });
    }
    fn users_conns(r: &Registry, user: &str) -> Vec<*const Conn> {
        r.user(user).map(Rc::as_ptr).collect()
    }

    #[test]
    fn indexes_connections_by_user_oldest_first() {
        with_conns(|make| {
            let mut r = Registry::default();
            let (a1, a2, b) = (make("alice"), make("alice"), make("bob"));
            assert!(r.insert(a1.clone(), 3).first_for_user);
            assert!(!r.insert(a2.clone(), 3).first_for_user);
            assert!(r.insert(b.clone(), 3).first_for_user);
            assert_eq!(users_conns(&r, "alice"), [Rc::as_ptr(&a1), Rc::as_ptr(&a2)]);
            assert_eq!(users_conns(&r, "bob"), [Rc::as_ptr(&b)]);
            assert!(users_conns(&r, "carol").is_empty());
            assert_eq!(r.len(), 3);
            assert_eq!(r.iter().count(), 3);
        });
    }

    #[test]
    fn evicts_the_oldest_beyond_the_per_user_cap() {
        with_conns(|make| {
            let mut r = Registry::default();
            let c: Vec<_> = (0..3).map(|_| make("phone")).collect();
            assert!(r.insert(c[0].clone(), 2).evicted.is_none());
            assert!(r.insert(c[1].clone(), 2).evicted.is_none());
            let evicted = r.insert(c[2].clone(), 2).evicted.expect("over the cap");
            assert!(Rc::ptr_eq(&evicted, &c[0]));
            // The evicted connection no longer receives, but stays until its reader removes it.
            assert_eq!(
                users_conns(&r, "phone"),
                [Rc::as_ptr(&c[1]), Rc::as_ptr(&c[2])]
            );
            assert_eq!(r.len(), 3);
            assert!(!r.remove(&c[0]), "not the user's last connection");
            assert_eq!(r.len(), 2);
            assert!(!r.remove(&c[1]));
            assert!(r.remove(&c[2]), "the user's last connection");
            assert!(r.is_empty());
            assert!(users_conns(&r, "phone").is_empty());
        });
    }

    #[test]
    fn reuses_slab_keys_and_never_removes_a_stranger() {
        with_conns(|make| {
            let mut r = Registry::default();
            let (a, b) = (make("a"), make("b"));
            r.insert(a.clone(), 1);
            let key = a.key.get();
            assert!(r.remove(&a));
            assert!(!r.remove(&a), "removal is idempotent");
            r.insert(b.clone(), 1);
            assert_eq!(b.key.get(), key, "the freed slot is reused");
            // `a` still carries the old key, which now belongs to `b`: removing `a` again must
            // not touch `b`.
            assert!(!r.remove(&a));
            assert_eq!(users_conns(&r, "b"), [Rc::as_ptr(&b)]);
            assert_eq!(r.len(), 1);
        });
    }
}
