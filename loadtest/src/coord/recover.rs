//! The recovery scenario (issue 10): clients that track offsets and reconnect with `since`, a
//! publisher going through the publish API (where history is recorded), and the gateway restarted
//! a third of the way into the publishing. Every client expects every notification to its user;
//! the report says how many arrived, how many were replayed, duplicated or missing, and how many
//! reconnects the gateway answered `recovered:false`.

use std::{process::Stdio, time::Duration};

use super::{
    CoordError, Session,
    scenarios::{ask, needs, spec},
};
use crate::{
    cli::{ConfigError, RecoverArgs},
    proto::Backoff,
    report::{RecoveryReport, Report},
    stats::recovery::RecoveryCounts,
};

/// Runs the recovery scenario.
pub async fn run(mut a: RecoverArgs) -> Result<Report, CoordError> {
    if a.publish.publish_url.is_none() {
        return Err(ConfigError::Invalid(
            "recover needs --publish-url: only the publish API records history".into(),
        )
        .into());
    }
    if a.rate <= 0.0 || a.duration <= 0.0 {
        return Err(ConfigError::Invalid("--rate and --duration must be positive".into()).into());
    }
    if a.backoff_min_ms == 0 || a.backoff_max_ms < a.backoff_min_ms {
        return Err(ConfigError::Invalid("0 < --backoff-min-ms <= --backoff-max-ms".into()).into());
    }
    a.common.recover = true;
    let mut n = needs("recover", Some(&a.publish))?;
    n.reconnect = Some(Backoff {
        min_ms: a.backoff_min_ms,
        max_ms: a.backoff_max_ms,
    });
    let mut s = Session::start(&a.common, n).await?;
    s.connect().await?;
    let restart_at = Duration::from_secs_f64(a.duration / 3.0);
    let cmd = a.restart_cmd.clone();
    let restart = tokio::spawn(async move {
        tokio::time::sleep(restart_at).await;
        let st = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .status()
            .await;
        st.ok().and_then(|s| s.code())
    });
    let ask = ask(&s, a.rate, 0, a.duration);
    let (phase, results) = s
        .phase("recover", spec(&a.publish, 0, a.duration), ask)
        .await?;
    let restart_cmd_exit = restart.await.ok().flatten();
    let mut counts = RecoveryCounts::default();
    for r in results.iter().filter_map(|r| r.recovery.as_ref()) {
        counts.add(r);
    }
    if counts.lost_unexplained > 0 {
        s.report.warnings.push(format!(
            "{} notifications missing without a recovered:false (gaps)",
            counts.lost_unexplained
        ));
    }
    if phase.deliveries.duplicates > 0 {
        s.report.warnings.push(format!(
            "{} duplicate deliveries",
            phase.deliveries.duplicates
        ));
    }
    if restart_cmd_exit != Some(0) {
        s.report
            .warnings
            .push(format!("--restart-cmd exited with {restart_cmd_exit:?}"));
    }
    // The server was replaced: its old PID's readings no longer describe it.
    s.server = None;
    if let Some(sv) = &mut s.report.server {
        sv.end = None;
    }
    s.report.recovery = Some(RecoveryReport {
        restart_cmd: super::redact(&a.restart_cmd, &a.common.jwt_secret),
        restart_cmd_exit,
        restart_at_s: restart_at.as_secs_f64(),
        phase,
        counts,
    });
    s.finish().await
}
