//! The configuration of `window-aggregate`, parsed and checked once at create time.

use std::time::Duration;

use crate::log::TopicName;
use crate::transform::Settings;

/// Hopping windows per record at most: `size / advance` above this is refused.
const MAX_WINDOWS_PER_RECORD: i64 = 100;
/// Open windows (all groups) one partition keeps unless `max-open-windows` says otherwise.
const DEFAULT_MAX_OPEN_WINDOWS: usize = 100_000;
/// How far ahead of the gateway's clock an event may be unless `max-future` says otherwise.
const DEFAULT_MAX_FUTURE: Duration = Duration::from_secs(60);
const DEFAULT_STORE: &str = "window";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Back-to-back windows of `size` ms.
    Tumbling { size: i64 },
    /// Windows of `size` ms starting every `advance` ms.
    Hopping { size: i64, advance: i64 },
    /// Runs of a group's events no more than `gap` ms apart.
    Session { gap: i64 },
}

/// Where a record's event time comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventTime {
    /// The record's timestamp; the gateway's clock is then the wall clock at processing.
    Timestamp,
    /// A field of the JSON value (milliseconds since the epoch, or an RFC 3339 string); the
    /// gateway's clock is then the record's timestamp (when the appliance received it).
    Field(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    Fields(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    First,
    Last,
}

/// One aggregate: `count`, or a function of a field, named `<function>_<field>` in the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    pub function: Function,
    pub field: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// Once per window, when it closes.
    Final,
    /// After every record that changes the window.
    Update,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    pub kind: WindowKind,
    pub grace: i64,
    pub time: EventTime,
    pub group_by: GroupBy,
    pub aggregates: Vec<Aggregate>,
    pub emit: Emit,
    pub late_topic: TopicName,
    pub max_future: i64,
    pub store: String,
    pub max_open_windows: usize,
    /// After this long without records, a partition's watermark moves to the gateway's clock
    /// minus this; `None`: it waits for records.
    pub idle_advance: Option<i64>,
    /// How often a partition's state is snapshotted, so a start reads only the changelog
    /// written since.
    pub snapshot_interval: i64,
}

const KEYS: [&str; 15] = [
    "window",
    "size",
    "advance",
    "gap",
    "grace",
    "time-field",
    "group-by",
    "aggregates",
    "emit",
    "late-topic",
    "max-future",
    "store",
    "idle-advance",
    "snapshot-interval",
    MAX_OPEN_WINDOWS_KEY,
];
const MAX_OPEN_WINDOWS_KEY: &str = "max-open-windows";

impl WindowSpec {
    pub fn parse(config: &[(String, String)]) -> Result<Self, String> {
        let settings = Settings::of(super::WINDOW_AGGREGATE, config, &KEYS)?;
        let get = |key: &str| settings.get(key);
        let required = |key: &str| get(key).ok_or_else(|| format!("`{key}` is required"));
        let duration = |key: &str| -> Result<Option<i64>, String> {
            get(key).map(|text| parse_ms(key, text)).transpose()
        };
        let positive = |key: &str| -> Result<i64, String> {
            match duration(key)? {
                Some(ms) if ms > 0 => Ok(ms),
                Some(_) => Err(format!("`{key}` must be longer than 0 ms")),
                None => Err(format!("`{key}` is required")),
            }
        };
        let kind = match required("window")? {
            "tumbling" => WindowKind::Tumbling {
                size: positive("size")?,
            },
            "hopping" => {
                let size = positive("size")?;
                let advance = positive("advance")?;
                if advance > size {
                    return Err(format!(
                        "`advance` ({advance} ms) is longer than `size` ({size} ms): records \
                         between windows would belong to none"
                    ));
                }
                if (size + advance - 1) / advance > MAX_WINDOWS_PER_RECORD {
                    return Err(format!(
                        "`size` / `advance` puts each record in more than \
                         {MAX_WINDOWS_PER_RECORD} windows; make `advance` longer"
                    ));
                }
                WindowKind::Hopping { size, advance }
            }
            "session" => WindowKind::Session {
                gap: positive("gap")?,
            },
            other => {
                return Err(format!(
                    "`window` is tumbling, hopping or session, not {other:?}"
                ));
            }
        };
        let unused: &[&str] = match kind {
            WindowKind::Tumbling { .. } => &["advance", "gap"],
            WindowKind::Hopping { .. } => &["gap"],
            WindowKind::Session { .. } => &["size", "advance"],
        };
        if let Some(key) = unused.iter().find(|key| get(key).is_some()) {
            return Err(format!("`{key}` does not apply to this kind of window"));
        }
        let grace = duration("grace")?.ok_or(
            "`grace` is required: how long after a window's end its late records are still \
             counted (0s closes it at its end)",
        )?;
        let time = match get("time-field") {
            None => EventTime::Timestamp,
            Some("") => return Err("`time-field` names a field of the JSON value".to_owned()),
            Some(field) => EventTime::Field(field.to_owned()),
        };
        let group_by = match get("group-by") {
            None | Some("key") => GroupBy::Key,
            Some(fields) => GroupBy::Fields(list(fields, "group-by")?),
        };
        let aggregates = required("aggregates")?
            .split(';')
            .map(str::trim)
            .map(parse_aggregate)
            .collect::<Result<Vec<_>, _>>()?;
        for (i, aggregate) in aggregates.iter().enumerate() {
            if aggregates[..i].iter().any(|a| a.name == aggregate.name) {
                return Err(format!("the aggregate {} is listed twice", aggregate.name));
            }
        }
        let emit = match get("emit") {
            None | Some("final") => Emit::Final,
            Some("update") => Emit::Update,
            Some(other) => return Err(format!("`emit` is final or update, not {other:?}")),
        };
        let late_topic = TopicName::new(required("late-topic").map_err(|_| {
            "`late-topic` is required: late records and records too far in the future are \
             written there, never dropped"
                .to_owned()
        })?)
        .map_err(|e| format!("`late-topic`: {e}"))?;
        let max_future = duration("max-future")?.unwrap_or(DEFAULT_MAX_FUTURE.as_millis() as i64);
        let store = get("store").unwrap_or(DEFAULT_STORE).to_owned();
        let max_open_windows = match get(MAX_OPEN_WINDOWS_KEY) {
            None => DEFAULT_MAX_OPEN_WINDOWS,
            Some(text) => text
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("`{MAX_OPEN_WINDOWS_KEY}` is a positive count"))?,
        };
        let idle_advance = match duration("idle-advance")? {
            Some(ms) if ms <= 0 => return Err("`idle-advance` must be longer than 0 ms".to_owned()),
            other => other,
        };
        let snapshot_interval =
            crate::transform::snapshot_interval(get(crate::transform::SNAPSHOT_INTERVAL))?
                .as_millis() as i64;
        Ok(Self {
            snapshot_interval,
            idle_advance,
            kind,
            grace,
            time,
            group_by,
            aggregates,
            emit,
            late_topic,
            max_future,
            store,
            max_open_windows,
        })
    }

    /// `<pipeline>.<store>.changelog`: the compacted topic the state is kept in.
    pub fn changelog_topic(&self, pipeline: &str) -> Result<TopicName, String> {
        TopicName::new(format!("{pipeline}.{}.changelog", self.store))
            .map_err(|e| format!("the changelog topic's name: {e}; choose a shorter `store`"))
    }
}

fn list(text: &str, key: &str) -> Result<Vec<String>, String> {
    let items: Vec<String> = text.split(';').map(|s| s.trim().to_owned()).collect();
    if items.iter().any(String::is_empty) {
        return Err(format!("`{key}` is a list of names separated by ';'"));
    }
    Ok(items)
}

/// `count`, or `FUNCTION(FIELD)` with sum, avg, min, max, first or last.
fn parse_aggregate(text: &str) -> Result<Aggregate, String> {
    if text == "count" {
        return Ok(Aggregate {
            function: Function::Count,
            field: None,
            name: "count".to_owned(),
        });
    }
    let invalid = || {
        format!(
            "aggregate {text:?}: use count, or sum, avg, min, max, first or last of a field, \
             as in avg(temperature), separated by ';'"
        )
    };
    let (function, rest) = text.split_once('(').ok_or_else(invalid)?;
    let field = rest.strip_suffix(')').ok_or_else(invalid)?.trim();
    if field.is_empty() {
        return Err(invalid());
    }
    let function = match function.trim() {
        "sum" => Function::Sum,
        "avg" => Function::Avg,
        "min" => Function::Min,
        "max" => Function::Max,
        "first" => Function::First,
        "last" => Function::Last,
        _ => return Err(invalid()),
    };
    Ok(Aggregate {
        name: format!("{}_{field}", function_name(function)),
        function,
        field: Some(field.to_owned()),
    })
}

fn function_name(function: Function) -> &'static str {
    match function {
        Function::Count => "count",
        Function::Sum => "sum",
        Function::Avg => "avg",
        Function::Min => "min",
        Function::Max => "max",
        Function::First => "first",
        Function::Last => "last",
    }
}

pub(crate) fn parse_ms(key: &str, text: &str) -> Result<i64, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("`{key}` = {text:?} is not a duration such as 1m or 500ms: {e}"))?;
    i64::try_from(duration.as_millis())
        .ok()
        .filter(|ms| *ms < i64::MAX / 4)
        .ok_or_else(|| format!("`{key}` = {text:?} is too long"))
}
