//! The shard's connection registry (`shard::registry`) and the user -> shard routing
//! (`fanout::route`): the two lookups every notification makes before its frame is written.
//!
//! Simulates the inbox task delivering a notification: `Registry::user(id)` finds the user's
//! connections on the owner shard, and every one of them is visited (as `shard::inbox::deliver`
//! does before `Conn::send`, which first reads its phase). Cases: every user with 1 connection,
//! every user with 3 (phone, laptop, browser tab), and a miss (a user with no connection on this
//! shard, e.g. offline).
//! Users are looked up in a scattered order, so consecutive lookups do not share cache lines.
//!
//! Scale: the production question is "among 100k users", but every `Conn` owns a real socket
//! and this machine allows 20,000 open descriptors, so the registry here holds 8,192 real
//! loopback connections (the accepted ends, on a monoio legacy-driver runtime): 8,192 users x 1,
//! or 2,730 users x 3, plus a 1,024-user registry to show how little size matters. The lookup is
//! one `HashMap` hit plus a slab index per connection; past the CPU caches a bigger map adds
//! only cache misses, which the scattered order already exposes at 8k.
//!
//! `owner_shard` (xxh3 of the user id, then a multiply-shift range reduction) runs once per
//! notification on the dispatcher thread, before the registry lookup on the shard.
//!
//! Why it matters: these run once per notification, so they bound flat-out msg/s; a slow lookup
//! would show up directly in CPU per 1,000 deliveries.

use std::{
    hint::black_box,
    net::{TcpListener, TcpStream},
    rc::Rc,
};

use chat4all_gateway::internals::{Conn, Registry, owner_shard};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

// The gateway binary's allocator, so allocation costs match production.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Real connections held in the largest registry (16,384 descriptors would also fit, but 8k keeps
/// setup quick and leaves room for the harness).
const CONNECTIONS: usize = 8192;

/// A registry of `users` users with `per_user` real connections each, and the user ids.
/// Must run inside a monoio runtime (the sockets are registered with its driver).
fn build_registry(
    listener: &TcpListener,
    users: usize,
    per_user: usize,
) -> (Registry, Vec<String>) {
    let addr = listener.local_addr().unwrap();
    let mut registry = Registry::default();
    let ids: Vec<String> = (0..users).map(|i| format!("user-{i:06}")).collect();
    for id in &ids {
        let user: Rc<str> = Rc::from(id.as_str());
        for _ in 0..per_user {
            // Only the accepted end is kept; the client end closes at once (the conn is never
            // written to here).
            let client = TcpStream::connect(addr).unwrap();
            let (server, _) = listener.accept().unwrap();
            drop(client);
            let stream = monoio::net::TcpStream::from_std(server).unwrap();
            let conn = Rc::new(Conn::new(stream, user.clone(), 0));
            assert!(registry.insert(conn, per_user).evicted.is_none());
        }
    }
    assert_eq!(registry.len(), users * per_user);
    (registry, ids)
}

/// `ids` in a scattered order (stride coprime with the length), repeated as needed.
fn scattered(ids: &[String]) -> Vec<&str> {
    let n = ids.len();
    let stride = (n / 2 + 1..).find(|s| gcd(*s, n) == 1).unwrap();
    (0..n).map(|i| ids[i * stride % n].as_str()).collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn lookup(c: &mut Criterion) {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("monoio legacy runtime");
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut g = c.benchmark_group("registry/user_lookup");
        for (label, users, per_user) in [
            ("1k_users_x1", 1024, 1),
            ("8k_users_x1", CONNECTIONS, 1),
            ("2.7k_users_x3", CONNECTIONS / 3, 3),
        ] {
            let (registry, ids) = build_registry(&listener, users, per_user);
            let order = scattered(&ids);
            let mut next = 0usize;
            g.bench_function(BenchmarkId::new("hit", label), |b| {
                b.iter(|| {
                    let user = order[next];
                    next = (next + 1) % order.len();
                    let mut found = 0;
                    for conn in registry.user(black_box(user)) {
                        black_box(conn.phase());
                        found += 1;
                    }
                    debug_assert_eq!(found, per_user);
                    found
                });
            });
            g.bench_function(BenchmarkId::new("miss", label), |b| {
                b.iter(|| registry.user(black_box("user-offline")).count());
            });
            // Dropped here, inside the runtime, so the sockets deregister from its driver.
            drop(registry);
        }
        g.finish();
    });
}

fn route(c: &mut Criterion) {
    let mut g = c.benchmark_group("registry/owner_shard");
    for (label, user) in [
        ("short_id", "user-42"),
        ("uuid_id", "7f3a9c2e-1b4d-4e8f-9a6b-2c5d8e1f0a3b"),
    ] {
        g.bench_function(label, |b| {
            b.iter(|| owner_shard(black_box(user), black_box(8)));
        });
    }
    g.finish();
}

criterion_group!(benches, lookup, route);
criterion_main!(benches);
