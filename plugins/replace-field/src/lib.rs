//! `replace-field`: keeps, drops and renames fields of each record's JSON value (or key), as
//! Kafka Connect's `ReplaceField` does.
//!
//! Config: `include=A|B` (keep only these fields), `exclude=A|B` (drop these fields),
//! `renames=OLD:NEW|OLD:NEW` (rename fields), at least one of them; `on=value` (default) or
//! `on=key`. Paths are dotted for nested fields: `include=a.b` keeps `b` inside `a` and nothing
//! else of `a`. As in Kafka, `include` and `exclude` name the fields as they arrive, and only the
//! fields that survive them are renamed; renames happen at once, so `a:b|b:a` swaps two fields.
//! The value (or key) must be a JSON object; a tombstone, or a record without a key for
//! `on=key`, passes unchanged.

use appliance_sdk::json::{
    self,
    serde_json::{Map, Value},
};
use appliance_sdk::{BatchInfo, Config, Record, Transform, transform};

use appliance_sdk::Side;

#[transform]
#[derive(Debug)]
pub struct ReplaceField {
    side: Side,
    include: Vec<String>,
    exclude: Vec<String>,
    renames: Vec<(String, String)>,
}

const KNOWN_KEYS: &[&str] = &["include", "exclude", "renames", "on"];

impl Transform for ReplaceField {
    fn init(config: Config) -> Result<Self, String> {
        config.only(KNOWN_KEYS)?;
        let paths = |key: &str| -> Vec<String> {
            config.list(key).into_iter().map(str::to_owned).collect()
        };
        let renames = config
            .list("renames")
            .into_iter()
            .map(|pair| match pair.split_once(':') {
                Some((old, new)) if !old.trim().is_empty() && !new.trim().is_empty() => {
                    Ok((old.trim().to_owned(), new.trim().to_owned()))
                }
                _ => Err(format!("`renames` takes OLD:NEW pairs, not {pair:?}")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let replace = Self {
            side: Side::from_config(&config)?,
            include: paths("include"),
            exclude: paths("exclude"),
            renames,
        };
        if replace.include.is_empty() && replace.exclude.is_empty() && replace.renames.is_empty() {
            return Err("nothing to do: give `include`, `exclude` or `renames`".to_owned());
        }
        Ok(replace)
    }

    fn apply(&mut self, _: &BatchInfo, mut record: Record) -> Result<Option<Record>, String> {
        let Some(target) = self.side.read_object(&record)? else {
            return Ok(Some(record));
        };
        let mut kept = if self.include.is_empty() {
            target
        } else {
            let mut included = Value::Object(Map::new());
            for path in &self.include {
                if let Some(field) = json::get(&target, path) {
                    json::set(&mut included, path, field.clone())?;
                }
            }
            included
        };
        for path in &self.exclude {
            json::remove(&mut kept, path);
        }
        let renamed: Vec<(&str, Value)> = self
            .renames
            .iter()
            .filter_map(|(old, new)| {
                json::remove(&mut kept, old).map(|field| (new.as_str(), field))
            })
            .collect();
        for (new, field) in renamed {
            json::set(&mut kept, new, field)?;
        }
        self.side.write(&mut record, &kept);
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance_sdk::json::serde_json::json;

    fn replace(config: &[(&str, &str)], value: Value) -> Result<Value, String> {
        appliance_sdk::testing::apply_to_json::<ReplaceField>(config, &value)
    }

    #[test]
    fn include_keeps_only_the_named_fields_and_exclude_drops_them() {
        let value = json!({"a": 1, "b": {"x": 1, "y": 2}, "c": 3});
        assert_eq!(
            replace(&[("include", "a|b.y|missing")], value.clone()),
            Ok(json!({"a": 1, "b": {"y": 2}}))
        );
        assert_eq!(
            replace(&[("exclude", "c"), ("exclude", "b.x")], value.clone()),
            Ok(json!({"a": 1, "b": {"y": 2}}))
        );
        assert_eq!(
            replace(&[("include", "b|c"), ("exclude", "b.x")], value),
            Ok(json!({"b": {"y": 2}, "c": 3}))
        );
    }

    #[test]
    fn renames_apply_to_the_fields_that_survive_and_can_swap() {
        let value = json!({"a": 1, "b": 2, "c": {"d": 4}});
        assert_eq!(
            replace(&[("renames", "a:b|b:a")], value.clone()),
            Ok(json!({"a": 2, "b": 1, "c": {"d": 4}}))
        );
        assert_eq!(
            replace(&[("renames", "c.d:e.f|a:z"), ("exclude", "a")], value),
            Ok(json!({"b": 2, "c": {}, "e": {"f": 4}}))
        );
    }

    #[test]
    fn key_side_tombstones_and_errors() {
        let mut on_key =
            ReplaceField::init([("exclude", "secret"), ("on", "key")].into_iter().collect())
                .expect("valid config");
        let info = BatchInfo::new("t", 0);
        let mut record = Record::from_value("not even JSON");
        record.key = Some(br#"{"id":1,"secret":2}"#.to_vec());
        let out = on_key.apply(&info, record).expect("applies").expect("kept");
        assert_eq!(out.json_key(), Ok(Some(json!({"id": 1}))));

        let mut tombstone = Record::from_value("");
        tombstone.value = None;
        let mut on_value =
            ReplaceField::init([("exclude", "a")].into_iter().collect()).expect("valid config");
        let out = on_value.apply(&info, tombstone).expect("applies");
        assert_eq!(out.expect("kept").value, None);

        assert_eq!(
            replace(&[("exclude", "a")], json!("text")),
            Err("the value is not a JSON object".to_owned())
        );
        let rejected = |config: &[(&str, &str)]| {
            ReplaceField::init(config.iter().copied().collect()).expect_err("rejected")
        };
        assert!(rejected(&[]).contains("nothing to do"));
        assert!(rejected(&[("renames", "a")]).contains("OLD:NEW"));
        assert!(rejected(&[("renames", "a:")]).contains("OLD:NEW"));
        assert!(rejected(&[("whitelist", "a")]).contains("unknown key(s) whitelist"));
    }
}
