//! `org.kde.kapsule.Manager` on `/org/kde/kapsule`, with the original daemon's wire signatures.
//!
//! Methods check what they can at once and answer with a named error; long work runs as an
//! operation whose path is returned immediately.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use kapsule_dbus::{ContainerInfo, EnterCommand, Error};
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{Connection, OwnedObjectPath, OwnedVariant, interface};

use crate::authority::{Action, Requester};
use crate::link::Link;
use crate::operation::{Failure, OperationInfo, Reporter};
use crate::{State, config, containers, create, enter, images, users};

/// The manager object.
#[derive(Debug)]
pub(crate) struct Manager {
    pub(crate) state: Arc<State>,
    /// The bus, or one client of the daemon's socket: each has a manager of its own.
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

    /// Paths of the operations still running.
    fn list_operations(&self) -> Vec<OwnedObjectPath> {
        self.state.operations.running(&self.link)
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
            Ok((caller, _)) => config::for_caller(&self.state.settings.system_files(), &caller)
                .await
                .into_iter()
                .collect(),
            Err(e) => HashMap::from([("error".to_owned(), e.to_string())]),
        }
    }

    /// Every Kapsule container as `(name, status, image, created, mode)`, in one Incus request.
    async fn list_containers(&self) -> Result<Vec<ContainerInfo>, Error> {
        let instances = self.state.incus.list_instances().await.map_err(crate::incus_error)?;
        Ok(instances
            .iter()
            .filter(|i| containers::is_kapsule(i))
            .map(containers::container_info)
            .collect())
    }

    /// One Kapsule container as one struct `(name, status, image, created, mode)`.
    // The one-element tuple makes the reply one `(sssss)`, not five strings (see kapsule_dbus::reply).
    async fn get_container_info(&self, name: String) -> Result<(ContainerInfo,), Error> {
        let instance = containers::get_kapsule_container(&self.state, &name).await?;
        Ok((containers::container_info(&instance),))
    }

    /// True when the user `uid` was set up in the container.
    async fn is_user_setup(&self, container_name: String, uid: u32) -> Result<bool, Error> {
        let instance = containers::get_kapsule_container(&self.state, &container_name).await?;
        Ok(users::is_set_up(&instance, uid))
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
        let instance = containers::get_kapsule_container(&self.state, &container_name).await?;
        // Oneself in one's own container is entering; anyone else, or anywhere else, managing.
        let action = if who.caller.uid == uid {
            containers::enter_action(&instance, uid)
        } else {
            Action::ManageContainer
        };
        who.authorize(action, &[("container", &container_name)]).await?;
        let account = users::requested_account(uid, gid, &username, &home_dir)?;
        self.operation(
            &who,
            "setup_user",
            format!("Setting up user '{username}' in {container_name}"),
            container_name.clone(),
            move |state, reporter| async move {
                containers::ensure_running(&state, Some(&reporter), &instance).await?;
                let notes = users::Notes(Some(&reporter));
                if users::ensure(&state, notes, &instance, &account).await? {
                    Ok(format!("User '{}' configured", account.name))
                } else {
                    Ok(format!("User '{}' was set up already", account.name))
                }
            },
        )
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
        let stdio = match options.terminal {
            Some((rows, columns)) => enter::Stdio::Terminal(rows, columns),
            None => {
                let mut stdio = stdio;
                let mut take = |key: &str| {
                    stdio.remove(key).map(std::os::fd::OwnedFd::from).ok_or_else(|| {
                        Error::InvalidArgument(format!("No '{key}' descriptor and no terminal asked for"))
                    })
                };
                enter::Stdio::Fds([take("stdin")?, take("stdout")?, take("stderr")?])
            }
        };
        let session = enter::Session {
            container,
            command,
            working_directory,
            working_directory_required: options.working_directory_required,
            environment,
            stdio,
        };
        let started = enter::start(&self.state, &who, session).await?;
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
        let name = enter::resolve_name(&self.state, &who.caller, &container_name).await?;
        match enter::prepare(&self.state, &who, &name).await {
            Ok(_) => {}
            Err(Error::NotFound(message) | Error::Failed(message) | Error::InvalidArgument(message)) => {
                let failed = EnterCommand {
                    success: false,
                    message,
                    command: Vec::new(),
                };
                return Ok((failed,));
            }
            Err(e) => return Err(e),
        }
        let mut argv = vec!["kapsule".to_owned(), "enter".to_owned()];
        if !working_directory.is_empty() && self.is_directory_in(&name, &working_directory).await {
            argv.extend(["--cwd".to_owned(), working_directory]);
        }
        argv.push(name);
        if !command.is_empty() {
            argv.push("--".to_owned());
            argv.extend(command);
        }
        let prepared = EnterCommand {
            success: true,
            message: String::new(),
            command: argv,
        };
        Ok((prepared,))
    }

    /// The local images, as Incus's own JSON objects.
    async fn list_images(&self) -> Result<String, Error> {
        let images = self.state.incus.list_images().await.map_err(crate::incus_error)?;
        serde_json::to_string(&images).map_err(|e| Error::Failed(e.to_string()))
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
        self.operation(
            &who,
            "import_image",
            format!("Importing image: {alias}"),
            alias,
            move |state, reporter| async move { images::import(&state, &reporter, plan).await },
        )
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
        let remotes = crate::remotes::Remotes::read(&self.state.settings.system_files()).await;
        let filter = images::RefreshFilter::parse(&image, &remotes)?;
        self.operation(
            &who,
            "refresh_images",
            "Refreshing cached images".to_owned(),
            String::new(),
            move |state, reporter| async move { images::refresh(&state, &reporter, &image, &filter, &remotes).await },
        )
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
        let image = images::resolve(&self.state, &identifier).await?;
        self.operation(
            &who,
            "delete_image",
            format!("Deleting image: {identifier}"),
            identifier,
            move |state, reporter| async move { images::delete(&state, &reporter, image).await },
        )
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
        let who = managing(&self.link, connection, &header, &name).await?;
        let image = if image.is_empty() {
            config::for_caller(&self.state.settings.system_files(), &who.caller)
                .await
                .remove("default_image")
                .unwrap_or_default()
        } else {
            image
        };
        let plan = create::plan(&self.state, &name, &image, &options, &who.caller).await?;
        self.operation(
            &who,
            "create",
            format!("Creating container: {name}"),
            name,
            move |state, reporter| async move { create::run(&state, &reporter, plan).await },
        )
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
        let who = managing(&self.link, connection, &header, &name).await?;
        let instance = containers::get_kapsule_container(&self.state, &name).await?;
        if containers::is_running(&instance) && !force {
            return Err(Error::Failed(format!(
                "Container '{name}' is running; stop it first or use force"
            )));
        }
        self.operation(
            &who,
            "delete",
            format!("Removing container: {name}"),
            name.clone(),
            move |state, reporter| async move { containers::delete(&state, &reporter, &name, force).await },
        )
        .await
    }

    /// Starts a container.
    async fn start_container(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
        name: String,
    ) -> Result<OwnedObjectPath, Error> {
        let who = managing(&self.link, connection, &header, &name).await?;
        containers::get_kapsule_container(&self.state, &name).await?;
        self.operation(
            &who,
            "start",
            format!("Starting container: {name}"),
            name.clone(),
            move |state, reporter| async move { containers::start(&state, &reporter, &name).await },
        )
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
        let who = managing(&self.link, connection, &header, &name).await?;
        containers::get_kapsule_container(&self.state, &name).await?;
        self.operation(
            &who,
            "stop",
            format!("Stopping container: {name}"),
            name.clone(),
            move |state, reporter| async move { containers::stop(&state, &reporter, &name, force).await },
        )
        .await
    }
}

/// The requester of a call that manages container `name`, once polkit said they may. The name is
/// checked first, so polkit (whose rules see it as the `container` detail) never gets one that no
/// container can have.
async fn managing(link: &Link, connection: &Connection, header: &Header<'_>, name: &str) -> Result<Requester, Error> {
    containers::validate_name(name)?;
    Requester::authorized(
        link,
        connection,
        header,
        Action::ManageContainer,
        &[("container", name)],
    )
    .await
}

impl Manager {
    /// Whether `path` is a directory in running container `name` (symlinks followed inside
    /// it); anything that keeps it from being known is a no.
    async fn is_directory_in(&self, name: &str, path: &str) -> bool {
        let Ok(files) = crate::files::ContainerFiles::open(&self.state, name).await else {
            return false;
        };
        let path = path.to_owned();
        matches!(
            files.run(move |root| root.metadata(&path)).await,
            Ok(Some(stat)) if stat.kind == kapsule_rootfs::Kind::Directory
        )
    }

    /// Starts `work` as an operation of `kind` and returns its path; the work gets the shared
    /// state and its reporter.
    async fn operation<W, F>(
        &self,
        who: &Requester,
        kind: &'static str,
        description: String,
        target: String,
        work: W,
    ) -> Result<OwnedObjectPath, Error>
    where
        W: FnOnce(Arc<State>, Reporter) -> F + Send + 'static,
        F: Future<Output = Result<String, Failure>> + Send + 'static,
    {
        let state = self.state.clone();
        let info = OperationInfo {
            kind,
            description,
            target,
        };
        self.state
            .operations
            .start(who, info, move |reporter| work(state, reporter))
            .await
            .map_err(Error::ZBus)
    }
}
