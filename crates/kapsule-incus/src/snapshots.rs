//! Snapshots of an instance (take, list, delete, restore) and a rebuild from an image. A copy of
//! an instance is a create with [`InstanceSource::copy`].

use http::Method;
use serde_json::json;

use crate::client::{Client, enc, to_json};
use crate::error::Result;
use crate::models::{InstanceSource, Operation, Snapshot};

impl Client {
    /// The instance's snapshots, oldest first, in one request (`recursion=1`).
    pub async fn list_snapshots(&self, name: &str) -> Result<Vec<Snapshot>> {
        let mut snapshots: Vec<Snapshot> = self
            .get_json(&format!("/1.0/instances/{}/snapshots?recursion=1", enc(name)))
            .await?;
        snapshots.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        Ok(snapshots)
    }

    /// Starts taking a snapshot (of the file system only: not the running processes).
    pub async fn create_snapshot(&self, name: &str, snapshot: &str) -> Result<Operation> {
        let path = format!("/1.0/instances/{}/snapshots", enc(name));
        let body = json!({ "name": snapshot, "stateful": false });
        self.start_operation(Method::POST, &path, Some(&body)).await
    }

    /// Starts deleting a snapshot.
    pub async fn delete_snapshot(&self, name: &str, snapshot: &str) -> Result<Operation> {
        let path = format!("/1.0/instances/{}/snapshots/{}", enc(name), enc(snapshot));
        self.start_operation(Method::DELETE, &path, None).await
    }

    /// Starts restoring a snapshot: the instance's file system, config and devices become the
    /// snapshot's. Incus refuses a running instance unless it may stop it; callers stop it first.
    pub async fn restore_snapshot(&self, name: &str, snapshot: &str) -> Result<Operation> {
        let path = format!("/1.0/instances/{}", enc(name));
        let body = json!({ "restore": snapshot, "stateful": false });
        self.start_operation(Method::PUT, &path, Some(&body)).await
    }

    /// Starts rebuilding a stopped instance: its root file system is replaced by a fresh one from
    /// `source` (an image); config and devices stay. Incus 6.0 refuses an instance that has snapshots.
    pub async fn rebuild_instance(&self, name: &str, source: &InstanceSource) -> Result<Operation> {
        let path = format!("/1.0/instances/{}/rebuild", enc(name));
        let body = to_json(&format!("POST {path}"), &json!({ "source": source }))?;
        self.start_operation(Method::POST, &path, Some(&body)).await
    }
}
