//! `chat4all-gateway`: reads and validates the configuration, then starts the gateway. Only
//! wiring lives here; see the library for the parts.

use std::{process::ExitCode, sync::mpsc, thread};

use chat4all_gateway::{
    config::{Config, EXIT_CONFIG},
    gateway, telemetry,
};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cfg = match Config::from_args_and_env().and_then(|c| c.validate().map(|()| c)) {
        Ok(cfg) => cfg,
        Err(err) => {
            eprintln!("chat4all-gateway: {err}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    telemetry::init(cfg.log_format);

    // --dev: a throwaway secret, so `cargo run -- --dev` works with nothing configured.
    let dev_secret = (cfg.dev && cfg.jwt_secret.is_none()).then(chat4all_gateway::dev::secret);
    let auth = match gateway::authenticator(&cfg, dev_secret.as_deref()) {
        Ok(auth) => auth,
        Err(err) => {
            eprintln!("chat4all-gateway: {err}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    if cfg.check_config {
        for (name, value) in cfg.redacted_summary() {
            println!("{name}={value}");
        }
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }

    // Signals are caught before anything binds: the first starts the drain, a second exits at
    // once (an operator who asks twice means it).
    let first_signal = match watch_signals() {
        Ok(rx) => rx,
        Err(err) => {
            eprintln!("chat4all-gateway: cannot install signal handlers: {err}");
            return ExitCode::FAILURE;
        }
    };
    let gw = match gateway::start(&cfg, auth) {
        Ok(gw) => gw,
        Err(err) => {
            eprintln!("chat4all-gateway: {err}");
            return ExitCode::FAILURE;
        }
    };
    let summary: Vec<String> = cfg
        .redacted_summary()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    tracing::info!(config = %summary.join(" "), "effective configuration");
    tracing::info!(
        websocket = %gw.ws_addr, control = %gw.control_addr, driver = gw.driver.as_str(),
        shards = gw.shards, max_connections = gw.max_connections, "gateway listening"
    );
    if let Some(secret) = &dev_secret {
        println!(
            "{}",
            chat4all_gateway::dev::banner(secret, gw.ws_addr, gw.control_addr, &cfg)
        );
    }
    let _ = first_signal.recv();
    gw.begin_drain();
    gw.join();
    tracing::info!("drained; exiting");
    ExitCode::SUCCESS
}

/// Watches SIGTERM and SIGINT on a thread: the first is reported on the returned channel, a
/// second exits the process immediately.
fn watch_signals() -> std::io::Result<mpsc::Receiver<i32>> {
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
