//! Users with passwords, for the clients that sign in with one rather than a token: Kafka
//! clients over SASL/SCRAM and people at the console. The password itself is never kept;
//! each user has
//!
//! - a SCRAM-SHA-256 and a SCRAM-SHA-512 credential (RFC 5802, RFC 7677): a random salt, the
//!   iteration count, StoredKey and ServerKey, which let the server check a client's proof
//!   and prove itself in turn, as Kafka stores them;
//! - an Argon2id hash (PHC string, OWASP's parameters) for a password typed at a sign-in.
//!
//! Users are kept in memory too, so signing in never reads the store (it works on a full
//! disk), as tokens are.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use super::token::{from_unix_ms, random, unix_ms};
use super::{Principal, SecurityError};
use crate::meta::{Meta, Table};

/// Fewest characters of a password.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Most bytes of a password.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// PBKDF2 iterations of a new SCRAM credential (Kafka accepts 4096 to 16384).
const SCRAM_ITERATIONS: u32 = 8192;
const SALT_BYTES: usize = 16;

/// The SCRAM mechanisms, by the name SASL knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScramMechanism {
    Sha256,
    Sha512,
}

impl ScramMechanism {
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    pub fn sasl_name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }
}

/// Runs `$body` with `$digest` the hash type of `$mechanism`.
macro_rules! with_digest {
    ($mechanism:expr, $digest:ident => $body:expr) => {
        match $mechanism {
            ScramMechanism::Sha256 => {
                type $digest = Sha256;
                $body
            }
            ScramMechanism::Sha512 => {
                type $digest = Sha512;
                $body
            }
        }
    };
}

/// HMAC of `message` under `key` with `mechanism`'s hash.
fn hmac(mechanism: ScramMechanism, key: &[u8], message: &[u8]) -> Vec<u8> {
    with_digest!(mechanism, D => {
        let mut mac = <Hmac<D> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(message);
        mac.finalize().into_bytes().to_vec()
    })
}

/// `mechanism`'s hash of `bytes`.
fn hash(mechanism: ScramMechanism, bytes: &[u8]) -> Vec<u8> {
    with_digest!(mechanism, D => D::digest(bytes).to_vec())
}

/// SaltedPassword: PBKDF2 of the password with `mechanism`'s HMAC.
fn salted_password(
    mechanism: ScramMechanism,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
) -> Vec<u8> {
    with_digest!(mechanism, D => {
        let mut salted = vec![0; <D as Digest>::output_size()];
        pbkdf2::pbkdf2_hmac::<D>(password, salt, iterations, &mut salted);
        salted
    })
}

/// What the server keeps of a password for one SCRAM mechanism.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    #[serde(with = "base64_bytes")]
    pub salt: Vec<u8>,
    pub iterations: u32,
    #[serde(with = "base64_bytes")]
    stored_key: Vec<u8>,
    #[serde(with = "base64_bytes")]
    server_key: Vec<u8>,
}

/// Never shows the keys.
impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredential {
    /// The credential of `password` (already SASLprep'd by the caller, if at all).
    pub fn new(mechanism: ScramMechanism, password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let salted = salted_password(mechanism, password, salt, iterations);
        let client_key = hmac(mechanism, &salted, b"Client Key");
        Self {
            salt: salt.to_vec(),
            iterations,
            stored_key: hash(mechanism, &client_key),
            server_key: hmac(mechanism, &salted, b"Server Key"),
        }
    }

    /// Checks a client's proof over `auth_message` (client-first-bare, server-first and
    /// client-final-without-proof, comma-separated); the server's signature when it is right.
    pub fn verify(
        &self,
        mechanism: ScramMechanism,
        auth_message: &[u8],
        client_proof: &[u8],
    ) -> Option<Vec<u8>> {
        let signature = hmac(mechanism, &self.stored_key, auth_message);
        if client_proof.len() != signature.len() {
            return None;
        }
        let client_key: Vec<u8> = client_proof
            .iter()
            .zip(&signature)
            .map(|(proof, sig)| proof ^ sig)
            .collect();
        let matches: bool = hash(mechanism, &client_key).ct_eq(&self.stored_key).into();
        matches.then(|| hmac(mechanism, &self.server_key, auth_message))
    }
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// What is kept of a user.
#[derive(Clone, Serialize, Deserialize)]
struct StoredUser {
    principal: Principal,
    scram_sha256: ScramCredential,
    scram_sha512: ScramCredential,
    /// Argon2id, as a PHC string.
    password_hash: String,
    created_unix_ms: u64,
    password_changed_unix_ms: u64,
}

/// A user as `user list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub principal: Principal,
    pub created: SystemTime,
    pub password_changed: SystemTime,
}

/// The users; cheap to clone.
#[derive(Clone)]
pub struct Users {
    meta: Meta,
    users: Arc<RwLock<BTreeMap<String, StoredUser>>>,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users").finish_non_exhaustive()
    }
}

/// Whether a new user is made or an existing one's password changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordChange {
    NewUser,
    ExistingUser,
}

impl Users {
    /// Loads the stored users.
    pub fn open(meta: Meta) -> Result<Self, SecurityError> {
        let users = meta
            .entries::<StoredUser>(Table::Users)?
            .into_iter()
            .collect();
        Ok(Self {
            meta,
            users: Arc::new(RwLock::new(users)),
        })
    }

    /// Makes user `principal` with `password`, or changes an existing user's password.
    pub async fn set_password(
        &self,
        principal: Principal,
        password: &str,
        change: PasswordChange,
    ) -> Result<UserInfo, SecurityError> {
        check_password(password)?;
        let name = principal.name().to_owned();
        let existing = self.read().get(&name).cloned();
        let created_unix_ms = match (change, existing) {
            (PasswordChange::NewUser, Some(_)) => {
                return Err(SecurityError::UserExists { principal });
            }
            (PasswordChange::ExistingUser, None) => {
                return Err(SecurityError::UnknownUser { principal });
            }
            (PasswordChange::ExistingUser, Some(user)) => user.created_unix_ms,
            (PasswordChange::NewUser, None) => unix_ms(SystemTime::now()),
        };
        let credential = |mechanism| -> Result<ScramCredential, SecurityError> {
            let salt = random::<SALT_BYTES>()?;
            Ok(ScramCredential::new(
                mechanism,
                password.as_bytes(),
                &salt,
                SCRAM_ITERATIONS,
            ))
        };
        let argon_salt = SaltString::encode_b64(&random::<SALT_BYTES>()?).map_err(|e| {
            SecurityError::Randomness {
                reason: e.to_string(),
            }
        })?;
        let password_hash = Argon2::default()
            .hash_password(password.as_bytes(), &argon_salt)
            .map_err(|e| SecurityError::Randomness {
                reason: e.to_string(),
            })?
            .to_string();
        let stored = StoredUser {
            principal,
            scram_sha256: credential(ScramMechanism::Sha256)?,
            scram_sha512: credential(ScramMechanism::Sha512)?,
            password_hash,
            created_unix_ms,
            password_changed_unix_ms: unix_ms(SystemTime::now()),
        };
        self.meta.put(Table::Users, &name, &stored).await?;
        let info = info(&stored);
        self.write().insert(name, stored);
        Ok(info)
    }

    /// Deletes a user: its password is refused from the next sign-in on.
    pub async fn delete(&self, principal: &Principal) -> Result<UserInfo, SecurityError> {
        let name = principal.name();
        let Some(user) = self.read().get(name).map(info) else {
            return Err(SecurityError::UnknownUser {
                principal: principal.clone(),
            });
        };
        self.meta.remove(Table::Users, name).await?;
        self.write().remove(name);
        Ok(user)
    }

    pub fn list(&self) -> Vec<UserInfo> {
        self.read().values().map(info).collect()
    }

    /// The user `name` when `password` is theirs (Argon2id; a sign-in).
    pub fn sign_in(&self, name: &str, password: &str) -> Option<Principal> {
        let user = self.read().get(name).cloned()?;
        let hash = PasswordHash::new(&user.password_hash).ok()?;
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .ok()
            .map(|()| user.principal)
    }

    /// The SCRAM credential of user `name` for `mechanism`, for a SASL exchange.
    pub fn scram(
        &self,
        name: &str,
        mechanism: ScramMechanism,
    ) -> Option<(Principal, ScramCredential)> {
        let users = self.read();
        let user = users.get(name)?;
        let credential = match mechanism {
            ScramMechanism::Sha256 => &user.scram_sha256,
            ScramMechanism::Sha512 => &user.scram_sha512,
        };
        Some((user.principal.clone(), credential.clone()))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, StoredUser>> {
        self.users.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, StoredUser>> {
        self.users.write().unwrap_or_else(PoisonError::into_inner)
    }
}

fn info(user: &StoredUser) -> UserInfo {
    UserInfo {
        principal: user.principal.clone(),
        created: from_unix_ms(user.created_unix_ms),
        password_changed: from_unix_ms(user.password_changed_unix_ms),
    }
}

fn check_password(password: &str) -> Result<(), SecurityError> {
    let refuse = |reason: String| Err(SecurityError::WeakPassword { reason });
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return refuse(format!("it has fewer than {MIN_PASSWORD_CHARS} characters"));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return refuse(format!("it has more than {MAX_PASSWORD_BYTES} bytes"));
    }
    if password.chars().any(char::is_control) {
        return refuse("it holds a control character (a line break, say)".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    /// RFC 7677, section 3: user "user", password "pencil".
    #[test]
    fn scram_sha_256_checks_the_rfc_7677_exchange() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let credential = ScramCredential::new(ScramMechanism::Sha256, b"pencil", &salt, 4096);
        let client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client_final_without_proof =
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let auth_message =
            format!("{client_first_bare},{server_first},{client_final_without_proof}");
        let proof = STANDARD
            .decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        let signature = credential
            .verify(ScramMechanism::Sha256, auth_message.as_bytes(), &proof)
            .expect("the RFC's proof is right");
        assert_eq!(
            STANDARD.encode(signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let mut wrong = proof.clone();
        wrong[0] ^= 1;
        assert!(
            credential
                .verify(ScramMechanism::Sha256, auth_message.as_bytes(), &wrong)
                .is_none()
        );
        assert!(
            credential
                .verify(ScramMechanism::Sha256, auth_message.as_bytes(), &proof[1..])
                .is_none()
        );
        let other = ScramCredential::new(ScramMechanism::Sha256, b"pencil2", &salt, 4096);
        assert!(
            other
                .verify(ScramMechanism::Sha256, auth_message.as_bytes(), &proof)
                .is_none()
        );
    }

    /// A client's proof as RFC 5802 computes it.
    fn client_proof(
        mechanism: ScramMechanism,
        password: &[u8],
        credential: &ScramCredential,
        auth_message: &[u8],
    ) -> Vec<u8> {
        let salted = salted_password(mechanism, password, &credential.salt, credential.iterations);
        let client_key = hmac(mechanism, &salted, b"Client Key");
        let signature = hmac(mechanism, &hash(mechanism, &client_key), auth_message);
        client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect()
    }

    #[tokio::test]
    async fn users_sign_in_with_their_password_only_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let users = Users::open(Meta::open(dir.path()).unwrap()).unwrap();
        let bob: Principal = "User:bob".parse().unwrap();
        users
            .set_password(bob.clone(), "correct horse", PasswordChange::NewUser)
            .await
            .unwrap();
        assert!(matches!(
            users
                .set_password(bob.clone(), "other horse", PasswordChange::NewUser)
                .await,
            Err(SecurityError::UserExists { .. })
        ));
        assert!(matches!(
            users
                .set_password(bob.clone(), "short", PasswordChange::ExistingUser)
                .await,
            Err(SecurityError::WeakPassword { .. })
        ));
        assert_eq!(users.sign_in("bob", "correct horse"), Some(bob.clone()));
        assert_eq!(users.sign_in("bob", "correct horsE"), None);
        assert_eq!(users.sign_in("alice", "correct horse"), None);

        let (_, credential) = users.scram("bob", ScramMechanism::Sha512).unwrap();
        assert_eq!(credential.iterations, SCRAM_ITERATIONS);
        let auth = b"n=bob,r=abc,r=abcdef,s=xyz,i=8192,c=biws,r=abcdef";
        let proof = client_proof(ScramMechanism::Sha512, b"correct horse", &credential, auth);
        assert!(
            credential
                .verify(ScramMechanism::Sha512, auth, &proof)
                .is_some()
        );
        let wrong = client_proof(ScramMechanism::Sha512, b"correct horsE", &credential, auth);
        assert!(
            credential
                .verify(ScramMechanism::Sha512, auth, &wrong)
                .is_none()
        );

        let reopened = Users::open(users.meta.clone()).unwrap();
        assert_eq!(reopened.sign_in("bob", "correct horse"), Some(bob.clone()));
        reopened
            .set_password(bob.clone(), "battery staple", PasswordChange::ExistingUser)
            .await
            .unwrap();
        assert_eq!(reopened.sign_in("bob", "correct horse"), None);
        reopened.delete(&bob).await.unwrap();
        assert_eq!(reopened.sign_in("bob", "battery staple"), None);
        assert!(reopened.list().is_empty());
    }
}
