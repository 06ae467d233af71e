//! The topic graph pipelines make, checked for cycles when a pipeline is created.
//!
//! Each pipeline is an edge from its source topic to every topic it can write: its
//! destination, its dead-letter topic, the fixed targets of its `regex-router` steps whose
//! regex matches the source topic, and a `window-aggregate` step's late and changelog
//! topics. A cycle would send records round forever and grow the disk
//! without bound, so a pipeline that closes one is refused, naming the path. Targets known only
//! per record (a replacement that inserts `$n` groups, other routing plugins) cannot be known
//! here: the hop limit ([`super::HOPS_HEADER`]) stops those records at run time.

use std::collections::{BTreeMap, VecDeque};

use super::{PipelineSpec, TransformSpec};
use crate::log::TopicName;
use crate::transform::window;

/// The plugin whose fixed targets are known from its configuration.
const REGEX_ROUTER: &str = "regex-router";

/// One pipeline as an edge set: the topics it reads from and may write to.
#[derive(Debug, Clone)]
pub(super) struct Edges<'a> {
    pub pipeline: &'a str,
    pub from: &'a TopicName,
    pub targets: Vec<TopicName>,
}

impl<'a> Edges<'a> {
    pub fn of(
        pipeline: &'a str,
        from: &'a TopicName,
        to: &TopicName,
        dlq_topic: Option<&TopicName>,
        transforms: &[TransformSpec],
    ) -> Self {
        let mut targets = vec![to.clone()];
        targets.extend(dlq_topic.cloned());
        targets.extend(
            transforms
                .iter()
                .filter_map(|transform| fixed_route(transform, from)),
        );
        if let Ok(Some(window)) = window::stage(transforms) {
            targets.extend(window.changelog_topic(pipeline).ok());
            targets.push(window.late_topic);
        }
        Self {
            pipeline,
            from,
            targets,
        }
    }

    pub fn of_spec(spec: &'a PipelineSpec) -> Self {
        Self::of(
            &spec.name,
            &spec.from,
            &spec.to,
            spec.dlq_topic.as_ref(),
            &spec.transforms,
        )
    }
}

/// The cycle `new` would close with `existing`, as `a -> b (pipeline p) -> a (pipeline q)`.
pub(super) fn cycle_closed_by(existing: &[Edges<'_>], new: &Edges<'_>) -> Option<String> {
    for start in &new.targets {
        // Breadth first from each of the new pipeline's targets back to its source; each
        // topic remembers the step that reached it.
        let mut reached: BTreeMap<&TopicName, Option<(&TopicName, &str)>> = BTreeMap::new();
        reached.insert(start, None);
        let mut queue = VecDeque::from([start]);
        while let Some(topic) = queue.pop_front() {
            if topic == new.from {
                return Some(describe(new, start, &reached));
            }
            for edges in existing.iter().filter(|edges| edges.from == topic) {
                for target in &edges.targets {
                    if !reached.contains_key(target) {
                        reached.insert(target, Some((topic, edges.pipeline)));
                        queue.push_back(target);
                    }
                }
            }
        }
    }
    None
}

fn describe(
    new: &Edges<'_>,
    start: &TopicName,
    reached: &BTreeMap<&TopicName, Option<(&TopicName, &str)>>,
) -> String {
    let mut steps = Vec::new();
    let mut at = new.from;
    while let Some(Some((previous, pipeline))) = reached.get(at) {
        steps.push(format!("{at} (pipeline {pipeline})"));
        at = previous;
    }
    steps.push(format!("{start} (this pipeline)"));
    steps.push(new.from.to_string());
    steps.reverse();
    steps.join(" -> ")
}

/// The topic a `regex-router` step sends records of `from` to, when its replacement is a
/// fixed name (no `$` group) and its regex matches `from` whole.
fn fixed_route(transform: &TransformSpec, from: &TopicName) -> Option<TopicName> {
    if transform.plugin != REGEX_ROUTER {
        return None;
    }
    let setting = |key: &str| {
        transform
            .config
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let whole = regex::Regex::new(&format!("^(?:{})$", setting("regex")?)).ok()?;
    if !whole.is_match(from.as_str()) {
        return None;
    }
    let mut target = String::new();
    let mut chars = setting("replacement")?.chars();
    while let Some(c) = chars.next() {
        match c {
            '$' => return None,
            '\\' => target.push(chars.next()?),
            c => target.push(c),
        }
    }
    TopicName::new(target).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> TopicName {
        TopicName::new(name).unwrap()
    }

    fn router(regex: &str, replacement: &str) -> TransformSpec {
        TransformSpec {
            plugin: REGEX_ROUTER.to_owned(),
            config: vec![
                ("regex".to_owned(), regex.to_owned()),
                ("replacement".to_owned(), replacement.to_owned()),
            ],
        }
    }

    #[test]
    fn a_pipeline_closing_a_cycle_is_named_with_its_path() {
        let (c1, c2, c3, dead) = (topic("c1"), topic("c2"), topic("c3"), topic("dead"));
        let existing = [
            Edges::of("one", &c1, &c2, None, &[]),
            Edges::of("two", &c2, &c3, None, &[]),
        ];
        let closing = Edges::of("three", &c3, &c1, None, &[]);
        assert_eq!(
            cycle_closed_by(&existing, &closing).as_deref(),
            Some("c3 -> c1 (this pipeline) -> c2 (pipeline one) -> c3 (pipeline two)")
        );
        let through_dead_letters = Edges::of("three", &c3, &dead, Some(&c1), &[]);
        assert!(cycle_closed_by(&existing, &through_dead_letters).is_some());
        let open = Edges::of("three", &c3, &dead, None, &[]);
        assert_eq!(cycle_closed_by(&existing, &open), None);
    }

    #[test]
    fn fixed_regex_routes_are_edges_and_group_routes_are_left_to_the_hop_limit() {
        let (c1, c2, out) = (topic("c1"), topic("c2"), topic("out"));
        let existing = [Edges::of("one", &c1, &c2, None, &[])];
        let routed_back = Edges::of("two", &c2, &out, None, &[router("c.*", "c1")]);
        assert_eq!(
            cycle_closed_by(&existing, &routed_back).as_deref(),
            Some("c2 -> c1 (this pipeline) -> c2 (pipeline one)")
        );
        let not_matching = Edges::of("two", &c2, &out, None, &[router("x.*", "c1")]);
        assert_eq!(cycle_closed_by(&existing, &not_matching), None);
        let by_group = Edges::of("two", &c2, &out, None, &[router("c(.*)", "c$1")]);
        assert_eq!(cycle_closed_by(&existing, &by_group), None);
        let escaped = Edges::of("two", &c2, &out, None, &[router("c2", "c\\1")]);
        assert!(cycle_closed_by(&existing, &escaped).is_some());
    }
}
