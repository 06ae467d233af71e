//! The one table of what every gRPC method needs: the resource type named in its request and
//! the operation on it. The API checks it before a call does anything. Methods that list
//! return only what the caller may describe; methods that move data between topics (creating
//! a pipeline, a connector or a link, a query) also need read on the topics they read and
//! write on the topics they write, checked by the same API helper.

use prometheus_client::encoding::EncodeLabelValue;

use super::acl::{Operation, ResourceType};

/// Defines [`Rpc`] and the lookup of a variant by its method name.
macro_rules! rpcs {
    ($($method:ident),* $(,)?) => {
        /// The gRPC methods (also the `method` label of the API's metrics).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
        pub enum Rpc {
            $($method),*
        }

        impl Rpc {
            /// The method of this name (the last part of its gRPC path); method names are
            /// unique across the services.
            pub fn from_method(name: &str) -> Option<Self> {
                match name {
                    $(stringify!($method) => Some(Rpc::$method),)*
                    _ => None,
                }
            }
        }
    };
}

rpcs! {
    CreateTopic,
    GetTopic,
    ListTopics,
    UpdateTopicConfig,
    DeleteTopic,
    Produce,
    ProduceStream,
    Fetch,
    Lookup,
    Subscribe,
    ListGroups,
    DescribeGroup,
    CommitOffsets,
    ResetOffsets,
    Heartbeat,
    AddPlugin,
    ListPlugins,
    DeletePlugin,
    CreatePipeline,
    GetPipeline,
    ListPipelines,
    PausePipeline,
    ResumePipeline,
    DeletePipeline,
    CreateConnector,
    GetConnector,
    ListConnectors,
    PauseConnector,
    ResumeConnector,
    RestartConnector,
    DeleteConnector,
    GetConnectorOffsets,
    ResetConnectorOffsets,
    CreateLink,
    GetLink,
    ListLinks,
    PauseLink,
    ResumeLink,
    DeleteLink,
    ListEdges,
    PromoteTopic,
    RevokeEdge,
    CreateJoinToken,
    Execute,
    Follow,
    Describe,
    CreateToken,
    ListTokens,
    RevokeToken,
    CreateAcl,
    ListAcls,
    DeleteAcl,
    SetQuota,
    ListQuotas,
    CreateUser,
    ChangePassword,
    ListUsers,
    DeleteUser,
    CreateExport,
    GetExport,
    ListExports,
    PauseExport,
    ResumeExport,
    DeleteExport,
    GetSystemStatus,
}

/// What a method needs on the resource its request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    pub resource_type: ResourceType,
    pub operation: Operation,
}

impl Rpc {
    /// The table.
    pub fn requirement(self) -> Requirement {
        use Operation::*;
        use ResourceType::*;
        let (resource_type, operation) = match self {
            Rpc::CreateTopic => (Topic, Create),
            Rpc::GetTopic | Rpc::ListTopics => (Topic, Describe),
            Rpc::UpdateTopicConfig | Rpc::PromoteTopic => (Topic, Alter),
            Rpc::DeleteTopic => (Topic, Delete),
            Rpc::Produce | Rpc::ProduceStream => (Topic, Write),
            // A query's topics are read; the query itself names no other resource.
            Rpc::Fetch | Rpc::Lookup | Rpc::Execute | Rpc::Follow | Rpc::Describe => (Topic, Read),
            // Joining a group reads its topics too (checked on each topic it subscribes).
            Rpc::Subscribe | Rpc::CommitOffsets | Rpc::Heartbeat => (Group, Read),
            Rpc::ListGroups | Rpc::DescribeGroup => (Group, Describe),
            Rpc::ResetOffsets => (Group, Alter),
            Rpc::AddPlugin => (Plugin, Create),
            Rpc::ListPlugins => (Plugin, Describe),
            Rpc::DeletePlugin => (Plugin, Delete),
            Rpc::CreatePipeline => (Pipeline, Create),
            Rpc::GetPipeline | Rpc::ListPipelines => (Pipeline, Describe),
            Rpc::PausePipeline | Rpc::ResumePipeline => (Pipeline, Alter),
            Rpc::DeletePipeline => (Pipeline, Delete),
            Rpc::CreateConnector => (Connector, Create),
            Rpc::GetConnector | Rpc::ListConnectors | Rpc::GetConnectorOffsets => {
                (Connector, Describe)
            }
            Rpc::PauseConnector
            | Rpc::ResumeConnector
            | Rpc::RestartConnector
            | Rpc::ResetConnectorOffsets => (Connector, Alter),
            Rpc::DeleteConnector => (Connector, Delete),
            Rpc::CreateLink => (Link, Create),
            Rpc::GetLink | Rpc::ListLinks => (Link, Describe),
            Rpc::PauseLink | Rpc::ResumeLink => (Link, Alter),
            Rpc::DeleteLink => (Link, Delete),
            Rpc::CreateExport => (Export, Create),
            Rpc::GetExport | Rpc::ListExports => (Export, Describe),
            Rpc::PauseExport | Rpc::ResumeExport => (Export, Alter),
            Rpc::DeleteExport => (Export, Delete),
            Rpc::ListEdges
            | Rpc::ListTokens
            | Rpc::ListAcls
            | Rpc::ListQuotas
            | Rpc::ListUsers
            | Rpc::GetSystemStatus => (Cluster, Describe),
            Rpc::CreateToken
            | Rpc::RevokeToken
            | Rpc::CreateAcl
            | Rpc::DeleteAcl
            | Rpc::SetQuota
            | Rpc::RevokeEdge
            | Rpc::CreateJoinToken
            | Rpc::CreateUser
            | Rpc::ChangePassword
            | Rpc::DeleteUser => (Cluster, Alter),
        };
        Requirement {
            resource_type,
            operation,
        }
    }

    /// Whether a successful call changes something: what the audit log records of successes.
    pub fn changes(self) -> bool {
        matches!(
            self.requirement().operation,
            Operation::Create | Operation::Delete | Operation::Alter
        )
    }
}
