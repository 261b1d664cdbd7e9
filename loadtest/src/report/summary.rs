//! The human summary printed to stdout at the end of a run.

use std::fmt::Write;

use super::{PhaseReport, Report};
use crate::stats::{failure::Failures, hist::Percentiles};

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn lat(p: &Percentiles) -> String {
    format!(
        "p50 {:.2} ms  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        ms(p.p50_us),
        ms(p.p90_us),
        ms(p.p99_us),
        ms(p.p999_us),
        ms(p.max_us)
    )
}

fn causes(f: &Failures) -> String {
    if f.is_empty() {
        return "none".into();
    }
    f.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.1} {unit}"))
}

fn phase(out: &mut String, title: &str, p: &PhaseReport) {
    let d = &p.deliveries;
    let rate = if p.closed_loop {
        format!("closed loop, window {}", p.window)
    } else {
        format!("{:.0}/s asked", p.rate)
    };
    let _ = writeln!(out, "{title}: {rate}, {:.1} s", p.duration_s);
    let _ = writeln!(
        out,
        "  published {} PUBLISH ({:.0}/s), expected deliveries {}",
        p.publish_commands, p.publish_per_s, d.published
    );
    let _ = writeln!(
        out,
        "  delivered {} ({:.0} msg/s)  lost {} ({:.4}%)  duplicates {}  reordered {}  [{}]",
        d.delivered,
        p.delivered_per_s,
        d.lost,
        p.loss_ratio * 100.0,
        d.duplicates,
        d.reordered,
        if p.consistent {
            "delivered+lost=published"
        } else {
            "INCONSISTENT"
        }
    );
    if d.voided > 0 {
        let _ = writeln!(
            out,
            "  voided {} (publish failed or outcome unknown: neither expected nor lost)",
            d.voided
        );
    }
    let _ = writeln!(out, "  latency {}", lat(&p.latency));
    let _ = writeln!(
        out,
        "  CPU per 1,000 deliveries: server {}, harness {:.2} ms",
        opt(p.server_cpu_ms_per_1k, "ms"),
        p.harness_cpu_ms_per_1k
    );
    if !p.dropped.is_empty() {
        let _ = writeln!(out, "  connections dropped: {}", causes(&p.dropped));
    }
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn capacity(out: &mut String, c: &super::capacity::CapacityReport) {
    let (b, e) = (&c.baseline, &c.connected);
    let _ = writeln!(
        out,
        "capacity: {} gateway processes, {} connections open",
        c.gateways, e.open
    );
    let _ = writeln!(
        out,
        "  | memory (MiB)        | baseline | connected | per connection |"
    );
    let rows: [(&str, u64, u64, f64); 6] = [
        (
            "gateways RSS",
            b.gateways_rss_kb,
            e.gateways_rss_kb,
            c.per_conn.gateways_rss,
        ),
        (
            "load generator RSS",
            b.workers_rss_kb,
            e.workers_rss_kb,
            c.per_conn.workers_rss,
        ),
        (
            "redis RSS",
            b.redis_rss_kb,
            e.redis_rss_kb,
            c.per_conn.redis_rss,
        ),
        (
            "kernel slab (pairs)",
            b.slab_kb,
            e.slab_kb,
            c.per_conn.kernel_slab,
        ),
        (
            "kernel TCP buffers",
            b.tcp_mem_kb,
            e.tcp_mem_kb,
            c.per_conn.kernel_tcp_mem,
        ),
        (
            "redis used_memory",
            b.redis_used_kb,
            e.redis_used_kb,
            c.per_conn.redis_used,
        ),
    ];
    for (name, x, y, per) in rows {
        let _ = writeln!(
            out,
            "  | {name:<19} | {:>8.1} | {:>9.1} | {per:>12.0} B |",
            mib(x),
            mib(y)
        );
    }
    let _ = writeln!(
        out,
        "  total per connection {:.0} B; Redis per user (subscription) {:.0} B",
        c.per_conn.total, c.redis_bytes_per_user
    );
    if let Some(i) = &c.idle {
        let _ = writeln!(
            out,
            "idle {:.0} s, ping every {:.0} s: {} pings, {} pongs; gateways {:.3} cores ({:.1} µs \
             per ping), redis {} ms, load generator {} ms",
            i.secs,
            i.ping_interval_s,
            i.pings_sent,
            i.pongs,
            i.gateways_cores,
            i.gateways_us_per_ping,
            i.redis_cpu_ms,
            i.workers_cpu_ms
        );
    }
    if let Some(p) = &c.latency {
        phase(out, "latency to random users", p);
    }
    if let Some(bc) = &c.broadcast {
        let _ = writeln!(
            out,
            "broadcast to {} users ({} requests of <= {} ids, {} failed, {:.1} ms to publish): \
             {}/{} delivered, {} lost, {} duplicates; last delivery {}",
            bc.users,
            bc.requests,
            bc.batch,
            bc.request_errors,
            bc.publish_ms,
            bc.delivered,
            bc.expected,
            bc.lost,
            bc.duplicates,
            opt(bc.last_delivery_ms, "ms")
        );
        let _ = writeln!(out, "  latency {}", lat(&bc.latency));
    }
    if let Some(s) = &c.storm {
        let _ = writeln!(
            out,
            "storm after {}: {} dropped, {} reconnected, {} receiving: {}; all reconnected {}, \
             all receiving {}; failed retries: {}",
            s.restart_cmd,
            s.dropped,
            s.reconnected,
            s.receiving,
            if s.all_back {
                "ALL BACK"
            } else {
                "NOT ALL BACK"
            },
            opt(s.all_reconnected_ms, "ms"),
            opt(s.all_receiving_ms, "ms"),
            causes(&s.retry_failures)
        );
    }
}

/// Renders `r` for a person.
#[must_use]
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "== chat4all-loadtest {} against {} ==",
        r.scenario, r.target.url
    );
    let c = &r.connect;
    let _ = writeln!(
        out,
        "connect: {}/{} established in {:.2} s ({:.0}/s), failures: {}",
        c.established,
        c.requested,
        c.duration_s,
        c.connects_per_s,
        causes(&c.failures)
    );
    let _ = writeln!(out, "  handshake {}", lat(&c.handshake));
    if let Some(i) = &r.idle {
        let _ = writeln!(out, "idle: held {:.1} s", i.hold_s);
        if let (Some(s), Some(p)) = (i.pinged, i.pongs) {
            let _ = writeln!(out, "  alive at the end: {p}/{s} answered a ping");
        }
        if let Some(m) = &i.per_conn {
            let _ = writeln!(
                out,
                "  per connection: server RSS {}, kernel (both ends) tcp mem {:.0} B, slab {:.0} B \
                 (unreclaimable {:.0} B)",
                opt(m.server_rss_bytes, "B"),
                m.kernel_tcp_mem_bytes,
                m.kernel_slab_bytes,
                m.kernel_sunreclaim_bytes
            );
        }
    }
    if let Some(c) = &r.capacity {
        capacity(&mut out, c);
    }
    if let Some(rc) = &r.recovery {
        let c = &rc.counts;
        let _ = writeln!(
            out,
            "recovery: restart at {:.1} s (exit {:?}); sessions {}, asked {}, recovered:true {}, \
             recovered:false {}, unsupported {}",
            rc.restart_at_s,
            rc.restart_cmd_exit,
            c.sessions,
            c.asked,
            c.recovered_true,
            c.recovered_false,
            c.unsupported
        );
        let _ = writeln!(
            out,
            "  replayed {}  lost after recovered:false {}  gaps {}  duplicates {}",
            c.replayed, c.lost_resync, c.lost_unexplained, rc.phase.deliveries.duplicates
        );
        phase(&mut out, "delivery", &rc.phase);
    }
    if let Some(p) = &r.fanout {
        phase(&mut out, "fanout", p);
    }
    if let Some(ramp) = &r.ramp {
        let _ = writeln!(
            out,
            "ramp (p99 bound {:.2} ms, zero loss):",
            ramp.p99_bound_ms
        );
        for s in &ramp.steps {
            let p = &s.phase;
            let _ = writeln!(
                out,
                "  {:>9.0}/s  delivered {:>9.0}/s  lost {:>7}  p99 {:>8.2} ms  {}",
                p.rate,
                p.delivered_per_s,
                p.deliveries.lost,
                ms(p.latency.p99_us),
                if s.passed { "pass" } else { "FAIL" }
            );
        }
        let _ = writeln!(
            out,
            "  best sustained rate: {}",
            opt(ramp.best_rate, "PUBLISH/s")
        );
    }
    if let Some(s) = &r.storm {
        let _ = writeln!(
            out,
            "reconnect storm: {} open, {} dropped, {} reconnected, {} receiving again: {}",
            s.open_at_start,
            s.dropped,
            s.reconnected,
            s.receiving,
            if s.all_back {
                "ALL BACK"
            } else {
                "NOT ALL BACK"
            }
        );
        let _ = writeln!(
            out,
            "  from restart: first drop {}, server answering {}, all reconnected {}, all receiving {}",
            opt(s.first_drop_ms, "ms"),
            opt(s.first_reconnect_ms, "ms"),
            opt(s.all_reconnected_ms, "ms"),
            opt(s.all_receiving_ms, "ms")
        );
        let _ = writeln!(
            out,
            "  all receiving {} after the server answered; failed retries: {}",
            opt(s.back_after_answering_ms, "ms"),
            causes(&s.retry_failures)
        );
    }
    if let Some(ch) = &r.churn {
        let _ = writeln!(
            out,
            "churn: {}/{} opened ({:.0}/s), {} closed, failures: {}",
            ch.established,
            ch.attempted,
            ch.connects_per_s,
            ch.closed,
            causes(&ch.failures)
        );
        let _ = writeln!(out, "  handshake {}", lat(&ch.handshake));
        phase(&mut out, "stable connections", &ch.stable);
    }
    if let Some((s, end)) = r.server.as_ref().and_then(|s| Some((s, s.end?))) {
        let _ = writeln!(
            out,
            "server pid {}: RSS {} -> {} KiB, CPU {} ms",
            s.pid,
            s.baseline.rss_kb,
            end.rss_kb,
            end.cpu_ms.saturating_sub(s.baseline.cpu_ms)
        );
    }
    let h = &r.harness;
    let _ = writeln!(
        out,
        "harness: {} workers, CPU {} ms (+{} ms coordinator), RSS {} KiB",
        h.workers, h.workers_cpu_ms, h.coordinator_cpu_ms, h.workers_rss_kb
    );
    if h.tls_resumed > 0 {
        let _ = writeln!(out, "  TLS sessions resumed: {}", h.tls_resumed);
    }
    for w in &r.warnings {
        let _ = writeln!(out, "WARNING: {w}");
    }
    out
}
