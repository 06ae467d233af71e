//! `generator`: synthetic sensor readings at a configured rate, for demos and benches.
//!
//! Config: `rate` (records per second, default 1000), `sensors` (how many sensors take turns,
//! default 10), `count` (stop after this many records; default: never), `bytes` (pad each
//! value with a `note` field to at least this many bytes, for benches; default: no padding). Record `n` is the same
//! whenever it is generated (`{"sensor":"sensor-0003","seq":n,"temp":..,"humidity":..}`, keyed
//! by the sensor), so a replay after a crash produces identical records. The position is the
//! sequence number of the next record, 8 bytes big-endian.

use appliance_sdk::{Config, Record, Source, SourceRecord, host, source};

#[source]
#[derive(Debug)]
pub struct Generator {
    rate: u64,
    sensors: u64,
    count: Option<u64>,
    bytes: usize,
    next: u64,
    /// When pacing started and the sequence number it started at.
    started_ms: i64,
    started_at: u64,
}

impl Source for Generator {
    fn init(config: Config, resume_after: Option<Vec<u8>>) -> Result<Self, String> {
        config.only(&["rate", "sensors", "count", "bytes"])?;
        let rate: u64 = config.parse_or("rate", 1000)?;
        let sensors: u64 = config.parse_or("sensors", 10)?;
        let bytes: usize = config.parse_or("bytes", 0)?;
        if bytes > 1 << 20 {
            return Err("`bytes` is at most 1048576".to_owned());
        }
        if !(1..=10_000_000).contains(&rate) {
            return Err("`rate` is 1 to 10000000 records per second".to_owned());
        }
        if sensors == 0 {
            return Err("`sensors` is at least 1".to_owned());
        }
        let count = config
            .get("count")
            .map(|_| config.parse_or("count", 0u64))
            .transpose()?;
        let next = match resume_after {
            None => 0,
            Some(position) => {
                u64::from_be_bytes(position.as_slice().try_into().map_err(|_| {
                    format!("a generator position is 8 bytes, not {}", position.len())
                })?)
            }
        };
        Ok(Self {
            rate,
            sensors,
            count,
            bytes,
            next,
            started_ms: host::now_ms(),
            started_at: next,
        })
    }

    fn poll(&mut self, max: u32) -> Result<Vec<SourceRecord>, String> {
        let now = host::now_ms();
        let elapsed_ms = u64::try_from(now - self.started_ms).unwrap_or(0);
        let due = self.started_at + elapsed_ms.saturating_mul(self.rate) / 1000;
        let mut end = due.min(self.next + u64::from(max));
        if let Some(count) = self.count {
            end = end.min(count);
        }
        let records = (self.next..end.max(self.next))
            .map(|seq| self.reading(seq, now))
            .collect();
        self.next = end.max(self.next);
        Ok(records)
    }

    /// Record `n` is the same whenever it is made and the position says which comes next, so
    /// nothing needs acknowledging: the appliance may poll while earlier polls are still
    /// transformed and appended.
    fn polls_ahead(&self) -> bool {
        true
    }
}

impl Generator {
    /// Reading `seq`, timestamped `now` (one clock read per poll, not per record).
    fn reading(&self, seq: u64, now: i64) -> SourceRecord {
        // Written directly rather than through a JSON document or `format!`: a bench source
        // must cost little per record. Every part is a number or a fixed ASCII name, so no
        // escaping.
        let mut digits = itoa::Buffer::new();
        let sensor = digits.format(seq % self.sensors).as_bytes();
        let mut key = b"sensor-".to_vec();
        key.extend(std::iter::repeat_n(
            b'0',
            4usize.saturating_sub(sensor.len()),
        ));
        key.extend_from_slice(sensor);
        let mut value = Vec::with_capacity(self.bytes.max(64));
        value.extend_from_slice(br#"{"sensor":""#);
        value.extend_from_slice(&key);
        value.extend_from_slice(br#"","seq":"#);
        value.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        value.extend_from_slice(br#","temp":"#);
        push_fixed(&mut value, seq * 37 % 5000, 100);
        value.extend_from_slice(br#","humidity":"#);
        push_fixed(&mut value, seq * 13 % 1000, 10);
        // `,"note":""` adds 10 bytes around the padding, the closing brace one more.
        if let Some(padding) = self.bytes.checked_sub(value.len() + 11) {
            value.extend_from_slice(br#","note":""#);
            value.resize(value.len() + padding, b'.');
            value.push(b'"');
        }
        value.push(b'}');
        let mut record = Record::from_value(value);
        record.key = Some(key);
        record.timestamp = now;
        SourceRecord {
            record,
            position: (seq + 1).to_be_bytes().to_vec(),
        }
    }
}

/// Appends `units / scale` (`scale` 10 or 100) as `{:?}` writes that `f64`: the shortest
/// decimal, with at least one digit after the point (`27.3`, `27.0`, `0.05`).
fn push_fixed(out: &mut Vec<u8>, units: u64, scale: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(units / scale).as_bytes());
    out.push(b'.');
    let mut fraction = units % scale;
    let mut place = scale / 10;
    loop {
        out.push(b'0' + (fraction / place) as u8);
        fraction %= place;
        place /= 10;
        if fraction == 0 || place == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generator(pairs: &[(&str, &str)], resume_after: Option<u64>) -> Generator {
        Generator::init(
            pairs.iter().copied().collect(),
            resume_after.map(|p| p.to_be_bytes().to_vec()),
        )
        .unwrap()
    }

    #[test]
    fn emits_numbered_readings_up_to_the_count_and_resumes_after_a_position() {
        let mut all = generator(&[("rate", "10000000"), ("count", "5")], None);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let first = all.poll(3).unwrap();
        assert_eq!(first.len(), 3);
        assert_eq!(first[2].position, 3u64.to_be_bytes());
        let value: serde_json::Value =
            serde_json::from_slice(first[1].record.value.as_deref().unwrap()).unwrap();
        assert_eq!(value["seq"], 1);
        assert_eq!(first[1].record.key.as_deref(), Some(&b"sensor-0001"[..]));
        assert_eq!(all.poll(10).unwrap().len(), 2, "the count stops it");
        assert!(all.poll(10).unwrap().is_empty());

        let mut resumed = generator(&[("rate", "10000000"), ("count", "5")], Some(3));
        std::thread::sleep(std::time::Duration::from_millis(2));
        let rest = resumed.poll(10).unwrap();
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0].record.value, value_of(3), "a replay is identical");
    }

    #[test]
    fn pads_values_to_the_size_asked() {
        let padded = generator(&[("bytes", "200")], None).reading(12345, 0);
        assert_eq!(padded.record.value.as_ref().map(Vec::len), Some(200));
        let value: serde_json::Value =
            serde_json::from_slice(padded.record.value.as_deref().unwrap()).unwrap();
        assert_eq!(value["seq"], 12345);
    }

    fn value_of(seq: u64) -> Option<Vec<u8>> {
        generator(&[], None).reading(seq, 0).record.value
    }

    /// The readings as the first version wrote them, through `format!`: a replay after an
    /// upgrade must produce the same records.
    fn reading_by_format(sensors: u64, bytes: usize, seq: u64) -> (Vec<u8>, Vec<u8>) {
        let sensor = format!("sensor-{:04}", seq % sensors);
        let mut value = format!(
            r#"{{"sensor":"{sensor}","seq":{seq},"temp":{:?},"humidity":{:?}"#,
            (seq * 37 % 5000) as f64 / 100.0,
            (seq * 13 % 1000) as f64 / 10.0,
        );
        if let Some(padding) = bytes.checked_sub(value.len() + 11) {
            value.push_str(r#","note":""#);
            value.extend(std::iter::repeat_n('.', padding));
            value.push('"');
        }
        value.push('}');
        (sensor.into_bytes(), value.into_bytes())
    }

    #[test]
    fn readings_are_byte_for_byte_those_of_the_formatted_version() {
        for (sensors, bytes) in [(10, 0), (10, 200), (12_345, 200), (1, 40)] {
            let generator = generator(
                &[
                    ("sensors", &sensors.to_string()),
                    ("bytes", &bytes.to_string()),
                ],
                None,
            );
            for seq in (0..10_000).chain([123_456_789, 98_765_432_109_876]) {
                let reading = generator.reading(seq, 0).record;
                let (key, value) = reading_by_format(sensors, bytes, seq);
                assert_eq!(reading.key, Some(key), "key of {seq}");
                assert_eq!(reading.value, Some(value), "value of {seq}");
            }
        }
    }

    #[test]
    fn bad_config_is_rejected() {
        let init = |pairs: &[(&str, &str)]| Generator::init(pairs.iter().copied().collect(), None);
        assert!(init(&[("rate", "0")]).is_err());
        assert!(init(&[("sensors", "0")]).is_err());
        assert!(init(&[("colour", "x")]).is_err());
        assert!(Generator::init(Config::default(), Some(vec![1, 2])).is_err());
    }
}
