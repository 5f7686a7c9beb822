//! `UpgradeContainer`: a container's packages upgraded by its own package manager, its output on
//! the operation line by line.
//!
//! Where the container's storage pool makes a snapshot cheap (copy-on-write: btrfs, ZFS, LVM
//! thin, Ceph), one is taken first, named `auto-upgrade-<date>-<time>`, and the client is told
//! how to go back to it; the automatic ones are pruned to the last [`KEEP_AUTOMATIC`]. A stopped
//! container is started for the upgrade and stopped again after it, whether it worked or not.
//!
//! The command runs as root through the session helper: the image's `/.kapsule/upgrade` first when
//! it has one, then the first package manager found (apt, dnf, pacman, zypper, apk, xbps), each
//! non-interactive. Not journaled: nothing of Kapsule's is half made by an upgrade cut short (a
//! package manager interrupted is what the automatic snapshot is for), and a container started
//! for it stays running, which is a state a user can make too.

use std::collections::HashMap;
use std::time::Duration;

use kapsule_dbus::Error;
use kapsule_incus::models::Instance;

use crate::container::exec::run_as_root_reporting;
use crate::container::meta::{AUTOMATIC_SNAPSHOT_PREFIX, is_running};
use crate::error::incus_error;
use crate::operation::incus::run_incus_operation;
use crate::operation::{Failure, MessageKind, Notes, Reporter};
use crate::pipeline::Daemon;
use crate::pipeline::lifecycle::ensure_booted;
use crate::pipeline::recovery::settled;

/// How many automatic snapshots a container keeps: the newest.
pub(crate) const KEEP_AUTOMATIC: usize = 3;

/// How long an upgrade may run.
const UPGRADE_LIMIT: Duration = Duration::from_secs(2 * 60 * 60);

/// Storage drivers on which a snapshot shares the container's blocks (instant, nearly free).
const CHEAP_SNAPSHOTS: [&str; 4] = ["btrfs", "zfs", "lvm", "ceph"];

/// The upgrade, as one POSIX `sh` script: the image's own hook, then the package manager.
const SCRIPT: &str = r#"set -e
if [ -x /.kapsule/upgrade ]; then
    echo "Running the image's /.kapsule/upgrade"
    /.kapsule/upgrade
fi
if command -v apt-get >/dev/null 2>&1; then
    echo "Upgrading with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold full-upgrade
elif command -v dnf >/dev/null 2>&1; then
    echo "Upgrading with dnf"
    dnf -y upgrade --refresh
elif command -v pacman >/dev/null 2>&1; then
    echo "Upgrading with pacman"
    pacman -Syu --noconfirm
elif command -v zypper >/dev/null 2>&1; then
    echo "Upgrading with zypper"
    zypper --non-interactive dist-upgrade
elif command -v apk >/dev/null 2>&1; then
    echo "Upgrading with apk"
    apk upgrade --update-cache
elif command -v xbps-install >/dev/null 2>&1; then
    echo "Upgrading with xbps"
    xbps-install -Suy xbps
    xbps-install -Suy
elif [ ! -x /.kapsule/upgrade ]; then
    echo "No package manager found (apt, dnf, pacman, zypper, apk or xbps) and no /.kapsule/upgrade" >&2
    exit 127
fi
"#;

/// What `UpgradeContainer`'s options ask.
#[derive(Debug)]
pub(crate) struct Plan {
    pub name: String,
    /// False when the client said `snapshot: false`.
    pub snapshot: bool,
}

/// Before `UpgradeContainer`: the container is settled and the options known.
pub(crate) async fn plan(
    daemon: &Daemon,
    name: &str,
    options: &HashMap<String, zbus::OwnedVariant>,
) -> Result<Plan, Error> {
    let mut snapshot = true;
    for (key, value) in options {
        match key.as_str() {
            "snapshot" => {
                snapshot = bool::try_from(value)
                    .map_err(|_| Error::InvalidArgument("Option 'snapshot' must be a boolean".into()))?
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "Unknown option {} (known: snapshot)",
                    kapsule_dbus::quote(other)
                )));
            }
        }
    }
    settled(daemon, name).await?;
    Ok(Plan {
        name: name.to_owned(),
        snapshot,
    })
}

/// `UpgradeContainer`'s work.
pub(crate) async fn run(daemon: &Daemon, reporter: &Reporter, plan: Plan) -> Result<String, Failure> {
    let name = plan.name.as_str();
    let instance = settled(daemon, name).await?;
    let was_running = is_running(&instance);
    if plan.snapshot {
        snapshot_first(daemon, reporter, &instance).await?;
    }
    ensure_booted(daemon, Some(reporter), &instance).await?;
    let script = ["sh", "-c", SCRIPT];
    let ran = run_as_root_reporting(&daemon.containers, name, &script, UPGRADE_LIMIT, Notes(Some(reporter))).await;
    if !was_running {
        reporter.info("Stopping it again").await;
        let stopped = async {
            let op = daemon
                .containers
                .incus
                .stop_instance(name, false, Duration::from_secs(60))
                .await?;
            run_incus_operation(&daemon.containers.incus, reporter, op).await
        };
        if let Err(e) = stopped.await {
            reporter
                .warn(&format!("Could not stop '{name}' again: {}", e.message()))
                .await;
        }
    }
    let ran = ran?;
    if !ran.success() {
        return Err(Failure::Failed(format!("Upgrading '{name}' failed{}", ran.failure())));
    }
    Ok(format!("Container '{name}' upgraded"))
}

/// Takes an automatic snapshot where that is cheap, says how to roll back, and prunes the older
/// automatic ones.
async fn snapshot_first(daemon: &Daemon, reporter: &Reporter, instance: &Instance) -> Result<(), Failure> {
    let name = instance.name.as_str();
    let incus = &daemon.containers.incus;
    let pool = instance
        .expanded_devices
        .get("root")
        .and_then(|root| root.get("pool"))
        .cloned()
        .unwrap_or_default();
    let driver = match incus.get_storage_pool(&pool).await {
        Ok(found) => found.driver,
        Err(e) => {
            reporter
                .warn(&format!(
                    "No snapshot taken: cannot read the storage pool '{pool}': {e}"
                ))
                .await;
            return Ok(());
        }
    };
    if !CHEAP_SNAPSHOTS.contains(&driver.as_str()) {
        reporter
            .say(
                MessageKind::Dim,
                &format!(
                    "No snapshot taken first: on a '{driver}' pool it is a full copy (`kapsule snapshot {name}` takes one anyway)"
                ),
            )
            .await;
        return Ok(());
    }
    let snapshot = format!(
        "{AUTOMATIC_SNAPSHOT_PREFIX}upgrade-{}",
        jiff::Zoned::now().strftime("%Y%m%d-%H%M%S")
    );
    let op = incus.create_snapshot(name, &snapshot).await?;
    run_incus_operation(incus, reporter, op).await?;
    reporter
        .say(
            MessageKind::Hint,
            &format!("Snapshot '{snapshot}' taken first; to go back: kapsule restore {name} {snapshot}"),
        )
        .await;
    let snapshots = incus.list_snapshots(name).await.map_err(incus_error)?;
    let automatic: Vec<&str> = snapshots
        .iter()
        .map(|s| s.name.as_str())
        .filter(|s| s.starts_with(AUTOMATIC_SNAPSHOT_PREFIX))
        .collect();
    for old in automatic.iter().take(automatic.len().saturating_sub(KEEP_AUTOMATIC)) {
        let removed = async {
            let op = incus.delete_snapshot(name, old).await?;
            run_incus_operation(incus, reporter, op).await
        };
        match removed.await {
            Ok(_) => {
                reporter
                    .say(MessageKind::Dim, &format!("Removed the older snapshot '{old}'"))
                    .await
            }
            Err(e) => {
                reporter
                    .warn(&format!("Could not remove the older snapshot '{old}': {}", e.message()))
                    .await
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_posix_sh_and_names_every_manager() {
        for manager in ["apt-get", "dnf", "pacman", "zypper", "apk", "xbps-install"] {
            assert!(SCRIPT.contains(&format!("command -v {manager} ")), "{manager}");
        }
        let checked = std::process::Command::new("sh")
            .args(["-n", "-c", SCRIPT])
            .status()
            .unwrap();
        assert!(checked.success(), "sh -n");
    }
}
