//! User setup: making a host user at home in a container, once per (container, uid).
//!
//! The steps, in order (each a function below, each tested): the home mount (unless the container
//! says `mount-home=false`), the group and the account with the user's uid, gid and name, the
//! custom mounts (created on the host as the user), the minimal host mounts when the container
//! has no `/.kapsule/host`, passwordless sudo, linger in session mode, and last the
//! `user.kapsule.host-users.<uid>.mapped` marker, so a setup that fails is retried next time.
//!
//! Accounts are written into the container's `/etc/passwd`, `/etc/group` (and `shadow`/`gshadow`
//! where the image has them) from the host through the container's root (`container/files.rs`), not with
//! `useradd` inside: this works on every image (BusyBox and Alpine-like ones have no `useradd`),
//! costs no process, each file is replaced whole and keeps its owner and mode. Setups of one
//! container run one at a time, so two users set up at once cannot lose each other's line, and
//! the account waits for systemd-sysusers and the first command for systemd-tmpfiles-setup
//! (`container/boot.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kapsule_dbus::Error;
use kapsule_incus::models::{ConfigMap, Devices, Instance};
use kapsule_rootfs::Meta;

use crate::container::Containers;
use crate::container::accounts::{
    add_group_line, add_line_if_absent, add_subordinate_range, choose_shell, days_since_epoch, sudoers_entry,
};
use crate::container::boot::wait_for_early_boot;
use crate::container::exec::run_as_root;
use crate::container::files::{ContainerFiles, IfMissing, MAX_READ, edit_file};
use crate::container::meta::{self, Wants, is_set_up, mapped_key};
use crate::container::spec::{custom_mount_device, device, home_devices, minimal_host_devices};
use crate::identity::account::{Account, expand_home, requested_account};
use crate::identity::authority::{Action, Requester};
use crate::identity::caller::{FsIdentity, Missing};
use crate::operation::{Failure, MessageKind, Notes, Reporter};
use crate::pipeline::{Daemon, lifecycle, recovery};

/// One lock per container for user setups, which rewrite its user database.
#[derive(Debug, Default)]
pub(crate) struct SetupLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl SetupLocks {
    /// The lock that serializes user setups in container `name`.
    pub(crate) fn get(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.0
            .lock()
            .expect("setup locks")
            .entry(name.to_owned())
            .or_default()
            .clone()
    }
}

/// What `SetupUser` was asked.
#[derive(Debug)]
pub(crate) struct Request {
    pub container: String,
    pub uid: u32,
    pub gid: u32,
    pub username: String,
    pub home: String,
}

/// A `SetupUser` request that passed every check.
#[derive(Debug)]
pub(crate) struct Plan {
    pub instance: Instance,
    pub account: Account,
}

/// Checks a `SetupUser` request: the container exists, the caller may (setting oneself up in
/// one's own container is entering it; anyone else, or anywhere else, managing), and the account
/// is the host's own account of that uid.
pub(crate) async fn plan(daemon: &Daemon, who: &Requester, request: Request) -> Result<Plan, Error> {
    let instance = recovery::settled(daemon, &request.container).await?;
    let action = if who.caller.uid == request.uid {
        meta::enter_action(&instance, request.uid)
    } else {
        Action::ManageContainer
    };
    who.authorize(action, &[("container", &request.container)]).await?;
    meta::check_may_hold(&instance, request.uid)?;
    let account = requested_account(request.uid, request.gid, &request.username, &request.home)?;
    Ok(Plan { instance, account })
}

/// `SetupUser`'s work: the container started if needed, then the setup.
pub(crate) async fn run(daemon: &Daemon, reporter: &Reporter, plan: Plan) -> Result<String, Failure> {
    lifecycle::ensure_running(daemon, Some(reporter), &plan.instance).await?;
    if ensure(daemon, Notes(Some(reporter)), &plan.instance, &plan.account).await? {
        Ok(format!("User '{}' configured", plan.account.name))
    } else {
        Ok(format!("User '{}' was set up already", plan.account.name))
    }
}

/// Sets `account` up in the running container `instance` unless that was done already (as the
/// instance, read just before, says: then nothing is asked of Incus). Returns whether any work
/// was done.
pub(crate) async fn ensure(
    daemon: &Daemon,
    notes: Notes<'_>,
    instance: &Instance,
    account: &Account,
) -> Result<bool, Failure> {
    if is_set_up(instance, account.uid) {
        return Ok(false);
    }
    let name = instance.name.as_str();
    let lock = daemon.setup_locks.get(name);
    let _serial = lock.lock().await;
    // Read after taking the lock: a setup that just finished is not done twice.
    let instance = daemon.containers.incus.get_instance(name).await?;
    if is_set_up(&instance, account.uid) {
        return Ok(false);
    }
    let wants = Wants::of(&instance);
    notes
        .info(&format!("Setting up user '{}' in {name}", account.name))
        .await;
    let started = std::time::Instant::now();
    let step = |what: &str| log::debug!("{name}: user setup: {what} after {:?}", started.elapsed());
    let files = ContainerFiles::open(&daemon.containers, name).await?;
    if account.uid == 0 {
        // Root is in every image already, with its own /root; only the marker is needed.
        wait_for_early_boot(&daemon.containers, &files).await;
        mark_mapped(&daemon.containers, name, 0).await?;
        return Ok(true);
    }
    // What does not touch the user database (the devices, the sudo rule) is done while the boot
    // wait runs: only the account has to come after it.
    let (_, prepared) = tokio::join!(
        async {
            wait_for_early_boot(&daemon.containers, &files).await;
            step("boot wait");
        },
        async {
            mount_home(&daemon.containers, notes, name, account, &wants).await?;
            mount_custom_dirs(&daemon.containers, notes, name, account, &wants).await?;
            mount_minimal_host_dirs(&daemon.containers, name, account, &wants).await?;
            configure_sudo(&files, account).await?;
            step("mounts and sudo");
            Ok::<(), Failure>(())
        }
    );
    prepared?;
    create_account(&daemon.containers, &files, notes, account, &wants).await?;
    step("account");
    enable_linger(&daemon.containers, notes, name, account, &wants).await;
    mark_mapped(&daemon.containers, name, account.uid).await?;
    log::info!("{name}: user '{}' set up in {:?}", account.name, started.elapsed());
    Ok(true)
}

/// Step 1 (beside the boot wait): the host home at the container home, as a disk device; or,
/// for a container with a separate home, that directory (`~/` the user's), made as the user
/// when it is missing. A separate home that cannot be used fails the setup: mounting the host
/// home instead would put the container's dotfiles where the user said they must not go.
async fn mount_home(
    containers: &Containers,
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
    let source = if wants.home.is_empty() {
        account.home.clone()
    } else {
        let dir = expand_home(&wants.home, &account.home);
        if !dir.is_absolute() || dir.components().any(|c| c == std::path::Component::ParentDir) {
            return Err(Failure::Failed(format!(
                "The container's home '{}' is not an absolute path without '..'",
                wants.home
            )));
        }
        let identity = FsIdentity::of(account.uid, account.gid, &account.name);
        identity
            .mount_source(&dir, Missing::Create)
            .await
            .map_err(|e| Failure::Failed(format!("Cannot use {} as your home in {name}: {e}", dir.display())))?;
        notes
            .say(
                MessageKind::Dim,
                &format!("Your home in {name} is {} on the host", dir.display()),
            )
            .await;
        dir
    };
    let devices = home_devices(account, &source);
    containers.incus.patch_instance_devices(name, &devices).await?;
    Ok(())
}

/// Step 5 (after the boot wait): the group and the account, written into the container's user
/// database; with `mount_home` off, a home of its own made from `/etc/skel` (a separate home gets
/// what `/etc/skel` has that it has not).
async fn create_account(
    containers: &Containers,
    files: &ContainerFiles,
    notes: Notes<'_>,
    account: &Account,
    wants: &Wants,
) -> Result<(), Failure> {
    let home = account.container_home();
    let shells = match files.with_root(|root| root.read("/etc/shells", MAX_READ)).await {
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
    // A home of the container's own, or a separate one (new, or made by another container),
    // gets the image's dotfiles; the host home never does.
    if !wants.mount_home || !wants.home.is_empty() {
        make_own_home(containers, files, notes, account, &home).await;
    }
    Ok(())
}

/// A home inside the container, owned by the user, with what the image's `/etc/skel` has that
/// it has not. A home that exists owned by root is what Incus made to mount a custom directory
/// below it: it is given to the user. Nothing already in a home is overwritten.
async fn make_own_home(
    containers: &Containers,
    files: &ContainerFiles,
    notes: Notes<'_>,
    account: &Account,
    home: &str,
) {
    let name = files.name();
    let owner = Meta::new(account.uid, account.gid, 0o755);
    let path = home.to_owned();
    let made = files
        .with_root(move |root| {
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
    run_best_effort(containers, notes, name, &command, &what).await;
}

/// Runs a step that is not worth failing the setup for; a failure becomes a warning.
async fn run_best_effort(containers: &Containers, notes: Notes<'_>, name: &str, command: &[&str], what: &str) {
    match run_as_root(containers, name, command, b"", std::time::Duration::from_secs(60)).await {
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

/// Step 2 (beside the boot wait): each custom mount, `~/x` meaning the user's own `x`, created
/// on the host as the user and mounted at the same path inside. A directory inside a mounted home is visible through the
/// home already and gets no mount of its own (Incus cannot hot-plug a mount below another one).
async fn mount_custom_dirs(
    containers: &Containers,
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
            && wants.home.is_empty()
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
        containers.incus.patch_instance_devices(name, &devices).await?;
    }
    Ok(())
}

/// Step 3 (beside the boot wait): without `/.kapsule/host`, only the user's runtime directory and
/// the X11 sockets are shared, at the same places below `/.kapsule/host` (where the original
/// daemon's socket links looked). A source the host does not have yet (no session) is not an
/// error: it is mounted once it exists at the next start. An unprivileged container gets
/// neither: its sockets come from the socket mounts alone, so the rest of the user's runtime
/// directory (other programs' sockets, keyrings, the flatpak helpers) stays out of a sandbox.
async fn mount_minimal_host_dirs(
    containers: &Containers,
    name: &str,
    account: &Account,
    wants: &Wants,
) -> Result<(), Failure> {
    if wants.host_rootfs || wants.unprivileged {
        return Ok(());
    }
    containers
        .incus
        .patch_instance_devices(name, &minimal_host_devices(account.uid))
        .await?;
    Ok(())
}

/// Step 4 (beside the boot wait): passwordless sudo, in a sudoers.d file sudo will read (it skips
/// names with a `.`).
async fn configure_sudo(files: &ContainerFiles, account: &Account) -> Result<(), Failure> {
    let (path, rule) = sudoers_entry(&account.name);
    files
        .with_root(move |root| {
            root.ensure_dir("/etc/sudoers.d", Meta::new(0, 0, 0o750))?;
            root.write(&path, rule.as_bytes(), Meta::new(0, 0, 0o440))
        })
        .await
        .map_err(|e| Failure::Failed(format!("In {}: {e}", files.name())))?;
    Ok(())
}

/// Step 6: in session mode the user's own systemd instance runs without a login (it owns the
/// session bus there). Not fatal: the container works without it.
async fn enable_linger(containers: &Containers, notes: Notes<'_>, name: &str, account: &Account, wants: &Wants) {
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
    run_best_effort(containers, notes, name, &command, "Enabling linger").await;
    // logind starts the user's manager now, in the background, and with it mounts a fresh
    // /run/user/<uid>: waited for, so the first session finds the runtime directory (and the
    // desktop's sockets mounted in it) in place, and its own session bus.
    let unit = format!("user@{}.service", account.uid);
    run_best_effort(
        containers,
        notes,
        name,
        &["systemctl", "start", &unit],
        "Starting the user's systemd",
    )
    .await;
}

/// Step 7: the marker, last, so an interrupted setup runs again.
async fn mark_mapped(containers: &Containers, name: &str, uid: u32) -> Result<(), Failure> {
    let config = ConfigMap::from([(mapped_key(uid), "true".to_owned())]);
    containers.incus.patch_instance_config(name, &config).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
    fn homes_mounts_and_sudo_follow_the_original_names() {
        let a = alice();
        assert_eq!(a.container_home(), "/home/alice");
        let home = home_devices(&a, &a.home);
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
