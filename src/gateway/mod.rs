//! The top layer: configuration to running process. [`run`] is the whole program (`main.rs`
//! only calls it): validate the configuration, build the token verifier, install the signal
//! handlers, [`start`](start::start) every thread, then serve signals: reload on SIGHUP, drain
//! on the first SIGTERM/SIGINT/SIGQUIT ([`signals`]).

pub(crate) mod keys;
pub mod signals;
pub mod start;

use std::{process::ExitCode, sync::mpsc};

pub use self::{
    keys::authenticator,
    start::{Gateway, StartError, start},
};
use crate::{
    config::{Config, EXIT_CONFIG},
    dev,
    reload::Reloader,
    telemetry,
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
    let log_filter = match telemetry::init(cfg.log_format, cfg.log_filter_file.as_deref()) {
        Ok(filter) => filter,
        Err(err) => {
            eprintln!("chat4all-gateway: {err}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };

    // --dev: a throwaway secret, so `cargo run -- --dev` works with nothing configured.
    let generated = cfg.dev && cfg.jwt_secret.is_none() && cfg.jwt_secret_file.is_none();
    let dev_secret = generated.then(dev::secret);
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

    // Signals are caught before anything binds, so none can end the process undrained.
    let (tx, requests) = mpsc::channel();
    match signals::watch(tx.clone()) {
        Ok(()) => {}
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
    let mut reloader = Reloader::default();
    if let Some(filter) = log_filter {
        reloader.add(filter);
    }
    reloader.add(keys::JwtKeyReload::new(&cfg, generated, gw.shared.clone()));
    if let Some(acceptor) = &gw.tls {
        reloader.add(crate::tls::TlsReload(acceptor.clone()));
    }

    let summary: Vec<String> = cfg
        .redacted_summary()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    tracing::info!(config = %summary.join(" "), "effective configuration");
    let scheme = if gw.tls.is_some() { "wss" } else { "ws" };
    let plain = gw.plain_addr.map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        websocket = %gw.ws_addr, scheme, plain_websocket = %plain, control = %gw.control_addr,
        driver = gw.driver.as_str(), shards = gw.shards, max_connections = gw.max_connections,
        "gateway listening"
    );
    if let Some(secret) = &dev_secret {
        println!("{}", dev::banner(secret, gw.ws_addr, gw.control_addr, &cfg));
    }
    serve_signals(gw, &tx, &requests, &reloader);
    tracing::info!("drained; exiting");
    ExitCode::SUCCESS
}

/// Reloads on every SIGHUP, before and during the drain, and returns once the drain started by
/// the first shutdown signal has finished.
fn serve_signals(
    gw: Gateway,
    tx: &mpsc::Sender<signals::Request>,
    requests: &mpsc::Receiver<signals::Request>,
    reloader: &Reloader,
) {
    let mut gw = Some(gw);
    // `tx` keeps the channel open, so this ends only with `Drained`.
    for request in requests {
        match request {
            signals::Request::Reload => {
                reloader.reload_all();
            }
            signals::Request::Drain => {
                if let Some(gw) = gw.take() {
                    gw.begin_drain();
                    let done = tx.clone();
                    std::thread::spawn(move || {
                        gw.join();
                        let _ = done.send(signals::Request::Drained);
                    });
                }
            }
            signals::Request::Drained => return,
        }
    }
}
