//! When a failed component tries again: capped exponential backoff with jitter and a budget.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// How a kind of component is restarted after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// The wait after the first failure; it doubles with each failure after.
    pub first: Duration,
    /// The longest wait.
    pub longest: Duration,
    /// How many restarts in a row before the component stays failed; `None` tries forever.
    pub budget: Option<u32>,
    /// A run at least this long counts as healthy: the next failure starts the backoff anew.
    pub healthy_run: Duration,
}

/// Up to this share of each wait is taken off at random, so that components which failed
/// together (a hub restarting, a disk filling) do not all try again in the same instant.
const JITTER: f64 = 0.2;

impl RestartPolicy {
    /// For the tasks of pipelines and connectors: five restarts after about 1, 2, 4, 8 and
    /// 16 s, then failed until the operator acts; a run of a minute starts the count anew.
    pub const TASKS: Self = Self {
        first: Duration::from_secs(1),
        longest: Duration::from_secs(16),
        budget: Some(5),
        healthy_run: Duration::from_secs(60),
    };

    /// For links: a link tries to reach its hub for as long as it exists; a session that got
    /// as far as Welcome starts the backoff anew (a link's run counts as healthy once its hub
    /// welcomed it, however long it lasted).
    pub const LINKS: Self = Self {
        first: Duration::from_millis(200),
        longest: Duration::from_secs(30),
        budget: None,
        healthy_run: Duration::MAX,
    };

    /// For a task stopped by a full disk: it tries again every few seconds for as long as it
    /// takes retention or an operator to free it.
    pub const DISK_FULL: Self = Self {
        first: Duration::from_secs(1),
        longest: Duration::from_secs(4),
        budget: None,
        healthy_run: Duration::from_secs(60),
    };

    /// A fresh count of failures under this policy.
    pub fn restarts(self) -> Restarts {
        Restarts {
            policy: self,
            failures: 0,
        }
    }

    fn base_wait(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.first
            .saturating_mul(1u32 << doublings)
            .min(self.longest)
    }
}

/// The policies of one kind of component: the kind's own, and those the operator set for
/// single components by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicies {
    pub kind: RestartPolicy,
    pub by_name: BTreeMap<String, RestartPolicy>,
}

impl RestartPolicies {
    /// Every component of the kind under `policy`.
    pub fn all(policy: RestartPolicy) -> Self {
        Self {
            kind: policy,
            by_name: BTreeMap::new(),
        }
    }

    /// The policy of the component called `name`.
    pub fn of(&self, name: &str) -> RestartPolicy {
        self.by_name.get(name).copied().unwrap_or(self.kind)
    }
}

/// The failures in a row of one component under its policy.
#[derive(Debug, Clone)]
pub struct Restarts {
    policy: RestartPolicy,
    failures: u32,
}

impl Restarts {
    /// Counts a failure of a run that lasted `ran`: the wait before the next try, or `None`
    /// when the budget is spent and the component stays failed.
    pub fn failed(&mut self, ran: Duration) -> Option<Duration> {
        if ran >= self.policy.healthy_run {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        if self
            .policy
            .budget
            .is_some_and(|budget| self.failures > budget)
        {
            return None;
        }
        let wait = self.policy.base_wait(self.failures);
        Some(wait.mul_f64(1.0 - JITTER * random_fraction()))
    }

    /// The component is healthy again (a link connected): the next failure starts anew.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// A number in [0, 1) from the process's random hash keys: jitter needs no better source.
fn random_fraction() -> f64 {
    let bits = RandomState::new().hash_one(0u8) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RestartPolicy = RestartPolicy {
        first: Duration::from_secs(1),
        longest: Duration::from_secs(8),
        budget: Some(5),
        healthy_run: Duration::from_secs(60),
    };

    fn within_jitter(wait: Option<Duration>, base: u64) -> bool {
        let base = Duration::from_secs(base);
        wait.is_some_and(|wait| wait <= base && wait >= base.mul_f64(1.0 - JITTER))
    }

    #[test]
    fn waits_double_up_to_the_longest_and_the_budget_ends_them() {
        let mut restarts = POLICY.restarts();
        for base in [1, 2, 4, 8, 8] {
            let wait = restarts.failed(Duration::ZERO);
            assert!(within_jitter(wait, base), "{wait:?} for {base} s");
        }
        assert_eq!(restarts.failed(Duration::ZERO), None);
        assert_eq!(restarts.failures(), 6);
    }

    #[test]
    fn a_healthy_run_or_a_success_starts_the_backoff_anew() {
        let mut restarts = POLICY.restarts();
        restarts.failed(Duration::ZERO);
        restarts.failed(Duration::ZERO);
        assert!(within_jitter(restarts.failed(Duration::from_secs(60)), 1));
        restarts.failed(Duration::ZERO);
        restarts.succeeded();
        assert!(within_jitter(restarts.failed(Duration::ZERO), 1));
    }

    #[test]
    fn without_a_budget_it_tries_forever_and_never_overflows() {
        let mut restarts = RestartPolicy {
            budget: None,
            ..POLICY
        }
        .restarts();
        for failure in 1..=100u32 {
            let base = 1 << (failure - 1).min(3);
            assert!(within_jitter(restarts.failed(Duration::ZERO), base));
        }
    }

    #[test]
    fn jitter_varies_the_waits() {
        let waits: std::collections::BTreeSet<Duration> = (0..20)
            .map(|_| POLICY.restarts().failed(Duration::ZERO).unwrap())
            .collect();
        assert!(waits.len() > 1, "{waits:?}");
    }
}
