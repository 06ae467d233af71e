//! Security: who is calling (principals, bearer tokens, users with passwords), what they may
//! do (ACLs) and how fast (quotas).
//!
//! Owns the tokens, the users, the ACLs and the quotas (all in the metadata store), the super-users
//! of the configuration, the admin token of a first start, and the one table of what each gRPC
//! method needs (`rpc.rs`). It knows nothing of gRPC: `api/` authenticates each request's
//! bearer token here, then asks [`Authorizer::authorize`] before the call does anything.
//!
//! ```text
//! request --bearer token--> Tokens::authenticate -> Principal
//!         --Rpc + names---> rpc::Rpc::requirement -> Authorizer::authorize -> allowed | Denial
//!         --bytes, calls--> Quotas::charge -> how long to wait
//! ```
//!
//! Invariants: a token's secret is never stored (only its SHA-256) nor logged; nothing is
//! allowed unless a super-user asks or an ACL allows it and none denies it.

mod acl;
pub mod certs;
pub mod join;
mod mapping;
mod principal;
mod quota;
mod revocations;
mod rpc;
pub mod secrets;
mod token;
mod users;

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use acl::{
    Acl, Authorizer, CLUSTER, Denial, Grantee, Operation, PatternType, Permission, ResourceType,
};
pub use mapping::PrincipalRules;
pub use principal::{Principal, PrincipalKind};
pub use quota::{Quota, Quotas, Rates, Usage};
pub use revocations::Revocations;
pub use rpc::{Requirement, Rpc};
pub use token::{TokenId, TokenInfo, TokenRefusal, Tokens, random};
pub use users::{PasswordChange, ScramCredential, ScramMechanism, UserInfo, Users};

use crate::meta::{Meta, MetaError};

/// The file of the data directory that holds the admin token made at first start.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The principal of that token, a super-user unless the configuration says otherwise.
pub const ADMIN: &str = "admin";

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("invalid principal {principal:?}: {reason}")]
    InvalidPrincipal { principal: String, reason: String },
    #[error("invalid ACL: {reason}")]
    InvalidAcl { reason: String },
    #[error("{id:?} is not a token id: ids are 16 hexadecimal digits (see `appliance token list`)")]
    InvalidTokenId { id: String },
    #[error("no token has the id {id} (see `appliance token list`)")]
    UnknownToken { id: TokenId },
    #[error("a token's description has at most {max} bytes")]
    DescriptionTooLong { max: usize },
    #[error("invalid principal mapping rule {rule:?}: {reason}")]
    InvalidMappingRule { rule: String, reason: String },
    #[error("the client certificate does not name a user: {reason}")]
    ClientCertificate { reason: String },
    #[error("the system's random number generator failed: {reason}")]
    Randomness { reason: String },
    #[error("cannot write the admin token to {}: {source}", path.display())]
    AdminTokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{principal} exists already (`appliance user password` changes a password)")]
    UserExists { principal: Principal },
    #[error("no user {principal} (see `appliance user list`)")]
    UnknownUser { principal: Principal },
    #[error("invalid join token: {reason}")]
    InvalidJoinToken { reason: String },
    #[error("the join token is refused: {reason}")]
    JoinTokenRefused { reason: String },
    #[error("the password is too weak or malformed: {reason}")]
    WeakPassword { reason: String },
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// Tokens, client certificate mapping and ACLs; cheap to clone.
#[derive(Debug, Clone)]
pub struct Security {
    pub tokens: Tokens,
    pub client_principals: PrincipalRules,
    pub authorizer: Authorizer,
    pub quotas: Quotas,
    pub users: Users,
    /// Edges whose certificates a hub refuses.
    pub revocations: Revocations,
    /// The one-time tokens edges enroll with, on a hub.
    pub join_tokens: join::JoinTokens,
}

impl Security {
    pub fn open(
        meta: Meta,
        super_users: HashSet<Principal>,
        client_principals: PrincipalRules,
    ) -> Result<Self, SecurityError> {
        Ok(Self {
            tokens: Tokens::open(meta.clone())?,
            client_principals,
            authorizer: Authorizer::open(meta.clone(), super_users)?,
            quotas: Quotas::open(meta.clone())?,
            users: Users::open(meta.clone())?,
            revocations: Revocations::open(meta.clone())?,
            join_tokens: join::JoinTokens::open(meta),
        })
    }

    /// On a first start (no admin token file and no token of `User:admin`), makes an admin
    /// token and writes it to `<data_dir>/admin.token`, readable by this user alone, so the
    /// local CLI works without set-up. Returns the file's path when it exists.
    pub async fn bootstrap_admin(&self, data_dir: &Path) -> Result<Option<PathBuf>, SecurityError> {
        let path = data_dir.join(ADMIN_TOKEN_FILE);
        if path.exists() {
            return Ok(Some(path));
        }
        let admin = Principal::user(ADMIN)?;
        if self
            .tokens
            .list()
            .iter()
            .any(|token| token.principal == admin)
        {
            return Ok(None);
        }
        let (info, token) = self
            .tokens
            .create(admin, None, "made at first start".into())
            .await?;
        write_private(&path, token.as_bytes()).map_err(|source| SecurityError::AdminTokenFile {
            path: path.clone(),
            source,
        })?;
        tracing::info!(
            path = %path.display(),
            id = %info.id,
            "made the admin token (User:admin, a super-user) at first start"
        );
        Ok(Some(path))
    }
}

/// Writes `contents` to a new file only its owner can read, durably.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)?;
    file.write_all(contents)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&partial, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[tokio::test]
    async fn the_first_start_writes_an_admin_token_only_its_owner_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(&dir.path().join("meta")).unwrap();
        let admin = Principal::user(ADMIN).unwrap();
        let security = Security::open(
            meta,
            HashSet::from([admin.clone()]),
            PrincipalRules::default(),
        )
        .unwrap();
        let path = security.bootstrap_admin(dir.path()).await.unwrap().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let token = std::fs::read_to_string(&path).unwrap();
        assert_eq!(security.tokens.authenticate(token.trim()), Ok(admin));
        // A later start keeps it.
        assert_eq!(
            security.bootstrap_admin(dir.path()).await.unwrap(),
            Some(path.clone())
        );
        assert_eq!(security.tokens.list().len(), 1);
        // An operator who removed the file but kept the token is not given another.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(security.bootstrap_admin(dir.path()).await.unwrap(), None);
    }
}
