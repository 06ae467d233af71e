//! What one query and all queries together may take: memory (a DataFusion memory pool per
//! query that also draws on one pool shared by all), time, how many run at once, and the
//! threads they run on.
//!
//! ```text
//! Execute/Follow -> wait for one of `concurrent` slots -> SessionContext whose RuntimeEnv has
//!   QueryMemory { its own budget (memory-mb), the shared budget (total-memory-mb) } and no
//!   spill directory -> run on the query runtime's threads, within `timeout`
//! ```
//!
//! Operators that buffer (joins, sorts, aggregates) and the answer being collected reserve
//! their memory; a reservation beyond either budget fails the query with RESOURCE_EXHAUSTED
//! naming the setting. Every operator yields to the runtime between batches
//! ([`YieldBetweenBatches`]), so the time limit and an abandoned call stop even a join that
//! computes from memory. Queries never spill: a gateway's disk is the log's. The query runtime
//! is separate from the one the log's writers and the API run on, so a CPU-heavy query takes
//! its threads' share of the CPU, never a writer's turn on a worker.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::{DataFusionError, Result as DataFusionResult};
use datafusion::execution::memory_pool::{MemoryLimit, MemoryPool, MemoryReservation};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::{MIB, QueryError};

/// Bounds of the query engine (`[query]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Memory one query may reserve, in bytes.
    pub memory_per_query: usize,
    /// Memory all queries running at once may reserve together, in bytes.
    pub memory_total: usize,
    /// Longest a query may take, waiting for a slot included.
    pub timeout: Duration,
    /// Queries (and runs of live queries) that may run at once; more wait for a slot.
    pub concurrent: usize,
    /// Largest encoded answer, in bytes.
    pub answer_bytes: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            memory_per_query: 256 * MIB,
            memory_total: 1024 * MIB,
            timeout: Duration::from_secs(60),
            concurrent: 4,
            answer_bytes: 64 * MIB,
        }
    }
}

/// A runtime of its own for queries, with `threads` workers, that stops when `shutdown` is
/// cancelled. Its owner is a plain thread, so that the runtime is never dropped inside
/// another one.
pub fn query_runtime(threads: usize, shutdown: CancellationToken) -> std::io::Result<Handle> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("query")
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("query-runtime".into())
        .spawn(move || {
            runtime.block_on(shutdown.cancelled());
            runtime.shutdown_background();
        })?;
    Ok(handle)
}

/// The engine's shared state: limits, slots, the shared memory budget, the runtime.
#[derive(Debug)]
pub(super) struct Governor {
    pub limits: QueryLimits,
    slots: Arc<Semaphore>,
    shared: Arc<Budget>,
    runtime: Handle,
}

impl Governor {
    pub fn new(limits: QueryLimits, runtime: Handle) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.concurrent.max(1))),
            shared: Arc::new(Budget::new(limits.memory_total, Exceeded::Total)),
            limits,
            runtime,
        }
    }

    /// A fresh memory pool for one query (or one live query), drawing on the shared one.
    pub fn memory_pool(&self) -> Arc<dyn MemoryPool> {
        Arc::new(QueryMemory {
            own: Budget::new(self.limits.memory_per_query, Exceeded::PerQuery),
            shared: Arc::clone(&self.shared),
        })
    }

    /// Memory reserved by all queries now.
    pub fn memory_reserved(&self) -> usize {
        self.shared.used.load(Ordering::Relaxed)
    }

    /// Runs `work` on the query runtime once a slot is free, within the time limit. Dropping
    /// the returned future (the client went away) stops the work at its next yield.
    pub async fn run<T, F>(&self, work: F) -> Result<T, QueryError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, QueryError>> + Send + 'static,
    {
        let slots = Arc::clone(&self.slots);
        let limits = self.limits;
        let task = AbortOnDropHandle::new(self.runtime.spawn(async move {
            let bounded = async {
                let _slot: OwnedSemaphorePermit = slots
                    .acquire_owned()
                    .await
                    .map_err(|_| QueryError::ShuttingDown)?;
                work.await
            };
            tokio::time::timeout(limits.timeout, bounded)
                .await
                .map_err(|_| QueryError::Timeout {
                    limit: limits.timeout,
                    concurrent: limits.concurrent,
                })?
        }));
        match task.await {
            Ok(result) => result,
            Err(error) if error.is_cancelled() => Err(QueryError::ShuttingDown),
            Err(error) => Err(QueryError::Failed(format!(
                "the query task failed: {error}"
            ))),
        }
    }
}

/// Puts a [`CooperativeExec`] above every operator that has inputs, so that each batch
/// any operator hands on spends from tokio's cooperative budget. Without it a join that
/// makes batches from rows it already holds (a cross join) never returns to the runtime:
/// neither the time limit nor a client that went away could stop it until it finished.
#[derive(Debug)]
pub(super) struct YieldBetweenBatches;

impl PhysicalOptimizerRule for YieldBetweenBatches {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DataFusionResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|operator| {
            if operator.children().is_empty() || operator.is::<CooperativeExec>() {
                Ok(Transformed::no(operator))
            } else {
                Ok(Transformed::yes(
                    Arc::new(CooperativeExec::new(operator)) as Arc<dyn ExecutionPlan>
                ))
            }
        })
        .map(|transformed| transformed.data)
    }

    fn name(&self) -> &str {
        "YieldBetweenBatches"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Which budget a reservation would have exceeded.
#[derive(Debug, Clone, Copy)]
enum Exceeded {
    PerQuery,
    Total,
}

/// Bytes reserved against a limit.
#[derive(Debug)]
struct Budget {
    used: AtomicUsize,
    limit: usize,
    exceeded: Exceeded,
}

impl Budget {
    fn new(limit: usize, exceeded: Exceeded) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
            exceeded,
        }
    }

    fn try_take(&self, bytes: usize) -> DataFusionResult<()> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .map(drop)
            .map_err(|_| DataFusionError::ResourcesExhausted(self.refusal()))
    }

    fn take(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn refusal(&self) -> String {
        let limit = self.limit / MIB;
        match self.exceeded {
            Exceeded::PerQuery => format!(
                "the query needs more memory than query.memory-mb allows ({limit} MiB): narrow \
                 it (a _timestamp range, fewer columns, a LIMIT) or raise the setting"
            ),
            Exceeded::Total => format!(
                "the queries running now need more memory together than query.total-memory-mb \
                 allows ({limit} MiB): try again when others have finished, or raise the setting"
            ),
        }
    }
}

/// One query's memory pool: a reservation must fit its own budget and the shared one.
#[derive(Debug)]
struct QueryMemory {
    own: Budget,
    shared: Arc<Budget>,
}

impl fmt::Display for QueryMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "query memory ({} of {} bytes; all queries {} of {})",
            self.own.used.load(Ordering::Relaxed),
            self.own.limit,
            self.shared.used.load(Ordering::Relaxed),
            self.shared.limit
        )
    }
}

impl MemoryPool for QueryMemory {
    fn name(&self) -> &str {
        "query"
    }

    fn grow(&self, _reservation: &MemoryReservation, additional: usize) {
        self.own.take(additional);
        self.shared.take(additional);
    }

    fn shrink(&self, _reservation: &MemoryReservation, shrink: usize) {
        self.own.give_back(shrink);
        self.shared.give_back(shrink);
    }

    fn try_grow(
        &self,
        _reservation: &MemoryReservation,
        additional: usize,
    ) -> DataFusionResult<()> {
        self.own.try_take(additional)?;
        if let Err(error) = self.shared.try_take(additional) {
            self.own.give_back(additional);
            return Err(error);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.own.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.own.limit.min(self.shared.limit))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::execution::memory_pool::MemoryConsumer;

    use super::*;

    #[tokio::test]
    async fn a_reservation_must_fit_the_query_budget_and_the_shared_one() {
        let limits = QueryLimits {
            memory_per_query: 3 * MIB,
            memory_total: 4 * MIB,
            ..QueryLimits::default()
        };
        let governor = Governor::new(limits, Handle::current());
        let first = governor.memory_pool();
        let second = governor.memory_pool();
        let a = MemoryConsumer::new("a").register(&first);
        let b = MemoryConsumer::new("b").register(&second);

        let over_own = a.try_grow(4 * MIB).unwrap_err().to_string();
        assert!(
            over_own.contains("query.memory-mb allows (3 MiB)"),
            "{over_own}"
        );
        a.try_grow(3 * MIB).unwrap();
        let over_shared = b.try_grow(2 * MIB).unwrap_err().to_string();
        assert!(
            over_shared.contains("query.total-memory-mb allows (4 MiB)"),
            "{over_shared}"
        );
        assert_eq!(second.reserved(), 0, "a refused reservation takes nothing");
        b.try_grow(MIB).unwrap();
        assert_eq!(governor.memory_reserved(), 4 * MIB);
        drop(a);
        assert_eq!(
            governor.memory_reserved(),
            MIB,
            "a query's end frees its memory"
        );
    }
}
