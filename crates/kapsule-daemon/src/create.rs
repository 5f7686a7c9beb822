//! The create pipeline. Everything that can be checked is checked before the operation starts
//! (name, existence, image, options), so a bad request gets a named D-Bus error and changes
//! nothing; the operation then creates, starts and fixes up the container, and removes it again
//! if any of that fails or the client cancels.

use std::collections::{BTreeMap, HashMap};

use kapsule_dbus::Error;
use kapsule_dbus::image::{ImageRef, is_fingerprint};
use kapsule_dbus::options::{self, CreateOptions};
use kapsule_incus::models::{ConfigMap, Devices, Image, InstanceSource, InstancesPost};
use zbus::DBusError as _;
use zbus::OwnedVariant;

use crate::State;
use crate::caller::{Caller, Missing};
use crate::containers::{run_incus_operation, validate_name};
use crate::operation::{Failure, MessageKind, Reporter};

/// The storage pool containers' root disks live in (kapsule-init creates it).
const POOL: &str = "default";

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
}

/// Where the container's image comes from.
#[derive(Debug)]
pub(crate) enum ImageSource {
    /// In the local store (imported, or pulled earlier).
    Local(Box<Image>),
    /// On a remote server, pulled into the store first.
    Pull {
        remote: crate::remotes::Remote,
        alias: String,
        certificate: Option<String>,
    },
}

/// Checks a create request without changing anything.
pub(crate) async fn plan(
    state: &State,
    name: &str,
    image: &str,
    client_options: &HashMap<String, OwnedVariant>,
    owner: &Caller,
) -> Result<Plan, Error> {
    validate_name(name)?;
    let client = options::from_dbus(client_options)?;
    match state.incus.get_instance(name).await {
        Ok(_) => return Err(Error::AlreadyExists(format!("Container '{name}' already exists"))),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(crate::incus_error(e)),
    }
    let source = resolve_image(state, image).await?;
    let image_defaults = match &source {
        ImageSource::Local(image) => image_default_options(image),
        ImageSource::Pull { .. } => BTreeMap::new(),
    };
    let options = options::resolve(&image_defaults, &client)?;
    check_custom_mounts(owner, &options.custom_mounts).await?;
    Ok(Plan {
        name: name.to_owned(),
        image_label: image.to_owned(),
        image: source,
        client,
        options,
        owner: owner.clone(),
    })
}

/// The container gets read and write access to each custom mount (as root, in a privileged
/// container), so the creator must be able to read, write and enter each directory themselves,
/// or to create it. `~/` is their own home here; it is expanded per user again when each user
/// is set up, and checked for them then.
async fn check_custom_mounts(owner: &Caller, mounts: &[String]) -> Result<(), Error> {
    let identity = owner.identity();
    for raw in mounts {
        let path = crate::users::expand_home(raw, &owner.home);
        match identity.mount_source(&path, Missing::Check).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(Error::NotAuthorized(format!(
                    "You cannot share {} with a container: you must be able to read, write and enter it yourself",
                    path.display()
                )));
            }
            Err(e) => return Err(Error::InvalidArgument(format!("Custom mount {}: {e}", path.display()))),
        }
    }
    Ok(())
}

/// `local:<alias>` and a bare alias that exists locally use the local store. `<remote>:<alias>`
/// and other bare aliases (from `images`) use the image pulled from that server under that alias
/// before, if the store has one (Incus keeps it current; `kapsule image refresh` updates it now),
/// so a second container needs no network; else the image is pulled.
async fn resolve_image(state: &State, image: &str) -> Result<ImageSource, Error> {
    let parsed = ImageRef::parse(image).map_err(|e| e.for_image(image))?;
    let (remote, alias) = (parsed.remote, parsed.alias);
    if parsed.may_be_local() {
        match local_image(state, alias).await? {
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
    let remotes = crate::remotes::Remotes::read(&state.settings.system_files()).await;
    let remote = remotes.get(remote.unwrap_or("images"))?.clone();
    let images = state.incus.list_images().await.map_err(crate::incus_error)?;
    if let Some(pulled) = crate::images::pulled_from(&images, &remote.url, alias) {
        return Ok(ImageSource::Local(Box::new(pulled.clone())));
    }
    let certificate = remote.certificate_pem().await?;
    Ok(ImageSource::Pull {
        remote,
        alias: alias.to_owned(),
        certificate,
    })
}

async fn local_image(state: &State, alias: &str) -> Result<Option<Image>, Error> {
    let fingerprint = match state.incus.get_image_alias(alias).await {
        Ok(a) => a.target,
        Err(e) if e.is_not_found() => {
            // A full fingerprint names an image too.
            if !is_fingerprint(alias) {
                return Ok(None);
            }
            alias.to_owned()
        }
        Err(e) => return Err(crate::incus_error(e)),
    };
    match state.incus.get_image(&fingerprint).await {
        Ok(image) => Ok(Some(image)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(crate::incus_error(e)),
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

/// `security.*` and the `user.kapsule.*` metadata (the original daemon's keys, so containers it
/// made are read the same way).
pub(crate) fn config(options: &CreateOptions) -> ConfigMap {
    let mut config = ConfigMap::new();
    let mut set = |k: &str, v: &str| {
        config.insert(k.to_owned(), v.to_owned());
    };
    // Privileged with nesting: docker, podman and systemd run inside as they do on a host.
    set("security.privileged", "true");
    set("security.nesting", "true");
    let yes_no = |b: bool| if b { "true" } else { "false" };
    if options.session_mode {
        set("user.kapsule.session-mode", "true");
    }
    if options.dbus_mux {
        set("user.kapsule.dbus-mux", "true");
    }
    set("user.kapsule.host-rootfs", yes_no(options.host_rootfs));
    set("user.kapsule.mount-home", yes_no(options.mount_home));
    set("user.kapsule.gpu", yes_no(options.gpu));
    set(
        "user.kapsule.nvidia-drivers",
        yes_no(options.gpu && options.nvidia_drivers),
    );
    if !options.custom_mounts.is_empty() {
        set(
            "user.kapsule.custom-mounts",
            &serde_json::to_string(&options.custom_mounts).unwrap_or_default(),
        );
    }
    config
}

/// One device's settings, from `(key, value)` pairs.
pub(crate) fn device(pairs: &[(&str, &str)]) -> ConfigMap {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The root disk, the GPU when asked for and present, and the host filesystem.
pub(crate) fn devices(options: &CreateOptions, gpu_present: bool) -> Devices {
    let mut devices = Devices::new();
    devices.insert(
        "root".into(),
        device(&[("type", "disk"), ("path", "/"), ("pool", POOL)]),
    );
    // Incus refuses to start a container whose gpu device finds no GPU, so it is only added when
    // the host has one.
    if options.gpu && gpu_present {
        devices.insert("gpu".into(), device(&[("type", "gpu")]));
    }
    if options.host_rootfs {
        devices.insert(
            "hostfs".into(),
            device(&[
                ("type", "disk"),
                ("source", "/"),
                ("path", "/.kapsule/host"),
                ("propagation", "rslave"),
                ("recursive", "true"),
                ("shift", "false"),
            ]),
        );
    }
    devices
}

/// Whether the host has a GPU Incus can pass through.
/// True when Incus can give containers a GPU (it refuses to start a `gpu` device otherwise).
/// An error counts as no GPU: the container then starts, without one.
pub(crate) async fn host_has_gpu(state: &State) -> bool {
    match state.incus.gpu_count().await {
        Ok(n) => n > 0,
        Err(e) => {
            log::warn!("cannot ask Incus for GPUs: {e}");
            false
        }
    }
}

/// The `raw.lxc` lines of a container: the network namespace it shares (the host's: LXC opens
/// the path in incusd's `forkstart`, which lives in the host's), and the NVIDIA mount hook when
/// asked for and installed.
///
/// `lxc.namespace.share.net=<path>` is the host networking every Incus accepts: 6.0 rejects the
/// original's `lxc.net.0.type=none` (only address keys of `lxc.net.*` pass its raw.lxc check),
/// while `lxc.namespace.*` passes old and new. Containers the original made with
/// `lxc.net.0.type=none`, on an Incus that took it, are left as they are and keep working.
pub(crate) fn raw_lxc(
    options: &CreateOptions,
    network_namespace: &std::path::Path,
    nvidia_hook: Option<&std::path::Path>,
) -> String {
    let mut lines = format!("lxc.namespace.share.net={}\n", network_namespace.display());
    if options.gpu
        && options.nvidia_drivers
        && let Some(hook) = nvidia_hook
    {
        lines.push_str(&format!("lxc.hook.mount={}\n", hook.display()));
    }
    lines
}

/// The operation's work: pull the image if it is not local, create, start, fix up; on failure
/// or cancellation, remove the container that was made (a pulled image stays: the next create
/// from it needs no download).
pub(crate) async fn run(state: &State, reporter: &Reporter, mut plan: Plan) -> Result<String, Failure> {
    let name = plan.name.clone();
    let image = match &plan.image {
        ImageSource::Local(image) => (**image).clone(),
        ImageSource::Pull {
            remote,
            alias,
            certificate,
        } => {
            let image = crate::images::pull(state, reporter, remote, alias, certificate.clone())
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
                check_custom_mounts(&plan.owner, &plan.options.custom_mounts)
                    .await
                    .map_err(refused)?;
            }
            image
        }
    };
    let gpu = host_has_gpu(state).await;
    let nvidia_hook = state.settings.nvidia_hook_path();
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
    let mut config = config(&plan.options);
    config.insert(crate::containers::OWNER_KEY.into(), plan.owner.uid.to_string());
    let raw = raw_lxc(
        &plan.options,
        &state.settings.network_namespace_path(),
        nvidia_hook.as_deref(),
    );
    config.insert("raw.lxc".into(), raw);
    let request = InstancesPost {
        name: name.clone(),
        source: InstanceSource::local_fingerprint(image.fingerprint.clone()),
        config,
        devices: devices(&plan.options, gpu),
        profiles: Vec::new(),
        kind: "container".into(),
        start: true,
        description: String::new(),
    };
    let progress = reporter.progress_start("Creating container", -1).await;
    let created = async {
        let op = state.incus.create_instance(&request).await?;
        run_incus_operation(state, reporter, op).await?;
        if reporter.is_cancelled() {
            return Err(Failure::Cancelled);
        }
        crate::fixups::run(state, reporter, &name, session_mode).await?;
        crate::hostsync::report(reporter, crate::hostsync::sync_one(state, &name).await).await;
        Ok(())
    }
    .await;
    match created {
        Ok(()) => {
            reporter.progress_done(&progress, true, "").await;
            state.containers_changed().await;
            Ok(format!("Container '{name}' created"))
        }
        Err(failure) => {
            let why = match &failure {
                Failure::Cancelled => "cancelled".to_owned(),
                Failure::Failed(why) => why.clone(),
            };
            reporter.progress_done(&progress, false, &why).await;
            remove_half_made(state, &name).await;
            Err(match failure {
                Failure::Failed(why) => Failure::Failed(format!("Creating '{name}' failed: {why}")),
                cancelled => cancelled,
            })
        }
    }
}

/// Removes a container the pipeline made but could not finish. Errors are logged: the failure the
/// client sees is the one that caused this.
async fn remove_half_made(state: &State, name: &str) {
    let Ok(instance) = state.incus.get_instance(name).await else {
        return;
    };
    log::info!("removing the half-made container {name}");
    if instance.status == "Running" {
        match state
            .incus
            .stop_instance(name, true, std::time::Duration::from_secs(30))
            .await
        {
            Ok(op) => {
                let _ = state.incus.wait_operation(&op.id, crate::containers::INCUS_WAIT).await;
            }
            Err(e) => log::warn!("could not stop {name}: {e}"),
        }
    }
    match state.incus.delete_instance(name).await {
        Ok(op) => {
            if let Err(e) = state.incus.wait_operation(&op.id, crate::containers::INCUS_WAIT).await {
                log::warn!("could not delete {name}: {e}");
            }
        }
        Err(e) => log::warn!("could not delete {name}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> CreateOptions {
        options::resolve(&BTreeMap::new(), &BTreeMap::new()).unwrap()
    }

    #[test]
    fn config_carries_the_original_metadata_keys() {
        let mut o = defaults();
        o.custom_mounts = vec!["~/src".into()];
        let c = config(&o);
        assert_eq!(c["security.privileged"], "true");
        assert_eq!(c["security.nesting"], "true");
        assert_eq!(c["user.kapsule.host-rootfs"], "true");
        assert_eq!(c["user.kapsule.mount-home"], "true");
        assert_eq!(c["user.kapsule.gpu"], "true");
        assert_eq!(c["user.kapsule.nvidia-drivers"], "false");
        assert_eq!(c["user.kapsule.custom-mounts"], r#"["~/src"]"#);
        assert!(!c.contains_key("user.kapsule.session-mode"));
    }

    #[test]
    fn raw_lxc_shares_the_network_and_registers_the_hook_only_when_asked_for_and_installed() {
        let hook = std::path::Path::new("/usr/lib/kapsule/kapsule-nvidia-hook");
        let host = std::path::Path::new("/proc/self/ns/net");
        let net = "lxc.namespace.share.net=/proc/self/ns/net\n";
        let mut o = defaults();
        o.gpu = true;
        o.nvidia_drivers = true;
        assert_eq!(
            raw_lxc(&o, host, Some(hook)),
            format!("{net}lxc.hook.mount=/usr/lib/kapsule/kapsule-nvidia-hook\n")
        );
        assert_eq!(raw_lxc(&o, host, None), net, "not installed: no hook LXC could not run");
        o.nvidia_drivers = false;
        assert_eq!(raw_lxc(&o, host, Some(hook)), net);
        o.nvidia_drivers = true;
        o.gpu = false;
        assert_eq!(raw_lxc(&o, host, Some(hook)), net);
        assert_eq!(
            raw_lxc(&o, std::path::Path::new("/run/netns/test"), None),
            "lxc.namespace.share.net=/run/netns/test\n"
        );
    }

    #[test]
    fn devices_follow_options_and_hardware() {
        let o = defaults();
        let d = devices(&o, false);
        assert_eq!(
            d.keys().collect::<Vec<_>>(),
            ["hostfs", "root"],
            "no gpu device without a GPU"
        );
        assert_eq!(d["hostfs"]["propagation"], "rslave");
        assert!(devices(&o, true).contains_key("gpu"));
        let mut o = defaults();
        o.host_rootfs = false;
        o.gpu = false;
        assert_eq!(devices(&o, true).keys().collect::<Vec<_>>(), ["root"]);
    }
}
