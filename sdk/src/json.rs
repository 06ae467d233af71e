//! JSON values addressed by dotted paths (`payload.sensor.id`), as Kafka Connect's SMTs
//! address nested fields.

use std::ops::Range;

use serde_json::{Map, Value};

pub use crate::record::{parse_json, to_json_bytes};
pub use serde_json;

/// The field at `path` (`a.b.c`), if every step is an object holding the next name.
pub fn get<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.')
        .try_fold(value, |current, name| current.as_object()?.get(name))
}

/// The field at `path`, mutable.
pub fn get_mut<'v>(value: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    path.split('.').try_fold(value, |current, name| {
        current.as_object_mut()?.get_mut(name)
    })
}

/// Sets the field at `path`, creating missing objects on the way. Fails when a step on the
/// way is not an object.
pub fn set(value: &mut Value, path: &str, field: Value) -> Result<(), String> {
    let (parents, last) = match path.rsplit_once('.') {
        Some((parents, last)) => (Some(parents), last),
        None => (None, path),
    };
    let mut current = value;
    for name in parents.into_iter().flat_map(|p| p.split('.')) {
        let object = current
            .as_object_mut()
            .ok_or_else(|| format!("cannot set `{path}`: `{name}` is inside a non-object"))?;
        current = object
            .entry(name)
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let object = current
        .as_object_mut()
        .ok_or_else(|| format!("cannot set `{path}`: its parent is not an object"))?;
    object.insert(last.to_owned(), field);
    Ok(())
}

/// Removes the field at `path` and returns it.
pub fn remove(value: &mut Value, path: &str) -> Option<Value> {
    match path.rsplit_once('.') {
        Some((parents, last)) => get_mut(value, parents)?.as_object_mut()?.remove(last),
        None => value.as_object_mut()?.remove(path),
    }
}

/// The field at `path` (`a.b.c`) of the JSON document `bytes`, read without building the rest
/// of the document and without reading past the field: for a transform that only tests one
/// field (a filter, a router), several times faster than parsing the whole value. `Ok(None)`
/// when a step is missing or not an object (which takes reading the whole document); an error
/// when `bytes` stop being JSON before the field is found. What follows the field is not
/// checked, so with a duplicated key (which JSON advises against) this finds the first
/// occurrence where a parsed `Value` keeps the last.
pub fn lookup(bytes: &[u8], path: &str) -> Result<Option<Value>, String> {
    let mut scan = Scan::new(bytes);
    if scan.find(path, 0)? {
        return scan.parse_value().map(Some);
    }
    scan.end()?;
    Ok(None)
}

/// Where the fields at `paths` lie in the JSON object `bytes`: (index into `paths`, byte
/// range of the field's value), in document order, every occurrence of a repeated key
/// included. The whole document is validated in the one pass, without building it, so a
/// transform can rewrite a few fields in place instead of parsing and writing the document
/// (what it does not touch keeps its bytes: key order, spacing, number spelling). A path
/// whose step is missing or not an object has no span; an error when `bytes` are not a JSON
/// object.
pub fn field_spans(
    bytes: &[u8],
    paths: &[impl AsRef<str>],
) -> Result<Vec<(usize, Range<usize>)>, String> {
    let wanted: Vec<(usize, &str)> = paths.iter().map(AsRef::as_ref).enumerate().collect();
    let mut scan = Scan::new(bytes);
    scan.whitespace();
    match scan.peek() {
        Some(b'{') => {}
        Some(_) => return Err("not a JSON object".to_owned()),
        None => return Err(scan.error("the document is empty")),
    }
    let mut spans = Vec::new();
    scan.spans(&wanted, 0, &mut spans)?;
    scan.end()?;
    Ok(spans)
}

/// How deep arrays and objects may nest, as deep as serde_json reads: deeper input is refused
/// rather than read with unbounded recursion.
const MAX_DEPTH: usize = 127;

/// A strict reader of JSON text (RFC 8259) that finds fields and skips values without
/// building them. serde_json has no way to stop at a field but an error, whose message and
/// position it formats each time; at a few fields into a record that costs more than
/// reading the whole record.
struct Scan<'b> {
    bytes: &'b [u8],
    at: usize,
}

impl<'b> Scan<'b> {
    fn new(bytes: &'b [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn error(&self, what: &str) -> String {
        format!("not JSON: {what} at byte {}", self.at)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8, what: &str) -> Result<(), String> {
        self.whitespace();
        if self.peek() != Some(byte) {
            return Err(self.error(&format!("expected {what}")));
        }
        self.at += 1;
        Ok(())
    }

    /// Only whitespace is left.
    fn end(&mut self) -> Result<(), String> {
        self.whitespace();
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.error("trailing characters")),
        }
    }

    /// Moves the cursor to the value of the field at `path` of the value at the cursor and
    /// says whether it is there; if not, the cursor ends after the value.
    fn find(&mut self, path: &str, depth: usize) -> Result<bool, String> {
        self.whitespace();
        if self.peek() != Some(b'{') {
            self.skip_value(depth)?;
            return Ok(false);
        }
        let (name, rest) = first_step(path);
        self.open(depth)?;
        let mut first = true;
        while let Some(key) = self.next_key(&mut first)? {
            if !key.is(name) {
                self.skip_value(depth + 1)?;
                continue;
            }
            match rest {
                None => return Ok(true),
                Some(rest) if self.find(rest, depth + 1)? => return Ok(true),
                // Only the first field of that name is looked into, as `get` would see it.
                Some(_) => {
                    self.skip_fields(&mut first, depth)?;
                    return Ok(false);
                }
            }
        }
        Ok(false)
    }

    /// Adds the spans of `wanted` in the object at the cursor, which ends after it.
    fn spans(
        &mut self,
        wanted: &[(usize, &str)],
        depth: usize,
        spans: &mut Vec<(usize, Range<usize>)>,
    ) -> Result<(), String> {
        let steps: Vec<(usize, &str, Option<&str>)> = wanted
            .iter()
            .map(|&(index, path)| {
                let (name, rest) = first_step(path);
                (index, name, rest)
            })
            .collect();
        self.open(depth)?;
        let mut first = true;
        while let Some(key) = self.next_key(&mut first)? {
            let nested: Vec<(usize, &str)> = steps
                .iter()
                .filter(|&&(_, name, _)| key.is(name))
                .filter_map(|&(index, _, rest)| Some((index, rest?)))
                .collect();
            self.whitespace();
            let start = self.at;
            let inner = spans.len();
            if !nested.is_empty() && self.peek() == Some(b'{') {
                self.spans(&nested, depth + 1, spans)?;
            } else {
                self.skip_value(depth + 1)?;
            }
            let whole = steps
                .iter()
                .filter(|&&(_, name, rest)| rest.is_none() && key.is(name))
                .map(|&(index, _, _)| (index, start..self.at));
            // In document order: the field itself before the fields found inside it.
            spans.splice(inner..inner, whole);
        }
        Ok(())
    }

    /// Steps into the object at the cursor.
    fn open(&mut self, depth: usize) -> Result<(), String> {
        self.nest(depth)?;
        self.expect(b'{', "`{`")
    }

    /// Refuses an array or object at `depth` beyond [`MAX_DEPTH`].
    fn nest(&self, depth: usize) -> Result<(), String> {
        if depth >= MAX_DEPTH {
            return Err(self.error("nested too deep"));
        }
        Ok(())
    }

    /// Skips the fields left in the object being read (at `depth`), and its end.
    fn skip_fields(&mut self, first: &mut bool, depth: usize) -> Result<(), String> {
        while self.next_key(first)?.is_some() {
            self.skip_value(depth + 1)?;
        }
        Ok(())
    }

    /// The next key of the object being read, the cursor then before its value; `None`
    /// (the cursor after the object) at its end. `first` holds until the first key is read.
    fn next_key(&mut self, first: &mut bool) -> Result<Option<Key<'b>>, String> {
        self.whitespace();
        match self.peek() {
            Some(b'}') => {
                self.at += 1;
                return Ok(None);
            }
            Some(b',') if !*first => self.at += 1,
            _ if *first => {}
            _ => return Err(self.error("expected `,` or `}`")),
        }
        *first = false;
        self.whitespace();
        if self.peek() != Some(b'"') {
            return Err(self.error("expected a string key"));
        }
        let key = self.key()?;
        self.expect(b':', "`:`")?;
        Ok(Some(key))
    }

    /// The value at the cursor, built; the cursor ends after it.
    fn parse_value(&mut self) -> Result<Value, String> {
        self.whitespace();
        let mut values =
            serde_json::Deserializer::from_slice(&self.bytes[self.at..]).into_iter::<Value>();
        let value = values
            .next()
            .unwrap_or_else(|| Err(serde::de::Error::custom("the document ends")))
            .map_err(|e| format!("not JSON: {e} (in the value at byte {})", self.at))?;
        self.at += values.byte_offset();
        Ok(value)
    }

    fn skip_value(&mut self, depth: usize) -> Result<(), String> {
        self.whitespace();
        match self.peek() {
            Some(b'{') => {
                self.open(depth)?;
                self.skip_fields(&mut true, depth)
            }
            Some(b'[') => self.skip_array(depth),
            Some(b'"') => self.string().map(drop),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(_) => Err(self.error("expected a value")),
            None => Err(self.error("the document ends where a value should be")),
        }
    }

    fn skip_array(&mut self, depth: usize) -> Result<(), String> {
        self.nest(depth)?;
        self.at += 1;
        self.whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(());
        }
        loop {
            self.skip_value(depth + 1)?;
            self.whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected `,` or `]`")),
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), String> {
        if !self.bytes[self.at..].starts_with(word) {
            return Err(self.error("expected a value"));
        }
        self.at += word.len();
        Ok(())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<(), String> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Ok(())
    }

    fn some_digits(&mut self) -> Result<(), String> {
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return Err(self.error("expected a digit"));
        }
        self.digits();
        Ok(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    /// The key at the cursor.
    fn key(&mut self) -> Result<Key<'b>, String> {
        let start = self.at;
        let escaped = self.string()?;
        let quoted = &self.bytes[start..self.at];
        if escaped {
            serde_json::from_slice(quoted)
                .map(Key::Decoded)
                .map_err(|e| format!("not JSON: {e} (in the key at byte {start})"))
        } else {
            Ok(Key::Raw(&quoted[1..quoted.len() - 1]))
        }
    }

    /// Skips the string at the cursor (its opening quote), checking its escapes, that it has
    /// no control characters and that it is UTF-8; whether it has escapes.
    fn string(&mut self) -> Result<bool, String> {
        self.at += 1;
        let start = self.at;
        let mut escaped = false;
        loop {
            let Some(len) = string_stop(&self.bytes[self.at..]) else {
                self.at = self.bytes.len();
                return Err(self.error("the document ends inside a string"));
            };
            self.at += len;
            match self.bytes[self.at] {
                b'"' => break,
                b'\\' => {}
                _ => return Err(self.error("a control character in a string")),
            }
            escaped = true;
            self.at += 1;
            match self.peek() {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.at += 1,
                Some(b'u') => {
                    self.at += 1;
                    for _ in 0..4 {
                        if !self.peek().is_some_and(|b| b.is_ascii_hexdigit()) {
                            return Err(self.error("expected a hex digit of a \\u escape"));
                        }
                        self.at += 1;
                    }
                }
                _ => return Err(self.error("invalid escape")),
            }
        }
        if !self.bytes[start..self.at].is_ascii() {
            std::str::from_utf8(&self.bytes[start..self.at]).map_err(|e| {
                format!(
                    "not JSON: a string is not UTF-8 at byte {}",
                    start + e.valid_up_to()
                )
            })?;
        }
        self.at += 1;
        Ok(escaped)
    }
}

/// The first step of a dotted path and the rest of it, if any: `a.b.c` is `a` then `b.c`.
fn first_step(path: &str) -> (&str, Option<&str>) {
    match path.split_once('.') {
        Some((name, rest)) => (name, Some(rest)),
        None => (path, None),
    }
}

/// Where the first `"`, `\\` or control character of `bytes` is: what ends the plain run of
/// a string. Eight bytes at a time, as serde_json's own string reader goes, since strings are
/// most of a record's bytes.
fn string_stop(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    // The high bit of each byte of `word` below `limit`; the lowest one set is exact (a byte
    // above a hit may be flagged too, by the borrow).
    let below = |word: u64, limit: u8| word.wrapping_sub(ONES * u64::from(limit)) & !word & HIGH;
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let stops = below(word ^ (ONES * u64::from(b'"')), 1)
            | below(word ^ (ONES * u64::from(b'\\')), 1)
            | below(word, 0x20);
        if stops != 0 {
            return Some(at + stops.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let tail = bytes[at..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    Some(at + tail)
}

/// An object's key as `Scan` read it: its bytes between the quotes (checked UTF-8) unless it
/// has escapes, which are rare enough in keys to decode.
enum Key<'b> {
    Raw(&'b [u8]),
    Decoded(String),
}

impl Key<'_> {
    fn is(&self, name: &str) -> bool {
        match self {
            Self::Raw(bytes) => *bytes == name.as_bytes(),
            Self::Decoded(key) => key == name,
        }
    }
}

/// A JSON value as the text a header, key or route carries: strings without quotes.
pub fn to_plain_string(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// Object keys: short names that paths share prefixes with, and names with a dot, which
    /// a path can spell but never names (`a.b` is `b` inside `a`).
    const KEY: &str = "[ab]{1,2}|[ab]\\.[ab]";
    /// Paths of up to three steps over the same names.
    const PATH: &str = "[ab]{1,2}(\\.[ab]{1,2}){0,2}";

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z ]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(KEY, inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// On any JSON document, reading one field without building the document agrees
        /// with building it and walking to the field.
        #[test]
        fn lookup_agrees_with_get(document in json_value(), path in PATH) {
            let bytes = serde_json::to_vec(&document).unwrap();
            prop_assert_eq!(lookup(&bytes, &path), Ok(get(&document, &path).cloned()));
        }

        /// Arbitrary bytes never panic the lookup.
        #[test]
        fn lookup_survives_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = lookup(&bytes, "a.b");
        }

        /// On a document with a few bytes changed, the scanner is never stricter than
        /// serde_json, and where it reads the whole document never laxer: what serde_json
        /// parses, the lookup and the span finder read; what the span finder reads, or the
        /// lookup reads to the end without the field, serde_json parses.
        #[test]
        fn the_scanner_accepts_what_serde_json_accepts(
            (bytes, path) in (json_value(), PATH).prop_flat_map(|(document, path)| {
                let bytes = serde_json::to_vec(&document).unwrap();
                (mutated(bytes), Just(path))
            }),
        ) {
            let parsed = serde_json::from_slice::<Value>(&bytes);
            let looked = lookup(&bytes, &path);
            let spans = field_spans(&bytes, &[path.as_str()]);
            if let Ok(document) = &parsed {
                prop_assert!(looked.is_ok(), "{looked:?}");
                prop_assert_eq!(spans.is_ok(), document.is_object(), "{:?}", spans);
            }
            if matches!(looked, Ok(None)) || spans.is_ok() {
                prop_assert!(parsed.is_ok(), "{parsed:?}");
            }
        }
    }

    proptest! {
        /// Eight bytes at a time finds what a byte at a time finds.
        #[test]
        fn string_stop_finds_the_first_stop(
            bytes in proptest::collection::vec(prop_oneof![
                40 => 0x20u8..=0xFF,
                1 => Just(b'"'),
                1 => Just(b'\\'),
                1 => 0u8..0x20,
            ], 0..80),
        ) {
            let naive = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            prop_assert_eq!(string_stop(&bytes), naive);
        }
    }

    /// `bytes` with up to three bytes replaced, inserted or cut (JSON's punctuation, digits,
    /// letters of its literals, a tab, a control character, a byte that is never UTF-8), or
    /// cut short.
    fn mutated(bytes: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
        let len = bytes.len();
        let edit = (
            0..=len,
            proptest::sample::select(b"{}[]\":,.-0123456789 tfnrlusa\t\x01\xff".to_vec()),
            0..3u8,
        );
        (proptest::collection::vec(edit, 0..4), 0..=len).prop_map(move |(edits, keep)| {
            let mut bytes = bytes.clone();
            for (at, byte, how) in edits {
                let at = at.min(bytes.len());
                match how {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => {}
                }
            }
            if keep < len / 4 {
                bytes.truncate(keep);
            }
            bytes
        })
    }

    proptest! {
        /// Each span holds exactly the value `get` finds at its path (the last occurrence, for
        /// a document serialized from a `Value`, where keys do not repeat).
        #[test]
        fn field_spans_hold_what_get_finds(
            document in json_value(),
            paths in proptest::collection::vec(PATH, 1..4),
        ) {
            let bytes = serde_json::to_vec(&document).unwrap();
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            match field_spans(&bytes, &paths) {
                Ok(spans) => {
                    prop_assert!(document.is_object());
                    for (index, path) in paths.iter().enumerate() {
                        let found: Vec<Value> = spans
                            .iter()
                            .filter(|(i, _)| *i == index)
                            .map(|(_, range)| serde_json::from_slice(&bytes[range.clone()]).unwrap())
                            .collect();
                        prop_assert_eq!(found.last(), get(&document, path));
                    }
                }
                Err(error) => {
                    prop_assert!(!document.is_object());
                    prop_assert_eq!(error, "not a JSON object");
                }
            }
        }

        /// Arbitrary bytes never panic the span finder.
        #[test]
        fn field_spans_survive_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = field_spans(&bytes, &["a", "a.b"]);
        }
    }

    #[test]
    fn field_spans_keep_every_occurrence_and_refuse_what_is_not_an_object() {
        let doc = br#" {"a" : 1, "n": {"x": [1,2], "y": "s"}, "a": {"b": 2}} "#;
        let spans = field_spans(doc, &["a", "n.y", "a.b", "z"]).unwrap();
        let texts: Vec<(usize, &str)> = spans
            .iter()
            .map(|(i, r)| (*i, std::str::from_utf8(&doc[r.clone()]).unwrap()))
            .collect();
        assert_eq!(
            texts,
            [(0, "1"), (1, r#""s""#), (0, r#"{"b": 2}"#), (2, "2")]
        );
        assert_eq!(
            field_spans(b"[1]", &["a"]),
            Err("not a JSON object".to_owned())
        );
        assert!(
            field_spans(br#"{"a":1} x"#, &["a"])
                .unwrap_err()
                .starts_with("not JSON")
        );
        assert!(
            field_spans(br#"{"a":tru}"#, &["a"])
                .unwrap_err()
                .starts_with("not JSON")
        );
    }

    #[test]
    fn a_key_with_a_dot_is_not_a_dotted_path() {
        let doc = br#"{"a.b": 1, "a": {"b": 2}}"#;
        let spans = field_spans(doc, &["a.b"]).unwrap();
        let texts: Vec<&[u8]> = spans.iter().map(|(_, r)| &doc[r.clone()]).collect();
        assert_eq!(texts, [b"2"]);
        assert_eq!(lookup(doc, "a.b").unwrap(), Some(json!(2)));
        assert_eq!(
            get(&serde_json::from_slice(doc).unwrap(), "a.b"),
            Some(&json!(2))
        );
    }

    #[test]
    fn the_scanner_nests_as_deep_as_serde_json() {
        for depth in [MAX_DEPTH, MAX_DEPTH + 1] {
            let document = format!(
                r#"{{"x":{}{}}}"#,
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            );
            let parsed = serde_json::from_str::<Value>(&document);
            assert_eq!(parsed.is_ok(), depth == MAX_DEPTH, "{depth}");
            assert_eq!(
                lookup(document.as_bytes(), "a").is_ok(),
                parsed.is_ok(),
                "{depth}"
            );
            assert_eq!(
                field_spans(document.as_bytes(), &["a"]).is_ok(),
                parsed.is_ok()
            );
        }
    }

    #[test]
    fn dotted_paths_get_set_and_remove() {
        let mut v = json!({"a": {"b": 1}, "c": "x"});
        assert_eq!(get(&v, "a.b"), Some(&json!(1)));
        assert_eq!(get(&v, "a.z"), None);
        assert_eq!(get(&v, "c.d"), None);
        set(&mut v, "a.n.m", json!(true)).unwrap();
        assert_eq!(get(&v, "a.n.m"), Some(&json!(true)));
        assert!(set(&mut v, "c.d", json!(1)).is_err());
        assert_eq!(remove(&mut v, "a.b"), Some(json!(1)));
        assert_eq!(to_plain_string(&json!("s")), "s");
        assert_eq!(to_plain_string(&json!(2)), "2");
    }

    #[test]
    fn lookup_finds_a_field_without_building_the_document() {
        let doc = br#"{"a":{"b":[1,{"c":2}],"s":"x"},"n":null,"t":3.5}"#;
        assert_eq!(lookup(doc, "t"), Ok(Some(json!(3.5))));
        assert_eq!(lookup(doc, "a.s"), Ok(Some(json!("x"))));
        assert_eq!(lookup(doc, "a.b"), Ok(Some(json!([1, {"c": 2}]))));
        assert_eq!(lookup(doc, "n"), Ok(Some(Value::Null)));
        assert_eq!(lookup(doc, "a.b.c"), Ok(None));
        assert_eq!(lookup(doc, "missing"), Ok(None));
        assert_eq!(lookup(b"[1,2]", "a"), Ok(None));
        assert!(lookup(br#"{"x":tru,"a":1}"#, "a").is_err());
        assert!(lookup(br#"{"a":1"#, "b").is_err());
        assert!(lookup(br#"{"b":1} trailing"#, "a").is_err());
        assert_eq!(
            lookup(br#"{"a":1,"z":tru"#, "a"),
            Ok(Some(json!(1))),
            "nothing after the field is read"
        );
        assert_eq!(lookup(br#"{"a":5,"a":{"b":1}}"#, "a.b"), Ok(None));
    }
}
