//! What the console's charts show over time: one sampler task reads the counters of every
//! edge (bytes its mirrors received), pipeline and connector (records written) every
//! [`SAMPLE_INTERVAL`] and keeps the last [`WINDOW`] of them. Pages get rates per interval;
//! which series a page may see is decided by what the API listed for its principal, never
//! here.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::connect::Connectors;
use crate::link::hub::Hub;
use crate::log::Timestamp;
use crate::pipeline::Pipelines;

/// How often the counters are read.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// How far back the charts reach.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Samples one series keeps.
const SAMPLES: usize = (WINDOW.as_secs() / SAMPLE_INTERVAL.as_secs()) as usize + 1;
/// Series kept at most; a fleet larger than this charts its first ones.
const MAX_SERIES: usize = 4096;

/// What a series counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Bytes an edge's mirrors received on this hub.
    Edge,
    /// Records a pipeline wrote.
    Pipeline,
    /// Records a connector's tasks wrote (a source) or delivered (a sink).
    Connector,
}

/// One point of a chart: the rate over the interval that ended at `unix_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rate {
    pub unix_ms: i64,
    pub per_second: f64,
}

/// One series' samples: (unix ms, counter), oldest first.
type Samples = VecDeque<(i64, u64)>;

/// The counters of the last [`WINDOW`]; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct History {
    series: Arc<Mutex<HashMap<(Kind, String), Samples>>>,
}

impl History {
    /// The rates of one series, oldest first; empty when it was never sampled.
    pub fn rates(&self, kind: Kind, name: &str) -> Vec<Rate> {
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(samples) = series.get(&(kind, name.to_owned())) else {
            return Vec::new();
        };
        rates(samples)
    }

    fn record(&self, unix_ms: i64, counters: Vec<(Kind, String, u64)>) {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let seen: std::collections::HashSet<(Kind, String)> = counters
            .iter()
            .map(|(kind, name, _)| (*kind, name.clone()))
            .collect();
        // A removed component's series goes with it.
        series.retain(|key, _| seen.contains(key));
        for (kind, name, counter) in counters {
            if series.len() >= MAX_SERIES && !series.contains_key(&(kind, name.clone())) {
                continue;
            }
            let samples = series.entry((kind, name)).or_default();
            if samples.len() == SAMPLES {
                samples.pop_front();
            }
            samples.push_back((unix_ms, counter));
        }
    }

    /// Samples until `shutdown`.
    pub async fn sample(
        self,
        hub: Option<Hub>,
        pipelines: Pipelines,
        connectors: Connectors,
        shutdown: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let mut counters = Vec::new();
            if let Some(hub) = &hub {
                for edge in hub.edges() {
                    let bytes = edge.partitions.iter().map(|mirror| mirror.bytes).sum();
                    counters.push((Kind::Edge, edge.edge.to_string(), bytes));
                }
            }
            for pipeline in pipelines.list().await {
                let written = pipeline.partitions.iter().map(|p| p.records_out).sum();
                counters.push((Kind::Pipeline, pipeline.spec.name.to_string(), written));
            }
            for connector in connectors.list().await {
                let written = connector.tasks.iter().map(|t| t.records_out).sum();
                counters.push((Kind::Connector, connector.spec.name.to_string(), written));
            }
            self.record(Timestamp::now().0, counters);
        }
    }
}

/// Rates between consecutive samples; a counter that went back (a restart of the component
/// counts anew) gives no rate for that interval.
fn rates(samples: &Samples) -> Vec<Rate> {
    samples
        .iter()
        .zip(samples.iter().skip(1))
        .filter_map(|(&(t0, c0), &(t1, c1))| {
            let seconds = (t1 - t0) as f64 / 1000.0;
            (c1 >= c0 && seconds > 0.0).then(|| Rate {
                unix_ms: t1,
                per_second: (c1 - c0) as f64 / seconds,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_skip_a_counter_that_restarted_and_the_window_is_bounded() {
        let history = History::default();
        for (i, counter) in [0u64, 500, 1500, 10, 510].into_iter().enumerate() {
            history.record(
                i as i64 * 5000,
                vec![(Kind::Pipeline, "p".to_owned(), counter)],
            );
        }
        let rates: Vec<f64> = history
            .rates(Kind::Pipeline, "p")
            .iter()
            .map(|rate| rate.per_second)
            .collect();
        assert_eq!(rates, vec![100.0, 200.0, 100.0]);
        for i in 0..(SAMPLES as i64 * 2) {
            history.record(i * 5000, vec![(Kind::Pipeline, "p".to_owned(), i as u64)]);
        }
        assert_eq!(history.rates(Kind::Pipeline, "p").len(), SAMPLES - 1);
    }

    #[test]
    fn a_removed_component_loses_its_series() {
        let history = History::default();
        history.record(0, vec![(Kind::Edge, "a".to_owned(), 0)]);
        history.record(5000, vec![(Kind::Edge, "a".to_owned(), 10)]);
        assert_eq!(history.rates(Kind::Edge, "a").len(), 1);
        history.record(10_000, vec![(Kind::Edge, "b".to_owned(), 0)]);
        assert!(history.rates(Kind::Edge, "a").is_empty());
    }
}
