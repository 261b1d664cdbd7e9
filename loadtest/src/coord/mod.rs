//! The coordinator: turns the command line into worker plans, starts the fleet, runs a scenario
//! through it, samples the server, and assembles the report.

mod capacity;
mod fleet;
mod progress;
mod recover;
mod sampler;
mod scenarios;
mod server;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;

pub use self::scenarios::run;
use self::{fleet::Fleet, progress::Measure, server::ServerWatch};
use crate::{
    cli::{self, CommonArgs, ConfigError, Endpoint},
    clock::now_us as state_now_us,
    proto::{
        Backoff, Command, ConnectResult, Event, PhaseResult, PhaseSpec, StormResult, WorkerPlan,
    },
    report::{
        ConnectReport, HarnessReport, Machine, PhaseReport, Report, ServerReport, Target, merge,
    },
    stats::{hist::HistError, sysstats::self_cpu_ms},
};

/// Why a run could not complete.
#[derive(Debug, Error)]
pub enum CoordError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("starting a worker process: {0}")]
    Spawn(std::io::Error),
    #[error("worker {0} exited unexpectedly")]
    WorkerGone(usize),
    #[error("worker {0}: {1}")]
    Worker(usize, String),
    #[error("timed out waiting for the workers (or --max-run-secs reached)")]
    Deadline,
    #[error("merging worker histograms: {0}")]
    Hist(#[from] HistError),
    #[error("running --restart-cmd: {0}")]
    Restart(std::io::Error),
}

/// A run in progress: the fleet, the server watch, and the report filled in as it goes.
pub struct Session {
    pub fleet: Fleet,
    pub common: CommonArgs,
    pub server: Option<ServerWatch>,
    pub report: Report,
}

/// What a scenario needs from the workers besides the common flags.
pub struct Needs {
    pub scenario: &'static str,
    pub redis: bool,
    pub payload_bytes: usize,
    pub reconnect: Option<Backoff>,
    /// Publish through the gateway's API instead of Redis.
    pub publish_api: Option<crate::wire::http::ApiTarget>,
    /// PIDs to watch instead of `--server-pid` (several gateway processes).
    pub server_pids: Vec<u32>,
}

fn unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `s` with every occurrence of the token secret replaced (it may appear inside --restart-cmd).
#[must_use]
pub fn redact(s: &str, secret: &str) -> String {
    if secret.is_empty() {
        s.to_owned()
    } else {
        s.replace(secret, "<redacted>")
    }
}

/// The command line with the token secret replaced.
fn redacted_args(secret: &str) -> Vec<String> {
    std::env::args().map(|a| redact(&a, secret)).collect()
}

/// Splits users over workers round robin, and the rates evenly.
fn plans(c: &CommonArgs, ep: &Endpoint, needs: &Needs) -> Result<Vec<WorkerPlan>, CoordError> {
    let workers = c.worker_count().max(1);
    let ips = cli::parse_source_ips(&c.source_ips)?;
    let redis = if needs.redis {
        Some(cli::parse_redis(&c.redis)?)
    } else {
        None
    };
    let seed = c.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let per = |v: f64| v / f64::from(workers);
    let tls = c.tls_plan()?;
    let ports = c
        .source_ports
        .as_deref()
        .map(cli::parse_port_range)
        .transpose()?;
    Ok((0..workers)
        .map(|w| WorkerPlan {
            worker: w,
            host: ep.host.clone(),
            addr: ep.addr,
            path: ep.path.clone(),
            jwt_secret: c.jwt_secret.clone(),
            user_prefix: c.user_prefix.clone(),
            users: (0..c.users()).filter(|u| u % workers == w).collect(),
            conns_per_user: c.conns_per_user,
            // Each worker gets its own slice of the addresses when there are enough (with explicit
            // ports every worker needs them all: the address follows from the global index).
            source_ips: if ips.len() >= workers as usize && ports.is_none() {
                ips.iter()
                    .skip(w as usize)
                    .step_by(workers as usize)
                    .copied()
                    .collect()
            } else {
                ips.clone()
            },
            connect_rate: per(c.connect_rate),
            connect_concurrency: c.connect_concurrency.div_ceil(workers),
            connect_timeout_ms: (c.connect_timeout * 1000.0) as u64,
            redis,
            publish_api: needs.publish_api.clone(),
            tls: tls.clone(),
            source_ports: ports,
            recover: c.recover,
            payload_bytes: needs.payload_bytes,
            reconnect: needs.reconnect,
            interval_ms: c.interval_ms,
            progress_ms: 250,
            seed,
        })
        .collect())
}

impl Session {
    /// Validates, starts the workers and takes the server baseline.
    pub async fn start(common: &CommonArgs, needs: Needs) -> Result<Self, CoordError> {
        common.validate()?;
        let ep = cli::parse_url(&common.url)?;
        let started = Instant::now();
        let hard = started + Duration::from_secs_f64(common.max_run_secs);
        let plans = plans(common, &ep, &needs)?;
        let workers = plans.len() as u32;
        let pids = if needs.server_pids.is_empty() {
            common.server_pid.into_iter().collect()
        } else {
            needs.server_pids.clone()
        };
        let server = (!pids.is_empty()).then(|| ServerWatch::new(pids));
        let fleet = Fleet::start(plans, common.batch_us, hard).await?;
        let report = Report {
            scenario: needs.scenario.to_owned(),
            harness_version: env!("CARGO_PKG_VERSION").to_owned(),
            started_unix_s: unix_s(),
            command: redacted_args(&common.jwt_secret),
            machine: Machine::detect(),
            target: Target {
                url: common.url.clone(),
                redis: common.redis.clone(),
                server_pid: common.server_pid.or(needs.server_pids.first().copied()),
            },
            workers,
            connect: ConnectReport::default(),
            idle: None,
            capacity: None,
            recovery: None,
            fanout: None,
            ramp: None,
            storm: None,
            churn: None,
            server: server.as_ref().map(|s| ServerReport {
                pid: s.pids[0],
                baseline: s.baseline,
                after_connect: None,
                end: None,
            }),
            harness: HarnessReport {
                workers,
                ..HarnessReport::default()
            },
            consistent: true,
            warnings: Vec::new(),
        };
        Ok(Self {
            fleet,
            common: common.clone(),
            server,
            report,
        })
    }

    /// Opens every connection at the ramp rate; fills `report.connect`.
    pub async fn connect(&mut self) -> Result<(), CoordError> {
        let c = &self.common;
        let n = u64::from(c.conns);
        // Unlimited rate: allow for a target as slow as 250 connects/s.
        let at_rate = n as f64
            / if c.connect_rate > 0.0 {
                c.connect_rate
            } else {
                250.0
            };
        let limit = Duration::from_secs_f64(at_rate * 2.0 + 2.0 * c.connect_timeout + 30.0);
        let cpu0 = self
            .server
            .as_ref()
            .and_then(ServerWatch::sample)
            .map(|s| s.cpu_ms);
        self.fleet.stage("connect", Measure::Conns(n));
        self.fleet.broadcast(&Command::Connect).await?;
        let results: Vec<ConnectResult> = self
            .fleet
            .collect(Instant::now() + limit, |ev| match ev {
                Event::Connected(r) => Some(r),
                _ => None,
            })
            .await?;
        let mut r = merge::connect(&results)?;
        let after = self.server.as_ref().and_then(ServerWatch::sample);
        r.server_cpu_ms = cpu0.zip(after).map(|(a, b)| b.cpu_ms.saturating_sub(a));
        if let Some(s) = &mut self.report.server {
            s.after_connect = after;
        }
        if r.established < r.requested {
            self.report.warnings.push(format!(
                "{} of {} connections failed to open",
                r.requested - r.established,
                r.requested
            ));
        }
        self.report.connect = r;
        Ok(())
    }

    /// Runs one publishing phase on every worker and merges it.
    pub async fn phase(
        &mut self,
        title: &str,
        mut spec: PhaseSpec,
        ask: merge::PhaseAsk,
    ) -> Result<(PhaseReport, Vec<PhaseResult>), CoordError> {
        let workers = self.fleet.len() as f64;
        spec.rate = ask.rate / workers;
        spec.window = (ask.window as f64 / workers).ceil() as u64;
        if let Some(ch) = &mut spec.churn {
            ch.rate /= workers;
        }
        // A common start 100 ms ahead lets every worker begin on the same timeline.
        spec.start_us = state_now_us() + 100_000;
        let total = Duration::from_millis(spec.duration_ms + spec.drain_ms);
        self.fleet.stage(
            title,
            Measure::Time(Duration::from_millis(spec.duration_ms)),
        );
        let cpu0 = self.server.as_ref().and_then(ServerWatch::sample);
        self.fleet.broadcast(&Command::Phase(spec)).await?;
        let slack = Duration::from_secs_f64(2.0 * self.common.connect_timeout + 30.0);
        let results: Vec<PhaseResult> = self
            .fleet
            .collect(Instant::now() + total + slack, |ev| match ev {
                Event::PhaseDone(r) => Some(*r),
                _ => None,
            })
            .await?;
        let end = self.server.as_ref().and_then(ServerWatch::sample);
        let server_cpu = cpu0
            .zip(end)
            .map(|(a, b)| b.cpu_ms.saturating_sub(a.cpu_ms));
        let mut report = merge::phase(&results, ask, server_cpu)?;
        report.server_rss_kb_end = end.map(|s| s.rss_kb);
        if !report.consistent {
            self.report.consistent = false;
        }
        if !report.closed_loop && report.max_publish_lag_ms > 100.0 {
            self.report.warnings.push(format!(
                "{title}: the publisher fell {:.0} ms behind its schedule (harness or Redis saturated)",
                report.max_publish_lag_ms
            ));
        }
        if report.redis_errors > 0 {
            self.report
                .warnings
                .push(format!("{title}: {} Redis errors", report.redis_errors));
        }
        Ok((report, results))
    }

    /// Ends a reconnect storm on every worker and collects their results (10 s at most).
    pub async fn end_storm(&mut self) -> Result<Vec<StormResult>, CoordError> {
        self.fleet.broadcast(&Command::StormEnd).await?;
        self.fleet
            .collect(Instant::now() + Duration::from_secs(10), |ev| match ev {
                Event::StormDone(r) => Some(*r),
                _ => None,
            })
            .await
    }

    /// Stops the workers and completes the report.
    pub async fn finish(mut self) -> Result<Report, CoordError> {
        if let (Some(w), Some(s)) = (&self.server, &mut self.report.server) {
            s.end = w.sample();
        }
        let finals = self.fleet.shutdown().await?;
        self.report.harness.workers_cpu_ms = finals.iter().map(|f| f.0).sum();
        self.report.harness.workers_rss_kb = finals.iter().map(|f| f.1).sum();
        self.report.harness.tls_resumed = finals.iter().map(|f| f.2).sum();
        self.report.harness.coordinator_cpu_ms = self_cpu_ms();
        Ok(self.report)
    }
}
