//! Prometheus metrics: request latencies recorded as requests finish, and the log's and the
//! groups' state read at scrape time, so the hot paths only bump counters they already keep.
//!
//! ```text
//! appliance_grpc_request_duration_seconds{method}        histogram
//! appliance_kafka_request_duration_seconds{api}          histogram
//! appliance_kafka_errors_total{api,outcome}              counter  (error codes, closed connections)
//! appliance_principal_usage_total{principal,usage}       counter  (bytes produced or fetched, requests)
//! appliance_principal_throttle_seconds_total{principal,usage} counter (time slowed by a quota)
//! appliance_log_appended_records_total{topic,partition}  counter  (rate() = append rate)
//! appliance_log_appended_bytes_total{topic,partition}    counter
//! appliance_log_high_watermark{topic,partition}          gauge
//! appliance_log_start_offset{topic,partition}            gauge
//! appliance_log_size_bytes{topic,partition}              gauge
//! appliance_log_partition_online{topic,partition}        gauge    (0: refusing to serve)
//! appliance_disk_used_bytes                              gauge    (the data directory)
//! appliance_disk_budget_bytes                            gauge    (log.max-disk-bytes; 0: none)
//! appliance_disk_evicted_segments_total                  counter  (log.disk-budget-policy)
//! appliance_group_lag{group,topic,partition}             gauge    (records behind the end)
//! appliance_group_members{group}                         gauge
//! appliance_pipeline_records_in_total{pipeline,partition}  counter (source records transformed)
//! appliance_pipeline_records_out_total{pipeline,partition} counter (records appended)
//! appliance_pipeline_rejected_total{pipeline,partition}    counter (skipped or dead-lettered)
//! appliance_pipeline_lag{pipeline,partition}             gauge    (source records not yet transformed)
//! appliance_pipeline_restarts_total{pipeline,partition}   counter (automatic restarts)
//! appliance_pipeline_failed{pipeline,partition}          gauge    (1: stopped on an error)
//! appliance_connector_records_in_total{connector,task}   counter (polled or read)
//! appliance_connector_records_out_total{connector,task}  counter (appended or delivered)
//! appliance_connector_rejected_total{connector,task}     counter (skipped or dead-lettered)
//! appliance_connector_restarts_total{connector,task}     counter (automatic restarts)
//! appliance_connector_failed{connector,task}             gauge    (1: stopped on an error)
//! appliance_plugin_counter_total{plugin,instance,name}   counter  (a plugin's own counters)
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::access::bearer;
use super::listener::{ConnectionLimits, incoming};
use super::tls;
use crate::connect::{self, Connectors};
use crate::group::Coordinator;
use crate::link::edge::Links;
use crate::link::hub::Hub;
use crate::link::progress::MirrorStatus;
use crate::log::{Log, PartitionState};
use crate::pipeline::{self, Pipelines};
use crate::plugin::Plugins;
use crate::security::{CLUSTER, Operation, Principal, ResourceType, Rpc, Security, Usage};

/// Scrapers connected at once; more are refused.
const MAX_CONNECTIONS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RpcLabels {
    method: Rpc,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KafkaLabels {
    api: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KafkaErrorLabels {
    api: &'static str,
    /// `response`: the answer carries an error code; `closed`: the connection was closed.
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UsageLabels {
    principal: String,
    usage: Usage,
}

/// Handle to the registry; cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    durations: Family<RpcLabels, Histogram>,
    usage: Family<UsageLabels, Counter>,
    throttled: Family<UsageLabels, Counter<f64, AtomicU64>>,
    kafka_durations: Family<KafkaLabels, Histogram>,
    kafka_errors: Family<KafkaErrorLabels, Counter>,
    registry: Arc<Registry>,
}

/// Observes a request's duration when dropped.
#[derive(Debug)]
pub struct Timer {
    histogram: Histogram,
    started: Instant,
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

impl Metrics {
    pub fn new(
        log: Log,
        coordinator: Coordinator,
        plugins: Plugins,
        pipelines: Pipelines,
        connectors: Connectors,
        links: Links,
        hub: Option<Hub>,
    ) -> Self {
        let durations = Family::<RpcLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
        });
        let mut registry = Registry::with_prefix("appliance");
        registry.register(
            "grpc_request_duration_seconds",
            "Time to answer a gRPC request (for streams: to set the stream up)",
            durations.clone(),
        );
        let usage = Family::<UsageLabels, Counter>::default();
        registry.register(
            "principal_usage",
            "Bytes produced, bytes fetched and requests made, per principal",
            usage.clone(),
        );
        let throttled = Family::<UsageLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "principal_throttle_seconds",
            "Time a principal's calls were slowed by its quotas",
            throttled.clone(),
        );
        let kafka_durations = Family::<KafkaLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
        });
        registry.register(
            "kafka_request_duration_seconds",
            "Time to answer a Kafka request, by API (its count is the requests served)",
            kafka_durations.clone(),
        );
        let kafka_errors = Family::<KafkaErrorLabels, Counter>::default();
        registry.register(
            "kafka_errors",
            "Kafka requests answered with an error code, or that closed their connection, by API",
            kafka_errors.clone(),
        );
        registry.register_collector(Box::new(StateCollector { log, coordinator }));
        registry.register_collector(Box::new(LinkCollector { links, hub }));
        registry.register_collector(Box::new(PipelineCollector {
            plugins,
            pipelines,
            connectors,
        }));
        Self {
            durations,
            usage,
            throttled,
            kafka_durations,
            kafka_errors,
            registry: Arc::new(registry),
        }
    }

    /// Counts a principal's use of `amount`, and the time its quota slowed it.
    pub fn used(&self, principal: &Principal, usage: Usage, amount: u64, waited: Duration) {
        let labels = UsageLabels {
            principal: principal.to_string(),
            usage,
        };
        self.usage.get_or_create(&labels).inc_by(amount);
        if !waited.is_zero() {
            self.throttled
                .get_or_create(&labels)
                .inc_by(waited.as_secs_f64());
        }
    }

    pub fn time(&self, rpc: Rpc) -> Timer {
        Timer {
            histogram: self
                .durations
                .get_or_create(&RpcLabels { method: rpc })
                .clone(),
            started: Instant::now(),
        }
    }

    /// Times one Kafka request of `api`.
    pub fn time_kafka(&self, api: &'static str) -> Timer {
        Timer {
            histogram: self
                .kafka_durations
                .get_or_create(&KafkaLabels { api })
                .clone(),
            started: Instant::now(),
        }
    }

    /// Counts a Kafka request of `api` that failed: answered with an error code, or (with
    /// `closed`) ended its connection.
    pub fn kafka_error(&self, api: &'static str, closed: bool) {
        let outcome = if closed { "closed" } else { "response" };
        self.kafka_errors
            .get_or_create(&KafkaErrorLabels { api, outcome })
            .inc();
    }

    /// The exposition text of every metric.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// A gauge read from each partition's state: name, help, value.
type StateGauge = (&'static str, &'static str, fn(&PartitionState) -> i64);

#[derive(Debug)]
struct StateCollector {
    log: Log,
    coordinator: Coordinator,
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let topics = self.log.list_topics();
        let partitions: Vec<_> = topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
            .map(|(topic, p)| {
                let labels = [
                    ("topic", topic.name.to_string()),
                    ("partition", p.id.to_string()),
                ];
                let appended = self
                    .log
                    .partition(&topic.name, p.id)
                    .map_or((0, 0), |handle| handle.appended());
                (labels, &p.state, appended)
            })
            .collect();
        let mut counter = |name: &str, help: &str, value: &dyn Fn(&(u64, u64)) -> u64| {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for (labels, _, appended) in &partitions {
                ConstCounter::new(value(appended)).encode(family.encode_family(labels)?)?;
            }
            Ok::<(), std::fmt::Error>(())
        };
        counter(
            "log_appended_records",
            "Records appended since start",
            &|a| a.0,
        )?;
        counter(
            "log_appended_bytes",
            "Stored bytes appended since start",
            &|a| a.1,
        )?;
        let gauges: [StateGauge; 4] = [
            (
                "log_high_watermark",
                "Offset after the last durable record",
                |s| match s {
                    PartitionState::Online { high_watermark, .. } => high_watermark.0 as i64,
                    PartitionState::Failed { .. } => 0,
                },
            ),
            (
                "log_start_offset",
                "First offset still stored",
                |s| match s {
                    PartitionState::Online { log_start, .. } => log_start.0 as i64,
                    PartitionState::Failed { .. } => 0,
                },
            ),
            ("log_size_bytes", "Bytes stored", |s| match s {
                PartitionState::Online { size_bytes, .. } => *size_bytes as i64,
                PartitionState::Failed { .. } => 0,
            }),
            (
                "log_partition_online",
                "1 when serving, 0 when refusing to",
                |s| i64::from(matches!(s, PartitionState::Online { .. })),
            ),
        ];
        for (name, help, value) in gauges {
            let mut family =
                encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
            for (labels, state, _) in &partitions {
                ConstGauge::new(value(state)).encode(family.encode_family(labels)?)?;
            }
        }
        let budget = self.log.disk_budget();
        let disk: [(&str, &str, u64); 2] = [
            (
                "disk_used_bytes",
                "Bytes the data directory holds (but the disk reserve)",
                budget.used(),
            ),
            (
                "disk_budget_bytes",
                "log.max-disk-bytes; 0 when there is no budget",
                budget.max().unwrap_or(0),
            ),
        ];
        for (name, help, value) in disk {
            let family =
                encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
            ConstGauge::new(value as i64).encode(family)?;
        }
        let evicted = ConstCounter::new(budget.evicted_segments());
        evicted.encode(encoder.encode_descriptor(
            "disk_evicted_segments",
            "Segments the disk budget's delete-oldest policy deleted",
            None,
            evicted.metric_type(),
        )?)?;
        let groups = self.coordinator.list().unwrap_or_default();
        let mut members = encoder.encode_descriptor(
            "group_members",
            "Members consuming in the group",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for group in &groups {
            ConstGauge::new(group.members as i64)
                .encode(members.encode_family(&[("group", group.group.to_string())])?)?;
        }
        let mut lag = encoder.encode_descriptor(
            "group_lag",
            "Records between the group's committed offset and the high watermark",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for group in &groups {
            for partition in self.coordinator.lags(&group.group).unwrap_or_default() {
                let labels = [
                    ("group", group.group.to_string()),
                    ("topic", partition.topic.to_string()),
                    ("partition", partition.partition.to_string()),
                ];
                ConstGauge::new(partition.lag as i64).encode(lag.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct PipelineCollector {
    plugins: Plugins,
    pipelines: Pipelines,
    connectors: Connectors,
}

/// A figure of each row of a table (pipeline partitions, connector tasks): name, help,
/// is-counter, value.
type Figure<T> = (&'static str, &'static str, bool, fn(&T) -> u64);

/// Encodes one metric family per figure, with one sample per row.
fn encode_rows<T>(
    encoder: &mut DescriptorEncoder,
    figures: &[Figure<T>],
    rows: &[([(&'static str, String); 2], T)],
) -> Result<(), std::fmt::Error> {
    for (name, help, is_counter, value) in figures {
        let metric_type = if *is_counter {
            ConstCounter::new(0u64).metric_type()
        } else {
            ConstGauge::new(0i64).metric_type()
        };
        let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
        for (labels, row) in rows {
            let figure = value(row);
            let encoder = family.encode_family(labels)?;
            if *is_counter {
                ConstCounter::new(figure).encode(encoder)?;
            } else {
                ConstGauge::new(figure as i64).encode(encoder)?;
            }
        }
    }
    Ok(())
}

#[derive(Debug)]
struct LinkCollector {
    links: Links,
    hub: Option<Hub>,
}

impl Collector for LinkCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let figures = |prefix: &'static [&'static str; 5]| -> [Figure<MirrorStatus>; 5] {
            [
                (
                    prefix[0],
                    "Records of the origin the mirror does not have yet",
                    false,
                    |m| m.lag_records,
                ),
                (
                    prefix[1],
                    "Records the origin's retention deleted before the mirror had them",
                    true,
                    |m| m.gap_records,
                ),
                (
                    prefix[2],
                    "Bytes of batch frames sent or received",
                    true,
                    |m| m.bytes,
                ),
                (
                    prefix[3],
                    "1 when the partition stopped on an error or no longer matches its origin",
                    false,
                    |m| u64::from(m.last_error.is_some() || m.ahead_of_origin),
                ),
                (
                    prefix[4],
                    "1 when the receiving side refused the partition's batches",
                    false,
                    |m| u64::from(m.quarantine.is_some()),
                ),
            ]
        };
        let rows = |owner: &'static str, name: String, partitions: Vec<MirrorStatus>| {
            partitions.into_iter().map(move |m| {
                let labels = [
                    (owner, name.clone()),
                    ("mirror", format!("{}/{}", m.mirror, m.partition)),
                ];
                (labels, m)
            })
        };
        let links: Vec<_> = self
            .links
            .try_list()
            .unwrap_or_default()
            .into_iter()
            .flat_map(|link| rows("link", link.spec.name, link.partitions))
            .collect();
        encode_rows(
            &mut encoder,
            &figures(&[
                "link_lag_records",
                "link_gap_records",
                "link_bytes",
                "link_failed",
                "link_quarantined",
            ]),
            &links,
        )?;
        if let Some(hub) = &self.hub {
            let edges: Vec<_> = hub
                .edges()
                .into_iter()
                .flat_map(|edge| rows("edge", edge.edge.to_string(), edge.partitions))
                .collect();
            encode_rows(
                &mut encoder,
                &figures(&[
                    "link_edge_lag_records",
                    "link_edge_gap_records",
                    "link_edge_bytes",
                    "link_edge_failed",
                    "link_edge_quarantined",
                ]),
                &edges,
            )?;
        }
        Ok(())
    }
}

impl Collector for PipelineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pipelines = self.pipelines.try_list().unwrap_or_default();
        let figures: [Figure<pipeline::PartitionStatus>; 6] = [
            (
                "pipeline_records_in",
                "Source records transformed",
                true,
                |p| p.records_in,
            ),
            (
                "pipeline_records_out",
                "Records appended to destinations",
                true,
                |p| p.records_out,
            ),
            (
                "pipeline_rejected",
                "Records a transform rejected (skipped or dead-lettered)",
                true,
                |p| p.skipped + p.dead_lettered,
            ),
            (
                "pipeline_lag",
                "Source records not yet transformed",
                false,
                |p| p.lag(),
            ),
            (
                "pipeline_restarts",
                "Automatic restarts after failures",
                true,
                |p| u64::from(p.restarts),
            ),
            (
                "pipeline_failed",
                "1 when the partition stopped on an error",
                false,
                |p| u64::from(p.state.failure().is_some()),
            ),
        ];
        let rows: Vec<_> = pipelines
            .into_iter()
            .flat_map(|status| {
                let name = status.spec.name;
                status.partitions.into_iter().map(move |partition| {
                    let labels = [
                        ("pipeline", name.clone()),
                        ("partition", partition.partition.to_string()),
                    ];
                    (labels, partition)
                })
            })
            .collect();
        encode_rows(&mut encoder, &figures, &rows)?;
        let connectors = self.connectors.try_list().unwrap_or_default();
        let figures: [Figure<connect::TaskStatus>; 5] = [
            (
                "connector_records_in",
                "Records a source task polled or a sink task read",
                true,
                |t| t.records_in,
            ),
            (
                "connector_records_out",
                "Records a source task appended or a sink task delivered and committed",
                true,
                |t| t.records_out,
            ),
            (
                "connector_rejected",
                "Records rejected (skipped or dead-lettered)",
                true,
                |t| t.skipped + t.dead_lettered,
            ),
            (
                "connector_restarts",
                "Automatic restarts of the task after failures",
                true,
                |t| u64::from(t.restarts),
            ),
            (
                "connector_failed",
                "1 when the task stopped on an error",
                false,
                |t| u64::from(t.state.failure().is_some()),
            ),
        ];
        let rows: Vec<_> = connectors
            .into_iter()
            .flat_map(|status| {
                let name = status.spec.name;
                status.tasks.into_iter().map(move |task| {
                    let labels = [("connector", name.clone()), ("task", task.task.to_string())];
                    (labels, task)
                })
            })
            .collect();
        encode_rows(&mut encoder, &figures, &rows)?;
        let mut counters = encoder.encode_descriptor(
            "plugin_counter",
            "Counters plugins keep through the host's counter-add",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for ((plugin, instance), values) in self.plugins.counters() {
            for (name, value) in values.snapshot() {
                let labels = [
                    ("plugin", plugin.clone()),
                    ("instance", instance.clone()),
                    ("name", name),
                ];
                ConstCounter::new(value).encode(counters.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Serves `GET /metrics` over HTTP/1.1 until `shutdown`, to callers whose bearer token's
/// principal may describe the cluster (Prometheus: `authorization: { credentials_file: ... }`).
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    security: Security,
    tls: Option<tokio_rustls::TlsAcceptor>,
    idle_timeout: Duration,
    shutdown: CancellationToken,
) {
    let limits = ConnectionLimits {
        max: MAX_CONNECTIONS,
        idle_timeout,
    };
    let mut connections = std::pin::pin!(incoming(listener, limits, "metrics endpoint"));
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            next = connections.next() => match next {
                Some(Ok(connection)) => connection,
                _ => break,
            },
        };
        let (metrics, security, tls) = (metrics.clone(), security.clone(), tls.clone());
        tokio::spawn(async move {
            let Some(tls) = tls else {
                return serve_connection(stream, metrics, security).await;
            };
            if let Some(stream) = tls::handshake(&tls, stream, "metrics endpoint").await {
                serve_connection(stream, metrics, security).await;
            }
        });
    }
}

async fn serve_connection<S>(stream: S, metrics: Metrics, security: Security)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let response = respond(&metrics, &security, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        tracing::debug!(%error, "metrics connection ended with an error");
    }
}

fn respond<B>(
    metrics: &Metrics,
    security: &Security,
    request: &Request<B>,
) -> Response<Full<Bytes>> {
    let reply = |status, content_type, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "only /metrics is served here\n".into(),
        );
    }
    let header = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let principal = match bearer(&security.tokens, header) {
        Ok(principal) => principal,
        Err(status) => {
            let mut response = reply(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                format!("{}\n", status.message()),
            );
            response.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    };
    if security
        .authorizer
        .authorize(
            &principal,
            ResourceType::Cluster,
            CLUSTER,
            Operation::Describe,
        )
        .is_err()
    {
        return reply(
            StatusCode::FORBIDDEN,
            "text/plain",
            format!(
                "{principal} may not describe the cluster: a super-user can grant it with \
                 `appliance acl add --principal {principal} --cluster --operation describe`\n"
            ),
        );
    }
    match metrics.render() {
        Ok(text) => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        ),
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "encoding failed\n".into(),
        ),
    }
}
