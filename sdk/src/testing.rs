//! Helpers for a plugin's native unit tests (outside WebAssembly the plugin is plain Rust).

use serde_json::Value;

use crate::{BatchInfo, Config, Record, Transform};

/// Configures a `T` with `config`, runs it on one record of topic `t`, partition 0, whose value
/// is `value`, and returns the output's value. The transform's verdict on the record is the
/// `Err`; anything a test does not expect (a rejected config, a dropped record, output that is
/// not JSON or is a tombstone) panics, which fails the test where it happened.
pub fn apply_to_json<T: Transform>(
    config: &[(&str, &str)],
    value: &Value,
) -> Result<Value, String> {
    let mut transform = T::init(config.iter().copied().collect::<Config>()).expect("valid config");
    let out = transform.apply(
        &BatchInfo::new("t", 0),
        Record::from_value(value.to_string()),
    )?;
    Ok(out
        .expect("kept")
        .json_value()
        .expect("JSON")
        .expect("not a tombstone"))
}
