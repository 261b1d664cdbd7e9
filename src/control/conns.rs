//! The internal port's connection table: at most `CONTROL_MAX_CONNECTIONS` connections, so the
//! port can never take the descriptors the shards need, and yet never locked out by clients
//! that connect and stall.
//!
//! Policy when full: the oldest connection that is not *busy* is evicted (closed at once) to make
//! room for the new one. Busy means a publish whose body has been read and which is now being
//! delivered; it is never cut off, so a publisher never loses the answer to a request the
//! gateway acted on, and it ends within `PUBLISH_TIMEOUT`. Every other state (waiting for
//! request headers, reading a body, idle between keep-alive requests, writing an answer the
//! client does not read) is fair game: a health probe or a publisher always gets in, however
//! many stalled connections an attacker holds. Only when every connection is busy is a new one
//! refused (503, then closed).
//!
//! Pure bookkeeping: the server closes what this table tells it to.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::oneshot;

/// One admitted connection, as its task sees it.
pub struct Admitted {
    /// Its key in the table (accept order).
    pub id: u64,
    /// Set while a publish is being delivered on it: it must not be evicted then.
    pub busy: Arc<AtomicBool>,
    /// Fires when the table evicts it; the task then drops the connection.
    pub evicted: oneshot::Receiver<()>,
    /// Whether admitting it evicted an older connection.
    pub made_room: bool,
}

/// What the table keeps of a connection.
struct Entry {
    /// Shared with the connection's task.
    busy: Arc<AtomicBool>,
    /// Tells the task to close.
    evict: oneshot::Sender<()>,
}

/// The open connections, oldest first.
pub struct Conns {
    /// Most connections open at once.
    cap: usize,
    /// Next id (ids increase with accept order, so the map is oldest first).
    next: u64,
    /// The open connections by id.
    open: BTreeMap<u64, Entry>,
}

impl Conns {
    /// An empty table for at most `cap` connections.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            next: 0,
            open: BTreeMap::new(),
        }
    }

    /// Admits a new connection, evicting the oldest idle one when full; `None` when full of
    /// busy connections (refuse the new one).
    pub fn admit(&mut self) -> Option<Admitted> {
        let mut made_room = false;
        if self.open.len() >= self.cap {
            let victim = self
                .open
                .iter()
                .find(|(_, e)| !e.busy.load(Ordering::Acquire))
                .map(|(&id, _)| id)?;
            let entry = self.open.remove(&victim).expect("found above");
            let _ = entry.evict.send(());
            made_room = true;
        }
        let id = self.next;
        self.next += 1;
        let busy = Arc::new(AtomicBool::new(false));
        let (evict, evicted) = oneshot::channel();
        self.open.insert(
            id,
            Entry {
                busy: busy.clone(),
                evict,
            },
        );
        Some(Admitted {
            id,
            busy,
            evicted,
            made_room,
        })
    }

    /// Forgets a connection that ended (no-op if it was evicted).
    pub fn close(&mut self, id: u64) {
        self.open.remove(&id);
    }

    /// Connections open.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.open.len()
    }
}

/// Marks a connection busy for as long as it lives.
pub struct BusyGuard(Arc<AtomicBool>);

impl BusyGuard {
    /// Sets `flag` until the guard is dropped.
    pub fn new(flag: &Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::Release);
        Self(flag.clone())
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_cap_then_evicts_the_oldest_idle() {
        let mut conns = Conns::new(3);
        let mut a: Vec<Admitted> = (0..3).map(|_| conns.admit().unwrap()).collect();
        assert!(a.iter().all(|c| !c.made_room));
        assert_eq!(conns.len(), 3);
        // The oldest (0) is busy: 1 goes.
        let _busy = BusyGuard::new(&a[0].busy);
        let d = conns.admit().unwrap();
        assert!(d.made_room);
        assert_eq!(conns.len(), 3);
        assert!(a[1].evicted.try_recv().is_ok(), "1 was told to close");
        assert!(a[0].evicted.try_recv().is_err() && a[2].evicted.try_recv().is_err());
        // A closed connection frees its place without evicting anyone.
        conns.close(a[2].id);
        assert!(!conns.admit().unwrap().made_room);
    }

    #[test]
    fn refuses_when_every_connection_is_busy_and_recovers_when_one_is_not() {
        let mut conns = Conns::new(2);
        let a: Vec<Admitted> = (0..2).map(|_| conns.admit().unwrap()).collect();
        let guards: Vec<BusyGuard> = a.iter().map(|c| BusyGuard::new(&c.busy)).collect();
        assert!(conns.admit().is_none());
        assert_eq!(conns.len(), 2);
        drop(guards);
        assert!(conns.admit().unwrap().made_room);
    }

    #[test]
    fn closing_an_evicted_connection_is_harmless() {
        let mut conns = Conns::new(1);
        let a = conns.admit().unwrap();
        let b = conns.admit().unwrap();
        conns.close(a.id);
        assert_eq!(conns.len(), 1);
        conns.close(b.id);
        assert_eq!(conns.len(), 0);
    }
}
