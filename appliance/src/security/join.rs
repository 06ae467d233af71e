//! Join tokens: how an edge gets its link certificate with no private key ever copied between
//! machines. `appliance link join-token create EDGE --expires 1h` on a hub makes a one-time
//! token `apj_<id>_<secret>_<pin>`:
//!
//! - `id` (16 hex digits) and `secret` (32 random bytes, base64url): the hub keeps the edge id,
//!   the expiry and the secret's SHA-256 only, as for bearer tokens;
//! - `pin` (base64url): the SHA-256 of the hub's link certificate, so that the edge, which
//!   trusts no CA yet, knows that the hub it enrolls with is this one.
//!
//! The edge (`appliance link enroll`) makes its key, sends a certificate request with the
//! token, and the hub signs a certificate for the token's edge, whatever the request asks for.
//! A token is used up by its first redemption; an expired one is refused (and forgotten).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::SecurityError;
use super::token::{hex, random, unix_ms};
use crate::meta::{Meta, Table};

const PREFIX: &str = "apj_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
/// The length of 32 bytes in base64url without padding.
const ENCODED_32_BYTES: usize = 43;
/// The longest a join token may live.
pub const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// A join token as the edge holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    id: String,
    secret: [u8; SECRET_BYTES],
    /// SHA-256 of the hub's link certificate (DER).
    pub hub_pin: [u8; 32],
}

/// Never shows the secret.
impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    pub fn parse(text: &str) -> Result<Self, SecurityError> {
        let invalid = || SecurityError::InvalidJoinToken {
            reason: "a join token is `apj_<id>_<secret>_<pin>`, as `appliance link join-token \
                     create` printed it on the hub"
                .to_owned(),
        };
        // By position: base64url has `_` among its letters.
        let rest = text.trim().strip_prefix(PREFIX).ok_or_else(invalid)?;
        let id_end = 2 * ID_BYTES;
        let secret_end = id_end + 1 + ENCODED_32_BYTES;
        if !rest.is_ascii()
            || rest.len() != secret_end + 1 + ENCODED_32_BYTES
            || &rest[id_end..=id_end] != "_"
            || &rest[secret_end..=secret_end] != "_"
        {
            return Err(invalid());
        }
        let (id, secret, pin) = (
            &rest[..id_end],
            &rest[id_end + 1..secret_end],
            &rest[secret_end + 1..],
        );
        if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        let bytes = |part: &str| -> Result<[u8; 32], SecurityError> {
            URL_SAFE_NO_PAD
                .decode(part)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(invalid)
        };
        Ok(Self {
            id: id.to_ascii_lowercase(),
            secret: bytes(secret)?,
            hub_pin: bytes(pin)?,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{PREFIX}{}_{}_{}",
            self.id,
            URL_SAFE_NO_PAD.encode(self.secret),
            URL_SAFE_NO_PAD.encode(self.hub_pin)
        )
    }
}

/// What the hub keeps of a join token.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredJoinToken {
    edge: String,
    /// SHA-256 of the secret, hex.
    secret_sha256: String,
    expires_unix_ms: u64,
}

fn secret_sha256(secret: &[u8]) -> String {
    hex(&Sha256::digest(secret))
}

/// The hub's join tokens; cheap to clone.
#[derive(Debug, Clone)]
pub struct JoinTokens {
    meta: Meta,
    /// Redemptions one at a time, so a token is used up exactly once.
    redeeming: Arc<tokio::sync::Mutex<()>>,
}

impl JoinTokens {
    pub fn open(meta: Meta) -> Self {
        Self {
            meta,
            redeeming: Arc::default(),
        }
    }

    /// A new token for `edge`, valid for `lifetime`, pinning the hub certificate whose
    /// SHA-256 is `hub_pin`; with its expiry.
    pub async fn create(
        &self,
        edge: &str,
        lifetime: Duration,
        hub_pin: [u8; 32],
    ) -> Result<(JoinToken, SystemTime), SecurityError> {
        if lifetime.is_zero() || lifetime > MAX_LIFETIME {
            return Err(SecurityError::InvalidJoinToken {
                reason: "a join token lives 1 ms to 7 days (--expires)".to_owned(),
            });
        }
        let token = JoinToken {
            id: hex(&random::<ID_BYTES>()?),
            secret: random::<SECRET_BYTES>()?,
            hub_pin,
        };
        let expires = SystemTime::now() + lifetime;
        let stored = StoredJoinToken {
            edge: edge.to_owned(),
            secret_sha256: secret_sha256(&token.secret),
            expires_unix_ms: unix_ms(expires),
        };
        self.meta.put(Table::JoinTokens, &token.id, &stored).await?;
        Ok((token, expires))
    }

    /// Uses `token` up: the edge it was made for, or why it is refused.
    pub async fn redeem(&self, token: &JoinToken) -> Result<String, SecurityError> {
        let refused = |reason: &str| SecurityError::JoinTokenRefused {
            reason: reason.to_owned(),
        };
        let _one_at_a_time = self.redeeming.lock().await;
        let stored: StoredJoinToken = self
            .meta
            .get(Table::JoinTokens, &token.id)?
            .ok_or_else(|| refused("it is unknown, or used already (a join token works once)"))?;
        let matches: bool = secret_sha256(&token.secret)
            .as_bytes()
            .ct_eq(stored.secret_sha256.as_bytes())
            .into();
        if !matches {
            return Err(refused("its secret is wrong"));
        }
        self.meta.remove(Table::JoinTokens, &token.id).await?;
        if unix_ms(SystemTime::now()) >= stored.expires_unix_ms {
            return Err(refused(
                "it has expired; make another with `appliance link join-token create`",
            ));
        }
        Ok(stored.edge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_join_token_works_once_within_its_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = JoinTokens::open(Meta::open(dir.path()).unwrap());
        let pin = [7u8; 32];
        let (token, _) = tokens
            .create("plant-9", Duration::from_secs(3600), pin)
            .await
            .unwrap();
        let parsed = JoinToken::parse(&token.to_string()).unwrap();
        assert_eq!(parsed, token);
        for _ in 0..200 {
            // Secrets and pins hold `_` as often as any other letter of base64url.
            let (token, _) = tokens
                .create("plant-9", Duration::from_secs(60), random::<32>().unwrap())
                .await
                .unwrap();
            assert_eq!(JoinToken::parse(&token.to_string()).unwrap(), token);
        }
        assert_eq!(parsed.hub_pin, pin);

        let mut forged = parsed.clone();
        forged.secret[0] ^= 1;
        assert!(tokens.redeem(&forged).await.is_err());
        assert_eq!(tokens.redeem(&parsed).await.unwrap(), "plant-9");
        let again = tokens.redeem(&parsed).await.unwrap_err();
        assert!(again.to_string().contains("used already"), "{again}");

        let (short, _) = tokens
            .create("plant-9", Duration::from_millis(1), pin)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let expired = tokens.redeem(&short).await.unwrap_err();
        assert!(expired.to_string().contains("expired"), "{expired}");

        for bad in ["", "apl_x", "apj_0123456789abcdef_AAAA_BBBB", "apj_xyz_a_b"] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
        assert!(!format!("{parsed:?}").contains(&URL_SAFE_NO_PAD.encode(parsed.secret)));
    }
}
