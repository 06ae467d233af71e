//! `flatten`: flattens the nested objects of each record's JSON value (or key) into one level
//! whose field names join the path with a delimiter, as Kafka Connect's `Flatten` does:
//! `{"a":{"b":1}}` becomes `{"a.b":1}`.
//!
//! Config: `delimiter=TEXT` (default `.`), `on=value` (default) or `on=key`. As in Kafka,
//! arrays and nulls are kept as they are and an empty nested object leaves no field. The value
//! (or key) must be a JSON object; a tombstone, or a record without a key for `on=key`, passes
//! unchanged.

use appliance_sdk::json::serde_json::{Map, Value};
use appliance_sdk::{BatchInfo, Config, Record, Transform, transform};

use appliance_sdk::Side;

#[transform]
#[derive(Debug)]
pub struct Flatten {
    side: Side,
    delimiter: String,
}

const KNOWN_KEYS: &[&str] = &["delimiter", "on"];

impl Transform for Flatten {
    fn init(config: Config) -> Result<Self, String> {
        config.only(KNOWN_KEYS)?;
        Ok(Self {
            side: Side::from_config(&config)?,
            delimiter: config.get("delimiter").unwrap_or(".").to_owned(),
        })
    }

    fn apply(&mut self, _: &BatchInfo, mut record: Record) -> Result<Option<Record>, String> {
        let Some(target) = self.side.read(&record)? else {
            return Ok(Some(record));
        };
        let Value::Object(object) = target else {
            return Err(format!("the {} is not a JSON object", self.side));
        };
        let mut flat = Map::new();
        self.flatten_into(&mut flat, "", object);
        self.side.write(&mut record, &Value::Object(flat));
        Ok(Some(record))
    }
}

impl Flatten {
    fn flatten_into(
        &self,
        flat: &mut Map<String, Value>,
        prefix: &str,
        object: Map<String, Value>,
    ) {
        for (name, field) in object {
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}{}{name}", self.delimiter)
            };
            match field {
                Value::Object(nested) => self.flatten_into(flat, &path, nested),
                leaf => {
                    flat.insert(path, leaf);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance_sdk::json::serde_json::json;

    fn flatten(config: &[(&str, &str)], record: Record) -> Result<Option<Record>, String> {
        let mut transform = Flatten::init(config.iter().copied().collect()).expect("valid config");
        let info = BatchInfo::new("t", 0);
        transform.apply(&info, record)
    }

    #[test]
    fn nested_objects_become_delimited_names() {
        let record = Record::from_value(
            json!({"a": {"b": 1, "c": {"d": [1, {"e": 2}]}}, "f": null, "g": {}, "h": "x"})
                .to_string(),
        );
        let out = flatten(&[], record.clone())
            .expect("applies")
            .expect("kept");
        assert_eq!(
            out.json_value(),
            Ok(Some(
                json!({"a.b": 1, "a.c.d": [1, {"e": 2}], "f": null, "h": "x"})
            ))
        );
        let out = flatten(&[("delimiter", "_")], record)
            .expect("applies")
            .expect("kept");
        assert_eq!(
            out.json_value(),
            Ok(Some(
                json!({"a_b": 1, "a_c_d": [1, {"e": 2}], "f": null, "h": "x"})
            ))
        );
    }

    #[test]
    fn key_side_tombstones_and_non_objects() {
        let mut record = Record::from_value("[]");
        record.key = Some(br#"{"id":{"site":"a","n":1}}"#.to_vec());
        let out = flatten(&[("on", "key")], record)
            .expect("applies")
            .expect("kept");
        assert_eq!(out.json_key(), Ok(Some(json!({"id.site": "a", "id.n": 1}))));

        let mut tombstone = Record::from_value("");
        tombstone.value = None;
        let out = flatten(&[], tombstone).expect("applies");
        assert_eq!(out.expect("kept").value, None);

        assert_eq!(
            flatten(&[], Record::from_value("[]")).expect_err("array"),
            "the value is not a JSON object"
        );
        assert!(
            Flatten::init([("on", "headers")].into_iter().collect())
                .expect_err("rejected")
                .contains("`on` is value or key")
        );
    }
}
