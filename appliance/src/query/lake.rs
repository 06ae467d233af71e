//! The lake: where Delta tables live ([`LakeLocation`]: a directory, or a prefix in an
//! S3-compatible bucket reached through `object_store` with credentials from the secret
//! providers) and the `lake` schema, every export's table read through delta-rs's own table
//! provider (`SELECT ... FROM lake.NAME`), so history beyond the log's retention stays
//! queryable with the same engine and limits. The exports (a layer above) tell the catalog
//! which tables exist; a query that names `lake` opens those tables at their newest version.
//!
//! Object stores serialise concurrent writers of one table by conditional put (`If-None-Match:
//! *` on a commit file): S3 has it since 2024, as have MinIO, R2 and the other compatible
//! stores this supports, so no locking table beside the store is needed (docs/lake.md).

use std::collections::BTreeMap;
use std::sync::{Arc, Once, PoisonError, RwLock};

use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::TableReference;
use datafusion::prelude::SessionContext;
use deltalake_core::logstore::{
    LogStore, LogStoreFactory, ObjectStoreRef, StorageConfig, default_logstore, logstore_factories,
};
use deltalake_core::{DeltaResult, DeltaTableBuilder, DeltaTableError};
use object_store::ClientConfigKey;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use url::Url;

use super::QueryError;
use crate::log::TopicName;
use crate::security::secrets::SecretProviders;

/// The schema name of exported tables.
pub const LAKE: &str = "lake";

/// The storage settings an `s3://` location takes.
const S3_SETTINGS: [&str; 7] = [
    "endpoint",
    "region",
    "access-key-id",
    "secret-access-key",
    "session-token",
    "allow-http",
    "virtual-hosted-style",
];
/// The settings that must be secret references, never stored in plain text.
const S3_SECRETS: [&str; 2] = ["secret-access-key", "session-token"];

fn s3_key(setting: &str) -> Option<AmazonS3ConfigKey> {
    Some(match setting {
        "endpoint" => AmazonS3ConfigKey::Endpoint,
        "region" => AmazonS3ConfigKey::Region,
        "access-key-id" => AmazonS3ConfigKey::AccessKeyId,
        "secret-access-key" => AmazonS3ConfigKey::SecretAccessKey,
        "session-token" => AmazonS3ConfigKey::Token,
        "allow-http" => AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp),
        "virtual-hosted-style" => AmazonS3ConfigKey::VirtualHostedStyleRequest,
        _ => return None,
    })
}

/// Where a Delta table lives: a local or mounted directory (`file:///...`) or a prefix in an
/// S3-compatible bucket (`s3://BUCKET/PREFIX`) with the settings that reach it. A setting may
/// be a secret reference (`${env:NAME}`, `${file:PATH}`), resolved each time the table is
/// opened, so what is stored and answered holds references, never secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeLocation {
    url: Url,
    storage: Vec<(String, String)>,
}

impl LakeLocation {
    /// `to` (an absolute directory, `file:///...` or `s3://BUCKET/PREFIX`) with its storage
    /// settings, checked: what is wrong is said with what to write instead.
    pub fn new(to: &str, storage: Vec<(String, String)>) -> Result<Self, String> {
        let url = if to.starts_with('/') {
            Url::from_directory_path(to)
                .map_err(|()| format!("{to} is not a directory path the table can live in"))?
        } else {
            Url::parse(to).map_err(|e| {
                format!(
                    "{to:?} is neither an absolute directory nor a URL ({e}); give /path, \
                     file:///path or s3://bucket/prefix"
                )
            })?
        };
        match url.scheme() {
            "file" if storage.is_empty() => {}
            "file" => {
                return Err(format!(
                    "storage settings ({}) apply to s3:// tables only; a directory needs none",
                    storage[0].0
                ));
            }
            "s3" => check_s3(&url, &storage)?,
            other => {
                return Err(format!(
                    "{other}:// tables are not supported: give a local or mounted directory \
                     (file:///path) or an S3-compatible bucket (s3://bucket/prefix)"
                ));
            }
        }
        Ok(Self { url, storage })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The settings as given: secrets as references.
    pub fn storage(&self) -> &[(String, String)] {
        &self.storage
    }

    /// A builder of the table at this location, its secrets resolved by `secrets`.
    pub fn builder(&self, secrets: &SecretProviders) -> Result<DeltaTableBuilder, String> {
        let builder = DeltaTableBuilder::from_url(self.url.clone()).map_err(|e| e.to_string())?;
        if self.url.scheme() != "s3" {
            return Ok(builder);
        }
        let settings = secrets.resolve(&self.storage).map_err(|e| e.to_string())?;
        let mut store = AmazonS3Builder::new()
            .with_url(self.url.as_str())
            .with_region("us-east-1");
        for (setting, value) in settings.iter() {
            let key = s3_key(setting).ok_or_else(|| format!("unknown setting {setting:?}"))?;
            store = store.with_config(key, value);
        }
        let store = store
            .build()
            .map_err(|e| format!("the object store of {}: {e}", self.url))?;
        register_s3_log_store();
        Ok(builder.with_storage_backend(Arc::new(store), self.url.clone()))
    }
}

/// The settings of an `s3://` location: known keys, each once; secrets as references; plain
/// HTTP only when asked for.
fn check_s3(url: &Url, storage: &[(String, String)]) -> Result<(), String> {
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url} names no bucket: give s3://bucket/prefix"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (setting, value) in storage {
        if !S3_SETTINGS.contains(&setting.as_str()) {
            return Err(format!(
                "unknown storage setting {setting:?}: use any of {}",
                S3_SETTINGS.join(", ")
            ));
        }
        if !seen.insert(setting.as_str()) {
            return Err(format!("storage setting {setting:?} is given twice"));
        }
        if ["allow-http", "virtual-hosted-style"].contains(&setting.as_str())
            && !["true", "false"].contains(&value.as_str())
        {
            return Err(format!(
                "storage setting {setting}={value:?}: give true or false"
            ));
        }
    }
    SecretProviders::require_references(storage, &S3_SECRETS, "an s3:// table")
        .map_err(|e| e.to_string())?;
    let setting = |key: &str| {
        storage
            .iter()
            .find(|(setting, _)| setting == key)
            .map(|(_, value)| value.as_str())
    };
    if let Some(endpoint) = setting("endpoint").filter(|e| !e.contains("${")) {
        let parsed = Url::parse(endpoint)
            .map_err(|e| format!("storage setting endpoint={endpoint:?}: {e}"))?;
        match parsed.scheme() {
            "https" => {}
            "http" if setting("allow-http") == Some("true") => {}
            "http" => {
                return Err(format!(
                    "endpoint {endpoint} is plain HTTP, which carries the data and the \
                     request signatures unencrypted: use https, or add allow-http=true"
                ));
            }
            other => {
                return Err(format!(
                    "endpoint {endpoint}: {other}:// is not HTTP; give https://host[:port]"
                ));
            }
        }
    }
    Ok(())
}

/// delta-rs finds a table's log store by its URL's scheme; an `s3://` table's is the default
/// one (commits by conditional put) on the store [`LakeLocation::builder`] gives it.
fn register_s3_log_store() {
    struct S3LogStores;
    impl LogStoreFactory for S3LogStores {
        fn with_options(
            &self,
            prefixed_store: ObjectStoreRef,
            root_store: ObjectStoreRef,
            location: &Url,
            options: &StorageConfig,
        ) -> DeltaResult<Arc<dyn LogStore>> {
            Ok(default_logstore(
                prefixed_store,
                root_store,
                location,
                options,
            ))
        }
    }
    static REGISTERED: Once = Once::new();
    REGISTERED.call_once(|| {
        if let Ok(scheme) = Url::parse("s3://") {
            logstore_factories().insert(scheme, Arc::new(S3LogStores));
        }
    });
}

/// Export name -> the location of its Delta table and the table it exports (whose topics a
/// reader of `lake.NAME` needs read on); cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LakeCatalog {
    tables: Arc<RwLock<BTreeMap<String, (LakeLocation, TopicName)>>>,
    secrets: SecretProviders,
}

impl LakeCatalog {
    /// An empty catalog whose tables' secrets `secrets` resolves.
    pub fn new(secrets: SecretProviders) -> Self {
        Self {
            tables: Arc::default(),
            secrets,
        }
    }

    /// What resolves the secret references of the tables' storage settings.
    pub fn secrets(&self) -> &SecretProviders {
        &self.secrets
    }

    pub fn insert(&self, name: &str, location: LakeLocation, exported: TopicName) {
        self.tables
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), (location, exported));
    }

    /// The table export `name` exports.
    pub fn exported(&self, name: &str) -> Option<TopicName> {
        self.tables
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .map(|(_, exported)| exported.clone())
    }

    pub fn remove(&self, name: &str) {
        self.tables
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    fn locations(&self) -> Vec<(String, LakeLocation)> {
        self.tables
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, (location, _))| (name.clone(), location.clone()))
            .collect()
    }

    /// Registers `lake.NAME` for every table `sql` may name (its name occurs in it) that exists
    /// now; a table not created yet (its export has committed nothing) is left out, so a query
    /// of it says the table is unknown, and a store that cannot be read fails the query with
    /// its answer.
    pub async fn register(&self, context: &SessionContext, sql: &str) -> Result<(), QueryError> {
        let catalog = context
            .catalog("datafusion")
            .ok_or_else(|| QueryError::Failed("the session has no default catalog".into()))?;
        catalog.register_schema(LAKE, Arc::new(MemorySchemaProvider::new()))?;
        let sql = sql.to_ascii_lowercase();
        for (name, location) in self.locations() {
            if !sql.contains(&name.to_ascii_lowercase()) {
                continue;
            }
            let unreadable =
                |e: String| QueryError::Data(format!("lake.{name} at {}: {e}", location.url()));
            let mut table = location
                .builder(&self.secrets)
                .and_then(|builder| builder.build().map_err(|e| e.to_string()))
                .map_err(unreadable)?;
            match table.load().await {
                Ok(()) => {}
                Err(DeltaTableError::NotATable(_)) => continue,
                Err(error) => return Err(unreadable(error.to_string())),
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
