//! Process signals. Nothing but SIGKILL (and the signals that report a fault in the process
//! itself) ends the gateway without its drain:
//!
//! | signals | what happens |
//! | --- | --- |
//! | SIGTERM, SIGINT, SIGQUIT | the first starts the drain; a second exits at once (status 1) |
//! | SIGHUP | reload what can be reloaded ([`crate::reload`]) |
//! | SIGUSR1, SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGPWR, SIGSTKFLT, SIGXCPU, SIGXFSZ, SIGRTMIN..SIGRTMAX | logged (warn) and ignored: their default action would end the process at once |
//!
//! SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS and SIGTRAP keep their default action: they
//! report that the process itself is broken, and it must not carry on. SIGPIPE is ignored by
//! the Rust runtime (a write to a closed socket returns EPIPE instead).

use std::{sync::mpsc, thread};

use libc::{SIGPWR, SIGSTKFLT};
use signal_hook::{consts::signal::*, iterator::Signals, low_level::signal_name};

/// What the main thread is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Start the drain (the first SIGTERM, SIGINT or SIGQUIT).
    Drain,
    /// Reload (SIGHUP).
    Reload,
    /// The drain has finished (sent by the thread that waits for it, not by a signal).
    Drained,
}

/// Signals that start the drain.
const DRAIN: [i32; 3] = [SIGTERM, SIGINT, SIGQUIT];

/// Signals whose default action would end the process, with nothing useful to do: ignored.
fn ignored() -> Vec<i32> {
    let mut all = vec![
        SIGUSR1, SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGPWR, SIGSTKFLT, SIGXCPU, SIGXFSZ,
    ];
    all.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    all
}

/// Installs the handlers and watches the signals on a thread, which sends drain and reload
/// requests to `tx`; a second drain signal exits the process from that thread.
pub fn watch(tx: mpsc::Sender<Request>) -> std::io::Result<()> {
    let ignored = ignored();
    let mut signals = Signals::new(DRAIN.iter().chain([SIGHUP].iter()).chain(&ignored))?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut drains = 0;
            for signal in signals.forever() {
                let name = name(signal);
                if DRAIN.contains(&signal) {
                    drains += 1;
                    if drains == 1 {
                        tracing::info!(signal = %name, "shutdown requested; a second signal exits at once");
                        let _ = tx.send(Request::Drain);
                    } else {
                        eprintln!("chat4all-gateway: second signal ({name}); exiting without draining");
                        std::process::exit(1);
                    }
                } else if signal == SIGHUP {
                    tracing::info!(signal = %name, "reload requested");
                    let _ = tx.send(Request::Reload);
                } else {
                    tracing::warn!(signal = %name, "signal ignored");
                }
            }
        })?;
    Ok(())
}

/// `SIGUSR1`, or `SIGRTMIN+3` for real-time signals.
fn name(signal: i32) -> String {
    match signal_name(signal) {
        Some(name) => name.to_string(),
        None if signal == SIGPWR => "SIGPWR".into(),
        None if signal == SIGSTKFLT => "SIGSTKFLT".into(),
        None if signal >= libc::SIGRTMIN() => format!("SIGRTMIN+{}", signal - libc::SIGRTMIN()),
        None => format!("signal {signal}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_signals_including_real_time_ones() {
        assert_eq!(name(SIGUSR1), "SIGUSR1");
        assert_eq!(name(SIGPWR), "SIGPWR");
        assert_eq!(name(libc::SIGRTMIN() + 3), "SIGRTMIN+3");
        let all = ignored();
        assert!(!all.iter().any(|s| DRAIN.contains(s) || *s == SIGHUP));
        assert!(
            !all.iter()
                .any(|s| signal_hook::consts::FORBIDDEN.contains(s))
        );
    }
}
