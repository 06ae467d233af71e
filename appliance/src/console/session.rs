//! Who is signed in to the console. A session is a random id in an `HttpOnly`,
//! `SameSite=Strict` cookie, held in memory (a restart signs everyone out) with the bearer
//! token its calls carry to the gRPC API and a CSRF token every change must repeat in a header.
//!
//! Signing in with a token keeps that token; signing in with a user's password makes a token
//! for the user that expires with the session, revoked when the user signs out, so every
//! call the console makes is a token's call, checked and audited as any other. A session ends
//! at its lifetime, at sign-out, or as soon as its token is revoked or expires.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::security::{Principal, Security, TokenId, random};

/// How long a session lasts after sign-in.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 60 * 60);
/// Sessions held at once; the oldest goes when one more signs in.
const MAX_SESSIONS: usize = 1024;
/// Password checks (Argon2id, tens of milliseconds of CPU each) run at once; more wait.
const CONCURRENT_PASSWORD_CHECKS: usize = 2;
/// The longest token, user name or password a sign-in may send.
const MAX_CREDENTIAL_LEN: usize = 1024;

/// What a browser signs in with.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum Credentials {
    Token { token: String },
    Password { user: String, password: String },
}

/// Why a sign-in or a request's session was refused; the message is shown on the page.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the token was refused: {0}")]
    Token(String),
    #[error("unknown user or wrong password")]
    Password,
    #[error("credentials longer than {MAX_CREDENTIAL_LEN} bytes")]
    TooLong,
    #[error("not signed in, or the session ended; sign in again")]
    NoSession,
    #[error(
        "the request lacks the console's CSRF token (the x-csrf-token header of the page that \
         signed in); reload the page"
    )]
    Csrf,
    #[error("cannot make a session token: {0}")]
    Store(String),
}

/// A signed-in browser, as a request sees it.
#[derive(Debug, Clone)]
pub struct Session {
    pub principal: Principal,
    /// What the console's gRPC calls authenticate with.
    pub bearer: String,
    pub csrf: String,
}

#[derive(Debug)]
struct Held {
    session: Session,
    signed_in: Instant,
    /// The token made for a password sign-in, revoked at sign-out.
    made: Option<TokenId>,
}

/// The sessions; cheap to clone.
#[derive(Debug, Clone)]
pub struct Sessions {
    security: Security,
    held: Arc<Mutex<HashMap<String, Held>>>,
    password_checks: Arc<Semaphore>,
}

impl Sessions {
    pub fn new(security: Security) -> Self {
        Self {
            security,
            held: Arc::default(),
            password_checks: Arc::new(Semaphore::new(CONCURRENT_PASSWORD_CHECKS)),
        }
    }

    /// Checks `credentials` and starts a session: its id (the cookie's value) and itself.
    pub async fn sign_in(
        &self,
        credentials: Credentials,
    ) -> Result<(String, Session), SessionError> {
        let (principal, bearer, made) = match credentials {
            Credentials::Token { token } => {
                if token.len() > MAX_CREDENTIAL_LEN {
                    return Err(SessionError::TooLong);
                }
                let token = token.trim().to_owned();
                let principal = self
                    .security
                    .tokens
                    .authenticate(&token)
                    .map_err(|refusal| SessionError::Token(refusal.to_string()))?;
                (principal, token, None)
            }
            Credentials::Password { user, password } => {
                if user.len() > MAX_CREDENTIAL_LEN || password.len() > MAX_CREDENTIAL_LEN {
                    return Err(SessionError::TooLong);
                }
                let principal = self.check_password(user, password).await?;
                let (info, token) = self
                    .security
                    .tokens
                    .create(
                        principal.clone(),
                        Some(SESSION_LIFETIME),
                        "console session".to_owned(),
                    )
                    .await
                    .map_err(|error| SessionError::Store(error.to_string()))?;
                (principal, token, Some(info.id))
            }
        };
        let id = secret()?;
        let session = Session {
            principal,
            bearer,
            csrf: secret()?,
        };
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.retain(|_, held| held.signed_in.elapsed() < SESSION_LIFETIME);
        if held.len() >= MAX_SESSIONS
            && let Some(oldest) = held
                .iter()
                .min_by_key(|(_, held)| held.signed_in)
                .map(|(id, _)| id.clone())
        {
            held.remove(&oldest);
        }
        held.insert(
            id.clone(),
            Held {
                session: session.clone(),
                signed_in: Instant::now(),
                made,
            },
        );
        Ok((id, session))
    }

    async fn check_password(
        &self,
        user: String,
        password: String,
    ) -> Result<Principal, SessionError> {
        let _permit = self
            .password_checks
            .acquire()
            .await
            .map_err(|_| SessionError::Password)?;
        let users = self.security.users.clone();
        tokio::task::spawn_blocking(move || users.sign_in(&user, &password))
            .await
            .ok()
            .flatten()
            .ok_or(SessionError::Password)
    }

    /// The session of cookie value `id`, while it lasts and its token still authenticates.
    pub fn get(&self, id: &str) -> Result<Session, SessionError> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let session = match held.get(id) {
            Some(entry) if entry.signed_in.elapsed() < SESSION_LIFETIME => entry.session.clone(),
            _ => {
                held.remove(id);
                return Err(SessionError::NoSession);
            }
        };
        if self.security.tokens.authenticate(&session.bearer).is_err() {
            held.remove(id);
            return Err(SessionError::NoSession);
        }
        Ok(session)
    }

    /// The session of `id` when `csrf` is its CSRF token: what every change needs.
    pub fn get_for_change(&self, id: &str, csrf: Option<&str>) -> Result<Session, SessionError> {
        let session = self.get(id)?;
        let matches =
            csrf.is_some_and(|csrf| bool::from(csrf.as_bytes().ct_eq(session.csrf.as_bytes())));
        if matches {
            Ok(session)
        } else {
            Err(SessionError::Csrf)
        }
    }

    /// Ends the session of `id`, revoking the token its password sign-in made.
    pub async fn sign_out(&self, id: &str) {
        let removed = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        if let Some(made) = removed.and_then(|held| held.made)
            && let Err(error) = self.security.tokens.revoke(&made).await
        {
            tracing::warn!(%error, token = made.as_str(), "cannot revoke a console session's token");
        }
    }
}

/// 32 random bytes, URL-safe.
fn secret() -> Result<String, SessionError> {
    random::<32>()
        .map(|bytes| URL_SAFE_NO_PAD.encode(bytes))
        .map_err(|error| SessionError::Store(error.to_string()))
}
