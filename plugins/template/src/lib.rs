//! The template plugin of docs/plugin-guide.md: upper-cases the text field `field` (a dotted
//! path) of JSON values and counts the records it changed.

use appliance_sdk::json::{self, serde_json::Value};
use appliance_sdk::{BatchInfo, Config, Record, Transform, transform};

#[transform]
#[derive(Debug)]
pub struct Uppercase {
    field: String,
}

impl Transform for Uppercase {
    fn init(config: Config) -> Result<Self, String> {
        config.only(&["field"])?;
        let field = config.require("field", "the dotted path of the text field to upper-case")?;
        Ok(Self {
            field: field.to_owned(),
        })
    }

    fn apply(&mut self, _: &BatchInfo, mut record: Record) -> Result<Option<Record>, String> {
        let Some(mut value) = record.json_value()? else {
            return Ok(Some(record));
        };
        if let Some(Value::String(text)) = json::get_mut(&mut value, &self.field) {
            *text = text.to_uppercase();
            record.set_json_value(&value);
            appliance_sdk::host::counter_add("uppercased", 1);
        }
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_cases_the_field_and_leaves_other_records_alone() {
        let mut plugin = Uppercase::init([("field", "a.b")].into_iter().collect()).unwrap();
        let info = BatchInfo::new("t", 0);
        let out = plugin
            .apply(&info, Record::from_value(r#"{"a":{"b":"hi"}}"#))
            .unwrap()
            .unwrap();
        assert_eq!(out.value.unwrap(), br#"{"a":{"b":"HI"}}"#);
        let untouched = plugin
            .apply(&info, Record::from_value("[1]"))
            .unwrap()
            .unwrap();
        assert_eq!(untouched.value.unwrap(), b"[1]");
        assert!(Uppercase::init(Config::default()).is_err());
    }
}
