//! `filter`: drops the records whose field, header or key matches a condition, as Kafka
//! Connect's `Filter` drops the records its predicate matches; `action=keep` keeps only those
//! instead, and `invert=true` negates the condition.
//!
//! Config: what to look at, one of `field=PATH` (a field of the JSON value, dotted for nested
//! fields), `header=NAME`, or `key` (the whole key) / `key=PATH` (a field of a JSON key); then at
//! most one condition: `equals=V`, `not-equals=V`, `in=A|B|C`, `matches=REGEX` (the whole text),
//! `greater-than=N`, `less-than=N`; with none, the condition is "is present". Values compare
//! as text (a JSON string without its quotes, a number as written).

use appliance_sdk::json::{self, serde_json::Value};
use appliance_sdk::{BatchInfo, Config, Record, Transform, transform};
use regex_lite::Regex;

#[transform]
#[derive(Debug)]
pub struct Filter {
    target: Target,
    condition: Condition,
    keep_matching: bool,
    invert: bool,
}

#[derive(Debug)]
enum Target {
    Field(String),
    Header(String),
    Key(Option<String>),
}

#[derive(Debug)]
enum Condition {
    Present,
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    Matches(Regex),
    GreaterThan(f64),
    LessThan(f64),
}

const KEYS: &[&str] = &[
    "field",
    "header",
    "key",
    "equals",
    "not-equals",
    "in",
    "matches",
    "greater-than",
    "less-than",
    "action",
    "invert",
];

impl Transform for Filter {
    fn init(config: Config) -> Result<Self, String> {
        config.only(KEYS)?;
        let targets = [
            config.get("field").map(|p| Target::Field(p.to_owned())),
            config.get("header").map(|h| Target::Header(h.to_owned())),
            config
                .get("key")
                .map(|p| Target::Key((!p.is_empty()).then(|| p.to_owned()))),
        ];
        let mut targets = targets.into_iter().flatten();
        let target = targets
            .next()
            .ok_or("say what to test: `field=PATH`, `header=NAME` or `key` / `key=PATH`")?;
        if targets.next().is_some() {
            return Err("give only one of `field`, `header` and `key`".to_owned());
        }
        let number = |key: &str| -> Result<Option<f64>, String> {
            config
                .get(key)
                .map(|raw| {
                    finite(raw).ok_or_else(|| format!("`{key}` takes a number, not {raw:?}"))
                })
                .transpose()
        };
        let conditions = [
            config
                .get("equals")
                .map(|v| Condition::Equals(v.to_owned())),
            config
                .get("not-equals")
                .map(|v| Condition::NotEquals(v.to_owned())),
            config
                .get("in")
                .map(|_| Condition::In(config.list("in").into_iter().map(str::to_owned).collect())),
            config
                .get("matches")
                .map(|re| {
                    let invalid = |e: regex_lite::Error| {
                        format!("`matches` is not a regular expression: {e}")
                    };
                    // Compiled alone first: wrapped unchecked, `a)|(b` would be another regex.
                    Regex::new(re).map_err(invalid)?;
                    Regex::new(&format!("^(?:{re})$"))
                        .map(Condition::Matches)
                        .map_err(invalid)
                })
                .transpose()?,
            number("greater-than")?.map(Condition::GreaterThan),
            number("less-than")?.map(Condition::LessThan),
        ];
        let mut conditions = conditions.into_iter().flatten();
        let condition = conditions.next().unwrap_or(Condition::Present);
        if conditions.next().is_some() {
            return Err(
                "give at most one of `equals`, `not-equals`, `in`, `matches`, `greater-than`, `less-than`"
                    .to_owned(),
            );
        }
        let keep_matching = match config.get("action").unwrap_or("drop") {
            "drop" => false,
            "keep" => true,
            other => return Err(format!("`action` is drop or keep, not {other:?}")),
        };
        Ok(Self {
            target,
            condition,
            keep_matching,
            invert: config.flag("invert", false)?,
        })
    }

    fn apply(&mut self, _: &BatchInfo, record: Record) -> Result<Option<Record>, String> {
        let matched = self.matches(&record)? != self.invert;
        Ok((matched == self.keep_matching).then_some(record))
    }
}

impl Filter {
    fn matches(&self, record: &Record) -> Result<bool, String> {
        match &self.target {
            Target::Header(name) => Ok(record
                .header(name)
                .is_some_and(|v| self.test_text(&String::from_utf8_lossy(v), None))),
            Target::Key(None) => Ok(record
                .key
                .as_deref()
                .is_some_and(|k| self.test_text(&String::from_utf8_lossy(k), None))),
            Target::Key(Some(path)) => match &record.key {
                None => Ok(false),
                Some(key) => {
                    let field = json::lookup(key, path).map_err(|e| format!("key is {e}"))?;
                    Ok(self.test_json(field))
                }
            },
            Target::Field(path) => match &record.value {
                None => Ok(false),
                Some(value) => Ok(self.test_json(json::lookup(value, path)?)),
            },
        }
    }

    fn test_json(&self, field: Option<Value>) -> bool {
        match field {
            None | Some(Value::Null) => false,
            Some(Value::String(text)) => self.test_text(&text, None),
            Some(Value::Number(number)) if self.is_numeric() => self.test_text("", number.as_f64()),
            Some(other) => self.test_text(&json::to_plain_string(&other), None),
        }
    }

    fn is_numeric(&self) -> bool {
        matches!(
            self.condition,
            Condition::GreaterThan(_) | Condition::LessThan(_)
        )
    }

    /// Tests a present field, header or key: as text, or as `number` when the JSON field is
    /// a number and the condition compares numbers. Text equal as numbers is equal (`2.50`
    /// and `2.5`: JSON numbers do not keep how they were written).
    fn test_text(&self, text: &str, number: Option<f64>) -> bool {
        let number = || number.or_else(|| finite(text));
        let same = |expected: &str| {
            text == expected || finite(expected).is_some_and(|n| finite(text) == Some(n))
        };
        match &self.condition {
            Condition::Present => true,
            Condition::Equals(v) => same(v),
            Condition::NotEquals(v) => !same(v),
            Condition::In(set) => set.iter().any(|v| same(v)),
            Condition::Matches(re) => re.is_match(text),
            Condition::GreaterThan(n) => number().is_some_and(|x| x > *n),
            Condition::LessThan(n) => number().is_some_and(|x| x < *n),
        }
    }
}

/// `text` as a finite number (`NaN` and infinities are not numbers to compare).
fn finite(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(config: &[(&str, &str)], values: &[&str]) -> Vec<String> {
        let mut filter = Filter::init(config.iter().copied().collect()).unwrap();
        let info = BatchInfo::new("t", 0);
        let records = values.iter().map(|v| Record::from_value(*v)).collect();
        filter
            .process(&info, records)
            .unwrap()
            .into_iter()
            .map(|r| String::from_utf8(r.value.unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn drops_matching_records_by_default_and_keeps_them_on_request() {
        let values = [r#"{"t":10}"#, r#"{"t":40}"#, r#"{"x":1}"#];
        assert_eq!(
            run(&[("field", "t"), ("greater-than", "30")], &values),
            [r#"{"t":10}"#, r#"{"x":1}"#]
        );
        assert_eq!(
            run(
                &[("field", "t"), ("greater-than", "30"), ("action", "keep")],
                &values
            ),
            [r#"{"t":40}"#]
        );
        assert_eq!(
            run(
                &[("field", "t"), ("action", "keep"), ("invert", "true")],
                &values
            ),
            [r#"{"x":1}"#]
        );
    }

    #[test]
    fn numbers_equal_as_numbers_whatever_their_text() {
        let values = [r#"{"v":2.50}"#, r#"{"v":"2.5"}"#, r#"{"v":3}"#];
        assert_eq!(
            run(&[("field", "v"), ("equals", "2.50")], &values),
            [r#"{"v":3}"#]
        );
        assert_eq!(
            run(&[("field", "v"), ("in", "1|3.0")], &values),
            [r#"{"v":2.50}"#, r#"{"v":"2.5"}"#]
        );
    }

    #[test]
    fn nested_fields_text_conditions_and_headers() {
        let values = [r#"{"a":{"s":"ok"}}"#, r#"{"a":{"s":"bad"}}"#];
        assert_eq!(
            run(&[("field", "a.s"), ("equals", "bad")], &values),
            [r#"{"a":{"s":"ok"}}"#]
        );
        assert_eq!(
            run(
                &[("field", "a.s"), ("in", "x|ok"), ("action", "keep")],
                &values
            ),
            [r#"{"a":{"s":"ok"}}"#]
        );
        assert_eq!(
            run(&[("field", "a.s"), ("matches", "b.*")], &values),
            [r#"{"a":{"s":"ok"}}"#]
        );
        let mut filter =
            Filter::init([("header", "h"), ("equals", "1")].into_iter().collect()).unwrap();
        let info = BatchInfo::new("t", 0);
        let mut tagged = Record::from_value("x");
        tagged.add_header("h", "1");
        assert!(filter.apply(&info, tagged).unwrap().is_none());
        assert!(
            filter
                .apply(&info, Record::from_value("y"))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn bad_config_and_non_json_values_are_errors() {
        assert!(
            Filter::init(Config::default())
                .unwrap_err()
                .contains("say what to test")
        );
        assert!(
            Filter::init(
                [("field", "a"), ("greater-than", "NaN")]
                    .into_iter()
                    .collect()
            )
            .is_err()
        );
        assert!(
            Filter::init(
                [("field", "a"), ("greater-than", "x")]
                    .into_iter()
                    .collect()
            )
            .is_err()
        );
        assert!(
            Filter::init([("field", "a"), ("colour", "x")].into_iter().collect())
                .unwrap_err()
                .contains("unknown key(s) colour")
        );
        let mut filter = Filter::init([("field", "a")].into_iter().collect()).unwrap();
        let info = BatchInfo::new("t", 0);
        assert!(
            filter
                .apply(&info, Record::from_value("not json"))
                .unwrap_err()
                .contains("not JSON")
        );
    }
}
