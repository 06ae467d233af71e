//! The topic administration APIs: CreateTopics, DeleteTopics, CreatePartitions and
//! DescribeConfigs, over the log's topic configuration. Each change is recorded in the audit
//! log before it is answered, as a gRPC change is.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    TopicName as WireTopic,
    create_partitions_response::CreatePartitionsTopicResult,
    create_topics_response::CreatableTopicResult,
    delete_topics_response::DeletableTopicResult,
    describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult},
};
use kafka_protocol::protocol::StrBytes;

use super::error::log_code;
use super::handlers::Context;
use crate::api::AUDIT_TOPIC;
use crate::log::{Compression, LogError, TopicConfig, TopicName};
use crate::security::{Operation, ResourceType};

/// DescribeConfigs' resource type of a topic.
const TOPIC_RESOURCE: i8 = 2;
/// DescribeConfigs' config sources: set on the topic, or the broker's default.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
const DEFAULT_CONFIG: i8 = 5;
/// DescribeConfigs' config types (v3+).
const STRING_TYPE: i8 = 2;
const INT_TYPE: i8 = 3;
const LONG_TYPE: i8 = 5;
const LIST_TYPE: i8 = 7;

impl Context<'_> {
    pub(super) async fn create_topics(&self, request: CreateTopicsRequest) -> CreateTopicsResponse {
        let mut results = Vec::with_capacity(request.topics.len());
        for topic in request.topics {
            let name = topic.name.0.to_string();
            let outcome = self
                .create_topic(
                    &name,
                    topic.num_partitions,
                    topic.replication_factor,
                    &topic.configs,
                    request.validate_only,
                )
                .await;
            let mut result = CreatableTopicResult::default().with_name(topic.name);
            match outcome {
                Ok(partitions) => {
                    result = result
                        .with_num_partitions(partitions as i32)
                        .with_replication_factor(1);
                }
                Err((code, message)) => {
                    result = result
                        .with_error_code(self.code(code))
                        .with_error_message(Some(StrBytes::from_string(message)))
                        .with_num_partitions(-1)
                        .with_replication_factor(-1);
                }
            }
            results.push(result);
        }
        CreateTopicsResponse::default().with_topics(results)
    }

    async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[kafka_protocol::messages::create_topics_request::CreatableTopicConfig],
        validate_only: bool,
    ) -> Result<u32, (ResponseError, String)> {
        if !self.may(Operation::Create, name) {
            return Err((
                ResponseError::TopicAuthorizationFailed,
                "no ACL allows this principal to create the topic".to_owned(),
            ));
        }
        if !matches!(replication_factor, -1 | 1) {
            return Err((
                ResponseError::InvalidReplicationFactor,
                "an appliance is one broker: the replication factor is 1 (or -1 for the default)"
                    .to_owned(),
            ));
        }
        let log = &self.broker.log;
        let mut config: TopicConfig = log.topic_defaults().clone();
        if partitions != -1 {
            config.partitions = u32::try_from(partitions).map_err(|_| {
                (
                    ResponseError::InvalidPartitions,
                    "partitions is 1 or more (or -1 for the default)".to_owned(),
                )
            })?;
        }
        for entry in configs {
            apply_config(&mut config, entry.name.as_str(), entry.value.as_deref())
                .map_err(|message| (ResponseError::InvalidConfig, message))?;
        }
        let failed = |error: LogError| (log_code(&error), error.to_string());
        let topic = TopicName::new(name).map_err(failed)?;
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(failed(LogError::InvalidTopicConfig { problems }));
        }
        let partitions = config.partitions;
        if validate_only {
            return match log.topic_info(&topic) {
                Ok(_) => Err(failed(LogError::TopicExists { topic })),
                Err(_) => Ok(partitions),
            };
        }
        log.create_topic(topic, config).await.map_err(failed)?;
        self.changed(
            ResourceType::Topic,
            name,
            Operation::Create,
            format!("{partitions} partitions"),
        );
        Ok(partitions)
    }

    pub(super) async fn delete_topics(&self, request: DeleteTopicsRequest) -> DeleteTopicsResponse {
        let mut names: Vec<WireTopic> = request.topic_names;
        names.extend(request.topics.into_iter().filter_map(|t| t.name));
        let mut results = Vec::with_capacity(names.len());
        for name in names {
            let text = name.0.to_string();
            let outcome = if text == AUDIT_TOPIC || !self.may(Operation::Delete, &text) {
                Err((
                    ResponseError::TopicAuthorizationFailed,
                    "no ACL allows this principal to delete the topic".to_owned(),
                ))
            } else {
                match TopicName::new(text.as_str()) {
                    Ok(topic) => self.broker.log.delete_topic(&topic).await,
                    Err(error) => Err(error),
                }
                .map(|()| {
                    self.changed(ResourceType::Topic, &text, Operation::Delete, String::new());
                })
                .map_err(|error| (log_code(&error), error.to_string()))
            };
            let mut result = DeletableTopicResult::default().with_name(Some(name));
            if let Err((code, message)) = outcome {
                result = result
                    .with_error_code(self.code(code))
                    .with_error_message(Some(StrBytes::from_string(message)));
            }
            results.push(result);
        }
        DeleteTopicsResponse::default().with_responses(results)
    }

    /// Grows topics to the partition count asked; partitions are never removed.
    pub(super) async fn create_partitions(
        &self,
        request: CreatePartitionsRequest,
    ) -> CreatePartitionsResponse {
        let mut results = Vec::with_capacity(request.topics.len());
        for topic in request.topics {
            let outcome = self
                .grow_topic(topic.name.0.as_str(), topic.count, request.validate_only)
                .await;
            let mut result = CreatePartitionsTopicResult::default().with_name(topic.name);
            if let Err((code, message)) = outcome {
                result = result
                    .with_error_code(self.code(code))
                    .with_error_message(Some(StrBytes::from_string(message)));
            }
            results.push(result);
        }
        CreatePartitionsResponse::default().with_results(results)
    }

    async fn grow_topic(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), (ResponseError, String)> {
        if name == AUDIT_TOPIC || !self.may(Operation::Alter, name) {
            return Err((
                ResponseError::TopicAuthorizationFailed,
                "no ACL allows this principal to alter the topic".to_owned(),
            ));
        }
        let failed = |error: LogError| (log_code(&error), error.to_string());
        let topic = TopicName::new(name).map_err(failed)?;
        let log = &self.broker.log;
        if let Some(origin) = log.mirror_of(&topic) {
            return Err(failed(LogError::ReadOnlyMirror { topic, origin }));
        }
        let mut config = log.topic_config(&topic).map_err(failed)?;
        let current = config.partitions;
        let count = u32::try_from(count).ok().filter(|count| *count > current).ok_or_else(|| {
            (
                ResponseError::InvalidPartitions,
                format!("the topic has {current} partitions: ask for more (partitions are never removed)"),
            )
        })?;
        config.partitions = count;
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(failed(LogError::InvalidTopicConfig { problems }));
        }
        if validate_only {
            return Ok(());
        }
        let current = log.add_partitions(&topic, count).await.map_err(failed)?;
        self.changed(
            ResourceType::Topic,
            name,
            Operation::Alter,
            format!("partitions {current} -> {count}"),
        );
        Ok(())
    }

    /// The settings of topics, as Kafka names them; other resources are not described.
    pub(super) fn describe_configs(
        &self,
        request: DescribeConfigsRequest,
    ) -> DescribeConfigsResponse {
        let results = request
            .resources
            .into_iter()
            .map(|resource| {
                let result = DescribeConfigsResult::default()
                    .with_resource_type(resource.resource_type)
                    .with_resource_name(resource.resource_name.clone());
                let described = self.described_settings(
                    resource.resource_type,
                    resource.resource_name.as_str(),
                    request.include_documentation,
                );
                match described {
                    Ok(settings) => {
                        let wanted = |name: &StrBytes| {
                            resource
                                .configuration_keys
                                .as_ref()
                                .is_none_or(|keys| keys.contains(name))
                        };
                        result.with_configs(
                            settings.into_iter().filter(|c| wanted(&c.name)).collect(),
                        )
                    }
                    Err((code, message)) => result
                        .with_error_code(self.code(code))
                        .with_error_message(Some(StrBytes::from_string(message))),
                }
            })
            .collect();
        DescribeConfigsResponse::default().with_results(results)
    }

    fn described_settings(
        &self,
        resource_type: i8,
        name: &str,
        documented: bool,
    ) -> Result<Vec<DescribeConfigsResourceResult>, (ResponseError, String)> {
        if resource_type != TOPIC_RESOURCE {
            return Err((
                ResponseError::InvalidRequest,
                "only topics' settings are described: the broker's are the appliance's configuration file".to_owned(),
            ));
        }
        if !self.may(Operation::Describe, name) {
            return Err((
                ResponseError::TopicAuthorizationFailed,
                "no ACL allows this principal to describe the topic".to_owned(),
            ));
        }
        let failed = |error: LogError| (log_code(&error), error.to_string());
        let log = &self.broker.log;
        let config = TopicName::new(name)
            .and_then(|topic| log.topic_config(&topic))
            .map_err(failed)?;
        let defaults = topic_settings(log.topic_defaults());
        Ok(topic_settings(&config)
            .into_iter()
            .zip(defaults)
            .map(|(setting, default)| {
                let source = if setting.value == default.value {
                    DEFAULT_CONFIG
                } else {
                    DYNAMIC_TOPIC_CONFIG
                };
                DescribeConfigsResourceResult::default()
                    .with_name(StrBytes::from_static_str(setting.name))
                    .with_value(Some(StrBytes::from_string(setting.value)))
                    .with_read_only(setting.read_only)
                    .with_config_source(source)
                    .with_config_type(setting.config_type)
                    .with_documentation(
                        documented.then(|| StrBytes::from_static_str(setting.documentation)),
                    )
            })
            .collect())
    }
}

/// One topic setting as DescribeConfigs names it.
struct Setting {
    name: &'static str,
    value: String,
    read_only: bool,
    config_type: i8,
    documentation: &'static str,
}

/// A topic's settings in Kafka's names and units, always in this order.
fn topic_settings(config: &TopicConfig) -> Vec<Setting> {
    let unbounded = |value: Option<u64>| value.map_or_else(|| "-1".to_owned(), |v| v.to_string());
    let setting = |name, value, config_type, documentation| Setting {
        name,
        value,
        read_only: false,
        config_type,
        documentation,
    };
    vec![
        setting(
            "retention.ms",
            unbounded(config.retention_ms),
            LONG_TYPE,
            "sealed segments whose newest record is older are deleted; -1 keeps them",
        ),
        setting(
            "retention.bytes",
            unbounded(config.retention_bytes),
            LONG_TYPE,
            "the oldest sealed segments are deleted while a partition holds more; -1: unbounded",
        ),
        setting(
            "segment.bytes",
            config.segment_bytes.to_string(),
            INT_TYPE,
            "a partition rolls to a new segment before the active one exceeds this",
        ),
        setting(
            "segment.ms",
            config.segment_ms.to_string(),
            LONG_TYPE,
            "a partition rolls to a new segment once the active one's first append is this old",
        ),
        setting(
            "max.message.bytes",
            config.max_message_bytes.to_string(),
            INT_TYPE,
            "the largest record batch accepted, as stored",
        ),
        setting(
            "compression.type",
            compression_name(config.compression).to_owned(),
            STRING_TYPE,
            "Kafka producers' batches are stored as sent; the appliance's own producers compress with this",
        ),
        setting(
            "cleanup.policy",
            config.cleanup_policy.as_str().to_owned(),
            LIST_TYPE,
            "delete: retention deletes segments; compact: the newest record per key is kept at its offset; or both",
        ),
        setting(
            "delete.retention.ms",
            config.delete_retention_ms.to_string(),
            LONG_TYPE,
            "compaction keeps a tombstone this long after its segment was sealed",
        ),
    ]
}

fn compression_name(compression: Compression) -> &'static str {
    match compression {
        Compression::None => "producer",
        Compression::Gzip => "gzip",
        Compression::Snappy => "snappy",
        Compression::Lz4 => "lz4",
        Compression::Zstd => "zstd",
    }
}

/// A Kafka topic setting of CreateTopics, in the appliance's topic configuration.
fn apply_config(config: &mut TopicConfig, key: &str, value: Option<&str>) -> Result<(), String> {
    let Some(value) = value else {
        return Ok(());
    };
    let number = |value: &str| -> Result<i64, String> {
        value
            .parse()
            .map_err(|_| format!("{key} is a number, not {value:?}"))
    };
    let at_most_forever = |n: i64| u64::try_from(n).ok();
    match key {
        "retention.ms" => config.retention_ms = at_most_forever(number(value)?),
        "retention.bytes" => config.retention_bytes = at_most_forever(number(value)?),
        "segment.bytes" => {
            config.segment_bytes =
                u64::try_from(number(value)?).map_err(|_| format!("{key} is positive"))?;
        }
        "segment.ms" => {
            config.segment_ms =
                u64::try_from(number(value)?).map_err(|_| format!("{key} is positive"))?;
        }
        "max.message.bytes" => {
            config.max_message_bytes =
                u32::try_from(number(value)?).map_err(|_| format!("{key} is positive"))?;
        }
        "compression.type" => {
            config.compression = match value {
                "producer" | "uncompressed" => crate::log::Compression::None,
                "gzip" => crate::log::Compression::Gzip,
                "lz4" => crate::log::Compression::Lz4,
                "zstd" => crate::log::Compression::Zstd,
                "snappy" => crate::log::Compression::Snappy,
                other => return Err(format!("compression.type {other:?} is not known")),
            }
        }
        "cleanup.policy" => config.cleanup_policy = value.parse()?,
        "delete.retention.ms" => {
            config.delete_retention_ms =
                u64::try_from(number(value)?).map_err(|_| format!("{key} is positive"))?;
        }
        // Settings of replicated clusters: one broker has nothing to set.
        "min.insync.replicas" | "unclean.leader.election.enable" => {}
        other => {
            return Err(format!(
                "{other} is not a topic setting the appliance has (docs/kafka.md lists them)"
            ));
        }
    }
    Ok(())
}
