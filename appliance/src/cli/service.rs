//! `appliance run` under systemd (`Type=notify`, packaging/appliance.service): READY=1 once
//! every endpoint listens, WATCHDOG=1 at half the unit's `WatchdogSec` while the runtime still
//! runs its timers, STOPPING=1 when shutdown begins. Without `NOTIFY_SOCKET` (not started by
//! systemd) every notification is skipped.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::app::Running;

/// Tells the service manager the appliance is ready, with its endpoints as the unit's status
/// line (`systemctl status appliance`), and starts the watchdog's pings.
pub fn ready(running: &Running, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    let status = format!(
        "serving gRPC on {}, metrics on {}{}",
        running.grpc_addr,
        running.metrics_addr,
        running
            .kafka_addr
            .map(|addr| format!(", Kafka on {addr}"))
            .unwrap_or_default()
    );
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    let watchdog = sd_notify::watchdog_enabled();
    tokio::spawn(async move {
        match watchdog {
            Some(timeout) => ping_until(timeout / 2, &shutdown).await,
            None => shutdown.cancelled().await,
        }
        notify(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
    })
}

/// A ping from a timer of the runtime that serves everything else: a runtime whose workers
/// are all stuck stops pinging, and systemd restarts the service after `WatchdogSec`.
async fn ping_until(every: Duration, shutdown: &CancellationToken) {
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            _ = ticks.tick() => notify(&[NotifyState::Watchdog]),
            _ = shutdown.cancelled() => return,
        }
    }
}

fn notify(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "cannot notify the service manager");
    }
}
