//! `insert-header`: adds a header with a fixed value to every record, as Kafka Connect's
//! `InsertHeader` does.
//!
//! Config: `header=NAME` and `value.literal=TEXT`, both required. The header is appended, so a
//! header of the same name already on the record stays (Kafka headers may repeat a name).
//! Tombstones get the header like any record.

use appliance_sdk::{BatchInfo, Config, Record, Transform, transform};

#[transform]
#[derive(Debug)]
pub struct InsertHeader {
    header: String,
    value: String,
}

const KNOWN_KEYS: &[&str] = &["header", "value.literal"];

impl Transform for InsertHeader {
    fn init(config: Config) -> Result<Self, String> {
        config.only(KNOWN_KEYS)?;
        let header = config.require("header", "the name of the header to add")?;
        if header.is_empty() {
            return Err("`header` takes a header name, not an empty one".to_owned());
        }
        let value = config.require("value.literal", "the text the header carries")?;
        Ok(Self {
            header: header.to_owned(),
            value: value.to_owned(),
        })
    }

    fn apply(&mut self, _: &BatchInfo, mut record: Record) -> Result<Option<Record>, String> {
        record.add_header(self.header.as_str(), self.value.as_bytes());
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_the_header_to_every_record() {
        let mut insert = InsertHeader::init(
            [("header", "source"), ("value.literal", "edge-7")]
                .into_iter()
                .collect(),
        )
        .expect("valid config");
        let info = BatchInfo::new("t", 0);
        let mut record = Record::from_value("v");
        record.add_header("source", "upstream");
        let out = insert.apply(&info, record).expect("applies").expect("kept");
        let sources: Vec<&[u8]> = out
            .headers
            .iter()
            .filter(|h| h.key == "source")
            .map(|h| h.value.as_slice())
            .collect();
        assert_eq!(sources, [&b"upstream"[..], &b"edge-7"[..]]);
        assert_eq!(out.header("source"), Some(&b"edge-7"[..]));

        let mut tombstone = Record::from_value("");
        tombstone.value = None;
        let out = insert
            .apply(&info, tombstone)
            .expect("applies")
            .expect("kept");
        assert_eq!(out.header("source"), Some(&b"edge-7"[..]));
    }

    #[test]
    fn both_keys_are_required() {
        let rejected = |config: &[(&str, &str)]| {
            InsertHeader::init(config.iter().copied().collect()).expect_err("rejected")
        };
        assert!(rejected(&[("value.literal", "v")]).contains("missing required key `header`"));
        assert!(rejected(&[("header", "h")]).contains("missing required key `value.literal`"));
        assert!(rejected(&[("header", ""), ("value.literal", "v")]).contains("empty"));
    }
}
