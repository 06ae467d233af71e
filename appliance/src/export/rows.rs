//! Records of one source partition -> Arrow rows of the table: the virtual columns, the JSON
//! value's fields in the table's schema, and the day column the table is partitioned by.
//!
//! A value is decoded strictly: a field whose value does not fit its column's type, a value
//! that is not a JSON object, or a field name no table can have makes the record a misfit
//! (for the dead-letter topic, with the reason), never a silent null. A field the schema does
//! not have yet is a new nullable column (schema evolution): the rows are decoded again with
//! the wider schema. The fast path decodes a whole chunk in one pass; only a chunk that fails
//! is decoded record by record to find out which records are at fault.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Date32Array, Int32Array, Int64Array, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::json::reader::infer_json_schema_from_iterator;

use crate::log::StoredRecord;

/// The columns every exported row has before the value's fields, and the partition column
/// after them. Values' fields of these names are shadowed.
pub const EDGE: &str = "_edge";
pub const PARTITION: &str = "_partition";
pub const OFFSET: &str = "_offset";
pub const TIMESTAMP: &str = "_timestamp";
pub const KEY: &str = "_key";
pub const DAY: &str = "_day";
pub const RESERVED: [&str; 6] = [EDGE, PARTITION, OFFSET, TIMESTAMP, KEY, DAY];

/// More value columns than this and a record with yet another field is a misfit.
pub const MAX_VALUE_FIELDS: usize = 1_000;

const MICROS_PER_MILLI: i64 = 1_000;
const MILLIS_PER_DAY: i64 = 86_400_000;

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The table's schema for these value fields: virtual columns, values, `_day`.
pub fn table_schema(values: &[Field]) -> SchemaRef {
    let mut fields = vec![
        Field::new(EDGE, DataType::Utf8, true),
        Field::new(PARTITION, DataType::Int32, false),
        Field::new(OFFSET, DataType::Int64, false),
        Field::new(TIMESTAMP, timestamp_type(), false),
        Field::new(KEY, DataType::Utf8, true),
    ];
    fields.extend(values.iter().cloned());
    fields.push(Field::new(DAY, DataType::Date32, false));
    Arc::new(Schema::new(fields))
}

/// The value fields of a table's schema (what is not a virtual or partition column).
pub fn value_fields(schema: &Schema) -> Vec<Field> {
    schema
        .fields()
        .iter()
        .filter(|f| !RESERVED.contains(&f.name().as_str()))
        .map(|f| f.as_ref().clone())
        .collect()
}

/// A record that cannot become a row, and why.
#[derive(Debug, Clone)]
pub struct Misfit {
    pub record: StoredRecord,
    pub reason: String,
}

/// The rows of one chunk of records, and the records that did not fit.
#[derive(Debug)]
pub struct Rows {
    pub batch: RecordBatch,
    pub misfits: Vec<Misfit>,
}

/// Turns records of one source partition into rows of the table's value fields, which
/// every source of an export shares and a chunk with new fields widens.
#[derive(Debug)]
pub struct RowBuilder {
    edge: Option<String>,
    partition: i32,
}

/// One record as the builder keeps it until the chunk is decoded.
struct Pending<'a> {
    record: &'a StoredRecord,
    /// The value, or `{}` for a record without one (a tombstone: the row has null values).
    line: &'a [u8],
}

impl RowBuilder {
    pub fn new(edge: Option<String>, partition: u32) -> Self {
        Self {
            edge,
            partition: partition as i32,
        }
    }

    /// The rows of `records`, in order, without the misfits; `values` grows by the new fields
    /// the records have.
    pub fn build(
        &self,
        values: &mut Vec<Field>,
        records: &[StoredRecord],
    ) -> Result<Rows, ArrowError> {
        let mut misfits = Vec::new();
        let mut pending = Vec::with_capacity(records.len());
        for record in records {
            match record.record.value.as_deref() {
                None => pending.push(Pending {
                    record,
                    line: b"{}",
                }),
                Some(value) if value.trim_ascii_start().first() == Some(&b'{') => {
                    pending.push(Pending {
                        record,
                        line: value,
                    })
                }
                Some(_) => misfits.push(Misfit {
                    record: record.clone(),
                    reason: "the value is not a JSON object".to_owned(),
                }),
            }
        }
        let mut schema = Arc::new(Schema::new(values.clone()));
        let mut decoded = decode(&schema, &pending);
        if decoded.is_err() {
            // New fields fail a strict decode too: widen the schema and try the chunk again.
            widen(values, &mut pending, &mut misfits);
            schema = Arc::new(Schema::new(values.clone()));
            decoded = decode(&schema, &pending);
        }
        let decoded = match decoded {
            Ok(batch) => vec![batch],
            Err(_) => {
                // Find the records at fault; the rest decode one by one.
                let mut batches = Vec::with_capacity(pending.len());
                let mut kept = Vec::with_capacity(pending.len());
                for one in pending {
                    match decode(&schema, std::slice::from_ref(&one)) {
                        Ok(batch) => {
                            batches.push(batch);
                            kept.push(one);
                        }
                        Err(error) => misfits.push(Misfit {
                            record: one.record.clone(),
                            reason: format!("the value does not fit the table's schema: {error}"),
                        }),
                    }
                }
                pending = kept;
                batches
            }
        };
        let value_columns = concat_batches(&schema, &decoded)?;
        let batch = self.rows(values, &pending, value_columns)?;
        misfits.sort_by_key(|misfit| misfit.record.offset);
        Ok(Rows { batch, misfits })
    }

    /// The table's rows: virtual columns from the records, the decoded value columns, the day.
    fn rows(
        &self,
        values: &[Field],
        pending: &[Pending<'_>],
        columns_of_values: RecordBatch,
    ) -> Result<RecordBatch, ArrowError> {
        let rows = pending.len();
        let mut keys = StringBuilder::new();
        for one in pending {
            keys.append_option(
                one.record
                    .record
                    .key
                    .as_deref()
                    .map(String::from_utf8_lossy),
            );
        }
        let millis: Vec<i64> = pending
            .iter()
            .map(|p| p.record.record.timestamp.0)
            .collect();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(match &self.edge {
                Some(edge) => StringArray::new_repeated(edge, rows),
                None => StringArray::new_null(rows),
            }),
            Arc::new(Int32Array::from_value(self.partition, rows)),
            Arc::new(Int64Array::from_iter_values(
                pending.iter().map(|p| p.record.offset.0 as i64),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    millis.iter().map(|ms| ms.saturating_mul(MICROS_PER_MILLI)),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(keys.finish()),
        ];
        for column in columns_of_values.columns() {
            columns.push(store_as(column)?);
        }
        columns.push(Arc::new(Date32Array::from_iter_values(
            millis.iter().map(|ms| ms.div_euclid(MILLIS_PER_DAY) as i32),
        )));
        RecordBatch::try_new(table_schema(values), columns)
    }
}

/// Adds the fields the values have and the schema has not (as nullable columns, their
/// types inferred over every value that has them); values that are not JSON, or whose
/// new fields cannot be columns, become misfits.
fn widen(values: &mut Vec<Field>, pending: &mut Vec<Pending<'_>>, misfits: &mut Vec<Misfit>) {
    let known: std::collections::HashSet<String> =
        values.iter().map(|f| f.name().clone()).collect();
    let mut newcomers = Vec::new();
    let mut kept = Vec::with_capacity(pending.len());
    for one in pending.drain(..) {
        let fields = match new_fields(one.line, &known) {
            Ok(fields) => fields,
            Err(reason) => {
                misfits.push(Misfit {
                    record: one.record.clone(),
                    reason,
                });
                continue;
            }
        };
        if !fields.is_empty() {
            newcomers.push(serde_json::Value::Object(fields));
        }
        kept.push(one);
    }
    *pending = kept;
    if newcomers.is_empty() {
        return;
    }
    for (name, data_type) in vote(&newcomers) {
        if values.len() >= MAX_VALUE_FIELDS {
            break;
        }
        values.push(Field::new(name, storable(&data_type), true));
    }
}

/// The type of each new field, in the order the fields first appear: the one most values
/// have (the others are misfits when the chunk is decoded again), where integers and floats
/// together make a float. A field seen only as null has no type yet; it joins when a value
/// comes.
fn vote(newcomers: &[serde_json::Value]) -> Vec<(String, DataType)> {
    let mut order: Vec<String> = Vec::new();
    let mut counts: std::collections::HashMap<String, Vec<(DataType, usize)>> =
        std::collections::HashMap::new();
    for object in newcomers {
        let Ok(schema) = infer_json_schema_from_iterator(std::iter::once(Ok(object))) else {
            continue;
        };
        for field in schema.fields() {
            if field.data_type() == &DataType::Null {
                continue;
            }
            let tally = counts.entry(field.name().clone()).or_insert_with(|| {
                order.push(field.name().clone());
                Vec::new()
            });
            match tally.iter_mut().find(|(t, _)| t == field.data_type()) {
                Some((_, count)) => *count += 1,
                None => tally.push((field.data_type().clone(), 1)),
            }
        }
    }
    order
        .into_iter()
        .filter_map(|name| {
            let tally = counts.remove(&name)?;
            let numeric = tally
                .iter()
                .all(|(t, _)| matches!(t, DataType::Int64 | DataType::Float64));
            let chosen = if numeric && tally.len() > 1 {
                DataType::Float64
            } else {
                // The first of the most common, so ties go to the type seen first.
                let most = tally.iter().map(|(_, count)| *count).max()?;
                tally.into_iter().find(|(_, count)| *count == most)?.0
            };
            Some((name, chosen))
        })
        .collect()
}

/// The top-level fields of a JSON object that `known` lacks; what is wrong with it otherwise.
fn new_fields(
    line: &[u8],
    known: &std::collections::HashSet<String>,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("the value is not JSON: {e}"))?;
    let serde_json::Value::Object(object) = value else {
        return Err("the value is not a JSON object".to_owned());
    };
    let mut fields = serde_json::Map::new();
    for (name, value) in object {
        if known.contains(&name) || RESERVED.contains(&name.as_str()) {
            continue;
        }
        if let Some(bad) = name.chars().find(|c| " ,;{}()\n\t=".contains(*c)) {
            return Err(format!(
                "the field {name:?} cannot be a column (it contains {bad:?})"
            ));
        }
        if name.is_empty() {
            return Err("a field has an empty name".to_owned());
        }
        fields.insert(name, value);
    }
    Ok(fields)
}

/// The type a column is stored as: timestamps in microseconds (Delta's unit), nulls as text.
fn storable(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Timestamp(_, zone) => DataType::Timestamp(TimeUnit::Microsecond, zone.clone()),
        DataType::Null => DataType::Utf8,
        other => other.clone(),
    }
}

fn store_as(column: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    let wanted = storable(column.data_type());
    if &wanted == column.data_type() {
        Ok(column.clone())
    } else {
        cast(column, &wanted)
    }
}

/// The records' values decoded strictly into `schema`: one row each, or the first error.
fn decode(schema: &SchemaRef, records: &[Pending<'_>]) -> Result<RecordBatch, ArrowError> {
    let mut decoder = ReaderBuilder::new(Arc::clone(schema))
        .with_strict_mode(true)
        .with_batch_size(records.len().max(1))
        .build_decoder()?;
    for one in records {
        let mut rest = one.line;
        while !rest.is_empty() {
            let read = decoder.decode(rest)?;
            if read == 0 {
                break;
            }
            rest = &rest[read..];
        }
        decoder.decode(b"\n")?;
    }
    let batch = decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(schema)));
    if batch.num_rows() != records.len() {
        return Err(ArrowError::JsonError(format!(
            "{} rows from {} values: a value holds more or less than one JSON object",
            batch.num_rows(),
            records.len()
        )));
    }
    Ok(batch)
}
