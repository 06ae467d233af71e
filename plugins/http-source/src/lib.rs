//! `http-source`: GETs an HTTP URL every `interval.ms` and turns each response into records.
//!
//! Config:
//! - `url` (required): `http://HOST[:PORT]/PATH?QUERY`; the appliance needs a
//!   `wasi.net=HOST:PORT` grant for it. No https.
//! - `interval.ms` (default 1000): the time from one request to the next.
//! - `format` (default `auto`): `json` reads the body as one JSON value, an array giving one
//!   record per element and anything else one record; `ndjson` gives one record per non-empty
//!   line; `auto` is `json` for a body that is one array or object, `ndjson` otherwise.
//! - `header.NAME=VALUE`: request headers (`header.Authorization=Bearer ...`).
//! - `key.field`: a dotted path into each value; the field becomes the record key (a string
//!   as its text, another value as JSON; no key when the field is missing).
//! - `timeout.ms` (default 2000, at most 4000): the whole request, connect to last byte.
//! - `max.response.bytes` (default 16 MiB): a bigger response is refused (the instance's
//!   default memory limit is 64 MiB, and a response is held twice while it is split).
//!
//! Data flow: `poll` -> when the records of the last response are all emitted and the
//! interval has passed since the last request started (the host clock), GET -> body split
//! into JSON values, each made compact (one line, otherwise the bytes the server sent: key
//! order and numbers are kept) -> records (value, optional key, timestamp = now) buffered ->
//! up to `max` emitted per poll. Requests happen inside `poll`, so one poll takes at most
//! `timeout.ms`.
//!
//! Failures are the server's, not the task's: a connection error or a non-2xx status logs a
//! warning, adds 1 to the counter `http_errors` and is retried at the next interval; a body
//! (format `json`) or line (`ndjson`) that is not JSON is dropped with a warning and counted
//! in `bad_records`. Only a configuration that cannot work fails `init`.
//!
//! Positions: a URL is a snapshot, not a stream with offsets, so there is nothing to resume
//! inside it. The position records which request the record came from: version 1, then the
//! request number (u64) and the time the request started (ms, i64), big-endian, 17 bytes. A
//! restart keeps the request schedule: the first request after it comes `interval.ms` after
//! the one the log's last record came from. A restart in the middle of a large response does
//! not finish it; the next request delivers a whole new snapshot. Each response is delivered
//! as the server returned it: identical responses give identical records again.

use std::collections::VecDeque;
use std::time::Duration;

use appliance_sdk::json::{self, serde_json::Value};
use appliance_sdk::{Config, Record, Source, SourceRecord, host, source};
use plugin_http_client::{Client, Url, check_grant, compact_json};
use serde_json::value::RawValue;

const KEYS: &[&str] = &[
    "url",
    "interval.ms",
    "format",
    "key.field",
    "timeout.ms",
    "max.response.bytes",
    "header.*",
];
const POSITION_VERSION: u8 = 1;
const POSITION_LEN: usize = 17;

#[source]
#[derive(Debug)]
pub struct HttpSource {
    client: Client,
    interval_ms: i64,
    timeout: Duration,
    format: Format,
    key_field: Option<String>,
    /// The number of the last request and when it started (host clock).
    last_request: Option<Request>,
    /// Records of the last response not emitted yet.
    pending: VecDeque<SourceRecord>,
}

/// One request of the schedule: what a position records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    number: u64,
    started_ms: i64,
}

impl Request {
    fn position(self) -> Vec<u8> {
        let mut position = Vec::with_capacity(POSITION_LEN);
        position.push(POSITION_VERSION);
        position.extend_from_slice(&self.number.to_be_bytes());
        position.extend_from_slice(&self.started_ms.to_be_bytes());
        position
    }

    fn from_position(position: &[u8]) -> Result<Self, String> {
        let invalid = || {
            format!(
                "the stored position ({} bytes) is not one of http-source's ({POSITION_LEN} \
                 bytes, version {POSITION_VERSION})",
                position.len()
            )
        };
        let bytes: [u8; POSITION_LEN] = position.try_into().map_err(|_| invalid())?;
        if bytes[0] != POSITION_VERSION {
            return Err(invalid());
        }
        let (number, started) = bytes[1..].split_at(8);
        Ok(Self {
            number: u64::from_be_bytes(number.try_into().map_err(|_| invalid())?),
            started_ms: i64::from_be_bytes(started.try_into().map_err(|_| invalid())?),
        })
    }
}

/// How a response body becomes values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Auto,
    Json,
    Ndjson,
}

impl Source for HttpSource {
    fn init(config: Config, resume_after: Option<Vec<u8>>) -> Result<Self, String> {
        config.only(KEYS)?;
        let url = Url::parse(config.require("url", "the http:// URL to poll")?)?;
        let interval_ms: i64 = config.parse_or("interval.ms", 1000)?;
        if !(1..=86_400_000).contains(&interval_ms) {
            return Err("`interval.ms` is 1 to 86400000 (a day)".to_owned());
        }
        let timeout_ms: u64 = config.parse_or("timeout.ms", 2000)?;
        if !(1..=4000).contains(&timeout_ms) {
            return Err(
                "`timeout.ms` is 1 to 4000 (a request runs inside a poll, which the host \
                 stops after 5 s)"
                    .to_owned(),
            );
        }
        let max_response: usize = config.parse_or("max.response.bytes", 16 << 20)?;
        if max_response == 0 {
            return Err("`max.response.bytes` is at least 1".to_owned());
        }
        let format = match config.get("format").map(str::trim) {
            None | Some("auto") => Format::Auto,
            Some("json") => Format::Json,
            Some("ndjson") => Format::Ndjson,
            Some(other) => return Err(format!("`format` is auto, json or ndjson, not {other:?}")),
        };
        let key_field = config
            .get("key.field")
            .map(str::trim)
            .filter(|field| !field.is_empty())
            .map(str::to_owned);
        let headers = config.prefixed("header.");
        check_grant(&url)?;
        let client = Client::new(url, headers)?.with_max_response_bytes(max_response);
        let last_request = resume_after
            .map(|position| Request::from_position(&position))
            .transpose()?;
        Ok(Self {
            client,
            interval_ms,
            timeout: Duration::from_millis(timeout_ms),
            format,
            key_field,
            last_request,
            pending: VecDeque::new(),
        })
    }

    fn poll(&mut self, max: u32) -> Result<Vec<SourceRecord>, String> {
        let now = host::now_ms();
        if self.pending.is_empty() && self.due(now) {
            self.fetch(now);
        }
        let count = self.pending.len().min(max as usize);
        Ok(self.pending.drain(..count).collect())
    }
}

impl HttpSource {
    fn due(&self, now: i64) -> bool {
        self.last_request.is_none_or(|last| {
            // A clock that stepped back must not stop the schedule.
            now < last.started_ms || now - last.started_ms >= self.interval_ms
        })
    }

    /// One request; its records go to `pending`, its failures to the log and counters.
    fn fetch(&mut self, now: i64) {
        let request = Request {
            number: self.last_request.map_or(1, |last| last.number + 1),
            started_ms: now,
        };
        self.last_request = Some(request);
        let url = self.client.url().to_string();
        let response = match self.client.get(self.timeout) {
            Ok(response) => response,
            Err(error) => {
                self.failed(&format!("GET {url} failed: {error}"));
                return;
            }
        };
        if !response.is_success() {
            self.failed(&format!(
                "GET {url} answered {}: {}",
                response.status,
                response.excerpt(200)
            ));
            return;
        }
        let parsed = split(&response.body, self.format);
        if let Some(first) = &parsed.first_error {
            host::log(
                host::Level::Warn,
                &format!(
                    "GET {url}: dropped {} part(s) of the response that are not JSON; the \
                     first: {first}",
                    parsed.bad
                ),
            );
            host::counter_add("bad_records", parsed.bad);
        }
        let position = request.position();
        let timestamp = host::now_ms();
        for value in parsed.values {
            let mut record = Record::from_value(value);
            record.key = self.key_of(record.value.as_deref().unwrap_or_default());
            record.timestamp = timestamp;
            self.pending.push_back(SourceRecord {
                record,
                position: position.clone(),
            });
        }
    }

    fn failed(&self, what: &str) {
        host::log(
            host::Level::Warn,
            &format!("{what}; trying again in {} ms", self.interval_ms),
        );
        host::counter_add("http_errors", 1);
    }

    fn key_of(&self, value: &[u8]) -> Option<Vec<u8>> {
        let field = json::lookup(value, self.key_field.as_deref()?).ok()??;
        Some(match field {
            Value::String(text) => text.into_bytes(),
            other => json::to_json_bytes(&other),
        })
    }
}

/// The values of a body, and what could not be read.
#[derive(Debug, Default, PartialEq, Eq)]
struct Split {
    values: Vec<Vec<u8>>,
    /// How many bodies or lines were not JSON.
    bad: u64,
    first_error: Option<String>,
}

fn split(body: &[u8], format: Format) -> Split {
    if body.trim_ascii().is_empty() {
        return Split::default();
    }
    let whole = || -> Result<Vec<Vec<u8>>, String> {
        let value: &RawValue = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if value.get().starts_with('[') {
            let items: Vec<&RawValue> =
                serde_json::from_str(value.get()).map_err(|e| e.to_string())?;
            Ok(items.iter().map(|item| compact_json(item.get())).collect())
        } else {
            Ok(vec![compact_json(value.get())])
        }
    };
    let starts_as_container = matches!(body.trim_ascii_start().first(), Some(b'[' | b'{'));
    match format {
        Format::Json => match whole() {
            Ok(values) => Split {
                values,
                ..Split::default()
            },
            Err(error) => Split {
                values: Vec::new(),
                bad: 1,
                first_error: Some(error),
            },
        },
        // A lone array or object is one document; a first line that is an object followed by
        // more lines fails as one document and is read as lines.
        Format::Auto if starts_as_container => match whole() {
            Ok(values) => Split {
                values,
                ..Split::default()
            },
            Err(_) => lines(body),
        },
        Format::Auto | Format::Ndjson => lines(body),
    }
}

fn lines(body: &[u8]) -> Split {
    let mut split = Split::default();
    for (number, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<&RawValue>(line) {
            Ok(value) => split.values.push(compact_json(value.get())),
            Err(error) => {
                split.bad += 1;
                split
                    .first_error
                    .get_or_insert_with(|| format!("line {}: {error}", number + 1));
            }
        }
    }
    split
}

#[cfg(test)]
mod tests;
