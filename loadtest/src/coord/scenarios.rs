//! The five scenarios, each a sequence of steps over a [`Session`]: connect, then hold, publish,
//! step up the rate, restart the server, or churn.

use std::{
    os::fd::AsFd,
    process::Stdio,
    time::{Duration, Instant},
};

use super::{CoordError, Needs, Session, progress::Measure};
use crate::{
    cli::{self, ChurnArgs, Command, FanoutArgs, IdleArgs, PublishArgs, RampArgs, StormArgs},
    clock::now_us,
    proto::{Backoff, ChurnSpec, Command as Cmd, Event, PhaseSpec, Pick},
    report::{IdleReport, MemoryPerConn, RampReport, RampStep, Report, merge},
    stats::sysstats::kernel_sample,
    wire::http,
};

/// Runs the scenario named by `cmd` and returns its report.
pub async fn run(cmd: Command) -> Result<Report, CoordError> {
    match cmd {
        Command::Idle(a) => idle(a).await,
        Command::Fanout(a) => fanout(a).await,
        Command::Ramp(a) => ramp(a).await,
        Command::ReconnectStorm(a) => storm(a).await,
        Command::Churn(a) => churn(a).await,
        Command::Capacity(a) => super::capacity::run(a).await,
        Command::Recover(a) => super::recover::run(a).await,
        Command::Worker(_) => unreachable!("the worker subcommand does not coordinate"),
    }
}

fn ms(secs: f64) -> u64 {
    (secs * 1000.0).round() as u64
}

pub(super) fn spec(p: &PublishArgs, step: u32, duration: f64) -> PhaseSpec {
    PhaseSpec {
        step,
        rate: 0.0,
        window: 0,
        duration_ms: ms(duration),
        drain_ms: ms(p.drain),
        pick: if p.all_users {
            Pick::RoundRobin
        } else {
            Pick::Random
        },
        start_us: 0,
        churn: None,
    }
}

pub(super) fn ask(s: &Session, rate: f64, window: u64, duration: f64) -> merge::PhaseAsk {
    merge::PhaseAsk {
        rate,
        window,
        duration_s: duration,
        interval_ms: s.common.interval_ms,
    }
}

pub(super) fn needs(
    scenario: &'static str,
    publish: Option<&PublishArgs>,
) -> Result<Needs, CoordError> {
    let api = match publish.and_then(|p| p.publish_url.as_ref().map(|u| (u, p))) {
        Some((url, p)) => Some(
            http::parse_url(url, p.publish_api_key.clone())
                .ok_or_else(|| cli::ConfigError::Invalid(format!("--publish-url {url:?}")))?,
        ),
        None => None,
    };
    Ok(Needs {
        scenario,
        redis: publish.is_some(),
        payload_bytes: publish.map_or(0, |p| p.payload_bytes),
        reconnect: None,
        publish_api: api,
        server_pids: Vec::new(),
    })
}

async fn idle(a: IdleArgs) -> Result<Report, CoordError> {
    let kernel0 = kernel_sample().unwrap_or_default();
    let mut s = Session::start(&a.common, needs("idle", None)?).await?;
    s.connect().await?;
    let hold = Duration::from_secs_f64(a.hold.max(0.0));
    s.fleet.stage("hold", Measure::Time(hold));
    s.fleet.watch(Instant::now() + hold, |_| false).await?;
    let (mut pinged, mut pongs) = (None, None);
    if !a.no_verify {
        s.fleet.broadcast(&Cmd::Ping { timeout_ms: 5000 }).await?;
        let r = s
            .fleet
            .collect(Instant::now() + Duration::from_secs(15), |ev| match ev {
                Event::Pinged { sent, pongs } => Some((sent, pongs)),
                _ => None,
            })
            .await?;
        pinged = Some(r.iter().map(|x| x.0).sum::<u64>());
        pongs = Some(r.iter().map(|x| x.1).sum::<u64>());
        if pongs < pinged {
            s.report.warnings.push(format!(
                "{} of {} held connections did not answer a ping",
                pinged.unwrap_or(0) - pongs.unwrap_or(0),
                pinged.unwrap_or(0)
            ));
        }
    }
    let kernel1 = kernel_sample().unwrap_or_default();
    let end = s.server.as_ref().and_then(super::ServerWatch::sample);
    let n = s.report.connect.established;
    let per = |a: u64, b: u64| (b as f64 - a as f64) * 1024.0 / n as f64;
    let per_conn = (n > 0).then(|| MemoryPerConn {
        server_rss_bytes: s
            .server
            .as_ref()
            .zip(end)
            .map(|(w, e)| per(w.baseline.rss_kb, e.rss_kb)),
        kernel_tcp_mem_bytes: per(kernel0.tcp_mem_kb, kernel1.tcp_mem_kb),
        kernel_slab_bytes: per(kernel0.slab_kb, kernel1.slab_kb),
        kernel_sunreclaim_bytes: per(kernel0.sunreclaim_kb, kernel1.sunreclaim_kb),
    });
    s.report.idle = Some(IdleReport {
        hold_s: a.hold,
        pinged,
        pongs,
        per_conn,
        kernel_baseline: kernel0,
        kernel_end: kernel1,
    });
    s.finish().await
}

async fn fanout(a: FanoutArgs) -> Result<Report, CoordError> {
    cli::validate_run(a.rate, a.duration)?;
    let mut s = Session::start(&a.common, needs("fanout", Some(&a.publish))?).await?;
    s.connect().await?;
    let ask = ask(&s, a.rate, a.publish.window, a.duration);
    let (p, _) = s
        .phase("fanout", spec(&a.publish, 0, a.duration), ask)
        .await?;
    s.report.fanout = Some(p);
    s.finish().await
}

async fn ramp(a: RampArgs) -> Result<Report, CoordError> {
    cli::validate_run(a.start_rate, a.step_secs)?;
    if a.start_rate <= 0.0 || a.step_rate <= 0.0 || a.max_rate < a.start_rate {
        return Err(cli::ConfigError::Invalid(
            "ramp needs --start-rate > 0, --step-rate > 0 and --max-rate >= --start-rate".into(),
        )
        .into());
    }
    let mut s = Session::start(&a.common, needs("ramp", Some(&a.publish))?).await?;
    s.connect().await?;
    let mut out = RampReport {
        p99_bound_ms: a.p99_bound,
        steps: Vec::new(),
        best_rate: None,
        best_delivered_per_s: None,
    };
    let mut rate = a.start_rate;
    let mut step = 0;
    let step_time = Duration::from_secs_f64(a.step_secs + a.publish.drain + 5.0);
    while rate <= a.max_rate + 1e-9 {
        if Instant::now() + step_time > s.fleet.hard_deadline {
            s.report
                .warnings
                .push(format!("ramp stopped before {rate:.0}/s: --max-run-secs"));
            break;
        }
        let title = format!("{rate:.0}/s");
        let ask = ask(&s, rate, 0, a.step_secs);
        let (p, _) = s
            .phase(&title, spec(&a.publish, step, a.step_secs), ask)
            .await?;
        let passed = p.deliveries.lost == 0
            && p.deliveries.delivered > 0
            && p.latency.p99_us as f64 <= a.p99_bound * 1000.0
            && p.max_publish_lag_ms < 100.0;
        if passed {
            out.best_rate = Some(rate);
            out.best_delivered_per_s = Some(p.delivered_per_s);
        }
        out.steps.push(RampStep { passed, phase: p });
        if !passed && !a.keep_going {
            break;
        }
        rate += a.step_rate;
        step += 1;
    }
    s.report.ramp = Some(out);
    s.finish().await
}

async fn storm(a: StormArgs) -> Result<Report, CoordError> {
    if a.timeout <= 0.0 || a.backoff_min_ms == 0 || a.backoff_max_ms < a.backoff_min_ms {
        return Err(cli::ConfigError::Invalid(
            "--timeout > 0 and 0 < --backoff-min-ms <= --backoff-max-ms".into(),
        )
        .into());
    }
    let mut needs = needs("reconnect-storm", None)?;
    needs.redis = true;
    needs.reconnect = Some(Backoff {
        min_ms: a.backoff_min_ms,
        max_ms: a.backoff_max_ms,
    });
    let mut s = Session::start(&a.common, needs).await?;
    s.connect().await?;
    // Warm-up: every connection must be receiving before the restart.
    s.fleet
        .stage("probe", Measure::Time(Duration::from_secs(10)));
    s.fleet
        .broadcast(&Cmd::Probe { timeout_ms: 10_000 })
        .await?;
    let probed = s
        .fleet
        .collect(Instant::now() + Duration::from_secs(30), |ev| match ev {
            Event::Probed { open, receiving } => Some((open, receiving)),
            _ => None,
        })
        .await?;
    let receiving_before: u64 = probed.iter().map(|p| p.1).sum();
    let open: u64 = probed.iter().map(|p| p.0).sum();
    if receiving_before < open {
        s.report.warnings.push(format!(
            "only {receiving_before} of {open} connections received a probe before the restart"
        ));
    }
    s.fleet.broadcast(&Cmd::StormStart).await?;
    let t0 = now_us();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(a.timeout);
    s.fleet
        .stage("storm", Measure::Time(Duration::from_secs_f64(a.timeout)));
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(CoordError::Restart)?;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&a.restart_cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr))
        .kill_on_drop(true)
        .spawn()
        .map_err(CoordError::Restart)?;
    let exit = tokio::time::timeout_at(deadline.into(), child.wait()).await;
    let restart_cmd_ms = started.elapsed().as_secs_f64() * 1000.0;
    let restart_cmd_exit = match exit {
        Ok(Ok(st)) => st.code(),
        _ => None,
    };
    s.fleet
        .watch(deadline, |t| {
            t.dropped >= open && t.reconnected >= t.dropped && t.receiving >= t.dropped
        })
        .await?;
    // Let the last progress-lagged receipts be stamped before asking for the result.
    let results = s.end_storm().await?;
    let mut r = merge::storm(&results, t0, true)?;
    r.restart_cmd = super::redact(&a.restart_cmd, &a.common.jwt_secret);
    r.restart_cmd_exit = restart_cmd_exit;
    r.restart_cmd_ms = restart_cmd_ms;
    r.receiving_before = receiving_before;
    if !r.all_back {
        s.report.warnings.push(format!(
            "not every client was back within {:.0} s ({} of {} receiving)",
            a.timeout, r.receiving, r.open_at_start
        ));
    }
    if restart_cmd_exit != Some(0) {
        s.report
            .warnings
            .push(format!("--restart-cmd exited with {restart_cmd_exit:?}"));
    }
    // The server was replaced: its old PID's readings no longer describe it.
    if let Some(sv) = &mut s.report.server {
        sv.end = None;
    }
    s.server = None;
    s.report.storm = Some(r);
    s.finish().await
}

async fn churn(a: ChurnArgs) -> Result<Report, CoordError> {
    cli::validate_run(a.rate, a.duration)?;
    if a.churn_rate < 0.0 {
        return Err(cli::ConfigError::Invalid("--churn-rate must be >= 0".into()).into());
    }
    let mut s = Session::start(&a.common, needs("churn", Some(&a.publish))?).await?;
    s.connect().await?;
    let mut sp = spec(&a.publish, 0, a.duration);
    sp.churn = Some(ChurnSpec {
        rate: a.churn_rate,
        lifetime_ms: a.lifetime_ms,
        abrupt: a.abrupt,
    });
    let ask = ask(&s, a.rate, a.publish.window, a.duration);
    let (stable, results) = s.phase("churn", sp, ask).await?;
    let churns: Vec<_> = results.into_iter().filter_map(|r| r.churn).collect();
    let r = merge::churn(&churns, stable, a.churn_rate, a.lifetime_ms, a.abrupt)?;
    let failed: u64 = r.failures.values().sum();
    if failed > 0 {
        s.report
            .warnings
            .push(format!("{failed} churn connects failed"));
    }
    s.report.churn = Some(r);
    s.finish().await
}
