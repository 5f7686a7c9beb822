//! User setup: making a host user at home in a container, once per (container, uid).
//!
//! The steps, in order (each a function below, each tested): the home mount (unless the container
//! says `mount-home=false`), the group and the account with the user's uid, gid and name, the
//! custom mounts (created on the host as the user), the minimal host mounts when the container
//! has no `/.kapsule/host`, passwordless sudo, linger in session mode, and last the
//! `user.kapsule.host-users.<uid>.mapped` marker, so a setup that fails is retried next time.
//!
//! Accounts are written into the container's `/etc/passwd`, `/etc/group` (and `shadow`/`gshadow`
//! where the image has them) from the host through the container's root (`files.rs`), not with
//! `useradd` inside: this works on every image (BusyBox and Alpine-like ones have no `useradd`),
//! costs no process, each file is replaced whole and keeps its owner and mode. Setups of one
//! container run one at a time, so two users set up at once cannot lose each other's line, and
//! the account waits for systemd-sysusers and the first command for systemd-tmpfiles-setup
//! (`boot.rs`).

use std::path::{Path, PathBuf};

use kapsule_dbus::Error;
use kapsule_incus::models::{ConfigMap, Devices, Instance};
use kapsule_rootfs::Meta;

use crate::State;
use crate::caller::{Caller, FsIdentity, Missing};
use crate::create::device;
use crate::files::{ContainerFiles, MAX_READ};
use crate::operation::{Failure, Reporter};

/// The host account being set up in a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Account {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    /// The home on the host.
    pub home: PathBuf,
    /// The login shell on the host.
    pub shell: String,
}

impl Account {
    /// The account of a caller (already looked up in the user database).
    pub(crate) fn of(caller: &Caller) -> Account {
        Account {
            uid: caller.uid,
            gid: caller.gid,
            name: caller.name.clone(),
            home: caller.home.clone(),
            shell: caller.shell.clone(),
        }
    }

    /// The home inside the container: `/home/<last part of the host home>`, as the original
    /// daemon made it (so its containers keep their layout).
    pub(crate) fn container_home(&self) -> String {
        let base = self
            .home
            .file_name()
            .map(|b| b.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.name.clone());
        format!("/home/{base}")
    }
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
        }
    }
}

/// Where messages of a setup go: an operation's client, or only the log (a setup done on the
/// way into a container has nobody to show them to).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Notes<'a>(pub Option<&'a Reporter>);

impl Notes<'_> {
    async fn info(&self, text: &str) {
        match self.0 {
            Some(r) => r.info(text).await,
            None => log::info!("{text}"),
        }
    }

    async fn warn(&self, text: &str) {
        match self.0 {
            Some(r) => r.warn(text).await,
            None => log::warn!("{text}"),
        }
    }
}

/// Sets `account` up in the running container `instance` unless that was done already (as the
/// instance, read just before, says: then nothing is asked of Incus). Returns whether any work
/// was done.
pub(crate) async fn ensure(
    state: &State,
    notes: Notes<'_>,
    instance: &Instance,
    account: &Account,
) -> Result<bool, Failure> {
    if is_set_up(instance, account.uid) {
        return Ok(false);
    }
    let name = instance.name.as_str();
    let lock = state.setup_lock(name);
    let _serial = lock.lock().await;
    // Read after taking the lock: a setup that just finished is not done twice.
    let instance = state.incus.get_instance(name).await?;
    if is_set_up(&instance, account.uid) {
        return Ok(false);
    }
    let wants = Wants::of(&instance);
    notes
        .info(&format!("Setting up user '{}' in {name}", account.name))
        .await;
    let started = std::time::Instant::now();
    let step = |what: &str| log::debug!("{name}: user setup: {what} after {:?}", started.elapsed());
    let files = ContainerFiles::open(state, name).await.map_err(Failure::Failed)?;
    if account.uid == 0 {
        // Root is in every image already, with its own /root; only the marker is needed.
        crate::boot::wait_for_early_boot(state, &files).await;
        mark_mapped(state, name, 0).await?;
        return Ok(true);
    }
    // What does not touch the user database (the devices, the sudo rule) is done while the boot
    // wait runs: only the account has to come after it.
    let (_, prepared) = tokio::join!(
        async {
            crate::boot::wait_for_early_boot(state, &files).await;
            step("boot wait");
        },
        async {
            mount_home(state, notes, name, account, &wants).await?;
            mount_custom_dirs(state, notes, name, account, &wants).await?;
            mount_minimal_host_dirs(state, name, account, &wants).await?;
            configure_sudo(&files, account).await?;
            step("mounts and sudo");
            Ok::<(), Failure>(())
        }
    );
    prepared?;
    create_account(state, &files, notes, account, &wants).await?;
    step("account");
    enable_linger(state, notes, name, account, &wants).await;
    mark_mapped(state, name, account.uid).await?;
    log::info!("{name}: user '{}' set up in {:?}", account.name, started.elapsed());
    Ok(true)
}

/// Step 1 (beside the boot wait): the host home at the container home, as a disk device.
async fn mount_home(
    state: &State,
    notes: Notes<'_>,
    name: &str,
    account: &Account,
    wants: &Wants,
) -> Result<(), Failure> {
    if !wants.mount_home {
        notes
            .info("Home directory not mounted (mount_home is off): the container keeps its own")
            .await;
        return Ok(());
    }
    let devices = home_devices(account);
    state.incus.patch_instance_devices(name, &devices).await?;
    Ok(())
}

pub(crate) fn home_devices(account: &Account) -> Devices {
    let home = account.home.to_string_lossy();
    let target = account.container_home();
    Devices::from([(
        format!("kapsule-home-{}", account.name),
        device(&[
            ("type", "disk"),
            ("source", &home),
            ("path", &target),
            ("shift", "false"),
        ]),
    )])
}

/// Step 5 (after the boot wait): the group and the account, written into the container's user
/// database; with `mount_home` off, a home of its own made from `/etc/skel`.
async fn create_account(
    state: &State,
    files: &ContainerFiles,
    notes: Notes<'_>,
    account: &Account,
    wants: &Wants,
) -> Result<(), Failure> {
    let home = account.container_home();
    let shells = match files.run(|root| root.read("/etc/shells", MAX_READ)).await {
        Ok(Some(f)) => String::from_utf8_lossy(&f.data).into_owned(),
        Ok(None) | Err(_) => String::new(),
    };
    let shell = choose_shell(&account.shell, &shells);
    let user = &account.name;
    let (uid, gid) = (account.uid, account.gid);
    let days = days_since_epoch();
    use IfMissing::{Create, Fail, Skip};
    edit_file(files, "/etc/group", Fail, |t| add_group_line(t, user, gid)).await?;
    edit_file(files, "/etc/gshadow", Skip, |t| {
        add_line_if_absent(t, user, &format!("{user}:!::"))
    })
    .await?;
    edit_file(files, "/etc/passwd", Fail, |t| {
        add_line_if_absent(t, user, &format!("{user}:x:{uid}:{gid}:{user}:{home}:{shell}"))
    })
    .await?;
    // No password: the user never logs in with one; enter and sudo need none.
    edit_file(files, "/etc/shadow", Skip, |t| {
        add_line_if_absent(t, user, &format!("{user}:*:{days}:0:99999:7:::"))
    })
    .await?;
    // Subordinate ids, as useradd gives them: rootless podman and buildah map their user
    // namespaces with these. Made when the image has no such file yet: a useradd there would too.
    for path in ["/etc/subuid", "/etc/subgid"] {
        edit_file(files, path, Create(Meta::new(0, 0, 0o644)), |t| {
            add_subordinate_range(t, user, uid)
        })
        .await?;
    }
    if !wants.mount_home {
        make_own_home(state, files, notes, account, &home).await;
    }
    Ok(())
}

/// What [`edit_file`] does when the image lacks the file.
#[derive(Clone, Copy, Debug)]
pub(crate) enum IfMissing {
    Fail,
    Skip,
    /// Start from an empty file with this owner and mode.
    Create(Meta),
}

/// Rewrites a text file of the container with `edit` (`None`: leave it), keeping its owner and
/// mode; the new file replaces the old one whole. Used for the user database, and for
/// `/etc/hosts` at creation.
pub(crate) async fn edit_file(
    files: &ContainerFiles,
    path: &str,
    if_missing: IfMissing,
    edit: impl Fn(&str) -> Option<String>,
) -> Result<(), Failure> {
    let name = files.name();
    let owned = path.to_owned();
    let (text, meta) = match files.run(move |root| root.read(&owned, MAX_READ)).await {
        Ok(Some(file)) => (String::from_utf8_lossy(&file.data).into_owned(), file.meta),
        Ok(None) => match if_missing {
            IfMissing::Skip => return Ok(()),
            IfMissing::Create(meta) => (String::new(), meta),
            IfMissing::Fail => {
                return Err(Failure::Failed(format!(
                    "Cannot read {path} in {name}: it does not exist"
                )));
            }
        },
        Err(e) => return Err(Failure::Failed(format!("Cannot read {path} in {name}: {}", e.reason()))),
    };
    if let Some(new) = edit(&text) {
        let owned = path.to_owned();
        files
            .run(move |root| root.write(&owned, new.as_bytes(), meta))
            .await
            .map_err(|e| Failure::Failed(format!("Cannot write {path} in {name}: {}", e.reason())))?;
    }
    Ok(())
}

/// A home inside the container, owned by the user, with what the image's `/etc/skel` has that
/// it has not. A home that exists owned by root is what Incus made to mount a custom directory
/// below it: it is given to the user. Nothing already in a home is overwritten.
async fn make_own_home(state: &State, files: &ContainerFiles, notes: Notes<'_>, account: &Account, home: &str) {
    let name = files.name();
    let owner = Meta::new(account.uid, account.gid, 0o755);
    let path = home.to_owned();
    let made = files
        .run(move |root| {
            if root.ensure_dir(&path, owner)? {
                return Ok(());
            }
            match root.symlink_metadata(&path)? {
                Some(stat) if stat.kind == kapsule_rootfs::Kind::Directory && stat.meta.uid == 0 => {
                    root.set_meta(&path, owner)
                }
                _ => Ok(()),
            }
        })
        .await;
    if let Err(e) = made {
        notes.warn(&format!("Cannot create {home}: {}", e.reason())).await;
        return;
    }
    const COPY_SKEL: &str = r#"[ -d /etc/skel ] || exit 0
for f in /etc/skel/.[!.]* /etc/skel/..?* /etc/skel/*; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    t="$1/${f##*/}"
    [ -e "$t" ] || [ -L "$t" ] || { cp -a "$f" "$t" && chown -R -h "$2" "$t"; } || exit
done"#;
    let owner = format!("{}:{}", account.uid, account.gid);
    let command = ["sh", "-c", COPY_SKEL, "sh", home, &owner];
    let what = format!("Copying /etc/skel into {home}");
    run_best_effort(state, notes, name, &command, &what).await;
}

/// Runs a step that is not worth failing the setup for; a failure becomes a warning.
async fn run_best_effort(state: &State, notes: Notes<'_>, name: &str, command: &[&str], what: &str) {
    match crate::run::run_as_root(state, name, command, b"", std::time::Duration::from_secs(60)).await {
        Ok(ran) if ran.success() => {}
        Ok(ran) => {
            let why = String::from_utf8_lossy(&ran.stderr);
            notes
                .warn(&format!("{what} failed (exit code {}): {}", ran.code(), why.trim()))
                .await
        }
        Err(e) => notes.warn(&format!("{what} failed: {e}")).await,
    }
}

/// The user's own shell when the image lists it, else bash when listed, else `/bin/sh`.
pub(crate) fn choose_shell(host_shell: &str, etc_shells: &str) -> String {
    let listed: Vec<&str> = etc_shells
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('/'))
        .collect();
    for candidate in [host_shell, "/bin/bash", "/usr/bin/bash"] {
        if !candidate.is_empty() && listed.contains(&candidate) {
            return candidate.to_owned();
        }
    }
    "/bin/sh".to_owned()
}

/// `text` with `line` appended if no entry is named `name`; `None` when nothing changes.
pub(crate) fn add_line_if_absent(text: &str, name: &str, line: &str) -> Option<String> {
    if text.lines().any(|l| l.split(':').next() == Some(name)) {
        return None;
    }
    let mut out = text.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(line);
    out.push('\n');
    Some(out)
}

/// `/etc/group` with a group `name` of `gid`, unless a group of that name exists (a group with
/// that gid under another name is left alone and a second name added, as `groupadd -o` would).
pub(crate) fn add_group_line(text: &str, name: &str, gid: u32) -> Option<String> {
    add_line_if_absent(text, name, &format!("{name}:x:{gid}:"))
}

/// The first subordinate id useradd gives out, and how many each user gets (login.defs'
/// `SUB_UID_MIN` and `SUB_UID_COUNT`).
const SUBORDINATE_FIRST: u64 = 100_000;
const SUBORDINATE_COUNT: u64 = 65_536;

/// `/etc/subuid` (or `subgid`) with a range for `user` after every range already given out,
/// unless the user (by name or uid) has one; `None` when nothing changes.
pub(crate) fn add_subordinate_range(text: &str, user: &str, uid: u32) -> Option<String> {
    let uid = uid.to_string();
    let mut next = SUBORDINATE_FIRST;
    for line in text.lines() {
        let mut fields = line.trim().split(':');
        let (Some(owner), Some(start), Some(count)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if owner == user || owner == uid {
            return None;
        }
        if let (Ok(start), Ok(count)) = (start.parse::<u64>(), count.parse::<u64>()) {
            next = next.max(start.saturating_add(count));
        }
    }
    if next.saturating_add(SUBORDINATE_COUNT) > u64::from(u32::MAX) {
        return None;
    }
    add_line_if_absent(text, user, &format!("{user}:{next}:{SUBORDINATE_COUNT}"))
}

fn days_since_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0)
}

/// Step 2 (beside the boot wait): each custom mount, `~/x` meaning the user's own `x`, created
/// on the host as the user and mounted at the same path inside. A directory inside a mounted home is visible through the
/// home already and gets no mount of its own (Incus cannot hot-plug a mount below another one).
async fn mount_custom_dirs(
    state: &State,
    notes: Notes<'_>,
    name: &str,
    account: &Account,
    wants: &Wants,
) -> Result<(), Failure> {
    let mut devices = Devices::new();
    let identity = FsIdentity::of(account.uid, account.gid, &account.name);
    for raw in &wants.custom_mounts {
        let path = expand_home(raw, &account.home);
        if !path.is_absolute() || path.components().any(|c| c == std::path::Component::ParentDir) {
            notes
                .warn(&format!(
                    "Skipping the mount of '{raw}': not an absolute path without '..'"
                ))
                .await;
            continue;
        }
        if let Err(e) = identity.mount_source(&path, Missing::Create).await {
            notes
                .warn(&format!("Skipping the mount of {}: {e}", path.display()))
                .await;
            continue;
        }
        let seen_through_home = wants.mount_home
            && account.container_home() == account.home.to_string_lossy()
            && path.starts_with(&account.home);
        if seen_through_home {
            continue;
        }
        let path = path.to_string_lossy().into_owned();
        devices.insert(
            custom_mount_device(&path),
            device(&[("type", "disk"), ("source", &path), ("path", &path), ("shift", "false")]),
        );
    }
    if !devices.is_empty() {
        state.incus.patch_instance_devices(name, &devices).await?;
    }
    Ok(())
}

/// `~` and `~/x` are the user's home and what is in it; anything else is taken as it is.
pub(crate) fn expand_home(raw: &str, home: &Path) -> PathBuf {
    match raw.strip_prefix('~') {
        Some("") => home.to_owned(),
        Some(rest) if rest.starts_with('/') => home.join(rest.trim_start_matches('/')),
        _ => PathBuf::from(raw),
    }
}

/// The original daemon's device names: `kapsule-mount-<path with / and . as ->`, or a hash when
/// that is longer than Incus allows.
pub(crate) fn custom_mount_device(path: &str) -> String {
    let slug: String = path
        .trim_matches('/')
        .chars()
        .map(|c| if c == '/' || c == '.' { '-' } else { c })
        .collect();
    let name = format!("kapsule-mount-{slug}");
    if name.len() <= 63 {
        return name;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(path.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("kapsule-mount-{hex}")
}

/// Step 3 (beside the boot wait): without `/.kapsule/host`, only the user's runtime directory and
/// the X11 sockets are shared, at the same places below `/.kapsule/host` (where the socket mounts look). A source
/// the host does not have yet (no session) is not an error: it is mounted once it exists at the
/// next start.
async fn mount_minimal_host_dirs(state: &State, name: &str, account: &Account, wants: &Wants) -> Result<(), Failure> {
    if wants.host_rootfs {
        return Ok(());
    }
    state
        .incus
        .patch_instance_devices(name, &minimal_host_devices(account.uid))
        .await?;
    Ok(())
}

pub(crate) fn minimal_host_devices(uid: u32) -> Devices {
    let run = format!("/run/user/{uid}");
    let run_target = format!("/.kapsule/host/run/user/{uid}");
    let shared = |source: &str, path: &str| {
        device(&[
            ("type", "disk"),
            ("source", source),
            ("path", path),
            ("shift", "false"),
            // Sockets made on the host after the start show up inside.
            ("propagation", "rslave"),
            // No session yet (no runtime directory, no X server) is no error: the mount
            // appears at the next start once the source exists. Incus then cannot check that
            // the source is a directory, so `recursive` (which would need that) is not set.
            ("required", "false"),
        ])
    };
    Devices::from([
        (format!("kapsule-hostrun-{uid}"), shared(&run, &run_target)),
        (
            "kapsule-x11".to_owned(),
            shared("/tmp/.X11-unix", "/.kapsule/host/tmp/.X11-unix"),
        ),
    ])
}

/// Step 4 (beside the boot wait): passwordless sudo, in a sudoers.d file sudo will read (it skips
/// names with a `.`).
async fn configure_sudo(files: &ContainerFiles, account: &Account) -> Result<(), Failure> {
    let (path, rule) = sudoers_entry(&account.name);
    files
        .run(move |root| {
            root.ensure_dir("/etc/sudoers.d", Meta::new(0, 0, 0o750))?;
            root.write(&path, rule.as_bytes(), Meta::new(0, 0, 0o440))
        })
        .await
        .map_err(|e| Failure::Failed(format!("In {}: {e}", files.name())))?;
    Ok(())
}

pub(crate) fn sudoers_entry(user: &str) -> (String, String) {
    let file: String = user
        .chars()
        .map(|c| if c == '.' || c == '~' { '_' } else { c })
        .collect();
    (
        format!("/etc/sudoers.d/{file}"),
        format!("{user} ALL=(ALL) NOPASSWD:ALL\n"),
    )
}

/// Step 6: in session mode the user's own systemd instance runs without a login (it owns the
/// session bus there). Not fatal: the container works without it.
async fn enable_linger(state: &State, notes: Notes<'_>, name: &str, account: &Account, wants: &Wants) {
    if !wants.session_mode {
        return;
    }
    // logind first (a start job waits for it and the bus it needs): the boot wait above stops
    // at systemd-tmpfiles-setup, which may be before either is up.
    let command = [
        "sh",
        "-c",
        "systemctl start systemd-logind.service; exec loginctl enable-linger \"$0\"",
        &account.name,
    ];
    run_best_effort(state, notes, name, &command, "Enabling linger").await;
    // logind starts the user's manager now, in the background, and with it mounts a fresh
    // /run/user/<uid>: waited for, so the first session finds the runtime directory (and the
    // desktop's sockets mounted in it) in place, and its own session bus.
    let unit = format!("user@{}.service", account.uid);
    run_best_effort(
        state,
        notes,
        name,
        &["systemctl", "start", &unit],
        "Starting the user's systemd",
    )
    .await;
}

/// Step 7: the marker, last, so an interrupted setup runs again.
async fn mark_mapped(state: &State, name: &str, uid: u32) -> Result<(), Failure> {
    let config = ConfigMap::from([(mapped_key(uid), "true".to_owned())]);
    state.incus.patch_instance_config(name, &config).await?;
    Ok(())
}

/// The account `SetupUser` was asked for, which must be the host's own account of that uid:
/// the daemon does not create users the host does not have.
pub(crate) fn requested_account(uid: u32, gid: u32, username: &str, home: &str) -> Result<Account, Error> {
    let host =
        Caller::from_uid(uid).map_err(|_| Error::InvalidArgument(format!("There is no user {uid} on this host")))?;
    let account = Account::of(&host);
    if account.gid != gid || account.name != username || account.home != Path::new(home) {
        return Err(Error::InvalidArgument(format!(
            "User {uid} on this host is {}:{} with home {}, not {username}:{gid} with home {home}",
            account.name,
            account.gid,
            account.home.display()
        )));
    }
    Ok(account)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Account {
        Account {
            uid: 1000,
            gid: 1000,
            name: "alice".into(),
            home: "/home/alice".into(),
            shell: "/usr/bin/zsh".into(),
        }
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
                custom_mounts: vec![]
            }
        );
        for (k, v) in [
            ("user.kapsule.mount-home", "false"),
            ("user.kapsule.host-rootfs", "true"),
            ("user.kapsule.session-mode", "true"),
            ("user.kapsule.custom-mounts", r#"["~/src","/opt/x"]"#),
        ] {
            i.config.insert(k.into(), v.into());
        }
        assert_eq!(
            Wants::of(&i),
            Wants {
                mount_home: false,
                host_rootfs: true,
                session_mode: true,
                custom_mounts: vec!["~/src".into(), "/opt/x".into()]
            }
        );
        assert!(!is_set_up(&i, 1000));
        i.config.insert(mapped_key(1000), "true".into());
        assert!(is_set_up(&i, 1000));
        assert!(!is_set_up(&i, 1001));
    }

    #[test]
    fn accounts_are_added_once_and_nothing_else_changes() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nubuntu:x:1000:1000::/home/ubuntu:/bin/bash";
        let line = "alice:x:1000:1000:alice:/home/alice:/bin/bash";
        let added = add_line_if_absent(passwd, "alice", line).unwrap();
        assert_eq!(added, format!("{passwd}\n{line}\n"), "appended, same uid allowed");
        assert_eq!(add_line_if_absent(&added, "alice", line), None, "idempotent");
        assert_eq!(add_line_if_absent("", "a", "a:x"), Some("a:x\n".into()));
        // A name that is only a prefix of another is not the same name.
        assert!(add_line_if_absent("alice2:x:1:1::/:/bin/sh\n", "alice", line).is_some());
        assert_eq!(
            add_group_line("root:x:0:\n", "alice", 1000).unwrap(),
            "root:x:0:\nalice:x:1000:\n"
        );
    }

    #[test]
    fn subordinate_ranges_follow_those_given_out() {
        assert_eq!(
            add_subordinate_range("", "alice", 1000).as_deref(),
            Some("alice:100000:65536\n")
        );
        assert_eq!(
            add_subordinate_range("bob:100000:65536\ncarol:165536:65536", "alice", 1000).as_deref(),
            Some("bob:100000:65536\ncarol:165536:65536\nalice:231072:65536\n")
        );
        // A low range (a hand-made one) does not pull the next below the first useradd gives.
        assert_eq!(
            add_subordinate_range("dave:5000:10\n", "alice", 1000).as_deref(),
            Some("dave:5000:10\nalice:100000:65536\n")
        );
        assert_eq!(add_subordinate_range("alice:300000:65536\n", "alice", 1000), None);
        assert_eq!(
            add_subordinate_range("1000:300000:65536\n", "alice", 1000),
            None,
            "by uid"
        );
        assert_eq!(
            add_subordinate_range("x:4294900000:65536\n", "alice", 1000),
            None,
            "no room left: nothing written"
        );
        // Comments and junk lines are kept and skipped.
        assert_eq!(
            add_subordinate_range("# ids\njunk\n", "alice", 1000).as_deref(),
            Some("# ids\njunk\nalice:100000:65536\n")
        );
    }

    #[test]
    fn the_shell_is_the_users_own_when_the_image_has_it() {
        let debian = "# /etc/shells\n/bin/sh\n/bin/bash\n/usr/bin/bash\n";
        assert_eq!(choose_shell("/usr/bin/zsh", debian), "/bin/bash");
        assert_eq!(
            choose_shell("/usr/bin/zsh", "/usr/bin/zsh\n/bin/bash\n"),
            "/usr/bin/zsh"
        );
        assert_eq!(choose_shell("/bin/bash", ""), "/bin/sh", "BusyBox: no /etc/shells");
    }

    #[test]
    fn homes_mounts_and_sudo_follow_the_original_names() {
        let a = alice();
        assert_eq!(a.container_home(), "/home/alice");
        let home = home_devices(&a);
        assert_eq!(home["kapsule-home-alice"]["source"], "/home/alice");
        assert_eq!(home["kapsule-home-alice"]["path"], "/home/alice");
        let mut odd = alice();
        odd.home = "/var/home/alice".into();
        assert_eq!(odd.container_home(), "/home/alice");

        assert_eq!(expand_home("~/src", &a.home), Path::new("/home/alice/src"));
        assert_eq!(expand_home("~", &a.home), Path::new("/home/alice"));
        assert_eq!(expand_home("/opt/x", &a.home), Path::new("/opt/x"));
        assert_eq!(expand_home("~bob/x", &a.home), Path::new("~bob/x"));
        assert_eq!(
            custom_mount_device("/home/alice/kde.src"),
            "kapsule-mount-home-alice-kde-src"
        );
        let long = format!("/{}", "x".repeat(80));
        let device = custom_mount_device(&long);
        assert!(device.len() <= 63 && device.starts_with("kapsule-mount-"), "{device}");
        assert_eq!(device, custom_mount_device(&long), "stable");

        let minimal = minimal_host_devices(1000);
        assert_eq!(minimal["kapsule-hostrun-1000"]["path"], "/.kapsule/host/run/user/1000");
        assert_eq!(minimal["kapsule-x11"]["source"], "/tmp/.X11-unix");

        assert_eq!(
            sudoers_entry("first.last"),
            (
                "/etc/sudoers.d/first_last".to_owned(),
                "first.last ALL=(ALL) NOPASSWD:ALL\n".to_owned()
            )
        );
    }

    #[test]
    fn setup_user_wants_the_hosts_own_account() {
        let root = requested_account(0, 0, "root", "/root").unwrap();
        assert_eq!(root.name, "root");
        for (uid, gid, name, home) in [
            (0, 1, "root", "/root"),
            (0, 0, "admin", "/root"),
            (0, 0, "root", "/tmp"),
        ] {
            assert!(matches!(
                requested_account(uid, gid, name, home),
                Err(Error::InvalidArgument(_))
            ));
        }
        assert!(matches!(
            requested_account(4_000_000_000, 1, "x", "/x"),
            Err(Error::InvalidArgument(_))
        ));
    }
}
