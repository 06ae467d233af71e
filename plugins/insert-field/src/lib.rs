//! `insert-field`: adds fields to each record's JSON value (or key) taken from the record's
//! metadata or a fixed string, as Kafka Connect's `InsertField` does.
//!
//! Config: any of `topic.field=PATH` (the record's topic: where an earlier transform re-routed
//! it, else the source topic), `partition.field=PATH` (the source partition),
//! `offset.field=PATH` (the record's offset), `timestamp.field=PATH` (the record's timestamp,
//! milliseconds since the Unix epoch) and `static.field=PATH` with `static.value=TEXT` (a
//! string); `on=value` (default) or `on=key`. Paths are dotted for nested fields, and objects
//! missing on the way are created. Kafka's `!` / `?` suffix on a field name (required /
//! optional in a schema) is accepted and has no effect on JSON. The value (or key) must be a
//! JSON object; a tombstone, or a record without a key for `on=key`, passes unchanged.

use appliance_sdk::json::{self, serde_json::Value};
use appliance_sdk::{BatchInfo, Config, Record, Transform, transform};

use appliance_sdk::Side;

#[transform]
#[derive(Debug)]
pub struct InsertField {
    side: Side,
    topic_field: Option<String>,
    partition_field: Option<String>,
    offset_field: Option<String>,
    timestamp_field: Option<String>,
    static_field: Option<(String, String)>,
}

const KNOWN_KEYS: &[&str] = &[
    "topic.field",
    "partition.field",
    "offset.field",
    "timestamp.field",
    "static.field",
    "static.value",
    "on",
];

impl Transform for InsertField {
    fn init(config: Config) -> Result<Self, String> {
        config.only(KNOWN_KEYS)?;
        let field_path = |key: &str| -> Result<Option<String>, String> {
            match config
                .get(key)
                .map(|name| name.trim_end_matches(['!', '?']))
            {
                Some("") => Err(format!("`{key}` takes a field name, not an empty one")),
                path => Ok(path.map(str::to_owned)),
            }
        };
        let static_field = match (field_path("static.field")?, config.get("static.value")) {
            (Some(path), Some(text)) => Some((path, text.to_owned())),
            (None, None) => None,
            (Some(_), None) => {
                return Err("`static.field` needs `static.value`, the text to insert".to_owned());
            }
            (None, Some(_)) => {
                return Err(
                    "`static.value` needs `static.field`, the field to insert it as".to_owned(),
                );
            }
        };
        let insert = Self {
            side: Side::from_config(&config)?,
            topic_field: field_path("topic.field")?,
            partition_field: field_path("partition.field")?,
            offset_field: field_path("offset.field")?,
            timestamp_field: field_path("timestamp.field")?,
            static_field,
        };
        if insert.topic_field.is_none()
            && insert.partition_field.is_none()
            && insert.offset_field.is_none()
            && insert.timestamp_field.is_none()
            && insert.static_field.is_none()
        {
            return Err("nothing to insert: give at least one of `topic.field`, \
                 `partition.field`, `offset.field`, `timestamp.field`, `static.field`"
                .to_owned());
        }
        Ok(insert)
    }

    fn apply(&mut self, info: &BatchInfo, mut record: Record) -> Result<Option<Record>, String> {
        let Some(mut target) = self.side.read_object(&record)? else {
            return Ok(Some(record));
        };
        let topic = record.topic.as_deref().unwrap_or(&info.topic);
        let insertions = [
            self.topic_field
                .as_ref()
                .map(|path| (path, Value::from(topic))),
            self.partition_field
                .as_ref()
                .map(|path| (path, Value::from(info.partition))),
            self.offset_field
                .as_ref()
                .map(|path| (path, Value::from(record.offset))),
            self.timestamp_field
                .as_ref()
                .map(|path| (path, Value::from(record.timestamp))),
            self.static_field
                .as_ref()
                .map(|(path, text)| (path, Value::from(text.as_str()))),
        ];
        for (path, field) in insertions.into_iter().flatten() {
            json::set(&mut target, path, field)?;
        }
        self.side.write(&mut record, &target);
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance_sdk::json::serde_json::json;

    fn insert_field(config: &[(&str, &str)]) -> InsertField {
        InsertField::init(config.iter().copied().collect()).expect("valid config")
    }

    fn info() -> BatchInfo {
        BatchInfo::new("orders", 3)
    }

    fn record(value: &str) -> Record {
        let mut record = Record::from_value(value);
        record.offset = 42;
        record.timestamp = 1_700_000_000_000;
        record
    }

    fn value_of(record: Option<Record>) -> Value {
        record
            .expect("record kept")
            .json_value()
            .expect("JSON value")
            .expect("not a tombstone")
    }

    #[test]
    fn inserts_metadata_and_a_static_string() {
        let mut insert = insert_field(&[
            ("topic.field", "meta.topic"),
            ("partition.field", "meta.partition"),
            ("offset.field", "meta.offset!"),
            ("timestamp.field", "ts?"),
            ("static.field", "source"),
            ("static.value", "edge-7"),
        ]);
        let out = insert
            .apply(&info(), record(r#"{"id":1}"#))
            .expect("applies");
        assert_eq!(
            value_of(out),
            json!({
                "id": 1,
                "meta": {"topic": "orders", "partition": 3, "offset": 42},
                "ts": 1_700_000_000_000_i64,
                "source": "edge-7",
            })
        );
    }

    #[test]
    fn topic_is_the_rerouted_one_when_an_earlier_transform_set_it() {
        let mut insert = insert_field(&[("topic.field", "topic")]);
        let mut rerouted = record("{}");
        rerouted.topic = Some("orders-eu".into());
        let out = insert.apply(&info(), rerouted).expect("applies");
        assert_eq!(value_of(out), json!({"topic": "orders-eu"}));
    }

    #[test]
    fn works_on_the_key_and_passes_tombstones_and_keyless_records() {
        let mut on_key = insert_field(&[("partition.field", "p"), ("on", "key")]);
        let mut keyed = record("{}");
        keyed.key = Some(br#"{"k":"a"}"#.to_vec());
        let out = on_key
            .apply(&info(), keyed)
            .expect("applies")
            .expect("kept");
        assert_eq!(
            out.json_key().expect("JSON key"),
            Some(json!({"k": "a", "p": 3}))
        );
        assert_eq!(out.value.as_deref(), Some(&b"{}"[..]));
        let keyless = on_key.apply(&info(), record("{}")).expect("applies");
        assert_eq!(keyless.expect("kept").key, None);

        let mut on_value = insert_field(&[("offset.field", "o")]);
        let mut tombstone = record("{}");
        tombstone.value = None;
        let out = on_value.apply(&info(), tombstone).expect("applies");
        assert_eq!(out.expect("kept").value, None);
    }

    #[test]
    fn non_objects_and_bad_config_are_errors() {
        let mut insert = insert_field(&[("offset.field", "o")]);
        assert!(
            insert
                .apply(&info(), record("[1]"))
                .expect_err("array")
                .contains("not a JSON object")
        );
        assert!(
            insert
                .apply(&info(), record("{oops"))
                .expect_err("not JSON")
                .contains("the value is not JSON")
        );
        let rejected = |config: &[(&str, &str)]| {
            InsertField::init(config.iter().copied().collect()).expect_err("rejected")
        };
        assert!(rejected(&[]).contains("nothing to insert"));
        assert!(rejected(&[("static.field", "s")]).contains("`static.value`"));
        assert!(rejected(&[("static.value", "v")]).contains("`static.field`"));
        assert!(rejected(&[("topic.field", "")]).contains("`topic.field`"));
        assert!(rejected(&[("topic.field", "t"), ("on", "both")]).contains("`on`"));
        assert!(
            rejected(&[("topic.field", "t"), ("colour", "x")]).contains("unknown key(s) colour")
        );
    }
}
