//! `hoist-field`: wraps each record's JSON value (or key) in an object under one field, as
//! Kafka Connect's `HoistField` does.
//!
//! Config: `field=PATH` (required; dotted to wrap in nested objects: `field=a.b` gives
//! `{"a":{"b":…}}`), `on=value` (default) or `on=key`. Any JSON value can be wrapped. A
//! tombstone, or a record without a key for `on=key`, passes unchanged.

use appliance_sdk::json::{
    self,
    serde_json::{Map, Value},
};
use appliance_sdk::{BatchInfo, Config, Record, Transform, transform};

use appliance_sdk::Side;

#[transform]
#[derive(Debug)]
pub struct HoistField {
    side: Side,
    field: String,
}

const KNOWN_KEYS: &[&str] = &["field", "on"];

impl Transform for HoistField {
    fn init(config: Config) -> Result<Self, String> {
        config.only(KNOWN_KEYS)?;
        let field = config.require("field", "the field to wrap the value or key in")?;
        if field.is_empty() {
            return Err("`field` takes a field name, not an empty one".to_owned());
        }
        Ok(Self {
            side: Side::from_config(&config)?,
            field: field.to_owned(),
        })
    }

    fn apply(&mut self, _: &BatchInfo, mut record: Record) -> Result<Option<Record>, String> {
        let Some(inner) = self.side.read(&record)? else {
            return Ok(Some(record));
        };
        let mut wrapped = Value::Object(Map::new());
        json::set(&mut wrapped, &self.field, inner)?;
        self.side.write(&mut record, &wrapped);
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance_sdk::json::serde_json::json;

    fn info() -> BatchInfo {
        BatchInfo::new("t", 0)
    }

    fn hoist(config: &[(&str, &str)]) -> HoistField {
        HoistField::init(config.iter().copied().collect()).expect("valid config")
    }

    #[test]
    fn wraps_any_value_or_key() {
        let mut transform = hoist(&[("field", "reading")]);
        let out = transform
            .apply(&info(), Record::from_value("21.5"))
            .expect("applies")
            .expect("kept");
        assert_eq!(out.json_value(), Ok(Some(json!({"reading": 21.5}))));

        let mut nested = hoist(&[("field", "data.payload")]);
        let out = nested
            .apply(&info(), Record::from_value(r#"{"a":[1]}"#))
            .expect("applies")
            .expect("kept");
        assert_eq!(
            out.json_value(),
            Ok(Some(json!({"data": {"payload": {"a": [1]}}})))
        );

        let mut on_key = hoist(&[("field", "id"), ("on", "key")]);
        let mut record = Record::from_value("v");
        record.key = Some(br#""sensor-1""#.to_vec());
        let out = on_key
            .apply(&info(), record)
            .expect("applies")
            .expect("kept");
        assert_eq!(out.json_key(), Ok(Some(json!({"id": "sensor-1"}))));
    }

    #[test]
    fn tombstones_pass_and_errors_name_the_problem() {
        let mut transform = hoist(&[("field", "f")]);
        let mut tombstone = Record::from_value("");
        tombstone.value = None;
        let out = transform.apply(&info(), tombstone).expect("applies");
        assert_eq!(out.expect("kept").value, None);
        assert!(
            transform
                .apply(&info(), Record::from_value("plain text"))
                .expect_err("not JSON")
                .starts_with("the value is not JSON")
        );
        assert!(
            HoistField::init(Config::default())
                .expect_err("rejected")
                .contains("missing required key `field`")
        );
    }
}
