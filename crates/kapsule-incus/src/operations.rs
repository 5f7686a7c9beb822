//! Background operations: wait with a timeout, cancel, get.

use std::time::Duration;

use http::Method;

use crate::client::{Client, enc};
use crate::error::{Error, Result};
use crate::models::{Operation, status};

/// Extra time given to the HTTP request beyond the server-side wait, so the server's own timeout
/// answer arrives before ours fires.
const WAIT_SLACK: Duration = Duration::from_secs(5);

impl Client {
    /// The current state of an operation.
    pub async fn get_operation(&self, id: &str) -> Result<Operation> {
        self.get_json(&format!("/1.0/operations/{}", enc(id))).await
    }

    /// The operations Incus is running or about to run, of every kind.
    pub async fn running_operations(&self) -> Result<Vec<Operation>> {
        // `{"running": [...], "pending": [...], "success": [...], ...}`, a list per status.
        let mut by_status: std::collections::BTreeMap<String, Vec<Operation>> =
            self.get_json("/1.0/operations?recursion=1").await?;
        Ok(["running", "pending"]
            .into_iter()
            .flat_map(|status| by_status.remove(status).unwrap_or_default())
            .collect())
    }

    /// Waits until the operation ends, at most `timeout` (`None`: as long as it takes).
    ///
    /// Returns the final operation on success. A failed operation gives
    /// [`Error::OperationFailed`] with Incus's reason, a cancelled one [`Error::Cancelled`], and
    /// one still running when the time is up [`Error::Timeout`] (it keeps running; cancel it if
    /// that is what you want).
    pub async fn wait_operation(&self, id: &str, timeout: Option<Duration>) -> Result<Operation> {
        let server_timeout = timeout.map_or(-1, |t| i64::try_from(t.as_secs().max(1)).unwrap_or(i64::MAX));
        let path = format!("/1.0/operations/{}/wait?timeout={server_timeout}", enc(id));
        // Without a timeout the request may legitimately last for hours (a large download).
        let http_timeout = timeout.map_or(Duration::from_secs(u64::from(u32::MAX)), |t| t + WAIT_SLACK);
        match self.call(Method::GET, &path, None, Some(http_timeout)).await {
            Ok((_, metadata)) => {
                let op: Operation = crate::client::decode(&path, metadata)?;
                settle(op, timeout)
            }
            Err(Error::Timeout { .. }) => Err(Error::Timeout {
                what: format!("operation {id}"),
                after: timeout.unwrap_or_default(),
            }),
            Err(Error::NotFound { method, path, message }) => Err(Error::NotFound { method, path, message }),
            // Incus answers a wait with an error both when the operation failed and when the
            // wait timed out; the operation itself says which (while Incus still keeps it).
            Err(Error::Api { message, .. }) => match self.get_operation(id).await {
                Ok(op) => settle(op, timeout),
                Err(Error::NotFound { .. }) => Err(Error::OperationFailed {
                    id: id.to_owned(),
                    description: String::new(),
                    message,
                }),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Asks Incus to cancel the operation. Fails (with Incus's reason) for operations that
    /// cannot be cancelled.
    pub async fn cancel_operation(&self, id: &str) -> Result<()> {
        self.call(Method::DELETE, &format!("/1.0/operations/{}", enc(id)), None, None)
            .await?;
        Ok(())
    }
}

fn settle(op: Operation, timeout: Option<Duration>) -> Result<Operation> {
    match op.status_code {
        status::SUCCESS => Ok(op),
        status::CANCELLED => Err(Error::Cancelled {
            id: op.id,
            description: op.description,
        }),
        code if code >= 200 => Err(Error::OperationFailed {
            id: op.id,
            description: op.description,
            message: op.err,
        }),
        _ => Err(Error::Timeout {
            what: format!("operation '{}' ({})", op.description, op.id),
            after: timeout.unwrap_or_default(),
        }),
    }
}
