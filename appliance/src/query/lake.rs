//! The `lake` schema: every export's Delta table, read through delta-rs's own table provider
//! (`SELECT ... FROM lake.NAME`), so history beyond the log's retention stays queryable with
//! the same engine and limits. The exports (a layer above) tell the catalog which tables
//! exist; a query that names `lake` opens those tables at their newest version.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::TableReference;
use datafusion::prelude::SessionContext;
use deltalake_core::DeltaTableBuilder;
use url::Url;

use super::QueryError;
use crate::log::TopicName;

/// The schema name of exported tables.
pub const LAKE: &str = "lake";

/// Export name -> the location of its Delta table and the table it exports (whose topics a
/// reader of `lake.NAME` needs read on); cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LakeCatalog(Arc<RwLock<BTreeMap<String, (Url, TopicName)>>>);

impl LakeCatalog {
    pub fn insert(&self, name: &str, url: Url, exported: TopicName) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), (url, exported));
    }

    /// The table export `name` exports.
    pub fn exported(&self, name: &str) -> Option<TopicName> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .map(|(_, exported)| exported.clone())
    }

    pub fn remove(&self, name: &str) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    fn tables(&self) -> Vec<(String, Url)> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, (url, _))| (name.clone(), url.clone()))
            .collect()
    }

    /// Registers `lake.NAME` for every table that exists now; a table not created yet (its
    /// export has committed nothing) is left out, so a query of it says the table is unknown.
    pub async fn register(&self, context: &SessionContext) -> Result<(), QueryError> {
        let catalog = context
            .catalog("datafusion")
            .ok_or_else(|| QueryError::Failed("the session has no default catalog".into()))?;
        catalog.register_schema(LAKE, Arc::new(MemorySchemaProvider::new()))?;
        for (name, url) in self.tables() {
            let mut table = DeltaTableBuilder::from_url(url.clone())
                .and_then(|builder| builder.build())
                .map_err(|e| QueryError::Data(format!("lake.{name} at {url}: {e}")))?;
            if table.load().await.is_err() {
                continue;
            }
            table
                .update_datafusion_session(&context.state())
                .map_err(|e| QueryError::Data(format!("lake.{name}: {e}")))?;
            let provider = table.table_provider().await?;
            context.register_table(TableReference::partial(LAKE, name.as_str()), provider)?;
        }
        Ok(())
    }
}

/// Whether `sql` may name a table of the lake (a cheap test that spares other queries opening
/// every Delta table).
pub fn names_lake(sql: &str) -> bool {
    sql.to_ascii_lowercase().contains(LAKE)
}
