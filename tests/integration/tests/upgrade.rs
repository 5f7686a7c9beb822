//! `kapsule upgrade` against real containers and a package repository of the test's own: a small
//! package built with `dpkg-deb` in two versions, served to the containers' apt from a `file:`
//! repository pushed into them (no network). One container is upgraded to the new version;
//! `--all` upgrades a running and a stopped one (stopped again after) and reports a third whose
//! upgrade fails, with a summary and a failing exit status; `--running` skips the stopped one; on
//! btrfs a snapshot is taken first, named so `kapsule restore` goes back, and the automatic ones
//! are pruned to the last three.
//!
//! Runs alone (`.config/nextest.toml`): `--all` means every container on this Incus.

use std::path::Path;
use std::process::{Command, Output};

use kapsule_incus::{Client, FileMeta};
use kapsule_integration_tests::apt::{PACKAGE, build_package, packages_index};
use kapsule_integration_tests::{
    DaemonTest, InstanceGuard, btrfs_pool, daemon_test_with, env, options, sh, test_settings, unique_name,
};

/// Puts `version` of the package as the only one in container `name`'s repository
/// `/srv/kt-repo`, the only apt source it has.
async fn serve(incus: &Client, name: &str, deb: &Path, version: &str) {
    let (code, out) = sh(
        incus,
        name,
        "mkdir -p /srv/kt-repo /root/kt-sources && rm -f /srv/kt-repo/* && \
         { mv /etc/apt/sources.list /etc/apt/sources.list.d/* /root/kt-sources/ 2>/dev/null || true; } && \
         echo 'deb [trusted=yes] file:/srv/kt-repo ./' > /etc/apt/sources.list.d/kt.list",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let root = FileMeta::new(0, 0, 0o644);
    let file = deb.file_name().unwrap().to_str().unwrap();
    incus
        .push_file(name, &format!("/srv/kt-repo/{file}"), std::fs::read(deb).unwrap(), root)
        .await
        .unwrap();
    incus
        .push_file(name, "/srv/kt-repo/Packages", packages_index(deb, version), root)
        .await
        .unwrap();
}

async fn installed(incus: &Client, name: &str) -> String {
    let (code, out) = sh(incus, name, "cat /usr/share/kt-hello/version").await;
    assert_eq!(code, 0, "{name}: {out}");
    out
}

async fn kapsule(test: &DaemonTest, args: &[&str]) -> Output {
    let mut command = Command::new(kapsule_integration_tests::kapsule_binary());
    command.args(args).env("KAPSULE_BUS_ADDRESS", &test.bus.address);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A container with version 1 of the package installed from its repository.
async fn with_version_1(test: &DaemonTest, name: &str, v1: &Path) {
    test.create(name, options(vec![])).await;
    serve(&test.env.incus, name, v1, "1.0").await;
    let (code, out) = sh(
        &test.env.incus,
        name,
        &format!("apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q {PACKAGE}"),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(installed(&test.env.incus, name).await, "1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_moves_packages_on_and_all_goes_on_past_a_failure() {
    let test = &daemon_test_with(test_settings()).await;
    let incus = &test.env.incus;
    let dir = tempfile::tempdir().unwrap();
    let v1 = build_package(dir.path(), "1.0");
    let v2 = build_package(dir.path(), "2.0");
    let (running, stopped, broken) = (unique_name("up-run"), unique_name("up-stop"), unique_name("up-bad"));
    let _guards = [
        InstanceGuard(running.clone()),
        InstanceGuard(stopped.clone()),
        InstanceGuard(broken.clone()),
    ];
    for name in [&running, &stopped] {
        with_version_1(test, name, &v1).await;
        serve(incus, name, &v2, "2.0").await;
    }
    // The third's only source is a repository that is not there: apt-get update fails.
    test.create(&broken, options(vec![])).await;
    serve(incus, &broken, &v1, "1.0").await;
    let (code, out) = sh(incus, &broken, "rm -r /srv/kt-repo").await;
    assert_eq!(code, 0, "{out}");
    let seen = test.follow(test.manager.stop_container(&stopped, false)).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");

    // One container: its package manager's output as it comes, the new version installed.
    let out = kapsule(test, &["upgrade", &running]).await;
    let said = text(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("Upgrading with apt"), "{said}");
    assert!(
        said.contains(&format!("Unpacking {PACKAGE} (2.0)")),
        "apt's own lines: {said}"
    );
    assert!(said.contains("No snapshot taken first: on a 'dir' pool"), "{said}");
    assert!(said.contains(&format!("✓ Container '{running}' upgraded")), "{said}");
    assert_eq!(installed(incus, &running).await, "2.0");

    // --running: the stopped one is skipped, and nothing is asked of it.
    let out = kapsule(test, &["upgrade", "--running", &stopped]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("Skipped '{stopped}': it is not running")));
    assert_eq!(incus.get_instance(&stopped).await.unwrap().status, "Stopped");

    // --all: every container (this test runs alone); one failing does not stop the others.
    let out = kapsule(test, &["upgrade", "--all"]).await;
    let said = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a failure is the exit status: {said}");
    assert!(
        said.contains(&format!("── {stopped}")) && said.contains(&format!("── {broken}")),
        "{said}"
    );
    assert!(
        said.contains(&format!("Upgrading '{broken}' failed (exit code 100)")),
        "{said}"
    );
    assert!(said.contains(&format!("Failed: {broken}")), "{said}");
    let upgraded = said
        .lines()
        .find(|l| l.starts_with("── Upgraded: "))
        .unwrap_or_default();
    assert!(upgraded.contains(&running) && upgraded.contains(&stopped), "{said}");
    assert!(said.contains("1 of 3 upgrades failed"), "{said}");
    assert_eq!(
        incus.get_instance(&stopped).await.unwrap().status,
        "Stopped",
        "stopped again after its upgrade"
    );
    let (code, out) = incus_start_and_read(incus, &stopped).await;
    assert_eq!((code, out.as_str()), (0, "2.0"), "the stopped one was upgraded too");
}

/// Starts a stopped container and reads the package's version in it.
async fn incus_start_and_read(incus: &Client, name: &str) -> (i32, String) {
    let op = incus.start_instance(name).await.unwrap();
    incus
        .wait_operation(&op.id, Some(std::time::Duration::from_secs(120)))
        .await
        .unwrap();
    sh(incus, name, "cat /usr/share/kt-hello/version").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_btrfs_an_upgrade_takes_a_snapshot_first_and_keeps_the_last_three() {
    let mut settings = test_settings();
    settings.storage_pool = Some(btrfs_pool(&env().await).await);
    let test = &daemon_test_with(settings).await;
    let incus = &test.env.incus;
    let dir = tempfile::tempdir().unwrap();
    let v1 = build_package(dir.path(), "1.0");
    let name = unique_name("up-btrfs");
    let _guard = InstanceGuard(name.clone());
    with_version_1(test, &name, &v1).await;
    let mut automatic = Vec::new();
    for round in 0..4 {
        let out = kapsule(test, &["upgrade", &name]).await;
        let said = text(&out.stderr);
        assert!(out.status.success(), "{said}");
        let hint = said
            .lines()
            .find_map(|l| l.split("to go back: ").nth(1))
            .unwrap_or_else(|| panic!("round {round}: no roll-back hint: {said}"));
        let snapshot = hint
            .strip_prefix(&format!("kapsule restore {name} "))
            .unwrap()
            .trim()
            .to_owned();
        assert!(snapshot.starts_with("auto-upgrade-"), "{snapshot}");
        automatic.push(snapshot);
        // Names are by the second.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    let snapshots: Vec<String> = test
        .manager
        .list_snapshots(&name)
        .await
        .unwrap()
        .into_iter()
        .map(|s| {
            assert!(s.automatic, "{s:?}");
            s.name
        })
        .collect();
    assert_eq!(snapshots, automatic[1..], "the last three automatic snapshots are kept");
    let out = kapsule(test, &["upgrade", "--no-snapshot", &name]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        test.manager.list_snapshots(&name).await.unwrap().len(),
        3,
        "--no-snapshot took none"
    );
    // The hint works: back to before the last upgrade.
    let (code, out) = sh(incus, &name, "touch /opt/kt-after").await;
    assert_eq!(code, 0, "{out}");
    let out = kapsule(test, &["restore", &name, &automatic[3], "--yes"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, _) = sh(incus, &name, "test -e /opt/kt-after").await;
    assert_ne!(code, 0, "restored to before");
}
