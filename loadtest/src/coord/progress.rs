//! Live progress on stderr: an `indicatif` bar on a terminal, a plain line per second otherwise
//! (logs, CI). Fed with the workers' summed counters.

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::proto::Progress;

/// What the bar's position measures in the current stage.
#[derive(Debug, Clone, Copy)]
pub enum Measure {
    /// Connections opened or failed, out of this many.
    Conns(u64),
    /// Elapsed time out of this long.
    Time(Duration),
}

/// The live display.
pub struct Display {
    /// The bar, on a terminal.
    bar: Option<ProgressBar>,
    stage: String,
    measure: Measure,
    started: Instant,
    /// Last plain line, to print one per second.
    last_line: Instant,
    /// Previous (time, delivered) for the instantaneous rate.
    last_rate: (Instant, u64, f64),
}

impl Display {
    /// A display on stderr.
    #[must_use]
    pub fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix:>10.bold} [{elapsed_precise}] {bar:30.cyan/blue} {percent:>3}% {msg}",
                )
                .expect("static template"),
            );
            b
        });
        let now = Instant::now();
        Self {
            bar,
            stage: String::new(),
            measure: Measure::Conns(1),
            started: now,
            last_line: now,
            last_rate: (now, 0, 0.0),
        }
    }

    /// Starts a stage.
    pub fn stage(&mut self, name: &str, measure: Measure) {
        self.stage = name.to_owned();
        self.measure = measure;
        self.started = Instant::now();
        self.last_rate = (self.started, 0, 0.0);
        if let Some(b) = &self.bar {
            b.set_prefix(name.to_owned());
            b.set_length(match measure {
                Measure::Conns(n) => n.max(1),
                Measure::Time(d) => d.as_millis().max(1) as u64,
            });
            b.set_position(0);
            b.reset_elapsed();
        } else {
            eprintln!("[{name}] started");
        }
    }

    /// Shows the latest totals.
    pub fn update(&mut self, t: &Progress) {
        let now = Instant::now();
        let (t0, d0, mut rate) = self.last_rate;
        let dt = now.duration_since(t0).as_secs_f64();
        if dt >= 0.5 {
            rate = t.delivered.saturating_sub(d0) as f64 / dt;
            self.last_rate = (now, t.delivered, rate);
        }
        let (pos, len) = match self.measure {
            Measure::Conns(n) => (t.open + t.failed, n),
            Measure::Time(d) => (
                now.duration_since(self.started).as_millis() as u64,
                d.as_millis() as u64,
            ),
        };
        let mut msg = format!("open {} failed {}", t.open, t.failed);
        if t.published > 0 || t.delivered > 0 {
            msg += &format!(
                " | published {} delivered {} ({:.0}/s) p99 {:.2} ms",
                t.published,
                t.delivered,
                rate,
                t.recent_p99_us as f64 / 1000.0
            );
        }
        if t.dropped > 0 || t.reconnected > 0 {
            msg += &format!(
                " | dropped {} reconnected {} receiving {}",
                t.dropped, t.reconnected, t.receiving
            );
        }
        if t.churned > 0 {
            msg += &format!(" | churned {}", t.churned);
        }
        if let Some(b) = &self.bar {
            b.set_position(pos.min(len));
            b.set_message(msg);
        } else if now.duration_since(self.last_line) >= Duration::from_secs(1) {
            self.last_line = now;
            eprintln!(
                "[{}] {:>6.1}s {}",
                self.stage,
                now.duration_since(self.started).as_secs_f64(),
                msg
            );
        }
    }

    /// Removes the bar before the summary is printed.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Default for Display {
    fn default() -> Self {
        Self::new()
    }
}
