//! The Incus JSON objects this client reads and writes, with only the fields Kapsule uses.
//!
//! Unknown fields are ignored and missing optional fields default, so newer servers that add
//! fields (or older ones that lack some) still decode.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A string-to-string map, as Incus uses for config and device entries. Ordered, so requests are
/// deterministic.
pub type ConfigMap = BTreeMap<String, String>;

/// Devices by name; each device is a map whose `type` key says what it is.
pub type Devices = BTreeMap<String, ConfigMap>;

/// `GET /1.0`: what the server is and can do.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Server {
    pub api_extensions: Vec<String>,
    pub api_status: String,
    pub api_version: String,
    pub auth: String,
    pub environment: ServerEnvironment,
}

impl Server {
    /// True when the server announces the API extension `name`. Capabilities are checked this
    /// way rather than by version number, as Incus recommends.
    pub fn has_extension(&self, name: &str) -> bool {
        self.api_extensions.iter().any(|e| e == name)
    }
}

/// The `environment` part of [`Server`].
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ServerEnvironment {
    pub server_version: String,
    pub server_name: String,
    pub driver: String,
    pub driver_version: String,
    pub kernel: String,
    pub kernel_version: String,
    pub storage: String,
    pub storage_version: String,
}

/// An instance as `GET /1.0/instances/<name>` (or the list with `recursion=1`) returns it.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Instance {
    pub name: String,
    pub description: String,
    pub status: String,
    pub status_code: u16,
    #[serde(rename = "type")]
    pub kind: String,
    pub architecture: String,
    pub created_at: String,
    pub last_used_at: String,
    pub ephemeral: bool,
    pub stateful: bool,
    pub profiles: Vec<String>,
    pub config: ConfigMap,
    pub devices: Devices,
    pub expanded_config: ConfigMap,
    pub expanded_devices: Devices,
    pub project: String,
    pub location: String,
}

/// `POST /1.0/instances`: a new instance.
#[derive(Clone, Debug, Default, Serialize)]
pub struct InstancesPost {
    pub name: String,
    pub source: InstanceSource,
    pub config: ConfigMap,
    pub devices: Devices,
    /// Always sent, even empty: an empty list means "no profile at all", while a missing field
    /// would make Incus apply the default profile.
    pub profiles: Vec<String>,
    #[serde(rename = "type")]
    pub kind: String,
    /// Start the instance once it is created.
    pub start: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// Where a new instance's root filesystem comes from.
#[derive(Clone, Debug, Default, Serialize)]
pub struct InstanceSource {
    /// `image` for an image, `none` for an empty instance.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// A remote image server (simplestreams URL); local images when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// `pull` for remote images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// PEM certificate to pin for `server`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// For `copy`: the instance copied, or `instance/snapshot`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// For `copy`: the instance alone, without its snapshots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_only: Option<bool>,
}

impl InstanceSource {
    /// A locally stored image, by alias.
    pub fn local_alias(alias: impl Into<String>) -> Self {
        InstanceSource {
            kind: "image".into(),
            alias: Some(alias.into()),
            ..Default::default()
        }
    }

    /// A locally stored image, by fingerprint.
    pub fn local_fingerprint(fingerprint: impl Into<String>) -> Self {
        InstanceSource {
            kind: "image".into(),
            fingerprint: Some(fingerprint.into()),
            ..Default::default()
        }
    }

    /// A copy of instance `name`, or of its snapshot `snapshot`, without the source's snapshots.
    pub fn copy(name: &str, snapshot: Option<&str>) -> Self {
        InstanceSource {
            kind: "copy".into(),
            source: Some(match snapshot {
                Some(snapshot) => format!("{name}/{snapshot}"),
                None => name.to_owned(),
            }),
            instance_only: Some(true),
            ..Default::default()
        }
    }

    /// An image on a simplestreams server, by alias, optionally pinning the server's
    /// certificate (PEM).
    pub fn simplestreams(server: impl Into<String>, alias: impl Into<String>, certificate: Option<String>) -> Self {
        InstanceSource {
            kind: "image".into(),
            alias: Some(alias.into()),
            server: Some(server.into()),
            protocol: Some("simplestreams".into()),
            mode: Some("pull".into()),
            certificate,
            ..Default::default()
        }
    }
}

/// One snapshot of an instance (`GET /1.0/instances/<name>/snapshots?recursion=1`). Its name
/// is the snapshot's own, without the instance's name in front.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Snapshot {
    pub name: String,
    pub created_at: String,
    /// When Incus removes it on its own (`snapshots.expiry`); Kapsule sets none.
    pub expires_at: Option<String>,
    pub stateful: bool,
    /// The instance's config when the snapshot was taken.
    pub config: ConfigMap,
    /// Bytes the snapshot holds apart from the instance, where the pool can say (-1 otherwise).
    pub size: i64,
}

/// `GET /1.0/instances/<name>/state`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct InstanceState {
    pub status: String,
    pub status_code: u16,
    /// PID of the instance's init on the host, 0 (or -1) when it is not running. This is what
    /// the nsenter helper enters.
    pub pid: i64,
    pub processes: i64,
    pub started_at: Option<String>,
    /// Per disk device, what it uses (Incus fills in what the pool can count).
    pub disk: Option<BTreeMap<String, DiskState>>,
}

/// One disk device in [`InstanceState`].
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct DiskState {
    /// Bytes used; 0 (or missing) where the pool does not count (a `dir` pool without quotas).
    pub usage: i64,
}

impl InstanceState {
    /// The init PID, when the instance runs.
    pub fn init_pid(&self) -> Option<u32> {
        u32::try_from(self.pid).ok().filter(|pid| *pid > 0)
    }
}

/// The actions of `PUT /1.0/instances/<name>/state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StateAction {
    Start,
    Stop,
    Restart,
    Freeze,
    Unfreeze,
}

/// `PUT /1.0/instances/<name>/state`.
#[derive(Clone, Debug, Serialize)]
pub struct StateChange {
    pub action: StateAction,
    /// Seconds to wait for a clean stop before failing (or killing, with `force`); -1 waits forever.
    pub timeout: i64,
    pub force: bool,
    pub stateful: bool,
}

/// A background operation.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Operation {
    pub id: String,
    pub class: String,
    pub description: String,
    pub created_at: String,
    pub updated_at: String,
    pub status: String,
    pub status_code: u16,
    pub resources: Option<BTreeMap<String, Vec<String>>>,
    pub metadata: Option<serde_json::Value>,
    pub may_cancel: bool,
    pub err: String,
    pub location: String,
}

/// Operation status codes (see the Incus REST API documentation).
pub mod status {
    pub const RUNNING: u16 = 103;
    pub const PENDING: u16 = 105;
    pub const SUCCESS: u16 = 200;
    pub const FAILURE: u16 = 400;
    pub const CANCELLED: u16 = 401;
}

impl Operation {
    /// True once the operation has ended, in success, failure or cancellation.
    pub fn is_final(&self) -> bool {
        self.status_code >= 200
    }

    /// True when the operation works on instance `name` (its resources name it).
    pub fn touches_instance(&self, name: &str) -> bool {
        let wanted = format!("/1.0/instances/{}", crate::client::enc(name));
        self.resources.as_ref().is_some_and(|resources| {
            resources
                .get("instances")
                .is_some_and(|paths| paths.iter().any(|p| p.split('?').next() == Some(wanted.as_str())))
        })
    }

    /// A string field of the operation's metadata (`download_progress`, `fingerprint`, ...).
    pub fn metadata_str(&self, key: &str) -> Option<&str> {
        self.metadata.as_ref()?.get(key)?.as_str()
    }
}

/// An image in the local image store.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Image {
    pub fingerprint: String,
    pub filename: String,
    pub size: u64,
    pub architecture: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub public: bool,
    pub auto_update: bool,
    pub cached: bool,
    pub created_at: String,
    pub uploaded_at: String,
    pub last_used_at: String,
    pub properties: ConfigMap,
    pub aliases: Vec<ImageAliasRef>,
    pub update_source: Option<ImageUpdateSource>,
}

impl Image {
    /// The image's description property, if it has one.
    pub fn description(&self) -> &str {
        self.properties.get("description").map(String::as_str).unwrap_or("")
    }
}

/// An alias as listed inside an [`Image`].
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ImageAliasRef {
    pub name: String,
    pub description: String,
}

/// Where an auto-updating image was pulled from.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ImageUpdateSource {
    pub alias: String,
    pub server: String,
    pub protocol: String,
    pub certificate: String,
    pub image_type: String,
}

/// `GET /1.0/images/aliases/<name>`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ImageAlias {
    pub name: String,
    pub description: String,
    /// The fingerprint the alias points to.
    pub target: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// A storage pool.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct StoragePool {
    pub name: String,
    pub driver: String,
    pub description: String,
    pub status: String,
    pub config: ConfigMap,
    pub used_by: Vec<String>,
}

/// `POST /1.0/storage-pools`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StoragePoolsPost {
    pub name: String,
    pub driver: String,
    pub config: ConfigMap,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// One message of the events stream.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Event {
    /// `operation`, `lifecycle` or `logging`.
    #[serde(rename = "type")]
    pub kind: String,
    pub timestamp: String,
    pub metadata: serde_json::Value,
    pub location: String,
    pub project: String,
}

impl Event {
    /// The operation this event reports on, for `operation` events.
    pub fn operation(&self) -> Option<Operation> {
        if self.kind != "operation" {
            return None;
        }
        serde_json::from_value(self.metadata.clone()).ok()
    }
}
