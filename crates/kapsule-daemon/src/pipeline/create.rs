//! The create pipeline. Everything that can be checked is checked before the operation starts
//! (name, existence, image, options), so a bad request gets a named D-Bus error and changes
//! nothing; the operation then creates, starts and fixes up the container, runs the hooks and
//! installs the packages asked for (`container/provision.rs`), and removes it again if any of
//! that fails or the client cancels.

use std::collections::{BTreeMap, HashMap};

use kapsule_dbus::Error;
use kapsule_dbus::image::{ImageRef, is_fingerprint};
use kapsule_dbus::options::{self, CreateOptions};
use kapsule_incus::models::{Image, InstanceSource, InstancesPost};
use zbus::DBusError as _;
use zbus::OwnedVariant;

use crate::container::meta::{self, OWNER_KEY, PENDING_KEY, validate_name};
use crate::container::provision::{self, Steps};
use crate::container::{fixups, hostsync, idmap, spec};
use crate::error::incus_error;
use crate::host::journal::{self, Entry, Work};
use crate::identity::account::expand_home;
use crate::identity::caller::{Caller, Missing, config_for};
use crate::image::pull::{pull, pulled_from};
use crate::image::remotes::{Remote, Remotes};
use crate::operation::incus::run_incus_operation;
use crate::operation::{Failure, MessageKind, Notes, Reporter};
use crate::pipeline::{Daemon, ephemeral, recovery};

/// A create request that passed every check.
#[derive(Debug)]
pub(crate) struct Plan {
    pub name: String,
    pub image_label: String,
    pub image: ImageSource,
    /// The client's own options; the image's defaults go under them.
    pub client: BTreeMap<String, options::OptionValue>,
    /// The options in effect, as far as they are known before the image is local.
    pub options: CreateOptions,
    /// The user creating it, recorded as its owner.
    pub owner: Caller,
    /// What recovery did to a container of this name a killed daemon left, said first.
    pub recovered: Option<String>,
}

/// Where the container's image comes from.
#[derive(Debug)]
pub(crate) enum ImageSource {
    /// In the local store (imported, or pulled earlier).
    Local(Box<Image>),
    /// On a remote server, pulled into the store first.
    Pull {
        remote: Remote,
        alias: String,
        certificate: Option<String>,
    },
}

/// Checks a create request without changing anything. An empty `image` is the owner's
/// configured default.
pub(crate) async fn plan(
    daemon: &Daemon,
    name: &str,
    image: &str,
    client_options: &HashMap<String, OwnedVariant>,
    owner: &Caller,
) -> Result<Plan, Error> {
    validate_name(name)?;
    let default;
    let image = if image.is_empty() {
        default = config_for(&daemon.containers.settings.system_files(), owner)
            .await
            .remove("default_image")
            .unwrap_or_default();
        default.as_str()
    } else {
        image
    };
    let client = options::from_dbus(client_options)?;
    let recovered = check_free(daemon, name).await?;
    let source = resolve_image(daemon, image).await?;
    let image_defaults = match &source {
        ImageSource::Local(image) => image_default_options(image),
        ImageSource::Pull { .. } => BTreeMap::new(),
    };
    let options = options::resolve(&image_defaults, &client)?;
    check_mounts(owner, &options).await?;
    Ok(Plan {
        name: name.to_owned(),
        image_label: image.to_owned(),
        image: source,
        client,
        options,
        owner: owner.clone(),
        recovered,
    })
}

/// Checks that no instance is called `name`, recovering first what a killed daemon's create or
/// delete of this name left. Returns what recovery did, to be said to the client.
pub(crate) async fn check_free(daemon: &Daemon, name: &str) -> Result<Option<String>, Error> {
    match daemon.containers.incus.get_instance(name).await {
        Ok(instance) if meta::is_kapsule(&instance) && meta::is_abandoned(&instance) => {
            let recovered = recovery::recover_container(daemon, name).await?;
            // A reset is recovered by doing it again: the container is still there.
            match daemon.containers.incus.get_instance(name).await {
                Err(e) if e.is_not_found() => Ok(recovered),
                _ => Err(Error::AlreadyExists(format!("Container '{name}' already exists"))),
            }
        }
        Ok(instance) if meta::is_kapsule(&instance) && meta::pending(&instance).is_some() => Err(Error::AlreadyExists(
            format!("Container '{name}' already exists (work is under way on it)"),
        )),
        Ok(_) => Err(Error::AlreadyExists(format!("Container '{name}' already exists"))),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(incus_error(e)),
    }
}

/// The container gets read and write access to each custom mount and to a separate home (as
/// root, in a privileged container), so the creator must be able to read, write and enter each
/// directory themselves, or to create it. `~/` is their own home here; it is expanded per user
/// again when each user is set up, and checked for them then.
async fn check_mounts(owner: &Caller, options: &CreateOptions) -> Result<(), Error> {
    let identity = owner.identity();
    let home = (!options.home.is_empty()).then_some(&options.home);
    let mounts = options.custom_mounts.iter().map(|m| (m, "Custom mount"));
    for (raw, what) in mounts.chain(home.map(|h| (h, "Home"))) {
        let path = expand_home(raw, &owner.home);
        match identity.mount_source(&path, Missing::Check).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(Error::NotAuthorized(format!(
                    "You cannot share {} with a container: you must be able to read, write and enter it yourself",
                    path.display()
                )));
            }
            Err(e) => return Err(Error::InvalidArgument(format!("{what} {}: {e}", path.display()))),
        }
    }
    Ok(())
}

/// `local:<alias>` and a bare alias that exists locally use the local store. `<remote>:<alias>`
/// and other bare aliases (from `images`) use the image pulled from that server under that alias
/// before, if the store has one (Incus keeps it current; `kapsule image refresh` updates it now),
/// so a second container needs no network; else the image is pulled.
async fn resolve_image(daemon: &Daemon, image: &str) -> Result<ImageSource, Error> {
    let parsed = ImageRef::parse(image).map_err(|e| e.for_image(image))?;
    let (remote, alias) = (parsed.remote, parsed.alias);
    if parsed.may_be_local() {
        match local_image(daemon, alias).await? {
            Some(found) => return Ok(ImageSource::Local(Box::new(found))),
            None if remote == Some("local") => {
                return Err(Error::NotFound(format!(
                    "No local image with alias or fingerprint '{alias}'"
                )));
            }
            None => {}
        }
    } else if remote == Some("local") {
        return Err(Error::InvalidArgument(format!(
            "Invalid image {}: a local alias has no '/'",
            kapsule_dbus::quote(image)
        )));
    }
    let remotes = Remotes::read(&daemon.containers.settings.system_files()).await;
    let remote = remotes.get(remote.unwrap_or("images"))?.clone();
    let images = daemon.containers.incus.list_images().await.map_err(incus_error)?;
    if let Some(pulled) = pulled_from(&images, &remote.url, alias) {
        return Ok(ImageSource::Local(Box::new(pulled.clone())));
    }
    let certificate = remote.certificate_pem().await?;
    Ok(ImageSource::Pull {
        remote,
        alias: alias.to_owned(),
        certificate,
    })
}

async fn local_image(daemon: &Daemon, alias: &str) -> Result<Option<Image>, Error> {
    let fingerprint = match daemon.containers.incus.get_image_alias(alias).await {
        Ok(a) => a.target,
        Err(e) if e.is_not_found() => {
            // A full fingerprint names an image too.
            if !is_fingerprint(alias) {
                return Ok(None);
            }
            alias.to_owned()
        }
        Err(e) => return Err(incus_error(e)),
    };
    match daemon.containers.incus.get_image(&fingerprint).await {
        Ok(image) => Ok(Some(image)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(incus_error(e)),
    }
}

/// The image's own option defaults: `requirements.kapsule_default_options` (what survives a
/// simplestreams pull), else `kapsule.default_options`. Broken defaults are logged and ignored:
/// an image must not make creation impossible.
fn image_default_options(image: &Image) -> BTreeMap<String, options::OptionValue> {
    let Some(json) = image
        .properties
        .get("requirements.kapsule_default_options")
        .or_else(|| image.properties.get("kapsule.default_options"))
    else {
        return BTreeMap::new();
    };
    match options::from_json_defaults(json) {
        Ok((defaults, ignored)) => {
            if !ignored.is_empty() {
                log::info!(
                    "image {} has unknown default options, ignored: {}",
                    image.fingerprint,
                    ignored.join(", ")
                );
            }
            defaults
        }
        Err(e) => {
            log::warn!("image {}: {e}", image.fingerprint);
            BTreeMap::new()
        }
    }
}

/// The operation's work: pull the image if it is not local, create, start, fix up; on failure
/// or cancellation, remove the container that was made (a pulled image stays: the next create
/// from it needs no download). Journaled (`host/journal.rs`): the instance is made with an entry
/// that the last step clears, so a container whose create a killed daemon did not finish is
/// known and removed by the next one.
pub(crate) async fn run(daemon: &Daemon, reporter: &Reporter, mut plan: Plan) -> Result<String, Failure> {
    let name = plan.name.clone();
    let _hold = journal::hold(&journal::instance_key(&name)).await;
    if let Some(what) = &plan.recovered {
        reporter
            .warn(&format!("An earlier container '{name}' was removed first: {what}"))
            .await;
    }
    let image = match &plan.image {
        ImageSource::Local(image) => (**image).clone(),
        ImageSource::Pull {
            remote,
            alias,
            certificate,
        } => {
            let image = pull(
                &daemon.containers.incus,
                &daemon.containers.settings.incus_cache_dir(),
                reporter,
                remote,
                alias,
                certificate.clone(),
            )
            .await
            .map_err(|failure| match failure {
                Failure::Failed(why) => Failure::Failed(format!("Creating '{name}' failed: {why}")),
                cancelled => cancelled,
            })?;
            // Now the image's own defaults are known: they go under the client's options.
            let defaults = image_default_options(&image);
            if !defaults.is_empty() {
                let refused = |e: Error| {
                    Failure::Failed(format!(
                        "Creating '{name}' failed: with the defaults of image {}: {}",
                        plan.image_label,
                        e.description().unwrap_or_default()
                    ))
                };
                plan.options = options::resolve(&defaults, &plan.client).map_err(|e| refused(e.into()))?;
                check_mounts(&plan.owner, &plan.options).await.map_err(refused)?;
            }
            image
        }
    };
    let gpu = spec::host_has_gpu(&daemon.containers).await;
    let nvidia_hook = daemon.containers.settings.nvidia_hook_path();
    reporter.info(&format!("Image: {}", plan.image_label)).await;
    log::info!("creating {name} from image {}", image.fingerprint);
    if plan.options.gpu && !gpu {
        reporter
            .warn("No GPU found on this host; the container gets none")
            .await;
    }
    if plan.options.gpu && plan.options.nvidia_drivers {
        match &nvidia_hook {
            Some(_) => {
                reporter
                    .say(MessageKind::Dim, "NVIDIA userspace drivers will be injected on start")
                    .await
            }
            None => {
                reporter
                    .warn("NVIDIA driver injection is not installed (kapsule-nvidia-hook); the container gets none")
                    .await
            }
        }
    }
    let session_mode = plan.options.session_mode;
    let steps = Steps::of_options(&plan.options);
    let mut config = spec::config(&plan.options, (plan.owner.uid, plan.owner.gid));
    config.insert(OWNER_KEY.into(), plan.owner.uid.to_string());
    config.insert(meta::IMAGE_KEY.into(), plan.image_label.clone());
    config.insert(PENDING_KEY.into(), Entry::new(Work::Create).value());
    let raw = spec::raw_lxc(
        &plan.options,
        &daemon.containers.settings.network_namespace_path(),
        nvidia_hook.as_deref(),
        &spec::shmounts_path(&daemon.containers.incus_dir(), &name),
    );
    config.insert("raw.lxc".into(), raw);
    let request = InstancesPost {
        name: name.clone(),
        source: InstanceSource::local_fingerprint(image.fingerprint.clone()),
        config,
        devices: spec::devices(&plan.options, gpu, daemon.containers.settings.storage_pool()),
        profiles: Vec::new(),
        kind: "container".into(),
        start: true,
        description: String::new(),
    };
    let progress = reporter.progress_start("Creating container", -1).await;
    let created = async {
        idmap::give_root(&daemon.containers, &request.config).await?;
        let op = daemon.containers.incus.create_instance(&request).await?;
        run_incus_operation(&daemon.containers.incus, reporter, op).await?;
        if reporter.is_cancelled() {
            return Err(Failure::Cancelled);
        }
        fixups::apply(&daemon.containers, Notes(Some(reporter)), &name, session_mode).await?;
        hostsync::report(
            Notes(Some(reporter)),
            hostsync::sync_one(&daemon.containers, &name).await,
        )
        .await;
        if reporter.is_cancelled() {
            return Err(Failure::Cancelled);
        }
        provision::run(&daemon.containers, Notes(Some(reporter)), &name, &steps).await?;
        // The last step: from here on the container is done.
        recovery::clear_container_entry(daemon, &name).await?;
        Ok(())
    }
    .await;
    match created {
        Ok(()) => {
            reporter.progress_done(&progress, true, "").await;
            if plan.options.ephemeral {
                reporter
                    .say(MessageKind::Dim, "It is removed once the last session in it ends")
                    .await;
                daemon.ephemeral.watch(&name, ephemeral::FIRST_SESSION_GRACE);
            }
            daemon.clients.containers_changed().await;
            Ok(format!("Container '{name}' created"))
        }
        Err(failure) => {
            let why = match &failure {
                Failure::Cancelled => "cancelled".to_owned(),
                Failure::Failed(why) => why.clone(),
            };
            reporter.progress_done(&progress, false, &why).await;
            remove_half_made(daemon, &name).await;
            Err(match failure {
                Failure::Failed(why) if plan.options.unprivileged && why.contains("idmap") => {
                    Failure::Failed(format!("Creating '{name}' failed: {why} ({NO_ID_RANGE})"))
                }
                Failure::Failed(why) => Failure::Failed(format!("Creating '{name}' failed: {why}")),
                cancelled => cancelled,
            })
        }
    }
}

/// What a user is told when Incus has no ids for unprivileged containers ("System doesn't have a
/// functional idmap setup"): it reads root's range when it starts.
const NO_ID_RANGE: &str = "Incus has no range of ids for unprivileged containers; it reads root's from /etc/subuid and /etc/subgid when it starts, and Kapsule's drop-in adds one then: restart Incus (or add `root:1000000:1000000000` to both files yourself and restart it)";

/// Removes a container the pipeline made but could not finish. Errors are logged: the failure the
/// client sees is the one that caused this, and the container's journal entry stays, so the
/// container is removed when it is next looked at.
pub(crate) async fn remove_half_made(daemon: &Daemon, name: &str) {
    log::info!("removing the half-made container {name}");
    if let Err(e) = recovery::remove_instance(daemon, name).await {
        log::warn!("could not remove the half-made container {name} (it is retried when it is next looked at): {e}");
    }
}
