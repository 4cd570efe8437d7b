//! Leader election with a Kubernetes Lease: only the replica holding it reconciles, so
//! two operator replicas never act on the same resource at once. A replica that loses
//! the Lease stops reconciling at once and exits, to start again as a follower.

use std::time::Duration;

use anyhow::{Context as _, Result};
use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use tokio::sync::watch;
use tracing::info;

/// Settings of the election.
#[derive(Debug, Clone)]
pub struct Election {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
}

/// Starts the election; the receiver says whether this replica leads.
pub async fn start(client: Client, election: &Election) -> Result<watch::Receiver<bool>> {
    let duration = election.lease_duration.as_secs().max(2);
    let grace = (duration / 3).max(1);
    let manager = LeaseManagerBuilder::new(client, &election.lease_name)
        .with_namespace(&election.namespace)
        .with_parameters(LeaseParams::new(election.identity.clone(), duration, grace))
        .build()
        .await
        .with_context(|| {
            format!(
                "creating the leader Lease {}/{}",
                election.namespace, election.lease_name
            )
        })?;
    let (receiver, _task) = manager.watch().await;
    info!(
        lease = %election.lease_name,
        namespace = %election.namespace,
        identity = %election.identity,
        "leader election started"
    );
    Ok(receiver)
}

/// Waits until this replica leads.
pub async fn until_leading(receiver: &mut watch::Receiver<bool>) -> Result<()> {
    receiver
        .wait_for(|leading| *leading)
        .await
        .map(|_| ())
        .context("leader election stopped")
}

/// Waits until this replica no longer leads.
pub async fn until_lost(receiver: &mut watch::Receiver<bool>) {
    // An error means the election task ended: treat it as lost.
    let _ = receiver.wait_for(|leading| !*leading).await;
}
