//! The shipped bus policy, `dbus/org.kde.kapsule.conf`, on a bus configured as the system bus is
//! (default deny): only root owns `org.kde.kapsule`, everyone may call it, and polkit decides
//! what a call may do. Without the file nobody, root included, may own the name.

use std::process::{Command, Output};
use std::time::Duration;

use kapsule_integration_tests::{PrivateBus, TestUser, daemon_process, other_user, test_user, workspace_binary};

fn run(mut command: Command) -> Output {
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `RequestName("org.kde.kapsule")` as `user`, with dbus-send.
fn request_name(bus: &PrivateBus, user: &TestUser) -> Output {
    let mut command = user.command("dbus-send");
    command.args([
        &format!("--bus={}", bus.address),
        "--print-reply",
        "--dest=org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.RequestName",
        "string:org.kde.kapsule",
        "uint32:0",
    ]);
    run(command)
}

/// The daemon binary as `command` would run it on `bus`, waited for at most 10 s.
fn daemon_that_cannot_start(mut command: Command, bus: &PrivateBus) -> (Option<i32>, String) {
    command
        .args(["--address", &bus.address])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return (status.code(), stderr);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the daemon kept running on a bus where it may not own its name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_root_owns_the_name_and_everyone_may_call() {
    let bus = PrivateBus::start();
    let (user, other) = (test_user(), other_user());

    // A user cannot take the name, neither by asking nor by running the daemon themselves.
    let out = request_name(&bus, &user);
    assert!(!out.status.success(), "{} took org.kde.kapsule", user.name);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("org.freedesktop.DBus.Error.AccessDenied") && stderr.contains("not allowed to own"),
        "{stderr}"
    );
    let (code, stderr) = daemon_that_cannot_start(user.command(workspace_binary("kapsule-daemon")), &bus);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("not allowed to own"), "{stderr}");

    // Root can; then every user may call it, and polkit, not the bus, refuses what they may not do.
    let (mut daemon, _client, _manager) = daemon_process(&bus).await;
    for who in [&user, &other] {
        let mut command = who.command("busctl");
        command.args([
            &format!("--address={}", bus.address),
            "get-property",
            "org.kde.kapsule",
            "/org/kde/kapsule",
            "org.kde.kapsule.Manager",
            "Version",
        ]);
        let out = run(command);
        assert!(out.status.success(), "{}: {}", who.name, text(&out.stderr));
        assert!(text(&out.stdout).starts_with("s \""), "{}", text(&out.stdout));
        let out = run(who.call_manager(&bus, &[], "ListContainers", "", &[]));
        assert!(out.status.success(), "{}: {}", who.name, text(&out.stderr));
    }
    let out = run(other.call_manager(&bus, &[], "CreateContainer", "ssa{sv}", &["kt-policy", "", "0"]));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("You are not allowed to manage Kapsule containers"),
        "the call should reach the daemon and be refused by polkit: {stderr}"
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_policy_file_not_even_root_owns_the_name() {
    let bus = PrivateBus::start_with(false);
    let (code, stderr) = daemon_that_cannot_start(Command::new(workspace_binary("kapsule-daemon")), &bus);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("not allowed to own"), "{stderr}");
}
