//! The appliance's TOML configuration and its defaults. No file is needed: every field has a
//! default, and command-line flags (or their `APPLIANCE_*` environment variables) override
//! the file.
//!
//! ```toml
//! data-dir = "/var/lib/appliance"
//!
//! [log]
//! durability = "fsync"                 # or "os": acknowledge after write, before fsync
//! retention-check-interval-ms = 300000
//! disk-reserve-mb = 64                 # released at start when the disk is full
//! max-disk-bytes = 4294967296          # the data directory's budget; at it, appends are
//! disk-budget-policy = "refuse"        # refused, or "delete-oldest" segments make room
//!
//! [log.topic-defaults]                 # any TopicConfig field
//! retention-ms = 604800000
//! segment-bytes = 134217728
//!
//! [api]
//! grpc-addr = "127.0.0.1:7070"
//! metrics-addr = "127.0.0.1:9464"
//! console = true                       # the web console (docs/console.md)
//! console-addr = "127.0.0.1:7080"
//! max-connections = 512                # gRPC connections open at once; more are refused
//! idle-timeout-ms = 120000             # a peer silent this long is disconnected
//! tls-cert = "tls/api.pem"             # TLS on all three (appliance certs server); needed
//! tls-key = "tls/api.key"              # to bind any of them to a non-loopback address
//! tls-client-ca = "tls/ca.pem"         # client certificates of this CA authenticate
//!
//! [query]                              # SQL (docs/queries.md)
//! memory-mb = 256                      # one query, its answer included
//! total-memory-mb = 1024               # all queries running at once
//! timeout-ms = 60000                   # waiting for a slot included
//! max-concurrent = 4                   # more wait for a slot
//! max-answer-mb = 64                   # encoded answer; clients must accept this much
//! threads = 2                          # the query engine's own; absent: one per core
//!
//! [plugins]                            # defaults of every plugin instance
//! max-memory-mb = 64                   # a transform's config may set its own
//! timeout-ms = 5000                    # longest single call (one batch)
//!
//! [link]                               # cluster links (docs/linking.md)
//! role = "hub"                         # "edge" (default): only dials hubs
//! addr = "0.0.0.0:7443"                # a hub's UDP endpoint for edges
//! ca = "link/ca.pem"                   # a hub's files (appliance certs init)
//! cert = "link/hub.pem"
//! key = "link/hub.key"
//! idle-timeout-ms = 15000              # silence before a link connection is given up
//!
//! [groups]                             # consumer group members (docs/operations.md)
//! session-timeout-ms = 45000           # when a member asks for none
//! min-session-timeout-ms = 6000        # bounds of what a member may ask for
//! max-session-timeout-ms = 1800000
//!
//! [restart.pipelines]                  # after a failure (docs/operations.md); also
//! first-ms = 1000                      # [restart.connectors] and [restart.links]
//! longest-ms = 16000                   # the wait doubles up to this
//! budget = 5                           # restarts in a row, or "unlimited"
//! healthy-run-ms = 60000               # a run this long starts the count anew
//!
//! [restart.pipeline.plant-filter]      # one pipeline's own (also connector.NAME, link.NAME)
//! budget = "unlimited"
//!
//! [security]                           # docs/security.md
//! super-users = ["User:admin"]         # pass every ACL check (the admin token's principal)
//! client-principal-rules = ['RULE:^CN=([a-z0-9.-]+),O=plant$/$1/L', "DEFAULT"]
//!
//! [topics.sensors]                     # topics created at start when missing
//! partitions = 4
//! ```

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::{ConnectionLimits, TlsFiles};
use crate::group::SessionLimits;
use crate::link::Role;
use crate::link::hub::HubOptions;
use crate::log::{BudgetPolicy, Durability, LogConfig, TopicConfig, TopicName};
use crate::plugin::Limits;
#[cfg(feature = "hub")]
use crate::query::QueryLimits;
use crate::runtime::{ResourceName, RestartPolicies, RestartPolicy};
use crate::security::secrets::SecretProviders;
use crate::security::{self, Principal, PrincipalRules};

#[cfg(feature = "hub")]
const MIB: usize = 1024 * 1024;
/// The smallest `log.max-disk-bytes`.
const MIN_DISK_BUDGET: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    /// Directory for topics (`topics/`) and metadata (`meta/`); created when missing.
    pub data_dir: PathBuf,
    /// The partitioned log.
    pub log: LogSection,
    /// The gRPC API and the metrics endpoint.
    pub api: ApiSection,
    /// The Kafka listener (docs/kafka.md).
    pub kafka: KafkaSection,
    /// Sandbox limits of plugin instances.
    pub plugins: PluginsSection,
    /// Cluster links: whether this appliance is a hub, and its endpoint.
    pub link: LinkSection,
    /// Consumer groups: how long a silent member keeps its partitions.
    pub groups: GroupsSection,
    /// Bounds of SQL queries.
    pub query: QuerySection,
    /// How pipelines, connectors and links are restarted after failures.
    pub restart: RestartSection,
    /// Who is a super-user (docs/security.md).
    pub security: SecuritySection,
    /// Topics that must exist: created at start with these settings over `log.topic-defaults`.
    pub topics: BTreeMap<String, toml::Table>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("appliance-data"),
            log: LogSection::default(),
            api: ApiSection::default(),
            kafka: KafkaSection::default(),
            plugins: PluginsSection::default(),
            link: LinkSection::default(),
            groups: GroupsSection::default(),
            query: QuerySection::default(),
            restart: RestartSection::default(),
            security: SecuritySection::default(),
            topics: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct LogSection {
    /// `fsync` (default): an append is acknowledged once fdatasync returned. `os`: once written.
    pub durability: Durability,
    /// How often retention looks for segments to delete.
    pub retention_check_interval_ms: u64,
    /// Settings of topics created without their own.
    pub topic_defaults: TopicConfig,
    /// Disk space held back in the data directory, in MiB: released at start when the disk
    /// is full, so the appliance can start and serve deletes (docs/operations.md). 0: none.
    pub disk_reserve_mb: u64,
    /// The most bytes the data directory holds (docs/operations.md). None: no budget.
    pub max_disk_bytes: Option<u64>,
    /// At the budget: `refuse` appends until there is room, or `delete-oldest` segments of
    /// topics whose cleanup deletes.
    pub disk_budget_policy: BudgetPolicy,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            retention_check_interval_ms: 5 * 60 * 1000,
            topic_defaults: TopicConfig::default(),
            disk_reserve_mb: 64,
            max_disk_bytes: None,
            disk_budget_policy: BudgetPolicy::Refuse,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct KafkaSection {
    /// Whether the Kafka listener runs.
    pub enabled: bool,
    /// Its address (TCP); `[::]:9092` takes IPv4 and IPv6. Port 0 picks a free port; the log
    /// says which.
    pub addr: SocketAddr,
    /// What Metadata tells clients to connect to; by default the address each client reached.
    pub advertised_addr: Option<SocketAddr>,
    /// The largest request an authenticated client may send (Kafka's
    /// `socket.request.max.bytes`).
    pub max_request_bytes: usize,
    /// Kafka connections open at once; more are closed as they come.
    pub max_connections: usize,
    /// A connection that sent no request for this long is closed, in milliseconds (Kafka's
    /// `connections.max.idle.ms`).
    pub idle_timeout_ms: u64,
}

impl Default for KafkaSection {
    fn default() -> Self {
        Self {
            enabled: true,
            addr: SocketAddr::from(([127, 0, 0, 1], 9092)),
            advertised_addr: None,
            max_request_bytes: 16 * 1024 * 1024,
            max_connections: 1024,
            idle_timeout_ms: 600_000,
        }
    }
}

impl KafkaSection {
    pub fn settings(&self) -> crate::kafka::KafkaSettings {
        crate::kafka::KafkaSettings {
            advertised: self.advertised_addr,
            max_request_bytes: self.max_request_bytes,
            limits: ConnectionLimits {
                max: self.max_connections,
                idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            },
        }
    }

    /// What is wrong with the section; `tls`: the API's certificate, which the listener
    /// serves TLS with, is configured.
    fn problems(&self, tls: bool) -> Vec<String> {
        let mut problems = Vec::new();
        if self.enabled && !tls && !self.addr.ip().is_loopback() {
            problems.push(format!(
                "kafka.addr {} is reachable from other machines, and SASL over plaintext would \
                 expose passwords and data to them: give the API a certificate (--api-cert and \
                 --api-key), which the Kafka listener then serves TLS with, or bind \
                 kafka.addr to 127.0.0.1",
                self.addr
            ));
        }
        if !(1024..=256 * 1024 * 1024).contains(&self.max_request_bytes) {
            problems.push("kafka.max-request-bytes is 1 KiB to 256 MiB".to_owned());
        }
        if self.max_connections == 0 {
            problems.push("kafka.max-connections is at least 1".to_owned());
        }
        if self.idle_timeout_ms < 1000 {
            problems.push("kafka.idle-timeout-ms is at least 1000".to_owned());
        }
        problems
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ApiSection {
    /// Address of the gRPC API (TCP). Port 0 picks a free port; the log says which.
    pub grpc_addr: SocketAddr,
    /// Address of the Prometheus endpoint, `GET /metrics` (TCP).
    pub metrics_addr: SocketAddr,
    /// Whether the web console is served.
    pub console: bool,
    /// Address of the web console (TCP, HTTP or HTTPS as the API is).
    pub console_addr: SocketAddr,
    /// gRPC connections open at once; one more is accepted and closed at once.
    pub max_connections: usize,
    /// A connection whose peer sent nothing for this long is closed, in milliseconds; HTTP/2
    /// keepalive pings go every third of it, so live clients always answer in time.
    pub idle_timeout_ms: u64,
    /// The certificate (PEM, chain first) of TLS on the gRPC API, the metrics endpoint and
    /// the console (`appliance certs server`); required to bind any of them to a
    /// non-loopback address.
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Client certificates that chain to this CA authenticate on the gRPC API as the user
    /// `security.client-principal-rules` map them to.
    pub tls_client_ca: Option<PathBuf>,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 7070)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            console: true,
            console_addr: SocketAddr::from(([127, 0, 0, 1], 7080)),
            max_connections: 512,
            idle_timeout_ms: 120_000,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

impl ApiSection {
    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<TlsFiles<'_>> {
        Some(TlsFiles {
            cert: self.tls_cert.as_deref()?,
            key: self.tls_key.as_deref()?,
            client_ca: self.tls_client_ca.as_deref(),
        })
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            problems
                .push("api.tls-cert and api.tls-key (--api-cert, --api-key) go together".into());
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            problems.push("api.tls-client-ca needs api.tls-cert and api.tls-key".into());
        }
        if self.tls_cert.is_none() {
            let console = self.console.then_some(("console-addr", self.console_addr));
            for (field, addr) in [
                ("grpc-addr", self.grpc_addr),
                ("metrics-addr", self.metrics_addr),
            ]
            .into_iter()
            .chain(console)
            {
                if !addr.ip().is_loopback() {
                    problems.push(format!(
                        "api.{field} {addr} is reachable from other machines, and plaintext would \
                         expose tokens and data to them: give the API a certificate (--api-cert \
                         and --api-key; `appliance certs server NAME --dir DIR` makes them) or \
                         bind {field} to 127.0.0.1"
                    ));
                }
            }
        }
        problems
    }

    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max: self.max_connections,
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct SecuritySection {
    /// Principals that pass every authorization check. `User:admin` is the principal of the
    /// admin token made at first start.
    pub super_users: Vec<Principal>,
    /// How a client certificate's subject becomes `User:NAME`, as Kafka's
    /// `ssl.principal.mapping.rules`: `RULE:PATTERN/REPLACEMENT/[LU]` or `DEFAULT` (the common
    /// name). Empty: `DEFAULT`.
    pub client_principal_rules: Vec<String>,
    /// Directories whose files plugin configurations may name as `${file:PATH}`.
    pub secret_dirs: Vec<PathBuf>,
    /// Prefixes of the environment variables plugin configurations may name as `${env:NAME}`.
    pub secret_env_prefixes: Vec<String>,
}

impl Default for SecuritySection {
    fn default() -> Self {
        Self {
            super_users: Principal::user(security::ADMIN).into_iter().collect(),
            client_principal_rules: Vec::new(),
            secret_dirs: vec![PathBuf::from("/etc/appliance/secrets")],
            secret_env_prefixes: vec!["APPLIANCE_SECRET_".to_owned()],
        }
    }
}

impl SecuritySection {
    pub fn super_users(&self) -> HashSet<Principal> {
        self.super_users.iter().cloned().collect()
    }

    pub fn secret_providers(&self) -> SecretProviders {
        SecretProviders::new(self.secret_dirs.clone(), self.secret_env_prefixes.clone())
    }

    /// The parsed rules; `validate` has checked them.
    pub fn client_principals(&self) -> Result<PrincipalRules, security::SecurityError> {
        PrincipalRules::parse(&self.client_principal_rules)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct QuerySection {
    /// Memory one query may reserve (its joins, sorts, aggregates and answer), in MiB.
    pub memory_mb: u64,
    /// Memory all queries running at once may reserve together, in MiB.
    pub total_memory_mb: u64,
    /// Longest a query (or one run of a live query) may take, waiting for a slot included.
    pub timeout_ms: u64,
    /// Queries that may run at once; more wait for a slot.
    pub max_concurrent: usize,
    /// Largest encoded answer, in MiB; a larger one fails with RESOURCE_EXHAUSTED.
    pub max_answer_mb: u64,
    /// Worker threads of the query engine, apart from the log's and the API's; absent: one
    /// per core.
    pub threads: Option<usize>,
}

/// The section is read by every build (a lean edge's configuration may name it), so its
/// defaults do not come from `query::QueryLimits`; a test keeps the two equal.
impl Default for QuerySection {
    fn default() -> Self {
        Self {
            memory_mb: 256,
            total_memory_mb: 1024,
            timeout_ms: 60_000,
            max_concurrent: 4,
            max_answer_mb: 64,
            threads: None,
        }
    }
}

impl QuerySection {
    #[cfg(feature = "hub")]
    pub fn limits(&self) -> QueryLimits {
        QueryLimits {
            memory_per_query: self.memory_mb as usize * MIB,
            memory_total: self.total_memory_mb as usize * MIB,
            timeout: Duration::from_millis(self.timeout_ms),
            concurrent: self.max_concurrent,
            answer_bytes: self.max_answer_mb as usize * MIB,
        }
    }

    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        })
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=1_048_576).contains(&self.total_memory_mb) {
            problems.push("query.total-memory-mb must be from 1 to 1048576".into());
        }
        if !(1..=self.total_memory_mb.max(1)).contains(&self.memory_mb) {
            problems.push("query.memory-mb must be from 1 to query.total-memory-mb".into());
        }
        if !(1..=86_400_000).contains(&self.timeout_ms) {
            problems.push("query.timeout-ms must be from 1 to 86400000".into());
        }
        if !(1..=1024).contains(&self.max_concurrent) {
            problems.push("query.max-concurrent must be from 1 to 1024".into());
        }
        if !(1..=4096).contains(&self.max_answer_mb) {
            problems.push("query.max-answer-mb must be from 1 to 4096".into());
        }
        if self
            .threads
            .is_some_and(|threads| !(1..=1024).contains(&threads))
        {
            problems.push("query.threads must be from 1 to 1024".into());
        }
        problems
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct PluginsSection {
    /// Memory one plugin instance may grow to, in MiB (1 to 4096).
    pub max_memory_mb: u64,
    /// Longest one plugin call (one batch) may run, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for PluginsSection {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            max_memory_mb: limits.max_memory_mb,
            timeout_ms: limits.timeout_ms,
        }
    }
}

impl PluginsSection {
    pub fn limits(&self) -> Limits {
        Limits {
            max_memory_mb: self.max_memory_mb,
            timeout_ms: self.timeout_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct GroupsSection {
    /// Session timeout of a member that asks for none: a member that neither heartbeats nor
    /// commits for this long is removed and its partitions move to the others.
    pub session_timeout_ms: u64,
    /// Shortest session timeout a member may ask for.
    pub min_session_timeout_ms: u64,
    /// Longest session timeout a member may ask for.
    pub max_session_timeout_ms: u64,
}

impl Default for GroupsSection {
    fn default() -> Self {
        let limits = SessionLimits::default();
        Self {
            session_timeout_ms: limits.default.as_millis() as u64,
            min_session_timeout_ms: limits.min.as_millis() as u64,
            max_session_timeout_ms: limits.max.as_millis() as u64,
        }
    }
}

impl GroupsSection {
    pub fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            default: Duration::from_millis(self.session_timeout_ms),
            min: Duration::from_millis(self.min_session_timeout_ms),
            max: Duration::from_millis(self.max_session_timeout_ms),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct LinkSection {
    /// `edge` (default): links dial hubs. `hub`: also accepts edges on `addr`.
    pub role: Role,
    /// The hub's UDP endpoint.
    pub addr: SocketAddr,
    /// The hub's files: the CA edges' certificates must chain to, its certificate and key.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The CA's key, on a hub that enrolls edges by join token (it signs their certificates).
    pub ca_key: Option<PathBuf>,
    /// How long a link connection may hear nothing from its peer before it is given up.
    pub idle_timeout_ms: u64,
}

impl Default for LinkSection {
    fn default() -> Self {
        Self {
            role: Role::Edge,
            addr: SocketAddr::from(([0, 0, 0, 0], 7443)),
            ca: None,
            cert: None,
            key: None,
            ca_key: None,
            idle_timeout_ms: crate::link::tls::DEFAULT_IDLE_TIMEOUT.as_millis() as u64,
        }
    }
}

impl LinkSection {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// The hub's endpoint settings; none on an edge.
    pub fn hub(&self) -> Option<HubOptions> {
        match (self.role, &self.ca, &self.cert, &self.key) {
            (Role::Hub, Some(ca), Some(cert), Some(key)) => Some(HubOptions {
                addr: self.addr,
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
                ca_key: self.ca_key.clone(),
                idle_timeout: self.idle_timeout(),
            }),
            _ => None,
        }
    }
}

/// Restart policies: one per kind of component, and a component's own by its name. Each
/// field left out keeps the kind's (or for the kind, the built-in) value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RestartSection {
    pub pipelines: PolicySection,
    pub connectors: PolicySection,
    pub links: PolicySection,
    pub exports: PolicySection,
    pub pipeline: BTreeMap<String, PolicySection>,
    pub connector: BTreeMap<String, PolicySection>,
    pub link: BTreeMap<String, PolicySection>,
    pub export: BTreeMap<String, PolicySection>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct PolicySection {
    /// The wait after the first failure, doubling with each one after.
    pub first_ms: Option<u64>,
    /// The longest wait.
    pub longest_ms: Option<u64>,
    /// Restarts in a row before the component stays failed, or `"unlimited"`.
    pub budget: Option<Budget>,
    /// A run this long counts as healthy and starts the count anew.
    pub healthy_run_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Budget {
    Restarts(u32),
    /// Only `"unlimited"` is valid.
    Word(String),
}

const UNLIMITED: &str = "unlimited";

impl PolicySection {
    fn over(&self, base: RestartPolicy) -> RestartPolicy {
        let millis = |ms: Option<u64>, base: Duration| ms.map_or(base, Duration::from_millis);
        RestartPolicy {
            first: millis(self.first_ms, base.first),
            longest: millis(self.longest_ms, base.longest),
            budget: match &self.budget {
                None => base.budget,
                Some(Budget::Restarts(count)) => Some(*count),
                Some(Budget::Word(_)) => None,
            },
            healthy_run: millis(self.healthy_run_ms, base.healthy_run),
        }
    }

    fn problems(&self, at: &str, base: RestartPolicy) -> Vec<String> {
        let mut problems = Vec::new();
        let policy = self.over(base);
        if !(Duration::from_millis(1)..=Duration::from_secs(86_400)).contains(&policy.first) {
            problems.push(format!("{at}.first-ms must be from 1 to 86400000"));
        }
        if policy.longest < policy.first || policy.longest > Duration::from_secs(86_400) {
            problems.push(format!(
                "{at}.longest-ms must be at least first-ms and at most 86400000"
            ));
        }
        if matches!(&self.budget, Some(Budget::Word(word)) if word != UNLIMITED) {
            problems.push(format!(
                "{at}.budget is a number of restarts or \"{UNLIMITED}\""
            ));
        }
        if policy.healthy_run.is_zero() {
            problems.push(format!("{at}.healthy-run-ms must be at least 1"));
        }
        problems
    }
}

impl RestartSection {
    pub fn pipelines(&self) -> RestartPolicies {
        policies(RestartPolicy::TASKS, &self.pipelines, &self.pipeline)
    }

    pub fn connectors(&self) -> RestartPolicies {
        policies(RestartPolicy::TASKS, &self.connectors, &self.connector)
    }

    pub fn links(&self) -> RestartPolicies {
        policies(RestartPolicy::LINKS, &self.links, &self.link)
    }

    /// Exports wait on their table's storage like links on their hub: no budget.
    pub fn exports(&self) -> RestartPolicies {
        policies(RestartPolicy::LINKS, &self.exports, &self.export)
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (kind, one, builtin, kind_section, by_name) in [
            (
                "pipelines",
                "pipeline",
                RestartPolicy::TASKS,
                &self.pipelines,
                &self.pipeline,
            ),
            (
                "connectors",
                "connector",
                RestartPolicy::TASKS,
                &self.connectors,
                &self.connector,
            ),
            (
                "links",
                "link",
                RestartPolicy::LINKS,
                &self.links,
                &self.link,
            ),
            (
                "exports",
                "export",
                RestartPolicy::LINKS,
                &self.exports,
                &self.export,
            ),
        ] {
            problems.extend(kind_section.problems(&format!("restart.{kind}"), builtin));
            let base = kind_section.over(builtin);
            for (name, section) in by_name {
                if ResourceName::new(name).is_none() {
                    problems.push(format!(
                        "restart.{one}.{name}: not a {one} name: {}",
                        ResourceName::RULE
                    ));
                }
                problems.extend(section.problems(&format!("restart.{one}.{name}"), base));
            }
        }
        problems
    }
}

fn policies(
    builtin: RestartPolicy,
    kind: &PolicySection,
    by_name: &BTreeMap<String, PolicySection>,
) -> RestartPolicies {
    let kind = kind.over(builtin);
    RestartPolicies {
        kind,
        by_name: by_name
            .iter()
            .map(|(name, section)| (name.clone(), section.over(kind)))
            .collect(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid configuration:\n  {}", problems.join("\n  "))]
    Invalid { problems: Vec<String> },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Checks everything and reports every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems: Vec<String> = self
            .log
            .topic_defaults
            .problems()
            .iter()
            .map(|p| format!("log.topic-defaults.{p}"))
            .collect();
        if self.log.retention_check_interval_ms == 0 {
            problems.push("log.retention-check-interval-ms must be at least 1".into());
        }
        if !(1..=4096).contains(&self.plugins.max_memory_mb) {
            problems.push("plugins.max-memory-mb must be from 1 to 4096".into());
        }
        if !(1..=3_600_000).contains(&self.plugins.timeout_ms) {
            problems.push("plugins.timeout-ms must be from 1 to 3600000".into());
        }
        if self.link.role == Role::Hub {
            for (field, value) in [
                ("ca", &self.link.ca),
                ("cert", &self.link.cert),
                ("key", &self.link.key),
            ] {
                if value.is_none() {
                    problems.push(format!(
                        "link.{field} (--link-{field}) is required with role hub (appliance certs init makes the files)"
                    ));
                }
            }
        }
        problems.extend(self.api.problems());
        problems.extend(self.kafka.problems(self.api.tls_cert.is_some()));
        if let Err(error) = PrincipalRules::parse(&self.security.client_principal_rules) {
            problems.push(format!("security.client-principal-rules: {error}"));
        }
        if !(1..=1_000_000).contains(&self.api.max_connections) {
            problems.push("api.max-connections must be from 1 to 1000000".into());
        }
        if self.log.disk_reserve_mb > 65_536 {
            problems.push("log.disk-reserve-mb must be from 0 to 65536".into());
        }
        if self
            .log
            .max_disk_bytes
            .is_some_and(|max| max < MIN_DISK_BUDGET)
        {
            problems.push(format!(
                "log.max-disk-bytes must be at least {MIN_DISK_BUDGET} (16 MiB): the metadata \
                 store alone takes some"
            ));
        }
        if !(1000..=86_400_000).contains(&self.api.idle_timeout_ms) {
            problems.push("api.idle-timeout-ms must be from 1000 to 86400000".into());
        }
        problems.extend(self.query.problems());
        if !(1000..=3_600_000).contains(&self.link.idle_timeout_ms) {
            problems.push("link.idle-timeout-ms must be from 1000 to 3600000".into());
        }
        let groups = &self.groups;
        if !(1..=u64::from(u32::MAX)).contains(&groups.min_session_timeout_ms)
            || groups.min_session_timeout_ms > groups.max_session_timeout_ms
            || groups.max_session_timeout_ms > u64::from(u32::MAX)
        {
            problems.push(
                "groups.min-session-timeout-ms must be at least 1 and at most groups.max-session-timeout-ms, which must be at most 4294967295".into(),
            );
        }
        if !(groups.min_session_timeout_ms..=groups.max_session_timeout_ms)
            .contains(&groups.session_timeout_ms)
        {
            problems.push(
                "groups.session-timeout-ms must be within groups.min-session-timeout-ms and groups.max-session-timeout-ms".into(),
            );
        }
        problems.extend(self.restart.problems());
        if let Err(declared) = self.declared_topics() {
            problems.extend(declared);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }

    /// The `[topics.NAME]` tables as topic names and full configs.
    pub fn declared_topics(&self) -> Result<Vec<(TopicName, TopicConfig)>, Vec<String>> {
        let mut problems = Vec::new();
        let mut topics = Vec::new();
        for (name, overrides) in &self.topics {
            let topic = match TopicName::new(name.clone()) {
                Ok(topic) => topic,
                Err(error) => {
                    problems.push(format!("topics.{name}: {error}"));
                    continue;
                }
            };
            match self.topic_config(overrides) {
                Ok(config) => {
                    problems.extend(
                        config
                            .problems()
                            .iter()
                            .map(|p| format!("topics.{name}.{p}")),
                    );
                    topics.push((topic, config));
                }
                Err(error) => problems.push(format!("topics.{name}: {}", error.message())),
            }
        }
        if problems.is_empty() {
            Ok(topics)
        } else {
            Err(problems)
        }
    }

    fn topic_config(&self, overrides: &toml::Table) -> Result<TopicConfig, toml::de::Error> {
        let mut table = toml::Table::try_from(&self.log.topic_defaults)
            .map_err(|e| <toml::de::Error as serde::de::Error>::custom(e.to_string()))?;
        table.extend(overrides.clone());
        toml::Value::Table(table).try_into()
    }

    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            data_dir: self.data_dir.clone(),
            durability: self.log.durability,
            retention_check_interval: Duration::from_millis(self.log.retention_check_interval_ms),
            topic_defaults: self.log.topic_defaults.clone(),
            disk_reserve_bytes: self.log.disk_reserve_mb << 20,
            max_disk_bytes: self.log.max_disk_bytes,
            budget_policy: self.log.disk_budget_policy,
            unbudgeted_topics: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let config: Config = toml::from_str("").expect("parses");
        assert_eq!(config, Config::default());
        config.validate().expect("defaults are valid");
    }

    #[cfg(feature = "hub")]
    #[test]
    fn the_query_section_defaults_to_the_engines_limits() {
        assert_eq!(QuerySection::default().limits(), QueryLimits::default());
    }

    #[test]
    fn declared_topics_take_defaults_and_overrides() {
        let config: Config = toml::from_str(
            r#"
            [log.topic-defaults]
            retention-ms = 1000
            [topics.sensors]
            partitions = 4
            "#,
        )
        .expect("parses");
        let topics = config.declared_topics().expect("valid");
        assert_eq!(topics[0].0.as_str(), "sensors");
        assert_eq!(topics[0].1.partitions, 4);
        assert_eq!(topics[0].1.retention_ms, Some(1000));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let config: Config = toml::from_str(
            r#"
            [log.topic-defaults]
            partitions = 0
            [topics."bad name"]
            [topics.ok]
            partitions = 5000
            [topics.typo]
            partitons = 2
            "#,
        )
        .expect("parses");
        let message = config.validate().expect_err("invalid").to_string();
        for expected in [
            "log.topic-defaults.partitions must be 1 to 1024",
            "topics.bad name: invalid topic name",
            "topics.ok.partitions must be 1 to 1024",
            "topics.typo: unknown field `partitons`",
        ] {
            assert!(
                message.contains(expected),
                "{expected:?} missing from {message}"
            );
        }
    }

    #[test]
    fn restart_policies_layer_built_in_kind_and_component() {
        let config: Config = toml::from_str(
            r#"
            [restart.pipelines]
            budget = 10
            longest-ms = 8000
            [restart.pipeline.plant-filter]
            budget = "unlimited"
            [restart.link.uplink]
            first-ms = 50
            "#,
        )
        .expect("parses");
        config.validate().expect("valid");
        let pipelines = config.restart.pipelines();
        assert_eq!(pipelines.of("other").budget, Some(10));
        assert_eq!(pipelines.of("other").longest, Duration::from_secs(8));
        assert_eq!(pipelines.of("other").first, RestartPolicy::TASKS.first);
        let own = pipelines.of("plant-filter");
        assert_eq!(own.budget, None);
        assert_eq!(
            own.longest,
            Duration::from_secs(8),
            "the kind's, not built-in"
        );
        assert_eq!(config.restart.connectors().of("x"), RestartPolicy::TASKS);
        let links = config.restart.links();
        assert_eq!(links.of("uplink").first, Duration::from_millis(50));
        assert_eq!(links.of("uplink").budget, None);
        assert_eq!(links.of("other"), RestartPolicy::LINKS);
    }

    #[test]
    fn bad_restart_policies_are_explained() {
        let config: Config = toml::from_str(
            r#"
            [restart.connectors]
            first-ms = 0
            budget = "forever"
            [restart.pipeline."no spaces"]
            longest-ms = 10
            "#,
        )
        .expect("parses");
        let message = config.validate().expect_err("invalid").to_string();
        for expected in [
            "restart.connectors.first-ms must be from 1 to 86400000",
            "restart.connectors.budget is a number of restarts or \"unlimited\"",
            "restart.pipeline.no spaces: not a pipeline name",
            "restart.pipeline.no spaces.longest-ms must be at least first-ms",
        ] {
            assert!(
                message.contains(expected),
                "{expected:?} missing from {message}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let error = toml::from_str::<Config>("data-dri = \"x\"").expect_err("typo");
        assert!(
            error.to_string().contains("unknown field `data-dri`"),
            "{error}"
        );
    }
}
