//! Readings of the target server processes (with `--server-pid`, or several gateway processes
//! sharing one port): RSS and CPU summed over those still running.

use crate::stats::sysstats::{ProcSample, proc_sample};

/// The servers' PIDs and their summed reading before the run.
pub struct ServerWatch {
    pub pids: Vec<u32>,
    pub baseline: ProcSample,
}

impl ServerWatch {
    /// Takes the baseline (zeros for processes that cannot be read).
    #[must_use]
    pub fn new(pids: Vec<u32>) -> Self {
        let baseline = sum(&pids).unwrap_or_default();
        Self { pids, baseline }
    }

    /// A summed reading now, if any of the processes is still there.
    #[must_use]
    pub fn sample(&self) -> Option<ProcSample> {
        sum(&self.pids)
    }

    /// Stops watching `pid` (it was killed); readings from now on leave it out.
    pub fn forget(&mut self, pid: u32) {
        self.pids.retain(|&p| p != pid);
    }
}

fn sum(pids: &[u32]) -> Option<ProcSample> {
    let mut total: Option<ProcSample> = None;
    for p in pids {
        if let Ok(s) = proc_sample(&p.to_string()) {
            let t = total.get_or_insert_with(ProcSample::default);
            t.rss_kb += s.rss_kb;
            t.cpu_ms += s.cpu_ms;
        }
    }
    total
}
