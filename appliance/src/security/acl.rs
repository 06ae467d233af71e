//! Access control lists in Kafka's shape: a principal (or everyone), a resource type, a name
//! pattern (literal or prefixed), an operation and allow or deny. Deny wins over allow; when
//! no ACL allows a request it is denied; super-users pass every check.
//!
//! A literal pattern `*` matches every name of its type. An ACL for `read`, `write`,
//! `create`, `delete` or `alter` also allows `describe` of the same resources (as in Kafka);
//! `all` matches every operation.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use super::{Principal, SecurityError};
use crate::meta::{Meta, Table};

/// The one name of the `cluster` resource.
pub const CLUSTER: &str = "cluster";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceType {
    Topic,
    Group,
    Pipeline,
    Connector,
    Plugin,
    Link,
    Cluster,
    Export,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatternType {
    Literal,
    Prefixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Allow,
    Deny,
}

/// The lowercase names the CLI, the docs and messages use (the serde names).
macro_rules! words {
    ($($type:ident { $($variant:ident => $word:literal),* $(,)? })*) => {$(
        impl $type {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($type::$variant => $word),*
                }
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}

words! {
    ResourceType {
        Topic => "topic", Group => "group", Pipeline => "pipeline", Connector => "connector",
        Plugin => "plugin", Link => "link", Cluster => "cluster", Export => "export",
    }
    Operation {
        Read => "read", Write => "write", Create => "create", Delete => "delete",
        Alter => "alter", Describe => "describe", All => "all",
    }
    PatternType { Literal => "literal", Prefixed => "prefixed" }
    Permission { Allow => "allow", Deny => "deny" }
}

/// Whom an ACL is about: one principal, or `*`, everyone authenticated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Grantee {
    Everyone,
    One(Principal),
}

impl Grantee {
    fn includes(&self, principal: &Principal) -> bool {
        match self {
            Grantee::Everyone => true,
            Grantee::One(one) => one == principal,
        }
    }
}

impl fmt::Display for Grantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grantee::Everyone => f.write_str("*"),
            Grantee::One(principal) => principal.fmt(f),
        }
    }
}

impl FromStr for Grantee {
    type Err = SecurityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "*" {
            Ok(Grantee::Everyone)
        } else {
            text.parse().map(Grantee::One)
        }
    }
}

impl TryFrom<String> for Grantee {
    type Error = SecurityError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Grantee> for String {
    fn from(grantee: Grantee) -> Self {
        grantee.to_string()
    }
}

/// One access control entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Acl {
    pub grantee: Grantee,
    pub resource_type: ResourceType,
    pub pattern_type: PatternType,
    pub pattern: String,
    pub operation: Operation,
    pub permission: Permission,
}

/// `allow User:bob write topic plant- (prefixed)`: how logs and the audit record show it.
impl fmt::Display for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} ({})",
            self.permission,
            self.grantee,
            self.operation,
            self.resource_type,
            self.pattern,
            self.pattern_type
        )
    }
}

impl Acl {
    /// Checks what cannot work: an empty pattern, a cluster ACL naming something else.
    pub fn validate(&self) -> Result<(), SecurityError> {
        let invalid = |reason: &str| {
            Err(SecurityError::InvalidAcl {
                reason: reason.to_owned(),
            })
        };
        if self.pattern.is_empty() || self.pattern.len() > 255 {
            return invalid("the resource name or prefix has 1 to 255 characters");
        }
        if self.resource_type == ResourceType::Cluster
            && !(self.pattern_type == PatternType::Literal
                && (self.pattern == CLUSTER || self.pattern == "*"))
        {
            return invalid("a cluster ACL names the resource `cluster`");
        }
        if self.pattern_type == PatternType::Prefixed && self.pattern == "*" {
            return invalid("`*` is a literal pattern (every name); a prefix is text to match");
        }
        Ok(())
    }

    /// The key of this ACL in the metadata store: adding the same ACL twice keeps one.
    fn key(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    fn matches_resource(&self, resource_type: ResourceType, name: &str) -> bool {
        self.resource_type == resource_type
            && match self.pattern_type {
                PatternType::Literal => self.pattern == "*" || self.pattern == name,
                PatternType::Prefixed => name.starts_with(&self.pattern),
            }
    }

    fn matches_operation(&self, wanted: Operation) -> bool {
        match (self.operation, wanted) {
            (Operation::All, _) => true,
            (granted, wanted) if granted == wanted => true,
            // Any right on a resource lets one see it; a deny is only what it says.
            (
                Operation::Read
                | Operation::Write
                | Operation::Create
                | Operation::Delete
                | Operation::Alter,
                Operation::Describe,
            ) => self.permission == Permission::Allow,
            _ => false,
        }
    }
}

/// Why a request was denied: nothing allowed it, or an ACL denied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    NoAcl,
    DeniedBy(Acl),
}

impl Denial {
    /// What the refused principal is told: who may not do what, why, and (when nothing
    /// allowed it) the `appliance acl add` that would.
    pub fn explain(
        &self,
        principal: &Principal,
        resource_type: ResourceType,
        name: &str,
        operation: Operation,
    ) -> String {
        let what = format!("{principal} may not {operation} {resource_type} {name:?}");
        match self {
            Denial::NoAcl => {
                let grant = match resource_type {
                    ResourceType::Cluster => "--cluster".to_owned(),
                    other => format!("--{other} {name}"),
                };
                format!(
                    "{what}: no ACL allows it; a super-user can grant it with `appliance acl add \
                     --principal {principal} {grant} --operation {operation}`"
                )
            }
            Denial::DeniedBy(acl) => format!("{what}: an ACL denies it ({acl})"),
        }
    }
}

/// The ACLs in force and the super-users; cheap to clone.
#[derive(Debug, Clone)]
pub struct Authorizer {
    meta: Meta,
    super_users: Arc<HashSet<Principal>>,
    acls: Arc<RwLock<Arc<BTreeSet<Acl>>>>,
}

impl Authorizer {
    /// Loads the stored ACLs.
    pub fn open(meta: Meta, super_users: HashSet<Principal>) -> Result<Self, SecurityError> {
        let acls: BTreeSet<Acl> = meta
            .entries::<Acl>(Table::Acls)?
            .into_iter()
            .map(|(_, acl)| acl)
            .collect();
        Ok(Self {
            meta,
            super_users: Arc::new(super_users),
            acls: Arc::new(RwLock::new(Arc::new(acls))),
        })
    }

    pub fn is_super_user(&self, principal: &Principal) -> bool {
        self.super_users.contains(principal)
    }

    /// Whether `principal` may do `operation` on the resource `name` of `resource_type`.
    pub fn authorize(
        &self,
        principal: &Principal,
        resource_type: ResourceType,
        name: &str,
        operation: Operation,
    ) -> Result<(), Denial> {
        if self.is_super_user(principal) {
            return Ok(());
        }
        let acls = self.snapshot();
        let mut allowed = false;
        for acl in acls.iter().filter(|acl| {
            acl.grantee.includes(principal)
                && acl.matches_resource(resource_type, name)
                && acl.matches_operation(operation)
        }) {
            match acl.permission {
                Permission::Deny => return Err(Denial::DeniedBy(acl.clone())),
                Permission::Allow => allowed = true,
            }
        }
        if allowed { Ok(()) } else { Err(Denial::NoAcl) }
    }

    /// Adds an ACL durably; adding one that exists changes nothing.
    pub async fn add(&self, acl: Acl) -> Result<(), SecurityError> {
        acl.validate()?;
        self.meta.put(Table::Acls, &acl.key(), &acl).await?;
        self.update(|acls| {
            acls.insert(acl);
        });
        Ok(())
    }

    /// Removes an ACL durably; whether it existed.
    pub async fn remove(&self, acl: &Acl) -> Result<bool, SecurityError> {
        let existed = self.snapshot().contains(acl);
        self.meta.remove(Table::Acls, &acl.key()).await?;
        self.update(|acls| {
            acls.remove(acl);
        });
        Ok(existed)
    }

    /// Every ACL, in a stable order.
    pub fn list(&self) -> Vec<Acl> {
        self.snapshot().iter().cloned().collect()
    }

    fn snapshot(&self) -> Arc<BTreeSet<Acl>> {
        self.acls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, change: impl FnOnce(&mut BTreeSet<Acl>)) {
        let mut acls = self.acls.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = BTreeSet::clone(&acls);
        change(&mut next);
        *acls = Arc::new(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(
        grantee: &str,
        pattern_type: PatternType,
        pattern: &str,
        operation: Operation,
        permission: Permission,
    ) -> Acl {
        Acl {
            grantee: grantee.parse().unwrap(),
            resource_type: ResourceType::Topic,
            pattern_type,
            pattern: pattern.to_owned(),
            operation,
            permission,
        }
    }

    async fn authorizer(acls: Vec<Acl>) -> (tempfile::TempDir, Authorizer) {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path()).unwrap();
        let admin = Principal::user("admin").unwrap();
        let authorizer = Authorizer::open(meta, HashSet::from([admin])).unwrap();
        for acl in acls {
            authorizer.add(acl).await.unwrap();
        }
        (dir, authorizer)
    }

    fn can(authorizer: &Authorizer, who: &str, topic: &str, operation: Operation) -> bool {
        authorizer
            .authorize(&who.parse().unwrap(), ResourceType::Topic, topic, operation)
            .is_ok()
    }

    #[tokio::test]
    async fn nothing_is_allowed_without_an_acl_but_super_users_pass() {
        let (_dir, authorizer) = authorizer(vec![]).await;
        assert!(!can(&authorizer, "User:bob", "sensors", Operation::Read));
        assert!(can(&authorizer, "User:admin", "sensors", Operation::Delete));
    }

    #[tokio::test]
    async fn prefixed_and_literal_patterns_match_what_they_say() {
        use {Operation::*, PatternType::*, Permission::*};
        let (_dir, authorizer) = authorizer(vec![
            acl("User:bob", Prefixed, "plant-", Read, Allow),
            acl("User:bob", Literal, "alarms", Write, Allow),
            acl("*", Literal, "public", Read, Allow),
        ])
        .await;
        assert!(can(&authorizer, "User:bob", "plant-7", Read));
        assert!(!can(&authorizer, "User:bob", "plant", Read));
        assert!(!can(&authorizer, "User:bob", "plant-7", Write));
        assert!(can(&authorizer, "User:bob", "alarms", Write));
        assert!(!can(&authorizer, "User:bob", "alarms-2", Write));
        assert!(can(&authorizer, "User:carol", "public", Read));
        // Any right lets one describe.
        assert!(can(&authorizer, "User:bob", "alarms", Describe));
        assert!(!can(&authorizer, "User:carol", "alarms", Describe));
    }

    #[tokio::test]
    async fn deny_wins_over_allow() {
        use {Operation::*, PatternType::*, Permission::*};
        let (_dir, authorizer) = authorizer(vec![
            acl("User:bob", Literal, "*", All, Allow),
            acl("*", Prefixed, "secret-", Read, Deny),
        ])
        .await;
        assert!(can(&authorizer, "User:bob", "sensors", Read));
        assert!(!can(&authorizer, "User:bob", "secret-plans", Read));
        assert!(can(&authorizer, "User:bob", "secret-plans", Write));
        assert!(can(&authorizer, "User:bob", "secret-plans", Describe));
    }

    #[tokio::test]
    async fn acls_survive_a_reopen_and_removal_is_durable() {
        use {Operation::*, PatternType::*, Permission::*};
        let dir = tempfile::tempdir().unwrap();
        let kept = acl("User:bob", Literal, "a", Read, Allow);
        let removed = acl("User:bob", Literal, "b", Read, Allow);
        {
            let meta = Meta::open(dir.path()).unwrap();
            let authorizer = Authorizer::open(meta, HashSet::new()).unwrap();
            authorizer.add(kept.clone()).await.unwrap();
            authorizer.add(kept.clone()).await.unwrap();
            authorizer.add(removed.clone()).await.unwrap();
            assert!(authorizer.remove(&removed).await.unwrap());
            assert!(!authorizer.remove(&removed).await.unwrap());
        }
        let meta = Meta::open(dir.path()).unwrap();
        let authorizer = Authorizer::open(meta, HashSet::new()).unwrap();
        assert_eq!(authorizer.list(), vec![kept]);
    }

    #[test]
    fn acls_that_cannot_work_are_refused() {
        use {Operation::*, PatternType::*, Permission::*};
        let mut cluster = acl("User:bob", Literal, "plant", Describe, Allow);
        cluster.resource_type = ResourceType::Cluster;
        assert!(cluster.validate().is_err());
        assert!(
            acl("User:bob", Prefixed, "*", Read, Allow)
                .validate()
                .is_err()
        );
        assert!(
            acl("User:bob", Literal, "", Read, Allow)
                .validate()
                .is_err()
        );
    }
}
