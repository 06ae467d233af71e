//! What a component, or one task of it, is doing: one [`State`] for every kind, kept in a
//! [`StatusCell`] (a `watch` channel) that its task writes and any number of readers see, and
//! [`supervise`], the one loop that runs a task again after a failure under its
//! [`RestartPolicy`].

use std::future::Future;
use std::time::SystemTime;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::RestartPolicy;

/// Where a component or task is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Starting,
    Running,
    /// Stopped on purpose (paused by the operator, or shutting down).
    Paused,
    /// Failed, and the `attempt`th restart in a row begins at `next_try`.
    Restarting {
        attempt: u32,
        next_try: SystemTime,
        failure: Failure,
    },
    /// Failed, and stays so until the operator acts.
    Failed {
        failure: Failure,
    },
}

impl State {
    /// Why it failed, whether or not a restart is pending.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Self::Restarting { failure, .. } | Self::Failed { failure } => Some(failure),
            _ => None,
        }
    }
}

/// Why a task stopped, as readers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    pub recovery: Recovery,
}

impl Failure {
    pub fn of(error: &impl Classified) -> Self {
        Self {
            reason: error.to_string(),
            recovery: error.recovery(),
        }
    }
}

/// What trying again can do for a task that stopped on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing: the same input fails the same way (a record rejected with `errors=fail`, a
    /// configuration the plugin refuses); the task waits for the operator.
    Never,
    /// Perhaps (a plugin's trap or limit, an I/O error, a peer away): restarted under the
    /// component's policy.
    Restart,
    /// Once there is room on the disk: restarted under [`RestartPolicy::DISK_FULL`], without
    /// a budget, since retention or the operator frees it in time.
    WhenDiskFreed,
}

/// An error a task can stop on, knowing what a restart can do about it.
pub trait Classified: std::error::Error {
    fn recovery(&self) -> Recovery;
}

/// A status some task writes and others read; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct StatusCell<T>(watch::Sender<T>);

impl<T> StatusCell<T> {
    pub fn new(status: T) -> Self {
        Self(watch::Sender::new(status))
    }

    pub fn update(&self, change: impl FnOnce(&mut T)) {
        self.0.send_modify(change);
    }

    pub fn get(&self) -> T
    where
        T: Clone,
    {
        self.0.borrow().clone()
    }

    /// Reads part of the status without copying the rest.
    pub fn read<R>(&self, read: impl FnOnce(&T) -> R) -> R {
        read(&self.0.borrow())
    }

    /// A receiver that wakes on each change (for waiting on a state).
    pub fn watch(&self) -> watch::Receiver<T> {
        self.0.subscribe()
    }
}

/// A status that [`supervise`] can keep: the state and the count of restarts.
pub trait Supervised {
    fn state_mut(&mut self) -> &mut State;
    fn count_restart(&mut self);
}

/// Runs `run` until it ends (the task was stopped: [`State::Paused`]) or fails in a way its
/// policy gives up on ([`State::Failed`]), trying again after each failure that
/// [`Recovery`] allows, with [`State::Restarting`] meanwhile. `run` sets
/// [`State::Running`] once it is under way; a cancelled `stop` ends it at once, including
/// during a backoff.
pub async fn supervise<T, E, F, Fut>(
    status: &StatusCell<T>,
    stop: &CancellationToken,
    policy: RestartPolicy,
    what: &str,
    mut run: F,
) where
    T: Supervised,
    E: Classified,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut restarts = policy.restarts();
    let mut disk_full = RestartPolicy::DISK_FULL.restarts();
    loop {
        status.update(|s| *s.state_mut() = State::Starting);
        let started = tokio::time::Instant::now();
        let outcome = tokio::select! {
            outcome = run() => outcome,
            // A task stuck in a plugin's call or an append stops with its component.
            _ = stop.cancelled() => Ok(()),
        };
        let Err(error) = outcome else {
            status.update(|s| *s.state_mut() = State::Paused);
            return;
        };
        let failure = Failure::of(&error);
        let ran = started.elapsed();
        let (wait, attempt) = match failure.recovery {
            Recovery::Never => (None, 0),
            Recovery::Restart => (restarts.failed(ran), restarts.failures()),
            Recovery::WhenDiskFreed => (disk_full.failed(ran), disk_full.failures()),
        };
        tracing::warn!(
            task = what,
            reason = %failure.reason,
            restarting = wait.is_some(),
            "task failed"
        );
        let Some(wait) = wait else {
            status.update(|s| *s.state_mut() = State::Failed { failure });
            return;
        };
        status.update(|s| {
            *s.state_mut() = State::Restarting {
                attempt,
                next_try: SystemTime::now() + wait,
                failure,
            }
        });
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => {
                status.update(|s| *s.state_mut() = State::Paused);
                return;
            }
        }
        status.update(T::count_restart);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    #[derive(Debug, Clone)]
    struct Probe {
        state: State,
        restarts: u32,
    }

    impl Supervised for Probe {
        fn state_mut(&mut self) -> &mut State {
            &mut self.state
        }
        fn count_restart(&mut self) {
            self.restarts += 1;
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{0:?}")]
    struct Probed(Recovery);

    impl Classified for Probed {
        fn recovery(&self) -> Recovery {
            self.0
        }
    }

    const QUICK: RestartPolicy = RestartPolicy {
        first: Duration::from_millis(1),
        longest: Duration::from_millis(4),
        budget: Some(2),
        healthy_run: Duration::from_secs(60),
    };

    fn probe() -> Arc<StatusCell<Probe>> {
        Arc::new(StatusCell::new(Probe {
            state: State::Starting,
            restarts: 0,
        }))
    }

    #[tokio::test]
    async fn a_transient_failure_restarts_until_the_budget_is_spent() {
        let status = probe();
        let runs = AtomicU32::new(0);
        supervise(&status, &CancellationToken::new(), QUICK, "probe", || {
            runs.fetch_add(1, Ordering::SeqCst);
            async { Err(Probed(Recovery::Restart)) }
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let probe = status.get();
        assert_eq!(probe.restarts, 2);
        assert_eq!(probe.state.failure().unwrap().reason, "Restart");
        assert!(matches!(probe.state, State::Failed { .. }));
    }

    #[tokio::test]
    async fn a_permanent_failure_is_not_retried_and_success_pauses() {
        let status = probe();
        supervise(
            &status,
            &CancellationToken::new(),
            QUICK,
            "probe",
            || async { Err(Probed(Recovery::Never)) },
        )
        .await;
        assert_eq!(status.get().restarts, 0);
        assert!(matches!(status.get().state, State::Failed { .. }));
        supervise(
            &status,
            &CancellationToken::new(),
            QUICK,
            "probe",
            || async { Ok::<(), Probed>(()) },
        )
        .await;
        assert_eq!(status.get().state, State::Paused);
    }

    #[tokio::test]
    async fn a_full_disk_is_retried_beyond_the_budget_and_shows_restarting() {
        let status = probe();
        let runs = AtomicU32::new(0);
        let stop = CancellationToken::new();
        let mut watch = status.watch();
        let supervised = supervise(&status, &stop, QUICK, "probe", || {
            let run = runs.fetch_add(1, Ordering::SeqCst);
            async move {
                if run < 5 {
                    Err(Probed(Recovery::WhenDiskFreed))
                } else {
                    std::future::pending().await
                }
            }
        });
        let watched = async {
            watch
                .wait_for(|probe| {
                    matches!(probe.state, State::Restarting { attempt: 5, .. })
                        && probe.restarts == 4
                })
                .await
                .map(drop)
                .unwrap();
            watch.wait_for(|probe| probe.restarts == 5).await.unwrap();
            stop.cancel();
        };
        tokio::join!(supervised, watched);
        assert_eq!(status.get().state, State::Paused);
    }

    #[tokio::test]
    async fn stopping_during_the_backoff_ends_it_at_once() {
        let status = probe();
        let stop = CancellationToken::new();
        let slow = RestartPolicy {
            first: Duration::from_secs(3600),
            ..QUICK
        };
        let mut watch = status.watch();
        let supervised = supervise(&status, &stop, slow, "probe", || async {
            Err(Probed(Recovery::Restart))
        });
        let watched = async {
            watch
                .wait_for(|probe| matches!(probe.state, State::Restarting { .. }))
                .await
                .map(drop)
                .unwrap();
            stop.cancel();
        };
        tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(supervised, watched)
        })
        .await
        .unwrap();
        assert_eq!(status.get().state, State::Paused);
        assert_eq!(status.get().restarts, 0);
    }
}
