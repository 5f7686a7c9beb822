//! Waiting for an Incus operation inside one of ours, cancelling it when the client cancels ours.

use std::time::Duration;

use kapsule_incus::Client;

use crate::operation::{Failure, Notes, Reporter};

/// How long an operation waits for Incus before giving up.
pub(crate) const INCUS_WAIT: Option<Duration> = Some(Duration::from_secs(600));

/// Runs one Incus operation to its end, cancelling it (where Incus allows) when the client
/// cancels ours.
pub(crate) async fn run_incus_operation(
    incus: &Client,
    reporter: &Reporter,
    op: kapsule_incus::models::Operation,
) -> Result<kapsule_incus::models::Operation, Failure> {
    tokio::select! {
        done = incus.wait_operation(&op.id, INCUS_WAIT) => done.map_err(Failure::from),
        () = reporter.cancelled() => {
            if let Err(e) = incus.cancel_operation(&op.id).await {
                log::info!("Incus operation {} cannot be cancelled ({e}); waiting for it to end", op.id);
            }
            let _ = incus.wait_operation(&op.id, INCUS_WAIT).await;
            Err(Failure::Cancelled)
        }
    }
}

/// [`run_incus_operation`] where there may be no operation (recovery): then it is only waited for.
pub(crate) async fn run_noted(
    incus: &Client,
    notes: Notes<'_>,
    op: kapsule_incus::models::Operation,
) -> Result<kapsule_incus::models::Operation, Failure> {
    match notes.0 {
        Some(reporter) => run_incus_operation(incus, reporter, op).await,
        None => incus.wait_operation(&op.id, INCUS_WAIT).await.map_err(Failure::from),
    }
}
