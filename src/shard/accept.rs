//! The shard's accept loop. Out of descriptors (`EMFILE`, `ENFILE`) or kernel memory, it backs
//! off with a growing pause instead of spinning, keeps serving existing connections meanwhile,
//! counts the failure, and resumes as descriptors free up. Under a connect flood it accepts
//! [`ACCEPTS_PER_TURN`] connections, then waits for the driver's next turn (`net::turn`).

use std::{io, net::IpAddr, rc::Rc, time::Duration};

use monoio::{io::CancelHandle, net::TcpListener};

use super::{Shard, admission, session};
use crate::metrics::AcceptError;

/// First pause after a resource failure; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause between accept attempts while out of resources.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Connections accepted before the accept loop lets the rest of the shard have a turn of the
/// driver (a connect flood must not starve established connections, timers or the drain).
const ACCEPTS_PER_TURN: usize = 64;

/// Accepts until the process drains: the inbox then cancels the pending accept through `stop`
/// (an io_uring or epoll cancellation, never an action on a descriptor this task may already
/// have closed), and the listener is dropped here.
pub async fn run(shard: Rc<Shard>, listener: TcpListener, stop: CancelHandle, tls: bool) {
    let mut backoff = MIN_BACKOFF;
    let mut accepted = 0;
    while !shard.draining() {
        if accepted == ACCEPTS_PER_TURN {
            accepted = 0;
            shard.turn.next().await;
            continue;
        }
        match listener.cancelable_accept(stop.clone()).await {
            Ok((stream, peer)) => {
                backoff = MIN_BACKOFF;
                accepted += 1;
                monoio::spawn(serve(shard.clone(), stream, peer.ip(), tls));
            }
            // The drain cancelled this accept.
            Err(_) if shard.draining() => break,
            Err(err) if is_resource_exhaustion(&err) => {
                shard.stats.inc_accept_error(AcceptError::Emfile);
                tracing::warn!(shard = shard.id, error = %err, pause_ms = backoff.as_millis() as u64,
                    "accept failed for lack of resources; backing off");
                monoio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(err) => {
                // Per-connection failures (e.g. the client reset before accept): move on.
                shard.stats.inc_accept_error(AcceptError::Other);
                tracing::debug!(shard = shard.id, error = %err, "accept failed");
            }
        }
    }
}

/// The task of one accepted socket: admission (over TLS when `tls`), then its session.
async fn serve(shard: Rc<Shard>, stream: monoio::net::TcpStream, peer: IpAddr, tls: bool) {
    if let Some(admitted) = admission::admit(&shard, stream, peer, tls).await {
        session::open(&shard, admitted).await;
    }
}

/// Errors that mean "no more descriptors or memory right now", which retrying at once would
/// only make worse.
fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_descriptor_exhaustion() {
        assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!is_resource_exhaustion(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }
}
