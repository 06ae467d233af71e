//! The state a pipeline keeps in one step (`window-aggregate`, or a stateful plugin's store):
//! kept in the compacted changelog topic `<pipeline>.<store>.changelog` (partition p holds
//! source partition p's state), restored from it when a partition's task starts.
//!
//! The changelog is one of the pipeline's destinations, written with the same range tags,
//! but as one batch per source batch, ended by a commit entry (the tagged record, which holds
//! no state, so compaction keeps no stale entry for the tag's sake), and last: a source batch's
//! changelog batch is appended only once its other output is durable ([`super::task`]). So
//! the changelog is the commit record of the state: whatever it holds, the output that came
//! with it is stored too. A start restores every entry up to the changelog's last batch
//! tagged by this pipeline and partition, and reads the source from after that batch's range
//! (or the recorded progress, if further); output of a later range that landed before a crash
//! is found by the destinations' scan and not written again, and the state changes of that
//! range, which never reached the changelog, are made again. Compaction only removes entries
//! a newer one replaces, each batch's tagged entry stays, and entries of an earlier pipeline
//! of the same name (another id) are skipped.
//!
//! An idle advance of a window (no source records for `idle-advance`) has no source record to
//! attribute its results to, so it is stored in three steps: the new watermark with the
//! destination's end (a changelog batch of its own), the results, then their tombstones. A
//! changelog that ends with the first step was stopped before the last: on start the windows
//! the watermark passed are closed again, and results already in the destination past that
//! end (found by key and window start) are not written twice.
//!
//! Snapshots: every `snapshot-interval`, with nothing in flight (the state in memory is then
//! exactly what the changelog holds), the state is written to the metadata store with the
//! changelog offset it covers; a start loads it and reads only the changelog after it. A
//! snapshot that does not fit the changelog (its topic was recreated) is ignored.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use base64::Engine;

use crate::log::{CleanupPolicy, Log, LogError, Offset, PartitionId, Record, TopicName};
use crate::plugin::StateStore;
use crate::transform::TaskError;
use crate::transform::window::{self, WindowOperator, WindowSpec, WindowState};

use super::{StateRestored, progress};

/// The largest batch a new changelog takes: each source batch's state changes are one batch
/// (so they commit together), and a 1 MiB source batch may touch thousands of windows.
const CHANGELOG_MAX_MESSAGE_BYTES: u32 = 64 << 20;

/// A partition's state at a point where the changelog held exactly that state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Snapshot<S> {
    /// The changelog offset after the last entry the state includes.
    pub changelog_next: u64,
    /// The source offset after the last record the state includes.
    pub resume_at: u64,
    pub state: S,
}

/// A stateful plugin's store as a snapshot holds it: each entry as key length (u32 BE), key,
/// value length, value; in base64, as the metadata store keeps JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoreImage(String);

impl StoreImage {
    pub fn of(store: &StateStore) -> Self {
        let mut bytes = Vec::with_capacity(store.size().1 + 8 * store.size().0);
        for (key, value) in store.entries() {
            for part in [key, value.as_ref()] {
                bytes.extend_from_slice(&(part.len() as u32).to_be_bytes());
                bytes.extend_from_slice(part);
            }
        }
        Self(base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// Loads the image into an empty store.
    fn load(&self, store: &mut StateStore) -> Result<(), String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.0)
            .map_err(|e| format!("not base64: {e}"))?;
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            let key = take_part(&mut rest)?;
            let value = take_part(&mut rest)?;
            store.restore(key, Some(value))?;
        }
        Ok(())
    }
}

/// The key of a partition's snapshot, under its pipeline's progress prefix (so deleting the
/// pipeline deletes it).
pub(super) fn snapshot_key(pipeline_id: u64, partition: PartitionId) -> String {
    format!(
        "{}snapshot/{:010}",
        progress::key_prefix(pipeline_id),
        partition.0
    )
}

/// A partition's window state as restored, and where its source resumes.
pub(super) struct Restored {
    pub operator: WindowOperator,
    /// The source offset after the last range the changelog holds, if it holds one.
    pub resume_at: Option<u64>,
    /// When the changelog ends with an idle advance, the results of which may be stored in
    /// part: the destination's end before them.
    pub unfinished_idle_advance: Option<u64>,
    pub report: StateRestored,
}

/// Creates the changelog topic (compacted, a partition per source partition) or grows it to
/// the source's partitions.
pub(super) async fn ensure_changelog(
    log: &Log,
    changelog: &TopicName,
    partitions: u32,
) -> Result<(), LogError> {
    match log.topic_config(changelog) {
        Ok(config) if config.partitions >= partitions => Ok(()),
        Ok(_) => log.add_partitions(changelog, partitions).await.map(|_| ()),
        Err(LogError::UnknownTopic { .. }) => {
            let mut config = log.topic_defaults().clone();
            config.partitions = partitions;
            config.cleanup_policy = CleanupPolicy::Compact;
            config.max_message_bytes = config.max_message_bytes.max(CHANGELOG_MAX_MESSAGE_BYTES);
            match log.create_topic(changelog.clone(), config).await {
                Ok(()) | Err(LogError::TopicExists { .. }) => Ok(()),
                Err(error) => Err(error),
            }
        }
        Err(error) => Err(error),
    }
}

/// The next length-prefixed part of a [`StoreImage`].
fn take_part<'b>(rest: &mut &'b [u8]) -> Result<&'b [u8], String> {
    let (len, tail) = rest
        .split_first_chunk::<4>()
        .ok_or("an entry is cut short")?;
    let (part, tail) = tail
        .split_at_checked(u32::from_be_bytes(*len) as usize)
        .ok_or("an entry is cut short")?;
    *rest = tail;
    Ok(part)
}

/// Replays partition `partition` of `changelog` from `from` on: `apply` gets each batch this
/// pipeline partition wrote, in order. Returns the source offset after the last batch's range
/// (if there was one) and the bytes of the entries.
fn replay(
    log: &Log,
    changelog: &TopicName,
    (pipeline_id, partition): (u64, PartitionId),
    from: Offset,
    mut apply: impl FnMut(&[Record]) -> Result<(), String>,
) -> Result<(Option<u64>, u64), TaskError> {
    let source = log
        .partition(changelog, partition)
        .map_err(TaskError::opening(changelog))?;
    let mut resume_at = None;
    let mut problem: Option<String> = None;
    let mut bytes = 0u64;
    progress::scan_own_batches(&source, from, (pipeline_id, partition), |batch, (_, to)| {
        if problem.is_some() {
            return;
        }
        bytes += batch
            .iter()
            .map(|r| {
                (r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len()))
                    as u64
            })
            .sum::<u64>();
        match apply(&batch) {
            Ok(()) => resume_at = Some(to + 1),
            Err(e) => problem = Some(format!("{changelog}/{}: {e}", partition.0)),
        }
    })
    .map_err(TaskError::log_with(|| {
        format!("restoring state from {changelog}")
    }))?;
    match problem {
        Some(problem) => Err(TaskError::Permanent(format!(
            "the state cannot be restored: {problem}"
        ))),
        None => Ok((resume_at, bytes)),
    }
}

/// A snapshot of partition `partition`, if it still fits the changelog (the topic was not
/// recreated since).
fn fitting<S>(
    log: &Log,
    changelog: &TopicName,
    partition: PartitionId,
    snapshot: Option<Snapshot<S>>,
) -> Result<Option<Snapshot<S>>, TaskError> {
    let source = log
        .partition(changelog, partition)
        .map_err(TaskError::opening(changelog))?;
    Ok(snapshot.filter(|s| {
        source.log_start().0 <= s.changelog_next && s.changelog_next <= source.high_watermark().0
    }))
}

fn report_restored(
    changelog: &TopicName,
    partition: PartitionId,
    (entries, bytes): (usize, u64),
    from: (bool, Offset),
    started: Instant,
) -> StateRestored {
    let report = StateRestored {
        bytes,
        entries,
        took: started.elapsed(),
    };
    tracing::info!(
        topic = %changelog,
        partition = partition.0,
        entries,
        bytes,
        from_snapshot = from.0,
        changelog_from = from.1.0,
        ms = report.took.as_millis() as u64,
        "state restored"
    );
    report
}

/// Refuses an existing changelog topic that compaction would not keep (made by hand, or a
/// pipeline's destination of the same name): its state would be deleted by retention.
pub(super) fn check_changelog_policy(log: &Log, changelog: &TopicName) -> Result<(), String> {
    match log.topic_config(changelog) {
        Ok(config) if config.cleanup_policy == CleanupPolicy::Delete => Err(format!(
            "{changelog}, where the state is kept, exists with cleanup-policy delete; a \
             changelog must be compacted: delete the topic or rename the pipeline"
        )),
        _ => Ok(()),
    }
}

/// Reads partition `partition` of the changelog into a new operator, from `snapshot` on if
/// it fits; an entry it cannot read stops the partition (the state would be wrong).
pub(super) fn restore(
    log: &Log,
    spec: WindowSpec,
    changelog: TopicName,
    writer: (u64, PartitionId),
    snapshot: Option<Snapshot<WindowState>>,
) -> Result<Restored, TaskError> {
    let started = Instant::now();
    let snapshot = fitting(log, &changelog, writer.1, snapshot)?;
    let from_snapshot = snapshot.is_some();
    let (mut operator, from, snapshot_resume_at) = match snapshot {
        Some(snapshot) => (
            WindowOperator::from_state(spec, changelog.clone(), snapshot.state).map_err(
                |problem| TaskError::Permanent(format!("the window snapshot: {problem}")),
            )?,
            Offset(snapshot.changelog_next),
            Some(snapshot.resume_at),
        ),
        None => (
            WindowOperator::new(spec, changelog.clone()),
            Offset(0),
            None,
        ),
    };
    let mut unfinished_idle_advance = None;
    let (resume_at, bytes) = replay(log, &changelog, writer, from, |batch| {
        unfinished_idle_advance = None;
        for record in batch {
            let Some(key) = record.key.as_deref() else {
                continue;
            };
            let value = record.value.as_deref();
            unfinished_idle_advance =
                unfinished_idle_advance.or(window::idle_advance_end(key, value));
            operator.restore(key, value)?;
        }
        Ok(())
    })?;
    let report = report_restored(
        &changelog,
        writer.1,
        (operator.open_windows(), bytes),
        (from_snapshot, from),
        started,
    );
    Ok(Restored {
        operator,
        resume_at: resume_at.or(snapshot_resume_at),
        unfinished_idle_advance,
        report,
    })
}

/// Reads partition `partition` of a stateful plugin's changelog into its (empty) store, from
/// `snapshot` on if it fits. Returns where the source resumes, if the changelog says.
pub(super) fn restore_store(
    log: &Log,
    changelog: &TopicName,
    writer: (u64, PartitionId),
    snapshot: Option<Snapshot<StoreImage>>,
    store: &mut StateStore,
) -> Result<(Option<u64>, StateRestored), TaskError> {
    let started = Instant::now();
    let snapshot = fitting(log, changelog, writer.1, snapshot)?;
    let from_snapshot = snapshot.is_some();
    let (from, snapshot_resume_at) = match snapshot {
        Some(snapshot) => {
            snapshot.state.load(store).map_err(|problem| {
                TaskError::Permanent(format!("the state snapshot: {problem}"))
            })?;
            (Offset(snapshot.changelog_next), Some(snapshot.resume_at))
        }
        None => (Offset(0), None),
    };
    let (resume_at, bytes) = replay(log, changelog, writer, from, |batch| {
        batch
            .iter()
            .filter_map(|record| Some((record.key.as_deref()?, record.value.as_deref())))
            .try_for_each(|(key, value)| store.restore(key, value))
    })?;
    let report = report_restored(
        changelog,
        writer.1,
        (store.size().0, bytes),
        (from_snapshot, from),
        started,
    );
    Ok((resume_at.or(snapshot_resume_at), report))
}
