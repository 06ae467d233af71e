//! The `System` service: the appliance itself (version, role, uptime, disk use against the
//! budget), which `appliance status` shows beside what the other services list.

use std::time::Instant;

use appliance_proto::v1 as pb;
use appliance_proto::v1::system_server::System as SystemApi;
use tonic::{Request, Response, Status};

use super::access::Calls;
use crate::log::{BudgetPolicy, Log};
use crate::security::{CLUSTER, Rpc};

#[derive(Debug)]
pub struct SystemService {
    pub log: Log,
    pub hub: bool,
    /// When the API started serving.
    pub started: Instant,
    pub calls: Calls,
}

#[tonic::async_trait]
impl SystemApi for SystemService {
    async fn get_system_status(
        &self,
        request: Request<pb::GetSystemStatusRequest>,
    ) -> Result<Response<pb::SystemStatus>, Status> {
        let (call, _) = self.calls.start(request, Rpc::GetSystemStatus)?;
        call.authorize(CLUSTER)?;
        let budget = self.log.disk_budget();
        let measured = budget.clone();
        let (used, free) = tokio::task::spawn_blocking(move || {
            measured.measure();
            (measured.used(), measured.free())
        })
        .await
        .map_err(|e| Status::internal(format!("measuring the disk: {e}")))?;
        Ok(Response::new(pb::SystemStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            role: if self.hub { "hub" } else { "edge" }.to_owned(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            disk_used_bytes: used,
            disk_budget_bytes: budget.max().unwrap_or(0),
            disk_free_bytes: free,
            disk_budget_policy: match budget.policy() {
                BudgetPolicy::Refuse => "refuse",
                BudgetPolicy::DeleteOldest => "delete-oldest",
            }
            .to_owned(),
            disk_evicted_segments: budget.evicted_segments(),
            build: if cfg!(feature = "hub") { "hub" } else { "edge" }.to_owned(),
        }))
    }
}
