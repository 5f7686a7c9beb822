//! Starting, stopping and removing a container (the operations `StartContainer`,
//! `StopContainer`, `DeleteContainer`), and starting one on the way in.

use std::time::Duration;

use kapsule_dbus::Error;
use kapsule_incus::models::{ConfigMap, Instance};

use crate::container::boot::wait_for_early_boot;
use crate::container::files::ContainerFiles;
use crate::container::meta::{PENDING_KEY, is_running};
use crate::container::{hostsync, idmap};
use crate::host::journal::{self, Entry, Work};
use crate::operation::incus::{INCUS_WAIT, run_incus_operation};
use crate::operation::{Failure, MessageKind, Notes, Reporter};
use crate::pipeline::Daemon;
use crate::pipeline::recovery::{self, settled};

/// Before `StartContainer` and `StopContainer`: the container exists, is Kapsule's and no work is
/// under way on it.
pub(crate) async fn check_exists(daemon: &Daemon, name: &str) -> Result<(), Error> {
    settled(daemon, name).await.map(drop)
}

/// Before `DeleteContainer`: the container exists, and is not running unless `force`.
pub(crate) async fn check_delete(daemon: &Daemon, name: &str, force: bool) -> Result<(), Error> {
    let instance = settled(daemon, name).await?;
    if is_running(&instance) && !force {
        return Err(Error::Failed(format!(
            "Container '{name}' is running; stop it first or use force"
        )));
    }
    Ok(())
}

/// `StartContainer`'s work.
pub(crate) async fn start(daemon: &Daemon, reporter: &Reporter, name: &str) -> Result<String, Failure> {
    let instance = settled(daemon, name).await?;
    if is_running(&instance) {
        reporter.warn(&format!("Container '{name}' is already running")).await;
        return Ok(String::new());
    }
    if instance.config.get("raw.lxc").is_some_and(|raw| {
        raw.lines()
            .any(|l| l.starts_with("lxc.hook.mount=") && l.contains("nvidia"))
    }) {
        reporter
            .say(MessageKind::Dim, "NVIDIA userspace drivers are injected on start")
            .await;
    }
    let op = idmap::start(&daemon.containers, &instance).await?;
    run_incus_operation(&daemon.containers.incus, reporter, op).await?;
    // The host's timezone or DNS may have changed while it was stopped.
    hostsync::report(
        Notes(Some(reporter)),
        hostsync::sync_instance(&daemon.containers, &instance).await,
    )
    .await;
    daemon.clients.containers_changed().await;
    Ok(format!("Container '{name}' started"))
}

/// [`ensure_running`], and when that started the container, a wait for the early boot a user's
/// command depends on ([`wait_for_early_boot`]): for an enter or an upgrade of a stopped container,
/// whose command would otherwise race the boot (`/tmp` emptied under it, no system bus yet).
pub(crate) async fn ensure_booted(
    daemon: &Daemon,
    reporter: Option<&Reporter>,
    instance: &Instance,
) -> Result<(), Failure> {
    if is_running(instance) {
        return Ok(());
    }
    ensure_running(daemon, reporter, instance).await?;
    match ContainerFiles::open(&daemon.containers, &instance.name).await {
        Ok(files) => wait_for_early_boot(&daemon.containers, &files).await,
        Err(e) => log::info!("{}: not waiting for boot: {e}", instance.name),
    }
    Ok(())
}

/// Starts the container if it is not running (a no-op otherwise), without telling clients
/// `ContainersChanged` (the original daemon did not for starts on the way in either).
pub(crate) async fn ensure_running(
    daemon: &Daemon,
    reporter: Option<&Reporter>,
    instance: &Instance,
) -> Result<(), Failure> {
    if is_running(instance) {
        return Ok(());
    }
    let name = instance.name.as_str();
    match reporter {
        Some(r) => r.info(&format!("Starting container '{name}'")).await,
        None => log::info!("starting container '{name}'"),
    }
    let op = idmap::start(&daemon.containers, instance).await?;
    match reporter {
        Some(r) => {
            run_incus_operation(&daemon.containers.incus, r, op).await?;
        }
        None => {
            daemon.containers.incus.wait_operation(&op.id, INCUS_WAIT).await?;
        }
    }
    hostsync::log_lines(name, hostsync::sync_instance(&daemon.containers, instance).await);
    Ok(())
}

/// `StopContainer`'s work.
pub(crate) async fn stop(daemon: &Daemon, reporter: &Reporter, name: &str, force: bool) -> Result<String, Failure> {
    let instance = settled(daemon, name).await?;
    if !is_running(&instance) {
        reporter.warn(&format!("Container '{name}' is not running")).await;
        return Ok(String::new());
    }
    let op = daemon
        .containers
        .incus
        .stop_instance(name, force, Duration::from_secs(60))
        .await?;
    run_incus_operation(&daemon.containers.incus, reporter, op).await?;
    daemon.clients.containers_changed().await;
    Ok(format!("Container '{name}' stopped"))
}

/// `DeleteContainer`'s work. Journaled (`host/journal.rs`): from the stop on, a daemon killed
/// before the end leaves an entry, and the next one finishes the removal.
pub(crate) async fn delete(daemon: &Daemon, reporter: &Reporter, name: &str, force: bool) -> Result<String, Failure> {
    let instance = settled(daemon, name).await?;
    if is_running(&instance) && !force {
        return Err(Failure::Failed(format!(
            "Container '{name}' is running; stop it first or use force"
        )));
    }
    let _hold = journal::hold(&journal::instance_key(name)).await;
    let entry = ConfigMap::from([(PENDING_KEY.to_owned(), Entry::new(Work::Delete).value())]);
    daemon.containers.incus.patch_instance_config(name, &entry).await?;
    let removed = async {
        if is_running(&instance) {
            reporter.info("Stopping the container first").await;
            let op = daemon
                .containers
                .incus
                .stop_instance(name, true, Duration::from_secs(30))
                .await?;
            run_incus_operation(&daemon.containers.incus, reporter, op).await?;
        }
        let op = daemon.containers.incus.delete_instance(name).await?;
        run_incus_operation(&daemon.containers.incus, reporter, op).await?;
        Ok::<(), Failure>(())
    }
    .await;
    if let Err(failure) = removed {
        // The client hears that the removal failed: the container stays, without the entry.
        if let Err(e) = recovery::clear_container_entry(daemon, name).await {
            log::warn!("container {name}: cannot clear the journal entry of a failed removal: {e}");
        }
        daemon.clients.containers_changed().await;
        return Err(failure);
    }
    daemon.clients.containers_changed().await;
    Ok(format!("Container '{name}' removed"))
}
