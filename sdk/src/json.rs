//! JSON values addressed by dotted paths (`payload.sensor.id`), as Kafka Connect's SMTs
//! address nested fields.

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

/// A JSON value as the text a header, key or route carries: strings without quotes.
pub fn to_plain_string(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
