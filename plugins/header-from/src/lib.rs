//! `header-from`: copies or moves fields of each record's JSON value (or key) into headers, as
//! Kafka Connect's `HeaderFrom` does.
//!
//! Config: `fields=A|B` (dotted paths for nested fields) and `headers=X|Y`, the header each
//! field goes to, in the same order and number; `operation=copy` (the field stays) or
//! `operation=move` (it is removed); `on=value` (default) or `on=key`. A header carries the
//! field as text: a string without its quotes, anything else as JSON (`null` for null). Headers
//! are appended, so ones of the same name already on the record stay. Every field must be
//! present, and the value (or key) must be a JSON object; a tombstone, or a record without a key
//! for `on=key`, passes unchanged.

use appliance_sdk::json;
use appliance_sdk::{BatchInfo, Config, Record, Transform, transform};

use appliance_sdk::Side;

#[transform]
#[derive(Debug)]
pub struct HeaderFrom {
    side: Side,
    /// Each field's path and the name of the header it goes to.
    fields_to_headers: Vec<(String, String)>,
    remove_fields: bool,
}

const KNOWN_KEYS: &[&str] = &["fields", "headers", "operation", "on"];

impl Transform for HeaderFrom {
    fn init(config: Config) -> Result<Self, String> {
        config.only(KNOWN_KEYS)?;
        let fields = config.list("fields");
        let headers = config.list("headers");
        if fields.is_empty() {
            return Err(
                "missing required key `fields` (the fields to put in headers, separated by `|`)"
                    .to_owned(),
            );
        }
        if fields.len() != headers.len() {
            return Err(format!(
                "`headers` names one header per field of `fields`: {} header(s) for {} field(s)",
                headers.len(),
                fields.len()
            ));
        }
        let remove_fields = match config.require("operation", "copy or move")? {
            "copy" => false,
            "move" => true,
            other => return Err(format!("`operation` is copy or move, not {other:?}")),
        };
        Ok(Self {
            side: Side::from_config(&config)?,
            fields_to_headers: fields
                .into_iter()
                .zip(headers)
                .map(|(field, header)| (field.to_owned(), header.to_owned()))
                .collect(),
            remove_fields,
        })
    }

    fn apply(&mut self, _: &BatchInfo, mut record: Record) -> Result<Option<Record>, String> {
        let Some(mut target) = self.side.read_object(&record)? else {
            return Ok(Some(record));
        };
        for (path, header) in &self.fields_to_headers {
            let field = if self.remove_fields {
                json::remove(&mut target, path)
            } else {
                json::get(&target, path).cloned()
            }
            .ok_or_else(|| {
                format!(
                    "the {} has no field `{path}` for header `{header}`",
                    self.side
                )
            })?;
            record.add_header(header.as_str(), json::to_plain_string(&field));
        }
        if self.remove_fields {
            self.side.write(&mut record, &target);
        }
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

    fn header_from(config: &[(&str, &str)]) -> HeaderFrom {
        HeaderFrom::init(config.iter().copied().collect()).expect("valid config")
    }

    fn headers(record: &Record) -> Vec<(&str, &str)> {
        record
            .headers
            .iter()
            .map(|h| {
                (
                    h.key.as_str(),
                    std::str::from_utf8(&h.value).expect("UTF-8"),
                )
            })
            .collect()
    }

    #[test]
    fn copy_keeps_the_fields_and_move_removes_them() {
        let value = r#"{"id":"a1","meta":{"trace":7,"tags":["x"]},"n":null}"#;
        let mut copy = header_from(&[
            ("fields", "id|meta.trace|meta.tags|n"),
            ("headers", "id|trace|tags|n"),
            ("operation", "copy"),
        ]);
        let out = copy
            .apply(&info(), Record::from_value(value))
            .expect("applies")
            .expect("kept");
        assert_eq!(
            headers(&out),
            [
                ("id", "a1"),
                ("trace", "7"),
                ("tags", r#"["x"]"#),
                ("n", "null")
            ]
        );
        assert_eq!(out.value.as_deref(), Some(value.as_bytes()));

        let mut move_fields = header_from(&[
            ("fields", "meta.trace"),
            ("headers", "trace"),
            ("operation", "move"),
        ]);
        let out = move_fields
            .apply(&info(), Record::from_value(value))
            .expect("applies")
            .expect("kept");
        assert_eq!(headers(&out), [("trace", "7")]);
        assert_eq!(
            out.json_value(),
            Ok(Some(
                json!({"id": "a1", "meta": {"tags": ["x"]}, "n": null})
            ))
        );
    }

    #[test]
    fn key_side_tombstones_and_missing_fields() {
        let mut on_key = header_from(&[
            ("fields", "tenant"),
            ("headers", "tenant"),
            ("operation", "move"),
            ("on", "key"),
        ]);
        let mut tombstone = Record::from_value("");
        tombstone.value = None;
        tombstone.key = Some(br#"{"tenant":"acme","id":1}"#.to_vec());
        let out = on_key
            .apply(&info(), tombstone)
            .expect("applies")
            .expect("kept");
        assert_eq!(headers(&out), [("tenant", "acme")]);
        assert_eq!(out.json_key(), Ok(Some(json!({"id": 1}))));

        let mut on_value =
            header_from(&[("fields", "id"), ("headers", "id"), ("operation", "copy")]);
        let mut tombstone = Record::from_value("");
        tombstone.value = None;
        let out = on_value
            .apply(&info(), tombstone)
            .expect("applies")
            .expect("kept");
        assert!(out.headers.is_empty());
        assert_eq!(
            on_value
                .apply(&info(), Record::from_value("{}"))
                .expect_err("no id"),
            "the value has no field `id` for header `id`"
        );
        assert_eq!(
            on_value
                .apply(&info(), Record::from_value("3"))
                .expect_err("not an object"),
            "the value is not a JSON object"
        );
    }

    #[test]
    fn bad_config_is_rejected() {
        let rejected = |config: &[(&str, &str)]| {
            HeaderFrom::init(config.iter().copied().collect()).expect_err("rejected")
        };
        assert!(rejected(&[("headers", "h"), ("operation", "copy")]).contains("`fields`"));
        assert!(
            rejected(&[("fields", "a|b"), ("headers", "h"), ("operation", "copy")])
                .contains("1 header(s) for 2 field(s)")
        );
        assert!(rejected(&[("fields", "a"), ("headers", "h")]).contains("`operation`"));
        assert!(
            rejected(&[("fields", "a"), ("headers", "h"), ("operation", "cut")])
                .contains("copy or move, not \"cut\"")
        );
    }
}
