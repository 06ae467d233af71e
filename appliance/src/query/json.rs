//! Projected JSON decoding: one pass over each value walks its top-level fields, checking the
//! grammar as arrow-json's tokenizer does and skipping what the query does not name, and
//! converts only the named fields, straight into Arrow builders; nothing is copied into a
//! tape first. It gives the answers arrow-json's decoder gives with `ignore_type_conflicts`
//! (the scan's fallback for the types it does not handle, and the reference of its property
//! test), including its leniency (commas between fields may be missing or repeated, a number
//! is any run of `0-9 + - . e E` and converts only if it parses):
//!
//! - a value that is not one valid JSON object gives nulls in every column;
//! - a field that does not fit its column's type gives a null; a number becomes a string
//!   column's null, a string is parsed for a number or timestamp column (`"42"` is 42);
//! - a number with a fraction in an integer column is truncated (`27.9` is 27), one out of
//!   the column's range is null; a number in a timestamp column is milliseconds;
//! - when a key repeats, its last value counts;
//! - a value nested deeper than 256 levels gives nulls (arrow-json has no limit).

use std::sync::Arc;

use chrono::Utc;
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, NullArray, RecordBatch,
    RecordBatchOptions, StringBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::compute::kernels::cast_utils::{Parser, string_to_datetime};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef, TimeUnit};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::error::{DataFusionError, Result};

/// The value columns of a scan, decoded from each record's value.
pub enum ValueDecoder {
    Projected(ProjectedJson),
    /// arrow-json, for schemas with lists or structs.
    Lines(LineDecoder),
}

impl ValueDecoder {
    pub fn new(schema: &SchemaRef) -> Self {
        match ProjectedJson::new(schema) {
            Some(projected) => Self::Projected(projected),
            None => Self::Lines(LineDecoder::new(schema)),
        }
    }

    /// Adds one row from a record's value (none: a row of nulls).
    pub fn push(&mut self, value: Option<&[u8]>) {
        match self {
            Self::Projected(projected) => projected.push(value.unwrap_or_default()),
            Self::Lines(lines) => lines.push(value),
        }
    }

    /// The batch of the rows pushed since the last one.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        match self {
            Self::Projected(projected) => projected.finish(),
            Self::Lines(lines) => lines.finish(),
        }
    }
}

/// Decodes values with arrow-json: gathered as JSON lines (a value that is not an object as
/// `{}`), decoded in one pass per batch.
pub struct LineDecoder {
    schema: SchemaRef,
    lines: Vec<u8>,
    line_ends: Vec<usize>,
}

impl LineDecoder {
    pub fn new(schema: &SchemaRef) -> Self {
        Self {
            schema: Arc::clone(schema),
            lines: Vec::new(),
            line_ends: Vec::new(),
        }
    }

    pub fn push(&mut self, value: Option<&[u8]>) {
        self.lines.extend_from_slice(object_or_empty(value));
        self.lines.push(b'\n');
        self.line_ends.push(self.lines.len());
    }

    /// The lines gathered, decoded in one pass; a field that does not fit its column's type
    /// gives a null.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let rows = self.line_ends.len();
        let decoded = match decode_json(&self.schema, &self.lines, rows) {
            Ok(batch) => Ok(batch),
            // One value that is not JSON spoils the whole pass: decode them one by one.
            Err(_) => {
                let mut batches = Vec::with_capacity(rows);
                let mut start = 0;
                for &end in &self.line_ends {
                    let batch = decode_json(&self.schema, &self.lines[start..end], 1)
                        .or_else(|_| decode_json(&self.schema, b"{}", 1))?;
                    batches.push(batch);
                    start = end;
                }
                concat_batches(&self.schema, &batches).map_err(DataFusionError::from)
            }
        };
        self.lines.clear();
        self.line_ends.clear();
        decoded
    }
}

fn object_or_empty(value: Option<&[u8]>) -> &[u8] {
    match value {
        Some(value) if value.trim_ascii_start().first() == Some(&b'{') => value,
        _ => b"{}",
    }
}

/// Exactly `rows` rows of newline-separated JSON objects.
fn decode_json(schema: &SchemaRef, lines: &[u8], rows: usize) -> Result<RecordBatch> {
    let mut decoder = ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(rows.max(1))
        .with_ignore_type_conflicts(true)
        .build_decoder()?;
    let mut consumed = 0;
    while consumed < lines.len() {
        let read = decoder.decode(&lines[consumed..])?;
        if read == 0 {
            break;
        }
        consumed += read;
    }
    let batch = decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(schema)));
    if batch.num_rows() != rows || consumed != lines.len() {
        return Err(DataFusionError::Execution(format!(
            "{} JSON rows decoded out of {rows}",
            batch.num_rows()
        )));
    }
    Ok(batch)
}

/// Builds the columns of a schema of scalar fields from JSON objects, one row per value.
pub struct ProjectedJson {
    schema: SchemaRef,
    names: Vec<String>,
    columns: Vec<Column>,
    /// Where each field's value of the current row lies in it (start, end), if present.
    found: Vec<Option<(usize, usize)>>,
    rows: usize,
}

enum Column {
    Utf8(StringBuilder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Boolean(BooleanBuilder),
    TimestampMs(TimestampMillisecondBuilder),
    Null,
}

impl ProjectedJson {
    /// `None` when a field's type is not one this decoder builds (lists, structs, ...).
    pub fn new(schema: &SchemaRef) -> Option<Self> {
        let columns = schema
            .fields()
            .iter()
            .map(|field| match field.data_type() {
                DataType::Utf8 => Some(Column::Utf8(StringBuilder::new())),
                DataType::Int64 => Some(Column::Int64(Int64Builder::new())),
                DataType::Float64 => Some(Column::Float64(Float64Builder::new())),
                DataType::Boolean => Some(Column::Boolean(BooleanBuilder::new())),
                DataType::Timestamp(TimeUnit::Millisecond, Some(zone))
                    if zone.as_ref() == "UTC" =>
                {
                    Some(Column::TimestampMs(
                        TimestampMillisecondBuilder::new().with_timezone("UTC"),
                    ))
                }
                DataType::Null => Some(Column::Null),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            schema: Arc::clone(schema),
            names: schema.fields().iter().map(|f| f.name().clone()).collect(),
            found: vec![None; columns.len()],
            columns,
            rows: 0,
        })
    }

    /// Adds one row: the fields of `value` if it is one JSON object, nulls otherwise.
    pub fn push(&mut self, value: &[u8]) {
        self.rows += 1;
        self.found.fill(None);
        if !self.locate(value) {
            self.found.fill(None);
        }
        for (column, found) in self.columns.iter_mut().zip(&self.found) {
            let raw = found.map(|(start, end)| &value[start..end]);
            column.append(raw);
        }
    }

    /// The batch of the rows pushed since the last one.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let rows = std::mem::take(&mut self.rows);
        let columns: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .map(|column| column.finish(rows))
            .collect();
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &options,
        )?)
    }

    /// Finds the projected fields' values in `value`; false when it is not exactly one
    /// JSON object (surrounded by whitespace at most).
    fn locate(&mut self, value: &[u8]) -> bool {
        let mut cursor = Cursor::new(value);
        cursor.space();
        if cursor.next() != Some(b'{') {
            return false;
        }
        loop {
            cursor.skip_while(|b| is_json_space(b) || b == b',');
            match cursor.next() {
                Some(b'}') => break,
                Some(b'"') => {}
                _ => return false,
            }
            let Some(key) = cursor.string() else {
                return false;
            };
            cursor.space();
            if cursor.next() != Some(b':') {
                return false;
            }
            cursor.space();
            let start = cursor.at;
            if cursor.value(0).is_none() {
                return false;
            }
            let key = &value[key];
            if let Some(index) = self.index_of(key) {
                self.found[index] = Some((start, cursor.at));
            }
        }
        cursor.space();
        cursor.at == value.len()
    }

    /// The projected field a key names.
    fn index_of(&self, key: &[u8]) -> Option<usize> {
        if key.contains(&b'\\') {
            let key = unescape(key)?;
            return self.names.iter().position(|name| *name == key);
        }
        self.names.iter().position(|name| name.as_bytes() == key)
    }
}

fn is_json_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// Nesting deeper than this is refused (bounds the recursion).
const MAX_DEPTH: usize = 256;

/// A position in a value, moving forward over it as arrow-json's tokenizer would.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    /// The whole value is UTF-8, so every string in it is: strings end at ASCII quotes, which
    /// never fall inside a multi-byte character. One check per value instead of per string.
    utf8: bool,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            at: 0,
            utf8: std::str::from_utf8(bytes).is_ok(),
        }
    }

    fn next(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    fn skip_while(&mut self, keep: impl Fn(u8) -> bool) {
        while self.bytes.get(self.at).is_some_and(|b| keep(*b)) {
            self.at += 1;
        }
    }

    fn space(&mut self) {
        self.skip_while(is_json_space);
    }

    /// After an opening quote: the string's contents (escapes checked, UTF-8 valid), the
    /// cursor after its closing quote.
    fn string(&mut self) -> Option<std::ops::Range<usize>> {
        let start = self.at;
        loop {
            let found = memchr::memchr2(b'"', b'\\', &self.bytes[self.at..])?;
            self.at += found + 1;
            if self.bytes[self.at - 1] == b'"' {
                break;
            }
            match self.next()? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                b'u' => {
                    let high = self.hex()?;
                    if char::from_u32(u32::from(high)).is_none() {
                        if self.next()? != b'\\' || self.next()? != b'u' {
                            return None;
                        }
                        surrogate_pair(high, self.hex()?)?;
                    }
                }
                _ => return None,
            }
        }
        let contents = start..self.at - 1;
        if !self.utf8 {
            std::str::from_utf8(&self.bytes[contents.clone()]).ok()?;
        }
        Some(contents)
    }

    fn hex(&mut self) -> Option<u16> {
        let digits = self.bytes.get(self.at..self.at + 4)?;
        self.at += 4;
        let text = std::str::from_utf8(digits).ok()?;
        u16::from_str_radix(text, 16)
            .ok()
            .filter(|_| digits.iter().all(u8::is_ascii_hexdigit))
    }

    /// Moves over one value, checking it.
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.next()? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => {
                self.skip_while(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'));
                Some(())
            }
            b'n' => self.literal(b"ull"),
            b't' => self.literal(b"rue"),
            b'f' => self.literal(b"alse"),
            open @ (b'[' | b'{') if depth < MAX_DEPTH => loop {
                self.skip_while(|b| is_json_space(b) || b == b',');
                match self.bytes.get(self.at)? {
                    b']' if open == b'[' => {
                        self.at += 1;
                        return Some(());
                    }
                    b'}' if open == b'{' => {
                        self.at += 1;
                        return Some(());
                    }
                    _ if open == b'[' => self.value(depth + 1)?,
                    b'"' => {
                        self.at += 1;
                        self.string()?;
                        self.space();
                        if self.next()? != b':' {
                            return None;
                        }
                        self.space();
                        self.value(depth + 1)?;
                    }
                    _ => return None,
                }
            },
            _ => None,
        }
    }

    fn literal(&mut self, rest: &[u8]) -> Option<()> {
        let found = self.bytes.get(self.at..self.at + rest.len())?;
        self.at += rest.len();
        (found == rest).then_some(())
    }
}

/// The character of a UTF-16 surrogate pair, if it is one.
fn surrogate_pair(high: u16, low: u16) -> Option<char> {
    char::decode_utf16([high, low]).next()?.ok()
}

/// A string's contents with its escapes resolved (`None` if one does not resolve).
fn unescape(contents: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(contents.len());
    let mut at = 0;
    while at < contents.len() {
        let byte = contents[at];
        at += 1;
        if byte != b'\\' {
            out.push(byte);
            continue;
        }
        let escaped = *contents.get(at)?;
        at += 1;
        let resolved = match escaped {
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hex = |at: usize| -> Option<u16> {
                    let digits = std::str::from_utf8(contents.get(at..at + 4)?).ok()?;
                    u16::from_str_radix(digits, 16).ok()
                };
                let high = hex(at)?;
                at += 4;
                match char::from_u32(u32::from(high)) {
                    Some(c) => c,
                    None => {
                        let low = hex(at + 2)?;
                        at += 6;
                        surrogate_pair(high, low)?
                    }
                }
            }
            other => char::from(other),
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(resolved.encode_utf8(&mut buf).as_bytes());
    }
    String::from_utf8(out).ok()
}

/// A JSON value's text, by what it is.
enum Raw<'a> {
    String(std::borrow::Cow<'a, str>),
    Number(&'a [u8]),
    Bool(bool),
    /// null, an object, an array, or a string that does not unescape.
    Other,
}

fn classify(raw: &[u8]) -> Raw<'_> {
    match raw.first() {
        Some(b'"') => {
            let inner = &raw[1..raw.len() - 1];
            let text = if inner.contains(&b'\\') {
                unescape(inner).map(Into::into)
            } else {
                std::str::from_utf8(inner).ok().map(Into::into)
            };
            text.map_or(Raw::Other, Raw::String)
        }
        Some(b'-' | b'0'..=b'9') => Raw::Number(raw),
        Some(b't') => Raw::Bool(true),
        Some(b'f') => Raw::Bool(false),
        _ => Raw::Other,
    }
}

/// An integer from a JSON number as arrow-json reads it: its integer value, or a fraction
/// truncated toward zero; none out of range.
fn number_to_i64(text: &[u8]) -> Option<i64> {
    lexical_core::parse::<i64>(text).ok().or_else(|| {
        let float = lexical_core::parse::<f64>(text).ok()?;
        // i64::MIN is exactly representable; i64::MAX + 1 is the first float out of range.
        (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0)
            .contains(&float)
            .then_some(float as i64)
    })
}

impl Column {
    fn append(&mut self, raw: Option<&[u8]>) {
        let raw = raw.map_or(Raw::Other, classify);
        match self {
            Column::Utf8(builder) => match raw {
                Raw::String(text) => builder.append_value(text),
                _ => builder.append_null(),
            },
            Column::Int64(builder) => builder.append_option(match raw {
                Raw::String(text) => Int64Type::parse(&text),
                Raw::Number(text) => number_to_i64(text),
                _ => None,
            }),
            Column::Float64(builder) => builder.append_option(match raw {
                Raw::String(text) => Float64Type::parse(&text),
                Raw::Number(text) => lexical_core::parse::<f64>(text).ok(),
                _ => None,
            }),
            Column::Boolean(builder) => builder.append_option(match raw {
                Raw::Bool(value) => Some(value),
                _ => None,
            }),
            Column::TimestampMs(builder) => builder.append_option(match raw {
                Raw::String(text) => string_to_datetime(&Utc, &text)
                    .ok()
                    .map(|at| at.timestamp_millis()),
                Raw::Number(text) => lexical_core::parse::<i64>(text).ok().or_else(|| {
                    lexical_core::parse::<f64>(text)
                        .ok()
                        .map(|float| float as i64)
                }),
                _ => None,
            }),
            Column::Null => {}
        }
    }

    fn finish(&mut self, rows: usize) -> ArrayRef {
        match self {
            Column::Utf8(builder) => Arc::new(builder.finish()),
            Column::Int64(builder) => Arc::new(builder.finish()),
            Column::Float64(builder) => Arc::new(builder.finish()),
            Column::Boolean(builder) => Arc::new(builder.finish()),
            Column::TimestampMs(builder) => Arc::new(builder.finish()),
            Column::Null => Arc::new(NullArray::new(rows)),
        }
    }
}

/// Records per second decoding the float field `field` of `values` into one column, with
/// this decoder and with arrow-json (`appliance bench query`).
pub fn decode_rates(values: &[bytes::Bytes], field: &str) -> Result<(f64, f64)> {
    use datafusion::arrow::datatypes::{Field, Schema};
    let schema = Arc::new(Schema::new(vec![Field::new(
        field,
        DataType::Float64,
        true,
    )]));
    // The best of three passes, so that neither pays alone for warming caches and allocator.
    let rate = |mut decoder: ValueDecoder| -> Result<f64> {
        let mut best: f64 = 0.0;
        for _ in 0..3 {
            let started = std::time::Instant::now();
            for chunk in values.chunks(8192) {
                for value in chunk {
                    decoder.push(Some(value));
                }
                decoder.finish()?;
            }
            best = best.max(values.len() as f64 / started.elapsed().as_secs_f64());
        }
        Ok(best)
    };
    let projected = ProjectedJson::new(&schema)
        .ok_or_else(|| DataFusionError::Internal("a float column is decoded".into()))?;
    Ok((
        rate(ValueDecoder::Projected(projected))?,
        rate(ValueDecoder::Lines(LineDecoder::new(&schema)))?,
    ))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::{Field, Schema};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("i", DataType::Int64, true),
            Field::new("f", DataType::Float64, true),
            Field::new("b", DataType::Boolean, true),
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
            Field::new("n", DataType::Null, true),
        ]))
    }

    fn both(schema: &SchemaRef, values: &[Option<Vec<u8>>]) -> (RecordBatch, RecordBatch) {
        let mut projected = ProjectedJson::new(schema).expect("scalar fields");
        let mut lines = LineDecoder::new(schema);
        for value in values {
            projected.push(value.as_deref().unwrap_or_default());
            lines.push(value.as_deref());
        }
        (projected.finish().unwrap(), lines.finish().unwrap())
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-z0-9 .:\\-\"\\\\\u{e9}\u{1F600}]{0,12}".prop_map(Value::from),
            (-100_000i64..100_000).prop_map(|n| Value::from(n.to_string())),
            (-1e9f64..1e9).prop_map(|f| Value::from(f.to_string())),
            (0i64..4_000_000_000_000).prop_map(|ms| {
                let at = chrono::DateTime::from_timestamp_millis(ms).expect("in range");
                Value::from(at.to_rfc3339())
            }),
            Just(json!("2026-12-05 14:08:04")),
            Just(json!([1, "x", {"y": null}])),
            Just(json!({"nested": {"s": "not top-level"}})),
        ]
    }

    fn object() -> impl Strategy<Value = Vec<u8>> {
        let key = prop_oneof![
            Just("s"),
            Just("i"),
            Just("f"),
            Just("b"),
            Just("t"),
            Just("n"),
            Just("other")
        ];
        prop::collection::vec((key, scalar()), 0..8).prop_map(|fields| {
            // Written by hand so that keys may repeat, as a producer may send them.
            let fields: Vec<String> = fields
                .iter()
                .map(|(key, value)| format!("{key:?}: {value}"))
                .collect();
            format!(" {{{}}}\n", fields.join(",")).into_bytes()
        })
    }

    /// Values as producers send them, also broken ones.
    fn value() -> impl Strategy<Value = Option<Vec<u8>>> {
        prop_oneof![
            6 => object().prop_map(Some),
            1 => Just(None),
            1 => scalar().prop_map(|v| Some(v.to_string().into_bytes())),
            1 => (object(), any::<prop::sample::Index>()).prop_map(|(mut text, cut)| {
                text.truncate(cut.index(text.len()));
                Some(text)
            }),
            1 => (object(), prop::sample::select(vec![&b"x"[..], b"{}", b"}", b",", b"\xff"]))
                .prop_map(|(mut text, tail)| {
                    text.extend_from_slice(tail);
                    Some(text)
                }),
            1 => prop::collection::vec(any::<u8>(), 0..16).prop_map(Some),
            2 => lenient().prop_map(Some),
        ]
    }

    /// Text arrow-json's tokenizer takes or refuses in ways a strict parser would not:
    /// missing and repeated commas, number-like runs, escapes and surrogates, control bytes.
    fn lenient() -> impl Strategy<Value = Vec<u8>> {
        let field = prop::sample::select(vec![
            r#""s":"a\u00e9\ud83d\ude00""#,
            r#""s":"lone \ud800""#,
            r#""s":"bad \q""#,
            "\"s\":\"raw \u{1} control\"",
            r#""s\u0000":"key with escape""#,
            r#""\u0069":7"#,
            r#""i":1-2"#,
            r#""i":-"#,
            r#""f":1e5"#,
            r#""f":1.5e"#,
            r#""b":tru"#,
            r#""n":nul"#,
            r#""t":[1 2,,3]"#,
            r#""t":{"x" 1}"#,
            r#""t":{"x":1,,}"#,
            r#""i":[[[[[[[[1]]]]]]]]"#,
            r#""f":"1e3""#,
        ]);
        let separator = prop::sample::select(vec![",", ",,", " ", ""]);
        prop::collection::vec((field, separator), 0..5).prop_map(|fields| {
            let mut text = String::from("{");
            for (field, separator) in fields {
                text.push_str(field);
                text.push_str(separator);
            }
            text.push('}');
            text.into_bytes()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]
        #[test]
        fn projected_decoding_answers_as_arrow_json(values in prop::collection::vec(value(), 1..40)) {
            let (projected, lines) = both(&schema(), &values);
            prop_assert_eq!(projected, lines);
        }
    }

    #[test]
    fn fields_are_converted_as_arrow_json_converts_them() {
        let values: Vec<Option<Vec<u8>>> = [
            &br#"{"s":"a\"b","i":27.9,"f":"2.5","b":true,"t":"2026-01-01T00:00:00Z"}"#[..],
            br#"{"s":1,"i":"42","f":3,"b":"true","t":1700000000000}"#,
            br#"{"i":1e30,"i":-7,"f":null,"unknown":[1,{"i":2}]}"#,
            br#"{"s":"x"} trailing"#,
            br#"["not", "an", "object"]"#,
        ]
        .iter()
        .map(|v| Some(v.to_vec()))
        .chain([None])
        .collect();
        let (projected, lines) = both(&schema(), &values);
        assert_eq!(projected, lines);
        let ints = projected
            .column(1)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap();
        assert_eq!(
            ints.iter().collect::<Vec<_>>()[..3],
            [Some(27), Some(42), Some(-7)]
        );
    }

    #[test]
    fn a_schema_with_lists_is_left_to_arrow_json() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "l",
            DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
            true,
        )]));
        assert!(ProjectedJson::new(&schema).is_none());
        assert!(matches!(ValueDecoder::new(&schema), ValueDecoder::Lines(_)));
    }
}
