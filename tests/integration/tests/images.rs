//! Images through the daemon against the real incusd: import (as the caller), replacing an
//! alias, re-importing an image the store has, the project's own Debian image imported and
//! replaced under a running container, refresh, and the errors bad requests get.

use std::path::Path;
use std::process::Command;

use kapsule_integration_tests::{
    DaemonTest, ImageGuard, InstanceGuard, RemoveOnDrop, busybox_rootfs, collect_operation_signals, daemon_test,
    kapsule_binary, kapsule_signals, pack_image, sh, test_user, tiny_image_files, unique_name,
};

fn error_of(e: zbus::Error) -> (String, String) {
    match e {
        zbus::Error::MethodError(name, message, _) => (name.to_string(), message.unwrap_or_default()),
        other => panic!("not a method error: {other}"),
    }
}

/// The fingerprint Incus gives a split image: sha256 over the metadata, then the rootfs.
fn fingerprint_of(metadata: &Path, rootfs: &Path) -> String {
    let out = Command::new("sh")
        .args(["-c", "cat \"$1\" \"$2\" | sha256sum", "sh"])
        .arg(metadata)
        .arg(rootfs)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// Writes `dir/metadata.tar.gz` with `properties` (YAML lines under `properties:`, indented by
/// two after the first).
fn write_metadata(dir: &Path, properties: &str) {
    std::fs::write(
        dir.join("metadata.yaml"),
        format!("architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  {properties}\n"),
    )
    .unwrap();
    assert!(
        Command::new("tar")
            .arg("-C")
            .arg(dir)
            .arg("-czf")
            .arg(dir.join("metadata.tar.gz"))
            .arg("metadata.yaml")
            .status()
            .unwrap()
            .success()
    );
}

/// A directory with a tiny image in it, readable by everyone.
fn image_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let (meta, rootfs) = tiny_image_files(dir.path());
    let fingerprint = fingerprint_of(&meta, &rootfs);
    (dir, fingerprint)
}

async fn import(test: &DaemonTest, dir: &Path, alias: &str) -> Vec<String> {
    let mut signals = kapsule_signals(&test.client).await;
    let path = test.manager.import_image(dir.to_str().unwrap(), alias).await.unwrap();
    collect_operation_signals(&mut signals, path.as_str()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_replace_and_reimport() {
    let test = &daemon_test().await;
    let incus = &test.env.incus;
    let alias = unique_name("imp");
    let _guard = ImageGuard(alias.clone());

    let (first, first_fp) = image_dir();
    let seen = import(test, first.path(), &alias).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    assert!(
        seen.contains(&"ProgressStarted(\"Uploading image\", 100)".to_owned()),
        "{seen:?}"
    );
    assert!(seen.iter().any(|s| s.starts_with("ProgressCompleted(true")), "{seen:?}");
    assert!(
        seen.iter()
            .any(|s| s.contains(&format!("Image '{alias}' imported ({})", &first_fp[..12]))),
        "{seen:?}"
    );
    assert_eq!(incus.get_image_alias(&alias).await.unwrap().target, first_fp);

    // Another image under the same alias: the alias moves, the old image (now nameless) goes.
    let (second, second_fp) = image_dir();
    let seen = import(test, second.path(), &alias).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    assert!(seen.iter().any(|s| s.contains("Replacing the image")), "{seen:?}");
    assert_eq!(incus.get_image_alias(&alias).await.unwrap().target, second_fp);
    assert!(incus.get_image(&first_fp).await.unwrap_err().is_not_found());

    // The same image under a second alias: Incus has it already, so it is reused, not doubled.
    let alias2 = unique_name("imp");
    let seen = import(test, second.path(), &alias2).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    assert!(
        seen.iter().any(|s| s.contains("The store has this image already")),
        "{seen:?}"
    );
    assert_eq!(incus.get_image_alias(&alias2).await.unwrap().target, second_fp);
    let image = incus.get_image(&second_fp).await.unwrap();
    let mut names: Vec<&str> = image.aliases.iter().map(|a| a.name.as_str()).collect();
    names.sort();
    let mut expected = [alias.as_str(), alias2.as_str()];
    expected.sort();
    assert_eq!(names, expected);
}

/// The project's Debian image (images/debian/build.sh, built by tests/env/up.sh) goes in through
/// `kapsule image import` and makes containers with the image's hooks in them; re-imported under
/// the same alias while a container runs from it, the alias moves and the container goes on; then
/// deleted by alias and by fingerprint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_image_imports_replaces_under_a_running_container_and_deletes() {
    let test = &daemon_test().await;
    let incus = &test.env.incus;
    let cli = |args: &[&str]| -> std::process::Output {
        Command::new(kapsule_binary())
            .args(args)
            .env("KAPSULE_BUS_ADDRESS", &test.bus.address)
            .output()
            .unwrap()
    };
    let ok = |out: std::process::Output| -> String {
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{said}");
        said
    };
    let built = std::path::PathBuf::from(
        std::env::var("KAPSULE_TEST_IMAGE_DIR")
            .expect("KAPSULE_TEST_IMAGE_DIR is not set: source /run/kapsule-test/env (tests/env/up.sh)"),
    );
    // A package of its own: the built rootfs (hard-linked) with metadata that says so, so it has
    // another fingerprint than the shared test image, which this test must not delete.
    let dir = tempfile::tempdir_in(built.parent().unwrap()).unwrap();
    std::fs::hard_link(built.join("rootfs.tar.zst"), dir.path().join("rootfs.tar.zst")).unwrap();
    let description = unique_name("debian");
    write_metadata(dir.path(), &format!("description: {description}"));
    let debian_fp = fingerprint_of(&dir.path().join("metadata.tar.gz"), &dir.path().join("rootfs.tar.zst"));
    let alias = unique_name("deb");
    let _alias = ImageGuard(alias.clone());
    let said = ok(cli(&[
        "image",
        "import",
        dir.path().to_str().unwrap(),
        "--alias",
        &alias,
    ]));
    assert!(
        said.contains(&format!("Image '{alias}' imported ({})", &debian_fp[..12])),
        "{said}"
    );

    // Containers from it have the image's hooks, and identities of their own.
    let first = unique_name("deb");
    let _first = InstanceGuard(first.clone());
    ok(cli(&["create", &first, "--image", &format!("local:{alias}")]));
    assert_eq!(
        sh(
            incus,
            &first,
            "ls /.kapsule/sync /.kapsule/init; . /etc/os-release; echo $ID"
        )
        .await,
        (
            0,
            "/.kapsule/init:\n10-machine-id\n\n/.kapsule/sync:\ndns\nlocale\ntimezone\ndebian\n".to_owned()
        )
    );
    let other = unique_name("deb");
    let _other = InstanceGuard(other.clone());
    ok(cli(&[
        "create",
        &other,
        "--image",
        &format!("local:{}", test.env.image),
    ]));
    let (_, id1) = sh(incus, &first, "cat /etc/machine-id").await;
    let (_, id2) = sh(incus, &other, "cat /etc/machine-id").await;
    assert_eq!(id1.trim().len(), 32, "{id1}");
    assert_ne!(id1, id2, "every container has its own machine ID");

    // Re-imported under the same alias while `first` runs from it: the alias moves, the old
    // image (nameless now) goes, the container goes on, new containers get the new image.
    // (Named after the alias: without --alias, the directory's name is the alias.)
    let parent = tempfile::tempdir().unwrap();
    let next = parent.path().join(&alias);
    let root = busybox_rootfs(&next);
    std::fs::write(root.join("etc/kt-marker"), "next\n").unwrap();
    pack_image(&next, "kt next");
    let said = ok(cli(&["image", "import", next.to_str().unwrap()]));
    assert!(said.contains("Replacing the image"), "{said}");
    assert!(incus.get_image(&debian_fp).await.unwrap_err().is_not_found());
    assert_eq!(
        sh(incus, &first, "cat /etc/debian_version >/dev/null && echo alive").await,
        (0, "alive\n".to_owned())
    );
    let second = unique_name("deb");
    let _second = InstanceGuard(second.clone());
    ok(cli(&["create", &second, "--image", &format!("local:{alias}")]));
    assert_eq!(sh(incus, &second, "cat /etc/kt-marker").await, (0, "next\n".to_owned()));

    // Deleted by alias, then another by its fingerprint; the containers stay.
    let next_fp = incus.get_image_alias(&alias).await.unwrap().target;
    ok(cli(&["image", "delete", &alias]));
    assert!(incus.get_image(&next_fp).await.unwrap_err().is_not_found());
    assert_eq!(sh(incus, &second, "cat /etc/kt-marker").await, (0, "next\n".to_owned()));
    // (Given as its two files this time.)
    let (third, third_fp) = image_dir();
    let alias3 = unique_name("deb");
    let _alias3 = ImageGuard(alias3.clone());
    let files = |name: &str| third.path().join(name).to_str().unwrap().to_owned();
    ok(cli(&[
        "image",
        "import",
        &files("metadata.tar.gz"),
        &files("rootfs.tar.gz"),
        "--alias",
        &alias3,
    ]));
    assert_eq!(incus.get_image_alias(&alias3).await.unwrap().target, third_fp);
    let said = ok(cli(&["image", "delete", &third_fp]));
    assert!(said.contains(&format!("Image {} deleted", &third_fp[..12])), "{said}");
    assert!(incus.get_image(&third_fp).await.unwrap_err().is_not_found());
    assert!(incus.get_image_alias(&alias3).await.unwrap_err().is_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_imports_get_named_errors_and_change_nothing() {
    let test = &daemon_test().await;
    let incus = &test.env.incus;
    let (dir, fingerprint) = image_dir();
    let only_metadata = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("metadata.tar.gz"),
        only_metadata.path().join("metadata.tar.gz"),
    )
    .unwrap();
    let file = dir.path().join("metadata.tar.gz");
    let alias = unique_name("bad");
    let d = dir.path().to_str().unwrap();
    let cases: &[(&str, &str, &str, &str)] = &[
        ("relative/dir", &alias, "InvalidArgument", "is not absolute"),
        (
            "/nonexistent-kt-dir",
            &alias,
            "NotFound",
            "Image directory does not exist",
        ),
        (
            only_metadata.path().to_str().unwrap(),
            &alias,
            "NotFound",
            "Missing rootfs file",
        ),
        (file.to_str().unwrap(), &alias, "InvalidArgument", "is a file"),
        (d, "", "InvalidArgument", "Invalid image '"),
        (d, "a b", "InvalidArgument", "Invalid image '"),
        (d, "a/b", "InvalidArgument", "Invalid image '"),
        (d, &fingerprint, "InvalidArgument", "looks like a fingerprint"),
    ];
    for (path, alias, name, message) in cases {
        let e = test.manager.import_image(path, alias).await.unwrap_err();
        let (got_name, got_message) = error_of(e);
        assert_eq!(got_name, format!("org.kde.kapsule.Error.{name}"), "{path} {alias}");
        assert!(got_message.contains(message), "{path} {alias}: {got_message}");
    }
    assert!(incus.get_image_alias(&alias).await.unwrap_err().is_not_found());
    assert!(incus.get_image(&fingerprint).await.unwrap_err().is_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_imports_only_what_they_can_read() {
    let test = &daemon_test().await;
    let incus = &test.env.incus;
    let user = test_user();

    // Root's private directory: readable by the root daemon, not by the user.
    let secret = tempfile::tempdir().unwrap();
    std::fs::set_permissions(secret.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let (meta, rootfs) = tiny_image_files(secret.path());
    let secret_fp = fingerprint_of(&meta, &rootfs);
    let alias = unique_name("user");
    let _guard = ImageGuard(alias.clone());
    let out = user
        .command(kapsule_binary())
        .args(["image", "import", secret.path().to_str().unwrap(), "--alias", &alias])
        .env("KAPSULE_BUS_ADDRESS", &test.bus.address)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(incus.get_image(&secret_fp).await.unwrap_err().is_not_found());
    assert!(incus.get_image_alias(&alias).await.unwrap_err().is_not_found());

    // Their own directory, named relative to where they stand: imported.
    let own = format!("kt-image-{}", unique_name("dir"));
    let own_dir = user.home.join(&own);
    let _cleanup = RemoveOnDrop(own_dir.clone());
    std::fs::create_dir_all(&own_dir).unwrap();
    let (meta, rootfs) = tiny_image_files(&own_dir);
    let own_fp = fingerprint_of(&meta, &rootfs);
    let status = Command::new("chown")
        .args(["-R", &format!("{}:{}", user.uid, user.gid)])
        .arg(&own_dir)
        .status()
        .unwrap();
    assert!(status.success());
    let out = user
        .command(kapsule_binary())
        .args(["image", "import", &own, "-a", &alias])
        .current_dir(&user.home)
        .env("KAPSULE_BUS_ADDRESS", &test.bus.address)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("Image '{alias}' imported")), "{stderr}");
    assert_eq!(incus.get_image_alias(&alias).await.unwrap().target, own_fp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_reports_what_there_is_to_refresh() {
    let test = &daemon_test().await;
    // The test store holds only local images here (remote_images.rs, which pulls some, never
    // runs at the same time: .config/nextest.toml), so there is nothing to refresh: a
    // warning, and success.
    let mut signals = kapsule_signals(&test.client).await;
    let path = test.manager.refresh_images("").await.unwrap();
    let mut seen = collect_operation_signals(&mut signals, path.as_str()).await;
    seen.retain(|s| !s.starts_with("PropertiesChanged"));
    assert_eq!(
        seen,
        [
            "Message(2, \"No auto-updating images pulled from a remote\")",
            "Message(1, \"Nothing to refresh\")",
            "Completed(true, \"\")"
        ]
    );
    // Naming an image that was not pulled fails the operation.
    let path = test.manager.refresh_images("images:debian/12").await.unwrap();
    let seen = collect_operation_signals(&mut signals, path.as_str()).await;
    assert_eq!(
        seen.last().unwrap(),
        "Completed(false, \"No pulled images match 'images:debian/12'\")"
    );
    // A filter that cannot name anything is refused before any work.
    for bad in ["nowhere:x", "images:", "a b", "local:x", "kapsule:x"] {
        let (name, message) = error_of(test.manager.refresh_images(bad).await.unwrap_err());
        assert_eq!(name, "org.kde.kapsule.Error.InvalidArgument", "{bad}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_import_mid_upload_leaves_no_image() {
    use futures_util::StreamExt;
    let test = &daemon_test().await;
    let (dir, _) = image_dir();
    // A big rootfs (sparse: no disk used here) so the upload takes a while.
    let rootfs = dir.path().join("rootfs.tar.gz");
    std::fs::File::create(&rootfs)
        .unwrap()
        .set_len(256 * 1024 * 1024)
        .unwrap();
    let fingerprint = fingerprint_of(&dir.path().join("metadata.tar.gz"), &rootfs);
    let alias = unique_name("cancel");
    let _guard = ImageGuard(alias.clone());

    let mut signals = kapsule_signals(&test.client).await;
    let path = test
        .manager
        .import_image(dir.path().to_str().unwrap(), &alias)
        .await
        .unwrap();
    // Cancel at the first sign of upload progress.
    let op = kapsule_dbus::OperationProxy::uncached(&test.client, path.clone())
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(Ok(msg)) = signals.next().await {
        let header = msg.header();
        if header.path().map(|p| p.as_str()) == Some(path.as_str())
            && header.member().map(|m| m.as_str()) == Some("ProgressUpdate")
        {
            assert!(op.cancel().await.unwrap(), "a running operation can be cancelled");
            break;
        }
        seen.push(header.member().map(|m| m.to_string()));
    }
    let rest = collect_operation_signals(&mut signals, path.as_str()).await;
    assert_eq!(
        rest.last().unwrap(),
        "Completed(false, \"Operation cancelled\")",
        "{seen:?} {rest:?}"
    );
    assert_eq!(op.status().await.unwrap(), "cancelled");
    assert!(!op.cancel().await.unwrap(), "a finished operation cannot be cancelled");
    assert!(test.env.incus.get_image_alias(&alias).await.unwrap_err().is_not_found());
    assert!(test.env.incus.get_image(&fingerprint).await.unwrap_err().is_not_found());
}

/// An imported image's own option defaults (`kapsule.default_options` in its metadata) apply to
/// containers made from it, under what the client asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_images_default_options_go_under_the_clients() {
    let test = &daemon_test().await;
    let incus = &test.env.incus;
    let dir = tempfile::tempdir().unwrap();
    busybox_rootfs(dir.path());
    pack_image(dir.path(), "kt defaults");
    // pack_image's metadata, with the image's defaults added.
    write_metadata(
        dir.path(),
        "description: kt defaults\n  kapsule.default_options: '{\"mount_home\": false, \"host_rootfs\": false}'",
    );
    let alias = unique_name("defaults");
    let _alias = ImageGuard(alias.clone());
    let seen = import(test, dir.path(), &alias).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");

    let name = unique_name("defaults");
    let _guard = InstanceGuard(name.clone());
    let client = kapsule_integration_tests::options(vec![("host_rootfs", zbus::Variant::from(true))]);
    let seen = test.create_from(&name, &format!("local:{alias}"), client).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    let config = incus.get_instance(&name).await.unwrap().config;
    assert_eq!(config["user.kapsule.mount-home"], "false", "the image's default");
    assert_eq!(
        config["user.kapsule.host-rootfs"], "true",
        "the client's choice over the image's"
    );
}
