//! Non-interactive command execution with the exit code and output captured by Incus
//! (`record-output`): no websocket involved.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde::Serialize;

use crate::client::{Client, empty, enc, to_json};
use crate::error::{Error, Result};

/// A command to run in an instance.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ExecRequest {
    pub command: Vec<String>,
    /// Incus reads no /etc/passwd: pass HOME, USER, PATH... explicitly.
    pub environment: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

impl ExecRequest {
    /// Runs `command` (argv, no shell) as root.
    pub fn new<I, S>(command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecRequest {
            command: command.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }
}

/// What a command did.
#[derive(Clone, Debug)]
pub struct ExecOutput {
    /// The exit code; 128+N when a signal N killed it.
    pub exit_code: i32,
    pub stdout: Bytes,
    pub stderr: Bytes,
}

#[derive(Serialize)]
struct ExecPost<'a> {
    #[serde(flatten)]
    request: &'a ExecRequest,
    interactive: bool,
    #[serde(rename = "wait-for-websocket")]
    wait_for_websocket: bool,
    #[serde(rename = "record-output")]
    record_output: bool,
}

impl Client {
    /// Runs a command to completion (at most `timeout`) and returns its exit code and output.
    /// Stdin is empty. The recorded output files are deleted from the instance afterwards.
    pub async fn exec(&self, name: &str, request: &ExecRequest, timeout: Duration) -> Result<ExecOutput> {
        if request.command.is_empty() {
            return Err(Error::Protocol {
                what: format!("exec in {name}"),
                reason: "empty command".into(),
            });
        }
        let path = format!("/1.0/instances/{}/exec", enc(name));
        let post = ExecPost {
            request,
            interactive: false,
            wait_for_websocket: false,
            record_output: true,
        };
        let body = to_json(&format!("POST {path}"), &post)?;
        let op = self.start_operation(Method::POST, &path, Some(&body)).await?;
        let op = self.wait_operation(&op.id, Some(timeout)).await?;
        let metadata = op.metadata.unwrap_or_default();
        let exit_code = metadata
            .get("return")
            .and_then(serde_json::Value::as_i64)
            .and_then(|c| i32::try_from(c).ok())
            .ok_or_else(|| Error::Protocol {
                what: format!("exec in {name}"),
                reason: "no exit code in the finished operation".into(),
            })?;
        let log_path = |fd: &str| {
            metadata
                .get("output")
                .and_then(|o| o.get(fd))
                .and_then(|p| p.as_str())
                .map(str::to_owned)
        };
        let stdout = self.take_log(log_path("1")).await?;
        let stderr = self.take_log(log_path("2")).await?;
        Ok(ExecOutput {
            exit_code,
            stdout,
            stderr,
        })
    }

    /// Reads one recorded output file and deletes it; a missing file reads as empty.
    async fn take_log(&self, path: Option<String>) -> Result<Bytes> {
        let Some(path) = path else { return Ok(Bytes::new()) };
        let raw = self.send(Method::GET, &path, &[], empty(), None).await?;
        if !raw.status.is_success() {
            crate::client::decode_envelope("GET", &path, &raw)?;
        }
        // Not deleting only leaves a small file in the instance's log directory; not worth
        // failing a command that ran for that.
        if let Err(e) = self.call(Method::DELETE, &path, None, None).await {
            log::debug!("could not delete exec output {path}: {e}");
        }
        Ok(raw.body)
    }
}
