//! A chain of transforms (plugin instances, and the built-in `table-join`) applied to one
//! batch, with Kafka Connect's predicates
//! (evaluated here, so every plugin gets them) and record-level error isolation: a record a
//! plugin rejects is taken out of the batch (with everything already derived from it) and the
//! rest of the batch is transformed again without it.

use regex::Regex;
use tokio_util::task::AbortOnDropHandle;

use super::join::{TABLE_JOIN, TableJoin};
use super::{ErrorPolicy, TaskError};
use crate::plugin::{BatchInfo, PluginError, Record, RecordError, StateStore, TransformInstance};

/// The config keys the host takes out of a transform's config for its predicate.
const PREDICATE: &str = "predicate";
const PREDICATE_PATTERN: &str = "predicate.pattern";
const PREDICATE_NAME: &str = "predicate.name";
const NEGATE: &str = "negate";

/// Which records a transform applies to; the others pass it unchanged.
#[derive(Debug, Clone)]
pub struct Predicate {
    kind: PredicateKind,
    negate: bool,
}

#[derive(Debug, Clone)]
enum PredicateKind {
    TopicNameMatches(Regex),
    HasHeaderKey(String),
    RecordIsTombstone,
}

impl Predicate {
    /// Splits a transform's config into its predicate (`predicate` = topic-name-matches with
    /// `predicate.pattern`, has-header-key with `predicate.name`, or record-is-tombstone; and
    /// `negate`) and the keys meant for the plugin.
    #[allow(clippy::type_complexity)]
    pub fn split_config(
        config: &[(String, String)],
    ) -> Result<(Option<Predicate>, Vec<(String, String)>), String> {
        let host_keys = [PREDICATE, PREDICATE_PATTERN, PREDICATE_NAME, NEGATE];
        let get = |key: &str| super::last_value(config, key);
        let plugin_config: Vec<(String, String)> = config
            .iter()
            .filter(|(k, _)| !host_keys.contains(&k.as_str()))
            .cloned()
            .collect();
        let negate = match get(NEGATE) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(format!("`negate` is true or false, not {other:?}")),
        };
        let kind = match get(PREDICATE) {
            None => {
                if negate || get(PREDICATE_PATTERN).is_some() || get(PREDICATE_NAME).is_some() {
                    return Err(
                        "`negate`, `predicate.pattern` and `predicate.name` need a `predicate`"
                            .to_owned(),
                    );
                }
                return Ok((None, plugin_config));
            }
            Some("topic-name-matches") => {
                let pattern = get(PREDICATE_PATTERN)
                    .ok_or("predicate topic-name-matches needs `predicate.pattern`")?;
                let invalid = |e: regex::Error| {
                    format!("`predicate.pattern` is not a regular expression: {e}")
                };
                // Compiled alone first: wrapped unchecked, `a)|(b` would be another regex.
                Regex::new(pattern).map_err(invalid)?;
                let regex = Regex::new(&format!("^(?:{pattern})$")).map_err(invalid)?;
                PredicateKind::TopicNameMatches(regex)
            }
            Some("has-header-key") => PredicateKind::HasHeaderKey(
                get(PREDICATE_NAME)
                    .ok_or("predicate has-header-key needs `predicate.name`")?
                    .to_owned(),
            ),
            Some("record-is-tombstone") => PredicateKind::RecordIsTombstone,
            Some(other) => {
                return Err(format!(
                    "unknown predicate {other:?}; use topic-name-matches, has-header-key or \
                     record-is-tombstone"
                ));
            }
        };
        Ok((Some(Predicate { kind, negate }), plugin_config))
    }

    fn test(&self, record: &Record, source_topic: &str) -> bool {
        let holds = match &self.kind {
            PredicateKind::TopicNameMatches(regex) => {
                regex.is_match(record.topic.as_deref().unwrap_or(source_topic))
            }
            PredicateKind::HasHeaderKey(name) => record.headers.iter().any(|h| h.key == *name),
            PredicateKind::RecordIsTombstone => record.value.is_none(),
        };
        holds != self.negate
    }
}

/// One transform of a running chain.
#[derive(Debug)]
pub struct Step {
    pub predicate: Option<Predicate>,
    pub transformer: Transformer,
}

/// What a step runs: a plugin in its sandbox, or a built-in that needs the host's log.
#[derive(Debug)]
pub enum Transformer {
    Plugin(TransformInstance),
    TableJoin(TableJoin),
}

impl Transformer {
    pub fn name(&self) -> &str {
        match self {
            Self::Plugin(instance) => instance.plugin(),
            Self::TableJoin(_) => TABLE_JOIN,
        }
    }

    /// The state store of a stateful plugin.
    pub fn state(&mut self) -> Option<&mut StateStore> {
        match self {
            Self::Plugin(instance) if instance.is_stateful() => Some(instance.state()),
            _ => None,
        }
    }

    async fn process(
        &mut self,
        info: &BatchInfo,
        records: &[Record],
    ) -> Result<Result<Vec<Record>, RecordError>, TaskError> {
        match self {
            Self::Plugin(instance) => Ok(instance.process(info, records).await?),
            Self::TableJoin(join) => join
                .process(records)
                .map_err(TaskError::log("joining with the table")),
        }
    }
}

/// A record a plugin rejected: the source offset it came from, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub offset: i64,
    pub plugin: String,
    pub message: String,
}

/// What a chain made of a batch: the output in source order and the rejected records.
#[derive(Debug, Default)]
pub struct ChainOutput {
    pub records: Vec<Record>,
    pub rejected: Vec<Rejection>,
}

/// Runs every step over the batch.
pub async fn run(
    steps: &mut [Step],
    info: &BatchInfo,
    records: Vec<Record>,
    policy: ErrorPolicy,
) -> Result<ChainOutput, TaskError> {
    let mut output = ChainOutput {
        records,
        rejected: Vec::new(),
    };
    for step in steps {
        output.records = run_step(step, info, output.records, policy, &mut output.rejected).await?;
    }
    Ok(output)
}

/// Runs every step over the batch on a tokio task of its own, the steps lent to it and given
/// back with its output, so that the chain runs on another core than the work its caller does
/// meanwhile (an empty chain runs in place). Steps lent to a task that did not finish are
/// gone: the caller's task fails and starts its chain anew.
pub async fn run_apart(
    steps: &mut Vec<Step>,
    info: BatchInfo,
    records: Vec<Record>,
    policy: ErrorPolicy,
) -> Result<ChainOutput, TaskError> {
    if steps.is_empty() {
        return run(steps, &info, records, policy).await;
    }
    let mut lent = std::mem::take(steps);
    let output;
    (*steps, output) = on_own_task("the transform chain", async move {
        let output = run(&mut lent, &info, records, policy).await;
        (lent, output)
    })
    .await?;
    output
}

/// Runs `stage` on a tokio task of its own, aborted if this future is dropped; a panic in it
/// goes on in the caller. A task spawned from a worker thread waits in that worker's one-task
/// slot, which other workers do not take from, until this worker is free: an empty task
/// spawned after it moves it to the worker's queue, from which an idle worker takes it at once.
pub async fn on_own_task<T: Send + 'static>(
    name: &'static str,
    stage: impl Future<Output = T> + Send + 'static,
) -> Result<T, TaskError> {
    let stage = AbortOnDropHandle::new(tokio::spawn(stage));
    tokio::spawn(std::future::ready(()));
    match stage.await {
        Ok(output) => Ok(output),
        Err(ended) if ended.is_panic() => std::panic::resume_unwind(ended.into_panic()),
        Err(_) => Err(TaskError::StageStopped(name)),
    }
}

async fn run_step(
    step: &mut Step,
    info: &BatchInfo,
    input: Vec<Record>,
    policy: ErrorPolicy,
    rejected: &mut Vec<Rejection>,
) -> Result<Vec<Record>, TaskError> {
    let (mut selected, mut passed): (Vec<Record>, Vec<Record>) = match &step.predicate {
        None => (input, Vec::new()),
        Some(predicate) => input
            .into_iter()
            .partition(|record| predicate.test(record, &info.topic)),
    };
    let transformed = loop {
        if selected.is_empty() {
            break Vec::new();
        }
        match step.transformer.process(info, &selected).await? {
            Ok(out) => {
                check_contract(step.transformer.name(), &selected, &out)?;
                break out;
            }
            Err(RecordError { index, message }) => {
                let plugin = step.transformer.name().to_owned();
                let Some(bad) = selected.get(index as usize) else {
                    return Err(contract(
                        &plugin,
                        format!(
                            "it rejected record {index} of a batch of {}",
                            selected.len()
                        ),
                    ));
                };
                let rejection = Rejection {
                    offset: bad.offset,
                    plugin,
                    message,
                };
                if policy == ErrorPolicy::Fail {
                    return Err(TaskError::Rejected(rejection));
                }
                selected.retain(|r| r.offset != rejection.offset);
                passed.retain(|r| r.offset != rejection.offset);
                rejected.push(rejection);
            }
        }
    };
    Ok(merge_by_offset(transformed, passed))
}

/// Output must stay in source order and descend from the input: every output offset is one
/// of the input's, never decreasing. The pipeline's exactly-once bookkeeping relies on it.
fn check_contract(plugin: &str, input: &[Record], output: &[Record]) -> Result<(), TaskError> {
    let mut inputs = input.iter().map(|r| r.offset).peekable();
    for record in output {
        while inputs.peek().is_some_and(|offset| *offset < record.offset) {
            inputs.next();
        }
        if inputs.peek() != Some(&record.offset) {
            return Err(contract(
                plugin,
                format!(
                    "it returned a record with offset {}, which is not the offset of an input \
                     record at or after the previous output's (keep `offset` as received)",
                    record.offset
                ),
            ));
        }
    }
    Ok(())
}

fn contract(plugin: &str, detail: String) -> TaskError {
    TaskError::Plugin(PluginError::Contract {
        plugin: plugin.to_owned(),
        detail,
    })
}

fn merge_by_offset(a: Vec<Record>, b: Vec<Record>) -> Vec<Record> {
    if b.is_empty() {
        return a;
    }
    if a.is_empty() {
        return b;
    }
    let mut merged = Vec::with_capacity(a.len() + b.len());
    let mut a = a.into_iter().peekable();
    let mut b = b.into_iter().peekable();
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.offset <= y.offset,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return merged,
        };
        merged.extend(if take_a { a.next() } else { b.next() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64) -> Record {
        Record {
            key: None,
            value: Some(bytes::Bytes::from_static(b"v")),
            headers: Vec::new(),
            timestamp: 0,
            offset,
            topic: None,
        }
    }

    fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn predicates_are_taken_out_of_the_plugin_config() {
        let (predicate, rest) = Predicate::split_config(&pairs(&[
            ("predicate", "topic-name-matches"),
            ("predicate.pattern", "sensor-.*"),
            ("negate", "true"),
            ("field", "x"),
        ]))
        .unwrap();
        assert_eq!(rest, pairs(&[("field", "x")]));
        let predicate = predicate.unwrap();
        assert!(!predicate.test(&record(0), "sensor-1"));
        assert!(predicate.test(&record(0), "other"));
        let (tombstones, _) =
            Predicate::split_config(&pairs(&[("predicate", "record-is-tombstone")])).unwrap();
        let mut tombstone = record(0);
        tombstone.value = None;
        assert!(tombstones.unwrap().test(&tombstone, "t"));
        assert!(Predicate::split_config(&pairs(&[("predicate", "has-header-key")])).is_err());
        assert!(Predicate::split_config(&pairs(&[("negate", "true")])).is_err());
        assert!(Predicate::split_config(&pairs(&[("predicate", "nope")])).is_err());
    }

    #[test]
    fn outputs_must_keep_input_offsets_in_order() {
        let input = [record(1), record(2), record(5)];
        assert!(check_contract("p", &input, &[record(1), record(1), record(5)]).is_ok());
        assert!(check_contract("p", &input, &[record(2), record(1)]).is_err());
        assert!(check_contract("p", &input, &[record(3)]).is_err());
        let merged = merge_by_offset(vec![record(1), record(5)], vec![record(2), record(7)]);
        let offsets: Vec<i64> = merged.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [1, 2, 5, 7]);
    }
}
