//! The state store of a stateful transform instance (`appliance:plugin/state`): ordered
//! keys and values in memory, the changes of the call in progress kept apart until the call
//! succeeds, and the changes of the calls since the pipeline last took them, which it writes
//! to the store's changelog with the batch's output.
//!
//! Every entry of every bucket is one key of one ordered map, so that a key is also the
//! entry's changelog key:
//!
//! ```text
//! [1] [bucket length: u16 BE] [bucket] [key]                                      key-value
//! [2] [bucket length: u16 BE] [bucket] [key length: u32 BE] [key] [start: u64 BE]  window
//! [4]                                                      the commit entry of a batch
//! ```
//!
//! A window's start is stored with its sign bit flipped, so that starts order as numbers.
//! Invariants: `committed` holds what the changelog holds once the changes taken so far are
//! written; `bytes` is the size of its keys and values and never exceeds [`MAX_STATE_BYTES`].

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;
use wasmtime::component::Resource;

use super::bindings::appliance::plugin::state::{self, Error};
use super::host::InstanceState;

/// What one instance's store holds at most, in key and value bytes: half a changelog batch,
/// so that a batch that rewrites all of it still commits as one.
const MAX_STATE_BYTES: usize = 32 << 20;
const MAX_KEY_BYTES: usize = 64 << 10;
const MAX_VALUE_BYTES: usize = 4 << 20;
const MAX_BUCKETS: usize = 64;
/// Bucket handles an instance holds open at once.
const MAX_OPEN_HANDLES: usize = 1024;
const MAX_BUCKET_NAME: usize = 255;
/// What one scan returns at most, whatever its limit: entries, and their bytes.
const MAX_SCAN_ENTRIES: usize = 10_000;
const MAX_SCAN_BYTES: usize = 16 << 20;

const KEY_VALUE: u8 = 1;
const WINDOW: u8 = 2;
/// The last entry of each batch's changes: it holds no state (so compaction keeps nothing
/// stale for it when the pipeline tags it).
const COMMIT_ENTRY: u8 = 4;

/// A bucket an instance opened: the prefixes of its two kinds of entries.
#[derive(Debug)]
pub struct Bucket {
    key_values: Vec<u8>,
    windows: Vec<u8>,
}

impl Bucket {
    fn new(name: &str) -> Self {
        let prefix = |kind: u8| {
            let mut prefix = Vec::with_capacity(3 + name.len());
            prefix.push(kind);
            prefix.extend_from_slice(&(name.len() as u16).to_be_bytes());
            prefix.extend_from_slice(name.as_bytes());
            prefix
        };
        Self {
            key_values: prefix(KEY_VALUE),
            windows: prefix(WINDOW),
        }
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        [&self.key_values[..], key].concat()
    }

    /// The prefix of every window of `key`.
    fn windows_of(&self, key: &[u8]) -> Vec<u8> {
        let mut prefix = Vec::with_capacity(self.windows.len() + 4 + key.len() + 8);
        prefix.extend_from_slice(&self.windows);
        prefix.extend_from_slice(&(key.len() as u32).to_be_bytes());
        prefix.extend_from_slice(key);
        prefix
    }

    fn window(&self, key: &[u8], start: i64) -> Vec<u8> {
        let mut full = self.windows_of(key);
        full.extend_from_slice(&ordered(start).to_be_bytes());
        full
    }
}

fn ordered(start: i64) -> u64 {
    (start as u64) ^ (1 << 63)
}

fn start_of(encoded: &[u8]) -> Option<i64> {
    let bytes: [u8; 8] = encoded.try_into().ok()?;
    Some((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

/// One instance's state.
#[derive(Debug, Default)]
pub struct StateStore {
    committed: BTreeMap<Vec<u8>, Bytes>,
    bytes: usize,
    /// The call in progress: its changes (`None` deletes), and how they change `bytes`.
    call: BTreeMap<Vec<u8>, Option<Bytes>>,
    call_bytes: isize,
    /// The changes of successful calls the pipeline has not taken yet.
    uncommitted: BTreeMap<Vec<u8>, Option<Bytes>>,
    buckets: Vec<String>,
    open_handles: usize,
}

/// The changes one batch made, in changelog form: key, and value (`None` deletes).
pub type StateChanges = Vec<(Bytes, Option<Bytes>)>;

impl StateStore {
    /// Makes the changes of the call that just returned successfully part of the state.
    pub(super) fn keep_call(&mut self) {
        self.bytes = self.bytes.saturating_add_signed(self.call_bytes);
        self.call_bytes = 0;
        for (key, value) in std::mem::take(&mut self.call) {
            match &value {
                Some(value) => self.committed.insert(key.clone(), value.clone()),
                None => self.committed.remove(&key),
            };
            self.uncommitted.insert(key, value);
        }
    }

    /// Forgets the changes of a call that failed or rejected a record.
    pub(super) fn discard_call(&mut self) {
        self.call.clear();
        self.call_bytes = 0;
    }

    /// The changes since the last time they were taken, ended by the commit entry (none
    /// when nothing changed).
    pub fn take_changes(&mut self) -> StateChanges {
        let changes = std::mem::take(&mut self.uncommitted);
        if changes.is_empty() {
            return Vec::new();
        }
        changes
            .into_iter()
            .map(|(key, value)| (Bytes::from(key), value))
            .chain(std::iter::once((
                Bytes::from_static(&[COMMIT_ENTRY]),
                Some(Bytes::new()),
            )))
            .collect()
    }

    /// Applies one changelog entry read back on start.
    pub fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        match key.first() {
            Some(&COMMIT_ENTRY) if key.len() == 1 => return Ok(()),
            Some(&(KEY_VALUE | WINDOW)) => {}
            _ => return Err(format!("an entry with an unknown key {key:02x?}")),
        }
        if let Some(old) = self.committed.remove(key) {
            self.bytes -= key.len() + old.len();
        }
        if let Some(value) = value {
            self.bytes += key.len() + value.len();
            self.committed
                .insert(key.to_vec(), Bytes::copy_from_slice(value));
        }
        Ok(())
    }

    /// Every entry, in key order (for a snapshot). Only between calls.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &Bytes)> {
        self.committed.iter().map(|(k, v)| (k.as_slice(), v))
    }

    /// The entries and their bytes.
    pub fn size(&self) -> (usize, usize) {
        (self.committed.len(), self.bytes)
    }

    fn get(&self, key: &[u8]) -> Option<&Bytes> {
        match self.call.get(key) {
            Some(change) => change.as_ref(),
            None => self.committed.get(key),
        }
    }

    fn put(&mut self, key: Vec<u8>, value: Option<Bytes>) -> Result<(), Error> {
        let old = self.get(&key).map(|old| key.len() + old.len());
        if old.is_none() && value.is_none() {
            // Deleting what is not there changes nothing, and costs the changelog nothing.
            return Ok(());
        }
        let old = old.unwrap_or(0);
        let new = value.as_ref().map_or(0, |value| key.len() + value.len());
        let call_bytes = self.call_bytes + new as isize - old as isize;
        if new > old && self.bytes.saturating_add_signed(call_bytes) > MAX_STATE_BYTES {
            return Err(Error::TooLarge(format!(
                "the store would hold more than {} MiB; delete what the transform no longer needs",
                MAX_STATE_BYTES >> 20
            )));
        }
        self.call_bytes = call_bytes;
        self.call.insert(key, value);
        Ok(())
    }

    /// Up to `limit` entries from `from` on while `within` holds, in key order: the committed
    /// entries with the call's changes over them.
    fn scan(
        &self,
        from: &[u8],
        within: impl Fn(&[u8]) -> bool,
        limit: u32,
    ) -> Vec<(&[u8], &Bytes)> {
        let bound = (Bound::Included(from), Bound::Unbounded);
        let mut committed = self.committed.range::<[u8], _>(bound).peekable();
        let mut call = self.call.range::<[u8], _>(bound).peekable();
        let limit = (limit as usize).min(MAX_SCAN_ENTRIES);
        let mut found = Vec::new();
        let mut bytes = 0usize;
        while found.len() < limit && bytes < MAX_SCAN_BYTES {
            let next = match (committed.peek(), call.peek()) {
                (Some((c, _)), Some((k, _))) if c < k => {
                    committed.next().map(|(k, v)| (k, Some(v)))
                }
                (Some((c, _)), Some((k, _))) => {
                    if c == k {
                        committed.next();
                    }
                    call.next().map(|(k, v)| (k, v.as_ref()))
                }
                (Some(_), None) => committed.next().map(|(k, v)| (k, Some(v))),
                (None, Some(_)) => call.next().map(|(k, v)| (k, v.as_ref())),
                (None, None) => None,
            };
            let Some((key, value)) = next else { break };
            if !within(key) {
                break;
            }
            if let Some(value) = value {
                bytes += key.len() + value.len();
                found.push((key.as_slice(), value));
            }
        }
        found
    }
}

fn check_key(key: &[u8]) -> Result<(), Error> {
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::TooLarge(format!(
            "a key of {} bytes; keys take at most {} KiB",
            key.len(),
            MAX_KEY_BYTES >> 10
        )));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), Error> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::TooLarge(format!(
            "a value of {} bytes; values take at most {} MiB",
            value.len(),
            MAX_VALUE_BYTES >> 20
        )));
    }
    Ok(())
}

impl InstanceState {
    fn bucket(&self, bucket: &Resource<Bucket>) -> wasmtime::Result<&Bucket> {
        Ok(self.table.get(bucket)?)
    }
}

type Answer<T> = wasmtime::Result<Result<T, Error>>;

impl state::Host for InstanceState {
    fn open(&mut self, identifier: String) -> Answer<Resource<Bucket>> {
        if identifier.len() > MAX_BUCKET_NAME {
            return Ok(Err(Error::TooLarge(format!(
                "a bucket name takes at most {MAX_BUCKET_NAME} bytes"
            ))));
        }
        if self.state.open_handles >= MAX_OPEN_HANDLES {
            return Ok(Err(Error::TooLarge(format!(
                "an instance holds at most {MAX_OPEN_HANDLES} bucket handles open; open each \
                 bucket once and keep it"
            ))));
        }
        let buckets = &mut self.state.buckets;
        if !buckets.contains(&identifier) {
            if buckets.len() >= MAX_BUCKETS {
                return Ok(Err(Error::TooLarge(format!(
                    "an instance opens at most {MAX_BUCKETS} buckets"
                ))));
            }
            buckets.push(identifier.clone());
        }
        let handle = self.table.push(Bucket::new(&identifier))?;
        self.state.open_handles += 1;
        Ok(Ok(handle))
    }
}

impl state::HostBucket for InstanceState {
    fn get(&mut self, bucket: Resource<Bucket>, key: Vec<u8>) -> Answer<Option<Vec<u8>>> {
        let full = self.bucket(&bucket)?.key(&key);
        Ok(Ok(self.state.get(&full).map(|value| value.to_vec())))
    }

    fn set(&mut self, bucket: Resource<Bucket>, key: Vec<u8>, value: Vec<u8>) -> Answer<()> {
        let full = self.bucket(&bucket)?.key(&key);
        Ok(check_key(&key)
            .and_then(|()| check_value(&value))
            .and_then(|()| self.state.put(full, Some(Bytes::from(value)))))
    }

    fn delete(&mut self, bucket: Resource<Bucket>, key: Vec<u8>) -> Answer<()> {
        let full = self.bucket(&bucket)?.key(&key);
        Ok(check_key(&key).and_then(|()| self.state.put(full, None)))
    }

    fn exists(&mut self, bucket: Resource<Bucket>, key: Vec<u8>) -> Answer<bool> {
        let full = self.bucket(&bucket)?.key(&key);
        Ok(Ok(self.state.get(&full).is_some()))
    }

    fn range(
        &mut self,
        bucket: Resource<Bucket>,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: u32,
    ) -> Answer<Vec<(Vec<u8>, Vec<u8>)>> {
        let bucket = self.bucket(&bucket)?;
        let prefix = &bucket.key_values;
        let end = end.map(|end| bucket.key(&end));
        let within = |key: &[u8]| {
            key.starts_with(prefix) && end.as_ref().is_none_or(|end| key < end.as_slice())
        };
        Ok(Ok(self
            .state
            .scan(&bucket.key(&start), within, limit)
            .into_iter()
            .map(|(key, value)| (key[prefix.len()..].to_vec(), value.to_vec()))
            .collect()))
    }

    fn scan_prefix(
        &mut self,
        bucket: Resource<Bucket>,
        prefix: Vec<u8>,
        limit: u32,
    ) -> Answer<Vec<(Vec<u8>, Vec<u8>)>> {
        let bucket = self.bucket(&bucket)?;
        let from = bucket.key(&prefix);
        Ok(Ok(self
            .state
            .scan(&from, |key| key.starts_with(&from), limit)
            .into_iter()
            .map(|(key, value)| (key[bucket.key_values.len()..].to_vec(), value.to_vec()))
            .collect()))
    }

    fn window_put(
        &mut self,
        bucket: Resource<Bucket>,
        key: Vec<u8>,
        window_start: i64,
        value: Vec<u8>,
    ) -> Answer<()> {
        let full = self.bucket(&bucket)?.window(&key, window_start);
        Ok(check_key(&key)
            .and_then(|()| check_value(&value))
            .and_then(|()| self.state.put(full, Some(Bytes::from(value)))))
    }

    fn window_delete(
        &mut self,
        bucket: Resource<Bucket>,
        key: Vec<u8>,
        window_start: i64,
    ) -> Answer<()> {
        let full = self.bucket(&bucket)?.window(&key, window_start);
        Ok(check_key(&key).and_then(|()| self.state.put(full, None)))
    }

    fn window_fetch(
        &mut self,
        bucket: Resource<Bucket>,
        key: Vec<u8>,
        earliest: i64,
        latest: i64,
        limit: u32,
    ) -> Answer<Vec<(i64, Vec<u8>)>> {
        let bucket = self.bucket(&bucket)?;
        let prefix = bucket.windows_of(&key);
        let last = bucket.window(&key, latest);
        let within = |full: &[u8]| full.starts_with(&prefix) && full <= last.as_slice();
        Ok(Ok(self
            .state
            .scan(&bucket.window(&key, earliest), within, limit)
            .into_iter()
            .filter_map(|(full, value)| Some((start_of(&full[prefix.len()..])?, value.to_vec())))
            .collect()))
    }

    fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        self.state.open_handles -= 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(entries: &[(&[u8], Option<&[u8]>)]) -> StateStore {
        let mut store = StateStore::default();
        for (key, value) in entries {
            store
                .put(key.to_vec(), value.map(Bytes::copy_from_slice))
                .unwrap();
        }
        store
    }

    #[test]
    fn a_scan_sees_the_calls_changes_over_the_committed_entries() {
        let mut store = store_with(&[(b"a", Some(b"1")), (b"b", Some(b"2")), (b"c", Some(b"3"))]);
        store.keep_call();
        store.put(b"b".to_vec(), None).unwrap();
        store
            .put(b"bb".to_vec(), Some(Bytes::from_static(b"x")))
            .unwrap();
        let seen: Vec<_> = store
            .scan(b"a", |_| true, 10)
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v.clone()))
            .collect();
        assert_eq!(
            seen,
            [
                (b"a".to_vec(), Bytes::from_static(b"1")),
                (b"bb".to_vec(), Bytes::from_static(b"x")),
                (b"c".to_vec(), Bytes::from_static(b"3")),
            ]
        );
        assert_eq!(store.scan(b"a", |k| k < b"c".as_slice(), 1).len(), 1);
        store.discard_call();
        assert_eq!(store.scan(b"", |_| true, 10).len(), 3);
    }

    #[test]
    fn changes_are_taken_once_with_a_commit_entry_and_restore_to_the_same_state() {
        let mut store = store_with(&[(b"\x01k", Some(b"1")), (b"\x01j", Some(b"2"))]);
        store.keep_call();
        store.put(b"\x01j".to_vec(), None).unwrap();
        store.keep_call();
        let changes = store.take_changes();
        assert_eq!(changes.len(), 3);
        assert_eq!(changes.last().unwrap().0.as_ref(), [COMMIT_ENTRY]);
        assert!(store.take_changes().is_empty());
        let mut restored = StateStore::default();
        for (key, value) in &changes {
            restored.restore(key, value.as_deref()).unwrap();
        }
        assert_eq!(restored.committed, store.committed);
        assert_eq!(restored.bytes, store.bytes);
        assert!(restored.restore(b"\x09", None).is_err());
    }

    #[test]
    fn deleting_a_missing_key_changes_nothing() {
        let mut store = StateStore::default();
        store.put(b"\x01gone".to_vec(), None).unwrap();
        store.keep_call();
        assert!(store.take_changes().is_empty());
    }

    #[test]
    fn the_store_refuses_to_grow_past_its_bound_but_not_to_shrink() {
        let mut store = StateStore {
            bytes: MAX_STATE_BYTES - 2,
            ..StateStore::default()
        };
        assert!(
            store
                .put(b"k".to_vec(), Some(Bytes::from_static(b"vv")))
                .is_err()
        );
        assert!(
            store
                .put(b"k".to_vec(), Some(Bytes::from_static(b"v")))
                .is_ok()
        );
        assert!(store.put(b"k".to_vec(), None).is_ok());
    }

    #[test]
    fn window_starts_order_as_numbers() {
        let bucket = Bucket::new("w");
        let starts = [i64::MIN, -5, 0, 7, i64::MAX];
        let keys: Vec<Vec<u8>> = starts.iter().map(|s| bucket.window(b"k", *s)).collect();
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]));
        let prefix = bucket.windows_of(b"k").len();
        let decoded: Vec<i64> = keys.iter().filter_map(|k| start_of(&k[prefix..])).collect();
        assert_eq!(decoded, starts);
    }
}
