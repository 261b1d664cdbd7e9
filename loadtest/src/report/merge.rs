//! Merging the workers' results: counters add up, failure causes add up per label, histograms
//! are deserialized and added, timelines are added bucket by bucket (workers share the phase
//! start, so bucket `i` is the same second everywhere).

use super::{ChurnReport, ConnectReport, PhaseReport, StormReport, TimelinePoint};
use crate::{
    proto::{ChurnResult, ConnectResult, PhaseResult, StormResult},
    stats::{
        accounting::DeliveryCounts,
        failure::{Failures, merge_failures},
        hist::{self, Hist, HistError, Percentiles},
    },
};

/// The initial ramp over all workers.
pub fn connect(results: &[ConnectResult]) -> Result<ConnectReport, HistError> {
    let mut h = hist::new_hist(3);
    let mut r = ConnectReport::default();
    let (mut first, mut last) = (u64::MAX, 0);
    for c in results {
        r.requested += c.attempted;
        r.established += c.established;
        merge_failures(&mut r.failures, &c.failures);
        hist::merge_encoded(&mut h, &c.handshake)?;
        first = first.min(c.first_attempt_us);
        last = last.max(c.last_done_us);
        r.harness_cpu_ms += c.cpu_ms;
    }
    r.failed = r.failures.values().sum();
    r.duration_s = if last > first {
        (last - first) as f64 / 1e6
    } else {
        0.0
    };
    r.connects_per_s = per_s(r.established, r.duration_s);
    r.handshake = Percentiles::of(&h);
    Ok(r)
}

fn per_s(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// How a phase was asked for (the parts the results do not carry).
#[derive(Debug, Clone, Copy)]
pub struct PhaseAsk {
    pub rate: f64,
    pub window: u64,
    pub duration_s: f64,
    pub interval_ms: u64,
}

/// One phase over all workers; `server_cpu_ms` is the server's CPU over the phase.
pub fn phase(
    results: &[PhaseResult],
    ask: PhaseAsk,
    server_cpu_ms: Option<u64>,
) -> Result<PhaseReport, HistError> {
    let mut latency = hist::new_hist(3);
    let mut timeline: Vec<Hist> = Vec::new();
    let mut counts = DeliveryCounts::default();
    let mut dropped = Failures::new();
    let (mut publish_commands, mut redis_errors, mut stalls, mut cpu) = (0, 0, 0, 0);
    let (mut start, mut last, mut lag) = (u64::MAX, 0, 0);
    for p in results {
        counts.add(&p.counts);
        publish_commands += p.publish_commands;
        redis_errors += p.redis_errors;
        stalls += p.window_stalls;
        cpu += p.cpu_ms;
        lag = lag.max(p.max_lag_us);
        start = start.min(p.start_us);
        last = last.max(p.last_delivery_us);
        merge_failures(&mut dropped, &p.dropped);
        hist::merge_encoded(&mut latency, &p.latency)?;
        for (i, b) in p.timeline.iter().enumerate() {
            if timeline.len() <= i {
                timeline.resize_with(i + 1, || hist::new_hist(2));
            }
            hist::merge_encoded(&mut timeline[i], b)?;
        }
    }
    let span_s = if last > start {
        (last - start) as f64 / 1e6
    } else {
        0.0
    };
    let per_1k = |ms: u64| {
        if counts.delivered == 0 {
            0.0
        } else {
            ms as f64 * 1000.0 / counts.delivered as f64
        }
    };
    let interval_s = ask.interval_ms as f64 / 1000.0;
    Ok(PhaseReport {
        rate: ask.rate,
        closed_loop: ask.rate == 0.0,
        window: ask.window,
        duration_s: ask.duration_s,
        publish_commands,
        publish_per_s: per_s(publish_commands, ask.duration_s),
        consistent: counts.consistent(),
        loss_ratio: counts.loss_ratio(),
        deliveries: counts,
        delivered_per_s: per_s(counts.delivered, span_s),
        latency: Percentiles::of(&latency),
        timeline: timeline
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let p = Percentiles::of(h);
                TimelinePoint {
                    t_s: i as f64 * interval_s,
                    delivered: p.count,
                    p50_us: p.p50_us,
                    p90_us: p.p90_us,
                    p99_us: p.p99_us,
                    p999_us: p.p999_us,
                    max_us: p.max_us,
                }
            })
            .collect(),
        max_publish_lag_ms: lag as f64 / 1000.0,
        window_stalls: stalls,
        redis_errors,
        dropped,
        server_cpu_ms,
        server_cpu_ms_per_1k: server_cpu_ms.map(per_1k),
        harness_cpu_ms: cpu,
        harness_cpu_ms_per_1k: per_1k(cpu),
        server_rss_kb_end: None,
    })
}

/// Churn over all workers, with the stable connections' phase.
pub fn churn(
    results: &[ChurnResult],
    stable: PhaseReport,
    rate: f64,
    lifetime_ms: u64,
    abrupt: bool,
) -> Result<ChurnReport, HistError> {
    let mut h = hist::new_hist(3);
    let mut failures = Failures::new();
    let (mut attempted, mut established, mut closed) = (0, 0, 0);
    for c in results {
        attempted += c.attempted;
        established += c.established;
        closed += c.closed;
        merge_failures(&mut failures, &c.failures);
        hist::merge_encoded(&mut h, &c.handshake)?;
    }
    Ok(ChurnReport {
        churn_rate: rate,
        lifetime_ms,
        abrupt,
        attempted,
        established,
        closed,
        failures,
        handshake: Percentiles::of(&h),
        connects_per_s: per_s(established, stable.duration_s),
        stable,
    })
}

/// The storm over all workers; `t0_us` is when the restart command started. With
/// `all_must_drop` (a restart) every open connection must have dropped and come back; without (one
/// of several gateway processes killed) every connection that dropped must have come back.
pub fn storm(
    results: &[StormResult],
    t0_us: u64,
    all_must_drop: bool,
) -> Result<StormReport, HistError> {
    let mut h = hist::new_hist(3);
    let mut r = StormReport {
        restart_cmd: String::new(),
        restart_cmd_exit: None,
        restart_cmd_ms: 0.0,
        open_at_start: 0,
        dropped: 0,
        reconnected: 0,
        receiving: 0,
        all_back: false,
        first_drop_ms: None,
        last_drop_ms: None,
        first_reconnect_ms: None,
        all_reconnected_ms: None,
        all_receiving_ms: None,
        back_after_answering_ms: None,
        retry_failures: Failures::new(),
        reconnect_handshake: Percentiles::default(),
        probes: 0,
        receiving_before: 0,
    };
    let rel = |us: u64| (us != 0).then(|| us.saturating_sub(t0_us) as f64 / 1000.0);
    let min_rel = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    let max_rel = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
    for s in results {
        r.open_at_start += s.open_at_start;
        r.dropped += s.dropped;
        r.reconnected += s.reconnected;
        r.receiving += s.receiving;
        r.probes += s.probes;
        merge_failures(&mut r.retry_failures, &s.retry_failures);
        hist::merge_encoded(&mut h, &s.handshake)?;
        r.first_drop_ms = min_rel(r.first_drop_ms, rel(s.first_drop_us));
        r.last_drop_ms = max_rel(r.last_drop_ms, rel(s.last_drop_us));
        r.first_reconnect_ms = min_rel(r.first_reconnect_ms, rel(s.first_reconnect_us));
        r.all_reconnected_ms = max_rel(r.all_reconnected_ms, rel(s.last_reconnect_us));
        r.all_receiving_ms = max_rel(r.all_receiving_ms, rel(s.last_receiving_us));
    }
    r.all_back = r.open_at_start > 0
        && r.dropped > 0
        && (r.dropped >= r.open_at_start || !all_must_drop)
        && r.reconnected >= r.dropped
        && r.receiving >= r.dropped;
    if !r.all_back {
        r.all_reconnected_ms = None;
        r.all_receiving_ms = None;
    }
    r.back_after_answering_ms = match (r.all_receiving_ms, r.first_reconnect_ms) {
        (Some(a), Some(f)) => Some(a - f),
        _ => None,
    };
    r.reconnect_handshake = Percentiles::of(&h);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase_result(delivered: u64, lost: u64, lat_us: u64, worker_cpu: u64) -> PhaseResult {
        let mut h = hist::new_hist(3);
        let mut b = hist::new_hist(2);
        for _ in 0..delivered {
            hist::record(&mut h, lat_us);
            hist::record(&mut b, lat_us);
        }
        PhaseResult {
            step: 0,
            counts: DeliveryCounts {
                published: delivered + lost,
                delivered,
                lost,
                ..DeliveryCounts::default()
            },
            publish_commands: delivered + lost,
            redis_errors: 0,
            latency: hist::encode(&h),
            timeline: vec![hist::encode(&hist::new_hist(2)), hist::encode(&b)],
            start_us: 1_000_000,
            publish_end_us: 2_000_000,
            first_delivery_us: 1_000_100,
            last_delivery_us: 3_000_000,
            max_lag_us: 0,
            window_stalls: 0,
            dropped: Failures::new(),
            cpu_ms: worker_cpu,
            churn: None,
            recovery: None,
        }
    }

    #[test]
    fn merged_phase_keeps_the_invariant_and_rates() {
        let results = [
            phase_result(1000, 0, 200, 10),
            phase_result(3000, 5, 1000, 30),
        ];
        let ask = PhaseAsk {
            rate: 2000.0,
            window: 0,
            duration_s: 2.0,
            interval_ms: 1000,
        };
        let r = phase(&results, ask, Some(80)).unwrap();
        assert_eq!(r.deliveries.published, 4005);
        assert_eq!(
            r.deliveries.delivered + r.deliveries.lost,
            r.deliveries.published
        );
        assert!(r.consistent);
        assert!((r.delivered_per_s - 2000.0).abs() < 1e-9); // 4000 over 2 s
        assert_eq!(r.server_cpu_ms_per_1k, Some(20.0));
        assert!((r.harness_cpu_ms_per_1k - 10.0).abs() < 1e-9);
        assert_eq!(r.timeline.len(), 2);
        assert_eq!(r.timeline[1].delivered, 4000);
        assert!(r.latency.p50_us.abs_diff(1000) <= 1 && r.latency.min_us.abs_diff(200) <= 1);
    }

    #[test]
    fn storm_is_all_back_only_when_every_drop_returned() {
        let s = StormResult {
            open_at_start: 10,
            dropped: 10,
            reconnected: 10,
            receiving: 10,
            first_drop_us: 1_100_000,
            last_drop_us: 1_200_000,
            first_reconnect_us: 2_000_000,
            last_reconnect_us: 2_500_000,
            last_receiving_us: 2_700_000,
            handshake: hist::encode(&hist::new_hist(3)),
            ..StormResult::default()
        };
        let r = storm(std::slice::from_ref(&s), 1_000_000, true).unwrap();
        assert!(r.all_back);
        assert_eq!(r.first_reconnect_ms, Some(1000.0));
        assert_eq!(r.all_receiving_ms, Some(1700.0));
        assert_eq!(r.back_after_answering_ms, Some(700.0));
        let partial = StormResult { receiving: 9, ..s };
        let r = storm(&[partial], 1_000_000, true).unwrap();
        assert!(!r.all_back && r.all_receiving_ms.is_none());
    }
}
