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
    /// What a field of each kind becomes, written once.
    masks: Masks,
}

/// The JSON a masked field becomes, by the field's kind, or why that kind cannot be masked
/// with the configured replacement. A field's kind is told by its first byte (and a number's
/// spelling), so the field itself is never built.
#[derive(Debug, Clone)]
struct Masks {
    string: Result<Vec<u8>, String>,
    boolean: Result<Vec<u8>, String>,
    integer: Result<Vec<u8>, String>,
    float: Result<Vec<u8>, String>,
    array: Result<Vec<u8>, String>,
    object: Result<Vec<u8>, String>,
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
            masks: Masks::new(replacement.as_deref()),
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
            let masked = self
                .masks
                .of(&bytes[range.clone()])
                .map_err(|e| format!("cannot mask `{}`: {e}", self.fields[index]))?;
            rewritten.extend_from_slice(&bytes[copied..range.start]);
            rewritten.extend_from_slice(masked);
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
                *field = masked(field, self.replacement.as_deref())
                    .map_err(|e| format!("cannot mask `{path}`: {e}"))?;
            }
        }
        self.side.write(&mut record, &target);
        Ok(Some(record))
    }
}

/// What `field` becomes: the empty value of its kind, or `replacement` read as its kind.
fn masked(field: &Value, replacement: Option<&str>) -> Result<Value, String> {
    let Some(replacement) = replacement else {
        return Ok(empty_like(field));
    };
    match field {
        Value::Null => Ok(Value::Null),
        Value::String(_) => Ok(Value::from(replacement)),
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

impl Masks {
    fn new(replacement: Option<&str>) -> Self {
        let written = |field: Value| masked(&field, replacement).map(|m| json::to_json_bytes(&m));
        Self {
            string: written(Value::from("")),
            boolean: written(Value::Bool(false)),
            integer: written(Value::from(0)),
            float: written(Value::from(0.0)),
            array: written(Value::Array(Vec::new())),
            object: written(Value::Object(Map::new())),
        }
    }

    /// What `field`, one JSON value the scan has validated, becomes. Only a number is read,
    /// as serde_json reads it: its spelling and range decide whether it is an integer.
    fn of<'m>(&'m self, field: &'m [u8]) -> Result<&'m [u8], String> {
        let mask = match field.first() {
            Some(b'"') => &self.string,
            Some(b't' | b'f') => &self.boolean,
            Some(b'n') => return Ok(field),
            Some(b'[') => &self.array,
            Some(b'{') => &self.object,
            _ => match json::serde_json::from_slice::<Number>(field) {
                Ok(number) if number.is_f64() => &self.float,
                Ok(_) => &self.integer,
                Err(e) => return Err(e.to_string()),
            },
        };
        mask.as_deref().map_err(Clone::clone)
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

    /// A number's kind comes from its spelling and range, as serde_json reads it, in place as
    /// through the document.
    #[test]
    fn numbers_are_masked_by_the_kind_serde_json_reads() {
        let info = BatchInfo::new("t", 0);
        for replacement in [None, Some("7")] {
            let mut config = vec![("fields", "n")];
            config.extend(replacement.map(|r| ("replacement", r)));
            let mask = MaskField::init(config.into_iter().collect()).expect("valid config");
            for spelling in ["-0", "1E2", "12", "-12", "18446744073709551616", "1e400"] {
                let record = Record::from_value(format!(r#"{{"n": {spelling}, "m": 1}}"#));
                let in_place = mask.clone().apply(&info, record.clone());
                let by_document = mask.apply_to_document(record);
                match (in_place, by_document) {
                    (Ok(a), Ok(b)) => {
                        assert_eq!(
                            a.unwrap().json_value(),
                            b.unwrap().json_value(),
                            "{spelling}"
                        )
                    }
                    (Err(_), Err(_)) => {}
                    (a, b) => panic!("{spelling}: {a:?} against {b:?}"),
                }
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
