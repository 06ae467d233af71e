//! `timestamp-converter`: converts a timestamp in each record's JSON value (or key) between
//! text, Unix time and epoch milliseconds, as Kafka Connect's `TimestampConverter` does.
//!
//! Config: `target.type` (required): `string` (text in `format`), `unix` (an integer in
//! `unix.precision`), or `Timestamp`, `Date`, `Time`, which JSON has no type for and which are
//! therefore the epoch milliseconds Kafka's `java.util.Date` holds for them: the instant, the
//! instant's day at midnight UTC, and the time of day on 1970-01-01. `field=PATH` (dotted for
//! a nested field) is the timestamp to convert; without it the whole value (or key) is, as in
//! Kafka. `format` is a Java `SimpleDateFormat` pattern, e.g. `yyyy-MM-dd HH:mm:ss`, read in
//! UTC; it is required for `target.type=string` and for converting text. `unix.precision` is
//! `seconds`, `milliseconds` (default), `microseconds` or `nanoseconds`. `on=value` (default) or
//! `on=key`.
//!
//! The input's type says how to read it: text is parsed with `format` (fields the pattern lacks
//! are those of 1970-01-01 00:00:00 UTC, and the whole text must match), an integer is Unix time
//! in `unix.precision`. A null timestamp stays null; an absent field is an error. A tombstone,
//! or a record without a key for `on=key`, passes unchanged.

use std::fmt::Write as _;

use appliance_sdk::json::{self, serde_json::Value};
use appliance_sdk::{BatchInfo, Config, Record, Transform, transform};
use chrono::format::{Item, Parsed, parse};
use chrono::{DateTime, NaiveTime, Timelike, Utc};

use appliance_sdk::Side;

#[transform]
#[derive(Debug)]
pub struct TimestampConverter {
    side: Side,
    field: Option<String>,
    target: TargetType,
    /// How text timestamps read, when given.
    format: Option<DateFormat>,
    precision: UnixPrecision,
}

#[derive(Debug)]
enum TargetType {
    String(DateFormat),
    Unix,
    Timestamp,
    Date,
    Time,
}

#[derive(Debug, Clone, Copy)]
enum UnixPrecision {
    Seconds,
    Milliseconds,
    Microseconds,
    Nanoseconds,
}

#[derive(Debug, Clone)]
struct DateFormat {
    pattern: String,
    items: Vec<Item<'static>>,
}

const KNOWN_KEYS: &[&str] = &["field", "target.type", "format", "unix.precision", "on"];

impl Transform for TimestampConverter {
    fn init(config: Config) -> Result<Self, String> {
        config.only(KNOWN_KEYS)?;
        let format = config
            .get("format")
            .map(|pattern| {
                appliance_sdk::java_date_format::translate(pattern)
                    .map(|items| DateFormat {
                        pattern: pattern.to_owned(),
                        items,
                    })
                    .map_err(|e| format!("`format`: {e}"))
            })
            .transpose()?;
        let target = match config
            .require("target.type", "string, unix, Timestamp, Date or Time")?
            .to_ascii_lowercase()
            .as_str()
        {
            "string" => TargetType::String(format.clone().ok_or(
                "`target.type=string` needs `format`, a Java date pattern such as yyyy-MM-dd HH:mm:ss",
            )?),
            "unix" => TargetType::Unix,
            "timestamp" => TargetType::Timestamp,
            "date" => TargetType::Date,
            "time" => TargetType::Time,
            other => {
                return Err(format!(
                    "`target.type` is string, unix, Timestamp, Date or Time, not {other:?}"
                ));
            }
        };
        let precision = match config.get("unix.precision").unwrap_or("milliseconds") {
            "seconds" => UnixPrecision::Seconds,
            "milliseconds" => UnixPrecision::Milliseconds,
            "microseconds" => UnixPrecision::Microseconds,
            "nanoseconds" => UnixPrecision::Nanoseconds,
            other => {
                return Err(format!(
                    "`unix.precision` is seconds, milliseconds, microseconds or nanoseconds, \
                     not {other:?}"
                ));
            }
        };
        let field = match config.get("field") {
            None | Some("") => None,
            Some(path) => Some(path.to_owned()),
        };
        Ok(Self {
            side: Side::from_config(&config)?,
            field,
            target,
            format,
            precision,
        })
    }

    fn apply(&mut self, _: &BatchInfo, mut record: Record) -> Result<Option<Record>, String> {
        let Some(mut target) = self.side.read(&record)? else {
            return Ok(Some(record));
        };
        match &self.field {
            None => {
                target = self
                    .convert(&target)
                    .map_err(|e| format!("the {}: {e}", self.side))?;
            }
            Some(path) => {
                if !target.is_object() {
                    return Err(format!("the {} is not a JSON object", self.side));
                }
                let field = json::get_mut(&mut target, path)
                    .ok_or_else(|| format!("the {} has no field `{path}`", self.side))?;
                *field = self
                    .convert(field)
                    .map_err(|e| format!("field `{path}`: {e}"))?;
            }
        }
        self.side.write(&mut record, &target);
        Ok(Some(record))
    }
}

impl TimestampConverter {
    fn convert(&self, timestamp: &Value) -> Result<Value, String> {
        let instant = match timestamp {
            Value::Null => return Ok(Value::Null),
            Value::String(text) => self.parse(text)?,
            Value::Number(number) => {
                let units = number.as_i64().ok_or_else(|| {
                    format!(
                        "{number} is not an integer, so not Unix time in {}",
                        self.precision
                    )
                })?;
                self.precision.instant_of(units).ok_or_else(|| {
                    format!("{units} {} is out of the range of dates", self.precision)
                })?
            }
            other => {
                return Err(format!(
                    "{other} is not a timestamp (text or an integer of Unix time)"
                ));
            }
        };
        match &self.target {
            TargetType::String(format) => format.write(instant).map(Value::String),
            TargetType::Unix => self
                .precision
                .units_of(instant)
                .map(Value::from)
                .ok_or_else(|| {
                    format!(
                        "{instant} is out of range for Unix time in {}",
                        self.precision
                    )
                }),
            TargetType::Timestamp => Ok(Value::from(instant.timestamp_millis())),
            TargetType::Date => Ok(Value::from(
                instant
                    .date_naive()
                    .and_time(NaiveTime::MIN)
                    .and_utc()
                    .timestamp_millis(),
            )),
            TargetType::Time => Ok(Value::from(
                i64::from(instant.num_seconds_from_midnight()) * 1000
                    + i64::from(instant.nanosecond() / 1_000_000),
            )),
        }
    }

    fn parse(&self, text: &str) -> Result<DateTime<Utc>, String> {
        let format = self.format.as_ref().ok_or_else(|| {
            format!("{text:?} is text; set `format` to the Java date pattern it is written in")
        })?;
        // chrono reads a zone name and drops it; reading the time as UTC would be off by hours.
        if format
            .items
            .iter()
            .any(|item| matches!(item, Item::Fixed(chrono::format::Fixed::TimezoneName)))
        {
            return Err(format!(
                "`format` {:?} has a time-zone name (`z`), which cannot be read back; use an \
                 offset (`Z` or `X`) to convert text",
                format.pattern
            ));
        }
        let mut parsed = Parsed::new();
        parse(&mut parsed, text, format.items.iter())
            .and_then(|()| resolve_like_simple_date_format(parsed))
            .map_err(|e| format!("{text:?} does not match `format` {:?}: {e}", format.pattern))
    }
}

/// The instant of parsed fields, reading those the pattern lacks as SimpleDateFormat does: as
/// the fields of 1970-01-01 00:00:00 UTC.
fn resolve_like_simple_date_format(mut parsed: Parsed) -> chrono::ParseResult<DateTime<Utc>> {
    if parsed.year().is_none() && parsed.year_mod_100().is_none() {
        parsed.set_year(1970)?;
    }
    if parsed.ordinal().is_none() {
        if parsed.month().is_none() {
            parsed.set_month(1)?;
        }
        if parsed.day().is_none() {
            parsed.set_day(1)?;
        }
    }
    // Hours are a half-day (AM/PM) and an hour of it, which `h` alone or `a` alone leave half
    // set: the half-day defaults to AM and the hour to 12, the half-day's first hour.
    if parsed.hour_div_12().is_none() {
        parsed.set_ampm(false)?;
    }
    if parsed.hour_mod_12().is_none() {
        parsed.set_hour12(12)?;
    }
    if parsed.minute().is_none() {
        parsed.set_minute(0)?;
    }
    if parsed.second().is_none() {
        parsed.set_second(0)?;
    }
    if parsed.offset().is_none() {
        parsed.set_offset(0)?;
    }
    Ok(parsed.to_datetime()?.to_utc())
}

impl DateFormat {
    fn write(&self, instant: DateTime<Utc>) -> Result<String, String> {
        let mut text = String::new();
        write!(text, "{}", instant.format_with_items(self.items.iter()))
            .map_err(|_| format!("cannot write {instant} in `format` {:?}", self.pattern))?;
        Ok(text)
    }
}

impl UnixPrecision {
    fn instant_of(self, units: i64) -> Option<DateTime<Utc>> {
        match self {
            Self::Seconds => DateTime::from_timestamp(units, 0),
            Self::Milliseconds => DateTime::from_timestamp_millis(units),
            Self::Microseconds => DateTime::from_timestamp_micros(units),
            Self::Nanoseconds => Some(DateTime::from_timestamp_nanos(units)),
        }
    }

    fn units_of(self, instant: DateTime<Utc>) -> Option<i64> {
        match self {
            Self::Seconds => Some(instant.timestamp()),
            Self::Milliseconds => Some(instant.timestamp_millis()),
            Self::Microseconds => Some(instant.timestamp_micros()),
            Self::Nanoseconds => instant.timestamp_nanos_opt(),
        }
    }
}

impl std::fmt::Display for UnixPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Seconds => "seconds",
            Self::Milliseconds => "milliseconds",
            Self::Microseconds => "microseconds",
            Self::Nanoseconds => "nanoseconds",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance_sdk::json::serde_json::json;

    /// 2024-03-01T12:00:05.007Z
    const MILLIS: i64 = 1_709_294_405_007;

    fn convert(config: &[(&str, &str)], value: Value) -> Result<Value, String> {
        appliance_sdk::testing::apply_to_json::<TimestampConverter>(config, &value)
    }

    #[test]
    fn unix_time_becomes_text_and_back() {
        let to_text = [
            ("field", "ts"),
            ("target.type", "string"),
            ("format", "yyyy-MM-dd HH:mm:ss.SSS"),
        ];
        assert_eq!(
            convert(&to_text, json!({"ts": MILLIS, "id": 1})),
            Ok(json!({"ts": "2024-03-01 12:00:05.007", "id": 1}))
        );
        let to_unix = [
            ("field", "ts"),
            ("target.type", "unix"),
            ("format", "yyyy-MM-dd HH:mm:ss.SSS"),
        ];
        assert_eq!(
            convert(&to_unix, json!({"ts": "2024-03-01 12:00:05.007"})),
            Ok(json!({"ts": MILLIS}))
        );
        assert_eq!(
            convert(
                &[
                    ("target.type", "unix"),
                    ("format", "yyyy-MM-dd'T'HH:mm:ssXXX")
                ],
                json!("2024-03-01T14:00:05+02:00")
            ),
            Ok(json!(MILLIS / 1000 * 1000))
        );
    }

    #[test]
    fn unix_precision_applies_to_input_and_output() {
        let seconds = [("target.type", "unix"), ("unix.precision", "seconds")];
        assert_eq!(
            convert(&seconds, json!(1_709_294_405)),
            Ok(json!(1_709_294_405))
        );
        let micros = [
            ("target.type", "string"),
            ("format", "HH:mm:ss.SSSSSS"),
            ("unix.precision", "microseconds"),
        ];
        assert_eq!(
            convert(&micros, json!(1_709_294_405_007_123_i64)),
            Ok(json!("12:00:05.007123"))
        );
        let nanos = [("target.type", "unix"), ("unix.precision", "nanoseconds")];
        assert_eq!(
            convert(&nanos, json!(-1)),
            Ok(json!(-1)),
            "before the epoch"
        );
    }

    #[test]
    fn timestamp_date_and_time_are_epoch_milliseconds() {
        let value = json!({"at": MILLIS});
        let to = |target: &str| convert(&[("field", "at"), ("target.type", target)], value.clone());
        assert_eq!(to("Timestamp"), Ok(json!({"at": MILLIS})));
        assert_eq!(to("Date"), Ok(json!({"at": 1_709_251_200_000_i64})));
        assert_eq!(to("Time"), Ok(json!({"at": 43_205_007})));
    }

    #[test]
    fn fields_missing_from_the_pattern_are_those_of_the_epoch() {
        let config = [("target.type", "unix"), ("format", "yyyy-MM-dd")];
        assert_eq!(
            convert(&config, json!("2024-03-01")),
            Ok(json!(1_709_251_200_000_i64))
        );
        let config = [("target.type", "unix"), ("format", "HH:mm")];
        assert_eq!(convert(&config, json!("01:30")), Ok(json!(5_400_000)));
        let config = [("target.type", "unix"), ("format", "yyyy-MM-dd h a")];
        assert_eq!(
            convert(&config, json!("1970-01-01 12 PM")),
            Ok(json!(43_200_000))
        );
        assert_eq!(convert(&config, json!("1970-01-01 12 AM")), Ok(json!(0)));
    }

    #[test]
    fn nulls_stay_and_other_inputs_are_errors() {
        let config = [("field", "ts"), ("target.type", "Timestamp")];
        assert_eq!(
            convert(&config, json!({"ts": null})),
            Ok(json!({"ts": null}))
        );
        assert_eq!(
            convert(&config, json!({"other": 1})),
            Err("the value has no field `ts`".to_owned())
        );
        assert!(
            convert(&config, json!({"ts": "2024-03-01"}))
                .expect_err("text without format")
                .contains("set `format`")
        );
        assert!(
            convert(&config, json!({"ts": 1.5}))
                .expect_err("not an integer")
                .contains("not an integer")
        );
        assert!(
            convert(&config, json!({"ts": [1]}))
                .expect_err("array")
                .contains("not a timestamp")
        );
        let with_format = [("target.type", "unix"), ("format", "yyyy-MM-dd")];
        assert!(
            convert(&with_format, json!("2024-03-01 trailing"))
                .expect_err("trailing text")
                .contains("does not match `format` \"yyyy-MM-dd\"")
        );
        assert!(
            convert(&with_format, json!("2024-02-30"))
                .expect_err("no such day")
                .contains("does not match")
        );
    }

    #[test]
    fn zone_names_are_written_but_not_read() {
        let with_zone = [("target.type", "unix"), ("format", "yyyy-MM-dd HH:mm:ss z")];
        let read = convert(&with_zone, json!("2024-03-01 12:00:05 PST"));
        assert!(read.unwrap_err().contains("time-zone name"));
    }

    #[test]
    fn key_side_tombstones_and_config_errors() {
        let info = BatchInfo::new("t", 0);
        let mut on_key = TimestampConverter::init(
            [
                ("target.type", "unix"),
                ("unix.precision", "seconds"),
                ("on", "key"),
            ]
            .into_iter()
            .collect(),
        )
        .expect("valid config");
        let mut tombstone = Record::from_value("");
        tombstone.value = None;
        tombstone.key = Some(b"1709294405".to_vec());
        let out = on_key
            .apply(&info, tombstone)
            .expect("applies")
            .expect("kept");
        assert_eq!(out.json_key(), Ok(Some(json!(1_709_294_405))));
        assert_eq!(out.value, None);

        let rejected = |config: &[(&str, &str)]| {
            TimestampConverter::init(config.iter().copied().collect()).expect_err("rejected")
        };
        assert!(rejected(&[]).contains("missing required key `target.type`"));
        assert!(rejected(&[("target.type", "instant")]).contains("`target.type` is string"));
        assert!(rejected(&[("target.type", "string")]).contains("needs `format`"));
        assert!(rejected(&[("target.type", "unix"), ("format", "yyyy-ww")]).contains("`format`"));
        assert!(
            rejected(&[("target.type", "unix"), ("unix.precision", "minutes")])
                .contains("`unix.precision`")
        );
    }
}
