//! Client proxies for the Kapsule interfaces (used by the CLI and the tests).

use std::collections::HashMap;

use zbus::{OwnedObjectPath, OwnedVariant, proxy};

use crate::{ContainerDetails, ContainerInfo, EnterCommand, SnapshotInfo};

/// `org.kde.kapsule.Manager`.
#[proxy(
    interface = "org.kde.kapsule.Manager",
    default_service = "org.kde.kapsule",
    default_path = "/org/kde/kapsule"
)]
pub trait Manager {
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;

    #[zbus(signal)]
    fn containers_changed(&self) -> zbus::Result<()>;

    fn list_operations(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
    fn get_create_schema(&self) -> zbus::Result<String>;
    fn get_config(&self) -> zbus::Result<HashMap<String, String>>;
    fn list_containers(&self) -> zbus::Result<Vec<ContainerInfo>>;
    fn get_container_info(&self, name: &str) -> zbus::Result<ContainerInfo>;
    fn get_container_details(&self, name: &str) -> zbus::Result<ContainerDetails>;
    fn is_user_setup(&self, container_name: &str, uid: u32) -> zbus::Result<bool>;
    fn list_images(&self) -> zbus::Result<String>;
    fn delete_image(&self, identifier: &str) -> zbus::Result<OwnedObjectPath>;
    fn import_image(&self, path: &str, alias: &str) -> zbus::Result<OwnedObjectPath>;
    fn refresh_images(&self, image: &str) -> zbus::Result<OwnedObjectPath>;
    fn setup_user(
        &self,
        container_name: &str,
        uid: u32,
        gid: u32,
        username: &str,
        home_dir: &str,
    ) -> zbus::Result<OwnedObjectPath>;
    fn create_container(
        &self,
        name: &str,
        image: &str,
        options: HashMap<String, OwnedVariant>,
    ) -> zbus::Result<OwnedObjectPath>;
    #[allow(clippy::too_many_arguments)]
    fn enter(
        &self,
        container: &str,
        command: &[String],
        working_directory: &str,
        environment: HashMap<String, String>,
        stdio: HashMap<String, zbus::OwnedFd>,
        options: HashMap<String, OwnedVariant>,
    ) -> zbus::Result<(String, HashMap<String, zbus::OwnedFd>)>;
    fn prepare_enter(
        &self,
        container_name: &str,
        command: &[String],
        working_directory: &str,
    ) -> zbus::Result<EnterCommand>;
    fn delete_container(&self, name: &str, force: bool) -> zbus::Result<OwnedObjectPath>;
    fn start_container(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_container(&self, name: &str, force: bool) -> zbus::Result<OwnedObjectPath>;
    fn list_snapshots(&self, name: &str) -> zbus::Result<Vec<SnapshotInfo>>;
    fn create_snapshot(&self, name: &str, snapshot: &str) -> zbus::Result<OwnedObjectPath>;
    fn delete_snapshot(&self, name: &str, snapshot: &str) -> zbus::Result<OwnedObjectPath>;
    fn restore_snapshot(&self, name: &str, snapshot: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_container(&self, name: &str, image: &str) -> zbus::Result<OwnedObjectPath>;
    fn upgrade_container(&self, name: &str, options: HashMap<String, OwnedVariant>) -> zbus::Result<OwnedObjectPath>;
    fn clone_container(&self, source: &str, name: &str, snapshot: &str) -> zbus::Result<OwnedObjectPath>;
}

/// `org.kde.kapsule.Operation`.
#[proxy(interface = "org.kde.kapsule.Operation", default_service = "org.kde.kapsule")]
pub trait Operation {
    #[zbus(property)]
    fn id(&self) -> zbus::Result<String>;
    #[zbus(property, name = "Type")]
    fn kind(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn description(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn target(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn status(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn error_message(&self) -> zbus::Result<String>;

    fn cancel(&self) -> zbus::Result<bool>;

    #[zbus(signal)]
    fn message(&self, message_type: i32, message: String, indent_level: i32) -> zbus::Result<()>;
    #[zbus(signal)]
    fn progress_started(
        &self,
        progress_id: String,
        description: String,
        total: i32,
        indent_level: i32,
    ) -> zbus::Result<()>;
    #[zbus(signal)]
    fn progress_update(&self, progress_id: String, current: i32, rate: f64) -> zbus::Result<()>;
    #[zbus(signal)]
    fn progress_text_update(&self, progress_id: String, text: String) -> zbus::Result<()>;
    #[zbus(signal)]
    fn progress_completed(&self, progress_id: String, success: bool, message: String) -> zbus::Result<()>;
    #[zbus(signal)]
    fn completed(&self, success: bool, message: String) -> zbus::Result<()>;
}

impl OperationProxy<'static> {
    /// A proxy for the operation at `path` that reads properties fresh on every call. zbus
    /// caches properties by default and updates the cache from PropertiesChanged in the
    /// background, so a cached `Status` read right after `Completed` could still say `running`.
    pub async fn uncached(connection: &zbus::Connection, path: OwnedObjectPath) -> zbus::Result<Self> {
        OperationProxy::builder(connection)
            .path(path)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
    }
}
