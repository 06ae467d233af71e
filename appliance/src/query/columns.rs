//! The columns every table has before the value's fields, defined once: their positions,
//! names and types. The table's schema and filters and the scan's decoder read them here.

use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};

use crate::log::TopicName;

/// The edge whose mirror a record is in (null for a local topic).
pub const EDGE: usize = 0;
pub const TOPIC: usize = 1;
pub const PARTITION: usize = 2;
pub const OFFSET: usize = 3;
pub const TIMESTAMP: usize = 4;
pub const KEY: usize = 5;

/// The names, by position.
pub const VIRTUAL_COLUMNS: [&str; 6] = [
    "_edge",
    "_topic",
    "_partition",
    "_offset",
    "_timestamp",
    "_key",
];

/// The Arrow fields, by position.
pub fn virtual_fields() -> Vec<Field> {
    let name = |index: usize| VIRTUAL_COLUMNS[index];
    vec![
        Field::new(name(EDGE), DataType::Utf8, true),
        Field::new(name(TOPIC), DataType::Utf8, false),
        Field::new(name(PARTITION), DataType::Int32, false),
        Field::new(name(OFFSET), DataType::Int64, false),
        Field::new(
            name(TIMESTAMP),
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new(name(KEY), DataType::Utf8, true),
    ]
}

/// A topic behind a table, and the edge whose mirror it is: what `_topic` and `_edge` say.
#[derive(Debug, Clone)]
pub struct Source {
    pub topic: TopicName,
    pub edge: Option<String>,
}
