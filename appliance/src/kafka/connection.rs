//! One client connection: reads size-prefixed frames (bounded before anything is allocated
//! for them), decodes the header and the body of APIs in the version table, runs SASL until
//! the client is authenticated, dispatches to the handlers and writes each answer in the
//! order of the requests, as Kafka clients expect.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
    api_versions_response::ApiVersion,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Broker;
use super::error::KafkaError;
use super::handlers::{self, Answer, Caller, Reply};
use super::sasl::{MECHANISMS, Sasl, Step};
use super::versions::{self, SUPPORTED};
use crate::api::{Entry, Outcome};
use crate::log::Timestamp;
use crate::security::random;

/// The most bytes a client may send before it authenticated: enough for ApiVersions and a
/// SASL exchange, too little to make an anonymous peer cost memory.
const MAX_UNAUTHENTICATED_REQUEST: usize = 64 * 1024;
/// Answers a connection may have waiting to be written: Produce requests queued on the log
/// ahead of their answers, each at most `kafka.max-request-bytes`.
const MAX_IN_FLIGHT: usize = 8;
/// The most a frame's buffer holds before its bytes arrive.
const FIRST_FRAME_ALLOCATION: usize = 256 * 1024;
/// A request must arrive whole within this, once its size arrived.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one connection until the peer closes it, breaks the protocol, or `shutdown`.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    broker: Broker,
    shutdown: CancellationToken,
) {
    let mut connection = Connection {
        broker,
        sasl: Sasl::Start,
        peer,
        local,
    };
    let (mut reader, mut writer) = tokio::io::split(stream);
    let ended = tokio::select! {
        ended = connection.run(&mut reader, &mut writer) => ended,
        () = shutdown.cancelled() => Ok(()),
    };
    if let Err(error) = ended {
        let principal = connection.sasl.principal().map(ToString::to_string);
        match error {
            KafkaError::Io(_) => tracing::debug!(%peer, %error, "Kafka connection ended"),
            _ => tracing::warn!(%peer, principal, %error, "Kafka connection closed"),
        }
    }
    let _ = writer.shutdown().await;
}

struct Connection {
    broker: Broker,
    sasl: Sasl,
    peer: SocketAddr,
    /// The address the client reached: what Metadata advertises unless configured.
    local: SocketAddr,
}

impl Connection {
    /// Reads requests and writes their answers in the same order. A Produce's answer waits
    /// for its batches to be durable while the next requests are read and queued, so a
    /// producer's batches share fsyncs; at most `MAX_IN_FLIGHT` answers wait.
    async fn run<R, W>(&mut self, reader: &mut R, writer: &mut W) -> Result<(), KafkaError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (replies, mut queued) = mpsc::channel::<Reply>(MAX_IN_FLIGHT);
        let write = async move {
            while let Some(reply) = queued.recv().await {
                if let Some(frame) = reply.frame().await? {
                    writer.write_all(&frame).await?;
                }
            }
            Ok::<(), KafkaError>(())
        };
        let read = async move {
            loop {
                let limit = if self.sasl.principal().is_some() {
                    self.broker.settings.max_request_bytes
                } else {
                    MAX_UNAUTHENTICATED_REQUEST
                };
                // Only between requests does the reader stop for the writer's sake: a request
                // once read is carried through (an idempotent producer's sequence, an audit
                // record), whatever became of the answers before it.
                let frame = tokio::select! {
                    frame = read_frame(reader, limit) => frame?,
                    () = replies.closed() => return Ok(()),
                };
                let Some(frame) = frame else {
                    return Ok(());
                };
                let api = ApiKey::try_from(i16::from_be_bytes([frame[0], frame[1]]))
                    .map_or("an unknown API", api_name);
                let answer = match self.request(frame).await {
                    Ok(answer) => answer,
                    Err(error) => {
                        self.broker.metrics.kafka_error(api, true);
                        return Err(error);
                    }
                };
                let throttle = answer.throttle;
                if replies.send(answer.reply()).await.is_err() {
                    // The writer stopped; its error ends the connection.
                    return Ok(());
                }
                // As Kafka mutes a throttled client's channel: its next request waits.
                if !throttle.is_zero() {
                    tokio::time::sleep(throttle).await;
                }
            }
        };
        let (read, write) = tokio::join!(read, write);
        write.and(read)
    }

    /// One request: its answer (none for a Produce with acks=0), and how long the client must
    /// wait before the next one is read.
    async fn request(&mut self, mut frame: Bytes) -> Result<Answer, KafkaError> {
        let key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let api = ApiKey::try_from(key).map_err(|()| KafkaError::UnknownApi { key })?;
        let name = api_name(api);
        let Some(supported) = versions::supported(api) else {
            return Err(KafkaError::UnknownApi { key });
        };
        if api == ApiKey::ApiVersions && version > supported.max {
            // A newer client learns what this listener speaks from a v0 answer and asks again.
            let response = api_versions(ResponseError::UnsupportedVersion.code());
            return encode(api, 0, correlation_id, &response).map(Answer::now);
        }
        if !versions::serves(api, version) {
            return Err(KafkaError::UnsupportedVersion { api: name, version });
        }
        let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
            .map_err(|e| KafkaError::Malformed {
                api: name,
                reason: format!("header: {e:#}"),
            })?;
        let Some(principal) = self.sasl.principal().cloned() else {
            return self
                .unauthenticated(api, version, correlation_id, &mut frame)
                .await
                .map(Answer::now);
        };
        let caller = Caller {
            principal: &principal,
            peer: self.peer,
            local: self.local,
            client_id: header.client_id.as_deref().unwrap_or_default(),
        };
        handlers::handle(
            &self.broker,
            &caller,
            api,
            version,
            correlation_id,
            &mut frame,
        )
        .await
    }

    /// Records a failed SASL authentication in the audit log (as many a second as it admits).
    async fn audit_failed_authentication(&self, reason: &str) {
        let audit = &self.broker.audit;
        if !audit.admits_unauthenticated() {
            return;
        }
        let entry = Entry {
            time_unix_ms: Timestamp::now().0,
            principal: None,
            source: Some(self.peer.to_string()),
            method: "Kafka SaslAuthenticate".to_owned(),
            resource_type: None,
            resource: None,
            operation: None,
            result: Outcome::Unauthenticated,
            detail: None,
            reason: Some(reason.to_owned()),
        };
        if let Err(error) = audit.append(&entry).await {
            tracing::warn!(%error, "cannot write an audit record of a Kafka authentication");
        }
    }

    /// ApiVersions and the SASL exchange: all a client may do before it is authenticated.
    async fn unauthenticated(
        &mut self,
        api: ApiKey,
        version: i16,
        correlation_id: i32,
        body: &mut Bytes,
    ) -> Result<BytesMut, KafkaError> {
        let name = api_name(api);
        match api {
            ApiKey::ApiVersions => encode(api, version, correlation_id, &api_versions(0)),
            ApiKey::SaslHandshake => {
                let request: SaslHandshakeRequest = decode(name, body, version)?;
                let error_code = match self.sasl.handshake(request.mechanism.as_str()) {
                    Ok(()) => 0,
                    Err(_) => ResponseError::UnsupportedSaslMechanism.code(),
                };
                let response = SaslHandshakeResponse::default()
                    .with_error_code(error_code)
                    .with_mechanisms(
                        MECHANISMS
                            .iter()
                            .map(|m| StrBytes::from_static_str(m))
                            .collect(),
                    );
                encode(api, version, correlation_id, &response)
            }
            ApiKey::SaslAuthenticate => {
                let request: SaslAuthenticateRequest = decode(name, body, version)?;
                let users = self.broker.security.users.clone();
                let mut sasl = std::mem::replace(&mut self.sasl, Sasl::Start);
                let nonce = nonce()?;
                let (sasl, step) = tokio::task::spawn_blocking(move || {
                    let step = sasl.authenticate(&users, &request.auth_bytes, &nonce);
                    (sasl, step)
                })
                .await
                .map_err(|e| KafkaError::Authentication(e.to_string()))?;
                self.sasl = sasl;
                let response = match step {
                    Step::Continue(bytes) | Step::Done(_, bytes) => {
                        SaslAuthenticateResponse::default().with_auth_bytes(bytes.into())
                    }
                    Step::Failed(message) => {
                        tracing::warn!(mechanism_error = %message, "Kafka SASL authentication failed");
                        self.audit_failed_authentication(&message).await;
                        SaslAuthenticateResponse::default()
                            .with_error_code(ResponseError::SaslAuthenticationFailed.code())
                            .with_error_message(Some(StrBytes::from_string(message)))
                    }
                };
                encode(api, version, correlation_id, &response)
            }
            _ => Err(KafkaError::NotAuthenticated { api: name }),
        }
    }
}

/// The next frame's bytes (after the size), or none when the peer closed between frames or
/// was silent for the listener's idle timeout (which the accepted connection enforces).
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<Bytes>, KafkaError> {
    let mut size = [0u8; 4];
    match reader.read_exact(&mut size).await {
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Ok(None);
        }
        read => read?,
    };
    let size = i64::from(i32::from_be_bytes(size));
    // The API key, its version and the correlation id at least.
    if size < 8 {
        return Err(KafkaError::TooSmall { size });
    }
    if size as usize > limit {
        return Err(KafkaError::TooLarge { size, limit });
    }
    // Grown as bytes arrive beyond a first allocation: a peer that announces a large request
    // and sends nothing holds little, and a producer's batch of a megabyte or so is read
    // without many reallocations.
    let mut frame = Vec::with_capacity((size as usize).min(FIRST_FRAME_ALLOCATION));
    let mut body = reader.take(size as u64);
    let read = tokio::time::timeout(REQUEST_READ_TIMEOUT, body.read_to_end(&mut frame))
        .await
        .map_err(|_slow| KafkaError::Slow {
            seconds: REQUEST_READ_TIMEOUT.as_secs(),
        })??;
    if read < size as usize {
        return Err(KafkaError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(Some(Bytes::from(frame)))
}

pub(super) fn decode<T: Decodable>(
    api: &'static str,
    body: &mut Bytes,
    version: i16,
) -> Result<T, KafkaError> {
    T::decode(body, version).map_err(|e| KafkaError::Malformed {
        api,
        reason: format!("{e:#}"),
    })
}

/// `response` as a whole frame: size, header (its version by API and version), body.
pub(super) fn encode<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &T,
) -> Result<BytesMut, KafkaError> {
    let failed = |e: anyhow::Error| KafkaError::Encode {
        api: api_name(api),
        reason: format!("{e:#}"),
    };
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut frame, api.response_header_version(version))
        .map_err(failed)?;
    response.encode(&mut frame, version).map_err(failed)?;
    let size = i32::try_from(frame.len() - 4).map_err(|e| failed(e.into()))?;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    Ok(frame)
}

fn api_versions(error_code: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(
            SUPPORTED
                .iter()
                .map(|api| {
                    ApiVersion::default()
                        .with_api_key(api.key as i16)
                        .with_min_version(api.min_advertised)
                        .with_max_version(api.max)
                })
                .collect(),
        )
}

/// A SCRAM server nonce: 24 random bytes as base64 (no commas).
fn nonce() -> Result<String, KafkaError> {
    use base64::Engine;
    let bytes = random::<24>().map_err(|e| KafkaError::Authentication(e.to_string()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

pub(super) fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::SaslHandshake => "SaslHandshake",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::SaslAuthenticate => "SaslAuthenticate",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        _ => "an API not served",
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::RequestKind;
    use proptest::prelude::*;

    use super::*;

    /// Decodes `body` as `api`'s request at `version`, as the listener would.
    fn decode_any(api: ApiKey, version: i16, body: &[u8]) -> Result<(), KafkaError> {
        let mut body = Bytes::copy_from_slice(body);
        RequestKind::decode(api, &mut body, version)
            .map(drop)
            .map_err(|e| KafkaError::Malformed {
                api: api_name(api),
                reason: format!("{e:#}"),
            })
    }

    /// Metrics and audit records name every served API.
    #[test]
    fn every_served_api_has_a_name() {
        for api in SUPPORTED {
            assert_ne!(api_name(api.key), "an API not served", "{:?}", api.key);
        }
    }

    /// A request claiming 2^31 - 1 elements in a few bytes is refused before anything is
    /// allocated for them (without the bound, this test aborts the process).
    #[test]
    fn huge_claimed_counts_are_refused_not_allocated() {
        for version in [1i16, 4, 9] {
            let error =
                decode_any(ApiKey::Metadata, version, &[0x7f, 0xff, 0xff, 0xff, 0, 0]).unwrap_err();
            assert!(error.to_string().contains("exceeds"), "v{version}: {error}");
        }
        // Produce v3: no transactional id, acks, timeout, then 2^31 - 1 topics.
        let produce = [0xff, 0xff, 0, 1, 0, 0, 0x75, 0x30, 0x7f, 0xff, 0xff, 0xff];
        assert!(decode_any(ApiKey::Produce, 3, &produce).is_err());
        // A flexible version's compact array: a varint count of 2^32 - 2.
        let compact = [0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0];
        assert!(decode_any(ApiKey::Metadata, 9, &compact).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Any bytes, as any served request: an error or a request, never a panic.
        #[test]
        fn random_bodies_never_panic(
            api in 0..SUPPORTED.len(),
            version_pick in 0i16..20,
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let api = &SUPPORTED[api];
            let span = api.max - api.min_served + 1;
            let version = api.min_served + version_pick % span;
            let _ = decode_any(api.key, version, &body);
        }
    }
}
