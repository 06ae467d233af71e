//! State that survives restarts, for stateful transforms: buckets of keys and values in key
//! order, and window stores (a value per key and window start). The appliance keeps them for
//! one pipeline partition, writes every batch's changes to the compacted changelog topic
//! `<pipeline>.<plugin>.changelog` together with the batch's output and input position, and
//! restores them when the partition starts again: after a crash no record is counted twice
//! or lost.
//!
//! Changes made while a batch is processed are kept only if `process` succeeds; when it
//! rejects a record the appliance discards them and processes the batch again without that
//! record. State is restored before the first batch: open stores in `init`, read them in
//! `apply`/`process`.
//!
//! [`KeyValueStore`] and [`WindowStore`] are typed: keys and values go through [`Codec`]
//! (integers, text and bytes in an encoding whose byte order is their order; any serde type
//! as [`Json`]). [`Bucket`] is the untyped store underneath. Outside a WebAssembly host (in a
//! plugin's native unit tests) a bucket lives in memory, per thread.

use std::marker::PhantomData;

/// An untyped bucket: byte keys in bytewise order, byte values.
#[derive(Debug)]
pub struct Bucket(backend::Handle);

/// Entries as scans return them: (key, value), in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The window store's starts are milliseconds since the Unix epoch (or any `i64` order).
pub type WindowStart = i64;

impl Bucket {
    /// Opens (creating if new) the bucket `name` of this instance's store.
    pub fn open(name: &str) -> Result<Self, String> {
        backend::Handle::open(name).map(Self)
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.0.get(key)
    }

    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
        self.0.set(key, value)
    }

    pub fn delete(&self, key: &[u8]) -> Result<(), String> {
        self.0.delete(key)
    }

    pub fn exists(&self, key: &[u8]) -> Result<bool, String> {
        self.0.get(key).map(|value| value.is_some())
    }

    /// Up to `limit` entries with `start <= key < end` (no `end`: to the last key), in key
    /// order; the appliance returns at most 10,000 (or 16 MiB) per call. Page on from the
    /// last key returned plus a zero byte.
    pub fn range(&self, start: &[u8], end: Option<&[u8]>, limit: u32) -> Result<Entries, String> {
        self.0.range(start, end, limit)
    }

    /// Up to `limit` entries whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8], limit: u32) -> Result<Entries, String> {
        self.0.scan_prefix(prefix, limit)
    }

    pub fn window_put(&self, key: &[u8], start: WindowStart, value: &[u8]) -> Result<(), String> {
        self.0.window_put(key, start, value)
    }

    pub fn window_delete(&self, key: &[u8], start: WindowStart) -> Result<(), String> {
        self.0.window_delete(key, start)
    }

    /// Up to `limit` windows of `key` with `earliest <= start <= latest`, by start.
    pub fn window_fetch(
        &self,
        key: &[u8],
        earliest: WindowStart,
        latest: WindowStart,
        limit: u32,
    ) -> Result<Vec<(WindowStart, Vec<u8>)>, String> {
        self.0.window_fetch(key, earliest, latest, limit)
    }
}

/// How a typed store's keys and values become bytes. The integer and text encodings keep
/// order: `a < b` exactly when `a.encode() < b.encode()`, so ranges over them are ranges of
/// numbers or text.
pub trait Codec: Sized {
    fn encode(&self) -> Result<Vec<u8>, String>;
    fn decode(bytes: &[u8]) -> Result<Self, String>;
}

fn fixed<const N: usize>(bytes: &[u8], what: &str) -> Result<[u8; N], String> {
    bytes
        .try_into()
        .map_err(|_| format!("a stored {what} is {} bytes, not {N}", bytes.len()))
}

impl Codec for u64 {
    fn encode(&self) -> Result<Vec<u8>, String> {
        Ok(self.to_be_bytes().to_vec())
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        fixed(bytes, "u64").map(u64::from_be_bytes)
    }
}

impl Codec for i64 {
    fn encode(&self) -> Result<Vec<u8>, String> {
        Ok(((*self as u64) ^ (1 << 63)).to_be_bytes().to_vec())
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        fixed(bytes, "i64").map(|b| (u64::from_be_bytes(b) ^ (1 << 63)) as i64)
    }
}

impl Codec for f64 {
    /// Negative numbers have every bit flipped, the others their sign bit: the bytes order
    /// like the numbers. `-0.0` is stored as `0.0`, and every NaN as one NaN, after infinity.
    fn encode(&self) -> Result<Vec<u8>, String> {
        let canonical = if self.is_nan() {
            f64::NAN
        } else if *self == 0.0 {
            0.0
        } else {
            *self
        };
        let bits = canonical.to_bits();
        let ordered = if bits >> 63 == 1 {
            !bits
        } else {
            bits ^ (1 << 63)
        };
        Ok(ordered.to_be_bytes().to_vec())
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let ordered = u64::from_be_bytes(fixed(bytes, "f64")?);
        let bits = if ordered >> 63 == 1 {
            ordered ^ (1 << 63)
        } else {
            !ordered
        };
        Ok(f64::from_bits(bits))
    }
}

impl Codec for String {
    fn encode(&self) -> Result<Vec<u8>, String> {
        Ok(self.as_bytes().to_vec())
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        String::from_utf8(bytes.to_vec()).map_err(|e| format!("stored text is not UTF-8: {e}"))
    }
}

impl Codec for Vec<u8> {
    fn encode(&self) -> Result<Vec<u8>, String> {
        Ok(self.clone())
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        Ok(bytes.to_vec())
    }
}

/// Any serde type, stored as JSON (its bytes do not order like the values).
#[derive(Debug, Clone, PartialEq)]
pub struct Json<T>(pub T);

impl<T: serde::Serialize + serde::de::DeserializeOwned> Codec for Json<T> {
    fn encode(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(&self.0).map_err(|e| format!("a value cannot be stored as JSON: {e}"))
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes)
            .map(Json)
            .map_err(|e| format!("a stored value is not the JSON expected: {e}"))
    }
}

fn decode_entries<K: Codec, V: Codec>(entries: Entries) -> Result<Vec<(K, V)>, String> {
    entries
        .into_iter()
        .map(|(k, v)| Ok((K::decode(&k)?, V::decode(&v)?)))
        .collect()
}

/// A bucket with typed keys and values.
#[derive(Debug)]
pub struct KeyValueStore<K, V> {
    bucket: Bucket,
    types: PhantomData<fn(K, V)>,
}

impl<K: Codec, V: Codec> KeyValueStore<K, V> {
    pub fn open(name: &str) -> Result<Self, String> {
        Ok(Self {
            bucket: Bucket::open(name)?,
            types: PhantomData,
        })
    }

    pub fn get(&self, key: &K) -> Result<Option<V>, String> {
        self.bucket
            .get(&key.encode()?)?
            .map(|value| V::decode(&value))
            .transpose()
    }

    pub fn put(&self, key: &K, value: &V) -> Result<(), String> {
        self.bucket.set(&key.encode()?, &value.encode()?)
    }

    pub fn delete(&self, key: &K) -> Result<(), String> {
        self.bucket.delete(&key.encode()?)
    }

    /// Up to `limit` entries with `from <= key < to` (no `to`: to the last key), in key order.
    pub fn range(&self, from: &K, to: Option<&K>, limit: u32) -> Result<Vec<(K, V)>, String> {
        let to = to.map(Codec::encode).transpose()?;
        decode_entries(self.bucket.range(&from.encode()?, to.as_deref(), limit)?)
    }

    /// The untyped bucket, for prefix scans over encoded keys.
    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }
}

/// A store of one value per key and window start, fetched by key and a span of starts.
#[derive(Debug)]
pub struct WindowStore<K, V> {
    bucket: Bucket,
    types: PhantomData<fn(K, V)>,
}

impl<K: Codec, V: Codec> WindowStore<K, V> {
    pub fn open(name: &str) -> Result<Self, String> {
        Ok(Self {
            bucket: Bucket::open(name)?,
            types: PhantomData,
        })
    }

    pub fn put(&self, key: &K, start: WindowStart, value: &V) -> Result<(), String> {
        self.bucket
            .window_put(&key.encode()?, start, &value.encode()?)
    }

    pub fn get(&self, key: &K, start: WindowStart) -> Result<Option<V>, String> {
        Ok(self
            .fetch(key, start, start, 1)?
            .pop()
            .map(|(_, value)| value))
    }

    pub fn delete(&self, key: &K, start: WindowStart) -> Result<(), String> {
        self.bucket.window_delete(&key.encode()?, start)
    }

    /// Up to `limit` windows of `key` with `earliest <= start <= latest`, by start.
    pub fn fetch(
        &self,
        key: &K,
        earliest: WindowStart,
        latest: WindowStart,
        limit: u32,
    ) -> Result<Vec<(WindowStart, V)>, String> {
        self.bucket
            .window_fetch(&key.encode()?, earliest, latest, limit)?
            .into_iter()
            .map(|(start, value)| Ok((start, V::decode(&value)?)))
            .collect()
    }
}

#[cfg(target_family = "wasm")]
mod backend {
    use super::Entries;
    use crate::wit::appliance::plugin::state::{self, Error};

    #[derive(Debug)]
    pub struct Handle(state::Bucket);

    fn message(error: Error) -> String {
        match error {
            Error::TooLarge(message) => message,
        }
    }

    impl Handle {
        pub fn open(name: &str) -> Result<Self, String> {
            state::open(name).map(Self).map_err(message)
        }

        pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
            self.0.get(key).map_err(message)
        }

        pub fn set(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
            self.0.set(key, value).map_err(message)
        }

        pub fn delete(&self, key: &[u8]) -> Result<(), String> {
            self.0.delete(key).map_err(message)
        }

        pub fn range(
            &self,
            start: &[u8],
            end: Option<&[u8]>,
            limit: u32,
        ) -> Result<Entries, String> {
            self.0.range(start, end, limit).map_err(message)
        }

        pub fn scan_prefix(&self, prefix: &[u8], limit: u32) -> Result<Entries, String> {
            self.0.scan_prefix(prefix, limit).map_err(message)
        }

        pub fn window_put(&self, key: &[u8], start: i64, value: &[u8]) -> Result<(), String> {
            self.0.window_put(key, start, value).map_err(message)
        }

        pub fn window_delete(&self, key: &[u8], start: i64) -> Result<(), String> {
            self.0.window_delete(key, start).map_err(message)
        }

        pub fn window_fetch(
            &self,
            key: &[u8],
            earliest: i64,
            latest: i64,
            limit: u32,
        ) -> Result<Vec<(i64, Vec<u8>)>, String> {
            self.0
                .window_fetch(key, earliest, latest, limit)
                .map_err(message)
        }
    }
}

/// In memory, per thread: what a plugin's native unit tests run against.
#[cfg(not(target_family = "wasm"))]
mod backend {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::Entries;

    type Map = BTreeMap<Vec<u8>, Vec<u8>>;

    thread_local! {
        /// Bucket name -> (key-values, windows).
        static BUCKETS: RefCell<BTreeMap<String, (Map, Map)>> =
            const { RefCell::new(BTreeMap::new()) };
    }

    #[derive(Debug)]
    pub struct Handle(String);

    fn window_key(key: &[u8], start: i64) -> Vec<u8> {
        let mut full = (key.len() as u32).to_be_bytes().to_vec();
        full.extend_from_slice(key);
        full.extend_from_slice(&((start as u64) ^ (1 << 63)).to_be_bytes());
        full
    }

    impl Handle {
        pub fn open(name: &str) -> Result<Self, String> {
            BUCKETS.with_borrow_mut(|b| {
                b.entry(name.to_owned()).or_default();
            });
            Ok(Self(name.to_owned()))
        }

        fn with<R>(&self, f: impl FnOnce(&mut (Map, Map)) -> R) -> R {
            BUCKETS.with_borrow_mut(|b| f(b.entry(self.0.clone()).or_default()))
        }

        pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
            Ok(self.with(|(kv, _)| kv.get(key).cloned()))
        }

        pub fn set(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
            self.with(|(kv, _)| kv.insert(key.to_vec(), value.to_vec()));
            Ok(())
        }

        pub fn delete(&self, key: &[u8]) -> Result<(), String> {
            self.with(|(kv, _)| kv.remove(key));
            Ok(())
        }

        pub fn range(
            &self,
            start: &[u8],
            end: Option<&[u8]>,
            limit: u32,
        ) -> Result<Entries, String> {
            Ok(self.with(|(kv, _)| {
                kv.range(start.to_vec()..)
                    .take_while(|(k, _)| end.is_none_or(|end| k.as_slice() < end))
                    .take(limit as usize)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }))
        }

        pub fn scan_prefix(&self, prefix: &[u8], limit: u32) -> Result<Entries, String> {
            Ok(self.with(|(kv, _)| {
                kv.range(prefix.to_vec()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .take(limit as usize)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }))
        }

        pub fn window_put(&self, key: &[u8], start: i64, value: &[u8]) -> Result<(), String> {
            self.with(|(_, windows)| windows.insert(window_key(key, start), value.to_vec()));
            Ok(())
        }

        pub fn window_delete(&self, key: &[u8], start: i64) -> Result<(), String> {
            self.with(|(_, windows)| windows.remove(&window_key(key, start)));
            Ok(())
        }

        pub fn window_fetch(
            &self,
            key: &[u8],
            earliest: i64,
            latest: i64,
            limit: u32,
        ) -> Result<Vec<(i64, Vec<u8>)>, String> {
            if earliest > latest {
                return Ok(Vec::new());
            }
            let prefix = window_key(key, 0).len() - 8;
            Ok(self.with(|(_, windows)| {
                windows
                    .range(window_key(key, earliest)..=window_key(key, latest))
                    .take(limit as usize)
                    .filter_map(|(full, value)| {
                        let start: [u8; 8] = full[prefix..].try_into().ok()?;
                        Some((
                            (u64::from_be_bytes(start) ^ (1 << 63)) as i64,
                            value.clone(),
                        ))
                    })
                    .collect()
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn encoded<T: Codec>(value: &T) -> Vec<u8> {
        value.encode().unwrap()
    }

    proptest! {
        #[test]
        fn integer_and_float_encodings_order_like_the_numbers(a: i64, b: i64, x: u64, y: u64, f: f64, g: f64) {
            prop_assert_eq!(a.cmp(&b), encoded(&a).cmp(&encoded(&b)));
            prop_assert_eq!(x.cmp(&y), encoded(&x).cmp(&encoded(&y)));
            prop_assert_eq!(i64::decode(&encoded(&a)).unwrap(), a);
            if !f.is_nan() && !g.is_nan() {
                prop_assert_eq!(f64::decode(&encoded(&f)).unwrap(), f);
                prop_assert_eq!(f.partial_cmp(&g), Some(encoded(&f).cmp(&encoded(&g))));
            }
        }
    }

    #[test]
    fn zeros_and_nans_have_one_encoding_each_and_nan_sorts_last() {
        assert_eq!(encoded(&-0.0f64), encoded(&0.0f64));
        assert_eq!(encoded(&-f64::NAN), encoded(&f64::NAN));
        assert!(encoded(&f64::NAN) > encoded(&f64::INFINITY));
    }

    #[test]
    fn typed_stores_read_back_what_they_wrote_in_order() {
        let counts: KeyValueStore<String, u64> = KeyValueStore::open("counts").unwrap();
        for (key, count) in [("b", 2), ("a", 1), ("c", 3)] {
            counts.put(&key.to_owned(), &count).unwrap();
        }
        counts.delete(&"c".to_owned()).unwrap();
        let all = counts.range(&String::new(), None, 10).unwrap();
        assert_eq!(all, [("a".to_owned(), 1), ("b".to_owned(), 2)]);
        let windows: WindowStore<String, Json<Vec<u32>>> = WindowStore::open("w").unwrap();
        let key = "sensor".to_owned();
        for start in [-60_000, 0, 60_000, 120_000] {
            windows.put(&key, start, &Json(vec![1, 2])).unwrap();
        }
        let fetched: Vec<i64> = windows
            .fetch(&key, -60_000, 60_000, 10)
            .unwrap()
            .into_iter()
            .map(|(start, _)| start)
            .collect();
        assert_eq!(fetched, [-60_000, 0, 60_000]);
        assert_eq!(windows.get(&key, 0).unwrap(), Some(Json(vec![1, 2])));
        windows.delete(&key, 0).unwrap();
        assert_eq!(windows.get(&key, 0).unwrap(), None);
    }
}
