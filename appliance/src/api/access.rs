//! Who may call what, and how fast: a [`Guard`] in front of every service but health
//! authenticates each request (bearer token or client certificate) and paces it by its
//! principal's request quota; each method then starts a [`Call`], which times it and asks
//! `security/` (its table of what each method needs) before the method does anything, and
//! whose [`Throttle`] paces the bytes it produces or fetches. The guard writes the audit
//! record (`audit.rs`) of a failed authentication, a denial or a change once the method
//! answered.

use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::BoxFuture;
use rustls::pki_types::CertificateDer;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Request, Status};
use tower::Service;

use super::audit::{self, AUDIT_TOPIC, Audit, Note, Outcome};
use super::local::{CONSOLE_PEER_HEADER, LocalConnectInfo};

use super::metrics::{Metrics, Timer};
use crate::security::{
    Authorizer, Denial, Operation, Principal, Quotas, ResourceType, Rpc, Security, TokenRefusal,
    Tokens, Usage,
};

/// What every service is wrapped in: finds the request's principal (its `authorization:
/// Bearer TOKEN`, else the client certificate it came with over TLS) or answers
/// UNAUTHENTICATED, and writes the audit record of what happened once the method answered.
#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
    guards: Guards,
}

/// Makes guards.
#[derive(Debug, Clone)]
pub struct Guards {
    pub security: Security,
    pub audit: Audit,
    pub metrics: Metrics,
}

impl Guards {
    /// `service`, behind a guard.
    pub fn guard<S>(&self, service: S) -> Guard<S> {
        Guard {
            inner: service,
            guards: self.clone(),
        }
    }
}

/// Paces one principal's use by its quotas, and counts it.
#[derive(Debug, Clone)]
pub struct Throttle {
    principal: Principal,
    quotas: Quotas,
    metrics: Metrics,
}

impl Throttle {
    /// Counts `amount` of `usage` and waits as long as the principal's quota says.
    pub async fn charge(&self, usage: Usage, amount: u64) {
        let wait = self
            .quotas
            .charge(&self.principal, usage, amount, Instant::now());
        self.metrics.used(&self.principal, usage, amount, wait);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

impl<S: NamedService> NamedService for Guard<S> {
    const NAME: &'static str = S::NAME;
}

/// The address and the client certificates of a request's connection.
/// A local connection's call (the console's) names the browser it is for in a header, which
/// nothing outside the process can send on such a connection.
fn peer<B>(request: &http::Request<B>) -> (Option<SocketAddr>, Option<CertificateDer<'static>>) {
    let extensions = request.extensions();
    if extensions.get::<LocalConnectInfo>().is_some() {
        let browser = request
            .headers()
            .get(CONSOLE_PEER_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        return (browser, None);
    }
    if let Some(tls) = extensions.get::<TlsConnectInfo<TcpConnectInfo>>() {
        let certificate = tls.peer_certs().and_then(|certs| certs.first().cloned());
        return (tls.get_ref().remote_addr(), certificate);
    }
    let addr = extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr);
    (addr, None)
}

impl<S> Guard<S> {
    fn principal<B>(
        &self,
        request: &http::Request<B>,
        certificate: Option<CertificateDer<'static>>,
    ) -> Result<Principal, Status> {
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        if header.is_none()
            && let Some(certificate) = certificate
        {
            return self
                .guards
                .security
                .client_principals
                .principal(&certificate)
                .map_err(|error| Status::unauthenticated(error.to_string()));
        }
        bearer(&self.guards.security.tokens, header)
    }
}

impl<S, B> Service<http::Request<B>> for Guard<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was made ready is the one to call (tower's rule for cloned services).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path().to_owned();
        let rpc = path.rsplit('/').next().and_then(Rpc::from_method);
        let (source, certificate) = peer(&request);
        let principal = self.principal(&request, certificate);
        let guards = self.guards.clone();
        Box::pin(async move {
            let principal = match principal {
                Ok(principal) => principal,
                Err(status) => {
                    let reason = status.message().to_owned();
                    tracing::info!(?source, %reason, "refused an unauthenticated gRPC request");
                    if guards.audit.admits_unauthenticated() {
                        let entry = audit::entry(
                            &path,
                            rpc,
                            None,
                            source,
                            None,
                            Outcome::Unauthenticated,
                            Some(reason),
                        );
                        if let Err(error) = guards.audit.append(&entry).await {
                            tracing::warn!(%error, "cannot write an audit record");
                        }
                    }
                    return Ok(status.into_http());
                }
            };
            let throttle = Throttle {
                principal: principal.clone(),
                quotas: guards.security.quotas.clone(),
                metrics: guards.metrics.clone(),
            };
            throttle.charge(Usage::Requests, 1).await;
            let note = Note::default();
            request.extensions_mut().insert(throttle);
            request.extensions_mut().insert(note.clone());
            let response = inner.call(request).await?;
            // A unary call's failure (and any refusal before a stream) is in the headers.
            let failed = Status::from_header_map(response.headers());
            let (outcome, reason) = match failed.as_ref().map_or(Code::Ok, Status::code) {
                Code::PermissionDenied => (
                    Outcome::Denied,
                    failed.map(|status| status.message().to_owned()),
                ),
                Code::Ok if rpc.is_some_and(Rpc::changes) => (Outcome::Done, None),
                _ => return Ok(response),
            };
            let entry = audit::entry(
                &path,
                rpc,
                Some(&principal),
                source,
                Some(&note),
                outcome,
                reason,
            );
            match guards.audit.append(&entry).await {
                Ok(()) => Ok(response),
                Err(error) if outcome == Outcome::Done => {
                    let unacknowledged = format!(
                        "the change was made, but its audit record could not be written, so it \
                         is not acknowledged: {error}"
                    );
                    let status = if error.is_disk_full() {
                        Status::resource_exhausted(format!(
                            "{unacknowledged}: the data directory's disk is full; delete topics \
                             or lower their retention to make room"
                        ))
                    } else {
                        Status::internal(unacknowledged)
                    };
                    Ok(status.into_http())
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot write an audit record");
                    Ok(response)
                }
            }
        })
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
        let throttle = request
            .extensions()
            .get::<Throttle>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("the request was not authenticated"))?;
        let note = request
            .extensions()
            .get::<Note>()
            .cloned()
            .unwrap_or_default();
        let call = Call {
            throttle,
            rpc,
            note,
            authorizer: self.authorizer.clone(),
            _timer: self.metrics.time(rpc),
        };
        Ok((call, request.into_inner()))
    }
}

/// One call in progress, by one principal.
#[derive(Debug)]
pub struct Call {
    /// The caller, and its quotas.
    throttle: Throttle,
    rpc: Rpc,
    /// Where the guard learns which resource the call was about.
    note: Note,
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
        if resource_type == ResourceType::Topic
            && name == AUDIT_TOPIC
            && matches!(operation, Operation::Write | Operation::Delete)
        {
            self.note.resource(resource_type, name, operation, true);
            return Err(Status::permission_denied(format!(
                "the audit topic {AUDIT_TOPIC:?} is written only by the appliance and deleted by \
                 no one; its retention (`Topics.UpdateTopicConfig`) says how long it keeps \
                 records"
            )));
        }
        let decision =
            self.authorizer
                .authorize(&self.throttle.principal, resource_type, name, operation);
        self.note
            .resource(resource_type, name, operation, decision.is_err());
        decision.map_err(|denial| self.denied(resource_type, name, operation, &denial))
    }

    /// What paces the caller's produce and fetch bytes.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    /// Tells the audit record what the call changed, when its resource does not say.
    pub fn note_change(&self, detail: impl std::fmt::Display) {
        self.note.detail(detail.to_string());
    }

    /// Whether the caller may see the resource `name` of the method's type (what list
    /// methods return).
    pub fn may_describe(&self, name: &str) -> bool {
        let resource_type = self.rpc.requirement().resource_type;
        self.authorizer
            .authorize(
                &self.throttle.principal,
                resource_type,
                name,
                Operation::Describe,
            )
            .is_ok()
    }

    fn denied(
        &self,
        resource_type: ResourceType,
        name: &str,
        operation: Operation,
        denial: &Denial,
    ) -> Status {
        let message = denial.explain(&self.throttle.principal, resource_type, name, operation);
        tracing::info!(rpc = ?self.rpc, %message, "denied a request");
        Status::permission_denied(message)
    }
}
