//! The top layer: configuration to running process. [`run`] is the whole program (`main.rs`
//! only calls it): validate the configuration, build the token verifier, install the signal
//! handlers, [`start`](start::start) every thread, then drain on the first signal.

pub mod signals;
pub mod start;

use std::process::ExitCode;

pub use self::start::{Gateway, StartError, authenticator, start};
use crate::{
    config::{Config, EXIT_CONFIG},
    dev, telemetry,
};

/// Runs the gateway with the configuration from the command line and environment, until it has
/// drained after a shutdown signal. Configuration errors exit with [`EXIT_CONFIG`].
pub fn run() -> ExitCode {
    let cfg = match Config::from_args_and_env().and_then(|c| c.validate().map(|()| c)) {
        Ok(cfg) => cfg,
        Err(err) => {
            eprintln!("chat4all-gateway: {err}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    telemetry::init(cfg.log_format);

    // --dev: a throwaway secret, so `cargo run -- --dev` works with nothing configured.
    let dev_secret = (cfg.dev && cfg.jwt_secret.is_none()).then(dev::secret);
    let auth = match authenticator(&cfg, dev_secret.as_deref()) {
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
    let first_signal = match signals::watch() {
        Ok(rx) => rx,
        Err(err) => {
            eprintln!("chat4all-gateway: cannot install signal handlers: {err}");
            return ExitCode::FAILURE;
        }
    };
    let gw = match start(&cfg, auth) {
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
        println!("{}", dev::banner(secret, gw.ws_addr, gw.control_addr, &cfg));
    }
    let _ = first_signal.recv();
    gw.begin_drain();
    gw.join();
    tracing::info!("drained; exiting");
    ExitCode::SUCCESS
}
