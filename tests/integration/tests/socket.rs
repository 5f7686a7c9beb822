//! The daemon's own socket (what `kapsule-daemon.socket` gives it on KDE Linux): peer-to-peer
//! D-Bus with the same manager, the same authorization (polkit asked about the connecting
//! process) and the same signals as on the bus; and the idle exit, which waits for its clients.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kapsule_integration_tests::{
    InstanceGuard, PrivateBus, TestUser, bus_name_has_owner, env, other_user, test_network_namespace, test_user,
    unique_name, workspace_binary,
};

/// The daemon process on `bus` and on a socket at `socket`, with `extra` arguments.
fn daemon(bus: &PrivateBus, socket: &Path, extra: &[&str]) -> Child {
    Command::new(workspace_binary("kapsule-daemon"))
        .args(["--address", &bus.address])
        .arg("--socket")
        .arg(socket)
        .arg("--network-namespace")
        .arg(test_network_namespace())
        .args(extra)
        .spawn()
        .unwrap()
}

/// A peer-to-peer connection to the daemon's socket, as the CLI makes it.
async fn connect(socket: &Path) -> zbus::Connection {
    let stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    zbus::connection::Builder::unix_stream(stream)
        .p2p()
        .build()
        .await
        .unwrap()
}

/// Waits until the socket is there (the daemon binds it before it owns its bus name).
async fn wait_for(socket: &Path, daemon: &mut Child) {
    for _ in 0..200 {
        if socket.exists() && bus_ready(socket).await {
            return;
        }
        assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited at start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the daemon did not answer on {} within 10 s", socket.display());
}

async fn bus_ready(socket: &Path) -> bool {
    let Ok(stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let Ok(connection) = zbus::connection::Builder::unix_stream(stream).p2p().build().await else {
        return false;
    };
    let Ok(manager) = kapsule_dbus::ManagerProxy::new(&connection).await else {
        return false;
    };
    manager.version().await.is_ok()
}

/// `kapsule ARGS` as `user`, reaching the daemon through `socket` only (no bus address).
fn kapsule(user: &TestUser, socket: &Path, args: &[&str]) -> Output {
    user.command(workspace_binary("kapsule"))
        .args(args)
        .env_remove("KAPSULE_BUS_ADDRESS")
        .env("KAPSULE_SOCKET", socket)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

struct Stop(Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory every test user can reach, for the socket (a tempdir under /tmp is 0700).
fn socket_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_serves_the_manager_with_the_same_authorization_as_the_bus() {
    let env = env().await;
    let bus = PrivateBus::start();
    let dir = socket_dir();
    let socket: PathBuf = dir.path().join("kapsule.sock");
    let mut process = daemon(&bus, &socket, &[]);
    wait_for(&socket, &mut process).await;
    let _daemon = Stop(process);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666, "every user may connect; polkit decides what they may do");

    // Root, through the socket: the manager, its objects and its signals.
    let root = connect(&socket).await;
    let manager = kapsule_dbus::ManagerProxy::new(&root).await.unwrap();
    assert_eq!(manager.version().await.unwrap(), env!("CARGO_PKG_VERSION"));
    let config = manager.get_config().await.unwrap();
    assert!(
        !config.contains_key("error"),
        "root is identified by the kernel: {config:?}"
    );
    let mut changes = manager.receive_containers_changed().await.unwrap();

    // A user polkit lets enter their own containers only: refused, and nothing is made.
    let name = unique_name("sock");
    let _guard = InstanceGuard(name.clone());
    let image = format!("local:{}", env.image);
    let other = other_user();
    let refused = kapsule(&other, &socket, &["create", &name, "--image", &image]);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        text(&refused.stderr).contains("You are not allowed to manage Kapsule containers"),
        "{}",
        text(&refused.stderr)
    );
    assert!(
        env.incus.get_instance(&name).await.is_err(),
        "a refused create made '{name}'"
    );

    // The test administrator: created, with the operation's messages, and entered as themself
    // (the session's descriptors pass over the socket).
    let tester = test_user();
    let created = kapsule(&tester, &socket, &["create", &name, "--image", &image]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    assert!(
        text(&created.stderr).contains(&format!("Container '{name}' created")),
        "{}",
        text(&created.stderr)
    );
    tokio::time::timeout(Duration::from_secs(10), changes.next())
        .await
        .expect("ContainersChanged reached the socket client")
        .unwrap();
    let entered = kapsule(&tester, &socket, &["enter", &name, "--", "sh", "-c", "id -un; id -u"]);
    assert!(entered.status.success(), "{}", text(&entered.stderr));
    assert_eq!(text(&entered.stdout), format!("{}\n{}\n", tester.name, tester.uid));

    // Another user's container is not theirs to enter: that is managing it.
    let denied = kapsule(&other, &socket, &["enter", &name, "--", "true"]);
    assert!(!denied.status.success());
    assert!(
        text(&denied.stderr).contains("You are not allowed to manage Kapsule containers"),
        "{}",
        text(&denied.stderr)
    );

    let removed = kapsule(&tester, &socket, &["rm", "--force", &name]);
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    assert!(env.incus.get_instance(&name).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_exits_when_idle_but_not_while_a_client_is_connected() {
    let bus = PrivateBus::start();
    let dir = socket_dir();
    let socket = dir.path().join("kapsule.sock");
    let notify_path = dir.path().join("notify");
    let notifications = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notifications.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut process = Command::new(workspace_binary("kapsule-daemon"))
        .args(["--address", &bus.address, "--idle-exit", "2"])
        .arg("--socket")
        .arg(&socket)
        .env("NOTIFY_SOCKET", &notify_path)
        .spawn()
        .unwrap();
    wait_for(&socket, &mut process).await;
    let mut buffer = [0u8; 4096];
    let n = notifications.recv(&mut buffer).unwrap();
    assert!(text(&buffer[..n]).contains("READY=1"));

    // A client that stays connected keeps it, well past the idle period.
    let client = connect(&socket).await;
    kapsule_dbus::ManagerProxy::new(&client)
        .await
        .unwrap()
        .version()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        process.try_wait().unwrap().is_none(),
        "the daemon exited while a client was connected"
    );
    assert!(bus_name_has_owner(&bus.address, "org.kde.kapsule"));

    // Once it hangs up, the daemon says it is stopping, gives up its name and exits.
    drop(client);
    let hung_up = Instant::now();
    let n = notifications.recv(&mut buffer).expect("no STOPPING=1 within 20 s");
    assert_eq!(text(&buffer[..n]).trim(), "STOPPING=1");
    let status = loop {
        if let Some(status) = process.try_wait().unwrap() {
            break status;
        }
        assert!(
            hung_up.elapsed() < Duration::from_secs(20),
            "still running 20 s after going idle"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "an idle exit is a clean exit: {status}");
    assert!(
        hung_up.elapsed() >= Duration::from_secs(2),
        "exited {:?} after the last client left, before the idle period",
        hung_up.elapsed()
    );
    assert!(
        !bus_name_has_owner(&bus.address, "org.kde.kapsule"),
        "the name was released"
    );
}
