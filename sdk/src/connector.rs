//! Connector plugins: sources bring records from an external system into the log, sinks take
//! them out. As in Kafka Connect, `plan` splits a connector's work into task configurations
//! and each task is one instance of the type; the appliance's worker owns scheduling,
//! restarts, positions and offsets.
//!
//! # What the worker guarantees a source
//! - `poll` runs again only after everything the previous polls emitted is durable in the log
//!   (or was handled by the error policy). A source that must acknowledge upstream (an MQTT
//!   PUBACK, deleting a spooled file) does it for the previous poll's records at the start of
//!   the next poll: what it acknowledges is never lost.
//! - Unless it answers [`Source::polls_ahead`] with true: then `poll` runs again while the
//!   previous poll is transformed and the one before it appended (two polls in flight at
//!   most), and [`Source::acknowledge`] says, in poll order, when a poll's records are
//!   durable.
//! - The worker stores the position of the last record of each batch it appends, in the same
//!   append as the records; after a crash or a restart `init` gets the newest stored position.
//!   Records emitted after it are not in the log and must be produced again.
//! - Every call has a deadline (`timeout-ms`, 5 s by default): `poll` returns what is available
//!   now (use non-blocking or short-timeout reads) and returns no records when there is
//!   nothing; the worker then waits a little (10 ms, growing to 250 ms while idle) and polls
//!   again.
//!
//! # What the worker guarantees a sink
//! - `put` gets the records of one partition in offset order, each with its offset, and
//!   `info` names the topic and partition.
//! - An error from `put` names the first record the sink did not take: the records before it
//!   are taken (they will be flushed), the worker puts the rest again, from that record, after
//!   a backoff (bounded retries; then the connector's error policy applies to that record).
//! - Offsets are committed only after `flush` succeeds. After a crash or a restart the records
//!   after the last commit are put again: a sink that must not write twice uses the topic,
//!   partition and offset to skip what it already wrote.

use crate::{BatchInfo, Config, Record, RecordError, SourceRecord};

/// A source connector task, exported with [`#[source]`](crate::source).
pub trait Source: Sized + Send + 'static {
    /// The configuration keys whose values are secrets (passwords, tokens). The appliance
    /// accepts them only as references (`${file:PATH}`, `${env:NAME}`) and hands `init` the
    /// resolved value, so the secret is never stored, shown or logged.
    const SECRET_KEYS: &'static [&'static str] = &[];

    /// Splits the connector's configuration into at most `max_tasks` task configurations
    /// (one task per file, per partition of the external system, ...). The default runs one
    /// task with the connector's configuration.
    fn plan(config: Config, max_tasks: u32) -> Result<Vec<Config>, String> {
        let _ = max_tasks;
        Ok(vec![config])
    }

    /// Starts a task. `resume_after` is the position of the last record of this task the log
    /// holds (none on the first start): continue right after it.
    fn init(config: Config, resume_after: Option<Vec<u8>>) -> Result<Self, String>;

    /// Up to `max` new records, each with the position right after it; none when nothing is
    /// available now (the worker polls again shortly). An error fails the task, which the
    /// worker restarts with backoff from the last position the log holds.
    fn poll(&mut self, max: u32) -> Result<Vec<SourceRecord>, String>;

    /// Whether the appliance may poll again while the records of the previous poll are still
    /// being made durable, so that polling and transforms overlap the disk's flush; asked once,
    /// after `init`. Leave it false when `poll` acknowledges anything upstream (a broker's
    /// message, a file moved or deleted): with it true, the next `poll` can come before the
    /// records it would acknowledge are durable, and a crash then loses them. A source whose
    /// position alone says where to resume (a generator, a file read by offset) can answer
    /// true; one that must acknowledge does so in [`acknowledge`](Self::acknowledge).
    fn polls_ahead(&self) -> bool {
        false
    }

    /// The records of every poll up to the one that ended at `position` are durable in the
    /// log: called in poll order, for each poll that produced records, when
    /// [`polls_ahead`](Self::polls_ahead) is true. An error fails the task.
    fn acknowledge(&mut self, position: Vec<u8>) -> Result<(), String> {
        let _ = position;
        Ok(())
    }
}

/// A sink connector task, exported with [`#[sink]`](crate::sink).
pub trait Sink: Sized + Send + 'static {
    /// The configuration keys whose values are secrets (passwords, tokens). The appliance
    /// accepts them only as references (`${file:PATH}`, `${env:NAME}`) and hands `init` the
    /// resolved value, so the secret is never stored, shown or logged.
    const SECRET_KEYS: &'static [&'static str] = &[];

    /// Splits the connector's configuration into at most `max_tasks` task configurations.
    fn plan(config: Config, max_tasks: u32) -> Result<Vec<Config>, String> {
        let _ = max_tasks;
        Ok(vec![config])
    }

    fn init(config: Config) -> Result<Self, String>;

    /// Delivers one batch (every record carries its topic in `info`, and its offset, so the
    /// external system can be written idempotently). An error names the record the sink could
    /// not take; the worker applies the connector's error policy to it.
    fn put(&mut self, info: &BatchInfo, records: Vec<Record>) -> Result<(), RecordError>;

    /// Makes everything `put` so far durable in the external system; the worker commits the
    /// offsets of those records only after this succeeds.
    fn flush(&mut self) -> Result<(), String>;
}
