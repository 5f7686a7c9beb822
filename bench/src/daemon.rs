//! The daemon's own figures: cold start (as a process, and socket-activated as its unit is),
//! memory, `ListContainers` against Incus's own answer with 1 and 20 containers, 50 calls at
//! once, and the container lifecycle against the same operations done directly through Incus.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures_util::future::join_all;
use kapsule_incus::models::{InstanceSource, InstancesPost};
use kapsule_integration_tests::{ImageGuard, InstanceGuard, PrivateBus, bus_name_has_owner, test_network_namespace};

use crate::{Row, time_once};

/// Resident and proportional memory of a process, in KiB.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Memory {
    pub rss_kib: u64,
    pub pss_kib: u64,
}

/// What `/proc/<pid>/smaps_rollup` says of `pid`.
pub(crate) fn memory(pid: u32) -> Result<Memory> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| -> Result<u64> {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .with_context(|| format!("no {name} in smaps_rollup"))
    };
    Ok(Memory {
        rss_kib: field("Rss:")?,
        pss_kib: field("Pss:")?,
    })
}

fn daemon_command(bin: &Path, address: &str) -> Command {
    let mut c = Command::new(bin.join("kapsule-daemon"));
    c.args(["--address", address])
        .arg("--network-namespace")
        .arg(test_network_namespace())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn stop(child: &mut std::process::Child, address: &str) -> Result<()> {
    let _ = child.kill();
    child.wait()?;
    for _ in 0..500 {
        if !bus_name_has_owner(address, "org.kde.kapsule") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("the daemon's name stayed owned after it was killed")
}

/// From starting the daemon's process to the answer of its first call (a property read on a
/// client connected beforehand), `trials` times after one warm-up; and the memory of the last
/// one after that call.
pub(crate) fn cold_start(rt: &tokio::runtime::Runtime, bin: &Path, trials: usize) -> Result<(Vec<Duration>, Memory)> {
    let bus = PrivateBus::start();
    let client = rt.block_on(bus.connect());
    let version = || {
        rt.block_on(client.call_method(
            Some("org.kde.kapsule"),
            "/org/kde/kapsule",
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &("org.kde.kapsule.Manager", "Version"),
        ))
    };
    let mut samples = Vec::new();
    let mut idle = None;
    for trial in 0..=trials {
        let dir = tempfile::tempdir()?;
        let notify_path = dir.path().join("notify");
        let notify = UnixDatagram::bind(&notify_path)?;
        notify.set_read_timeout(Some(Duration::from_secs(10)))?;
        let started = Instant::now();
        let mut child = daemon_command(bin, &bus.address)
            .env("NOTIFY_SOCKET", &notify_path)
            .spawn()?;
        let mut buf = [0u8; 512];
        loop {
            let n = notify
                .recv(&mut buf)
                .context("no READY=1 from the daemon within 10 s")?;
            if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
                break;
            }
        }
        version().context("the first call")?;
        let took = started.elapsed();
        if trial == trials {
            idle = Some(memory(child.id())?);
        }
        stop(&mut child, &bus.address)?;
        if trial > 0 {
            samples.push(took);
        }
    }
    Ok((samples, idle.context("no trial")?))
}

/// `kapsule list` through the daemon's socket: with `systemd-socket-activate` holding the
/// socket and starting the daemon on the connection (as `kapsule-daemon.socket` does), and with
/// the daemon already running on it.
pub(crate) fn socket_activation(bin: &Path, trials: usize) -> Result<(Vec<Duration>, Vec<Duration>)> {
    ensure!(
        Command::new("systemd-socket-activate").arg("--help").output().is_ok(),
        "systemd-socket-activate is missing (tests/env/up.sh installs systemd)"
    );
    let bus = PrivateBus::start();
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("kapsule.sock");
    let list = || {
        let mut c = Command::new(bin.join("kapsule"));
        c.arg("list")
            .env_remove("KAPSULE_BUS_ADDRESS")
            .env("KAPSULE_SOCKET", &socket)
            // Nothing to fall back to: the socket must answer.
            .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent")
            .stdout(Stdio::null());
        c
    };
    let wait_for_socket = || -> Result<()> {
        for _ in 0..500 {
            if socket.exists() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bail!("{} did not appear", socket.display())
    };
    let mut activated = Vec::new();
    for trial in 0..=trials {
        let _ = std::fs::remove_file(&socket);
        let daemon = daemon_command(bin, &bus.address);
        let mut holder = Command::new("systemd-socket-activate")
            .arg("-l")
            .arg(&socket)
            .arg("--")
            .arg(daemon.get_program())
            .args(daemon.get_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        wait_for_socket()?;
        let took = time_once(&mut list())?;
        // systemd-socket-activate became the daemon (exec), so this stops the daemon.
        stop(&mut holder, &bus.address)?;
        if trial > 0 {
            activated.push(took);
        }
    }
    let _ = std::fs::remove_file(&socket);
    let mut running = daemon_command(bin, &bus.address).arg("--socket").arg(&socket).spawn()?;
    wait_for_socket()?;
    let warm = crate::measure(trials, list);
    stop(&mut running, &bus.address)?;
    Ok((activated, warm?))
}

async fn timed<F, T, E>(f: F) -> Result<Duration>
where
    F: std::future::Future<Output = std::result::Result<T, E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    match f.await {
        Ok(_) => Ok(started.elapsed()),
        Err(e) => bail!("{e}"),
    }
}

/// `ListContainers` on the running daemon vs the raw `GET /1.0/instances?recursion=1` it makes,
/// with the containers there are now (`label`); then 50 of each at once.
pub(crate) async fn list_vs_raw(
    manager: &kapsule_dbus::ManagerProxy<'_>,
    incus: &kapsule_incus::Client,
    trials: usize,
    label: &str,
) -> Result<Vec<Row>> {
    const RAW: &str = "/1.0/instances?recursion=1";
    let (mut list, mut raw) = (Vec::new(), Vec::new());
    for trial in 0..=trials {
        let l = timed(manager.list_containers()).await?;
        let r = timed(incus.get_raw(RAW)).await?;
        if trial > 0 {
            list.push(l);
            raw.push(r);
        }
    }
    let mut rows = vec![
        Row::new(
            &format!("ListContainers, {label}"),
            &list,
            Some(("raw GET /1.0/instances?recursion=1", &raw)),
        ),
        Row::new(&format!("raw GET /1.0/instances?recursion=1, {label}"), &raw, None),
    ];
    let (mut many_list, mut many_raw) = (Vec::new(), Vec::new());
    for _ in 0..trials.clamp(3, 10) {
        let started = Instant::now();
        for result in join_all((0..50).map(|_| manager.list_containers())).await {
            result?;
        }
        many_list.push(started.elapsed());
        let started = Instant::now();
        for result in join_all((0..50).map(|_| incus.get_raw(RAW))).await {
            result?;
        }
        many_raw.push(started.elapsed());
    }
    rows.push(Row::new(
        &format!("50 ListContainers at once, {label}"),
        &many_list,
        Some(("50 raw GETs at once", &many_raw)),
    ));
    rows.push(Row::new(&format!("50 raw GETs at once, {label}"), &many_raw, None));
    Ok(rows)
}

/// Makes `count` stopped Kapsule containers (from a tiny image, marked as Kapsule's) directly
/// through Incus, for the listing; they and the image go when the guards are dropped.
pub(crate) async fn tiny_containers(
    incus: &kapsule_incus::Client,
    prefix: &str,
    count: usize,
) -> Result<(Vec<InstanceGuard>, ImageGuard)> {
    let alias = format!("{prefix}-tiny");
    let image = ImageGuard(kapsule_integration_tests::import_tiny_image(incus, &alias).await);
    let mut names = Vec::new();
    for n in 0..count {
        let name = format!("{prefix}-l{n}");
        let request = InstancesPost {
            name: name.clone(),
            source: InstanceSource::local_alias(alias.clone()),
            config: [("user.kapsule.owner".to_owned(), "0".to_owned())].into(),
            devices: [(
                "root".to_owned(),
                [("type", "disk"), ("path", "/"), ("pool", "default")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            )]
            .into(),
            profiles: Vec::new(),
            kind: "container".into(),
            start: false,
            description: String::new(),
        };
        let op = incus.create_instance(&request).await?;
        names.push(InstanceGuard(name));
        incus.wait_operation(&op.id, Some(Duration::from_secs(120))).await?;
    }
    Ok((names, image))
}

/// Waits (untimed) until the container's systemd has booted: a clean stop sent while it still
/// boots can be lost (the signal arrives before systemd handles it) and waits out its timeout.
/// Right after a start `systemctl` cannot connect yet ("Failed to connect to bus") and prints
/// no state: it is asked again until it could ask.
pub(crate) async fn booted(incus: &kapsule_incus::Client, name: &str) -> Result<()> {
    let request = kapsule_incus::ExecRequest::new(["systemctl", "is-system-running", "--wait"]);
    let started = Instant::now();
    loop {
        let out = incus.exec(name, &request, Duration::from_secs(120)).await?;
        if !out.stdout.trim_ascii().is_empty() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("{name} did not boot: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Create, stop, start and delete through the daemon (each timed from the call to its
/// operation's `Completed`), then the same through Incus directly with the configuration and
/// devices the daemon gave the container.
pub(crate) async fn lifecycle(
    client: &zbus::Connection,
    manager: &kapsule_dbus::ManagerProxy<'_>,
    incus: &kapsule_incus::Client,
    image: &str,
    prefix: &str,
    trials: usize,
) -> Result<Vec<Row>> {
    let mut ours: Vec<Vec<Duration>> = vec![Vec::new(); STEPS.len()];
    let mut direct: Vec<Vec<Duration>> = vec![Vec::new(); STEPS.len()];
    let mut template: Template = None;
    for trial in 0..trials {
        // Alternating which goes first, so neither always finds the caches the other warmed.
        // The first trial goes through the daemon first: its container is the template.
        let daemon_first = trial % 2 == 0;
        let direct_name = format!("{prefix}-d{trial}");
        if !daemon_first {
            directly(incus, image, &direct_name, &mut direct, &template).await?;
        }
        let name = format!("{prefix}-c{trial}");
        through_daemon(client, manager, incus, image, &name, &mut ours, &mut template).await?;
        if daemon_first {
            directly(incus, image, &direct_name, &mut direct, &template).await?;
        }
    }
    let mut rows = Vec::new();
    for (i, step) in STEPS.iter().enumerate() {
        let floor = format!("{step} through Incus directly");
        rows.push(Row::new(
            &format!("{step} through the daemon"),
            &ours[i],
            Some((&floor, &direct[i])),
        ));
        rows.push(Row::new(&floor, &direct[i], None));
    }
    Ok(rows)
}

/// The lifecycle's steps, in the order both paths take them; `samples[i]` holds step `i`.
const STEPS: [&str; 4] = ["create", "stop", "start", "delete"];

type Template = Option<(kapsule_incus::models::ConfigMap, kapsule_incus::models::Devices)>;

async fn through_daemon(
    client: &zbus::Connection,
    manager: &kapsule_dbus::ManagerProxy<'_>,
    incus: &kapsule_incus::Client,
    image: &str,
    name: &str,
    samples: &mut [Vec<Duration>],
    template: &mut Template,
) -> Result<()> {
    let _guard = InstanceGuard(name.to_owned());
    for (i, step) in STEPS.iter().enumerate() {
        // Stopped and deleted when booted, in both paths: right after a start, how far the boot
        // got (and so what there is to stop: dockerd and its state among it) depended on how
        // long the start's own work took, and a delete measured 0.9 s directly against 1.5 s
        // through the daemon for that alone (both 1.5 s when booted).
        if *step == "stop" || *step == "delete" {
            booted(incus, name).await?;
        }
        let mut signals = kapsule_integration_tests::kapsule_signals(client).await;
        let started = Instant::now();
        let path = match *step {
            "create" => {
                manager
                    .create_container(name, &format!("local:{image}"), Default::default())
                    .await?
            }
            "stop" => manager.stop_container(name, false).await?,
            "start" => manager.start_container(name).await?,
            _ => manager.delete_container(name, true).await?,
        };
        let seen = kapsule_integration_tests::collect_operation_signals(&mut signals, path.as_str()).await;
        samples[i].push(started.elapsed());
        ensure!(
            seen.last().map(String::as_str) == Some("Completed(true, \"\")"),
            "{step}: {seen:?}"
        );
        if *step == "create" && template.is_none() {
            let instance = incus.get_instance(name).await?;
            let config = instance
                .config
                .into_iter()
                .filter(|(k, _)| !k.starts_with("volatile.") && !k.starts_with("image."))
                .collect();
            *template = Some((config, instance.devices));
        }
    }
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
    let _guard = InstanceGuard(name.to_owned());
    let wait = Some(Duration::from_secs(600));
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
    let op = incus.create_instance(&request).await?;
    incus.wait_operation(&op.id, wait).await?;
    samples[0].push(started.elapsed());
    booted(incus, name).await?;
    let started = Instant::now();
    let op = incus.stop_instance(name, false, Duration::from_secs(60)).await?;
    incus.wait_operation(&op.id, wait).await?;
    samples[1].push(started.elapsed());
    let started = Instant::now();
    let op = incus.start_instance(name).await?;
    incus.wait_operation(&op.id, wait).await?;
    samples[2].push(started.elapsed());
    booted(incus, name).await?;
    let started = Instant::now();
    let op = incus.stop_instance(name, true, Duration::from_secs(30)).await?;
    incus.wait_operation(&op.id, wait).await?;
    let op = incus.delete_instance(name).await?;
    incus.wait_operation(&op.id, wait).await?;
    samples[3].push(started.elapsed());
    Ok(())
}
