//! The one table of the Kafka APIs this listener speaks: ApiVersions answers with it, and a
//! request outside it is refused before it is decoded.

use kafka_protocol::messages::ApiKey;

/// One supported API: the versions advertised and the versions served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supported {
    pub key: ApiKey,
    /// The oldest version ApiVersions advertises. Below `min_served` only for Produce, whose
    /// v0-2 librdkafka needs to see before it compresses (librdkafka#4956, KAFKA-18659);
    /// they are refused as Apache Kafka 4 refuses them.
    pub min_advertised: i16,
    pub min_served: i16,
    /// The newest version served. Produce and Fetch stop before v13, which name topics by
    /// id, and Metadata before v10, which would hand clients topic ids to use.
    pub max: i16,
}

const fn api(key: ApiKey, min: i16, max: i16) -> Supported {
    Supported {
        key,
        min_advertised: min,
        min_served: min,
        max,
    }
}

/// Every API the listener serves. The rest are answered by closing the connection, as a
/// broker does for an API it does not know.
pub const SUPPORTED: &[Supported] = &[
    Supported {
        key: ApiKey::Produce,
        min_advertised: 0,
        min_served: 3,
        max: 12,
    },
    api(ApiKey::Fetch, 4, 12),
    api(ApiKey::ListOffsets, 1, 7),
    api(ApiKey::Metadata, 0, 9),
    api(ApiKey::SaslHandshake, 0, 1),
    api(ApiKey::ApiVersions, 0, 3),
    api(ApiKey::CreateTopics, 2, 7),
    api(ApiKey::DeleteTopics, 1, 5),
    api(ApiKey::SaslAuthenticate, 0, 2),
    api(ApiKey::InitProducerId, 0, 4),
    api(ApiKey::FindCoordinator, 0, 4),
    api(ApiKey::JoinGroup, 0, 9),
    api(ApiKey::SyncGroup, 0, 5),
    api(ApiKey::Heartbeat, 0, 4),
    api(ApiKey::LeaveGroup, 0, 5),
    api(ApiKey::OffsetCommit, 2, 8),
    api(ApiKey::OffsetFetch, 1, 8),
    api(ApiKey::DescribeGroups, 0, 5),
    api(ApiKey::ListGroups, 0, 4),
    api(ApiKey::CreatePartitions, 0, 3),
    api(ApiKey::DescribeConfigs, 1, 4),
];

/// The entry of `key`, if the listener serves it.
pub fn supported(key: ApiKey) -> Option<&'static Supported> {
    SUPPORTED.iter().find(|api| api.key == key)
}

/// Whether `version` of `key` is served.
pub fn serves(key: ApiKey, version: i16) -> bool {
    supported(key).is_some_and(|api| (api.min_served..=api.max).contains(&version))
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::Message;

    use super::*;

    /// Every served version can be decoded and answered by the protocol crate.
    #[test]
    fn served_versions_are_within_what_the_crate_speaks() {
        let crate_versions = |key: ApiKey| match key {
            ApiKey::Produce => (ProduceRequest::VERSIONS, ProduceResponse::VERSIONS),
            ApiKey::Fetch => (FetchRequest::VERSIONS, FetchResponse::VERSIONS),
            ApiKey::ListOffsets => (ListOffsetsRequest::VERSIONS, ListOffsetsResponse::VERSIONS),
            ApiKey::Metadata => (MetadataRequest::VERSIONS, MetadataResponse::VERSIONS),
            ApiKey::SaslHandshake => (
                SaslHandshakeRequest::VERSIONS,
                SaslHandshakeResponse::VERSIONS,
            ),
            ApiKey::ApiVersions => (ApiVersionsRequest::VERSIONS, ApiVersionsResponse::VERSIONS),
            ApiKey::CreateTopics => (
                CreateTopicsRequest::VERSIONS,
                CreateTopicsResponse::VERSIONS,
            ),
            ApiKey::DeleteTopics => (
                DeleteTopicsRequest::VERSIONS,
                DeleteTopicsResponse::VERSIONS,
            ),
            ApiKey::SaslAuthenticate => (
                SaslAuthenticateRequest::VERSIONS,
                SaslAuthenticateResponse::VERSIONS,
            ),
            ApiKey::InitProducerId => (
                InitProducerIdRequest::VERSIONS,
                InitProducerIdResponse::VERSIONS,
            ),
            ApiKey::FindCoordinator => (
                FindCoordinatorRequest::VERSIONS,
                FindCoordinatorResponse::VERSIONS,
            ),
            ApiKey::JoinGroup => (JoinGroupRequest::VERSIONS, JoinGroupResponse::VERSIONS),
            ApiKey::SyncGroup => (SyncGroupRequest::VERSIONS, SyncGroupResponse::VERSIONS),
            ApiKey::Heartbeat => (HeartbeatRequest::VERSIONS, HeartbeatResponse::VERSIONS),
            ApiKey::LeaveGroup => (LeaveGroupRequest::VERSIONS, LeaveGroupResponse::VERSIONS),
            ApiKey::OffsetCommit => (
                OffsetCommitRequest::VERSIONS,
                OffsetCommitResponse::VERSIONS,
            ),
            ApiKey::OffsetFetch => (OffsetFetchRequest::VERSIONS, OffsetFetchResponse::VERSIONS),
            ApiKey::DescribeGroups => (
                DescribeGroupsRequest::VERSIONS,
                DescribeGroupsResponse::VERSIONS,
            ),
            ApiKey::ListGroups => (ListGroupsRequest::VERSIONS, ListGroupsResponse::VERSIONS),
            ApiKey::CreatePartitions => (
                CreatePartitionsRequest::VERSIONS,
                CreatePartitionsResponse::VERSIONS,
            ),
            ApiKey::DescribeConfigs => (
                DescribeConfigsRequest::VERSIONS,
                DescribeConfigsResponse::VERSIONS,
            ),
            other => panic!("{other:?} has no entry here"),
        };
        for api in SUPPORTED {
            let (request, response) = crate_versions(api.key);
            for range in [request, response] {
                assert!(
                    range.min <= api.min_served && api.max <= range.max,
                    "{:?}",
                    api.key
                );
            }
            assert!(api.min_advertised <= api.min_served);
        }
    }
}
