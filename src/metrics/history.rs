//! History and recovery counters (issue 10): per shard, summed at scrape time like the rest.

use std::{
    fmt,
    sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
};

use prometheus_client::{
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
};

use super::{Family, LATENCY_BUCKETS_US, Label, LatencyHistogram, counter, gauge, labelled};

label_enum! {
    /// How a client's request for a replay (`since` + `epoch`) ended (`outcome` label).
    Recovery("outcome") {
        /// `recovered:true`: everything after `since` was replayed.
        Recovered => "recovered",
        /// `recovered:false`: the client's epoch is not the user's (history lost, or unknown).
        EpochChanged => "epoch_changed",
        /// `recovered:false`: offsets after `since` were trimmed, expired, or beyond the replay
        /// byte budget (OUTBOX_MAX_BYTES).
        Trimmed => "trimmed",
        /// `recovered:false`: `since` is above the user's top offset.
        SinceAhead => "since_ahead",
        /// 503 before the upgrade: the history could not be read in time (Redis error, stall,
        /// or too many reads waiting).
        Unavailable => "unavailable",
        /// 503 before the upgrade: more live notifications arrived during the read than
        /// HISTORY_LIVE_BUFFER, or one was missing among them.
        LiveOverflow => "live_overflow",
    }
}

label_enum! {
    /// Why a single-node gateway dropped a user's whole history (`reason` label).
    Eviction("reason") {
        /// Nothing was recorded for the user for HISTORY_TTL.
        Expired => "expired",
        /// The gateway's history was over HISTORY_MAX_BYTES: the user written to least recently
        /// lost theirs.
        Memory => "memory",
    }
}

/// One shard's history counters (only this shard writes them).
#[derive(Debug, Default)]
pub struct HistoryStats {
    /// Replay requests by [`Recovery`].
    pub recoveries: [AtomicU64; Recovery::N],
    /// Notifications sent to clients from history (replays).
    pub replayed: AtomicU64,
    /// Redis: connections without `since` let in with the plain `connected` because the history
    /// could not be read.
    pub unread: AtomicU64,
    /// Redis: connections closed with 4002 by the check after a lost subscription.
    pub blind_closed: AtomicU64,
    /// Time from sending a history read to its answer (Redis mode).
    pub read_latency: LatencyHistogram,
    /// Single node: bytes of history held.
    pub bytes: AtomicI64,
    /// Single node: users with a history.
    pub users: AtomicI64,
    /// Single node: users' histories dropped, by [`Eviction`].
    pub evictions: [AtomicU64; Eviction::N],
}

impl HistoryStats {
    /// Counts how a replay request ended.
    #[inline]
    pub fn inc_recovery(&self, r: Recovery) {
        self.recoveries[r as usize].fetch_add(1, Relaxed);
    }

    /// Counts `n` replayed notifications.
    #[inline]
    pub fn add_replayed(&self, n: u64) {
        self.replayed.fetch_add(n, Relaxed);
    }

    /// Counts connections closed (4002) by the check after a lost Redis subscription.
    #[inline]
    pub fn inc_unread_gap(&self, n: u64) {
        self.blind_closed.fetch_add(n, Relaxed);
    }

    /// Counts a connection let in without its history position.
    #[inline]
    pub fn inc_unread(&self) {
        self.unread.fetch_add(1, Relaxed);
    }

    /// Counts a user's history dropped.
    #[inline]
    pub fn inc_eviction(&self, e: Eviction) {
        self.evictions[e as usize].fetch_add(1, Relaxed);
    }

    /// Adds this shard's values into `total` (scrape time only).
    pub(super) fn add_into(&self, total: &HistoryStats) {
        let u = |to: &AtomicU64, from: &AtomicU64| _ = to.fetch_add(from.load(Relaxed), Relaxed);
        let i = |to: &AtomicI64, from: &AtomicI64| _ = to.fetch_add(from.load(Relaxed), Relaxed);
        i(&total.bytes, &self.bytes);
        i(&total.users, &self.users);
        u(&total.replayed, &self.replayed);
        u(&total.unread, &self.unread);
        u(&total.blind_closed, &self.blind_closed);
        u(&total.read_latency.sum_us, &self.read_latency.sum_us);
        let arrays: [(&[AtomicU64], &[AtomicU64]); 3] = [
            (&total.recoveries, &self.recoveries),
            (&total.evictions, &self.evictions),
            (&total.read_latency.buckets, &self.read_latency.buckets),
        ];
        for (to, from) in arrays {
            to.iter().zip(from).for_each(|(t, f)| u(t, f));
        }
    }
}

const RECOVERIES: Family = (
    "history_recoveries",
    "Reconnects that asked for a replay (since + epoch), by outcome.",
);
const REPLAYED: Family = (
    "history_replayed_notifications",
    "Notifications sent to reconnecting clients from history.",
);
const UNREAD: Family = (
    "history_unread_connections",
    "Connections without since let in with the plain connected: the history could not be read.",
);
const BLIND_CLOSED: Family = (
    "history_resubscribe_closes",
    "Connections closed (4002) after a lost Redis subscription: their history moved meanwhile.",
);
const READ_LATENCY: Family = (
    "history_read_latency_seconds",
    "Time from asking Redis for a user's history to its answer, per upgrade.",
);
const BYTES: Family = (
    "history_bytes",
    "Single node: bytes of notification history held in memory.",
);
const USERS: Family = (
    "history_users",
    "Single node: users with a notification history in memory.",
);
const EVICTIONS: Family = (
    "history_evicted_users",
    "Single node: users whose whole history was dropped, by reason.",
);
const REPEATS: Family = (
    "history_idempotent_repeats",
    "Publish requests answered with the first result of their Idempotency-Key (nothing recorded).",
);

/// Every family this module exports, for the exposition tests.
#[cfg(test)]
pub(super) const FAMILIES: [(&str, &str); 9] = [
    ("history_recoveries", "counter"),
    ("history_replayed_notifications", "counter"),
    ("history_unread_connections", "counter"),
    ("history_resubscribe_closes", "counter"),
    ("history_read_latency_seconds", "histogram"),
    ("history_bytes", "gauge"),
    ("history_users", "gauge"),
    ("history_evicted_users", "counter"),
    ("history_idempotent_repeats", "counter"),
];

/// Encodes the summed history counters, plus the publish API's repeats (counted per request on
/// the control thread).
pub(super) fn encode(e: &mut DescriptorEncoder, t: &HistoryStats, repeats: u64) -> fmt::Result {
    labelled::<Recovery>(e, RECOVERIES, &t.recoveries)?;
    counter(e, REPLAYED, &t.replayed)?;
    counter(e, UNREAD, &t.unread)?;
    counter(e, BLIND_CLOSED, &t.blind_closed)?;
    let h = &t.read_latency;
    let bounds = LATENCY_BUCKETS_US.iter().map(|&us| us as f64 / 1e6);
    let buckets: Vec<(f64, u64)> = bounds
        .chain([f64::INFINITY])
        .zip(h.bucket_counts())
        .collect();
    e.encode_descriptor(READ_LATENCY.0, READ_LATENCY.1, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(h.sum_us() as f64 / 1e6, h.count(), &buckets, None)?;
    gauge(e, BYTES, &t.bytes)?;
    gauge(e, USERS, &t.users)?;
    labelled::<Eviction>(e, EVICTIONS, &t.evictions)?;
    e.encode_descriptor(REPEATS.0, REPEATS.1, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&repeats, None)
}
