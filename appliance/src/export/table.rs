//! The Delta table an export writes, through delta-rs: created on the first commit with the
//! rows' schema and partition columns, widened by nullable columns when the values grow, and
//! appended to by commits that carry, as Delta application transactions (`txn` actions), the
//! next source offset of every source partition they cover. Those versions are what an export
//! resumes from, so the table itself is the only record of what it holds: a crash between
//! writing files and committing them leaves unreferenced files (vacuum removes them), never a
//! row twice. Concurrent writers (several hubs) are serialised by Delta's optimistic
//! concurrency; a commit that lost is retried by delta-rs when it does not conflict, and a
//! conflicting one (the same application id) fails the attempt, which then starts again from
//! what the table says.

use datafusion::arrow::array::{ArrayRef, RecordBatch, new_null_array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake_core::kernel::transaction::CommitProperties;
use deltalake_core::kernel::{StructField, StructType, Transaction};
use deltalake_core::operations::vacuum::VacuumMode;
use deltalake_core::protocol::SaveMode;
use deltalake_core::writer::{DeltaWriter as _, RecordBatchWriter};
use deltalake_core::{DeltaTable, DeltaTableError};
use deltalake_core::{FilterLiteral, FilterOp, FilterValue};

use super::ExportError;
use crate::log::Offset;
use crate::query::LakeLocation;
use crate::security::secrets::SecretProviders;

/// How often a commit that lost to a concurrent one is tried again on the newer version.
const COMMIT_RETRIES: usize = 100;

/// One Delta table, loaded.
pub struct LakeTable {
    table: DeltaTable,
}

impl std::fmt::Debug for LakeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeTable")
            .field("url", &self.table.table_url().as_str())
            .field("version", &self.table.version())
            .finish()
    }
}

/// What one maintenance pass did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Maintained {
    pub files_compacted: u64,
    pub files_deleted: u64,
}

/// What one commit wrote.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    pub version: u64,
    pub files: u64,
    pub bytes: u64,
}

fn lake(error: DeltaTableError) -> ExportError {
    ExportError::Table(error.to_string())
}

impl LakeTable {
    /// The table at `location`, loaded if it exists.
    pub async fn open(
        location: &LakeLocation,
        secrets: &SecretProviders,
    ) -> Result<Self, ExportError> {
        if let Ok(dir) = location.url().to_file_path() {
            std::fs::create_dir_all(&dir)
                .map_err(|e| ExportError::Table(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut table = location
            .builder(secrets)
            .map_err(ExportError::Table)?
            .build()
            .map_err(lake)?;
        match table.load().await {
            Ok(()) | Err(DeltaTableError::NotATable(_)) => Ok(Self { table }),
            Err(error) => Err(lake(error)),
        }
    }

    pub fn exists(&self) -> bool {
        self.table.version().is_some()
    }

    /// The table's version, if it exists.
    pub fn version(&self) -> Option<u64> {
        self.table.version()
    }

    /// The table's columns as Arrow fields.
    pub fn schema(&self) -> Result<SchemaRef, ExportError> {
        Ok(self
            .table
            .snapshot()
            .map_err(lake)?
            .snapshot()
            .arrow_schema())
    }

    /// Reads what other writers committed since this table was loaded.
    pub async fn refresh(&mut self) -> Result<(), ExportError> {
        if self.exists() {
            self.table.update_incremental(None).await.map_err(lake)?;
        } else {
            match self.table.load().await {
                Ok(()) | Err(DeltaTableError::NotATable(_)) => {}
                Err(error) => return Err(lake(error)),
            }
        }
        Ok(())
    }

    /// The next offset the table holds for application id `app_id` (a source partition).
    pub async fn committed(&self, app_id: &str) -> Result<Option<Offset>, ExportError> {
        if !self.exists() {
            return Ok(None);
        }
        let version = self
            .table
            .snapshot()
            .map_err(lake)?
            .transaction_version(self.table.log_store().as_ref(), app_id)
            .await
            .map_err(lake)?;
        Ok(version.map(|v| Offset(v.max(0) as u64)))
    }

    /// Creates the table unless another writer did first; either way it is loaded after.
    pub async fn create(
        &mut self,
        schema: &Schema,
        partition_by: &[String],
    ) -> Result<(), ExportError> {
        let columns: StructType = schema.try_into_kernel().map_err(|e| lake(e.into()))?;
        let created = self
            .table
            .create()
            .with_columns(columns.fields().cloned())
            .with_partition_columns(partition_by.iter().cloned())
            .with_save_mode(SaveMode::Ignore)
            .await
            .map_err(lake)?;
        self.table = created;
        self.refresh().await
    }

    /// Adds `fields` (nullable) that the table does not have yet.
    pub async fn add_columns(&mut self, fields: &[Field]) -> Result<(), ExportError> {
        self.refresh().await?;
        let have = self.schema()?;
        let missing: Vec<&Field> = fields
            .iter()
            .filter(|f| have.field_with_name(f.name()).is_err())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let kernel: Vec<StructField> = missing
            .iter()
            .map(|f| {
                let field = f.as_ref().clone().with_nullable(true);
                (&field).try_into_kernel().map_err(|e| lake(e.into()))
            })
            .collect::<Result<_, _>>()?;
        let table = self.table.clone();
        self.table = table
            .add_columns()
            .with_fields(kernel)
            .await
            .map_err(lake)?;
        Ok(())
    }

    /// Writes `batches` as Parquet files and commits them with the next source offset of
    /// each source partition they cover (`covered`: application id -> next offset) and
    /// `info` in the commit's metadata.
    pub async fn commit(
        &mut self,
        batches: &[RecordBatch],
        covered: &[(String, Offset)],
        info: serde_json::Value,
        target_file_bytes: u64,
    ) -> Result<Committed, ExportError> {
        let transactions = covered
            .iter()
            .map(|(app_id, next)| Transaction::new(app_id, next.0 as i64))
            .collect();
        let properties = CommitProperties::default()
            .with_application_transactions(transactions)
            .with_metadata([("appliance.export".to_owned(), info)])
            .with_max_retries(COMMIT_RETRIES);
        let mut writer = RecordBatchWriter::for_table(&self.table)
            .map_err(lake)?
            .with_target_file_size(target_file_bytes)
            .with_commit_properties(properties);
        let schema = self.schema()?;
        for batch in batches {
            let batch = conform(batch, &schema).map_err(|e| ExportError::Rows(e.to_string()))?;
            writer.write(batch).await.map_err(lake)?;
        }
        let before = self.files_and_bytes();
        let version = writer
            .flush_and_commit(&mut self.table)
            .await
            .map_err(lake)?;
        let after = self.files_and_bytes();
        Ok(Committed {
            version,
            files: after.0.saturating_sub(before.0),
            bytes: after.1.saturating_sub(before.1),
        })
    }

    /// Rewrites small files of each partition into files of about `target_file_bytes`
    /// (Delta's OPTIMIZE: the rows do not change, readers see the same table) and deletes
    /// files no version younger than `retention` references, those a crash left behind
    /// included (VACUUM, full mode). In a table partitioned by `_edge`, only the partitions
    /// of `edges` (`None`: this appliance's own topics) are compacted: delta-rs does not take
    /// two compactions of the same files for a conflict (their removes change no data), so two
    /// hubs compacting each other's files would both commit, and the rows would be there twice.
    pub async fn maintain(
        &mut self,
        target_file_bytes: u64,
        retention: std::time::Duration,
        edges: &[Option<&str>],
    ) -> Result<Maintained, ExportError> {
        if !self.exists() {
            return Ok(Maintained::default());
        }
        let by_edge = self
            .table
            .snapshot()
            .map_err(lake)?
            .metadata()
            .partition_columns()
            .iter()
            .any(|column| column == super::rows::EDGE);
        let named: Vec<&str> = edges.iter().flatten().copied().collect();
        let mut passes: Vec<Vec<FilterLiteral<'_>>> = Vec::new();
        if !by_edge {
            passes.push(Vec::new());
        } else {
            if !named.is_empty() {
                passes.push(vec![(
                    super::rows::EDGE,
                    FilterOp::In,
                    FilterValue::Set(named),
                )]);
            }
            if edges.contains(&None) {
                // An empty partition value is the null one: this appliance's own topics.
                passes.push(vec![(
                    super::rows::EDGE,
                    FilterOp::Eq,
                    FilterValue::Scalar(""),
                )]);
            }
        }
        let target =
            std::num::NonZeroU64::new(target_file_bytes).unwrap_or(std::num::NonZeroU64::MIN);
        let mut maintained = Maintained::default();
        for filters in &passes {
            let (table, metrics) = self
                .table
                .clone()
                .optimize()
                .with_filters(filters)
                .with_target_size(target)
                .with_commit_properties(
                    CommitProperties::default().with_max_retries(COMMIT_RETRIES),
                )
                .await
                .map_err(lake)?;
            self.table = table;
            maintained.files_compacted += metrics.num_files_removed;
        }
        let retention = chrono::Duration::from_std(retention)
            .map_err(|e| ExportError::Table(format!("vacuum retention: {e}")))?;
        let (table, vacuumed) = self
            .table
            .clone()
            .vacuum()
            .with_retention_period(retention)
            .with_mode(VacuumMode::Full)
            .await
            .map_err(lake)?;
        self.table = table;
        maintained.files_deleted = vacuumed.files_deleted.len() as u64;
        Ok(maintained)
    }

    /// Files and bytes the table references now.
    pub fn files_and_bytes(&self) -> (u64, u64) {
        let Ok(state) = self.table.snapshot() else {
            return (0, 0);
        };
        let files = state.log_data();
        let count = files.num_files() as u64;
        let bytes = files.iter().map(|file| file.size().max(0) as u64).sum();
        (count, bytes)
    }

    /// The URIs of the Parquet files of the table's current version.
    #[cfg(test)]
    pub fn file_uris(&self) -> Result<Vec<String>, ExportError> {
        Ok(self.table.get_file_uris().map_err(lake)?.collect())
    }
}

/// `batch` with the table's columns in the table's order: a column the rows lack (added
/// after they were built, here or by another writer) is null, a type the table stores
/// differently (text as a view, say) is cast.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => Ok(column.clone()),
            Some(column) => cast(column, field.data_type()),
            None => Ok(new_null_array(field.data_type(), batch.num_rows())),
        })
        .collect::<Result<_, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}
