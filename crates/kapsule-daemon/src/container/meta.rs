//! What the daemon reads from a container's Incus instance: whether it is Kapsule's, whose it is,
//! whether a user was set up in it, what it was made with, its `(sssss)` struct for clients, and
//! the names Incus accepts.

use kapsule_dbus::{ContainerDetails, ContainerInfo, Error};
use kapsule_incus::models::Instance;

use crate::container::Containers;
use crate::host::journal::{self, Entry, Work};
use crate::identity::authority::Action;

/// Every Kapsule container carries config keys under this prefix (the original daemon's too).
pub(crate) const META_PREFIX: &str = "user.kapsule.";

/// The uid of the user who created a container (their containers are theirs to enter).
pub(crate) const OWNER_KEY: &str = "user.kapsule.owner";

/// What a container was created from, as its creator named the image (`images:debian/12`).
pub(crate) const IMAGE_KEY: &str = "user.kapsule.image";

/// Set on a container the daemon removes once nobody is in it (`kapsule run`).
pub(crate) const EPHEMERAL_KEY: &str = "user.kapsule.ephemeral";

/// True for a container made to be removed once nobody is in it.
pub(crate) fn is_ephemeral(instance: &Instance) -> bool {
    instance.config.get(EPHEMERAL_KEY).map(String::as_str) == Some("true")
}

/// The journal entry of a create or delete under way (or abandoned): written with the instance,
/// cleared as the last step (see `host/journal.rs`).
pub(crate) const PENDING_KEY: &str = "user.kapsule.pending";

/// The journal entry `instance` carries, if any.
pub(crate) fn pending(instance: &Instance) -> Option<Entry> {
    let value = instance.config.get(PENDING_KEY)?;
    let entry = Entry::parse(value);
    if entry.is_none() {
        log::warn!(
            "{}: {PENDING_KEY} is not an entry of this daemon: {value:?}",
            instance.name
        );
    }
    entry
}

/// True when `instance` carries an entry nobody will finish: it is to be recovered.
pub(crate) fn is_abandoned(instance: &Instance) -> bool {
    pending(instance).is_some_and(|e| e.is_abandoned(&journal::instance_key(&instance.name)))
}

/// True when `uid` may use `instance` as their own: they created it, or, in a container made by
/// the original daemon (which recorded no owner), they were set up in it.
pub(crate) fn is_owner(instance: &Instance, uid: u32) -> bool {
    match instance.config.get(OWNER_KEY) {
        Some(owner) => *owner == uid.to_string(),
        None => is_set_up(instance, uid),
    }
}

/// What `uid` needs to be allowed to enter `instance`: one's own unprivileged container, using
/// it; one's own privileged one, entering; anyone else's, managing containers.
pub(crate) fn enter_action(instance: &Instance, uid: u32) -> Action {
    match (is_owner(instance, uid), is_unprivileged(instance)) {
        (true, true) => Action::UseUnprivileged,
        (true, false) => Action::EnterContainer,
        (false, _) => Action::ManageContainer,
    }
}

/// What `uid` needs to be allowed to change `instance` (start, stop, delete, snapshot, reset,
/// clone, upgrade): their own unprivileged container, using it; anything else, managing.
pub(crate) fn manage_action(instance: &Instance, uid: u32) -> Action {
    if is_unprivileged(instance) && instance.config.get(OWNER_KEY) == Some(&uid.to_string()) {
        Action::UseUnprivileged
    } else {
        Action::ManageContainer
    }
}

/// Refuses a session or setup of `uid` in `instance` when the container has no ids for them: an
/// unprivileged container maps its owner's uid and gid alone, so anyone else's files (their home)
/// would be nobody's inside.
pub(crate) fn check_may_hold(instance: &Instance, uid: u32) -> Result<(), Error> {
    if !is_unprivileged(instance) || instance.config.get(OWNER_KEY) == Some(&uid.to_string()) {
        return Ok(());
    }
    Err(Error::NotAuthorized(format!(
        "Container '{}' is unprivileged and maps only its owner's ids; only its owner can be a user in it",
        instance.name
    )))
}

/// True for a container in a user namespace: Incus's own key, so what is said is what runs.
pub(crate) fn is_unprivileged(instance: &Instance) -> bool {
    instance.config.get("security.privileged").map(String::as_str) != Some("true")
}

/// True for instances Kapsule made (or the original daemon made): the daemon never touches others.
pub(crate) fn is_kapsule(instance: &Instance) -> bool {
    instance.config.keys().any(|k| k.starts_with(META_PREFIX))
}

/// `(name, status, image, created, mode)` as the original daemon returned it.
pub(crate) fn container_info(instance: &Instance) -> ContainerInfo {
    let config = &instance.config;
    let image = config
        .get("image.description")
        .or_else(|| config.get("image.os"))
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| "unknown".to_owned());
    let flag = |key: &str| config.get(key).map(String::as_str) == Some("true");
    let mode = if flag("user.kapsule.dbus-mux") {
        "DbusMux"
    } else if flag("user.kapsule.session-mode") {
        "Session"
    } else {
        "Default"
    };
    // Work under way shows: a container being made is not one to use yet.
    let status = match pending(instance) {
        Some(entry) if entry.work == Work::Create && !is_abandoned(instance) => "Creating".to_owned(),
        Some(entry) if entry.work == Work::Reset => "Resetting".to_owned(),
        Some(_) => "Removing".to_owned(),
        None if instance.status.is_empty() => "Unknown".to_owned(),
        None => instance.status.clone(),
    };
    ContainerInfo {
        name: instance.name.clone(),
        status,
        image,
        created: iso8601_with_offset(&instance.created_at),
        mode: mode.to_owned(),
    }
}

/// What the instance itself says of a container for `GetContainerDetails` (snapshots, disk use
/// and the owner's name are read apart).
pub(crate) fn container_details(instance: &Instance) -> ContainerDetails {
    let info = container_info(instance);
    let config = &instance.config;
    let get = |key: &str| config.get(&format!("{META_PREFIX}{key}")).map(String::as_str);
    let wants = Wants::of(instance);
    let steps = crate::container::provision::Steps::of_instance(instance);
    let mut users: Vec<u32> = config
        .iter()
        .filter(|(_, v)| *v == "true")
        .filter_map(|(k, _)| {
            k.strip_prefix("user.kapsule.host-users.")?
                .strip_suffix(".mapped")?
                .parse()
                .ok()
        })
        .collect();
    users.sort_unstable();
    let nonempty = |s: Option<&String>| s.filter(|s| !s.is_empty()).cloned();
    ContainerDetails {
        name: info.name,
        status: info.status,
        image: info.image,
        created: info.created,
        mode: info.mode,
        image_source: config.get(IMAGE_KEY).cloned(),
        image_fingerprint: nonempty(config.get("volatile.base_image")),
        last_used: Some(&instance.last_used_at)
            // Incus says the epoch for "never".
            .filter(|t| !t.is_empty() && !t.starts_with("1970-01-01"))
            .map(|t| iso8601_with_offset(t)),
        owner: get("owner").and_then(|uid| uid.parse().ok()),
        owner_name: None,
        users,
        session_mode: wants.session_mode,
        dbus_mux: get("dbus-mux") == Some("true"),
        host_rootfs: wants.host_rootfs,
        mount_home: wants.mount_home,
        home: wants.home,
        custom_mounts: wants.custom_mounts,
        gpu: get("gpu") != Some("false"),
        nvidia_drivers: get("nvidia-drivers") == Some("true"),
        pre_init_hooks: steps.pre_init_hooks,
        additional_packages: steps.packages,
        init_hooks: steps.init_hooks,
        ephemeral: wants.ephemeral,
        unprivileged: is_unprivileged(instance),
        snapshots: Vec::new(),
        disk_usage: None,
    }
}

/// Incus says `2026-11-22T00:22:55.197237729Z`; clients were given Python's
/// `2026-11-22T00:22:55.197237+00:00`. Keep microseconds and spell the offset out.
pub(crate) fn iso8601_with_offset(incus: &str) -> String {
    let Some(base) = incus.strip_suffix('Z') else {
        return incus.to_owned();
    };
    match base.split_once('.') {
        Some((seconds, fraction)) => {
            let micros: String = fraction.chars().chain(std::iter::repeat('0')).take(6).collect();
            format!("{seconds}.{micros}+00:00")
        }
        None => format!("{base}+00:00"),
    }
}

/// Incus's rules for instance names: 1 to 63 characters of ASCII letters, digits and `-`, not
/// starting with a digit or `-`, not ending with `-`.
pub(crate) fn validate_name(name: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "Invalid container name {}: {why}",
            kapsule_dbus::quote(name)
        )))
    };
    if name.is_empty() || name.len() > 63 {
        return bad("it must be 1 to 63 characters long");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return bad("only letters, digits and '-' are allowed");
    }
    if name.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
        return bad("it must not start with a digit or '-'");
    }
    if name.ends_with('-') {
        return bad("it must not end with '-'");
    }
    Ok(())
}

/// The names of snapshots Kapsule takes on its own begin with this; a user's may not.
pub(crate) const AUTOMATIC_SNAPSHOT_PREFIX: &str = "auto-";

/// Kapsule's rules for snapshot names (stricter than Incus's, which allow anything but `/`): 1 to
/// 63 characters of ASCII letters, digits, `.`, `_` and `-`, not starting with `.` or `-`, so a
/// name is safe on a command line and in a path.
pub(crate) fn validate_snapshot_name(name: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "Invalid snapshot name {}: {why}",
            kapsule_dbus::quote(name)
        )))
    };
    if name.is_empty() || name.len() > 63 {
        return bad("it must be 1 to 63 characters long");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    if name.starts_with(['.', '-']) {
        return bad("it must not start with '.' or '-'");
    }
    Ok(())
}

/// The Kapsule container `name`, or the named error a client should get.
pub(crate) async fn get_kapsule_container(containers: &Containers, name: &str) -> Result<Instance, Error> {
    validate_name(name)?;
    let instance = match containers.incus.get_instance(name).await {
        Ok(instance) => instance,
        Err(e) if e.is_not_found() => return Err(Error::NotFound(format!("Container '{name}' does not exist"))),
        Err(e) => return Err(crate::error::incus_error(e)),
    };
    // Another tool's instance is not there for Kapsule's users: the same answer as for no
    // instance at all, so no caller learns what else Incus holds.
    if !is_kapsule(&instance) {
        return Err(Error::NotFound(format!("Container '{name}' does not exist")));
    }
    Ok(instance)
}

pub(crate) fn is_running(instance: &Instance) -> bool {
    instance.status == "Running"
}

/// The marker of a finished setup.
pub(crate) fn mapped_key(uid: u32) -> String {
    format!("user.kapsule.host-users.{uid}.mapped")
}

/// True once `uid` was set up in the container.
pub(crate) fn is_set_up(instance: &Instance, uid: u32) -> bool {
    instance.config.get(&mapped_key(uid)).map(String::as_str) == Some("true")
}

/// What the container's metadata asks of a user setup. Containers made by the original daemon
/// are read the same way: a missing `mount-home` means true, a missing `host-rootfs` false.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Wants {
    pub mount_home: bool,
    pub host_rootfs: bool,
    pub session_mode: bool,
    pub custom_mounts: Vec<String>,
    /// The host directory each user's home comes from (`~/` is theirs); empty: their host home.
    pub home: String,
    /// Removed once nobody is in it.
    pub ephemeral: bool,
    /// In a user namespace (see [`is_unprivileged`]).
    pub unprivileged: bool,
}

impl Wants {
    pub(crate) fn of(instance: &Instance) -> Wants {
        let get = |key: &str| instance.config.get(&format!("user.kapsule.{key}")).map(String::as_str);
        Wants {
            mount_home: get("mount-home") != Some("false"),
            host_rootfs: get("host-rootfs") == Some("true"),
            session_mode: get("session-mode") == Some("true"),
            custom_mounts: get("custom-mounts")
                .and_then(|json| serde_json::from_str(json).ok())
                .unwrap_or_default(),
            home: get("home").unwrap_or_default().to_owned(),
            ephemeral: get("ephemeral") == Some("true"),
            unprivileged: is_unprivileged(instance),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_are_plain_words() {
        for good in ["before-upgrade", "20261204-003215", "v1.2_rc", "a"] {
            assert!(validate_snapshot_name(good).is_ok(), "{good}");
        }
        for bad in ["", "a/b", "..", ".hidden", "-x", "a b", "é", &"x".repeat(64)] {
            let Err(Error::InvalidArgument(message)) = validate_snapshot_name(bad) else {
                panic!("{bad:?} was accepted");
            };
            assert!(message.starts_with("Invalid snapshot name"), "{message}");
        }
    }

    #[test]
    fn names_follow_incus_rules() {
        for good in ["a", "dev", "my-box-2", &"x".repeat(63)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "-abc",
            "abc-",
            "a_b",
            "a.b",
            "a/b",
            "../x",
            "ä",
            &"x".repeat(64),
        ] {
            assert!(matches!(validate_name(bad), Err(Error::InvalidArgument(_))), "{bad}");
        }
    }

    #[test]
    fn info_matches_the_original_shape() {
        let mut i = Instance {
            name: "dev".into(),
            status: "Running".into(),
            ..Default::default()
        };
        i.created_at = "2026-11-22T00:22:55.197237729Z".into();
        i.config.insert("image.os".into(), "debian".into());
        i.config.insert("user.kapsule.session-mode".into(), "true".into());
        assert_eq!(
            container_info(&i),
            ContainerInfo {
                name: "dev".into(),
                status: "Running".into(),
                image: "debian".into(),
                created: "2026-11-22T00:22:55.197237+00:00".into(),
                mode: "Session".into()
            }
        );
        i.config.insert("image.description".into(), "Debian 12".into());
        i.config.insert("user.kapsule.dbus-mux".into(), "true".into());
        i.created_at = "2026-11-22T00:22:55Z".into();
        i.status.clear();
        let t = container_info(&i);
        assert_eq!(
            (t.status.as_str(), t.image.as_str(), t.created.as_str(), t.mode.as_str()),
            ("Unknown", "Debian 12", "2026-11-22T00:22:55+00:00", "DbusMux")
        );
        assert!(is_kapsule(&i));
        assert!(!is_kapsule(&Instance::default()));
    }

    #[test]
    fn details_read_options_users_and_steps_from_the_config() {
        let mut i = Instance {
            name: "dev".into(),
            status: "Stopped".into(),
            last_used_at: "1970-01-01T00:00:00Z".into(),
            ..Default::default()
        };
        for (k, v) in [
            ("user.kapsule.owner", "1000"),
            ("user.kapsule.image", "images:debian/12"),
            ("user.kapsule.host-users.1000.mapped", "true"),
            ("user.kapsule.host-users.0.mapped", "true"),
            ("user.kapsule.host-users.1001.mapped", ""),
            ("user.kapsule.home", "~/boxes/dev"),
            ("user.kapsule.gpu", "false"),
            ("user.kapsule.additional-packages", r#"["git"]"#),
            ("volatile.base_image", "abc"),
        ] {
            i.config.insert(k.into(), v.into());
        }
        let d = container_details(&i);
        assert_eq!(d.owner, Some(1000));
        assert_eq!(d.users, [0, 1000], "a cleared marker is no user");
        assert_eq!(d.image_source.as_deref(), Some("images:debian/12"));
        assert_eq!(d.image_fingerprint.as_deref(), Some("abc"));
        assert_eq!(d.last_used, None, "never started");
        assert_eq!((d.home.as_str(), d.gpu, d.mount_home), ("~/boxes/dev", false, true));
        assert_eq!(d.additional_packages, ["git"]);
        assert_eq!(d.status, "Stopped");
        // A container the original daemon made records no owner.
        assert_eq!(container_details(&Instance::default()).owner, None);
    }

    #[tokio::test]
    async fn work_under_way_shows_in_the_status() {
        let mut i = Instance {
            name: "meta-journal-test".into(),
            status: "Running".into(),
            ..Default::default()
        };
        i.config.insert(PENDING_KEY.into(), Entry::new(Work::Create).value());
        let held = journal::hold(&journal::instance_key(&i.name)).await;
        assert_eq!(container_info(&i).status, "Creating");
        assert!(!is_abandoned(&i));
        drop(held);
        // Nobody at it any more: it is being removed (by recovery).
        assert_eq!(container_info(&i).status, "Removing");
        assert!(is_abandoned(&i));
        i.config.insert(PENDING_KEY.into(), "not an entry".into());
        assert!(pending(&i).is_none() && !is_abandoned(&i), "junk is left alone");
        assert_eq!(container_info(&i).status, "Running");
    }

    #[test]
    fn container_metadata_is_read_like_the_original() {
        let mut i = Instance::default();
        assert_eq!(
            Wants::of(&i),
            Wants {
                mount_home: true,
                host_rootfs: false,
                session_mode: false,
                custom_mounts: vec![],
                home: String::new(),
                ephemeral: false,
                // Incus's own default: an instance that does not say is unprivileged.
                unprivileged: true,
            }
        );
        for (k, v) in [
            ("security.privileged", "true"),
            ("user.kapsule.mount-home", "false"),
            ("user.kapsule.host-rootfs", "true"),
            ("user.kapsule.session-mode", "true"),
            ("user.kapsule.custom-mounts", r#"["~/src","/opt/x"]"#),
            ("user.kapsule.home", "~/boxes/dev"),
        ] {
            i.config.insert(k.into(), v.into());
        }
        assert_eq!(
            Wants::of(&i),
            Wants {
                mount_home: false,
                host_rootfs: true,
                session_mode: true,
                custom_mounts: vec!["~/src".into(), "/opt/x".into()],
                home: "~/boxes/dev".into(),
                ephemeral: false,
                unprivileged: false,
            }
        );
        assert!(!is_set_up(&i, 1000));
        i.config.insert(mapped_key(1000), "true".into());
        assert!(is_set_up(&i, 1000));
        assert!(!is_set_up(&i, 1001));
    }

    #[test]
    fn ones_own_unprivileged_container_is_used_and_anything_else_managed() {
        let container = |privileged: &str| Instance {
            name: "dev".into(),
            config: [("security.privileged", privileged), (OWNER_KEY, "1000")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..Default::default()
        };
        let (unprivileged, privileged) = (container("false"), container("true"));
        assert_eq!(enter_action(&unprivileged, 1000), Action::UseUnprivileged);
        assert_eq!(manage_action(&unprivileged, 1000), Action::UseUnprivileged);
        assert_eq!(enter_action(&unprivileged, 1001), Action::ManageContainer);
        assert_eq!(manage_action(&unprivileged, 1001), Action::ManageContainer);
        assert_eq!(enter_action(&privileged, 1000), Action::EnterContainer);
        assert_eq!(manage_action(&privileged, 1000), Action::ManageContainer);
        assert!(check_may_hold(&unprivileged, 1000).is_ok());
        let Err(Error::NotAuthorized(why)) = check_may_hold(&unprivileged, 1001) else {
            panic!("someone else was let into an unprivileged container");
        };
        assert!(why.contains("only its owner"), "{why}");
        assert!(check_may_hold(&privileged, 1001).is_ok());
        // Without a recorded owner (the original daemon's), nobody may use it as unprivileged.
        let mut unowned = unprivileged.clone();
        unowned.config.remove(OWNER_KEY);
        assert_eq!(manage_action(&unowned, 1000), Action::ManageContainer);
    }
}
