//! Yielding *through the driver*: how a shard's busy tasks let timers and I/O run.
//!
//! monoio's run loop (`Runtime::block_on`, monoio 0.2.4) runs every ready task, and parks the
//! driver only when no task is ready. Only a park advances the timer wheel
//! (`TimeDriver::park_internal` calls `process()` after parking); when tasks remain ready it
//! merely submits and reaps io_uring completions (or polls epoll with a zero timeout). A task
//! that yields by waking itself therefore stays ready forever under load, and timers (handshake
//! and close timeouts, the idle sweep, the drain's pacing) never fire, and on io_uring
//! cross-thread wake-ups are not taken either.
//!
//! A [`Turn`] is a wake-up that only the driver can deliver. A task that used its budget awaits
//! [`Turn::next`]: it is parked (not ready), and a pump task arms a readiness wait on one end of
//! a socket pair and writes a byte into the other, so the driver completes that wait in its next
//! park, right after which the timer wheel is processed; the pump then wakes every waiting task.
//! One pump serves all the shard's tasks, so a turn costs two small syscalls however many tasks
//! wait in it. On both drivers the byte is written only after the wait is armed: with epoll
//! (edge-triggered) the write is what produces the readiness event, and with io_uring the
//! `POLL_ADD` completes in the next submission.

use std::{
    cell::{Cell, RefCell},
    future::{Future, poll_fn},
    io,
    os::unix::net::UnixStream as StdUnixStream,
    pin::pin,
    rc::Rc,
    task::{Poll, Waker},
};

use monoio::net::UnixStream;

use super::sys;

/// One shard's turnstile; see the module docs.
pub struct Turn {
    /// Tasks waiting for the next turn of the driver.
    waiting: RefCell<Vec<Waker>>,
    /// Turns completed so far (a waiter is released once this passes the value it saw).
    turns: Cell<u64>,
    /// The pump task, parked while nobody waits.
    pump: RefCell<Option<Waker>>,
    /// The end the pump waits on (registered with the driver).
    rx: UnixStream,
    /// The end the pump writes its byte into (plain non-blocking socket).
    tx: StdUnixStream,
}

impl Turn {
    /// Creates the turnstile and spawns its pump on the current monoio runtime.
    pub fn start() -> io::Result<Rc<Self>> {
        let (rx, tx) = StdUnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        let turn = Rc::new(Self {
            waiting: RefCell::new(Vec::new()),
            turns: Cell::new(0),
            pump: RefCell::new(None),
            rx: UnixStream::from_std(rx)?,
            tx,
        });
        monoio::spawn(pump(Rc::downgrade(&turn)));
        Ok(turn)
    }

    /// Waits until the driver has parked once (processing I/O completions and due timers) after
    /// this call. Never completes without a park, however busy the shard is.
    pub async fn next(&self) {
        let seen = self.turns.get();
        let mut registered = false;
        poll_fn(|cx| {
            if registered && self.turns.get() != seen {
                return Poll::Ready(());
            }
            if !registered {
                registered = true;
                self.waiting.borrow_mut().push(cx.waker().clone());
                if let Some(pump) = self.pump.borrow_mut().take() {
                    pump.wake();
                }
            } else {
                // Woken by something else (e.g. cancelled and re-polled): wait on.
                self.waiting.borrow_mut().push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
    }
}

/// The pump: while tasks wait, completes one driver turn and releases them. Ends when the
/// turnstile is dropped.
async fn pump(turn: std::rc::Weak<Turn>) {
    loop {
        // Sleep until someone waits.
        let idle = poll_fn(|cx| {
            let Some(turn) = turn.upgrade() else {
                return Poll::Ready(false);
            };
            if turn.waiting.borrow().is_empty() {
                *turn.pump.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(true)
            }
        })
        .await;
        let Some(turn) = turn.upgrade().filter(|_| idle) else {
            return;
        };
        if driver_turn(&turn).await.is_err() {
            // The socket pair failed (should not happen): fall back to releasing the waiters
            // at once rather than never.
            tracing::warn!("driver turnstile failed; releasing waiters without a park");
        }
        turn.turns.set(turn.turns.get().wrapping_add(1));
        let waiting = std::mem::take(&mut *turn.waiting.borrow_mut());
        for waker in waiting {
            waker.wake();
        }
    }
}

/// Arms a readiness wait on `rx`, then writes the byte that satisfies it, and waits: the wait
/// can only complete in the driver.
async fn driver_turn(turn: &Turn) -> io::Result<()> {
    // Empty the pair first, so the wait below cannot be satisfied by an old byte.
    let mut sink = [0u8; 16];
    while matches!(sys::recv(sys::borrow(&turn.rx), &mut sink), Ok(n) if n > 0) {}
    let mut ready = pin!(turn.rx.readable(false));
    let mut armed = false;
    poll_fn(|cx| {
        let poll = ready.as_mut().poll(cx);
        if poll.is_pending() && !armed {
            armed = true;
            if let Err(err) = sys::send(sys::borrow(&turn.tx), &[1])
                && err.kind() != io::ErrorKind::WouldBlock
            {
                return Poll::Ready(Err(err));
            }
        }
        poll
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A task that yields through the turnstile in a loop must let a timer fire. (With a
    /// self-waking yield the runtime never parks, so the timer would only fire once the loop
    /// gave up.)
    async fn a_busy_task_lets_timers_fire() {
        let turn = Turn::start().unwrap();
        let fired = Rc::new(Cell::new(false));
        let flag = fired.clone();
        monoio::spawn(async move {
            monoio::time::sleep(Duration::from_millis(1)).await;
            flag.set(true);
        });
        let mut turns = 0u64;
        while !fired.get() && turns < 1_000_000 {
            turn.next().await;
            turns += 1;
        }
        assert!(fired.get(), "the timer never fired in {turns} turns");
    }

    #[test]
    fn epoll_driver() {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(a_busy_task_lets_timers_fire());
    }

    #[test]
    fn io_uring_driver() {
        if !monoio::utils::detect_uring() {
            eprintln!("io_uring is not available here; covered by the epoll case");
            return;
        }
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(a_busy_task_lets_timers_fire());
    }

    /// Several tasks waiting in the same turn are all released by it.
    #[test]
    fn releases_every_waiter() {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(async {
                let turn = Turn::start().unwrap();
                let done = Rc::new(Cell::new(0));
                let mut handles = Vec::new();
                for _ in 0..10 {
                    let (turn, done) = (turn.clone(), done.clone());
                    handles.push(monoio::spawn(async move {
                        for _ in 0..3 {
                            turn.next().await;
                        }
                        done.set(done.get() + 1);
                    }));
                }
                for h in handles {
                    h.await;
                }
                assert_eq!(done.get(), 10);
            });
    }
}
