//! Connector plugins: sources bring records from an external system into the log, sinks take
//! them out. As in Kafka Connect, `plan` splits a connector's work into task configurations
//! and each task is one instance of the type; the appliance's worker owns scheduling,
//! restarts, positions and offsets.

use crate::{BatchInfo, Config, Record, RecordError, SourceRecord};

/// A source connector task, exported with [`#[source]`](crate::source).
pub trait Source: Sized + Send + 'static {
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
}

/// A sink connector task, exported with [`#[sink]`](crate::sink).
pub trait Sink: Sized + Send + 'static {
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
