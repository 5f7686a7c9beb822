//! Undo (issue: "undo"), on the `dir` pool and on btrfs: create, snapshot, restore, clone and
//! reset end to end through the daemon (from the call to its operation's `Completed`), against
//! the same Incus calls made directly: a create with the configuration and devices the daemon gave
//! its container; a snapshot; a stop, restore and start; a copy made stopped, given a machine ID
//! and host name, then started; a stop, rebuild and start (the snapshot removed first, untimed:
//! Incus 6.0 rebuilds no container that has one). What the daemon does beyond Incus's
//! calls shows in the ratio (the clone's `/etc/hosts` edit, the reset's fixups and init scripts).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use kapsule_incus::FileMeta;
use kapsule_incus::models::{ConfigMap, Devices, InstanceSource, InstancesPost};
use kapsule_integration_tests::InstanceGuard;

use crate::Row;
use crate::daemon::booted;

/// The steps, in the order both paths take them; `samples[i]` holds step `i`.
const STEPS: [&str; 5] = ["create", "snapshot", "restore", "clone", "reset"];

type Template = Option<(ConfigMap, Devices)>;

/// Each step on `pool` (a label), through the daemon that `client` and `manager` reach (started
/// with that pool) and directly, `trials` times, alternating which goes first.
pub(crate) async fn undo(
    client: &zbus::Connection,
    manager: &kapsule_dbus::ManagerProxy<'_>,
    incus: &kapsule_incus::Client,
    image: &str,
    prefix: &str,
    pool: &str,
    trials: usize,
) -> Result<Vec<Row>> {
    let mut ours: Vec<Vec<Duration>> = vec![Vec::new(); STEPS.len()];
    let mut direct: Vec<Vec<Duration>> = vec![Vec::new(); STEPS.len()];
    let mut template: Template = None;
    for trial in 0..trials {
        // The first trial goes through the daemon first: its container is the template.
        let daemon_first = trial % 2 == 0;
        if !daemon_first {
            directly(incus, image, &format!("{prefix}-d{trial}"), &mut direct, &template).await?;
        }
        through_daemon(
            client,
            manager,
            incus,
            image,
            &format!("{prefix}-c{trial}"),
            &mut ours,
            &mut template,
        )
        .await?;
        if daemon_first {
            directly(incus, image, &format!("{prefix}-d{trial}"), &mut direct, &template).await?;
        }
    }
    let mut rows = Vec::new();
    for (i, step) in STEPS.iter().enumerate() {
        let floor = format!("{step} on {pool}, Incus directly");
        rows.push(Row::new(
            &format!("{step} on {pool} through the daemon"),
            &ours[i],
            Some((&floor, &direct[i])),
        ));
        rows.push(Row::new(&floor, &direct[i], None));
    }
    Ok(rows)
}

/// Times one operation-starting call to its `Completed`, which must say it succeeded.
async fn timed(
    client: &zbus::Connection,
    what: &str,
    call: impl std::future::Future<Output = zbus::Result<zbus::OwnedObjectPath>>,
) -> Result<Duration> {
    let mut signals = kapsule_integration_tests::kapsule_signals(client).await;
    let started = Instant::now();
    let path = call.await?;
    let seen = kapsule_integration_tests::collect_operation_signals(&mut signals, path.as_str()).await;
    let took = started.elapsed();
    ensure!(
        seen.last().map(String::as_str) == Some("Completed(true, \"\")"),
        "{what}: {seen:?}"
    );
    Ok(took)
}

async fn through_daemon(
    client: &zbus::Connection,
    manager: &kapsule_dbus::ManagerProxy<'_>,
    incus: &kapsule_incus::Client,
    image: &str,
    name: &str,
    samples: &mut [Vec<Duration>],
    template: &mut Template,
) -> Result<()> {
    let copy = format!("{name}-copy");
    let _guards = (InstanceGuard(name.to_owned()), InstanceGuard(copy.clone()));
    let image = format!("local:{image}");
    let create = manager.create_container(name, &image, Default::default());
    samples[0].push(timed(client, "create", create).await?);
    if template.is_none() {
        let instance = incus.get_instance(name).await?;
        let config = instance
            .config
            .into_iter()
            .filter(|(k, _)| !k.starts_with("volatile.") && !k.starts_with("image."))
            .collect();
        *template = Some((config, instance.devices));
    }
    booted(incus, name).await?;
    samples[1].push(timed(client, "snapshot", manager.create_snapshot(name, "s")).await?);
    samples[2].push(timed(client, "restore", manager.restore_snapshot(name, "s")).await?);
    booted(incus, name).await?;
    samples[3].push(timed(client, "clone", manager.clone_container(name, &copy, "")).await?);
    booted(incus, name).await?;
    // A reset refuses a container with a snapshot of the user's (removed untimed).
    timed(client, "snapshot rm", manager.delete_snapshot(name, "s")).await?;
    samples[4].push(timed(client, "reset", manager.reset_container(name, "")).await?);
    Ok(())
}

async fn directly(
    incus: &kapsule_incus::Client,
    image: &str,
    name: &str,
    samples: &mut [Vec<Duration>],
    template: &Template,
) -> Result<()> {
    let (config, devices) = template.clone().context("no template")?;
    let copy = format!("{name}-copy");
    let _guards = (InstanceGuard(name.to_owned()), InstanceGuard(copy.clone()));
    let wait = Some(Duration::from_secs(600));
    let run = |op: kapsule_incus::models::Operation| async move { incus.wait_operation(&op.id, wait).await };
    let request = InstancesPost {
        name: name.to_owned(),
        source: InstanceSource::local_alias(image.to_owned()),
        config,
        devices,
        profiles: Vec::new(),
        kind: "container".into(),
        start: true,
        description: String::new(),
    };
    let started = Instant::now();
    run(incus.create_instance(&request).await?).await?;
    samples[0].push(started.elapsed());
    booted(incus, name).await?;

    let started = Instant::now();
    run(incus.create_snapshot(name, "s").await?).await?;
    samples[1].push(started.elapsed());

    let started = Instant::now();
    run(incus.stop_instance(name, true, Duration::from_secs(30)).await?).await?;
    run(incus.restore_snapshot(name, "s").await?).await?;
    run(incus.start_instance(name).await?).await?;
    samples[2].push(started.elapsed());
    booted(incus, name).await?;

    let started = Instant::now();
    let request = InstancesPost {
        name: copy.clone(),
        source: InstanceSource::copy(name, None),
        config: ConfigMap::new(),
        devices: Devices::new(),
        profiles: Vec::new(),
        kind: "container".into(),
        start: false,
        description: String::new(),
    };
    run(incus.create_instance(&request).await?).await?;
    let root = FileMeta::new(0, 0, 0o444);
    incus
        .push_file(&copy, "/etc/machine-id", "0123456789abcdef0123456789abcdef\n", root)
        .await?;
    if incus.read_file(&copy, "/etc/hostname").await.is_ok() {
        incus
            .push_file(&copy, "/etc/hostname", format!("{copy}\n"), FileMeta::new(0, 0, 0o644))
            .await?;
    }
    run(incus.start_instance(&copy).await?).await?;
    samples[3].push(started.elapsed());
    booted(incus, name).await?;

    let base = incus
        .get_instance(name)
        .await?
        .config
        .get("volatile.base_image")
        .cloned();
    let base = base.context("no volatile.base_image")?;
    run(incus.delete_snapshot(name, "s").await?).await?;
    let started = Instant::now();
    run(incus.stop_instance(name, true, Duration::from_secs(30)).await?).await?;
    run(incus
        .rebuild_instance(name, &InstanceSource::local_fingerprint(base))
        .await?)
    .await?;
    run(incus.start_instance(name).await?).await?;
    samples[4].push(started.elapsed());
    Ok(())
}
