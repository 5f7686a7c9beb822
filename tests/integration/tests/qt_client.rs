//! The daemon driven as Konsole drives it: `kapsule-qt-client` (tests/qt-client) calls it through
//! proxies that Qt's qdbusxml2cpp generates from the original daemon's interface XML, and QtDBus
//! refuses every reply whose signature is not the one that XML declares. As the administrator
//! `kapsule-tester`, it lists, reads one container, enters one through `PrepareEnter`'s command,
//! creates, stops, starts and removes.

use std::path::PathBuf;
use std::process::{Command, Output};

use kapsule_integration_tests::{
    DaemonTest, InstanceGuard, TestUser, daemon_test, kapsule_binary, test_user, unique_name,
};

/// Builds the client (cmake and Debian's Qt 6, which tests/env/up.sh installs) and returns it.
fn qt_client() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../qt-client/build.sh");
    let out = Command::new("bash").arg(&script).output().expect("bash runs");
    assert!(
        out.status.success(),
        "building the Qt client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The client run as `user` against the test's bus, as their system bus.
async fn client(test: &DaemonTest, user: &TestUser, binary: &std::path::Path, args: &[&str]) -> Output {
    let mut command = user.command(binary);
    command.args(args).env("DBUS_SYSTEM_BUS_ADDRESS", &test.bus.address);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Standard output of a call that must succeed.
fn ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_original_xml_lists_reads_enters_and_manages() {
    let binary = tokio::task::spawn_blocking(qt_client).await.unwrap();
    let test = daemon_test().await;
    let admin = test_user();
    let name = unique_name("qt");
    let _guard = InstanceGuard(name.clone());
    let image = format!("local:{}", test.env.image);

    let out = client(&test, &admin, &binary, &["create", &name, &image]).await;
    assert_eq!(ok("create", &out), "completed\n");

    // ListContainers: a(sssss) into QList<Kapsule::Container>.
    let listed = ok("list", &client(&test, &admin, &binary, &["list"]).await);
    let row = listed
        .lines()
        .find(|l| l.starts_with(&format!("{name}|")))
        .unwrap_or_else(|| panic!("{name} is not listed:\n{listed}"));
    let fields: Vec<&str> = row.split('|').collect();
    assert_eq!((fields.len(), fields[1], fields[4]), (5, "Running", "Default"), "{row}");

    // GetContainerInfo: one (sssss) into Kapsule::Container, the same row.
    let info = ok("info", &client(&test, &admin, &binary, &["info", &name]).await);
    assert_eq!(info, format!("{row}\n"));
    let missing = unique_name("qt-none");
    let out = client(&test, &admin, &binary, &["info", &missing]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).starts_with("error: org.kde.kapsule.Error.NotFound: "),
        "{}",
        text(&out.stderr)
    );

    // PrepareEnter: one (bsas) into Kapsule::EnterResult; its command enters, as Konsole runs it
    // (the `kapsule` on the PATH).
    let prepared = ok(
        "prepare",
        &client(&test, &admin, &binary, &["prepare", &name, "id", "-un"]).await,
    );
    let mut lines = prepared.lines();
    assert_eq!(lines.next(), Some("ok"), "{prepared}");
    let argv: Vec<&str> = lines.collect();
    assert_eq!(argv, ["kapsule", "enter", name.as_str(), "--", "id", "-un"]);
    let bin_dir = kapsule_binary().parent().unwrap().to_owned();
    let mut enter = admin.command(argv[0]);
    enter
        .args(&argv[1..])
        .env("PATH", format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin_dir.display()))
        .env("KAPSULE_BUS_ADDRESS", &test.bus.address);
    let entered = tokio::task::spawn_blocking(move || enter.output().unwrap())
        .await
        .unwrap();
    assert_eq!(ok("the prepared command", &entered), format!("{}\n", admin.name));
    // An expected failure comes back in-band, still one (bsas).
    let out = client(&test, &admin, &binary, &["prepare", &missing]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("failed: Container '{missing}' does not exist\n")
    );

    // Operations, followed through the generated Operation proxy.
    for (step, status) in [("stop", "Stopped"), ("start", "Running"), ("stop", "Stopped")] {
        let out = client(&test, &admin, &binary, &[step, &name]).await;
        assert_eq!(ok(step, &out), "completed\n");
        let info = ok("info", &client(&test, &admin, &binary, &["info", &name]).await);
        assert_eq!(info.split('|').nth(1), Some(status), "after {step}: {info}");
    }
    let out = client(&test, &admin, &binary, &["delete", &name]).await;
    assert_eq!(ok("delete", &out), "completed\n");
    let listed = ok("list", &client(&test, &admin, &binary, &["list"]).await);
    assert!(!listed.contains(&format!("{name}|")), "{listed}");
    assert!(
        !test
            .env
            .incus
            .list_instances()
            .await
            .unwrap()
            .iter()
            .any(|i| i.name == name),
        "Incus has no {name} any more"
    );
}
