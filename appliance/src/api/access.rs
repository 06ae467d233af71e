//! Who may call what: every request's bearer token is authenticated by an interceptor in
//! front of every service but health; each method then starts a [`Call`], which times it and
//! asks `security/` (its table of what each method needs) before the method does anything.

use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};

use super::metrics::{Metrics, Timer};
use crate::security::{
    Authorizer, Denial, Operation, Principal, ResourceType, Rpc, Security, TokenRefusal, Tokens,
};

/// The interceptor that finds a request's principal: its `authorization: Bearer TOKEN`, else
/// the client certificate it came with over TLS.
#[derive(Debug, Clone)]
pub struct Authenticate {
    pub security: Security,
}

impl Authenticate {
    fn principal(&self, request: &Request<()>) -> Result<Principal, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok());
        if header.is_none()
            && let Some(certificate) = request.peer_certs().and_then(|c| c.first().cloned())
        {
            return self
                .security
                .client_principals
                .principal(&certificate)
                .map_err(|error| Status::unauthenticated(error.to_string()));
        }
        bearer(&self.security.tokens, header)
    }

    /// `service`, behind this interceptor.
    pub fn guard<S>(&self, service: S) -> InterceptedService<S, Self> {
        InterceptedService::new(service, self.clone())
    }
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match self.principal(&request) {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                Ok(request)
            }
            Err(status) => {
                tracing::info!(
                    peer = ?request.remote_addr(),
                    reason = status.message(),
                    "refused an unauthenticated gRPC request"
                );
                Err(status)
            }
        }
    }
}

/// The principal of an `authorization` header's value, or why there is none. Shared by the
/// gRPC API and the metrics endpoint.
pub fn bearer(tokens: &Tokens, header: Option<&str>) -> Result<Principal, Status> {
    let Some(header) = header else {
        return Err(Status::unauthenticated(
            "no credentials: send `authorization: Bearer TOKEN` (the CLI takes --token, \
             APPLIANCE_TOKEN or <data-dir>/admin.token; `appliance token create` makes tokens)",
        ));
    };
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(|| Status::unauthenticated("the authorization header is not `Bearer TOKEN`"))?;
    tokens
        .authenticate(token.trim())
        .map_err(|refusal: TokenRefusal| Status::unauthenticated(refusal.to_string()))
}

/// What every service holds to start its calls.
#[derive(Debug, Clone)]
pub struct Calls {
    metrics: Metrics,
    authorizer: Authorizer,
}

impl Calls {
    pub fn new(metrics: Metrics, authorizer: Authorizer) -> Self {
        Self {
            metrics,
            authorizer,
        }
    }

    /// Starts a call of `rpc`: its caller, timed until the call is dropped, and its message.
    pub fn start<T>(&self, request: Request<T>, rpc: Rpc) -> Result<(Call, T), Status> {
        let principal = request
            .extensions()
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("the request was not authenticated"))?;
        let call = Call {
            principal,
            rpc,
            authorizer: self.authorizer.clone(),
            _timer: self.metrics.time(rpc),
        };
        Ok((call, request.into_inner()))
    }
}

/// One call in progress, by one principal.
#[derive(Debug)]
pub struct Call {
    principal: Principal,
    rpc: Rpc,
    authorizer: Authorizer,
    _timer: Timer,
}

impl Call {
    /// Checks what the method needs (`security::Rpc::requirement`) on the resource `name`.
    pub fn authorize(&self, name: &str) -> Result<(), Status> {
        let requirement = self.rpc.requirement();
        self.authorize_on(requirement.resource_type, name, requirement.operation)
    }

    /// Checks a further need of the method: the topics a pipeline reads, say.
    pub fn authorize_on(
        &self,
        resource_type: ResourceType,
        name: &str,
        operation: Operation,
    ) -> Result<(), Status> {
        self.authorizer
            .authorize(&self.principal, resource_type, name, operation)
            .map_err(|denial| self.denied(resource_type, name, operation, &denial))
    }

    /// Whether the caller may see the resource `name` of the method's type (what list
    /// methods return).
    pub fn may_describe(&self, name: &str) -> bool {
        let resource_type = self.rpc.requirement().resource_type;
        self.authorizer
            .authorize(&self.principal, resource_type, name, Operation::Describe)
            .is_ok()
    }

    fn denied(
        &self,
        resource_type: ResourceType,
        name: &str,
        operation: Operation,
        denial: &Denial,
    ) -> Status {
        let what = format!(
            "{} may not {operation} {resource_type} {name:?}",
            self.principal
        );
        tracing::info!(rpc = ?self.rpc, %what, "denied a request");
        let grant = match resource_type {
            ResourceType::Cluster => "--cluster".to_owned(),
            other => format!("--{other} {name}"),
        };
        let message = match denial {
            Denial::NoAcl => format!(
                "{what}: no ACL allows it; a super-user can grant it with `appliance acl add \
                 --principal {} {grant} --operation {operation}`",
                self.principal
            ),
            Denial::DeniedBy(acl) => format!(
                "{what}: an ACL denies it ({} {} {} {:?} for {})",
                acl.operation, acl.resource_type, acl.pattern_type, acl.pattern, acl.grantee
            ),
        };
        Status::permission_denied(message)
    }
}
