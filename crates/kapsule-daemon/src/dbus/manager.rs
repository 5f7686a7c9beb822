//! `org.kde.kapsule.Manager` on `/org/kde/kapsule`, with the original daemon's wire signatures.
//!
//! Every method has one shape: identify the caller (and ask polkit when it changes anything),
//! call one pipeline, and, when the work is long, run it as an operation whose path is returned
//! at once. A bad request gets a named error before any work.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use kapsule_dbus::{ContainerDetails, ContainerInfo, EnterCommand, Error, SnapshotInfo};
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{Connection, OwnedObjectPath, OwnedVariant, interface};

use crate::container::meta;
use crate::identity::authority::{Action, Requester};
use crate::identity::link::Link;
use crate::operation::{Failure, OperationInfo, Operations, Reporter};
use crate::pipeline::{
    Daemon, clone, create, enter, images, lifecycle, queries, reset, setup_user, snapshots, upgrade,
};

/// The manager object: one on the bus, one per client of the daemon's socket.
#[derive(Debug)]
pub(crate) struct Manager {
    pub(crate) daemon: Arc<Daemon>,
    pub(crate) operations: Arc<Operations>,
    /// The bus, or one client of the daemon's socket.
    pub(crate) link: Link,
}

#[interface(name = "org.kde.kapsule.Manager")]
impl Manager {
    /// The daemon's version.
    #[zbus(property)]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }

    /// Emitted after a container was created, deleted, started or stopped.
    #[zbus(signal)]
    pub(crate) async fn containers_changed(emitter: &SignalEmitter<'_>) -> zbus::Result<()>;

    /// Paths of the caller's operations still running (on the bus, those its unique name
    /// started; on the socket, its connection's).
    fn list_operations(&self, #[zbus(header)] header: Header<'_>) -> Vec<OwnedObjectPath> {
        self.operations.running(&self.link, header.sender())
    }

    /// The create options as JSON (sections, options, defaults, requirements).
    fn get_create_schema(&self) -> String {
        kapsule_dbus::options::schema_json()
    }

    /// `default_container` and `default_image` as the caller sees them (their own file last).
    /// As in the original daemon, a caller that cannot be identified gets `{"error": ...}`.
    async fn get_config(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> HashMap<String, String> {
        match self.link.identify(connection, &header).await {
            Ok((caller, _)) => queries::config(&self.daemon, &caller).await,
            Err(e) => HashMap::from([("error".to_owned(), e.to_string())]),
        }
    }

    /// Every Kapsule container as `(name, status, image, created, mode)`, in one Incus request.
    async fn list_containers(&self) -> Result<Vec<ContainerInfo>, Error> {
        queries::list_containers(&self.daemon).await
    }

    /// One Kapsule container as one struct `(name, status, image, created, mode)`.
    // The one-element tuple makes the reply one `(sssss)`, not five strings (see kapsule_dbus::reply).
    async fn get_container_info(&self, name: String) -> Result<(ContainerInfo,), Error> {
        Ok((queries::container_info(&self.daemon, &name).await?,))
    }

    /// One Kapsule container in full: its info row, options, owner, users, image, snapshots and
    /// disk use, as an `a{sv}` (see `kapsule_dbus::ContainerDetails`).
    async fn get_container_details(&self, name: String) -> Result<ContainerDetails, Error> {
        queries::container_details(&self.daemon, &name).await
    }

    /// True when the user `uid` was set up in the container.
    async fn is_user_setup(&self, container_name: String, uid: u32) -> Result<bool, Error> {
        queries::is_user_setup(&self.daemon, &container_name, uid).await
    }

    /// Sets a host user up in a container (starting it if needed): home, account, mounts, sudo.
    /// The values must be the host's own account of `uid`. Setting oneself up in one's own
    /// container needs `enter-container`; anything else `manage-container`.
    #[allow(clippy::too_many_arguments, reason = "the wire signature is fixed")]
    async fn setup_user(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
        container_name: String,
        uid: u32,
        gid: u32,
        username: String,
        home_dir: String,
    ) -> Result<OwnedObjectPath, Error> {
        let who = Requester::of(&self.link, connection, &header).await?;
        let request = setup_user::Request {
            container: container_name,
            uid,
            gid,
            username,
            home: home_dir,
        };
        let plan = setup_user::plan(&self.daemon, &who, request).await?;
        let info = OperationInfo {
            kind: "setup_user",
            description: format!("Setting up user '{}' in {}", plan.account.name, plan.instance.name),
            target: plan.instance.name.clone(),
        };
        self.operation(&who, info, move |daemon, reporter| async move {
            setup_user::run(&daemon, &reporter, plan).await
        })
        .await
    }

    /// Starts a session in a container as the caller: their login shell, or `command` with its
    /// arguments exactly as given, in `working_directory` (their home when that does not exist
    /// there, unless `working_directory_required` is set). Starts the container and sets the
    /// caller up first when needed. An empty `container` means the caller's default.
    ///
    /// `stdio` holds `stdin`, `stdout` and `stderr` for a session without a terminal; with the
    /// option `terminal` (and `rows`, `columns`) the session gets a terminal inside the container
    /// instead. Returns the container's name and `channel` (see `kapsule_dbus::session`) plus,
    /// with a terminal, `terminal`, its master side.
    #[allow(clippy::too_many_arguments, reason = "one D-Bus method with its arguments")]
    async fn enter(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
        container: String,
        command: Vec<String>,
        working_directory: String,
        environment: HashMap<String, String>,
        stdio: HashMap<String, zbus::OwnedFd>,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(String, HashMap<String, zbus::OwnedFd>), Error> {
        let who = Requester::of(&self.link, connection, &header).await?;
        let options = enter::EnterOptions::parse(&options)?;
        let session = enter::Session {
            container,
            command,
            working_directory,
            working_directory_required: options.working_directory_required,
            environment,
            stdio: enter::Stdio::of_call(options.terminal, stdio)?,
        };
        let started = enter::start(&self.daemon, &who, session).await?;
        let mut fds = HashMap::from([("channel".to_owned(), zbus::OwnedFd::from(started.channel))]);
        if let Some(terminal) = started.terminal {
            fds.insert("terminal".to_owned(), zbus::OwnedFd::from(terminal));
        }
        Ok((started.container, fds))
    }

    /// For clients of the original daemon (libkapsule-qt, Konsole): prepares the container for
    /// the caller (start, user setup) and returns a command that enters it, `kapsule enter`,
    /// which carries the environment in its own call rather than on its command line.
    /// The reply is one struct `(success, message, command)`; expected failures come back in-band
    /// as `(false, message, [])`.
    async fn prepare_enter(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
        container_name: String,
        command: Vec<String>,
        working_directory: String,
    ) -> Result<(EnterCommand,), Error> {
        let who = Requester::of(&self.link, connection, &header).await?;
        let prepared = enter::prepare_command(&self.daemon, &who, &container_name, command, working_directory).await?;
        Ok((prepared,))
    }

    /// The local images, as Incus's own JSON objects.
    async fn list_images(&self) -> Result<String, Error> {
        queries::list_images(&self.daemon).await
    }

    /// Imports the image in the directory `path` (metadata tarball and rootfs) under `alias`,
    /// replacing the image the alias named before. The files are opened as the caller.
    async fn import_image(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
        path: String,
        alias: String,
    ) -> Result<OwnedObjectPath, Error> {
        let who = Requester::authorized(&self.link, connection, &header, Action::ManageImages, &[]).await?;
        let plan = images::plan_import(&who.caller, &path, &alias).await?;
        let info = OperationInfo {
            kind: "import_image",
            description: format!("Importing image: {alias}"),
            target: alias,
        };
        self.operation(&who, info, move |daemon, reporter| async move {
            images::import(&daemon, &reporter, plan).await
        })
        .await
    }

    /// Refreshes cached remote images from their source: all of them (`image` empty), or those
    /// named `<remote>:<alias>` or `<alias>`.
    async fn refresh_images(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
        image: String,
    ) -> Result<OwnedObjectPath, Error> {
        let who = Requester::authorized(&self.link, connection, &header, Action::ManageImages, &[]).await?;
        let plan = images::plan_refresh(&self.daemon, image).await?;
        let info = OperationInfo {
            kind: "refresh_images",
            description: "Refreshing cached images".to_owned(),
            target: String::new(),
        };
        self.operation(&who, info, move |daemon, reporter| async move {
            images::refresh(&daemon, &reporter, plan).await
        })
        .await
    }

    /// Deletes a local image, by alias or full fingerprint.
    async fn delete_image(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
        identifier: String,
    ) -> Result<OwnedObjectPath, Error> {
        let who = Requester::authorized(&self.link, connection, &header, Action::ManageImages, &[]).await?;
        let image = images::resolve(&self.daemon, &identifier).await?;
        let info = OperationInfo {
            kind: "delete_image",
            description: format!("Deleting image: {identifier}"),
            target: identifier,
        };
        self.operation(&who, info, move |daemon, reporter| async move {
            images::delete(&daemon, &reporter, image).await
        })
        .await
    }

    /// Creates and starts a container. An empty `image` means the configured default.
    async fn create_container(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
        name: String,
        image: String,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<OwnedObjectPath, Error> {
        let who = creating(&self.link, connection, &header, &name, &options).await?;
        let plan = create::plan(&self.daemon, &name, &image, &options, &who.caller).await?;
        let info = OperationInfo {
            kind: "create",
            description: format!("Creating container: {name}"),
            target: name,
        };
        self.operation(&who, info, move |daemon, reporter| async move {
            create::run(&daemon, &reporter, plan).await
        })
        .await
    }

    /// Deletes a container; a running one only with `force`.
    async fn delete_container(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
        name: String,
        force: bool,
    ) -> Result<OwnedObjectPath, Error> {
        let who = managing_existing(&self.daemon, &self.link, connection, &header, &name).await?;
        lifecycle::check_delete(&self.daemon, &name, force).await?;
        let info = OperationInfo {
            kind: "delete",
            description: format!("Removing container: {name}"),
            target: name.clone(),
        };
        self.operation(&who, info, move |daemon, reporter| async move {
            lifecycle::delete(&daemon, &reporter, &name, force).await
        })
        .await
    }

    /// Starts a container.
    async fn start_container(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
        name: String,
    ) -> Result<OwnedObjectPath, Error> {
        let who = managing_existing(&self.daemon, &self.link, connection, &header, &name).await?;
        lifecycle::check_exists(&self.daemon, &name).await?;
        let info = OperationInfo {
            kind: "start",
            description: format!("Starting container: {name}"),
            target: name.clone(),
        };
        self.operation(&who, info, move |daemon, reporter| async move {
            lifecycle::start(&daemon, &reporter, &name).await
        })
        .await
    }

    /// Stops a container (killing it with `force`).
    async fn stop_container(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
        name: String,
        force: bool,
    ) -> Result<OwnedObjectPath, Error> {
        let who = managing_existing(&self.daemon, &self.link, connection, &header, &name).await?;
        lifecycle::check_exists(&self.daemon, &name).await?;
        let info = OperationInfo {
            kind: "stop",
            description: format!("Stopping container: {name}"),
            target: name.clone(),
        };
        self.operation(&who, info, move |daemon, reporter| async move {
            lifecycle::stop(&daemon, &reporter, &name, force).await
        })
        .await
    }

    /// The container's snapshots, oldest first, as `(name, created, automatic)`.
    async fn list_snapshots(&self, name: String) -> Result<Vec<SnapshotInfo>, Error> {
        snapshots::list(&self.daemon, &name).await
    }

    /// Takes a snapshot of the container's files (running or not). An empty `snapshot` names it
    /// by the date and time.
    async fn create_snapshot(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
        name: String,
        snapshot: String,
    ) -> Result<OwnedObjectPath, Error> {
        let who = managing_existing(&self.daemon, &self.link, connection, &header, &name).await?;
        let snapshot = snapshots::plan_take(&self.daemon, &name, &snapshot).await?;
        let info = OperationInfo {
            kind: "snapshot",
            description: format!("Taking snapshot '{snapshot}' of {name}"),
            target: name.clone(),
        };
        self.operation(&who, info, move |daemon, reporter| async move {
            snapshots::take(&daemon, &reporter, &name, &snapshot).await
        })
        .await
    }

    /// Removes one of the container's snapshots.
    async fn delete_snapshot(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
        name: String,
        snapshot: String,
    ) -> Result<OwnedObjectPath, Error> {
        let who = managing_existing(&self.daemon, &self.link, connection, &header, &name).await?;
        snapshots::check_snapshot(&self.daemon, &name, &snapshot).await?;
        let info = OperationInfo {
            kind: "delete_snapshot",
            description: format!("Removing snapshot '{snapshot}' of {name}"),
            target: name.clone(),
        };
        self.operation(&who, info, move |daemon, reporter| async move {
            snapshots::delete(&daemon, &reporter, &name, &snapshot).await
        })
        .await
    }

    /// Makes the container as it was at a snapshot: its files, config and devices. A running
    /// container is stopped first and started again after (its sessions end).
    async fn restore_snapshot(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
        name: String,
        snapshot: String,
    ) -> Result<OwnedObjectPath, Error> {
        let who = managing_existing(&self.daemon, &self.link, connection, &header, &name).await?;
        snapshots::check_snapshot(&self.daemon, &name, &snapshot).await?;
        let info = OperationInfo {
            kind: "restore_snapshot",
            description: format!("Restoring {name} to snapshot '{snapshot}'"),
            target: name.clone(),
        };
        self.operation(&who, info, move |daemon, reporter| async move {
            snapshots::restore(&daemon, &reporter, &name, &snapshot).await
        })
        .await
    }

    /// Makes the container anew from an image: the one it was made from (`image` empty) or a
    /// local one. Its own files are replaced (the host home and custom mounts are not); its
    /// name, owner and options stay; users are set up again when they next enter. A running
    /// container is stopped first (its sessions end) and started again. The snapshots Kapsule
    /// took before upgrades go with the old files; a container with snapshots the user took is
    /// refused (Incus cannot rebuild it), with how to keep and remove them.
    async fn reset_container(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
        name: String,
        image: String,
    ) -> Result<OwnedObjectPath, Error> {
        let who = managing_existing(&self.daemon, &self.link, connection, &header, &name).await?;
        let plan = reset::plan(&self.daemon, &name, &image).await?;
        let info = OperationInfo {
            kind: "reset",
            description: format!("Resetting container: {name}"),
            target: name,
        };
        self.operation(&who, info, move |daemon, reporter| async move {
            reset::run(&daemon, &reporter, plan).await
        })
        .await
    }

    /// Upgrades the container's packages with its own package manager (after the image's
    /// `/.kapsule/upgrade`, if it has one), each line of their output a message of the operation.
    /// A stopped container is started for it and stopped again. Where the storage pool makes
    /// snapshots cheap, an automatic one is taken first (option `snapshot`, a boolean, default
    /// true); the last few automatic ones are kept.
    async fn upgrade_container(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
        name: String,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<OwnedObjectPath, Error> {
        let who = managing_existing(&self.daemon, &self.link, connection, &header, &name).await?;
        let plan = upgrade::plan(&self.daemon, &name, &options).await?;
        let info = OperationInfo {
            kind: "upgrade",
            description: format!("Upgrading container: {name}"),
            target: name,
        };
        self.operation(&who, info, move |daemon, reporter| async move {
            upgrade::run(&daemon, &reporter, plan).await
        })
        .await
    }

    /// Creates container `name` as a copy of `source` (as it is now, or at `snapshot`), owned by
    /// the caller, with its own host name and machine ID, and starts it. `source` is only read.
    async fn clone_container(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
        source: String,
        name: String,
        snapshot: String,
    ) -> Result<OwnedObjectPath, Error> {
        meta::validate_name(&name)?;
        let who = managing_existing(&self.daemon, &self.link, connection, &header, &source).await?;
        let plan = clone::plan(&self.daemon, &source, &name, &snapshot, &who.caller).await?;
        let info = OperationInfo {
            kind: "clone",
            description: format!("Cloning {source} as {name}"),
            target: name,
        };
        self.operation(&who, info, move |daemon, reporter| async move {
            clone::run(&daemon, &reporter, plan).await
        })
        .await
    }
}

/// The requester of a call that manages container `name`, once polkit said they may. The name is
/// checked first, so polkit (whose rules see it as the `container` detail) never gets one that no
/// container can have.
async fn managing(link: &Link, connection: &Connection, header: &Header<'_>, name: &str) -> Result<Requester, Error> {
    meta::validate_name(name)?;
    Requester::authorized(
        link,
        connection,
        header,
        Action::ManageContainer,
        &[("container", name)],
    )
    .await
}

/// [`managing`] for a CreateContainer call: one that asks for an unprivileged container (as its
/// own option, which image defaults never override) is using one's own unprivileged container;
/// the options are checked whole afterwards, by the create's plan.
async fn creating(
    link: &Link,
    connection: &Connection,
    header: &Header<'_>,
    name: &str,
    options: &HashMap<String, OwnedVariant>,
) -> Result<Requester, Error> {
    let unprivileged = matches!(
        options.get("unprivileged").map(|v| &**v),
        Some(zbus::Variant::Bool(true))
    );
    if !unprivileged {
        return managing(link, connection, header, name).await;
    }
    meta::validate_name(name)?;
    Requester::authorized(
        link,
        connection,
        header,
        Action::UseUnprivileged,
        &[("container", name)],
    )
    .await
}

/// [`managing`] for a method on an existing container: polkit's rules see its owner too (the
/// `owner` detail: the uid that created it, empty when it records none), so a site's rule can
/// let people manage their own containers without a password and ask about anyone else's. One's
/// own unprivileged container is using it ([`meta::manage_action`]).
async fn managing_existing(
    daemon: &Daemon,
    link: &Link,
    connection: &Connection,
    header: &Header<'_>,
    name: &str,
) -> Result<Requester, Error> {
    meta::validate_name(name)?;
    let who = Requester::of(link, connection, header).await?;
    let (owner, action) = match daemon.containers.incus.get_instance(name).await {
        Ok(instance) if meta::is_kapsule(&instance) => (
            instance.config.get(meta::OWNER_KEY).cloned().unwrap_or_default(),
            meta::manage_action(&instance, who.caller.uid),
        ),
        _ => (String::new(), Action::ManageContainer),
    };
    who.authorize(action, &[("container", name), ("owner", &owner)]).await?;
    Ok(who)
}

impl Manager {
    /// Starts `work` as an operation described by `info` and returns its path; the work gets
    /// the pipelines' handles and its reporter.
    async fn operation<W, F>(&self, who: &Requester, info: OperationInfo, work: W) -> Result<OwnedObjectPath, Error>
    where
        W: FnOnce(Arc<Daemon>, Reporter) -> F + Send + 'static,
        F: Future<Output = Result<String, Failure>> + Send + 'static,
    {
        let daemon = self.daemon.clone();
        self.operations
            .start(who, info, move |reporter| work(daemon, reporter))
            .await
            .map_err(Error::ZBus)
    }
}
