//! The shard's periodic sweep over its connections: pings the silent, closes the dead, aborts
//! closing handshakes that take too long, and closes connections whose token expired (when
//! `TOKEN_EXPIRY_CLOSE` is on).
//!
//! One timer per shard instead of one per connection keeps idle connections free of timer state.
//! The cost is a walk over the slab every period: a few nanoseconds per connection, i.e. a few
//! milliseconds per second for a million connections on one shard.

use std::{rc::Rc, time::Duration};

use super::{Shard, conn::Phase};
use crate::proto::close::CloseCode;

/// The sweep period: a quarter of the idle timeout, between 50 ms and 1 s.
pub fn period(idle_timeout: Duration) -> Duration {
    (idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Runs forever on the shard.
pub async fn run(shard: Rc<Shard>) {
    let period = period(shard.limits.idle_timeout);
    let idle_ms = shard.limits.idle_timeout.as_millis() as u64;
    let close_ms = shard.limits.close_timeout.as_millis() as u64;
    loop {
        monoio::time::sleep(period).await;
        super::expiry::close_expired(&shard);
        let now = shard.now_ms();
        for conn in shard.registry.borrow().iter() {
            match conn.phase() {
                Phase::Open => {
                    let silent = now.saturating_sub(conn.last_rx_ms());
                    if silent >= 2 * idle_ms {
                        // Jetty's choice for an idle timeout; the close timeout then drops a
                        // dead peer. (Sending never touches the registry, so this is safe
                        // while iterating it.)
                        conn.close(&shard, CloseCode::GoingAway1001, "idle timeout");
                    } else if silent >= idle_ms && !conn.ping_outstanding() {
                        conn.send_idle_ping(&shard);
                    }
                }
                Phase::Closing { since_ms } if now.saturating_sub(since_ms) >= close_ms => {
                    conn.abort();
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_is_a_quarter_of_idle_within_bounds() {
        assert_eq!(period(Duration::from_secs(30)), Duration::from_secs(1));
        assert_eq!(period(Duration::from_secs(2)), Duration::from_millis(500));
        assert_eq!(
            period(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
    }
}
