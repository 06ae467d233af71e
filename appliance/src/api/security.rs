//! The `Security` service: tokens, users, ACLs and quotas (security::Tokens, security::Users,
//! security::Authorizer, security::Quotas).

use std::num::NonZeroU64;
use std::time::Duration;

use appliance_proto::v1 as pb;
use appliance_proto::v1::security_server::Security as SecurityApi;
use tonic::{Request, Response, Status};

use super::access::Calls;
use super::convert::unix_ms;
use super::error::invalid;
use crate::security::{
    self, CLUSTER, Grantee, Operation, PasswordChange, PatternType, Permission, Principal, Quota,
    Rates, ResourceType, Rpc, TokenId, TokenInfo, UserInfo,
};

#[derive(Debug)]
pub struct SecurityService {
    pub security: security::Security,
    pub calls: Calls,
}

fn token_message(token: TokenInfo) -> pb::Token {
    pb::Token {
        id: token.id.to_string(),
        principal: token.principal.to_string(),
        created_unix_ms: unix_ms(token.created),
        expires_unix_ms: token.expires.map_or(0, unix_ms),
        description: token.description,
    }
}

fn user_message(user: UserInfo) -> pb::User {
    pb::User {
        principal: user.principal.to_string(),
        created_unix_ms: unix_ms(user.created),
        password_changed_unix_ms: unix_ms(user.password_changed),
    }
}

impl SecurityService {
    async fn set_password(
        &self,
        request: Request<pb::SetPasswordRequest>,
        rpc: Rpc,
        change: PasswordChange,
    ) -> Result<Response<pb::User>, Status> {
        let (call, request) = self.calls.start(request, rpc)?;
        call.authorize(CLUSTER)?;
        let principal = Principal::user(&request.name)?;
        let user = self
            .security
            .users
            .set_password(principal, &request.password, change)
            .await?;
        tracing::info!(principal = %user.principal, ?change, "password set");
        call.note_change(format_args!("user {}", user.principal));
        Ok(Response::new(user_message(user)))
    }
}

fn quota(message: pb::Quota) -> Result<Quota, Status> {
    Ok(Quota {
        principal: message
            .principal
            .parse()
            .map_err(|e: security::SecurityError| invalid("principal", e))?,
        rates: Rates {
            produce_bytes: NonZeroU64::new(message.produce_bytes_per_sec),
            fetch_bytes: NonZeroU64::new(message.fetch_bytes_per_sec),
            requests: NonZeroU64::new(message.requests_per_sec),
        },
    })
}

fn quota_message(quota: Quota) -> pb::Quota {
    let rate = |rate: Option<NonZeroU64>| rate.map_or(0, NonZeroU64::get);
    pb::Quota {
        principal: quota.principal.to_string(),
        produce_bytes_per_sec: rate(quota.rates.produce_bytes),
        fetch_bytes_per_sec: rate(quota.rates.fetch_bytes),
        requests_per_sec: rate(quota.rates.requests),
    }
}

fn acl(message: pb::Acl) -> Result<security::Acl, Status> {
    let grantee: Grantee = message
        .principal
        .parse()
        .map_err(|e: security::SecurityError| invalid("principal", e))?;
    let resource_type = match message.resource_type() {
        pb::ResourceType::Unspecified => {
            return Err(invalid(
                "resource_type",
                "name a resource type: topic, group, pipeline, connector, plugin, link, export or cluster",
            ));
        }
        pb::ResourceType::Topic => ResourceType::Topic,
        pb::ResourceType::Group => ResourceType::Group,
        pb::ResourceType::Pipeline => ResourceType::Pipeline,
        pb::ResourceType::Connector => ResourceType::Connector,
        pb::ResourceType::Plugin => ResourceType::Plugin,
        pb::ResourceType::Link => ResourceType::Link,
        pb::ResourceType::Cluster => ResourceType::Cluster,
        pb::ResourceType::Export => ResourceType::Export,
    };
    let operation = match message.operation() {
        pb::AclOperation::Unspecified => {
            return Err(invalid(
                "operation",
                "name an operation: read, write, create, delete, alter, describe or all",
            ));
        }
        pb::AclOperation::Read => Operation::Read,
        pb::AclOperation::Write => Operation::Write,
        pb::AclOperation::Create => Operation::Create,
        pb::AclOperation::Delete => Operation::Delete,
        pb::AclOperation::Alter => Operation::Alter,
        pb::AclOperation::Describe => Operation::Describe,
        pb::AclOperation::All => Operation::All,
    };
    let pattern_type = match message.pattern_type() {
        pb::PatternType::Unspecified | pb::PatternType::Literal => PatternType::Literal,
        pb::PatternType::Prefixed => PatternType::Prefixed,
    };
    let permission = match message.permission() {
        pb::AclPermission::Unspecified | pb::AclPermission::Allow => Permission::Allow,
        pb::AclPermission::Deny => Permission::Deny,
    };
    let pattern = if resource_type == ResourceType::Cluster && message.pattern.is_empty() {
        CLUSTER.to_owned()
    } else {
        message.pattern
    };
    let acl = security::Acl {
        grantee,
        resource_type,
        pattern_type,
        pattern,
        operation,
        permission,
    };
    acl.validate()?;
    Ok(acl)
}

fn acl_message(acl: security::Acl) -> pb::Acl {
    let mut message = pb::Acl {
        principal: acl.grantee.to_string(),
        pattern: acl.pattern,
        ..Default::default()
    };
    message.set_resource_type(match acl.resource_type {
        ResourceType::Topic => pb::ResourceType::Topic,
        ResourceType::Group => pb::ResourceType::Group,
        ResourceType::Pipeline => pb::ResourceType::Pipeline,
        ResourceType::Connector => pb::ResourceType::Connector,
        ResourceType::Plugin => pb::ResourceType::Plugin,
        ResourceType::Link => pb::ResourceType::Link,
        ResourceType::Cluster => pb::ResourceType::Cluster,
        ResourceType::Export => pb::ResourceType::Export,
    });
    message.set_pattern_type(match acl.pattern_type {
        PatternType::Literal => pb::PatternType::Literal,
        PatternType::Prefixed => pb::PatternType::Prefixed,
    });
    message.set_operation(match acl.operation {
        Operation::Read => pb::AclOperation::Read,
        Operation::Write => pb::AclOperation::Write,
        Operation::Create => pb::AclOperation::Create,
        Operation::Delete => pb::AclOperation::Delete,
        Operation::Alter => pb::AclOperation::Alter,
        Operation::Describe => pb::AclOperation::Describe,
        Operation::All => pb::AclOperation::All,
    });
    message.set_permission(match acl.permission {
        Permission::Allow => pb::AclPermission::Allow,
        Permission::Deny => pb::AclPermission::Deny,
    });
    message
}

#[tonic::async_trait]
impl SecurityApi for SecurityService {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreatedToken>, Status> {
        let (call, request) = self.calls.start(request, Rpc::CreateToken)?;
        call.authorize(CLUSTER)?;
        let principal = Principal::user(&request.name)?;
        let lifetime =
            (request.lifetime_ms > 0).then(|| Duration::from_millis(request.lifetime_ms));
        let (info, secret) = self
            .security
            .tokens
            .create(principal, lifetime, request.description)
            .await?;
        tracing::info!(id = %info.id, principal = %info.principal, "token created");
        call.note_change(format_args!("token {} of {}", info.id, info.principal));
        Ok(Response::new(pb::CreatedToken {
            token: Some(token_message(info)),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let (call, _) = self.calls.start(request, Rpc::ListTokens)?;
        call.authorize(CLUSTER)?;
        let tokens = self.security.tokens.list();
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.into_iter().map(token_message).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        let (call, request) = self.calls.start(request, Rpc::RevokeToken)?;
        call.authorize(CLUSTER)?;
        let id = TokenId::parse(&request.id)?;
        let revoked = self.security.tokens.revoke(&id).await?;
        tracing::info!(id = %revoked.id, principal = %revoked.principal, "token revoked");
        call.note_change(format_args!(
            "token {} of {}",
            revoked.id, revoked.principal
        ));
        Ok(Response::new(token_message(revoked)))
    }

    async fn create_acl(&self, request: Request<pb::Acl>) -> Result<Response<pb::Acl>, Status> {
        let (call, request) = self.calls.start(request, Rpc::CreateAcl)?;
        call.authorize(CLUSTER)?;
        let acl = acl(request)?;
        self.security.authorizer.add(acl.clone()).await?;
        tracing::info!(%acl, "ACL added");
        call.note_change(&acl);
        Ok(Response::new(acl_message(acl)))
    }

    async fn list_acls(
        &self,
        request: Request<pb::ListAclsRequest>,
    ) -> Result<Response<pb::ListAclsResponse>, Status> {
        let (call, _) = self.calls.start(request, Rpc::ListAcls)?;
        call.authorize(CLUSTER)?;
        Ok(Response::new(pb::ListAclsResponse {
            acls: self
                .security
                .authorizer
                .list()
                .into_iter()
                .map(acl_message)
                .collect(),
        }))
    }

    async fn delete_acl(
        &self,
        request: Request<pb::Acl>,
    ) -> Result<Response<pb::DeleteAclResponse>, Status> {
        let (call, request) = self.calls.start(request, Rpc::DeleteAcl)?;
        call.authorize(CLUSTER)?;
        let acl = acl(request)?;
        if !self.security.authorizer.remove(&acl).await? {
            return Err(Status::not_found(
                "no such ACL: `appliance acl list` shows the ACLs in force",
            ));
        }
        tracing::info!(%acl, "ACL removed");
        call.note_change(&acl);
        Ok(Response::new(pb::DeleteAclResponse {}))
    }

    async fn set_quota(&self, request: Request<pb::Quota>) -> Result<Response<pb::Quota>, Status> {
        let (call, request) = self.calls.start(request, Rpc::SetQuota)?;
        call.authorize(CLUSTER)?;
        let quota = quota(request)?;
        let had = self.security.quotas.set(quota.clone()).await?;
        if quota.rates.is_empty() && !had {
            return Err(Status::not_found(format!(
                "{} has no quota to remove: `appliance quota list` shows the quotas in force",
                quota.principal
            )));
        }
        tracing::info!(%quota, "quota set");
        call.note_change(&quota);
        Ok(Response::new(quota_message(quota)))
    }

    async fn create_user(
        &self,
        request: Request<pb::SetPasswordRequest>,
    ) -> Result<Response<pb::User>, Status> {
        self.set_password(request, Rpc::CreateUser, PasswordChange::NewUser)
            .await
    }

    async fn change_password(
        &self,
        request: Request<pb::SetPasswordRequest>,
    ) -> Result<Response<pb::User>, Status> {
        self.set_password(request, Rpc::ChangePassword, PasswordChange::ExistingUser)
            .await
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let (call, _) = self.calls.start(request, Rpc::ListUsers)?;
        call.authorize(CLUSTER)?;
        Ok(Response::new(pb::ListUsersResponse {
            users: self
                .security
                .users
                .list()
                .into_iter()
                .map(user_message)
                .collect(),
        }))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let (call, request) = self.calls.start(request, Rpc::DeleteUser)?;
        call.authorize(CLUSTER)?;
        let principal = Principal::user(&request.name)?;
        let user = self.security.users.delete(&principal).await?;
        tracing::info!(principal = %user.principal, "user deleted");
        call.note_change(format_args!("user {}", user.principal));
        Ok(Response::new(user_message(user)))
    }

    async fn list_quotas(
        &self,
        request: Request<pb::ListQuotasRequest>,
    ) -> Result<Response<pb::ListQuotasResponse>, Status> {
        let (call, _) = self.calls.start(request, Rpc::ListQuotas)?;
        call.authorize(CLUSTER)?;
        Ok(Response::new(pb::ListQuotasResponse {
            quotas: self
                .security
                .quotas
                .list()
                .into_iter()
                .map(quota_message)
                .collect(),
        }))
    }
}
