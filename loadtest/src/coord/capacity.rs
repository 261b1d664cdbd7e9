//! The capacity scenario (bench/million.sh): N gateway processes on one port, every connection
//! opened, then in turn: idle with keep-alive pings (the fleet's CPU), latency at a fixed rate to
//! random users, one broadcast through the publish API (batched under its `user_ids` cap), and a
//! reconnect storm after one gateway process is SIGKILLed. Memory by component is sampled over the
//! whole run for the timeline and the per-connection figures.

use std::{
    cell::Cell,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{
    CoordError, Session,
    progress::Measure,
    sampler::{Sampler, cpu_ms},
    scenarios::{ask, needs, spec},
};
use crate::{
    cli::{self, CapacityArgs, ConfigError, PublishArgs},
    clock::now_us,
    proto::{Backoff, Command as Cmd, Event, Progress},
    report::{
        Report,
        capacity::{BroadcastReport, CapacityReport, IdleCpu, MemSample, PerConn},
        merge,
    },
    rng::Rng,
    stats::hist::{self, Percentiles},
    wire::{http, message},
};

fn invalid(m: &str) -> CoordError {
    ConfigError::Invalid(m.into()).into()
}

/// Runs the capacity scenario.
pub async fn run(a: CapacityArgs) -> Result<Report, CoordError> {
    if a.kill_pid.is_some_and(|p| !a.server_pids.contains(&p)) {
        return Err(invalid("--kill-pid must be one of --server-pids"));
    }
    if a.broadcast_batch == 0 || a.ping_interval <= 0.0 || a.sample_ms < 100 {
        return Err(invalid(
            "--broadcast-batch >= 1, --ping-interval > 0 and --sample-ms >= 100",
        ));
    }
    if a.backoff_min_ms == 0 || a.backoff_max_ms < a.backoff_min_ms {
        return Err(invalid("0 < --backoff-min-ms <= --backoff-max-ms"));
    }
    let api = match &a.publish_url {
        Some(u) => Some(
            http::parse_url(u, a.publish_api_key.clone())
                .ok_or_else(|| invalid(&format!("--publish-url {u:?}")))?,
        ),
        None => None,
    };
    let mut n = needs("capacity", None)?;
    n.redis = true;
    n.server_pids.clone_from(&a.server_pids);
    n.reconnect = a.kill_pid.map(|_| Backoff {
        min_ms: a.backoff_min_ms,
        max_ms: a.backoff_max_ms,
    });
    let mut s = Session::start(&a.common, n).await?;
    let redis = cli::parse_redis(&a.common.redis).ok();
    // Let the workers report once so their own baseline memory is known.
    s.fleet
        .stage("baseline", Measure::Time(Duration::from_millis(600)));
    s.fleet
        .watch(Instant::now() + Duration::from_millis(600), |_| false)
        .await?;
    let mut sampler = Sampler::new(
        a.server_pids.clone(),
        a.redis_pid,
        redis,
        Duration::from_millis(a.sample_ms),
    );
    let baseline = sampler.read(&s.fleet.totals());
    sampler.samples.push(baseline);
    s.fleet.sampler = Some(sampler);
    s.connect().await?;
    // A moment for the last subscriptions and per-connection allocations to land.
    settle(&mut s, Duration::from_secs(2)).await?;
    let connected = read(&mut s);
    let established = s.report.connect.established;
    let users = u64::from(a.common.users());
    let mut out = CapacityReport {
        gateways: a.server_pids.len() as u32,
        baseline,
        connected,
        per_conn: PerConn::between(&baseline, &connected, established),
        redis_bytes_per_user: (connected.redis_used_kb as f64 - baseline.redis_used_kb as f64)
            * 1024.0
            / users as f64,
        idle: None,
        latency: None,
        broadcast: None,
        storm: None,
        killed_pid: None,
        fds_connected: fds(&a.server_pids),
        fds_after_storm: Vec::new(),
        end: MemSample::default(),
        timeline: Vec::new(),
    };
    let interval_ms = (a.ping_interval * 1000.0) as u64;
    s.fleet.broadcast(&Cmd::KeepAlive { interval_ms }).await?;
    if a.idle_secs > 0.0 {
        out.idle = Some(idle(&mut s, &a).await?);
    }
    if a.latency_rate > 0.0 {
        let p = PublishArgs {
            payload_bytes: 0,
            all_users: false,
            // Stragglers are waited for until every expected delivery is in (the phase ends as
            // soon as it is) or this long: on a host saturated by a million sockets a late
            // notification is late, not lost, and must not be counted as lost.
            drain: 30.0,
            window: 0,
            publish_url: None,
            publish_api_key: None,
        };
        let ask = ask(&s, a.latency_rate, 0, a.latency_secs);
        let (r, _) = s.phase("latency", spec(&p, 0, a.latency_secs), ask).await?;
        out.latency = Some(r);
    }
    if let Some(api) = &api
        && a.broadcast_users > 0
    {
        let b = broadcast(&mut s, &a, api).await?;
        if b.lost > 0 || b.request_errors > 0 {
            s.report.warnings.push(format!(
                "broadcast: {} of {} deliveries lost, {} requests failed",
                b.lost, b.expected, b.request_errors
            ));
        }
        out.broadcast = Some(b);
    }
    if let Some(pid) = a.kill_pid {
        out.storm = Some(kill_storm(&mut s, &a, pid).await?);
        out.killed_pid = Some(pid);
        let survivors: Vec<u32> = a
            .server_pids
            .iter()
            .copied()
            .filter(|&p| p != pid)
            .collect();
        out.fds_after_storm = fds(&survivors);
    }
    out.end = read(&mut s);
    if let Some(sm) = s.fleet.sampler.take() {
        out.timeline = sm.samples;
    }
    s.report.capacity = Some(out);
    s.finish().await
}

/// Open descriptors of each process (those still running).
fn fds(pids: &[u32]) -> Vec<u64> {
    pids.iter()
        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok())
        .map(|d| d.count() as u64)
        .collect()
}

/// Keeps the display and the sampler going for `d`.
async fn settle(s: &mut Session, d: Duration) -> Result<(), CoordError> {
    s.fleet.stage("settle", Measure::Time(d));
    s.fleet.watch(Instant::now() + d, |_| false).await?;
    Ok(())
}

/// A reading now, also recorded in the timeline.
fn read(s: &mut Session) -> MemSample {
    let t = s.fleet.totals();
    s.fleet
        .sampler
        .as_mut()
        .map_or_else(MemSample::default, |sm| {
            let r = sm.read(&t);
            sm.samples.push(r);
            r
        })
}

/// Idle with keep-alive pings: the CPU the fleet costs.
async fn idle(s: &mut Session, a: &CapacityArgs) -> Result<IdleCpu, CoordError> {
    let workers = s.fleet.pids();
    let gw0 = s.server.as_ref().and_then(super::ServerWatch::sample);
    let redis0 = a.redis_pid.map(|p| cpu_ms(&[p]));
    let wk0 = cpu_ms(&workers);
    let t0: Progress = s.fleet.totals();
    let started = Instant::now();
    let d = Duration::from_secs_f64(a.idle_secs);
    s.fleet.stage("idle", Measure::Time(d));
    s.fleet.watch(started + d, |_| false).await?;
    let secs = started.elapsed().as_secs_f64();
    let t1 = s.fleet.totals();
    let gw1 = s.server.as_ref().and_then(super::ServerWatch::sample);
    let gateways_cpu_ms = gw0
        .zip(gw1)
        .map_or(0, |(x, y)| y.cpu_ms.saturating_sub(x.cpu_ms));
    let pongs = t1.pongs.saturating_sub(t0.pongs);
    Ok(IdleCpu {
        secs,
        ping_interval_s: a.ping_interval,
        pings_sent: t1.pings_sent.saturating_sub(t0.pings_sent),
        pongs,
        gateways_cpu_ms,
        gateways_cores: gateways_cpu_ms as f64 / 1000.0 / secs,
        gateways_us_per_ping: if pongs > 0 {
            gateways_cpu_ms as f64 * 1000.0 / pongs as f64
        } else {
            0.0
        },
        redis_cpu_ms: redis0.map_or(0, |r0| {
            cpu_ms(&[a.redis_pid.unwrap_or(0)]).saturating_sub(r0)
        }),
        workers_cpu_ms: cpu_ms(&workers).saturating_sub(wk0),
    })
}

/// One broadcast to `--broadcast-users` random users, in requests of at most
/// `--broadcast-batch` user ids.
async fn broadcast(
    s: &mut Session,
    a: &CapacityArgs,
    api: &http::ApiTarget,
) -> Result<BroadcastReport, CoordError> {
    let total_users = a.common.users();
    let want = a.broadcast_users.min(total_users);
    // A random sample without repeats: a partial Fisher-Yates shuffle of the user indices.
    let mut rng = Rng::new(a.common.seed.unwrap_or(1) ^ 0xB0AD);
    let mut all: Vec<u32> = (0..total_users).collect();
    for i in 0..want as usize {
        let j = i + rng.below((all.len() - i) as u64) as usize;
        all.swap(i, j);
    }
    all.truncate(want as usize);
    let id = 1 + (rng.below(1 << 30) as u32);
    s.fleet
        .broadcast(&Cmd::BcastExpect {
            id,
            users: all.clone(),
        })
        .await?;
    let ready = s
        .fleet
        .collect(Instant::now() + Duration::from_secs(30), |ev| match ev {
            Event::BcastReady { expected } => Some(expected),
            _ => None,
        })
        .await?;
    let expected: u64 = ready.iter().sum();
    let mut out = BroadcastReport {
        users: u64::from(want),
        batch: a.broadcast_batch,
        expected,
        ..BroadcastReport::default()
    };
    s.fleet.stage("broadcast", Measure::Conns(expected.max(1)));
    // Publish: one keep-alive connection, one request at a time (the API answers after Redis).
    let t0 = now_us();
    let sent = publish_batches(api, a, &all, id, &mut out).await;
    out.publish_ms = (now_us() - t0) as f64 / 1000.0;
    if let Err(e) = sent {
        s.report
            .warnings
            .push(format!("broadcast: publish API at {}: {e}", api.host));
    }
    let timeout_ms = (a.broadcast_timeout * 1000.0) as u64;
    s.fleet.broadcast(&Cmd::BcastCollect { timeout_ms }).await?;
    let results = s
        .fleet
        .collect(
            Instant::now() + Duration::from_millis(timeout_ms) + Duration::from_secs(10),
            |ev| match ev {
                Event::BcastDone(r) => Some(*r),
                _ => None,
            },
        )
        .await?;
    let mut h = hist::new_hist(3);
    let mut last = 0;
    for r in &results {
        out.delivered += r.delivered;
        out.duplicates += r.duplicates;
        out.unexpected += r.unexpected;
        last = last.max(r.last_delivery_us);
        hist::merge_encoded(&mut h, &r.latency)?;
    }
    out.lost = out.expected.saturating_sub(out.delivered);
    out.latency = Percentiles::of(&h);
    out.last_delivery_ms = (last > 0).then(|| last.saturating_sub(t0) as f64 / 1000.0);
    Ok(out)
}

/// Sends the broadcast requests; counts them and their failures into `out`.
async fn publish_batches(
    api: &http::ApiTarget,
    a: &CapacityArgs,
    users: &[u32],
    id: u32,
    out: &mut BroadcastReport,
) -> std::io::Result<()> {
    let mut conn = TcpStream::connect(api.addr).await?;
    conn.set_nodelay(true)?;
    let (mut req, mut body, mut payload) = (Vec::new(), Vec::new(), Vec::new());
    let mut buf = vec![0u8; 16 * 1024];
    for chunk in users.chunks(a.broadcast_batch as usize) {
        let names: Vec<String> = chunk
            .iter()
            .map(|u| format!("{}{u}", a.common.user_prefix))
            .collect();
        payload.clear();
        message::write_bcast_payload(&mut payload, u64::from(id), now_us());
        body.clear();
        http::write_multi_body(&mut body, names.iter().map(String::as_str), &payload);
        req.clear();
        http::write_post(&mut req, api, &body);
        conn.write_all(&req).await?;
        out.requests += 1;
        let mut len = 0;
        let answered = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if len == buf.len() {
                    buf.resize(len * 2, 0);
                }
                let n = conn.read(&mut buf[len..]).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                len += n;
                match http::scan_responses(&buf[..len]) {
                    Ok((r, _)) if r.ok + r.errors > 0 => return Ok(r),
                    Ok(_) => {}
                    Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
                }
            }
        })
        .await;
        match answered {
            Ok(Ok(r)) => {
                out.request_errors += r.errors;
                out.last_status = r.last_status;
            }
            Ok(Err(e)) => {
                out.request_errors += 1;
                return Err(e);
            }
            Err(_) => {
                out.request_errors += 1;
                return Err(std::io::ErrorKind::TimedOut.into());
            }
        }
    }
    Ok(())
}

/// SIGKILLs one gateway process and times its clients' way back to the survivors.
async fn kill_storm(
    s: &mut Session,
    a: &CapacityArgs,
    pid: u32,
) -> Result<crate::report::StormReport, CoordError> {
    s.fleet.broadcast(&Cmd::StormStart).await?;
    let t0 = now_us();
    let started = Instant::now();
    let status = tokio::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .await
        .map_err(CoordError::Restart)?;
    if !status.success() {
        s.report
            .warnings
            .push(format!("kill -KILL {pid} failed: {status}"));
    }
    if let Some(w) = &mut s.server {
        w.forget(pid);
    }
    if let Some(sm) = &mut s.fleet.sampler {
        sm.gateway_pids.retain(|&p| p != pid);
    }
    let d = Duration::from_secs_f64(a.storm_timeout);
    s.fleet.stage("storm", Measure::Time(d));
    // Done when every dropped client is back and receiving, and no new drop came for a second.
    let last_drops = Cell::new((0u64, Instant::now()));
    s.fleet
        .watch(started + d, |t| {
            let (seen, at) = last_drops.get();
            if t.dropped != seen {
                last_drops.set((t.dropped, Instant::now()));
                return false;
            }
            t.dropped > 0
                && at.elapsed() >= Duration::from_secs(1)
                && t.reconnected >= t.dropped
                && t.receiving >= t.dropped
        })
        .await?;
    let results = s.end_storm().await?;
    let mut r = merge::storm(&results, t0, false)?;
    r.restart_cmd = format!("kill -KILL {pid}");
    r.restart_cmd_exit = status.code();
    if !r.all_back {
        s.report.warnings.push(format!(
            "storm: {} dropped, {} reconnected, {} receiving within {:.0} s",
            r.dropped, r.reconnected, r.receiving, a.storm_timeout
        ));
    }
    Ok(r)
}
