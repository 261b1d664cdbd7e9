//! The worker processes: started as `<this binary> worker`, sent their plan, then driven with
//! commands while their event lines are read back. Dropping the fleet kills any worker left.

use std::{process::Stdio, time::Instant};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command as Proc},
    sync::mpsc,
    time::timeout_at,
};

use super::{
    CoordError,
    progress::{Display, Measure},
    sampler::Sampler,
};
use crate::proto::{Command, Event, Progress, WorkerPlan};

/// A line from a worker, or its end.
enum Msg {
    Event(usize, Event),
    Exited(usize),
}

/// The running workers.
pub struct Fleet {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    rx: mpsc::UnboundedReceiver<Msg>,
    /// Last progress of each worker.
    progress: Vec<Progress>,
    pub display: Display,
    /// Capacity runs: samples memory and connections as progress arrives.
    pub sampler: Option<Sampler>,
    /// Nothing may run past this.
    pub hard_deadline: Instant,
}

impl Fleet {
    /// Starts one worker per plan and waits until all are ready.
    pub async fn start(
        plans: Vec<WorkerPlan>,
        batch_us: u64,
        hard_deadline: Instant,
    ) -> Result<Self, CoordError> {
        let exe = std::env::current_exe().map_err(CoordError::Spawn)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut fleet = Self {
            children: Vec::new(),
            stdins: Vec::new(),
            rx,
            progress: vec![Progress::default(); plans.len()],
            display: Display::new(),
            sampler: None,
            hard_deadline,
        };
        for (i, plan) in plans.into_iter().enumerate() {
            let mut child = Proc::new(&exe)
                .arg("worker")
                .arg("--batch-us")
                .arg(batch_us.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(CoordError::Spawn)?;
            let stdout = child.stdout.take().expect("piped");
            let stdin = child.stdin.take().expect("piped");
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<Event>(&line) {
                        Ok(ev) => {
                            if tx.send(Msg::Event(i, ev)).is_err() {
                                return;
                            }
                        }
                        Err(e) => eprintln!("worker {i}: unreadable line ({e}): {line}"),
                    }
                }
                let _ = tx.send(Msg::Exited(i));
            });
            fleet.children.push(child);
            fleet.stdins.push(stdin);
            fleet.send(i, &Command::Setup(Box::new(plan))).await?;
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(120);
        fleet
            .collect(deadline, |ev| matches!(ev, Event::Ready).then_some(()))
            .await?;
        Ok(fleet)
    }

    /// Number of workers.
    #[must_use]
    pub fn len(&self) -> usize {
        self.stdins.len()
    }

    /// Whether there are no workers.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.stdins.is_empty()
    }

    /// Sends a command to worker `i`.
    pub async fn send(&mut self, i: usize, cmd: &Command) -> Result<(), CoordError> {
        let mut line = serde_json::to_vec(cmd).expect("commands serialize");
        line.push(b'\n');
        self.stdins[i]
            .write_all(&line)
            .await
            .map_err(|_| CoordError::WorkerGone(i))
    }

    /// Sends a command to every worker.
    pub async fn broadcast(&mut self, cmd: &Command) -> Result<(), CoordError> {
        for i in 0..self.len() {
            self.send(i, cmd).await?;
        }
        Ok(())
    }

    /// Summed progress of all workers.
    #[must_use]
    pub fn totals(&self) -> Progress {
        let mut t = Progress::default();
        for p in &self.progress {
            t.open += p.open;
            t.failed += p.failed;
            t.delivered += p.delivered;
            t.published += p.published;
            t.dropped += p.dropped;
            t.reconnected += p.reconnected;
            t.receiving += p.receiving;
            t.churned += p.churned;
            t.recent_p99_us = t.recent_p99_us.max(p.recent_p99_us);
            t.rss_kb += p.rss_kb;
            t.pings_sent += p.pings_sent;
            t.pongs += p.pongs;
            t.bcast_delivered += p.bcast_delivered;
        }
        t
    }

    /// Starts a display stage.
    pub fn stage(&mut self, name: &str, measure: Measure) {
        self.display.stage(name, measure);
    }

    /// Waits for one event matching `pick` from every worker (in worker order), showing progress
    /// meanwhile. Fails on a worker's fatal error or exit, or at `deadline`.
    pub async fn collect<T>(
        &mut self,
        deadline: Instant,
        mut pick: impl FnMut(Event) -> Option<T>,
    ) -> Result<Vec<T>, CoordError> {
        let mut got: Vec<Option<T>> = (0..self.len()).map(|_| None).collect();
        while got.iter().any(Option::is_none) {
            if let Some((i, ev)) = self.next(deadline).await?
                && let Some(v) = pick(ev)
            {
                got[i] = Some(v);
            }
        }
        Ok(got.into_iter().map(|v| v.expect("all present")).collect())
    }

    /// Shows progress until `deadline` or until `done` holds for the summed progress; returns
    /// whether `done` held.
    pub async fn watch(
        &mut self,
        deadline: Instant,
        done: impl Fn(&Progress) -> bool,
    ) -> Result<bool, CoordError> {
        loop {
            if done(&self.totals()) {
                return Ok(true);
            }
            match self.next(deadline).await {
                Ok(_) => {}
                Err(CoordError::Deadline) if Instant::now() < self.hard_deadline => {
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Next event; progress is displayed and absorbed (`None`).
    async fn next(&mut self, deadline: Instant) -> Result<Option<(usize, Event)>, CoordError> {
        let deadline = deadline.min(self.hard_deadline);
        let msg = timeout_at(deadline.into(), self.rx.recv())
            .await
            .map_err(|_| CoordError::Deadline)?;
        match msg {
            Some(Msg::Event(i, Event::Progress(p))) => {
                self.progress[i] = p;
                let t = self.totals();
                self.display.update(&t);
                if let Some(s) = &mut self.sampler {
                    s.maybe_sample(&t);
                }
                Ok(None)
            }
            Some(Msg::Event(i, Event::Fatal { error })) => Err(CoordError::Worker(i, error)),
            Some(Msg::Event(i, ev)) => Ok(Some((i, ev))),
            Some(Msg::Exited(i)) => Err(CoordError::WorkerGone(i)),
            None => Err(CoordError::WorkerGone(0)),
        }
    }

    /// PIDs of the worker processes.
    #[must_use]
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(Child::id).collect()
    }

    /// Asks every worker to stop; returns their (cpu ms, rss KiB, resumed TLS handshakes).
    pub async fn shutdown(mut self) -> Result<Vec<(u64, u64, u64)>, CoordError> {
        self.broadcast(&Command::Shutdown).await?;
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let finals = self
            .collect(deadline, |ev| match ev {
                Event::Final {
                    cpu_ms,
                    rss_kb,
                    tls_resumed,
                } => Some((cpu_ms, rss_kb, tls_resumed)),
                _ => None,
            })
            .await?;
        self.display.finish();
        for c in &mut self.children {
            let _ = c.wait().await;
        }
        Ok(finals)
    }
}
