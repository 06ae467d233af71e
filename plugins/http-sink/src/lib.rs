//! `http-sink`: POSTs records to an HTTP URL, `batch.max` records per request, retrying
//! server and connection failures.
//!
//! Config:
//! - `url` (required): `http://HOST[:PORT]/PATH?QUERY`; the appliance needs a
//!   `wasi.net=HOST:PORT` grant for it. No https.
//! - `format` (default `json`): `json` sends a JSON array of the record values, `ndjson` one
//!   value per line (each line ends with `\n`). A value that is JSON goes as that JSON, made
//!   compact (whitespace between tokens removed, nothing else changed); any other value as a
//!   JSON string of its text (invalid UTF-8 replaced by U+FFFD); a tombstone as `null`. Keys
//!   and headers are not sent. `Content-Type` is `application/json` or `application/x-ndjson`
//!   unless `header.Content-Type` says otherwise.
//! - `batch.max` (default 500): records per request.
//! - `header.NAME=VALUE`: request headers (`header.Authorization=Bearer ...`).
//! - `retries` (default 3) and `retry.backoff.ms` (default 100, doubling): how often and
//!   after how long a failed request is tried again within one `put`.
//! - `timeout.ms` (default 2000, at most 3000): one request, connect to last response byte.
//!
//! Every request carries `X-Appliance-Topic`, `X-Appliance-Partition` and
//! `X-Appliance-Offsets: FIRST-LAST` (the offsets of its first and last record; the records
//! are in offset order, and when LAST - FIRST + 1 is the number of values, value k has offset
//! FIRST + k). After a crash the worker puts again what it had not committed, possibly cut
//! into different requests, so a server that must store each record once keeps the highest
//! offset it stored per topic and partition and skips records at or below it.
//!
//! Data flow: `put` -> chunks of `batch.max` -> body -> POST (keep-alive connection) ->
//! 2xx: next chunk. A 5xx, 408 or 429 answer or a connection failure is retried after the
//! backoff; a chunk that still fails, or is refused (any other status: 4xx, or a 3xx, as
//! redirects are not followed), ends the `put` with an error naming the chunk's first record:
//! the chunks before it are delivered, and the worker puts the rest again later (then applies
//! the connector's error policy). One `put` stays within 3 s of requests and backoffs (the
//! host stops a call after 5 s): a request gets at most the time left of it, and when too
//! little is left the `put` ends before the next chunk or retry the same way. `flush` has
//! nothing to do, since `put` returns only once the server has answered 2xx for everything it
//! took.

use std::time::{Duration, Instant};

use appliance_sdk::json::{serde_json::Value, to_json_bytes};
use appliance_sdk::{BatchInfo, Config, Record, RecordError, Sink, host, sink};
use plugin_http_client::{Client, Response, Url, check_grant, compact_json};
use serde_json::value::RawValue;

const KEYS: &[&str] = &[
    "url",
    "format",
    "batch.max",
    "retries",
    "retry.backoff.ms",
    "timeout.ms",
    "header.*",
];
/// How long one `put` may spend on requests and backoffs, well inside the host's deadline.
const CALL_BUDGET: Duration = Duration::from_secs(3);
/// Less time than this left in the budget is not worth starting a request or a retry.
const MIN_REQUEST_TIME: Duration = Duration::from_millis(100);
/// How much of a refusing server's body goes into the error.
const EXCERPT_BYTES: usize = 300;

#[sink]
#[derive(Debug)]
pub struct HttpSink {
    client: Client,
    format: Format,
    /// `Content-Type`, unless the operator configured one.
    content_type: Option<&'static str>,
    batch_max: usize,
    retries: u32,
    backoff: Duration,
    timeout: Duration,
}

/// How record values are put into a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Ndjson,
}

impl Sink for HttpSink {
    fn init(config: Config) -> Result<Self, String> {
        config.only(KEYS)?;
        let url = Url::parse(config.require("url", "the http:// URL to POST to")?)?;
        let format = match config.get("format").map(str::trim) {
            None | Some("json") => Format::Json,
            Some("ndjson") => Format::Ndjson,
            Some(other) => return Err(format!("`format` is json or ndjson, not {other:?}")),
        };
        let batch_max: usize = config.parse_or("batch.max", 500)?;
        if !(1..=100_000).contains(&batch_max) {
            return Err("`batch.max` is 1 to 100000 records".to_owned());
        }
        let retries: u32 = config.parse_or("retries", 3)?;
        if retries > 10 {
            return Err("`retries` is 0 to 10".to_owned());
        }
        let backoff_ms: u64 = config.parse_or("retry.backoff.ms", 100)?;
        if !(1..=2000).contains(&backoff_ms) {
            return Err("`retry.backoff.ms` is 1 to 2000".to_owned());
        }
        let timeout_ms: u64 = config.parse_or("timeout.ms", 2000)?;
        if !(1..=3000).contains(&timeout_ms) {
            return Err(
                "`timeout.ms` is 1 to 3000 (one put, retries included, stays within 3 s)"
                    .to_owned(),
            );
        }
        let headers: Vec<(String, String)> = config.prefixed("header.");
        let configured = |wanted: &str| {
            headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case(wanted))
        };
        let content_type = (!configured("content-type")).then_some(match format {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
        });
        check_grant(&url)?;
        Ok(Self {
            client: Client::new(url, headers)?.with_max_response_bytes(1 << 20),
            format,
            content_type,
            batch_max,
            retries,
            backoff: Duration::from_millis(backoff_ms),
            timeout: Duration::from_millis(timeout_ms),
        })
    }

    fn put(&mut self, info: &BatchInfo, records: Vec<Record>) -> Result<(), RecordError> {
        let started = Instant::now();
        for (number, chunk) in records.chunks(self.batch_max).enumerate() {
            let first = u32::try_from(number * self.batch_max).unwrap_or(u32::MAX);
            if number > 0 && CALL_BUDGET.saturating_sub(started.elapsed()) < MIN_REQUEST_TIME {
                return Err(RecordError {
                    index: first,
                    message: format!(
                        "delivered {first} records in {} ms; the rest is put again",
                        started.elapsed().as_millis()
                    ),
                });
            }
            self.deliver(info, chunk, started)
                .map_err(|message| RecordError {
                    index: first,
                    message,
                })?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// What became of one request.
enum Outcome {
    Delivered,
    /// Worth trying again: the server or the connection failed.
    Failed(String),
    /// The server will not take this body as it is.
    Refused(String),
}

impl HttpSink {
    /// POSTs one chunk, retrying failures while retries and the call's budget last.
    fn deliver(
        &mut self,
        info: &BatchInfo,
        chunk: &[Record],
        started: Instant,
    ) -> Result<(), String> {
        let (Some(first), Some(last)) = (chunk.first(), chunk.last()) else {
            return Ok(());
        };
        let offsets = format!("{}-{}", first.offset, last.offset);
        let mut headers = vec![
            ("X-Appliance-Topic".to_owned(), info.topic.clone()),
            (
                "X-Appliance-Partition".to_owned(),
                info.partition.to_string(),
            ),
            ("X-Appliance-Offsets".to_owned(), offsets.clone()),
        ];
        if let Some(content_type) = self.content_type {
            headers.push(("Content-Type".to_owned(), content_type.to_owned()));
        }
        let body = self.body(chunk);
        let mut backoff = self.backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let left = CALL_BUDGET.saturating_sub(started.elapsed());
            let outcome = match self.client.post(&headers, &body, self.timeout.min(left)) {
                Ok(response) => self.judge(&response),
                Err(error) => Outcome::Failed(error.to_string()),
            };
            let failure = match outcome {
                Outcome::Delivered => return Ok(()),
                Outcome::Refused(why) => {
                    host::counter_add("http_errors", 1);
                    return Err(format!("records at offsets {offsets} refused: {why}"));
                }
                Outcome::Failed(why) => why,
            };
            host::counter_add("http_errors", 1);
            let left = CALL_BUDGET.saturating_sub(started.elapsed());
            if attempts > self.retries || backoff + MIN_REQUEST_TIME > left {
                return Err(format!(
                    "records at offsets {offsets} not delivered after {attempts} attempt(s): \
                     {failure}"
                ));
            }
            host::log(
                host::Level::Warn,
                &format!(
                    "POST {} (offsets {offsets}) failed: {failure}; retrying in {} ms",
                    self.client.url(),
                    backoff.as_millis()
                ),
            );
            std::thread::sleep(backoff);
            backoff *= 2;
        }
    }

    fn judge(&self, response: &Response) -> Outcome {
        let status = response.status;
        let what = || {
            format!(
                "{} answered {status}: {}",
                self.client.url(),
                response.excerpt(EXCERPT_BYTES)
            )
        };
        match status {
            200..=299 => Outcome::Delivered,
            408 | 429 | 500..=599 => Outcome::Failed(what()),
            _ => Outcome::Refused(what()),
        }
    }

    fn body(&self, chunk: &[Record]) -> Vec<u8> {
        let mut body = Vec::new();
        if self.format == Format::Json {
            body.push(b'[');
        }
        for (index, record) in chunk.iter().enumerate() {
            if self.format == Format::Json && index > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&value_json(record.value.as_deref()));
            if self.format == Format::Ndjson {
                body.push(b'\n');
            }
        }
        if self.format == Format::Json {
            body.push(b']');
        }
        body
    }
}

/// A record value as one line of JSON: itself when it is JSON, else a string of its text.
fn value_json(value: Option<&[u8]>) -> Vec<u8> {
    let Some(bytes) = value else {
        return b"null".to_vec();
    };
    match serde_json::from_slice::<&RawValue>(bytes) {
        Ok(raw) => compact_json(raw.get()),
        Err(_) => to_json_bytes(&Value::String(String::from_utf8_lossy(bytes).into_owned())),
    }
}

#[cfg(test)]
mod tests;
