//! `chat4all-loadtest`: parses the command line and wires the coordinator or a worker; see the
//! library's crate docs for the layout.

use std::{fs, process::ExitCode};

use anyhow::Context;
use chat4all_loadtest::{
    cli::{Cli, Command},
    coord::{self, CoordError},
    report::{plot, summary},
    worker,
};
use clap::Parser;

/// Exit code for bad flags (EX_USAGE).
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Worker(w) = cli.command {
        return match worker::main(w.batch_us) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chat4all-loadtest worker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match coordinate(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat4all-loadtest: {e:#}");
            if matches!(e.downcast_ref::<CoordError>(), Some(CoordError::Config(_))) {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn coordinate(cmd: Command) -> anyhow::Result<()> {
    let common = match &cmd {
        Command::Idle(a) => a.common.clone(),
        Command::Fanout(a) => a.common.clone(),
        Command::Ramp(a) => a.common.clone(),
        Command::ReconnectStorm(a) => a.common.clone(),
        Command::Churn(a) => a.common.clone(),
        Command::Capacity(a) => a.common.clone(),
        Command::Recover(a) => a.common.clone(),
        Command::Worker(_) => unreachable!("handled in main"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(coord::run(cmd))?;
    if let Some(path) = &common.report {
        let json = serde_json::to_string_pretty(&report)?;
        fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let (Some(path), Some(c)) = (&common.plot, &report.capacity) {
        let title = format!("{} connections and memory over time", report.target.url);
        plot::capacity_svg(path, &title, &c.timeline)?;
    } else if let Some(path) = &common.plot {
        let title = format!(
            "{} latency over time, {}",
            report.scenario, report.target.url
        );
        plot::latency_svg(path, &title, &report.timeline())?;
    }
    print!("{}", summary::render(&report));
    Ok(())
}
