//! The daemon's own socket (what `kapsule-daemon.socket` gives it on KDE Linux): peer-to-peer
//! D-Bus with the same manager, the same authorization (polkit asked about the connecting
//! process) and the same signals as on the bus; the idle exit, which waits for its clients; and
//! what one user's clients cannot do to everyone else's (slots, unread replies, idle
//! connections, messages too large, descriptors before the handshake ends).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kapsule_integration_tests::{
    InstanceGuard, PrivateBus, TestUser, bus_name_has_owner, env, other_user, test_network_namespace, test_user,
    unique_name, workspace_binary,
};

/// The daemon process on `bus` and on a socket at `socket`, with `extra` arguments, and the
/// descriptor limit systemd gives a service that sets none (soft 1024; the unit sets more): what
/// the attacks here once exhausted. (`prlimit` executes the daemon: the child's pid is the
/// daemon's.)
fn daemon(bus: &PrivateBus, socket: &Path, extra: &[&str]) -> Child {
    Command::new("prlimit")
        .args(["--nofile=1024:", "--"])
        .arg(workspace_binary("kapsule-daemon"))
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

/// How `process` ended, once it has; panics if it still runs `within` after `since`, saying
/// what happened then (`when`).
async fn exit_status(process: &mut Child, since: Instant, within: Duration, when: &str) -> std::process::ExitStatus {
    loop {
        if let Some(status) = process.try_wait().unwrap() {
            return status;
        }
        assert!(since.elapsed() < within, "the daemon still runs {within:?} {when}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let (_bus, dir, _daemon) = running_daemon().await;
    let socket: PathBuf = dir.path().join("kapsule.sock");
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
    let status = exit_status(&mut process, hung_up, Duration::from_secs(20), "after going idle").await;
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

/// The daemon's resident memory, in kB.
fn resident_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A daemon on a bus of its own and on `kapsule.sock` in the directory, serving; stopped when
/// dropped.
async fn running_daemon() -> (PrivateBus, tempfile::TempDir, Stop) {
    let bus = PrivateBus::start();
    let dir = socket_dir();
    let socket = dir.path().join("kapsule.sock");
    let mut process = daemon(&bus, &socket, &[]);
    wait_for(&socket, &mut process).await;
    (bus, dir, Stop(process))
}

/// Sends `bytes` on `stream` with `fds` attached, in one `sendmsg`.
fn send_with_descriptors(stream: &std::os::unix::net::UnixStream, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) {
    let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut ancillary = rustix::net::SendAncillaryBuffer::new(&mut space);
    assert!(ancillary.push(rustix::net::SendAncillaryMessage::ScmRights(fds)));
    rustix::net::sendmsg(
        stream,
        &[std::io::IoSlice::new(bytes)],
        &mut ancillary,
        rustix::net::SendFlags::NOSIGNAL,
    )
    .unwrap();
}

/// A connection to `socket` made by `uid` (the kernel records the connecting thread's effective
/// uid), authenticated by hand with `EXTERNAL` as that uid, and then left alone: what an
/// attacker holds. `None` when the daemon turned it away.
fn held_connection(socket: &Path, uid: u32) -> Option<std::os::unix::net::UnixStream> {
    use std::io::{BufRead, Write};
    let socket = socket.to_owned();
    let stream = std::thread::spawn(move || {
        // This thread only: the test's other threads stay root.
        let (root, user) = (rustix::process::Uid::ROOT, rustix::process::Uid::from_raw(uid));
        rustix::thread::set_thread_res_uid(root, user, root).unwrap();
        let stream = std::os::unix::net::UnixStream::connect(&socket);
        rustix::thread::set_thread_res_uid(root, root, root).unwrap();
        stream.unwrap()
    })
    .join()
    .unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let hex: String = uid.to_string().bytes().map(|b| format!("{b:02x}")).collect();
    let mut writer = &stream;
    writer.write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes()).ok()?;
    let mut answer = String::new();
    std::io::BufReader::new(&stream).read_line(&mut answer).ok()?;
    if !answer.starts_with("OK ") {
        return None;
    }
    writer.write_all(b"BEGIN\r\n").ok()?;
    Some(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_lock_others_out_and_a_client_that_never_reads_is_dropped() {
    use std::io::{Read, Write};
    let (bus, dir, daemon) = running_daemon().await;
    let socket = dir.path().join("kapsule.sock");
    let pid = daemon.0.id();

    // kapsule-other holds as many connections as the socket takes from one user: 32 of the 256.
    let other = other_user();
    let held: Vec<_> = (0..40).map_while(|_| held_connection(&socket, other.uid)).collect();
    assert_eq!(held.len(), 32, "one user's connections");
    // The rest of the socket is everyone else's: the test user's `kapsule list` goes through it.
    let tester = test_user();
    let listed = kapsule(&tester, &socket, &["list"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));

    // When the socket turns a user away, the CLI goes through the bus instead.
    let mine: Vec<_> = (0..32).map_while(|_| held_connection(&socket, tester.uid)).collect();
    assert_eq!(mine.len(), 32);
    assert!(
        held_connection(&socket, tester.uid).is_none(),
        "a 33rd connection was taken"
    );
    let through_bus = tester
        .command(workspace_binary("kapsule"))
        .args(["list"])
        .env_remove("KAPSULE_BUS_ADDRESS")
        .env("KAPSULE_SOCKET", &socket)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .output()
        .unwrap();
    assert!(through_bus.status.success(), "{}", text(&through_bus.stderr));
    drop((held, mine));

    // A client that sends calls and never reads the replies: once the daemon's replies are stuck,
    // it reads no more of its calls (before, it took every call, 772,085 in one run, each held
    // with its message and descriptors by a task waiting to reply), waits 10 s for the client to
    // read, then drops it.
    // (The daemon gives a uid's slots back as it sees each connection end: a moment.)
    let mut stream = None;
    for _ in 0..50 {
        stream = held_connection(&socket, other.uid);
        if stream.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stream = stream.expect("a connection once the others left");
    let call = zbus::message::Message::method_call("/org/kde/kapsule", "Introspect")
        .interface("org.freedesktop.DBus.Introspectable")
        .build(&())
        .unwrap();
    let bytes = call.data().to_vec();
    stream.set_nonblocking(true).unwrap();
    let mut writer = &stream;
    let mut blocked_since: Option<Instant> = None;
    let mut sent = 0;
    while blocked_since.is_none_or(|since| since.elapsed() < Duration::from_secs(2)) {
        match writer.write_all(&bytes) {
            Ok(()) => {
                sent += 1;
                blocked_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                blocked_since.get_or_insert_with(Instant::now);
                std::thread::sleep(Duration::from_millis(20));
            }
            // Dropped already.
            Err(_) => break,
        }
        assert!(sent < 50_000, "the daemon took {sent} calls it could not answer");
    }
    let resident_kb = resident_kb(pid);
    eprintln!("{sent} unread calls taken; the daemon's resident memory: {resident_kb} kB");
    assert!(resident_kb < 64 * 1024, "the daemon grew to {resident_kb} kB");
    tokio::time::sleep(Duration::from_secs(12)).await;
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut replies = Vec::new();
    let ended = (&stream).read_to_end(&mut replies);
    assert!(
        ended.is_ok(),
        "the connection still stands after {sent} unread calls: {ended:?} ({} bytes of replies)",
        replies.len()
    );
    // Others are served all along.
    let listed = kapsule(&tester, &socket, &["list"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_dropped_and_keep_no_daemon_running() {
    use std::io::Read;
    let bus = PrivateBus::start();
    let dir = socket_dir();
    let socket = dir.path().join("kapsule.sock");
    let mut process = daemon(&bus, &socket, &["--idle-exit", "2", "--client-idle", "3"]);
    wait_for(&socket, &mut process).await;
    let mut process = Stop(process);

    // kapsule-other holds all the connections one user may, authenticated, and does nothing.
    let other = other_user();
    let held: Vec<_> = (0..32).map_while(|_| held_connection(&socket, other.uid)).collect();
    assert_eq!(held.len(), 32);
    let connected = Instant::now();
    // Each is dropped once idle for 3 s; then the daemon is idle too, and exits 2 s later.
    let status = exit_status(
        &mut process.0,
        connected,
        Duration::from_secs(30),
        "after its clients went idle",
    )
    .await;
    assert!(status.success(), "an idle exit: {status}");
    assert!(
        connected.elapsed() >= Duration::from_secs(5),
        "exited after {:?}, before its clients were idle for 3 s and it for 2",
        connected.elapsed()
    );
    for mut stream in held {
        let mut rest = Vec::new();
        assert!(stream.read_to_end(&mut rest).is_ok(), "a connection still stands");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_too_large_or_laden_with_descriptors_are_refused_before_the_daemon_holds_them() {
    use std::io::{BufRead, Read, Write};
    let (_bus, dir, daemon) = running_daemon().await;
    let socket = dir.path().join("kapsule.sock");
    let pid = daemon.0.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    assert_eq!(files.split_whitespace().nth(3), Some("1024"), "{files}");

    // kapsule-other sends eight calls with a 30 MiB argument, each on a connection of its own
    // (eight such calls, replies unread, once took the daemon from 17 to 263 MB resident).
    let other = other_user();
    let huge = "x".repeat(30 << 20);
    let call = zbus::message::Message::method_call("/org/kde/kapsule", "GetContainerInfo")
        .interface("org.kde.kapsule.Manager")
        .build(&(huge.as_str(),))
        .unwrap();
    let bytes = call.data().to_vec();
    for n in 0..8 {
        let stream = held_connection(&socket, other.uid).expect("a connection");
        // Dropped at the message's header: the rest of it finds the connection gone (a daemon
        // that took the message would have let it all in), and no answer comes.
        let sent = (&stream).write_all(&bytes);
        assert!(sent.is_err(), "call {n}: the daemon took a 30 MiB message");
        let mut answer = Vec::new();
        let _ = (&stream).read_to_end(&mut answer);
        assert!(answer.is_empty(), "call {n} was answered");
    }
    let resident_kb = resident_kb(pid);
    eprintln!("after eight 30 MiB calls, the daemon's resident memory: {resident_kb} kB");
    assert!(resident_kb < 64 * 1024, "the daemon grew to {resident_kb} kB");

    // Three calls carrying 250 descriptors each (once they pinned 751 of the daemon's 1024):
    // each client dropped, none of the descriptors kept.
    let introspect = zbus::message::Message::method_call("/org/kde/kapsule", "Introspect")
        .interface("org.freedesktop.DBus.Introspectable")
        .build(&())
        .unwrap();
    let files: Vec<_> = (0..250)
        .map(|_| std::fs::File::open("/etc/hostname").unwrap())
        .collect();
    let fds: Vec<_> = files.iter().map(std::os::fd::AsFd::as_fd).collect();
    for n in 0..3 {
        let stream = held_connection(&socket, other.uid).expect("a connection");
        send_with_descriptors(&stream, introspect.data(), &fds);
        let mut answer = Vec::new();
        let _ = (&stream).read_to_end(&mut answer);
        assert!(answer.is_empty(), "call {n} with 250 descriptors was answered");
    }
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    eprintln!("after three calls with 250 descriptors, the daemon has {open} open");
    assert!(open < 64, "the daemon holds {open} descriptors");

    // Descriptors sent with the handshake: dropped before it is answered.
    let stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let file = std::fs::File::open("/etc/hostname").unwrap();
    let hex: String = 0u32.to_string().bytes().map(|b| format!("{b:02x}")).collect();
    let line = format!("\0AUTH EXTERNAL {hex}\r\n");
    send_with_descriptors(&stream, line.as_bytes(), &[std::os::fd::AsFd::as_fd(&file)]);
    let mut answer = String::new();
    let _ = std::io::BufReader::new(&stream).read_line(&mut answer);
    assert_eq!(answer, "", "a handshake carrying a descriptor was answered");

    // Everyone else is served all along.
    let listed = kapsule(&test_user(), &socket, &["list"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
}
