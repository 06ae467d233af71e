//! `extract-field`: replaces each record's JSON value (or key) with one of its fields, as
//! Kafka Connect's `ExtractField` does.
//!
//! Config: `field=PATH` (required; dotted for a nested field), `on=value` (default) or
//! `on=key`. The value (or key) must be a JSON object holding the field; a null field gives
//! the JSON value `null`. A tombstone, or a record without a key for `on=key`, passes unchanged.

use appliance_sdk::json;
use appliance_sdk::{BatchInfo, Config, Record, Transform, transform};

use appliance_sdk::Side;

#[transform]
#[derive(Debug)]
pub struct ExtractField {
    side: Side,
    field: String,
}

const KNOWN_KEYS: &[&str] = &["field", "on"];

impl Transform for ExtractField {
    fn init(config: Config) -> Result<Self, String> {
        config.only(KNOWN_KEYS)?;
        let field = config.require("field", "the field that becomes the whole value or key")?;
        if field.is_empty() {
            return Err("`field` takes a field name, not an empty one".to_owned());
        }
        Ok(Self {
            side: Side::from_config(&config)?,
            field: field.to_owned(),
        })
    }

    fn apply(&mut self, _: &BatchInfo, mut record: Record) -> Result<Option<Record>, String> {
        let Some(target) = self.side.read_object(&record)? else {
            return Ok(Some(record));
        };
        let extracted = json::get(&target, &self.field)
            .ok_or_else(|| format!("the {} has no field `{}`", self.side, self.field))?;
        self.side.write(&mut record, extracted);
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

    fn extract(config: &[(&str, &str)]) -> ExtractField {
        ExtractField::init(config.iter().copied().collect()).expect("valid config")
    }

    #[test]
    fn the_field_replaces_the_whole_value_or_key() {
        let mut transform = extract(&[("field", "payload.after")]);
        let out = transform
            .apply(
                &info(),
                Record::from_value(r#"{"payload":{"after":{"id":1}},"op":"c"}"#),
            )
            .expect("applies")
            .expect("kept");
        assert_eq!(out.json_value(), Ok(Some(json!({"id": 1}))));

        let mut on_key = extract(&[("field", "id"), ("on", "key")]);
        let mut record = Record::from_value("x");
        record.key = Some(br#"{"id":"abc"}"#.to_vec());
        let out = on_key
            .apply(&info(), record)
            .expect("applies")
            .expect("kept");
        assert_eq!(out.key.as_deref(), Some(&br#""abc""#[..]));
        assert_eq!(out.value.as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn missing_fields_and_non_objects_are_errors_and_tombstones_pass() {
        let mut transform = extract(&[("field", "id")]);
        assert_eq!(
            transform
                .apply(&info(), Record::from_value(r#"{"x":1}"#))
                .expect_err("no id"),
            "the value has no field `id`"
        );
        assert_eq!(
            transform
                .apply(&info(), Record::from_value("[1]"))
                .expect_err("an array"),
            "the value is not a JSON object"
        );
        let out = transform
            .apply(&info(), Record::from_value(r#"{"id":null}"#))
            .expect("applies")
            .expect("kept");
        assert_eq!(out.value.as_deref(), Some(&b"null"[..]));
        let mut tombstone = Record::from_value("");
        tombstone.value = None;
        let out = transform.apply(&info(), tombstone).expect("applies");
        assert_eq!(out.expect("kept").value, None);
        assert!(
            ExtractField::init(Config::default())
                .expect_err("rejected")
                .contains("missing required key `field`")
        );
    }
}
