//! Quotas: how many produce bytes, fetch bytes and requests a second a principal may use.
//! Over its quota a principal is slowed, not refused, as Kafka throttles: each use waits for
//! the moment its principal's rate allows it.
//!
//! A quota names one principal or `*`, every principal without one of its own; each of the
//! three rates falls back to `*` on its own, so a user's produce quota leaves the default
//! fetch quota in force. Pacing is exact (no burst credit): a principal's next use may start
//! once the previous ones, at its rate, are paid for, so over any stretch it gets no more than
//! its rate plus one request. One wait is at most [`MAX_WAIT`]; a request bigger than that at
//! its rate leaves the rest as debt for the next.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelValue;
use serde::{Deserialize, Serialize};

use super::{Grantee, Principal, SecurityError};
use crate::meta::{Meta, Table};

/// The longest one use waits.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// Principals whose pace is remembered before idle ones are forgotten.
const PACES_KEPT: usize = 10_000;

/// What a quota limits (also the `usage` label of the per-principal metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum Usage {
    ProduceBytes,
    FetchBytes,
    Requests,
}

impl Usage {
    pub const ALL: [Usage; 3] = [Usage::ProduceBytes, Usage::FetchBytes, Usage::Requests];

    pub fn as_str(self) -> &'static str {
        match self {
            Usage::ProduceBytes => "produce-bytes",
            Usage::FetchBytes => "fetch-bytes",
            Usage::Requests => "requests",
        }
    }
}

/// Rates a second; `None`: unlimited (or, in a principal's own quota, the default's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rates {
    pub produce_bytes: Option<NonZeroU64>,
    pub fetch_bytes: Option<NonZeroU64>,
    pub requests: Option<NonZeroU64>,
}

impl Rates {
    pub fn of(&self, usage: Usage) -> Option<NonZeroU64> {
        match usage {
            Usage::ProduceBytes => self.produce_bytes,
            Usage::FetchBytes => self.fetch_bytes,
            Usage::Requests => self.requests,
        }
    }

    pub fn is_empty(&self) -> bool {
        Usage::ALL.iter().all(|&usage| self.of(usage).is_none())
    }
}

/// One quota: whom it limits, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub principal: Grantee,
    pub rates: Rates,
}

/// `quota of User:bob: produce-bytes 100000/s, fetch-bytes -, requests -`: how logs and the
/// audit record show it.
impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "quota of {}:", self.principal)?;
        for (n, usage) in Usage::ALL.into_iter().enumerate() {
            let separator = if n == 0 { " " } else { ", " };
            match self.rates.of(usage) {
                Some(rate) => write!(f, "{separator}{} {rate}/s", usage.as_str())?,
                None => write!(f, "{separator}{} -", usage.as_str())?,
            }
        }
        Ok(())
    }
}

/// The quotas in force and each principal's pace; cheap to clone.
#[derive(Debug, Clone)]
pub struct Quotas {
    meta: Meta,
    quotas: Arc<RwLock<BTreeMap<Grantee, Rates>>>,
    /// When each principal's next use of each kind may start.
    paces: Arc<Mutex<HashMap<(Principal, Usage), Instant>>>,
}

impl Quotas {
    /// Loads the stored quotas.
    pub fn open(meta: Meta) -> Result<Self, SecurityError> {
        let quotas = meta
            .entries::<Quota>(Table::Quotas)?
            .into_iter()
            .map(|(_, quota)| (quota.principal, quota.rates))
            .collect();
        Ok(Self {
            meta,
            quotas: Arc::new(RwLock::new(quotas)),
            paces: Arc::default(),
        })
    }

    /// Sets a principal's quota durably, replacing the one it had; no rates removes it.
    /// Whether it had one.
    pub async fn set(&self, quota: Quota) -> Result<bool, SecurityError> {
        let key = quota.principal.to_string();
        let existed = self.read().contains_key(&quota.principal);
        if quota.rates.is_empty() {
            self.meta.remove(Table::Quotas, &key).await?;
            self.write().remove(&quota.principal);
        } else {
            self.meta.put(Table::Quotas, &key, &quota).await?;
            self.write().insert(quota.principal, quota.rates);
        }
        Ok(existed)
    }

    /// Every quota, in a stable order.
    pub fn list(&self) -> Vec<Quota> {
        self.read()
            .iter()
            .map(|(principal, rates)| Quota {
                principal: principal.clone(),
                rates: *rates,
            })
            .collect()
    }

    /// The rate of `usage` that applies to `principal`: its own, else the default's.
    fn rate(&self, principal: &Principal, usage: Usage) -> Option<NonZeroU64> {
        let quotas = self.read();
        quotas
            .get(&Grantee::One(principal.clone()))
            .and_then(|rates| rates.of(usage))
            .or_else(|| quotas.get(&Grantee::Everyone)?.of(usage))
    }

    /// Charges `amount` of `usage` to `principal` at `now`: how long that use must wait.
    pub fn charge(
        &self,
        principal: &Principal,
        usage: Usage,
        amount: u64,
        now: Instant,
    ) -> Duration {
        let Some(rate) = self.rate(principal, usage) else {
            return Duration::ZERO;
        };
        let cost = Duration::from_secs_f64(amount as f64 / rate.get() as f64);
        let mut paces = self.paces.lock().unwrap_or_else(PoisonError::into_inner);
        if paces.len() >= PACES_KEPT {
            paces.retain(|_, next| *next > now);
        }
        let next = paces.entry((principal.clone(), usage)).or_insert(now);
        let start = (*next).max(now);
        *next = start + cost;
        (start - now).min(MAX_WAIT)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Grantee, Rates>> {
        self.quotas.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<Grantee, Rates>> {
        self.quotas.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(n: u64) -> Option<NonZeroU64> {
        NonZeroU64::new(n)
    }

    async fn quotas(dir: &std::path::Path) -> Quotas {
        let quotas = Quotas::open(Meta::open(dir).expect("meta")).expect("quotas");
        quotas
            .set(Quota {
                principal: "*".parse().expect("everyone"),
                rates: Rates {
                    produce_bytes: rate(1000),
                    fetch_bytes: rate(500),
                    requests: None,
                },
            })
            .await
            .expect("set default");
        quotas
            .set(Quota {
                principal: "User:bob".parse().expect("bob"),
                rates: Rates {
                    produce_bytes: rate(100),
                    ..Rates::default()
                },
            })
            .await
            .expect("set bob");
        quotas
    }

    #[tokio::test]
    async fn uses_wait_until_the_rate_pays_for_the_ones_before() {
        let dir = tempfile::tempdir().expect("dir");
        let quotas = quotas(dir.path()).await;
        let bob: Principal = "User:bob".parse().expect("bob");
        let t0 = Instant::now();
        assert_eq!(
            quotas.charge(&bob, Usage::ProduceBytes, 50, t0),
            Duration::ZERO
        );
        assert_eq!(
            quotas.charge(&bob, Usage::ProduceBytes, 50, t0),
            Duration::from_millis(500)
        );
        assert_eq!(
            quotas.charge(
                &bob,
                Usage::ProduceBytes,
                50,
                t0 + Duration::from_millis(200)
            ),
            Duration::from_millis(800),
            "the third waits for the first two"
        );
        let idle = t0 + Duration::from_secs(10);
        assert_eq!(
            quotas.charge(&bob, Usage::ProduceBytes, 50, idle),
            Duration::ZERO,
            "no debt after an idle stretch, and no credit either"
        );
        assert_eq!(
            quotas.charge(&bob, Usage::ProduceBytes, 50, idle),
            Duration::from_millis(500)
        );
        assert_eq!(
            quotas.charge(&bob, Usage::ProduceBytes, 1_000_000, idle),
            Duration::from_secs(1),
            "a use waits for the ones before it, not for itself"
        );
        assert_eq!(quotas.charge(&bob, Usage::ProduceBytes, 1, idle), MAX_WAIT);
    }

    #[tokio::test]
    async fn each_rate_falls_back_to_the_default_on_its_own() {
        let dir = tempfile::tempdir().expect("dir");
        let quotas = quotas(dir.path()).await;
        let bob: Principal = "User:bob".parse().expect("bob");
        let alice: Principal = "User:alice".parse().expect("alice");
        let now = Instant::now();
        assert_eq!(quotas.rate(&bob, Usage::ProduceBytes), rate(100));
        assert_eq!(quotas.rate(&bob, Usage::FetchBytes), rate(500));
        assert_eq!(quotas.rate(&alice, Usage::ProduceBytes), rate(1000));
        assert_eq!(quotas.rate(&alice, Usage::Requests), None);
        for _ in 0..1000 {
            assert_eq!(
                quotas.charge(&alice, Usage::Requests, 1, now),
                Duration::ZERO
            );
        }
        quotas.charge(&alice, Usage::ProduceBytes, 1000, now);
        assert_eq!(
            quotas.charge(&bob, Usage::ProduceBytes, 1, now),
            Duration::ZERO,
            "one principal's pace is not another's"
        );

        let reopened = Quotas::open(quotas.meta.clone()).expect("reopen");
        assert_eq!(reopened.list(), quotas.list());
        let removed = quotas
            .set(Quota {
                principal: Grantee::One(bob.clone()),
                rates: Rates::default(),
            })
            .await
            .expect("remove");
        assert!(removed);
        assert_eq!(quotas.rate(&bob, Usage::ProduceBytes), rate(1000));
    }
}
