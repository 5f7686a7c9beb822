//! Undo for containers, as a user runs it with the CLI against the real incusd: snapshots taken,
//! listed, restored and removed; a container reset from its image; a container cloned. Each
//! checked as the user sees it (files inside, the host home, who can enter, the host name), with
//! bad names, missing snapshots and someone else's container refused by name and Incus unchanged.
//! Each test runs on the `dir` pool and on btrfs, where KDE Linux keeps its containers.

use std::process::{Command, Output};

use kapsule_integration_tests::{
    DaemonTest, InstanceGuard, RemoveOnDrop, Tmux, btrfs_pool, daemon_test_with, env, incus_state, kapsule_binary,
    options, other_user, sh, test_settings, test_user, unique_name,
};

/// Where the test's containers live: the `dir` pool, or the btrfs pool (KDE Linux's file system,
/// where snapshots and copies are copy-on-write).
#[derive(Clone, Copy, Debug)]
enum Pool {
    Dir,
    Btrfs,
}

/// A daemon that makes its containers in `pool`.
async fn daemon_on(pool: Pool) -> DaemonTest {
    let mut settings = test_settings();
    if let Pool::Btrfs = pool {
        settings.storage_pool = Some(btrfs_pool(&env().await).await);
    }
    daemon_test_with(settings).await
}

/// Checks that container `name` lives in the pool the test is about.
async fn check_pool(test: &DaemonTest, name: &str, pool: Pool) {
    let instance = test.env.incus.get_instance(name).await.unwrap();
    let root = instance.devices.get("root").and_then(|d| d.get("pool")).cloned();
    let found = test.env.incus.get_storage_pool(root.as_deref().unwrap()).await.unwrap();
    let want = match pool {
        Pool::Dir => "dir",
        Pool::Btrfs => "btrfs",
    };
    assert_eq!(found.driver, want, "{name} is on {root:?}");
}

/// Runs a command (the CLI as a test user) without blocking the daemon's runtime.
async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `kapsule args…` as the test user (an administrator), with no terminal.
async fn kapsule(test: &DaemonTest, args: &[&str]) -> Output {
    let mut command = test_user().kapsule(&test.bus);
    command.args(args).stdin(std::process::Stdio::null());
    run(command).await
}

fn succeeded(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

fn failed(what: &str, out: &Output, message: &str) {
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{what} succeeded: {stderr}");
    assert!(stderr.contains(message), "{what}: expected {message:?} in: {stderr}");
}

async fn exists(test: &DaemonTest, name: &str, path: &str) -> bool {
    sh(&test.env.incus, name, &format!("test -e {path}")).await.0 == 0
}

async fn snapshot_names(test: &DaemonTest, name: &str) -> Vec<serde_json::Value> {
    let out = kapsule(test, &["snapshot", "list", name, "--format", "json"]).await;
    succeeded("snapshot list", &out);
    serde_json::from_slice(&out.stdout).expect("snapshot list --format json prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_brings_a_deleted_file_back_and_bad_requests_change_nothing_on_dir() {
    a_snapshot_brings_a_deleted_file_back_and_bad_requests_change_nothing(Pool::Dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_brings_a_deleted_file_back_and_bad_requests_change_nothing_on_btrfs() {
    a_snapshot_brings_a_deleted_file_back_and_bad_requests_change_nothing(Pool::Btrfs).await;
}

async fn a_snapshot_brings_a_deleted_file_back_and_bad_requests_change_nothing(pool: Pool) {
    let test = &daemon_on(pool).await;
    let incus = &test.env.incus;
    let name = unique_name("snap");
    let _guard = InstanceGuard(name.clone());
    test.create(&name, options(vec![])).await;
    check_pool(test, &name, pool).await;
    let (code, out) = sh(incus, &name, "echo precious > /opt/kt-file").await;
    assert_eq!(code, 0, "{out}");

    let said = succeeded("snapshot", &kapsule(test, &["snapshot", &name, "before"]).await);
    assert!(said.contains(&format!("Snapshot 'before' of '{name}' taken")), "{said}");
    let listed = snapshot_names(test, &name).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], "before");
    assert_eq!(listed[0]["automatic"], false);
    assert!(listed[0]["created"].as_str().unwrap().ends_with("+00:00"), "{listed:?}");

    let (code, out) = sh(incus, &name, "rm /opt/kt-file").await;
    assert_eq!(code, 0, "{out}");
    // Running, no terminal, no --yes: nothing is done.
    failed(
        "restore without --yes",
        &kapsule(test, &["restore", &name, "before"]).await,
        "add --yes",
    );
    assert!(!exists(test, &name, "/opt/kt-file").await, "refused, yet restored");
    // On a terminal it asks: no changes nothing.
    let tmux = Tmux::new();
    let line = format!(
        "env KAPSULE_BUS_ADDRESS={} {} restore {name} before; echo exit=$?; sleep 60",
        test.bus.address,
        kapsule_binary().display()
    );
    tmux.run(&["new-session", "-d", "-x", "200", "-y", "30", "-s", "kt", &line]);
    tmux.wait_for("Go on? [y/N]").await;
    tmux.run(&["send-keys", "-t", "kt", "n", "Enter"]);
    tmux.wait_for("exit=1").await;
    let screen = tmux.run(&["capture-pane", "-p", "-t", "kt"]);
    assert!(
        screen.contains("'before' (what changed since is lost)") && screen.contains("Nothing was changed"),
        "{screen}"
    );
    assert!(!exists(test, &name, "/opt/kt-file").await, "answered no, yet restored");
    let said = succeeded("restore", &kapsule(test, &["restore", &name, "before", "--yes"]).await);
    assert!(said.contains("as it was at snapshot 'before'"), "{said}");
    let (code, out) = sh(incus, &name, "cat /opt/kt-file").await;
    assert_eq!((code, out.as_str()), (0, "precious\n"), "the file is back");
    assert_eq!(
        incus.get_instance(&name).await.unwrap().status,
        "Running",
        "started again"
    );

    // A snapshot without a name is named by the date and time.
    succeeded("dated snapshot", &kapsule(test, &["snapshot", &name]).await);
    let listed = snapshot_names(test, &name).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let dated = listed[1]["name"].as_str().unwrap().to_owned();
    assert!(
        dated.len() == 15
            && dated
                .chars()
                .enumerate()
                .all(|(i, c)| if i == 8 { c == '-' } else { c.is_ascii_digit() }),
        "{dated}"
    );

    // Bad requests: a named error, and Incus as it was.
    let before = incus_state(incus, &[&name]).await;
    let snapshots_before = snapshot_names(test, &name).await;
    let refusals: [(&[&str], &str); 7] = [
        (&["snapshot", &name, "before"], "has a snapshot 'before' already"),
        (
            &["snapshot", &name, "auto-mine"],
            "are for the snapshots Kapsule takes itself",
        ),
        (&["snapshot", &name, "a/b"], "Invalid snapshot name 'a/b'"),
        (&["snapshot", &name, ".."], "Invalid snapshot name '..'"),
        (&["restore", &name, "nope", "--yes"], "has no snapshot 'nope'"),
        (&["snapshot", "rm", &name, "nope"], "has no snapshot 'nope'"),
        (&["snapshot", "kt-no-such-container", "x"], "does not exist"),
    ];
    for (args, message) in refusals {
        failed(&args.join(" "), &kapsule(test, args).await, message);
    }
    // Someone who may not manage containers: refused by polkit.
    let mut as_other = other_user().kapsule(&test.bus);
    as_other.args(["snapshot", &name, "theirs"]);
    failed("someone else's snapshot", &run(as_other).await, "not allowed to manage");
    let mut as_other = other_user().kapsule(&test.bus);
    as_other.args(["restore", &name, "before", "--yes"]);
    failed("someone else's restore", &run(as_other).await, "not allowed to manage");
    assert_eq!(incus_state(incus, &[&name]).await, before, "Incus changed");
    assert_eq!(snapshot_names(test, &name).await, snapshots_before);

    let said = succeeded(
        "snapshot rm",
        &kapsule(test, &["snapshot", "rm", &name, "before"]).await,
    );
    assert!(said.contains("Snapshot 'before'"), "{said}");
    let listed = snapshot_names(test, &name).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], dated.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_makes_the_container_anew_and_keeps_the_host_home_on_dir() {
    a_reset_makes_the_container_anew_and_keeps_the_host_home(Pool::Dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_makes_the_container_anew_and_keeps_the_host_home_on_btrfs() {
    a_reset_makes_the_container_anew_and_keeps_the_host_home(Pool::Btrfs).await;
}

async fn a_reset_makes_the_container_anew_and_keeps_the_host_home(pool: Pool) {
    let test = &daemon_on(pool).await;
    let incus = &test.env.incus;
    let user = test_user();
    let name = unique_name("reset");
    let _guard = InstanceGuard(name.clone());
    test.create(&name, options(vec![])).await;
    check_pool(test, &name, pool).await;
    let home_file = user.write_file(&format!("kt-reset-{name}"), "kept");
    let _home_file = RemoveOnDrop(home_file.clone());
    // The user enters (and is set up); root installs something of the container's own.
    let mut enter = user.kapsule(&test.bus);
    enter.args(["enter", &name, "--", "id", "-u"]);
    let out = run(enter).await;
    assert_eq!(text(&out.stdout).trim(), user.uid.to_string(), "{}", text(&out.stderr));
    assert!(test.manager.is_user_setup(&name, user.uid).await.unwrap());
    let (code, out) = sh(incus, &name, "echo mine > /opt/kt-own && touch /etc/kt-config").await;
    assert_eq!(code, 0, "{out}");
    let owner_before = incus
        .get_instance(&name)
        .await
        .unwrap()
        .config
        .get("user.kapsule.owner")
        .cloned();

    failed(
        "reset without --yes",
        &kapsule(test, &["reset", &name]).await,
        "add --yes",
    );
    assert!(exists(test, &name, "/opt/kt-own").await, "refused, yet reset");
    let before = incus_state(incus, &[&name]).await;
    failed(
        "reset from a missing image",
        &kapsule(test, &["reset", &name, "--image", "kt-no-such-image", "--yes"]).await,
        "No local image",
    );
    assert_eq!(incus_state(incus, &[&name]).await, before, "Incus changed");

    // A snapshot of the user's: the reset refuses, says how to keep it, and changes nothing.
    succeeded("snapshot", &kapsule(test, &["snapshot", &name, "mine"]).await);
    let before = incus_state(incus, &[&name]).await;
    failed(
        "reset with a snapshot of the user's",
        &kapsule(test, &["reset", &name, "--yes"]).await,
        &format!(
            "has snapshots you took (mine), and a container with snapshots cannot be made anew; to keep one, make it a container of its own (kapsule clone {name} NEW --snapshot mine)"
        ),
    );
    assert_eq!(incus_state(incus, &[&name]).await, before, "Incus changed");
    assert!(exists(test, &name, "/opt/kt-own").await, "refused, yet reset");
    succeeded("snapshot rm", &kapsule(test, &["snapshot", "rm", &name, "mine"]).await);
    // On btrfs an upgrade takes a snapshot of Kapsule's: the reset removes it, saying so.
    if let Pool::Btrfs = pool {
        let (code, out) = sh(incus, &name, "rm -rf /etc/apt/sources.list /etc/apt/sources.list.d").await;
        assert_eq!(code, 0, "{out}");
        succeeded("upgrade", &kapsule(test, &["upgrade", &name]).await);
        assert_eq!(snapshot_names(test, &name).await.len(), 1, "an automatic snapshot");
    }
    let said = succeeded("reset", &kapsule(test, &["reset", &name, "--yes"]).await);
    if let Pool::Btrfs = pool {
        assert!(
            said.contains("The snapshots Kapsule took before upgrades are removed with them: auto-upgrade-"),
            "{said}"
        );
        assert!(snapshot_names(test, &name).await.is_empty());
    }
    assert!(
        said.contains("are replaced by a fresh copy of"),
        "what is lost is said: {said}"
    );
    assert!(said.contains(&format!("Container '{name}' was reset")), "{said}");
    let instance = incus.get_instance(&name).await.unwrap();
    assert_eq!(instance.status, "Running");
    assert_eq!(
        instance.config.get("user.kapsule.owner").cloned(),
        owner_before,
        "same owner"
    );
    assert!(
        !instance.config.contains_key("user.kapsule.pending"),
        "{:?}",
        instance.config
    );
    assert!(
        !exists(test, &name, "/opt/kt-own").await,
        "the container's own file is gone"
    );
    assert!(
        !exists(test, &name, "/etc/kt-config").await,
        "the container's own file is gone"
    );
    assert!(exists(test, &name, "/.kapsule").await, "a new container's fixups ran");
    assert!(
        !test.manager.is_user_setup(&name, user.uid).await.unwrap(),
        "set up again on the next enter"
    );
    assert_eq!(
        std::fs::read_to_string(&home_file).unwrap(),
        "kept",
        "the host home is untouched"
    );

    // The user enters again: the same uid, and the host home's file is there.
    let mut enter = user.kapsule(&test.bus);
    enter.args([
        "enter",
        &name,
        "--",
        "sh",
        "-c",
        &format!("id -u; cat ~/kt-reset-{name}"),
    ]);
    let out = run(enter).await;
    assert_eq!(
        text(&out.stdout),
        format!("{}\nkept", user.uid),
        "{}",
        text(&out.stderr)
    );

    // Someone who may not manage containers cannot reset it.
    let before = incus_state(incus, &[&name]).await;
    let mut as_other = other_user().kapsule(&test.bus);
    as_other.args(["reset", &name, "--yes"]);
    failed("someone else's reset", &run(as_other).await, "not allowed to manage");
    assert_eq!(incus_state(incus, &[&name]).await, before, "Incus changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_is_a_machine_of_its_own_while_the_source_runs_on_dir() {
    a_clone_is_a_machine_of_its_own_while_the_source_runs(Pool::Dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_is_a_machine_of_its_own_while_the_source_runs_on_btrfs() {
    a_clone_is_a_machine_of_its_own_while_the_source_runs(Pool::Btrfs).await;
}

async fn a_clone_is_a_machine_of_its_own_while_the_source_runs(pool: Pool) {
    let test = &daemon_on(pool).await;
    let incus = &test.env.incus;
    let user = test_user();
    let source = unique_name("src");
    let copy = unique_name("copy");
    let from_snapshot = unique_name("copy");
    let _guards = [
        InstanceGuard(source.clone()),
        InstanceGuard(copy.clone()),
        InstanceGuard(from_snapshot.clone()),
    ];
    test.create(&source, options(vec![])).await;
    check_pool(test, &source, pool).await;
    let (code, out) = sh(incus, &source, "echo one > /opt/kt-file").await;
    assert_eq!(code, 0, "{out}");
    succeeded("snapshot", &kapsule(test, &["snapshot", &source, "one"]).await);
    let (code, out) = sh(incus, &source, "echo two > /opt/kt-file").await;
    assert_eq!(code, 0, "{out}");

    let said = succeeded(
        "clone",
        &kapsule(test, &["clone", &source, &copy, "--no-menu-entry"]).await,
    );
    assert!(
        said.contains(&format!("Container '{copy}' created from '{source}'")),
        "{said}"
    );
    let said = succeeded(
        "clone of a snapshot",
        &kapsule(
            test,
            &["clone", &source, &from_snapshot, "--snapshot", "one", "--no-menu-entry"],
        )
        .await,
    );
    assert!(said.contains("as it was at snapshot 'one'"), "{said}");

    for (name, content) in [(&source, "two\n"), (&copy, "two\n"), (&from_snapshot, "one\n")] {
        let instance = incus.get_instance(name).await.unwrap();
        assert_eq!(instance.status, "Running", "{name}");
        let (code, out) = sh(incus, name, "cat /opt/kt-file").await;
        assert_eq!((code, out.as_str()), (0, content), "{name}");
    }
    let identity = "cat /etc/machine-id; hostname; grep -c \"$(hostname)\" /etc/hosts";
    let (_, source_id) = sh(incus, &source, identity).await;
    for name in [&copy, &from_snapshot] {
        check_pool(test, name, pool).await;
        let (code, id) = sh(incus, name, identity).await;
        assert_eq!(code, 0, "{id}");
        let lines: Vec<&str> = id.lines().collect();
        assert_eq!(lines[1], name.as_str(), "its own host name");
        assert_eq!(lines[2], "1", "its own name in /etc/hosts");
        assert_ne!(lines[0], source_id.lines().next().unwrap(), "its own machine ID");
        assert_eq!(lines[0].len(), 32, "{id}");
        let instance = incus.get_instance(name).await.unwrap();
        assert_eq!(
            instance.config.get("user.kapsule.owner"),
            Some(&user.uid.to_string()),
            "the caller owns it"
        );
        assert!(!instance.config.contains_key("user.kapsule.pending"));
    }
    let mut enter = user.kapsule(&test.bus);
    enter.args(["enter", &copy, "--", "id", "-u"]);
    let out = run(enter).await;
    assert_eq!(text(&out.stdout).trim(), user.uid.to_string(), "{}", text(&out.stderr));

    let names = [source.as_str(), copy.as_str(), from_snapshot.as_str(), "kt-clone-bad"];
    let before = incus_state(incus, &names).await;
    let refusals: [(&[&str], &str); 5] = [
        (&["clone", &source, &copy], "already exists"),
        (&["clone", "kt-no-such-container", "kt-clone-bad"], "does not exist"),
        (
            &["clone", &source, "kt-clone-bad", "--snapshot", "nope"],
            "has no snapshot 'nope'",
        ),
        (&["clone", &source, "9bad"], "Invalid container name '9bad'"),
        (
            &["clone", &source, "kt-clone-bad", "--snapshot", "a/b"],
            "Invalid snapshot name",
        ),
    ];
    for (args, message) in refusals {
        failed(&args.join(" "), &kapsule(test, args).await, message);
    }
    let mut as_other = other_user().kapsule(&test.bus);
    as_other.args(["clone", &source, "kt-clone-bad"]);
    failed(
        "a clone by someone who may not",
        &run(as_other).await,
        "not allowed to manage",
    );
    assert_eq!(incus_state(incus, &names).await, before, "Incus changed");
}
