//! `value-to-key`: replaces each record's key with a JSON object of fields taken from its JSON
//! value, as Kafka Connect's `ValueToKey` does.
//!
//! Config: `fields=A|B` (required; dotted paths for nested fields, which keep their nesting in
//! the key: `fields=a.b` gives the key `{"a":{"b":…}}`). Every field must be present in the
//! value (a null one is copied as null); the value must be a JSON object. A tombstone passes
//! unchanged, its key untouched.

use appliance_sdk::json::{
    self,
    serde_json::{Map, Value},
};
use appliance_sdk::{BatchInfo, Config, Record, Transform, transform};

#[transform]
#[derive(Debug)]
pub struct ValueToKey {
    fields: Vec<String>,
}

const KNOWN_KEYS: &[&str] = &["fields"];

impl Transform for ValueToKey {
    fn init(config: Config) -> Result<Self, String> {
        config.only(KNOWN_KEYS)?;
        let fields: Vec<String> = config
            .list("fields")
            .into_iter()
            .map(str::to_owned)
            .collect();
        if fields.is_empty() {
            return Err(
                "missing required key `fields` (the value's fields that make the key, separated by `|`)"
                    .to_owned(),
            );
        }
        Ok(Self { fields })
    }

    fn apply(&mut self, _: &BatchInfo, mut record: Record) -> Result<Option<Record>, String> {
        let Some(value) = record
            .json_value()
            .map_err(|e| format!("the value is {e}"))?
        else {
            return Ok(Some(record));
        };
        if !value.is_object() {
            return Err("the value is not a JSON object".to_owned());
        }
        let mut key = Value::Object(Map::new());
        for path in &self.fields {
            let field = json::get(&value, path)
                .ok_or_else(|| format!("the value has no field `{path}` to put in the key"))?;
            json::set(&mut key, path, field.clone())?;
        }
        record.set_json_key(&key);
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

    fn value_to_key(fields: &str) -> ValueToKey {
        ValueToKey::init([("fields", fields)].into_iter().collect()).expect("valid config")
    }

    #[test]
    fn the_key_becomes_an_object_of_the_named_fields() {
        let mut transform = value_to_key("id|site.region|gone");
        let mut record = Record::from_value(
            r#"{"id":7,"site":{"region":"eu","rack":2},"gone":null,"reading":1.5}"#,
        );
        record.key = Some(b"old".to_vec());
        let out = transform
            .apply(&info(), record)
            .expect("applies")
            .expect("kept");
        assert_eq!(
            out.json_key(),
            Ok(Some(
                json!({"id": 7, "site": {"region": "eu"}, "gone": null})
            ))
        );
        assert_eq!(
            out.json_value().expect("JSON").expect("value")["reading"],
            json!(1.5)
        );
    }

    #[test]
    fn missing_fields_non_objects_and_tombstones() {
        let mut transform = value_to_key("id");
        assert_eq!(
            transform
                .apply(&info(), Record::from_value(r#"{"x":1}"#))
                .expect_err("no id"),
            "the value has no field `id` to put in the key"
        );
        assert_eq!(
            transform
                .apply(&info(), Record::from_value("5"))
                .expect_err("a number"),
            "the value is not a JSON object"
        );
        assert!(
            transform
                .apply(&info(), Record::from_value("{"))
                .expect_err("not JSON")
                .starts_with("the value is not JSON")
        );
        let mut tombstone = Record::from_value("");
        tombstone.value = None;
        tombstone.key = Some(b"k".to_vec());
        let out = transform
            .apply(&info(), tombstone)
            .expect("applies")
            .expect("kept");
        assert_eq!(out.key.as_deref(), Some(&b"k"[..]));
        assert!(
            ValueToKey::init(Config::default())
                .expect_err("rejected")
                .contains("`fields`")
        );
    }
}
