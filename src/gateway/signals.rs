//! Process signals: the first SIGTERM or SIGINT starts the drain, a second exits at once.

use std::{sync::mpsc, thread};

/// Watches SIGTERM and SIGINT on a thread: the first is reported on the returned channel, a
/// second exits the process immediately.
pub fn watch() -> std::io::Result<mpsc::Receiver<i32>> {
    use signal_hook::{
        consts::{SIGINT, SIGTERM},
        iterator::Signals,
    };
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                seen += 1;
                if seen == 1 {
                    tracing::info!(signal, "shutdown requested; a second signal exits at once");
                    let _ = tx.send(signal);
                } else {
                    eprintln!("chat4all-gateway: second signal; exiting without draining");
                    std::process::exit(1);
                }
            }
        })?;
    Ok(rx)
}
