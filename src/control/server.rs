//! The internal port's accept loop and connection lifecycle.
//!
//! Defences, so the port can be neither exhausted nor used to starve the shards:
//! - at most `CONTROL_MAX_CONNECTIONS` connections ([`Conns`]: the oldest idle one makes room
//!   for a new one), which `config` keeps within half of `FD_RESERVE`;
//! - `CONTROL_READ_TIMEOUT` for the request headers (hyper's header timer, which also runs while a
//!   keep-alive connection waits for its next request) and for a whole body (in
//!   [`routes`](super::routes));
//! - accept failures back off (5 ms doubling to 1 s) and are logged at most once per
//!   [`LOG_EVERY`], with the count of those not logged.

use std::{
    convert::Infallible,
    net::TcpListener as StdListener,
    sync::{Arc, Mutex, atomic::Ordering},
    thread,
    time::{Duration, Instant},
};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::{
    conns::{Admitted, Conns},
    routes::{self, State},
};
use crate::metrics::ControlDrop;

/// First pause after a failed accept; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause between accept attempts while they fail.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one "control accept failed" line per this period.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What a new connection refused at the cap reads before the close.
const BUSY_RESPONSE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
Retry-After: 1\r\nConnection: close\r\nContent-Length: 82\r\n\r\n\
{\"error\":\"control_busy\",\"message\":\"every internal-port connection is publishing\"}\n";

/// Starts the control-plane thread serving `listener` with at most `max_connections`
/// connections.
pub fn spawn(
    listener: StdListener,
    state: State,
    max_connections: usize,
) -> std::io::Result<thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            runtime.block_on(serve(listener, Arc::new(state), max_connections));
        })
}

async fn serve(listener: StdListener, state: Arc<State>, max_connections: usize) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(err) => {
            tracing::error!(error = %err, "control listener unusable");
            return;
        }
    };
    let conns = Arc::new(Mutex::new(Conns::new(max_connections)));
    let mut backoff = MIN_BACKOFF;
    let mut log = LogLimiter::new(LOG_EVERY);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = MIN_BACKOFF;
                stream
            }
            Err(err) => {
                if let Some(suppressed) = log.allow(Instant::now()) {
                    tracing::warn!(error = %err, suppressed, pause_ms = backoff.as_millis() as u64,
                        "control accept failed; backing off");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let admitted = conns.lock().expect("not poisoned").admit();
        let global = state.metrics.global();
        let Some(admitted) = admitted else {
            global.inc_control_drop(ControlDrop::Refused);
            // Best effort, without waiting: the client may not be reading.
            let _ = stream.try_write(BUSY_RESPONSE);
            continue;
        };
        global.control_connections.fetch_add(1, Ordering::Relaxed);
        let made_room = admitted.made_room;
        tokio::spawn(connection(stream, admitted, state.clone(), conns.clone()));
        if made_room {
            global.inc_control_drop(ControlDrop::Evicted);
            global.control_connections.fetch_sub(1, Ordering::Relaxed);
            // Let the evicted connection's task run and close its socket before the next
            // accept, so descriptors stay within the cap.
            tokio::task::yield_now().await;
        }
    }
}

/// Serves one connection until it ends, times out or is evicted.
async fn connection(
    stream: TcpStream,
    admitted: Admitted,
    state: Arc<State>,
    conns: Arc<Mutex<Conns>>,
) {
    let Admitted {
        id, busy, evicted, ..
    } = admitted;
    let service_state = state.clone();
    let service = service_fn(move |req| {
        let state = service_state.clone();
        let busy = busy.clone();
        async move { Ok::<_, Infallible>(routes::route(req, &state, &busy).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    let global = state.metrics.global();
    tokio::select! {
        // First, so that an evicted connection is never also counted as ending by itself.
        biased;
        // Evicted: dropping `conn` closes the socket. The table already forgot it (and the
        // accept loop counted it).
        _ = evicted => return,
        result = conn => {
            if result.is_err_and(|e| e.is_timeout()) {
                global.inc_control_drop(ControlDrop::ReadTimeout);
            }
        }
    }
    global.control_connections.fetch_sub(1, Ordering::Relaxed);
    conns.lock().expect("not poisoned").close(id);
}

/// Lets one log line through per period and counts the ones it held back.
struct LogLimiter {
    /// The period.
    every: Duration,
    /// When the last line went out.
    last: Option<Instant>,
    /// Lines held back since then.
    suppressed: u64,
}

impl LogLimiter {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(lines held back since the last one)` when a line may go out at `now`.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_lets_one_line_through_per_period_and_counts_the_rest() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut log = LogLimiter::new(Duration::from_secs(10));
        assert_eq!(log.allow(at(0)), Some(0));
        // Every 50 ms for 10 s, as a failing accept loop would: all held back.
        for t in (50..10_000).step_by(50) {
            assert_eq!(log.allow(at(t)), None);
        }
        assert_eq!(log.allow(at(10_000)), Some(199));
        assert_eq!(log.allow(at(10_001)), None);
        assert_eq!(log.allow(at(30_000)), Some(1));
    }

    #[test]
    fn busy_response_is_well_formed() {
        let text = std::str::from_utf8(BUSY_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), len);
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }
}
