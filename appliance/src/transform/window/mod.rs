//! `window-aggregate`, the built-in stateful transform: windows on event time (tumbling,
//! hopping, session), aggregates per group and window, late records to a side topic. It owns
//! the window state of one source partition and the records that describe its changes; it
//! does no I/O (the pipeline task appends what it returns and restores it on start).
//!
//! ```text
//! records (after the plugin chain) --event time, group, values (or a rejection)-->
//!   too far ahead of the gateway's clock, or every window closed --> the late topic
//!   otherwise: the record's windows updated, the partition's watermark advanced
//!   --> windows whose end + grace the watermark reached close: their aggregate is emitted
//!   --> changelog records (window key -> state, tombstone when closed; the watermark)
//! ```
//!
//! Invariants: every output is attributed to the source offset of the record that caused
//! it, so the pipeline's range tags cover state changes and results alike and a replay from
//! the same state emits the same records. The watermark is the newest event time a partition
//! accepted; an event further than `max-future` ahead of the gateway's clock is not accepted
//! (it goes to the late topic), so one device's clock cannot close everyone's windows. A
//! record no open window takes is late: it goes to the late topic, never silently away.

mod spec;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Rejection;
use crate::log::TopicName;
use crate::plugin::{Header, Record};
pub(crate) use spec::parse_ms;
pub use spec::{Aggregate, Emit, EventTime, Function, GroupBy, WindowKind, WindowSpec};

/// The transform name that selects this built-in in a pipeline's chain (always its last step).
pub const WINDOW_AGGREGATE: &str = "window-aggregate";
/// On records written to the late topic: `late` (every window closed) or `future` (the event
/// is further ahead of the gateway's clock than `max-future`).
pub const LATE_HEADER: &str = "appliance.window.late";

/// The `window-aggregate` step of a chain, if it has one (it is always the last).
pub fn stage(transforms: &[super::TransformSpec]) -> Result<Option<WindowSpec>, String> {
    match transforms.iter().position(|t| t.plugin == WINDOW_AGGREGATE) {
        None => Ok(None),
        Some(at) if at + 1 == transforms.len() => WindowSpec::parse(&transforms[at].config)
            .map(Some)
            .map_err(|problem| format!("transform {WINDOW_AGGREGATE}: {problem}")),
        Some(_) => Err(format!(
            "{WINDOW_AGGREGATE} must be the last transform (and there is one at most): its \
             output is results, late records and its changelog"
        )),
    }
}

/// Changelog keys: a window (then the group's length, the group, the start), the watermark,
/// or an idle advance of the watermark (`W E`: the watermark, and the end of the destination
/// partition before the advance's results were appended).
const WINDOW_ENTRY: u8 = 1;
const WATERMARK_ENTRY: u8 = 2;
const IDLE_ADVANCE_ENTRY: u8 = 3;
/// The last record of each batch's changelog output, and the one the pipeline tags: it
/// carries no state, so compaction (which keeps every tagged record) keeps no stale window.
const COMMIT_ENTRY: u8 = 4;

/// Windows one record (or one idle advance) closes at most: their results are one source
/// offset's output, which must fit one batch of the destination. The rest close with the
/// next records; no record joins them meanwhile, as their close time has passed.
const MAX_CLOSES_PER_RECORD: usize = 1000;

/// Event times a window takes, in ms since the epoch: the years 1 to 9999 (the log's own
/// timestamp range), which keeps window arithmetic far from overflow.
const EVENT_TIMES: std::ops::RangeInclusive<i64> = -62_135_596_800_000..=253_402_300_799_999;

/// A group: `[0]` for records without a key, `[1] + key`, or the JSON array of field values.
type GroupKey = Vec<u8>;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct WindowKey {
    group: GroupKey,
    start: i64,
}

impl WindowKey {
    fn changelog_key(&self) -> Bytes {
        let mut key = Vec::with_capacity(13 + self.group.len());
        key.push(WINDOW_ENTRY);
        key.extend_from_slice(&(self.group.len() as u32).to_be_bytes());
        key.extend_from_slice(&self.group);
        key.extend_from_slice(&self.start.to_be_bytes());
        Bytes::from(key)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Window {
    /// The exclusive end (tumbling, hopping), or the newest event's time (session).
    end: i64,
    /// What the output shows of the group: the fields' values, or nothing for the key.
    fields: Option<Map<String, Value>>,
    count: u64,
    accumulators: Vec<Accumulator>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Accumulator {
    Count,
    Sum { sum: f64, n: u64 },
    Min { value: Option<f64> },
    Max { value: Option<f64> },
    First { at: Option<(i64, Value)> },
    Last { at: Option<(i64, Value)> },
}

/// An operator's windows and watermark, as a snapshot stores them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowState {
    windows: Vec<(WindowKey, Window)>,
    watermark: Option<i64>,
}

/// A record's contribution, taken out before any state changes.
struct Event {
    record: Record,
    time: i64,
    group: GroupKey,
    fields: Option<Map<String, Value>>,
    values: Vec<Option<Value>>,
}

/// What one batch changed in the changelog: key -> (source offset, timestamp, new value).
type Changes = BTreeMap<Bytes, (i64, i64, Option<Bytes>)>;

/// The state of one source partition's windows.
#[derive(Debug)]
pub struct WindowOperator {
    spec: WindowSpec,
    changelog: TopicName,
    windows: BTreeMap<WindowKey, Window>,
    /// (close time, window): what the watermark closes next.
    closing: BTreeSet<(i64, WindowKey)>,
    watermark: Option<i64>,
}

impl WindowOperator {
    pub fn new(spec: WindowSpec, changelog: TopicName) -> Self {
        Self {
            spec,
            changelog,
            windows: BTreeMap::new(),
            closing: BTreeSet::new(),
            watermark: None,
        }
    }

    /// Its windows and watermark, for a snapshot.
    pub fn state(&self) -> WindowState {
        WindowState {
            windows: self
                .windows
                .iter()
                .map(|(key, window)| (key.clone(), window.clone()))
                .collect(),
            watermark: self.watermark,
        }
    }

    /// An operator holding a snapshot's state.
    pub fn from_state(
        spec: WindowSpec,
        changelog: TopicName,
        state: WindowState,
    ) -> Result<Self, String> {
        let mut operator = Self::new(spec, changelog);
        for (key, window) in state.windows {
            if window.accumulators.len() != operator.spec.aggregates.len() {
                return Err("the snapshot has other aggregates than the transform".to_owned());
            }
            operator.insert(key, window);
        }
        operator.watermark = state.watermark;
        Ok(operator)
    }

    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// Applies one changelog record read back on start.
    pub fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        match key.split_first() {
            Some((&(WATERMARK_ENTRY | IDLE_ADVANCE_ENTRY), [])) => {
                let text = value.and_then(|v| std::str::from_utf8(v).ok());
                let watermark = text
                    .and_then(|t| t.split(' ').next())
                    .and_then(|t| t.parse::<i64>().ok())
                    .ok_or("a watermark entry is not a number")?;
                // Both kinds only move forward; compaction keeps the newest of each.
                self.watermark = Some(self.watermark.map_or(watermark, |w| w.max(watermark)));
                Ok(())
            }
            Some((&WINDOW_ENTRY, rest)) => {
                let key = decode_window_key(rest).ok_or("a window entry's key is malformed")?;
                self.remove(&key);
                if let Some(value) = value {
                    let window: Window = serde_json::from_slice(value)
                        .map_err(|e| format!("a window entry is malformed: {e}"))?;
                    if window.accumulators.len() != self.spec.aggregates.len() {
                        return Err(
                            "a window entry has other aggregates than the transform".to_owned()
                        );
                    }
                    self.insert(key, window);
                }
                Ok(())
            }
            Some((&COMMIT_ENTRY, [])) => Ok(()),
            _ => Err("an entry of unknown kind".to_owned()),
        }
    }

    /// With the partition idle, moves the watermark to `watermark` if that closes a window:
    /// the changelog entry that records the decision, to be stored before its results
    /// ([`WindowOperator::close_pending`]). `destination_end` is where the results will be
    /// appended; `offset` the last source offset read.
    pub fn advance_idle(
        &mut self,
        watermark: i64,
        destination_end: u64,
        offset: i64,
    ) -> Option<Vec<Record>> {
        let (next_close, _) = self.closing.first()?;
        if *next_close > watermark || self.watermark.is_some_and(|w| w >= watermark) {
            return None;
        }
        self.watermark = Some(watermark);
        let mut decision = Changes::new();
        decision.insert(
            Bytes::from_static(&[IDLE_ADVANCE_ENTRY]),
            (
                offset,
                watermark,
                Some(Bytes::from(format!("{watermark} {destination_end}"))),
            ),
        );
        Some(self.changelog_records(decision))
    }

    /// Closes the windows the watermark has passed (after an idle advance): their results,
    /// except those `emitted` already holds, and their changelog tombstones.
    pub fn close_pending(
        &mut self,
        offset: i64,
        emitted: &HashSet<(Option<Bytes>, i64)>,
    ) -> Vec<Record> {
        let mut output = Vec::new();
        let mut changes = Changes::new();
        let timestamp = self.watermark.unwrap_or_default();
        self.close_due(offset, timestamp, &mut output, &mut changes);
        output.retain(|result| {
            result_identity(result.key.as_ref(), result.value.as_deref())
                .is_none_or(|identity| !emitted.contains(&identity))
        });
        output.extend(self.changelog_records(changes));
        output
    }

    /// Runs a batch: results, late records and changelog records, each attributed to the
    /// source offset of the record that caused it, in offset order; records it cannot read
    /// are rejected (with every other output of their source offset). `now` is the gateway's
    /// clock in ms. An error means the partition holds more open windows than allowed.
    pub fn process(
        &mut self,
        input: Vec<Record>,
        now: i64,
    ) -> Result<(Vec<Record>, Vec<Rejection>), String> {
        let mut rejected: Vec<Rejection> = Vec::new();
        let mut passed = Vec::new();
        let mut events = Vec::with_capacity(input.len());
        for record in input {
            if record.topic.as_deref() == Some(self.changelog.as_str()) {
                rejected.push(Rejection {
                    offset: record.offset,
                    plugin: WINDOW_AGGREGATE.to_owned(),
                    message: format!(
                        "routed to {}, the window's changelog, which only window-aggregate writes",
                        self.changelog
                    ),
                });
                continue;
            }
            if record.topic.is_some() {
                passed.push(record);
                continue;
            }
            match self.event(record) {
                Ok(event) => events.push(event),
                Err((offset, message)) => rejected.push(Rejection {
                    offset,
                    plugin: WINDOW_AGGREGATE.to_owned(),
                    message,
                }),
            }
        }
        if !rejected.is_empty() {
            events.retain(|e| rejected.iter().all(|r| r.offset != e.record.offset));
        }
        let mut output = passed;
        let mut changes = Changes::new();
        for event in events {
            self.take(event, now, &mut output, &mut changes)?;
        }
        output.extend(self.changelog_records(changes));
        output.sort_by_key(|record| record.offset);
        Ok((output, rejected))
    }

    /// The changelog records of a batch's changes, ended by a commit entry at the offset of
    /// the last of them (none when nothing changed).
    fn changelog_records(&self, changes: Changes) -> Vec<Record> {
        let last = changes
            .values()
            .map(|(offset, timestamp, _)| (*offset, *timestamp))
            .max();
        let commit = last.map(|(offset, timestamp)| {
            (
                Bytes::from_static(&[COMMIT_ENTRY]),
                (offset, timestamp, Some(Bytes::new())),
            )
        });
        changes
            .into_iter()
            .chain(commit)
            .map(|(key, (offset, timestamp, value))| Record {
                key: Some(key),
                value,
                headers: Vec::new(),
                timestamp,
                offset,
                topic: Some(self.changelog.to_string()),
            })
            .collect()
    }

    fn event(&self, record: Record) -> Result<Event, (i64, String)> {
        let offset = record.offset;
        let fail = |message: String| (offset, message);
        let needs_value = matches!(self.spec.time, EventTime::Field(_))
            || matches!(self.spec.group_by, GroupBy::Fields(_))
            || self.spec.aggregates.iter().any(|a| a.field.is_some());
        let object = if needs_value {
            let value = record
                .value
                .as_deref()
                .ok_or_else(|| fail("a tombstone has no fields to window".to_owned()))?;
            match serde_json::from_slice::<Value>(value) {
                Ok(Value::Object(object)) => Some(object),
                Ok(_) => return Err(fail("the value is JSON but not an object".to_owned())),
                Err(e) => return Err(fail(format!("the value is not JSON: {e}"))),
            }
        } else {
            None
        };
        let field = |name: &str| object.as_ref().and_then(|o| o.get(name));
        let time = match &self.spec.time {
            EventTime::Timestamp => record.timestamp,
            EventTime::Field(name) => {
                event_time(field(name)).map_err(|problem| fail(format!("`{name}` {problem}")))?
            }
        };
        if !EVENT_TIMES.contains(&time) {
            return Err(fail(format!(
                "the event time {time} ms is not between the years 1 and 9999"
            )));
        }
        let (group, fields) = match &self.spec.group_by {
            GroupBy::Key => {
                let group = match &record.key {
                    None => vec![0],
                    Some(key) => [&[1u8][..], key].concat(),
                };
                (group, None)
            }
            GroupBy::Fields(names) => {
                let values: Vec<&Value> = names
                    .iter()
                    .map(|name| field(name).unwrap_or(&Value::Null))
                    .collect();
                let group = serde_json::to_vec(&values).map_err(|e| fail(e.to_string()))?;
                let fields = names.iter().cloned().zip(values.into_iter().cloned());
                (group, Some(fields.collect()))
            }
        };
        let mut values = Vec::with_capacity(self.spec.aggregates.len());
        for aggregate in &self.spec.aggregates {
            let value = aggregate.field.as_deref().and_then(field);
            let numeric = matches!(
                aggregate.function,
                Function::Sum | Function::Avg | Function::Min | Function::Max
            );
            match value {
                Some(Value::Null) | None => values.push(None),
                Some(v @ Value::Number(_)) => values.push(Some(v.clone())),
                Some(other) if numeric => {
                    return Err(fail(format!(
                        "{} needs a number, and `{}` is {other}",
                        aggregate.name,
                        aggregate.field.as_deref().unwrap_or_default()
                    )));
                }
                Some(other) => values.push(Some(other.clone())),
            }
        }
        Ok(Event {
            record,
            time,
            group,
            fields,
            values,
        })
    }

    fn take(
        &mut self,
        event: Event,
        now: i64,
        output: &mut Vec<Record>,
        changes: &mut Changes,
    ) -> Result<(), String> {
        let offset = event.record.offset;
        let timestamp = event.record.timestamp;
        // With a time field, the time the appliance received the record; a producer may set
        // that timestamp too, so never past the wall clock.
        let clock = match self.spec.time {
            EventTime::Timestamp => now,
            EventTime::Field(_) => event.record.timestamp.min(now),
        };
        if event.time > clock.saturating_add(self.spec.max_future) {
            output.push(self.late(event.record, "future"));
            return Ok(());
        }
        let updated = match self.spec.kind {
            WindowKind::Session { gap } => self.add_to_session(&event, gap, changes)?,
            _ => self.add_to_windows(&event, changes)?,
        };
        if updated.is_empty() {
            output.push(self.late(event.record, "late"));
            return Ok(());
        }
        if self.spec.emit == Emit::Update {
            for key in &updated {
                if let Some(window) = self.windows.get(key) {
                    output.push(self.result(key, window, offset));
                }
            }
        }
        if self.watermark.is_none_or(|w| event.time > w) {
            self.watermark = Some(event.time);
            changes.insert(
                Bytes::from_static(&[WATERMARK_ENTRY]),
                (offset, timestamp, Some(Bytes::from(event.time.to_string()))),
            );
        }
        self.close_due(offset, timestamp, output, changes);
        Ok(())
    }

    /// Adds the event to each of its tumbling or hopping windows that is still open; returns
    /// them (none: the record is late).
    fn add_to_windows(
        &mut self,
        event: &Event,
        changes: &mut Changes,
    ) -> Result<Vec<WindowKey>, String> {
        let (size, advance) = match self.spec.kind {
            WindowKind::Tumbling { size } => (size, size),
            WindowKind::Hopping { size, advance } => (size, advance),
            WindowKind::Session { .. } => unreachable!("sessions are added by add_to_session"),
        };
        let last_start = event.time.div_euclid(advance) * advance;
        let mut keys = Vec::new();
        let mut start = last_start;
        while start > event.time.saturating_sub(size) {
            let end = start.saturating_add(size);
            if self.is_open(end.saturating_add(self.spec.grace)) {
                keys.push(WindowKey {
                    group: event.group.clone(),
                    start,
                });
            }
            start -= advance;
        }
        keys.reverse();
        let new = keys
            .iter()
            .filter(|k| !self.windows.contains_key(k))
            .count();
        self.check_room(new)?;
        for key in &keys {
            let mut window = self.remove(key).unwrap_or_else(|| Window {
                end: key.start.saturating_add(size),
                fields: event.fields.clone(),
                count: 0,
                accumulators: self.empty_accumulators(),
            });
            add(&mut window, event);
            self.record_change(key, Some(&window), event, changes);
            self.insert(key.clone(), window);
        }
        Ok(keys)
    }

    /// Adds the event to its group's session, merging the open sessions it bridges.
    fn add_to_session(
        &mut self,
        event: &Event,
        gap: i64,
        changes: &mut Changes,
    ) -> Result<Vec<WindowKey>, String> {
        let group_start = WindowKey {
            group: event.group.clone(),
            start: i64::MIN,
        };
        let touching: Vec<WindowKey> = self
            .windows
            .range(group_start..)
            .take_while(|(key, _)| key.group == event.group)
            .filter(|(key, window)| {
                key.start.saturating_sub(gap) <= event.time
                    && event.time <= window.end.saturating_add(gap)
                    && self.is_open(self.close_time(window))
            })
            .map(|(key, _)| key.clone())
            .collect();
        let own_close = event
            .time
            .saturating_add(gap)
            .saturating_add(self.spec.grace);
        if touching.is_empty() && !self.is_open(own_close) {
            return Ok(Vec::new());
        }
        if touching.is_empty() {
            self.check_room(1)?;
        }
        let mut merged = Window {
            end: event.time,
            fields: event.fields.clone(),
            count: 0,
            accumulators: self.empty_accumulators(),
        };
        let mut start = event.time;
        for key in &touching {
            if let Some(old) = self.remove(key) {
                start = start.min(key.start);
                merge(&mut merged, old);
                self.record_change(key, None, event, changes);
            }
        }
        add(&mut merged, event);
        let key = WindowKey {
            group: event.group.clone(),
            start,
        };
        self.record_change(&key, Some(&merged), event, changes);
        self.insert(key.clone(), merged);
        Ok(vec![key])
    }

    fn check_room(&self, new: usize) -> Result<(), String> {
        if self.windows.len() + new > self.spec.max_open_windows {
            return Err(format!(
                "window-aggregate holds {} open windows in this partition, its limit \
                 (max-open-windows); raise the limit, or use shorter windows or less grace",
                self.spec.max_open_windows
            ));
        }
        Ok(())
    }

    fn is_open(&self, close_time: i64) -> bool {
        self.watermark.is_none_or(|w| close_time > w)
    }

    fn close_time(&self, window: &Window) -> i64 {
        let end = match self.spec.kind {
            WindowKind::Session { gap } => window.end.saturating_add(gap),
            _ => window.end,
        };
        end.saturating_add(self.spec.grace)
    }

    /// Closes every window the watermark has passed: its result (with `emit=final`) and its
    /// tombstone in the changelog.
    fn close_due(
        &mut self,
        offset: i64,
        timestamp: i64,
        output: &mut Vec<Record>,
        changes: &mut Changes,
    ) {
        let Some(watermark) = self.watermark else {
            return;
        };
        let mut closed = 0;
        while let Some((close, _)) = self.closing.first()
            && *close <= watermark
            && closed < MAX_CLOSES_PER_RECORD
        {
            closed += 1;
            let Some((_, key)) = self.closing.pop_first() else {
                break;
            };
            let Some(window) = self.windows.remove(&key) else {
                continue;
            };
            if self.spec.emit == Emit::Final {
                output.push(self.result(&key, &window, offset));
            }
            changes.insert(key.changelog_key(), (offset, timestamp, None));
        }
    }

    fn insert(&mut self, key: WindowKey, window: Window) {
        self.closing.insert((self.close_time(&window), key.clone()));
        self.windows.insert(key, window);
    }

    fn remove(&mut self, key: &WindowKey) -> Option<Window> {
        let window = self.windows.remove(key)?;
        self.closing
            .remove(&(self.close_time(&window), key.clone()));
        Some(window)
    }

    fn record_change(
        &self,
        key: &WindowKey,
        window: Option<&Window>,
        event: &Event,
        changes: &mut Changes,
    ) {
        let value = window
            .map(|w| Bytes::from(serde_json::to_vec(w).expect("a window serializes to JSON")));
        changes.insert(
            key.changelog_key(),
            (event.record.offset, event.record.timestamp, value),
        );
    }

    fn empty_accumulators(&self) -> Vec<Accumulator> {
        self.spec
            .aggregates
            .iter()
            .map(|a| match a.function {
                Function::Count => Accumulator::Count,
                Function::Sum | Function::Avg => Accumulator::Sum { sum: 0.0, n: 0 },
                Function::Min => Accumulator::Min { value: None },
                Function::Max => Accumulator::Max { value: None },
                Function::First => Accumulator::First { at: None },
                Function::Last => Accumulator::Last { at: None },
            })
            .collect()
    }

    fn late(&self, mut record: Record, why: &str) -> Record {
        record.headers.retain(|h| h.key != LATE_HEADER);
        record.headers.push(Header {
            key: LATE_HEADER.to_owned(),
            value: Bytes::copy_from_slice(why.as_bytes()),
        });
        record.topic = Some(self.spec.late_topic.to_string());
        record
    }

    /// A window's result: keyed by the group, valued by a JSON object of the window's bounds,
    /// the group's fields and the aggregates, timestamped at the window's end.
    fn result(&self, key: &WindowKey, window: &Window, offset: i64) -> Record {
        let mut object = Map::new();
        object.insert("window_start".to_owned(), Value::from(key.start));
        object.insert("window_end".to_owned(), Value::from(window.end));
        if let Some(fields) = &window.fields {
            object.extend(fields.clone());
        }
        for (aggregate, accumulator) in self.spec.aggregates.iter().zip(&window.accumulators) {
            let value = match (aggregate.function, accumulator) {
                (Function::Count, _) => Value::from(window.count),
                (Function::Avg, Accumulator::Sum { sum, n }) if *n > 0 => {
                    Value::from(sum / *n as f64)
                }
                (Function::Sum, Accumulator::Sum { sum, n }) if *n > 0 => Value::from(*sum),
                (_, Accumulator::Min { value: Some(v) } | Accumulator::Max { value: Some(v) }) => {
                    Value::from(*v)
                }
                (
                    _,
                    Accumulator::First { at: Some((_, v)) }
                    | Accumulator::Last { at: Some((_, v)) },
                ) => v.clone(),
                _ => Value::Null,
            };
            object.insert(aggregate.name.clone(), value);
        }
        let record_key = match (&self.spec.group_by, key.group.split_first()) {
            (GroupBy::Key, Some((1, k))) => Some(Bytes::copy_from_slice(k)),
            (GroupBy::Key, _) => None,
            (GroupBy::Fields(_), _) => Some(Bytes::copy_from_slice(&key.group)),
        };
        Record {
            key: record_key,
            value: Some(Bytes::from(
                serde_json::to_vec(&Value::Object(object)).expect("JSON serializes"),
            )),
            headers: Vec::new(),
            timestamp: window.end,
            offset,
            topic: None,
        }
    }
}

/// The destination end of an idle advance's changelog entry, if `key` is one.
pub fn idle_advance_end(key: &[u8], value: Option<&[u8]>) -> Option<u64> {
    if key != [IDLE_ADVANCE_ENTRY] {
        return None;
    }
    let text = std::str::from_utf8(value?).ok()?;
    text.split(' ').nth(1)?.parse().ok()
}

/// A window result's key and window start, as [`WindowOperator::close_pending`] matches them.
pub fn result_identity(key: Option<&Bytes>, value: Option<&[u8]>) -> Option<(Option<Bytes>, i64)> {
    let value: Value = serde_json::from_slice(value?).ok()?;
    Some((key.cloned(), value.get("window_start")?.as_i64()?))
}

fn decode_window_key(bytes: &[u8]) -> Option<WindowKey> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() != len + 8 {
        return None;
    }
    let (group, start) = rest.split_at(len);
    Some(WindowKey {
        group: group.to_vec(),
        start: i64::from_be_bytes(start.try_into().ok()?),
    })
}

/// Milliseconds since the epoch from a JSON number, or an RFC 3339 string.
fn event_time(value: Option<&Value>) -> Result<i64, String> {
    match value {
        None | Some(Value::Null) => Err("is missing".to_owned()),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .ok_or_else(|| format!("{n} is not a time in milliseconds")),
        Some(Value::String(text)) => {
            let at = humantime::parse_rfc3339_weak(text)
                .map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}"))?;
            let since_epoch = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| format!("{text:?} is before 1970"))?;
            i64::try_from(since_epoch.as_millis()).map_err(|_| format!("{text:?} is too far"))
        }
        Some(other) => Err(format!(
            "is {other}: use milliseconds since the epoch or an RFC 3339 time"
        )),
    }
}

fn add(window: &mut Window, event: &Event) {
    window.count += 1;
    for (accumulator, value) in window.accumulators.iter_mut().zip(&event.values) {
        if let Some(value) = value {
            let single = (event.time, value.clone());
            accumulate(accumulator, value.as_f64(), single);
        }
    }
}

/// Folds one value (its number, and its event time with the value) into an accumulator.
fn accumulate(accumulator: &mut Accumulator, number: Option<f64>, timed: (i64, Value)) {
    match accumulator {
        Accumulator::Count => {}
        // Sums saturate at the largest finite number: JSON has no infinity to store.
        Accumulator::Sum { sum, n } => {
            *sum = (*sum + number.unwrap_or_default()).clamp(f64::MIN, f64::MAX);
            *n += 1;
        }
        Accumulator::Min { value } => {
            let x = number.unwrap_or_default();
            *value = Some(value.map_or(x, |v| v.min(x)));
        }
        Accumulator::Max { value } => {
            let x = number.unwrap_or_default();
            *value = Some(value.map_or(x, |v| v.max(x)));
        }
        // Ties keep the value that arrived first (`first`) or last (`last`).
        Accumulator::First { at } => {
            if at.as_ref().is_none_or(|(t, _)| timed.0 < *t) {
                *at = Some(timed);
            }
        }
        Accumulator::Last { at } => {
            if at.as_ref().is_none_or(|(t, _)| timed.0 >= *t) {
                *at = Some(timed);
            }
        }
    }
}

/// Merges an earlier session into another (sessions merge when an event bridges them).
fn merge(into: &mut Window, from: Window) {
    into.count += from.count;
    into.end = into.end.max(from.end);
    for (a, b) in into.accumulators.iter_mut().zip(from.accumulators) {
        match b {
            Accumulator::Sum { sum, n } => {
                if let Accumulator::Sum { sum: s, n: m } = a {
                    *s = (*s + sum).clamp(f64::MIN, f64::MAX);
                    *m += n;
                }
            }
            Accumulator::Min { value: Some(x) } | Accumulator::Max { value: Some(x) } => {
                accumulate(a, Some(x), (0, Value::Null));
            }
            Accumulator::First { at: Some(timed) } | Accumulator::Last { at: Some(timed) } => {
                accumulate(a, None, timed);
            }
            _ => {}
        }
    }
}
