//! `chat4all-gateway`: reads and validates the configuration, then starts the gateway. Only
//! wiring lives here; see the library for the parts.

use std::process::ExitCode;

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
    gw.join();
    ExitCode::SUCCESS
}
