//! The cross-thread hand-off of notifications: `fanout::dispatch::Dispatcher` pushing
//! `fanout::Delivery` values onto a shard's `rtrb` SPSC ring and ringing its
//! `shard::inbox::Doorbell`, with the shard's end popping on another thread.
//!
//! Simulates the dispatcher thread (fed by Redis or the publish API) handing one notification per
//! recipient user to the owner shard: route it (`owner_shard`), push it, ring the doorbell; the
//! consumer thread pops and drops it. The ring has the production capacity (65,536) and there is
//! one shard. Throughput is messages per second from the first push until the consumer has popped
//! the last one. Two groups:
//!
//! - `dispatch/queue`: a `Delivery` that costs nothing to build or drop (empty user id, static
//!   frame, a fixed `Instant`), so only the hand-off is timed;
//! - `dispatch/with_delivery`: the `Delivery` as production builds it (user id `Box<str>`, a
//!   `Bytes::clone` of the shared encoded frame, `Instant::now()`) and the consumer drops it
//!   (freeing the id on the other thread and releasing the frame's shared reference count).
//!
//! In each group, beside the production `dispatcher_rtrb_doorbell`, so the ratios are visible:
//! `rtrb_push_only` (the same ring without routing and doorbell: what those two cost),
//! `std_mpsc_sync_channel` (`std::sync::mpsc::sync_channel` with the same capacity, the bounded
//! baseline) and `std_mpsc_channel` (the unbounded one).
//!
//! Every consumer busy-polls (`pop` / `try_recv`), like a busy shard draining its inbox in
//! batches, and the producer waits the way each API does when the queue is full (the dispatcher
//! its own way: spin, then 50 us sleeps). So the doorbell is measured on its common, cheap path:
//! no waker parked, an atomic read-modify-write. The parked-shard wake-up (a cross-thread
//! `eventfd`/`io_uring` wake) is not measured: registering a waker on a `Doorbell` is private to
//! `shard::inbox`. `dispatch/pieces` times the doorbell, the routing hash and the `Delivery`
//! build alone on one thread. The benches use mimalloc, as the gateway binary does.
//!
//! Why it matters: one dispatcher thread feeds every shard, so its per-message cost caps the
//! gateway's delivered msg/s (issue 4: flat out >= 2x the best peer).

use std::{
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use chat4all_gateway::internals::{
    Body, Delivery, Dispatcher, Doorbell, GlobalStats, encode_text, owner_shard,
};
use criterion::{Bencher, Criterion, Throughput, criterion_group, criterion_main};

// The gateway binary's allocator, so allocation costs match production.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The default `SHARD_QUEUE_CAPACITY`.
const CAPACITY: usize = 65_536;
/// Generous, so the bench never drops (the gateway uses 10 ms).
const FULL_WAIT: Duration = Duration::from_secs(1);
/// Distinct recipient ids cycled through.
const USERS: usize = 1024;

/// What the producer needs per message: the recipients and the shared frame.
struct Source {
    /// Recipient ids, cycled through.
    users: Vec<String>,
    /// The encoded notification every recipient shares.
    frame: Bytes,
    /// The fixed receive time of [`Source::bare`] deliveries.
    epoch: Instant,
}

impl Source {
    fn new() -> Self {
        Self {
            users: (0..USERS).map(|i| format!("user-{i:06}")).collect(),
            frame: encode_text(br#"{"type":"notification","timestamp":1760000000000,"body":"hi"}"#),
            epoch: Instant::now(),
        }
    }

    /// The `Delivery` the dispatcher thread builds for the `i`-th recipient.
    fn delivery(&self, i: u64) -> Delivery {
        Delivery {
            user: self.users[i as usize % USERS].as_str().into(),
            body: Body::Frame(self.frame.clone()),
            received: Instant::now(),
            reply: None,
        }
    }

    /// A `Delivery` that allocates nothing and touches no shared count (an empty `Box<str>`
    /// does not allocate; a static `Bytes` has no reference count).
    fn bare(&self, _: u64) -> Delivery {
        Delivery {
            user: "".into(),
            body: Body::Frame(Bytes::from_static(b"\x81\x00")),
            received: self.epoch,
            reply: None,
        }
    }
}

/// A consumer thread that busy-polls until told to stop, publishing how many it has taken.
struct Drain {
    /// Messages popped so far (written by the consumer thread only).
    popped: Arc<Padded>,
    /// Set to end the consumer thread.
    stop: Arc<AtomicBool>,
    /// The consumer thread.
    thread: Option<JoinHandle<()>>,
}

/// A counter on its own cache line, so the producer's writes do not share it.
#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

impl Drain {
    /// Spawns a thread calling `try_take` (true when it took and dropped one message).
    fn spawn(mut try_take: impl FnMut() -> bool + Send + 'static) -> Self {
        let popped = Arc::new(Padded::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (popped, stop) = (popped.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if try_take() {
                        n += 1;
                        popped.0.store(n, Ordering::Release);
                    } else {
                        std::hint::spin_loop();
                    }
                }
            })
        };
        Self {
            popped,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits until the consumer has taken `total` messages since it started.
    fn wait_for(&self, total: u64) {
        while self.popped.0.load(Ordering::Acquire) < total {
            std::hint::spin_loop();
        }
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("consumer thread panicked");
        }
    }
}

/// Times `iters` messages built by `make` through `push` until `drain` has taken them all.
/// `sent` counts every message pushed through this pipe so far (criterion calls this once per
/// sample).
fn run(
    b: &mut Bencher,
    make: impl Fn(u64) -> Delivery,
    drain: &Drain,
    sent: &mut u64,
    mut push: impl FnMut(Delivery),
) {
    b.iter_custom(|iters| {
        let start = Instant::now();
        for i in 0..iters {
            push(make(i));
        }
        *sent += iters;
        drain.wait_for(*sent);
        start.elapsed()
    });
}

/// One group: the production dispatcher and the baselines, each with its own queue and consumer
/// thread, fed with deliveries made by `make`.
fn throughput(c: &mut Criterion, group: &str, make: impl Fn(u64) -> Delivery + Copy) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    // Each pipe and its consumer thread live for the whole of one benchmark (warm-up included,
    // which also faults in the ring's pages) and are gone before the next one starts, so only
    // one consumer spins at a time.
    {
        let (tx, mut rx) = rtrb::RingBuffer::<Delivery>::new(CAPACITY);
        let bell = Arc::new(Doorbell::default());
        let stats = Arc::new(GlobalStats::default());
        let mut dispatcher = Dispatcher::new(vec![tx], vec![bell], FULL_WAIT, stats);
        let drain = Drain::spawn(move || rx.pop().is_ok());
        let mut sent = 0;
        g.bench_function("dispatcher_rtrb_doorbell", |b| {
            run(b, make, &drain, &mut sent, |d| {
                dispatcher.dispatch(d).unwrap();
            });
        });
    }
    {
        let (mut tx, mut rx) = rtrb::RingBuffer::<Delivery>::new(CAPACITY);
        let drain = Drain::spawn(move || rx.pop().is_ok());
        let mut sent = 0;
        g.bench_function("rtrb_push_only", |b| {
            run(b, make, &drain, &mut sent, |mut d| {
                while let Err(rtrb::PushError::Full(back)) = tx.push(d) {
                    d = back;
                    std::hint::spin_loop();
                }
            });
        });
    }
    {
        let (tx, rx) = mpsc::sync_channel::<Delivery>(CAPACITY);
        let drain = Drain::spawn(move || rx.try_recv().is_ok());
        let mut sent = 0;
        g.bench_function("std_mpsc_sync_channel", |b| {
            run(b, make, &drain, &mut sent, |d| tx.send(d).unwrap());
        });
    }
    {
        let (tx, rx) = mpsc::channel::<Delivery>();
        let drain = Drain::spawn(move || rx.try_recv().is_ok());
        let mut sent = 0;
        g.bench_function("std_mpsc_channel", |b| {
            run(b, make, &drain, &mut sent, |d| tx.send(d).unwrap());
        });
    }
    g.finish();
}

fn queue(c: &mut Criterion) {
    let source = Source::new();
    throughput(c, "dispatch/queue", |i| source.bare(i));
}

fn with_delivery(c: &mut Criterion) {
    let source = Source::new();
    throughput(c, "dispatch/with_delivery", |i| source.delivery(i));
}

fn pieces(c: &mut Criterion) {
    let source = Source::new();
    let mut g = c.benchmark_group("dispatch/pieces");
    let bell = Doorbell::default();
    g.bench_function("doorbell_ring_no_waker", |b| {
        b.iter(|| black_box(&bell).ring())
    });
    let mut i = 0u64;
    g.bench_function("delivery_build", |b| {
        b.iter(|| {
            i += 1;
            source.delivery(black_box(i))
        });
    });
    g.bench_function("owner_shard_route", |b| {
        b.iter(|| owner_shard(black_box(&source.users[7]), black_box(1)));
    });
    g.finish();
}

criterion_group!(benches, pieces, queue, with_delivery);
criterion_main!(benches);
