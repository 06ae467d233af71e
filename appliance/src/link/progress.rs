//! What is known of each mirrored partition, for status and metrics: kept across sessions,
//! written by the protocol's state machines and the transfer drivers, read by `status`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::log::Offset;

/// Which way a mirrored partition flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// An edge topic to the hub.
    Upstream,
    /// A hub topic to an edge.
    Downstream,
}

/// The live figures of one mirrored partition, kept across sessions for status.
#[derive(Debug)]
pub struct MirrorProgress {
    pub direction: Direction,
    /// The topic at its origin, and its mirror's name on the receiving side.
    pub topic: String,
    pub mirror: String,
    pub partition: u32,
    /// The origin's next offset, as last known on this side.
    origin_high_watermark: AtomicU64,
    /// Whether the origin's next offset was told yet (before that, 0 says nothing).
    origin_known: std::sync::atomic::AtomicBool,
    /// The mirror's durable next offset, as last known on this side.
    acknowledged: AtomicU64,
    bytes: AtomicU64,
    gap_records: AtomicU64,
    state: Mutex<MirrorState>,
}

#[derive(Debug, Default)]
struct MirrorState {
    last_error: Option<String>,
    /// Why the receiver refused this partition's batches; unlike an error it stays until the
    /// mirror is made anew, so the sender does not offer the same batch again and again.
    quarantine: Option<String>,
    /// Bytes counted and when, at the last rate computation.
    sample: Option<(Instant, u64)>,
    rate: f64,
    /// Since when the mirror has been behind its origin.
    behind_since: Option<Instant>,
}

/// A snapshot of [`MirrorProgress`].
#[derive(Debug, Clone)]
pub struct MirrorStatus {
    pub direction: Direction,
    pub topic: String,
    pub mirror: String,
    pub partition: u32,
    pub origin_high_watermark: Offset,
    pub acknowledged: Offset,
    pub lag_records: u64,
    pub behind_for: Duration,
    pub bytes_per_second: f64,
    /// Bytes of batch frames sent or received since the appliance started.
    pub bytes: u64,
    pub gap_records: u64,
    pub last_error: Option<String>,
    pub quarantine: Option<String>,
    /// The mirror holds more than its origin: the origin's log was reset or replaced.
    pub ahead_of_origin: bool,
}

impl MirrorStatus {
    /// How the partition is doing, in one word for status and metrics.
    pub fn state(&self) -> &'static str {
        if self.quarantine.is_some() {
            "quarantined"
        } else if self.last_error.is_some() {
            "failed"
        } else if self.ahead_of_origin {
            "diverged"
        } else if self.lag_records == 0 {
            "in sync"
        } else {
            "catching up"
        }
    }

    /// What is wrong with the partition and what to do about it, if anything is.
    pub fn problem(&self) -> Option<String> {
        if let Some(reason) = &self.quarantine {
            return Some(format!(
                "quarantined: {reason}; the mirror keeps what it had, and the other partitions                  go on (delete the mirror on the receiving side to start it anew)"
            ));
        }
        if self.last_error.is_some() {
            return self.last_error.clone();
        }
        self.ahead_of_origin.then(|| {
            format!(
                "the mirror holds records up to offset {} but its origin only up to {}: the                  origin's log was reset or replaced; delete the mirror on the receiving side                  to start it anew",
                self.acknowledged, self.origin_high_watermark
            )
        })
    }
}

impl MirrorProgress {
    pub fn new(direction: Direction, topic: &str, mirror: &str, partition: u32) -> Self {
        Self {
            direction,
            topic: topic.to_owned(),
            mirror: mirror.to_owned(),
            partition,
            origin_high_watermark: AtomicU64::new(0),
            origin_known: std::sync::atomic::AtomicBool::new(false),
            acknowledged: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            gap_records: AtomicU64::new(0),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MirrorState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_origin_high_watermark(&self, offset: u64) {
        self.origin_high_watermark.store(offset, Ordering::Relaxed);
        self.origin_known.store(true, Ordering::Relaxed);
        self.note_lag();
    }

    pub fn set_acknowledged(&self, offset: u64) {
        self.acknowledged.store(offset, Ordering::Relaxed);
        self.note_lag();
    }

    pub fn acknowledged(&self) -> Offset {
        Offset(self.acknowledged.load(Ordering::Relaxed))
    }

    pub fn set_error(&self, error: Option<String>) {
        self.state().last_error = error;
    }

    pub fn quarantine(&self, reason: String) {
        self.state().quarantine = Some(reason);
    }

    pub fn lift_quarantine(&self) {
        self.state().quarantine = None;
    }

    pub fn quarantined(&self) -> Option<String> {
        self.state().quarantine.clone()
    }

    fn note_lag(&self) {
        let behind = self.acknowledged.load(Ordering::Relaxed)
            < self.origin_high_watermark.load(Ordering::Relaxed);
        let mut state = self.state();
        match (behind, state.behind_since) {
            (true, None) => state.behind_since = Some(Instant::now()),
            (false, Some(_)) => state.behind_since = None,
            _ => {}
        }
    }

    pub fn count_bytes(&self, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn count_gap(&self, records: u64) {
        self.gap_records.fetch_add(records, Ordering::Relaxed);
    }

    pub fn gap_records(&self) -> u64 {
        self.gap_records.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> MirrorStatus {
        let origin = self.origin_high_watermark.load(Ordering::Relaxed);
        let acknowledged = self.acknowledged.load(Ordering::Relaxed);
        let bytes = self.bytes();
        let now = Instant::now();
        let mut state = self.state();
        // The rate over the time since the previous look, refreshed at most once a second so
        // that frequent status calls do not measure noise.
        match state.sample {
            Some((at, counted)) if now.duration_since(at) >= Duration::from_secs(1) => {
                state.rate = (bytes - counted) as f64 / now.duration_since(at).as_secs_f64();
                state.sample = Some((now, bytes));
            }
            Some(_) => {}
            None => state.sample = Some((now, bytes)),
        }
        MirrorStatus {
            direction: self.direction,
            topic: self.topic.clone(),
            mirror: self.mirror.clone(),
            partition: self.partition,
            origin_high_watermark: Offset(origin),
            acknowledged: Offset(acknowledged),
            lag_records: origin.saturating_sub(acknowledged),
            behind_for: state
                .behind_since
                .map_or(Duration::ZERO, |since| now.duration_since(since)),
            bytes_per_second: state.rate,
            bytes,
            gap_records: self.gap_records(),
            last_error: state.last_error.clone(),
            quarantine: state.quarantine.clone(),
            ahead_of_origin: self.origin_known.load(Ordering::Relaxed) && acknowledged > origin,
        }
    }
}

/// Progress of every partition a side has mirrored in either direction, by direction, origin
/// topic and partition.
#[derive(Debug, Clone, Default)]
pub struct Mirrors(Arc<Mutex<MirrorTable>>);

type MirrorTable = BTreeMap<(Direction, String, u32), Arc<MirrorProgress>>;

impl Mirrors {
    pub fn entry(
        &self,
        direction: Direction,
        topic: &str,
        mirror: &str,
        partition: u32,
    ) -> Arc<MirrorProgress> {
        self.lock()
            .entry((direction, topic.to_owned(), partition))
            .or_insert_with(|| Arc::new(MirrorProgress::new(direction, topic, mirror, partition)))
            .clone()
    }

    pub fn all(&self) -> Vec<Arc<MirrorProgress>> {
        self.lock().values().cloned().collect()
    }

    pub fn get(
        &self,
        direction: Direction,
        topic: &str,
        partition: u32,
    ) -> Option<Arc<MirrorProgress>> {
        self.lock()
            .get(&(direction, topic.to_owned(), partition))
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MirrorTable> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
