//! The partition's only writer task.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::recovery::{RecoveryPoint, RecoveryPointFile, write_log_start};
use super::{AppendOutcome, AppendRequest, Partition, Placement, Request};
use crate::log::batch::{self, BatchHeader};
use crate::log::segment::{self, Segment};
use crate::log::{Durability, INDEX_INTERVAL_BYTES, LogError, Offset, read_lock};

/// One group takes at most this many bytes, so a flood of appends is written and
/// acknowledged in steps rather than after one giant write.
const MAX_GROUP_BYTES: usize = 32 * 1024 * 1024;
/// Bytes written but not yet durable; beyond this the writer waits for the fsync in flight
/// before taking more appends, which bounds how long an acknowledgement can take.
const MAX_UNSYNCED_BYTES: u64 = 64 * 1024 * 1024;

/// The partition's only writer: owns the active segment's write position.
///
/// Commits are pipelined: while one fdatasync is in flight, the next group of batches is
/// already being written, and the next fdatasync starts as soon as the previous one returns.
/// So the disk never waits for the writer, and one fdatasync covers every batch written
/// while the previous one ran.
pub(super) struct Writer {
    partition: Arc<Partition>,
    active: Arc<Segment>,
    /// Bytes written to the active segment, durable or not.
    write_len: u64,
    next_offset: Offset,
    /// When the active segment got its first append since it was opened; drives `segment-ms`.
    active_since: Option<Instant>,
    durability: Durability,
    recovery_point: RecoveryPointFile,
    /// Written to the active segment, waiting to be durable, oldest first.
    unsynced: VecDeque<Written>,
    in_flight: Option<InFlightSync>,
}

/// A batch written to the active segment whose producer waits for its acknowledgement.
struct Written {
    position: u64,
    header: BatchHeader,
    reply: oneshot::Sender<Result<AppendOutcome, LogError>>,
}

/// An fdatasync running on the blocking pool, covering the first `covered` unsynced batches.
struct InFlightSync {
    job: tokio::task::JoinHandle<Result<(), LogError>>,
    covered: usize,
}

/// What woke the writer.
enum Event {
    Synced(Result<(), LogError>),
    Requests(Vec<Request>),
    Stop,
}

impl Writer {
    pub(super) fn new(
        partition: Arc<Partition>,
        active: Arc<Segment>,
        durability: Durability,
        recovery_point: RecoveryPointFile,
    ) -> Self {
        Self {
            partition,
            write_len: active.visible_len(),
            next_offset: active.next_offset(),
            active,
            active_since: None,
            durability,
            recovery_point,
            unsynced: VecDeque::new(),
            in_flight: None,
        }
    }

    pub(super) async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        shutdown: CancellationToken,
    ) {
        loop {
            let room = self.unsynced_bytes() < MAX_UNSYNCED_BYTES;
            let event = tokio::select! {
                biased;
                synced = wait_for(&mut self.in_flight) => Event::Synced(synced),
                () = shutdown.cancelled() => Event::Stop,
                request = requests.recv(), if room => match request {
                    Some(first) => Event::Requests(take_group(first, &mut requests)),
                    None => Event::Stop,
                },
            };
            let step = match event {
                Event::Synced(result) => {
                    let covered = self.in_flight.take().map_or(0, |sync| sync.covered);
                    result.map(|()| self.complete(covered))
                }
                Event::Requests(group) => self.handle_group(group).await,
                Event::Stop => break,
            };
            if let Err(error) = step.and_then(|()| self.start_sync_if_idle()) {
                self.fail(error);
                return;
            }
        }
        requests.close();
        let mut rest = Vec::new();
        while let Ok(request) = requests.try_recv() {
            rest.push(request);
        }
        let finished = async {
            self.handle_group(rest).await?;
            self.sync_now().await?;
            let active = self.active.clone();
            blocking(move || active.write_index_files()).await?;
            self.recovery_point.write(RecoveryPoint {
                base: self.active.base(),
                durable_len: self.write_len,
            })?;
            self.recovery_point.sync()
        };
        if let Err(error) = finished.await {
            tracing::error!(topic = %self.partition.topic, partition = %self.partition.id, %error, "final flush failed");
            self.fail(error);
        }
    }

    /// Assigns offsets to the group's batches and writes them, rolling segments between them
    /// where needed, and restarts the partition where asked, in the order of the requests.
    /// Batches become durable and acknowledged later, in [`Writer::complete`].
    async fn handle_group(&mut self, group: Vec<Request>) -> Result<(), LogError> {
        let mut run: Vec<(u64, BatchHeader, AppendRequest)> = Vec::with_capacity(group.len());
        for request in group {
            let mut request = match request {
                Request::Append(request) => request,
                Request::RestartAt { offset, reply } => {
                    self.write_run(std::mem::take(&mut run)).await?;
                    self.restart_at(offset, reply).await?;
                    continue;
                }
            };
            if request.placement == Placement::Own && request.header.base_offset != self.next_offset
            {
                let _ = request.reply.send(Err(LogError::NotNextOffset {
                    topic: self.partition.topic.clone(),
                    partition: self.partition.id,
                    expected: self.next_offset,
                    got: request.header.base_offset,
                }));
                continue;
            }
            if self.should_roll(&request.header) {
                self.write_run(std::mem::take(&mut run)).await?;
                if let Err(cause) = self.roll().await? {
                    let _ = request.reply.send(Err(LogError::AppendFailed {
                        cause: Arc::new(cause),
                    }));
                    continue;
                }
            }
            let position = self.write_len;
            batch::set_base_offset(&mut request.batch, self.next_offset);
            let mut header = request.header;
            header.base_offset = self.next_offset;
            self.write_len += header.total_len as u64;
            self.next_offset = header.next_offset();
            self.active_since.get_or_insert_with(Instant::now);
            run.push((position, header, request));
        }
        self.write_run(run).await
    }

    /// Writes consecutive batches of the active segment on the blocking pool. A failed write
    /// (a full disk, say) cuts what it left and fails that batch and the ones after it; the
    /// partition stays as it was before them. Only an error of the pool itself is returned.
    async fn write_run(
        &mut self,
        run: Vec<(u64, BatchHeader, AppendRequest)>,
    ) -> Result<(), LogError> {
        if run.is_empty() {
            return Ok(());
        }
        let segment = self.active.clone();
        let (run, failure) = blocking(move || {
            let failure = run
                .iter()
                .enumerate()
                .find_map(|(i, (position, _, request))| {
                    segment
                        .write_at(*position, &request.batch)
                        .err()
                        .map(|error| {
                            let _ = segment.truncate_to(*position);
                            (i, error)
                        })
                });
            Ok((run, failure))
        })
        .await?;
        let written = failure.as_ref().map_or(run.len(), |(i, _)| *i);
        let mut run = run.into_iter();
        for (position, header, request) in run.by_ref().take(written) {
            self.unsynced.push_back(Written {
                position,
                header,
                reply: request.reply,
            });
        }
        if let Some((_, error)) = failure {
            let error = Arc::new(error);
            let mut rest = run.peekable();
            if let Some((position, header, _)) = rest.peek() {
                self.write_len = *position;
                self.next_offset = header.base_offset;
            }
            for (_, _, request) in rest {
                let _ = request.reply.send(Err(LogError::AppendFailed {
                    cause: error.clone(),
                }));
            }
        }
        if self.durability == Durability::Os {
            self.complete(self.unsynced.len());
        }
        Ok(())
    }

    fn unsynced_bytes(&self) -> u64 {
        self.unsynced
            .front()
            .map_or(0, |oldest| self.write_len - oldest.position)
    }

    fn start_sync_if_idle(&mut self) -> Result<(), LogError> {
        if self.durability == Durability::Fsync
            && self.in_flight.is_none()
            && !self.unsynced.is_empty()
        {
            let segment = self.active.clone();
            self.in_flight = Some(InFlightSync {
                job: tokio::task::spawn_blocking(move || segment.sync()),
                covered: self.unsynced.len(),
            });
        }
        Ok(())
    }

    /// Waits for the sync in flight, then makes everything written durable.
    async fn sync_now(&mut self) -> Result<(), LogError> {
        if let Some(sync) = self.in_flight.take() {
            join(sync.job).await?;
            self.complete(sync.covered);
        }
        let segment = self.active.clone();
        blocking(move || segment.sync()).await?;
        self.complete(self.unsynced.len());
        Ok(())
    }

    /// Publishes the first `covered` unsynced batches (now durable) and acknowledges them.
    fn complete(&mut self, covered: usize) {
        let done: Vec<Written> = self
            .unsynced
            .drain(..covered.min(self.unsynced.len()))
            .collect();
        let Some(last) = done.last() else {
            return;
        };
        let durable_len = last.position + last.header.total_len as u64;
        let high_watermark = last.header.next_offset();
        let published: Vec<(u64, BatchHeader)> =
            done.iter().map(|w| (w.position, w.header)).collect();
        self.active.publish(
            durable_len,
            high_watermark,
            &published,
            INDEX_INTERVAL_BYTES,
        );
        self.partition.high_watermark.send_replace(high_watermark);
        let records: u64 = done.iter().map(|w| u64::from(w.header.record_count)).sum();
        let bytes: u64 = done.iter().map(|w| w.header.total_len as u64).sum();
        self.partition
            .appended_records
            .fetch_add(records, Ordering::Relaxed);
        self.partition
            .appended_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        if self.durability == Durability::Fsync
            && let Err(error) = self.recovery_point.write(RecoveryPoint {
                base: self.active.base(),
                durable_len,
            })
        {
            // The data is durable; a stale recovery point only makes the next start check more.
            tracing::warn!(%error, "recovery point not updated");
        }
        for written in done {
            let _ = written.reply.send(Ok(AppendOutcome {
                base_offset: written.header.base_offset,
                last_offset: written.header.last_offset(),
            }));
        }
    }

    fn should_roll(&self, header: &BatchHeader) -> bool {
        if self.write_len == 0 {
            return false;
        }
        let config = read_lock(&self.partition.config);
        let too_big = self.write_len + header.total_len as u64 > config.segment_bytes;
        let too_old = self
            .active_since
            .is_some_and(|since| since.elapsed() >= Duration::from_millis(config.segment_ms));
        let relative_end =
            self.next_offset.0 - self.active.base().0 + u64::from(header.last_offset_delta) + 1;
        too_big || too_old || relative_end > u64::from(u32::MAX)
    }

    /// Seals the active segment (data and indexes durable) and starts the next one.
    /// `Ok(Err(_))`: the index files or the next segment could not be written (a full disk);
    /// the active segment stays active, and the next append tries again, so the partition
    /// recovers by itself once there is room. `Err(_)`: the sync before failed, which stops
    /// the writer (what a failed fsync left on disk is unknown).
    async fn roll(&mut self) -> Result<Result<(), LogError>, LogError> {
        self.sync_now().await?;
        let sealed = self.active.clone();
        let dir = self.partition.dir.clone();
        let base = self.next_offset;
        let started = blocking(move || {
            sealed.write_index_files()?;
            Segment::create(&dir, base)
        })
        .await;
        let next = match started {
            Ok(next) => next,
            Err(error) => return Ok(Err(error)),
        };
        let next = Arc::new(next);
        self.partition
            .segments
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(next.clone());
        self.active = next;
        self.write_len = 0;
        self.active_since = None;
        if let Err(error) = self.recovery_point.write(RecoveryPoint {
            base: self.active.base(),
            durable_len: 0,
        }) {
            // A stale recovery point only makes the next start check more.
            tracing::warn!(%error, "recovery point not updated");
        }
        Ok(Ok(()))
    }

    /// Empties the partition and starts it again at `offset` (see [`Partition::restart_at`]),
    /// answering on `reply`; an error returned stops the writer.
    ///
    /// The new start is written to the `log-start` file first (replaced atomically): that is
    /// the commit point, as recovery deletes every segment below it. Then the new, empty
    /// segment is created and synced, and only then are the old segments deleted. So a crash
    /// before the commit point leaves the partition as it was, and one after it is finished at
    /// the next start. An error stops the writer, before the commit point too: whether a
    /// failed replacement of `log-start` reached the disk is unknown, and only recovery can
    /// tell.
    async fn restart_at(
        &mut self,
        offset: Offset,
        reply: oneshot::Sender<Result<(), LogError>>,
    ) -> Result<(), LogError> {
        self.sync_now().await?;
        if offset <= self.next_offset {
            let _ = reply.send(if offset == self.next_offset {
                Ok(())
            } else {
                Err(LogError::RestartBeforeEnd {
                    topic: self.partition.topic.clone(),
                    partition: self.partition.id,
                    offset,
                    high_watermark: self.next_offset,
                })
            });
            return Ok(());
        }
        let dir = self.partition.dir.clone();
        let next = blocking(move || {
            write_log_start(&dir, offset)?;
            Segment::create(&dir, offset)
        })
        .await?;
        let next = Arc::new(next);
        let old = std::mem::replace(
            &mut *self
                .partition
                .segments
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            vec![next.clone()],
        );
        let old_start = old.first().map_or(offset, |s| s.base());
        self.active = next;
        self.write_len = 0;
        self.next_offset = offset;
        self.active_since = None;
        self.partition.high_watermark.send_replace(offset);
        self.recovery_point.write(RecoveryPoint {
            base: offset,
            durable_len: 0,
        })?;
        let dir = self.partition.dir.clone();
        blocking(move || {
            for segment in &old {
                segment.delete_files()?;
            }
            segment::sync_dir(&dir)
        })
        .await?;
        tracing::info!(
            topic = %self.partition.topic,
            partition = %self.partition.id,
            old_log_start = %old_start,
            log_start = %offset,
            "partition restarted past its end: its records are deleted, offsets continue"
        );
        let _ = reply.send(Ok(()));
        Ok(())
    }

    /// A failed fsync leaves the file's state unknown (the kernel may have dropped the dirty
    /// pages), so the partition stops taking writes until a restart recovers it from disk.
    fn fail(&mut self, error: LogError) {
        tracing::error!(topic = %self.partition.topic, partition = %self.partition.id, %error, "partition writer failed; restart to recover");
        let _ = self.partition.failure.set(Arc::new(error));
        for written in self.unsynced.drain(..) {
            let _ = written.reply.send(Err(self.partition.unavailable()));
        }
    }
}

/// Resolves when the sync in flight finishes; never, when there is none.
async fn wait_for(in_flight: &mut Option<InFlightSync>) -> Result<(), LogError> {
    match in_flight {
        Some(sync) => join(&mut sync.job).await,
        None => std::future::pending().await,
    }
}

async fn join<T>(
    job: impl std::future::Future<Output = Result<Result<T, LogError>, tokio::task::JoinError>>,
) -> Result<T, LogError> {
    job.await.map_err(|error| LogError::Io {
        op: "run blocking file operation",
        path: PathBuf::new(),
        source: std::io::Error::other(error.to_string()),
    })?
}

/// Runs a file operation on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    join(tokio::task::spawn_blocking(work)).await
}

fn take_group(first: Request, requests: &mut mpsc::Receiver<Request>) -> Vec<Request> {
    let bytes_of = |request: &Request| match request {
        Request::Append(append) => append.batch.len(),
        Request::RestartAt { .. } => 0,
    };
    let mut bytes = bytes_of(&first);
    let mut group = vec![first];
    while bytes < MAX_GROUP_BYTES {
        match requests.try_recv() {
            Ok(request) => {
                bytes += bytes_of(&request);
                group.push(request);
            }
            Err(_) => break,
        }
    }
    group
}
