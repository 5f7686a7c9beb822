//! `cargo run --release -p kapsule-bench -- [--trials N] [--lifecycle-trials N] [--json FILE] [--daemon-log FILE] [--only unprivileged]`: measures, in one run on
//! the real test environment (tests/env/up.sh), each Kapsule figure next to its floor, and prints
//! a table (min / median / max over the trials) and writes it as JSON.
//!
//! Enter (issue: "enter"):
//! - warm `kapsule enter c -- true` end to end, as a plain user, vs `incus exec c -- true` (what
//!   the original implementation ran for every enter, after its own preparation) and vs a bare
//!   `nsenter` into the same container (the floor: no daemon, no user switch);
//! - the first enter into a new container (start, user setup).
//!
//! Desktop sockets (issue: "desktop integration"):
//! - mounting 5 sockets cold with one `kapsule-mounts` run vs 5 `incus exec` calls that each
//!   bind-mount one (the original's approach, per socket), and the helper when all are current;
//! - a warm enter in a desktop session (the tests' fake desktop: Wayland, PipeWire, PulseAudio,
//!   X11, Xauthority, a session bus; mounts current, so the helper is skipped) vs a warm enter
//!   without one.
//!
//! The daemon (issue: "benchmarks"):
//! - cold start: from starting the process to the answer of its first call, and `kapsule list`
//!   socket-activating it (`systemd-socket-activate`, as `kapsule-daemon.socket` does) vs the
//!   same with the daemon running; resident memory (RSS, PSS) idle and after the workload;
//! - `ListContainers` with 1 and with 20 containers vs the raw `GET /1.0/instances?recursion=1`
//!   it makes, and 50 of each at once;
//! - `kapsule list` and `kapsule --version` as whole processes, next to `incus list` and
//!   `incus --version`;
//! - create, stop, start and delete through the daemon vs the same done directly through Incus
//!   with the configuration and devices the daemon gave the container.
//!
//! Undo (issue: "undo"), on the `dir` pool and on btrfs:
//! - create, snapshot, restore, clone and reset through the daemon vs the same Incus calls made
//!   directly.
//!
//! Everyday habits (issue: "everyday distrobox habits"):
//! - `kapsule upgrade --all` of three containers vs three `kapsule upgrade NAME` one after another.
//!
//! Unprivileged containers (issue: "unprivileged containers"):
//! - `kapsule create --unprivileged` and a warm enter in one, next to a privileged container.
//!
//! Everything runs as processes, as users run them: the release binaries, a daemon of its own on
//! a private bus. Nothing is left behind.

// The table is this program's output.
#![allow(clippy::print_stdout)]

mod daemon;
mod undo;
mod unprivileged;
mod upgrade;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kapsule_integration_tests::InstanceGuard;

fn main() {
    if let Err(e) = run() {
        eprintln!("kapsule-bench: {e:#}");
        std::process::exit(1);
    }
}

struct Options {
    trials: usize,
    lifecycle_trials: usize,
    json: PathBuf,
    /// Where the serving daemon's log goes (with `RUST_LOG` from the environment), to see where
    /// the time of a step goes; by default it is discarded.
    daemon_log: Option<PathBuf>,
    /// Only this section (`unprivileged`), for a change that touches it alone.
    only: Option<String>,
}

fn options() -> Result<Options> {
    let mut trials = 30;
    let mut lifecycle_trials = 3;
    let mut json = workspace().join("target/bench/bench.json");
    let mut daemon_log = None;
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--trials" => trials = args.next().context("--trials N")?.parse()?,
            "--lifecycle-trials" => lifecycle_trials = args.next().context("--lifecycle-trials N")?.parse()?,
            "--json" => json = args.next().context("--json FILE")?.into(),
            "--daemon-log" => daemon_log = Some(args.next().context("--daemon-log FILE")?.into()),
            "--only" => match args.next().as_deref() {
                Some("unprivileged") => only = Some("unprivileged".to_owned()),
                _ => bail!("--only takes one of: unprivileged"),
            },
            other => bail!(
                "unknown argument {other} (known: --trials N, --lifecycle-trials N, --json FILE, --daemon-log FILE, --only SECTION)"
            ),
        }
    }
    ensure!(
        trials >= 3 && lifecycle_trials >= 1,
        "at least 3 trials and 1 lifecycle trial"
    );
    Ok(Options {
        trials,
        lifecycle_trials,
        json,
        daemon_log,
        only,
    })
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn run() -> Result<()> {
    let options = options()?;
    ensure!(
        std::fs::read_to_string("/proc/self/status")?
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")),
        "run as root, with the test environment up (bash tests/env/up.sh)"
    );
    let status = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "kapsule",
            "-p",
            "kapsule-daemon",
            "-p",
            "kapsule-nsenter",
            "-p",
            "kapsule-mounts",
        ])
        .current_dir(workspace())
        .status()?;
    ensure!(status.success(), "building the release binaries failed");
    let bin = workspace().join("target/release");
    let image = std::env::var("KAPSULE_TEST_IMAGE").unwrap_or_else(|_| "kapsule-test".into());
    let user = kapsule_integration_tests::test_user();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut sections: Vec<(&str, Vec<Row>)> = Vec::new();

    if options.only.is_some() {
        let bus = kapsule_integration_tests::PrivateBus::start();
        let _daemon = Daemon::start(&bin, &bus.address, options.daemon_log.as_deref(), &[])?;
        sections.push(unprivileged::section(&bin, &bus.address, &user, &image, &options)?);
        print_sections(&sections);
        return write_json(&options, &sections, serde_json::Value::Null);
    }

    // The daemon starting, each time on a bus of its own with nothing else running.
    let (cold, idle_memory) = daemon::cold_start(&rt, &bin, options.trials)?;
    let (activated, socket_warm) = daemon::socket_activation(&bin, options.trials)?;
    sections.push((
        "daemon",
        vec![
            Row::new("daemon cold start: process start to first answer", &cold, None),
            Row::new(
                "kapsule list, socket-activating the daemon",
                &activated,
                Some(("kapsule list, daemon running", &socket_warm)),
            ),
            Row::new("kapsule list, daemon running (socket)", &socket_warm, None),
        ],
    ));

    // The tests' own private bus (a dbus-daemon any user may reach, with its own polkitd).
    let bus = kapsule_integration_tests::PrivateBus::start();
    let main_daemon = Daemon::start(&bin, &bus.address, options.daemon_log.as_deref(), &[])?;
    let as_user = |args: &[&str]| -> Command { as_user(&user, &bin.join("kapsule"), &bus.address, args) };
    let create = |name: &str| -> Result<InstanceGuard> {
        let guard = InstanceGuard(name.to_owned());
        let out = Command::new(bin.join("kapsule"))
            .args(["create", name, "--image", &format!("local:{image}")])
            .env("KAPSULE_BUS_ADDRESS", &bus.address)
            .output()?;
        ensure!(out.status.success(), "create: {}", String::from_utf8_lossy(&out.stderr));
        Ok(guard)
    };

    let home = user.home.to_str().context("a home that is UTF-8")?;
    let name = format!("kb-enter-{}", std::process::id());
    let _container = create(&name)?;

    let mut rows = Vec::new();
    // The first enter in a new container (running; the user setup happens now), in a few
    // fresh containers: each costs a create.
    let mut first = Vec::new();
    for n in 0..3 {
        let fresh = format!("{name}-f{n}");
        let _fresh = create(&fresh)?;
        first.push(time_once(&mut as_user(&["enter", &fresh, "--", "true"]))?);
    }
    let warm = measure(options.trials, || as_user(&["enter", &name, "--", "true"]))?;
    let incus = measure(options.trials, || {
        let mut c = Command::new("incus");
        c.args(["exec", &name, "--", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        c
    })?;
    // The original implementation's path: a synchronous PrepareEnter, then `incus exec` of the
    // command it returns. Our PrepareEnter stands in for the old one (same work: start check,
    // setup check), so this row is a lower bound for the old path.
    let old_path = measure_pair(
        options.trials,
        || {
            let mut c = user.call_manager(&bus, &[], "PrepareEnter", "sass", &[&name, "1", "true", home]);
            c.stdout(Stdio::null());
            c
        },
        || {
            let mut c = Command::new("incus");
            c.args(["exec", &name, "--", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            c
        },
    )?;
    let pid = init_pid(&name)?;
    let nsenter = measure(options.trials, || {
        let mut c = Command::new("nsenter");
        c.args(["-t", &pid, "-m", "-u", "-i", "-n", "-p", "-C", "--", "true"])
            .stdin(Stdio::null());
        c
    })?;
    rows.push(Row::new(
        "warm kapsule enter c -- true (user)",
        &warm,
        Some(("incus exec c -- true", &incus)),
    ));
    rows.push(Row::new(
        "old path: PrepareEnter + incus exec",
        &old_path,
        Some(("warm kapsule enter", &warm)),
    ));
    rows.push(Row::new("incus exec c -- true (root)", &incus, None));
    rows.push(Row::new("bare nsenter -t PID ... true (root)", &nsenter, None));
    rows.push(Row::new("first kapsule enter (user setup)", &first, None));

    // Desktop sockets.
    let (cold, per_exec, current) = socket_mounts(options.trials, &name, &bin)?;
    rows.push(Row::new(
        "kapsule-mounts: 5 sockets, cold",
        &cold,
        Some(("5 incus exec, one mount each", &per_exec)),
    ));
    rows.push(Row::new("5 incus exec, one mount each (root)", &per_exec, None));
    rows.push(Row::new("kapsule-mounts: 5 sockets, all current", &current, None));
    let desktop = rt.block_on(kapsule_integration_tests::desktop::FakeDesktop::start(&user));
    let warm_desktop = measure(options.trials, || {
        let mut c = as_user(&["enter", &name, "--", "true"]);
        c.envs(desktop.environment());
        c
    })?;
    drop(desktop);
    rows.push(Row::new(
        "warm enter, desktop session (helper skipped)",
        &warm_desktop,
        Some(("warm kapsule enter", &warm)),
    ));

    sections.push(("enter and desktop sockets", rows));

    // Listing, with the one container there is now, then with 20.
    let incus = kapsule_incus::Client::from_env();
    let client = rt.block_on(bus.connect());
    let manager = rt.block_on(kapsule_dbus::ManagerProxy::new(&client))?;
    let mut listing = rt.block_on(daemon::list_vs_raw(&manager, &incus, options.trials, "1 container"))?;
    let (_tiny, _tiny_image) = rt.block_on(daemon::tiny_containers(
        &incus,
        &format!("kb-{}", std::process::id()),
        19,
    ))?;
    listing.extend(rt.block_on(daemon::list_vs_raw(&manager, &incus, options.trials, "20 containers"))?);
    sections.push(("listing", listing));

    // Whole processes, as a user's shell runs them.
    let kapsule = |args: &[&str]| {
        let mut c = Command::new(bin.join("kapsule"));
        c.args(args)
            .env("KAPSULE_BUS_ADDRESS", &bus.address)
            .stdout(Stdio::null());
        c
    };
    let incus_cli = |args: &[&str]| {
        let mut c = Command::new("incus");
        c.args(args).stdout(Stdio::null());
        c
    };
    let kapsule_list = measure(options.trials, || kapsule(&["list"]))?;
    let incus_list = measure(options.trials, || incus_cli(&["list", "-f", "csv"]))?;
    let kapsule_version = measure(options.trials, || kapsule(&["--version"]))?;
    let incus_version = measure(options.trials, || incus_cli(&["--version"]))?;
    sections.push((
        "command line (20 containers)",
        vec![
            Row::new("kapsule list", &kapsule_list, Some(("incus list", &incus_list))),
            Row::new("incus list", &incus_list, None),
            Row::new(
                "kapsule --version",
                &kapsule_version,
                Some(("incus --version", &incus_version)),
            ),
            Row::new("incus --version", &incus_version, None),
        ],
    ));
    drop((_tiny, _tiny_image));

    // The lifecycle, through the daemon and directly.
    let lifecycle = rt.block_on(daemon::lifecycle(
        &client,
        &manager,
        &incus,
        &image,
        &format!("kb-{}", std::process::id()),
        options.lifecycle_trials,
    ))?;
    sections.push(("lifecycle (ms; Completed signal vs Incus operation done)", lifecycle));

    // Undo on the `dir` pool (the serving daemon's) and on btrfs (a daemon of its own, told to
    // make its containers there, as kapsule-init's btrfs pool on KDE Linux).
    let mut undo_rows = rt.block_on(undo::undo(
        &client,
        &manager,
        &incus,
        &image,
        &format!("kb-u{}", std::process::id()),
        "dir",
        options.lifecycle_trials,
    ))?;
    let btrfs_pool = std::env::var("KAPSULE_TEST_BTRFS_POOL").unwrap_or_else(|_| "kapsule-btrfs".into());
    let btrfs_bus = kapsule_integration_tests::PrivateBus::start();
    let _btrfs_daemon = Daemon::start(&bin, &btrfs_bus.address, None, &["--storage-pool", &btrfs_pool])?;
    let btrfs_client = rt.block_on(btrfs_bus.connect());
    let btrfs_manager = rt.block_on(kapsule_dbus::ManagerProxy::new(&btrfs_client))?;
    undo_rows.extend(rt.block_on(undo::undo(
        &btrfs_client,
        &btrfs_manager,
        &incus,
        &image,
        &format!("kb-b{}", std::process::id()),
        "btrfs",
        options.lifecycle_trials,
    ))?);
    sections.push(("undo (ms; Completed signal vs Incus calls done)", undo_rows));

    // Upgrading several containers in one command, as the user.
    let upgrade_rows = upgrade::upgrade(
        &rt,
        &bin.join("kapsule"),
        &bus.address,
        &user,
        &incus,
        &image,
        options.lifecycle_trials,
    )?;
    sections.push(("upgrade (ms; whole commands, up-to-date containers)", upgrade_rows));

    // An unprivileged container next to a privileged one, as the user makes and enters them.
    sections.push(unprivileged::section(&bin, &bus.address, &user, &image, &options)?);
    let busy_memory = daemon::memory(main_daemon.0.id())?;

    print_sections(&sections);
    println!("daemon memory                                        RSS KiB   PSS KiB");
    println!(
        "  idle, after its first call {:>33} {:>9}",
        idle_memory.rss_kib, idle_memory.pss_kib
    );
    println!(
        "  after the whole workload {:>35} {:>9}",
        busy_memory.rss_kib, busy_memory.pss_kib
    );
    let memory = serde_json::json!({
        "idle": {"rss": idle_memory.rss_kib, "pss": idle_memory.pss_kib},
        "after_workload": {"rss": busy_memory.rss_kib, "pss": busy_memory.pss_kib},
    });
    write_json(&options, &sections, memory)
}

/// `kapsule ARGS` run by `user` (from their home, on the daemon at `bus`), as their shell runs
/// it: nothing on stdin, stdout discarded, stderr kept for a failure's message.
fn as_user(user: &kapsule_integration_tests::TestUser, kapsule: &Path, bus: &str, args: &[&str]) -> Command {
    let mut c = user.command(kapsule);
    c.args(args)
        .env("KAPSULE_BUS_ADDRESS", bus)
        .current_dir(&user.home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// The table: each section's rows, min / median / max and the ratio of medians.
fn print_sections(sections: &[(&str, Vec<Row>)]) {
    for (section, rows) in sections {
        println!("{:<52} {:>9} {:>9} {:>9}  ratio", section, "min ms", "median", "max");
        for row in rows {
            println!(
                "  {:<50} {:>9.1} {:>9.1} {:>9.1}  {}",
                row.name,
                row.min,
                row.median,
                row.max,
                row.ratio
                    .as_ref()
                    .map(|(what, r)| if *r < 0.1 {
                        format!("{r:.4}x of {what}")
                    } else {
                        format!("{r:.2}x of {what}")
                    })
                    .unwrap_or_default()
            );
        }
    }
}

/// The same as JSON, with the machine and the daemon's memory (`memory_kib`), at `--json`.
fn write_json(options: &Options, sections: &[(&str, Vec<Row>)], memory: serde_json::Value) -> Result<()> {
    let row_json = |r: &Row| {
        serde_json::json!({
            "name": r.name, "min_ms": r.min, "median_ms": r.median, "max_ms": r.max,
            "ratio": r.ratio.as_ref().map(|(what, ratio)| serde_json::json!({"against": what, "median_ratio": ratio})),
        })
    };
    let json = serde_json::json!({
        "trials": options.trials,
        "lifecycle_trials": options.lifecycle_trials,
        "machine": machine(),
        "sections": sections.iter().map(|(name, rows)| serde_json::json!({
            "name": name, "rows": rows.iter().map(row_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "memory_kib": memory,
    });
    if let Some(dir) = options.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&options.json, serde_json::to_string_pretty(&json)?)?;
    eprintln!("wrote {}", options.json.display());
    Ok(())
}

struct Row {
    name: String,
    min: f64,
    median: f64,
    max: f64,
    ratio: Option<(String, f64)>,
}

impl Row {
    fn new(name: &str, samples: &[Duration], against: Option<(&str, &[Duration])>) -> Row {
        let (min, median, max) = stats(samples);
        Row {
            name: name.to_owned(),
            min,
            median,
            max,
            ratio: against.map(|(what, floor)| (what.to_owned(), median / stats(floor).1)),
        }
    }
}

fn stats(samples: &[Duration]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    (ms[0], ms[ms.len() / 2], ms[ms.len() - 1])
}

fn time_once(command: &mut Command) -> Result<Duration> {
    let start = Instant::now();
    let out = command.output()?;
    let took = start.elapsed();
    ensure!(
        out.status.success(),
        "{:?} failed: {}",
        command,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

/// One warm-up run, then `trials` timed runs.
fn measure(trials: usize, make: impl Fn() -> Command) -> Result<Vec<Duration>> {
    time_once(&mut make())?;
    (0..trials).map(|_| time_once(&mut make())).collect()
}

/// One warm-up, then `trials` timed runs of `first` followed by `second`.
fn measure_pair(trials: usize, first: impl Fn() -> Command, second: impl Fn() -> Command) -> Result<Vec<Duration>> {
    time_once(&mut first())?;
    time_once(&mut second())?;
    (0..trials)
        .map(|_| Ok(time_once(&mut first())? + time_once(&mut second())?))
        .collect()
}

/// Times mounting 5 sockets from the host into container `name`: a `kapsule-mounts` run after
/// every mount was removed, 5 `incus exec` (each `mount --bind` from `/.kapsule/host`, as the
/// original did per socket) after the same, and a `kapsule-mounts` run with every mount current.
fn socket_mounts(trials: usize, name: &str, bin: &Path) -> Result<(Vec<Duration>, Vec<Duration>, Vec<Duration>)> {
    let pid: i32 = init_pid(name)?.parse()?;
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).context("init pid")?,
        rustix::process::PidfdFlags::empty(),
    )?;
    let sources = tempfile::tempdir()?;
    let mut listeners = Vec::new();
    let mut mounts = Vec::new();
    for i in 0..5 {
        let source = sources.path().join(format!("s{i}"));
        listeners.push(std::os::unix::net::UnixListener::bind(&source)?);
        mounts.push(serde_json::json!({
            "source": source.to_str().context("UTF-8 temp dir")?,
            "target": format!("/run/kapsule-bench/s{i}"), "uid": 0, "gid": 0,
        }));
    }
    let request = serde_json::json!({
        "dirs": [{"path": "/run/kapsule-bench", "uid": 0, "gid": 0, "mode": 0o755}],
        "mounts": mounts,
    })
    .to_string();
    let helper = || -> Result<Command> {
        let mut c = Command::new(bin.join("kapsule-mounts"));
        c.arg(&request)
            .stdin(Stdio::from(pidfd.try_clone()?))
            .stdout(Stdio::null());
        Ok(c)
    };
    // Leaves no socket mounted (stacked ones too), or fails: a "cold" run must be cold.
    let unmount_all = || -> Result<()> {
        let status = Command::new("nsenter")
            // With the pid namespace too: umount reads /proc/self, which only a process of the
            // container's pid namespace has in the container's /proc.
            .args(["-t", &pid.to_string(), "-m", "-p", "--", "sh", "-c"])
            .arg(
                "for t in /run/kapsule-bench/s*; do \
                   while mountpoint -q \"$t\"; do umount -l \"$t\" || exit 1; done; rm -f \"$t\"; \
                 done; \
                 ! grep -q ' /run/kapsule-bench/' /proc/self/mountinfo",
            )
            .status()?;
        ensure!(
            status.success(),
            "the bench's socket mounts in {name} cannot be removed"
        );
        Ok(())
    };
    let exec_one = |i: usize| {
        let script = format!(
            "t=/run/kapsule-bench/s{i}; mountpoint -q $t || {{ rm -f $t; touch $t; mount --bind /.kapsule/host{}/s{i} $t; }}",
            sources.path().display()
        );
        let mut c = Command::new("incus");
        c.args(["exec", name, "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        c
    };
    let (mut cold, mut per_exec, mut current) = (Vec::new(), Vec::new(), Vec::new());
    for trial in 0..=trials {
        unmount_all()?;
        let helper_took = time_once(&mut helper()?)?;
        let current_took = time_once(&mut helper()?)?;
        unmount_all()?;
        let mut execs_took = Duration::ZERO;
        for i in 0..5 {
            execs_took += time_once(&mut exec_one(i))?;
        }
        // The first round warms caches up and is not counted.
        if trial > 0 {
            cold.push(helper_took);
            current.push(current_took);
            per_exec.push(execs_took);
        }
    }
    unmount_all()?;
    drop(listeners);
    Ok((cold, per_exec, current))
}

fn init_pid(name: &str) -> Result<String> {
    let out = Command::new("incus")
        .args(["query", &format!("/1.0/instances/{name}/state")])
        .output()?;
    let state: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(state["pid"].as_i64().context("no init pid")?.to_string())
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    serde_json::json!({"cpu": cpu, "cores": cores, "kernel": kernel.trim()})
}

/// The daemon as a process of its own on the bus, stopped when dropped.
struct Daemon(std::process::Child);

impl Daemon {
    fn start(bin: &Path, address: &str, log: Option<&Path>, args: &[&str]) -> Result<Daemon> {
        let stderr = match log {
            Some(path) => {
                Stdio::from(std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?)
            }
            None => Stdio::null(),
        };
        // The test containers' own network namespace: the image's dockerd must not touch the
        // machine's network.
        let child = Command::new(bin.join("kapsule-daemon"))
            .args(["--address", address])
            .arg("--network-namespace")
            .arg(kapsule_integration_tests::test_network_namespace())
            .args(args)
            .stderr(stderr)
            .spawn()?;
        let daemon = Daemon(child);
        for _ in 0..200 {
            if kapsule_integration_tests::bus_name_has_owner(address, "org.kde.kapsule") {
                return Ok(daemon);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("the daemon did not take its name")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
