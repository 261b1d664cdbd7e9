//! Reloading on SIGHUP: each thing that can change without a restart implements [`Reload`] and
//! is registered with the [`Reloader`], which `gateway` runs when the signal arrives.
//!
//! A reload never stops the gateway: a part whose new source is unreadable or invalid keeps what
//! it had and says why in the log. Registered today: the log filter (`LOG_FILTER_FILE`) and the
//! JWT key (`JWT_SECRET_FILE`, `JWT_PUBLIC_KEY_FILE`). TLS certificates (issue 11) plug in the
//! same way: re-read the files, build the new server config, swap it in for new handshakes.
//!
//! This module depends on nothing else in the crate, so any layer can offer a reloadable part.

/// What one part did on a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new value is in force; the text says what it is (never a secret).
    Applied(String),
    /// Nothing to reload: the value comes from somewhere a running process cannot re-read (the
    /// environment, the command line); the text says how to make it reloadable.
    Fixed(&'static str),
}

/// Something SIGHUP re-reads.
pub trait Reload: Send + Sync {
    /// What it is, for the log ("log filter", "JWT key").
    fn name(&self) -> &'static str;

    /// Re-reads the source and puts the new value in force.
    ///
    /// # Errors
    ///
    /// Why the source could not be used; the previous value stays in force.
    fn reload(&self) -> Result<Outcome, String>;
}

/// The registered parts, reloaded in registration order.
#[derive(Default)]
pub struct Reloader {
    /// Every part.
    parts: Vec<Box<dyn Reload>>,
}

/// The result of one reload of every part.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Parts whose new value is in force.
    pub applied: usize,
    /// Parts with nothing to reload.
    pub fixed: usize,
    /// Parts that kept their previous value because the new one was unusable.
    pub failed: usize,
}

impl Reloader {
    /// Registers a part.
    pub fn add(&mut self, part: impl Reload + 'static) {
        self.parts.push(Box::new(part));
    }

    /// Reloads every part, logs one line per part and a summary (`reload finished`).
    pub fn reload_all(&self) -> Report {
        let mut report = Report::default();
        for part in &self.parts {
            let name = part.name();
            match part.reload() {
                Ok(Outcome::Applied(what)) => {
                    report.applied += 1;
                    tracing::info!(part = name, value = %what, "reloaded");
                }
                Ok(Outcome::Fixed(why)) => {
                    report.fixed += 1;
                    tracing::info!(part = name, reason = why, "not reloadable; unchanged");
                }
                Err(error) => {
                    report.failed += 1;
                    tracing::error!(part = name, %error, "reload failed; keeping the previous value");
                }
            }
        }
        tracing::info!(
            applied = report.applied,
            unchanged = report.fixed,
            failed = report.failed,
            "reload finished"
        );
        report
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A part that returns the queued outcomes in turn.
    struct Scripted(&'static str, Mutex<Vec<Result<Outcome, String>>>);

    impl Reload for Scripted {
        fn name(&self) -> &'static str {
            self.0
        }

        fn reload(&self) -> Result<Outcome, String> {
            self.1.lock().unwrap().remove(0)
        }
    }

    #[test]
    fn every_part_is_reloaded_and_a_failure_does_not_stop_the_others() {
        let mut reloader = Reloader::default();
        reloader.add(Scripted(
            "a",
            Mutex::new(vec![
                Err("unreadable".into()),
                Ok(Outcome::Applied("x".into())),
            ]),
        ));
        reloader.add(Scripted(
            "b",
            Mutex::new(vec![Ok(Outcome::Fixed("env")); 2]),
        ));
        reloader.add(Scripted(
            "c",
            Mutex::new(vec![Ok(Outcome::Applied("y".into())); 2]),
        ));
        let first = reloader.reload_all();
        assert_eq!(
            first,
            Report {
                applied: 1,
                fixed: 1,
                failed: 1
            }
        );
        assert_eq!(reloader.reload_all().applied, 2);
    }
}
