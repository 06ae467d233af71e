//! `mask-field`: replaces fields of each record's JSON value (or key) with an empty value of
//! their type or with a fixed replacement, as Kafka Connect's `MaskField` does.
//!
//! Config: `fields=A|B` (required; dotted paths for nested fields), `replacement=TEXT`
//! (optional), `on=value` (default) or `on=key`. Without `replacement` a field becomes its
//! type's empty value: `0` (or `0.0`), `false`, `""`, `[]` or `{}`. With it, a string becomes
//! the text, a number the text read as a number of the same kind (integer or not) and a boolean
//! the text read as `true` or `false`; an array or object cannot take a replacement. Null fields
//! stay null, and absent fields stay absent. The value (or key) must be a JSON object; a
//! tombstone, or a record without a key for `on=key`, passes unchanged.
//!
//! The masked fields are rewritten in the record's bytes, found in one validating pass
//! without building the document; the rest keeps its bytes. Only when one masked field holds
//! another (`a` and `a.b`) is the document built, masked in the order of `fields`, and
//! written again.

use appliance_sdk::json::{
    self,
    serde_json::{Map, Number, Value},
};
use appliance_sdk::{BatchInfo, Config, Record, Transform, transform};

use appliance_sdk::Side;

#[transform]
#[derive(Debug, Clone)]
pub struct MaskField {
    side: Side,
    fields: Vec<String>,
    replacement: Option<String>,
}

const KNOWN_KEYS: &[&str] = &["fields", "replacement", "on"];

impl Transform for MaskField {
    fn init(config: Config) -> Result<Self, String> {
        config.only(KNOWN_KEYS)?;
        let fields: Vec<String> = config
            .list("fields")
            .into_iter()
            .map(str::to_owned)
            .collect();
        if fields.is_empty() {
            return Err(
                "missing required key `fields` (the fields to mask, separated by `|`)".to_owned(),
            );
        }
        let replacement = match config.get("replacement") {
            Some("") => {
                return Err(
                    "`replacement` is empty; leave it out to mask with empty values".to_owned(),
                );
            }
            replacement => replacement.map(str::to_owned),
        };
        Ok(Self {
            side: Side::from_config(&config)?,
            fields,
            replacement,
        })
    }

    fn apply(&mut self, _: &BatchInfo, mut record: Record) -> Result<Option<Record>, String> {
        let Some(bytes) = self.side.bytes(&record) else {
            return Ok(Some(record));
        };
        let Ok(mut spans) = json::field_spans(bytes, &self.fields) else {
            // Not a JSON object: the document path says what it is instead.
            return self.apply_to_document(record);
        };
        spans.sort_by_key(|(_, range)| range.start);
        if spans.windows(2).any(|pair| pair[1].1.start < pair[0].1.end) {
            return self.apply_to_document(record);
        }
        if spans.is_empty() {
            return Ok(Some(record));
        }
        let mut rewritten = Vec::with_capacity(bytes.len());
        let mut copied = 0;
        for (index, range) in spans {
            let path = &self.fields[index];
            let field: Value = json::serde_json::from_slice(&bytes[range.clone()])
                .map_err(|e| format!("cannot mask `{path}`: {e}"))?;
            let masked = self
                .masked(&field)
                .map_err(|e| format!("cannot mask `{path}`: {e}"))?;
            rewritten.extend_from_slice(&bytes[copied..range.start]);
            rewritten.extend_from_slice(&json::to_json_bytes(&masked));
            copied = range.end;
        }
        rewritten.extend_from_slice(&bytes[copied..]);
        self.side.set_bytes(&mut record, rewritten);
        Ok(Some(record))
    }
}

impl MaskField {
    /// Masks the fields in the parsed document, in the order of `fields`.
    fn apply_to_document(&self, mut record: Record) -> Result<Option<Record>, String> {
        let Some(mut target) = self.side.read_object(&record)? else {
            return Ok(Some(record));
        };
        for path in &self.fields {
            if let Some(field) = json::get_mut(&mut target, path) {
                *field = self
                    .masked(field)
                    .map_err(|e| format!("cannot mask `{path}`: {e}"))?;
            }
        }
        self.side.write(&mut record, &target);
        Ok(Some(record))
    }

    fn masked(&self, field: &Value) -> Result<Value, String> {
        let Some(replacement) = &self.replacement else {
            return Ok(empty_like(field));
        };
        match field {
            Value::Null => Ok(Value::Null),
            Value::String(_) => Ok(Value::from(replacement.as_str())),
            Value::Number(number) if number.is_f64() => replacement
                .parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| format!("`replacement` {replacement:?} is not a number")),
            Value::Number(_) => replacement
                .parse::<Number>()
                .ok()
                .filter(|number| !number.is_f64())
                .map(Value::Number)
                .ok_or_else(|| format!("`replacement` {replacement:?} is not an integer")),
            Value::Bool(_) => replacement
                .parse::<bool>()
                .map(Value::Bool)
                .map_err(|_| format!("`replacement` {replacement:?} is not true or false")),
            Value::Array(_) | Value::Object(_) => {
                Err("an array or object takes no `replacement`".to_owned())
            }
        }
    }
}

fn empty_like(field: &Value) -> Value {
    match field {
        Value::Null => Value::Null,
        Value::Bool(_) => Value::Bool(false),
        Value::Number(number) if number.is_f64() => Value::from(0.0),
        Value::Number(_) => Value::from(0),
        Value::String(_) => Value::from(""),
        Value::Array(_) => Value::Array(Vec::new()),
        Value::Object(_) => Value::Object(Map::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance_sdk::json::serde_json::json;

    fn mask(config: &[(&str, &str)], value: Value) -> Result<Value, String> {
        appliance_sdk::testing::apply_to_json::<MaskField>(config, &value)
    }

    #[test]
    fn without_replacement_fields_become_the_empty_value_of_their_type() {
        let value = json!({
            "i": 7, "f": 2.5, "b": true, "s": "secret", "a": [1], "o": {"x": 1}, "n": null,
            "nested": {"pin": 1234, "keep": 1},
        });
        assert_eq!(
            mask(&[("fields", "i|f|b|s|a|o|n|nested.pin|absent")], value),
            Ok(json!({
                "i": 0, "f": 0.0, "b": false, "s": "", "a": [], "o": {}, "n": null,
                "nested": {"pin": 0, "keep": 1},
            }))
        );
    }

    #[test]
    fn a_replacement_is_read_as_the_field_type() {
        let value = json!({"s": "secret", "i": 7, "f": 2.5, "b": true, "n": null});
        assert_eq!(
            mask(&[("fields", "s|n"), ("replacement", "***")], value.clone()),
            Ok(json!({"s": "***", "i": 7, "f": 2.5, "b": true, "n": null}))
        );
        assert_eq!(
            mask(&[("fields", "i|f"), ("replacement", "-1")], value.clone()),
            Ok(json!({"s": "secret", "i": -1, "f": -1.0, "b": true, "n": null}))
        );
        assert_eq!(
            mask(&[("fields", "b"), ("replacement", "false")], value.clone()),
            Ok(json!({"s": "secret", "i": 7, "f": 2.5, "b": false, "n": null}))
        );
        assert!(
            mask(&[("fields", "i"), ("replacement", "1.5")], value.clone())
                .expect_err("not an integer")
                .contains("cannot mask `i`: `replacement` \"1.5\" is not an integer")
        );
        assert!(
            mask(&[("fields", "s|i"), ("replacement", "***")], value)
                .expect_err("not a number")
                .contains("not an integer")
        );
        assert!(
            mask(&[("fields", "a"), ("replacement", "x")], json!({"a": [1]}))
                .expect_err("array")
                .contains("takes no `replacement`")
        );
    }

    fn document() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            (-1e3f64..1e3).prop_map(Value::from),
            "[a-z ]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                proptest::collection::btree_map("[abc]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Rewriting the fields in the record's bytes gives the document the parsed path gives
        /// (or the same error).
        #[test]
        fn rewriting_in_place_masks_as_the_document_does(
            value in document(),
            fields in proptest::collection::vec("[abc](\\.[abc]){0,2}", 1..4),
            replacement in proptest::option::of(proptest::prelude::prop_oneof!["1", "x", "true"]),
        ) {
            let fields = fields.join("|");
            let mut config = vec![("fields", fields.as_str())];
            if let Some(replacement) = &replacement {
                config.push(("replacement", replacement));
            }
            let mask = MaskField::init(config.into_iter().collect()).expect("valid config");
            let record = Record::from_value(json::to_json_bytes(&value));
            let parsed = |out: Result<Option<Record>, String>| {
                out.map(|r| r.and_then(|r| r.json_value().expect("JSON")))
            };
            let in_place = parsed(mask.clone().apply(&BatchInfo::new("t", 0), record.clone()));
            let by_document = parsed(mask.apply_to_document(record));
            match (in_place, by_document) {
                (Ok(a), Ok(b)) => proptest::prop_assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                (a, b) => proptest::prop_assert!(false, "{a:?} against {b:?}"),
            }
        }
    }

    #[test]
    fn key_side_tombstones_and_config_errors() {
        let info = BatchInfo::new("t", 0);
        let mut on_key = MaskField::init([("fields", "user"), ("on", "key")].into_iter().collect())
            .expect("valid config");
        let mut tombstone = Record::from_value("");
        tombstone.value = None;
        tombstone.key = Some(br#"{"user":"ann"}"#.to_vec());
        let out = on_key
            .apply(&info, tombstone)
            .expect("applies")
            .expect("kept");
        assert_eq!(out.json_key(), Ok(Some(json!({"user": ""}))));
        assert_eq!(out.value, None);

        assert_eq!(
            mask(&[("fields", "a")], json!([1])),
            Err("the value is not a JSON object".to_owned())
        );
        let rejected = |config: &[(&str, &str)]| {
            MaskField::init(config.iter().copied().collect()).expect_err("rejected")
        };
        assert!(rejected(&[]).contains("`fields`"));
        assert!(
            rejected(&[("fields", "a"), ("replacement", "")]).contains("`replacement` is empty")
        );
    }
}
