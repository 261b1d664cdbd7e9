//! A doorbell: how any thread gets a shard's attention.
//!
//! Producers push onto a shard's lock-free rings and then ring; the shard's inbox task parks on
//! the doorbell when its rings are empty. Ringing is cheap when the shard is busy: the doorbell
//! holds the shard's waker only while the inbox task is parked, so a burst of pushes costs one
//! cross-thread wake-up.

use std::task::Waker;

use atomic_waker::AtomicWaker;

/// Wakes a shard's inbox task from any thread.
#[derive(Default)]
pub struct Doorbell {
    /// The parked inbox task's waker, if it is parked.
    waker: AtomicWaker,
}

impl Doorbell {
    /// Wakes the shard if it is waiting for work.
    pub fn ring(&self) {
        self.waker.wake();
    }

    /// Registers the waker of the task that parks on this doorbell. The task must re-check its
    /// queues after registering, so that no push is missed.
    pub fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }
}
