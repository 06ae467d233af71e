//! Revoked edges, on a hub: `appliance link revoke EDGE` refuses every certificate of that edge
//! issued up to the revocation (its open session is closed at once; its next handshakes are
//! refused). A certificate issued for the edge afterwards links again, so a gateway whose key
//! leaked is given a new one without renaming it.
//!
//! When a certificate was issued is read from the certificate: the appliance's CA dates each
//! one from a day before it was made (for clocks that lag), so its issue is `notBefore` plus
//! that day, to the second. Kept in memory too: a handshake never reads the store.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::SecurityError;
use crate::meta::{Meta, Table};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Revocation {
    edge: String,
    /// Certificates issued up to this second are refused.
    revoked_unix_s: i64,
}

/// The revoked edges; cheap to clone.
#[derive(Debug, Clone)]
pub struct Revocations {
    meta: Meta,
    revoked: Arc<RwLock<BTreeMap<String, i64>>>,
}

impl Revocations {
    pub fn open(meta: Meta) -> Result<Self, SecurityError> {
        let revoked = meta
            .entries::<Revocation>(Table::RevokedEdges)?
            .into_iter()
            .map(|(_, r)| (r.edge, r.revoked_unix_s))
            .collect();
        Ok(Self {
            meta,
            revoked: Arc::new(RwLock::new(revoked)),
        })
    }

    /// Revokes every certificate of `edge` issued until now, durably; the time it took effect.
    pub async fn revoke(&self, edge: &str) -> Result<SystemTime, SecurityError> {
        let now = SystemTime::now();
        let revoked_unix_s = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs() as i64);
        let revocation = Revocation {
            edge: edge.to_owned(),
            revoked_unix_s,
        };
        self.meta
            .put(Table::RevokedEdges, edge, &revocation)
            .await?;
        self.revoked
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(edge.to_owned(), revoked_unix_s);
        Ok(now)
    }

    /// When `edge`'s certificates issued at `issued_unix_s` were revoked, if they were.
    pub fn revoked(&self, edge: &str, issued_unix_s: i64) -> Option<SystemTime> {
        let revoked = *self
            .revoked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(edge)?;
        (issued_unix_s <= revoked)
            .then(|| UNIX_EPOCH + std::time::Duration::from_secs(revoked.max(0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn certificates_issued_up_to_the_revocation_are_refused_after_a_restart_too() {
        let dir = tempfile::tempdir().unwrap();
        let revocations = Revocations::open(Meta::open(dir.path()).unwrap()).unwrap();
        assert!(revocations.revoked("plant-7", 0).is_none());
        let at = revocations.revoke("plant-7").await.unwrap();
        let second = at.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let reopened = Revocations::open(revocations.meta.clone()).unwrap();
        for revocations in [&revocations, &reopened] {
            assert!(revocations.revoked("plant-7", second - 86_400).is_some());
            assert!(revocations.revoked("plant-7", second).is_some());
            assert!(revocations.revoked("plant-7", second + 1).is_none());
            assert!(revocations.revoked("plant-8", second - 10).is_none());
        }
    }
}
