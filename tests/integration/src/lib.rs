//! Harness for the real-Incus tier: the environment `tests/env/up.sh` made, unique instance
//! names, and cleanup that runs even when a test fails.
//!
//! A missing prerequisite (not root, no incusd, no test image) panics with what to do about it:
//! these tests never skip silently.

pub mod apt;
pub mod desktop;
pub mod simplestreams;

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use kapsule_incus::Client;
use kapsule_incus::models::{ConfigMap, Devices, InstanceSource, InstancesPost};

/// The test environment: a client for the running incusd and the test image's alias.
#[derive(Debug)]
pub struct TestEnv {
    pub incus: Client,
    pub image: String,
}

/// Connects to the test environment, or panics saying what is missing.
pub async fn env() -> TestEnv {
    assert!(
        running_as_root(),
        "the real-Incus tests need root; run them through tests/run-all.sh (see docs/TESTING.md)"
    );
    // The in-process daemon's log goes to the test's stderr, which nextest shows when a test
    // fails or hangs: the first thing to read when one does.
    let _ = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .parse_env("KAPSULE_TEST_LOG")
        .try_init();
    let incus = Client::from_env();
    if let Err(e) = incus.server().await {
        panic!("incusd is not reachable ({e}); start the test environment with tests/env/up.sh");
    }
    let image = std::env::var("KAPSULE_TEST_IMAGE").unwrap_or_else(|_| "kapsule-test".into());
    if let Err(e) = incus.get_image_alias(&image).await {
        panic!("the test image '{image}' is not imported ({e}); run tests/env/up.sh");
    }
    TestEnv { incus, image }
}

fn running_as_root() -> bool {
    // Reading our own uid needs no unsafe: /proc/self/status has it.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A name no other test (or earlier run) uses: `kt-<what>-<pid>-<n>`.
pub fn unique_name(what: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "kt-{what}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The btrfs storage pool of the test environment (`tests/env/up.sh` makes it beside the `dir`
/// pool `default`), or a panic saying how to make it.
pub async fn btrfs_pool(env: &TestEnv) -> String {
    let pool = std::env::var("KAPSULE_TEST_BTRFS_POOL").unwrap_or_else(|_| "kapsule-btrfs".into());
    match env.incus.get_storage_pool(&pool).await {
        Ok(found) => assert_eq!(found.driver, "btrfs", "the pool '{pool}' is not btrfs"),
        Err(e) => panic!("the btrfs pool '{pool}' does not exist ({e}); run tests/env/up.sh"),
    }
    pool
}

/// Deletes the instance when dropped, whether the test passed or panicked.
#[derive(Debug)]
pub struct InstanceGuard(pub String);

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        // A create still under way in Incus (its daemon killed, say) would make the instance
        // after the delete below: wait for Incus to finish what it does with it first.
        let resource = format!("/1.0/instances/{}", self.0);
        for _ in 0..600 {
            if !incus_is_busy_with(&resource) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // Drop cannot await; the CLI does the same job synchronously. Errors are ignored: the
        // instance may already be gone, which is what the test wanted.
        let _ = Command::new("incus").args(["delete", "--force", &self.0]).output();
    }
}

/// True while a running or pending Incus operation names `resource` (e.g. `/1.0/instances/x`).
pub fn incus_is_busy_with(resource: &str) -> bool {
    let Ok(out) = Command::new("incus")
        .args(["query", "/1.0/operations?recursion=1"])
        .output()
    else {
        return false;
    };
    let Ok(ops) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return false;
    };
    ["running", "pending"]
        .iter()
        .filter_map(|state| ops.get(*state).and_then(|v| v.as_array()))
        .flatten()
        .filter_map(|op| op.get("resources").and_then(|r| r.get("instances")))
        .filter_map(|list| list.as_array())
        .flatten()
        .any(|r| {
            r.as_str()
                .is_some_and(|r| r == resource || r.starts_with(&format!("{resource}?")))
        })
}

/// Removes a file or directory (with what is in it) when dropped, whether the test passed or
/// panicked: what a test placed on the machine goes again.
#[derive(Debug)]
pub struct RemoveOnDrop(pub std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = if self.0.is_dir() {
            std::fs::remove_dir_all(&self.0)
        } else {
            std::fs::remove_file(&self.0)
        };
    }
}

/// Deletes the image alias and the image when dropped.
#[derive(Debug)]
pub struct ImageGuard(pub String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = Command::new("incus").args(["image", "delete", &self.0]).output();
    }
}

/// What Kapsule creates: a privileged, nesting-enabled container with no profile and its own
/// root disk, from the test image.
pub fn container_request(env: &TestEnv, name: &str, start: bool) -> InstancesPost {
    let config: ConfigMap = [
        ("security.privileged".to_owned(), "true".to_owned()),
        ("security.nesting".to_owned(), "true".to_owned()),
    ]
    .into();
    let mut devices = Devices::new();
    devices.insert(
        "root".into(),
        [("type", "disk"), ("path", "/"), ("pool", "default")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    );
    InstancesPost {
        name: name.to_owned(),
        source: InstanceSource::local_alias(env.image.clone()),
        config,
        devices,
        profiles: Vec::new(),
        kind: "container".into(),
        start,
        description: String::new(),
    }
}

/// Creates the stopped instance `name` directly through Incus (as [`container_request`] says, no
/// Kapsule metadata: a plain Incus instance until a test adds some) and waits until it exists.
pub async fn create_stopped_instance(env: &TestEnv, name: &str) {
    let op = env
        .incus
        .create_instance(&container_request(env, name, false))
        .await
        .unwrap();
    env.incus
        .wait_operation(&op.id, Some(std::time::Duration::from_secs(120)))
        .await
        .unwrap();
}

/// A private message bus for one test, with a polkitd of its own (every test gets its own, so
/// tests running at once never compete for `org.kde.kapsule`, and polkit answers about the
/// callers of this bus). It is configured as the system bus is (`tests/env/dbus/system.conf.in`:
/// the system bus's default-deny policy, the distribution's service policies) with Kapsule's
/// shipped policy, `dbus/org.kde.kapsule.conf`, so every test calls under the real rules of who
/// may own and call. Both processes are killed when dropped.
#[derive(Debug)]
pub struct PrivateBus {
    pub address: String,
    child: std::process::Child,
    polkitd: Option<std::process::Child>,
    _dir: tempfile::TempDir,
}

/// Where Debian installs polkitd.
const POLKITD: &str = "/usr/lib/polkit-1/polkitd";

/// True when `name` has an owner on the bus at `address`.
pub fn bus_name_has_owner(address: &str, name: &str) -> bool {
    Command::new("busctl")
        .arg(format!("--address={address}"))
        .args([
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            "s",
            name,
        ])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "b true")
}

impl PrivateBus {
    /// A bus with Kapsule's policy installed.
    pub fn start() -> PrivateBus {
        PrivateBus::start_with(true)
    }

    /// A bus configured as the system bus, with or without Kapsule's policy file.
    pub fn start_with(kapsule_policy: bool) -> PrivateBus {
        let dir = tempfile::tempdir().unwrap();
        // Other users (the test users) must reach the socket inside, as on a system bus.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        std::fs::create_dir_all(dir.path().join("system.d")).unwrap();
        std::fs::create_dir_all(dir.path().join("services")).unwrap();
        if kapsule_policy {
            std::fs::copy(
                root.join("dbus/org.kde.kapsule.conf"),
                dir.path().join("system.d/org.kde.kapsule.conf"),
            )
            .unwrap();
        }
        let template = std::fs::read_to_string(root.join("tests/env/dbus/system.conf.in")).unwrap();
        let config = dir.path().join("system.conf");
        std::fs::write(&config, template.replace("@DIR@", &dir.path().to_string_lossy())).unwrap();
        let socket = dir.path().join("system_bus_socket");
        let child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .spawn()
            .expect("dbus-daemon is installed (tests/env/up.sh installs it)");
        for _ in 0..200 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(socket.exists(), "dbus-daemon did not create its socket");
        let mut bus = PrivateBus {
            address: format!("unix:path={}", socket.display()),
            child,
            polkitd: None,
            _dir: dir,
        };
        // polkitd reads the actions and rules tests/env/up.sh installed, and drops to its own user.
        let polkitd = Command::new(POLKITD)
            .arg("--no-debug")
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {POLKITD} ({e}); run tests/env/up.sh"));
        bus.polkitd = Some(polkitd);
        for _ in 0..300 {
            if bus_name_has_owner(&bus.address, "org.freedesktop.PolicyKit1") {
                return bus;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("polkitd did not take its name on the test's bus within 6 s");
    }

    /// A client connection to this bus.
    pub async fn connect(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .build()
            .await
            .unwrap()
    }

    /// Runs the daemon (in this process) on this bus; it serves while the connection lives.
    pub async fn daemon(&self) -> zbus::Connection {
        self.daemon_with(test_settings()).await
    }

    /// [`PrivateBus::daemon`] with other settings.
    pub async fn daemon_with(&self, settings: kapsule_daemon::Settings) -> zbus::Connection {
        kapsule_daemon::serve(kapsule_daemon::Bus::Address(self.address.clone()), settings)
            .await
            .unwrap()
    }
}

/// The daemon's settings in tests: the workspace's helpers, the tests' network namespace.
pub fn test_settings() -> kapsule_daemon::Settings {
    kapsule_daemon::Settings {
        nsenter: Some(workspace_binary("kapsule-nsenter")),
        mounts: Some(workspace_binary("kapsule-mounts")),
        // Other tests' daemons share this Incus: none pushes host configuration into another's
        // containers (tests/integration/tests/host_sync.rs turns it on, running alone).
        host_sync: kapsule_daemon::HostSync::Off,
        nvidia_hook: Some(workspace_binary("kapsule-nvidia-hook")),
        host_exec: Some(static_program("kapsule-host-exec")),
        network_namespace: Some(test_network_namespace()),
        // The machine's own /etc/kapsule is not the tests' business.
        config_files: Some(Vec::new()),
        incus_cache: None,
        storage_pool: None,
        subid_dir: None,
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        if let Some(polkitd) = &mut self.polkitd {
            let _ = polkitd.kill();
            let _ = polkitd.wait();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon as a process of its own on `bus` (as in production), once it answers: the
/// process, a client connection and a manager proxy on it.
pub async fn daemon_process(
    bus: &PrivateBus,
) -> (
    std::process::Child,
    zbus::Connection,
    kapsule_dbus::ManagerProxy<'static>,
) {
    daemon_process_with(bus, &[]).await
}

/// [`daemon_process`] with more arguments for the daemon.
pub async fn daemon_process_with(
    bus: &PrivateBus,
    args: &[&str],
) -> (
    std::process::Child,
    zbus::Connection,
    kapsule_dbus::ManagerProxy<'static>,
) {
    let mut daemon = Command::new(workspace_binary("kapsule-daemon"))
        .args(["--address", &bus.address])
        .arg("--network-namespace")
        .arg(test_network_namespace())
        .args(args)
        .spawn()
        .unwrap();
    let client = bus.connect().await;
    let manager = kapsule_dbus::ManagerProxy::new(&client).await.unwrap();
    for _ in 0..200 {
        if manager.version().await.is_ok() {
            return (daemon, client, manager);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    panic!("the daemon process did not answer on its bus within 10 s");
}

/// Every signal an operation emitted, in order, as readable strings like `Completed(true, "")`.
pub async fn collect_operation_signals(stream: &mut zbus::MessageStream, path: &str) -> Vec<String> {
    use futures_util::StreamExt;
    let mut seen = Vec::new();
    // Under nextest's five minutes, so a hang ends in this message (what was seen) rather than
    // in nextest's kill.
    let deadline = std::time::Duration::from_secs(200);
    let result = tokio::time::timeout(deadline, async {
        while let Some(Ok(msg)) = stream.next().await {
            let header = msg.header();
            if header.path().map(|p| p.as_str()) != Some(path) {
                continue;
            }
            let Some(member) = header.member().map(|m| m.to_string()) else {
                continue;
            };
            let text = match member.as_str() {
                "Message" => {
                    let (kind, text, _indent): (i32, String, i32) = msg.body().deserialize().unwrap();
                    format!("Message({kind}, {text:?})")
                }
                "ProgressStarted" => {
                    let (_id, description, total, _indent): (String, String, i32, i32) =
                        msg.body().deserialize().unwrap();
                    format!("ProgressStarted({description:?}, {total})")
                }
                "ProgressUpdate" => {
                    let (_id, current, _rate): (String, i32, f64) = msg.body().deserialize().unwrap();
                    format!("ProgressUpdate({current})")
                }
                "ProgressTextUpdate" => {
                    let (_id, text): (String, String) = msg.body().deserialize().unwrap();
                    format!("ProgressTextUpdate({text:?})")
                }
                "ProgressCompleted" => {
                    let (_id, ok, text): (String, bool, String) = msg.body().deserialize().unwrap();
                    format!("ProgressCompleted({ok}, {text:?})")
                }
                "PropertiesChanged" => {
                    let (_interface, changed, _invalidated): (
                        String,
                        std::collections::HashMap<String, zbus::OwnedVariant>,
                        Vec<String>,
                    ) = msg.body().deserialize().unwrap();
                    let mut changed: Vec<String> = changed
                        .iter()
                        .map(|(name, value)| {
                            format!("{name}={:?}", String::try_from(value.clone()).unwrap_or_default())
                        })
                        .collect();
                    changed.sort();
                    format!("PropertiesChanged({})", changed.join(", "))
                }
                "Completed" => {
                    let (ok, text): (bool, String) = msg.body().deserialize().unwrap();
                    seen.push(format!("Completed({ok}, {text:?})"));
                    break;
                }
                other => other.to_owned(),
            };
            seen.push(text);
        }
    })
    .await;
    assert!(result.is_ok(), "no Completed within {deadline:?}; seen: {seen:?}");
    seen
}

/// A stream of every signal the Kapsule service sends, subscribed before any call is made.
pub async fn kapsule_signals(connection: &zbus::Connection) -> zbus::MessageStream {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .path_namespace("/org/kde/kapsule")
        .build()
        .unwrap();
    zbus::MessageStream::for_match_rule(rule, connection, std::num::NonZeroUsize::new(1000))
        .await
        .unwrap()
}

/// The `kapsule` binary of this workspace, built on first use (the tests drive it as a user would).
pub fn kapsule_binary() -> std::path::PathBuf {
    workspace_binary("kapsule")
}

/// A binary of this workspace (package and binary share the name), built on first use.
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap();
    if !built.iter().any(|b| b == name) {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--package", name, "--bin", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building {name} failed");
        built.push(name.to_owned());
    }
    // Tests run from target/<profile>/deps/; binaries sit one level up.
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(|deps| deps.parent()).unwrap().join(name);
    assert!(path.exists(), "{} not found", path.display());
    path
}

/// A program Kapsule places inside containers, linked statically as the sysext ships it
/// (`cargo xtask static`, which tests/run-all.sh runs before the tests; a no-op then).
pub fn static_program(name: &str) -> std::path::PathBuf {
    static BUILT: std::sync::Mutex<Option<Vec<std::path::PathBuf>>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap();
    let paths = built.get_or_insert_with(|| {
        let out = Command::new(env!("CARGO"))
            .args(["xtask", "static"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("cargo runs");
        assert!(out.status.success(), "cargo xtask static failed");
        String::from_utf8(out.stdout).unwrap().lines().map(Into::into).collect()
    });
    let path = paths
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == name))
        .unwrap_or_else(|| panic!("cargo xtask static does not build {name}"))
        .clone();
    assert!(path.exists(), "{} not found", path.display());
    path
}

/// What every daemon test starts with: the environment, a private bus with the daemon on it,
/// and a client connection with a manager proxy. Fields drop in order, the bus last.
#[derive(Debug)]
pub struct DaemonTest {
    pub env: TestEnv,
    pub manager: kapsule_dbus::ManagerProxy<'static>,
    pub client: zbus::Connection,
    _daemon: zbus::Connection,
    pub bus: PrivateBus,
}

/// Sets up a [`DaemonTest`].
pub async fn daemon_test() -> DaemonTest {
    daemon_test_with(test_settings()).await
}

/// [`daemon_test`] with the daemon's settings given.
pub async fn daemon_test_with(settings: kapsule_daemon::Settings) -> DaemonTest {
    let env = env().await;
    let bus = PrivateBus::start();
    let daemon = bus.daemon_with(settings).await;
    let client = bus.connect().await;
    let manager = kapsule_dbus::ManagerProxy::new(&client).await.unwrap();
    DaemonTest {
        env,
        manager,
        client,
        _daemon: daemon,
        bus,
    }
}

/// Writes a tiny split image (metadata tarball, rootfs tarball with one unique file) into `dir`
/// and returns the two paths. Every call makes an image with another fingerprint.
pub fn tiny_image_files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/kt-marker"), unique_name("img")).unwrap();
    pack_image(dir, "kt tiny")
}

/// A root filesystem in `dir/rootfs` that boots: the host's static BusyBox (tests/env/up.sh
/// installs it) for every command, and an init that waits until Incus stops it. Add files,
/// then [`pack_image`] it.
pub fn busybox_rootfs(dir: &std::path::Path) -> std::path::PathBuf {
    let root = dir.join("rootfs");
    for sub in [
        "bin", "sbin", "etc", "usr/bin", "tmp", "proc", "sys", "dev", "run", "root", "var/log",
    ] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("busybox is not installed on the host; run tests/env/up.sh");
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "sleep", "cat", "echo", "printf", "id", "ls", "rm", "mkdir", "touch", "stat",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    write_executable(
        &root.join("sbin/init"),
        "#!/bin/sh\n# Stopped by Incus with SIGPWR (clean stop) or SIGTERM.\ntrap 'exit 0' PWR TERM\nwhile :; do sleep 3600 & wait; done\n",
    );
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    root
}

/// The stdout of a command's `out`, after checking that it succeeded (saying `what` failed, with
/// both outputs, when it did not).
pub fn succeeded(what: &str, out: &std::process::Output) -> String {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Writes an executable file (mode 0755).
pub fn write_executable(path: &std::path::Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Packs `dir/rootfs` as a split image (`metadata.tar.gz`, `rootfs.tar.gz` in `dir`) and
/// returns the two paths.
pub fn pack_image(dir: &std::path::Path, description: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = dir.join("rootfs");
    std::fs::write(
        dir.join("metadata.yaml"),
        format!("architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: {description}\n"),
    )
    .unwrap();
    let tar = |args: &[&str]| assert!(Command::new("tar").args(args).status().unwrap().success());
    let meta = dir.join("metadata.tar.gz");
    let rootfs = dir.join("rootfs.tar.gz");
    tar(&[
        "-C",
        dir.to_str().unwrap(),
        "-czf",
        meta.to_str().unwrap(),
        "metadata.yaml",
    ]);
    tar(&["-C", root.to_str().unwrap(), "-czf", rootfs.to_str().unwrap(), "."]);
    (meta, rootfs)
}

/// Imports a split image under `alias` (none when empty) and returns its fingerprint.
pub async fn import_image_files(
    incus: &Client,
    meta: &std::path::Path,
    rootfs: &std::path::Path,
    alias: &str,
) -> String {
    let meta = kapsule_incus::UploadFile::open(meta).await.unwrap();
    let rootfs = kapsule_incus::UploadFile::open(rootfs).await.unwrap();
    let upload = incus.import_image(meta, rootfs, None).await.unwrap();
    let done = incus
        .wait_operation(&upload.operation.id, Some(std::time::Duration::from_secs(120)))
        .await
        .unwrap();
    let fingerprint = done.metadata_str("fingerprint").unwrap().to_owned();
    if !alias.is_empty() {
        incus.create_image_alias(alias, &fingerprint, "kt").await.unwrap();
    }
    fingerprint
}

/// Imports a tiny image under `alias` (none when empty) and returns its fingerprint.
pub async fn import_tiny_image(incus: &Client, alias: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (meta, rootfs) = tiny_image_files(dir.path());
    import_image_files(incus, &meta, &rootfs, alias).await
}

/// The network namespace `tests/env/up.sh` made for test containers to share in place of the
/// host's (so dockerd and podman inside never change the machine's network), or a panic.
pub fn test_network_namespace() -> std::path::PathBuf {
    let path = std::path::PathBuf::from(
        std::env::var("KAPSULE_TEST_NETNS").unwrap_or_else(|_| "/run/netns/kapsule-test".into()),
    );
    assert!(
        path.exists(),
        "the test network namespace {} does not exist; run tests/env/up.sh",
        path.display()
    );
    path
}

/// The plain user `tests/env/up.sh` made (not root, in no Incus group), from the user database.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: std::path::PathBuf,
}

/// The test user, or a panic saying how to make them. The test polkit rule lets them enter and
/// manage containers and images, as an administrator at the computer.
pub fn test_user() -> TestUser {
    user_from_env("KAPSULE_TEST_USER", "kapsule-tester")
}

/// The second test user: the test polkit rule lets them enter their own containers, nothing more.
pub fn other_user() -> TestUser {
    user_from_env("KAPSULE_TEST_OTHER_USER", "kapsule-other")
}

fn user_from_env(variable: &str, default: &str) -> TestUser {
    let name = std::env::var(variable).unwrap_or_else(|_| default.into());
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && f[0] == name)
        .unwrap_or_else(|| panic!("the test user '{name}' does not exist; run tests/env/up.sh"));
    TestUser {
        name: name.clone(),
        uid: entry[2].parse().unwrap(),
        gid: entry[3].parse().unwrap(),
        home: entry[5].into(),
    }
}

impl TestUser {
    /// A command that runs `program` as this user (real and effective ids, their groups, their
    /// HOME), the way they would run it from their own shell.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("setpriv");
        command
            .args([
                &format!("--reuid={}", self.uid),
                &format!("--regid={}", self.gid),
                "--init-groups",
                "--",
            ])
            .arg(program)
            .env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name)
            .current_dir("/");
        command
    }

    /// `kapsule` as this user, talking to the daemon on `bus`.
    pub fn kapsule(&self, bus: &PrivateBus) -> Command {
        let mut command = self.command(kapsule_binary());
        command.env("KAPSULE_BUS_ADDRESS", &bus.address);
        command
    }

    /// `busctl [options] call` of the Manager method `method` on `bus`, as this user, with the
    /// arguments in busctl's notation after `signature`.
    pub fn call_manager(
        &self,
        bus: &PrivateBus,
        options: &[&str],
        method: &str,
        signature: &str,
        args: &[&str],
    ) -> Command {
        let mut command = self.command("busctl");
        command
            .arg(format!("--address={}", bus.address))
            .args(options)
            // Arguments are never options, even one that starts with '-'.
            .arg("--")
            .args(["call", "org.kde.kapsule", "/org/kde/kapsule", "org.kde.kapsule.Manager"])
            .args([method, signature])
            .args(args);
        command
    }

    /// Writes `contents` to `path` (relative to their home) as a file they own, creating
    /// directories on the way, as they would.
    pub fn write_file(&self, path: &str, contents: &str) -> std::path::PathBuf {
        let full = self.home.join(path);
        let status = self
            .command("sh")
            .args([
                "-c",
                "mkdir -p \"$(dirname \"$1\")\" && printf %s \"$2\" > \"$1\"",
                "sh",
            ])
            .arg(&full)
            .arg(contents)
            .status()
            .unwrap();
        assert!(status.success(), "writing {} as {}", full.display(), self.name);
        full
    }
}

impl DaemonTest {
    /// Creates container `name` from the test image through the daemon with `options`, and
    /// checks that the create succeeded.
    pub async fn create(&self, name: &str, options: std::collections::HashMap<String, zbus::OwnedVariant>) {
        self.create_from(name, &format!("local:{}", self.env.image), options)
            .await;
    }

    /// Creates container `name` from `image`, checks that the create succeeded and returns
    /// the operation's signals.
    pub async fn create_from(
        &self,
        name: &str,
        image: &str,
        options: std::collections::HashMap<String, zbus::OwnedVariant>,
    ) -> Vec<String> {
        let seen = self.follow(self.manager.create_container(name, image, options)).await;
        assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "create {name}: {seen:?}");
        seen
    }

    /// Runs an operation-starting call and returns every signal of the operation it started.
    pub async fn follow(
        &self,
        call: impl std::future::Future<Output = zbus::Result<zbus::OwnedObjectPath>>,
    ) -> Vec<String> {
        follow(&self.client, call).await
    }
}

/// Runs an operation-starting call made on `client` and returns every signal of the operation it
/// started (subscribed before the call, so none is missed).
pub async fn follow(
    client: &zbus::Connection,
    call: impl std::future::Future<Output = zbus::Result<zbus::OwnedObjectPath>>,
) -> Vec<String> {
    let mut signals = kapsule_signals(client).await;
    let path = call.await.unwrap();
    collect_operation_signals(&mut signals, path.as_str()).await
}

/// Waits until Incus has ended every operation on instance `name` (a killed daemon's create goes
/// on in Incus without it), at most two minutes.
pub async fn incus_done_with(name: &str) {
    let resource = format!("/1.0/instances/{name}");
    for _ in 0..1200 {
        if !incus_is_busy_with(&resource) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("Incus still works on {name} after 120 s");
}

/// Runs `sh -c script` as root in the container; returns the exit code and stdout (stderr is
/// appended to the panic message of a caller that asserts on the code).
pub async fn sh(incus: &Client, name: &str, script: &str) -> (i32, String) {
    let request = kapsule_incus::ExecRequest::new(["sh", "-c", script]);
    let out = incus
        .exec(name, &request, std::time::Duration::from_secs(120))
        .await
        .unwrap();
    let mut stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.exit_code != 0 {
        stdout.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    (out.exit_code, stdout)
}

/// Options for `CreateContainer`, from `(key, value)` pairs.
pub fn options(pairs: Vec<(&str, zbus::Variant<'_>)>) -> std::collections::HashMap<String, zbus::OwnedVariant> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), zbus::OwnedVariant::try_from(v).unwrap()))
        .collect()
}

/// What Incus holds that a call could change, for the instances and image aliases named `names`:
/// each instance's status, config (without Incus's `volatile.*` keys) and devices, each image with
/// its aliases. A test compares it before and after refused calls. (Other tests run at the same
/// time and make instances of their own, so only the names a test uses are watched.)
pub async fn incus_state(incus: &Client, names: &[&str]) -> String {
    let mut instances: Vec<String> = incus
        .list_instances()
        .await
        .unwrap()
        .into_iter()
        .filter(|i| names.contains(&i.name.as_str()))
        .map(|i| {
            let config: std::collections::BTreeMap<_, _> =
                i.config.iter().filter(|(k, _)| !k.starts_with("volatile.")).collect();
            format!(
                "{} {} {:?} {:?}",
                i.name,
                i.status,
                config,
                i.devices.keys().collect::<Vec<_>>()
            )
        })
        .collect();
    instances.sort();
    let mut images: Vec<String> = incus
        .list_images()
        .await
        .unwrap()
        .into_iter()
        .filter(|i| i.aliases.iter().any(|a| names.contains(&a.name.as_str())))
        .map(|i| format!("{} {:?}", i.fingerprint, i.aliases))
        .collect();
    images.sort();
    format!("{}\n{}", instances.join("\n"), images.join("\n"))
}

/// A tmux server of our own (terminals to resize and type into, session `kt`), killed when
/// dropped.
#[derive(Debug)]
pub struct Tmux {
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Default for Tmux {
    fn default() -> Tmux {
        Tmux::new()
    }
}

impl Tmux {
    pub fn new() -> Tmux {
        let dir = tempfile::tempdir().unwrap();
        Tmux {
            socket: dir.path().join("tmux"),
            _dir: dir,
        }
    }

    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux is installed (tests/env/up.sh installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub async fn wait_for(&self, what: &str) {
        let mut screen = String::new();
        for _ in 0..150 {
            screen = self.run(&["capture-pane", "-p", "-t", "kt"]);
            if screen.contains(what) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("{what:?} never appeared; the screen:\n{screen}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}
