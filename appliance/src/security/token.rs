//! Bearer tokens: `apl_<id>_<secret>`, shown once when created and stored only as the
//! SHA-256 of the secret under the token's random id. A token names its principal
//! (`User:NAME`), may expire, and is refused once revoked (its record is deleted).
//!
//! The tokens are kept in memory too, so that checking one never reads the store: it stays
//! fast, and works while the disk is full (when the store may refuse every call).
//!
//! The secret is 32 random bytes, so a fast hash suffices: no one can guess a preimage, and
//! checking a token costs a store lookup and one SHA-256, not a password hash's deliberate
//! slowness (a password goes through Argon2id instead).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Principal, SecurityError};
use crate::meta::{Meta, Table};

const PREFIX: &str = "apl_";
/// Random bytes of an id (hex in the token) and of a secret (base64url in the token).
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
/// Longest description kept with a token.
const MAX_DESCRIPTION_LEN: usize = 256;

/// A token's random id: shown by `token list`, used to revoke it; not a secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenId(String);

impl TokenId {
    pub fn parse(text: &str) -> Result<Self, SecurityError> {
        if text.len() == 2 * ID_BYTES && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(text.to_ascii_lowercase()))
        } else {
            Err(SecurityError::InvalidTokenId {
                id: text.chars().take(64).collect(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What is kept of a token: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredToken {
    principal: Principal,
    /// SHA-256 of the secret, hex.
    secret_sha256: String,
    created_unix_ms: u64,
    expires_unix_ms: Option<u64>,
    description: String,
}

/// A token as `token list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: TokenId,
    pub principal: Principal,
    pub created: SystemTime,
    pub expires: Option<SystemTime>,
    pub description: String,
}

impl TokenInfo {
    fn new(id: TokenId, stored: StoredToken) -> Self {
        Self {
            id,
            principal: stored.principal,
            created: from_unix_ms(stored.created_unix_ms),
            expires: stored.expires_unix_ms.map(from_unix_ms),
            description: stored.description,
        }
    }
}

/// Why a bearer token was refused. The message never echoes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("the token is malformed: tokens look like apl_<id>_<secret>")]
    Malformed,
    #[error("the token is unknown or was revoked")]
    Unknown,
    #[error("the token {id} expired; create a new one with `appliance token create`")]
    Expired { id: TokenId },
}

/// The token store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Tokens {
    meta: Meta,
    /// Every stored token by id, as the store has it.
    known: Arc<RwLock<HashMap<TokenId, StoredToken>>>,
}

impl Tokens {
    /// Loads the stored tokens.
    pub fn open(meta: Meta) -> Result<Self, SecurityError> {
        let known = meta
            .entries::<StoredToken>(Table::Tokens)?
            .into_iter()
            .map(|(id, stored)| (TokenId(id), stored))
            .collect();
        Ok(Self {
            meta,
            known: Arc::new(RwLock::new(known)),
        })
    }

    fn known(&self) -> std::sync::RwLockReadGuard<'_, HashMap<TokenId, StoredToken>> {
        self.known.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn known_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<TokenId, StoredToken>> {
        self.known.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates a token for `principal`, durably; returns it with its secret, the only time
    /// the secret is known.
    pub async fn create(
        &self,
        principal: Principal,
        lifetime: Option<Duration>,
        description: String,
    ) -> Result<(TokenInfo, String), SecurityError> {
        if description.len() > MAX_DESCRIPTION_LEN {
            return Err(SecurityError::DescriptionTooLong {
                max: MAX_DESCRIPTION_LEN,
            });
        }
        let id = TokenId(hex(&random::<ID_BYTES>()?));
        let secret = URL_SAFE_NO_PAD.encode(random::<SECRET_BYTES>()?);
        let created_unix_ms = unix_ms(SystemTime::now());
        let stored = StoredToken {
            principal,
            secret_sha256: hex(&Sha256::digest(secret.as_bytes())),
            created_unix_ms,
            expires_unix_ms: lifetime
                .map(|lifetime| created_unix_ms.saturating_add(lifetime.as_millis() as u64)),
            description,
        };
        self.meta.put(Table::Tokens, id.as_str(), &stored).await?;
        self.known_mut().insert(id.clone(), stored.clone());
        let token = format!("{PREFIX}{id}_{secret}");
        Ok((TokenInfo::new(id, stored), token))
    }

    /// The principal a bearer token stands for, if the token is known, matches and is not
    /// expired.
    pub fn authenticate(&self, token: &str) -> Result<Principal, TokenRefusal> {
        let (id, secret) = split(token).ok_or(TokenRefusal::Malformed)?;
        let stored = self
            .known()
            .get(&id)
            .cloned()
            .ok_or(TokenRefusal::Unknown)?;
        let presented = hex(&Sha256::digest(secret.as_bytes()));
        if !bool::from(presented.as_bytes().ct_eq(stored.secret_sha256.as_bytes())) {
            return Err(TokenRefusal::Unknown);
        }
        if stored
            .expires_unix_ms
            .is_some_and(|expires| unix_ms(SystemTime::now()) >= expires)
        {
            return Err(TokenRefusal::Expired { id });
        }
        Ok(stored.principal)
    }

    /// Every token, without secrets, oldest first.
    pub fn list(&self) -> Vec<TokenInfo> {
        let mut tokens: Vec<TokenInfo> = self
            .known()
            .iter()
            .map(|(id, stored)| TokenInfo::new(id.clone(), stored.clone()))
            .collect();
        tokens.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        tokens
    }

    /// Revokes a token durably: from now on it is refused.
    pub async fn revoke(&self, id: &TokenId) -> Result<TokenInfo, SecurityError> {
        let stored = self
            .known()
            .get(id)
            .cloned()
            .ok_or_else(|| SecurityError::UnknownToken { id: id.clone() })?;
        self.meta.remove(Table::Tokens, id.as_str()).await?;
        self.known_mut().remove(id);
        Ok(TokenInfo::new(id.clone(), stored))
    }
}

fn split(token: &str) -> Option<(TokenId, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_at_checked(2 * ID_BYTES)?;
    let secret = secret.strip_prefix('_')?;
    (!secret.is_empty()).then_some(())?;
    Some((TokenId::parse(id).ok()?, secret))
}

/// `N` bytes from the system's random source.
pub fn random<const N: usize>() -> Result<[u8; N], SecurityError> {
    let mut bytes = [0; N];
    getrandom::fill(&mut bytes).map_err(|error| SecurityError::Randomness {
        reason: error.to_string(),
    })?;
    Ok(bytes)
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

pub(super) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> (tempfile::TempDir, Tokens) {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path()).unwrap();
        (dir, Tokens::open(meta).unwrap())
    }

    #[tokio::test]
    async fn a_created_token_authenticates_its_principal_until_revoked() {
        let (_dir, tokens) = tokens();
        let bob = Principal::user("bob").unwrap();
        let (info, token) = tokens.create(bob.clone(), None, "ci".into()).await.unwrap();
        assert_eq!(tokens.authenticate(&token), Ok(bob));
        assert_eq!(tokens.list(), vec![info.clone()]);
        let reopened = Tokens::open(tokens.meta.clone()).unwrap();
        assert_eq!(
            reopened.authenticate(&token),
            Ok(Principal::user("bob").unwrap())
        );
        tokens.revoke(&info.id).await.unwrap();
        assert_eq!(tokens.authenticate(&token), Err(TokenRefusal::Unknown));
        assert!(tokens.revoke(&info.id).await.is_err());
    }

    #[tokio::test]
    async fn wrong_malformed_and_expired_tokens_are_refused() {
        let (_dir, tokens) = tokens();
        let bob = Principal::user("bob").unwrap();
        let (info, token) = tokens
            .create(bob.clone(), Some(Duration::ZERO), String::new())
            .await
            .unwrap();
        assert_eq!(
            tokens.authenticate(&token),
            Err(TokenRefusal::Expired { id: info.id })
        );
        let (_, live) = tokens.create(bob, None, String::new()).await.unwrap();
        let mut wrong = live.clone();
        wrong.pop();
        wrong.push(if live.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(tokens.authenticate(&wrong), Err(TokenRefusal::Unknown));
        for malformed in [
            "",
            "apl_",
            "Bearer x",
            "apl_0123456789abcdef",
            "apl_zz23456789abcdef_x",
        ] {
            assert_eq!(
                tokens.authenticate(malformed),
                Err(TokenRefusal::Malformed),
                "{malformed}"
            );
        }
    }

    #[tokio::test]
    async fn the_store_never_holds_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path()).unwrap();
        let (_, token) = Tokens::open(meta.clone())
            .unwrap()
            .create(Principal::user("bob").unwrap(), None, String::new())
            .await
            .unwrap();
        meta.flush().await.unwrap();
        drop(meta);
        let secret = &token[PREFIX.len() + 2 * ID_BYTES + 1..];
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds the secret",
                    path.display()
                );
            }
        }
    }
}
