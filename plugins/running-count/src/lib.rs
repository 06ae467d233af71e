//! The stateful example of docs/plugin-guide.md: counts the records of each key, in a store
//! the appliance keeps across restarts, and replaces each value with the key's count so far
//! (`{"key":"k","count":3}`). A tombstone resets its key's count and passes on; records
//! without a key pass unchanged.

use appliance_sdk::json::serde_json::json;
use appliance_sdk::state::KeyValueStore;
use appliance_sdk::{BatchInfo, Config, Record, Transform, transform};

#[transform]
#[derive(Debug)]
pub struct RunningCount {
    counts: KeyValueStore<Vec<u8>, u64>,
}

impl Transform for RunningCount {
    fn init(config: Config) -> Result<Self, String> {
        config.only(&[])?;
        Ok(Self {
            counts: KeyValueStore::open("counts")?,
        })
    }

    fn apply(&mut self, _: &BatchInfo, mut record: Record) -> Result<Option<Record>, String> {
        let Some(key) = record.key.clone() else {
            return Ok(Some(record));
        };
        if record.value.is_none() {
            self.counts.delete(&key)?;
            return Ok(Some(record));
        }
        let count = self.counts.get(&key)?.unwrap_or(0) + 1;
        self.counts.put(&key, &count)?;
        let value = json!({"key": String::from_utf8_lossy(&key), "count": count});
        record.set_json_value(&value);
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_key_and_a_tombstone_resets_it() {
        let mut plugin = RunningCount::init(Config::default()).unwrap();
        let info = BatchInfo::new("t", 0);
        let mut keyed = |key: &str, value: Option<&str>| {
            let mut record = Record::from_value(value.unwrap_or(""));
            record.key = Some(key.as_bytes().to_vec());
            if value.is_none() {
                record.value = None;
            }
            plugin.apply(&info, record).unwrap().unwrap().value
        };
        keyed("a", Some("x"));
        keyed("b", Some("x"));
        assert_eq!(keyed("a", Some("x")).unwrap(), br#"{"count":2,"key":"a"}"#);
        assert_eq!(keyed("a", None), None);
        assert_eq!(keyed("a", Some("x")).unwrap(), br#"{"count":1,"key":"a"}"#);
    }
}
