//! `CloneContainer`: a new container from another's current state, or from one of its snapshots.
//!
//! Incus copies the files, config and devices (copy-on-write on btrfs); the copy gets its own
//! identity before its first start: its owner is the caller, its host name its own name
//! (`/etc/hostname`, and `/etc/hosts`), and a new machine ID, so journald, D-Bus and DHCP do
//! not take the two for one machine. The source is only read: it keeps running if it was. The
//! host's settings are pushed into the copy unless it is of a running source as it is now (those
//! are current in it already).
//!
//! Journaled as a create (`host/journal.rs`): the copy is made with an entry the last step
//! clears, so a copy a killed daemon did not finish is removed by the next one.

use kapsule_dbus::Error;
use kapsule_incus::FileMeta;
use kapsule_incus::models::{ConfigMap, InstanceSource, InstancesPost};

use crate::container::meta::{self, OWNER_KEY, PENDING_KEY, is_running, validate_name};
use crate::container::{fixups, hostsync, idmap, spec};
use crate::host::journal::{self, Entry, Work};
use crate::identity::caller::Caller;
use crate::operation::incus::run_incus_operation;
use crate::operation::{Failure, Notes, Reporter};
use crate::pipeline::recovery::{self, settled};
use crate::pipeline::{Daemon, create, snapshots};

/// A clone that passed every check.
#[derive(Debug)]
pub(crate) struct Plan {
    pub source: String,
    pub snapshot: Option<String>,
    pub name: String,
    pub owner: Caller,
    /// True when the copy is of a running source as it is now: the host's settings in it are
    /// current (they are pushed into running containers as they change), so none are pushed.
    pub current: bool,
    /// What recovery did to a container of this name a killed daemon left, said first.
    pub recovered: Option<String>,
    /// The source is unprivileged, and so is the copy: its ids are mapped for its new owner, and
    /// its `raw.lxc` (this, the source's) names its own `shmounts`.
    pub unprivileged: Option<String>,
}

/// Before `CloneContainer`: the source is settled (and has `snapshot`, if one is named), and
/// `name` is valid and free.
pub(crate) async fn plan(
    daemon: &Daemon,
    source: &str,
    name: &str,
    snapshot: &str,
    owner: &Caller,
) -> Result<Plan, Error> {
    validate_name(name)?;
    let instance = settled(daemon, source).await?;
    let running = is_running(&instance);
    let snapshot = if snapshot.is_empty() {
        None
    } else {
        snapshots::check_snapshot(daemon, source, snapshot).await?;
        Some(snapshot.to_owned())
    };
    let recovered = create::check_free(daemon, name).await?;
    Ok(Plan {
        source: source.to_owned(),
        current: running && snapshot.is_none(),
        snapshot,
        name: name.to_owned(),
        owner: owner.clone(),
        recovered,
        unprivileged: meta::is_unprivileged(&instance)
            .then(|| instance.config.get("raw.lxc").cloned().unwrap_or_default()),
    })
}

/// `CloneContainer`'s work.
pub(crate) async fn run(daemon: &Daemon, reporter: &Reporter, plan: Plan) -> Result<String, Failure> {
    let name = plan.name.as_str();
    let _hold = journal::hold(&journal::instance_key(name)).await;
    if let Some(what) = &plan.recovered {
        reporter
            .warn(&format!("An earlier container '{name}' was removed first: {what}"))
            .await;
    }
    let from = match &plan.snapshot {
        Some(snapshot) => format!("'{}' as it was at snapshot '{snapshot}'", plan.source),
        None => format!("'{}'", plan.source),
    };
    // Over the source's own config, which the copy keeps otherwise (unprivileged stays so).
    let mut config = ConfigMap::from([
        (OWNER_KEY.to_owned(), plan.owner.uid.to_string()),
        (PENDING_KEY.to_owned(), Entry::new(Work::Create).value()),
    ]);
    if let Some(raw_lxc) = &plan.unprivileged {
        config.insert("raw.idmap".to_owned(), idmap::raw_idmap(plan.owner.uid, plan.owner.gid));
        let shmounts = spec::shmounts_path(&daemon.containers.incus_dir(), name);
        config.insert("raw.lxc".to_owned(), spec::with_shmounts(raw_lxc, &shmounts));
    }
    let request = InstancesPost {
        name: name.to_owned(),
        source: InstanceSource::copy(&plan.source, plan.snapshot.as_deref()),
        config,
        devices: Default::default(),
        profiles: Vec::new(),
        kind: "container".into(),
        start: false,
        description: String::new(),
    };
    let progress = reporter.progress_start(&format!("Copying {from}"), -1).await;
    let made = async {
        let incus = &daemon.containers.incus;
        let op = incus.create_instance(&request).await?;
        run_incus_operation(incus, reporter, op).await?;
        give_identity(daemon, name).await?;
        let op = idmap::start(&daemon.containers, &incus.get_instance(name).await?).await?;
        run_incus_operation(incus, reporter, op).await?;
        fixups::rename(&daemon.containers, Notes(Some(reporter)), &plan.source, name).await;
        if !plan.current {
            let synced = hostsync::sync_one(&daemon.containers, name).await;
            hostsync::report(Notes(Some(reporter)), synced).await;
        }
        if reporter.is_cancelled() {
            return Err(Failure::Cancelled);
        }
        recovery::clear_container_entry(daemon, name).await?;
        Ok::<(), Failure>(())
    }
    .await;
    match made {
        Ok(()) => {
            reporter.progress_done(&progress, true, "").await;
            daemon.clients.containers_changed().await;
            Ok(format!("Container '{name}' created from {from}"))
        }
        Err(failure) => {
            reporter.progress_done(&progress, false, failure.message()).await;
            create::remove_half_made(daemon, name).await;
            Err(match failure {
                Failure::Failed(why) => Failure::Failed(format!("Cloning {from} as '{name}' failed: {why}")),
                cancelled => cancelled,
            })
        }
    }
}

/// Before the copy's first start: a new machine ID and, where the image keeps one, its own host
/// name in `/etc/hostname` (systemd sets the host name from it at boot).
async fn give_identity(daemon: &Daemon, name: &str) -> Result<(), Failure> {
    let incus = &daemon.containers.incus;
    let machine_id = format!("{}\n", uuid::Uuid::new_v4().simple());
    incus
        .push_file(name, "/etc/machine-id", machine_id, FileMeta::new(0, 0, 0o444))
        .await
        .map_err(|e| Failure::Failed(format!("cannot give it a machine ID: {e}")))?;
    match incus.read_file(name, "/etc/hostname").await {
        Ok(_) => incus
            .push_file(name, "/etc/hostname", format!("{name}\n"), FileMeta::new(0, 0, 0o644))
            .await
            .map_err(|e| Failure::Failed(format!("cannot give it its host name: {e}")))?,
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(Failure::Failed(format!("cannot read its /etc/hostname: {e}"))),
    }
    Ok(())
}
