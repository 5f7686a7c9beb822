//! Instances: list, get, create, delete, state, and config/device changes.

use std::time::Duration;

use http::Method;
use serde_json::json;

use crate::client::{Client, decode, decode_envelope, enc, full, to_json};
use crate::error::{Error, Result};
use crate::models::{ConfigMap, Devices, Instance, InstanceState, InstancesPost, Operation, StateAction, StateChange};

impl Client {
    /// Every instance, with its config and devices, in one request (`recursion=1`).
    pub async fn list_instances(&self) -> Result<Vec<Instance>> {
        self.get_json("/1.0/instances?recursion=1").await
    }

    /// One instance.
    pub async fn get_instance(&self, name: &str) -> Result<Instance> {
        self.get_json(&format!("/1.0/instances/{}", enc(name))).await
    }

    /// Starts creating an instance; the returned operation ends when it exists (and runs, with
    /// `start`). Cancelling that operation stops the creation.
    pub async fn create_instance(&self, request: &InstancesPost) -> Result<Operation> {
        let body = to_json("POST /1.0/instances", request)?;
        self.start_operation(Method::POST, "/1.0/instances", Some(&body)).await
    }

    /// Starts deleting a stopped instance.
    pub async fn delete_instance(&self, name: &str) -> Result<Operation> {
        let path = format!("/1.0/instances/{}", enc(name));
        self.start_operation(Method::DELETE, &path, None).await
    }

    /// The runtime state, including the init PID on the host.
    pub async fn instance_state(&self, name: &str) -> Result<InstanceState> {
        self.get_json(&format!("/1.0/instances/{}/state", enc(name))).await
    }

    /// Starts a state change (start, stop, restart, freeze, unfreeze).
    pub async fn change_state(&self, name: &str, change: &StateChange) -> Result<Operation> {
        let path = format!("/1.0/instances/{}/state", enc(name));
        let body = to_json(&format!("PUT {path}"), change)?;
        self.start_operation(Method::PUT, &path, Some(&body)).await
    }

    /// Starts the instance.
    pub async fn start_instance(&self, name: &str) -> Result<Operation> {
        self.change_state(
            name,
            &StateChange {
                action: StateAction::Start,
                timeout: -1,
                force: false,
                stateful: false,
            },
        )
        .await
    }

    /// Stops the instance: cleanly within `timeout`, or at once (killing it) with `force`.
    pub async fn stop_instance(&self, name: &str, force: bool, timeout: Duration) -> Result<Operation> {
        let timeout = i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX);
        self.change_state(
            name,
            &StateChange {
                action: StateAction::Stop,
                timeout,
                force,
                stateful: false,
            },
        )
        .await
    }

    /// Sets (adds or replaces) config keys, leaving every other key as it is.
    ///
    /// Uses PATCH: the server merges the keys into the current config, so a concurrent change
    /// to other keys is never lost (a GET + PUT would overwrite it).
    pub async fn patch_instance_config(&self, name: &str, config: &ConfigMap) -> Result<()> {
        let path = format!("/1.0/instances/{}", enc(name));
        self.call_and_settle(Method::PATCH, &path, &json!({ "config": config }))
            .await
    }

    /// Adds or replaces devices, leaving every other device as it is (PATCH, see
    /// [`Client::patch_instance_config`]).
    pub async fn patch_instance_devices(&self, name: &str, devices: &Devices) -> Result<()> {
        let path = format!("/1.0/instances/{}", enc(name));
        self.call_and_settle(Method::PATCH, &path, &json!({ "devices": devices }))
            .await
    }

    /// Removes one device. PATCH cannot remove, so this is a PUT guarded by the ETag of the read
    /// it is based on: if anything changed the instance in between, Incus refuses (412) and the
    /// change is retried on the fresh state instead of overwriting it.
    pub async fn remove_instance_device(&self, name: &str, device: &str) -> Result<()> {
        let path = format!("/1.0/instances/{}", enc(name));
        for _ in 0..5 {
            let raw = self.send(Method::GET, &path, &[], crate::client::empty(), None).await?;
            let etag = raw.headers.get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let (_, metadata) = decode_envelope("GET", &path, &raw)?;
            let mut instance: serde_json::Value = metadata;
            let removed = instance
                .get_mut("devices")
                .and_then(|d| d.as_object_mut())
                .and_then(|d| d.remove(device));
            if removed.is_none() {
                return Err(Error::NotFound {
                    method: "PUT",
                    path,
                    message: format!("instance has no device '{device}'"),
                });
            }
            let put = json!({
                "architecture": instance["architecture"],
                "config": instance["config"],
                "devices": instance["devices"],
                "ephemeral": instance["ephemeral"],
                "profiles": instance["profiles"],
                "stateful": instance["stateful"],
                "description": instance["description"],
            });
            let mut headers = vec![("content-type", "application/json".to_owned())];
            if let Some(etag) = etag {
                headers.push(("if-match", etag));
            }
            let raw = self
                .send(
                    Method::PUT,
                    &path,
                    &headers,
                    full(serde_json::to_vec(&put).unwrap_or_default()),
                    None,
                )
                .await?;
            match decode_envelope("PUT", &path, &raw) {
                Err(Error::Api { status: 412, .. }) => continue,
                Err(e) => return Err(e),
                Ok((kind, metadata)) => {
                    if kind == "async" {
                        let op: Operation = decode(&path, metadata)?;
                        self.wait_operation(&op.id, Some(Duration::from_secs(60))).await?;
                    }
                    return Ok(());
                }
            }
        }
        Err(Error::Api {
            method: "PUT",
            path,
            status: 412,
            message: "the instance kept changing; gave up after 5 attempts".into(),
        })
    }
}
