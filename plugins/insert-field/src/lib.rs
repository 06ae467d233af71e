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
//!
//! When every inserted field is a distinct top-level name, the record's bytes are rewritten
//! without building the document: a field already there has its value replaced where it
//! stands, a new one is added after the last field, and every other byte is kept. Dotted
//! paths, which may create objects on the way, go through the parsed document.

use appliance_sdk::json::{self, serde_json::Value};
use appliance_sdk::{BatchInfo, Config, Record, Transform, transform};

use appliance_sdk::Side;

#[transform]
#[derive(Debug, Clone)]
pub struct InsertField {
    side: Side,
    topic_field: Option<String>,
    partition_field: Option<String>,
    offset_field: Option<String>,
    timestamp_field: Option<String>,
    static_field: Option<(String, String)>,
    /// Every path is a top-level name and no two are the same: the bytes can be rewritten.
    in_place: bool,
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
        let mut insert = Self {
            side: Side::from_config(&config)?,
            topic_field: field_path("topic.field")?,
            partition_field: field_path("partition.field")?,
            offset_field: field_path("offset.field")?,
            timestamp_field: field_path("timestamp.field")?,
            static_field,
            in_place: false,
        };
        let paths = insert.paths();
        if paths.is_empty() {
            return Err("nothing to insert: give at least one of `topic.field`, \
                 `partition.field`, `offset.field`, `timestamp.field`, `static.field`"
                .to_owned());
        }
        let distinct: std::collections::HashSet<&str> = paths.iter().copied().collect();
        insert.in_place =
            distinct.len() == paths.len() && paths.iter().all(|path| !path.contains('.'));
        Ok(insert)
    }

    fn apply(&mut self, info: &BatchInfo, mut record: Record) -> Result<Option<Record>, String> {
        if self.in_place
            && let Some(bytes) = self.side.bytes(&record)
            && let Some(rewritten) = insert_in_place(bytes, &self.insertions(info, &record))
        {
            self.side.set_bytes(&mut record, rewritten);
            return Ok(Some(record));
        }
        self.apply_to_document(info, record)
    }
}

impl InsertField {
    fn paths(&self) -> Vec<&str> {
        [
            self.topic_field.as_deref(),
            self.partition_field.as_deref(),
            self.offset_field.as_deref(),
            self.timestamp_field.as_deref(),
            self.static_field.as_ref().map(|(path, _)| path.as_str()),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The fields to insert, in the order they are set.
    fn insertions(&self, info: &BatchInfo, record: &Record) -> Vec<(&str, Value)> {
        let topic = record.topic.as_deref().unwrap_or(&info.topic);
        [
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
        ]
        .into_iter()
        .flatten()
        .map(|(path, field)| (path.as_str(), field))
        .collect()
    }

    /// Sets the fields in the parsed document and writes it again.
    fn apply_to_document(
        &self,
        info: &BatchInfo,
        mut record: Record,
    ) -> Result<Option<Record>, String> {
        let Some(mut target) = self.side.read_object(&record)? else {
            return Ok(Some(record));
        };
        for (path, field) in self.insertions(info, &record) {
            json::set(&mut target, path, field)?;
        }
        self.side.write(&mut record, &target);
        Ok(Some(record))
    }
}

/// `object` with each top-level field of `insertions` replaced where it stands (every
/// occurrence, should the object repeat a name) or added after its last field; `None` when
/// `object` is not a JSON object.
fn insert_in_place(object: &[u8], insertions: &[(&str, Value)]) -> Option<Vec<u8>> {
    let names: Vec<&str> = insertions.iter().map(|(name, _)| *name).collect();
    let mut spans = json::field_spans(object, &names).ok()?;
    spans.sort_by_key(|(_, range)| range.start);
    // A valid object ends with its closing brace and JSON whitespace. New fields follow the
    // byte before the brace (and its spacing): the last value's, or the opening brace when the
    // object is empty, since no value ends with `{`.
    let close = object.iter().rposition(|b| !b.is_ascii_whitespace())?;
    let last = object[..close]
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())?;
    let mut empty = object[last] == b'{';
    let mut rewritten = Vec::with_capacity(object.len() + 64);
    let mut copied = 0;
    for (index, range) in &spans {
        rewritten.extend_from_slice(&object[copied..range.start]);
        rewritten.extend_from_slice(&json::to_json_bytes(&insertions[*index].1));
        copied = range.end;
    }
    rewritten.extend_from_slice(&object[copied..=last]);
    for (index, (name, field)) in insertions.iter().enumerate() {
        if spans.iter().any(|(found, _)| *found == index) {
            continue;
        }
        if !empty {
            rewritten.push(b',');
        }
        empty = false;
        rewritten.extend_from_slice(&json::to_json_bytes(&Value::from(*name)));
        rewritten.push(b':');
        rewritten.extend_from_slice(&json::to_json_bytes(field));
    }
    rewritten.extend_from_slice(&object[last + 1..]);
    Some(rewritten)
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

    #[test]
    fn top_level_fields_are_written_into_the_bytes() {
        let mut insert = insert_field(&[
            ("offset.field", "o"),
            ("static.field", "src"),
            ("static.value", "e\"7"),
        ]);
        let mut rewritten = |value: &str| {
            let out = insert
                .apply(&info(), record(value))
                .expect("applies")
                .expect("kept");
            String::from_utf8(out.value.expect("value")).expect("UTF-8")
        };
        assert_eq!(
            rewritten(r#"{ "z" : 1.50, "o":"old" }"#),
            r#"{ "z" : 1.50, "o":42,"src":"e\"7" }"#
        );
        assert_eq!(rewritten(" {\n}\n"), " {\"o\":42,\"src\":\"e\\\"7\"\n}\n");
        assert_eq!(
            rewritten(r#"{"o":1,"o":2}"#),
            r#"{"o":42,"o":42,"src":"e\"7"}"#
        );
        let mut nested = insert_field(&[("offset.field", "m.o")]);
        let out = nested
            .apply(&info(), record(r#"{"b":2,"a":1}"#))
            .expect("applies");
        assert_eq!(value_of(out), json!({"a": 1, "b": 2, "m": {"o": 42}}));
    }

    fn document() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            "[a-z ]{0,6}".prop_map(Value::from),
        ];
        let value = leaf.prop_recursive(2, 12, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                proptest::collection::btree_map("[abc]", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        prop_oneof![
            1 => value.clone(),
            4 => proptest::collection::btree_map("[abcd]", value, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    }

    proptest::proptest! {
        /// Rewriting the record's bytes gives the document the parsed path gives (or the same
        /// error), whatever the spacing around the fields.
        #[test]
        fn inserting_in_place_gives_the_documents_answer(
            value in document(),
            names in proptest::collection::vec("[abcd]", 1..4),
            spaced in proptest::prelude::any::<bool>(),
        ) {
            let keys = ["topic.field", "offset.field", "static.field"];
            let mut config: Vec<(&str, &str)> =
                keys.iter().copied().zip(names.iter().map(String::as_str)).collect();
            if names.len() == keys.len() {
                config.push(("static.value", "s"));
            }
            let insert = InsertField::init(config.into_iter().collect()).expect("valid config");
            let mut bytes = json::to_json_bytes(&value);
            if spaced {
                bytes = json::serde_json::to_vec_pretty(&value).expect("serialises");
                bytes.push(b'\n');
            }
            let record = record(std::str::from_utf8(&bytes).expect("UTF-8"));
            let parsed = |out: Result<Option<Record>, String>| {
                out.map(|r| r.and_then(|r| r.json_value().expect("JSON")))
            };
            let by_document = parsed(insert.apply_to_document(&info(), record.clone()));
            let rewritten = parsed(insert.clone().apply(&info(), record));
            match (rewritten, by_document) {
                (Ok(a), Ok(b)) => proptest::prop_assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                (a, b) => proptest::prop_assert!(false, "{a:?} against {b:?}"),
            }
        }
    }
}
