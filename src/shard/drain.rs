//! Graceful drain of one shard on shutdown: every connection is closed with 1001 ("going
//! away"), spread evenly over the drain period so that clients reconnect elsewhere gradually
//! rather than all in the same instant, then the shard stops.

use std::{
    rc::Rc,
    time::{Duration, Instant},
};

use super::Shard;
use crate::proto::close::CloseCode;

/// How often the drain closes the next slice of connections.
const TICK: Duration = Duration::from_millis(10);

/// Closes this shard's connections over `period`, waits for their closing handshakes (at most
/// the close timeout), then marks the shard finished.
pub async fn run(shard: Rc<Shard>, period: Duration) {
    let conns: Vec<_> = shard.registry.borrow().iter().cloned().collect();
    let total = conns.len();
    let start = Instant::now();
    let mut closed = 0;
    while closed < total {
        let due = due_by(start.elapsed(), period, total);
        for conn in &conns[closed..due] {
            conn.close(&shard, CloseCode::GoingAway1001, "server shutting down");
        }
        closed = due;
        if closed < total {
            monoio::time::sleep(TICK).await;
        }
    }
    // Connections handed over while the drain started are closed now too (`close` ignores
    // those already closing, and never touches the registry, so iterating it is safe).
    for conn in shard.registry.borrow().iter() {
        conn.close(&shard, CloseCode::GoingAway1001, "server shutting down");
    }
    let deadline = Instant::now() + shard.limits.close_timeout;
    while !shard.registry.borrow().is_empty() && Instant::now() < deadline {
        monoio::time::sleep(TICK).await;
    }
    for conn in shard.registry.borrow().iter() {
        conn.abort();
    }
    // Let the readers observe the aborts and unregister before the runtime stops.
    while !shard.registry.borrow().is_empty() && Instant::now() < deadline + TICK * 10 {
        monoio::time::sleep(TICK).await;
    }
    shard.finished.set(true);
}

/// How many of `total` connections should be closed `elapsed` into a drain of `period`.
fn due_by(elapsed: Duration, period: Duration, total: usize) -> usize {
    if period.is_zero() || elapsed >= period {
        return total;
    }
    let fraction = elapsed.as_secs_f64() / period.as_secs_f64();
    ((fraction * total as f64).ceil() as usize).min(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_are_spread_evenly_over_the_period() {
        let p = Duration::from_secs(10);
        assert_eq!(due_by(Duration::ZERO, p, 1000), 0);
        assert_eq!(due_by(Duration::from_secs(1), p, 1000), 100);
        assert_eq!(due_by(Duration::from_secs(5), p, 1000), 500);
        assert_eq!(due_by(Duration::from_secs(10), p, 1000), 1000);
        assert_eq!(due_by(Duration::from_secs(30), p, 1000), 1000);
        assert_eq!(due_by(Duration::from_millis(1), p, 3), 1);
        assert_eq!(due_by(Duration::ZERO, Duration::ZERO, 7), 7);
    }
}
