//! JSON values addressed by dotted paths (`payload.sensor.id`), as Kafka Connect's SMTs
//! address nested fields.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

pub use crate::record::{parse_json, to_json_bytes};
pub use serde_json;

/// The field at `path` (`a.b.c`), if every step is an object holding the next name.
pub fn get<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.')
        .try_fold(value, |current, name| current.as_object()?.get(name))
}

/// The field at `path`, mutable.
pub fn get_mut<'v>(value: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    path.split('.').try_fold(value, |current, name| {
        current.as_object_mut()?.get_mut(name)
    })
}

/// Sets the field at `path`, creating missing objects on the way. Fails when a step on the
/// way is not an object.
pub fn set(value: &mut Value, path: &str, field: Value) -> Result<(), String> {
    let (parents, last) = match path.rsplit_once('.') {
        Some((parents, last)) => (Some(parents), last),
        None => (None, path),
    };
    let mut current = value;
    for name in parents.into_iter().flat_map(|p| p.split('.')) {
        let object = current
            .as_object_mut()
            .ok_or_else(|| format!("cannot set `{path}`: `{name}` is inside a non-object"))?;
        current = object
            .entry(name)
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let object = current
        .as_object_mut()
        .ok_or_else(|| format!("cannot set `{path}`: its parent is not an object"))?;
    object.insert(last.to_owned(), field);
    Ok(())
}

/// Removes the field at `path` and returns it.
pub fn remove(value: &mut Value, path: &str) -> Option<Value> {
    match path.rsplit_once('.') {
        Some((parents, last)) => get_mut(value, parents)?.as_object_mut()?.remove(last),
        None => value.as_object_mut()?.remove(path),
    }
}

/// The field at `path` of the JSON document `bytes`, read without building the rest of the
/// document and without reading past the field: for a transform that only tests one field (a
/// filter, a router), several times faster than parsing the whole value. `Ok(None)` when a
/// step is missing or not an object (which takes reading the whole document); an error when
/// `bytes` stop being JSON before the field is found. What follows the field is not checked,
/// so with a duplicated key (which JSON advises against) this finds the first occurrence where
/// a parsed `Value` keeps the last.
pub fn lookup(bytes: &[u8], path: &str) -> Result<Option<Value>, String> {
    let mut found = None;
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let outcome = PathSeed {
        path,
        found: &mut found,
    }
    .deserialize(&mut deserializer)
    .and_then(|()| deserializer.end());
    match outcome {
        Ok(()) => Ok(None),
        // Once the field is found nothing else is parsed, so the error is the stop signal.
        Err(_) if found.is_some() => Ok(found),
        Err(error) => Err(format!("not JSON: {error}")),
    }
}

/// The error that stops parsing once the field is found (serde has no other way out).
const FOUND: &str = "appliance-sdk: field found";

/// Finds `path` in the value being deserialized, skipping everything before it.
struct PathSeed<'p, 'f> {
    path: &'p str,
    found: &'f mut Option<Value>,
}

impl<'de> DeserializeSeed<'de> for PathSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PathSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (name, rest) = match self.path.split_once('.') {
            Some((name, rest)) => (name, Some(rest)),
            None => (self.path, None),
        };
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key != name {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            match rest {
                Some(rest) => map.next_value_seed(PathSeed {
                    path: rest,
                    found: &mut *self.found,
                })?,
                None => *self.found = Some(map.next_value::<Value>()?),
            }
            if self.found.is_some() {
                return Err(serde::de::Error::custom(FOUND));
            }
            // The first field of that name was not an object holding the rest of the path;
            // like `get`, do not look further.
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Where the fields at `paths` lie in the JSON object `bytes`: (index into `paths`, byte
/// range of the field's value), in document order, every occurrence of a repeated key
/// included. The whole document is validated in the one pass, without building it, so a
/// transform can rewrite a few fields in place instead of parsing and writing the document
/// (what it does not touch keeps its bytes: key order, spacing, number spelling). A path
/// whose step is missing or not an object has no span; an error when `bytes` are not a JSON
/// object.
pub fn field_spans(
    bytes: &[u8],
    paths: &[impl AsRef<str>],
) -> Result<Vec<(usize, std::ops::Range<usize>)>, String> {
    let mut spans = Vec::new();
    let wanted: Vec<(usize, &str)> = paths.iter().map(AsRef::as_ref).enumerate().collect();
    collect_spans(bytes, 0, &wanted, &mut spans)?;
    Ok(spans)
}

/// The spans of `wanted` in the object `bytes`, which starts `at` bytes into the document.
fn collect_spans(
    bytes: &[u8],
    at: usize,
    wanted: &[(usize, &str)],
    spans: &mut Vec<(usize, std::ops::Range<usize>)>,
) -> Result<(), String> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let fields: Vec<(Key<'_>, &serde_json::value::RawValue)> = deserializer
        .deserialize_map(FieldsVisitor)
        .and_then(|fields| deserializer.end().map(|()| fields))
        .map_err(|e| {
            if e.is_data() {
                "not a JSON object".to_owned()
            } else {
                format!("not JSON: {e}")
            }
        })?;
    let base = bytes.as_ptr() as usize;
    for (Key(key), raw) in fields {
        let text = raw.get().as_bytes();
        let start = text.as_ptr() as usize - base;
        let mut nested = Vec::new();
        for &(index, path) in wanted {
            match path.split_once('.') {
                None if path == key => spans.push((index, at + start..at + start + text.len())),
                Some((name, rest)) if name == key => nested.push((index, rest)),
                _ => {}
            }
        }
        if !nested.is_empty() && text.first() == Some(&b'{') {
            collect_spans(text, at + start, &nested, spans)?;
        }
    }
    Ok(())
}

/// A key, borrowed from the document unless it has escapes.
#[derive(serde::Deserialize)]
struct Key<'a>(#[serde(borrow)] std::borrow::Cow<'a, str>);

/// An object's fields as raw text; anything else is a data error.
struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Vec<(Key<'de>, &'de serde_json::value::RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::new();
        while let Some(entry) = map.next_entry()? {
            fields.push(entry);
        }
        Ok(fields)
    }
}

/// A JSON value as the text a header, key or route carries: strings without quotes.
pub fn to_plain_string(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z ]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[abc]{1,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// On any JSON document, reading one field without building the document agrees
        /// with building it and walking to the field.
        #[test]
        fn lookup_agrees_with_get(document in json_value(), path in "[abc]{1,2}(\\.[abc]{1,2}){0,2}") {
            let bytes = serde_json::to_vec(&document).unwrap();
            prop_assert_eq!(lookup(&bytes, &path), Ok(get(&document, &path).cloned()));
        }

        /// Arbitrary bytes never panic the lookup.
        #[test]
        fn lookup_survives_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = lookup(&bytes, "a.b");
        }
    }

    proptest! {
        /// Each span holds exactly the value `get` finds at its path (the last occurrence, for
        /// a document serialized from a `Value`, where keys do not repeat).
        #[test]
        fn field_spans_hold_what_get_finds(
            document in json_value(),
            paths in proptest::collection::vec("[abc]{1,2}(\\.[abc]{1,2}){0,2}", 1..4),
        ) {
            let bytes = serde_json::to_vec(&document).unwrap();
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            match field_spans(&bytes, &paths) {
                Ok(spans) => {
                    prop_assert!(document.is_object());
                    for (index, path) in paths.iter().enumerate() {
                        let found: Vec<Value> = spans
                            .iter()
                            .filter(|(i, _)| *i == index)
                            .map(|(_, range)| serde_json::from_slice(&bytes[range.clone()]).unwrap())
                            .collect();
                        prop_assert_eq!(found.last(), get(&document, path));
                    }
                }
                Err(error) => {
                    prop_assert!(!document.is_object());
                    prop_assert_eq!(error, "not a JSON object");
                }
            }
        }

        /// Arbitrary bytes never panic the span finder.
        #[test]
        fn field_spans_survive_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = field_spans(&bytes, &["a", "a.b"]);
        }
    }

    #[test]
    fn field_spans_keep_every_occurrence_and_refuse_what_is_not_an_object() {
        let doc = br#" {"a" : 1, "n": {"x": [1,2], "y": "s"}, "a": {"b": 2}} "#;
        let spans = field_spans(doc, &["a", "n.y", "a.b", "z"]).unwrap();
        let texts: Vec<(usize, &str)> = spans
            .iter()
            .map(|(i, r)| (*i, std::str::from_utf8(&doc[r.clone()]).unwrap()))
            .collect();
        assert_eq!(
            texts,
            [(0, "1"), (1, r#""s""#), (0, r#"{"b": 2}"#), (2, "2")]
        );
        assert_eq!(
            field_spans(b"[1]", &["a"]),
            Err("not a JSON object".to_owned())
        );
        assert!(
            field_spans(br#"{"a":1} x"#, &["a"])
                .unwrap_err()
                .starts_with("not JSON")
        );
        assert!(
            field_spans(br#"{"a":tru}"#, &["a"])
                .unwrap_err()
                .starts_with("not JSON")
        );
    }

    #[test]
    fn dotted_paths_get_set_and_remove() {
        let mut v = json!({"a": {"b": 1}, "c": "x"});
        assert_eq!(get(&v, "a.b"), Some(&json!(1)));
        assert_eq!(get(&v, "a.z"), None);
        assert_eq!(get(&v, "c.d"), None);
        set(&mut v, "a.n.m", json!(true)).unwrap();
        assert_eq!(get(&v, "a.n.m"), Some(&json!(true)));
        assert!(set(&mut v, "c.d", json!(1)).is_err());
        assert_eq!(remove(&mut v, "a.b"), Some(json!(1)));
        assert_eq!(to_plain_string(&json!("s")), "s");
        assert_eq!(to_plain_string(&json!(2)), "2");
    }

    #[test]
    fn lookup_finds_a_field_without_building_the_document() {
        let doc = br#"{"a":{"b":[1,{"c":2}],"s":"x"},"n":null,"t":3.5}"#;
        assert_eq!(lookup(doc, "t"), Ok(Some(json!(3.5))));
        assert_eq!(lookup(doc, "a.s"), Ok(Some(json!("x"))));
        assert_eq!(lookup(doc, "a.b"), Ok(Some(json!([1, {"c": 2}]))));
        assert_eq!(lookup(doc, "n"), Ok(Some(Value::Null)));
        assert_eq!(lookup(doc, "a.b.c"), Ok(None));
        assert_eq!(lookup(doc, "missing"), Ok(None));
        assert_eq!(lookup(b"[1,2]", "a"), Ok(None));
        assert!(lookup(br#"{"x":tru,"a":1}"#, "a").is_err());
        assert!(lookup(br#"{"a":1"#, "b").is_err());
        assert!(lookup(br#"{"b":1} trailing"#, "a").is_err());
        assert_eq!(
            lookup(br#"{"a":1,"z":tru"#, "a"),
            Ok(Some(json!(1))),
            "nothing after the field is read"
        );
        assert_eq!(lookup(br#"{"a":5,"a":{"b":1}}"#, "a.b"), Ok(None));
    }
}
