//! The runtime of long-running components: pipelines, connectors and links all live in one
//! kind of [`Registry`], and their failures are retried under one kind of [`RestartPolicy`].
//!
//! Each component reports what it is doing as a [`State`] in [`StatusCell`]s (`watch`
//! channels) that its tasks write and the API reads; [`supervise`] runs a task again after a
//! failure its error classifies as worth it ([`Classified`]), under the component's
//! [`RestartPolicy`] (per kind, or per component where the operator set one:
//! [`RestartPolicies`]).
//!
//! A registry owns the map of its components by name behind one async lock. Every change of
//! a name (create, delete, pause, resume, restart) happens while that lock is held, so the
//! changes of one name are linearizable: of two concurrent creates exactly one finds the name
//! free, and a component is replaced only after its tasks were cancelled and awaited
//! ([`Components::insert`], [`Components::take_stopped`]).
//!
//! ```text
//! app shutdown token -> registry -> component (child token, its tasks in a TaskTracker)
//!                                       \-> every task also counted by the registry
//! ```
//!
//! The registry's own tracker counts every task any of its components started and that has
//! not ended yet, so a task that outlived its component (an orphan) is visible in
//! [`Registry::running_tasks`]. Shutdown stops components in the order the application calls
//! [`Registry::stop_all`] on each registry: data-flow order is the application's to choose.

mod name;
mod restart;
mod status;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::MutexGuard;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use name::{ResourceName, unique_id};
pub use restart::{RestartPolicies, RestartPolicy, Restarts};
pub use status::{Classified, Failure, Recovery, State, StatusCell, Supervised, supervise};

/// The components of one kind, by name; cheap to clone.
#[derive(Debug)]
pub struct Registry<C> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for Registry<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

#[derive(Debug)]
struct Inner<C> {
    components: tokio::sync::Mutex<Components<C>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// The map of a registry's components, reached through [`Registry::lock`].
#[derive(Debug)]
pub struct Components<C>(BTreeMap<String, Component<C>>);

/// One running component: what its kind keeps of it, the token that stops it and its tasks.
#[derive(Debug)]
pub struct Component<C> {
    pub state: C,
    stop: CancellationToken,
    tasks: TaskTracker,
    all: TaskTracker,
}

impl<C> Registry<C> {
    /// An empty registry whose components stop when `shutdown` is cancelled.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                components: tokio::sync::Mutex::new(Components(BTreeMap::new())),
                shutdown,
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// The components, locked for as long as the guard lives: hold it across a whole change.
    pub async fn lock(&self) -> MutexGuard<'_, Components<C>> {
        self.inner.components.lock().await
    }

    /// The components unless one is being changed right now (for metrics, which must not
    /// wait).
    pub fn try_lock(&self) -> Option<MutexGuard<'_, Components<C>>> {
        self.inner.components.try_lock().ok()
    }

    /// A new component, not yet in the map, with a stop token of its own under the
    /// registry's shutdown.
    pub fn component(&self, state: C) -> Component<C> {
        Component {
            state,
            stop: self.inner.shutdown.child_token(),
            tasks: TaskTracker::new(),
            all: self.inner.tasks.clone(),
        }
    }

    /// Tasks started by this registry's components that have not ended, including any that
    /// outlived their component.
    pub fn running_tasks(&self) -> usize {
        self.inner.tasks.len()
    }

    /// Stops every component's tasks and waits for them; the components stay listed.
    pub async fn stop_all(&self) {
        let mut components = self.lock().await;
        for component in components.0.values_mut() {
            component.stop().await;
        }
    }
}

impl<C> Components<C> {
    pub fn get(&self, name: &str) -> Option<&Component<C>> {
        self.0.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Component<C>> {
        self.0.get_mut(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// What each component keeps, in the order of their names.
    pub fn states(&self) -> impl Iterator<Item = &C> {
        self.0.values().map(|component| &component.state)
    }

    /// The components in the order of their names, to change what each keeps.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Component<C>> {
        self.0.values_mut()
    }

    /// Puts a component under `name`; one that had the name is stopped first.
    pub async fn insert(&mut self, name: String, component: Component<C>) {
        if let Some(mut replaced) = self.0.insert(name, component) {
            replaced.stop().await;
        }
    }

    /// Takes a component out of the map once its tasks have stopped.
    pub async fn take_stopped(&mut self, name: &str) -> Option<Component<C>> {
        let mut component = self.0.remove(name)?;
        component.stop().await;
        Some(component)
    }
}

impl<C> Component<C> {
    /// The token the component's tasks watch to stop.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs `task` as one of the component's tasks.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        // A tracked future drops the future it wraps before its own token, so the registry's
        // count goes down before the component's tasks are seen to have ended.
        tokio::spawn(self.tasks.track_future(self.all.track_future(task)));
    }

    /// Cancels the component's tasks and waits until every one has ended.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn until_stopped(component: &Component<()>, ended: &Arc<AtomicUsize>) {
        let stop = component.stop_token();
        let ended = ended.clone();
        component.spawn(async move {
            stop.cancelled().await;
            // A task that takes a moment to wind down is still awaited.
            tokio::time::sleep(Duration::from_millis(20)).await;
            ended.fetch_add(1, Ordering::SeqCst);
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_fifty_concurrent_creates_one_wins_and_no_task_is_left_over() {
        let registry = Registry::<()>::new(CancellationToken::new());
        let ended = Arc::new(AtomicUsize::new(0));
        let creates = (0..50).map(|_| {
            let registry = registry.clone();
            let ended = ended.clone();
            tokio::spawn(async move {
                let mut components = registry.lock().await;
                if components.contains("plant") {
                    return false;
                }
                tokio::task::yield_now().await;
                let component = registry.component(());
                until_stopped(&component, &ended);
                components.insert("plant".into(), component).await;
                true
            })
        });
        let won = futures_util::future::join_all(creates)
            .await
            .into_iter()
            .filter(|won| *won.as_ref().unwrap())
            .count();
        assert_eq!(won, 1);
        assert_eq!(registry.running_tasks(), 1);
        registry.lock().await.take_stopped("plant").await.unwrap();
        assert_eq!(ended.load(Ordering::SeqCst), 1);
        assert_eq!(registry.running_tasks(), 0);
    }

    #[tokio::test]
    async fn a_replaced_component_is_stopped_before_its_successor_is_listed() {
        let registry = Registry::<u32>::new(CancellationToken::new());
        let ended = Arc::new(AtomicUsize::new(0));
        let mut components = registry.lock().await;
        for generation in 0..3 {
            let component = registry.component(generation);
            let stop = component.stop_token();
            let count = ended.clone();
            component.spawn(async move {
                stop.cancelled().await;
                count.fetch_add(1, Ordering::SeqCst);
            });
            components.insert("link".into(), component).await;
            assert_eq!(ended.load(Ordering::SeqCst), generation as usize);
        }
        assert_eq!(components.get("link").unwrap().state, 2);
        drop(components);
        assert_eq!(registry.running_tasks(), 1);
    }

    #[tokio::test]
    async fn shutdown_stops_every_component() {
        let shutdown = CancellationToken::new();
        let registry = Registry::<()>::new(shutdown.clone());
        let ended = Arc::new(AtomicUsize::new(0));
        for name in ["a", "b"] {
            let component = registry.component(());
            until_stopped(&component, &ended);
            registry.lock().await.insert(name.into(), component).await;
        }
        shutdown.cancel();
        registry.stop_all().await;
        assert_eq!(ended.load(Ordering::SeqCst), 2);
        assert_eq!(registry.running_tasks(), 0);
        assert_eq!(registry.lock().await.states().count(), 2);
    }
}
