//! The console's HTTP routes: the page and its assets, sign-in and sign-out, and a JSON API
//! the page calls, each handler one or more gRPC calls made with the session's token. A
//! gRPC refusal reaches the page as its HTTP status (401, 403, 404, 400) with the API's own
//! message, which the page shows where the data would have been.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use appliance_proto::v1 as pb;
use appliance_proto::v1::connectors_client::ConnectorsClient;
use appliance_proto::v1::links_client::LinksClient;
use appliance_proto::v1::pipelines_client::PipelinesClient;
use appliance_proto::v1::query_client::QueryClient;
use appliance_proto::v1::records_client::RecordsClient;
use appliance_proto::v1::system_client::SystemClient;
use appliance_proto::v1::topics_client::TopicsClient;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::Code;
use tonic::metadata::MetadataValue;

use super::history::{Kind, Rate};
use super::session::{Credentials, Session, SessionError};
use super::{Console, assets};
use crate::api::{CONSOLE_PEER_HEADER, Entry, Outcome};
use crate::log::Timestamp;
use crate::security::Principal;

/// The session cookie's name.
const COOKIE: &str = "appliance_console";
/// How often the overview is pushed to an open page.
const OVERVIEW_INTERVAL: Duration = Duration::from_secs(2);
/// The newest records a topic page shows at most.
const MAX_RECORDS: u64 = 100;
/// Bytes of a record's key or value shown; the rest is cut.
const SHOWN_BYTES: usize = 1024;
/// A query's text at most.
const MAX_SQL_BYTES: usize = 64 * 1024;
/// Every page's Content-Security-Policy: nothing inline, nothing from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

#[derive(Clone)]
struct Ctx {
    console: Console,
    peer: Option<SocketAddr>,
}

/// The routes, for one connection from `peer`.
pub fn router(console: Console, peer: Option<SocketAddr>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/assets/{name}", get(asset))
        .route("/api/session", get(session))
        .route("/api/sign-in", post(sign_in))
        .route("/api/sign-out", post(sign_out))
        .route("/api/overview", get(overview_once))
        .route("/api/overview/events", get(overview_events))
        .route("/api/topics/{name}", get(topic))
        .route("/api/topics/{name}/records", get(records))
        .route("/api/pipelines/{name}/{action}", post(pipeline_action))
        .route("/api/connectors/{name}/{action}", post(connector_action))
        .route("/api/query", post(query))
        .route("/api/query/follow", get(follow))
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(Ctx { console, peer })
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
        (
            "permissions-policy",
            "camera=(), microphone=(), geolocation=()",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// An answer that is not the data asked for: its status and the message the page shows.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<SessionError> for Refusal {
    fn from(error: SessionError) -> Self {
        let status = match error {
            SessionError::Csrf => StatusCode::FORBIDDEN,
            SessionError::TooLong => StatusCode::BAD_REQUEST,
            SessionError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            SessionError::Token(_) | SessionError::Password | SessionError::NoSession => {
                StatusCode::UNAUTHORIZED
            }
        };
        Self(status, error.to_string())
    }
}

impl From<tonic::Status> for Refusal {
    fn from(status: tonic::Status) -> Self {
        let code = match status.code() {
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                StatusCode::BAD_REQUEST
            }
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self(code, status.message().to_owned())
    }
}

type Answer = Result<Response, Refusal>;

async fn not_found() -> Refusal {
    Refusal(StatusCode::NOT_FOUND, "no such page".into())
}

async fn page() -> Response {
    assets::page()
}

async fn asset(Path(name): Path<String>) -> Response {
    assets::asset(&name)
        .unwrap_or_else(|| Refusal(StatusCode::NOT_FOUND, "no such asset".into()).into_response())
}

fn cookie_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

impl Ctx {
    fn session(&self, headers: &HeaderMap) -> Result<Session, Refusal> {
        let id = cookie_of(headers).ok_or(SessionError::NoSession)?;
        Ok(self.console.sessions.get(id)?)
    }

    /// The session of a change: its cookie, its CSRF token, and a request from this origin.
    fn session_for_change(&self, headers: &HeaderMap) -> Result<Session, Refusal> {
        same_origin(headers)?;
        let id = cookie_of(headers).ok_or(SessionError::NoSession)?;
        let csrf = headers
            .get("x-csrf-token")
            .and_then(|value| value.to_str().ok());
        Ok(self.console.sessions.get_for_change(id, csrf)?)
    }

    /// A gRPC request carrying the session's token and the browser's address (for audit).
    fn request<T>(&self, session: &Session, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        if let Ok(value) = MetadataValue::try_from(format!("Bearer {}", session.bearer)) {
            metadata.insert("authorization", value);
        }
        if let Some(peer) = self.peer
            && let Ok(value) = MetadataValue::try_from(peer.to_string())
        {
            metadata.insert(CONSOLE_PEER_HEADER, value);
        }
        request
    }
}

/// Refuses a change whose `Origin` (which browsers send on every POST) is another site's.
fn same_origin(headers: &HeaderMap) -> Result<(), Refusal> {
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok());
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok());
    let from_host = origin
        .and_then(|origin| origin.split_once("://"))
        .map(|(_, rest)| rest);
    match (host, origin) {
        (_, None) => Ok(()),
        (Some(host), Some(_)) if from_host == Some(host) => Ok(()),
        _ => Err(Refusal(
            StatusCode::FORBIDDEN,
            "a change must come from the console's own pages (the Origin header names another \
             site)"
                .into(),
        )),
    }
}

/// A JSON body; the console's own page always sends `content-type: application/json`, which
/// a form on another site cannot.
fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Refusal> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !json {
        return Err(Refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as application/json".into(),
        ));
    }
    serde_json::from_slice(body).map_err(|error| {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!("the body is not what was expected: {error}"),
        )
    })
}

async fn session(State(ctx): State<Ctx>, headers: HeaderMap) -> Answer {
    let session = ctx.session(&headers)?;
    Ok(axum::Json(json!({
        "principal": session.principal.to_string(),
        "csrf": session.csrf,
        "role": if ctx.console.hub { "hub" } else { "edge" },
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response())
}

async fn sign_in(State(ctx): State<Ctx>, headers: HeaderMap, body: axum::body::Bytes) -> Answer {
    same_origin(&headers)?;
    let credentials: Credentials = json_body(&headers, &body)?;
    let (id, session) = match ctx.console.sessions.sign_in(credentials).await {
        Ok(signed_in) => signed_in,
        Err(error) => {
            tracing::info!(peer = ?ctx.peer, %error, "refused a console sign-in");
            ctx.console
                .audit_sign_in(
                    ctx.peer,
                    None,
                    Outcome::Unauthenticated,
                    Some(error.to_string()),
                )
                .await;
            return Err(error.into());
        }
    };
    ctx.console
        .audit_sign_in(ctx.peer, Some(&session.principal), Outcome::Done, None)
        .await;
    let secure = if ctx.console.tls { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{secure}");
    let mut response = axum::Json(json!({
        "principal": session.principal.to_string(),
        "csrf": session.csrf,
    }))
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

async fn sign_out(State(ctx): State<Ctx>, headers: HeaderMap) -> Answer {
    ctx.session_for_change(&headers)?;
    if let Some(id) = cookie_of(&headers) {
        ctx.console.sessions.sign_out(id).await;
    }
    let mut response = axum::Json(json!({ "signed_out": true })).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "appliance_console=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(response)
}

/// The parts of an overview the principal was denied, with the refusal shown in their place:
/// a page's stream asks for them once, not every push, so an open page does not fill the
/// audit topic with the same denial.
type Denied = HashMap<&'static str, Value>;

/// Asks for part `name` of the overview unless it was denied before.
async fn ask<T>(
    denied: &Denied,
    name: &'static str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Option<Result<tonic::Response<T>, tonic::Status>> {
    match denied.contains_key(name) {
        true => None,
        false => Some(call.await),
    }
}

/// A part of the overview: its data, or the API's refusal shown in its place.
fn part<T>(
    denied: &mut Denied,
    name: &'static str,
    answer: Option<Result<tonic::Response<T>, tonic::Status>>,
    to_json: impl FnOnce(T) -> Value,
) -> Value {
    match answer {
        None => denied.get(name).cloned().unwrap_or(Value::Null),
        Some(Ok(response)) => to_json(response.into_inner()),
        Some(Err(status)) => {
            let refusal =
                json!({ "error": status.message(), "code": format!("{:?}", status.code()) });
            if status.code() == Code::PermissionDenied {
                denied.insert(name, refusal.clone());
            }
            refusal
        }
    }
}

fn state_name(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

fn rates_json(rates: Vec<Rate>) -> Value {
    Value::Array(
        rates
            .into_iter()
            .map(|rate| json!([rate.unix_ms, rate.per_second]))
            .collect(),
    )
}

impl Console {
    /// The overview of what `session` may see: the same data as `appliance status`, the
    /// hub's edges and each component with its state, failure and throughput.
    async fn overview(&self, ctx: &Ctx, session: &Session, denied: &mut Denied) -> Value {
        let channel = self.api.clone();
        let mut system_client = SystemClient::new(channel.clone());
        let mut edges_client = LinksClient::new(channel.clone());
        let mut topics_client = TopicsClient::new(channel.clone());
        let mut links_client = LinksClient::new(channel.clone());
        let mut pipelines_client = PipelinesClient::new(channel.clone());
        let mut connectors_client = ConnectorsClient::new(channel);
        let asked = &*denied;
        let (system, edges, topics, links, pipelines, connectors) = tokio::join!(
            ask(
                asked,
                "system",
                system_client
                    .get_system_status(ctx.request(session, pb::GetSystemStatusRequest {}))
            ),
            // Only a hub has edges.
            ask(asked, "edges", async {
                match self.hub {
                    true => {
                        edges_client
                            .list_edges(ctx.request(session, pb::ListEdgesRequest {}))
                            .await
                    }
                    false => Ok(tonic::Response::new(pb::ListEdgesResponse::default())),
                }
            }),
            ask(
                asked,
                "topics",
                topics_client.list_topics(ctx.request(session, pb::ListTopicsRequest {}))
            ),
            ask(
                asked,
                "links",
                links_client.list_links(ctx.request(session, pb::ListLinksRequest {}))
            ),
            ask(
                asked,
                "pipelines",
                pipelines_client.list_pipelines(ctx.request(session, pb::ListPipelinesRequest {}))
            ),
            ask(
                asked,
                "connectors",
                connectors_client
                    .list_connectors(ctx.request(session, pb::ListConnectorsRequest {}))
            ),
        );
        let edges = part(denied, "edges", edges, |edges| {
            Value::Array(
                edges
                    .edges
                    .into_iter()
                    .map(|edge| self.edge_json(edge))
                    .collect(),
            )
        });
        let system = part(denied, "system", system, |status| {
            json!({
                "role": status.role,
                "version": status.version,
                "uptime_ms": status.uptime_ms,
                "disk_used_bytes": status.disk_used_bytes,
                "disk_budget_bytes": status.disk_budget_bytes,
                "disk_free_bytes": status.disk_free_bytes,
                "disk_budget_policy": status.disk_budget_policy,
            })
        });
        let topics = part(denied, "topics", topics, |topics| {
            Value::Array(topics.topics.into_iter().map(topic_json).collect())
        });
        let links = part(denied, "links", links, |links| {
            Value::Array(links.links.into_iter().map(link_json).collect())
        });
        let pipelines = part(denied, "pipelines", pipelines, |pipelines| {
            Value::Array(
                pipelines
                    .pipelines
                    .into_iter()
                    .map(|pipeline| self.pipeline_json(pipeline))
                    .collect(),
            )
        });
        let connectors = part(denied, "connectors", connectors, |connectors| {
            Value::Array(
                connectors
                    .connectors
                    .into_iter()
                    .map(|connector| self.connector_json(connector))
                    .collect(),
            )
        });
        json!({
            "principal": session.principal.to_string(),
            "hub": self.hub,
            "system": system,
            "edges": if self.hub { edges } else { Value::Null },
            "topics": topics,
            "links": links,
            "pipelines": pipelines,
            "connectors": connectors,
        })
    }

    fn edge_json(&self, edge: pb::Edge) -> Value {
        let lag_seconds = edge
            .partitions
            .iter()
            .map(|mirror| mirror.lag_seconds)
            .fold(0.0, f64::max);
        let bytes_per_second: f64 = edge
            .partitions
            .iter()
            .map(|mirror| mirror.bytes_per_second)
            .sum();
        let last_error = edge
            .partitions
            .iter()
            .map(|mirror| mirror.last_error.as_str())
            .find(|error| !error.is_empty())
            .unwrap_or_default();
        json!({
            "edge": edge.edge_id,
            "connected": edge.connected,
            "address": edge.address,
            "last_seen_ms": edge.last_seen_ms,
            "lag_records": edge.lag_records,
            "lag_seconds": lag_seconds,
            "bytes_per_second": bytes_per_second,
            "mirrors": edge.partitions.len(),
            "last_error": last_error,
            "rates": rates_json(self.history.rates(Kind::Edge, &edge.edge_id)),
        })
    }

    fn pipeline_json(&self, pipeline: pb::Pipeline) -> Value {
        let states: Vec<String> = pipeline
            .partitions
            .iter()
            .map(|partition| state_name(partition.state().as_str_name(), "PIPELINE_STATE_"))
            .collect();
        let tasks: Vec<Value> = pipeline
            .partitions
            .iter()
            .zip(&states)
            .map(|(partition, state)| {
                json!({
                    "task": format!("partition {}", partition.partition),
                    "state": state,
                    "restarting": partition.restarting,
                    "failure": partition.failure,
                    "records_out": partition.records_out,
                    "lag": partition.lag,
                })
            })
            .collect();
        let state = summary(pipeline.paused, &states);
        json!({
            "name": pipeline.name,
            "from": pipeline.from_topic,
            "to": pipeline.to_topic,
            "paused": pipeline.paused,
            "state": state,
            "tasks": tasks,
            "rates": rates_json(self.history.rates(Kind::Pipeline, &pipeline.name)),
        })
    }

    fn connector_json(&self, connector: pb::Connector) -> Value {
        let tasks: Vec<Value> = connector
            .tasks
            .iter()
            .map(|task| {
                json!({
                    "task": format!("task {}", task.task),
                    "state": state_name(task.state().as_str_name(), "CONNECTOR_STATE_"),
                    "restarting": task.restarting,
                    "failure": task.failure,
                    "records_out": task.records_out,
                })
            })
            .collect();
        json!({
            "name": connector.name,
            "plugin": connector.plugin,
            "kind": state_name(connector.kind().as_str_name(), "CONNECTOR_KIND_"),
            "topic": connector.topic,
            "paused": connector.paused,
            "state": state_name(connector.state().as_str_name(), "CONNECTOR_STATE_"),
            "failure": connector.failure,
            "tasks": tasks,
            "rates": rates_json(self.history.rates(Kind::Connector, &connector.name)),
        })
    }

    /// The audit record of a sign-in: a refused one (at most as many a second as refused
    /// API calls), or one that made a session token.
    async fn audit_sign_in(
        &self,
        peer: Option<SocketAddr>,
        principal: Option<&Principal>,
        outcome: Outcome,
        reason: Option<String>,
    ) {
        if outcome == Outcome::Unauthenticated && !self.audit.admits_unauthenticated() {
            return;
        }
        let entry = Entry {
            time_unix_ms: Timestamp::now().0,
            principal: principal.map(ToString::to_string),
            source: peer.map(|peer| peer.to_string()),
            method: "ConsoleSignIn".to_owned(),
            resource_type: None,
            resource: None,
            operation: None,
            result: outcome,
            detail: None,
            reason,
        };
        if let Err(error) = self.audit.append(&entry).await {
            tracing::warn!(%error, "cannot write an audit record");
        }
    }
}

/// One word for a component of many tasks: paused, failed (any task), starting (any task,
/// or no task yet), running.
fn summary(paused: bool, states: &[String]) -> String {
    if paused {
        return "paused".into();
    }
    for worst in ["failed", "starting"] {
        if states.iter().any(|state| state == worst) {
            return worst.into();
        }
    }
    if states.is_empty() {
        "starting".into()
    } else {
        "running".into()
    }
}

fn topic_json(topic: pb::Topic) -> Value {
    let size_bytes: u64 = topic.partitions.iter().map(|p| p.size_bytes).sum();
    let records: u64 = topic
        .partitions
        .iter()
        .map(|p| p.high_watermark.saturating_sub(p.log_start_offset))
        .sum();
    let config = topic.config.unwrap_or_default();
    json!({
        "name": topic.name,
        "mirror_of": topic.mirror_of,
        "partitions": topic.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "log_start_offset": p.log_start_offset,
            "high_watermark": p.high_watermark,
            "size_bytes": p.size_bytes,
            "segments": p.segments,
            "error": p.error,
        })).collect::<Vec<_>>(),
        "size_bytes": size_bytes,
        "records": records,
        "retention_ms": config.retention_ms,
        "retention_bytes": config.retention_bytes,
    })
}

fn link_json(link: pb::Link) -> Value {
    let lag_records: u64 = link.partitions.iter().map(|p| p.lag_records).sum();
    let lag_seconds = link
        .partitions
        .iter()
        .map(|p| p.lag_seconds)
        .fold(0.0, f64::max);
    json!({
        "name": link.name,
        "hub": link.hub,
        "state": state_name(link.state().as_str_name(), "LINK_STATE_"),
        "last_error": link.last_error,
        "lag_records": lag_records,
        "lag_seconds": lag_seconds,
        "connected_seconds": link.connected_seconds,
    })
}

async fn overview_once(State(ctx): State<Ctx>, headers: HeaderMap) -> Answer {
    let session = ctx.session(&headers)?;
    let overview = ctx
        .console
        .overview(&ctx, &session, &mut Denied::new())
        .await;
    Ok(axum::Json(overview).into_response())
}

/// The overview, pushed every [`OVERVIEW_INTERVAL`] while the page is open and the session
/// lasts; a page reconnects (`EventSource` does) after the console restarts.
async fn overview_events(State(ctx): State<Ctx>, headers: HeaderMap) -> Answer {
    let session = ctx.session(&headers)?;
    let id = cookie_of(&headers).unwrap_or_default().to_owned();
    let shutdown = ctx.console.shutdown.clone();
    let start = (ctx, session, id, Denied::new(), true);
    let events =
        futures_util::stream::unfold(start, |(ctx, session, id, mut denied, first)| async move {
            if !first {
                tokio::time::sleep(OVERVIEW_INTERVAL).await;
            }
            // A signed-out or revoked session's stream ends.
            ctx.console.sessions.get(&id).ok()?;
            let overview = ctx.console.overview(&ctx, &session, &mut denied).await;
            let event = Event::default()
                .event("overview")
                .data(overview.to_string());
            Some((
                Ok::<_, Infallible>(event),
                (ctx, session, id, denied, false),
            ))
        })
        .take_until(shutdown.cancelled_owned());
    Ok(sse(events))
}

fn sse(events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn topic(State(ctx): State<Ctx>, headers: HeaderMap, Path(name): Path<String>) -> Answer {
    let session = ctx.session(&headers)?;
    let topic = TopicsClient::new(ctx.console.api.clone())
        .get_topic(ctx.request(&session, pb::GetTopicRequest { name }))
        .await?
        .into_inner();
    Ok(axum::Json(topic_json(topic)).into_response())
}

#[derive(Debug, Deserialize)]
struct RecordsParams {
    partition: u32,
    #[serde(default = "default_limit")]
    limit: u64,
}

fn default_limit() -> u64 {
    20
}

/// The newest `limit` records of a partition, newest first.
async fn records(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(params): Query<RecordsParams>,
) -> Answer {
    let session = ctx.session(&headers)?;
    let limit = params.limit.clamp(1, MAX_RECORDS);
    let topic = TopicsClient::new(ctx.console.api.clone())
        .get_topic(ctx.request(&session, pb::GetTopicRequest { name: name.clone() }))
        .await?
        .into_inner();
    let partition = topic
        .partitions
        .iter()
        .find(|p| p.partition == params.partition)
        .ok_or_else(|| {
            Refusal(
                StatusCode::NOT_FOUND,
                format!("topic {name} has no partition {}", params.partition),
            )
        })?;
    let from = partition
        .high_watermark
        .saturating_sub(limit)
        .max(partition.log_start_offset);
    let mut shown = Vec::new();
    let mut offset = from;
    let mut records = RecordsClient::new(ctx.console.api.clone());
    while offset < partition.high_watermark {
        let fetched = records
            .fetch(ctx.request(
                &session,
                pb::FetchRequest {
                    topic: name.clone(),
                    partition: params.partition,
                    offset,
                    max_bytes: 1024 * 1024,
                    max_wait_ms: 0,
                },
            ))
            .await?
            .into_inner();
        if fetched.records.is_empty() || fetched.next_offset <= offset {
            break;
        }
        offset = fetched.next_offset;
        shown.extend(
            fetched
                .records
                .into_iter()
                .filter(|record| record.offset >= from),
        );
    }
    shown.truncate(limit as usize);
    shown.reverse();
    let records: Vec<Value> = shown
        .into_iter()
        .map(|record| {
            json!({
                "offset": record.offset,
                "timestamp_ms": record.timestamp_ms,
                "key": record.key.as_deref().map(shown_text),
                "value": record.value.as_deref().map(shown_text),
                "headers": record.headers.iter().map(|h| json!([h.key, h.value.as_deref().map(shown_text)])).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(
        axum::Json(json!({ "topic": name, "partition": params.partition, "records": records }))
            .into_response(),
    )
}

/// Bytes as text for a page: UTF-8 (invalid sequences replaced), cut at [`SHOWN_BYTES`].
fn shown_text(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(SHOWN_BYTES)];
    let mut text = String::from_utf8_lossy(cut).into_owned();
    if bytes.len() > SHOWN_BYTES {
        text.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    text
}

async fn pipeline_action(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Answer {
    let session = ctx.session_for_change(&headers)?;
    let mut client = PipelinesClient::new(ctx.console.api.clone());
    let pipeline = match action.as_str() {
        "pause" => {
            client
                .pause_pipeline(ctx.request(&session, pb::PausePipelineRequest { name }))
                .await?
        }
        "resume" => {
            client
                .resume_pipeline(ctx.request(&session, pb::ResumePipelineRequest { name }))
                .await?
        }
        other => return Err(unknown_action(other, "pause, resume")),
    };
    Ok(axum::Json(ctx.console.pipeline_json(pipeline.into_inner())).into_response())
}

async fn connector_action(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Answer {
    let session = ctx.session_for_change(&headers)?;
    let mut client = ConnectorsClient::new(ctx.console.api.clone());
    let connector = match action.as_str() {
        "pause" => {
            client
                .pause_connector(ctx.request(&session, pb::PauseConnectorRequest { name }))
                .await?
        }
        "resume" => {
            client
                .resume_connector(ctx.request(&session, pb::ResumeConnectorRequest { name }))
                .await?
        }
        "restart" => {
            client
                .restart_connector(ctx.request(&session, pb::RestartConnectorRequest { name }))
                .await?
        }
        other => return Err(unknown_action(other, "pause, resume, restart")),
    };
    Ok(axum::Json(ctx.console.connector_json(connector.into_inner())).into_response())
}

fn unknown_action(action: &str, known: &str) -> Refusal {
    Refusal(
        StatusCode::NOT_FOUND,
        format!("no action {action:?} here (known: {known})"),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sql {
    sql: String,
}

fn checked_sql(sql: String) -> Result<String, Refusal> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!("the query is longer than {MAX_SQL_BYTES} bytes"),
        ));
    }
    Ok(sql)
}

fn answer_json(answer: pb::ExecuteResponse) -> Value {
    let rows: Value = serde_json::from_str(&answer.json).unwrap_or(Value::Array(Vec::new()));
    json!({
        "columns": answer.columns.iter().map(|c| json!({ "name": c.name, "type": c.r#type })).collect::<Vec<_>>(),
        "rows": rows,
        "row_count": answer.rows,
    })
}

/// A query is a POST: its text may be long, and it is the principal's read, audited by the
/// API as any query.
async fn query(State(ctx): State<Ctx>, headers: HeaderMap, body: axum::body::Bytes) -> Answer {
    let session = ctx.session_for_change(&headers)?;
    let Sql { sql } = json_body(&headers, &body)?;
    let answer = QueryClient::new(ctx.console.api.clone())
        .execute(ctx.request(
            &session,
            pb::ExecuteRequest {
                sql: checked_sql(sql)?,
                format: pb::AnswerFormat::Json as i32,
            },
        ))
        .await?
        .into_inner();
    Ok(axum::Json(answer_json(answer)).into_response())
}

/// A followed query's answers as they change, pushed to the page.
async fn follow(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    let session = ctx.session(&headers)?;
    let sql = params
        .get("sql")
        .cloned()
        .ok_or_else(|| Refusal(StatusCode::BAD_REQUEST, "give the query as ?sql=".into()))?;
    let answers = QueryClient::new(ctx.console.api.clone())
        .follow(ctx.request(
            &session,
            pb::ExecuteRequest {
                sql: checked_sql(sql)?,
                format: pb::AnswerFormat::Json as i32,
            },
        ))
        .await?
        .into_inner();
    let events = answers
        .map(|answer| {
            let event = match answer {
                Ok(answer) => Event::default()
                    .event("answer")
                    .data(answer_json(answer).to_string()),
                Err(status) => Event::default()
                    .event("refused")
                    .data(json!({ "error": status.message() }).to_string()),
            };
            Ok::<_, Infallible>(event)
        })
        .take_until(ctx.console.shutdown.clone().cancelled_owned());
    Ok(sse(events))
}
