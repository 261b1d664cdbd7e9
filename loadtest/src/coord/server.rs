//! Readings of the target server process (with `--server-pid`).

use crate::stats::sysstats::{ProcSample, proc_sample};

/// The server's PID and its reading before the run.
pub struct ServerWatch {
    pub pid: u32,
    pub baseline: ProcSample,
}

impl ServerWatch {
    /// Takes the baseline (zeros if the process cannot be read).
    #[must_use]
    pub fn new(pid: u32) -> Self {
        let baseline = proc_sample(&pid.to_string()).unwrap_or_default();
        Self { pid, baseline }
    }

    /// A reading now, if the process is still there.
    #[must_use]
    pub fn sample(&self) -> Option<ProcSample> {
        proc_sample(&self.pid.to_string()).ok()
    }
}
