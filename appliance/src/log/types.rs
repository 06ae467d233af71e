//! Small typed values of the log: names, partition numbers, offsets and timestamps.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::LogError;

/// The longest topic name Kafka accepts; the same bound keeps names portable between the two.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// A validated topic name: 1 to 249 characters of `[a-zA-Z0-9._-]`, neither `.` nor `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicName(String);

impl TopicName {
    pub fn new(name: impl Into<String>) -> Result<Self, LogError> {
        let name = name.into();
        let problem = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > MAX_TOPIC_NAME_LEN {
            Some("it is longer than 249 characters")
        } else if name == "." || name == ".." {
            Some("'.' and '..' are reserved")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            Some("only ASCII letters, digits, '.', '_' and '-' are allowed")
        } else {
            None
        };
        match problem {
            Some(reason) => Err(LogError::InvalidTopicName { name, reason }),
            None => Ok(Self(name)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TopicName {
    type Error = LogError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<TopicName> for String {
    fn from(value: TopicName) -> Self {
        value.0
    }
}

impl FromStr for TopicName {
    type Err = LogError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A partition number within a topic, counted from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PartitionId(pub u32);

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The position of a record in its partition, counted from 0 and never reused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct Offset(pub u64);

impl Offset {
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }

    pub fn plus(self, delta: u64) -> Self {
        Self(self.0 + delta)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Milliseconds since the Unix epoch, as Kafka stamps records.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// 0001-01-01T00:00:00Z: the earliest a record may carry.
    pub const EARLIEST: Self = Self(-62_135_596_800_000);
    /// 9999-12-31T23:59:59.999Z: the latest a record may carry.
    pub const LATEST: Self = Self(253_402_300_799_999);

    /// Whether SQL and the time index can use this timestamp; Kafka's "none" (-1) is in range.
    pub fn check(self) -> Result<(), super::BatchError> {
        if (Self::EARLIEST..=Self::LATEST).contains(&self) {
            Ok(())
        } else {
            Err(super::BatchError::TimestampOutOfRange { timestamp: self.0 })
        }
    }

    pub fn now() -> Self {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        for good in ["a", "sensors", "edge-1.temp_C", &"x".repeat(249)] {
            assert!(TopicName::new(good).is_ok(), "{good} should be valid");
        }
        for bad in ["", ".", "..", "a b", "ü", "a/b", &"x".repeat(250)] {
            let err = TopicName::new(bad).expect_err(bad);
            assert!(err.to_string().contains("topic name"), "{err}");
        }
    }
}
