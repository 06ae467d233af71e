//! `drop-headers`: removes headers by name from every record, as Kafka Connect's `DropHeaders`
//! does.
//!
//! Config: `headers=A|B` (required): every header with one of these names is removed.

use appliance_sdk::{BatchInfo, Config, Record, Transform, transform};

#[transform]
#[derive(Debug)]
pub struct DropHeaders {
    headers: Vec<String>,
}

const KNOWN_KEYS: &[&str] = &["headers"];

impl Transform for DropHeaders {
    fn init(config: Config) -> Result<Self, String> {
        config.only(KNOWN_KEYS)?;
        let headers: Vec<String> = config
            .list("headers")
            .into_iter()
            .map(str::to_owned)
            .collect();
        if headers.is_empty() {
            return Err(
                "missing required key `headers` (the names of the headers to drop, separated by `|`)"
                    .to_owned(),
            );
        }
        Ok(Self { headers })
    }

    fn apply(&mut self, _: &BatchInfo, mut record: Record) -> Result<Option<Record>, String> {
        record
            .headers
            .retain(|header| !self.headers.contains(&header.key));
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_every_header_with_a_listed_name() {
        let mut drop = DropHeaders::init([("headers", "trace|auth")].into_iter().collect())
            .expect("valid config");
        let info = BatchInfo::new("t", 0);
        let mut record = Record::from_value("v");
        record.add_header("trace", "1");
        record.add_header("keep", "k");
        record.add_header("auth", "secret");
        record.add_header("trace", "2");
        let out = drop.apply(&info, record).expect("applies").expect("kept");
        let names: Vec<&str> = out.headers.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(names, ["keep"]);
    }

    #[test]
    fn headers_are_required() {
        assert!(
            DropHeaders::init(Config::default())
                .expect_err("rejected")
                .contains("missing required key `headers`")
        );
    }
}
