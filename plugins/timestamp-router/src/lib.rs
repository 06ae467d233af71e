//! `timestamp-router`: re-routes each record to a topic named after its topic and its
//! timestamp, as Kafka Connect's `TimestampRouter` does (e.g. `orders` to `orders-20240301`,
//! for a sink that wants a table or index per day).
//!
//! Config: `topic.format` (default `${topic}-${timestamp}`), where `${topic}` is the record's
//! topic (where an earlier transform re-routed it, else the source topic) and `${timestamp}` the
//! record's timestamp written in `timestamp.format` (default `yyyyMMdd`), a Java
//! `SimpleDateFormat` pattern, in UTC. Tombstones are routed like any record.

use std::fmt::Write as _;

use appliance_sdk::{BatchInfo, Config, Record, Transform, transform};
use chrono::DateTime;
use chrono::format::Item;

#[transform]
#[derive(Debug)]
pub struct TimestampRouter {
    topic_format: String,
    timestamp_format: Vec<Item<'static>>,
}

const KNOWN_KEYS: &[&str] = &["topic.format", "timestamp.format"];

impl Transform for TimestampRouter {
    fn init(config: Config) -> Result<Self, String> {
        config.only(KNOWN_KEYS)?;
        let topic_format = config
            .get("topic.format")
            .unwrap_or("${topic}-${timestamp}");
        if topic_format.is_empty() {
            return Err(
                "`topic.format` is empty; leave it out for ${topic}-${timestamp}".to_owned(),
            );
        }
        let timestamp_format = appliance_sdk::java_date_format::translate(
            config.get("timestamp.format").unwrap_or("yyyyMMdd"),
        )
        .map_err(|e| format!("`timestamp.format`: {e}"))?;
        Ok(Self {
            topic_format: topic_format.to_owned(),
            timestamp_format,
        })
    }

    fn apply(&mut self, info: &BatchInfo, mut record: Record) -> Result<Option<Record>, String> {
        let instant = DateTime::from_timestamp_millis(record.timestamp).ok_or_else(|| {
            format!(
                "the timestamp {} is out of the range of dates",
                record.timestamp
            )
        })?;
        let mut timestamp = String::new();
        write!(
            timestamp,
            "{}",
            instant.format_with_items(self.timestamp_format.iter())
        )
        .map_err(|_| format!("cannot write {instant} in `timestamp.format`"))?;
        let topic = record.topic.as_deref().unwrap_or(&info.topic);
        let routed = self
            .topic_format
            .replace("${topic}", topic)
            .replace("${timestamp}", &timestamp);
        record.topic = Some(routed);
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-03-01T12:00:05.007Z
    const MILLIS: i64 = 1_709_294_405_007;

    fn route(config: &[(&str, &str)], record: Record) -> Option<String> {
        let mut router =
            TimestampRouter::init(config.iter().copied().collect()).expect("valid config");
        let info = BatchInfo::new("orders", 0);
        router
            .apply(&info, record)
            .expect("applies")
            .expect("kept")
            .topic
    }

    fn record_at(timestamp: i64) -> Record {
        let mut record = Record::from_value("{}");
        record.timestamp = timestamp;
        record
    }

    #[test]
    fn default_formats_name_a_topic_per_day() {
        assert_eq!(
            route(&[], record_at(MILLIS)),
            Some("orders-20240301".to_owned())
        );
        assert_eq!(
            route(&[], record_at(-1)),
            Some("orders-19691231".to_owned())
        );
    }

    #[test]
    fn custom_formats_and_a_rerouted_topic() {
        let config = [
            ("topic.format", "${timestamp}.${topic}"),
            ("timestamp.format", "yyyy-MM-dd'T'HH"),
        ];
        let mut rerouted = record_at(MILLIS);
        rerouted.topic = Some("orders-eu".into());
        rerouted.value = None;
        assert_eq!(
            route(&config, rerouted),
            Some("2024-03-01T12.orders-eu".to_owned())
        );
    }

    #[test]
    fn bad_config_is_rejected() {
        let rejected = |config: &[(&str, &str)]| {
            TimestampRouter::init(config.iter().copied().collect()).expect_err("rejected")
        };
        assert!(rejected(&[("timestamp.format", "yyyy-ww")]).contains("`timestamp.format`"));
        assert!(rejected(&[("topic.format", "")]).contains("`topic.format` is empty"));
        assert!(rejected(&[("topic", "x")]).contains("unknown key(s) topic"));
    }
}
